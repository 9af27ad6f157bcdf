"""The agent against a real mosquitto: beats, metrics, status, will, ACL, spool, config, CLI.

In-process, the agent's straps are :class:`hrvstream.sources.RecordSource` instances (the
link interface without a BLE stack, at maximum speed); through the CLI
(``hrvstream agent --ble virtual``) they are a virtual strap on the Bumble radio. The
broker is the clinic-like ``hrv_broker`` of :mod:`tests.infra` (TLS, one password per
user, the project's ACL); ``admin`` is the privileged observer.

Every async test runs its own event loop (``asyncio.run``) and waits on conditions (an
agent's events, messages arriving, a marker message), never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any
from unittest import mock

import aiomqtt
import pytest

from hrvstream.adapters.ble import StrapEvent, StrapEventKind
from hrvstream.adapters.mqtt import BrokerAuthError, BrokerError, Publisher, parse_broker_url
from hrvstream.adapters.spool import Spool
from hrvstream.agent import _KNOWN, Agent, AgentSettings, load_agent_settings
from hrvstream.errors import ConfigError
from hrvstream.pipeline import Record, records_from_series
from hrvstream.protocol.heart_rate import rr_ms_to_raw
from hrvstream.protocol.messages import (
    METRIC_FIELDS,
    BeatsMessage,
    MetricsMessage,
    StatusMessage,
    decode_message,
)
from hrvstream.simulate import SessionConfig, simulate_session
from hrvstream.sources import RecordSource
from tests.infra import Collector, MosquittoBroker, collect, subscriber

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "deploy" / "agent.example.toml"
STEP = 20.0  # bound of any single wait, seconds
PROBLEMS = ("Traceback", "Exception in callback", "Task exception was never retrieved")
T_OFFSET = 1.7e9  # the link clock's t = 0 as Unix time, for in-process agents


def run(test: Callable[[], Coroutine[Any, Any, None]], timeout: float = 90.0) -> None:
    """Run one async test body in a fresh event loop, bounded by ``timeout``."""

    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await test()

    asyncio.run(bounded())


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def session(duration_s: float, seed: int = 7) -> tuple[list[Record], list[float]]:
    """A simulated session as a strap's notifications, and its RR intervals (ms)."""
    sim = simulate_session(SessionConfig(duration_s=duration_s, seed=seed))
    return list(records_from_series(sim.series)), [float(v) for v in sim.series.rr_ms]


def quantised(rr_ms: list[float]) -> list[float]:
    """RR intervals as a strap sends them: the nearest 1/1024 s, decoded back to ms."""
    return [1000 * rr_ms_to_raw(v) / 1024 for v in rr_ms]


class Sources:
    """A link factory: one :class:`RecordSource` per strap, each playing ``records``."""

    def __init__(self, records: list[Record], speed: float | None = None) -> None:
        self.records = records
        self.speed = speed
        self.made: list[RecordSource] = []
        self.created = asyncio.Event()

    def __call__(self, target: str, **kw: Any) -> Any:
        src = RecordSource(target, self.records, speed=self.speed, **kw)
        self.made.append(src)
        self.created.set()
        return src

    async def played(self) -> None:
        """Until every source has played all its records."""
        await self.created.wait()
        for src in self.made:
            await src.done.wait()


def settings_for(
    broker: MosquittoBroker,
    spool: Path,
    *,
    patient: str = "p1",
    user: str = "p1",
    tls: bool = True,
    **kw: Any,
) -> AgentSettings:
    """An agent of ``patient`` logging in as ``user`` (TLS and its password by default)."""
    cfg = parse_broker_url(
        broker.url(user, tls=tls),
        password=broker.password(user),
        ca_file=broker.ca_file if tls else None,
        client_id=f"agent-{patient}-{uuid.uuid4().hex[:8]}",
    )
    kw.setdefault("window_s", 60.0)
    kw.setdefault("backlog_rate_per_s", 10_000.0)
    return AgentSettings(patient=patient, straps=("strap-a",), broker=cfg, spool_path=spool, **kw)


@contextlib.asynccontextmanager
async def observe(
    broker: MosquittoBroker, topics: list[str], *, tls: bool = True
) -> AsyncIterator[Collector]:
    """The privileged observer (``admin``), subscribed to ``topics``."""
    async with subscriber(
        broker.url("admin", tls=tls),
        topics,
        password=broker.password("admin"),
        ca_file=broker.ca_file if tls else None,
    ) as sub:
        yield sub


async def retained_status(broker: MosquittoBroker, patient: str = "p1") -> StatusMessage:
    """The broker's retained status of ``patient`` (a new subscriber's first message)."""
    got = await collect(
        broker.url("admin", tls=True),
        [f"hrv/v1/{patient}/status"],
        1,
        timeout=STEP,
        password=broker.password("admin"),
        ca_file=broker.ca_file,
    )
    assert got, f"no retained status for {patient}"
    assert got[0].retain
    message = decode_message(payload(got[0]), got[0].topic.value)
    assert isinstance(message, StatusMessage)
    return message


def payload(m: aiomqtt.Message) -> bytes:
    assert isinstance(m.payload, bytes), m.payload
    return m.payload


def of_kind(messages: list[aiomqtt.Message], kind: str) -> list[aiomqtt.Message]:
    return [m for m in messages if m.topic.value.endswith(f"/{kind}")]


