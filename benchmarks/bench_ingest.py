"""Ingest capacity: patient streams through mosquitto and the server into VictoriaMetrics.

How many concurrent patient streams (one beats notification per second each) one
``hrvstream server`` process sustains with zero loss, and the publish-to-stored latency;
then the same with two server processes in one shared-subscription group.

Everything runs on this machine, each part in its own process:

``mosquitto``
    Started from a configuration of its own on a free loopback port: anonymous, no TLS,
    the limits of ``deploy/mosquitto/mosquitto.conf`` (``max_queued_messages 2000000``,
    ``max_queued_bytes 1 GiB``) with a larger in-flight window (``--max-inflight``, default
    1000 instead of the deployed 100, so that a window holds several server batches) and
    **persistence on** like production (``autosave_interval 10``, ``autosave_on_changes
    false``: the in-memory state is written every 10 s, not per message; ``--no-persistence``
    turns it off).
``victoria-metrics``
    The InfluxDB stand-in of the tests (``/api/v2/write``), ``-dedup.minScrapeInterval=1ms``
    (a redelivered beat is stored once), own data directory.
``python -m hrvstream.server --config FILE``
    One or two processes, ``[store] kind = "influx"`` pointing at VictoriaMetrics, the
    default batching (``batch_max_messages = 100``, ``batch_max_ms = 50``; see
    ``--batch-max-messages``/``--batch-max-ms``), MQTT v5 (``--mqtt311``: ``mqtt5 = false``),
    a fresh ``client_id`` per step, and for two processes a ``shared_group`` (fresh per
    step). ``session_expiry_s = 2``, and each session is ended after its step, so that a
    finished step's sessions do not keep collecting the next step's messages.
the load generator
    ``python benchmarks/bench_ingest.py --generator SPEC``: a lean MQTT 3.1.1 publisher on
    asyncio (raw packets: QoS 1, PUBACKs counted; no client library, to leave the CPU to
    the system under test), ``--patients-per-connection`` patients (default 250)
    multiplexed over each connection. Patient ``i`` of ``N`` publishes one
    ``hrvstream.beats/1`` message a second at phase ``i/N`` (the load is spread evenly over
    the second), to ``hrv/v1/<patient>/beats``, ``sent_unix_s`` stamped as the packet is
    built. The beats are a synthetic heart (RR about 640-1000 ms: 1.3 beats per message on
    average, 0, 1 or 2 per message, as a strap's notifications carry). A beat counts as
    published once the broker's PUBACK for its message arrived.

For each number of streams ``N`` (the ramp, ``--streams``): the servers start, the
generator publishes for ``--warmup`` + ``--duration`` seconds, then

* **published / stored**: beats PUBACKed by the broker vs the samples of
  ``beats_rr_ms`` VictoriaMetrics exports for the step's patients after
  ``/internal/force_flush`` (deduplicated): zero loss means equal;
* **latency**: the server's own ``hrvstream_publish_to_stored_seconds`` (from
  ``sent_unix_s`` to the store flush that precedes the acknowledgement). The server keeps
  the last 10,000 samples (5 minutes at most), so ``/metrics`` is scraped every second of
  the steady state; the windows that hold only steady-state samples are kept, and the
  table gives the mean of their p50s and p99s and the worst window's p99 (the windows
  overlap below 10,000 messages/s; every one is a quantile of 10,000 consecutive messages
  at most, so the mean is an estimate of the pooled p99, not the exact value);
* **CPU**: user + system time of every process over the steady state (``/proc``), in %
  of one core, and the whole machine's busy time (of ``100 x cores`` %); "others" is what
  other processes used meanwhile (this machine is shared: its load is not ours alone);
* **kept up**: the messages the servers acknowledged during the steady state, per
  second, against the offered rate, and the **drain** time: from the generator's last
  publish until the servers acknowledged everything it published.

A step passes when no beat is missing, the p99 (mean of windows) is below
``--p99-goal-ms`` (250), the servers drained within 2 s and the generator kept its
schedule. The configurations are ramped in step (at each ``N``, 1 server then 2 servers,
so that both see the machine in a similar state), each until its first failure, after
one step halfway between its last pass and the failure (``--no-refine`` skips it). A
server that fell behind gets ``--drain-max`` seconds (20) to catch up; beats it has not
stored by then are reported as still queued (its session is then ended, so they are
dropped with it).

``--also-mqtt311`` adds a 1-process ramp with ``mqtt5 = false`` from the first ``N`` the
MQTT v5 ramp failed at. ``--profile`` adds 1-process steps under ``py-spy record --native``
(``pip install py-spy``) at the largest passing and the first failing ``N`` (or at given
``N``) and summarises where the server's CPU goes, the cyclic garbage collector included.
These steps are marked *profiled* and do not count (py-spy takes CPU too).

Nothing is asserted: this is a benchmark, not a test. The generator, mosquitto,
VictoriaMetrics and the servers share the machine's cores: on 2 cores, two server
processes cannot show twice the throughput of one (see the report's CPU columns).

Usage::

    python benchmarks/bench_ingest.py                      # the full ramp, < 15 min
    python benchmarks/bench_ingest.py --quick              # CI smoke run, < 60 s
    python benchmarks/bench_ingest.py --also-mqtt311 --profile --markdown FILE  # results/
    python benchmarks/bench_ingest.py --servers 1 --streams 1000,2000 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import pwd
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Final

REPO: Final = Path(__file__).resolve().parent.parent
HOST: Final = "127.0.0.1"
SCHEMA: Final = "hrvstream.beats/1"
#: The server's latency window holds at most this many samples (server.LATENCY_WINDOW_MAX).
SERVER_WINDOW_MAX: Final = 10_000
SERVER_WINDOW_S: Final = 300.0
#: A step "kept up" when everything published was acknowledged within this after the end.
DRAIN_OK_S: Final = 2.0
#: ... and the generator was never further behind its schedule than this.
GENERATOR_BEHIND_OK_S: Final = 0.25
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
WAIT_S: Final = 30.0


# == small helpers =========================================================================


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def quantile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile (as the server computes it), ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def http_get(url: str, data: bytes | None = None, timeout: float = WAIT_S) -> bytes:
    """GET (or POST ``data``) and return the body; raises ``OSError``/``URLError``."""
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=timeout) as r:
        body: bytes = r.read()
        return body


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), 0 once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def proc_rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB, 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in parts[:8]]  # user nice system idle iowait irq softirq steal
    total = sum(values)
    idle = values[3] + values[4]
    return (total - idle) / CLK_TCK, total / CLK_TCK


def all_processes_cpu() -> dict[int, tuple[float, int]]:
    """``{pid: (cpu seconds, parent pid)}`` of every process on the machine."""
    out: dict[int, tuple[float, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        out[int(entry.name)] = ((int(fields[11]) + int(fields[12])) / CLK_TCK, int(fields[1]))
    return out


def busiest_others(before: dict[int, tuple[float, int]], seconds: float, n: int = 5) -> str:
    """The processes outside this benchmark that used the most CPU since ``before``
    (those still running; ours are this process and its children)."""
    now = all_processes_cpu()
    ours = {os.getpid()} | {pid for pid, (_, ppid) in now.items() if ppid == os.getpid()}
    used: list[tuple[float, int]] = []
    for pid, (cpu, _) in now.items():
        if pid in ours:
            continue
        delta = cpu - before.get(pid, (0.0, 0))[0]
        if delta > 0.01 * seconds:
            used.append((delta, pid))
    parts = []
    for delta, pid in sorted(used, reverse=True)[:n]:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            cmd = "?"
        cmd = re.sub(r"^\S*/", "", cmd.strip())[:70]
        parts.append(f"`{cmd}` {delta / seconds * 100:.0f} %")
    return "; ".join(parts) or "none above 1 %"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def parse_prometheus(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` of a Prometheus text page (comments skipped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def _sum_prefix(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


# == the load generator (a process of its own) ==============================================


def beats_payload(
    patient: str,
    session: str,
    seq: int,
    origin_unix_s: float,
    sent_unix_s: float,
    beats: Sequence[tuple[float, float]],
    hr_bpm: int,
) -> bytes:
    """A ``hrvstream.beats/1`` payload as :meth:`BeatsMessage.to_json` writes it, built
    with string formatting (validating a dataclass per message would cost the generator
    more CPU than it needs; :func:`check_payload` checks one against the real decoder)."""
    t_s = ",".join(repr(t) for t, _ in beats)
    rr_ms = ",".join(repr(rr) for _, rr in beats)
    return (
        f'{{"schema":"{SCHEMA}","patient":"{patient}","session":"{session}","seq":{seq},'
        f'"origin_unix_s":{origin_unix_s!r},"sent_unix_s":{sent_unix_s!r},"t_s":[{t_s}],'
        f'"rr_ms":[{rr_ms}],"after_gap":[],"contact":true,"hr_bpm":{hr_bpm}}}'
    ).encode()


def check_payload() -> None:
    """The generator's payloads decode as the server decodes them, to the same values."""
    from hrvstream.protocol.messages import BeatsMessage, decode_message, message_topic

    payload = beats_payload("s01-00007", "b01-7", 3, 1.7e9, 1.7e9 + 4.25, [(4.0, 812.5)], 74)
    message = decode_message(payload, "hrv/v1/s01-00007/beats")
    expected = BeatsMessage(
        patient="s01-00007",
        session="b01-7",
        seq=3,
        origin_unix_s=1.7e9,
        sent_unix_s=1.7e9 + 4.25,
        t_s=(4.0,),
        rr_ms=(812.5,),
        contact=True,
        hr_bpm=74,
    )
    if message != expected or expected.to_json() != payload:
        raise SystemExit(f"generator payload does not round-trip: {payload!r}")
    if message_topic(message) != "hrv/v1/s01-00007/beats":
        raise SystemExit("unexpected topic layout")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _mqtt_string(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(client_id: str) -> bytes:
    """MQTT 3.1.1 CONNECT: clean session, no keep-alive (the steps are short)."""
    body = _mqtt_string("MQTT") + bytes([4, 0x02]) + (0).to_bytes(2, "big")
    body += _mqtt_string(client_id)
    return b"\x10" + _varint(len(body)) + body


def discard_session(port: int, client_id: str) -> None:
    """End a client's persistent session: connect with a clean session, disconnect."""
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(connect_packet(client_id))
        s.recv(4)  # CONNACK
        s.sendall(b"\xe0\x00")


def _split_packets(buf: bytearray) -> list[tuple[int, bytes]]:
    """Complete MQTT packets at the start of ``buf`` as (first byte, body); removes them."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while len(buf) - pos >= 2:
        length, mult, i, complete = 0, 1, pos + 1, False
        while i < len(buf) and i - pos <= 4:
            byte = buf[i]
            i += 1
            length += (byte & 0x7F) * mult
            mult *= 128
            if not byte & 0x80:
                complete = True
                break
        if not complete or i + length > len(buf):
            break
        out.append((buf[pos], bytes(buf[i : i + length])))
        pos = i + length
    del buf[:pos]
    return out


def _read_for(sock: socket.socket, buf: bytearray, seconds: float) -> list[tuple[int, bytes]]:
    """Every packet that arrives within ``seconds``."""
    packets: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(1 << 16)
        except TimeoutError:
            break
        if not data:
            break
        buf += data
        packets += _split_packets(buf)
    return packets


def check_broker_window(port: int, window: int) -> tuple[int, int]:
    """How many QoS 1 messages the broker sends a subscriber that acknowledges nothing,
    and how many in all once it acknowledged exactly one (a broker that keeps the
    in-flight window sends one more). Publishes ``3 x window`` messages on a topic of
    its own."""
    topic = "bench/window-check"
    with (
        socket.create_connection((HOST, port), timeout=WAIT_S) as sub,
        socket.create_connection((HOST, port), timeout=WAIT_S) as pub,
    ):
        sub_buf, pub_buf = bytearray(), bytearray()
        sub.sendall(connect_packet("bench-window-sub"))
        _read_for(sub, sub_buf, 0.3)
        body = (1).to_bytes(2, "big") + _mqtt_string(topic) + b"\x01"
        sub.sendall(b"\x82" + _varint(len(body)) + body)  # SUBSCRIBE, QoS 1
        _read_for(sub, sub_buf, 0.3)  # SUBACK
        pub.sendall(connect_packet("bench-window-pub"))
        _read_for(pub, pub_buf, 0.3)
        name = _mqtt_string(topic)
        packets = bytearray()
        for pid in range(1, 3 * window + 1):
            body = name + pid.to_bytes(2, "big") + b"x"
            packets += b"\x32" + _varint(len(body)) + body
        pub.sendall(bytes(packets))
        _read_for(pub, pub_buf, 0.5)  # PUBACKs
        first = [body for kind, body in _read_for(sub, sub_buf, 1.0) if kind >> 4 == 3]
        if not first:
            return 0, 0
        tlen = int.from_bytes(first[0][:2], "big")
        sub.sendall(b"\x40\x02" + first[0][2 + tlen : 4 + tlen])  # PUBACK the first one
        more = [body for kind, body in _read_for(sub, sub_buf, 1.0) if kind >> 4 == 3]
        for s in (sub, pub):
            s.sendall(b"\xe0\x00")
        return len(first), len(first) + len(more)


@dataclass
class _Pending:
    sent: float
    patient: int
    beats: int


class _Link(asyncio.Protocol):
    """One generator connection: writes packets, counts CONNACK/PUBACKs."""

    def __init__(self, stats: _GenStats) -> None:
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.connack: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending: dict[int, _Pending] = {}
        self.next_id = 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if not self.connack.done():
            self.connack.set_exception(ConnectionError(f"connection lost: {exc}"))
        if self.pending:
            self.stats.errors.append(f"connection lost with {len(self.pending)} unacknowledged")

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        pos = 0
        now = time.time()
        while len(buf) - pos >= 2:
            length, mult, i, complete = 0, 1, pos + 1, False
            while i < len(buf) and i - pos <= 4:
                byte = buf[i]
                i += 1
                length += (byte & 0x7F) * mult
                mult *= 128
                if not byte & 0x80:
                    complete = True
                    break
            end = i + length
            if not complete or end > len(buf):
                break
            kind = buf[pos] >> 4
            if kind == 4 and length >= 2:  # PUBACK
                pid = int.from_bytes(buf[i : i + 2], "big")
                p = self.pending.pop(pid, None)
                if p is None:
                    self.stats.errors.append(f"PUBACK for unknown id {pid}")
                else:
                    self.stats.acked += 1
                    self.stats.beats_acked += p.beats
                    self.stats.beats_by_patient[p.patient] += p.beats
                    self.stats.puback_s.append(now - p.sent)
            elif kind == 2:  # CONNACK
                code = buf[i + 1] if length >= 2 else 255
                if not self.connack.done():
                    self.connack.set_result(code)
            else:
                self.stats.errors.append(f"unexpected packet type {kind}")
            pos = end
        del buf[:pos]

    def packet_id(self) -> int:
        for _ in range(65535):
            pid = self.next_id
            self.next_id = pid + 1 if pid < 65535 else 1
            if pid not in self.pending:
                return pid
        raise RuntimeError("65535 messages in flight on one connection")


@dataclass
class _GenStats:
    n: int
    published: int = 0
    acked: int = 0
    beats_published: int = 0
    beats_acked: int = 0
    beats_by_patient: list[int] = field(default_factory=list)
    puback_s: list[float] = field(default_factory=list)
    max_behind_s: float = 0.0
    max_write_buffer: int = 0
    first_publish: float = 0.0
    last_publish: float = 0.0
    errors: list[str] = field(default_factory=list)


async def _generate(spec: dict[str, Any]) -> dict[str, Any]:
    """Publish as ``spec`` says; the result (counts, timings) as a dict."""
    n: int = spec["n"]
    prefix: str = spec["prefix"]
    t0: float = spec["t0"]
    t_end: float = t0 + spec["seconds"]
    per_conn: int = spec["per_connection"]
    tick_s: float = spec["tick_s"]
    rng = random.Random(spec["seed"])
    loop = asyncio.get_running_loop()
    stats = _GenStats(n=n, beats_by_patient=[0] * n)

    n_conn = max(1, math.ceil(n / per_conn))
    links: list[_Link] = []
    for c in range(n_conn):
        _, link = await loop.create_connection(lambda: _Link(stats), HOST, spec["port"])
        assert link.transport is not None
        link.transport.write(connect_packet(f"{prefix}gen-{c}"))
        links.append(link)
    for link in links:
        code = await asyncio.wait_for(link.connack, WAIT_S)
        if code != 0:
            raise SystemExit(f"broker refused the generator's CONNECT (code {code})")

    names = [f"{prefix}{i:05d}" for i in range(n)]
    topics = [_mqtt_string(f"hrv/v1/{name}/beats") for name in names]
    sessions = [f"b{prefix}{i}".replace("-", "") for i in range(n)]
    origin = t0 - 2.0
    base_rr_raw = [rng.randint(680, 1000) for _ in range(n)]  # 1/1024 s units
    last_beat = [rng.uniform(0.0, 1.0) for _ in range(n)]
    next_rr = [b * 1000 / 1024 for b in base_rr_raw]
    seq = [0] * n
    buffers = [bytearray() for _ in links]

    done = 0
    total = math.floor((t_end - t0) * n)
    while time.time() < t0:
        await asyncio.sleep(min(0.05, max(0.0, t0 - time.time())))
    while done < total:
        now = time.time()
        target = min(total, math.floor((now - t0) * n))
        if target > done:
            stats.max_behind_s = max(stats.max_behind_s, now - (t0 + (done + 1) / n))
        for m in range(done, target):
            p = m % n
            sent = time.time()
            rel = sent - origin
            beats: list[tuple[float, float]] = []
            while last_beat[p] + next_rr[p] / 1000 <= rel:
                last_beat[p] += next_rr[p] / 1000
                beats.append((round(last_beat[p], 4), next_rr[p]))
                raw = base_rr_raw[p] + rng.randint(-25, 25)
                next_rr[p] = raw * 1000 / 1024
            hr = round(60_000 / next_rr[p])
            payload = beats_payload(names[p], sessions[p], seq[p], origin, sent, beats, hr)
            seq[p] += 1
            c = p % n_conn
            link = links[c]
            pid = link.packet_id()
            body = topics[p] + pid.to_bytes(2, "big") + payload
            buffers[c] += b"\x32" + _varint(len(body)) + body
            link.pending[pid] = _Pending(sent, p, len(beats))
            stats.published += 1
            stats.beats_published += len(beats)
            if not stats.first_publish:
                stats.first_publish = sent
            stats.last_publish = sent
        done = target
        for c, buf in enumerate(buffers):
            if buf:
                transport = links[c].transport
                assert transport is not None
                transport.write(bytes(buf))
                buf.clear()
                stats.max_write_buffer = max(
                    stats.max_write_buffer, transport.get_write_buffer_size()
                )
        await asyncio.sleep(tick_s)

    deadline = time.monotonic() + WAIT_S
    while any(link.pending for link in links) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    unacked = sum(len(link.pending) for link in links)
    for link in links:
        if link.transport is not None:
            link.transport.write(b"\xe0\x00")  # DISCONNECT
            link.transport.close()
    times = os.times()
    return {
        "published": stats.published,
        "acked": stats.acked,
        "unacked": unacked,
        "beats_published": stats.beats_published,
        "beats_acked": stats.beats_acked,
        "beats_by_patient": stats.beats_by_patient,
        "puback_p50_s": quantile(stats.puback_s, 0.5),
        "puback_p99_s": quantile(stats.puback_s, 0.99),
        "max_behind_s": stats.max_behind_s,
        "max_write_buffer": stats.max_write_buffer,
        "first_publish": stats.first_publish,
        "last_publish": stats.last_publish,
        "connections": n_conn,
        "cpu_s": times.user + times.system,
        "errors": stats.errors[:20],
    }


def generator_main(spec_json: str) -> int:
    """``--generator SPEC``: publish, then print the result as one JSON line."""
    result = asyncio.run(_generate(json.loads(spec_json)))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


# == mosquitto and VictoriaMetrics ==========================================================


def _wait_listening(proc: subprocess.Popen[bytes], port: int, what: str, log: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited at start; see {log}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.02)
    raise SystemExit(f"{what} did not listen on {port} within {WAIT_S:g} s; see {log}")


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = WAIT_S) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


@dataclass
class BrokerSettings:
    max_inflight: int
    max_queued: int = 2_000_000
    max_queued_bytes: int = 1 << 30
    persistence: bool = True

    def lines(self, directory: Path, port: int) -> list[str]:
        return [
            "# generated by benchmarks/bench_ingest.py",
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            "per_listener_settings false",
            "allow_anonymous true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {directory}/",
            "autosave_interval 10",
            "autosave_on_changes false",
            "max_packet_size 262144",
            f"max_inflight_messages {self.max_inflight}",
            f"max_queued_messages {self.max_queued}",
            f"max_queued_bytes {self.max_queued_bytes}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages false",
            f"listener {port} {HOST}",
            "protocol mqtt",
            "",
        ]


class Mosquitto:
    """Our own mosquitto on a free loopback port."""

    def __init__(self, directory: Path, settings: BrokerSettings) -> None:
        exe = shutil.which("mosquitto", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        if exe is None:
            raise SystemExit("mosquitto is not installed (apt-get install mosquitto)")
        self.exe = exe
        self.directory = directory
        self.settings = settings
        self.port = free_port()
        self.config = directory / "mosquitto.conf"
        self.log = directory / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config.write_text("\n".join(self.settings.lines(self.directory, self.port)))
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.exe, "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        _wait_listening(self.proc, self.port, "mosquitto", self.log)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        _stop(self.proc)

    def version(self) -> str:
        out = subprocess.run(
            [self.exe, "-h"], capture_output=True, text=True, check=False, timeout=10
        ).stdout
        match = re.search(r"mosquitto version (\S+)", out)
        return match.group(1) if match else "?"


class Victoria:
    """Our own victoria-metrics on a free loopback port."""

    def __init__(self, directory: Path) -> None:
        exe = os.environ.get("HRVSTREAM_VICTORIA_METRICS") or shutil.which("victoria-metrics")
        if exe is None:
            raise SystemExit("victoria-metrics is not installed (apt-get install victoria-metrics)")
        self.exe = exe
        self.directory = directory
        self.port = free_port()
        self.log = directory / "victoria-metrics.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        cmd = [
            self.exe,
            f"-storageDataPath={self.directory / 'data'}",
            f"-httpListenAddr={HOST}:{self.port}",
            "-retentionPeriod=100y",
            "-dedup.minScrapeInterval=1ms",
            "-loggerLevel=WARN",
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        _wait_listening(self.proc, self.port, "victoria-metrics", self.log)
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if http_get(self.url + "/health", timeout=2).strip() == b"OK":
                    return
            time.sleep(0.05)
        raise SystemExit(f"victoria-metrics is not healthy; see {self.log}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        _stop(self.proc)

    def version(self) -> str:
        """From ``vm_app_version`` on its ``/metrics`` (while it runs), else from dpkg
        (Debian's build reports an empty version)."""
        with contextlib.suppress(OSError):
            text = http_get(self.url + "/metrics", timeout=5).decode()
            match = re.search(r'vm_app_version\{[^}]*version="([^"]+)"', text)
            if match:
                return match.group(1)
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                ["dpkg-query", "-W", "-f=${Version}", "victoria-metrics"],
                capture_output=True,
                text=True,
                check=False,
                timeout=10,
            )
            if out.returncode == 0 and out.stdout.strip():
                return f"{out.stdout.strip()} (Debian package)"
        return "?"

    def beats_by_patient(self, prefix: str) -> dict[str, int]:
        """Stored (deduplicated) ``beats_rr_ms`` samples per patient of a step."""
        http_get(self.url + "/internal/force_flush")
        match = f'beats_rr_ms{{patient=~"{prefix}.*"}}'  # prefix: [a-z0-9-]
        body = urllib.parse.urlencode({"match[]": match}).encode()
        out: dict[str, int] = {}
        for line in http_get(self.url + "/api/v1/export", data=body, timeout=120).splitlines():
            if line.strip():
                obj = json.loads(line)
                patient = obj["metric"].get("patient", "?")
                out[patient] = out.get(patient, 0) + len(obj["timestamps"])
        return out


# == the servers =============================================================================


@dataclass
class ServerOptions:
    batch_max_messages: int
    batch_max_ms: float
    mqtt5: bool = True


class ServerProcess:
    """``python -m hrvstream.server --config FILE`` with its own config and HTTP port."""

    def __init__(
        self,
        directory: Path,
        name: str,
        broker_port: int,
        vm_url: str,
        group: str | None,
        options: ServerOptions,
    ) -> None:
        self.name = name
        self.http_port = free_port()
        self.config = directory / f"{name}.toml"
        self.log = directory / f"{name}.log"
        group_line = f'shared_group = "{group}"\n' if group else ""
        self.config.write_text(
            "[broker]\n"
            f'url = "mqtt://{HOST}:{broker_port}"\n'
            f'client_id = "{name}"\n'
            f"{group_line}"
            "session_expiry_s = 2\n"
            f"mqtt5 = {'true' if options.mqtt5 else 'false'}\n\n"
            "[store]\n"
            'kind = "influx"\n'
            f'url = "{vm_url}"\n'
            'org = "bench"\n'
            'bucket = "hrv"\n\n'
            "[http]\n"
            f'listen = "{HOST}:{self.http_port}"\n\n'
            "[server]\n"
            f"batch_max_messages = {options.batch_max_messages}\n"
            f"batch_max_ms = {options.batch_max_ms}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "HRVSTREAM_INFLUX_TOKEN": "bench"}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hrvstream.server", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
            )

    def wait_connected(self) -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited at start; see {self.log}")
            with contextlib.suppress(OSError):
                health = json.loads(http_get(self.url("/healthz"), timeout=2))
                if health.get("broker_connected"):
                    return
            time.sleep(0.05)
        raise SystemExit(f"{self.name} did not connect within {WAIT_S:g} s; see {self.log}")

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.http_port}{path}"

    def metrics(self) -> dict[str, float]:
        return parse_prometheus(http_get(self.url("/metrics"), timeout=10).decode())

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        _stop(self.proc)


