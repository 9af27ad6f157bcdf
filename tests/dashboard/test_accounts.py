"""Accounts: users, Argon2 hashes, sessions, throttling and assignments on real SQLite files.

Time is a fake clock the tests move by hand; nothing sleeps. Most tests use a cheap
Argon2 hasher to stay fast; the default parameters are checked once.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import pytest
from argon2 import PasswordHasher

from hrvstream.dashboard.accounts import (
    LOGIN_FAILURE_LIMIT,
    LOGIN_FAILURE_WINDOW_S,
    AccountError,
    Accounts,
    UnknownUser,
    UserExists,
    WeakPassword,
    check_username,
)
from hrvstream.errors import HrvStreamError

T0 = 1_700_000_000.0
IDLE_S = 30 * 60.0
MAX_AGE_S = 12 * 3600.0
PASSWORD = "correct horse battery"


class FakeClock:
    """A wall clock that moves only when told to."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class CountingHasher(PasswordHasher):
    """A cheap Argon2 hasher that counts how often it verifies (the expensive part)."""

    def __init__(self, time_cost: int = 1) -> None:
        super().__init__(time_cost=time_cost, memory_cost=8, parallelism=1)
        self.verifies = 0
        self._count_lock = threading.Lock()

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        with self._count_lock:
            self.verifies += 1
        return super().verify(hash, password)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def hasher() -> CountingHasher:
    return CountingHasher()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "accounts.db"


@pytest.fixture
def accounts(db_path: Path, clock: FakeClock, hasher: CountingHasher) -> Iterator[Accounts]:
    a = Accounts(db_path, clock=clock, hasher=hasher)
    yield a
    a.close()


def raw_bytes(path: Path) -> bytes:
    """The database file and its WAL, as stored on disk."""
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def stored_hash(path: Path, username: str) -> str:
    with sqlite3.connect(path) as conn:
        (h,) = conn.execute(
            "SELECT password_hash FROM users WHERE username = ?", (username,)
        ).fetchone()
    assert isinstance(h, str)
    return h


# -- passwords ---------------------------------------------------------------------------


def test_stored_hash_is_argon2id_never_the_password(accounts: Accounts, db_path: Path) -> None:
    accounts.add_user("alice", PASSWORD)
    h = stored_hash(db_path, "alice")
    assert h.startswith("$argon2id$")
    assert PASSWORD not in h
    assert PASSWORD.encode() not in raw_bytes(db_path)


def test_default_hasher_uses_argon2_cffi_default_parameters(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with Accounts(path) as accounts:
        accounts.add_user("alice", PASSWORD)
        assert accounts.verify("alice", PASSWORD) is not None
    h = stored_hash(path, "alice")
    assert not PasswordHasher().check_needs_rehash(h)
    assert PasswordHasher().verify(h, PASSWORD)


def test_verify_right_wrong_and_unknown(accounts: Accounts) -> None:
    user = accounts.add_user("alice", PASSWORD)
    assert user.username == "alice"
    assert user.role == "therapist"
    assert user.patients == frozenset()
    assert accounts.verify("alice", PASSWORD) == user
    assert accounts.verify("alice", PASSWORD + "!") is None
    assert accounts.verify("alice", "") is None
    assert accounts.verify("bob", PASSWORD) is None
    assert accounts.verify("not a valid name", PASSWORD) is None


def test_verify_trims_and_lower_cases_the_typed_name(accounts: Accounts) -> None:
    accounts.add_user("alice", PASSWORD)
    assert accounts.verify(" Alice ", PASSWORD) is not None
    session = accounts.login("ALICE", PASSWORD)
    assert session is not None
    assert session.username == "alice"


def test_unknown_user_costs_one_hash_verification(
    accounts: Accounts, hasher: CountingHasher
) -> None:
    accounts.add_user("alice", PASSWORD)
    before = hasher.verifies
    assert accounts.verify("alice", "wrong password") is None
    known_cost = hasher.verifies - before
    before = hasher.verifies
    assert accounts.verify("mallory", "wrong password") is None
    assert hasher.verifies - before == known_cost == 1
    before = hasher.verifies
    assert accounts.login("Not Valid!", "wrong password") is None
    assert hasher.verifies - before == 1


def test_hash_with_old_parameters_is_upgraded_on_sign_in(db_path: Path, clock: FakeClock) -> None:
    with Accounts(db_path, clock=clock, hasher=CountingHasher(time_cost=1)) as old:
        old.add_user("alice", PASSWORD)
    assert ",t=1," in stored_hash(db_path, "alice")
    with Accounts(db_path, clock=clock, hasher=CountingHasher(time_cost=2)) as new:
        assert new.verify("alice", "wrong password") is None
        assert ",t=1," in stored_hash(db_path, "alice")  # only a success rehashes
        assert new.verify("alice", PASSWORD) is not None
        upgraded = stored_hash(db_path, "alice")
        assert ",t=2," in upgraded
        assert new.verify("alice", PASSWORD) is not None
        assert stored_hash(db_path, "alice") == upgraded  # no needless rehash


@pytest.mark.parametrize(
    ("username", "password", "why"),
    [
        ("alice", "", "too short"),
        ("alice", "123456789", "too short"),
        ("alice.smith", "alice.smith", "must not be the username"),
        ("alice.smith", "Alice.Smith", "must not be the username"),
        ("alice", "x" * 1025, "longer than"),
    ],
)
def test_weak_passwords_are_refused(
    accounts: Accounts, username: str, password: str, why: str
) -> None:
    with pytest.raises(WeakPassword, match=why) as info:
        accounts.add_user(username, password)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, AccountError)
    if password:
        assert password not in str(info.value)
    assert accounts.user(username) is None


