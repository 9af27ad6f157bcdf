"""The dashboard's accounts on one SQLite file (WAL): users, assignments, sessions.

Persistence only. The rules (password hashing, session lifetime, sign-in throttling)
live in :mod:`hrvstream.dashboard.accounts`, the one user of this module; this module
stores what it is given and translates every ``sqlite3`` error into an
:class:`~hrvstream.dashboard.accounts.AccountError` that names the file.

One connection (``check_same_thread=False``) used by one thread at a time (a lock), in
autocommit mode: every write is its own ``BEGIN IMMEDIATE`` transaction, committed when
the call returns. Another process (``hrvstream users`` next to the running server) may
have the file open at the same time; a write waits up to ``busy_timeout_s`` for its lock.

Tables (schema version :data:`SCHEMA_VERSION` in ``PRAGMA user_version``; the file is
marked as an accounts file by ``PRAGMA application_id`` = :data:`APPLICATION_ID`, so
another hrvstream database given by mistake is refused instead of altered):

* ``users(username, role, password_hash, created_unix_s)``, key ``username``
* ``assignments(username, patient)``, key ``(username, patient)``
* ``sessions(token_sha256, csrf_token, username, created_unix_s, expires_unix_s)``, key
  ``token_sha256``: the SHA-256 of the session token, never the token itself
* ``login_attempts(username, t_unix_s)``: recent failed (or in-flight) sign-ins

The file is created with mode 0600: it holds password hashes and which therapist sees
which patient.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from hrvstream.dashboard.accounts import AccountError

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Version of the schema below, kept in ``PRAGMA user_version``.
SCHEMA_VERSION: Final = 1

#: ``PRAGMA application_id`` of an accounts file (ASCII ``"HRVA"``).
APPLICATION_ID: Final = 0x48525641

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS users (
        username TEXT PRIMARY KEY,
        role TEXT NOT NULL CHECK (role IN ('therapist', 'admin')),
        password_hash TEXT NOT NULL,
        created_unix_s REAL NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS assignments (
        username TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
        patient TEXT NOT NULL,
        PRIMARY KEY (username, patient)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS assignments_by_patient ON assignments (patient)",
    """CREATE TABLE IF NOT EXISTS sessions (
        token_sha256 TEXT PRIMARY KEY,
        csrf_token TEXT NOT NULL,
        username TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
        created_unix_s REAL NOT NULL,
        expires_unix_s REAL NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (username)",
    "CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (expires_unix_s)",
    """CREATE TABLE IF NOT EXISTS login_attempts (
        username TEXT NOT NULL,
        t_unix_s REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS login_attempts_by_user ON login_attempts (username, t_unix_s)",
)


@dataclass(frozen=True, slots=True)
class StoredUser:
    """A row of ``users`` with the user's assigned patients."""

    username: str
    role: str
    password_hash: str
    patients: frozenset[str]


@dataclass(frozen=True, slots=True)
class StoredSession:
    """A row of ``sessions`` joined with the user's current role."""

    csrf_token: str
    username: str
    role: str
    created_unix_s: float
    expires_unix_s: float


def _create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _warn_if_readable_by_others(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:  # pragma: no cover - vanished meanwhile
        return
    if stat.S_ISREG(mode) and mode & 0o077:
        log.warning(
            "accounts file %s can be read by other users (mode %s); "
            "chmod 600 it: it holds password hashes and patient assignments",
            path,
            oct(stat.S_IMODE(mode)),
        )


class SqliteAccountStore:
    """Users, assignments, sessions and sign-in attempts in one SQLite file.

    Parameters
    ----------
    path:
        The accounts file. Missing parent directories are created, and a missing file
        is created (mode 0600) when ``create`` is true.
    create:
        If false, a missing file is an error instead of a new empty accounts file.
    busy_timeout_s:
        How long a call waits for another process holding the database lock.

    Raises
    ------
    AccountError
        If the file cannot be created or opened, is not an SQLite database, is another
        kind of hrvstream database, or was written by a newer hrvstream.
    """

    def __init__(self, path: Path, *, create: bool = True, busy_timeout_s: float = 5.0) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        if not create and not path.exists():
            raise AccountError(
                f"no accounts file {path} (create one with `hrvstream users add NAME`, "
                "or name the right file with --accounts)"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _create_private(path)
        except OSError as exc:
            raise AccountError(
                f"cannot create accounts file {path}: {exc.strerror or exc}"
            ) from exc
        try:
            conn = sqlite3.connect(
                path, timeout=busy_timeout_s, check_same_thread=False, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise AccountError(f"cannot open accounts file {path}: {exc}") from exc
        try:
            self._init_schema(conn)
        except sqlite3.OperationalError as exc:
            conn.close()
            raise AccountError(f"cannot open accounts file {path}: {exc}") from exc
        except sqlite3.Error as exc:
            conn.close()
            raise AccountError(
                f"{path} is not a usable hrvstream accounts file ({exc}); "
                "name the right file with --accounts, or a new one"
            ) from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        _warn_if_readable_by_others(path)

    @staticmethod
    def _init_schema(conn: sqlite3.Connection) -> None:
        # Raises sqlite3.DatabaseError ("file is not a database") for a non-SQLite file.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("BEGIN IMMEDIATE")
        try:
            (app_id,) = conn.execute("PRAGMA application_id").fetchone()
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            (n_objects,) = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if app_id == 0 and version == 0 and n_objects == 0:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif app_id != APPLICATION_ID:
                raise sqlite3.DatabaseError("it is an SQLite database of something else")
            elif version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"schema version {version} is newer than this hrvstream's ({SCHEMA_VERSION})"
                )
            elif version < SCHEMA_VERSION:  # pragma: no cover - version 1 is the first
                raise sqlite3.DatabaseError(f"unknown schema version {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- plumbing --------------------------------------------------------------------

    def _locked(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(conn)`` holding the lock, ``sqlite3`` errors translated."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise AccountError(f"the accounts file {self.path} is closed")
            try:
                return fn(conn)
            except sqlite3.OperationalError as exc:
                text = str(exc).lower()
                if "locked" in text or "busy" in text:
                    raise AccountError(
                        f"accounts file {self.path} is locked by another process; try again ({exc})"
                    ) from exc
                raise AccountError(f"accounts file {self.path}: {exc}") from exc
            except sqlite3.Error as exc:
                raise AccountError(f"accounts file {self.path}: {exc}") from exc

    def _write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(conn)`` in one ``BEGIN IMMEDIATE`` transaction, committed on return."""

        def tx(conn: sqlite3.Connection) -> _T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return self._locked(tx)

    # -- users -----------------------------------------------------------------------

    def add_user(self, username: str, role: str, password_hash: str, now_unix_s: float) -> bool:
        """Insert a user; ``False`` if the name is taken."""
        sql = (
            "INSERT INTO users (username, role, password_hash, created_unix_s) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (username) DO NOTHING"
        )
        params = (username, role, password_hash, now_unix_s)
        return self._write(lambda conn: conn.execute(sql, params).rowcount == 1)

    def user(self, username: str) -> StoredUser | None:
        """The user called ``username``, or ``None``."""

        def read(conn: sqlite3.Connection) -> StoredUser | None:
            row = conn.execute(
                "SELECT role, password_hash FROM users WHERE username = ?", (username,)
            ).fetchone()
            if row is None:
                return None
            patients = conn.execute(
                "SELECT patient FROM assignments WHERE username = ?", (username,)
            ).fetchall()
            return StoredUser(username, row[0], row[1], frozenset(p for (p,) in patients))

        return self._locked(read)

    def users(self) -> list[StoredUser]:
        """Every user, by username."""

        def read(conn: sqlite3.Connection) -> list[StoredUser]:
            patients: dict[str, set[str]] = {}
            for name, patient in conn.execute("SELECT username, patient FROM assignments"):
                patients.setdefault(name, set()).add(patient)
            return [
                StoredUser(name, role, pw_hash, frozenset(patients.get(name, ())))
                for name, role, pw_hash in conn.execute(
                    "SELECT username, role, password_hash FROM users ORDER BY username"
                )
            ]

        return self._locked(read)

    def set_password_hash(self, username: str, password_hash: str) -> bool:
        """Replace the hash and delete the user's sessions; ``False`` if no such user."""

        def write(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE users SET password_hash = ? WHERE username = ?",
                (password_hash, username),
            )
            if cur.rowcount != 1:
                return False
            conn.execute("DELETE FROM sessions WHERE username = ?", (username,))
            return True

        return self._write(write)

    def replace_password_hash(self, username: str, old_hash: str, new_hash: str) -> bool:
        """Replace the hash only if it is still ``old_hash`` (a rehash); sessions are kept."""
        sql = "UPDATE users SET password_hash = ? WHERE username = ? AND password_hash = ?"
        params = (new_hash, username, old_hash)
        return self._write(lambda conn: conn.execute(sql, params).rowcount == 1)

    def remove_user(self, username: str) -> bool:
        """Delete a user with its sessions, assignments and attempts; ``False`` if none."""

        def write(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM sessions WHERE username = ?", (username,))
            conn.execute("DELETE FROM assignments WHERE username = ?", (username,))
            conn.execute("DELETE FROM login_attempts WHERE username = ?", (username,))
            return conn.execute("DELETE FROM users WHERE username = ?", (username,)).rowcount == 1

        return self._write(write)

    # -- assignments -----------------------------------------------------------------

    def assign(self, username: str, patient: str) -> bool:
        """Assign ``patient`` to ``username`` (idempotent); ``False`` if no such user."""

        def write(conn: sqlite3.Connection) -> bool:
            if conn.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone():
                conn.execute(
                    "INSERT INTO assignments (username, patient) VALUES (?, ?) "
                    "ON CONFLICT DO NOTHING",
                    (username, patient),
                )
                return True
            return False

        return self._write(write)

    def unassign(self, username: str, patient: str) -> bool:
        """Remove an assignment (idempotent); ``False`` if no such user."""

        def write(conn: sqlite3.Connection) -> bool:
            conn.execute(
                "DELETE FROM assignments WHERE username = ? AND patient = ?", (username, patient)
            )
            return (
                conn.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone()
                is not None
            )

        return self._write(write)

    def is_assigned(self, username: str, patient: str) -> bool:
        """Whether ``patient`` is assigned to ``username``."""
        sql = "SELECT 1 FROM assignments WHERE username = ? AND patient = ?"
        return self._locked(
            lambda conn: conn.execute(sql, (username, patient)).fetchone() is not None
        )

    def all_assigned(self) -> frozenset[str]:
        """Every patient assigned to anyone."""
        sql = "SELECT DISTINCT patient FROM assignments"
        return self._locked(lambda conn: frozenset(p for (p,) in conn.execute(sql)))

    # -- sessions --------------------------------------------------------------------

    def add_session(
        self,
        token_sha256: str,
        csrf_token: str,
        username: str,
        created_unix_s: float,
        expires_unix_s: float,
    ) -> bool:
        """Insert a session; ``False`` if the user no longer exists."""
        sql = (
            "INSERT INTO sessions "
            "(token_sha256, csrf_token, username, created_unix_s, expires_unix_s) "
            "SELECT ?, ?, username, ?, ? FROM users WHERE username = ?"
        )
        params = (token_sha256, csrf_token, created_unix_s, expires_unix_s, username)
        return self._write(lambda conn: conn.execute(sql, params).rowcount == 1)

    def session(self, token_sha256: str) -> StoredSession | None:
        """The session whose token hashes to ``token_sha256``, with its user's role."""
        sql = (
            "SELECT s.csrf_token, s.username, u.role, s.created_unix_s, s.expires_unix_s "
            "FROM sessions AS s JOIN users AS u ON u.username = s.username "
            "WHERE s.token_sha256 = ?"
        )

        def read(conn: sqlite3.Connection) -> StoredSession | None:
            row = conn.execute(sql, (token_sha256,)).fetchone()
            return None if row is None else StoredSession(*row)

        return self._locked(read)

    def set_session_expiry(self, token_sha256: str, expires_unix_s: float) -> None:
        """Move a session's expiry time."""
        sql = "UPDATE sessions SET expires_unix_s = ? WHERE token_sha256 = ?"
        self._write(lambda conn: conn.execute(sql, (expires_unix_s, token_sha256)))

    def delete_session(self, token_sha256: str) -> None:
        """Delete one session (no error if it is gone)."""
        sql = "DELETE FROM sessions WHERE token_sha256 = ?"
        self._write(lambda conn: conn.execute(sql, (token_sha256,)))

    def delete_expired_sessions(self, now_unix_s: float, created_before_unix_s: float) -> int:
        """Delete sessions expired at ``now_unix_s`` or created before the cut-off."""
        sql = "DELETE FROM sessions WHERE expires_unix_s <= ? OR created_unix_s <= ?"
        params = (now_unix_s, created_before_unix_s)
        return self._write(lambda conn: conn.execute(sql, params).rowcount)

    # -- sign-in attempts ------------------------------------------------------------

    def begin_attempt(self, username: str, now_unix_s: float, window_s: float, limit: int) -> bool:
        """Record a sign-in attempt unless ``limit`` are recorded within ``window_s``.

        The check and the record are one transaction, so parallel attempts (threads or
        processes) cannot all slip under the limit. Returns ``False`` (nothing recorded)
        when the limit is reached.
        """

        def write(conn: sqlite3.Connection) -> bool:
            conn.execute(
                "DELETE FROM login_attempts WHERE username = ? AND t_unix_s <= ?",
                (username, now_unix_s - window_s),
            )
            (n,) = conn.execute(
                "SELECT count(*) FROM login_attempts WHERE username = ?", (username,)
            ).fetchone()
            if n >= limit:
                return False
            conn.execute(
                "INSERT INTO login_attempts (username, t_unix_s) VALUES (?, ?)",
                (username, now_unix_s),
            )
            return True

        return self._write(write)

    def count_attempts(self, username: str, since_unix_s: float) -> int:
        """Attempts recorded for ``username`` after ``since_unix_s``."""
        sql = "SELECT count(*) FROM login_attempts WHERE username = ? AND t_unix_s > ?"
        return self._locked(
            lambda conn: int(conn.execute(sql, (username, since_unix_s)).fetchone()[0])
        )

    def clear_attempts(self, username: str) -> None:
        """Forget the recorded attempts of ``username`` (after a success)."""
        sql = "DELETE FROM login_attempts WHERE username = ?"
        self._write(lambda conn: conn.execute(sql, (username,)))

    def delete_attempts_before(self, t_unix_s: float) -> int:
        """Forget attempts at or before ``t_unix_s``."""
        sql = "DELETE FROM login_attempts WHERE t_unix_s <= ?"
        return self._write(lambda conn: conn.execute(sql, (t_unix_s,)).rowcount)
