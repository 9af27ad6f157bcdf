"""Offline evaluation of the alert engine on recordings (``hrvstream alerts``).

The live server judges a patient's windows as they arrive, against a baseline built from
the patient's earlier days. :func:`evaluate` does the same with files, deterministically:

1. **Timeline.** The input recording starts at ``start_unix_s`` (the CLI's ``--start``,
   default :data:`DEFAULT_START` in the patient's time zone). The baseline recordings,
   oldest first, are placed before it, each at the input's local clock time on an
   earlier day: the latest such day on which the recording ends at least ``gap_s``
   (:data:`MIN_GAP_S`, 1 h) before the next one (or the input) starts. Daily sessions
   thus land on consecutive days at the same hour ("the same time yesterday"); a
   recording of 22.5 h lands on the previous day too (it ends 1.5 h before the input).
2. **Windows.** Each recording is analysed with
   :func:`hrvstream.hrv.engine.analyze` (``window_s``, ``step_s``: by default 300 s every
   5 s, as the live agent does) and each window becomes a
   :class:`~hrvstream.alerts.engine.Window` on that timeline, one session per recording.
3. **Seed.** The baseline windows go through :meth:`AlertEngine.seed`: they build the
   long-term baseline (the engine keeps only clean, resting, non-stressed windows) and
   whatever they raise is dropped.
4. **Replay.** The input's windows go through :meth:`AlertEngine.observe` in order; every
   ``raised`` alert becomes one JSON-able dict (:func:`alert_record`) and its
   ``resolved`` change, if any, sets ``resolved_t_s``.

Times in the output are seconds since the start of the input (its first beat). Nothing
here reads a clock or a file, so the same recordings and options give the same alerts.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, get_args
from zoneinfo import ZoneInfo

from hrvstream.alerts.baseline import Baseline, Sample, build_baseline
from hrvstream.alerts.config import AlertConfig, AlertConfigSet
from hrvstream.alerts.engine import (
    AlertEngine,
    Score,
    State,
    Window,
    judge_quality,
    stress_score,
    windows_from_analysis,
)
from hrvstream.errors import ConfigError
from hrvstream.protocol.messages import AlertMessage
from hrvstream.recordings.model import RRSeries

__all__ = [
    "ALERT_KEYS",
    "DEFAULT_PATIENT",
    "DEFAULT_START",
    "DEFAULT_STEP_S",
    "DEFAULT_WINDOW_S",
    "INPUT_SESSION",
    "MIN_GAP_S",
    "STATES",
    "OfflineResult",
    "Placement",
    "Trace",
    "alert_record",
    "alerts_config_from_toml",
    "baseline_of",
    "evaluate",
    "iter_json_lines",
    "judged",
    "parse_start",
    "place_before",
    "recording_windows",
    "scores_of",
]

#: Where the input starts when no ``--start`` is given (a Monday morning), local time.
DEFAULT_START: Final = "2026-01-05T08:00"
#: Least time between the end of one recording and the start of the next.
MIN_GAP_S: Final = 3600.0
#: The live agent's window and step.
DEFAULT_WINDOW_S: Final = 300.0
DEFAULT_STEP_S: Final = 5.0
#: The patient pseudonym used when none is given.
DEFAULT_PATIENT: Final = "offline"
#: Session name of the input; baseline recordings are ``baseline-1``, ``baseline-2`` ...
INPUT_SESSION: Final = "input"
#: Assessment states, in the order the summary lists them.
STATES: Final[tuple[str, ...]] = get_args(State)
#: Keys every alert dict has (see :func:`alert_record`).
ALERT_KEYS: Final[tuple[str, ...]] = (
    "t_s",
    "resolved_t_s",
    "time",
    "rule",
    "severity",
    "metric",
    "value",
    "baseline",
    "deviation",
    "deviation_pct",
    "stress_score",
    "notify",
    "message",
    "alert_id",
    "patient",
    "explanation",
)


# -- configuration and timeline ------------------------------------------------------------


def alerts_config_from_toml(data: Mapping[str, Any], where: str) -> AlertConfigSet:
    """Alert settings from a parsed TOML document.

    Parameters
    ----------
    data:
        The document. Its ``[alerts]`` table is used when it has one (other tables, such
        as a server file's ``[mqtt]``, are ignored, and so is the server's
        ``[alerts] state_path``); otherwise the top level itself is the alerts table
        (``raise_score = 2.5`` ...).
    where:
        The file's name, for error messages.

    Returns
    -------
    AlertConfigSet
        Defaults with the file's values and per-patient overrides applied.

    Raises
    ------
    ConfigError
        An unknown key, a value of the wrong type or out of range, or a document with
        other tables but no ``[alerts]`` table.
    """
    alerts = data.get("alerts")
    if isinstance(alerts, Mapping):
        section = {k: v for k, v in alerts.items() if k != "state_path"}
        return AlertConfigSet.from_mapping(section, f"{where} [alerts]")
    tables = [k for k, v in data.items() if isinstance(v, Mapping) and k != "patients"]
    if tables:
        found = ", ".join(f"[{t}]" for t in tables)
        raise ConfigError(
            f"{where}: no [alerts] table (found {found}); put the alert settings under "
            "[alerts], or at the top level of a file of their own"
        )
    return AlertConfigSet.from_mapping(data, where)


def parse_start(text: str, zone: ZoneInfo) -> float:
    """The Unix time of an ISO 8601 date-time (``2026-01-05T08:00``, ``...+01:00``).

    Parameters
    ----------
    text:
        A date-time; without an offset it is local time in ``zone``. A date alone means
        its midnight.
    zone:
        The patient's time zone.

    Returns
    -------
    float
        Seconds since the Unix epoch.

    Raises
    ------
    ConfigError
        If ``text`` is not an ISO 8601 date-time.
    """
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"--start {text!r}: expected an ISO 8601 date-time such as "
            f"'{DEFAULT_START}' (local time) or '{DEFAULT_START}+01:00'"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=zone)
    return dt.timestamp()


def place_before(
    durations_s: Sequence[float],
    input_start_unix_s: float,
    zone: ZoneInfo,
    gap_s: float = MIN_GAP_S,
) -> list[float]:
    """Start times of recordings placed on earlier days, before the input.

    Parameters
    ----------
    durations_s:
        The recordings' lengths, oldest first (the last one is the most recent).
    input_start_unix_s:
        When the input starts.
    zone:
        The patient's time zone: days are local days, so a recording keeps the input's
        local clock time across a daylight-saving change.
    gap_s:
        Least time from the end of one recording to the start of the next.

    Returns
    -------
    list of float
        One start time per recording, in the same order: each one at the input's local
        clock time on the latest earlier day that leaves ``gap_s`` before the next
        recording (or the input) starts.

    Examples
    --------
    >>> from zoneinfo import ZoneInfo
    >>> day = 86400.0
    >>> place_before([7200.0, 7200.0], 10 * day, ZoneInfo("UTC")) == [8 * day, 9 * day]
    True
    >>> place_before([22.5 * 3600], 10 * day, ZoneInfo("UTC")) == [9 * day]
    True
    """
    local = datetime.fromtimestamp(input_start_unix_s, zone)
    starts: list[float] = []
    next_start = input_start_unix_s
    days = 0
    for duration in reversed(durations_s):
        if not (math.isfinite(duration) and duration >= 0):
            raise ValueError(f"a recording's duration must be >= 0 s, got {duration!r}")
        days += 1
        start = (local - timedelta(days=days)).timestamp()
        while start + duration + gap_s > next_start:
            days += 1
            start = (local - timedelta(days=days)).timestamp()
        starts.append(start)
        next_start = start
    return starts[::-1]


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a recording was put on the timeline."""

    source: str
    session: str
    start_unix_s: float
    duration_s: float
    windows: int

    def to_json(self, zone: ZoneInfo) -> dict[str, Any]:
        """JSON form, with the local start time."""
        return {
            "source": self.source,
            "session": self.session,
            "start": _iso(self.start_unix_s, zone),
            "duration_s": self.duration_s,
            "windows": self.windows,
        }


