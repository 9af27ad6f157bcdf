"""Who may use the therapist dashboard: accounts, passwords, sessions and assignments.

An :class:`Accounts` object holds the dashboard's users (therapists and admins), which
patients each therapist is assigned, and the signed-in sessions, in one SQLite file (see
:mod:`hrvstream.adapters.accounts_sqlite`). The web app uses it to sign people in
(:meth:`Accounts.login`), to find the session of a request's cookie
(:meth:`Accounts.session`) and to decide who sees which patient
(:meth:`Accounts.can_see`); ``hrvstream users`` uses it to manage the accounts.

Rules
-----
* **Passwords** are hashed with Argon2id (argon2-cffi's :class:`~argon2.PasswordHasher`,
  default parameters) and never stored or logged. A hash made with older parameters is
  replaced on the next successful sign-in. A password has at least
  :data:`MIN_PASSWORD_CHARS` characters and is not the username.
* **Usernames** are 1-64 characters ``[a-z0-9][a-z0-9._@+-]{0,63}`` (see
  :func:`check_username`), so an e-mail address in lower case works, and any username
  fits the ``acknowledged_by`` field of an alert acknowledgement.
* **Sessions.** The token (``secrets.token_urlsafe(32)``) goes in the cookie; the file
  keeps only its SHA-256, so a copy of the file gives no live session. A session ends
  after ``idle_timeout_s`` without use (each :meth:`Accounts.session` call slides the
  expiry) and at the latest ``max_age_s`` after sign-in. Changing a password or removing
  the user ends the user's sessions. Each session has its own CSRF token, which the page
  sends back in ``X-CSRF-Token``.
* **Throttling.** After :data:`LOGIN_FAILURE_LIMIT` failed sign-ins for a username within
  :data:`LOGIN_FAILURE_WINDOW_S`, :meth:`Accounts.login` refuses that username, without
  checking the password, until the oldest of those failures is out of the window. A
  successful sign-in clears the count. Unknown usernames are throttled the same way, and
  cost the same hashing time, so neither tells whether an account exists.
* **Who sees whom.** An admin sees every patient; a therapist sees the patients assigned
  to it.

Hashing costs tens of milliseconds on purpose: an event loop should call
:meth:`Accounts.verify`, :meth:`Accounts.login`, :meth:`Accounts.add_user` and
:meth:`Accounts.set_password` through ``asyncio.to_thread``. The object is thread safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, get_args

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from hrvstream.errors import HrvStreamError
from hrvstream.protocol.messages import MessageError, check_patient, is_valid_patient

if TYPE_CHECKING:
    from hrvstream.adapters.accounts_sqlite import SqliteAccountStore, StoredUser

__all__ = [
    "LOGIN_FAILURE_LIMIT",
    "LOGIN_FAILURE_WINDOW_S",
    "MAX_PASSWORD_CHARS",
    "MIN_PASSWORD_CHARS",
    "ROLES",
    "AccountError",
    "Accounts",
    "Role",
    "Session",
    "UnknownUser",
    "User",
    "UserExists",
    "WeakPassword",
    "check_password",
    "check_username",
]

log = logging.getLogger(__name__)

Role = Literal["therapist", "admin"]

#: The roles, in the order shown to people.
ROLES: Final[tuple[Role, ...]] = get_args(Role)

#: Shortest password accepted.
MIN_PASSWORD_CHARS: Final = 10
#: Longest password accepted (a guard against absurd input, not a policy).
MAX_PASSWORD_CHARS: Final = 1024
#: Failed sign-ins for one username within :data:`LOGIN_FAILURE_WINDOW_S` before refusal.
LOGIN_FAILURE_LIMIT: Final = 5
#: The throttling window, seconds.
LOGIN_FAILURE_WINDOW_S: Final = 15 * 60.0

_USERNAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9._@+-]{0,63}")
_MAX_TOKEN_CHARS: Final = 256


class AccountError(HrvStreamError):
    """An account operation cannot be done (bad name, bad patient code, unusable file)."""


class UnknownUser(AccountError):
    """No user has that name."""


class UserExists(AccountError):
    """A user with that name exists already."""


class WeakPassword(AccountError, ValueError):
    """A new password is refused: too short, too long, or equal to the username."""


@dataclass(frozen=True, slots=True)
class User:
    """A dashboard user.

    Attributes
    ----------
    username:
        The sign-in name, lower case.
    role:
        ``"therapist"`` (sees its assigned patients) or ``"admin"`` (sees everyone).
    patients:
        The patient codes assigned to this user (for an admin, its own assignments,
        usually none).
    """

    username: str
    role: Role
    patients: frozenset[str]


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in browser.

    Attributes
    ----------
    token:
        The opaque session token for the cookie (never logged, never stored as is).
    csrf_token:
        A separate random value the page sends back in the ``X-CSRF-Token`` header.
    username, role:
        Who is signed in.
    created_unix_s:
        Sign-in time.
    expires_unix_s:
        When the session ends unless used again before (never later than
        ``created_unix_s + max_age_s``).
    """

    token: str
    csrf_token: str
    username: str
    role: Role
    created_unix_s: float
    expires_unix_s: float


