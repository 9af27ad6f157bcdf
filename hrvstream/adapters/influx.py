"""The production store: InfluxDB 2, line protocol through the v2 write API, Flux queries.

Uses ``influxdb-client``'s asyncio client (:class:`InfluxDBClientAsync`, aiohttp).

Writing
-------
``write_beats``/``write_metrics``/``write_alerts`` turn rows into line protocol and put
them in an in-memory buffer; they return at once (the store has *accepted* the rows). A
background task sends the buffer in batches of ``batch_size`` points, or what is there
after ``flush_interval_s``, or at once when someone waits in :meth:`InfluxStore.flush`.

When a batch fails it stays at the head of the buffer and is sent again:

* connection refused/reset, timeout, HTTP 408/429/5xx: retried after an exponential
  backoff (``backoff_initial_s`` doubling up to ``backoff_max_s``; a ``Retry-After``
  header lengthens it; a call of :meth:`~InfluxStore.flush` cuts a backoff short and
  retries at once), for as long as the store is open. There is no retry limit: the
  limits are the buffer (``max_buffered_points``: beyond it a write raises
  :class:`StoreUnavailable` and accepts nothing, so the caller must not acknowledge those
  rows upstream) and the deadline of :meth:`~InfluxStore.flush`.
* HTTP 413 (batch too large): the batch is halved and sent again.
* HTTP 400/422 (InfluxDB rejected points; it writes the valid lines of the batch): the
  batch is dropped (resending cannot help), counted in ``rejected_points``, and the next
  :meth:`~InfluxStore.flush` raises :class:`StoreError`.
* Anything else (401/403 token, 404 bucket or org): the batch is kept and retried with
  backoff (the operator can fix it while we run), and :meth:`~InfluxStore.flush` raises
  :class:`StoreError` with the reason as soon as an attempt made during the flush fails
  so, instead of waiting for its deadline.

Retries cannot duplicate anything: a point's identity is its measurement, tag set and
timestamp, and rewriting it overwrites it. A batch that landed although its response was
lost (a timeout) is simply written again.

Schema
------
``beats,patient=<code> rr_ms=<float>,after_gap=<0|1>i,seq=<int>i <beat time, ns>``
    The timestamp (beat time rounded to the microsecond) is the beat's identity. The
    session is **not** stored: as a tag it would add a series per recording session
    forever (unbounded cardinality) and would make the identity (patient, session, time)
    instead of (patient, time); as a string field it would read as 0 in VictoriaMetrics.
    :meth:`InfluxStore.beats` returns ``session=""``; ``seq`` is kept.
``hrv,patient=<code> window_s=<float>,<metric>=<float>,... <window time, ns>``
    One field per metric of :data:`hrvstream.store.METRIC_NAMES`; a missing value is
    left out (never written as 0), so it reads back as missing. Note that InfluxDB
    merges a rewritten point field by field: rewriting a row with a value now missing
    leaves the old value in place.
``alerts,alert_id=..,patient=..,rule=..,severity=..,state=.. <fields> <time, ns>``
    ``event=1i`` plus the alert's ``fields``: numbers as floats, strings as string
    fields (InfluxDB keeps them; VictoriaMetrics reads them as 0). A field name must
    keep one type: InfluxDB rejects a float where it stored a string (HTTP 422). The
    identity (alert_id, state, time) holds as long as an alert keeps its patient, rule
    and severity (they are tags too).

Every tag value is a checked identifier (:data:`hrvstream.store.TOKEN_PATTERN`), so tags
need no escaping and query text cannot be injected; strings in Flux are escaped anyway
(:func:`flux_string`).

Reading
-------
Queries are Flux (:func:`flux_beats`, :func:`flux_metrics`, :func:`flux_latest_metrics`,
:func:`flux_alerts`) sent through the client's query API (``query_raw``); the annotated
CSV is parsed by the client's parser (:func:`parse_annotated_csv`). InfluxDB returns
times to the nanosecond; the parser keeps microseconds, the resolution of the identity
key, so nothing is lost.

VictoriaMetrics (the test stand-in) accepts the same writes on ``/api/v2/write`` and
names series ``<measurement>_<field>`` with the tags as labels; it keeps milliseconds and
needs ``-dedup.minScrapeInterval=1ms`` to collapse rewritten samples. It has no Flux.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol, cast

import aiohttp
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.rest import ApiException

from hrvstream.store import (
    METRIC_NAMES,
    AlertFieldValue,
    AlertRow,
    BeatRow,
    MetricRow,
    StoreError,
    StoreUnavailable,
    check_names,
    check_range,
    check_token,
    time_key_us,
)

log = logging.getLogger(__name__)

BEATS_MEASUREMENT: Final = "beats"
METRICS_MEASUREMENT: Final = "hrv"
ALERTS_MEASUREMENT: Final = "alerts"
#: The tags of an alert point (besides the measurement), in line-protocol order.
ALERT_TAG_KEYS: Final = ("alert_id", "patient", "rule", "severity", "state")
#: The field every alert point carries (line protocol needs at least one field).
ALERT_EVENT_FIELD: Final = "event"

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_US: Final = 253_402_300_800 * 1_000_000  # year 10000: RFC 3339 has four digits

# -- line protocol ---------------------------------------------------------------------


def _ns(t_unix_s: float) -> int:
    return time_key_us(t_unix_s) * 1000


def _lp_float(value: float) -> str:
    return repr(float(value))


def _lp_string(value: str) -> str:
    """A string field value: quoted; backslash, quote and line breaks escaped."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r") + '"'