def statuses(messages: list[aiomqtt.Message]) -> list[str]:
    out: list[str] = []
    for m in of_kind(messages, "status"):
        s = decode_message(payload(m), m.topic.value)
        assert isinstance(s, StatusMessage)
        out.append(s.state)
    return out


# ---------------------------------------------------------------------------------------
# Beats, metrics, status (in process)
# ---------------------------------------------------------------------------------------


FREQUENCY = ("lf_ms2", "hf_ms2", "lf_hf", "lf_nu", "hf_nu")  # need coverage >= 0.9
# the slow-ack test: a status every 10 ms, the offline acknowledged after 200 ms
STATUS_EVERY_S = 0.01
ACK_DELAY_S = 0.2


async def start_agent_in_process(
    settings: AgentSettings, records: list[Record]
) -> tuple[Agent, Sources, asyncio.Event, asyncio.Task[None]]:
    """An in-process agent playing ``records`` at full speed; stop it with the event."""
    sources = Sources(records)
    agent = Agent(settings, link_factory=sources, unix_offset_s=T_OFFSET)
    stop = asyncio.Event()
    return agent, sources, stop, asyncio.create_task(agent.run(stop))


async def until_drained(agent: Agent, sources: Sources, task: asyncio.Task[None]) -> None:
    """Until the sources played and the broker acknowledged every spooled message.

    If the agent fails meanwhile, its error is raised (not a timeout).
    """

    async def played_and_drained() -> None:
        await sources.played()
        await agent.wait_drained()

    waiting = asyncio.create_task(played_and_drained())
    done, _ = await asyncio.wait([waiting, task], timeout=STEP, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if task in done:
        task.result()  # the agent's error
        raise AssertionError("the agent returned before it was stopped")
    assert waiting in done, "the agent did not send everything in time"


def test_beats_metrics_and_status_over_tls_with_a_password(
    hrv_broker: MosquittoBroker, tmp_path: Path
) -> None:
    records, rr = session(300)
    settings = settings_for(hrv_broker, tmp_path / "spool.db", metrics_every_s=5.0)
    assert settings.broker.tls and settings.broker.password == hrv_broker.password("p1")

    async def body() -> None:
        async with observe(hrv_broker, ["hrv/v1/#"]) as sub:
            agent, sources, stop, task = await start_agent_in_process(settings, records)

            def complete(ms: list[aiomqtt.Message]) -> bool:
                data = len(of_kind(ms, "beats")) + len(of_kind(ms, "metrics"))
                return data >= agent.published and "online" in statuses(ms)

            try:
                await until_drained(agent, sources, task)
                seen = await sub.wait(until=complete, timeout=STEP)
                running = await retained_status(hrv_broker)
            finally:
                stop.set()
                await asyncio.wait_for(task, STEP)
        assert complete(seen), (len(seen), agent.published)
        assert agent.lost_beats == 0
        assert running.state == "online" and running.patient == "p1"

        # beats: each (session, seq) once, contiguous in one session, the RR as sent
        beats = [decode_message(payload(m), m.topic.value) for m in of_kind(seen, "beats")]
        assert all(isinstance(b, BeatsMessage) for b in beats)
        bm = sorted((b for b in beats if isinstance(b, BeatsMessage)), key=lambda b: b.seq)
        assert {b.session for b in bm} == {f"{agent.session}-0"}
        assert [b.seq for b in bm] == list(range(len(bm)))  # no gap, no duplicate
        assert [v for b in bm for v in b.rr_ms] == quantised(rr)

        # metrics: every 5 s of strap time, a missing metric is None (JSON null)
        metrics = [decode_message(payload(m), m.topic.value) for m in of_kind(seen, "metrics")]
        assert all(isinstance(m, MetricsMessage) for m in metrics)
        mm = sorted((m for m in metrics if isinstance(m, MetricsMessage)), key=lambda m: m.t_unix_s)
        assert {m.session for m in mm} == {f"{agent.session}-0"}
        assert len(mm) >= 50, len(mm)  # ~300 s / 5 s
        assert mm[0].t_unix_s >= T_OFFSET and mm[-1].t_unix_s <= T_OFFSET + 310
        steps = [b.t_unix_s - a.t_unix_s for a, b in itertools.pairwise(mm)]
        assert all(3.5 <= d <= 6.5 for d in steps), steps
        for m in mm:
            for name in METRIC_FIELDS[1:]:
                value = getattr(m, name)
                assert value is None or math.isfinite(value), (name, value)
            assert m.coverage is not None
            if m.coverage < 0.9:  # too short a window for the frequency domain
                assert all(getattr(m, name) is None for name in FREQUENCY), m
        early = mm[0]
        assert early.coverage is not None and early.coverage < 0.9
        assert early.lf_ms2 is None  # missing, not 0.0
        assert json.loads(payload(of_kind(seen, "metrics")[0]))["lf_ms2"] is None
        late = mm[-1]
        assert late.coverage is not None and late.coverage >= 0.9
        assert all(getattr(late, name) is not None for name in FREQUENCY), late
        assert late.lf_ms2 is not None and late.lf_ms2 > 0

    run(body)


def test_status_is_offline_after_a_clean_stop(hrv_broker: MosquittoBroker, tmp_path: Path) -> None:
    records, _ = session(60)
    settings = settings_for(hrv_broker, tmp_path / "spool.db")

    async def body() -> None:
        async with observe(hrv_broker, ["hrv/v1/p1/status"]) as sub:
            agent, sources, stop, task = await start_agent_in_process(settings, records)
            try:
                await until_drained(agent, sources, task)
                seen = await sub.wait(until=lambda ms: "online" in statuses(ms), timeout=STEP)
                assert "online" in statuses(seen)
            finally:
                stop.set()
                await asyncio.wait_for(task, STEP)
        assert not agent.connected.is_set()
        status = await retained_status(hrv_broker)  # a fresh subscriber
        assert status.state == "offline" and status.patient == "p1"
        # the agent's own last word, not its will (composed at connect time): sent after
        # the beats, with nothing left in the spool
        assert status.spool_pending == 0
        assert status.last_beat_unix_s is not None
        assert T_OFFSET + 50 <= status.last_beat_unix_s <= T_OFFSET + 70

    run(body)


def test_status_follows_the_strap_at_once(hrv_broker: MosquittoBroker, tmp_path: Path) -> None:
    """Battery and contact reach the clinic when they change, not at the next status tick."""
    records, _ = session(60)
    settings = settings_for(hrv_broker, tmp_path / "spool.db", status_every_s=3600.0)
    sources = Sources(records, speed=1.0)  # the strap keeps the session going meanwhile
    handlers: list[Callable[[StrapEvent], None]] = []

    def factory(target: str, **kw: Any) -> Any:
        handlers.append(kw["on_event"])
        return sources(target, **kw)

    async def body() -> None:
        async with observe(hrv_broker, ["hrv/v1/p1/status"]) as sub:
            agent = Agent(settings, link_factory=factory, unix_offset_s=T_OFFSET)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            try:
                await sub.wait(until=lambda ms: "online" in statuses(ms), timeout=STEP)
                await sources.created.wait()
                connected = StrapEvent(
                    StrapEventKind.CONNECTED, 1.0, "strap-a", {"battery_pct": 77}
                )
                handlers[0](connected)

                def battery(ms: list[aiomqtt.Message]) -> list[int | None]:
                    out = []
                    for m in of_kind(ms, "status"):
                        msg = decode_message(payload(m), m.topic.value)
                        assert isinstance(msg, StatusMessage)
                        out.append(msg.battery_pct)
                    return out

                seen = await sub.wait(until=lambda ms: 77 in battery(ms), timeout=STEP)
                assert 77 in battery(seen)  # long before the 3600-s tick
                handlers[0](StrapEvent(StrapEventKind.CONTACT_LOST, 2.0, "strap-a"))
                later = await sub.wait(
                    until=lambda ms: any(
                        getattr(decode_message(payload(m), m.topic.value), "contact", None) is False
                        for m in of_kind(ms, "status")
                    ),
                    timeout=STEP,
                )
                assert len(of_kind(later, "status")) >= 3
            finally:
                stop.set()
                await asyncio.wait_for(task, STEP)

    run(body)


def test_clean_stop_never_ends_online_even_with_a_slow_ack(
    hrv_broker: MosquittoBroker, tmp_path: Path
) -> None:
    """No ``online`` from the status loop may land after the agent's ``offline``.

    The status loop publishes every 10 ms, and the broker acknowledges the agent's
    ``offline`` only after 200 ms: a status loop still running while the agent waits for
    that ack would put an ``online`` after it (the retained status would stay ``online``).
    Five rounds, each with a fresh client id.
    """
    records, _ = session(30)
    broker_publish = Publisher.publish

    async def slow_offline_ack(
        pub: Publisher, topic: str, payload: bytes, *, retain: bool = False, timeout_s: float = 30.0
    ) -> None:
        await broker_publish(pub, topic, payload, retain=retain, timeout_s=timeout_s)
        message = decode_message(payload, topic)
        if isinstance(message, StatusMessage) and message.state == "offline":
            await asyncio.sleep(ACK_DELAY_S)  # a late PUBACK (latency, not a wait)

    async def once(i: int) -> None:
        settings = dataclasses.replace(
            settings_for(hrv_broker, tmp_path / f"spool-{i}.db"),  # a fresh client id
            status_every_s=STATUS_EVERY_S,
        )
        async with observe(hrv_broker, ["hrv/v1/p1/status"]) as sub:
            agent, _, stop, task = await start_agent_in_process(settings, records)
            try:
                # the previous round's retained status, then this agent's (a cheap test:
                # the observer has to keep up with the agent)
                seen = await sub.wait(until=lambda ms: len(ms) > 5, timeout=STEP)
                assert statuses(seen)[1:].count("online") >= 5, statuses(seen)
            finally:
                stop.set()
                await asyncio.wait_for(task, STEP)
            # a marker after the agent returned: what the agent sent arrived before it
            async with hrv_broker.client("admin", tls=True) as admin:
                await admin.publish("hrv/v1/p1/status", b"marker", qos=1)
            seen = await sub.wait(until=lambda ms: b"marker" in [m.payload for m in ms])
        assert seen[-1].payload == b"marker"
        states = statuses(seen[:-1])
        assert states[-1] == "offline", (i, states[-5:])
        assert (await retained_status(hrv_broker)).state == "offline", (i, agent.session)

    async def body() -> None:
        with mock.patch.object(Publisher, "publish", slow_offline_ack):
            for i in range(5):
                await once(i)

    run(body)


def test_an_agent_cannot_publish_as_another_patient(
    hrv_broker: MosquittoBroker, tmp_path: Path
) -> None:
    """User p1 running an agent configured for patient p2: refused, stopped, nothing lost."""
    records, _ = session(60)
    settings = settings_for(hrv_broker, tmp_path / "spool.db", patient="p2", user="p1")

    async def body() -> None:
        async with observe(hrv_broker, ["hrv/v1/#"]) as sub:
            sources = Sources(records)
            agent = Agent(settings, link_factory=sources, unix_offset_s=T_OFFSET)
            stop = asyncio.Event()
            # The broker refuses the first publish (PUBACK 0x87): a configuration error the
            # agent stops on, keeping its messages in the spool instead of losing them.
            with pytest.raises(BrokerAuthError, match="refused a message to hrv/v1/p2"):
                await asyncio.wait_for(agent.run(stop), timeout=30.0)
            assert agent.published == 0
            # A marker by p1 on its own topic: when the observer has it, anything of the
            # agent's would have arrived too.
            async with hrv_broker.client("p1", tls=True) as p1:
                await p1.publish("hrv/v1/p1/status", b"marker", qos=1)
            seen = await sub.wait(until=lambda ms: b"marker" in [m.payload for m in ms])
        assert [m.topic.value for m in seen] == ["hrv/v1/p1/status"]
        with Spool(settings.spool_path, max_bytes=settings.spool_max_bytes) as spool:
            assert spool.count() > 0  # nothing accepted was lost

    run(body)


REFUSED_PUBLISH_BUG = (
    "product bug (hrvstream/adapters/mqtt.py, Publisher.publish, line 275; aiomqtt ignores the "
    "PUBACK reason code): a QoS 1 publish the broker refuses (MQTT v5 PUBACK 0x87 'Not "
    "authorized', e.g. a patient pseudonym that does not match the broker account) counts "
    "as delivered; the agent deletes it from the spool and counts it as published, so all "
    "data is silently lost with no log line. Fix: check the PUBACK reason code (paho's "
    "on_publish reason_code) and raise BrokerAuthError (fatal) for codes >= 0x80 (0x10 'no "
    "matching subscribers' is a success)."
)


def test_messages_the_broker_refuses_are_not_counted_as_delivered(
    hrv_broker: MosquittoBroker, tmp_path: Path
) -> None:
    records, _ = session(60)
    settings = settings_for(hrv_broker, tmp_path / "spool.db", patient="p2", user="p1")

    async def body() -> None:
        sources = Sources(records)
        agent = Agent(settings, link_factory=sources, unix_offset_s=T_OFFSET)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await sources.played()
        drained = asyncio.create_task(agent.wait_drained())
        await asyncio.wait([task, drained], timeout=5.0, return_when=asyncio.FIRST_COMPLETED)
        drained.cancel()
        stop.set()
        with contextlib.suppress(BrokerError):
            await task
        assert agent.published == 0  # not one of them reached a subscriber

    run(body)


# ---------------------------------------------------------------------------------------
# Offline: the spool
# ---------------------------------------------------------------------------------------


def test_spool_grows_offline_and_the_backlog_drains_in_order(
    hrv_broker: MosquittoBroker, tmp_path: Path
) -> None:
    records, rr = session(240)
    spool_path = tmp_path / "spool.db"
    settings = settings_for(hrv_broker, spool_path, tls=False, backlog_rate_per_s=500.0)
    topics = ["hrv/v1/p1/beats", "hrv/v1/p1/metrics"]

    async def body() -> None:
        # The observer's persistent session queues what arrives while it reconnects.
        async with subscriber(
            hrv_broker.client("admin", identifier="observer", session_expiry=600), topics
        ):
            pass
        await asyncio.to_thread(hrv_broker.stop)  # nothing listens on the agent's URL now

        sources = Sources(records, speed=2000.0)
        agent = Agent(settings, link_factory=sources, unix_offset_s=T_OFFSET)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await sources.created.wait()
        assert agent.spool is not None
        counts = [agent.spool.count()]
        while not sources.made[0].done.is_set():
            await asyncio.sleep(0.02)  # sampling the spool's size, not synchronising
            counts.append(agent.spool.count())
        counts.append(agent.spool.count())
        assert counts == sorted(counts) and counts[-1] > counts[0]
        assert not agent.connected.is_set() and agent.published == 0
        spooled = agent.spool.pending(100_000)
        assert len(spooled) == counts[-1]
        assert [m.seq for m in spooled] == sorted(m.seq for m in spooled)

        await asyncio.to_thread(hrv_broker.start)  # same port
        await asyncio.wait_for(agent.connected.wait(), STEP)
        loop = asyncio.get_running_loop()
        connected_at = loop.time()
        await asyncio.wait_for(agent.wait_drained(), STEP)
        drain_s = loop.time() - connected_at
        assert agent.spool.count() == 0
        assert agent.published == len(spooled)
        # at backlog_rate_per_s (500/s, in chunks of max_inflight = 32), not all at once
        assert drain_s >= 0.9 * (len(spooled) - 32) / 500, drain_s
        async with subscriber(
            hrv_broker.client("admin", identifier="observer", session_expiry=600), topics
        ) as sub:
            seen = await sub.wait(len(spooled), timeout=STEP)
        stop.set()
        await task
        # in spool order: the beats' seq and the metrics' times increase
        assert [(m.topic.value, payload(m)) for m in seen] == [
            (m.topic, m.payload) for m in spooled
        ]
        bm = [BeatsMessage.from_json(payload(m)) for m in of_kind(seen, "beats")]
        assert [b.seq for b in bm] == list(range(len(bm)))
        assert [v for b in bm for v in b.rr_ms] == quantised(rr)
        with Spool(spool_path) as reopened:
            assert reopened.count() == 0

    run(body)


# ---------------------------------------------------------------------------------------
# Configuration: load_agent_settings
# ---------------------------------------------------------------------------------------


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


BASE = """\
[agent]
patient = "p-7f3a"
straps = ["C4:5A:12:34:56:78"]
spool = "{spool}"

[broker]
url = "mqtts://p-7f3a@broker.clinic.example:8883"
"""


@pytest.fixture
def no_password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HRVSTREAM_MQTT_PASSWORD", raising=False)


def base_config(tmp_path: Path, extra: str = "") -> Path:
    text = BASE.format(spool=tmp_path / "spool.db") + extra
    return write_toml(tmp_path / "agent.toml", text)


@pytest.mark.usefixtures("no_password_env")
def test_settings_from_toml_with_defaults(tmp_path: Path) -> None:
    s = load_agent_settings(base_config(tmp_path), env={})
    assert s.patient == "p-7f3a"
    assert s.straps == ("C4:5A:12:34:56:78",)
    assert s.spool_path == tmp_path / "spool.db"
    assert s.spool_max_bytes == 512 * 1024 * 1024
    b = s.broker
    assert (b.host, b.port, b.tls, b.username) == ("broker.clinic.example", 8883, True, "p-7f3a")
    assert b.password is None and b.ca_file is None
    assert b.client_id == "hrvstream-agent-p-7f3a"
    assert (s.window_s, s.metrics_every_s, s.backlog_rate_per_s, s.max_inflight) == (
        300.0,
        5.0,
        50.0,
        32,
    )


@pytest.mark.usefixtures("no_password_env")
def test_environment_overrides_the_file(tmp_path: Path) -> None:
    env = {
        "HRVSTREAM_AGENT_PATIENT": "p-0042",
        "HRVSTREAM_BROKER_URL": "mqtt://p-0042@10.0.0.5:1884",
        "HRVSTREAM_AGENT_STRAPS": "Polar H10 8C4D2E1A, C4:5A:12:34:56:79",
        "HRVSTREAM_HRV_WINDOW_S": "120",
        "HRVSTREAM_SENDER_BACKLOG_RATE_PER_S": "20.5",
    }
    s = load_agent_settings(base_config(tmp_path), env=env)
    assert s.patient == "p-0042"
    assert s.straps == ("Polar H10 8C4D2E1A", "C4:5A:12:34:56:79")
    assert (s.broker.host, s.broker.port, s.broker.tls) == ("10.0.0.5", 1884, False)
    assert s.broker.username == "p-0042"
    assert s.broker.client_id == "hrvstream-agent-p-0042"
    assert s.window_s == 120.0 and s.backlog_rate_per_s == 20.5
    # the environment alone is a configuration
    alone = load_agent_settings(None, env={**env, "HRVSTREAM_AGENT_SPOOL": "/tmp/x.db"})
    assert alone.patient == "p-0042" and alone.spool_path == Path("/tmp/x.db")


def test_password_from_a_file(tmp_path: Path, no_password_env: None) -> None:
    pw = write_toml(tmp_path / "pw", "s3cret-pw\nignored second line\n")
    s = load_agent_settings(base_config(tmp_path, f'password_file = "{pw}"\n'), env={})
    assert s.broker.password == "s3cret-pw"
    assert "s3cret" not in repr(s)


PASSWORD_ENV_BUG = (
    "product bug (hrvstream/agent.py, load_agent_settings, line 104): the password is "
    "read with load_password(), which looks at os.environ, not at the env mapping given "
    "to load_agent_settings (load_server_settings uses the mapping), so "
    "HRVSTREAM_MQTT_PASSWORD in env= is ignored. Fix: pass env through, e.g. "
    "password = load_password(file=...) if password_file else environ.get(...)."
)


@pytest.mark.usefixtures("no_password_env")
def test_password_from_the_given_environment(tmp_path: Path) -> None:
    s = load_agent_settings(base_config(tmp_path), env={"HRVSTREAM_MQTT_PASSWORD": "pw-env"})
    assert s.broker.password == "pw-env"


@pytest.mark.parametrize(
    ("patient", "needles"),
    [
        ("Anna Schmidt", ["'Anna Schmidt'", "a-z, 0-9"]),
        ("C4:5A:12:34:56:78", ["'C4:5A:12:34:56:78'", "a-z, 0-9"]),
        ("c4-5a-12-34-56-78", ["looks like a BLE address"]),
        ("p/1", ["'p/1'"]),
        ("+", ["'+'"]),
    ],
)
def test_bad_patient_ids_are_refused(tmp_path: Path, patient: str, needles: list[str]) -> None:
    path = base_config(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_agent_settings(path, env={"HRVSTREAM_AGENT_PATIENT": patient})
    text = str(info.value)
    assert text.startswith("[agent] patient")
    for needle in needles:
        assert needle in text, text


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('[agent]\npatient = "p1"\nstraps = []\n', "straps: name at least one strap"),
        (
            '[agent]\npatient = "p1"\n[broker]\nurl = "mqtt://h:1"\n',
            "missing [agent] straps (or the environment variable HRVSTREAM_AGENT_STRAPS)",
        ),
        ('[agent]\nstraps = ["x"]\n', "missing [agent] patient"),
        ('[agent]\npatient = "p1"\nstraps = ["x"]\n', "missing [broker] url"),
        ('[agent]\npatient = "p1"\nstraps = "x"\n', "[agent] straps = 'x': expected a list"),
        ("[agent\n", "not valid TOML"),
        (
            '[agent]\npatient = "p1"\nstraps = ["x"]\n[broker]\nurl = "http://h:1"\n',
            "use mqtt://host:port or mqtts://host:port",
        ),
        (
            '[agent]\npatient = "p1"\nstraps = ["x"]\n[broker]\nurl = "mqtt://u:pw@h:1"\n',
            "do not put the password in the URL",
        ),
        (
            '[agent]\npatient = "p1"\nstraps = ["x"]\nspool_max_mb = "big"\n'
            '[broker]\nurl = "mqtt://h:1"\n',
            "[agent] spool_max_mb = 'big': expected a",
        ),
    ],
)
def test_bad_settings_are_clear_errors(
    tmp_path: Path, no_password_env: None, body: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_agent_settings(write_toml(tmp_path / "a.toml", body), env={})
    assert needle in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_agent_settings(tmp_path / "missing.toml", env={})


def test_bad_environment_value(tmp_path: Path, no_password_env: None) -> None:
    with pytest.raises(ConfigError, match=r"HRVSTREAM_HRV_WINDOW_S='5m': expected a float"):
        load_agent_settings(base_config(tmp_path), env={"HRVSTREAM_HRV_WINDOW_S": "5m"})


def test_unreadable_password_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "pw"
    with pytest.raises(ConfigError) as info:
        load_agent_settings(base_config(tmp_path, f'password_file = "{missing}"\n'), env={})
    assert f"cannot read the password file {missing}" in str(info.value)
    directory = tmp_path / "a-directory"
    directory.mkdir()
    with pytest.raises(ConfigError, match="cannot read the password file"):
        load_agent_settings(base_config(tmp_path, f'password_file = "{directory}"\n'), env={})


EMPTY_PASSWORD_FILE_BUG = (
    "product bug (hrvstream/adapters/mqtt.py, load_password, line 143): an empty password "
    "file gives 'cannot read the password file F: list index out of range', and a file "
    "whose first line is blank gives the password '' (then a puzzling auth failure). Fix: "
    "as the server's _first_line does, say 'the password file F is empty'."
)


@pytest.mark.parametrize("content", ["", "\n"])
def test_empty_password_file_is_named_as_such(tmp_path: Path, content: str) -> None:
    pw = write_toml(tmp_path / "pw", content)
    with pytest.raises(ConfigError, match=r"password file .* is empty"):
        load_agent_settings(base_config(tmp_path, f'password_file = "{pw}"\n'), env={})


SETTINGS_RANGE_BUG = (
    "product bug (hrvstream/agent.py, load_agent_settings, lines 91-124): numeric settings "
    "are not range-checked. backlog_rate_per_s = 0 crashes the running agent with "
    "ZeroDivisionError in Agent._backlog (line 301) as soon as there is a backlog (a traceback "
    "from `hrvstream agent`), a negative one makes the sleep negative (no rate limit); "
    "spool_max_mb = 0 raises a bare ValueError from Spool() (line 371): a traceback; "
    "metrics_every_s/window_s <= 0 and max_inflight < 1 are accepted. Fix: check each "
    "value (> 0, spool_max_mb >= 1) and raise ConfigError naming [section] key."
)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HRVSTREAM_SENDER_BACKLOG_RATE_PER_S", "0"),
        ("HRVSTREAM_SENDER_BACKLOG_RATE_PER_S", "-5"),
        ("HRVSTREAM_SENDER_MAX_INFLIGHT", "0"),
        ("HRVSTREAM_HRV_WINDOW_S", "0"),
        ("HRVSTREAM_HRV_METRICS_EVERY_S", "-1"),
        ("HRVSTREAM_AGENT_SPOOL_MAX_MB", "0"),
    ],
)
def test_out_of_range_settings_are_refused(
    tmp_path: Path, no_password_env: None, name: str, value: str
) -> None:
    key = name.removeprefix("HRVSTREAM_").lower()
    with pytest.raises(ConfigError, match=key.split("_", 1)[1]):
        load_agent_settings(base_config(tmp_path), env={name: value})


