"""``hrvstream users``: the parser in this process, and the command as a user runs it.

In-process tests build an ``argparse`` parser with :func:`add_users_parser`, as
``hrvstream.cli`` does, and run ``args.func(args)``; subprocess tests run
``python -m hrvstream.cli users ...`` and check exit codes and that errors are one line,
never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hrvstream.dashboard.accounts import Accounts
from hrvstream.dashboard.users_cli import ACCOUNTS_ENV, add_users_parser
from tests.clirun import hrvstream

PASSWORD = "correct horse battery"


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hrvstream")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_users_parser(sub)
    return parser


class Runner:
    """Run ``hrvstream users ...`` in this process, with a given standard input."""

    def __init__(
        self, db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        self.db = db
        self.monkeypatch = monkeypatch
        self.capsys = capsys

    def __call__(
        self, *argv: str, stdin: str | io.StringIO = "", accounts: bool = True
    ) -> tuple[int, str, str]:
        self.capsys.readouterr()
        self.monkeypatch.setattr(
            sys, "stdin", stdin if isinstance(stdin, io.StringIO) else io.StringIO(stdin)
        )
        extra = ["--accounts", str(self.db)] if accounts else []
        args = build_parser().parse_args(["users", *argv, *extra])
        code = args.func(args)
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "accounts.db"


@pytest.fixture
def run(db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Runner:
    monkeypatch.delenv(ACCOUNTS_ENV, raising=False)
    return Runner(db, monkeypatch, capsys)


@pytest.fixture
def accounts(db: Path) -> Iterator[Accounts]:
    a = Accounts(db)
    yield a
    a.close()


def test_add_reads_one_line_from_stdin(run: Runner, db: Path) -> None:
    code, out, err = run("add", "alice", stdin=PASSWORD + "\r\nignored\n")
    assert (code, out, err) == (0, "added therapist alice\n", "")
    with Accounts(db) as a:
        assert a.verify("alice", PASSWORD) is not None  # no newline in the password
        assert a.verify("alice", PASSWORD + "\r") is None


def test_add_admin_with_password_stdin(run: Runner, db: Path) -> None:
    code, out, _ = run("add", "root", "--role", "admin", "--password-stdin", stdin=PASSWORD)
    assert (code, out) == (0, "added admin root\n")
    with Accounts(db) as a:
        user = a.verify("root", PASSWORD)
    assert user is not None
    assert user.role == "admin"


def test_add_with_password_file(run: Runner, db: Path, tmp_path: Path) -> None:
    pw = tmp_path / "pw.txt"
    pw.write_text(PASSWORD + "\n", encoding="utf-8")
    code, out, _ = run("add", "alice", "--password-file", str(pw))
    assert (code, out) == (0, "added therapist alice\n")
    with Accounts(db) as a:
        assert a.verify("alice", PASSWORD) is not None


def test_missing_password_file(run: Runner, tmp_path: Path, db: Path) -> None:
    code, out, err = run("add", "alice", "--password-file", str(tmp_path / "nope"))
    assert code == 1
    assert out == ""
    assert err.startswith("hrvstream users: error: cannot read --password-file ")
    assert err.count("\n") == 1
    with Accounts(db) as a:
        assert a.user("alice") is None


def test_prompts_twice_on_a_terminal(
    run: Runner, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = iter([PASSWORD, PASSWORD])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    code, out, _ = run("add", "alice", stdin=FakeTty())
    assert (code, out) == (0, "added therapist alice\n")
    assert len(prompts) == 2
    assert "alice" in prompts[0]
    with Accounts(db) as a:
        assert a.verify("alice", PASSWORD) is not None


def test_prompt_mismatch_changes_nothing(
    run: Runner, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = iter([PASSWORD, PASSWORD + "x"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": next(answers))
    code, out, err = run("add", "alice", stdin=FakeTty())
    assert code == 1
    assert out == ""
    assert err == "hrvstream users: error: the two passwords differ; nothing changed\n"
    with Accounts(db) as a:
        assert a.user("alice") is None


def test_weak_password_on_a_terminal_is_refused_before_asking_again(
    run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return "short"

    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    code, _, err = run("add", "alice", stdin=FakeTty())
    assert code == 1
    assert "too short" in err
    assert len(prompts) == 1


def test_list_assign_unassign_remove(run: Runner, db: Path) -> None:
    assert run("add", "zoe", stdin=PASSWORD)[0] == 0
    assert run("add", "adam", "--role", "admin", stdin=PASSWORD)[0] == 0
    code, out, _ = run("assign", "zoe", "p-017", "p-002")
    assert (code, out) == (0, "assigned p-017, p-002 to zoe\n")
    code, out, _ = run("list")
    assert code == 0
    assert out.splitlines() == [
        "username  role       patients",
        "adam      admin      -",
        "zoe       therapist  p-002 p-017",
    ]
    code, out, _ = run("unassign", "zoe", "p-017")
    assert (code, out) == (0, "unassigned p-017 from zoe\n")
    with Accounts(db) as a:
        user = a.user("zoe")
        assert user is not None
        assert user.patients == {"p-002"}
    code, out, _ = run("remove", "zoe")
    assert (code, out) == (0, "removed zoe\n")
    assert [line.split() for line in run("list")[1].splitlines()[1:]] == [["adam", "admin", "-"]]


def test_passwd(run: Runner, db: Path) -> None:
    run("add", "alice", stdin=PASSWORD)
    with Accounts(db) as a:
        session = a.login("alice", PASSWORD)
        assert session is not None
    code, out, _ = run("passwd", "alice", "--password-stdin", stdin="a new password\n")
    assert code == 0
    assert out.startswith("changed the password of alice")
    with Accounts(db) as a:
        assert a.session(session.token) is None
        assert a.verify("alice", "a new password") is not None


@pytest.mark.parametrize(
    ("argv", "stdin", "message"),
    [
        (("add", "alice"), PASSWORD, "user 'alice' exists already"),
        (("add", "bob"), "short\n", "the password is too short"),
        (("add", "bob"), "", "no password on standard input"),
        (("add", "Bob"), PASSWORD, "invalid username 'Bob': use lower case ('bob')"),
        (("passwd", "carol"), PASSWORD, "no user 'carol'"),
        (("remove", "carol"), "", "no user 'carol'"),
        (("assign", "carol", "p-001"), "", "no user 'carol'"),
        (("unassign", "carol", "p-001"), "", "no user 'carol'"),
        (("assign", "alice", "p-001", "P002"), "", "cannot assign: patient pseudonym 'P002'"),
        (("assign", "alice", "a09e1a8c4d2e"), "", "'a09e1a8c4d2e' looks like a BLE address"),
    ],
)
def test_errors_are_one_line(
    run: Runner, db: Path, argv: tuple[str, ...], stdin: str, message: str
) -> None:
    assert run("add", "alice", stdin=PASSWORD)[0] == 0
    code, out, err = run(*argv, stdin=stdin)
    assert code == 1
    assert out == ""
    assert err.startswith("hrvstream users: error: ")
    assert message in err
    assert err.count("\n") == 1
    with Accounts(db) as a:
        user = a.user("alice")
        assert user is not None
        assert user.patients == frozenset()  # p-001 was not assigned before P002 failed
        assert [u.username for u in a.users()] == ["alice"]


def test_commands_other_than_add_do_not_create_a_file(run: Runner, db: Path) -> None:
    code, _, err = run("list")
    assert code == 1
    assert err.startswith(f"hrvstream users: error: no accounts file {db}")
    assert not db.exists()


def test_corrupt_accounts_file(run: Runner, db: Path) -> None:
    db.write_bytes(b"garbage" * 500)
    code, _, err = run("list")
    assert code == 1
    assert err.startswith("hrvstream users: error: ")
    assert str(db) in err
    assert err.count("\n") == 1


def test_accounts_file_from_the_environment(
    run: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_db = tmp_path / "from-env.db"
    monkeypatch.setenv(ACCOUNTS_ENV, str(env_db))
    code, _, _ = run("add", "alice", stdin=PASSWORD, accounts=False)
    assert code == 0
    with Accounts(env_db) as a:
        assert a.user("alice") is not None


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["users", "add", "alice", "--role", "root"])
    assert info.value.code == 2
    assert "invalid choice: 'root'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["users", "assign", "alice"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        parser.parse_args(
            ["users", "add", "alice", "--password-stdin", "--password-file", "pw.txt"]
        )
    assert info.value.code == 2


# -- as a separate process -------------------------------------------------------------

_PARSER_ONLY = (
    "import argparse, sys\n"
    "from hrvstream.dashboard.users_cli import add_users_parser\n"
    "p = argparse.ArgumentParser(prog='hrvstream')\n"
    "add_users_parser(p.add_subparsers(dest='command', required=True))\n"
    "a = p.parse_args(sys.argv[1:])\n"
    "sys.exit(a.func(a))\n"
)


def test_parser_in_a_subprocess(db: Path) -> None:
    def users(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", _PARSER_ONLY, "users", *argv, "--accounts", str(db)],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    done = users("add", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    assert (done.returncode, done.stdout, done.stderr) == (0, "added therapist alice\n", "")
    done = users("add", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode == 1
    assert done.stderr == "hrvstream users: error: user 'alice' exists already\n"


def test_hrvstream_users_command(db: Path) -> None:
    accounts = ["--accounts", str(db)]
    done = hrvstream(["users", "add", "alice", "--password-stdin", *accounts], input=PASSWORD)
    assert (done.returncode, done.stdout, done.stderr) == (0, "added therapist alice\n", "")
    done = hrvstream(["users", "assign", "alice", "p-017", *accounts])
    assert (done.returncode, done.stderr) == (0, "")
    done = hrvstream(["users", "list", *accounts])
    assert done.returncode == 0
    assert done.stdout.splitlines()[1].split() == ["alice", "therapist", "p-017"]
    with Accounts(db) as a:
        assert a.verify("alice", PASSWORD) is not None


@pytest.mark.parametrize(
    ("argv", "stdin", "code", "message"),
    [
        (["users", "add", "bob", "--password-stdin"], "short", 1, "too short"),
        (["users", "assign", "bob", "p-017"], "", 1, "no user 'bob'"),
        (["users", "assign", "alice", "P-017"], "", 1, "patient pseudonym 'P-017'"),
        (["users", "add", "bob", "--role", "god"], "", 2, "invalid choice: 'god'"),
    ],
)
def test_hrvstream_users_errors_without_traceback(
    db: Path, argv: list[str], stdin: str, code: int, message: str
) -> None:
    with Accounts(db) as a:
        a.add_user("alice", PASSWORD)
    done = hrvstream([*argv, "--accounts", str(db)], input=stdin)
    assert done.returncode == code
    assert "Traceback" not in done.stderr
    assert message in done.stderr
    if code == 1:
        assert done.stderr.startswith("hrvstream users: error: ")
        assert done.stderr.count("\n") == 1


def test_hrvstream_users_on_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "accounts.db"
    path.write_bytes(b"\x00garbage" * 300)
    done = hrvstream(["users", "list", "--accounts", str(path)])
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("hrvstream users: error: ")
    assert done.stderr.count("\n") == 1
    assert str(path) in done.stderr
