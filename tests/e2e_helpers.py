"""What the end-to-end and fault tests share: real processes, a real broker, real stores.

The agent is the real CLI (``hrvstream replay INPUT --broker ...``) and the server the
real CLI (``hrvstream server --config ...``), each a subprocess with a log file; the
broker is mosquitto (TLS, password file, the project's ACL), the store VictoriaMetrics
(through InfluxStore) or SQLite. Nothing sleeps to synchronise: waits poll a condition
(the server's ``/metrics``, the database, a subscriber's messages) with a bound.

What a recording must become in the database is computed independently of the agent:
the RR file encoded as a strap's notifications (1/1024 s RR resolution,
:func:`encode_rr_as_notifications`), the beats of each notification with a beats
message per notification that has beats, and beat times that continue the previous beat
by its (quantised) RR interval from the session's origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

from hrvstream.protocol.beat_timing import encode_rr_as_notifications
from hrvstream.protocol.heart_rate import parse_heart_rate_measurement
from hrvstream.protocol.messages import MAX_BEATS_PER_MESSAGE, BeatsMessage, StatusMessage
from hrvstream.recordings import read_recording
from hrvstream.store import BeatRow
from tests import waiting
from tests.infra.mosquitto import MosquittoBroker, free_port
from tests.infra.tcp_proxy import TcpProxy
from tests.infra.victoriametrics import VictoriaMetrics

REPO = Path(__file__).resolve().parent.parent
#: Bound of any single wait that is not an outage, seconds.
STEP = 60.0

run = waiting.run


async def until(
    check: Callable[[], bool | Awaitable[bool]],
    what: str | Callable[[], str],
    timeout: float = STEP,
    interval: float = 0.05,
) -> None:
    """:func:`tests.waiting.until` bounded by :data:`STEP` unless told otherwise."""
    await waiting.until(check, what, timeout, interval)


parse_prometheus = waiting.parse_prometheus
PATIENT = "p1"
#: Broker limits as in deploy/mosquitto/mosquitto.conf: a queue that holds an outage.
DEPLOY_LIMITS: Mapping[str, Any] = {
    "max_inflight_messages": 100,
    "max_queued_messages": 2_000_000,
    "max_queued_bytes": 1_073_741_824,
}


# == waiting ==============================================================================


# == the recording and what it must become ================================================


@dataclass(frozen=True, slots=True)
class Beat:
    """A beat as the agent must send it: time since the session's origin, quantised RR."""

    t_rel_s: float
    rr_ms: float
    seq: int  # message seq * MAX_BEATS_PER_MESSAGE + index, as the server numbers beats


@dataclass(frozen=True)
class Recording:
    """An RR file to replay and the beats it must produce, message by message."""

    path: Path
    messages: tuple[tuple[Beat, ...], ...]  # the beats of beats message 0, 1, ...

    @property
    def beats(self) -> list[Beat]:
        return [b for m in self.messages for b in m]

    @property
    def duration_s(self) -> float:
        return self.beats[-1].t_rel_s


def expected_recording(path: Path) -> Recording:
    """What replaying ``path`` must deliver (see the module docstring)."""
    series = read_recording(path)
    notifications = encode_rr_as_notifications(series.rr_ms.tolist())
    messages: list[tuple[Beat, ...]] = []
    total_ms = 0.0  # exact: quantised RRs are multiples of 1000/1024 = 125/128 ms
    for n in notifications:
        rrs = parse_heart_rate_measurement(n.payload).rr_ms
        if not rrs:
            continue
        seq0 = len(messages) * MAX_BEATS_PER_MESSAGE
        beats: list[Beat] = []
        for i, rr in enumerate(rrs):
            total_ms += rr
            beats.append(Beat(total_ms / 1000, rr, seq0 + i))
        messages.append(tuple(beats))
    assert sum(len(m) for m in messages) == len(series)
    return Recording(path, tuple(messages))


def write_rr_file(path: Path, rr_ms: Sequence[float]) -> Path:
    """One RR interval in ms per line (what ``replay`` reads)."""
    path.write_text("".join(f"{v!r}\n" for v in rr_ms), encoding="utf-8")
    return path


def recording_slice(source: Path, path: Path, start: int, stop: int) -> Recording:
    """Beats ``start`` to ``stop - 1`` of ``source`` (by index) as a recording of their own."""
    rr = read_recording(source).rr_ms.tolist()[start:stop]
    assert rr, f"no beats {start}:{stop} in {source}"
    return expected_recording(write_rr_file(path, rr))


def recording_minutes(source: Path, path: Path, minutes: float) -> Recording:
    """The first ``minutes`` of ``source`` as a recording of its own."""
    t = read_recording(source).t_s.tolist()
    return recording_slice(source, path, 0, sum(1 for x in t if x < minutes * 60))


