"""A real mosquitto broker per test: own config, free loopback ports, persistence.

:class:`MosquittoBroker` runs ``mosquitto -c <its own config>`` in the foreground from a
work directory of its own (config, password file, ACL file, certificates, persistence
database, log). It never touches the system broker (``127.0.0.1:1883``): its ports are
free ephemeral ports on 127.0.0.1, chosen when it first starts and kept across
:meth:`MosquittoBroker.restart`, :meth:`MosquittoBroker.kill` + :meth:`MosquittoBroker.start`,
so clients (and a :class:`tests.infra.tcp_proxy.TcpProxy`) can reconnect to the same
address.

What survives a restart: retained messages, persistent sessions (MQTT v5 with a session
expiry, or v3.1.1 ``clean_session=False``) with their subscriptions and queued QoS 1/2
messages. mosquitto writes its database on a clean stop (SIGTERM); the default
``autosave_interval=1`` with ``autosave_on_changes=True`` also writes it after every
change, so a :meth:`MosquittoBroker.kill` (SIGKILL, a crash) loses at most the changes of
the last few milliseconds, as a real crash would; :meth:`MosquittoBroker.wait_persisted`
waits until given bytes (a payload) are on disk. Each save writes the whole database: a
test that queues many thousands of messages should set ``autosave_on_changes=False``.

mosquitto 2.0's ACL grants every SUBSCRIBE and checks read access for each message it
delivers: assert on what a subscriber receives, never on SUBACK codes.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.infra.certs import CertBundle, client_ssl_context, make_certs

__all__ = [
    "SYSTEM_BROKER_PORT",
    "MosquittoBroker",
    "MosquittoConfig",
    "MosquittoError",
    "find_mosquitto",
    "free_port",
    "hash_password",
    "hrv_acl",
    "hrv_config",
    "tls_handshake_ok",
    "write_password_file",
]

HOST = "127.0.0.1"
SYSTEM_BROKER_PORT = 1883  # the machine's own mosquitto: never ours
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
DEFAULT_LOG_TYPES = ("error", "warning", "notice", "information", "subscribe", "unsubscribe")

_live: weakref.WeakSet[MosquittoBroker] = weakref.WeakSet()


class MosquittoError(RuntimeError):
    """The broker could not be started or stopped; the message ends with its log tail."""


def find_mosquitto() -> str | None:
    """The mosquitto executable, also looked for in ``/usr/sbin`` (not on every PATH).

    Returns
    -------
    str or None
        Its path, or ``None`` when mosquitto is not installed.
    """
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/usr/local/sbin:/sbin"
    return shutil.which("mosquitto", path=path)


def free_port(host: str = HOST) -> int:
    """A TCP port that was free a moment ago (bind to port 0, read it, release it).

    Another process may take it before the broker binds it; :meth:`MosquittoBroker.start`
    retries with new ports when mosquitto reports the address in use.

    Parameters
    ----------
    host : str
        The address to bind.

    Returns
    -------
    int
        The port number.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port: int = s.getsockname()[1]
        if port != SYSTEM_BROKER_PORT:  # not in the ephemeral range, but be sure
            return port