def beat_line(row: BeatRow) -> str:
    """The line protocol of one beat (see the module docstring)."""
    gap = 1 if row.after_gap else 0
    return (
        f"{BEATS_MEASUREMENT},patient={row.patient} "
        f"rr_ms={_lp_float(row.rr_ms)},after_gap={gap}i,seq={row.seq}i {_ns(row.t_unix_s)}"
    )


def metric_line(row: MetricRow) -> str:
    """The line protocol of one metrics row; missing values are left out."""
    fields = [f"window_s={_lp_float(row.window_s)}"]
    fields.extend(
        f"{name}={_lp_float(v)}" for name in METRIC_NAMES if (v := row.values.get(name)) is not None
    )
    return f"{METRICS_MEASUREMENT},patient={row.patient} {','.join(fields)} {_ns(row.t_unix_s)}"


def alert_line(row: AlertRow) -> str:
    """The line protocol of one alert state change."""
    tags = ",".join(f"{k}={getattr(row, k)}" for k in ALERT_TAG_KEYS)
    fields = [f"{ALERT_EVENT_FIELD}=1i"]
    for name, value in sorted(row.fields.items()):
        if name == ALERT_EVENT_FIELD:
            raise StoreError(f"alert field name {name!r} is reserved by the InfluxDB schema")
        if isinstance(value, str):
            fields.append(f"{name}={_lp_string(value)}")
        elif value is not None and math.isfinite(value):
            fields.append(f"{name}={_lp_float(value)}")
    return f"{ALERTS_MEASUREMENT},{tags} {','.join(fields)} {_ns(row.t_unix_s)}"


# -- Flux ------------------------------------------------------------------------------


def flux_string(value: str) -> str:
    """``value`` as a Flux string literal that can only ever be that string.

    ``\\`` and ``"`` are backslash-escaped; ``$`` (string interpolation is ``${...}``)
    and control characters are written as ``\\xNN`` byte escapes.
    """
    out: list[str] = []
    for ch in value:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch == "$" or ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def flux_time(key_us: int) -> str:
    """A microsecond key as a Flux RFC 3339 time literal (``2023-11-14T22:13:20.000000Z``)."""
    if not 0 <= key_us < _MAX_US:
        raise ValueError(f"time {key_us} us is outside years 1970-9999")
    secs, frac = divmod(key_us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:06d}Z"