def check_sqlite_session(rows: Sequence[BeatRow], expected: Sequence[Beat], what: str) -> float:
    """Stored rows of one session are exactly ``expected``: same count, RR exact, every
    beat time ``origin + t_rel`` to the microsecond, seq as numbered. Returns the origin."""
    assert len(rows) == len(expected), (
        f"{what}: {len(rows)} beats stored, {len(expected)} expected"
        f" ({_first_difference(rows, expected)})"
    )
    rows = sorted(rows, key=lambda r: r.t_unix_s)
    origin = rows[0].t_unix_s - expected[0].t_rel_s
    for k, (row, beat) in enumerate(zip(rows, expected, strict=True)):
        assert row.rr_ms == beat.rr_ms, f"{what}: beat {k}: rr {row.rr_ms} != {beat.rr_ms}"
        assert abs(row.t_unix_s - (origin + beat.t_rel_s)) < 3e-6, (
            f"{what}: beat {k} at {row.t_unix_s!r}, expected {origin + beat.t_rel_s!r}"
        )
        assert row.seq == beat.seq, f"{what}: beat {k}: seq {row.seq} != {beat.seq}"
        assert not row.after_gap, f"{what}: beat {k} marked after a gap"
    return origin


def _first_difference(rows: Sequence[BeatRow], expected: Sequence[Beat]) -> str:
    got = sorted(r.seq for r in rows)
    want = [b.seq for b in expected]
    extra = sorted(set(got) - set(want))[:5]
    missing = sorted(set(want) - set(got))[:5]
    dups = len(got) - len(set(got))
    return f"seqs missing {missing}..., unexpected {extra}..., {dups} duplicated"


# == VictoriaMetrics ======================================================================


@dataclass
class VmBeats:
    """The ``beats`` measurement of one patient as exported: ``(ms, value)`` by field."""

    fields: dict[str, list[tuple[int, float]]]

    def count(self) -> int:
        return len(self.fields.get("rr_ms", []))


def vm_beats(vm: VictoriaMetrics, patient: str = PATIENT) -> VmBeats:
    """Everything VictoriaMetrics holds of the patient's beats, past *and future*.

    ``/api/v1/export`` ends at "now" unless told otherwise, and a replay faster than real
    time dates its beats up to the recording's length ahead (``VictoriaMetrics.export``
    has no range): hence a range of its own here.
    """
    vm.force_flush()
    query = {"match[]": f'{{__name__=~"beats_.*",patient="{patient}"}}', "start": "0"}
    query["end"] = str(int(time.time()) + 30 * 86400)
    body = urllib.parse.urlencode(query).encode()
    request = urllib.request.Request(vm.url + "/api/v1/export", data=body)
    with urllib.request.urlopen(request, timeout=STEP) as response:
        lines = response.read().splitlines()
    out: dict[str, list[tuple[int, float]]] = {}
    for line in filter(None, (x.strip() for x in lines)):
        obj = json.loads(line)
        name = str(obj["metric"]["__name__"]).removeprefix("beats_")
        assert name not in out, f"two series {name} for {patient}: {obj['metric']}"
        out[name] = sorted(zip(obj["timestamps"], obj["values"], strict=True))
    return VmBeats(out)


async def wait_vm_beats(vm: VictoriaMetrics, n: int, timeout: float = STEP) -> VmBeats:
    """Poll VictoriaMetrics until it holds at least ``n`` beats of the patient."""
    got = VmBeats({})

    async def enough() -> bool:
        nonlocal got
        got = await asyncio.to_thread(vm_beats, vm)
        return got.count() >= n

    await until(enough, lambda: f"{n} beats in VictoriaMetrics, {got.count()} so far", timeout, 0.5)
    return got


def check_vm_beats(got: VmBeats, recording: Recording, what: str) -> None:
    """Every beat exactly once: the count, every RR exactly, every time consistent with the
    first beat's to the millisecond VictoriaMetrics keeps, seq and after_gap as sent."""
    expected = recording.beats
    rr = got.fields.get("rr_ms", [])
    seq = got.fields.get("seq", [])
    gap = got.fields.get("after_gap", [])
    assert len(rr) == len(expected), (
        f"{what}: {len(rr)} beats in VictoriaMetrics, {len(expected)} expected; seqs "
        f"missing: {sorted({b.seq for b in expected} - {int(v) for _, v in seq})[:10]}"
    )
    assert [ms for ms, _ in seq] == [ms for ms, _ in rr] == [ms for ms, _ in gap]
    ms0 = rr[0][0]
    for k, ((ms, value), beat) in enumerate(zip(rr, expected, strict=True)):
        assert value == beat.rr_ms, f"{what}: beat {k}: rr {value} != {beat.rr_ms}"
        # Truncated to the millisecond: each time within 1 ms of first + t_rel difference.
        offset_ms = (beat.t_rel_s - expected[0].t_rel_s) * 1000
        assert abs(ms - ms0 - offset_ms) <= 1.001, (
            f"{what}: beat {k} at +{ms - ms0} ms, expected +{offset_ms:.3f} ms"
        )
    assert [int(v) for _, v in seq] == [b.seq for b in expected], f"{what}: seq numbers"
    assert all(v == 0 for _, v in gap), f"{what}: a beat marked after a gap"


