"""End to end: a recording through the real agent CLI, mosquitto and the real server CLI
into the database, every beat exactly once.

The agent (``hrvstream replay INPUT --broker mqtts://p1@... --speed max``) publishes as
the patient ``p1`` with its password file and the broker's CA; mosquitto has the
project's password file and ACL (:func:`hrv_config`) and a TLS listener; two servers
(``hrvstream server --config``), each with its own persistent session as the user
``server``, write one to VictoriaMetrics through InfluxStore (the production path), the
other to SQLite. One replay feeds both. What each database holds is compared beat by
beat with the recording encoded as a strap sends it (RR intervals at 1/1024 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hrvstream.adapters.sqlite_store import SqliteStore
from hrvstream.store import BeatRow
from tests.conftest import require
from tests.e2e_helpers import (
    BEATS_STORED,
    DEPLOY_LIMITS,
    PATIENT,
    Recording,
    VmBeats,
    check_sqlite_session,
    check_vm_beats,
    expected_recording,
    free_http_port,
    influx_store,
    replay,
    replay_args,
    run,
    secret_file,
    server_config,
    server_process,
    vm_beats,
)
from tests.infra import hrv_config
from tests.infra.mosquitto import MosquittoBroker, find_mosquitto
from tests.infra.victoriametrics import VictoriaMetrics, victoria_metrics_binary

LONG = "pyhrv_nsrdb/SampleNNISeriesLong_ms.txt"  # 4,684 beats, 60 min
METRICS_STORED = "hrvstream_metrics_stored_total"


@dataclass
class Delivered:
    """What one replay left in both databases, and what the servers counted."""

    recording: Recording
    started_unix: float
    ended_unix: float
    agent_stderr: str
    published: int
    vm: VmBeats
    vm_server: dict[str, float]
    sqlite_rows: list[BeatRow]
    sqlite_server: dict[str, float]


@pytest.fixture(scope="module")
def delivered(tmp_path_factory: pytest.TempPathFactory, recordings: Path) -> Iterator[Delivered]:
    if find_mosquitto() is None:
        require("mosquitto (apt-get install mosquitto mosquitto-clients)")
    vm_binary = victoria_metrics_binary()
    if vm_binary is None:
        require("the victoria-metrics binary (Debian package victoria-metrics)")
    tmp = tmp_path_factory.mktemp("e2e")
    recording = expected_recording(recordings / LONG)
    n = len(recording.beats)
    with contextlib.ExitStack() as stack:
        broker = MosquittoBroker(hrv_config(tls=True, **DEPLOY_LIMITS), tmp / "mosquitto")
        stack.enter_context(broker)
        # No deduplication: a beat written twice would be exported twice.
        vm = VictoriaMetrics(tmp / "vm", binary=vm_binary, dedup=False)
        stack.enter_context(vm)
        vm_port, sqlite_port = free_http_port(), free_http_port()
        vm_cfg = server_config(
            tmp / "vm-server.toml",
            broker,
            store=influx_store(vm),
            http_port=vm_port,
            client_id="hrvstream-server-vm",
        )
        db = tmp / "hrv.db"
        sqlite_cfg = server_config(
            tmp / "sqlite-server.toml",
            broker,
            store={"kind": "sqlite", "path": str(db)},
            http_port=sqlite_port,
            client_id="hrvstream-server-sqlite",
        )
        pw = secret_file(tmp / "p1.password", broker.password(PATIENT))
        agent = replay_args(
            recording.path,
            broker.url(PATIENT, tls=True),
            speed="max",
            ca_file=broker.ca_file,
            password_file=pw,
        )
        out: list[Delivered] = []

        async def body() -> None:
            env = {"HRVSTREAM_INFLUX_TOKEN": "test-token"}
            async with (
                server_process(vm_cfg, vm_port, env) as vm_server,
                server_process(sqlite_cfg, sqlite_port) as sqlite_server,
            ):
                started = time.time()
                done = await asyncio.to_thread(replay, agent, 180.0)
                ended = time.time()
                assert done.returncode == 0, done.stderr[-4000:]
                # Beats messages and metrics messages, all acknowledged by the broker.
                published = int(done.stderr.split("hrvstream: published ")[1].split()[0])
                windows = published - len(recording.messages)
                for server in (vm_server, sqlite_server):
                    await server.wait_metric(BEATS_STORED, lambda v: v >= n, f"{n} beats stored")
                    await server.wait_metric(
                        METRICS_STORED, lambda v: v >= windows, f"{windows} windows stored"
                    )
                vm_metrics = await vm_server.metrics()
                sqlite_metrics = await sqlite_server.metrics()
            store = SqliteStore(db)
            try:
                rows = await store.beats(PATIENT, 0, 4e9)
            finally:
                await store.close()
            out.append(
                Delivered(
                    recording,
                    started,
                    ended,
                    done.stderr,
                    published,
                    await asyncio.to_thread(vm_beats, vm),
                    vm_metrics,
                    rows,
                    sqlite_metrics,
                )
            )

        run(body, timeout=240)
        yield out[0]


def _server_counted_each_message_once(delivered: Delivered, metrics: dict[str, float]) -> None:
    recording = delivered.recording
    assert metrics[BEATS_STORED] == len(recording.beats)
    # Everything the agent published (beats and metrics windows) stored once.
    assert metrics[METRICS_STORED] == delivered.published - len(recording.messages)
    assert metrics['hrvstream_messages_received_total{kind="beats"}'] == len(recording.messages)
    assert metrics["hrvstream_beats_dropped_total"] == 0
    bad = {k: v for k, v in metrics.items() if k.startswith("hrvstream_bad_messages") and v}
    assert not bad
    assert metrics['hrvstream_store_write_errors_total{error="unavailable"}'] == 0


def test_agent_cli_ends_cleanly(delivered: Delivered) -> None:
    err = delivered.agent_stderr
    assert "Traceback" not in err and "WARNING" not in err and "ERROR" not in err, err
    # A window every 5 s of recording from the first full one on.
    windows = delivered.published - len(delivered.recording.messages)
    assert 0.9 * delivered.recording.duration_s / 5 < windows <= delivered.recording.duration_s / 5


def test_recording_reaches_victoria_metrics_exactly_once(delivered: Delivered) -> None:
    check_vm_beats(delivered.vm, delivered.recording, "VictoriaMetrics")
    _server_counted_each_message_once(delivered, delivered.vm_server)
    # Replayed as if live: the first beat is "now" (beat times then run ahead of the
    # clock by up to the recording's length: --speed max compresses an hour).
    first_s = delivered.vm.fields["rr_ms"][0][0] / 1000
    assert delivered.started_unix - 2 < first_s < delivered.ended_unix


def test_recording_reaches_sqlite_exactly_once(delivered: Delivered) -> None:
    rows = delivered.sqlite_rows
    sessions = {r.session for r in rows}
    assert len(sessions) == 1, sessions
    origin = check_sqlite_session(rows, delivered.recording.beats, "SQLite")
    assert delivered.started_unix - 2 < origin < delivered.ended_unix
    _server_counted_each_message_once(delivered, delivered.sqlite_server)
    # The same beats, the same times, in both databases (VictoriaMetrics keeps ms).
    vm_ms = [ms for ms, _ in delivered.vm.fields["rr_ms"]]
    assert vm_ms == [round(r.t_unix_s * 1e6) // 1000 for r in rows]