def recording_windows(
    series: RRSeries,
    *,
    patient: str,
    session: str,
    origin_unix_s: float,
    window_s: float = DEFAULT_WINDOW_S,
    step_s: float = DEFAULT_STEP_S,
) -> list[Window]:
    """The HRV windows of a recording, as the alert engine takes them.

    Parameters
    ----------
    series:
        The recording.
    patient, session:
        Who and which session the windows belong to.
    origin_unix_s:
        The Unix time of the recording's first beat (``t_s = 0``).
    window_s, step_s:
        Window length and the time between window ends, seconds.

    Returns
    -------
    list of Window
        One per window end (``step_s``, ``2 * step_s``, ... up to the last beat), in time
        order, with the recent HR (last 30 s of the recording's beats) that the server
        takes from the beats messages. Early, partly covered windows are included: the
        engine's quality gate judges them.
    """
    from hrvstream.hrv.engine import AnalysisConfig, analyze  # numba: only when needed

    table = analyze(series, AnalysisConfig(window_s=window_s, step_s=step_s)).windows
    return windows_from_analysis(
        patient, session, origin_unix_s, window_s, table.columns, series.t_s, series.rr_ms
    )


def judged(windows: Iterable[Window], cfg: AlertConfig) -> list[Window]:
    """The windows that pass the engine's quality gate (:func:`judge_quality`)."""
    return [w for w in windows if judge_quality(w, cfg) == "ok"]