def test_ten_characters_are_enough(accounts: Accounts) -> None:
    accounts.add_user("alice", "1234567890")
    assert accounts.verify("alice", "1234567890") is not None


def test_add_existing_user_and_bad_role(accounts: Accounts) -> None:
    accounts.add_user("alice", PASSWORD)
    with pytest.raises(UserExists, match="alice"):
        accounts.add_user("alice", "another password", role="admin")
    assert accounts.verify("alice", PASSWORD) is not None
    with pytest.raises(AccountError, match="unknown role 'root'"):
        accounts.add_user("bob", PASSWORD, role="root")  # type: ignore[arg-type]
    assert accounts.user("bob") is None


# -- usernames and patient codes -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("Alice", "lower case"),
        ("-bob", "start with"),
        (".bob", "start with"),
        ("bob smith", "use only"),
        ("bob/x", "use only"),
        ("bób", "use only"),
        ("a" * 65, "longer than 64"),
    ],
)
def test_invalid_usernames(accounts: Accounts, name: str, why: str) -> None:
    with pytest.raises(AccountError, match=why):
        check_username(name)
    with pytest.raises(AccountError, match=f"invalid username.*{why}"):
        accounts.add_user(name, PASSWORD)
    assert accounts.users() == []
    assert accounts.user(name) is None


@pytest.mark.parametrize("name", ["a", "7", "dr.lee@clinic.example", "x+y_z-1", "a" * 64])
def test_valid_usernames(accounts: Accounts, name: str) -> None:
    assert check_username(name) == name
    assert accounts.add_user(name, PASSWORD).username == name
    assert accounts.verify(name, PASSWORD) is not None


@pytest.mark.parametrize(
    ("patient", "why"),
    [
        ("P017", "patient pseudonym"),
        ("p", "patient pseudonym"),
        ("p/017", "patient pseudonym"),
        ("a0-9e-1a-8c-4d-2e", "BLE address"),
    ],
)
def test_invalid_patient_codes(accounts: Accounts, patient: str, why: str) -> None:
    accounts.add_user("alice", PASSWORD)
    with pytest.raises(AccountError, match=f"cannot assign.*{why}") as info:
        accounts.assign("alice", patient)
    assert type(info.value) is AccountError  # translated, not the protocol's MessageError
    with pytest.raises(AccountError, match=why):
        accounts.unassign("alice", patient)
    user = accounts.user("alice")
    assert user is not None
    assert user.patients == frozenset()
    assert not accounts.can_see("alice", patient)


def test_assign_to_unknown_user(accounts: Accounts) -> None:
    with pytest.raises(UnknownUser, match="bob"):
        accounts.assign("bob", "p-017")
    with pytest.raises(UnknownUser, match="bob"):
        accounts.unassign("bob", "p-017")
    assert issubclass(UnknownUser, HrvStreamError)


