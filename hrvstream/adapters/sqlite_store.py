"""The embedded store: one SQLite file (WAL), the stdlib ``sqlite3`` module.

The default store of ``hrvstream server``, and the history behind the dashboard in the
demo. Every call runs in a worker thread (``asyncio.to_thread``) so the event loop never
waits on the disk; one connection, used by one thread at a time (a lock).

Tables (created on open; metric columns missing from an older file are added):

* ``beats(patient, t_unix_s, rr_ms, after_gap, session, seq)``, key ``(patient, t_unix_s)``
* ``metrics(patient, t_unix_s, window_s, <one REAL column per metric>)``, key
  ``(patient, t_unix_s)``; a missing metric is ``NULL``
* ``alerts(alert_id, state, t_unix_s, patient, rule, severity, fields)``, key
  ``(alert_id, state, t_unix_s)``; ``fields`` is a JSON object

Writes are upserts (``INSERT ... ON CONFLICT DO UPDATE``): writing a record twice keeps
one copy, the last written, as InfluxDB does. A write is committed when the call returns,
so :meth:`SqliteStore.flush` has nothing to wait for. Times are stored as
:func:`hrvstream.store.canonical_time` (microsecond resolution), the identity key.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

from hrvstream.store import (
    METRIC_NAMES,
    AlertFieldValue,
    AlertRow,
    BeatRow,
    MetricRow,
    StoreError,
    StoreUnavailable,
    canonical_time,
    check_names,
    check_range,
    check_token,
)

_T = TypeVar("_T")
_IDENT = re.compile(r"[a-z][a-z0-9_]*")

#: Version of the schema below, kept in ``PRAGMA user_version``.
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS beats (
    patient TEXT NOT NULL,
    t_unix_s REAL NOT NULL,
    rr_ms REAL NOT NULL,
    after_gap INTEGER NOT NULL CHECK (after_gap IN (0, 1)),
    session TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (patient, t_unix_s)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS metrics (
    patient TEXT NOT NULL,
    t_unix_s REAL NOT NULL,
    window_s REAL NOT NULL,
    PRIMARY KEY (patient, t_unix_s)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts (
    alert_id TEXT NOT NULL,
    state TEXT NOT NULL,
    t_unix_s REAL NOT NULL,
    patient TEXT NOT NULL,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    fields TEXT NOT NULL,
    PRIMARY KEY (alert_id, state, t_unix_s)
);
CREATE INDEX IF NOT EXISTS alerts_by_patient ON alerts (patient, t_unix_s);
CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts (t_unix_s);
"""


def _column(name: str) -> str:
    """A metric name as a quoted SQL identifier (names are fixed, but checked anyway)."""
    if _IDENT.fullmatch(name) is None:  # pragma: no cover - METRIC_NAMES are identifiers
        raise StoreError(f"metric name {name!r} cannot be a column name")
    return f'"{name}"'


