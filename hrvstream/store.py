"""Where beats, HRV windows and alerts are kept: the records and the interface, no I/O.

Two implementations: :class:`hrvstream.adapters.influx.InfluxStore` (production, InfluxDB
2 through its v2 write API, Flux queries) and :class:`hrvstream.adapters.sqlite_store.
SqliteStore` (embedded default; also serves history to the dashboard in the demo).

Rules every backend follows:

* **Identity.** A beat is identified by ``(patient, beat time)``, a metrics row by
  ``(patient, window time)``, an alert event by ``(alert_id, state, time)``. Writing the
  same record again overwrites it (last write wins), never duplicates it, so a batch can
  be retried after a timeout without knowing whether the first attempt landed.
* **Time resolution.** Times are kept to the microsecond: :func:`time_key_us` is the key;
  records round their ``t_unix_s`` to :func:`canonical_time` when built, so what a query
  returns equals what was written. (VictoriaMetrics, the test stand-in for InfluxDB,
  keeps milliseconds; beats are at least ~200 ms apart.)
* **Numbers, not strings.** Stored values are numbers (VictoriaMetrics reads a string
  field as 0). ``None`` is a missing value: omitted when written, ``None`` when read,
  never 0. NaN counts as missing.
* **Ranges** are half-open, ``start_unix <= t < end_unix``, in Unix seconds (UTC).
* **Identifiers** (patient codes, alert ids, rule, severity and state names) match
  :data:`TOKEN_PATTERN`: they go into tags and query text, and a strict alphabet is what
  rules out injection. Anything else is an :class:`InvalidIdentifier`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol, runtime_checkable

from hrvstream.errors import HrvStreamError
from hrvstream.hrv.engine import WINDOW_COLUMNS

#: Metric names of a window row: :data:`WINDOW_COLUMNS` without the time column.
METRIC_NAMES: Final[tuple[str, ...]] = tuple(c for c in WINDOW_COLUMNS if c != "t_s")

#: Patient codes, alert ids, rule / severity / state names: 1-64 characters, a letter or
#: digit first, then letters, digits, ``.``, ``_``, ``-`` or ``:``. No spaces, quotes,
#: backslashes, commas, ``=`` or ``$``: nothing that means something in line protocol,
#: Flux or SQL.
TOKEN_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}"
_TOKEN = re.compile(TOKEN_PATTERN)
#: Names of extra alert fields: an identifier not starting with ``_`` (InfluxDB reserves it).
FIELD_NAME_PATTERN: Final = r"[A-Za-z][A-Za-z0-9_]{0,63}"
_FIELD_NAME = re.compile(FIELD_NAME_PATTERN)
_METRIC_SET: Final = frozenset(METRIC_NAMES)


class StoreError(HrvStreamError):
    """The store refused or failed an operation (misconfiguration, rejected data, closed)."""


class StoreUnavailable(StoreError):
    """The database cannot be reached (or is not answering) right now.

    From a write: none of its rows were accepted (the store's buffer is full); the caller
    must not acknowledge them upstream, and keeps or re-requests them. From
    :meth:`Store.flush`: the rows are still buffered by the store and retried; they are
    not in the database yet.
    """


class InvalidIdentifier(StoreError, ValueError):
    """A patient code, alert id or rule/severity/state name does not match TOKEN_PATTERN."""


def check_token(kind: str, value: object) -> str:
    """``value`` if it is a valid identifier (see :data:`TOKEN_PATTERN`), else raise.

    Raises
    ------
    InvalidIdentifier
        With ``kind`` ("patient", "alert_id" ...) and the offending value in the message.
    """
    if not isinstance(value, str) or _TOKEN.fullmatch(value) is None:
        raise InvalidIdentifier(
            f"invalid {kind} {value!r}: use 1-64 letters, digits, '.', '_', '-' or ':', "
            "starting with a letter or digit"
        )
    return value


def time_key_us(t_unix_s: float) -> int:
    """The microsecond key of a time: what makes two writes of one record the same point.

    Raises
    ------
    ValueError
        If the time is not finite or before 1970.
    """
    if not math.isfinite(t_unix_s) or t_unix_s < 0:
        raise ValueError(f"time must be finite Unix seconds >= 0, got {t_unix_s!r}")
    return round(t_unix_s * 1_000_000)


def canonical_time(t_unix_s: float) -> float:
    """The time as every backend returns it: rounded to the microsecond."""
    return time_key_us(t_unix_s) / 1_000_000


def missing_to_none(value: float | None) -> float | None:
    """``None`` for a missing value (``None`` or NaN), the value as a ``float`` otherwise."""
    if value is None:
        return None
    v = float(value)
    return None if math.isnan(v) else v


def _set_time(record: object, t_unix_s: float) -> None:
    """Store the record's time as :func:`canonical_time` (raises for a bad time)."""
    object.__setattr__(record, "t_unix_s", canonical_time(t_unix_s))


@dataclass(frozen=True, slots=True)
class BeatRow:
    """One heartbeat of one patient.

    Attributes
    ----------
    patient:
        Pseudonymous patient code (:data:`TOKEN_PATTERN`).
    t_unix_s:
        Beat time, Unix seconds (UTC), rounded to the microsecond. With ``patient``, the
        identity of the beat.
    rr_ms:
        The RR interval ending at this beat, milliseconds (finite, > 0).
    after_gap:
        Beats were lost just before this one.
    session:
        The recording session the beat came from. Kept by SQLite; InfluxStore does not
        store it (it returns ``""``): see :mod:`hrvstream.adapters.influx`.
    seq:
        Beat number within the session (>= 0).
    """

    patient: str
    t_unix_s: float
    rr_ms: float
    after_gap: bool
    session: str
    seq: int

    def __post_init__(self) -> None:
        check_token("patient", self.patient)
        _set_time(self, self.t_unix_s)
        if not (math.isfinite(self.rr_ms) and self.rr_ms > 0):
            raise ValueError(f"rr_ms must be finite and > 0, got {self.rr_ms!r}")
        if not isinstance(self.seq, int) or isinstance(self.seq, bool) or self.seq < 0:
            raise ValueError(f"seq must be an int >= 0, got {self.seq!r}")
        if not isinstance(self.session, str):
            raise ValueError(f"session must be a string, got {type(self.session).__name__}")


@dataclass(frozen=True, slots=True)
class MetricRow:
    """The HRV metrics of one window of one patient.

    Attributes
    ----------
    patient:
        Pseudonymous patient code.
    t_unix_s:
        Window time (the ``t_s`` of the window row, as Unix seconds). With ``patient``,
        the identity of the row.
    window_s:
        Window length, seconds.
    values:
        Metric name (:data:`METRIC_NAMES`) -> value; ``None`` (or NaN, normalised to
        ``None``) is a missing value. Names left out are missing too. Queries return
        every requested name, ``None`` where missing.
    """

    patient: str
    t_unix_s: float
    window_s: float
    values: Mapping[str, float | None]

    def __post_init__(self) -> None:
        check_token("patient", self.patient)
        _set_time(self, self.t_unix_s)
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ValueError(f"window_s must be finite and > 0, got {self.window_s!r}")
        unknown = sorted(set(self.values) - _METRIC_SET)
        if unknown:
            raise ValueError(f"unknown metric names {unknown}; known: {', '.join(METRIC_NAMES)}")
        object.__setattr__(self, "values", {k: missing_to_none(v) for k, v in self.values.items()})

    @classmethod
    def from_window(
        cls, patient: str, origin_unix_s: float, window_s: float, row: Mapping[str, float]
    ) -> MetricRow:
        """A window row of the engine (``t_s`` relative to ``origin_unix_s``, NaN missing)."""
        values = {k: missing_to_none(row.get(k)) for k in METRIC_NAMES}
        return cls(patient, origin_unix_s + float(row["t_s"]), window_s, values)


AlertFieldValue = float | str | None

#: The attributes of an alert that are not ``fields`` (and may not be field names).
ALERT_ATTRIBUTES: Final[tuple[str, ...]] = (
    "alert_id",
    "patient",
    "state",
    "rule",
    "severity",
    "t_unix_s",
)


@dataclass(frozen=True, slots=True)
class AlertRow:
    """One state change of one alert (minimal; the alerting issue extends it).

    Attributes
    ----------
    alert_id:
        Identifies the alert across its state changes (:data:`TOKEN_PATTERN`).
    patient:
        Pseudonymous patient code.
    t_unix_s:
        Time of this state change.
    state, rule, severity:
        Short names (:data:`TOKEN_PATTERN`), e.g. ``"firing"``, ``"rmssd_drop"``,
        ``"warning"``.
    fields:
        Extra values by name (:data:`FIELD_NAME_PATTERN`). Prefer numbers: a string value
        is kept by SQLite and InfluxDB, but VictoriaMetrics reads it as 0. Numbers become
        ``float``; ``None``/NaN is missing and dropped from the mapping.
    """

    alert_id: str
    patient: str
    t_unix_s: float
    state: str
    rule: str
    severity: str
    fields: Mapping[str, AlertFieldValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_token("alert_id", self.alert_id)
        check_token("patient", self.patient)
        check_token("state", self.state)
        check_token("rule", self.rule)
        check_token("severity", self.severity)
        _set_time(self, self.t_unix_s)
        clean: dict[str, AlertFieldValue] = {}
        for name, value in self.fields.items():
            if not isinstance(name, str) or _FIELD_NAME.fullmatch(name) is None:
                raise ValueError(f"invalid alert field name {name!r}: use {FIELD_NAME_PATTERN}")
            if name in ALERT_ATTRIBUTES:
                raise ValueError(f"alert field name {name!r} clashes with a record attribute")
            if isinstance(value, str):
                clean[name] = value
            elif value is None:
                continue
            elif isinstance(value, int | float):  # bool too: True -> 1.0
                number = missing_to_none(value)
                if number is not None:
                    clean[name] = number
            else:
                raise ValueError(
                    f"alert field {name!r} must be a number, a string or None, "
                    f"got {type(value).__name__}"
                )
        object.__setattr__(self, "fields", clean)


@runtime_checkable
class Store(Protocol):
    """Where the server keeps beats, metrics and alerts, and the dashboard reads history.

    Writes may be buffered: a write returning means the store has *accepted* the rows
    (it will not lose them while it runs); :meth:`flush` returning means they are in the
    database. A write raising :class:`StoreUnavailable` accepted none of its rows.
    """

    async def write_beats(self, rows: Sequence[BeatRow]) -> None:
        """Accept beats (idempotent by patient and beat time)."""
        ...

    async def write_metrics(self, rows: Sequence[MetricRow]) -> None:
        """Accept metric rows (idempotent by patient and window time)."""
        ...

    async def write_alerts(self, rows: Sequence[AlertRow]) -> None:
        """Accept alert state changes (idempotent by alert id, state and time)."""
        ...

    async def flush(self) -> None:
        """Return once everything accepted so far is in the database.

        Raises
        ------
        StoreUnavailable
            The database could not be reached before the store's deadline. Rows stay
            buffered (and retried) as long as the store is open.
        """
        ...

    async def close(self) -> None:
        """Flush, then release connections. Raises like :meth:`flush`, still closing."""
        ...

    async def beats(self, patient: str, start_unix: float, end_unix: float) -> list[BeatRow]:
        """Beats of ``patient`` with ``start_unix <= t < end_unix``, by time."""
        ...

    async def metrics(
        self,
        patient: str,
        start_unix: float,
        end_unix: float,
        names: Sequence[str] | None = None,
    ) -> list[MetricRow]:
        """Metric rows in the range, by time; ``values`` holds ``names`` (default: all)."""
        ...

    async def latest_metrics(self, patient: str) -> MetricRow | None:
        """The most recent metrics row of ``patient`` (all names), or ``None``."""
        ...

    async def alerts(
        self,
        patient: str | None = None,
        start_unix: float | None = None,
        end_unix: float | None = None,
    ) -> list[AlertRow]:
        """Alert state changes (of one patient, or all), by time; open-ended by default."""
        ...


def check_names(names: Sequence[str] | None) -> tuple[str, ...]:
    """The requested metric names (all of :data:`METRIC_NAMES` for ``None``), validated."""
    if names is None:
        return METRIC_NAMES
    if isinstance(names, str):
        raise ValueError("names must be a sequence of metric names, not a string")
    unknown = sorted(set(names) - _METRIC_SET)
    if unknown:
        raise ValueError(f"unknown metric names {unknown}; known: {', '.join(METRIC_NAMES)}")
    return tuple(dict.fromkeys(names))


def check_range(start_unix: float, end_unix: float) -> tuple[int, int]:
    """Microsecond keys of a half-open range; raises ``ValueError`` for a bad range."""
    start, end = time_key_us(start_unix), time_key_us(end_unix)
    if end < start:
        raise ValueError(f"end {end_unix} is before start {start_unix}")
    return start, end
