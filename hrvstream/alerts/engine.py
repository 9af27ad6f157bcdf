"""The alert engine: baselines, quality gating, rules and the alert lifecycle. Pure.

Feed it HRV windows (:class:`Window`, one per metrics message, in time order per patient)
and therapists' acknowledgements; it returns alert state changes as
:class:`~hrvstream.protocol.messages.AlertMessage` values and keeps an
:meth:`AlertEngine.assessment` of each patient. It never reads a clock: time is the
windows' own ``t_unix_s`` (and the time given with an acknowledgement), so a recording
replayed at any speed gives the same alerts, and tests drive days in milliseconds.

Per window and patient:

1. **Duplicates** (a window at or before the last one seen, e.g. an MQTT redelivery) are
   ignored: alert ids and events come out once.
2. **Quality**: no contact, a missing metric, coverage below ``min_coverage`` or more
   than ``max_artifact_pct`` corrected beats -> the window is not judged; the assessment
   says why (``poor_quality``).
3. **Activity**: HR ``activity_hr_delta_bpm`` above the resting baseline, or rising
   steadily (``activity_rise_bpm_per_min`` over ``activity_trend_s``) while already
   ``activity_rise_min_delta_bpm`` above it -> ``activity`` for the window and
   ``activity_hold_s`` after (recovery). No accelerometer data reaches the engine yet.
4. **Baseline**: the long-term pool (clean resting windows of the last ``baseline_days``,
   one per window length) once it holds ``baseline_min_windows``; before that the
   current session's quiet windows once there are ``session_min_windows``; before that,
   none: no stress alert, and the assessment says ``no_baseline``.
5. **Stress score**: the weighted mean of ``-z(lnRMSSD)``, ``z(HR)`` and ``z(ln LF/HF)``
   against the baseline (each clipped to [-4, 8]); 0 is the patient's normal.
6. **Acute rule**: score >= ``raise_score`` for ``min_duration_s`` raises
   ``acute_stress`` (``critical`` from ``critical_score``); it resolves after
   ``clear_duration_s`` below ``clear_score``; then ``cooldown_s`` without a new one.
7. **Trend rule**, at each new local day: the last ``trend_days`` days' mean daily
   lnRMSSD below the normal range of the ``normal_days`` before them raises
   ``trend_decline``; back inside, it resolves.

Alert lifecycle: ``raised`` -> ``acknowledged`` (by whom, note) and ``resolved``, in
either order; an alert stays open until it is both. Every change is one
:class:`AlertMessage` with the same ``alert_id``, which the server stores (the audit
trail) and publishes.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from hrvstream.alerts.baseline import (
    Baseline,
    DayTotal,
    Sample,
    SamplePool,
    mean_sd,
)
from hrvstream.alerts.config import AlertConfig, AlertConfigSet
from hrvstream.errors import HrvStreamError
from hrvstream.protocol.messages import AlertMessage, MetricsMessage

ACUTE: Final = "acute_stress"
TREND: Final = "trend_decline"
#: Kept per patient after an alert closes, so a repeated acknowledgement is recognised.
RECENT_CLOSED: Final = 50
#: Span of the recent HR that activity detection reads (see :attr:`Window.recent_hr_bpm`).
RECENT_HR_S: Final = 30.0
STATE_VERSION: Final = 2
_CLIP: Final = (-4.0, 8.0)

Quality = Literal["ok", "no_contact", "missing", "low_coverage", "artifacts"]
State = Literal["no_baseline", "calm", "elevated", "stressed", "poor_quality", "activity"]


class AlertActionError(HrvStreamError):
    """An acknowledgement that cannot be done (unknown alert, already acknowledged)."""


@dataclass(frozen=True, slots=True)
class Window:
    """One HRV window of one patient, as the engine needs it (``None``: missing).

    ``contact`` is the strap's skin contact during the window when known;
    ``recent_hr_bpm`` the mean HR of the last :data:`RECENT_HR_S` seconds of beats before
    the window's end (the window mean lags the start of exercise by minutes).
    """

    patient: str
    session: str
    t_unix_s: float
    window_s: float
    coverage: float | None
    artifact_pct: float | None
    mean_hr_bpm: float | None
    rmssd_ms: float | None
    lf_hf: float | None
    contact: bool | None = None
    recent_hr_bpm: float | None = None

    @classmethod
    def from_message(
        cls, m: MetricsMessage, contact: bool | None = None, recent_hr_bpm: float | None = None
    ) -> Window:
        """From a metrics message (plus what the server saw in the beats messages)."""
        return cls(
            patient=m.patient,
            session=m.session,
            t_unix_s=m.t_unix_s,
            window_s=m.window_s,
            coverage=m.coverage,
            artifact_pct=m.artifact_pct,
            mean_hr_bpm=m.mean_hr_bpm,
            rmssd_ms=m.rmssd_ms,
            lf_hf=m.lf_hf,
            contact=contact,
            recent_hr_bpm=recent_hr_bpm,
        )

    @classmethod
    def from_row(
        cls,
        patient: str,
        session: str,
        origin_unix_s: float,
        window_s: float,
        row: Mapping[str, float],
        recent_hr_bpm: float | None = None,
    ) -> Window:
        """From a row of :func:`hrvstream.hrv.engine.analyze` (NaN: missing)."""

        def v(name: str) -> float | None:
            x = row.get(name)
            return None if x is None or math.isnan(x) else float(x)

        return cls(
            patient=patient,
            session=session,
            t_unix_s=origin_unix_s + float(row["t_s"]),
            window_s=window_s,
            coverage=v("coverage"),
            artifact_pct=v("artifact_pct"),
            mean_hr_bpm=v("mean_hr_bpm"),
            rmssd_ms=v("rmssd_ms"),
            lf_hf=v("lf_hf"),
            recent_hr_bpm=None
            if recent_hr_bpm is None or math.isnan(recent_hr_bpm)
            else float(recent_hr_bpm),
        )


def judge_quality(w: Window, cfg: AlertConfig) -> Quality:
    """Whether a window can be judged, and if not, why."""
    if w.contact is False:
        return "no_contact"
    if w.rmssd_ms is None or w.mean_hr_bpm is None or w.rmssd_ms <= 0:
        return "missing"
    if w.coverage is None or w.coverage < cfg.min_coverage:
        return "low_coverage"
    if w.artifact_pct is not None and w.artifact_pct > cfg.max_artifact_pct:
        return "artifacts"
    return "ok"


@dataclass(frozen=True, slots=True)
class Score:
    """The stress score of a window against a baseline, with its parts."""

    score: float
    z_ln_rmssd: float
    z_hr: float
    z_ln_lf_hf: float | None


def stress_score(w: Window, baseline: Baseline, cfg: AlertConfig) -> Score:
    """The composite stress score of a judged window (see the module docstring)."""
    assert w.rmssd_ms is not None and w.mean_hr_bpm is not None
    z_r = baseline.ln_rmssd.z(math.log(w.rmssd_ms), cfg.sd_floor_ln_rmssd)
    z_h = baseline.hr_bpm.z(w.mean_hr_bpm, cfg.sd_floor_hr_bpm)
    z_l: float | None = None
    if baseline.ln_lf_hf is not None and w.lf_hf is not None and w.lf_hf > 0:
        z_l = baseline.ln_lf_hf.z(math.log(w.lf_hf), cfg.sd_floor_ln_lf_hf)
    parts = [(cfg.weight_ln_rmssd, -z_r), (cfg.weight_hr, z_h)]
    if z_l is not None:
        parts.append((cfg.weight_ln_lf_hf, z_l))
    total_w = sum(wt for wt, _ in parts if wt > 0)
    lo, hi = _CLIP
    score = sum(wt * min(hi, max(lo, c)) for wt, c in parts if wt > 0) / total_w
    return Score(score, z_r, z_h, z_l)


def alert_id(patient: str, rule: str, t_unix_s: float) -> str:
    """A stable id: the same alert from a replayed window gets the same id."""
    digest = hashlib.sha256(f"{patient}|{rule}|{t_unix_s:.3f}".encode()).hexdigest()[:20]
    return f"{rule}-{digest}"


@dataclass(slots=True)
class AlertRecord:
    """An alert's current state within the engine."""

    alert_id: str
    patient: str
    rule: str
    severity: Literal["info", "warning", "critical"]
    raised_unix_s: float
    explanation: dict[str, float | str | None]
    acknowledged_by: str | None = None
    acknowledged_unix_s: float | None = None
    note: str | None = None
    resolved_unix_s: float | None = None

    @property
    def closed(self) -> bool:
        """Both acknowledged and resolved."""
        return self.acknowledged_by is not None and self.resolved_unix_s is not None

    def message(
        self, state: Literal["raised", "acknowledged", "resolved"], t: float
    ) -> AlertMessage:
        """The state change as a message."""
        return AlertMessage(
            alert_id=self.alert_id,
            patient=self.patient,
            state=state,
            rule=self.rule,
            severity=self.severity,
            t_unix_s=t,
            explanation=self.explanation,
            acknowledged_by=None if state == "raised" else self.acknowledged_by,
            note=None if state == "raised" else self.note,
        )

    def latest(self) -> AlertMessage:
        """The alert in its latest state."""
        if self.resolved_unix_s is not None and (
            self.acknowledged_unix_s is None or self.resolved_unix_s >= self.acknowledged_unix_s
        ):
            return self.message("resolved", self.resolved_unix_s)
        if self.acknowledged_unix_s is not None:
            return self.message("acknowledged", self.acknowledged_unix_s)
        return self.message("raised", self.raised_unix_s)

    def to_json(self) -> dict[str, Any]:
        """JSON form for persistence."""
        return {
            "alert_id": self.alert_id,
            "patient": self.patient,
            "rule": self.rule,
            "severity": self.severity,
            "raised_unix_s": self.raised_unix_s,
            "explanation": self.explanation,
            "acknowledged_by": self.acknowledged_by,
            "acknowledged_unix_s": self.acknowledged_unix_s,
            "note": self.note,
            "resolved_unix_s": self.resolved_unix_s,
        }

    @classmethod
    def from_json(cls, o: Mapping[str, Any]) -> AlertRecord:
        """From :meth:`to_json`."""
        return cls(**{k: o[k] for k in cls.__slots__ if k in o})


