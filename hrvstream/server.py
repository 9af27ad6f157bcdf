"""The ingest server: MQTT in, store out, health and Prometheus metrics over HTTP.

``hrvstream server --config server.toml`` subscribes to every patient's beats, metrics,
status and alert acknowledgements, validates every message, writes beats and metrics to
the store (InfluxDB in production, SQLite embedded) and answers ``GET /healthz`` and
``GET /metrics`` over HTTP.

Delivery: acknowledge only what is stored
-----------------------------------------
The broker session is persistent (a stable ``client_id``, clean start off) and messages
arrive with QoS 1 and **manual acknowledgements** (:class:`~hrvstream.adapters.mqtt.
Subscriber`): the broker keeps every message it delivered until the server sends its
PUBACK, and delivers it again on the next connection if the PUBACK never came.

1. A reader task takes messages from the connection, decodes and validates each
   (:func:`decode_message` against its topic) and puts it in a bounded queue.
2. The writer collects a batch (up to ``batch_max_messages`` messages, or what arrived
   within ``batch_max_ms`` of the first), writes its beats and metrics
   (``write_beats``/``write_metrics``) and waits for :meth:`Store.flush`: the rows are
   then in the database, not merely in a client buffer.
3. Only then are the batch's messages acknowledged, in the order they arrived.

If the store fails (:class:`StoreUnavailable`, or any :class:`StoreError`), nothing is
acknowledged: the batch is kept and retried with exponential backoff (rows a store
already accepted are not written again, only flushed). Meanwhile the writer takes no new
batch, the queue fills and the reader stops taking messages: memory stays bounded, and the
broker stops sending once its in-flight window (mosquitto ``max_inflight_messages``, 20
by default) is full of unacknowledged messages; the rest waits in the broker's session
queue. When the store is back the batch is written, acknowledged, and reading resumes.

If the server dies (or the broker connection drops) before a batch is stored, its
messages are never acknowledged and the broker delivers them again. Redelivered rows
overwrite identical rows (the stores are idempotent by patient and beat/window time), so
at-least-once delivery into an idempotent store is exactly once in the database.

Bad messages (invalid JSON, an unknown schema version, too large, a field out of range,
a payload patient that is not the topic's ...) are counted by reason, logged (the first
few at WARNING without physiological values, then one summary a minute; every one in
full at DEBUG) and acknowledged with their batch: redelivering them would not help.

Rows
----
* A :class:`BeatsMessage` becomes one :class:`BeatRow` per beat: ``t_unix_s =
  origin_unix_s + t_s[i]`` (the identity, with the patient), ``rr_ms``, ``after_gap``,
  ``session`` and ``seq = message seq * MAX_BEATS_PER_MESSAGE + i`` (a per-session beat
  number that is unique and increasing; the message seq is ``seq // 64``). A beat the
  store cannot hold (``rr_ms == 0``, which the protocol allows and :class:`BeatRow`
  refuses) is dropped and counted (``hrvstream_beats_dropped_total``).
* A :class:`MetricsMessage` becomes one :class:`MetricRow`; after it is stored the
  :class:`MetricsListener` is called with the message (the alert engine's hook).
* A :class:`StatusMessage` (retained) is kept in memory, the latest per patient
  (:attr:`Server.statuses`); the :class:`Store` interface has no status table, so it is
  not stored.
* An :class:`AlertAckMessage` is handed to the :class:`AlertAckListener` (the alert
  engine owns alert state; by default it is logged). Alerts are written and published
  with :meth:`Server.publish_alert`.

Shared subscriptions
--------------------
With ``shared_group`` set, beats, metrics and acknowledgements are subscribed as
``$share/<group>/hrv/v1/+/<kind>``: each message goes to one server of the group. Status
is always subscribed without sharing: brokers do not send retained messages to shared
subscriptions, and every server wants every patient's status. Each server of a group
needs its own ``client_id``. Note that a group splits *messages*, not patients: a
:class:`MetricsListener` in one server sees only part of a patient's windows.

Configuration (TOML, ``HRVSTREAM_<SECTION>_<KEY>`` overrides; see
``deploy/server.example.toml``)::

    [broker]
    url = "mqtts://server@broker.clinic.example:8883"
    ca_file = "/etc/hrvstream/ca.pem"
    password_file = "/etc/hrvstream/mqtt-password"   # or HRVSTREAM_MQTT_PASSWORD
    client_id = "hrvstream-server-1"
    shared_group = "ingest"                          # optional

    [store]
    kind = "influx"                                  # or "sqlite" with path = "..."
    url = "http://influxdb:8086"
    org = "clinic"
    bucket = "hrv"
    token_file = "/etc/hrvstream/influx-token"       # or HRVSTREAM_INFLUX_TOKEN

    [http]
    listen = "127.0.0.1:9108"                        # "" turns HTTP off
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import socket
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol, runtime_checkable

from aiohttp import web

from hrvstream.adapters.mqtt import (
    BrokerConfig,
    BrokerUnavailable,
    Received,
    Subscriber,
    load_password,
    parse_broker_url,
)
from hrvstream.config import get, load_toml, with_env
from hrvstream.errors import ConfigError, HrvStreamError
from hrvstream.protocol.messages import (
    MAX_BEATS_PER_MESSAGE,
    MAX_PAYLOAD_BYTES,
    AlertAckMessage,
    AlertMessage,
    BeatsMessage,
    Message,
    MessageError,
    MessageKind,
    MetricsMessage,
    StatusMessage,
    TopicError,
    decode_message,
    message_topic,
    parse_topic,
    shared_subscription,
    subscription,
)
from hrvstream.store import (
    ALERT_ATTRIBUTES,
    AlertFieldValue,
    AlertRow,
    BeatRow,
    MetricRow,
    Store,
    StoreError,
    StoreUnavailable,
)

__all__ = [
    "DEFAULT_HTTP_LISTEN",
    "AlertAckListener",
    "LiveObserver",
    "MetricsListener",
    "NullListener",
    "Server",
    "ServerSettings",
    "ServerStats",
    "StoreSettings",
    "add_server_arguments",
    "alert_row",
    "beat_rows",
    "load_server_settings",
    "main",
    "main_server",
    "metric_row",
    "open_store",
    "serve",
    "server_topics",
]

log = logging.getLogger(__name__)

DEFAULT_HTTP_LISTEN: Final = "127.0.0.1:9108"
PASSWORD_ENV: Final = "HRVSTREAM_MQTT_PASSWORD"
INFLUX_TOKEN_ENV: Final = "HRVSTREAM_INFLUX_TOKEN"

#: Bad messages logged with their detail at WARNING before the log is rate-limited.
BAD_LOG_FIRST: Final = 10
#: Seconds between WARNING summaries of bad messages after the first few.
BAD_LOG_INTERVAL_S: Final = 60.0
#: Span and size of the sliding windows behind the latency quantiles.
LATENCY_WINDOW_S: Final = 300.0
LATENCY_WINDOW_MAX: Final = 10_000

#: Kinds subscribed through the shared group (when there is one); status never is.
SHARED_KINDS: Final[tuple[MessageKind, ...]] = ("beats", "metrics", "alerts/ack")
#: Every kind the server subscribes to, status last: a broker may hold back the next
#: SUBACK until the retained status messages it sends are acknowledged (amqtt does), and
#: the server starts reading (and acknowledging) only once every SUBACK arrived.
SERVER_KINDS: Final[tuple[MessageKind, ...]] = ("beats", "metrics", "alerts/ack", "status")


# == settings ============================================================================


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """Which store to open (see :func:`open_store`).

    Attributes
    ----------
    kind:
        ``"sqlite"`` (``path``) or ``"influx"`` (``url``, ``org``, ``bucket``, ``token``).
    flush_timeout_s:
        How long one write + flush of a batch may take before it counts as failed (it is
        retried; InfluxDB keeps retrying its buffer in the background meanwhile).
    retry_max_s:
        The longest pause between retries of a failed batch (and InfluxStore's own
        backoff ceiling).
    """

    kind: Literal["sqlite", "influx"] = "sqlite"
    path: Path = Path("hrvstream.db")
    url: str | None = None
    org: str = ""
    bucket: str | None = None
    token: str | None = field(default=None, repr=False)
    flush_timeout_s: float = 10.0
    retry_max_s: float = 10.0


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What the server needs (see :func:`load_server_settings`).

    Attributes
    ----------
    broker:
        The broker connection (URL, password, CA, ``client_id`` for the persistent
        session).
    store:
        The store.
    shared_group:
        MQTT 5 shared-subscription group, or ``None`` (every message to this server).
    http_host, http_port:
        Where ``/healthz`` and ``/metrics`` listen (port 0: any free port, see
        :attr:`Server.http_port`); ``http_host=None`` turns HTTP off.
    batch_max_messages, batch_max_ms:
        A batch is stored when it has this many messages, or this long after its first.
    store_unhealthy_after_s:
        ``/healthz`` answers 503 once the store has been failing this long.
    reconnect_initial_s, reconnect_max_s:
        Backoff between broker connection attempts (doubling).
    shutdown_timeout_s:
        On stop, how long to try to store what was received (the rest stays
        unacknowledged in the broker for the next start).
    """

    broker: BrokerConfig
    store: StoreSettings = field(default_factory=StoreSettings)
    shared_group: str | None = None
    http_host: str | None = "127.0.0.1"
    http_port: int = 9108
    batch_max_messages: int = 100
    batch_max_ms: float = 50.0
    store_unhealthy_after_s: float = 60.0
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0
    shutdown_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.batch_max_messages < 1:
            raise ConfigError("[server] batch_max_messages must be >= 1")
        for name in (
            "batch_max_ms",
            "store_unhealthy_after_s",
            "reconnect_initial_s",
            "reconnect_max_s",
            "shutdown_timeout_s",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a number > 0, got {value!r}")
        if self.shared_group is not None:
            server_topics(self.shared_group)  # raises ConfigError for a bad group name


_KNOWN: Final[Mapping[str, Mapping[str, type]]] = {
    "broker": {
        "url": str,
        "ca_file": str,
        "password_file": str,
        "client_id": str,
        "shared_group": str,
        "session_expiry_s": int,
        "mqtt5": bool,
    },
    "store": {
        "kind": str,
        "path": str,
        "url": str,
        "org": str,
        "bucket": str,
        "token_file": str,
        "flush_timeout_s": float,
        "retry_max_s": float,
    },
    "http": {"listen": str},
    "server": {
        "batch_max_messages": int,
        "batch_max_ms": float,
        "store_unhealthy_after_s": float,
        "reconnect_max_s": float,
        "shutdown_timeout_s": float,
    },
}


def parse_listen(text: str) -> tuple[str | None, int]:
    """``"host:port"`` (``"[::1]:9108"`` for IPv6) as ``(host, port)``; ``""`` or ``"off"``
    as ``(None, 0)`` (HTTP off)."""
    text = text.strip()
    if text.lower() in ("", "off", "none"):
        return None, 0
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"[http] listen = {text!r}: use host:port, e.g. {DEFAULT_HTTP_LISTEN!r}")
    host = host.strip("[]") or "0.0.0.0"  # ":9108": every interface
    return host, int(port_text)