# == one step =================================================================================


@dataclass
class Scrape:
    """One ``/metrics`` scrape of one server (and its process's CPU time and RSS)."""

    t: float
    p50: float
    p99: float
    acked: float
    writes: float
    write_s: float
    cpu_s: float
    rss_mb: float
    phase: str = "steady"

    @classmethod
    def of(cls, server: ServerProcess, phase: str = "steady") -> Scrape:
        m = server.metrics()
        return cls(
            time.time(),
            m.get('hrvstream_publish_to_stored_seconds{quantile="0.5"}', math.nan),
            m.get('hrvstream_publish_to_stored_seconds{quantile="0.99"}', math.nan),
            m.get("hrvstream_messages_acked_total", 0.0),
            m.get("hrvstream_store_write_seconds_count", 0.0),
            m.get("hrvstream_store_write_seconds_sum", 0.0),
            proc_cpu_s(server.pid),
            proc_rss_mb(server.pid),
            phase,
        )


@dataclass
class StepResult:
    servers: int
    mqtt5: bool
    n: int
    seconds: float
    offered_msg_s: float
    published: int
    beats_published: int
    beats_stored: int
    patients_short: int
    unacked_by_broker: int
    p50_ms: float | None
    p99_ms: float | None
    p99_worst_ms: float | None
    windows: int
    store_write_p99_ms: float | None
    acked_msg_s: float
    drain_s: float | None
    gen_behind_s: float
    puback_p99_ms: float | None
    cpu: dict[str, float]
    machine_busy: float
    machine_total: float
    bad_messages: int
    reconnects: int
    store_errors: int
    server_rss_mb: float
    notes: list[str] = field(default_factory=list)
    profile: str | None = None

    @property
    def protocol(self) -> str:
        return "v5" if self.mqtt5 else "3.1.1"

    @property
    def server_us_per_msg(self) -> float | None:
        """Server CPU per acknowledged message (all servers), microseconds: what the
        server costs whatever else the machine runs (unlike the rates)."""
        cpu = sum(v for k, v in self.cpu.items() if k.startswith("server"))
        return cpu / 100 / self.acked_msg_s * 1e6 if self.acked_msg_s > 0 else None

    @property
    def missing(self) -> int:
        return self.beats_published - self.beats_stored

    def passed(self, p99_goal_ms: float) -> bool:
        return (
            self.missing == 0
            and self.unacked_by_broker == 0
            and self.p99_ms is not None
            and self.p99_ms < p99_goal_ms
            and self.drain_s is not None
            and self.drain_s <= DRAIN_OK_S
            and self.gen_behind_s <= GENERATOR_BEHIND_OK_S
            and self.bad_messages == 0
        )

    @property
    def others(self) -> float:
        return max(0.0, self.machine_busy - sum(self.cpu.values()))