class SqliteStore:
    """:class:`hrvstream.store.Store` on one SQLite database file.

    Parameters
    ----------
    path:
        The database file (created if missing), or ``":memory:"``.
    synchronous:
        SQLite's ``synchronous`` setting. ``"FULL"`` (default) makes a committed write
        survive a power cut; ``"NORMAL"`` is faster and still safe against crashes of
        this process.
    busy_timeout_s:
        How long a write waits for another process holding the database lock before
        :class:`StoreUnavailable` is raised.

    Raises
    ------
    StoreError
        If the file cannot be opened or is not an hrvstream database.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        busy_timeout_s: float = 5.0,
    ) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                self.path, timeout=busy_timeout_s, check_same_thread=False, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
        try:
            self._init_schema(conn, synchronous)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(
                f"{self.path} is not a usable hrvstream database ({exc}); "
                "use a new file, or one written by hrvstream"
            ) from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    @staticmethod
    def _init_schema(conn: sqlite3.Connection, synchronous: str) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'FULL' else 'NORMAL'}")
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this hrvstream ({SCHEMA_VERSION})"
            )
        conn.executescript(_SCHEMA)
        have = {row[1] for row in conn.execute("PRAGMA table_info(metrics)")}
        for name in METRIC_NAMES:
            if name not in have:
                conn.execute(f"ALTER TABLE metrics ADD COLUMN {_column(name)} REAL")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # -- plumbing --------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(conn)`` in a worker thread, one at a time, errors translated."""
        return await asyncio.to_thread(self._locked, fn)

    def _locked(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreError(f"the SQLite store {self.path} is closed")
            try:
                return fn(conn)
            except sqlite3.OperationalError as exc:
                text = str(exc).lower()
                if "locked" in text or "busy" in text:
                    raise StoreUnavailable(
                        f"SQLite database {self.path} is locked by another process: {exc}"
                    ) from exc
                raise StoreError(f"SQLite database {self.path}: {exc}") from exc
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite database {self.path}: {exc}") from exc

    @staticmethod
    def _write(conn: sqlite3.Connection, sql: str, params: list[tuple[Any, ...]]) -> None:
        if not params:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(sql, params)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- writes ----------------------------------------------------------------------

    async def write_beats(self, rows: Sequence[BeatRow]) -> None:
        """Upsert beats (one row per patient and beat time)."""
        params = [
            (
                r.patient,
                canonical_time(r.t_unix_s),
                float(r.rr_ms),
                1 if r.after_gap else 0,
                r.session,
                r.seq,
            )
            for r in rows
        ]
        sql = (
            "INSERT INTO beats (patient, t_unix_s, rr_ms, after_gap, session, seq) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (patient, t_unix_s) DO UPDATE SET "
            "rr_ms = excluded.rr_ms, after_gap = excluded.after_gap, "
            "session = excluded.session, seq = excluded.seq"
        )
        await self._run(lambda conn: self._write(conn, sql, params))

    async def write_metrics(self, rows: Sequence[MetricRow]) -> None:
        """Upsert metric rows; a missing value is stored as NULL (never 0)."""
        cols = ", ".join(_column(n) for n in METRIC_NAMES)
        marks = ", ".join("?" for _ in METRIC_NAMES)
        updates = ", ".join(f"{_column(n)} = excluded.{_column(n)}" for n in METRIC_NAMES)
        sql = (
            f"INSERT INTO metrics (patient, t_unix_s, window_s, {cols}) "
            f"VALUES (?, ?, ?, {marks}) ON CONFLICT (patient, t_unix_s) DO UPDATE SET "
            f"window_s = excluded.window_s, {updates}"
        )
        params = [
            (
                r.patient,
                canonical_time(r.t_unix_s),
                float(r.window_s),
                *(r.values.get(n) for n in METRIC_NAMES),
            )
            for r in rows
        ]
        await self._run(lambda conn: self._write(conn, sql, params))

    async def write_alerts(self, rows: Sequence[AlertRow]) -> None:
        """Upsert alert state changes (one row per alert id, state and time)."""
        sql = (
            "INSERT INTO alerts (alert_id, state, t_unix_s, patient, rule, severity, fields) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (alert_id, state, t_unix_s) DO UPDATE "
            "SET patient = excluded.patient, rule = excluded.rule, "
            "severity = excluded.severity, fields = excluded.fields"
        )
        params = [
            (
                r.alert_id,
                r.state,
                canonical_time(r.t_unix_s),
                r.patient,
                r.rule,
                r.severity,
                json.dumps(dict(r.fields), allow_nan=False, sort_keys=True),
            )
            for r in rows
        ]
        await self._run(lambda conn: self._write(conn, sql, params))

    async def flush(self) -> None:
        """Nothing to wait for: every write is committed when it returns."""
        await self._run(lambda conn: None)

    async def close(self) -> None:
        """Close the database (idempotent)."""

        def close() -> None:
            with self._lock:
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.close()

        await asyncio.to_thread(close)

    async def __aenter__(self) -> SqliteStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- queries ---------------------------------------------------------------------

    async def beats(self, patient: str, start_unix: float, end_unix: float) -> list[BeatRow]:
        """Beats of ``patient`` with ``start_unix <= t < end_unix``, by time."""
        check_token("patient", patient)
        start, end = check_range(start_unix, end_unix)
        sql = (
            "SELECT t_unix_s, rr_ms, after_gap, session, seq FROM beats "
            "WHERE patient = ? AND t_unix_s >= ? AND t_unix_s < ? ORDER BY t_unix_s"
        )
        params = (patient, start / 1e6, end / 1e6)
        rows = await self._run(lambda conn: conn.execute(sql, params).fetchall())
        return [
            BeatRow(patient, t, rr, bool(gap), session, seq) for t, rr, gap, session, seq in rows
        ]

    async def metrics(
        self,
        patient: str,
        start_unix: float,
        end_unix: float,
        names: Sequence[str] | None = None,
    ) -> list[MetricRow]:
        """Metric rows in the range, by time; ``values`` holds ``names`` (default: all)."""
        check_token("patient", patient)
        wanted = check_names(names)
        start, end = check_range(start_unix, end_unix)
        cols = "".join(f", {_column(n)}" for n in wanted)
        sql = (
            f"SELECT t_unix_s, window_s{cols} FROM metrics "
            "WHERE patient = ? AND t_unix_s >= ? AND t_unix_s < ? ORDER BY t_unix_s"
        )
        params = (patient, start / 1e6, end / 1e6)
        rows = await self._run(lambda conn: conn.execute(sql, params).fetchall())
        return [MetricRow(patient, r[0], r[1], dict(zip(wanted, r[2:], strict=True))) for r in rows]

    async def latest_metrics(self, patient: str) -> MetricRow | None:
        """The most recent metrics row of ``patient`` (all names), or ``None``."""
        check_token("patient", patient)
        cols = "".join(f", {_column(n)}" for n in METRIC_NAMES)
        sql = (
            f"SELECT t_unix_s, window_s{cols} FROM metrics WHERE patient = ? "
            "ORDER BY t_unix_s DESC LIMIT 1"
        )
        row = await self._run(lambda conn: conn.execute(sql, (patient,)).fetchone())
        if row is None:
            return None
        return MetricRow(patient, row[0], row[1], dict(zip(METRIC_NAMES, row[2:], strict=True)))

    async def alerts(
        self,
        patient: str | None = None,
        start_unix: float | None = None,
        end_unix: float | None = None,
    ) -> list[AlertRow]:
        """Alert state changes (of one patient, or all), by time; open-ended by default."""
        where: list[str] = []
        params: list[object] = []
        if patient is not None:
            where.append("patient = ?")
            params.append(check_token("patient", patient))
        if start_unix is not None and end_unix is not None:
            check_range(start_unix, end_unix)
        if start_unix is not None:
            where.append("t_unix_s >= ?")
            params.append(canonical_time(start_unix))
        if end_unix is not None:
            where.append("t_unix_s < ?")
            params.append(canonical_time(end_unix))
        sql = (
            "SELECT alert_id, patient, t_unix_s, state, rule, severity, fields FROM alerts"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY t_unix_s, alert_id, state"
        )
        rows = await self._run(lambda conn: conn.execute(sql, params).fetchall())
        return [
            AlertRow(alert_id, pat, t, state, rule, severity, _fields(raw))
            for alert_id, pat, t, state, rule, severity, raw in rows
        ]


def _fields(raw: str) -> dict[str, AlertFieldValue]:
    value = json.loads(raw)
    if not isinstance(value, dict):  # pragma: no cover - written by write_alerts
        raise StoreError(f"alert fields are not a JSON object: {raw!r}")
    return value
