"""MQTT with aiomqtt: broker settings, a publisher for agents, a subscriber for servers.

The only module that imports aiomqtt/paho. Errors are translated here into
:class:`BrokerError` subclasses whose messages say which broker, which user and what to
do; the password never appears in a message or a log line.

- Broker URLs are ``mqtt://user@host:port`` or ``mqtts://user@host:port`` (TLS). The
  password comes from an environment variable or a file, never from the URL or argv.
- MQTT v5 with a persistent session (clean start off, a session expiry), QoS 1.
- :class:`Publisher` returns from :meth:`Publisher.publish` once the broker's PUBACK
  arrived, so a caller can delete a spooled message only when the broker holds it.
- :class:`Subscriber` acknowledges a message only when told to (:meth:`Subscriber.ack`),
  after the caller stored it: a server that dies before storing gets the message again.
  aiomqtt 2.5 has no manual-ack option yet (its pull request #346 is open), so this uses
  paho-mqtt's documented ``manual_ack_set``/``ack`` on the client aiomqtt wraps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hrvstream.errors import ConfigError, HrvStreamError

log = logging.getLogger(__name__)

DEFAULT_SESSION_EXPIRY_S = 7 * 24 * 3600


class BrokerError(HrvStreamError):
    """The MQTT broker could not be used."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached, or the connection was lost (try again later)."""


class BrokerAuthError(BrokerError):
    """The broker refused the credentials (fix the configuration; retrying won't help)."""


