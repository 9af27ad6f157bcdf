"""The agent at the patient's home: straps -> HRV -> spool -> MQTT, for days on end.

Data flow::

    StrapLink (bleak) --(t, payload)--> BeatPipeline --beats, rows--> messages
        --> Spool.put (SQLite, fsync) --> Sender --QoS 1--> broker --PUBACK--> Spool.ack

- Every notification's beats become one :class:`BeatsMessage` (``seq`` increasing within
  the agent's session); the latest metric row goes out every ``metrics_every_s``.
- Every message is in the spool before anything is sent, and leaves it only after the
  broker's PUBACK. Offline for hours: messages pile up in the spool (bounded; a clear
  warning as it fills, and :class:`SpoolFullError` logged once when full — beats not
  accepted then are counted as lost, accepted ones never are).
- Back online, the sender runs two lanes on one connection: live messages (spooled
  after the reconnect) go out at once, and the backlog (spooled before) drains in order
  at ``backlog_rate_per_s``, so a therapist sees the present while the past catches up.
  The server writes idempotently, so a message sent twice (no PUBACK before a drop)
  is stored once.
- The status topic is retained: ``online`` on connect, ``offline`` as the MQTT will
  (and on clean shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hrvstream import __version__
from hrvstream.adapters.ble import LinkSettings, StrapEvent, StrapEventKind, StrapLink
from hrvstream.adapters.mqtt import (
    BrokerAuthError,
    BrokerConfig,
    BrokerError,
    BrokerTLSError,
    Publisher,
    load_password,
    parse_broker_url,
)
from hrvstream.adapters.spool import Spool, SpoolFullError
from hrvstream.config import get, load_toml, with_env
from hrvstream.errors import ConfigError
from hrvstream.hrv.engine import AnalysisConfig
from hrvstream.hrv.frequency import warm_up
from hrvstream.pipeline import BeatPipeline
from hrvstream.protocol.messages import (
    BeatsMessage,
    MetricsMessage,
    StatusMessage,
    StrapInfo,
    check_patient,
    topic,
)

log = logging.getLogger(__name__)

LinkFactory = Callable[..., StrapLink]


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """What an agent needs to run (see :func:`load_agent_settings`)."""

    patient: str
    straps: tuple[str, ...]
    broker: BrokerConfig
    spool_path: Path
    spool_max_bytes: int = 512 * 1024 * 1024
    window_s: float = 300.0
    metrics_every_s: float = 5.0
    status_every_s: float = 30.0
    backlog_rate_per_s: float = 50.0
    max_inflight: int = 32
    link: LinkSettings = field(default_factory=LinkSettings)

    def __post_init__(self) -> None:
        checks = {
            "spool_max_mb": self.spool_max_bytes >= 1024 * 1024,
            "window_s": self.window_s > 0,
            "metrics_every_s": self.metrics_every_s > 0,
            "status_every_s": self.status_every_s > 0,
            "backlog_rate_per_s": self.backlog_rate_per_s > 0,
            "max_inflight": self.max_inflight >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(
                "agent settings out of range: " + ", ".join(bad) + " (spool_max_mb >= 1, "
                "max_inflight >= 1, the others > 0)"
            )


_KNOWN: Mapping[str, Mapping[str, type]] = {
    "agent": {"patient": str, "straps": list, "spool": str, "spool_max_mb": int},
    "broker": {"url": str, "ca_file": str, "password_file": str, "client_id": str},
    "hrv": {"window_s": float, "metrics_every_s": float},
    "sender": {"backlog_rate_per_s": float, "max_inflight": int},
}


def load_agent_settings(
    path: str | Path | None, env: Mapping[str, str] | None = None
) -> AgentSettings:
    """Settings from a TOML file and ``HRVSTREAM_*`` variables (see :mod:`hrvstream.config`)."""
    c = with_env(load_toml(path), _KNOWN, env)
    patient = get(c, "agent", "patient", str)
    try:
        check_patient(patient)
    except ValueError as exc:
        raise ConfigError(f"[agent] patient {patient!r}: {exc}") from exc
    straps = tuple(str(s) for s in get(c, "agent", "straps", list))
    if not straps:
        raise ConfigError("[agent] straps: name at least one strap (address or name)")
    password = load_password(file=get(c, "broker", "password_file", str, None), environ=env)
    broker = parse_broker_url(
        get(c, "broker", "url", str),
        password=password,
        ca_file=get(c, "broker", "ca_file", str, None),
        client_id=get(c, "broker", "client_id", str, None) or f"hrvstream-agent-{patient}",
    )
    return AgentSettings(
        patient=patient,
        straps=straps,
        broker=broker,
        spool_path=Path(get(c, "agent", "spool", str, "hrvstream-spool.db")),
        spool_max_bytes=int(get(c, "agent", "spool_max_mb", int, 512)) * 1024 * 1024,
        window_s=float(get(c, "hrv", "window_s", float, 300.0)),
        metrics_every_s=float(get(c, "hrv", "metrics_every_s", float, 5.0)),
        backlog_rate_per_s=float(get(c, "sender", "backlog_rate_per_s", float, 50.0)),
        max_inflight=int(get(c, "sender", "max_inflight", int, 32)),
    )


@dataclass
class _StrapState:
    pipeline: BeatPipeline
    session: str
    seq: int = 0
    last_metrics_t: float = float("-inf")
    latest_row: dict[str, float] | None = None
    link: StrapLink | None = None


class Agent:
    """One patient's agent. ``await agent.run(stop)`` until ``stop`` is set.

    Parameters
    ----------
    settings:
        Patient, straps, broker, spool.
    link_factory:
        Builds a :class:`StrapLink` (``target, on_notification=, on_event=``); tests and
        ``replay --broker`` pass one bound to the virtual radio.
    unix_offset_s:
        Added to the link clock's times to get Unix time (0 for the system clock).
    """

    def __init__(
        self,
        settings: AgentSettings,
        *,
        link_factory: LinkFactory | None = None,
        unix_offset_s: float = 0.0,
    ) -> None:
        self.settings = settings
        self._link_factory: LinkFactory = link_factory or StrapLink
        self._offset = unix_offset_s
        self.session = uuid.uuid4().hex[:16]
        self.spool: Spool | None = None
        self._new_data = asyncio.Event()
        self._straps: list[_StrapState] = []
        self._contact: bool | None = None
        self._battery: int | None = None
        self._strap_info: StrapInfo | None = None
        self._last_beat_unix: float | None = None
        self.lost_beats = 0
        self.published = 0
        self.connected = asyncio.Event()
        self._status_changed = asyncio.Event()
        self._acked = asyncio.Event()
        self._spool_full_logged = False

    # -- input side -------------------------------------------------------------------
    def _on_notification(self, state: _StrapState, t: float, payload: bytes) -> None:
        beats, rows = state.pipeline.notification(t, payload)
        s = self.settings
        if rows:
            state.latest_row = rows[-1]
        messages: list[tuple[str, bytes]] = []
        if beats and state.pipeline.origin_s is not None:
            dec = state.pipeline.decoder
            msg = BeatsMessage.from_beats(
                patient=s.patient,
                session=state.session,
                seq=state.seq,
                origin_unix_s=state.pipeline.origin_s + self._offset,
                sent_unix_s=time.time(),
                beats=beats,
                contact=dec.contact,
                hr_bpm=dec.heart_rate_bpm,
            )
            state.seq += 1
            messages.append((topic(s.patient, "beats"), msg.to_json()))
            self._last_beat_unix = beats[-1].receiver_t_s + self._offset
            self._contact = dec.contact
        row = state.latest_row
        if row is not None and t - state.last_metrics_t >= s.metrics_every_s:
            state.last_metrics_t = t
            messages.append((topic(s.patient, "metrics"), self._metrics(state, row)))
        if messages:
            self._spool(messages, n_beats=len(beats))

    def _metrics(self, state: _StrapState, row: dict[str, float]) -> bytes:
        origin = state.pipeline.origin_s or 0.0
        values = {
            k: (None if math.isnan(v) else float(v))  # NaN -> missing
            for k, v in row.items()
            if k not in ("t_s", "n_beats")
        }
        msg = MetricsMessage(
            patient=self.settings.patient,
            session=state.session,
            t_unix_s=origin + row["t_s"] + self._offset,
            window_s=self.settings.window_s,
            n_beats=int(row["n_beats"]),
            **values,
        )
        return msg.to_json()

    def _spool(self, messages: Sequence[tuple[str, bytes]], *, n_beats: int) -> None:
        assert self.spool is not None
        try:
            self.spool.put_many(messages)
        except SpoolFullError as exc:
            self.lost_beats += n_beats
            if not self._spool_full_logged:
                log.error("%s; beats are being lost until the broker is reachable", exc)
                self._spool_full_logged = True
            return
        self._spool_full_logged = False
        self._new_data.set()

    def _on_event(self, event: StrapEvent) -> None:
        if event.kind is StrapEventKind.CONNECTED:
            self._battery = event.detail.get("battery_pct")
            name = event.detail.get("name")
            location = event.detail.get("body_location")
            with contextlib.suppress(ValueError):
                self._strap_info = StrapInfo(name=name, location=location)
        elif event.kind is StrapEventKind.CONTACT_LOST:
            self._contact = False
        elif event.kind is StrapEventKind.CONTACT_RESTORED:
            self._contact = True
        else:
            return
        self._status_changed.set()  # tell the clinic now, not at the next status tick

    # -- status -----------------------------------------------------------------------
    def _status(self, state: str) -> bytes:
        msg = StatusMessage(
            patient=self.settings.patient,
            state=state,  # type: ignore[arg-type]
            t_unix_s=time.time(),
            agent_version=__version__,
            battery_pct=self._battery,
            contact=self._contact,
            strap=self._strap_info,
            spool_pending=self.spool.count() if self.spool is not None else None,
            last_beat_unix_s=self._last_beat_unix,
        )
        return msg.to_json()

    # -- output side ------------------------------------------------------------------
    async def _publish_batch(self, pub: Publisher, batch: Sequence[Any]) -> None:
        assert self.spool is not None
        await asyncio.gather(*(pub.publish(m.topic, bytes(m.payload)) for m in batch))
        self.spool.ack_many(m.seq for m in batch)
        self.published += len(batch)
        self._acked.set()

    async def wait_drained(self) -> None:
        """Wait until every spooled message has been acknowledged by the broker."""
        while self.spool is None or self.spool.count() > 0:
            self._acked.clear()
            await self._acked.wait()

    async def _live(self, pub: Publisher, after: int) -> None:
        """Send what is spooled after ``after`` as it arrives."""
        assert self.spool is not None
        last = after
        while True:
            self._new_data.clear()  # before looking, so a put after the look wakes us
            batch = self.spool.pending(self.settings.max_inflight, after_seq=last)
            if not batch:
                await self._new_data.wait()
                continue
            await self._publish_batch(pub, batch)
            last = batch[-1].seq

    async def _backlog(self, pub: Publisher, upto: int) -> None:
        """Drain what was spooled up to ``upto``, in order, at the backlog rate."""
        assert self.spool is not None
        rate = self.settings.backlog_rate_per_s
        chunk = max(1, min(self.settings.max_inflight, int(rate)))
        last: int | None = None
        while True:
            batch = [m for m in self.spool.pending(chunk, after_seq=last) if m.seq <= upto]
            if not batch:
                log.info("backlog sent")
                return
            started = asyncio.get_running_loop().time()
            await self._publish_batch(pub, batch)
            last = batch[-1].seq
            # rate limit: this batch may take len/rate seconds in all
            pause = len(batch) / rate - (asyncio.get_running_loop().time() - started)
            if pause > 0:
                await asyncio.sleep(pause)

    async def _status_loop(self, pub: Publisher) -> None:
        """The retained status: every ``status_every_s``, and soon after a strap connects
        or its contact changes (at most one a second, so a flapping contact is cheap)."""
        every = self.settings.status_every_s
        while True:
            self._status_changed.clear()
            await pub.publish(
                topic(self.settings.patient, "status"), self._status("online"), retain=True
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every):
                    await self._status_changed.wait()
                await asyncio.sleep(min(1.0, every))  # rate limit, not synchronisation

    async def _sender(self, stop: asyncio.Event) -> None:
        """Connect, send, and reconnect with backoff for as long as the agent runs."""
        s = self.settings
        delay = 0.5
        status_topic = topic(s.patient, "status")
        while not stop.is_set():
            try:
                async with Publisher(
                    s.broker,
                    will_topic=status_topic,
                    will_payload=self._status("offline"),
                    max_inflight=s.max_inflight,
                ) as pub:
                    delay = 0.5
                    self.connected.set()
                    assert self.spool is not None
                    boundary = self.spool.last_seq() or 0
                    if boundary:
                        log.info(
                            "%d messages waiting in the spool; sending them", self.spool.count()
                        )
                    tasks = [
                        asyncio.create_task(self._live(pub, boundary)),
                        asyncio.create_task(self._backlog(pub, boundary)),
                        asyncio.create_task(self._status_loop(pub)),
                    ]
                    stopper = asyncio.create_task(stop.wait())
                    try:
                        while True:
                            done, _ = await asyncio.wait(
                                [*tasks, stopper], return_when=asyncio.FIRST_COMPLETED
                            )
                            for t in done:
                                if t is not stopper and t.exception() is not None:
                                    raise t.exception()  # type: ignore[misc]
                            if stopper in done:
                                break
                            tasks = [t for t in tasks if not t.done()]
                        # Stop sending first, so no late "online" follows the "offline".
                        for t in tasks:
                            t.cancel()
                        await asyncio.gather(*tasks, return_exceptions=True)
                        with contextlib.suppress(BrokerError):
                            await pub.publish(status_topic, self._status("offline"), retain=True)
                    finally:
                        for t in [*tasks, stopper]:
                            t.cancel()
                        await asyncio.gather(*tasks, stopper, return_exceptions=True)
                        self.connected.clear()
            except (BrokerAuthError, BrokerTLSError):
                raise
            except BrokerError as exc:
                log.warning("%s; retrying in %.1f s", exc, delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
                delay = min(delay * 2, 60.0)

    # -- the service ------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set: straps, pipeline, spool and sender."""
        s = self.settings
        self.spool = Spool(s.spool_path, max_bytes=s.spool_max_bytes)
        warm_up()  # compile/load the kernels now, not in the middle of the first window
        config = AnalysisConfig(window_s=s.window_s, step_s=None)
        links: list[StrapLink] = []
        for i, target in enumerate(s.straps):
            state = _StrapState(pipeline=BeatPipeline(config), session=f"{self.session}-{i}")
            link = self._link_factory(
                target,
                on_notification=lambda t, p, st=state: self._on_notification(st, t, p),
                on_event=self._on_event,
                settings=s.link,
            )
            state.link = link
            self._straps.append(state)
            links.append(link)
        link_tasks = [
            asyncio.create_task(link.run(), name=f"strap {link.target}") for link in links
        ]
        sender = asyncio.create_task(self._sender(stop), name="sender")
        try:
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([sender, stopper], return_when=asyncio.FIRST_COMPLETED)
            if sender in done:
                sender.result()  # fatal broker configuration errors surface here
            stopper.cancel()
        finally:
            for link in links:
                link.stop()
            await asyncio.gather(*link_tasks, return_exceptions=True)
            stop.set()
            with contextlib.suppress(asyncio.CancelledError, BrokerError):
                await sender
            if self.spool is not None:
                self.spool.close()


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (clean shutdown: spool closed, status offline)."""
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def replay_to_broker(
    settings: AgentSettings, records: Sequence[Any], *, speed: float | None
) -> Agent:
    """``replay --broker``: publish a recording as if a strap were sending it now."""
    from hrvstream.sources import RecordSource

    sources: list[RecordSource] = []

    def factory(target: str, **kw: Any) -> Any:
        src = RecordSource(target, records, speed=speed, start_after=agent.connected, **kw)
        sources.append(src)
        return src

    agent = Agent(settings, link_factory=factory, unix_offset_s=time.time())
    stop = asyncio.Event()
    install_stop_signals(stop)
    task = asyncio.create_task(agent.run(stop))
    try:
        while not sources:
            await asyncio.sleep(0)
        waits = [asyncio.create_task(src.done.wait()) for src in sources]
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([task, stopper, *waits], return_when=asyncio.FIRST_COMPLETED)
        if not stop.is_set() and not task.done():
            await asyncio.gather(*waits)
            drained = asyncio.create_task(agent.wait_drained())
            await asyncio.wait([task, stopper, drained], return_when=asyncio.FIRST_COMPLETED)
            drained.cancel()
        stopper.cancel()
    finally:
        stop.set()
        await task
    return agent
