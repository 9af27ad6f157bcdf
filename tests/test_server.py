"""The ingest server against real brokers (mosquitto) and real stores (SQLite, VictoriaMetrics).

A fake agent publishes with aiomqtt (QoS 1) payloads built with the real message classes;
the server runs in the test's event loop (``asyncio.run``), or as a separate process
(``python -m hrvstream.server``) where a crash is part of the test. Nothing sleeps to
synchronise: every wait polls a condition (the server's counters, its HTTP endpoints,
the store) with a bound, and fails with what it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hrvstream.adapters.mqtt import BrokerAuthError, BrokerTLSError, BrokerUnavailable
from hrvstream.adapters.sqlite_store import SqliteStore
from hrvstream.errors import ConfigError
from hrvstream.protocol.messages import (
    MAX_BEATS_PER_MESSAGE,
    MAX_PAYLOAD_BYTES,
    AlertAckMessage,
    AlertMessage,
    BeatsMessage,
    MetricsMessage,
    StatusMessage,
    topic,
)
from hrvstream.server import (
    Server,
    load_server_settings,
    parse_listen,
    server_topics,
)
from hrvstream.store import AlertRow, BeatRow, MetricRow, time_key_us
from tests import waiting
from tests.conftest import require
from tests.infra import (
    MosquittoBroker,
    MosquittoFactory,
    hrv_config,
    mosquitto_factory,
    subscriber,
)
from tests.infra.mosquitto import free_port
from tests.infra.victoriametrics import VictoriaMetrics, victoria_metrics_binary

__all__ = ["mosquitto_factory"]  # a fixture, used by name

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
TICK_MS = 1000 / 1024  # strap RR resolution
STEP = 30.0  # bound of any single wait, seconds


def run(body: Callable[[], Awaitable[None]], timeout: float = 180.0) -> None:
    """:func:`tests.waiting.run` with this file's default bound."""
    waiting.run(body, timeout)


async def until(
    check: Callable[[], bool | Awaitable[bool]],
    what: str | Callable[[], str],
    timeout: float = STEP,
) -> None:
    """:func:`tests.waiting.until` bounded by :data:`STEP` unless told otherwise."""
    await waiting.until(check, what, timeout)


parse_prometheus = waiting.parse_prometheus
BEATS_PER_MESSAGE = 8
REPO = Path(__file__).resolve().parent.parent


# == helpers ==============================================================================


def session_messages(
    patient: str, session: str, n: int, *, seq0: int = 0, origin: float = T0
) -> list[BeatsMessage]:
    """``n`` consecutive beats messages of one recording session, as an agent sends them.

    RR intervals are strap ticks (1/1024 s), beat times accumulate from the origin, and
    now and then a beat follows a gap. Deterministic in (patient, session, seq).
    """
    salt = sum(map(ord, patient + session))
    out: list[BeatsMessage] = []
    t = 0.0
    for seq in range(seq0 + n):
        ts: list[float] = []
        rrs: list[float] = []
        gaps: list[int] = []
        for i in range(BEATS_PER_MESSAGE):
            k = seq * BEATS_PER_MESSAGE + i
            rr = (620 + (k * 7919 + salt) % 470) * TICK_MS  # 605-1064 ms
            t += rr / 1000
            ts.append(t)
            rrs.append(rr)
            if (k + salt) % 29 == 3:
                gaps.append(i)
        if seq >= seq0:
            out.append(
                BeatsMessage(
                    patient=patient,
                    session=session,
                    seq=seq,
                    origin_unix_s=origin,
                    sent_unix_s=time.time(),
                    t_s=tuple(ts),
                    rr_ms=tuple(rrs),
                    after_gap=tuple(gaps),
                    contact=True,
                    hr_bpm=72,
                )
            )
    return out


def expected_rows(messages: Sequence[BeatsMessage]) -> dict[str, list[BeatRow]]:
    """The rows the server must store, by patient and time (the documented mapping)."""
    out: dict[str, list[BeatRow]] = {}
    for m in messages:
        for i, (t, rr) in enumerate(zip(m.t_s, m.rr_ms, strict=True)):
            out.setdefault(m.patient, []).append(
                BeatRow(
                    m.patient,
                    m.origin_unix_s + t,
                    rr,
                    i in m.after_gap,
                    m.session,
                    m.seq * MAX_BEATS_PER_MESSAGE + i,
                )
            )
    return {p: sorted(rows, key=lambda r: r.t_unix_s) for p, rows in out.items()}


def beats_payloads(messages: Sequence[BeatsMessage]) -> list[tuple[str, bytes]]:
    return [(topic(m.patient, "beats"), m.to_json()) for m in messages]