class BrokerTLSError(BrokerError):
    """The TLS handshake failed (certificate not trusted, wrong host name ...)."""


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Where and how to connect.

    Attributes
    ----------
    host, port, tls, username:
        From the broker URL.
    password:
        The password (kept out of ``repr``).
    ca_file:
        CA certificate(s) that sign the broker's certificate (``mqtts``); the system's
        trust store when ``None``.
    client_id:
        The MQTT client id; a stable one is what makes the session persistent.
    session_expiry_s:
        How long the broker keeps the session (and queued QoS 1 messages) while the
        client is away.
    """

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    client_id: str | None = None
    session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S
    keepalive_s: int = 30
    mqtt5: bool = True

    @property
    def display(self) -> str:
        """``mqtts://user@host:port``, without the password."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def parse_broker_url(
    url: str,
    *,
    password: str | None = None,
    ca_file: str | Path | None = None,
    client_id: str | None = None,
    session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S,
    mqtt5: bool = True,
) -> BrokerConfig:
    """A :class:`BrokerConfig` from ``mqtt://user@host:port`` or ``mqtts://...``.

    ``mqtt5=False`` speaks MQTT 3.1.1 (a persistent session is then ``clean_session``
    off, kept by the broker's own expiry policy) for brokers without v5.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"broker URL {url!r}: use mqtt://host:port or mqtts://host:port")
    if parsed.password:
        raise ConfigError(
            "broker URL: do not put the password in the URL; set HRVSTREAM_MQTT_PASSWORD "
            "or password_file"
        )
    if not parsed.hostname:
        raise ConfigError(f"broker URL {url!r} has no host")
    tls = parsed.scheme == "mqtts"
    try:
        port = parsed.port or (8883 if tls else 1883)
    except ValueError:
        raise ConfigError(f"broker URL {url!r}: the port must be a number") from None
    return BrokerConfig(
        host=parsed.hostname,
        port=port,
        tls=tls,
        username=urllib.parse.unquote(parsed.username) if parsed.username else None,
        password=password,
        ca_file=Path(ca_file) if ca_file else None,
        client_id=client_id,
        session_expiry_s=session_expiry_s,
        mqtt5=mqtt5,
    )


def load_password(
    *,
    env: str = "HRVSTREAM_MQTT_PASSWORD",
    file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """The broker password from a file (first line) or the environment variable ``env``."""
    if file:
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read the password file {file}: {exc.strerror}") from exc
        password = lines[0].strip() if lines else ""
        if not password:
            raise ConfigError(f"the password file {file} is empty (the first line is the password)")
        return password
    return (os.environ if environ is None else environ).get(env) or None


def _tls_context(config: BrokerConfig) -> ssl.SSLContext | None:
    if not config.tls:
        return None
    try:
        ctx = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the CA file {config.ca_file}: {exc}") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def translate(exc: BaseException, config: BrokerConfig) -> BrokerError:
    """An aiomqtt/socket/TLS error as one of ours, with an actionable message.

    Only a refused *connection* is an authentication error, and only a failed certificate
    check a TLS error; both are fatal for the caller. Everything else (a reset, an EOF in
    the middle of a TLS handshake, paho's "not connected" after a drop) is an outage to
    retry.
    """
    where = config.display
    text = str(exc)
    low = text.lower()
    if isinstance(exc, ssl.SSLCertVerificationError) or "certificate verify" in low:
        ca = config.ca_file or "the system trust store"
        return BrokerTLSError(
            f"TLS with {where} failed: {text} (is the broker's certificate signed by the "
            f"CA in {ca}, and issued for {config.host}?)"
        )
    if isinstance(exc, MqttConnectError):
        rc = getattr(exc, "rc", None)
        rc_value = getattr(rc, "value", rc)
        if rc_value in (4, 5, 134, 135) or "not authori" in low or "bad user name" in low:
            return BrokerAuthError(
                f"{where} refused the credentials of user {config.username or '(none)'}: "
                f"{text} (check the username and the password file / "
                "HRVSTREAM_MQTT_PASSWORD)"
            )
    return BrokerUnavailable(f"{where} is unreachable or the connection was lost: {text}")


class _NoPendingNoise(logging.Filter):
    """aiomqtt warns whenever more than 10 publishes await their PUBACK; we pipeline on
    purpose (bounded by ``max_inflight``), so those lines are noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pending publish calls" not in record.getMessage()


_client_log = logging.getLogger(f"{__name__}.aiomqtt")
_client_log.addFilter(_NoPendingNoise())


def _client(
    config: BrokerConfig,
    *,
    will: aiomqtt.Will | None = None,
    max_inflight: int | None = None,
) -> aiomqtt.Client:
    if config.mqtt5:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = config.session_expiry_s
        version: dict[str, Any] = {
            "protocol": aiomqtt.ProtocolVersion.V5,
            "clean_start": False,
            "properties": props,
        }
    else:
        version = {
            "protocol": aiomqtt.ProtocolVersion.V311,
            "clean_session": config.client_id is None,
        }
    return aiomqtt.Client(
        config.host,
        config.port,
        username=config.username,
        password=config.password,
        identifier=config.client_id,
        logger=_client_log,
        will=will,
        **version,
        keepalive=config.keepalive_s,
        tls_context=_tls_context(config),
        max_inflight_messages=max_inflight,
        timeout=10.0,
    )


class _Connection:
    """What publisher and subscriber share: the aiomqtt client and a quiet close."""

    config: BrokerConfig
    _client: aiomqtt.Client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._client.__aexit__(exc_type, exc, tb)
        except (aiomqtt.MqttError, OSError):
            log.debug("closing the connection to %s failed", self.config.display)


class Publisher(_Connection):
    """An agent's connection: publish QoS 1 and know when the broker has the message.

    Use as ``async with Publisher(config, will=...) as pub``; connection errors surface
    as :class:`BrokerError` from entering the context and from :meth:`publish`.
    """

    def __init__(
        self,
        config: BrokerConfig,
        *,
        will_topic: str | None = None,
        will_payload: bytes | None = None,
        max_inflight: int = 64,
    ) -> None:
        self.config = config
        will = (
            aiomqtt.Will(will_topic, will_payload, qos=1, retain=True)
            if will_topic is not None
            else None
        )
        self._client = _client(config, will=will, max_inflight=max_inflight)
        # aiomqtt drops the PUBACK's reason code: a publish the broker refused (0x87 "not
        # authorized" under an ACL) would look delivered. Record refusals by message id,
        # and which id each publishing task got, to raise instead.
        self._mid_of: dict[asyncio.Task[Any], int] = {}
        self._refused: dict[int, int] = {}
        paho: Any = self._client._client
        paho_publish = paho.publish
        aiomqtt_on_publish = paho.on_publish

        def publish_and_remember(*args: Any, **kwargs: Any) -> Any:
            info = paho_publish(*args, **kwargs)
            task = asyncio.current_task()
            if task is not None:
                self._mid_of[task] = info.mid
            return info

        def on_publish(client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
            code = getattr(reason, "value", reason)
            if isinstance(code, int) and code >= 0x80:
                self._refused[mid] = code
            aiomqtt_on_publish(client, userdata, mid, reason, props)

        paho.publish = publish_and_remember
        paho.on_publish = on_publish

    async def __aenter__(self) -> Publisher:
        try:
            await self._client.__aenter__()
        except (aiomqtt.MqttError, OSError, ssl.SSLError) as exc:
            raise translate(exc, self.config) from exc
        log.info("connected to %s", self.config.display)
        return self

    async def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, timeout_s: float = 30.0
    ) -> None:
        """Publish with QoS 1; returns once the broker acknowledged (PUBACK).

        Raises :class:`BrokerAuthError` when the broker refused the message (a PUBACK
        reason code of 0x80 or more, such as 0x87 "not authorized" for a topic outside
        the client's ACL).
        """
        # aiomqtt does not fail a publish waiting for its PUBACK when the connection
        # drops; race it against the client's disconnection (a private future of
        # aiomqtt's, the one its own message iterator waits on).
        disconnected: asyncio.Future[None] = self._client._disconnected
        publishing = asyncio.ensure_future(
            self._client.publish(topic, payload, qos=1, retain=retain, timeout=timeout_s)
        )
        try:
            await asyncio.wait({publishing, disconnected}, return_when=asyncio.FIRST_COMPLETED)
            if not publishing.done():
                publishing.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await publishing
                raise BrokerUnavailable(
                    f"{self.config.display}: the connection was lost before the broker "
                    f"acknowledged a message to {topic}"
                )
            publishing.result()
        except (aiomqtt.MqttError, OSError) as exc:
            raise translate(exc, self.config) from exc
        finally:
            if not publishing.done():
                publishing.cancel()
            # paho's publish ran inside the ``publishing`` task: its message id is there
            mid = self._mid_of.pop(publishing, None)
        code = self._refused.pop(mid, None) if mid is not None else None
        if code is not None:
            raise BrokerAuthError(
                f"{self.config.display} refused a message to {topic} from user "
                f"{self.config.username or '(none)'} (reason 0x{code:02X}); check the "
                "broker's ACL for this patient"
            )


def _code(granted: object) -> int:
    """A SUBACK entry (granted QoS int, or a paho ReasonCode) as a number."""
    value: object = getattr(granted, "value", granted)
    return value if isinstance(value, int) else 0x80


@dataclass(frozen=True, slots=True)
class Received:
    """A message from the broker, to be acknowledged with :meth:`Subscriber.ack`."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    retain: bool


class Subscriber(_Connection):
    """A server's connection: receive QoS 1 messages, acknowledge them when stored."""

    def __init__(self, config: BrokerConfig, topics: Sequence[str]) -> None:
        self.config = config
        self.topics = list(topics)
        self._client = _client(config)
        # Manual acknowledgements (see the module docstring).
        paho: Any = self._client._client  # paho's documented manual-ack API
        paho.manual_ack_set(True)
        self._paho = paho

    async def __aenter__(self) -> Subscriber:
        try:
            await self._client.__aenter__()
            # One SUBSCRIBE for all filters (some brokers hold later SUBACKs until the
            # retained messages of earlier filters are acknowledged).
            granted = await self._client.subscribe([(t, 1) for t in self.topics])
        except (aiomqtt.MqttError, OSError, ssl.SSLError) as exc:
            raise translate(exc, self.config) from exc
        codes = [_code(g) for g in granted]
        refused = [(t, c) for t, c in zip(self.topics, codes, strict=False) if c >= 0x80]
        if refused:
            await self.__aexit__(None, None, None)
            detail = ", ".join(f"{t} (reason 0x{c:02X})" for t, c in refused)
            raise BrokerAuthError(
                f"{self.config.display} refused the subscription to {detail} for user "
                f"{self.config.username or '(none)'} (check the broker's ACL and whether it "
                "supports shared subscriptions)"
            )
        log.info("subscribed to %s on %s", ", ".join(self.topics), self.config.display)
        return self

    async def messages(self) -> AsyncIterator[Received]:
        """Messages as they arrive; raises :class:`BrokerUnavailable` when the link drops."""
        try:
            async for m in self._client.messages:
                payload = m.payload if isinstance(m.payload, bytes | bytearray) else b""
                yield Received(
                    topic=m.topic.value,
                    payload=bytes(payload),
                    mid=m.mid,
                    qos=m.qos,
                    retain=m.retain,
                )
        except (aiomqtt.MqttError, OSError) as exc:
            raise translate(exc, self.config) from exc

    def ack(self, message: Received) -> None:
        """Acknowledge (PUBACK) a message the caller has stored."""
        if message.qos > 0:
            self._paho.ack(message.mid, message.qos)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish with QoS 1 on the same connection (alerts from the server)."""
        try:
            await self._client.publish(topic, payload, qos=1, retain=retain, timeout=30.0)
        except (aiomqtt.MqttError, OSError) as exc:
            raise translate(exc, self.config) from exc