def baseline_of(windows: Sequence[Window], source: str = "offline") -> Baseline | None:
    """A baseline built directly from windows, as the engine builds its own from samples.

    Unlike the engine, every window given is used: overlapping ones too, and whatever
    their score. Pass windows that passed :func:`judged`.

    Parameters
    ----------
    windows:
        Judged windows (each with RMSSD and HR).
    source:
        The baseline's ``source`` label.

    Returns
    -------
    Baseline or None
        ``None`` for no windows.
    """
    samples = []
    for w in windows:
        if w.rmssd_ms is None or w.mean_hr_bpm is None or w.rmssd_ms <= 0:
            raise ValueError("baseline_of takes judged windows (with RMSSD and HR)")
        ln_lf_hf = math.log(w.lf_hf) if w.lf_hf is not None and w.lf_hf > 0 else None
        samples.append(Sample(w.t_unix_s, math.log(w.rmssd_ms), w.mean_hr_bpm, ln_lf_hf))
    return build_baseline(samples, source)


def scores_of(windows: Iterable[Window], baseline: Baseline, cfg: AlertConfig) -> list[Score]:
    """The stress score of each judged window against ``baseline`` (no activity gate)."""
    return [stress_score(w, baseline, cfg) for w in windows]


# -- alerts -------------------------------------------------------------------------------