@dataclass
class Env:
    workdir: Path
    broker: Mosquitto
    vm: Victoria
    options: ServerOptions
    per_connection: int
    warmup: float
    duration: float
    drain_max: float
    step_counter: int = 0
    window_check: str = "not run"


def _cpu_snapshot(pids: dict[str, int]) -> tuple[dict[str, float], tuple[float, float]]:
    return {k: proc_cpu_s(p) for k, p in pids.items()}, machine_cpu_s()


def _sleep_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)


def run_step(
    env: Env, n_servers: int, n: int, *, mqtt5: bool = True, profile_s: float = 0.0
) -> StepResult:
    """Run one step: ``n`` streams into ``n_servers`` servers; see the module docstring."""
    env.step_counter += 1
    options = ServerOptions(env.options.batch_max_messages, env.options.batch_max_ms, mqtt5)
    k = env.step_counter
    prefix = f"s{k:02d}-"
    group = f"bench{k}" if n_servers > 1 else None
    step_dir = env.workdir / f"step{k:02d}"
    step_dir.mkdir(parents=True, exist_ok=True)
    servers = [
        ServerProcess(step_dir, f"bench-{k}-{i}", env.broker.port, env.vm.url, group, options)
        for i in range(n_servers)
    ]
    gen: subprocess.Popen[bytes] | None = None
    spy: subprocess.Popen[bytes] | None = None
    notes: list[str] = []
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_connected()
        seconds = env.warmup + env.duration
        t0 = time.time() + 1.0
        spec = {
            "n": n,
            "prefix": prefix,
            "t0": t0,
            "seconds": seconds,
            "per_connection": env.per_connection,
            "tick_s": 0.005,
            "port": env.broker.port,
            "seed": k,
        }
        gen = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--generator", json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=(step_dir / "generator.log").open("wb"),
            stdin=subprocess.DEVNULL,
        )
        pids = {f"server{i + 1}": s.pid for i, s in enumerate(servers)}
        pids |= {"generator": gen.pid, "mosquitto": env.broker.pid, "vm": env.vm.pid}
        pids["bench"] = os.getpid()

        t_steady = t0 + env.warmup
        t_end = t0 + seconds
        per_server_rate = n / n_servers
        window_span = min(SERVER_WINDOW_S, SERVER_WINDOW_MAX / per_server_rate)
        _sleep_until(t_steady)
        cpu0, mach0 = _cpu_snapshot(pids)
        acked0 = sum(_sum_prefix(s.metrics(), "hrvstream_messages_acked_total") for s in servers)
        t_acked0 = time.time()
        if profile_s > 0:
            spy = _start_py_spy(servers[0].pid, min(profile_s, env.duration), step_dir)
        scrapes: list[list[Scrape]] = [[] for _ in servers]
        drains: list[list[Scrape]] = [[] for _ in servers]
        next_scrape = t_steady + 1.0
        while next_scrape <= t_end + 1e-6:
            _sleep_until(next_scrape)
            for i, s in enumerate(servers):
                scrapes[i].append(Scrape.of(s))
            next_scrape += 1.0
        cpu1, mach1 = _cpu_snapshot(pids)
        steady = time.time() - t_acked0
        acked1 = sum(sc[-1].acked for sc in scrapes if sc)

        out, _ = gen.communicate(timeout=seconds + 2 * WAIT_S)
        gen_result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        if gen_result["errors"]:
            notes.append("generator: " + "; ".join(gen_result["errors"][:3]))

        drain_s: float | None = None
        deadline = time.time() + env.drain_max
        last_publish = float(gen_result["last_publish"])
        next_scrape = time.time()
        while time.time() < deadline:
            total = sum(_sum_prefix(s.metrics(), "hrvstream_messages_acked_total") for s in servers)
            if total >= gen_result["acked"]:
                drain_s = max(0.0, time.time() - last_publish)
                break
            if time.time() >= next_scrape:
                for i, s in enumerate(servers):
                    drains[i].append(Scrape.of(s, "drain"))
                next_scrape += 0.5
            time.sleep(0.05)
        finals = [s.metrics() for s in servers]
        if spy is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(timeout=WAIT_S)
    finally:
        if gen is not None and gen.poll() is None:
            gen.kill()
            gen.wait()
        for s in servers:
            s.stop()
        for s in servers:  # MQTT 3.1.1 sessions never expire: end them
            discard_session(env.broker.port, s.name)
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait()

    # VictoriaMetrics sometimes shows the last samples of new series only a moment after
    # /internal/force_flush: look again for a few seconds before calling anything lost.
    expected = int(gen_result["beats_acked"])
    deadline = time.monotonic() + 10.0
    while True:
        stored_by_patient = env.vm.beats_by_patient(prefix)
        stored = sum(stored_by_patient.values())
        if stored >= expected or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    published_by = gen_result["beats_by_patient"]
    shortfalls = {
        f"{prefix}{i:05d}": [b, stored_by_patient.get(f"{prefix}{i:05d}", 0)]
        for i, b in enumerate(published_by)
        if stored_by_patient.get(f"{prefix}{i:05d}", 0) != b
    }
    short = sum(1 for published, got in shortfalls.values() if got < published)
    if shortfalls:  # [published, stored] per patient, for a closer look
        (step_dir / "mismatch.json").write_text(json.dumps(shortfalls, indent=0))
    ok_windows = [
        sc
        for per in scrapes
        for sc in per
        if sc.t - window_span >= t_steady - 0.5 and not math.isnan(sc.p99)
    ]
    if not ok_windows:  # short runs: the last window, warm-up samples included
        ok_windows = [per[-1] for per in scrapes if per and not math.isnan(per[-1].p99)]
        notes.append("latency window includes warm-up samples (short run)")
    write_p99 = [f.get('hrvstream_store_write_seconds{quantile="0.99"}', math.nan) for f in finals]
    write_p99 = [v for v in write_p99 if not math.isnan(v)]
    timeline = [
        {"server": i + 1, **asdict(sc), "t": round(sc.t - t0, 2)}
        for i, per in enumerate(scrapes)
        for sc in [*per, *drains[i]]
    ]
    (step_dir / "timeline.json").write_text(json.dumps({"t0": t0, "scrapes": timeline}, indent=0))
    cpu = {name: (cpu1[name] - cpu0[name]) / steady * 100 for name in pids}
    busy = (mach1[0] - mach0[0]) / steady * 100
    total_cap = (mach1[1] - mach0[1]) / steady * 100
    profile = None
    if spy is not None:
        profile = summarise_profile(step_dir / "server1.collapsed.txt")
    return StepResult(
        servers=n_servers,
        mqtt5=mqtt5,
        n=n,
        seconds=seconds,
        offered_msg_s=gen_result["published"] / seconds,
        published=int(gen_result["published"]),
        beats_published=int(gen_result["beats_acked"]),
        beats_stored=stored,
        patients_short=short,
        unacked_by_broker=int(gen_result["unacked"]),
        p50_ms=_mean_ms([w.p50 for w in ok_windows]),
        p99_ms=_mean_ms([w.p99 for w in ok_windows]),
        p99_worst_ms=max(w.p99 for w in ok_windows) * 1000 if ok_windows else None,
        windows=len(ok_windows),
        store_write_p99_ms=max(write_p99) * 1000 if write_p99 else None,
        acked_msg_s=(acked1 - acked0) / steady,
        drain_s=drain_s,
        gen_behind_s=float(gen_result["max_behind_s"]),
        puback_p99_ms=(
            gen_result["puback_p99_s"] * 1000 if gen_result["puback_p99_s"] is not None else None
        ),
        cpu=cpu,
        machine_busy=busy,
        machine_total=total_cap,
        bad_messages=int(sum(_sum_prefix(f, "hrvstream_bad_messages_total") for f in finals)),
        reconnects=int(sum(_sum_prefix(f, "hrvstream_broker_reconnects_total") for f in finals)),
        store_errors=int(sum(_sum_prefix(f, "hrvstream_store_write_errors_total") for f in finals)),
        server_rss_mb=max((sc.rss_mb for per in [*scrapes, *drains] for sc in per), default=0.0),
        notes=notes,
        profile=profile,
    )