def hash_password(password: str, *, iterations: int = 101) -> str:
    """mosquitto's ``$7$`` password hash (PBKDF2-HMAC-SHA512), as ``mosquitto_passwd`` writes.

    Used when ``mosquitto_passwd`` is not installed.

    Parameters
    ----------
    password : str
        The clear-text password.
    iterations : int
        PBKDF2 iterations (mosquitto_passwd's default is 101).

    Returns
    -------
    str
        ``$7$<iterations>$<base64 salt>$<base64 hash>``, the part after ``user:``.
    """
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def hrv_acl(
    patients: Iterable[str] = (),
    therapists: Iterable[str] = (),
    server: str | None = "server",
    *,
    admin: str | None = "admin",
    prefix: str = "hrv/v1",
) -> str:
    """The project's ACL file, one ``user`` block per account.

    - a patient (user name = pseudonym) may publish its own beats, metrics and status (not
      alerts: those come from the server) and read
      only its own ``<prefix>/<patient>/alerts``;
    - a therapist may read ``<prefix>/#`` and publish only alert acknowledgements;
    - the server may read and publish ``<prefix>/#`` (alerts included); shared
      subscriptions (``$share/<group>/<prefix>/+/beats``) need no rule of their own, as
      mosquitto checks read access per delivered message;
    - ``admin`` may read and write everything: the privileged observer tests use to assert
      that a denied message never reached the broker's subscribers.

    Parameters
    ----------
    patients, therapists : iterable of str
        User names.
    server : str or None
        The server's user name, ``None`` for none.
    admin : str or None
        The privileged user, ``None`` for none.
    prefix : str
        Topic prefix.

    Returns
    -------
    str
        The ACL file's text (mosquitto ``acl_file`` syntax).
    """
    lines = ["# generated by tests.infra.mosquitto.hrv_acl", ""]
    for p in patients:
        lines += [
            f"user {p}",
            *(f"topic write {prefix}/{p}/{kind}" for kind in ("beats", "metrics", "status")),
            f"topic read {prefix}/{p}/alerts",
            "",
        ]
    for t in therapists:
        lines += [f"user {t}", f"topic read {prefix}/#", f"topic write {prefix}/+/alerts/ack", ""]
    if server is not None:
        lines += [f"user {server}", f"topic readwrite {prefix}/#", ""]
    if admin is not None:
        lines += [f"user {admin}", "topic readwrite #", ""]
    return "\n".join(lines)


@dataclass
class MosquittoConfig:
    """How to configure a test broker.

    Attributes
    ----------
    users : Mapping[str, str] or None
        User name -> password. ``None``: anonymous clients are allowed and there is no
        password file. Otherwise anonymous clients are refused.
    acl : str or None
        The text of an ``acl_file`` (see :func:`hrv_acl`); ``None`` for no ACL.
    tls : bool
        Add a TLS listener (TLS 1.2 minimum) with a server certificate for 127.0.0.1.
    certs : CertBundle or None
        The certificates; generated in the broker's directory when ``tls`` and ``None``.
    require_client_certificate : bool
        Make the TLS listener demand a client certificate signed by the CA.
    plain : bool
        Keep the plain MQTT listener (set ``False`` for a TLS-only broker).
    max_packet_size : int or None
        mosquitto ``max_packet_size``: larger packets get the client disconnected.
    message_size_limit : int or None
        mosquitto ``message_size_limit`` (payload bytes; larger PUBLISHes are dropped).
    max_inflight_messages, max_queued_messages : int or None
        Per-client limits of mosquitto (``max_queued_messages`` default 1000).
    max_queued_bytes : int or None
        mosquitto ``max_queued_bytes``.
    persistent_client_expiration : str or None
        e.g. ``"1h"``: when sessions of v3 clients without an expiry are dropped.
    autosave_interval : int
        With ``autosave_on_changes``: save after this many changes, else every N seconds.
    autosave_on_changes : bool
        See ``autosave_interval``.
    log_types : Sequence[str]
        mosquitto ``log_type`` values.
    extra : Sequence[str]
        Further configuration lines, appended verbatim.
    template : str or None
        A complete configuration to use instead of the generated one (e.g. the
        deployment's file, rewritten): ``{port}``, ``{tls_port}`` and ``{dir}`` (the
        broker's directory, holding ``passwd``, ``acl``, ``persistence/`` and, with
        ``tls`` and no ``certs``, the generated ``certs/ca.pem``, ``certs/server.pem``,
        ``certs/server.key``) are filled in, and ``extra`` is appended. ``plain`` and
        ``tls`` still decide which ports are allocated; ``users`` and ``acl`` are still
        written; the other fields are ignored.
    """

    users: Mapping[str, str] | None = None
    acl: str | None = None
    tls: bool = False
    certs: CertBundle | None = None
    require_client_certificate: bool = False
    plain: bool = True
    max_packet_size: int | None = None
    message_size_limit: int | None = None
    max_inflight_messages: int | None = None
    max_queued_messages: int | None = None
    max_queued_bytes: int | None = None
    persistent_client_expiration: str | None = None
    autosave_interval: int = 1
    autosave_on_changes: bool = True
    log_types: Sequence[str] = field(default_factory=lambda: DEFAULT_LOG_TYPES)
    extra: Sequence[str] = ()
    template: str | None = None