def test_assign_and_unassign_are_idempotent(accounts: Accounts) -> None:
    accounts.add_user("alice", PASSWORD)
    accounts.assign("alice", "p-017")
    accounts.assign("alice", "p-017")
    accounts.assign("alice", "p-002")
    user = accounts.user("alice")
    assert user is not None
    assert user.patients == {"p-017", "p-002"}
    accounts.unassign("alice", "p-017")
    accounts.unassign("alice", "p-017")
    accounts.unassign("alice", "p-999")
    user = accounts.user("alice")
    assert user is not None
    assert user.patients == {"p-002"}


# -- who sees whom ---------------------------------------------------------------------


def test_can_see_and_visible_patients(accounts: Accounts) -> None:
    accounts.add_user("alice", PASSWORD)
    accounts.add_user("bob", PASSWORD)
    accounts.add_user("root", PASSWORD, role="admin")
    accounts.assign("alice", "p-017")
    accounts.assign("alice", "p-002")
    accounts.assign("bob", "p-100")
    known = ["p-017", "p-555", "p-002", "BAD CODE"]

    assert accounts.can_see("alice", "p-017")
    assert accounts.can_see("alice", "p-002")
    assert not accounts.can_see("alice", "p-100")
    assert not accounts.can_see("alice", "p-555")
    assert accounts.visible_patients("alice", known) == ["p-002", "p-017"]
    assert accounts.visible_patients("bob", known) == ["p-100"]

    assert accounts.can_see("root", "p-555")
    assert accounts.can_see("root", "p-100")
    assert not accounts.can_see("root", "BAD CODE")
    assert accounts.visible_patients("root", known) == ["p-002", "p-017", "p-100", "p-555"]
    assert accounts.visible_patients("root", []) == ["p-002", "p-017", "p-100"]

    assert not accounts.can_see("nobody", "p-017")
    assert accounts.visible_patients("nobody", known) == []


def test_users_are_listed_by_name_with_their_patients(accounts: Accounts) -> None:
    accounts.add_user("zoe", PASSWORD)
    accounts.add_user("adam", PASSWORD, role="admin")
    accounts.assign("zoe", "p-001")
    users = accounts.users()
    assert [(u.username, u.role, u.patients) for u in users] == [
        ("adam", "admin", frozenset()),
        ("zoe", "therapist", frozenset({"p-001"})),
    ]


# -- sessions --------------------------------------------------------------------------


def test_login_creates_a_session(accounts: Accounts) -> None:
    accounts.add_user("root", PASSWORD, role="admin")
    session = accounts.login("root", PASSWORD)
    assert session is not None
    assert session.username == "root"
    assert session.role == "admin"
    assert session.created_unix_s == T0
    assert session.expires_unix_s == T0 + IDLE_S
    assert len(session.token) >= 43
    assert len(session.csrf_token) >= 43
    assert session.token != session.csrf_token
    again = accounts.login("root", PASSWORD)
    assert again is not None
    assert again.token != session.token
    assert again.csrf_token != session.csrf_token
    assert accounts.session(session.token) == session


def test_wrong_password_gives_no_session(accounts: Accounts) -> None:
    accounts.add_user("alice", PASSWORD)
    assert accounts.login("alice", "wrong password") is None
    assert accounts.login("bob", PASSWORD) is None


def test_idle_expiry_and_sliding_extension(accounts: Accounts, clock: FakeClock) -> None:
    accounts.add_user("alice", PASSWORD)
    session = accounts.login("alice", PASSWORD)
    assert session is not None
    for _ in range(3):  # used every 29 min: alive well past the first 30 min
        clock.advance(IDLE_S - 60)
        seen = accounts.session(session.token)
        assert seen is not None
        assert seen.expires_unix_s == clock.t + IDLE_S
        assert seen.csrf_token == session.csrf_token
        assert seen.created_unix_s == T0
    clock.advance(IDLE_S)  # then idle for 30 min
    assert accounts.session(session.token) is None
    clock.advance(-1)  # even if the clock steps back, the session was deleted
    assert accounts.session(session.token) is None