def _mean_ms(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) * 1000 if values else None


# == profiling ================================================================================


def _start_py_spy(pid: int, seconds: float, directory: Path) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy")
    if exe is None:
        print("py-spy is not installed (pip install py-spy): no profile", file=sys.stderr)
        return None
    cmd = [
        exe,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, int(seconds))),
        "--rate",
        "100",
        "--native",  # C frames too: the cyclic GC shows up as gc_collect_main
        "--format",
        "raw",
        "--output",
        str(directory / "server1.collapsed.txt"),
    ]
    log = (directory / "py-spy.log").open("wb")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


#: Inclusive buckets of the profile summary: (label, substrings of a frame, any matches).
PROFILE_BUCKETS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("MQTT in: paho loop_read (read + parse PUBLISH, aiomqtt Message)", ("loop_read (",)),
    ("  of which paho MQTT v5 Properties objects", ("Properties.",)),
    ("MQTT acks: Subscriber.ack + paho loop_write", ("ack (hrvstream/", "loop_write (")),
    ("decode + validate: decode_message", ("decode_message (",)),
    ("rows: beat_rows (BeatRow)", ("beat_rows (",)),
    ("line protocol: InfluxStore.write_beats", ("write_beats (",)),
    ("HTTP write: InfluxStore._send_one (influxdb-client, aiohttp)", ("_send_one (",)),
    ("batching: Server._collect / _next (futures per item)", ("_collect (", "_next (hrvstream")),
    ("after the flush: Server._stored (stats, acks)", ("_stored (",)),
    ("/metrics page", ("prometheus (",)),
    ("cyclic garbage collector (gc_collect_main, wherever triggered)", ("gc_collect_main",)),
    ("waiting in epoll (event loop idle or syscall)", ("epoll_wait", "EpollSelector.select")),
)


