"""Test infrastructure for the MQTT path: real mosquitto brokers, a fault proxy, TLS certs.

Fixtures (import them into a test module, or list ``"tests.infra"`` in
``pytest_plugins`` of the top-level ``tests/conftest.py``):

- ``mosquitto_factory(config=None, *, start=True) -> MosquittoBroker``: brokers on free
  loopback ports, each in its own directory under ``tmp_path``; all stopped at teardown.
  Without the mosquitto binary the test is skipped, or fails under ``CI=true``.
- ``mosquitto_broker``: a started anonymous broker (plain listener only).
- ``hrv_broker``: a started broker configured like a clinic's (:func:`hrv_config` with
  TLS): users ``p1``, ``p2`` (patients), ``t1`` (therapist), ``server`` and ``admin``.
- ``tcp_proxy_factory(target, *, tls=False) -> TcpProxy``: started proxies, closed at
  teardown.
- ``mqtt_certs``: a session's :class:`CertBundle` with client certificates for ``p1``,
  ``p2``, ``t1`` and ``server``.

Helpers for asserting what a (privileged) subscriber sees, MQTT v5 with aiomqtt:
:func:`subscriber` (an async context manager yielding a :class:`Collector`) and
:func:`collect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import aiomqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from tests.conftest import require
from tests.infra.certs import CertBundle, ClientCert, client_ssl_context, make_certs
from tests.infra.mosquitto import (
    MosquittoBroker,
    MosquittoConfig,
    MosquittoError,
    find_mosquitto,
    hrv_acl,
    hrv_config,
)
from tests.infra.tcp_proxy import TcpProxy

__all__ = [
    "CertBundle",
    "ClientCert",
    "Collector",
    "MosquittoBroker",
    "MosquittoConfig",
    "MosquittoError",
    "MosquittoFactory",
    "TcpProxy",
    "TcpProxyFactory",
    "client_ssl_context",
    "collect",
    "hrv_acl",
    "hrv_broker",
    "hrv_config",
    "make_certs",
    "mosquitto_broker",
    "mosquitto_factory",
    "mqtt_certs",
    "reason_value",
    "subscriber",
    "tcp_proxy_factory",
]


class MosquittoFactory(Protocol):
    """Signature of the ``mosquitto_factory`` fixture."""

    def __call__(
        self, config: MosquittoConfig | None = None, /, *, start: bool = True
    ) -> MosquittoBroker:
        """A broker with ``config`` (anonymous, plain listener by default), started."""
        ...


class TcpProxyFactory(Protocol):
    """Signature of the ``tcp_proxy_factory`` fixture."""

    def __call__(
        self, target: MosquittoBroker | tuple[str, int], /, *, tls: bool = False
    ) -> TcpProxy:
        """A started proxy in front of a broker's plain (or TLS) port, or host/port."""
        ...


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[MosquittoFactory]:
    """Start brokers on free loopback ports; stop them all at teardown.

    Parameters
    ----------
    tmp_path : Path
        pytest's per-test directory; broker *i* lives in ``tmp_path/mosquitto-<i>``.

    Yields
    ------
    MosquittoFactory
        ``factory(config=None, *, start=True) -> MosquittoBroker``.
    """
    if find_mosquitto() is None:
        require("mosquitto (apt-get install mosquitto mosquitto-clients)")
    brokers: list[MosquittoBroker] = []

    def factory(config: MosquittoConfig | None = None, /, *, start: bool = True) -> MosquittoBroker:
        broker = MosquittoBroker(
            config or MosquittoConfig(), tmp_path / f"mosquitto-{len(brokers)}"
        )
        brokers.append(broker)
        if start:
            broker.start()
        return broker

    yield factory
    errors: list[str] = []
    for broker in brokers:
        try:
            broker.stop()
        except MosquittoError as exc:
            errors.append(str(exc))
    if errors:
        raise MosquittoError("\n\n".join(errors))