def _finite(x: object) -> object:
    """JSON-safe: NaN and infinities become ``None``."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _iso(t_unix_s: float, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(t_unix_s, zone).isoformat(timespec="seconds")


def alert_record(
    raised: AlertMessage,
    resolved: AlertMessage | None,
    origin_unix_s: float,
    zone: ZoneInfo,
) -> dict[str, Any]:
    """One alert as a JSON-able dict (one line of ``hrvstream alerts``' output).

    Parameters
    ----------
    raised:
        The alert's ``raised`` message.
    resolved:
        Its ``resolved`` message, or ``None`` if it was still open when the input ended.
    origin_unix_s:
        The start of the input: ``t_s`` and ``resolved_t_s`` are relative to it.
    zone:
        The patient's time zone, for ``time``.

    Returns
    -------
    dict
        ``t_s`` (when raised), ``resolved_t_s`` (or ``None``), ``time`` (local ISO 8601),
        ``rule``, ``severity``, ``metric``, ``value``, ``baseline``, ``deviation``,
        ``deviation_pct``, ``stress_score`` (``None`` for the trend rule), ``notify``
        (``False`` in quiet hours), ``message``, ``alert_id``, ``patient`` and the full
        ``explanation`` (with ``resolved_because`` once resolved). For the acute rule,
        ``metric`` is ``ln_rmssd``: ``value`` and ``baseline`` are lnRMSSD of the window
        and of the baseline, ``deviation`` its z-score.
    """
    ex: Mapping[str, Any] = (resolved or raised).explanation
    first = raised.explanation
    return {
        "t_s": raised.t_unix_s - origin_unix_s,
        "resolved_t_s": None if resolved is None else resolved.t_unix_s - origin_unix_s,
        "time": _iso(raised.t_unix_s, zone),
        "rule": raised.rule,
        "severity": raised.severity,
        "metric": first.get("metric"),
        "value": _finite(first.get("value")),
        "baseline": _finite(first.get("baseline")),
        "deviation": _finite(first.get("deviation")),
        "deviation_pct": _finite(first.get("deviation_pct")),
        "stress_score": _finite(first.get("stress_score")),
        "notify": bool(first.get("notify", 1)),
        "message": first.get("message"),
        "alert_id": raised.alert_id,
        "patient": raised.patient,
        "explanation": {k: _finite(v) for k, v in ex.items()},
    }


# -- evaluation -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Trace:
    """What the engine made of each input window (for evaluations and plots).

    Attributes
    ----------
    windows:
        The input's windows, in order.
    states:
        The assessment state after each window (see :data:`STATES`).
    scores:
        The stress score of each window (NaN where it was not scored).
    qualities:
        The quality verdict of each window: ``ok``, ``activity``, or why it was not
        judged (``artifacts``, ``low_coverage``, ``missing``, ``no_contact``).
    """

    windows: tuple[Window, ...]
    states: tuple[str, ...]
    scores: tuple[float, ...]
    qualities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class OfflineResult:
    """The outcome of :func:`evaluate`.

    Attributes
    ----------
    alerts:
        One dict per alert raised during the input (see :func:`alert_record`), in order.
    summary:
        Counts: windows, windows and hours by assessment state, why windows were not
        judged, the long-term baseline at the start of the input (its windows, and the
        median and robust SD of each metric: ``baseline``), alerts and alerts per 24 h, and
        where every recording was placed (JSON-able).
    placements:
        Where the baseline recordings and the input were placed (input last).
    trace:
        The input's windows with their assessment.
    """

    alerts: tuple[dict[str, Any], ...]
    summary: dict[str, Any]
    placements: tuple[Placement, ...]
    trace: Trace


def evaluate(
    series: RRSeries,
    baselines: Sequence[RRSeries] = (),
    config: AlertConfigSet | None = None,
    *,
    patient: str = DEFAULT_PATIENT,
    start_unix_s: float | None = None,
    window_s: float = DEFAULT_WINDOW_S,
    step_s: float = DEFAULT_STEP_S,
    gap_s: float = MIN_GAP_S,
) -> OfflineResult:
    """Replay a recording through the alert engine after its baseline recordings.

    See the module docstring for how the recordings are placed and replayed.

    Parameters
    ----------
    series:
        The input recording.
    baselines:
        Earlier recordings of the same person, oldest first. Without them the engine
        has only the input's own quiet windows (a session baseline).
    config:
        Alert settings (defaults when ``None``); ``patient``'s overrides apply.
    patient:
        The patient pseudonym the windows carry (2-64 of ``a-z0-9_-``).
    start_unix_s:
        When the input starts; default :data:`DEFAULT_START` in the patient's zone.
    window_s, step_s:
        HRV window length and the time between windows, seconds.
    gap_s:
        Least time between consecutive recordings on the timeline.

    Returns
    -------
    OfflineResult
        The alerts, a summary, the placements and the per-window trace.

    Raises
    ------
    ConfigError
        A window or step that is not a positive number.
    """
    for name, v in (("window", window_s), ("step", step_s)):
        if not (math.isfinite(v) and v > 0):
            raise ConfigError(f"--{name} must be more than 0 s, got {v!r}")
    config = config or AlertConfigSet()
    cfg = config.for_patient(patient)
    zone = cfg.zone()
    start = parse_start(DEFAULT_START, zone) if start_unix_s is None else start_unix_s

    engine = AlertEngine(config)
    starts = place_before([b.duration_s for b in baselines], start, zone, gap_s)
    placements: list[Placement] = []
    seed: list[Window] = []
    for i, (b, b_start) in enumerate(zip(baselines, starts, strict=True)):
        session = f"baseline-{i + 1}"
        ws = recording_windows(
            b,
            patient=patient,
            session=session,
            origin_unix_s=b_start,
            window_s=window_s,
            step_s=step_s,
        )
        seed.extend(ws)
        placements.append(Placement(b.source, session, b_start, b.duration_s, len(ws)))
    engine.seed(seed)
    state = engine.export_state(patient)
    pool: list[list[float | None]] = [] if state is None else state["pool"]
    long_term = len(pool) >= cfg.baseline_min_windows

    windows = recording_windows(
        series,
        patient=patient,
        session=INPUT_SESSION,
        origin_unix_s=start,
        window_s=window_s,
        step_s=step_s,
    )
    placements.append(
        Placement(series.source, INPUT_SESSION, start, series.duration_s, len(windows))
    )
    raised: dict[str, AlertMessage] = {}
    resolved: dict[str, AlertMessage] = {}
    states: list[str] = []
    scores: list[float] = []
    qualities: list[str] = []
    for w in windows:
        outcome = engine.observe(w)
        a = outcome.assessment
        states.append("no_baseline" if a is None else a.state)
        qualities.append("missing" if a is None else a.quality)
        scores.append(math.nan if a is None or a.score is None else a.score.score)
        for ev in outcome.events:
            if ev.state == "raised":
                raised[ev.alert_id] = ev
            elif ev.state == "resolved" and ev.alert_id in raised:
                resolved[ev.alert_id] = ev
    alerts = tuple(
        alert_record(m, resolved.get(aid), start, zone)
        for aid, m in sorted(raised.items(), key=lambda kv: kv[1].t_unix_s)
    )
    summary = _summary(
        series,
        alerts,
        states,
        qualities,
        placements,
        pool,
        long_term=long_term,
        zone=zone,
        patient=patient,
        window_s=window_s,
        step_s=step_s,
    )
    return OfflineResult(
        alerts,
        summary,
        tuple(placements),
        Trace(tuple(windows), tuple(states), tuple(scores), tuple(qualities)),
    )


def _summary(
    series: RRSeries,
    alerts: Sequence[Mapping[str, Any]],
    states: Sequence[str],
    qualities: Sequence[str],
    placements: Sequence[Placement],
    pool: Sequence[Sequence[float | None]],
    *,
    long_term: bool,
    zone: ZoneInfo,
    patient: str,
    window_s: float,
    step_s: float,
) -> dict[str, Any]:
    by_state = Counter(states)
    hours = series.duration_s / 3600.0
    base: dict[str, Any] | None = None
    b = build_baseline([Sample.from_list(v) for v in pool], "long_term") if pool else None
    if b is not None:
        base = {
            "rmssd_ms": math.exp(b.ln_rmssd.centre),
            "ln_rmssd_sd": b.ln_rmssd.spread,
            "hr_bpm": b.hr_bpm.centre,
            "hr_sd_bpm": b.hr_bpm.spread,
            "lf_hf": None if b.ln_lf_hf is None else math.exp(b.ln_lf_hf.centre),
            "ln_lf_hf_sd": None if b.ln_lf_hf is None else b.ln_lf_hf.spread,
        }
    return {
        "input": series.source,
        "patient": patient,
        "input_start": _iso(placements[-1].start_unix_s, zone),
        "input_duration_s": series.duration_s,
        "window_s": window_s,
        "step_s": step_s,
        "windows": len(states),
        "windows_judged": sum(by_state[s] for s in ("calm", "elevated", "stressed")),
        "windows_by_state": {s: by_state[s] for s in STATES},
        "hours_by_state": {s: by_state[s] * step_s / 3600.0 for s in STATES},
        "poor_quality_by_reason": dict(
            Counter(q for q, s in zip(qualities, states, strict=True) if s == "poor_quality")
        ),
        "baseline_recordings": [p.to_json(zone) for p in placements[:-1]],
        "baseline_windows": len(pool),
        "baseline_source": "long_term" if long_term else "session",
        "baseline": base,
        "alerts": len(alerts),
        "alerts_by_rule": dict(Counter(str(a["rule"]) for a in alerts)),
        "alerts_notified": sum(1 for a in alerts if a["notify"]),
        "alerts_per_24h": len(alerts) * 24.0 / hours if hours > 0 else None,
    }


def iter_json_lines(alerts: Sequence[Mapping[str, Any]]) -> Iterator[str]:
    """The alerts as JSON Lines, one object per line (missing values are ``null``)."""
    for a in alerts:
        yield json.dumps(a, allow_nan=False, separators=(", ", ": ")) + "\n"