def test_a_check_without_touch_does_not_keep_a_session_alive(
    accounts: Accounts, clock: FakeClock
) -> None:
    """An open live page checks its session without it counting as the user's activity."""
    accounts.add_user("alice", PASSWORD)
    session = accounts.login("alice", PASSWORD)
    assert session is not None
    for _ in range(3):
        clock.advance(IDLE_S / 4)
        seen = accounts.session(session.token, touch=False)
        assert seen is not None and seen.expires_unix_s == T0 + IDLE_S
    clock.advance(IDLE_S / 4)
    assert accounts.session(session.token, touch=False) is None


def test_session_just_before_idle_timeout(accounts: Accounts, clock: FakeClock) -> None:
    accounts.add_user("alice", PASSWORD)
    session = accounts.login("alice", PASSWORD)
    assert session is not None
    clock.advance(IDLE_S - 0.001)
    assert accounts.session(session.token) is not None


def test_absolute_max_age(db_path: Path, clock: FakeClock, hasher: CountingHasher) -> None:
    with Accounts(
        db_path, clock=clock, hasher=hasher, idle_timeout_s=IDLE_S, max_age_s=2 * 3600
    ) as accounts:
        accounts.add_user("alice", PASSWORD)
        session = accounts.login("alice", PASSWORD)
        assert session is not None
        for _ in range(5):  # used every 20 min up to 100 min
            clock.advance(20 * 60)
            assert accounts.session(session.token) is not None
        clock.advance(10 * 60)  # 110 min: the expiry is capped at 120 min, not 140
        seen = accounts.session(session.token)
        assert seen is not None
        assert seen.expires_unix_s == T0 + 2 * 3600
        clock.advance(10 * 60)  # 120 min, although used 10 min ago
        assert accounts.session(session.token) is None


def test_max_age_shorter_than_idle(db_path: Path, clock: FakeClock, hasher: CountingHasher) -> None:
    with Accounts(db_path, clock=clock, hasher=hasher, idle_timeout_s=600, max_age_s=60) as a:
        a.add_user("alice", PASSWORD)
        session = a.login("alice", PASSWORD)
        assert session is not None
        assert session.expires_unix_s == T0 + 60


def test_logout(accounts: Accounts) -> None:
    accounts.add_user("alice", PASSWORD)
    one = accounts.login("alice", PASSWORD)
    two = accounts.login("alice", PASSWORD)
    assert one is not None
    assert two is not None
    accounts.logout(one.token)
    assert accounts.session(one.token) is None
    assert accounts.session(two.token) is not None
    accounts.logout(one.token)  # twice is fine
    accounts.logout("")
    accounts.logout("no such token")


@pytest.mark.parametrize("token", ["", "x", "x" * 1000])
def test_unknown_or_absurd_tokens(accounts: Accounts, token: str) -> None:
    assert accounts.session(token) is None


def test_set_password_ends_sessions(accounts: Accounts) -> None:
    accounts.add_user("alice", PASSWORD)
    accounts.add_user("bob", PASSWORD)
    alice = accounts.login("alice", PASSWORD)
    bob = accounts.login("bob", PASSWORD)
    assert alice is not None
    assert bob is not None
    accounts.set_password("alice", "a new password")
    assert accounts.session(alice.token) is None
    assert accounts.session(bob.token) is not None
    assert accounts.verify("alice", PASSWORD) is None
    assert accounts.verify("alice", "a new password") is not None
    with pytest.raises(UnknownUser):
        accounts.set_password("carol", "a new password")
    with pytest.raises(WeakPassword):
        accounts.set_password("alice", "short")
    assert accounts.verify("alice", "a new password") is not None


def test_remove_user_ends_sessions_and_assignments(accounts: Accounts) -> None:
    accounts.add_user("alice", PASSWORD)
    accounts.assign("alice", "p-017")
    session = accounts.login("alice", PASSWORD)
    assert session is not None
    accounts.remove_user("alice")
    assert accounts.user("alice") is None
    assert accounts.session(session.token) is None
    assert accounts.verify("alice", PASSWORD) is None
    assert not accounts.can_see("alice", "p-017")
    with pytest.raises(UnknownUser):
        accounts.remove_user("alice")
    accounts.add_user("alice", PASSWORD)  # a new account of the same name starts clean
    user = accounts.user("alice")
    assert user is not None
    assert user.patients == frozenset()
    assert accounts.session(session.token) is None
    root = accounts.add_user("root", PASSWORD, role="admin")
    assert accounts.visible_patients(root.username, []) == []