def summarise_profile(path: Path) -> str:
    """A text summary of py-spy's collapsed stacks: inclusive buckets and top self time.

    Samples of idle thread-pool workers (``concurrent.futures`` ``_worker`` blocked on its
    queue, which py-spy sometimes counts as active) are left out.
    """
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return f"(no profile: {path} missing; see py-spy.log)"
    total = idle = 0
    bucket = Counter[str]()
    self_time = Counter[str]()
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if any("_worker (concurrent/futures/thread.py" in f for f in frames[-3:]):
            idle += count
            continue
        total += count
        for label, needles in PROFILE_BUCKETS:
            if any(needle in frame for frame in frames for needle in needles):
                bucket[label] += count
        leaf = re.sub(r":\d+\)$", ")", frames[-1])
        self_time[_short_frame(leaf)] += count
    if not total:
        return "(empty profile)"
    out = [
        f"{total} samples at 100 Hz of the server process, native frames included "
        f"({idle} samples of idle thread-pool workers left out)",
        "",
        "Inclusive (a sample counts in every bucket whose function is on its stack):",
    ]
    for label, _ in PROFILE_BUCKETS:
        out.append(f"  {bucket[label] / total * 100:5.1f} %  {label}")
    out += ["", "Top self time (leaf function):"]
    for frame, count in self_time.most_common(15):
        out.append(f"  {count / total * 100:5.1f} %  {frame}")
    return "\n".join(out)