@pytest.fixture
def mosquitto_broker(mosquitto_factory: MosquittoFactory) -> MosquittoBroker:
    """A started broker that lets anonymous clients do anything (plain listener).

    Parameters
    ----------
    mosquitto_factory : MosquittoFactory
        The factory fixture.

    Returns
    -------
    MosquittoBroker
        Running.
    """
    return mosquitto_factory()


@pytest.fixture
def hrv_broker(mosquitto_factory: MosquittoFactory) -> MosquittoBroker:
    """A started broker with passwords, the project's ACL and a TLS listener.

    Users ``p1``, ``p2`` (patients), ``t1`` (therapist), ``server`` and ``admin``
    (reads and writes everything); their passwords from ``broker.password(user)``.

    Parameters
    ----------
    mosquitto_factory : MosquittoFactory
        The factory fixture.

    Returns
    -------
    MosquittoBroker
        Running, with ``port`` and ``tls_port``.
    """
    return mosquitto_factory(hrv_config(tls=True))


@pytest.fixture
def tcp_proxy_factory() -> Iterator[TcpProxyFactory]:
    """Start :class:`TcpProxy` instances; close them all at teardown.

    Yields
    ------
    TcpProxyFactory
        ``factory(target, *, tls=False) -> TcpProxy``; ``target`` is a broker (its plain
        port, or its TLS port with ``tls``) or a ``(host, port)`` pair.
    """
    proxies: list[TcpProxy] = []

    def factory(target: MosquittoBroker | tuple[str, int], /, *, tls: bool = False) -> TcpProxy:
        if isinstance(target, MosquittoBroker):
            host, port = target.host, target.tls_port if tls else target.port
        else:
            host, port = target
        proxy = TcpProxy(host, port)
        proxies.append(proxy)
        return proxy.start()

    yield factory
    for proxy in proxies:
        proxy.close()


@pytest.fixture(scope="session")
def mqtt_certs(tmp_path_factory: pytest.TempPathFactory) -> CertBundle:
    """A CA, a server certificate for 127.0.0.1, client certificates and a wrong CA.

    Parameters
    ----------
    tmp_path_factory : pytest.TempPathFactory
        pytest's factory of temporary directories.

    Returns
    -------
    CertBundle
        Client certificates for ``p1``, ``p2``, ``t1`` and ``server``.
    """
    return make_certs(tmp_path_factory.mktemp("certs"), clients=("p1", "p2", "t1", "server"))