async def publish(
    broker: MosquittoBroker,
    user: str | None,
    messages: Sequence[tuple[str, bytes]],
    *,
    retain: bool = False,
) -> None:
    """Publish with QoS 1 as ``user`` (each returns on the broker's PUBACK)."""
    async with broker.client(user) as client:
        for t, payload in messages:
            await client.publish(t, payload, qos=1, retain=retain)


def write_config(
    path: Path,
    broker: MosquittoBroker,
    *,
    user: str | None = "server",
    tls: bool = False,
    client_id: str = "hrvstream-server-test",
    store: Mapping[str, object] | None = None,
    shared_group: str | None = None,
    http: str = "127.0.0.1:0",
    server: Mapping[str, object] | None = None,
    password: str | None = None,
) -> Path:
    """A server TOML file for ``broker`` (the password in a file next to it)."""

    def toml_value(v: object) -> str:
        return json.dumps(v)  # TOML basic strings and numbers are JSON-compatible here

    lines = ["[broker]", f"url = {toml_value(broker.url(user, tls=tls))}"]
    if tls:
        lines.append(f"ca_file = {toml_value(str(broker.ca_file))}")
    if user is not None:
        pw = password if password is not None else broker.password(user)
        pw_file = path.with_suffix(".password")
        pw_file.write_text(pw + "\n", encoding="utf-8")
        lines.append(f"password_file = {toml_value(str(pw_file))}")
    lines.append(f"client_id = {toml_value(client_id)}")
    if shared_group is not None:
        lines.append(f"shared_group = {toml_value(shared_group)}")
    store = store or {"kind": "sqlite", "path": str(path.with_suffix(".db"))}
    lines += ["", "[store]", *(f"{k} = {toml_value(v)}" for k, v in store.items())]
    lines += ["", "[http]", f"listen = {toml_value(http)}"]
    server = {"batch_max_ms": 20, **(server or {})}
    lines += ["", "[server]", *(f"{k} = {toml_value(v)}" for k, v in server.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def running(server: Server) -> AsyncIterator[Server]:
    """Run ``server`` in a task until the block ends; wait until it is connected first."""
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    await until(lambda: server.stats.broker_connected or task.done(), "the server to connect", STEP)
    if task.done():
        await task  # raises what stopped it
    try:
        yield server
    finally:
        stop.set()
        async with asyncio.timeout(STEP):
            await task


async def http_get(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}{path}", timeout=aiohttp.ClientTimeout(10)) as r,
    ):
        return r.status, await r.text()


async def scrape(port: int) -> dict[str, float]:
    status, text = await http_get(port, "/metrics")
    assert status == 200
    return parse_prometheus(text)


async def stored_beats(db: Path, patients: Sequence[str]) -> dict[str, list[BeatRow]]:
    """What a separate connection reads from the server's SQLite file."""
    store = SqliteStore(db)
    try:
        return {p: await store.beats(p, 0, 4e9) for p in patients}
    finally:
        await store.close()


@pytest.fixture
def vm_binary() -> str:
    binary = victoria_metrics_binary()
    if binary is None:
        require("the victoria-metrics binary (Debian package victoria-metrics)")
        raise AssertionError("unreachable")
    return binary


def vm_beats(vm: VictoriaMetrics) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """``{(field, patient): [(ms, value), ...]}`` of the ``beats`` measurement."""
    vm.force_flush()
    out: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for s in vm.export('{__name__=~"beats_.*"}'):
        out[(s.name.removeprefix("beats_"), s.labels["patient"])] = sorted(
            zip(s.timestamps_ms, s.values, strict=True)
        )
    return out


def vm_expected(
    rows: Mapping[str, list[BeatRow]],
) -> dict[tuple[str, str], list[tuple[int, float]]]:
    out: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for patient, beats in rows.items():
        ms = [time_key_us(r.t_unix_s) // 1000 for r in beats]
        out[("rr_ms", patient)] = list(zip(ms, [r.rr_ms for r in beats], strict=True))
        out[("after_gap", patient)] = list(
            zip(ms, [1.0 if r.after_gap else 0.0 for r in beats], strict=True)
        )
        out[("seq", patient)] = list(zip(ms, [float(r.seq) for r in beats], strict=True))
    return out


# == settings =============================================================================


def test_settings_from_toml_and_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "server.toml"
    (tmp_path / "token").write_text("tok-from-file\n")
    cfg.write_text(
        """
[broker]
url = "mqtts://server@broker.example:8883"
ca_file = "/etc/ca.pem"
client_id = "srv-1"
shared_group = "ingest"

[store]
kind = "influx"
url = "http://influx:8086"
org = "clinic"
bucket = "hrv"

[http]
listen = "[::1]:9200"
"""
    )
    env = {
        "HRVSTREAM_MQTT_PASSWORD": "pw",
        "HRVSTREAM_INFLUX_TOKEN": "tok-from-env",
        "HRVSTREAM_SERVER_BATCH_MAX_MESSAGES": "7",
        "HRVSTREAM_BROKER_CLIENT_ID": "srv-2",
        "HRVSTREAM_BROKER_MQTT5": "no",
    }
    s = load_server_settings(cfg, env)
    assert (s.broker.host, s.broker.port, s.broker.tls) == ("broker.example", 8883, True)
    assert s.broker.username == "server" and s.broker.password == "pw"
    assert s.broker.client_id == "srv-2" and s.broker.ca_file == Path("/etc/ca.pem")
    assert not s.broker.mqtt5
    assert s.shared_group == "ingest" and s.batch_max_messages == 7
    assert s.store.kind == "influx" and s.store.token == "tok-from-env"
    assert (s.store.url, s.store.org, s.store.bucket) == ("http://influx:8086", "clinic", "hrv")
    assert (s.http_host, s.http_port) == ("::1", 9200)
    assert "tok-from-env" not in repr(s) and "pw" not in repr(s.broker)
    # A token file named in the configuration wins over the variable, like password_file.
    env["HRVSTREAM_STORE_TOKEN_FILE"] = str(tmp_path / "token")
    assert load_server_settings(cfg, env).store.token == "tok-from-file"

    minimal = tmp_path / "minimal.toml"
    minimal.write_text('[broker]\nurl = "mqtt://127.0.0.1:1884"\n')
    m = load_server_settings(minimal, {})
    assert m.store.kind == "sqlite" and m.store.path == Path("hrvstream.db")
    assert (m.http_host, m.http_port) == ("127.0.0.1", 9108)
    assert m.broker.client_id and m.broker.client_id.startswith("hrvstream-server-")
    assert m.shared_group is None and m.broker.password is None and m.broker.mqtt5


def test_deploy_example_loads(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    (tmp_path / "tok").write_text("token\n")
    env = {
        "HRVSTREAM_BROKER_PASSWORD_FILE": str(tmp_path / "pw"),
        "HRVSTREAM_STORE_TOKEN_FILE": str(tmp_path / "tok"),
    }
    s = load_server_settings(REPO / "deploy" / "server.example.toml", env)
    assert s.broker.tls and s.broker.password == "secret" and s.store.token == "token"
    assert s.store.kind == "influx" and s.shared_group == "ingest"
    assert (s.http_host, s.http_port) == ("127.0.0.1", 9108)


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("", {}, "missing [broker] url"),
        ('[broker]\nurl = "http://x"', {}, "mqtt://"),
        ('[broker]\nurl = "mqtt://x"\n[store]\nkind = "postgres"', {}, "'sqlite' or 'influx'"),
        (
            '[broker]\nurl = "mqtt://x"\n[store]\nkind = "influx"\nurl = "http://i"\nbucket = "b"',
            {},
            "HRVSTREAM_INFLUX_TOKEN",
        ),
        ('[broker]\nurl = "mqtt://x"\nshared_group = "a/b"', {}, "shared_group"),
        ('[broker]\nurl = "mqtt://x"\n[http]\nlisten = "nowhere"', {}, "host:port"),
        ('[broker]\nurl = "mqtt://x"', {"HRVSTREAM_SERVER_BATCH_MAX_MS": "0"}, "batch_max_ms"),
        ('[broker]\nurl = "mqtt://x"\npassword_file = "/nonexistent/pw"', {}, "password file"),
    ],
)
def test_settings_errors(tmp_path: Path, toml: str, env: dict[str, str], message: str) -> None:
    cfg = tmp_path / "server.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_server_settings(cfg, env)


def test_topics_share_everything_but_status() -> None:
    assert server_topics(None) == [
        "hrv/v1/+/beats",
        "hrv/v1/+/metrics",
        "hrv/v1/+/alerts/ack",
        "hrv/v1/+/status",
    ]
    assert server_topics("ingest") == [
        "$share/ingest/hrv/v1/+/beats",
        "$share/ingest/hrv/v1/+/metrics",
        "$share/ingest/hrv/v1/+/alerts/ack",
        "hrv/v1/+/status",
    ]
    assert parse_listen("off") == (None, 0)
    assert parse_listen(":9108") == ("0.0.0.0", 9108)


# == (a) SQLite: two patients, exactly once, duplicates collapse ==========================


def test_beats_of_two_patients_stored_exactly_once_over_tls(
    tmp_path: Path, mosquitto_factory: MosquittoFactory
) -> None:
    broker = mosquitto_factory(hrv_config(tls=True))
    cfg = write_config(tmp_path / "server.toml", broker, tls=True)
    settings = load_server_settings(cfg, {})
    db = settings.store.path
    m1 = session_messages("p1", "s-a", 30)
    m2 = session_messages("p2", "s-b", 30)
    expected = expected_rows([*m1, *m2])

    async def body() -> None:
        async with running(Server(settings)) as server:
            # Each agent with its own credentials; the ACL lets it write only its topics.
            await asyncio.gather(
                publish(broker, "p1", beats_payloads(m1)),
                publish(broker, "p2", beats_payloads(m2)),
            )
            await until(lambda: server.stats.acked == 60, lambda: f"60 acks, {server.stats}")
            assert await stored_beats(db, ["p1", "p2"]) == expected
            assert server.stats.beats_stored == 60 * BEATS_PER_MESSAGE

            # The same messages again (an agent re-sending its spool): still once each.
            await asyncio.gather(
                publish(broker, "p1", beats_payloads(m1)),
                publish(broker, "p2", beats_payloads(m2)),
            )
            await until(lambda: server.stats.acked == 120, lambda: f"120 acks, {server.stats}")
            assert await stored_beats(db, ["p1", "p2"]) == expected
            assert server.stats.bad.total() == 0

    run(body)


# == (b) InfluxStore -> VictoriaMetrics ====================================================


def test_beats_reach_victoria_metrics_exactly_once(
    tmp_path: Path, mosquitto_factory: MosquittoFactory, vm_binary: str
) -> None:
    broker = mosquitto_factory(hrv_config())
    m1 = session_messages("p1", "s-1", 25)
    m2 = session_messages("p2", "s-2", 25)
    # Without deduplication: a beat written twice would be exported twice.
    with VictoriaMetrics(tmp_path / "vm", binary=vm_binary, dedup=False) as vm:
        store = {"kind": "influx", "url": vm.url, "org": "clinic", "bucket": "hrv"}
        cfg = write_config(tmp_path / "server.toml", broker, store=store)
        settings = load_server_settings(cfg, {"HRVSTREAM_INFLUX_TOKEN": "test-token"})

        async def body() -> None:
            async with running(Server(settings)) as server:
                await asyncio.gather(
                    publish(broker, "p1", beats_payloads(m1)),
                    publish(broker, "p2", beats_payloads(m2)),
                )
                await until(lambda: server.stats.acked == 50, lambda: f"50 acks: {server.stats}")
            assert await asyncio.to_thread(vm_beats, vm) == vm_expected(expected_rows([*m1, *m2]))

        run(body)


# == (c) bad messages are counted, logged, dropped; good ones keep flowing =================


def test_bad_messages_are_counted_dropped_and_do_not_stop_storing(
    tmp_path: Path, mosquitto_factory: MosquittoFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hrvstream.server")
    broker = mosquitto_factory(hrv_config())
    settings = load_server_settings(write_config(tmp_path / "server.toml", broker), {})
    good_before = session_messages("p1", "s-1", 3)
    good_after = session_messages("p1", "s-1", 5, seq0=3)
    template = good_before[0]
    secret_rr = 1234.5678  # must never show in a log line above DEBUG

    def beats_json(**changes: Any) -> bytes:
        obj = json.loads(template.to_json())
        obj.update(changes)
        return json.dumps(obj).encode()

    p1_beats = topic("p1", "beats")
    bad: list[tuple[str, bytes, str]] = [
        (p1_beats, b'{"schema": "hrvstream.beats/1", "patient": ', "malformed"),
        (p1_beats, b"\xff\xfe not utf-8", "malformed"),
        (p1_beats, beats_json(schema="hrvstream.beats/2"), "schema"),
        (p1_beats, beats_json(pad="x" * (MAX_PAYLOAD_BYTES + 10)), "oversized"),
        (p1_beats, beats_json(patient="p2"), "patient_mismatch"),
        (p1_beats, beats_json(rr_ms=[-secret_rr, *template.rr_ms[1:]]), "invalid"),
        (p1_beats, beats_json(t_s=list(reversed(template.t_s))), "invalid"),
        ("hrv/v1/P1/beats", template.to_json(), "topic"),
        (topic("p1", "metrics"), template.to_json(), "schema"),  # a beats payload
        (topic("p1", "status"), b"[]", "malformed"),
    ]
    # Enough invalid ones to pass the WARNING budget (the first 10 are logged in detail).
    bad += [(p1_beats, beats_json(seq=-1 - i), "invalid") for i in range(5)]

    async def body() -> None:
        async with running(Server(settings)) as server:
            await publish(broker, "p1", beats_payloads(good_before))
            await publish(broker, "admin", [(t, p) for t, p, _ in bad])
            await publish(broker, "p1", beats_payloads(good_after))
            total = len(good_before) + len(bad) + len(good_after)
            await until(lambda: server.stats.acked == total, lambda: f"{total} acks")
            assert server.http_port is not None
            metrics = await scrape(server.http_port)
        rows = await stored_beats(settings.store.path, ["p1"])
        assert rows == expected_rows([*good_before, *good_after])
        want: dict[str, int] = {}
        for _, _, reason in bad:
            want[reason] = want.get(reason, 0) + 1
        for reason, n in want.items():
            assert metrics[f'hrvstream_bad_messages_total{{reason="{reason}"}}'] == n, reason
        assert metrics['hrvstream_bad_messages_total{reason="unstorable"}'] == 0
        assert metrics['hrvstream_messages_received_total{kind="unknown"}'] == 1
        assert metrics['hrvstream_messages_received_total{kind="beats"}'] == 8 + 12
        assert metrics["hrvstream_beats_stored_total"] == 8 * BEATS_PER_MESSAGE
        assert metrics["hrvstream_messages_acked_total"] == total

    run(body)
    records = [r for r in caplog.records if r.name == "hrvstream.server"]
    detailed = [r for r in records if r.getMessage().startswith("dropped a bad message")]
    assert len(detailed) == 10 and all(r.levelno == logging.WARNING for r in detailed)
    # The rest is summarised (at the latest when the server stops).
    assert any(r.getMessage() == "dropped 5 more bad messages (invalid: 5)" for r in records)
    assert any("patient 'p2' does not match" in r.message for r in detailed)
    assert any("schema version 2 is not supported" in r.message for r in detailed)
    for r in records:
        if r.levelno > logging.DEBUG:
            assert "1234.5678" not in r.getMessage()
    assert any("1234.5678" in r.getMessage() for r in records if r.levelno == logging.DEBUG)


# == (d) store outage and a server crash: nothing lost, nothing doubled ====================


@dataclass
class ServerProcess:
    """``python -m hrvstream.server`` with its own log file."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def server_process(cfg: Path, port: int, env: Mapping[str, str]) -> Iterator[ServerProcess]:
    log_path = cfg.with_suffix(f".{port}.log")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hrvstream.server", "--config", str(cfg), "-vv"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO), **env},
            cwd=cfg.parent,
        )
    try:
        yield ServerProcess(proc, log_path, port)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=STEP)


async def wait_metric(
    sp: ServerProcess, key: str, check: Callable[[float], bool], what: str
) -> dict[str, float]:
    """Poll the process's /metrics until ``check(value of key)``."""
    seen: dict[str, float] = {}

    async def ok() -> bool:
        nonlocal seen
        if sp.proc.poll() is not None:
            raise AssertionError(f"the server exited ({sp.proc.returncode}):\n{sp.log()}")
        try:
            seen = await scrape(sp.port)
        except (aiohttp.ClientError, OSError):
            return False
        return check(seen.get(key, float("nan")))

    await until(ok, lambda: f"{what}; last {key} = {seen.get(key)}\n{sp.log()}")
    return seen


async def health(port: int) -> tuple[int, dict[str, Any]]:
    status, text = await http_get(port, "/healthz")
    return status, json.loads(text)


def test_store_outage_and_server_crash_lose_nothing(
    tmp_path: Path, mosquitto_factory: MosquittoFactory, vm_binary: str
) -> None:
    broker = mosquitto_factory(hrv_config())
    # Messages per patient in each phase; batch 2 is more than the broker's window.
    sizes = [10, 10, 20, 10]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    batches = [
        session_messages("p1", "s-1", n, seq0=s0) + session_messages("p2", "s-2", n, seq0=s0)
        for n, s0 in zip(sizes, starts, strict=True)
    ]
    vm = VictoriaMetrics(tmp_path / "vm", binary=vm_binary)  # deduplicating, like InfluxDB
    vm.start()
    http_port = free_port()
    store = {
        "kind": "influx",
        "url": vm.url,
        "org": "clinic",
        "bucket": "hrv",
        "flush_timeout_s": 1,
        "retry_max_s": 0.5,
    }
    cfg = write_config(
        tmp_path / "server.toml",
        broker,
        client_id="srv-outage",
        store=store,
        http=f"127.0.0.1:{http_port}",
        server={"store_unhealthy_after_s": 1},
    )
    env = {"HRVSTREAM_INFLUX_TOKEN": "test-token"}
    acked = "hrvstream_messages_acked_total"
    received = 'hrvstream_messages_received_total{kind="beats"}'

    async def body() -> None:
        try:
            with server_process(cfg, http_port, env) as a:
                await until(
                    lambda: _healthy(http_port), lambda: f"server A to be healthy\n{a.log()}"
                )
                await publish(broker, "admin", beats_payloads(batches[0]))
                await wait_metric(a, acked, lambda v: v == 20, "batch 0 stored")

                # Outage 1: the database goes away while the server runs, and comes back.
                await asyncio.to_thread(vm.stop)
                await publish(broker, "admin", beats_payloads(batches[1]))
                await wait_metric(
                    a,
                    'hrvstream_store_write_errors_total{error="unavailable"}',
                    lambda v: v >= 1,
                    "a failed store write",
                )
                await until(lambda: _unhealthy_store(http_port), "503 once the store is down > 1 s")
                m = await scrape(http_port)
                assert m[acked] == 20 and m["hrvstream_store_up"] == 0
                assert m["hrvstream_backlog_messages"] > 0
                await asyncio.to_thread(vm.start)
                await wait_metric(a, acked, lambda v: v == 40, "batch 1 stored after the outage")
                assert (await health(http_port))[0] == 200

                # Outage 2, and the server dies holding received, unstored messages.
                await asyncio.to_thread(vm.stop)
                await publish(broker, "admin", beats_payloads(batches[2]))
                m = await wait_metric(a, received, lambda v: v > 40, "batch 2 received")
                await wait_metric(
                    a,
                    'hrvstream_store_write_errors_total{error="unavailable"}',
                    lambda v: v >= 2,
                    "the batch 2 write to fail",
                )
                m = await scrape(http_port)
                # Bounded intake: nothing acknowledged, so the broker sent no more than
                # its in-flight window (mosquitto's default, 20) of the 40 messages.
                assert m[acked] == 40 and 40 < m[received] <= 40 + 20
                a.proc.send_signal(signal.SIGKILL)
                a.proc.wait(timeout=STEP)

            # While no server runs, the broker queues for the persistent session.
            await publish(broker, "admin", beats_payloads(batches[3]))
            await asyncio.to_thread(vm.start)
            settings = load_server_settings(cfg, env)
            async with running(Server(settings)) as b:
                await until(lambda: b.stats.acked == 60, lambda: f"60 acks: {b.stats}")
                # All of batch 2 came again, although server A had received part of it.
                assert b.stats.received["beats"] == 60
            got = await asyncio.to_thread(vm_beats, vm)
            assert got == vm_expected(expected_rows([m for batch in batches for m in batch]))
        finally:
            await asyncio.to_thread(vm.stop)

    run(body, timeout=240)


async def _healthy(port: int) -> bool:
    with contextlib.suppress(aiohttp.ClientError, OSError):
        return (await health(port))[0] == 200
    return False


async def _unhealthy_store(port: int) -> bool:
    status, h = await health(port)
    return status == 503 and h["broker_connected"] and not h["store_ok"]


# == (e) broker credentials and TLS: a clear error, no traceback ===========================


def test_wrong_password_is_a_clear_error_without_traceback(
    tmp_path: Path, mosquitto_factory: MosquittoFactory
) -> None:
    broker = mosquitto_factory(hrv_config(tls=True))
    cfg = write_config(tmp_path / "server.toml", broker, password="not-the-password")
    settings = load_server_settings(cfg, {})

    async def in_process() -> None:
        with pytest.raises(BrokerAuthError) as err:
            await Server(settings).run(asyncio.Event())
        text = str(err.value)
        assert "refused the credentials of user server" in text
        assert "not-the-password" not in text

    run(in_process)

    done = subprocess.run(
        [sys.executable, "-m", "hrvstream.server", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=STEP,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert done.returncode == 1
    assert "hrvstream server: error:" in done.stderr
    assert "refused the credentials of user server" in done.stderr
    assert "Traceback" not in done.stderr and "not-the-password" not in done.stderr

    # TLS with a CA that did not sign the broker's certificate: fatal too.
    assert broker.certs is not None
    tls_cfg = write_config(tmp_path / "tls.toml", broker, tls=True)
    text = tls_cfg.read_text().replace(str(broker.ca_file), str(broker.certs.wrong_ca_cert))
    tls_cfg.write_text(text)
    tls_settings = load_server_settings(tls_cfg, {})

    async def wrong_ca() -> None:
        with pytest.raises(BrokerTLSError) as err:
            await Server(tls_settings).run(asyncio.Event())
        assert str(err.value).startswith("TLS with mqtts://server@127.0.0.1:")

    run(wrong_ca)


# == (f) health, metrics, hooks, status, reconnect ========================================


class Recorder:
    """A MetricsListener and AlertAckListener that remembers what it got."""

    def __init__(self) -> None:
        self.metrics: list[MetricsMessage] = []
        self.acks: list[AlertAckMessage] = []

    async def on_metrics(self, message: MetricsMessage) -> None:
        self.metrics.append(message)
        if message.n_beats == 13:
            raise RuntimeError("a listener bug must not stop the server")

    async def on_alert_ack(self, message: AlertAckMessage) -> None:
        self.acks.append(message)


def metrics_message(patient: str, t: float, n_beats: int) -> MetricsMessage:
    return MetricsMessage(
        patient=patient,
        session="s-1",
        t_unix_s=t,
        window_s=300.0,
        n_beats=n_beats,
        coverage=0.98,
        artifact_pct=1.5,
        mean_hr_bpm=71.25,
        mean_nn_ms=842.0,
        sdnn_ms=48.5,
        rmssd_ms=35.25,
        pnn50_pct=12.5,
        lf_ms2=None,  # missing stays missing
        hf_ms2=410.0,
        lf_hf=None,
        lf_nu=None,
        hf_nu=None,
    )


def test_health_metrics_hooks_status_and_reconnect(
    tmp_path: Path, mosquitto_factory: MosquittoFactory
) -> None:
    broker = mosquitto_factory(hrv_config())
    settings = load_server_settings(write_config(tmp_path / "server.toml", broker), {})
    beats = session_messages("p1", "s-1", 2)
    windows = [metrics_message("p1", T0 + 60 * i, 300 + i) for i in range(3)]
    windows.append(metrics_message("p1", T0 + 240, 13))  # the listener raises on this one
    status = StatusMessage(patient="p1", state="online", t_unix_s=T0, agent_version="0.1.0")
    ack = AlertAckMessage(alert_id="a-1", patient="p1", by="t1", t_unix_s=T0 + 5)
    recorder = Recorder()

    async def body() -> None:
        server = Server(settings, metrics_listener=recorder, alert_ack_listener=recorder)
        async with running(server):
            port = server.http_port
            assert port is not None
            await publish(broker, "p1", [(topic("p1", "status"), status.to_json())], retain=True)
            await publish(broker, "p1", beats_payloads(beats))
            await publish(broker, "p1", [(topic("p1", "metrics"), w.to_json()) for w in windows])
            # As admin: tests.infra's ACL gives therapists no write access to alerts/ack
            # (docs/mqtt.md says they publish there); a denied publish is dropped silently.
            await publish(broker, "admin", [(topic("p1", "alerts/ack"), ack.to_json())])
            await until(lambda: server.stats.acked == 8, lambda: f"8 acks: {server.stats}")

            code, h = await health(port)
            assert code == 200, h
            assert h["status"] == "ok" and h["broker_connected"] and h["store_ok"]
            assert 0 <= h["last_message_age_s"] < STEP and h["backlog"] == 0
            assert h["patients_online"] == 1
            m = await scrape(port)
            for kind, n in (("beats", 2), ("metrics", 4), ("status", 1), ("alerts/ack", 1)):
                assert m[f'hrvstream_messages_received_total{{kind="{kind}"}}'] == n
            assert m["hrvstream_beats_stored_total"] == 2 * BEATS_PER_MESSAGE
            assert m["hrvstream_metrics_stored_total"] == 4
            assert m["hrvstream_listener_errors_total"] == 1
            assert m["hrvstream_store_write_seconds_count"] >= 1
            assert m['hrvstream_store_write_seconds{quantile="0.99"}'] > 0
            p50 = m['hrvstream_publish_to_stored_seconds{quantile="0.5"}']
            p99 = m['hrvstream_publish_to_stored_seconds{quantile="0.99"}']
            assert 0 < p50 <= p99 < STEP
            assert m["hrvstream_backlog_messages"] == 0
            assert m["hrvstream_broker_connected"] == 1
            assert m["hrvstream_broker_reconnects_total"] == 0
            assert m['hrvstream_store_write_errors_total{error="unavailable"}'] == 0

            assert recorder.metrics == windows and recorder.acks == [ack]
            assert server.statuses == {"p1": status}
            stored = await server.store.metrics("p1", 0, 4e9)
            assert stored == [
                MetricRow("p1", w.t_unix_s, w.window_s, dict(w.metric_values())) for w in windows
            ]

            # The alert engine's way out: stored, then published to the therapists.
            alert = AlertMessage(
                alert_id="a-1",
                patient="p1",
                state="raised",
                rule="rmssd_drop",
                severity="warning",
                t_unix_s=T0 + 300,
                explanation={"rmssd_ms": 21.5, "rule": "renamed", "why": "drop"},
            )
            async with subscriber(
                broker.url("t1"), [topic("p1", "alerts")], password=broker.password("t1")
            ) as therapist:
                await server.publish_alert(alert)
                got = await therapist.wait(1)
            assert [m.payload for m in got] == [alert.to_json()]
            assert await server.store.alerts("p1") == [
                AlertRow(
                    "a-1",
                    "p1",
                    T0 + 300,
                    "raised",
                    "rmssd_drop",
                    "warning",
                    {"rmssd_ms": 21.5, "rule_": "renamed", "why": "drop"},
                )
            ]

            # The broker goes away: 503; it comes back: reconnected, 200.
            await asyncio.to_thread(broker.stop)
            await until(lambda: _broker_down(port), "503 with the broker down")
            with pytest.raises(BrokerUnavailable):
                await server.publish_alert(alert)
            await asyncio.to_thread(broker.start)
            await until(lambda: _healthy(port), "200 after the broker is back")
            m = await scrape(port)
            assert m["hrvstream_broker_reconnects_total"] == 1
            assert m["hrvstream_broker_connect_failures_total"] >= 1

            # And it still stores.
            more = session_messages("p1", "s-1", 2, seq0=2)
            await publish(broker, "p1", beats_payloads(more))
            await until(lambda: server.stats.beats_stored == 4 * BEATS_PER_MESSAGE, "4 messages")

    run(body)


async def _broker_down(port: int) -> bool:
    status, h = await health(port)
    return status == 503 and not h["broker_connected"] and "broker disconnected" in h["problems"]


# == (g) shared subscription: two servers split the load =================================


def test_shared_subscription_splits_the_messages(
    tmp_path: Path, mosquitto_factory: MosquittoFactory
) -> None:
    broker = mosquitto_factory(hrv_config())
    db = tmp_path / "shared.db"
    store = {"kind": "sqlite", "path": str(db)}
    a, b = (
        load_server_settings(
            write_config(
                tmp_path / f"{name}.toml",
                broker,
                client_id=f"srv-{name}",
                shared_group="ingest",
                store=store,
            ),
            {},
        )
        for name in ("a", "b")
    )
    m1 = session_messages("p1", "s-1", 40)
    m2 = session_messages("p2", "s-2", 40)

    async def body() -> None:
        async with running(Server(a)) as sa, running(Server(b)) as sb:
            await asyncio.gather(
                publish(broker, "p1", beats_payloads(m1)),
                publish(broker, "p2", beats_payloads(m2)),
            )
            await until(
                lambda: sa.stats.acked + sb.stats.acked == 80,
                lambda: f"80 acks in all: {sa.stats.acked} + {sb.stats.acked}",
            )
            assert sa.stats.acked > 0 and sb.stats.acked > 0, "one server got everything"
            assert sa.stats.received.total() + sb.stats.received.total() == 80
        assert await stored_beats(db, ["p1", "p2"]) == expected_rows([*m1, *m2])

    run(body)


def test_graceful_stop_stores_and_acks_what_was_received(
    tmp_path: Path, mosquitto_factory: MosquittoFactory
) -> None:
    """SIGTERM/stop: the batch in hand is stored and acknowledged, nothing comes back."""
    broker = mosquitto_factory(hrv_config())
    cfg = write_config(tmp_path / "server.toml", broker, server={"batch_max_ms": 5000})
    settings = load_server_settings(cfg, {})
    msgs = session_messages("p1", "s-1", 5)

    async def body() -> None:
        async with running(Server(settings)) as server:
            await publish(broker, "p1", beats_payloads(msgs))
            # A long batch window: the messages wait in the batch until the stop.
            await until(lambda: server.stats.received["beats"] == 5, "5 received")
            assert server.stats.acked == 0
        assert server.stats.acked == 5
        assert await stored_beats(settings.store.path, ["p1"]) == expected_rows(msgs)
        # Started again with the same session: the broker has nothing left to deliver.
        async with running(Server(dataclasses.replace(settings, batch_max_ms=20))) as again:
            await publish(broker, "p1", beats_payloads(session_messages("p1", "s-1", 1, seq0=5)))
            await until(lambda: again.stats.acked == 1, "the new message")
            assert again.stats.received["beats"] == 1

    run(body)


def test_sigterm_stores_what_was_received_and_exits_cleanly(
    tmp_path: Path, mosquitto_factory: MosquittoFactory
) -> None:
    """``python -m hrvstream.server``: SIGTERM -> the batch in hand stored, exit status 0."""
    broker = mosquitto_factory(hrv_config())
    port = free_port()
    # A batch window far longer than the test: only the shutdown can store the batch.
    cfg = write_config(
        tmp_path / "server.toml",
        broker,
        http=f"127.0.0.1:{port}",
        server={"batch_max_ms": 600_000},
    )
    msgs = session_messages("p1", "s-1", 3)

    async def body() -> None:
        with server_process(cfg, port, {}) as sp:
            await until(lambda: _healthy(port), lambda: f"the server to be healthy\n{sp.log()}")
            await publish(broker, "p1", beats_payloads(msgs))
            m = await wait_metric(
                sp, 'hrvstream_messages_received_total{kind="beats"}', lambda v: v == 3, "3 in"
            )
            assert m["hrvstream_messages_acked_total"] == 0
            assert m["hrvstream_backlog_messages"] == 3
            sp.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(sp.proc.wait, STEP)
            assert code == 0, sp.log()
            assert "SIGTERM: shutting down" in sp.log()
            assert "Traceback" not in sp.log()
        assert await stored_beats(tmp_path / "server.db", ["p1"]) == expected_rows(msgs)

    run(body)