def _short_frame(frame: str) -> str:
    match = re.match(r"(.*) \((.*)\)$", frame)
    if not match:
        return frame
    func, where = match.groups()
    where = re.sub(r"^.*site-packages/", "", where)
    where = re.sub(r"^.*/lib/python3\.\d+/", "", where)
    where = where.replace(str(REPO) + "/", "")
    return f"{func} ({where})"


# == the ramp =================================================================================


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "n/a" if value is None else format(value, spec)


def describe(r: StepResult, goal: float) -> str:
    server_cpu = " + ".join(f"{v:.0f}" for k, v in r.cpu.items() if k.startswith("server"))
    return (
        f"{r.servers} server(s) {r.protocol}, N={r.n:>5}: {r.published} msgs, beats "
        f"{r.beats_published} "
        f"published / {r.beats_stored} stored (missing {r.missing}), "
        f"p50 {fmt(r.p50_ms)} ms, p99 {fmt(r.p99_ms)} ms (worst {fmt(r.p99_worst_ms)}), "
        f"acked {r.acked_msg_s:.0f}/s of {r.offered_msg_s:.0f}/s, drain {fmt(r.drain_s, '.2f')} s, "
        f"CPU server {server_cpu} %, gen {r.cpu['generator']:.0f} %, mosq "
        f"{r.cpu['mosquitto']:.0f} %, vm {r.cpu['vm']:.0f} %, machine {r.machine_busy:.0f}/"
        f"{r.machine_total:.0f} %, server RSS max {r.server_rss_mb:.0f} MiB -> "
        f"{'PASS' if r.passed(goal) else 'FAIL'}"
    )


@dataclass
class Ramp:
    """One configuration being ramped up: its server count and protocol, its progress."""

    servers: int
    mqtt5: bool = True
    last_ok: int | None = None
    done: bool = False


def run_ramps(
    env: Env,
    ramps: list[Ramp],
    streams: Sequence[int],
    goal: float,
    *,
    refine: bool,
    also_mqtt311: bool,
) -> list[StepResult]:
    """Ramp every configuration up, interleaved: at each ``N`` one step of each (so that
    they see the machine in the same state), each until its first failure (after which
    it runs one step halfway back). With ``also_mqtt311``, a 1-server MQTT 3.1.1 ramp
    joins at the ``N`` where the 1-server MQTT v5 ramp failed."""
    results: list[StepResult] = []

    def step(ramp: Ramp, n: int) -> StepResult:
        r = run_step(env, ramp.servers, n, mqtt5=ramp.mqtt5)
        print(describe(r, goal), flush=True)
        results.append(r)
        return r

    for n in streams:
        for ramp in list(ramps):
            if ramp.done:
                continue
            if step(ramp, n).passed(goal):
                ramp.last_ok = n
                continue
            ramp.done = True
            if refine and ramp.last_ok is not None:
                mid = round((ramp.last_ok + n) / 2 / 250) * 250
                if ramp.last_ok < mid < n:
                    step(ramp, mid)
            if also_mqtt311 and ramp.servers == 1 and ramp.mqtt5:
                extra = Ramp(1, mqtt5=False)
                ramps.append(extra)
                if step(extra, n).passed(goal):
                    extra.last_ok = n
                else:  # failed where v5 failed: nothing more to learn from it
                    extra.done = True
        if all(r.done for r in ramps):
            break
    return results