@pytest.mark.usefixtures("no_password_env")
def test_the_deploy_example_loads(tmp_path: Path) -> None:
    import tomllib

    text = EXAMPLE.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    # every key the example sets is one the agent reads (none silently ignored)
    for section, values in data.items():
        assert section in _KNOWN, section
        assert set(values) <= set(_KNOWN[section]), (section, set(values) - set(_KNOWN[section]))
    s = load_agent_settings(EXAMPLE, env={})
    assert s.patient == "p-7f3a"
    assert s.straps == ("C4:5A:12:34:56:78",)
    assert s.spool_path == Path("/var/lib/hrvstream/spool.db")
    assert s.spool_max_bytes == 512 * 1024 * 1024
    assert s.broker.display == "mqtts://p-7f3a@broker.clinic.example:8883"
    assert s.broker.ca_file == Path("/etc/hrvstream/ca.pem")
    assert s.broker.password is None  # HRVSTREAM_MQTT_PASSWORD, unset here
    assert s.broker.client_id == "hrvstream-agent-p-7f3a"
    assert (s.window_s, s.metrics_every_s) == (300.0, 5.0)
    assert (s.backlog_rate_per_s, s.max_inflight) == (50.0, 32)

    # the commented-out password_file line is valid as it stands once uncommented
    line = '# password_file = "/etc/hrvstream/mqtt-password"'
    assert line in text
    pw = write_toml(tmp_path / "pw", "from-the-file\n")
    copy = write_toml(tmp_path / "agent.toml", text.replace(line, f'password_file = "{pw}"'))
    assert load_agent_settings(copy, env={}).broker.password == "from-the-file"
    # and the environment overrides it, as its header says
    s = load_agent_settings(EXAMPLE, env={"HRVSTREAM_AGENT_PATIENT": "p-other"})
    assert s.patient == "p-other"