@dataclass(frozen=True, slots=True)
class Assessment:
    """The engine's current view of a patient (what the dashboard shows)."""

    t_unix_s: float
    state: State
    quality: str
    message: str
    score: Score | None
    baseline: Baseline | None

    def to_json(self) -> dict[str, object]:
        """The JSON form the dashboard reads (see hrvstream.dashboard.source)."""
        b = self.baseline
        base: dict[str, object] | None = None
        if b is not None:
            r, h = b.ln_rmssd, b.hr_bpm
            base = {
                "rmssd_ms": [
                    math.exp(r.centre - r.spread),
                    math.exp(r.centre),
                    math.exp(r.centre + r.spread),
                ],
                "hr_bpm": [h.centre - h.spread, h.centre, h.centre + h.spread],
                "lf_hf": None
                if b.ln_lf_hf is None
                else [
                    math.exp(b.ln_lf_hf.centre - b.ln_lf_hf.spread),
                    math.exp(b.ln_lf_hf.centre),
                    math.exp(b.ln_lf_hf.centre + b.ln_lf_hf.spread),
                ],
                "n_windows": b.n_windows,
                "days": b.days,
                "source": b.source,
                "around_h": b.around_h,
            }
        s = self.score
        return {
            "t_unix_s": self.t_unix_s,
            "state": self.state,
            "stress_score": None if s is None else s.score,
            "quality": self.quality,
            "message": self.message,
            "baseline": base,
            "z": {
                "ln_rmssd": None if s is None else s.z_ln_rmssd,
                "hr": None if s is None else s.z_hr,
                "ln_lf_hf": None if s is None else s.z_ln_lf_hf,
            },
        }


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one window did: alert changes, the new assessment, whether state changed."""

    events: tuple[AlertMessage, ...] = ()
    assessment: Assessment | None = None
    duplicate: bool = False
    sample_added: bool = False


_QUALITY_TEXT: Final[Mapping[str, str]] = {
    "no_contact": "the strap has lost skin contact",
    "missing": "too few beats for HRV in this window",
    "low_coverage": "beats cover only {cov:.0f}% of the window",
    "artifacts": "{art:.1f}% of beats were corrected artifacts",
}


@dataclass(slots=True)
class _Acute:
    pending_since: float | None = None
    clear_since: float | None = None
    active: str | None = None  # alert id
    last_resolved: float | None = None
    peak: float = 0.0


@dataclass(slots=True)
class PatientState:
    """Everything the engine keeps about one patient (persisted with :meth:`to_json`)."""

    patient: str
    pool: SamplePool
    session: str | None = None
    session_pool: SamplePool | None = None
    last_t: float | None = None
    days: dict[int, DayTotal] = field(default_factory=dict)
    current_day: int | None = None
    last_day_sample_t: float | None = None
    hr_recent: deque[tuple[float, float]] = field(default_factory=deque)
    activity_until: float | None = None
    acute: _Acute = field(default_factory=_Acute)
    trend_active: str | None = None
    trend_days_below: int = 0
    alerts: dict[str, AlertRecord] = field(default_factory=dict)
    closed: deque[tuple[str, str | None]] = field(default_factory=deque)
    assessment: Assessment | None = None

    def to_json(self) -> dict[str, Any]:
        """The state as JSON-able data (no assessment: it is rebuilt by the next window)."""
        a = self.acute
        return {
            "version": STATE_VERSION,
            "patient": self.patient,
            "spacing_s": self.pool.spacing_s,
            "pool": [s.to_list() for s in self.pool.samples],
            "session": self.session,
            "session_pool": None
            if self.session_pool is None
            else [s.to_list() for s in self.session_pool.samples],
            "last_t": self.last_t,
            "days": {str(k): [d.n, d.total] for k, d in self.days.items()},
            "current_day": self.current_day,
            "last_day_sample_t": self.last_day_sample_t,
            "hr_recent": list(self.hr_recent),
            "activity_until": self.activity_until,
            "acute": [a.pending_since, a.clear_since, a.active, a.last_resolved, a.peak],
            "trend_active": self.trend_active,
            "trend_days_below": self.trend_days_below,
            "alerts": [r.to_json() for r in self.alerts.values()],
            "closed": [list(c) for c in self.closed],
        }


class AlertEngine:
    """Alert state of every patient. Not thread-safe; one engine per process (or shard).

    Parameters
    ----------
    config:
        Defaults and per-patient overrides.
    """

    def __init__(self, config: AlertConfigSet | None = None) -> None:
        self.config = config or AlertConfigSet()
        self._patients: dict[str, PatientState] = {}

    # -- state --------------------------------------------------------------------------

    def patients(self) -> list[str]:
        """Patients the engine holds state for."""
        return sorted(self._patients)

    def set_patient_config(self, patient: str, config: AlertConfig) -> None:
        """Judge ``patient``'s next windows by ``config``; the patient's state is kept.

        Baselines, timers and open alerts carry on: a higher ``raise_score`` applies
        from the next window (an alert already open resolves by its clear rule), and the
        baseline keeps the span it was created with (``baseline_days``).
        """
        self.config = self.config.with_patient(patient, config)

    def _state(self, patient: str, window_s: float = 300.0) -> PatientState:
        st = self._patients.get(patient)
        if st is None:
            cfg = self.config.for_patient(patient)
            st = PatientState(patient, SamplePool(cfg.baseline_days * 86400.0, window_s))
            self._patients[patient] = st
        return st

    def export_state(self, patient: str) -> dict[str, Any] | None:
        """The patient's state as JSON-able data (``None`` if unknown)."""
        st = self._patients.get(patient)
        return None if st is None else st.to_json()

    def import_state(self, data: Mapping[str, Any]) -> None:
        """Restore a patient's state from :meth:`export_state` (replaces what is held)."""
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"alert state version {data.get('version')!r} is not supported")
        patient = str(data["patient"])
        cfg = self.config.for_patient(patient)
        samples = [Sample.from_list(v) for v in data["pool"]]
        spacing = float(data["spacing_s"])
        pool = SamplePool(cfg.baseline_days * 86400.0, spacing)
        pool.samples.extend(samples)
        st = PatientState(patient, pool)
        st.session = data["session"]
        if data["session_pool"] is not None:
            st.session_pool = SamplePool(math.inf, spacing)
            st.session_pool.samples.extend(Sample.from_list(v) for v in data["session_pool"])
        st.last_t = data["last_t"]
        st.days = {int(k): DayTotal(int(v[0]), float(v[1])) for k, v in data["days"].items()}
        st.current_day = data["current_day"]
        st.last_day_sample_t = data["last_day_sample_t"]
        st.hr_recent = deque((float(t), float(h)) for t, h in data["hr_recent"])
        st.activity_until = data["activity_until"]
        a = data["acute"]
        st.acute = _Acute(a[0], a[1], a[2], a[3], float(a[4]))
        st.trend_active = data["trend_active"]
        st.trend_days_below = int(data["trend_days_below"])
        st.alerts = {r["alert_id"]: AlertRecord.from_json(r) for r in data["alerts"]}
        st.closed = deque(((str(i), b) for i, b in data["closed"]), maxlen=RECENT_CLOSED)
        self._patients[patient] = st

    def assessment(self, patient: str) -> Assessment | None:
        """The latest assessment of ``patient`` (``None`` before its first window)."""
        st = self._patients.get(patient)
        return None if st is None else st.assessment

    def baseline(self, patient: str) -> Baseline | None:
        """The baseline in use for ``patient`` now (long-term, else session, else none)."""
        st = self._patients.get(patient)
        if st is None:
            return None
        return self._baseline(st, self.config.for_patient(patient), st.last_t)

    def open_alerts(self, patient: str | None = None) -> list[AlertMessage]:
        """Alerts not both resolved and acknowledged, latest state, newest first."""
        states = (
            [self._patients[patient]]
            if patient in self._patients
            else ([] if patient is not None else list(self._patients.values()))
        )
        out = [r.latest() for st in states for r in st.alerts.values() if not r.closed]
        return sorted(out, key=lambda m: m.t_unix_s, reverse=True)

    def seed(self, windows: Iterable[Window]) -> None:
        """Feed history (earlier recordings) to build baselines; alerts it raises are dropped.

        Acute and trend state is reset afterwards, so the patient starts with a baseline
        and no open alerts.
        """
        touched: set[str] = set()
        for w in windows:
            self.observe(w)
            touched.add(w.patient)
        for p in touched:
            st = self._patients[p]
            st.alerts.clear()
            st.closed.clear()
            st.acute = _Acute()
            st.trend_active = None
            st.trend_days_below = 0
            st.activity_until = None
            st.hr_recent.clear()

    # -- acknowledgements ---------------------------------------------------------------

    def acknowledge(
        self, patient: str, alert: str, by: str, note: str | None, t_unix_s: float
    ) -> AlertMessage | None:
        """Record a therapist's acknowledgement.

        Returns
        -------
        AlertMessage or None
            The ``acknowledged`` state change, or ``None`` when this therapist already
            acknowledged it (a repeated message: nothing changes).

        Raises
        ------
        AlertActionError
            No such alert for this patient, or acknowledged already by someone else.
        """
        st = self._patients.get(patient)
        record = None if st is None else st.alerts.get(alert)
        if st is None or record is None:
            closed_by = None if st is None else dict(st.closed).get(alert, "")
            if closed_by == by:
                return None  # a repeat of the acknowledgement that closed it
            if closed_by:
                raise AlertActionError(f"alert {alert} was already acknowledged by {closed_by}")
            raise AlertActionError(f"no open alert {alert} for this patient")
        if record.acknowledged_by is not None:
            if record.acknowledged_by == by:
                return None
            raise AlertActionError(
                f"alert {alert} was already acknowledged by {record.acknowledged_by}"
            )
        # Never before the alert itself (the data's clock may run ahead of the server's).
        t_unix_s = max(t_unix_s, record.raised_unix_s)
        record.acknowledged_by = by
        record.acknowledged_unix_s = t_unix_s
        record.note = note
        msg = record.message("acknowledged", t_unix_s)
        self._close_if_done(st, record)
        return msg

    # -- windows ------------------------------------------------------------------------

    def observe(self, w: Window) -> Outcome:
        """Judge one window; returns the alert changes it caused and the new assessment."""
        cfg = self.config.for_patient(w.patient)
        st = self._state(w.patient, w.window_s)
        if st.last_t is not None and w.t_unix_s <= st.last_t:
            return Outcome(duplicate=True, assessment=st.assessment)
        events: list[AlertMessage] = []
        gap = None if st.last_t is None else w.t_unix_s - st.last_t
        st.last_t = w.t_unix_s
        st.pool.spacing_s = w.window_s
        if st.session != w.session or st.session_pool is None:
            st.session = w.session
            st.session_pool = SamplePool(math.inf, w.window_s)
            st.hr_recent.clear()
        if gap is not None and gap >= cfg.max_gap_s:
            events += self._resolve_acute(st, st.last_t - gap, "data stopped")
        if gap is not None and gap >= cfg.min_duration_s:
            st.acute.pending_since = None  # "sustained" means without a hole in the data
            st.acute.clear_since = None
        events += self._new_day(st, w, cfg)

        baseline = self._baseline(st, cfg, w.t_unix_s)
        quality = judge_quality(w, cfg)
        if quality != "ok":
            st.acute.pending_since = None  # a gap in good data restarts the count
            st.assessment = Assessment(
                w.t_unix_s, "poor_quality", quality, _quality_message(quality, w), None, baseline
            )
            return Outcome(tuple(events), st.assessment)
        assert w.mean_hr_bpm is not None and w.rmssd_ms is not None

        if self._activity(st, w, cfg, baseline):
            st.acute.pending_since = None
            st.assessment = Assessment(
                w.t_unix_s,
                "activity",
                "activity",
                f"Likely physical activity (HR {w.mean_hr_bpm:.0f} bpm"
                + (f", resting {baseline.hr_bpm.centre:.0f} bpm" if baseline else "")
                + "): not judged for stress.",
                None,
                baseline,
            )
            return Outcome(tuple(events), st.assessment)

        score = None if baseline is None else stress_score(w, baseline, cfg)
        sample = Sample(
            w.t_unix_s,
            math.log(w.rmssd_ms),
            w.mean_hr_bpm,
            math.log(w.lf_hf) if w.lf_hf is not None and w.lf_hf > 0 else None,
            _local_hour(w.t_unix_s, cfg),
        )
        self._add_day_sample(st, sample, cfg)
        quiet = (score is None or score.score < cfg.raise_score) and st.acute.active is None
        added = False
        if quiet and st.acute.pending_since is None:
            added = st.pool.add(sample)
            if score is None or score.score < cfg.clear_score:
                st.session_pool.add(sample)
        if score is None or baseline is None:
            st.assessment = Assessment(
                w.t_unix_s,
                "no_baseline",
                "ok",
                "Building this patient's baseline "
                f"({len(st.pool)}/{cfg.baseline_min_windows} resting windows); "
                "no stress alerts until it is ready.",
                None,
                None,
            )
            return Outcome(tuple(events), st.assessment, sample_added=added)
        if cfg.acute_enabled or st.acute.active is not None:
            # (an alert open when the rule was turned off still resolves by its rule)
            events += self._acute(st, w, cfg, baseline, score)
        elif score.score >= cfg.raise_score:  # no alerts, but the state still shows it
            st.acute.pending_since = st.acute.pending_since or w.t_unix_s
        else:
            st.acute.pending_since = None
        # "stressed" once it is sustained (an alert, or held min_duration_s in a cooldown):
        # a single high window is "elevated", not yet a state to act on.
        held = st.acute.pending_since is not None and (
            w.t_unix_s - st.acute.pending_since >= cfg.min_duration_s
        )
        state: State = (
            "stressed"
            if st.acute.active is not None or held
            else "elevated"
            if score.score >= cfg.clear_score
            else "calm"
        )
        st.assessment = Assessment(
            w.t_unix_s,
            state,
            "ok",
            _score_message(state, w, baseline, score, cfg),
            score,
            baseline,
        )
        return Outcome(tuple(events), st.assessment, sample_added=added)

    # -- parts --------------------------------------------------------------------------

    def _baseline(
        self, st: PatientState, cfg: AlertConfig, t_unix_s: float | None = None
    ) -> Baseline | None:
        if len(st.pool) >= cfg.baseline_min_windows:
            hour = None if t_unix_s is None else _local_hour(t_unix_s, cfg)
            return st.pool.baseline(
                "long_term", hour=hour, hours=cfg.baseline_hours, min_n=cfg.baseline_min_windows
            )
        if st.session_pool is not None and len(st.session_pool) >= cfg.session_min_windows:
            return st.session_pool.baseline("session")
        return None

    def _activity(
        self, st: PatientState, w: Window, cfg: AlertConfig, baseline: Baseline | None
    ) -> bool:
        assert w.mean_hr_bpm is not None
        hr = w.recent_hr_bpm if w.recent_hr_bpm is not None else w.mean_hr_bpm
        recent = st.hr_recent
        recent.append((w.t_unix_s, hr))
        while recent and recent[0][0] < w.t_unix_s - cfg.activity_trend_s:
            recent.popleft()
        rest = baseline.hr_bpm.centre if baseline is not None else None
        active = False
        if rest is not None:
            delta = max(hr, w.mean_hr_bpm) - rest
            # The rise test needs the recent HR: window means turn any step of HR into a
            # steady ramp one window long.
            active = delta >= cfg.activity_hr_delta_bpm or (
                w.recent_hr_bpm is not None
                and hr - rest >= cfg.activity_rise_min_delta_bpm
                and _rising(recent, cfg.activity_trend_s, cfg.activity_rise_bpm_per_min)
            )
        elif max(hr, w.mean_hr_bpm) >= 100.0:  # no resting HR known yet: an absolute bound
            active = True
        if active:
            st.activity_until = w.t_unix_s + max(cfg.activity_hold_s, w.window_s)
        return st.activity_until is not None and w.t_unix_s < st.activity_until

    def _acute(
        self, st: PatientState, w: Window, cfg: AlertConfig, baseline: Baseline, score: Score
    ) -> list[AlertMessage]:
        a = st.acute
        t = w.t_unix_s
        if a.active is not None:
            a.peak = max(a.peak, score.score)
            if score.score < cfg.clear_score:
                if a.clear_since is None:
                    a.clear_since = t
                if t - a.clear_since >= cfg.clear_duration_s:
                    return self._resolve_acute(st, t, "back to baseline")
            else:
                a.clear_since = None
            return []
        if score.score < cfg.raise_score:
            a.pending_since = None
            return []
        if a.pending_since is None:
            a.pending_since = t
        if t - a.pending_since < cfg.min_duration_s:
            return []
        if a.last_resolved is not None and t - a.last_resolved < cfg.cooldown_s:
            return []
        severity: Literal["warning", "critical"] = (
            "critical" if score.score >= cfg.critical_score else "warning"
        )
        explanation = _acute_explanation(w, cfg, baseline, score, t - a.pending_since)
        notify = severity == "critical" or not _in_quiet_hours(t, cfg)
        explanation["notify"] = int(notify)
        record = AlertRecord(
            alert_id=alert_id(st.patient, ACUTE, a.pending_since),
            patient=st.patient,
            rule=ACUTE,
            severity=severity,
            raised_unix_s=t,
            explanation=explanation,
        )
        st.alerts[record.alert_id] = record
        a.active = record.alert_id
        a.pending_since = None
        a.clear_since = None
        a.peak = score.score
        return [record.message("raised", t)]

    def _resolve_acute(self, st: PatientState, t: float, why: str) -> list[AlertMessage]:
        a = st.acute
        if a.active is None:
            return []
        record = st.alerts.get(a.active)
        a.active = None
        a.clear_since = None
        a.pending_since = None
        a.last_resolved = t
        if record is None:
            return []
        return self._resolve(st, record, t, why)

    def _resolve(
        self, st: PatientState, record: AlertRecord, t: float, why: str
    ) -> list[AlertMessage]:
        record.resolved_unix_s = t
        record.explanation = {**record.explanation, "resolved_because": why}
        msg = record.message("resolved", t)
        self._close_if_done(st, record)
        return [msg]

    def _close_if_done(self, st: PatientState, record: AlertRecord) -> None:
        if record.closed:
            st.alerts.pop(record.alert_id, None)
            st.closed.append((record.alert_id, record.acknowledged_by))
            while len(st.closed) > RECENT_CLOSED:
                st.closed.popleft()

    # -- days and the trend rule --------------------------------------------------------

    def _add_day_sample(self, st: PatientState, sample: Sample, cfg: AlertConfig) -> None:
        last = st.last_day_sample_t
        if last is not None and sample.t_unix_s - last < st.pool.spacing_s - 1e-6:
            return
        st.last_day_sample_t = sample.t_unix_s
        day = _local_day(sample.t_unix_s, cfg)
        st.days.setdefault(day, DayTotal())
        total = st.days[day]
        total.n += 1
        total.total += sample.ln_rmssd

    def _new_day(self, st: PatientState, w: Window, cfg: AlertConfig) -> list[AlertMessage]:
        day = _local_day(w.t_unix_s, cfg)
        previous = st.current_day
        st.current_day = day
        if previous is None or day <= previous:
            return []
        keep_from = day - cfg.normal_days - cfg.trend_days - 1
        for d in [d for d in st.days if d < keep_from]:
            del st.days[d]
        if not cfg.trend_enabled:
            return []
        return self._trend(st, previous, w.t_unix_s, cfg)

    def _trend(self, st: PatientState, day: int, t: float, cfg: AlertConfig) -> list[AlertMessage]:
        nums = _trend_numbers(st, day, cfg)
        if nums is None:
            return []
        outside = nums["value"] < nums["normal_low"]
        if st.trend_active is not None:
            record = st.alerts.get(st.trend_active)
            if outside:
                return []
            st.trend_active = None
            st.trend_days_below = 0
            return [] if record is None else self._resolve(st, record, t, "back in normal range")
        # Below the range, and by more than day-to-day scatter explains for a mean of
        # that many days, on trend_days_below days in a row.
        below = outside and nums["z_mean"] <= -cfg.trend_z
        st.trend_days_below = st.trend_days_below + 1 if below else 0
        if st.trend_days_below < cfg.trend_days_below:
            return []
        explanation: dict[str, float | str | None] = {
            "message": (
                f"{cfg.trend_days}-day mean lnRMSSD {nums['value']:.2f} "
                f"(RMSSD {math.exp(nums['value']):.0f} ms) is below the normal range "
                f"{nums['normal_low']:.2f}-{nums['normal_high']:.2f} of the previous "
                f"{cfg.normal_days} days"
            ),
            "metric": "ln_rmssd_7d" if cfg.trend_days == 7 else f"ln_rmssd_{cfg.trend_days}d",
            **nums,
            "notify": int(not _in_quiet_hours(t, cfg)),
        }
        record = AlertRecord(
            alert_id=alert_id(st.patient, TREND, float(day)),
            patient=st.patient,
            rule=TREND,
            severity="warning",
            raised_unix_s=t,
            explanation=explanation,
        )
        st.alerts[record.alert_id] = record
        st.trend_active = record.alert_id
        return [record.message("raised", t)]