def hrv_config(
    patients: Iterable[str] = ("p1", "p2"),
    therapists: Iterable[str] = ("t1",),
    server: str | None = "server",
    *,
    admin: str | None = "admin",
    tls: bool = False,
    **options: Any,
) -> MosquittoConfig:
    """A broker configured like a clinic's: a random password per user and :func:`hrv_acl`.

    Parameters
    ----------
    patients, therapists, server, admin
        As for :func:`hrv_acl`.
    tls : bool
        Add the TLS listener.
    **options
        Further :class:`MosquittoConfig` fields.

    Returns
    -------
    MosquittoConfig
        ``users`` holds the passwords (or ask the broker: ``broker.password(user)``).
    """
    patients, therapists = list(patients), list(therapists)
    names = [*patients, *therapists, *(n for n in (server, admin) if n is not None)]
    users = {n: f"pw-{n}-{secrets.token_hex(6)}" for n in names}
    acl = hrv_acl(patients, therapists, server, admin=admin)
    return MosquittoConfig(users=users, acl=acl, tls=tls, **options)


class MosquittoBroker:
    """One mosquitto process with its own directory, config and loopback ports.

    Parameters
    ----------
    config : MosquittoConfig
        What to configure.
    directory : Path
        Its work directory (config, secrets, ``persistence/``, ``mosquitto.log``).
    executable : str, optional
        The mosquitto binary; found with :func:`find_mosquitto` by default.

    Notes
    -----
    Use as a context manager (``with MosquittoBroker(cfg, d) as b:``) or call
    :meth:`start`/:meth:`stop`; the ``mosquitto_factory`` fixture does it for you. The
    methods block (at most a few seconds) until the broker accepts connections or has
    exited; from a coroutine, ``await asyncio.to_thread(broker.start)`` keeps the event
    loop running meanwhile.
    """

    def __init__(
        self, config: MosquittoConfig, directory: Path, *, executable: str | None = None
    ) -> None:
        exe = executable or find_mosquitto()
        if exe is None:
            raise MosquittoError("mosquitto is not installed")
        self.executable = exe
        self.config = config
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.persistence_dir = self.directory / "persistence"
        self.persistence_dir.mkdir(exist_ok=True)
        self.config_path = self.directory / "mosquitto.conf"
        self.log_path = self.directory / "mosquitto.log"
        self.certs: CertBundle | None = config.certs
        if config.tls and self.certs is None:
            self.certs = make_certs(self.directory / "certs")
        self._port: int | None = None
        self._tls_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._log_offset = 0
        self.starts = 0
        self._write_secrets()
        _live.add(self)

    # -- properties ---------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address the listeners bind: always ``127.0.0.1``."""
        return HOST

    @property
    def port(self) -> int:
        """The plain MQTT port (assigned at the first :meth:`start`)."""
        if self._port is None:
            raise MosquittoError("no plain listener, or the broker was never started")
        return self._port

    @property
    def tls_port(self) -> int:
        """The MQTT-over-TLS port (assigned at the first :meth:`start`)."""
        if self._tls_port is None:
            raise MosquittoError("no TLS listener, or the broker was never started")
        return self._tls_port

    @property
    def ca_file(self) -> Path:
        """The CA certificate that signed the broker's TLS certificate."""
        if self.certs is None:
            raise MosquittoError("this broker has no TLS listener")
        return self.certs.ca_cert

    @property
    def pid(self) -> int | None:
        """The process id while it runs (paused included)."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the process is alive (a paused broker is alive)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def password_file(self) -> Path:
        """The mosquitto password file (written from :attr:`MosquittoConfig.users`)."""
        return self.directory / "passwd"

    @property
    def persistence_file(self) -> Path:
        """mosquitto's database (``persistence/mosquitto.db``), once it saved one."""
        return self.persistence_dir / "mosquitto.db"

    def wait_persisted(self, *needles: bytes, timeout: float = 5.0) -> None:
        """Wait until the database on disk contains every one of ``needles``.

        Payloads, topics and client ids are stored verbatim, so this tells when a message
        would survive a :meth:`kill`. mosquitto replaces the file atomically.

        Parameters
        ----------
        *needles : bytes
            Byte strings to look for, e.g. the payload of the last message published.
        timeout : float
            Seconds.

        Raises
        ------
        MosquittoError
            If they are not all on disk in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                data = self.persistence_file.read_bytes()
            except FileNotFoundError:
                data = b""
            missing = [n for n in needles if n not in data]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise MosquittoError(
                    f"{missing} not in {self.persistence_file} after {timeout} s "
                    f"(autosave_interval={self.config.autosave_interval}, "
                    f"autosave_on_changes={self.config.autosave_on_changes})"
                )
            time.sleep(0.01)

    def password(self, user: str) -> str:
        """The password of ``user`` from the configuration.

        Parameters
        ----------
        user : str
            A user name of :attr:`MosquittoConfig.users`.

        Returns
        -------
        str
            Its password.
        """
        if self.config.users is None or user not in self.config.users:
            raise KeyError(f"{user!r} is not a user of this broker")
        return self.config.users[user]

    def url(self, user: str | None = None, *, tls: bool = False) -> str:
        """The broker URL as the project writes it, without a password.

        Parameters
        ----------
        user : str, optional
            User name to put in the URL.
        tls : bool
            ``mqtts://`` with the TLS port instead of ``mqtt://`` with the plain one.

        Returns
        -------
        str
            e.g. ``mqtt://p1@127.0.0.1:40123`` or ``mqtts://p1@127.0.0.1:40124``.
        """
        scheme, port = ("mqtts", self.tls_port) if tls else ("mqtt", self.port)
        who = f"{user}@" if user else ""
        return f"{scheme}://{who}{self.host}:{port}"

    def client(
        self,
        user: str | None = None,
        *,
        tls: bool = False,
        identifier: str | None = None,
        session_expiry: int | None = None,
        **kwargs: Any,
    ) -> aiomqtt.Client:
        """An MQTT v5 aiomqtt client for this broker (to be used in ``async with``).

        Parameters
        ----------
        user : str, optional
            Connect as this user with its configured password.
        tls : bool
            Use the TLS listener, trusting only the broker's test CA.
        identifier : str, optional
            Client id.
        session_expiry : int, optional
            Seconds; makes the session persistent (``clean_start=False`` and the
            ``SessionExpiryInterval`` property) for an ``identifier``.
        **kwargs
            Further ``aiomqtt.Client`` arguments (they override the above).

        Returns
        -------
        aiomqtt.Client
            Not yet connected. Create it inside a running event loop.
        """
        args: dict[str, Any] = {
            "hostname": self.host,
            "port": self.tls_port if tls else self.port,
            "identifier": identifier,
            "protocol": aiomqtt.ProtocolVersion.V5,
            "timeout": 10.0,
        }
        if user is not None:
            args["username"] = user
            args["password"] = self.password(user) if self.config.users is not None else None
        if tls:
            args["tls_context"] = client_ssl_context(self.ca_file)
        if session_expiry is not None:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = session_expiry
            args["properties"] = props
            args["clean_start"] = False
        args.update(kwargs)
        return aiomqtt.Client(**args)

    # -- configuration ------------------------------------------------------------------

    def _write_secrets(self) -> None:
        cfg = self.config
        if cfg.users is not None:
            write_password_file(self.password_file, cfg.users)
        if cfg.acl is not None:
            acl = self.directory / "acl"
            acl.write_text(cfg.acl, encoding="utf-8")
            acl.chmod(0o600)

    def _render(self) -> str:
        cfg = self.config
        # As root, mosquitto would switch to the 'mosquitto' user, which cannot read this
        # directory; as anyone else the option is ignored.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name}"
        if cfg.template is not None:
            text = (
                cfg.template.replace("{port}", str(self._port))
                .replace("{tls_port}", str(self._tls_port))
                .replace("{dir}", str(self.directory))
            )
            return "\n".join([text, "", user, *cfg.extra, ""])
        lines = [
            "# generated by tests.infra.mosquitto",
            user,
            "per_listener_settings false",
            "persistence true",
            f"persistence_location {self.persistence_dir}",
            "persistence_file mosquitto.db",
            f"autosave_interval {cfg.autosave_interval}",
            f"autosave_on_changes {'true' if cfg.autosave_on_changes else 'false'}",
            "log_dest stderr",
            *(f"log_type {t}" for t in cfg.log_types),
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
        ]
        if cfg.users is None:
            lines.append("allow_anonymous true")
        else:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        if cfg.acl is not None:
            lines.append(f"acl_file {self.directory / 'acl'}")
        for key in (
            "max_packet_size",
            "message_size_limit",
            "max_inflight_messages",
            "max_queued_messages",
            "max_queued_bytes",
            "persistent_client_expiration",
        ):
            value = getattr(cfg, key)
            if value is not None:
                lines.append(f"{key} {value}")
        if self._port is not None:
            lines += ["", f"listener {self._port} {HOST}", "protocol mqtt"]
        if self._tls_port is not None:
            assert self.certs is not None
            lines += [
                "",
                f"listener {self._tls_port} {HOST}",
                "protocol mqtt",
                f"cafile {self.certs.ca_cert}",
                f"certfile {self.certs.server_cert}",
                f"keyfile {self.certs.server_key}",
                "tls_version tlsv1.2",
                f"require_certificate {'true' if cfg.require_client_certificate else 'false'}",
            ]
        lines += ["", *cfg.extra, ""]
        return "\n".join(lines)

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Start mosquitto and wait until every listener accepts TCP connections.

        The first start picks free ports (retrying with new ones if another process
        grabs one first); later starts reuse them, and the persistence database.

        Returns
        -------
        MosquittoBroker
            ``self``.

        Raises
        ------
        MosquittoError
            If mosquitto exits or does not listen within 10 s; with the log tail.
        """
        if self.running:
            raise MosquittoError(f"mosquitto (pid {self.pid}) is already running")
        first = self._port is None and self._tls_port is None
        attempts = 5
        for attempt in range(attempts):
            if first:
                self._port = free_port() if self.config.plain else None
                self._tls_port = free_port() if self.config.tls else None
                if self._port is None and self._tls_port is None:
                    raise MosquittoError("no listener: set plain=True or tls=True")
            try:
                self._spawn_and_wait()
                return self
            except _AddressInUse:
                if attempt == attempts - 1:
                    raise MosquittoError(
                        f"ports {self._ports()} stay in use\n{self.log_tail()}"
                    ) from None
                if not first:
                    # Same ports on a restart: wait for whoever holds one to let go.
                    time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    def _ports(self) -> list[int]:
        return [p for p in (self._port, self._tls_port) if p is not None]

    def _spawn_and_wait(self) -> None:
        self.config_path.write_text(self._render(), encoding="utf-8")
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"=== tests.infra: start #{self.starts}, ports {self._ports()}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                [self.executable, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        self._paused = False
        deadline = time.monotonic() + START_TIMEOUT_S
        pending = self._ports()
        while pending:
            if self._proc.poll() is not None:
                self._proc.wait()
                text = self.log_path.read_bytes()[self._log_offset :].decode(errors="replace")
                if "Address already in use" in text:
                    raise _AddressInUse
                raise MosquittoError(
                    f"mosquitto exited with code {self._proc.returncode} at start\n"
                    f"{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self._terminate(signal.SIGKILL)
                raise MosquittoError(
                    f"mosquitto did not listen on {pending} within {START_TIMEOUT_S} s\n"
                    f"{self.log_tail()}"
                )
            try:
                with socket.create_connection((HOST, pending[0]), timeout=0.5):
                    pending.pop(0)
            except OSError:
                time.sleep(0.01)
        # A port someone else listens on would also accept: make sure it is ours.
        if self._proc.poll() is not None:
            raise MosquittoError(f"mosquitto exited right after starting\n{self.log_tail()}")

    def _terminate(self, sig: signal.Signals) -> int | None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return None
        if self._paused and sig != signal.SIGKILL:
            proc.send_signal(signal.SIGCONT)  # a stopped process would not act on SIGTERM
        self._paused = False
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise MosquittoError(
                f"mosquitto ignored {sig.name} for {STOP_TIMEOUT_S} s; killed\n{self.log_tail()}"
            ) from None

    def stop(self) -> None:
        """Stop cleanly: SIGTERM, and wait (mosquitto saves its database). No-op if stopped."""
        self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """Crash it: SIGKILL, and wait. Only what autosave already wrote survives."""
        self._terminate(signal.SIGKILL)

    def restart(self, *, hard: bool = False) -> Self:
        """Stop (or, with ``hard``, kill) and start again on the same ports and database.

        Parameters
        ----------
        hard : bool
            SIGKILL instead of SIGTERM.

        Returns
        -------
        MosquittoBroker
            ``self``.
        """
        if hard:
            self.kill()
        else:
            self.stop()
        return self.start()

    def reload(self) -> None:
        """Make mosquitto re-read its password file and ACL (SIGHUP).

        mosquitto 2.0 then disconnects clients whose credentials no longer verify. Change
        :attr:`password_file` (see :func:`write_password_file`) or ``directory/"acl"``
        first. Returns once the broker logged that it reloaded.
        """
        if self._proc is None or not self.running:
            raise MosquittoError("mosquitto is not running")
        marker = b"Reloading config"
        before = self.log_path.read_bytes().count(marker)
        self._proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5.0
        while self.log_path.read_bytes().count(marker) <= before:
            if time.monotonic() > deadline:
                raise MosquittoError(
                    f"no {marker!r} in the log 5 s after SIGHUP (log_type notice needed)\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.01)

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections stay open but nothing answers."""
        if self._proc is None or not self.running:
            raise MosquittoError("mosquitto is not running")
        self._proc.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Continue a paused broker (SIGCONT)."""
        if self._proc is not None and self.running:
            self._proc.send_signal(signal.SIGCONT)
        self._paused = False

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the broker's log (all its starts).

        Parameters
        ----------
        lines : int
            How many.

        Returns
        -------
        str
            Text with a header naming the log file.
        """
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return f"(no log at {self.log_path})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last {lines} lines of {self.log_path}:\n{tail}"

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<MosquittoBroker {state} port={self._port} tls_port={self._tls_port}>"


class _AddressInUse(Exception):
    pass


def write_password_file(
    path: Path, users: Mapping[str, str], *, use_mosquitto_passwd: bool = True
) -> Path:
    """Write a mosquitto password file, with ``mosquitto_passwd -b`` when available.

    Parameters
    ----------
    path : Path
        The file to (over)write; mode 0600.
    users : Mapping[str, str]
        User name -> clear-text password.
    use_mosquitto_passwd : bool
        ``False`` writes the hashes with :func:`hash_password` even if the tool exists.

    Returns
    -------
    Path
        ``path``.
    """
    tool = shutil.which("mosquitto_passwd") if use_mosquitto_passwd else None
    path.unlink(missing_ok=True)
    if tool is None:
        text = "".join(f"{u}:{hash_password(p)}\n" for u, p in users.items())
        path.write_text(text, encoding="utf-8")
    else:
        path.touch()
        for u, p in users.items():
            # -b takes the password on the command line: fine for throwaway test secrets.
            subprocess.run(
                [tool, "-b", str(path), u, p], check=True, capture_output=True, timeout=30
            )
    path.chmod(0o600)
    return path


def tls_handshake_ok(broker: MosquittoBroker, ctx: ssl.SSLContext) -> bool:
    """Whether a TLS handshake with the broker's TLS port succeeds with ``ctx``.

    Parameters
    ----------
    broker : MosquittoBroker
        A running broker with a TLS listener.
    ctx : ssl.SSLContext
        The client context.

    Returns
    -------
    bool
        ``True`` if the handshake completed.
    """
    try:
        with (
            socket.create_connection((broker.host, broker.tls_port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=broker.host),
        ):
            return True
    except (ssl.SSLError, OSError):
        return False


@atexit.register
def _kill_leftovers() -> None:
    for broker in list(_live):
        with contextlib.suppress(Exception):
            broker.kill()