def _first_line(path: str, what: str) -> str:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {path}: {exc.strerror}") from exc
    if not lines or not lines[0].strip():
        raise ConfigError(f"the {what} file {path} is empty")
    return lines[0].strip()


def load_server_settings(
    path: str | Path | None, env: Mapping[str, str] | None = None
) -> ServerSettings:
    """Settings from a TOML file and ``HRVSTREAM_*`` variables (see :mod:`hrvstream.config`).

    Secrets: the broker password from ``[broker] password_file`` or else
    ``HRVSTREAM_MQTT_PASSWORD``; the InfluxDB token from ``[store] token_file`` or else
    ``HRVSTREAM_INFLUX_TOKEN`` (a file named in the configuration wins, as for the
    password). ``env`` replaces ``os.environ`` (tests).

    Raises
    ------
    ConfigError
        A missing or invalid value, an unreadable secret file.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    c = with_env(load_toml(path), _KNOWN, environ)

    password_file = get(c, "broker", "password_file", str, None)
    password = (
        load_password(file=password_file) if password_file else environ.get(PASSWORD_ENV) or None
    )
    client_id = get(c, "broker", "client_id", str, None) or _default_client_id()
    expiry = get(c, "broker", "session_expiry_s", int, None)
    broker = parse_broker_url(
        get(c, "broker", "url", str),
        password=password,
        ca_file=get(c, "broker", "ca_file", str, None),
        client_id=client_id,
        mqtt5=get(c, "broker", "mqtt5", bool, True),
        **({"session_expiry_s": expiry} if expiry is not None else {}),
    )
    shared_group = get(c, "broker", "shared_group", str, None) or None

    kind = get(c, "store", "kind", str, "sqlite")
    flush_timeout_s = float(get(c, "store", "flush_timeout_s", float, 10.0))
    retry_max_s = float(get(c, "store", "retry_max_s", float, 10.0))
    for name, value in (("flush_timeout_s", flush_timeout_s), ("retry_max_s", retry_max_s)):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"[store] {name} must be > 0, got {value!r}")
    store: StoreSettings
    if kind == "sqlite":
        store = StoreSettings(
            kind="sqlite",
            path=Path(get(c, "store", "path", str, "hrvstream.db")),
            flush_timeout_s=flush_timeout_s,
            retry_max_s=retry_max_s,
        )
    elif kind == "influx":
        token_file = get(c, "store", "token_file", str, None)
        token = (
            _first_line(token_file, "InfluxDB token")
            if token_file
            else environ.get(INFLUX_TOKEN_ENV) or None
        )
        if token is None:
            raise ConfigError(
                f"[store] kind = 'influx' needs a token: token_file, or {INFLUX_TOKEN_ENV}"
            )
        store = StoreSettings(
            kind="influx",
            url=get(c, "store", "url", str),
            org=get(c, "store", "org", str, ""),
            bucket=get(c, "store", "bucket", str),
            token=token,
            flush_timeout_s=flush_timeout_s,
            retry_max_s=retry_max_s,
        )
    else:
        raise ConfigError(f"[store] kind = {kind!r}: use 'sqlite' or 'influx'")

    http_host, http_port = parse_listen(get(c, "http", "listen", str, DEFAULT_HTTP_LISTEN))
    return ServerSettings(
        broker=broker,
        store=store,
        shared_group=shared_group,
        http_host=http_host,
        http_port=http_port,
        batch_max_messages=int(get(c, "server", "batch_max_messages", int, 100)),
        batch_max_ms=float(get(c, "server", "batch_max_ms", float, 50.0)),
        store_unhealthy_after_s=float(get(c, "server", "store_unhealthy_after_s", float, 60.0)),
        reconnect_max_s=float(get(c, "server", "reconnect_max_s", float, 30.0)),
        shutdown_timeout_s=float(get(c, "server", "shutdown_timeout_s", float, 10.0)),
    )


def _default_client_id() -> str:
    host = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in socket.gethostname())
    return f"hrvstream-server-{host or 'host'}"[:64]


def server_topics(shared_group: str | None) -> list[str]:
    """The topic filters the server subscribes to.

    ``hrv/v1/+/beats``, ``+/metrics``, ``+/alerts/ack``, ``+/status``; with a group,
    every one but status as ``$share/<group>/...`` (retained status messages are never
    sent to shared subscriptions, and every server keeps every patient's status).

    Raises
    ------
    ConfigError
        If the group name is invalid.
    """
    out: list[str] = []
    for kind in SERVER_KINDS:
        if shared_group is not None and kind in SHARED_KINDS:
            try:
                out.append(shared_subscription(shared_group, kind))
            except MessageError as exc:
                raise ConfigError(f"[broker] shared_group: {exc.reason}") from None
        else:
            out.append(subscription(kind))
    return out


def open_store(settings: StoreSettings) -> Store:
    """The store the settings name, ready to use.

    Raises
    ------
    StoreError
        SQLite: the file cannot be opened or is not an hrvstream database.
    """
    if settings.kind == "sqlite":
        from hrvstream.adapters.sqlite_store import SqliteStore

        return SqliteStore(settings.path)
    from hrvstream.adapters.influx import InfluxStore

    assert settings.url is not None and settings.bucket is not None
    return InfluxStore(
        settings.url,
        settings.token or "",
        settings.org,
        settings.bucket,
        flush_timeout_s=settings.flush_timeout_s,
        backoff_initial_s=min(0.2, settings.retry_max_s),
        backoff_max_s=settings.retry_max_s,
    )


# == rows ================================================================================


def beat_rows(message: BeatsMessage) -> tuple[list[BeatRow], int]:
    """The message's beats as store rows, and how many beats could not be rows.

    ``t_unix_s = origin_unix_s + t_s[i]``; ``seq = message.seq * MAX_BEATS_PER_MESSAGE +
    i``. A beat :class:`BeatRow` refuses (``rr_ms == 0``) is left out and counted.
    """
    rows: list[BeatRow] = []
    dropped = 0
    base = message.seq * MAX_BEATS_PER_MESSAGE
    for i, (t_s, rr_ms, after_gap) in enumerate(message.beats()):
        try:
            rows.append(
                BeatRow(
                    patient=message.patient,
                    t_unix_s=message.origin_unix_s + t_s,
                    rr_ms=rr_ms,
                    after_gap=after_gap,
                    session=message.session,
                    seq=base + i,
                )
            )
        except ValueError:
            dropped += 1
    return rows, dropped


def metric_row(message: MetricsMessage) -> MetricRow:
    """The message as a store row (``n_beats`` is one of the values)."""
    values = {k: (None if v is None else float(v)) for k, v in message.metric_values().items()}
    return MetricRow(message.patient, message.t_unix_s, message.window_s, values)


_RESERVED_ALERT_FIELDS: Final = frozenset({*ALERT_ATTRIBUTES, "event", "acknowledged_by", "note"})


def alert_row(message: AlertMessage) -> AlertRow:
    """An alert state change as a store row.

    ``fields`` holds the explanation (a key that clashes with a record attribute or with
    ``event``, InfluxStore's own field, gets a ``_`` appended) plus ``acknowledged_by``
    and ``note`` when present.
    """
    fields: dict[str, AlertFieldValue] = {}
    for key, value in message.explanation.items():
        fields[f"{key}_" if key in _RESERVED_ALERT_FIELDS else key] = value
    if message.acknowledged_by is not None:
        fields["acknowledged_by"] = message.acknowledged_by
    if message.note is not None:
        fields["note"] = message.note
    return AlertRow(
        alert_id=message.alert_id,
        patient=message.patient,
        t_unix_s=message.t_unix_s,
        state=message.state,
        rule=message.rule,
        severity=message.severity,
        fields=fields,
    )


# == hooks ===============================================================================


@runtime_checkable
class MetricsListener(Protocol):
    """Receives every metrics window the server stored (the alert engine's input).

    Called once the window is in the store and before the message is acknowledged to the
    broker, so at least once: a window can come again after a crash or a redelivery
    (deduplicate by ``(patient, t_unix_s)``). Called from the server's writer: a slow
    listener slows ingestion. An exception is logged and counted, never fatal.
    """

    async def on_metrics(self, message: MetricsMessage) -> None:
        """Handle one stored metrics window."""
        ...


@runtime_checkable
class AlertAckListener(Protocol):
    """Receives therapists' alert acknowledgements (at least once, like metrics)."""

    async def on_alert_ack(self, message: AlertAckMessage) -> None:
        """Handle one acknowledgement (e.g. publish the alert as ``acknowledged``)."""
        ...


@runtime_checkable
class LiveObserver(Protocol):
    """Sees every message the server handled, for live views. Must not block or await."""

    def observe(self, message: Message) -> None:
        """One handled message (see :class:`Server`, ``observers``)."""
        ...


class NullListener:
    """The default hooks: metrics are ignored, acknowledgements logged at INFO."""

    async def on_metrics(self, message: MetricsMessage) -> None:
        """Nothing to do."""

    async def on_alert_ack(self, message: AlertAckMessage) -> None:
        """Log the acknowledgement (no alert engine yet)."""
        log.info(
            "alert %s of %s acknowledged by %s (no alert engine configured)",
            message.alert_id,
            message.patient,
            message.by,
        )


# == statistics ==========================================================================


class SlidingWindow:
    """Samples of the last ``span_s`` seconds (at most ``max_samples``), for quantiles."""

    def __init__(self, span_s: float = LATENCY_WINDOW_S, max_samples: int = LATENCY_WINDOW_MAX):
        self.span_s = span_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)

    def add(self, now: float, value: float) -> None:
        """Add a sample taken at monotonic time ``now``."""
        self._samples.append((now, value))

    def values(self, now: float) -> list[float]:
        """The samples still in the window, oldest first."""
        while self._samples and self._samples[0][0] < now - self.span_s:
            self._samples.popleft()
        return [v for _, v in self._samples]

    def quantile(self, now: float, q: float) -> float | None:
        """The ``q`` quantile (nearest rank) of the window, ``None`` when it is empty."""
        values = sorted(self.values(now))
        if not values:
            return None
        rank = max(1, math.ceil(q * len(values)))
        return values[rank - 1]


@dataclass
class ServerStats:
    """Counters and gauges behind ``/metrics`` and ``/healthz``.

    Counters count since the process started; ``acked`` is every message acknowledged
    to the broker (stored, or dropped as bad).
    """

    received: Counter[str] = field(default_factory=Counter)
    bad: Counter[str] = field(default_factory=Counter)
    acked: int = 0
    beats_stored: int = 0
    beats_dropped: int = 0
    metrics_stored: int = 0
    alerts_stored: int = 0
    status_messages: int = 0
    alert_acks: int = 0
    listener_errors: int = 0
    store_write_errors: Counter[str] = field(default_factory=Counter)
    store_write_count: int = 0
    store_write_sum_s: float = 0.0
    store_write_window: SlidingWindow = field(default_factory=SlidingWindow)
    publish_to_stored: SlidingWindow = field(default_factory=SlidingWindow)
    backlog: int = 0
    broker_connected: bool = False
    broker_connects: int = 0
    broker_reconnects: int = 0
    broker_connect_failures: int = 0
    store_failing_since: float | None = None
    last_message_at: float | None = None


def _prom_value(value: float | int | None) -> str:
    if value is None:
        return "NaN"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _prom_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Prom:
    """A Prometheus text-format (0.0.4) writer."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: Sequence[tuple[Mapping[str, str], float | int | None]],
        *,
        suffixed: Sequence[tuple[str, float | int | None]] = (),
    ) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_prom_label(v)}"' for k, v in labels.items())
            label_part = f"{{{text}}}" if text else ""
            self.lines.append(f"{name}{label_part} {_prom_value(value)}")
        for suffix, value in suffixed:
            self.lines.append(f"{name}{suffix} {_prom_value(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


# == bad messages ========================================================================

#: Paths whose MessageError reason may be logged above DEBUG: they hold no physiological
#: values (RR intervals, beat times, heart rate, metrics).
_SAFE_PATHS: Final = frozenset(
    {"topic", "$.schema", "$.patient", "$.session", "$.seq", "$.state", "$.alert_id", "$.by"}
)


def _safe_reason(exc: MessageError) -> str:
    if exc.path in _SAFE_PATHS:
        return exc.reason
    if exc.path == "$":
        # Size, UTF-8 and top-level type messages hold no values; a JSON syntax error
        # may quote a number, so only its kind is shown.
        return "not valid JSON" if exc.reason.startswith("not valid JSON") else exc.reason
    return "invalid value (detail at DEBUG)"


class _BadMessageLog:
    """The first few bad messages at WARNING, then a summary at most once a minute."""

    def __init__(self, first: int = BAD_LOG_FIRST, interval_s: float = BAD_LOG_INTERVAL_S):
        self.first = first
        self.interval_s = interval_s
        self.logged = 0
        self._suppressed: Counter[str] = Counter()
        self._last_summary = -math.inf

    def report(self, now: float, reason: str, topic: str, exc: MessageError | None) -> None:
        detail = f"{exc.path}: {_safe_reason(exc)}" if exc is not None else reason
        log.debug("bad message on %s (%s): %s", topic, reason, exc if exc is not None else "")
        if self.logged < self.first:
            self.logged += 1
            log.warning(
                "dropped a bad message on %s (%s): %s%s",
                topic[:200],
                reason,
                detail,
                " (further bad messages are summarised once a minute)"
                if self.logged == self.first
                else "",
            )
            self._last_summary = now
            return
        self._suppressed[reason] += 1
        if now - self._last_summary >= self.interval_s:
            self.flush(now)

    def flush(self, now: float) -> None:
        if self._suppressed:
            by_reason = ", ".join(f"{r}: {n}" for r, n in sorted(self._suppressed.items()))
            log.warning("dropped %d more bad messages (%s)", self._suppressed.total(), by_reason)
            self._suppressed.clear()
        self._last_summary = now


# == the server ==========================================================================


@dataclass(slots=True)
class _Item:
    """A received message on its way to the store and the broker's acknowledgement."""

    received: Received
    message: Message | None = None  # None: bad, acknowledged without storing
    beats: list[BeatRow] = field(default_factory=list)
    metrics: MetricRow | None = None


class _Connection:
    """One broker connection: its queue of decoded messages and its state."""

    def __init__(self, sub: Subscriber, maxsize: int) -> None:
        self.sub = sub
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=maxsize)
        #: The reader ended (link lost): nothing more can be acknowledged on it.
        self.lost = asyncio.Event()
        #: Stop waiting for messages: the link is lost, or the server is stopping.
        self.halt = asyncio.Event()
        self.error: BaseException | None = None


class Server:
    """The ingest server. ``await server.run(stop)`` until ``stop`` is set.

    Parameters
    ----------
    settings:
        Broker, store, HTTP and batching settings.
    store:
        A store to use instead of opening the one in ``settings`` (the server then does
        not close it).
    metrics_listener:
        Called with every stored :class:`MetricsMessage` (default: nothing).
    alert_ack_listener:
        Called with every :class:`AlertAckMessage` (default: logged).
    observers:
        Live views (:class:`LiveObserver`, e.g. the dashboard): called with every beats
        and metrics message once stored, every status as it arrives, every alert change
        once stored, and every acknowledgement once handled.
    web_setup:
        Called with the HTTP application before it starts, to add routes (the dashboard).

    Attributes
    ----------
    stats:
        Counters and gauges (also served on ``/metrics``).
    statuses:
        The latest :class:`StatusMessage` of every patient seen.
    http_port:
        The HTTP port once listening (useful with port 0).
    ready:
        Set once the store is open and HTTP listens (before the broker connects).
    """

    def __init__(
        self,
        settings: ServerSettings,
        *,
        store: Store | None = None,
        metrics_listener: MetricsListener | None = None,
        alert_ack_listener: AlertAckListener | None = None,
        observers: Sequence[LiveObserver] = (),
        web_setup: Callable[[web.Application], None] | None = None,
    ) -> None:
        self.settings = settings
        self._observers: list[LiveObserver] = list(observers)
        self._web_setup = web_setup
        self.topics = server_topics(settings.shared_group)
        self.stats = ServerStats()
        self.statuses: dict[str, StatusMessage] = {}
        self.http_port: int | None = None
        self._store = store
        self._owns_store = store is None
        null = NullListener()
        self._metrics_listener: MetricsListener = metrics_listener or null
        self._ack_listener: AlertAckListener = alert_ack_listener or null
        self._bad_log = _BadMessageLog()
        self._conn: _Connection | None = None
        self._runner: web.AppRunner | None = None
        self.ready = asyncio.Event()  # set once HTTP listens and the store is open

    # -- public -------------------------------------------------------------------------

    def add_observer(self, observer: LiveObserver) -> None:
        """Add a live observer (see the ``observers`` parameter)."""
        self._observers.append(observer)

    def _notify(self, message: Message) -> None:
        for observer in self._observers:
            try:
                observer.observe(message)
            except Exception:
                self.stats.listener_errors += 1
                log.exception("a live observer failed on a %s message", message.KIND)

    @property
    def store(self) -> Store:
        """The store (opened by :meth:`run` unless one was given)."""
        if self._store is None:
            raise StoreError("the server has not opened its store yet")
        return self._store

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; then store what was received, disconnect, close.

        Reconnects with backoff when the broker is unreachable or the link drops.

        Raises
        ------
        BrokerAuthError, BrokerTLSError
            The broker refused the credentials, or TLS failed: retrying cannot help.
        ConfigError
            The HTTP address cannot be bound, or a CA file cannot be read.
        StoreError
            The store cannot be opened.
        """
        loop = asyncio.get_running_loop()
        if self._store is None:
            self._store = await asyncio.to_thread(open_store, self.settings.store)
        try:
            await self._start_http()
            self.ready.set()
            delay = self.settings.reconnect_initial_s
            failures = 0
            while not stop.is_set():
                sub = Subscriber(self.settings.broker, self.topics)
                try:
                    async with sub:
                        self._connected()
                        delay = self.settings.reconnect_initial_s
                        failures = 0
                        await self._session(sub, stop)
                except BrokerUnavailable as exc:
                    self.stats.broker_connect_failures += 1
                    first = self.stats.broker_connected or failures == 0
                    failures += 1
                    log.log(
                        logging.WARNING if first else logging.INFO,
                        "%s; retrying in %.1f s",
                        exc,
                        delay,
                    )
                finally:
                    self.stats.broker_connected = False
                    self._conn = None
                if stop.is_set():
                    break
                await _wait(stop, delay)
                delay = min(self.settings.reconnect_max_s, delay * 2)
            log.info("stopping: %d messages acknowledged", self.stats.acked)
        finally:
            self._bad_log.flush(loop.time())
            await self._close()

    async def publish_alert(self, alert: AlertMessage) -> None:
        """Store an alert state change, then publish it to ``hrv/v1/<patient>/alerts``.

        For the alert engine. Raises :class:`StoreError` (nothing published) or
        :class:`BrokerError` (stored, not published: call again, the store is idempotent).
        """
        await self.store.write_alerts([alert_row(alert)])
        await self.store.flush()
        self.stats.alerts_stored += 1
        self._notify(alert)
        conn = self._conn
        if conn is None or conn.lost.is_set():
            raise BrokerUnavailable(f"not connected to {self.settings.broker.display}")
        await conn.sub.publish(message_topic(alert), alert.to_json())

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``(healthy, details)`` as ``/healthz`` reports them."""
        now = asyncio.get_running_loop().time()
        s = self.stats
        down_s = None if s.store_failing_since is None else now - s.store_failing_since
        store_healthy = down_s is None or down_s <= self.settings.store_unhealthy_after_s
        age = None if s.last_message_at is None else now - s.last_message_at
        problems = []
        if not s.broker_connected:
            problems.append("broker disconnected")
        if not store_healthy:
            problems.append(f"store failing for {down_s:.0f} s")
        ok = not problems
        return ok, {
            "status": "ok" if ok else "unhealthy",
            "problems": problems,
            "broker_connected": s.broker_connected,
            "store_ok": down_s is None,
            "store_failing_s": down_s,
            "last_message_age_s": age,
            "backlog": s.backlog,
            "patients_online": sum(1 for m in self.statuses.values() if m.state == "online"),
        }

    def prometheus(self) -> str:
        """The ``/metrics`` page (Prometheus text format 0.0.4)."""
        now = asyncio.get_running_loop().time()
        s = self.stats
        p = _Prom()
        kinds = sorted({*SERVER_KINDS, *s.received})
        p.metric(
            "hrvstream_messages_received_total",
            "counter",
            "Messages received from the broker, by topic kind (bad ones included).",
            [({"kind": k}, s.received[k]) for k in kinds],
        )
        p.metric(
            "hrvstream_bad_messages_total",
            "counter",
            "Messages dropped as invalid, by reason.",
            [({"reason": r}, s.bad[r]) for r in sorted({*BAD_REASONS, *s.bad})],
        )
        p.metric(
            "hrvstream_messages_acked_total",
            "counter",
            "Messages acknowledged to the broker (stored, or dropped as bad).",
            [({}, s.acked)],
        )
        p.metric(
            "hrvstream_beats_stored_total", "counter", "Beats written.", [({}, s.beats_stored)]
        )
        p.metric(
            "hrvstream_beats_dropped_total",
            "counter",
            "Beats of valid messages the store cannot hold (RR interval 0).",
            [({}, s.beats_dropped)],
        )
        p.metric(
            "hrvstream_metrics_stored_total",
            "counter",
            "Metrics windows written.",
            [({}, s.metrics_stored)],
        )
        p.metric(
            "hrvstream_alerts_stored_total",
            "counter",
            "Alert changes written.",
            [({}, s.alerts_stored)],
        )
        p.metric(
            "hrvstream_listener_errors_total",
            "counter",
            "Exceptions raised by the metrics / alert acknowledgement hooks.",
            [({}, s.listener_errors)],
        )
        p.metric(
            "hrvstream_store_write_errors_total",
            "counter",
            "Failed batch writes, by error (unavailable: retried; error: also retried).",
            [({"error": e}, s.store_write_errors[e]) for e in ("unavailable", "error")],
        )
        window = s.store_write_window
        p.metric(
            "hrvstream_store_write_seconds",
            "summary",
            "Time to write and flush one batch (quantiles over the last 5 minutes).",
            [({"quantile": str(q)}, window.quantile(now, q)) for q in (0.5, 0.99)],
            suffixed=[("_sum", s.store_write_sum_s), ("_count", s.store_write_count)],
        )
        p.metric(
            "hrvstream_publish_to_stored_seconds",
            "gauge",
            "From a beats message's sent_unix_s to its store write succeeding (last 5 minutes).",
            [({"quantile": str(q)}, s.publish_to_stored.quantile(now, q)) for q in (0.5, 0.99)],
        )
        p.metric(
            "hrvstream_backlog_messages",
            "gauge",
            "Messages received and not yet acknowledged (waiting for the store).",
            [({}, s.backlog)],
        )
        p.metric(
            "hrvstream_broker_connected",
            "gauge",
            "1 while connected to the broker.",
            [({}, s.broker_connected)],
        )
        p.metric(
            "hrvstream_broker_reconnects_total",
            "counter",
            "Connections to the broker after the first.",
            [({}, s.broker_reconnects)],
        )
        p.metric(
            "hrvstream_broker_connect_failures_total",
            "counter",
            "Failed connection attempts and dropped connections.",
            [({}, s.broker_connect_failures)],
        )
        p.metric(
            "hrvstream_store_up",
            "gauge",
            "0 while store writes are failing.",
            [({}, s.store_failing_since is None)],
        )
        age = None if s.last_message_at is None else now - s.last_message_at
        p.metric(
            "hrvstream_last_message_age_seconds",
            "gauge",
            "Seconds since the last message arrived (NaN before the first).",
            [({}, age)],
        )
        p.metric(
            "hrvstream_patients_online",
            "gauge",
            "Patients whose latest status is online.",
            [({}, sum(1 for m in self.statuses.values() if m.state == "online"))],
        )
        return p.text()

    # -- connection ---------------------------------------------------------------------

    def _connected(self) -> None:
        s = self.stats
        s.broker_connected = True
        s.broker_connects += 1
        if s.broker_connects > 1:
            s.broker_reconnects += 1
            log.warning("reconnected to %s", self.settings.broker.display)

    async def _session(self, sub: Subscriber, stop: asyncio.Event) -> None:
        """Read and store until ``stop`` (returns) or the link drops (raises)."""
        conn = _Connection(sub, self.settings.batch_max_messages)
        self._conn = conn
        reader = asyncio.create_task(self._read(conn), name="hrvstream-server reader")
        stopper = asyncio.create_task(_set_when(stop, conn.halt), name="hrvstream-server stop")
        try:
            while not conn.lost.is_set() and not stop.is_set():
                batch = await self._collect(conn)
                if batch:
                    await self._commit(batch, conn, stop)
            if stop.is_set() and not conn.lost.is_set():
                # Read no more; store and acknowledge what is queued, then disconnect.
                await _cancel(reader)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.shutdown_timeout_s):
                        while batch := await self._collect(conn):
                            if not await self._commit(batch, conn, stop):
                                break  # the store is down: leave the rest to the broker
                if not conn.queue.empty():
                    log.warning(
                        "%d messages not stored before the shutdown; the broker keeps them",
                        conn.queue.qsize(),
                    )
        finally:
            await _cancel(stopper)
            await _cancel(reader)
            # Whatever was received and not acknowledged comes again on the next connection.
            self.stats.backlog = 0
        if conn.error is not None and not stop.is_set():
            raise conn.error

    async def _read(self, conn: _Connection) -> None:
        """Decode messages into the queue; on return the link is gone (not on cancel)."""
        try:
            async for received in conn.sub.messages():
                await conn.queue.put(self._decode(received))
            conn.error = BrokerUnavailable(f"{self.settings.broker.display} ended the stream")
        except Exception as exc:  # BrokerUnavailable; anything else is a bug: re-raised
            conn.error = exc
        conn.lost.set()
        conn.halt.set()

    async def _collect(self, conn: _Connection) -> list[_Item]:
        """A batch: wait for a first message, then more for up to ``batch_max_ms``.

        Returns early (maybe empty) when the connection is lost or stopping; when
        stopping, takes what is already queued, to store it before disconnecting.
        """
        loop = asyncio.get_running_loop()
        n_max = self.settings.batch_max_messages
        first = await _next(conn.queue, None, conn.halt)
        if first is None:
            return []
        batch = [first]
        deadline = loop.time() + self.settings.batch_max_ms / 1000
        while len(batch) < n_max:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            item = await _next(conn.queue, remaining, conn.halt)
            if item is None:
                break
            batch.append(item)
        return batch

    # -- decoding -----------------------------------------------------------------------

    def _decode(self, received: Received) -> _Item:
        now = asyncio.get_running_loop().time()
        s = self.stats
        s.last_message_at = now
        s.backlog += 1
        item = _Item(received)
        try:
            _, kind = parse_topic(received.topic)
        except TopicError as exc:
            s.received["unknown"] += 1
            self._bad(item, "topic", exc)
            return item
        s.received[kind] += 1
        if len(received.payload) > MAX_PAYLOAD_BYTES:
            size = f"payload of {len(received.payload)} bytes is larger than {MAX_PAYLOAD_BYTES}"
            self._bad(item, "oversized", MessageError(size))
            return item
        try:
            message = decode_message(received.payload, received.topic)
        except MessageError as exc:
            self._bad(item, _bad_reason(exc, received), exc)
            return item
        item.message = message
        if isinstance(message, BeatsMessage):
            item.beats, dropped = beat_rows(message)
            if dropped:
                s.beats_dropped += dropped
                log.warning(
                    "%s: %d beats of message %s/%d have an RR interval the store cannot hold; "
                    "dropped",
                    message.patient,
                    dropped,
                    message.session,
                    message.seq,
                )
        elif isinstance(message, MetricsMessage):
            try:
                item.metrics = metric_row(message)
            except ValueError as exc:
                item.message = None
                self._bad(item, "unstorable", MessageError(str(exc), "$", "metrics"))
        elif isinstance(message, StatusMessage):
            s.status_messages += 1
            previous = self.statuses.get(message.patient)
            if previous is None or message.t_unix_s >= previous.t_unix_s:
                self.statuses[message.patient] = message
                self._notify(message)
        return item

    def _bad(self, item: _Item, reason: str, exc: MessageError | None) -> None:
        self.stats.bad[reason] += 1
        self._bad_log.report(asyncio.get_running_loop().time(), reason, item.received.topic, exc)

    # -- storing ------------------------------------------------------------------------

    async def _commit(self, batch: list[_Item], conn: _Connection, stop: asyncio.Event) -> bool:
        """Store a batch (retrying while the store fails), then acknowledge it.

        Gives up (``False``) without acknowledging when the connection is lost, or the
        server stops while the store is failing: the broker delivers the messages again.
        """
        writes: list[tuple[str, Sequence[Any]]] = []
        beats = [row for item in batch for row in item.beats]
        if beats:
            writes.append(("beats", beats))
        metrics = [item.metrics for item in batch if item.metrics is not None]
        if metrics:
            writes.append(("metrics", metrics))
        if writes and not await self._write(writes, conn, stop):
            log.info("%d messages not stored; the broker will deliver them again", len(batch))
            return False
        await self._stored(batch, conn)
        return True

    async def _write(
        self, writes: list[tuple[str, Sequence[Any]]], conn: _Connection, stop: asyncio.Event
    ) -> bool:
        """Write and flush until it succeeds (True), or the link is lost or stopping."""
        loop = asyncio.get_running_loop()
        st = self.settings.store
        delay = min(0.2, st.retry_max_s)
        while True:
            t0 = loop.time()
            try:
                async with asyncio.timeout(st.flush_timeout_s):
                    while writes:
                        kind, rows = writes[0]
                        if kind == "beats":
                            await self.store.write_beats(rows)
                        else:
                            await self.store.write_metrics(rows)
                        writes.pop(0)  # accepted: not written again, only flushed
                    await self.store.flush()  # in the database: only now acknowledge
            except (StoreError, TimeoutError) as exc:
                self._store_failed(exc, loop.time())
                if conn.lost.is_set() or stop.is_set():
                    return False  # unacknowledged: the broker delivers them again
                await _wait(conn.halt, delay)  # a stop cuts it short for one last attempt
                delay = min(st.retry_max_s, delay * 2)
                continue
            self._store_ok(loop.time(), loop.time() - t0)
            return True

    def _store_failed(self, exc: BaseException, now: float) -> None:
        s = self.stats
        unavailable = isinstance(exc, StoreUnavailable | TimeoutError)
        s.store_write_errors["unavailable" if unavailable else "error"] += 1
        what = (
            f"no answer within {self.settings.store.flush_timeout_s:g} s"
            if isinstance(exc, TimeoutError)
            else str(exc)
        )
        if s.store_failing_since is None:
            s.store_failing_since = now
            log.warning("store write failed, retrying (nothing acknowledged): %s", what)
        elif not unavailable:
            log.error("store write failed again: %s", what)
        else:
            log.debug("store write failed again: %s", what)

    def _store_ok(self, now: float, seconds: float) -> None:
        s = self.stats
        if s.store_failing_since is not None:
            log.warning("store is back after %.1f s", now - s.store_failing_since)
            s.store_failing_since = None
        s.store_write_count += 1
        s.store_write_sum_s += seconds
        s.store_write_window.add(now, seconds)

    async def _stored(self, batch: list[_Item], conn: _Connection) -> None:
        """Count, call the hooks, acknowledge in arrival order."""
        loop = asyncio.get_running_loop()
        s = self.stats
        now, wall = loop.time(), time.time()
        for item in batch:
            m = item.message
            if isinstance(m, BeatsMessage):
                s.beats_stored += len(item.beats)
                s.publish_to_stored.add(now, wall - m.sent_unix_s)
                self._notify(m)
            elif isinstance(m, MetricsMessage) and item.metrics is not None:
                s.metrics_stored += 1
                await self._call_hook(self._metrics_listener.on_metrics, m)
                self._notify(m)
            elif isinstance(m, AlertAckMessage):
                s.alert_acks += 1
                await self._call_hook(self._ack_listener.on_alert_ack, m)
                self._notify(m)
        if conn.lost.is_set():
            return  # the broker delivers them again on the next connection
        for item in batch:
            conn.sub.ack(item.received)
        s.acked += len(batch)
        s.backlog = max(0, s.backlog - len(batch))

    async def _call_hook(self, hook: Callable[[Any], Awaitable[None]], message: Message) -> None:
        try:
            await hook(message)
        except Exception:
            self.stats.listener_errors += 1
            log.exception("a listener failed on a %s message of %s", message.KIND, message.patient)

    # -- HTTP ---------------------------------------------------------------------------

    async def _start_http(self) -> None:
        host = self.settings.http_host
        if host is None:
            return
        app = web.Application()
        app.router.add_get("/healthz", self._http_health)
        app.router.add_get("/metrics", self._http_metrics)
        if self._web_setup is not None:
            self._web_setup(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, self.settings.http_port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"[http] listen: cannot listen on {host}:{self.settings.http_port}: "
                f"{exc.strerror or exc}"
            ) from exc
        self._runner = runner
        address = runner.addresses[0]
        self.http_port = int(address[1])
        log.info("health and metrics on http://%s:%d/", host, self.http_port)

    async def _http_health(self, request: web.Request) -> web.Response:
        ok, details = self.health()
        return web.json_response(details, status=200 if ok else 503, dumps=_dumps)

    async def _http_metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            text=self.prometheus(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._owns_store and self._store is not None:
            store, self._store = self._store, None
            try:
                await store.close()
            except StoreError as exc:
                log.warning("closing the store: %s", exc)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, allow_nan=False, separators=(",", ":"))


