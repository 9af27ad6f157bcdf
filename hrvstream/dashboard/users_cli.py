"""``hrvstream users``: manage the dashboard's accounts from the command line.

::

    hrvstream users add NAME [--role therapist|admin] [--password-file FILE | --password-stdin]
    hrvstream users passwd NAME [--password-file FILE | --password-stdin]
    hrvstream users remove NAME
    hrvstream users list
    hrvstream users assign NAME PATIENT...
    hrvstream users unassign NAME PATIENT...

Every action takes ``--accounts FILE`` (default: ``$HRVSTREAM_DASHBOARD_ACCOUNTS``, else
``hrvstream-accounts.db``). Only ``add`` creates a missing file. Without a password
option, ``add`` and ``passwd`` ask twice on a terminal and otherwise read one line from
standard input. Errors are one line, ``hrvstream users: error: ...``, and exit status 1
(2 for a usage error).

This module imports only the standard library at import time, so ``hrvstream --help``
stays fast; :mod:`hrvstream.dashboard.accounts` is imported when an action runs.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hrvstream.errors import ConfigError, HrvStreamError

if TYPE_CHECKING:
    from hrvstream.dashboard.accounts import Accounts

__all__ = ["ACCOUNTS_ENV", "DEFAULT_ACCOUNTS_FILE", "add_users_parser", "run_users"]

#: Environment variable naming the accounts file.
ACCOUNTS_ENV = "HRVSTREAM_DASHBOARD_ACCOUNTS"
#: The accounts file when neither ``--accounts`` nor the environment names one.
DEFAULT_ACCOUNTS_FILE = "hrvstream-accounts.db"

_PROG_ERROR = "hrvstream users: error:"

_Action = Callable[[argparse.Namespace], int]


def add_users_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``users`` command and its actions to ``subparsers``.

    Sets ``func`` (= :func:`run_users`) on the ``users`` parser and ``users_func`` (the
    action) on each action's parser, so ``args.func(args)`` runs the command.

    Parameters
    ----------
    subparsers:
        The result of ``parser.add_subparsers(...)`` of the ``hrvstream`` parser.
    """
    u = subparsers.add_parser(
        "users",
        help="manage the dashboard's accounts: therapists, admins and their patients",
        description=(
            "Add, remove and list the people who may sign in to the therapist dashboard, "
            "change their passwords, and assign them patients. A therapist sees only its "
            "assigned patients; an admin sees everyone."
        ),
    )
    u.set_defaults(func=run_users)
    actions = u.add_subparsers(dest="users_command", required=True, metavar="ACTION")

    def action(name: str, fn: _Action, help_text: str) -> argparse.ArgumentParser:
        p = actions.add_parser(
            name, help=help_text, description=help_text[:1].upper() + help_text[1:] + "."
        )
        p.add_argument(
            "--accounts",
            metavar="FILE",
            help=f"the accounts file (default: ${ACCOUNTS_ENV}, else {DEFAULT_ACCOUNTS_FILE})",
        )
        p.set_defaults(users_func=fn)
        return p

    def password_options(p: argparse.ArgumentParser) -> None:
        g = p.add_mutually_exclusive_group()
        g.add_argument("--password-file", metavar="FILE", help="read the password from FILE")
        g.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password from one line of standard input",
        )

    a = action("add", _cmd_add, "add a user (asks for the password)")
    a.add_argument("name", help="the sign-in name (lower case; an e-mail address works)")
    a.add_argument(
        "--role",
        choices=("therapist", "admin"),
        default="therapist",
        help="therapist (sees assigned patients; default) or admin (sees everyone)",
    )
    password_options(a)

    pw = action("passwd", _cmd_passwd, "change a user's password (ends its sessions)")
    pw.add_argument("name", help="the user")
    password_options(pw)

    rm = action("remove", _cmd_remove, "remove a user, its sessions and its assignments")
    rm.add_argument("name", help="the user")

    action("list", _cmd_list, "list the users, their roles and their patients")

    asg = action("assign", _cmd_assign, "let a user see patients")
    asg.add_argument("name", help="the user")
    asg.add_argument("patients", nargs="+", metavar="PATIENT", help="patient codes")

    un = action("unassign", _cmd_unassign, "stop a user seeing patients")
    un.add_argument("name", help="the user")
    un.add_argument("patients", nargs="+", metavar="PATIENT", help="patient codes")