def test_only_the_token_hash_is_stored(accounts: Accounts, db_path: Path) -> None:
    accounts.add_user("alice", PASSWORD)
    session = accounts.login("alice", PASSWORD)
    assert session is not None
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT * FROM sessions").fetchall()
    assert len(rows) == 1
    flat = [str(v) for v in rows[0]]
    assert session.token not in flat
    assert hashlib.sha256(session.token.encode()).hexdigest() in flat
    assert session.csrf_token in flat
    assert session.token.encode() not in raw_bytes(db_path)


def test_purge_expired(accounts: Accounts, clock: FakeClock) -> None:
    accounts.add_user("alice", PASSWORD)
    old = accounts.login("alice", PASSWORD)
    clock.advance(IDLE_S / 2)
    fresh = accounts.login("alice", PASSWORD)
    assert old is not None
    assert fresh is not None
    assert accounts.purge_expired() == 0
    clock.advance(IDLE_S / 2)
    assert accounts.purge_expired() == 1
    assert accounts.session(fresh.token) is not None
    assert accounts.purge_expired() == 0


# -- throttling ------------------------------------------------------------------------


def fail(accounts: Accounts, username: str, n: int, clock: FakeClock) -> None:
    for _ in range(n):
        assert accounts.login(username, "wrong password") is None
        clock.advance(1)


def test_throttle_after_five_failures_until_the_window_passes(
    accounts: Accounts, clock: FakeClock, hasher: CountingHasher
) -> None:
    accounts.add_user("alice", PASSWORD)
    fail(accounts, "alice", LOGIN_FAILURE_LIMIT - 1, clock)
    assert not accounts.throttled("alice")
    fail(accounts, "alice", 1, clock)
    assert accounts.throttled("alice")
    before = hasher.verifies
    assert accounts.login("alice", PASSWORD) is None  # even the right password
    assert hasher.verifies == before  # refused without checking
    clock.t = T0 + LOGIN_FAILURE_WINDOW_S - 1  # the first failure is still in the window
    assert accounts.login("alice", PASSWORD) is None
    clock.t = T0 + LOGIN_FAILURE_WINDOW_S + 0.5  # it has left the window
    assert not accounts.throttled("alice")
    assert accounts.login("alice", PASSWORD) is not None
    assert not accounts.throttled("alice")
    # The throttle is per username and verify() is not throttled.
    accounts.add_user("bob", PASSWORD)
    fail(accounts, "bob", LOGIN_FAILURE_LIMIT, clock)
    assert accounts.login("bob", PASSWORD) is None
    assert accounts.login("alice", PASSWORD) is not None
    assert accounts.verify("bob", PASSWORD) is not None


def test_success_resets_the_failure_count(accounts: Accounts, clock: FakeClock) -> None:
    accounts.add_user("alice", PASSWORD)
    fail(accounts, "alice", LOGIN_FAILURE_LIMIT - 1, clock)
    assert accounts.login("alice", PASSWORD) is not None
    fail(accounts, "alice", LOGIN_FAILURE_LIMIT - 1, clock)
    assert accounts.login("alice", PASSWORD) is not None


def test_unknown_users_are_throttled_too(accounts: Accounts, clock: FakeClock) -> None:
    fail(accounts, "mallory", LOGIN_FAILURE_LIMIT, clock)
    assert accounts.throttled("mallory")
    assert accounts.throttled("Mallory")
    assert not accounts.throttled("alice")


def test_parallel_guesses_cannot_exceed_the_limit(
    accounts: Accounts, hasher: CountingHasher
) -> None:
    accounts.add_user("alice", PASSWORD)
    before = hasher.verifies
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda _: accounts.login("alice", "wrong password"), range(20)))
    assert results == [None] * 20
    assert hasher.verifies - before == LOGIN_FAILURE_LIMIT
    assert accounts.login("alice", PASSWORD) is None


