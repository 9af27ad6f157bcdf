"""Simulated patients for the alert engine: sessions, hand-made windows, a shared baseline.

The engine takes its time from the windows, so a test lays sessions out on a calendar
(:data:`T0` plus days) and days pass as fast as the windows are fed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from hrvstream.alerts import (
    AlertConfigSet,
    AlertEngine,
    Assessment,
    Outcome,
    Window,
    windows_from_analysis,
)
from hrvstream.hrv.engine import AnalysisConfig, analyze
from hrvstream.protocol.messages import AlertMessage
from hrvstream.recordings.model import RRSeries
from hrvstream.simulate import SessionConfig, SimulatedSession, simulate_session

DAY_S = 86400.0
WINDOW_S = 300.0
#: Monday 2024-03-04 00:00 UTC: the calendar's day 0.
T0 = datetime(2024, 3, 4, tzinfo=UTC).timestamp()
#: The simulated patients' daily session starts at 19:00 UTC.
EVENING_S = 19 * 3600.0
PATIENT = "p-7f3a"
BASELINE_DAYS = 5
#: Session length of the shared baseline days.
BASELINE_SESSION_S = 3600.0


def session_start(day: int, clock_s: float = EVENING_S) -> float:
    """Unix time of a session starting ``clock_s`` after midnight UTC of calendar ``day``."""
    return T0 + day * DAY_S + clock_s


def windows_of(
    series: RRSeries,
    origin_unix_s: float,
    *,
    patient: str = PATIENT,
    session: str = "s",
    step_s: float = 5.0,
) -> list[Window]:
    """The engine's windows of a recording whose first beat was at ``origin_unix_s``, with
    the recent HR of each (what the server computes from the beats messages)."""
    table = analyze(series, AnalysisConfig(window_s=WINDOW_S, step_s=step_s)).windows
    return windows_from_analysis(
        patient, session, origin_unix_s, WINDOW_S, table.columns, series.t_s, series.rr_ms
    )


@dataclass(frozen=True)
class Run:
    """Windows fed to an engine and what each did."""

    origin_unix_s: float
    windows: list[Window]
    outcomes: list[Outcome]

    @property
    def events(self) -> list[AlertMessage]:
        """Every alert state change, in order."""
        return [e for o in self.outcomes for e in o.events]

    def rel(self, t_unix_s: float) -> float:
        """Seconds since the session's first beat."""
        return t_unix_s - self.origin_unix_s

    def assessments(self, start_s: float = -math.inf, end_s: float = math.inf) -> list[Assessment]:
        """Assessments of windows ending in ``[start_s, end_s)`` (session seconds)."""
        out = []
        for w, o in zip(self.windows, self.outcomes, strict=True):
            if start_s <= self.rel(w.t_unix_s) < end_s and o.assessment is not None:
                out.append(o.assessment)
        return out

    def states(self, start_s: float = -math.inf, end_s: float = math.inf) -> list[str]:
        """The assessment states of windows ending in ``[start_s, end_s)``."""
        return [a.state for a in self.assessments(start_s, end_s)]


def feed(engine: AlertEngine, windows: Sequence[Window], origin_unix_s: float = 0.0) -> Run:
    """Feed ``windows`` in order; the run's times are relative to ``origin_unix_s``."""
    return Run(origin_unix_s, list(windows), [engine.observe(w) for w in windows])


@dataclass(frozen=True)
class SimRun:
    """A simulated session fed to an engine, with the simulator's ground truth."""

    sim: SimulatedSession
    run: Run

    @property
    def events(self) -> list[AlertMessage]:
        """Every alert state change, in order."""
        return self.run.events

    def truth_span(self, flags: np.ndarray[Any, np.dtype[np.bool_]]) -> tuple[float, float]:
        """First and last beat time (session seconds) where ``flags`` is set."""
        t = self.sim.series.t_s[flags]
        assert t.size, "the ground truth holds no such beat"
        return float(t[0]), float(t[-1])


def simulate_windows(
    config: SessionConfig,
    origin_unix_s: float,
    *,
    patient: str = PATIENT,
    session: str = "s",
    step_s: float = 5.0,
) -> tuple[SimulatedSession, list[Window]]:
    """Simulate a session and cut it into the engine's windows."""
    sim = simulate_session(config)
    return sim, windows_of(
        sim.series, origin_unix_s, patient=patient, session=session, step_s=step_s
    )


def run_session(
    engine: AlertEngine,
    config: SessionConfig,
    origin_unix_s: float,
    *,
    patient: str = PATIENT,
    session: str = "s",
    step_s: float = 5.0,
) -> SimRun:
    """Simulate a session starting at ``origin_unix_s`` and feed it to ``engine``."""
    sim, windows = simulate_windows(
        config, origin_unix_s, patient=patient, session=session, step_s=step_s
    )
    return SimRun(sim, feed(engine, windows, origin_unix_s))