def run_users(args: argparse.Namespace) -> int:
    """Run the parsed ``users`` action; errors are printed as one line.

    Returns
    -------
    int
        0 on success, 1 after an error.
    """
    fn: _Action = args.users_func
    try:
        return fn(args)
    except HrvStreamError as exc:
        print(f"{_PROG_ERROR} {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f" {exc.filename}:" if exc.filename else ""
        print(f"{_PROG_ERROR}{where} {exc.strerror or exc}", file=sys.stderr)
        return 1


def _accounts_path(args: argparse.Namespace) -> Path:
    return Path(args.accounts or os.environ.get(ACCOUNTS_ENV) or DEFAULT_ACCOUNTS_FILE)


def _open(args: argparse.Namespace, *, create: bool = False) -> Accounts:
    from hrvstream.dashboard.accounts import Accounts

    return Accounts(_accounts_path(args), create=create)


def _strip_newline(line: str) -> str:
    if line.endswith("\n"):
        line = line[:-1]
    if line.endswith("\r"):
        line = line[:-1]
    return line


def _read_password(args: argparse.Namespace, username: str) -> str:
    """The new password from ``--password-file``, ``--password-stdin``, or a prompt."""
    from hrvstream.dashboard.accounts import check_password

    if args.password_file:
        path = Path(args.password_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read --password-file {path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"--password-file {path} is not UTF-8 text") from exc
        return _strip_newline(text.split("\n", 1)[0])
    if args.password_stdin or not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line:
            raise ConfigError("no password on standard input (give it as one line)")
        return _strip_newline(line)
    password = getpass.getpass(f"New password for {username}: ")
    check_password(username, password)
    if getpass.getpass("Again: ") != password:
        raise ConfigError("the two passwords differ; nothing changed")
    return password


def _cmd_add(args: argparse.Namespace) -> int:
    from hrvstream.dashboard.accounts import UserExists, check_username

    check_username(args.name)
    with _open(args, create=True) as accounts:
        if accounts.user(args.name) is not None:
            raise UserExists(f"user {args.name!r} exists already")
        user = accounts.add_user(args.name, _read_password(args, args.name), role=args.role)
    print(f"added {user.role} {user.username}")
    return 0


def _cmd_passwd(args: argparse.Namespace) -> int:
    from hrvstream.dashboard.accounts import UnknownUser, check_username

    check_username(args.name)
    with _open(args) as accounts:
        if accounts.user(args.name) is None:
            raise UnknownUser(f"no user {args.name!r}")
        accounts.set_password(args.name, _read_password(args, args.name))
    print(f"changed the password of {args.name}; its sessions have ended")
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    with _open(args) as accounts:
        accounts.remove_user(args.name)
    print(f"removed {args.name}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    with _open(args) as accounts:
        users = accounts.users()
    rows = [("username", "role", "patients")]
    rows += [(u.username, u.role, " ".join(sorted(u.patients)) or "-") for u in users]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    for name, role, patients in rows:
        print(f"{name:<{w0}}  {role:<{w1}}  {patients}")
    return 0


def _check_patients(patients: list[str], action: str) -> None:
    """Refuse the whole command before changing anything if one code is invalid."""
    from hrvstream.dashboard.accounts import AccountError
    from hrvstream.protocol.messages import MessageError, check_patient

    for p in patients:
        try:
            check_patient(p)
        except MessageError as exc:
            raise AccountError(f"cannot {action}: {exc.reason}; nothing changed") from exc


def _cmd_assign(args: argparse.Namespace) -> int:
    _check_patients(args.patients, "assign")
    with _open(args) as accounts:
        for p in args.patients:
            accounts.assign(args.name, p)
    print(f"assigned {', '.join(args.patients)} to {args.name}")
    return 0


def _cmd_unassign(args: argparse.Namespace) -> int:
    _check_patients(args.patients, "unassign")
    with _open(args) as accounts:
        for p in args.patients:
            accounts.unassign(args.name, p)
    print(f"unassigned {', '.join(args.patients)} from {args.name}")
    return 0