def test_throttle_survives_reopening(db_path: Path, clock: FakeClock) -> None:
    with Accounts(db_path, clock=clock, hasher=CountingHasher()) as a:
        a.add_user("alice", PASSWORD)
        fail(a, "alice", LOGIN_FAILURE_LIMIT, clock)
    with Accounts(db_path, clock=clock, hasher=CountingHasher()) as b:
        assert b.login("alice", PASSWORD) is None


def test_purge_forgets_old_failures(accounts: Accounts, clock: FakeClock, db_path: Path) -> None:
    fail(accounts, "mallory", 3, clock)
    accounts.purge_expired()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM login_attempts").fetchone() == (3,)
    clock.advance(LOGIN_FAILURE_WINDOW_S)
    accounts.purge_expired()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM login_attempts").fetchone() == (0,)


# -- the file --------------------------------------------------------------------------


def test_two_objects_on_one_file_see_each_other(
    db_path: Path, clock: FakeClock, hasher: CountingHasher
) -> None:
    with (
        Accounts(db_path, clock=clock, hasher=hasher) as web,
        Accounts(db_path, clock=clock, hasher=hasher) as cli,
    ):
        cli.add_user("alice", PASSWORD)
        cli.assign("alice", "p-017")
        assert web.can_see("alice", "p-017")
        session = web.login("alice", PASSWORD)
        assert session is not None
        assert cli.session(session.token) is not None
        cli.set_password("alice", "a new password")
        assert web.session(session.token) is None
        assert web.verify("alice", "a new password") is not None
        cli.remove_user("alice")
        assert web.user("alice") is None


def test_file_is_created_private_with_its_directories(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "accounts.db"
    old_umask = os.umask(0)
    try:
        with Accounts(path, hasher=CountingHasher()) as a:
            a.add_user("alice", PASSWORD)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_loose_permissions_of_an_existing_file_are_reported(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    Accounts(db_path, hasher=CountingHasher()).close()
    db_path.chmod(0o644)
    with caplog.at_level("WARNING"):
        Accounts(db_path, hasher=CountingHasher()).close()
    assert "chmod 600" in caplog.text


def test_reopened_file_keeps_everything(db_path: Path, clock: FakeClock) -> None:
    with Accounts(db_path, clock=clock, hasher=CountingHasher()) as a:
        a.add_user("alice", PASSWORD)
        a.assign("alice", "p-017")
        session = a.login("alice", PASSWORD)
        assert session is not None
    with Accounts(db_path, clock=clock, hasher=CountingHasher()) as b:
        assert b.session(session.token) is not None
        assert b.can_see("alice", "p-017")
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_corrupt_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "accounts.db"
    path.write_bytes(b"this is not a database\n" * 100)
    with pytest.raises(AccountError, match=r"accounts\.db") as info:
        Accounts(path, hasher=CountingHasher())
    assert str(path) in str(info.value)


def test_another_sqlite_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE beats (patient TEXT)")
    with pytest.raises(AccountError, match=f"{path}.*not a usable hrvstream accounts file"):
        Accounts(path, hasher=CountingHasher())
    with sqlite3.connect(path) as conn:
        names = [n for (n,) in conn.execute("SELECT name FROM sqlite_master")]
    assert names == ["beats"]


def test_newer_schema_is_refused(db_path: Path) -> None:
    Accounts(db_path, hasher=CountingHasher()).close()
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA user_version=2")
    with pytest.raises(AccountError, match="newer"):
        Accounts(db_path, hasher=CountingHasher())


def test_missing_file_without_create(tmp_path: Path) -> None:
    path = tmp_path / "nope.db"
    with pytest.raises(AccountError, match="no accounts file"):
        Accounts(path, create=False)
    assert not path.exists()


def test_calls_after_close_raise(db_path: Path) -> None:
    a = Accounts(db_path, hasher=CountingHasher())
    a.close()
    a.close()
    with pytest.raises(AccountError, match="closed"):
        a.users()


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_timeouts(db_path: Path, value: float) -> None:
    with pytest.raises(ValueError, match="idle_timeout_s"):
        Accounts(db_path, idle_timeout_s=value)
    with pytest.raises(ValueError, match="max_age_s"):
        Accounts(db_path, max_age_s=value)