def check_username(username: object) -> str:
    """Check a username: 1-64 characters ``[a-z0-9][a-z0-9._@+-]{0,63}``.

    Parameters
    ----------
    username:
        The candidate name.

    Returns
    -------
    str
        ``username``, unchanged.

    Raises
    ------
    AccountError
        Saying what is wrong with it.

    Examples
    --------
    >>> check_username("dr.lee@clinic.example")
    'dr.lee@clinic.example'
    """
    if not isinstance(username, str):
        raise AccountError(f"a username must be text, not {type(username).__name__}")
    if _USERNAME_RE.fullmatch(username):
        return username
    shown = repr(username[:80])
    if not username:
        reason = "it is empty"
    elif len(username) > 64:
        reason = "it is longer than 64 characters"
    elif _USERNAME_RE.fullmatch(username.lower()):
        reason = f"use lower case ({username.lower()!r})"
    elif not username[0].isascii() or not username[0].isalnum():
        reason = "it must start with a letter (a-z) or a digit"
    else:
        reason = "use only a-z, 0-9 and the characters . _ @ + -"
    raise AccountError(f"invalid username {shown}: {reason}")


def check_password(username: str, password: str) -> None:
    """Refuse a new password that is too short, too long, or the username.

    Parameters
    ----------
    username:
        Whose password it is to be.
    password:
        The candidate.

    Raises
    ------
    WeakPassword
        Saying why (never quoting the password).
    """
    if not isinstance(password, str):
        raise WeakPassword("a password must be text")
    if len(password) < MIN_PASSWORD_CHARS:
        raise WeakPassword(
            f"the password is too short: use at least {MIN_PASSWORD_CHARS} characters"
        )
    if len(password) > MAX_PASSWORD_CHARS:
        raise WeakPassword(f"the password is longer than {MAX_PASSWORD_CHARS} characters")
    if password.strip().lower() == username.lower():
        raise WeakPassword("the password must not be the username")


def _patient(patient: str, action: str) -> str:
    """``check_patient`` with its error as an :class:`AccountError`."""
    try:
        return check_patient(patient)
    except MessageError as exc:
        raise AccountError(f"cannot {action}: {exc.reason}") from exc


def _token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _signin_name(username: object) -> str | None:
    """The canonical form of a typed sign-in name (trimmed, lower case), or ``None``."""
    if not isinstance(username, str):
        return None
    name = username.strip().lower()
    return name if _USERNAME_RE.fullmatch(name) else None


def _role(value: str) -> Role:
    if value not in ROLES:  # pragma: no cover - the table has a CHECK constraint
        raise AccountError(f"unknown role {value!r} in the accounts file")
    return value