#: Every reason a message is counted as bad (``hrvstream_bad_messages_total{reason=}``).
BAD_REASONS: Final = (
    "topic",  # not an hrvstream v1 topic (e.g. an invalid patient level)
    "oversized",  # larger than MAX_PAYLOAD_BYTES
    "malformed",  # not UTF-8, not JSON, not an object
    "schema",  # missing / unknown schema, wrong kind or version
    "patient_mismatch",  # the payload's patient is not the topic's
    "invalid",  # a member missing, of the wrong type or out of range
    "unstorable",  # valid, but the store refuses the row
)


def _bad_reason(exc: MessageError, received: Received) -> str:
    if exc.path == "$":
        if exc.reason.startswith("payload of"):
            return "oversized"
        return "malformed"
    if exc.path == "$.schema":
        return "schema"
    if exc.path == "$.patient":
        # A payload valid on its own whose patient differs from the topic's.
        with contextlib.suppress(MessageError):
            alone = decode_message(received.payload)
            if alone.patient != parse_topic(received.topic)[0]:
                return "patient_mismatch"
    return "invalid"


async def _next(
    queue: asyncio.Queue[_Item], timeout: float | None, halt: asyncio.Event
) -> _Item | None:
    """The next queued item, or ``None`` after ``timeout`` or once ``halt`` is set.

    An item is never lost: a cancelled ``get`` leaves it in the queue.
    """
    with contextlib.suppress(asyncio.QueueEmpty):
        return queue.get_nowait()
    if halt.is_set():
        return None
    get = asyncio.ensure_future(queue.get())
    halted = asyncio.ensure_future(halt.wait())
    try:
        await asyncio.wait({get, halted}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        halted.cancel()
        if not get.done():
            get.cancel()  # Queue.get leaves the item in the queue when cancelled
    if get.done() and not get.cancelled():
        return get.result()
    return None


async def _wait(event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set, at most ``timeout`` seconds."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


async def _set_when(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel a task and wait for it to end (without swallowing our own cancellation)."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


# == entry points ========================================================================


async def run_until_signalled(server: Server, stop: asyncio.Event) -> None:
    """Run ``server`` until SIGTERM/SIGINT (or ``stop``); a second signal cancels the
    clean shutdown (it stores what it received, acknowledges it, disconnects and closes
    the store, within ``shutdown_timeout_s``)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("%s again: giving up the clean shutdown", sig.name)
            if task is not None:
                task.cancel()
            return
        log.info("%s: shutting down", sig.name)
        stop.set()

    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
    run = asyncio.create_task(server.run(stop), name="hrvstream-server")
    try:
        await asyncio.shield(run)
    except asyncio.CancelledError:
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        raise
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def serve(
    settings: ServerSettings,
    *,
    stop: asyncio.Event | None = None,
    metrics_listener: MetricsListener | None = None,
    alert_ack_listener: AlertAckListener | None = None,
) -> Server:
    """Run a :class:`Server` until SIGTERM/SIGINT (or ``stop``), then shut down cleanly.

    The first signal stops the server: it stores what it received, acknowledges it,
    disconnects and closes the store (at most ``shutdown_timeout_s``; unstored messages
    stay in the broker). A second signal cancels the shutdown.

    Returns
    -------
    Server
        The stopped server (its ``stats``).
    """
    server = Server(
        settings, metrics_listener=metrics_listener, alert_ack_listener=alert_ack_listener
    )
    await run_until_signalled(server, stop or asyncio.Event())
    return server


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``hrvstream server`` (for the CLI's sub-parser)."""
    parser.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help="server configuration (TOML); HRVSTREAM_<SECTION>_<KEY> variables override it",
    )


def main_server(args: argparse.Namespace) -> int:
    """``hrvstream server``: run until SIGTERM/SIGINT; returns the exit status.

    Raises :class:`HrvStreamError` (bad configuration, broker credentials or TLS, store)
    for the CLI to print without a traceback.
    """
    settings = load_server_settings(args.config)
    try:
        asyncio.run(serve(settings))
    except asyncio.CancelledError:
        return 130  # a second signal during the shutdown
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hrvstream.server --config FILE`` (the CLI's ``server`` command, alone)."""
    parser = argparse.ArgumentParser(prog="hrvstream server", description=__doc__.split("\n")[0])
    add_server_arguments(parser)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    args = parser.parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        return main_server(args)
    except HrvStreamError as exc:
        print(f"hrvstream server: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