# ---------------------------------------------------------------------------------------
# The CLI: `hrvstream agent` in a subprocess
# ---------------------------------------------------------------------------------------


def cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HRVSTREAM_")}


def hrvstream(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hrvstream.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env=cli_env(),
    )


# The traceback of EARLY_STOP_BUG (below), as asyncio logs it: "ERROR asyncio: Exception in
# callback Host.on_packet(...)" ... "asyncio.exceptions.InvalidStateError: invalid state".
EARLY_STOP_TRACEBACK = re.compile(
    r"ERROR asyncio: Exception in callback Host\.on_packet\(.*?\n"
    r"asyncio\.exceptions\.InvalidStateError: invalid state\n",
    re.DOTALL,
)


def assert_clear_error(
    proc: subprocess.CompletedProcess[str], *needles: str, early_stop_bug: bool = False
) -> None:
    """Exit 1, ``hrvstream: error: ...`` with ``needles``, and no traceback.

    ``early_stop_bug``: tolerate the traceback of EARLY_STOP_BUG, which a fatal broker
    error hits when it comes while the virtual strap's link is still starting (a race;
    test_cli_failing_at_start_prints_no_traceback reproduces it every time).
    """
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    err = EARLY_STOP_TRACEBACK.sub("", proc.stderr) if early_stop_bug else proc.stderr
    for problem in PROBLEMS:
        assert problem not in err, proc.stderr[-3000:]
    assert "hrvstream: error:" in err, proc.stderr
    for needle in needles:
        assert needle in err, proc.stderr