class Accounts:
    """The dashboard's users, assignments and sessions, in one SQLite file.

    Parameters
    ----------
    path:
        The accounts file; created (mode 0600, parent directories too) if missing,
        unless ``create`` is false.
    idle_timeout_s:
        A session ends after this long without a :meth:`session` call (default 30 min).
    max_age_s:
        A session ends this long after sign-in whatever happens (default 12 h).
    clock:
        Wall-clock time in seconds since the epoch (tests pass a fake one).
    create:
        If false, a missing file raises :class:`AccountError` (for commands that
        should not create an empty accounts file by mistake).
    hasher:
        The Argon2 hasher; default ``PasswordHasher()`` (argon2-cffi's recommended
        parameters). Stored hashes made with other parameters are upgraded on the next
        successful sign-in.

    Raises
    ------
    AccountError
        If the file cannot be created or opened, or is not an hrvstream accounts file.
    ValueError
        If a timeout is not a positive number.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        idle_timeout_s: float = 30 * 60,
        max_age_s: float = 12 * 3600,
        clock: Callable[[], float] = time.time,
        create: bool = True,
        hasher: PasswordHasher | None = None,
    ) -> None:
        for name, value in (("idle_timeout_s", idle_timeout_s), ("max_age_s", max_age_s)):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        from hrvstream.adapters.accounts_sqlite import SqliteAccountStore

        self.path = Path(path)
        self.idle_timeout_s = float(idle_timeout_s)
        self.max_age_s = float(max_age_s)
        self._clock = clock
        self._hasher = hasher if hasher is not None else PasswordHasher()
        self._dummy_hash: str | None = None
        self._db: SqliteAccountStore = SqliteAccountStore(self.path, create=create)

    def close(self) -> None:
        """Close the file (idempotent); any later call raises :class:`AccountError`."""
        self._db.close()

    def __enter__(self) -> Accounts:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Accounts({str(self.path)!r})"

    # -- users -----------------------------------------------------------------------

    @staticmethod
    def _user(stored: StoredUser) -> User:
        return User(stored.username, _role(stored.role), stored.patients)

    def add_user(self, username: str, password: str, role: Role = "therapist") -> User:
        """Create a user.

        Parameters
        ----------
        username:
            The sign-in name (see :func:`check_username`).
        password:
            The password (see :func:`check_password`); only its hash is kept.
        role:
            ``"therapist"`` (default) or ``"admin"``.

        Returns
        -------
        User
            The new user, with no patients.

        Raises
        ------
        AccountError
            For an invalid username or role.
        WeakPassword
            For a refused password.
        UserExists
            If the name is taken.
        """
        check_username(username)
        if role not in ROLES:
            raise AccountError(f"unknown role {role!r}: use {' or '.join(ROLES)}")
        check_password(username, password)
        if self._db.user(username) is not None:
            raise UserExists(f"user {username!r} exists already")
        if not self._db.add_user(username, role, self._hasher.hash(password), self._clock()):
            raise UserExists(f"user {username!r} exists already")
        log.info("added %s %s", role, username)
        return User(username, role, frozenset())

    def set_password(self, username: str, password: str) -> None:
        """Change a user's password and end all its sessions.

        Raises
        ------
        AccountError
            For an invalid username.
        WeakPassword
            For a refused password.
        UnknownUser
            If there is no such user.
        """
        check_username(username)
        check_password(username, password)
        if self._db.user(username) is None:
            raise UnknownUser(f"no user {username!r}")
        if not self._db.set_password_hash(username, self._hasher.hash(password)):
            raise UnknownUser(f"no user {username!r}")
        log.info("changed the password of %s and ended its sessions", username)

    def remove_user(self, username: str) -> None:
        """Remove a user with its sessions and assignments.

        Raises
        ------
        AccountError
            For an invalid username.
        UnknownUser
            If there is no such user.
        """
        check_username(username)
        if not self._db.remove_user(username):
            raise UnknownUser(f"no user {username!r}")
        log.info("removed user %s", username)

    def user(self, username: str) -> User | None:
        """The user called ``username``, or ``None`` (also for an invalid name)."""
        if not isinstance(username, str) or not _USERNAME_RE.fullmatch(username):
            return None
        stored = self._db.user(username)
        return None if stored is None else self._user(stored)

    def users(self) -> list[User]:
        """Every user, sorted by username."""
        return [self._user(s) for s in self._db.users()]

    # -- assignments -----------------------------------------------------------------

    def assign(self, username: str, patient: str) -> None:
        """Let ``username`` see ``patient`` (idempotent).

        Raises
        ------
        AccountError
            For an invalid username or patient code.
        UnknownUser
            If there is no such user.
        """
        check_username(username)
        _patient(patient, f"assign a patient to {username}")
        if not self._db.assign(username, patient):
            raise UnknownUser(f"no user {username!r}")
        log.debug("assigned %s to %s", patient, username)

    def unassign(self, username: str, patient: str) -> None:
        """Stop ``username`` seeing ``patient`` (idempotent: no error if not assigned).

        Raises
        ------
        AccountError
            For an invalid username or patient code.
        UnknownUser
            If there is no such user.
        """
        check_username(username)
        _patient(patient, f"unassign a patient from {username}")
        if not self._db.unassign(username, patient):
            raise UnknownUser(f"no user {username!r}")
        log.debug("unassigned %s from %s", patient, username)

    def can_see(self, username: str, patient: str) -> bool:
        """Whether ``username`` may see ``patient``.

        An admin sees every (valid) patient code; a therapist only its assigned ones;
        an unknown user and an invalid patient code see and are seen by no one.
        """
        if not is_valid_patient(patient):
            return False
        user = self.user(username)
        if user is None:
            return False
        if user.role == "admin":
            return True
        return patient in user.patients

    def visible_patients(self, username: str, known: Iterable[str]) -> list[str]:
        """The patients ``username`` may see, sorted.

        Parameters
        ----------
        username:
            Who asks.
        known:
            The patients the server knows of (from the store or the status messages).

        Returns
        -------
        list of str
            For an admin, ``known`` and every patient assigned to anyone; for a
            therapist, its assigned patients; for an unknown user, nothing. Invalid
            patient codes are left out.
        """
        user = self.user(username)
        if user is None:
            return []
        every = set(user.patients)
        if user.role == "admin":
            every |= set(known) | self._db.all_assigned()
        return sorted(p for p in every if is_valid_patient(p))

    # -- sign-in ---------------------------------------------------------------------

    def _spend_hash_time(self, password: str) -> None:
        """Verify against a dummy hash, so an unknown user costs what a known one does."""
        if self._dummy_hash is None:
            self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(24))
        with contextlib.suppress(VerificationError):
            self._hasher.verify(self._dummy_hash, password)

    def verify(self, username: str, password: str) -> User | None:
        """The user if ``password`` is right, else ``None``.

        ``None`` both for an unknown user and a wrong password, after the same hashing
        work. The username is trimmed and lower-cased first. Not throttled: sign-in
        forms use :meth:`login`. Upgrades the stored hash if the hasher's parameters
        changed.
        """
        name = _signin_name(username)
        stored = self._db.user(name) if name is not None else None
        if stored is None:
            self._spend_hash_time(password)
            return None
        try:
            self._hasher.verify(stored.password_hash, password)
        except VerificationError:
            return None
        except InvalidHashError:
            log.error("the stored password hash of %s is not an Argon2 hash", stored.username)
            return None
        if self._hasher.check_needs_rehash(stored.password_hash):
            new_hash = self._hasher.hash(password)
            if self._db.replace_password_hash(stored.username, stored.password_hash, new_hash):
                log.info("upgraded the password hash of %s", stored.username)
        return self._user(stored)

    def throttled(self, username: str) -> bool:
        """Whether :meth:`login` currently refuses ``username`` (too many failures)."""
        name = _signin_name(username)
        if name is None:
            return False
        since = self._clock() - LOGIN_FAILURE_WINDOW_S
        return self._db.count_attempts(name, since) >= LOGIN_FAILURE_LIMIT

    def login(self, username: str, password: str) -> Session | None:
        """Sign in: :meth:`verify`, then a new session; ``None`` if refused.

        Refused for a wrong password, an unknown user, and a throttled username (see
        the module docstring; check :meth:`throttled` to tell the person why).
        """
        name = _signin_name(username)
        if name is None:
            self._spend_hash_time(password)
            return None
        now = self._clock()
        # Record the attempt before checking it, so parallel guesses count too; a
        # success clears the record.
        if not self._db.begin_attempt(name, now, LOGIN_FAILURE_WINDOW_S, LOGIN_FAILURE_LIMIT):
            log.warning("sign-in as %s refused: too many failed attempts", name)
            return None
        user = self.verify(name, password)
        if user is None:
            log.info("failed sign-in as %s", name)
            return None
        self._db.clear_attempts(name)
        token = secrets.token_urlsafe(32)
        csrf_token = secrets.token_urlsafe(32)
        expires = now + min(self.idle_timeout_s, self.max_age_s)
        if not self._db.add_session(_token_sha256(token), csrf_token, name, now, expires):
            return None  # removed meanwhile
        log.info("%s signed in", name)
        return Session(token, csrf_token, name, user.role, now, expires)

    def session(self, token: str, *, touch: bool = True) -> Session | None:
        """The live session of ``token``, its expiry slid forward; ``None`` if none.

        ``None`` for an unknown token, an expired session (idle too long, or older than
        ``max_age_s``) and a removed user. Each call moves the expiry to
        ``min(now + idle_timeout_s, created + max_age_s)``, unless ``touch`` is false
        (a check that is not the user's activity, such as an open live page's).
        """
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_CHARS:
            return None
        key = _token_sha256(token)
        stored = self._db.session(key)
        if stored is None:
            return None
        now = self._clock()
        expires = min(now + self.idle_timeout_s, stored.created_unix_s + self.max_age_s)
        if now >= stored.expires_unix_s or now >= expires or stored.role not in ROLES:
            self._db.delete_session(key)
            return None
        if not touch:
            expires = stored.expires_unix_s
        elif expires != stored.expires_unix_s:
            self._db.set_session_expiry(key, expires)
        return Session(
            token,
            stored.csrf_token,
            stored.username,
            _role(stored.role),
            stored.created_unix_s,
            expires,
        )

    def logout(self, token: str) -> None:
        """End the session of ``token`` (no error if there is none)."""
        if isinstance(token, str) and token and len(token) <= _MAX_TOKEN_CHARS:
            self._db.delete_session(_token_sha256(token))

    def purge_expired(self) -> int:
        """Delete expired sessions and stale sign-in failures; the number of sessions."""
        now = self._clock()
        n = self._db.delete_expired_sessions(now, now - self.max_age_s)
        self._db.delete_attempts_before(now - LOGIN_FAILURE_WINDOW_S)
        return n