class Collector:
    """What a subscriber received, in arrival order.

    Parameters
    ----------
    client : aiomqtt.Client
        A connected client; :func:`subscriber` creates it.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.messages: list[aiomqtt.Message] = []
        self.error: BaseException | None = None
        self._changed = asyncio.Condition()

    @property
    def topics(self) -> list[str]:
        """The topics of :attr:`messages`."""
        return [m.topic.value for m in self.messages]

    @property
    def payloads(self) -> list[bytes]:
        """The payloads of :attr:`messages` (``bytes``)."""
        return [
            m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
            for m in self.messages
        ]

    async def _run(self) -> None:
        try:
            async for message in self.client.messages:
                async with self._changed:
                    self.messages.append(message)
                    self._changed.notify_all()
        except aiomqtt.MqttError as exc:
            async with self._changed:
                self.error = exc
                self._changed.notify_all()

    async def wait(
        self,
        n: int | None = None,
        *,
        until: Callable[[list[aiomqtt.Message]], bool] | None = None,
        timeout: float = 10.0,
    ) -> list[aiomqtt.Message]:
        """Wait for ``n`` messages in all, or until ``until(messages)``, at most ``timeout`` s.

        Parameters
        ----------
        n : int, optional
            How many messages in total (counted from the subscription).
        until : callable, optional
            A predicate on all messages so far (e.g. "the marker arrived").
        timeout : float
            Seconds.

        Returns
        -------
        list of aiomqtt.Message
            A copy of everything received so far, *also on timeout or disconnection*:
            assert on it.
        """

        def ready() -> bool:
            if self.error is not None:
                return True
            if until is not None:
                return until(self.messages)
            return n is None or len(self.messages) >= n

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(ready)
        return list(self.messages)


def reason_value(code: int | ReasonCode) -> int:
    """The number of an MQTT (v3 return code or v5 reason) code.

    Parameters
    ----------
    code : int or ReasonCode
        What paho/aiomqtt report (``MqttCodeError.rc``, SUBACK codes).

    Returns
    -------
    int
        e.g. 135 for v5 "Not authorized", 5 for v3.1.1 "not authorised".
    """
    return code if isinstance(code, int) else int(code.value)


def _client_from_url(url: str, password: str | None, ca_file: Path | str | None) -> aiomqtt.Client:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"{url!r}: expected mqtt://[user@]host[:port] or mqtts://...")
    tls = parts.scheme == "mqtts"
    ctx: ssl.SSLContext | None = None
    if tls:
        ctx = client_ssl_context(ca_file) if ca_file else ssl.create_default_context()
    return aiomqtt.Client(
        parts.hostname,
        parts.port or (8883 if tls else 1883),
        username=urllib.parse.unquote(parts.username) if parts.username else None,
        password=password if password is not None else parts.password,
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=ctx,
        timeout=10.0,
    )


@contextlib.asynccontextmanager
async def subscriber(
    target: str | aiomqtt.Client,
    topics: Sequence[str],
    *,
    password: str | None = None,
    ca_file: Path | str | None = None,
    qos: int = 1,
) -> AsyncIterator[Collector]:
    """Connect, subscribe (SUBACK received) and collect messages in the background.

    Parameters
    ----------
    target : str or aiomqtt.Client
        A URL ``mqtt://user@127.0.0.1:port`` / ``mqtts://...`` (MQTT v5, clean session),
        or an unconnected client, e.g. ``broker.client("admin", identifier="obs",
        session_expiry=600)`` for a persistent session.
    topics : sequence of str
        Topic filters.
    password : str, optional
        With a URL: the password of the URL's user.
    ca_file : Path or str, optional
        With an ``mqtts`` URL: the CA to trust (the system store otherwise).
    qos : int
        Subscription QoS.

    Yields
    ------
    Collector
        Publish after entering: the subscription is in place.

    Raises
    ------
    aiomqtt.MqttError
        If the connection fails or the broker refuses a subscription.
    """
    client = _client_from_url(target, password, ca_file) if isinstance(target, str) else target
    async with client:
        for topic in topics:
            codes = await client.subscribe(topic, qos=qos)
            refused = [c for c in codes if reason_value(c) >= 0x80]
            if refused:
                raise aiomqtt.MqttError(f"subscription to {topic!r} refused: {refused}")
        collector = Collector(client)
        task = asyncio.create_task(collector._run())
        try:
            yield collector
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def collect(
    target: str | aiomqtt.Client,
    topics: Sequence[str],
    n: int,
    timeout: float = 10.0,
    *,
    password: str | None = None,
    ca_file: Path | str | None = None,
) -> list[aiomqtt.Message]:
    """Subscribe and return the first ``n`` messages, or fewer after ``timeout`` s.

    Only sees what arrives after subscribing, or what the broker holds for the client:
    retained messages, or the queue of a persistent session. To watch live traffic,
    enter :func:`subscriber` before publishing.

    Parameters
    ----------
    target, topics, password, ca_file
        As for :func:`subscriber`.
    n : int
        How many messages to wait for.
    timeout : float
        Seconds.

    Returns
    -------
    list of aiomqtt.Message
        At most what arrived before the timeout (assert on its length).
    """
    async with subscriber(target, topics, password=password, ca_file=ca_file) as sub:
        return await sub.wait(n, timeout=timeout)
