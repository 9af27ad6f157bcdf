"""InfluxStore: line protocol, Flux, batching, retries, outages.

Three kinds of tests:

* **Text** - the line protocol and Flux the store generates, escaping, injection.
* **Scripted HTTP** (:class:`ScriptedInflux`) - a small aiohttp server on a loopback port
  answering ``/api/v2/write`` with the statuses a test scripts (503, 401, 413, a hang ...)
  and ``/api/v2/query`` with canned annotated CSV. It is **not** InfluxDB: InfluxDB 2
  cannot be installed here. The CSV bodies below were written by hand in the format
  InfluxDB 2 returns for these queries (annotations ``#datatype,#group,#default``,
  CRLF line ends) and are marked as such; they test our parsing through the real client,
  not InfluxDB's query engine.
* **Real VictoriaMetrics** (:mod:`tests.infra.victoriametrics`) - the write path end to
  end through ``influxdb-client``: exact values, exactly once, outages.

Every test runs its own event loop; nothing sleeps to synchronise (waits are on events or
on the store's flush, each bounded).
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from hrvstream.adapters.influx import (
    InfluxStore,
    alert_line,
    beat_line,
    flux_alerts,
    flux_beats,
    flux_latest_metrics,
    flux_metrics,
    flux_string,
    flux_time,
    metric_line,
)
from hrvstream.store import (
    METRIC_NAMES,
    AlertRow,
    BeatRow,
    InvalidIdentifier,
    MetricRow,
    Store,
    StoreError,
    StoreUnavailable,
    time_key_us,
)
from tests.conftest import require
from tests.infra.victoriametrics import Series, VictoriaMetrics, victoria_metrics_binary

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
TICK_MS = 1000 / 1024  # strap RR resolution
STEP = 30.0  # bound of any single wait, seconds


def run(body: Callable[[], Awaitable[None]], timeout: float = 120.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await body()

    asyncio.run(bounded())


def make_beats(patient: str, n: int, t0: float = T0, seq0: int = 0) -> list[BeatRow]:
    """Beats as a strap gives them: RR in 1/1024 s, times accumulating, a gap now and then."""
    rows: list[BeatRow] = []
    t = t0
    for i in range(n):
        rr = (620 + (i * 7919) % 500) * TICK_MS  # 605-1092 ms
        t += rr / 1000
        rows.append(BeatRow(patient, t, rr, (seq0 + i) % 97 == 0, "session-1", seq0 + i))
    return rows


def chunks(rows: list[BeatRow], size: int) -> Iterator[list[BeatRow]]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


# -- text: line protocol ---------------------------------------------------------------


def test_beat_line_is_numbers_keyed_by_patient_and_time() -> None:
    row = BeatRow("p-01", T0 + 0.123456789, 813.4765625, True, "sess 1", 42)
    assert beat_line(row) == (
        "beats,patient=p-01 rr_ms=813.4765625,after_gap=1i,seq=42i 1700000000123457000"
    )
    # The session is not in the point (see the adapter's docstring).
    assert "sess" not in beat_line(row)


def test_metric_line_leaves_missing_values_out() -> None:
    row = MetricRow("p1", T0, 300.0, {"rmssd_ms": 41.25, "lf_hf": None, "sdnn_ms": math.nan})
    assert metric_line(row) == "hrv,patient=p1 window_s=300.0,rmssd_ms=41.25 1700000000000000000"
    zero = MetricRow("p1", T0, 300.0, {"pnn50_pct": 0.0})
    assert "pnn50_pct=0.0" in metric_line(zero)


def test_alert_line() -> None:
    row = AlertRow(
        "a-7", "p1", T0, "firing", "rmssd_drop", "warning", {"drop_pct": 40, "note": 'a "b"\\'}
    )
    assert alert_line(row) == (
        "alerts,alert_id=a-7,patient=p1,rule=rmssd_drop,severity=warning,state=firing "
        'event=1i,drop_pct=40.0,note="a \\"b\\"\\\\" 1700000000000000000'
    )
    with pytest.raises(StoreError, match="reserved"):
        alert_line(AlertRow("a", "p", T0, "firing", "r", "info", {"event": 2.0}))


# -- text: Flux ------------------------------------------------------------------------


def test_flux_beats_text() -> None:
    assert flux_beats("hrv", "p1", T0, T0 + 600.5) == (
        'from(bucket: "hrv")\n'
        "  |> range(start: 2023-11-14T22:13:20.000000Z, stop: 2023-11-14T22:23:20.500000Z)\n"
        '  |> filter(fn: (r) => r._measurement == "beats")\n'
        '  |> filter(fn: (r) => r.patient == "p1")\n'
        '  |> filter(fn: (r) => r._field == "rr_ms" or r._field == "after_gap" or '
        'r._field == "seq")\n'
        '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
        "  |> group()\n"
        '  |> keep(columns: ["_time", "rr_ms", "after_gap", "seq"])\n'
        '  |> sort(columns: ["_time"])'
    )


def test_flux_metrics_latest_and_alerts_text() -> None:
    some = flux_metrics("hrv", "p1", T0, T0 + 1, names=["rmssd_ms"])
    assert 'r._field == "window_s" or r._field == "rmssd_ms"' in some
    assert 'keep(columns: ["_time", "window_s", "rmssd_ms"])' in some
    every = flux_metrics("hrv", "p1", T0, T0 + 1)
    assert "r._field ==" not in every  # all fields
    assert all(f'"{n}"' in every for n in METRIC_NAMES)
    latest = flux_latest_metrics("hrv", "p1")
    assert "range(start: 1970-01-01T00:00:00.000000Z)" in latest
    assert "|> last()" in latest
    everyone = flux_alerts("hrv")
    assert "r.patient" not in everyone
    assert "range(start: 1970-01-01T00:00:00.000000Z)\n" in everyone
    one = flux_alerts("hrv", "p2", T0, T0 + 10)
    assert 'r.patient == "p2"' in one
    assert "stop: 2023-11-14T22:13:30.000000Z" in one


def test_flux_time() -> None:
    assert flux_time(0) == "1970-01-01T00:00:00.000000Z"
    assert flux_time(time_key_us(T0 + 0.000001)) == "2023-11-14T22:13:20.000001Z"
    with pytest.raises(ValueError):
        flux_time(-1)


def test_flux_string_escapes_everything_that_could_end_or_interpolate() -> None:
    assert flux_string("plain-bucket_1") == '"plain-bucket_1"'
    assert flux_string('a"b') == '"a\\"b"'
    assert flux_string("a\\b") == '"a\\\\b"'
    assert flux_string("${x}") == '"\\x24{x}"'
    assert flux_string("a\nb\x00") == '"a\\x0ab\\x00"'
    assert flux_string("Zürich") == '"Zürich"'
    # Whatever the input, the literal has exactly two unescaped quotes: its own.
    nasty = '") |> drop() //\\"${r._value}\n'
    lit = flux_string(nasty)
    unescaped = [i for i, c in enumerate(lit) if c == '"' and lit[i - 1 : i] != "\\"]
    assert unescaped == [0, len(lit) - 1]


@pytest.mark.parametrize(
    "patient",
    [
        'p1" or r._measurement != "',
        'p1") |> drop(columns: ["patient"]) //',
        "${p}",
        "p1\n|> yield()",
        "",
        "p 1",
    ],
)
def test_flux_injection_is_refused(patient: str) -> None:
    with pytest.raises(InvalidIdentifier):
        flux_beats("hrv", patient, T0, T0 + 1)
    with pytest.raises(InvalidIdentifier):
        flux_metrics("hrv", patient, T0, T0 + 1)
    with pytest.raises(InvalidIdentifier):
        flux_latest_metrics("hrv", patient)
    with pytest.raises(InvalidIdentifier):
        flux_alerts("hrv", patient)


def test_flux_bucket_is_escaped_not_refused() -> None:
    assert flux_beats('b"x', "p1", T0, T0 + 1).startswith('from(bucket: "b\\"x")')


def test_bad_ranges_and_names() -> None:
    with pytest.raises(ValueError, match="before start"):
        flux_beats("hrv", "p1", T0 + 1, T0)
    with pytest.raises(ValueError, match="unknown metric"):
        flux_metrics("hrv", "p1", T0, T0 + 1, names=['rmssd_ms") or (r) => true //'])


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        InfluxStore("http://x", "t", "o", "b", batch_size=0)
    with pytest.raises(ValueError):
        InfluxStore("http://x", "t", "o", "b", batch_size=10, max_buffered_points=5)
    with pytest.raises(ValueError):
        InfluxStore("http://x", "t", "o", "b", flush_timeout_s=0)
    with pytest.raises(ValueError):
        InfluxStore("http://x", "t", "o", "")
    assert isinstance(InfluxStore("http://x", "t", "o", "b"), Store)


# -- scripted HTTP server (not InfluxDB) -------------------------------------------------

Answer = int | str  # an HTTP status, or "hang" (never answer)


class ScriptedInflux:
    """Answers ``/api/v2/write`` from a script and ``/api/v2/query`` with canned CSV."""

    def __init__(self) -> None:
        self.script: list[Answer] = []
        self.default: Answer = 204
        self.retry_after: str | None = None
        self.writes: list[tuple[int, bytes, dict[str, str]]] = []  # (status, body, query)
        self.queries: list[dict[str, Any]] = []
        self.csv = ""
        self.query_status = 200
        self._release = asyncio.Event()
        self._arrived = asyncio.Event()
        self.url = ""

    async def _write(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        answer = self.script.pop(0) if self.script else self.default
        self.writes.append((answer if isinstance(answer, int) else 0, body, dict(request.query)))
        self._arrived.set()
        if answer == "hang":
            await self._release.wait()
            answer = 503
        assert isinstance(answer, int)
        if answer == 204:
            return web.Response(status=204)
        headers = {"Retry-After": self.retry_after} if self.retry_after else {}
        message = {"code": "scripted", "message": f"scripted status {answer}"}
        return web.json_response(message, status=answer, headers=headers)

    async def _query(self, request: web.Request) -> web.StreamResponse:
        self.queries.append(await request.json())
        if self.query_status != 200:
            message = {"code": "invalid", "message": "compilation failed: scripted"}
            return web.json_response(message, status=self.query_status)
        return web.Response(body=self.csv.encode(), content_type="text/csv")

    def delivered(self) -> list[bytes]:
        return [body for status, body, _ in self.writes if status == 204]

    async def until_writes(self, n: int) -> None:
        """Wait (bounded) until ``n`` write requests have arrived."""
        async with asyncio.timeout(STEP):
            while len(self.writes) < n:
                self._arrived.clear()
                await self._arrived.wait()

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[ScriptedInflux]:
        app = web.Application()
        app.router.add_post("/api/v2/write", self._write)
        app.router.add_post("/api/v2/query", self._query)
        runner = web.AppRunner(app)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        await web.SockSite(runner, sock).start()
        try:
            yield self
        finally:
            self._release.set()
            await runner.cleanup()
            sock.close()


def scripted_store(server: ScriptedInflux, **kwargs: Any) -> InfluxStore:
    settings: dict[str, Any] = {
        "batch_size": 1000,
        "flush_interval_s": 60.0,  # only size and flush() send, unless a test says otherwise
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
        "request_timeout_s": 5.0,
        "flush_timeout_s": STEP,
    }
    settings.update(kwargs)
    return InfluxStore(server.url, "secret-token", "my-org", "my-bucket", **settings)


def test_batches_by_size_then_flush_sends_the_rest() -> None:
    rows = make_beats("p1", 250)

    async def body() -> None:
        async with ScriptedInflux().serving() as server:
            store = scripted_store(server, batch_size=100)
            for part in chunks(rows, 7):
                await store.write_beats(part)
            await server.until_writes(2)  # two full batches, without any flush
            assert [body.count(b"\n") + 1 for body in server.delivered()] == [100, 100]
            await store.flush()
            await store.close()
            bodies = server.delivered()
            assert [b.count(b"\n") + 1 for b in bodies] == [100, 100, 50]
            assert b"\n".join(bodies).decode() == "\n".join(beat_line(r) for r in rows)
            _, _, query = server.writes[0]
            assert query == {"org": "my-org", "bucket": "my-bucket", "precision": "ns"}

    run(body)


def test_flush_interval_sends_a_small_batch() -> None:
    async def body() -> None:
        async with ScriptedInflux().serving() as server:
            store = scripted_store(server, flush_interval_s=0.05)
            await store.write_beats(make_beats("p1", 3))
            await server.until_writes(1)  # no flush(): the interval sent it
            assert len(server.delivered()) == 1
            await store.close()

    run(body)


def test_5xx_and_connection_errors_are_retried_and_delivered_once() -> None:
    rows = make_beats("p1", 10)

    async def body() -> None:
        async with ScriptedInflux().serving() as server:
            server.script = [503, 500, 502]
            store = scripted_store(server)
            await store.write_beats(rows)
            await store.flush()
            assert [s for s, _, _ in server.writes] == [503, 500, 502, 204]
            assert len({b for _, b, _ in server.writes}) == 1  # the same batch each time
            assert store.written_points == 10
            assert store.consecutive_failures == 0
            assert store.last_error is None
            await store.close()

    run(body)


def test_retry_after_is_honoured() -> None:
    async def body() -> None:
        async with ScriptedInflux().serving() as server:
            server.script = [429]
            server.retry_after = "0.3"
            store = scripted_store(server, backoff_max_s=5.0)
            await store.write_beats(make_beats("p1", 1))
            started = time.monotonic()
            await store.flush()
            assert time.monotonic() - started >= 0.3  # a lower bound, not a speed
            await store.close()

    run(body)


def test_a_hung_request_times_out_and_is_retried() -> None:
    async def body() -> None:
        async with ScriptedInflux().serving() as server:
            server.script = ["hang"]
            store = scripted_store(server, request_timeout_s=0.2)
            await store.write_beats(make_beats("p1", 5))
            await store.flush()
            assert [s for s, _, _ in server.writes] == [0, 204]
            assert server.writes[0][1] == server.writes[1][1]
            await store.close()

    run(body)


def test_refused_points_are_dropped_and_reported_once() -> None:
    async def body() -> None:
        async with ScriptedInflux().serving() as server:
            server.script = [400]
            store = scripted_store(server)
            await store.write_beats(make_beats("p1", 5))
            with pytest.raises(StoreError, match="refused 5 points") as info:
                await store.flush()
            assert not isinstance(info.value, StoreUnavailable)
            assert store.buffered_points == 0
            assert store.rejected_points == 5
            await store.write_beats(make_beats("p1", 5, t0=T0 + 100))
            await store.flush()  # reported once; the next batch goes through
            assert len(server.delivered()) == 1
            await store.close()

    run(body)


def test_a_bad_token_fails_flush_fast_and_keeps_the_points() -> None:
    async def body() -> None:
        async with ScriptedInflux().serving() as server:
            server.default = 401
            store = scripted_store(server, flush_timeout_s=STEP)
            await store.write_beats(make_beats("p1", 5))
            started = time.monotonic()
            with pytest.raises(StoreError, match="token") as info:
                await store.flush()
            assert not isinstance(info.value, StoreUnavailable)
            assert time.monotonic() - started < STEP / 2  # not the deadline
            assert store.buffered_points == 5
            server.default = 204  # the operator fixes the token
            await store.flush()
            assert store.buffered_points == 0
            assert len(server.delivered()) == 1
            await store.close()

    run(body)


def test_too_large_batches_are_halved() -> None:
    async def body() -> None:
        async with ScriptedInflux().serving() as server:
            server.script = [413]
            store = scripted_store(server, batch_size=10)
            rows = make_beats("p1", 10)
            await store.write_beats(rows)
            await store.flush()
            assert [(s, b.count(b"\n") + 1) for s, b, _ in server.writes] == [
                (413, 10),
                (204, 5),
                (204, 5),
            ]
            assert store.written_points == 10
            await store.close()

    run(body)


def test_full_buffer_refuses_whole_writes_and_close_reports_losses() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"

    async def body() -> None:
        store = InfluxStore(
            url,
            "t",
            "o",
            "b",
            batch_size=10,
            max_buffered_points=25,
            backoff_initial_s=0.01,
            backoff_max_s=0.05,
        )
        await store.write_beats(make_beats("p1", 20))
        with pytest.raises(StoreUnavailable, match="were not accepted"):
            await store.write_beats(make_beats("p1", 6, t0=T0 + 100))
        assert store.buffered_points == 20  # nothing of the refused write went in
        await store.write_beats(make_beats("p1", 5, t0=T0 + 200))  # this one fits
        with pytest.raises(StoreUnavailable, match="buffered"):
            await store.flush(timeout_s=0.2)
        assert store.consecutive_failures >= 1
        assert "Cannot connect" in (store.last_error or "")
        with pytest.raises(StoreUnavailable, match="closed with 25 points not written"):
            await store.close(timeout_s=0.1)
        with pytest.raises(StoreError, match="closed"):
            await store.write_beats(make_beats("p1", 1))

    run(body)


# Annotated CSV in the format InfluxDB 2 answers the store's Flux with. WRITTEN BY HAND for
# these tests (no InfluxDB 2 here), not recorded from a server.
CSV_BEATS = (
    "#datatype,string,long,dateTime:RFC3339,long,double,long\r\n"
    "#group,false,false,false,false,false,false\r\n"
    "#default,_result,,,,,\r\n"
    ",result,table,_time,after_gap,rr_ms,seq\r\n"
    ",,0,2023-11-14T22:13:20.812500Z,1,812.5,0\r\n"
    ",,0,2023-11-14T22:13:21.625977Z,0,813.4765625,1\r\n"
    "\r\n"
)
CSV_METRICS = (
    "#datatype,string,long,dateTime:RFC3339,double,double,double\r\n"
    "#group,false,false,false,false,false,false\r\n"
    "#default,_result,,,,,\r\n"
    ",result,table,_time,window_s,rmssd_ms,lf_hf\r\n"
    ",,0,2023-11-14T22:13:25Z,300,41.25,1.5\r\n"
    ",,0,2023-11-14T22:13:30Z,300,,2.25\r\n"
    "\r\n"
)
CSV_LATEST = (
    "#datatype,string,long,dateTime:RFC3339,string,double\r\n"
    "#group,false,false,false,true,false\r\n"
    "#default,_result,,,,\r\n"
    ",result,table,_time,_field,_value\r\n"
    ",,0,2023-11-14T22:13:30Z,window_s,300\r\n"
    ",,1,2023-11-14T22:13:30Z,lf_hf,2.25\r\n"
    ",,2,2023-11-14T22:13:25Z,rmssd_ms,41.25\r\n"
    "\r\n"
)
CSV_ALERTS = (
    "#datatype,string,long,dateTime:RFC3339,string,string,string,string,string,"
    "double,long,string\r\n"
    "#group,false,false,false,false,false,false,false,false,false,false,false\r\n"
    "#default,_result,,,,,,,,,,\r\n"
    ",result,table,_time,alert_id,patient,rule,severity,state,drop_pct,event,note\r\n"
    ",,0,2023-11-14T22:14:20Z,a-1,p1,rmssd_drop,warning,firing,41.5,1,\r\n"
    ',,0,2023-11-14T22:15:20Z,a-1,p1,rmssd_drop,warning,resolved,,1,"back, ok"\r\n'
    "\r\n"
)


def test_queries_send_flux_and_parse_annotated_csv() -> None:
    async def body() -> None:
        async with ScriptedInflux().serving() as server:
            store = scripted_store(server)

            server.csv = CSV_BEATS
            beats = await store.beats("p1", T0, T0 + 2)
            sent = server.queries[-1]
            assert sent["query"] == flux_beats("my-bucket", "p1", T0, T0 + 2)
            assert sent["dialect"]["annotations"] == ["datatype", "group", "default"]
            assert beats == [
                BeatRow("p1", T0 + 0.8125, 812.5, True, "", 0),
                BeatRow("p1", T0 + 1.625977, 813.4765625, False, "", 1),
            ]

            server.csv = CSV_METRICS
            rows = await store.metrics("p1", T0, T0 + 60, names=["rmssd_ms", "lf_hf"])
            assert server.queries[-1]["query"] == flux_metrics(
                "my-bucket", "p1", T0, T0 + 60, ["rmssd_ms", "lf_hf"]
            )
            assert rows == [
                MetricRow("p1", T0 + 5, 300.0, {"rmssd_ms": 41.25, "lf_hf": 1.5}),
                MetricRow("p1", T0 + 10, 300.0, {"rmssd_ms": None, "lf_hf": 2.25}),
            ]

            server.csv = CSV_LATEST
            latest = await store.latest_metrics("p1")
            assert latest is not None
            assert latest.t_unix_s == T0 + 10
            assert latest.values["lf_hf"] == 2.25
            assert latest.values["rmssd_ms"] is None  # older than the latest window: missing
            assert set(latest.values) == set(METRIC_NAMES)

            server.csv = CSV_ALERTS
            alerts = await store.alerts("p1")
            assert alerts == [
                AlertRow(
                    "a-1", "p1", T0 + 60, "firing", "rmssd_drop", "warning", {"drop_pct": 41.5}
                ),
                AlertRow(
                    "a-1", "p1", T0 + 120, "resolved", "rmssd_drop", "warning", {"note": "back, ok"}
                ),
            ]

            server.csv = ""
            assert await store.beats("p1", T0, T0 + 2) == []
            assert await store.latest_metrics("p1") is None
            n = len(server.queries)
            assert await store.beats("p1", T0, T0) == []  # empty range: no query at all
            assert len(server.queries) == n
            with pytest.raises(InvalidIdentifier):
                await store.beats('p1" or true or "', T0, T0 + 2)
            assert len(server.queries) == n
            await store.close()

    run(body)


# An error reported inside a 200 response, as InfluxDB 2 does for runtime Flux errors.
# WRITTEN BY HAND in that format, not recorded.
CSV_ERROR = (
    "#datatype,string,string\r\n"
    "#group,true,true\r\n"
    "#default,,\r\n"
    ",error,reference\r\n"
    ',"failed to read meta data: panic: scripted",897\r\n'
    "\r\n"
)


def test_flux_errors_are_store_errors() -> None:
    async def body() -> None:
        async with ScriptedInflux().serving() as server:
            store = scripted_store(server)
            server.csv = CSV_ERROR
            with pytest.raises(StoreError, match="scripted") as info:
                await store.beats("p1", T0, T0 + 1)
            assert not isinstance(info.value, StoreUnavailable)
            server.query_status = 400
            with pytest.raises(StoreError, match="compilation failed") as info:
                await store.alerts()
            assert not isinstance(info.value, StoreUnavailable)
            await store.close()

    run(body)


def test_query_errors_are_translated() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"

    async def body() -> None:
        store = InfluxStore(url, "t", "o", "b")
        with pytest.raises(StoreUnavailable):
            await store.beats("p1", T0, T0 + 1)
        await store.close()

    run(body)


# -- real VictoriaMetrics ------------------------------------------------------------------


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    binary = victoria_metrics_binary()
    if binary is None:
        require("the victoria-metrics binary (Debian package victoria-metrics)")
    with VictoriaMetrics(tmp_path / "vm", binary=binary) as server:
        yield server


def vm_store(vm: VictoriaMetrics, **kwargs: Any) -> InfluxStore:
    settings: dict[str, Any] = {
        "batch_size": 1000,
        "flush_interval_s": 0.2,
        "backoff_initial_s": 0.02,
        "backoff_max_s": 0.2,
        "request_timeout_s": 5.0,
        "flush_timeout_s": STEP,
    }
    settings.update(kwargs)
    return InfluxStore(vm.url, "token-ignored-by-vm", "org", "bucket", **settings)


def exported(vm: VictoriaMetrics, match: str) -> dict[tuple[str, str], Series]:
    vm.force_flush()
    out: dict[tuple[str, str], Series] = {}
    for s in vm.export(match):
        key = (s.name, s.labels["patient"])
        assert key not in out, f"two series for {key}: {s.labels}"
        out[key] = s
    return out


def assert_beats_exactly_once(vm: VictoriaMetrics, expected: list[BeatRow]) -> None:
    series = exported(vm, '{__name__=~"beats_.*"}')
    patients = sorted({b.patient for b in expected})
    assert set(series) == {
        (f"beats_{f}", p) for f in ("rr_ms", "after_gap", "seq") for p in patients
    }
    for p in patients:
        mine = sorted((b for b in expected if b.patient == p), key=lambda b: b.t_unix_s)
        # VictoriaMetrics keeps milliseconds, truncated: our microsecond key // 1000.
        stamps = [time_key_us(b.t_unix_s) // 1000 for b in mine]
        assert len(set(stamps)) == len(stamps)  # beats are >= 600 ms apart: no collisions
        for field, want in (
            ("rr_ms", [b.rr_ms for b in mine]),
            ("after_gap", [1 if b.after_gap else 0 for b in mine]),
            ("seq", [b.seq for b in mine]),
        ):
            s = series[(f"beats_{field}", p)]
            assert s.labels == {"patient": p}  # no session label, no db label
            assert s.timestamps_ms == stamps, f"{field} of {p}: not exactly once"
            assert s.values == want, f"{field} of {p}: values differ"
            assert all(type(v) in (int, float) for v in s.values)  # JSON numbers


def test_10k_beats_of_two_patients_land_exactly_once_even_when_written_twice(
    vm: VictoriaMetrics,
) -> None:
    rows_a = make_beats("patient-a", 5000)
    rows_b = make_beats("patient-b", 5000, t0=T0 + 0.3333)
    mixed = [r for pair in zip(rows_a, rows_b, strict=True) for r in pair]

    async def body() -> None:
        store = vm_store(vm)
        for part in chunks(mixed, 13):  # as beats arrive: small writes, batched by the store
            await store.write_beats(part)
        await store.flush()
        assert store.written_points == 10_000
        assert store.consecutive_failures == 0
        await store.close()
        await asyncio.to_thread(assert_beats_exactly_once, vm, mixed)

        again = vm_store(vm, batch_size=777)  # a different batching: same points
        await again.write_beats(list(reversed(mixed)))
        await again.close()
        await asyncio.to_thread(assert_beats_exactly_once, vm, mixed)

    run(body)


def test_database_down_then_back_loses_and_duplicates_nothing(vm: VictoriaMetrics) -> None:
    before = make_beats("p1", 1000)
    during = make_beats("p1", 2000, t0=before[-1].t_unix_s, seq0=1000)
    after = make_beats("p1", 500, t0=during[-1].t_unix_s, seq0=3000)

    async def body() -> None:
        store = vm_store(vm)
        await store.write_beats(before)
        await store.flush()

        await asyncio.to_thread(vm.stop)
        for part in chunks(during, 50):
            await store.write_beats(part)  # accepted: buffered
        with pytest.raises(StoreUnavailable, match="buffered"):
            await store.flush(timeout_s=0.5)
        assert store.buffered_points == len(during)
        assert store.consecutive_failures >= 1

        await asyncio.to_thread(vm.start)  # same port, same data directory
        await store.write_beats(after)
        await store.flush()
        assert store.buffered_points == 0
        await store.close()
        await asyncio.to_thread(assert_beats_exactly_once, vm, before + during + after)

    run(body)


def test_live_stream_through_an_outage(vm: VictoriaMetrics) -> None:
    """Beats keep arriving while the database stops (requests in flight) and restarts."""
    stream = {p: make_beats(p, 4000, t0=T0 + k * 0.25) for k, p in enumerate(("p1", "p2"))}
    sent: list[BeatRow] = []

    async def produce(stop: asyncio.Event) -> None:
        i = 0
        while not stop.is_set() and i < 4000:
            part = [stream["p1"][i], stream["p2"][i]]
            await store.write_beats(part)
            sent.extend(part)
            i += 1
            await asyncio.sleep(0.001)  # pacing: beats arrive over time, not all at once

    store = vm_store(vm, batch_size=100, flush_interval_s=0.01)

    async def body() -> None:
        stop = asyncio.Event()
        producer = asyncio.create_task(produce(stop))
        await store.flush()
        await asyncio.to_thread(vm.stop)  # while the producer writes
        with pytest.raises(StoreUnavailable):
            await store.flush(timeout_s=0.3)
        await asyncio.to_thread(vm.start)
        await store.flush()
        stop.set()
        await producer
        await store.close()
        assert store.written_points == len(sent)
        await asyncio.to_thread(assert_beats_exactly_once, vm, sent)

    run(body)


def test_metrics_missing_values_are_omitted_not_zero(vm: VictoriaMetrics) -> None:
    full = {n: 1.5 + i for i, n in enumerate(METRIC_NAMES)}
    rows = [
        MetricRow("p1", T0 + 5, 300.0, full),
        MetricRow("p1", T0 + 10, 300.0, {**full, "rmssd_ms": None, "lf_hf": math.nan}),
        MetricRow("p1", T0 + 15, 300.0, {**full, "pnn50_pct": 0.0}),
    ]

    async def body() -> None:
        store = vm_store(vm)
        await store.write_metrics(rows)
        await store.write_metrics(rows)  # idempotent
        await store.close()

    run(body)
    series = exported(vm, '{__name__=~"hrv_.*"}')
    ms = [5000, 10000, 15000]
    base = int(T0 * 1000)
    assert series[("hrv_window_s", "p1")].values == [300, 300, 300]
    assert series[("hrv_sdnn_ms", "p1")].timestamps_ms == [base + t for t in ms]
    assert series[("hrv_rmssd_ms", "p1")].timestamps_ms == [base + 5000, base + 15000]
    assert series[("hrv_lf_hf", "p1")].timestamps_ms == [base + 5000, base + 15000]
    assert series[("hrv_pnn50_pct", "p1")].values == [full["pnn50_pct"]] * 2 + [0]
    assert set(series) == {(f"hrv_{n}", "p1") for n in ("window_s", *METRIC_NAMES)}


def test_alert_numbers_survive_strings_do_not(vm: VictoriaMetrics) -> None:
    """Why the schema is numbers: VictoriaMetrics stores a string field as 0."""
    row = AlertRow(
        "a-1", "p1", T0, "firing", "rmssd_drop", "warning", {"drop_pct": 41.5, "note": "x"}
    )

    async def body() -> None:
        store = vm_store(vm)
        await store.write_alerts([row, row])
        await store.close()

    run(body)
    vm.force_flush()
    by_name = {s.name: s for s in vm.export('{__name__=~"alerts_.*"}')}
    assert set(by_name) == {"alerts_event", "alerts_drop_pct", "alerts_note"}
    tags = {"alert_id": "a-1", "patient": "p1", "rule": "rmssd_drop", "severity": "warning"}
    assert by_name["alerts_drop_pct"].labels == {**tags, "state": "firing"}
    assert by_name["alerts_drop_pct"].values == [41.5]
    assert by_name["alerts_event"].values == [1]
    assert by_name["alerts_note"].values == [0]  # the string is gone


def test_without_dedup_victoria_metrics_keeps_rewrites(tmp_path: Path) -> None:
    """Why the fixture passes -dedup.minScrapeInterval=1ms."""
    binary = victoria_metrics_binary()
    if binary is None:
        require("the victoria-metrics binary (Debian package victoria-metrics)")
    line = "beats,patient=p1 rr_ms=812.5,after_gap=0i,seq=1i 1700000000123456789"
    with VictoriaMetrics(tmp_path / "raw", binary=binary, dedup=False) as raw:
        raw.write_line_protocol(line)
        raw.write_line_protocol(line)
        raw.force_flush()
        (s,) = raw.export('{__name__="beats_rr_ms"}')
        assert s.timestamps_ms == [1700000000123, 1700000000123]
    with VictoriaMetrics(tmp_path / "dedup", binary=binary) as dedup:
        dedup.write_line_protocol(line)
        dedup.write_line_protocol(line)
        dedup.force_flush()
        (s,) = dedup.export('{__name__="beats_rr_ms"}')
        assert s.timestamps_ms == [1700000000123]
        assert s.values == [812.5]


def test_victoria_metrics_restart_keeps_data_and_port(vm: VictoriaMetrics) -> None:
    vm.write_line_protocol("beats,patient=p1 rr_ms=800,after_gap=0i,seq=0i 1700000000000000000")
    port = vm.port
    vm.stop()
    assert not vm.healthy()
    vm.start()
    assert vm.port == port
    vm.force_flush()
    (s,) = vm.export('{__name__="beats_rr_ms"}')
    assert s.values == [800]
    vm.kill()
    assert not vm.running
    vm.start()
    assert vm.healthy()


def test_store_protocol_is_json_friendly() -> None:
    # The dashboard serialises query results; rows must be plain numbers and strings.
    row = BeatRow("p1", T0, 800.0, False, "s", 1)
    assert json.loads(json.dumps([row.t_unix_s, row.rr_ms, row.after_gap, row.seq])) == [
        T0,
        800.0,
        False,
        1,
    ]