# == the broker ===========================================================================


def secret_file(path: Path, text: str) -> Path:
    path.write_text(text + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


# == the server (``hrvstream server``) ====================================================


def server_config(
    path: Path,
    broker: MosquittoBroker,
    *,
    store: Mapping[str, object],
    http_port: int,
    client_id: str = "hrvstream-server-e2e",
    server: Mapping[str, object] | None = None,
) -> Path:
    """A server TOML file: TLS as user ``server``, the password in a file next to it."""

    def value(v: object) -> str:
        return json.dumps(v)  # TOML basic strings and numbers are JSON-compatible here

    pw = secret_file(path.with_suffix(".password"), broker.password("server"))
    lines = [
        "[broker]",
        f"url = {value(broker.url('server', tls=True))}",
        f"ca_file = {value(str(broker.ca_file))}",
        f"password_file = {value(str(pw))}",
        f"client_id = {value(client_id)}",
        "",
        "[store]",
        *(f"{k} = {value(v)}" for k, v in store.items()),
        "",
        "[http]",
        f"listen = {value(f'127.0.0.1:{http_port}')}",
        "",
        "[server]",
        *(f"{k} = {value(v)}" for k, v in (server or {}).items()),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def influx_store(vm: VictoriaMetrics, **extra: object) -> dict[str, object]:
    return {"kind": "influx", "url": vm.url, "org": "clinic", "bucket": "hrv", **extra}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "hrvstream.cli", *args]


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@dataclass
class Process:
    """A subprocess with its output in a log file."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exited(self) -> int | None:
        return self.proc.poll()

    async def wait(self, timeout: float = STEP) -> int:
        await until(lambda: self.proc.poll() is not None, lambda: f"exit of\n{self.log()}", timeout)
        return self.proc.returncode

    def stopped(self) -> bool:
        """Whether the process is stopped (SIGSTOP took effect): state T in /proc."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")

    def kill(self) -> None:
        """SIGKILL, and reap."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STEP)


@contextlib.contextmanager
def process(
    args: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
) -> Iterator[Process]:
    """Start ``args``; at the end SIGTERM it (SIGKILL after a bound) if it still runs."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(args),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_env(env),
            cwd=log_path.parent,
        )
    try:
        yield Process(proc, log_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STEP)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STEP)


@dataclass
class ServerProcess(Process):
    port: int = 0

    async def metrics(self) -> dict[str, float]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"http://127.0.0.1:{self.port}/metrics", timeout=aiohttp.ClientTimeout(10)
            ) as r,
        ):
            assert r.status == 200
            return parse_prometheus(await r.text())

    async def health(self) -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"http://127.0.0.1:{self.port}/healthz", timeout=aiohttp.ClientTimeout(10)
            ) as r,
        ):
            return r.status, json.loads(await r.text())

    async def metric(self, key: str) -> float:
        if self.proc.poll() is not None:
            raise AssertionError(f"the server exited ({self.proc.returncode}):\n{self.log()}")
        return (await self.metrics()).get(key, math.nan)

    async def wait_metric(
        self, key: str, check: Callable[[float], bool], what: str, timeout: float = STEP
    ) -> float:
        """Poll ``/metrics`` until ``check(value of key)``; returns the value."""
        seen = math.nan

        async def ok() -> bool:
            nonlocal seen
            try:
                seen = await self.metric(key)
            except (aiohttp.ClientError, OSError):
                return False
            return check(seen)

        await until(ok, lambda: f"{what}; last {key} = {seen}\n{self.log()}", timeout)
        return seen


BEATS_STORED = "hrvstream_beats_stored_total"
ACKED = "hrvstream_messages_acked_total"
CONNECTED = "hrvstream_broker_connected"


@contextlib.asynccontextmanager
async def server_process(
    cfg: Path, port: int, env: Mapping[str, str] | None = None
) -> AsyncIterator[ServerProcess]:
    """``hrvstream -vv server --config cfg``, connected to the broker when this yields."""
    with process(_cli("-vv", "server", "--config", str(cfg)), cfg.with_suffix(".log"), env) as p:
        sp = ServerProcess(p.proc, p.log_path, port)
        await sp.wait_metric(CONNECTED, lambda v: v == 1, "the server to connect")
        yield sp