def calm_day(day: int, *, duration_s: float = BASELINE_SESSION_S, **changes: Any) -> SessionConfig:
    """The simulated patient's ordinary evening session of calendar ``day`` (own seed)."""
    return replace(SessionConfig(duration_s=duration_s, seed=1000 + day), **changes)


def run_days(
    engine: AlertEngine,
    days: Iterable[int],
    *,
    patient: str = PATIENT,
    step_s: float = 5.0,
    **changes: Any,
) -> list[SimRun]:
    """One ordinary evening session on each of ``days``."""
    return [
        run_session(
            engine,
            calm_day(d, **changes),
            session_start(d),
            patient=patient,
            session=f"d{d}",
            step_s=step_s,
        )
        for d in days
    ]


def roundtrip(state: dict[str, Any] | None) -> dict[str, Any]:
    """``state`` through strict JSON text (no NaN), as a server stores it."""
    assert state is not None
    data: dict[str, Any] = json.loads(json.dumps(state, allow_nan=False))
    return data


@pytest.fixture(scope="session")
def baseline_runs() -> tuple[dict[str, Any], list[SimRun]]:
    """Five calm evenings (days 0-4) fed to a default engine: its state and the runs."""
    engine = AlertEngine()
    runs = run_days(engine, range(BASELINE_DAYS))
    return roundtrip(engine.export_state(PATIENT)), runs


@pytest.fixture
def baseline_state(baseline_runs: tuple[dict[str, Any], list[SimRun]]) -> dict[str, Any]:
    """A fresh copy of the patient's state after the five baseline evenings."""
    return roundtrip(baseline_runs[0])


def engine_from(state: dict[str, Any], config: AlertConfigSet | None = None) -> AlertEngine:
    """A new engine holding ``state`` (through JSON)."""
    engine = AlertEngine(config)
    engine.import_state(roundtrip(state))
    return engine


# == hand-made windows ======================================================================

#: The hand-made patient's resting values (the exact medians of the baseline windows).
BASE_RMSSD_MS = 40.0
BASE_HR_BPM = 65.0
BASE_LF_HF = 1.5
HAND_BASELINE_N = 31
#: Deterministic noise of the baseline windows: -15..15 in a scrambled order (median 0).
_NOISE = [((7 * i) % HAND_BASELINE_N) - HAND_BASELINE_N // 2 for i in range(HAND_BASELINE_N)]


def hand_window(
    t_unix_s: float,
    *,
    rmssd_ms: float = BASE_RMSSD_MS,
    hr_bpm: float = BASE_HR_BPM,
    lf_hf: float | None = None,
    patient: str = PATIENT,
    session: str = "h",
    coverage: float = 1.0,
    artifact_pct: float = 0.0,
    contact: bool | None = None,
) -> Window:
    """A hand-made window."""
    return Window(
        patient=patient,
        session=session,
        t_unix_s=t_unix_s,
        window_s=WINDOW_S,
        coverage=coverage,
        artifact_pct=artifact_pct,
        mean_hr_bpm=hr_bpm,
        rmssd_ms=rmssd_ms,
        lf_hf=lf_hf,
        contact=contact,
    )


def hand_baseline(start_unix_s: float, patient: str = PATIENT) -> list[Window]:
    """31 resting windows 300 s apart, medians exactly at the ``BASE_*`` values.

    The noise (lnRMSSD +/-0.03, HR +/-0.75 bpm, ln LF/HF +/-0.03) is far below the
    spread floors, so z-scores against this baseline are ``delta / floor``.
    """
    return [
        hand_window(
            start_unix_s + i * WINDOW_S,
            rmssd_ms=BASE_RMSSD_MS * math.exp(0.002 * n),
            hr_bpm=BASE_HR_BPM + 0.05 * n,
            lf_hf=BASE_LF_HF * math.exp(0.002 * n),
            patient=patient,
        )
        for i, n in enumerate(_NOISE)
    ]


def rmssd_for(neg_z: float, floor: float = 0.08) -> float:
    """The RMSSD whose ``-z(lnRMSSD)`` against the hand-made baseline is ``neg_z``."""
    return BASE_RMSSD_MS * math.exp(-neg_z * floor)


def scored(t_unix_s: float, score: float, *, patient: str = PATIENT, **kw: Any) -> Window:
    """A window (HR at baseline, no LF/HF) whose stress score is ``score``.

    With HR at its baseline and no LF/HF the score is the mean of ``-z(lnRMSSD)`` and
    ``z(HR) = 0``, so ``-z(lnRMSSD) = 2 * score``.
    """
    return hand_window(t_unix_s, rmssd_ms=rmssd_for(2 * score), patient=patient, **kw)


def every(start_unix_s: float, n: int, step_s: float = 60.0) -> Iterator[float]:
    """``n`` times ``step_s`` apart from ``start_unix_s``."""
    return (start_unix_s + i * step_s for i in range(n))