# == helpers ==============================================================================


def _trend_numbers(st: PatientState, day: int, cfg: AlertConfig) -> dict[str, float] | None:
    def means(first: int, last: int) -> list[float]:
        return [
            st.days[d].mean
            for d in range(first, last + 1)
            if d in st.days and st.days[d].n >= cfg.trend_min_windows_per_day
        ]

    recent = means(day - cfg.trend_days + 1, day)
    normal = means(day - cfg.trend_days - cfg.normal_days + 1, day - cfg.trend_days)
    if len(recent) < max(2, (cfg.trend_days + 1) // 2) or len(normal) < cfg.trend_min_days:
        return None
    value = sum(recent) / len(recent)
    m, sd = mean_sd(normal)
    sd = max(sd, cfg.trend_sd_floor)
    low, high = m - cfg.trend_sd_factor * sd, m + cfg.trend_sd_factor * sd
    return {
        "value": value,
        "baseline": m,
        "normal_low": low,
        "normal_high": high,
        "deviation": (value - m) / sd,
        "z_mean": (value - m) / (sd / math.sqrt(len(recent))),
        "deviation_pct": 100.0 * (math.exp(value - m) - 1.0),
        "days_recent": float(len(recent)),
        "days_normal": float(len(normal)),
    }


def _rising(points: deque[tuple[float, float]], span_s: float, bpm_per_min: float) -> bool:
    """HR rising steadily over the whole span: each quarter's mean above the last by
    ``bpm_per_min`` for a quarter's time, in steps of similar size.

    Stress raises HR in a ramp of a minute or two and then levels off; exercise that
    builds up keeps climbing.
    """
    if len(points) < 8 or points[-1][0] - points[0][0] < 0.95 * span_s:
        return False
    t_end = points[-1][0]
    quarter = span_s / 4
    sums = [0.0] * 4
    counts = [0] * 4
    for t, h in points:
        k = min(3, max(0, int((t - (t_end - span_s)) // quarter)))
        sums[k] += h
        counts[k] += 1
    if min(counts) == 0:
        return False
    means = [s / c for s, c in zip(sums, counts, strict=True)]
    steps = [b - a for a, b in itertools.pairwise(means)]
    # Steady: every quarter up by the rate, and no step less than half the largest (a
    # step change of HR, such as stress, rises in one or two quarters, then levels off).
    return min(steps) >= bpm_per_min * quarter / 60.0 and min(steps) >= 0.5 * max(steps)


def _local(t: float, cfg: AlertConfig) -> datetime:
    return datetime.fromtimestamp(t, UTC).astimezone(cfg.zone())


def _local_day(t: float, cfg: AlertConfig) -> int:
    return _local(t, cfg).date().toordinal()


def _local_hour(t: float, cfg: AlertConfig) -> float:
    local = _local(t, cfg)
    return local.hour + local.minute / 60 + local.second / 3600


def _in_quiet_hours(t: float, cfg: AlertConfig) -> bool:
    if cfg.quiet_hours is None:
        return False
    h = _local_hour(t, cfg)
    start, end = cfg.quiet_hours
    return start <= h < end if start <= end else (h >= start or h < end)


def _quality_message(quality: str, w: Window) -> str:
    text = _QUALITY_TEXT.get(quality, quality).format(
        cov=100 * (w.coverage or 0.0), art=w.artifact_pct or 0.0
    )
    return f"Data quality: {text}; not judged for stress."


def _score_message(state: State, w: Window, b: Baseline, s: Score, cfg: AlertConfig) -> str:
    assert w.rmssd_ms is not None and w.mean_hr_bpm is not None
    base_rmssd = math.exp(b.ln_rmssd.centre)
    pct = 100.0 * (w.rmssd_ms / base_rmssd - 1.0)
    words = {"calm": "Within baseline", "elevated": "Elevated", "stressed": "Stressed"}[state]
    after = ""
    if state == "stressed" and s.score < cfg.clear_score:
        words = "Recovering"
        after = (
            f" The alert resolves after {cfg.clear_duration_s / 60:.0f} min below "
            f"{cfg.clear_score:g}."
        )
    return (
        f"{words} (score {s.score:.1f}): RMSSD {w.rmssd_ms:.0f} ms ({pct:+.0f}% vs "
        f"{base_rmssd:.0f} ms), HR {w.mean_hr_bpm:.0f} bpm (baseline {b.hr_bpm.centre:.0f})."
        + after
    )


def _acute_explanation(
    w: Window, cfg: AlertConfig, b: Baseline, s: Score, sustained_s: float
) -> dict[str, float | str | None]:
    assert w.rmssd_ms is not None and w.mean_hr_bpm is not None
    ln_r = math.log(w.rmssd_ms)
    base_rmssd = math.exp(b.ln_rmssd.centre)
    pct = 100.0 * (w.rmssd_ms / base_rmssd - 1.0)
    out: dict[str, float | str | None] = {
        "message": (
            f"Stress score {s.score:.1f} for {sustained_s / 60:.0f}+ min: RMSSD "
            f"{w.rmssd_ms:.0f} ms ({pct:+.0f}% vs baseline {base_rmssd:.0f} ms), HR "
            f"{w.mean_hr_bpm:.0f} bpm (baseline {b.hr_bpm.centre:.0f})"
            + (
                ""
                if w.lf_hf is None or b.ln_lf_hf is None
                else f", LF/HF {w.lf_hf:.1f} (baseline {math.exp(b.ln_lf_hf.centre):.1f})"
            )
        ),
        "metric": "ln_rmssd",
        "value": ln_r,
        "baseline": b.ln_rmssd.centre,
        "deviation": s.z_ln_rmssd,
        "deviation_pct": pct,
        "stress_score": s.score,
        "rmssd_ms": w.rmssd_ms,
        "baseline_rmssd_ms": base_rmssd,
        "hr_bpm": w.mean_hr_bpm,
        "baseline_hr_bpm": b.hr_bpm.centre,
        "z_hr": s.z_hr,
        "lf_hf": w.lf_hf,
        "baseline_lf_hf": None if b.ln_lf_hf is None else math.exp(b.ln_lf_hf.centre),
        "z_ln_lf_hf": s.z_ln_lf_hf,
        "window_start_unix_s": w.t_unix_s - w.window_s,
        "window_end_unix_s": w.t_unix_s,
        "window_s": w.window_s,
        "sustained_s": sustained_s,
        "coverage": w.coverage,
        "artifact_pct": w.artifact_pct,
        "baseline_source": b.source,
        "baseline_around_h": b.around_h,
        "baseline_windows": float(b.n_windows),
        "baseline_days": b.days,
        "raise_score": cfg.raise_score,
    }
    return out


def recent_hr_bpm(
    beat_t_s: npt.ArrayLike,
    rr_ms: npt.ArrayLike,
    ends_s: npt.ArrayLike,
    span_s: float = RECENT_HR_S,
) -> npt.NDArray[np.float64]:
    """Mean HR (60000 / mean RR) of the beats in ``(end - span_s, end]`` for each end.

    NaN where there is no beat in the span. Vectorised (cumulative sums).
    """
    t = np.asarray(beat_t_s, dtype=np.float64)
    rr = np.asarray(rr_ms, dtype=np.float64)
    ends = np.asarray(ends_s, dtype=np.float64)
    csum = np.concatenate(([0.0], np.cumsum(rr)))
    hi = np.searchsorted(t, ends, side="right")
    lo = np.searchsorted(t, ends - span_s, side="right")
    n = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_rr = (csum[hi] - csum[lo]) / n
        return np.where(n > 0, 60000.0 / mean_rr, np.nan)


def windows_from_analysis(
    patient: str,
    session: str,
    origin_unix_s: float,
    window_s: float,
    columns: Mapping[str, npt.NDArray[Any]],
    beat_t_s: npt.ArrayLike,
    rr_ms: npt.ArrayLike,
) -> list[Window]:
    """The engine's windows for the rows of :func:`hrvstream.hrv.engine.analyze`, with the
    recent HR from the beats (times in seconds on the same clock as the rows' ``t_s``)."""
    t_s = np.asarray(columns["t_s"], dtype=np.float64)
    recent = recent_hr_bpm(beat_t_s, rr_ms, t_s)
    names = list(columns)
    arrays = [np.asarray(columns[k], dtype=np.float64) for k in names]
    out = []
    for i in range(len(t_s)):
        row = {k: float(a[i]) for k, a in zip(names, arrays, strict=True)}
        out.append(
            Window.from_row(patient, session, origin_unix_s, window_s, row, float(recent[i]))
        )
    return out


__all__ = [
    "ACUTE",
    "TREND",
    "AlertActionError",
    "AlertEngine",
    "AlertRecord",
    "Assessment",
    "Outcome",
    "PatientState",
    "Score",
    "Window",
    "alert_id",
    "judge_quality",
    "recent_hr_bpm",
    "stress_score",
    "windows_from_analysis",
]