@pytest.fixture
def rr_file(tmp_path: Path) -> Path:
    _, rr = session(600, seed=3)
    path = tmp_path / "rr.txt"
    path.write_text("".join(f"{v:.3f}\n" for v in rr), encoding="utf-8")
    return path


def agent_config(
    tmp_path: Path,
    broker: MosquittoBroker,
    *,
    password: str | None = None,
    ca_file: Path | None = None,
    patient: str = "p1",
) -> Path:
    pw = tmp_path / "mqtt-password"
    pw.write_text((password if password is not None else broker.password(patient)) + "\n")
    text = f"""\
[agent]
patient = "{patient}"
straps = ["Virtual HRM"]
spool = "{tmp_path / "spool.db"}"

[broker]
url = "{broker.url(patient, tls=True)}"
ca_file = "{ca_file or broker.ca_file}"
password_file = "{pw}"
"""
    return write_toml(tmp_path / "agent.toml", text)


def test_cli_missing_config(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    proc = hrvstream(["agent", "--config", str(missing)])
    assert_clear_error(proc, f"{missing}: no such configuration file")


def test_cli_wrong_password_is_fatal(
    hrv_broker: MosquittoBroker, tmp_path: Path, rr_file: Path
) -> None:
    cfg = agent_config(tmp_path, hrv_broker, password="not-the-password")
    proc = hrvstream(["agent", "--config", str(cfg), "--ble", "virtual", "--play", str(rr_file)])
    assert_clear_error(proc, "refused the credentials of user p1", early_stop_bug=True)
    assert "not-the-password" not in proc.stderr
    assert "retrying" not in proc.stderr  # fatal at once: no reconnection attempts


def test_cli_tls_with_the_wrong_ca_is_fatal(
    hrv_broker: MosquittoBroker, tmp_path: Path, rr_file: Path
) -> None:
    assert hrv_broker.certs is not None
    cfg = agent_config(tmp_path, hrv_broker, ca_file=hrv_broker.certs.wrong_ca_cert)
    proc = hrvstream(["agent", "--config", str(cfg), "--ble", "virtual", "--play", str(rr_file)])
    assert_clear_error(
        proc, "TLS with mqtts://p1@127.0.0.1", "certificate verify failed", early_stop_bug=True
    )


def test_cli_missing_ca_file(hrv_broker: MosquittoBroker, tmp_path: Path, rr_file: Path) -> None:
    cfg = agent_config(tmp_path, hrv_broker, ca_file=tmp_path / "no-ca.pem")
    proc = hrvstream(["agent", "--config", str(cfg), "--ble", "virtual", "--play", str(rr_file)])
    assert_clear_error(
        proc, f"cannot load the CA file {tmp_path / 'no-ca.pem'}", early_stop_bug=True
    )


EARLY_STOP_BUG = (
    "product bug (hrvstream/adapters/bleak_bumble.py, VirtualRadio.central, line 520, hit "
    "since StrapLink.stop() cancels a scan in progress, hrvstream/adapters/ble.py "
    "_unless_stopped): when the agent fails right after starting (here: the CA file is "
    "missing, so the sender fails in its first step), stopping the link cancels the "
    "central's Bumble power_on() in the middle of its HCI reset; the late Command Complete "
    "then raises InvalidStateError in bumble's Host.on_command_processed, and asyncio "
    "prints 'Exception in callback Host.on_packet ... Traceback' before the clear error. "
    "Fix: shield the power-on in VirtualRadio.central (or power the half-started device "
    "off on CancelledError before re-raising)."
)


def test_cli_failing_at_start_prints_no_traceback(
    hrv_broker: MosquittoBroker, tmp_path: Path, rr_file: Path
) -> None:
    cfg = agent_config(tmp_path, hrv_broker, ca_file=tmp_path / "no-ca.pem")
    proc = hrvstream(["agent", "--config", str(cfg), "--ble", "virtual", "--play", str(rr_file)])
    assert_clear_error(proc, "cannot load the CA file")


def test_cli_virtual_needs_play(hrv_broker: MosquittoBroker, tmp_path: Path) -> None:
    cfg = agent_config(tmp_path, hrv_broker)
    assert_clear_error(hrvstream(["agent", "--config", str(cfg), "--ble", "virtual"]), "--play")


def start_agent(cfg: Path, rr_file: Path, speed: str = "20") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "hrvstream.cli", "agent", "--config", str(cfg)),
            *("--ble", "virtual", "--play", str(rr_file), "--speed", speed),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )


async def until_streaming(
    broker: MosquittoBroker, sub: Collector, proc: subprocess.Popen[str], beats: int = 5
) -> list[aiomqtt.Message]:
    """Wait until the agent process sent ``beats`` beats messages and is online."""
    seen = await sub.wait(
        until=lambda ms: len(of_kind(ms, "beats")) >= beats and "online" in statuses(ms),
        timeout=60,
    )
    if proc.poll() is not None or len(of_kind(seen, "beats")) < beats:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"the agent did not stream (exit {proc.returncode}):\n{err[-3000:]}")
    assert (await retained_status(broker)).state == "online"
    return seen


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_stops_cleanly_on_a_signal(
    hrv_broker: MosquittoBroker, tmp_path: Path, rr_file: Path, sig: signal.Signals
) -> None:
    cfg = agent_config(tmp_path, hrv_broker)

    async def body() -> None:
        async with observe(hrv_broker, ["hrv/v1/p1/#"]) as sub:
            proc = start_agent(cfg, rr_file)
            try:
                await until_streaming(hrv_broker, sub, proc)
                proc.send_signal(sig)
                _, err = await asyncio.to_thread(proc.communicate, timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert proc.returncode == 0, err[-3000:]
            for problem in PROBLEMS:
                assert problem not in err, err[-3000:]
            seen = await sub.wait(until=lambda ms: statuses(ms)[-1:] == ["offline"])
        assert statuses(seen)[-1] == "offline"
        assert (await retained_status(hrv_broker)).state == "offline"
        bm = [BeatsMessage.from_json(payload(m)) for m in of_kind(seen, "beats")]
        assert [b.seq for b in bm] == list(range(len(bm)))
        # the spool was closed cleanly: it reopens (what the broker had not acknowledged
        # at the stop waits there for the next start)
        with Spool(tmp_path / "spool.db") as spool:
            assert spool.count() >= 0

    run(body)


def test_cli_killed_agent_goes_offline_by_its_will(
    hrv_broker: MosquittoBroker, tmp_path: Path, rr_file: Path
) -> None:
    cfg = agent_config(tmp_path, hrv_broker)

    async def body() -> None:
        async with observe(hrv_broker, ["hrv/v1/p1/#"]) as sub:
            proc = start_agent(cfg, rr_file)
            try:
                seen = await until_streaming(hrv_broker, sub, proc, beats=3)
                proc.kill()  # SIGKILL: no DISCONNECT, the socket just closes
                await asyncio.to_thread(proc.wait, 10)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert proc.returncode == -signal.SIGKILL
            before = len(statuses(seen))
            seen = await sub.wait(until=lambda ms: "offline" in statuses(ms)[before:], timeout=STEP)
        assert statuses(seen)[:before] == ["online"] * before
        assert statuses(seen)[before:] == ["offline"]  # the will, once
        will = StatusMessage.from_json(payload(of_kind(seen, "status")[-1]))
        assert will.patient == "p1"
        assert (await retained_status(hrv_broker)).state == "offline"

    run(body)