def _flux_strings(values: Iterable[str]) -> str:
    return "[" + ", ".join(flux_string(v) for v in values) + "]"


def _fields_filter(names: Iterable[str]) -> str:
    cond = " or ".join(f"r._field == {flux_string(n)}" for n in names)
    return f"  |> filter(fn: (r) => {cond})"


def _head(bucket: str, start_us: int, end_us: int | None, measurement: str) -> list[str]:
    stop = "" if end_us is None else f", stop: {flux_time(end_us)}"
    return [
        f"from(bucket: {flux_string(bucket)})",
        f"  |> range(start: {flux_time(start_us)}{stop})",
        f"  |> filter(fn: (r) => r._measurement == {flux_string(measurement)})",
    ]


def _patient_filter(patient: str) -> str:
    return f"  |> filter(fn: (r) => r.patient == {flux_string(check_token('patient', patient))})"


def flux_beats(bucket: str, patient: str, start_unix: float, end_unix: float) -> str:
    """Flux for the beats of ``patient`` with ``start_unix <= t < end_unix``, by time."""
    check_token("patient", patient)
    start, end = check_range(start_unix, end_unix)
    cols = ("rr_ms", "after_gap", "seq")
    return "\n".join(
        [
            *_head(bucket, start, end, BEATS_MEASUREMENT),
            _patient_filter(patient),
            _fields_filter(cols),
            '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")',
            "  |> group()",
            f"  |> keep(columns: {_flux_strings(('_time', *cols))})",
            '  |> sort(columns: ["_time"])',
        ]
    )


def flux_metrics(
    bucket: str,
    patient: str,
    start_unix: float,
    end_unix: float,
    names: Sequence[str] | None = None,
) -> str:
    """Flux for the metric rows of ``patient`` in the range (one row per window time)."""
    check_token("patient", patient)
    wanted = ("window_s", *check_names(names))
    start, end = check_range(start_unix, end_unix)
    lines = [*_head(bucket, start, end, METRICS_MEASUREMENT), _patient_filter(patient)]
    if names is not None:
        lines.append(_fields_filter(wanted))
    lines += [
        '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")',
        "  |> group()",
        f"  |> keep(columns: {_flux_strings(('_time', *wanted))})",
        '  |> sort(columns: ["_time"])',
    ]
    return "\n".join(lines)


def flux_latest_metrics(bucket: str, patient: str) -> str:
    """Flux for the last value of every metric field of ``patient`` (one record each).

    The latest row is the records at the latest time; a field whose last value is older
    is missing from that row (see :meth:`InfluxStore.latest_metrics`).
    """
    return "\n".join(
        [
            *_head(bucket, 0, None, METRICS_MEASUREMENT),
            _patient_filter(patient),
            "  |> last()",
            '  |> keep(columns: ["_time", "_field", "_value"])',
        ]
    )


def flux_alerts(
    bucket: str,
    patient: str | None = None,
    start_unix: float | None = None,
    end_unix: float | None = None,
) -> str:
    """Flux for alert state changes (of one patient or all), one row per point, by time."""
    start = time_key_us(start_unix) if start_unix is not None else 0
    end = time_key_us(end_unix) if end_unix is not None else None
    if end is not None and end < start:
        raise ValueError(f"end {end_unix} is before start {start_unix}")
    lines = _head(bucket, start, end, ALERTS_MEASUREMENT)
    if patient is not None:
        lines.append(_patient_filter(patient))
    lines += [
        '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")',
        '  |> drop(columns: ["_start", "_stop", "_measurement"])',
        "  |> group()",
        f'  |> sort(columns: ["_time", {", ".join(flux_string(k) for k in ALERT_TAG_KEYS)}])',
    ]
    return "\n".join(lines)


# -- query results ---------------------------------------------------------------------

Record = Mapping[str, Any]


