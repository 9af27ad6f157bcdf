"""What the dashboard sends to the browser: records and messages as plain JSON data.

Pure functions, no I/O: the web app (:mod:`hrvstream.dashboard.app`) and the live hub
(:mod:`hrvstream.dashboard.live`) turn store rows and MQTT messages into the JSON
documented in ``docs/dashboard.md`` through them, so a value looks the same whether it
came from history or live. Missing values stay ``None`` (JSON ``null``), never 0.

Series are sent column-wise (``{"t_unix_s": [...], "rmssd_ms": [...]}``) and thinned by
:func:`pick_evenly` to what a chart can show.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, TypeVar

from hrvstream.protocol.messages import (
    AlertMessage,
    BeatsMessage,
    MetricsMessage,
    StatusMessage,
)
from hrvstream.store import AlertRow, BeatRow, MetricRow

__all__ = [
    "ALERT_META_FIELDS",
    "CHART_METRICS",
    "alert_json",
    "alert_row_json",
    "beats_message_json",
    "beats_rows_json",
    "dumps",
    "group_alerts",
    "metric_row_json",
    "metrics_message_json",
    "metrics_series_json",
    "pick_evenly",
    "status_json",
]

_T = TypeVar("_T")

#: Metrics sent by default for charts and tiles.
CHART_METRICS: Final[tuple[str, ...]] = (
    "mean_hr_bpm",
    "rmssd_ms",
    "lf_hf",
    "coverage",
    "artifact_pct",
)

#: Alert-row fields that are not part of the explanation (see
#: :func:`hrvstream.server.alert_row`).
ALERT_META_FIELDS: Final = frozenset({"acknowledged_by", "note"})

_SEVERITY_RANK: Final[Mapping[str, int]] = {"critical": 3, "warning": 2, "info": 1}


def dumps(obj: Any) -> str:
    """Compact JSON, RFC 8259 (no NaN or Infinity: a NaN here is a bug, so it raises)."""
    return json.dumps(obj, allow_nan=False, separators=(",", ":"))


def pick_evenly(items: Sequence[_T], max_points: int) -> list[_T]:
    """At most ``max_points`` items of ``items``, evenly spaced, first and last kept.

    Parameters
    ----------
    items:
        The full series, in order.
    max_points:
        The most items to return (>= 2 to keep both ends; 1 keeps the last).

    Returns
    -------
    list
        ``items`` itself (as a list) if short enough, else the items at indices
        ``round(i * (n - 1) / (max_points - 1))``.

    Examples
    --------
    >>> pick_evenly(list(range(10)), 4)
    [0, 3, 6, 9]
    """
    n = len(items)
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    if n <= max_points:
        return list(items)
    if max_points == 1:
        return [items[-1]]
    step = (n - 1) / (max_points - 1)
    return [items[round(i * step)] for i in range(max_points)]


def _num(value: float | int | None) -> float | None:
    """A finite float, or ``None`` for a missing value (``None``, NaN, infinity)."""
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None


# -- status ------------------------------------------------------------------------------


def status_json(message: StatusMessage) -> dict[str, Any]:
    """A status message as the browser sees it (no agent internals beyond the strap)."""
    strap = message.strap
    return {
        "state": message.state,
        "t_unix_s": message.t_unix_s,
        "battery_pct": message.battery_pct,
        "contact": message.contact,
        "strap": None if strap is None else {"name": strap.name, "location": strap.location},
        "spool_pending": message.spool_pending,
        "last_beat_unix_s": message.last_beat_unix_s,
    }


# -- metrics -----------------------------------------------------------------------------


def metric_row_json(row: MetricRow) -> dict[str, Any]:
    """A stored metrics row: ``{"t_unix_s", "window_s", <metric>: value | None ...}``."""
    out: dict[str, Any] = {"t_unix_s": row.t_unix_s, "window_s": row.window_s}
    for name, value in row.values.items():
        out[name] = _num(value)
    return out


def metrics_message_json(message: MetricsMessage) -> dict[str, Any]:
    """A live metrics message, shaped like :func:`metric_row_json`."""
    out: dict[str, Any] = {"t_unix_s": message.t_unix_s, "window_s": message.window_s}
    for name, value in message.metric_values().items():
        out[name] = _num(value)
    return out


def metrics_series_json(
    rows: Sequence[MetricRow], names: Sequence[str], max_points: int
) -> dict[str, Any]:
    """Metric rows as columns, thinned to ``max_points``.

    Returns
    -------
    dict
        ``{"n_rows": total rows, "t_unix_s": [...], <name>: [...] for each name}``.
    """
    picked = pick_evenly(rows, max_points)
    out: dict[str, Any] = {"n_rows": len(rows), "t_unix_s": [r.t_unix_s for r in picked]}
    for name in names:
        out[name] = [_num(r.values.get(name)) for r in picked]
    return out


# -- beats -------------------------------------------------------------------------------


def beats_rows_json(rows: Sequence[BeatRow], max_points: int) -> dict[str, Any]:
    """Stored beats as an RR tachogram, thinned to ``max_points``.

    Returns
    -------
    dict
        ``{"n_beats", "t_unix_s": [...], "rr_ms": [...], "after_gap": [indices]}``; the
        indices point into the returned (thinned) arrays.
    """
    picked = pick_evenly(rows, max_points)
    return {
        "n_beats": len(rows),
        "t_unix_s": [r.t_unix_s for r in picked],
        "rr_ms": [r.rr_ms for r in picked],
        "after_gap": [i for i, r in enumerate(picked) if r.after_gap],
    }


def beats_message_json(message: BeatsMessage) -> dict[str, Any]:
    """A live beats message: beat times as Unix seconds, RR in ms, gap indices."""
    origin = message.origin_unix_s
    return {
        "t_unix_s": [origin + t for t in message.t_s],
        "rr_ms": list(message.rr_ms),
        "after_gap": list(message.after_gap),
        "contact": message.contact,
        "hr_bpm": message.hr_bpm,
    }


# -- alerts ------------------------------------------------------------------------------


def alert_json(message: AlertMessage) -> dict[str, Any]:
    """An alert state as the browser sees it (the MQTT payload without ``schema``)."""
    return {
        "alert_id": message.alert_id,
        "patient": message.patient,
        "state": message.state,
        "rule": message.rule,
        "severity": message.severity,
        "t_unix_s": message.t_unix_s,
        "explanation": dict(message.explanation),
        "acknowledged_by": message.acknowledged_by,
        "note": message.note,
    }


def alert_row_json(row: AlertRow) -> dict[str, Any]:
    """A stored alert event, shaped like :func:`alert_json`."""
    explanation = {k: v for k, v in row.fields.items() if k not in ALERT_META_FIELDS}
    by = row.fields.get("acknowledged_by")
    note = row.fields.get("note")
    return {
        "alert_id": row.alert_id,
        "patient": row.patient,
        "state": row.state,
        "rule": row.rule,
        "severity": row.severity,
        "t_unix_s": row.t_unix_s,
        "explanation": explanation,
        "acknowledged_by": by if isinstance(by, str) else None,
        "note": note if isinstance(note, str) else None,
    }


def group_alerts(
    rows: Iterable[AlertRow], open_ids: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """Alert events grouped per alert, newest alert first.

    Parameters
    ----------
    rows:
        Alert events (any order) as the store returns them.
    open_ids:
        The ids of the alerts the alert engine reports as open (it decides what can
        still be acknowledged); ``None``: an alert is open while it lacks a
        ``resolved`` or an ``acknowledged`` event.

    Returns
    -------
    list of dict
        One per alert: ``alert_id``, ``patient``, ``rule``, ``severity`` (the highest
        seen), ``raised_unix_s`` (the ``raised`` event's, else the first),
        ``last_unix_s``, ``state`` (latest event's), ``explanation`` (of the first event
        that has one, else the latest),
        ``acknowledged`` (``None`` or ``{"by", "note", "t_unix_s"}``),
        ``resolved_unix_s`` (``None`` if not resolved), ``open`` and ``events`` (every
        event, oldest first, as :func:`alert_row_json`).
    """
    by_id: dict[str, list[AlertRow]] = {}
    for row in rows:
        by_id.setdefault(row.alert_id, []).append(row)
    open_set = None if open_ids is None else set(open_ids)
    out: list[dict[str, Any]] = []
    for alert_id, events in by_id.items():
        # Raised first, then the rest by time: an acknowledgement is dated by the server's
        # clock and the other events by the data's, which may run ahead of it.
        events.sort(key=lambda r: (r.state != "raised", r.t_unix_s))
        shaped = [alert_row_json(e) for e in events]
        first, last = shaped[0], shaped[-1]
        explanation: dict[str, Any] = next(
            (e["explanation"] for e in shaped if e["explanation"]), {}
        )
        acked = next((e for e in reversed(shaped) if e["state"] == "acknowledged"), None)
        resolved = next((e for e in shaped if e["state"] == "resolved"), None)
        severity = max((e["severity"] for e in shaped), key=lambda s: _SEVERITY_RANK.get(s, 0))
        is_open = (acked is None or resolved is None) if open_set is None else alert_id in open_set
        out.append(
            {
                "alert_id": alert_id,
                "patient": first["patient"],
                "rule": last["rule"],
                "severity": severity,
                "raised_unix_s": first["t_unix_s"],
                "last_unix_s": last["t_unix_s"],
                "state": last["state"],
                "explanation": explanation,
                "acknowledged": None
                if acked is None
                else {
                    "by": acked["acknowledged_by"],
                    "note": acked["note"],
                    "t_unix_s": acked["t_unix_s"],
                },
                "resolved_unix_s": None if resolved is None else resolved["t_unix_s"],
                "open": is_open,
                "events": shaped,
            }
        )
    out.sort(key=lambda a: (a["raised_unix_s"], a["alert_id"]), reverse=True)
    return out