# == the agent (``hrvstream replay --broker``) ===========================================


def replay_args(
    recording: Path,
    broker_url: str,
    *,
    speed: str,
    ca_file: Path,
    password_file: Path,
    spool: Path | None = None,
    patient: str = PATIENT,
) -> list[str]:
    args = [
        "-v",
        "replay",
        str(recording),
        "--broker",
        broker_url,
        "--patient",
        patient,
        "--speed",
        speed,
        "--ca-file",
        str(ca_file),
        "--password-file",
        str(password_file),
    ]
    if spool is not None:
        args += ["--spool", str(spool)]
    return _cli(*args)


def replay(args: Sequence[str], timeout: float = STEP) -> subprocess.CompletedProcess[str]:
    """Run the agent to its end."""
    return subprocess.run(
        list(args), capture_output=True, text=True, env=_env(), timeout=timeout, check=False
    )


# == a privileged observer ================================================================


@dataclass(frozen=True, slots=True)
class Seen:
    """A message as the observer got it, with the (wall clock) time it arrived."""

    t: float
    topic: str
    payload: bytes


@dataclass
class Observer:
    """``admin`` subscribed to a patient's topics over TLS, with a persistent session and
    reconnecting (through a broker restart); records every message in arrival order."""

    broker: MosquittoBroker
    topics: Sequence[str]
    identifier: str = "hrvstream-test-observer"
    seen: list[Seen] = field(default_factory=list)
    connects: int = 0
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)

    async def _run(self) -> None:
        while True:
            client = self.broker.client(
                "admin", tls=True, identifier=self.identifier, session_expiry=3600
            )
            try:
                async with client:
                    await client.subscribe([(t, 1) for t in self.topics])
                    self.connects += 1
                    self.subscribed.set()
                    async for m in client.messages:
                        payload = m.payload if isinstance(m.payload, bytes) else b""
                        self.seen.append(Seen(time.time(), m.topic.value, payload))
            except aiomqtt.MqttError:
                self.subscribed.clear()
                await asyncio.sleep(0.1)  # reconnect pace while the broker is away

    def beats(self) -> list[tuple[float, BeatsMessage]]:
        """Beats messages received, in arrival order (repeats included)."""
        return [
            (s.t, BeatsMessage.from_json(s.payload))
            for s in self.seen
            if s.topic.endswith("/beats")
        ]

    def count(self, kind: str) -> int:
        """Messages received on the patient's ``kind`` topic (repeats included)."""
        return sum(1 for s in self.seen if s.topic.endswith(f"/{kind}"))

    def statuses(self) -> list[tuple[float, StatusMessage]]:
        return [
            (s.t, StatusMessage.from_json(s.payload))
            for s in self.seen
            if s.topic.endswith("/status")
        ]


@contextlib.asynccontextmanager
async def observing(
    broker: MosquittoBroker, patient: str = PATIENT, identifier: str = "hrvstream-test-observer"
) -> AsyncIterator[Observer]:
    topics = [f"hrv/v1/{patient}/beats", f"hrv/v1/{patient}/metrics", f"hrv/v1/{patient}/status"]
    obs = Observer(broker, topics, identifier)
    task = asyncio.create_task(obs._run())
    try:
        async with asyncio.timeout(STEP):
            await obs.subscribed.wait()
        yield obs
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# == the network ==========================================================================


def free_http_port() -> int:
    return free_port()


class Link:
    """The agent's network path to the broker's TLS port, which can go down and come back
    on the same address.

    Down: the existing connections are reset and new ones refused (nothing listens), as
    when a home router drops the route. (:meth:`TcpProxy.cut` instead accepts and resets
    new connections, which can end a client's TLS handshake with an EOF: see
    ``test_faults.test_tls_handshake_cut_by_the_network_is_not_fatal``.)
    """

    def __init__(self, broker: MosquittoBroker) -> None:
        self.broker = broker
        self.port = free_port()
        self._proxy: TcpProxy | None = None
        self.up()

    def url(self, user: str = PATIENT) -> str:
        return f"mqtts://{user}@127.0.0.1:{self.port}"

    def up(self) -> None:
        if self._proxy is None:
            self._proxy = TcpProxy(self.broker.host, self.broker.tls_port, listen_port=self.port)
            self._proxy.start()

    def down(self) -> None:
        if self._proxy is not None:
            self._proxy.close()
            self._proxy = None

    def stall(self) -> None:
        """Forward nothing, keep connections open (a black hole: no reset, no refusal)."""
        assert self._proxy is not None, "the link is down"
        self._proxy.stall()

    def restore(self) -> None:
        """Forward again after :meth:`stall`."""
        assert self._proxy is not None, "the link is down"
        self._proxy.restore()

    close = down