# == the report ===============================================================================


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_rev() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except OSError:
        return "?"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _mem_gib() -> str:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 2**20:.0f} GiB"
    return "?"


def table(results: Sequence[StepResult], goal: float) -> list[str]:
    head = (
        "| servers | MQTT | N streams | msgs/s offered | acked msgs/s | beats published "
        "| beats stored | missing | p50 ms | p99 ms | worst p99 ms | store write p99 ms "
        "| drain s | server CPU % | server CPU µs/msg | server RSS max MiB | generator CPU % "
        "| mosquitto CPU % "
        "| VM CPU % | machine busy % | others % | result |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        server_cpu = " + ".join(f"{v:.0f}" for k, v in r.cpu.items() if k.startswith("server"))
        verdict = "pass" if r.passed(goal) else _why(r, goal)
        rows.append(
            f"| {r.servers}{' (profiled)' if r.profile else ''} | {r.protocol} | {r.n:,} "
            f"| {r.offered_msg_s:,.0f} | {r.acked_msg_s:,.0f} "
            f"| {r.beats_published:,} | {r.beats_stored:,} | {r.missing:,} "
            f"| {fmt(r.p50_ms)} | {fmt(r.p99_ms)} | {fmt(r.p99_worst_ms)} "
            f"| {fmt(r.store_write_p99_ms, '.1f')} | {fmt(r.drain_s, '.2f')} "
            f"| {server_cpu} | {fmt(r.server_us_per_msg)} | {r.server_rss_mb:,.0f} "
            f"| {r.cpu['generator']:.0f} "
            f"| {r.cpu['mosquitto']:.0f} "
            f"| {r.cpu['vm']:.0f} | {r.machine_busy:.0f} of {r.machine_total:.0f} "
            f"| {r.others:.0f} | {verdict} |"
        )
    return rows


def _why(r: StepResult, goal: float) -> str:
    reasons = []
    if r.drain_s is None and r.missing:
        reasons.append(f"{r.missing:,} beats still queued at the drain cut-off")
    elif r.missing or r.unacked_by_broker:
        reasons.append(f"{r.missing:,} beats missing")
    if r.p99_ms is None or r.p99_ms >= goal:
        reasons.append("p99")
    if r.drain_s is None or r.drain_s > DRAIN_OK_S:
        reasons.append("fell behind")
    if r.gen_behind_s > GENERATOR_BEHIND_OK_S:
        reasons.append(f"generator {r.gen_behind_s:.2f} s late")
    if r.bad_messages:
        reasons.append(f"{r.bad_messages} bad")
    return "FAIL: " + ", ".join(reasons)


def best(
    results: Sequence[StepResult], n_servers: int, goal: float, mqtt5: bool = True
) -> int | None:
    """The largest passing N of a configuration (profiled steps left out)."""
    ok = [
        r.n
        for r in results
        if r.servers == n_servers and r.mqtt5 == mqtt5 and not r.profile and r.passed(goal)
    ]
    return max(ok) if ok else None


def report(
    results: Sequence[StepResult],
    args: argparse.Namespace,
    env: Env,
    versions: dict[str, str],
    load_before: str,
    load_after: str,
    started: float,
    others: str,
) -> str:
    goal = args.p99_goal_ms
    msgs = sum(r.published for r in results)
    beats_per_msg = sum(r.beats_published for r in results) / msgs if msgs else math.nan
    lines = [
        "# Ingest benchmark: patient streams -> mosquitto -> hrvstream server -> VictoriaMetrics",
        "",
        f"Generated by `python benchmarks/bench_ingest.py {' '.join(args.argv)}`".rstrip()
        + f" on {time.strftime('%Y-%m-%d %H:%M %Z', time.localtime(started))}, "
        f"{(time.time() - started) / 60:.1f} min.",
        "",
        "## Machine and versions",
        "",
        f"- CPU: {_cpu_model()}, {os.cpu_count()} cores; RAM {_mem_gib()}; "
        f"{platform.system()} {platform.release()}",
        f"- Load average before / after: {load_before} / {load_after} (the machine is shared: "
        "the *others %* column is CPU that processes outside this benchmark used during "
        "each step)",
        f"- Busiest other processes over the whole run (of one core; those still running "
        f"at its end): {others}",
        f"- Python {platform.python_version()}; hrvstream {versions['hrvstream']} "
        f"(git {versions['git']}); aiomqtt {versions['aiomqtt']}; paho-mqtt "
        f"{versions['paho-mqtt']}; influxdb-client {versions['influxdb-client']}; aiohttp "
        f"{versions['aiohttp']}",
        f"- mosquitto {versions['mosquitto']}; VictoriaMetrics {versions['victoria-metrics']}",
        "",
        "## Settings",
        "",
        f"- mosquitto: `max_inflight_messages {env.broker.settings.max_inflight}`, "
        f"`max_queued_messages {env.broker.settings.max_queued}`, `max_queued_bytes "
        f"{env.broker.settings.max_queued_bytes}`, persistence "
        + (
            "**on** (`autosave_interval 10`, `autosave_on_changes false`, as deployed)"
            if env.broker.settings.persistence
            else "**off**"
        )
        + ", anonymous, plain TCP on loopback (no TLS).",
        f"- mosquitto's flow control, checked before the ramps: {env.window_check}.",
        "- VictoriaMetrics: `-dedup.minScrapeInterval=1ms -retentionPeriod=100y`, "
        "written through `/api/v2/write` by InfluxStore (batch_size 5000, a flush per "
        "server batch).",
        f"- Server: `python -m hrvstream.server --config FILE`, `batch_max_messages = "
        f"{env.options.batch_max_messages}`, `batch_max_ms = {env.options.batch_max_ms:g}`, "
        "MQTT v5 (the default; rows marked 3.1.1 ran with `mqtt5 = false`), persistent "
        "session (`session_expiry_s = 2`; ended after each step), store `influx`; two "
        "servers share `$share/<group>/hrv/v1/+/beats`.",
        f"- Generator: 1 process, raw MQTT 3.1.1 over asyncio, QoS 1, {env.per_connection} "
        "patients per connection, one message per patient per second at evenly spread "
        f"phases, {beats_per_msg:.2f} beats per message on average (0-2), `sent_unix_s` "
        "stamped at publish.",
        f"- Each step: {env.warmup:g} s warm-up + {env.duration:g} s steady state "
        "(measured); fresh server processes, client ids, group and patients per step.",
        f"- Pass: no beat missing, p99 (mean of windows) < {goal:g} ms, drained within "
        f"{DRAIN_OK_S:g} s of the last publish, generator on schedule "
        f"(<= {GENERATOR_BEHIND_OK_S:g} s late), no bad message.",
        "",
        "CPU columns are % of one core over the steady state (machine busy: of "
        f"{100 * (os.cpu_count() or 1)} %). *missing* = beats the broker acknowledged to the "
        "generator minus beats exported from VictoriaMetrics. p50/p99: the server's "
        "`hrvstream_publish_to_stored_seconds`, mean over 1-s scrapes of its window of the "
        "last 10,000 messages (steady-state windows only); *worst*: the worst window's p99. "
        "*drain*: last publish until everything was acknowledged by the server(s). "
        "*server CPU µs/msg*: the servers' CPU time per acknowledged message over the steady "
        "state, the figure least affected by what else runs on the machine. "
        "*server RSS max*: the largest resident size a server reached (steady state and "
        "drain): it grows when a server falls behind, see the analysis.",
        "",
        "## Results",
        "",
        *table(results, goal),
        "",
    ]
    for n_servers, mqtt5 in sorted({(r.servers, r.mqtt5) for r in results if not r.profile}):
        b = best(results, n_servers, goal, mqtt5)
        lines.append(
            f"- Largest N with zero loss and p99 < {goal:g} ms, {n_servers} server "
            f"process{'es' if n_servers > 1 else ''} (MQTT {'v5' if mqtt5 else '3.1.1'}): "
            f"**{f'{b:,}' if b else 'none'}**"
        )
    b1, b2 = best(results, 1, goal), best(results, 2, goal)
    if b1 and b2:
        lines.append(f"- 2 processes / 1 process (MQTT v5): **{b2 / b1:.2f}x**")
    notes = [
        f"- N={r.n}, {r.servers} server(s) {r.protocol}: {'; '.join(r.notes)}"
        for r in results
        if r.notes
    ]
    if notes:
        lines += ["", "Notes:", *notes]
    for r in results:
        if r.profile:
            lines += [
                "",
                f"## Profile: 1 server {r.protocol}, N = {r.n:,} (py-spy record --native, "
                "an extra step)",
                "",
                "```text",
                r.profile,
                "```",
            ]
    return "\n".join(lines) + "\n"


# == main =====================================================================================


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run (< 60 s)")
    parser.add_argument(
        "--streams",
        default="1000,2000,4000,5000,6000,7000,8000,10000,12000",
        help="comma-separated N of the ramp (default %(default)s)",
    )
    parser.add_argument(
        "--servers", default="1,2", help="server processes, comma-separated (default 1,2)"
    )
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds (default 5)")
    parser.add_argument("--duration", type=float, default=30.0, help="steady seconds (30)")
    parser.add_argument("--drain-max", type=float, default=20.0, help="seconds (default 20)")
    parser.add_argument("--patients-per-connection", type=int, default=250)
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=1000,
        help="mosquitto max_inflight_messages (default 1000; deployed: 100; mosquitto's "
        "default: 20). The server acknowledges a batch only once it is stored, so the "
        "broker's window must hold more than one batch for the next one to arrive meanwhile",
    )
    parser.add_argument("--no-persistence", action="store_true", help="mosquitto persistence off")
    parser.add_argument("--batch-max-messages", type=int, default=100)
    parser.add_argument("--batch-max-ms", type=float, default=50.0)
    parser.add_argument("--p99-goal-ms", type=float, default=250.0)
    parser.add_argument("--no-refine", action="store_true", help="no step halfway back")
    parser.add_argument(
        "--mqtt311", action="store_true", help="the servers speak MQTT 3.1.1 (mqtt5 = false)"
    )
    parser.add_argument(
        "--also-mqtt311",
        action="store_true",
        help="then a 1-server ramp with mqtt5 = false, from the first N the 1-server "
        "MQTT v5 ramp failed at",
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const="pass,fail",
        default=None,
        metavar="WHICH",
        help="extra 1-server steps under py-spy: comma-separated N, 'pass' (the largest "
        "passing N of the 1-server ramp) or 'fail' (its first failing N); default "
        "pass,fail",
    )
    parser.add_argument("--markdown", type=Path, help="write the report here")
    parser.add_argument("--workdir", type=Path, help="keep logs and data here")
    parser.add_argument("--generator", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:  # both server counts, one small N, short steps
        args.streams = "300"
        args.warmup, args.duration, args.drain_max = 2.0, 8.0, 10.0
        args.no_refine = True
    return args


@contextlib.contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        yield Path(tmp)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.generator:
        return generator_main(args.generator)
    check_payload()
    streams = [int(s) for s in args.streams.split(",") if s.strip()]
    server_counts = [int(s) for s in args.servers.split(",") if s.strip()]
    started = time.time()
    load_before = loadavg()
    procs_before = all_processes_cpu()
    results: list[StepResult] = []
    with _workdir(args.workdir) as workdir:
        broker = Mosquitto(
            workdir / "mosquitto",
            BrokerSettings(max_inflight=args.max_inflight, persistence=not args.no_persistence),
        )
        vm = Victoria(workdir / "vm")
        env = Env(
            workdir=workdir,
            broker=broker,
            vm=vm,
            options=ServerOptions(args.batch_max_messages, args.batch_max_ms),
            per_connection=args.patients_per_connection,
            warmup=args.warmup,
            duration=args.duration,
            drain_max=args.drain_max,
        )
        log: IO[str] = sys.stdout
        try:
            broker.start()
            vm.start()
            print(
                f"mosquitto :{broker.port} (pid {broker.pid}), victoria-metrics :{vm.port} "
                f"(pid {vm.pid}), workdir {workdir}; load average {load_before}",
                file=log,
                flush=True,
            )
            if args.max_inflight > 0:
                before, after = check_broker_window(broker.port, args.max_inflight)
                env.window_check = (
                    f"a QoS 1 subscriber that acknowledges nothing received {before:,} of "
                    f"{3 * args.max_inflight:,} queued messages (`max_inflight_messages "
                    f"{args.max_inflight}`); after it acknowledged one: {after:,} (a broker "
                    f"that keeps the window sends one more: {before + 1:,})"
                )
                print(f"broker flow control: {env.window_check}", file=log, flush=True)
            mqtt5 = not args.mqtt311
            goal = args.p99_goal_ms
            results += run_ramps(
                env,
                [Ramp(n, mqtt5) for n in server_counts],
                streams,
                goal,
                refine=not args.no_refine,
                also_mqtt311=args.also_mqtt311 and mqtt5,
            )
            first_fail = min(
                (
                    r.n
                    for r in results
                    if r.servers == 1 and r.mqtt5 == mqtt5 and not r.passed(goal)
                ),
                default=None,
            )
            for item in (args.profile or "").split(","):
                which = item.strip()
                n = best(results, 1, goal, mqtt5) if which == "pass" else None
                n = first_fail if which == "fail" else n
                n = int(which) if which.isdigit() else n
                if n:
                    r = run_step(env, 1, n, mqtt5=mqtt5, profile_s=args.duration)
                    print(describe(r, goal), flush=True)
                    print(r.profile or "(no profile)", flush=True)
                    results.append(r)
            versions = {
                "hrvstream": _version("hrvstream"),
                "git": _git_rev(),
                "aiomqtt": _version("aiomqtt"),
                "paho-mqtt": _version("paho-mqtt"),
                "influxdb-client": _version("influxdb-client"),
                "aiohttp": _version("aiohttp"),
                "mosquitto": broker.version(),
                "victoria-metrics": vm.version(),
            }
        finally:
            broker.stop()
            vm.stop()
        others = busiest_others(procs_before, time.time() - started)
        text = report(results, args, env, versions, load_before, loadavg(), started, others)
    print()
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
        print(f"written to {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
