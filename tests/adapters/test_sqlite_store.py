"""SqliteStore: the embedded store, on real SQLite files (WAL).

Every test runs its own event loop (``asyncio.run``) on a fresh file under ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hrvstream.adapters.sqlite_store import SqliteStore
from hrvstream.store import (
    METRIC_NAMES,
    AlertRow,
    BeatRow,
    InvalidIdentifier,
    MetricRow,
    Store,
    StoreError,
    canonical_time,
)

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
TICK_MS = 1000 / 1024  # strap RR resolution


def run(body: Callable[[SqliteStore], Awaitable[None]], path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(path)
        try:
            async with asyncio.timeout(60):
                await body(store)
        finally:
            await store.close()

    asyncio.run(main())


def make_beats(patient: str, n: int, t0: float = T0, session: str = "s1") -> list[BeatRow]:
    rows: list[BeatRow] = []
    t = t0
    for i in range(n):
        rr = (780 + (i * 37) % 300) * TICK_MS
        t += rr / 1000
        rows.append(BeatRow(patient, t, rr, i % 50 == 0, session, i))
    return rows


def metric_row(patient: str, t: float, **values: float | None) -> MetricRow:
    return MetricRow(patient, t, 300.0, values)


def test_is_a_store(tmp_path: Path) -> None:
    async def body(store: SqliteStore) -> None:
        assert isinstance(store, Store)

    run(body, tmp_path / "db.sqlite")


def test_beats_are_idempotent_and_round_trip(tmp_path: Path) -> None:
    rows = make_beats("p1", 2000) + make_beats("p2", 1000, t0=T0 + 0.123)

    async def body(store: SqliteStore) -> None:
        await store.write_beats(rows)
        await store.write_beats(rows)  # the same beats again: still one copy
        await store.write_beats(rows[100:300])  # and a retried batch
        await store.flush()
        got = await store.beats("p1", 0, 2e9)
        assert got == rows[:2000]
        got2 = await store.beats("p2", 0, 2e9)
        assert got2 == rows[2000:]
        # Exact values, types and flags survive.
        assert all(isinstance(b.rr_ms, float) and isinstance(b.seq, int) for b in got)
        assert [b.after_gap for b in got] == [b.after_gap for b in rows[:2000]]

    path = tmp_path / "db.sqlite"
    run(body, path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM beats").fetchone() == (3000,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_rewrite_overwrites_last_write_wins(tmp_path: Path) -> None:
    first = BeatRow("p1", T0, 800.0, False, "s1", 1)
    second = BeatRow("p1", T0, 812.5, True, "s2", 7)

    async def body(store: SqliteStore) -> None:
        await store.write_beats([first])
        await store.write_beats([second])
        assert await store.beats("p1", T0, T0 + 1) == [second]

    run(body, tmp_path / "db.sqlite")


def test_beat_range_is_half_open_and_per_patient(tmp_path: Path) -> None:
    rows = make_beats("p1", 100)
    other = make_beats("p2", 100)

    async def body(store: SqliteStore) -> None:
        await store.write_beats(rows + other)
        start, end = rows[10].t_unix_s, rows[20].t_unix_s
        assert await store.beats("p1", start, end) == rows[10:20]
        assert await store.beats("p1", end, end) == []
        assert await store.beats("nobody", 0, 2e9) == []
        with pytest.raises(ValueError, match="before start"):
            await store.beats("p1", end, start)

    run(body, tmp_path / "db.sqlite")


def test_times_are_kept_to_the_microsecond(tmp_path: Path) -> None:
    t = T0 + 0.123_456_789
    row = BeatRow("p1", t, 800.0, False, "s", 0)
    assert row.t_unix_s == canonical_time(t) == T0 + 0.123457

    async def body(store: SqliteStore) -> None:
        await store.write_beats([row])
        # The same beat with a time differing below a microsecond is the same beat.
        await store.write_beats([BeatRow("p1", t + 2e-7, 801.0, False, "s", 0)])
        (got,) = await store.beats("p1", T0, T0 + 1)
        assert got.t_unix_s == canonical_time(t) == T0 + 0.123457
        assert got.rr_ms == 801.0

    run(body, tmp_path / "db.sqlite")


def test_metrics_missing_values_stay_missing(tmp_path: Path) -> None:
    full = {n: float(i) + 0.5 for i, n in enumerate(METRIC_NAMES)}
    rows = [
        MetricRow("p1", T0 + 5, 300.0, full),
        MetricRow("p1", T0 + 10, 300.0, {**full, "rmssd_ms": None, "lf_hf": math.nan}),
        MetricRow("p1", T0 + 15, 300.0, {"n_beats": 12.0, "coverage": 0.4}),  # the rest left out
        MetricRow("p1", T0 + 20, 300.0, {**full, "sdnn_ms": 0.0}),  # a real zero stays 0
    ]

    async def body(store: SqliteStore) -> None:
        await store.write_metrics(rows)
        await store.write_metrics(rows)
        got = await store.metrics("p1", T0, T0 + 100)
        assert [r.t_unix_s for r in got] == [T0 + 5, T0 + 10, T0 + 15, T0 + 20]
        assert got[0].values == full
        assert got[1].values["rmssd_ms"] is None
        assert got[1].values["lf_hf"] is None
        assert got[1].values["sdnn_ms"] == full["sdnn_ms"]
        assert got[2].values["n_beats"] == 12.0
        assert all(
            got[2].values[n] is None for n in METRIC_NAMES if n not in ("n_beats", "coverage")
        )
        assert got[3].values["sdnn_ms"] == 0.0
        assert all(set(r.values) == set(METRIC_NAMES) for r in got)
        some = await store.metrics("p1", T0, T0 + 12, names=["rmssd_ms", "lf_hf"])
        assert [r.values for r in some] == [
            {"rmssd_ms": full["rmssd_ms"], "lf_hf": full["lf_hf"]},
            {"rmssd_ms": None, "lf_hf": None},
        ]
        with pytest.raises(ValueError, match="unknown metric"):
            await store.metrics("p1", T0, T0 + 12, names=["rmssd_ms; DROP TABLE beats"])
        latest = await store.latest_metrics("p1")
        assert latest is not None
        assert latest.t_unix_s == T0 + 20
        assert latest.values == {**full, "sdnn_ms": 0.0}
        assert await store.latest_metrics("p2") is None

    run(body, tmp_path / "db.sqlite")


def test_metric_row_from_engine_window() -> None:
    window = {"t_s": 30.0, **{n: math.nan for n in METRIC_NAMES}, "rmssd_ms": 41.5}
    row = MetricRow.from_window("p1", T0, 300.0, window)
    assert row.t_unix_s == T0 + 30
    assert row.values["rmssd_ms"] == 41.5
    assert row.values["lf_hf"] is None
    with pytest.raises(ValueError, match="unknown metric"):
        MetricRow("p1", T0, 300.0, {"t_s": 1.0})


def test_alerts_round_trip(tmp_path: Path) -> None:
    a1 = AlertRow("a-1", "p1", T0 + 60, "firing", "rmssd_drop", "warning", {"drop_pct": 41.5})
    a1_end = AlertRow("a-1", "p1", T0 + 120, "resolved", "rmssd_drop", "warning", {})
    a2 = AlertRow(
        "a-2", "p2", T0 + 90, "firing", "hr_high", "critical", {"hr_bpm": 131, "note": 'x "y"'}
    )

    async def body(store: SqliteStore) -> None:
        await store.write_alerts([a1, a2, a1_end])
        await store.write_alerts([a1])  # idempotent
        assert await store.alerts() == [a1, a2, a1_end]
        assert await store.alerts("p1") == [a1, a1_end]
        assert await store.alerts(start_unix=T0 + 61) == [a2, a1_end]
        assert await store.alerts(end_unix=T0 + 90) == [a1]
        assert await store.alerts("p2", T0, T0 + 91) == [a2]
        (got,) = await store.alerts("p2")
        assert got.fields == {"hr_bpm": 131.0, "note": 'x "y"'}

    run(body, tmp_path / "db.sqlite")


def test_alert_fields_missing_are_dropped() -> None:
    row = AlertRow("a", "p", T0, "firing", "r", "info", {"x": None, "y": math.nan, "z": True})
    assert row.fields == {"z": 1.0}
    with pytest.raises(ValueError, match="clashes"):
        AlertRow("a", "p", T0, "firing", "r", "info", {"patient": 1.0})
    with pytest.raises(ValueError, match="field name"):
        AlertRow("a", "p", T0, "firing", "r", "info", {"_time": 1.0})


@pytest.mark.parametrize(
    "patient", ["", "p 1", 'p"1', "p1' OR '1'='1", "p,1", "p=1", "p\n1", "-p", "x" * 65, "p$1"]
)
def test_invalid_patient_ids_are_refused(tmp_path: Path, patient: str) -> None:
    with pytest.raises(InvalidIdentifier):
        BeatRow(patient, T0, 800.0, False, "s", 0)

    async def body(store: SqliteStore) -> None:
        with pytest.raises(InvalidIdentifier):
            await store.beats(patient, 0, 2e9)
        with pytest.raises(InvalidIdentifier):
            await store.alerts(patient)

    run(body, tmp_path / "db.sqlite")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"t_unix_s": math.nan}, "time"),
        ({"t_unix_s": -1.0}, "time"),
        ({"rr_ms": 0.0}, "rr_ms"),
        ({"rr_ms": math.inf}, "rr_ms"),
        ({"seq": -1}, "seq"),
    ],
)
def test_invalid_beats_are_refused(kwargs: dict[str, float], match: str) -> None:
    base: dict[str, object] = {
        "patient": "p1",
        "t_unix_s": T0,
        "rr_ms": 800.0,
        "after_gap": False,
        "session": "s",
        "seq": 0,
    }
    with pytest.raises(ValueError, match=match):
        BeatRow(**{**base, **kwargs})  # type: ignore[arg-type]


def test_reopen_keeps_data_and_closed_store_refuses(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    rows = make_beats("p1", 10)

    async def write(store: SqliteStore) -> None:
        await store.write_beats(rows)

    async def read(store: SqliteStore) -> None:
        assert await store.beats("p1", 0, 2e9) == rows
        await store.close()
        await store.close()  # idempotent
        with pytest.raises(StoreError, match="closed"):
            await store.write_beats(rows)

    run(write, path)
    run(read, path)


def test_metric_columns_are_added_to_an_older_file(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:  # a file from before the last metric existed
        conn.execute(
            "CREATE TABLE metrics (patient TEXT NOT NULL, t_unix_s REAL NOT NULL, "
            "window_s REAL NOT NULL, rmssd_ms REAL, PRIMARY KEY (patient, t_unix_s))"
        )
        conn.execute("INSERT INTO metrics VALUES ('p1', ?, 300, 40.0)", (T0,))
    conn.close()

    async def body(store: SqliteStore) -> None:
        (row,) = await store.metrics("p1", 0, 2e9)
        assert row.values["rmssd_ms"] == 40.0
        assert row.values["hf_nu"] is None

    run(body, path)


def test_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable hrvstream database"):
        SqliteStore(path)


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_canonical_time_is_stable(t: float) -> None:
    once = canonical_time(t)
    assert canonical_time(once) == once
    assert abs(once - t) <= 5e-7 + 1e-15 * t