def _t(value: object) -> float:
    if not isinstance(value, datetime):
        raise StoreError(f"InfluxDB returned a non-time _time value {value!r}")
    return ((value - _EPOCH) // timedelta(microseconds=1)) / 1_000_000


def _num(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise StoreError(f"InfluxDB returned a non-numeric value {value!r}")


def beats_from_records(patient: str, records: Iterable[Record]) -> list[BeatRow]:
    """Rows of :func:`flux_beats` as :class:`BeatRow` (``session`` is not stored: ``""``)."""
    out: list[BeatRow] = []
    for r in records:
        rr, gap, seq = _num(r.get("rr_ms")), _num(r.get("after_gap")), _num(r.get("seq"))
        if rr is None:  # a point without rr_ms was not written by us; skip it
            continue
        out.append(BeatRow(patient, _t(r["_time"]), rr, bool(gap), "", int(seq) if seq else 0))
    return out


def metrics_from_records(
    patient: str, records: Iterable[Record], names: Sequence[str]
) -> list[MetricRow]:
    """Rows of :func:`flux_metrics` as :class:`MetricRow` (null -> ``None``)."""
    out: list[MetricRow] = []
    for r in records:
        window = _num(r.get("window_s"))
        if window is None:
            continue
        values = {n: _num(r.get(n)) for n in names}
        out.append(MetricRow(patient, _t(r["_time"]), window, values))
    return out


def latest_from_records(patient: str, records: Iterable[Record]) -> MetricRow | None:
    """Records of :func:`flux_latest_metrics` as the latest :class:`MetricRow`, or None."""
    by_field = [(_t(r["_time"]), str(r["_field"]), r["_value"]) for r in records]
    if not by_field:
        return None
    t_last = max(t for t, _, _ in by_field)
    current = {f: v for t, f, v in by_field if t == t_last}
    window = _num(current.get("window_s"))
    if window is None:
        return None
    values = {n: _num(current.get(n)) for n in METRIC_NAMES}
    return MetricRow(patient, t_last, window, values)


_NOT_ALERT_FIELDS: Final = frozenset({"result", "table", "_time", ALERT_EVENT_FIELD})


def alerts_from_records(records: Iterable[Record]) -> list[AlertRow]:
    """Rows of :func:`flux_alerts` as :class:`AlertRow` (null fields are missing)."""
    out: list[AlertRow] = []
    for r in records:
        fields: dict[str, AlertFieldValue] = {}
        for k, v in r.items():
            if k in _NOT_ALERT_FIELDS or k in ALERT_TAG_KEYS or k.startswith("_") or v is None:
                continue
            fields[k] = v if isinstance(v, str) else _num(v)
        out.append(
            AlertRow(
                alert_id=str(r["alert_id"]),
                patient=str(r["patient"]),
                t_unix_s=_t(r["_time"]),
                state=str(r["state"]),
                rule=str(r["rule"]),
                severity=str(r["severity"]),
                fields=fields,
            )
        )
    return out


def parse_annotated_csv(text: str) -> list[Record]:
    """The records of an annotated-CSV query response (the client's own parser).

    The client's asyncio parser needs the optional ``aiocsv`` package; the response is
    read whole anyway, so the synchronous parser reads it from memory (in a thread).

    Raises
    ------
    StoreError
        The response reports a Flux error, or is not annotated CSV.
    """
    from influxdb_client.client.flux_csv_parser import (
        FluxCsvParser,
        FluxCsvParserException,
        FluxQueryException,
        FluxSerializationMode,
    )

    parser: Any = FluxCsvParser(
        response=io.BytesIO(text.encode()), serialization_mode=FluxSerializationMode.tables
    )
    try:
        for _ in parser.generator():
            pass
    except (FluxQueryException, FluxCsvParserException, ValueError) as exc:
        raise StoreError(f"InfluxDB query failed: {exc}") from exc
    return [
        cast(Record, record.values) for table in parser.table_list() for record in table.records
    ]


# -- the client, as far as we use it (influxdb-client is only partly annotated) ---------


class _WriteApi(Protocol):
    async def write(self, bucket: str, org: str, record: bytes, write_precision: str) -> bool:
        """POST /api/v2/write."""
        ...


class _QueryApi(Protocol):
    async def query_raw(self, query: str, org: str) -> str:
        """POST /api/v2/query; the annotated CSV as text."""
        ...


class _Client(Protocol):
    def write_api(self) -> Any:
        """A WriteApiAsync."""
        ...

    def query_api(self) -> Any:
        """A QueryApiAsync."""
        ...

    async def close(self) -> None:
        """Close the aiohttp session."""
        ...


def _open_client(url: str, token: str, org: str, timeout_ms: int, enable_gzip: bool) -> _Client:
    from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

    client = InfluxDBClientAsync(
        url=url, token=token, org=org, timeout=timeout_ms, enable_gzip=enable_gzip
    )
    return cast(_Client, client)


# -- errors at the edge ----------------------------------------------------------------

_RETRY = "retry"  # the database is unreachable or overloaded: keep the batch, back off
_SPLIT = "split"  # the batch is too large: halve it
_REJECT = "reject"  # the points were refused: drop the batch, report
_CONFIG = "config"  # token, bucket, org ...: keep the batch, back off, report


def _classify(exc: BaseException) -> tuple[str, str, float | None]:
    """(kind, message, Retry-After seconds) of an exception from the client."""
    if isinstance(exc, ApiException):
        status = exc.status if isinstance(exc.status, int) else 0
        detail = getattr(exc, "message", None) or exc.reason or ""
        retry_after: float | None = None
        if isinstance(exc.retry_after, str | int | float):
            with contextlib.suppress(ValueError):
                retry_after = float(exc.retry_after)
        message = f"HTTP {status}: {detail}".strip()
        if status == 0 or status in (408, 429) or status >= 500:
            return _RETRY, message, retry_after
        if status == 413:
            return _SPLIT, message, None
        if status in (400, 422):
            return _REJECT, message, None
        hints = {
            401: "check the InfluxDB token",
            403: "the token may not write to or read this bucket",
            404: "check the bucket and org names",
        }
        hint = hints.get(status, "check the InfluxDB settings")
        return _CONFIG, f"{message} ({hint})", None
    if isinstance(exc, TimeoutError):
        return _RETRY, "timed out", None
    if isinstance(exc, aiohttp.ClientError | OSError):
        return _RETRY, f"{type(exc).__name__}: {exc}", None
    if isinstance(exc, InfluxDBError):
        return _CONFIG, str(exc), None
    return _CONFIG, f"unexpected {type(exc).__name__}: {exc}", None


def _empty(start_unix: float, end_unix: float) -> bool:
    """An empty range (Flux refuses ``start == stop``); checked by the query builders."""
    return time_key_us(start_unix) >= time_key_us(end_unix)


class InfluxStore:
    """:class:`hrvstream.store.Store` on InfluxDB 2 (see the module docstring).

    Create it anywhere; the client is opened in the running event loop on first use.
    Use it from one event loop.

    Parameters
    ----------
    url, token, org, bucket:
        Where to write (``http://host:8086``); the token needs write (and, for queries,
        read) permission on the bucket.
    batch_size:
        Points per write request.
    flush_interval_s:
        The longest a point waits in the buffer before a (smaller) batch is sent.
    backoff_initial_s, backoff_max_s:
        Delay after the first failed attempt, doubling per further failure up to the max.
    max_buffered_points:
        Points the buffer holds at most; a write that does not fit raises
        :class:`StoreUnavailable` and accepts none of its rows.
    request_timeout_s:
        Limit of one HTTP request (connect + send + response).
    flush_timeout_s:
        Default deadline of :meth:`flush` and :meth:`close`.
    enable_gzip:
        Compress write and query bodies.
    """

    def __init__(
        self,
        url: str,
        token: str,
        org: str,
        bucket: str,
        *,
        batch_size: int = 5000,
        flush_interval_s: float = 1.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_buffered_points: int = 1_000_000,
        request_timeout_s: float = 10.0,
        flush_timeout_s: float = 60.0,
        enable_gzip: bool = False,
    ) -> None:
        if batch_size < 1 or max_buffered_points < batch_size:
            raise ValueError("need 1 <= batch_size <= max_buffered_points")
        for name, value in (
            ("flush_interval_s", flush_interval_s),
            ("backoff_initial_s", backoff_initial_s),
            ("backoff_max_s", backoff_max_s),
            ("request_timeout_s", request_timeout_s),
            ("flush_timeout_s", flush_timeout_s),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if not bucket:
            raise ValueError("bucket must not be empty")
        self.url = url
        self.org = org
        self.bucket = bucket
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = max(backoff_max_s, backoff_initial_s)
        self.max_buffered_points = max_buffered_points
        self.flush_timeout_s = flush_timeout_s
        self._token = token
        self._timeout_ms = max(1, round(request_timeout_s * 1000))
        self._gzip = enable_gzip

        self._lines: deque[str] = deque()
        self._oldest: float | None = None  # loop time the oldest buffered point arrived
        self._accepted = 0  # points accepted since the start (written or not)
        self._done = 0  # points written or rejected, in order: the first _done accepted
        self._wake = asyncio.Event()  # new points, a flush, closing: the writer looks again
        self._kick = asyncio.Event()  # a flush cuts a backoff short (not a Retry-After)
        self._progress = asyncio.Event()  # replaced on every attempt's end (_notify)
        self._attempts = 0  # write attempts finished
        self._flush_waiters = 0
        self._closing = False
        self._closed = False
        self._client: _Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._send_limit = batch_size

        #: Points written since the start.
        self.written_points = 0
        #: Points InfluxDB refused (HTTP 400/422) since the start.
        self.rejected_points = 0
        #: Failed attempts in a row (0 once a batch is written).
        self.consecutive_failures = 0
        #: What went wrong last, or None after a success.
        self.last_error: str | None = None
        self._config_error: str | None = None
        self._unreported_rejects: str | None = None

    # -- state --------------------------------------------------------------------

    @property
    def buffered_points(self) -> int:
        """Points accepted but not written yet."""
        return len(self._lines)

    def _check_open(self) -> None:
        if self._closed or self._closing:
            raise StoreError("the InfluxDB store is closed")

    def _client_now(self) -> _Client:
        self._check_open()
        if self._client is None:
            self._client = _open_client(
                self.url, self._token, self.org, self._timeout_ms, self._gzip
            )
        return self._client

    def _start(self) -> None:
        client = self._client_now()
        if self._task is None:
            api = cast(_WriteApi, client.write_api())
            self._task = asyncio.get_running_loop().create_task(
                self._run(api), name=f"influx-writer {self.url}"
            )

    def _notify(self) -> None:
        self._attempts += 1
        event, self._progress = self._progress, asyncio.Event()
        event.set()

    # -- writes -------------------------------------------------------------------

    async def write_beats(self, rows: Sequence[BeatRow]) -> None:
        """Accept beats (see :func:`beat_line`)."""
        self._accept([beat_line(r) for r in rows])

    async def write_metrics(self, rows: Sequence[MetricRow]) -> None:
        """Accept metric rows (see :func:`metric_line`)."""
        self._accept([metric_line(r) for r in rows])

    async def write_alerts(self, rows: Sequence[AlertRow]) -> None:
        """Accept alert state changes (see :func:`alert_line`)."""
        self._accept([alert_line(r) for r in rows])

    def _accept(self, lines: list[str]) -> None:
        self._check_open()
        if not lines:
            return
        if len(self._lines) + len(lines) > self.max_buffered_points:
            raise StoreUnavailable(
                f"InfluxDB at {self.url} is not keeping up: {len(self._lines)} points are "
                f"buffered (max {self.max_buffered_points}); these {len(lines)} were not "
                f"accepted. Last error: {self.last_error or 'none'}"
            )
        self._start()
        if not self._lines:
            self._oldest = asyncio.get_running_loop().time()
        self._lines.extend(lines)
        self._accepted += len(lines)
        self._wake.set()

    async def flush(self, timeout_s: float | None = None) -> None:
        """Return once every point accepted before the call is written.

        Raises
        ------
        StoreUnavailable
            Not done within ``timeout_s`` (default ``flush_timeout_s``). The points stay
            buffered and are retried in the background while the store is open.
        StoreError
            InfluxDB refused points (HTTP 400/422; reported once), or the settings are
            wrong (token, bucket, org): the points stay buffered.
        """
        if self._closed:
            raise StoreError("the InfluxDB store is closed")
        target = self._accepted
        attempts = self._attempts
        deadline = self.flush_timeout_s if timeout_s is None else timeout_s
        self._flush_waiters += 1
        self._wake.set()
        self._kick.set()
        try:
            async with asyncio.timeout(deadline):
                while self._done < target:
                    if self._config_error is not None and self._attempts > attempts:
                        raise StoreError(
                            f"InfluxDB at {self.url} refuses writes: {self._config_error}; "
                            f"{len(self._lines)} points are buffered"
                        )
                    await self._progress.wait()
        except TimeoutError:
            raise StoreUnavailable(
                f"InfluxDB at {self.url} did not take the data within {deadline:g} s: "
                f"{len(self._lines)} points are buffered and retried in the background. "
                f"Last error: {self.last_error or 'none'}"
            ) from None
        finally:
            self._flush_waiters -= 1
        if self._unreported_rejects is not None:
            message, self._unreported_rejects = self._unreported_rejects, None
            raise StoreError(message)

    async def close(self, timeout_s: float | None = None) -> None:
        """Flush (within ``timeout_s``), stop the writer, close the client.

        Raises like :meth:`flush` (after closing): points not written by then are lost,
        and the message says how many.
        """
        if self._closed:
            return
        self._closing = True  # no more writes; the writer sends what it has at once
        error: StoreError | None = None
        try:
            if self._task is not None:
                await self.flush(timeout_s)
        except StoreError as exc:
            error = exc
        finally:
            self._closed = True
            task, self._task = self._task, None
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            client, self._client = self._client, None
            if client is not None:
                await client.close()
        if error is not None:
            lost = len(self._lines)
            raise type(error)(f"closed with {lost} points not written: {error}") from error

    async def __aenter__(self) -> InfluxStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the writer task ----------------------------------------------------------

    async def _run(self, api: _WriteApi) -> None:
        try:
            while True:
                await self._wait_for_batch()
                await self._send_one(api)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: make waiters fail instead of hang
            log.exception("InfluxDB writer stopped")
            self._config_error = f"the writer stopped: {type(exc).__name__}: {exc}"
            self._notify()

    async def _wait_for_batch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            n = len(self._lines)
            if n >= self._send_limit or (n and (self._flush_waiters or self._closing)):
                return
            timeout: float | None = None
            if n:
                assert self._oldest is not None
                timeout = self._oldest + self.flush_interval_s - loop.time()
                if timeout <= 0:
                    return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _send_one(self, api: _WriteApi) -> None:
        n = min(len(self._lines), self._send_limit)
        payload = "\n".join(itertools.islice(self._lines, n)).encode()
        try:
            await api.write(bucket=self.bucket, org=self.org, record=payload, write_precision="ns")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._failed(exc, n)
            return
        self._pop(n)
        self.written_points += n
        if self.consecutive_failures:
            log.warning(
                "InfluxDB at %s is back after %d failed attempts",
                self.url,
                self.consecutive_failures,
            )
        self.consecutive_failures = 0
        self.last_error = None
        self._config_error = None
        self._send_limit = self.batch_size
        self._notify()

    def _pop(self, n: int) -> None:
        for _ in range(n):
            self._lines.popleft()
        self._done += n
        if not self._lines:
            self._oldest = None

    async def _failed(self, exc: BaseException, n: int) -> None:
        kind, message, retry_after = _classify(exc)
        self.last_error = message
        if kind == _SPLIT and n > 1:
            self._send_limit = max(1, n // 2)
            log.warning("InfluxDB refused %d points as too large; sending halves", n)
            return
        if kind in (_REJECT, _SPLIT):
            self._pop(n)
            self.rejected_points += n
            self._unreported_rejects = (
                f"InfluxDB at {self.url} refused {self.rejected_points} points so far "
                f"(the valid lines of a refused batch are written): {message}"
            )
            log.error("InfluxDB refused a batch of %d points: %s", n, message)
            self._notify()
            return
        self.consecutive_failures += 1
        if kind == _CONFIG:
            self._config_error = message
        delay = min(
            self.backoff_max_s,
            self.backoff_initial_s * 2 ** min(self.consecutive_failures - 1, 60),
        )
        if retry_after is not None:
            delay = min(self.backoff_max_s, max(delay, retry_after))
        level = logging.WARNING if self.consecutive_failures == 1 else logging.DEBUG
        log.log(
            level,
            "InfluxDB write to %s failed (%s); %d points buffered, retrying in %.2f s",
            self.url,
            message,
            len(self._lines),
            delay,
        )
        self._notify()
        if retry_after is not None:
            await asyncio.sleep(delay)  # the server asked for this pause: keep it
            return
        self._kick.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):  # the backoff, cut short by a new flush()
                await self._kick.wait()

    # -- queries ------------------------------------------------------------------

    async def _query(self, flux: str) -> list[Record]:
        api = cast(_QueryApi, self._client_now().query_api())
        try:
            text = await api.query_raw(flux, org=self.org)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            kind, message, _ = _classify(exc)
            if kind == _RETRY:
                raise StoreUnavailable(f"InfluxDB at {self.url}: {message}") from exc
            raise StoreError(f"InfluxDB query failed: {message}") from exc
        return await asyncio.to_thread(parse_annotated_csv, text)

    async def beats(self, patient: str, start_unix: float, end_unix: float) -> list[BeatRow]:
        """Beats of ``patient`` with ``start_unix <= t < end_unix``, by time (``session=""``)."""
        flux = flux_beats(self.bucket, patient, start_unix, end_unix)
        if _empty(start_unix, end_unix):
            return []
        return beats_from_records(patient, await self._query(flux))

    async def metrics(
        self,
        patient: str,
        start_unix: float,
        end_unix: float,
        names: Sequence[str] | None = None,
    ) -> list[MetricRow]:
        """Metric rows in the range, by time; ``values`` holds ``names`` (default: all)."""
        flux = flux_metrics(self.bucket, patient, start_unix, end_unix, names)
        if _empty(start_unix, end_unix):
            return []
        return metrics_from_records(patient, await self._query(flux), check_names(names))

    async def latest_metrics(self, patient: str) -> MetricRow | None:
        """The most recent metrics row of ``patient``: the fields at the latest time."""
        return latest_from_records(
            patient, await self._query(flux_latest_metrics(self.bucket, patient))
        )

    async def alerts(
        self,
        patient: str | None = None,
        start_unix: float | None = None,
        end_unix: float | None = None,
    ) -> list[AlertRow]:
        """Alert state changes (of one patient, or all), by time; open-ended by default."""
        flux = flux_alerts(self.bucket, patient, start_unix, end_unix)
        if start_unix is not None and end_unix is not None and _empty(start_unix, end_unix):
            return []
        return alerts_from_records(await self._query(flux))
