"""The alert engine on simulated patients and on hand-made windows.

Simulated tests follow the issue's "must show" list: a stress episode after five days
of baseline, a calm week, artifacts, exercise, a slow multi-day decline. They judge the
engine against the simulator's ground truth (when the episode really began and ended),
never against times copied from a run. Hand-made windows (``conftest.hand_baseline``,
``conftest.scored``) pin down the acute rule's timing to the window.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from typing import Any

import numpy as np
import pytest

from hrvstream.alerts import (
    ACUTE,
    TREND,
    AlertActionError,
    AlertConfig,
    AlertConfigSet,
    AlertEngine,
    Window,
)
from hrvstream.alerts.engine import alert_id
from hrvstream.protocol.messages import AlertMessage
from hrvstream.recordings.model import RRSeries
from hrvstream.simulate import ArtifactSpec, ExerciseBout, StressEpisode
from tests.alerts.conftest import (
    BASE_HR_BPM,
    BASELINE_DAYS,
    DAY_S,
    PATIENT,
    T0,
    WINDOW_S,
    Run,
    SimRun,
    calm_day,
    engine_from,
    every,
    feed,
    hand_baseline,
    hand_window,
    roundtrip,
    run_days,
    run_session,
    scored,
    session_start,
    simulate_windows,
    windows_of,
)

DEFAULTS = AlertConfig()
STRESS = StressEpisode(start_s=1500, duration_s=900)
#: The first session after the shared baseline.
DAY = BASELINE_DAYS


def states(events: list[AlertMessage]) -> list[tuple[str, str]]:
    """``(rule, state)`` of each event."""
    return [(e.rule, e.state) for e in events]


def numbers(event: AlertMessage) -> dict[str, float]:
    """The numeric entries of an event's explanation."""
    return {k: float(v) for k, v in event.explanation.items() if isinstance(v, int | float)}


@pytest.fixture(scope="module")
def stress_run(baseline_runs: tuple[dict[str, Any], list[SimRun]]) -> SimRun:
    """Day 5's session with a stress episode at 25-40 min, fed to the baseline engine."""
    engine = engine_from(baseline_runs[0])
    return run_session(engine, calm_day(DAY, stress=(STRESS,)), session_start(DAY), session="d5")


# == simulated patients =====================================================================


def test_baseline_days_give_a_long_term_baseline_and_no_alert(
    baseline_runs: tuple[dict[str, Any], list[SimRun]],
) -> None:
    state, runs = baseline_runs
    assert all(r.events == [] for r in runs)
    engine = engine_from(state)
    b = engine.baseline(PATIENT)
    assert b is not None and b.source == "long_term"
    assert b.n_windows >= DEFAULTS.baseline_min_windows
    assert b.days > BASELINE_DAYS - 2
    # The centre is the patients' resting RMSSD and HR (simulated at 65 bpm).
    judged = [w for r in runs for w in r.run.windows if (w.coverage or 0) >= 0.9]
    rmssd = np.median([w.rmssd_ms for w in judged])
    assert math.exp(b.ln_rmssd.centre) == pytest.approx(rmssd, rel=0.05)
    assert b.hr_bpm.centre == pytest.approx(65.0, abs=1.0)


def test_stress_episode_raises_one_acute_alert_then_resolves(stress_run: SimRun) -> None:
    run = stress_run.run
    onset, end = stress_run.truth_span(stress_run.sim.stressed)
    assert states(run.events) == [(ACUTE, "raised"), (ACUTE, "resolved")]
    raised, resolved = run.events
    assert raised.alert_id == resolved.alert_id
    assert raised.patient == PATIENT

    # Raised within a few minutes of the true onset; resolved after the true end, once
    # the windows no longer hold stressed beats and the score stayed low long enough.
    t_raised = run.rel(raised.t_unix_s)
    assert onset < t_raised <= onset + 6 * 60
    t_resolved = run.rel(resolved.t_unix_s)
    assert end < t_resolved <= end + WINDOW_S + DEFAULTS.clear_duration_s + 120

    text = raised.explanation
    assert text["metric"] == "ln_rmssd"
    assert isinstance(text["message"], str)
    assert "RMSSD" in text["message"] and "HR" in text["message"]
    assert text["baseline_source"] == "long_term"
    x = numbers(raised)
    # Metric values, the baseline and the deviation, consistent with one another.
    calm = [
        w.rmssd_ms for w in run.windows if w.rmssd_ms and WINDOW_S <= run.rel(w.t_unix_s) < onset
    ]
    assert x["baseline_rmssd_ms"] == pytest.approx(float(np.median(calm)), rel=0.15)
    assert x["rmssd_ms"] < x["baseline_rmssd_ms"]
    assert x["value"] == pytest.approx(math.log(x["rmssd_ms"]))
    assert x["baseline"] == pytest.approx(math.log(x["baseline_rmssd_ms"]))
    assert x["deviation"] < 0
    assert x["deviation_pct"] == pytest.approx(100 * (x["rmssd_ms"] / x["baseline_rmssd_ms"] - 1))
    assert x["hr_bpm"] > x["baseline_hr_bpm"] and x["z_hr"] > 0
    assert x["stress_score"] >= DEFAULTS.raise_score
    assert raised.severity == (
        "critical" if x["stress_score"] >= DEFAULTS.critical_score else "warning"
    )
    # The window and its data quality.
    assert x["window_end_unix_s"] == raised.t_unix_s
    assert x["window_start_unix_s"] == raised.t_unix_s - WINDOW_S
    assert x["window_s"] == WINDOW_S
    assert x["coverage"] >= DEFAULTS.min_coverage
    assert 0 <= x["artifact_pct"] <= DEFAULTS.max_artifact_pct
    assert x["sustained_s"] >= DEFAULTS.min_duration_s
    assert x["notify"] == 1  # 19:00 UTC, outside the default quiet hours
    assert resolved.explanation["resolved_because"] == "back to baseline"

    # Assessments: stressed while the alert is up, calm after it.
    assert set(run.states(t_raised, t_resolved)) == {"stressed"}
    after = run.states(t_resolved)
    assert "stressed" not in after
    assert after.count("calm") >= 0.8 * len(after)
    before = run.states(300, onset)
    assert before.count("calm") >= 0.8 * len(before)


def test_calm_week_after_the_baseline_raises_nothing(baseline_state: dict[str, Any]) -> None:
    engine = engine_from(baseline_state)
    runs = run_days(engine, range(DAY, DAY + 7), duration_s=2400.0)
    assert [e for r in runs for e in r.events] == []
    counts = Counter(s for r in runs for s in r.run.states(WINDOW_S))
    assert set(counts) <= {"calm", "elevated"}
    assert counts["calm"] >= 0.85 * sum(counts.values())
    # Only a session's first minutes (its first window not yet full) go unjudged.
    for r in runs:
        assert all(
            a.quality in ("missing", "low_coverage")
            for a in r.run.assessments(end_s=WINDOW_S)
            if a.state == "poor_quality"
        )


def test_artifact_heavy_session_is_poor_quality_not_stress(
    baseline_state: dict[str, Any],
) -> None:
    engine = engine_from(baseline_state)
    noisy = ArtifactSpec(ectopic_rate=0.05, missed_rate=0.03)
    sr = run_session(engine, calm_day(DAY, artifacts=noisy), session_start(DAY), session="d5")
    assert sr.events == []
    assessed = sr.run.assessments(WINDOW_S)
    assert {(a.state, a.quality) for a in assessed} == {("poor_quality", "artifacts")}
    for a in assessed:
        assert a.score is None
        assert "corrected artifacts" in a.message and "not judged" in a.message
    # The message quotes the window's own artifact percentage.
    w = sr.run.windows[-1]
    assert f"{w.artifact_pct:.1f}%" in assessed[-1].message


def test_artifact_stretch_is_gated_and_the_rest_judged(baseline_state: dict[str, Any]) -> None:
    """Ectopic beats every 15 s (12% of beats) from 20 to 40 min, clean data around."""
    engine = engine_from(baseline_state)
    first, last = 1200.0, 2400.0
    spec = ArtifactSpec(ectopic_at_s=tuple(np.arange(first, last, 15.0).tolist()))
    sr = run_session(engine, calm_day(DAY, artifacts=spec), session_start(DAY), session="d5")
    assert sr.events == []
    noisy = sr.run.assessments(first + 200, last + 100)  # windows mostly in the stretch
    assert {(a.state, a.quality) for a in noisy} == {("poor_quality", "artifacts")}
    clean = sr.run.assessments(WINDOW_S, first) + sr.run.assessments(last + WINDOW_S)
    assert clean and {a.quality for a in clean} == {"ok"}
    assert "stressed" not in sr.run.states()


def test_contact_dropouts_are_low_coverage(baseline_state: dict[str, Any]) -> None:
    """Two minutes without beats (strap off): windows holding the gap are not judged."""
    engine = engine_from(baseline_state)
    sim, _ = simulate_windows(calm_day(DAY), session_start(DAY))
    t = sim.series.t_s
    keep = (t < 1200.0) | (t >= 1320.0)
    rr = sim.series.rr_ms.copy()
    # The first beat after the gap ends a real interval; the lost beats are not invented.
    gapped = RRSeries(rr_ms=rr[keep], t_s=t[keep])
    run = feed(engine, windows_of(gapped, session_start(DAY), session="d5"), session_start(DAY))
    assert run.events == []
    gap = run.assessments(1330.0, 1500.0)
    assert gap and {(a.state, a.quality) for a in gap} == {("poor_quality", "low_coverage")}
    # 180 s of 300 s covered.
    assert "cover only 6" in gap[0].message
    assert {a.quality for a in run.assessments(1320.0 + WINDOW_S)} == {"ok"}


@pytest.mark.xfail(
    strict=True,
    reason=(
        "hrv artifact detection collapses on dense ectopy: with an ectopic beat every 6 s "
        "(~30% of intervals labelled by the simulator) artifact_pct stays below 1% and "
        "RMSSD reads ~290 ms, so the engine judges the windows 'calm' (and adds them to "
        "the baseline pools) instead of 'poor_quality'"
    ),
)
def test_dense_ectopy_is_poor_quality(baseline_state: dict[str, Any]) -> None:
    engine = engine_from(baseline_state)
    first, last = 1200.0, 1800.0
    spec = ArtifactSpec(ectopic_at_s=tuple(np.arange(first, last, 6.0).tolist()))
    sr = run_session(engine, calm_day(DAY, artifacts=spec), session_start(DAY), session="d5")
    inside = [
        (w, o)
        for w, o in zip(sr.run.windows, sr.run.outcomes, strict=True)
        if first + WINDOW_S <= sr.run.rel(w.t_unix_s) < last
    ]
    assert inside
    assert all(o.assessment is not None and o.assessment.state == "poor_quality" for _, o in inside)
    assert not any(o.sample_added for _, o in inside)


def _exercise_run(state: dict[str, Any], peak_hr_bpm: float) -> tuple[SimRun, ExerciseBout]:
    engine = engine_from(state)
    bout = ExerciseBout(start_s=1200, duration_s=900, peak_hr_bpm=peak_hr_bpm)
    sr = run_session(engine, calm_day(DAY, exercise=(bout,)), session_start(DAY), session="d5")
    return sr, bout


def test_exercise_is_activity_not_stress(baseline_state: dict[str, Any]) -> None:
    sr, bout = _exercise_run(baseline_state, 140.0)
    start, end = sr.truth_span(sr.sim.exercising)
    assert start == pytest.approx(bout.start_s, abs=2) and end == pytest.approx(bout.end_s, abs=2)
    assert sr.events == []
    # Activity once the window holds a few minutes of exercise, through the bout and
    # while the windows still hold exercise beats after it.
    during = sr.run.assessments(start + 240, end + WINDOW_S)
    assert {(a.state, a.quality) for a in during} == {("activity", "activity")}
    assert all("physical activity" in a.message for a in during)
    # And back to normal once recovered.
    late = sr.run.states(end + WINDOW_S + DEFAULTS.activity_hold_s + 60)
    assert late and late.count("calm") >= 0.8 * len(late)


def test_moderate_exercise_is_not_stress(baseline_state: dict[str, Any]) -> None:
    sr, bout = _exercise_run(baseline_state, 120.0)
    assert sr.events == []
    assert "stressed" not in sr.run.states(bout.start_s, bout.end_s + WINDOW_S)


def _decline_factor(day: int) -> float:
    """Day-to-day variation of the simulated patient's HRV: lnRMSSD SD about 0.1."""
    return math.exp(float(np.random.default_rng(5000 + day).normal(0.0, 0.1)))


def test_slow_decline_raises_trend_alert_and_recovery_resolves_it() -> None:
    """21 ordinary days, 10 days of RMSSD falling 6% a day (HR creeping up), 12 back."""
    normal, decline, recover = 21, 10, 12
    engine = AlertEngine()
    runs: list[Run] = []
    for d in range(normal + decline + recover):
        k = d - normal + 1 if normal <= d < normal + decline else 0
        f = _decline_factor(d) * (1.0 - 0.06 * k)
        cfg = calm_day(
            d,
            duration_s=2400.0,
            hf_amplitude_ms=25.0 * f,
            lf_amplitude_ms=20.0 * f,
            mean_hr_bpm=65.0 + 0.5 * k,
        )
        runs.append(run_session(engine, cfg, session_start(d), session=f"d{d}", step_s=30.0).run)

    def day_of(t_unix_s: float) -> int:
        return int((t_unix_s - T0) // DAY_S)

    events = [(day_of(e.t_unix_s), e) for r in runs for e in r.events]
    trend = [(d, e) for d, e in events if e.rule == TREND]
    assert [e.state for _, e in trend] == ["raised", "resolved"]
    (d_raised, raised), (d_resolved, resolved) = trend
    assert raised.alert_id == resolved.alert_id
    # The rule runs at a day's first window and judges the day before: the judged day is
    # one of the decline's.
    assert normal <= d_raised - 1 < normal + decline
    assert normal + decline <= d_resolved - 1 < normal + decline + recover
    assert not [e for d, e in events if d < normal]  # nothing at all before the decline

    text = raised.explanation
    assert text["metric"] == "ln_rmssd_7d"
    assert isinstance(text["message"], str) and "below the normal range" in text["message"]
    x = numbers(raised)
    assert x["value"] < x["normal_low"] < x["baseline"] < x["normal_high"]
    assert x["deviation"] < 0 and x["deviation_pct"] < 0
    assert x["days_normal"] >= DEFAULTS.trend_min_days
    assert raised.severity == "warning"

    # Cross-check against the windows: the mean lnRMSSD of each day's clean windows.
    def day_mean(d: int) -> float:
        ws = runs[d].windows
        return float(
            np.mean([math.log(w.rmssd_ms) for w in ws if w.rmssd_ms and (w.coverage or 0) >= 0.9])
        )

    judged = d_raised - 1
    recent = [day_mean(d) for d in range(judged - 6, judged + 1)]
    before = [day_mean(d) for d in range(judged - 6)]
    assert x["value"] == pytest.approx(np.mean(recent), abs=0.03)
    assert x["baseline"] == pytest.approx(np.mean(before), abs=0.03)


def test_calm_months_raise_no_trend_alert() -> None:
    engine = AlertEngine()
    for d in range(80):
        f = _decline_factor(d)
        cfg = calm_day(d, duration_s=2400.0, hf_amplitude_ms=25.0 * f, lf_amplitude_ms=20.0 * f)
        sr = run_session(engine, cfg, session_start(d), session=f"d{d}", step_s=30.0)
        assert [e for e in sr.events if e.rule == TREND] == [], f"day {d}"


def test_redelivered_windows_give_no_duplicate_events(
    baseline_state: dict[str, Any], stress_run: SimRun
) -> None:
    reference = stress_run.events
    assert reference
    engine = engine_from(baseline_state)
    events: list[AlertMessage] = []
    for w in stress_run.run.windows:
        first = engine.observe(w)
        again = engine.observe(w)  # MQTT QoS 1 redelivery
        assert not first.duplicate and again.duplicate
        assert again.events == () and again.assessment == first.assessment
        events += first.events
    assert events == reference
    # The whole session delivered once more: nothing.
    replay = feed(engine, stress_run.run.windows)
    assert replay.events == [] and all(o.duplicate for o in replay.outcomes)


def test_alert_ids_are_stable(baseline_state: dict[str, Any], stress_run: SimRun) -> None:
    engine = engine_from(baseline_state)
    again = feed(engine, stress_run.run.windows).events
    assert [e.alert_id for e in again] == [e.alert_id for e in stress_run.events]
    assert again == stress_run.events
    # Another patient with the same data gets other ids.
    other = engine_from({**baseline_state, "patient": "p-0b1c"})
    moved = [dataclasses.replace(w, patient="p-0b1c") for w in stress_run.run.windows]
    ids = {e.alert_id for e in feed(other, moved).events}
    assert ids and ids.isdisjoint(e.alert_id for e in again)


def test_restart_mid_episode_continues_the_alert(
    baseline_state: dict[str, Any], stress_run: SimRun
) -> None:
    windows, reference = stress_run.run.windows, stress_run.run
    raised_at = next(i for i, o in enumerate(reference.outcomes) if o.events)
    cut = raised_at + 60  # five minutes after the raise, long before the resolve
    before = engine_from(baseline_state)
    first = feed(before, windows[:cut])
    saved = roundtrip(before.export_state(PATIENT))
    assert saved["acute"][2] is not None  # an alert is active in the saved state

    after = AlertEngine()
    after.import_state(saved)
    second = feed(after, windows[cut:])
    assert first.events + second.events == reference.events
    assert states(second.events) == [(ACUTE, "resolved")]
    assert second.events[0].alert_id == first.events[0].alert_id
    # The assessments after the restart are those of the engine that kept running.
    assert [o.assessment for o in second.outcomes] == [
        o.assessment for o in reference.outcomes[cut:]
    ]
    assert [a.alert_id for a in after.open_alerts(PATIENT)] == [first.events[0].alert_id]


def test_state_survives_json_with_open_alerts_and_acknowledgements(
    baseline_state: dict[str, Any], stress_run: SimRun
) -> None:
    engine = engine_from(baseline_state)
    feed(engine, stress_run.run.windows)
    (alert,) = engine.open_alerts(PATIENT)
    assert alert.state == "resolved"
    state = engine.export_state(PATIENT)
    restored = engine_from(roundtrip(state))
    assert roundtrip(restored.export_state(PATIENT)) == roundtrip(state)
    assert restored.open_alerts(PATIENT) == engine.open_alerts(PATIENT)
    ack = restored.acknowledge(PATIENT, alert.alert_id, "dr-lee", None, alert.t_unix_s + 60)
    assert ack is not None and ack.state == "acknowledged"
    assert restored.open_alerts(PATIENT) == []


def test_unsupported_state_version_is_refused(baseline_state: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="version"):
        AlertEngine().import_state({**baseline_state, "version": 99})


def test_first_session_has_no_baseline_until_its_quiet_windows_make_one() -> None:
    engine = AlertEngine()
    sr = run_session(engine, calm_day(0), session_start(0), session="first")
    assert sr.events == []
    judged = [a for a in sr.run.assessments() if a.quality == "ok"]
    ready = next(i for i, a in enumerate(judged) if a.baseline is not None)
    assert ready > 0
    for a in judged[:ready]:
        assert (a.state, a.score, a.baseline) == ("no_baseline", None, None)
        assert "baseline" in a.message and "no stress alerts" in a.message
    # The session baseline rests on session_min_windows independent (300 s) windows.
    t_first = judged[0].t_unix_s
    assert judged[ready].t_unix_s - t_first >= (DEFAULTS.session_min_windows - 1) * WINDOW_S
    for a in judged[ready:]:
        assert a.baseline is not None and a.baseline.source == "session"
        assert a.score is not None and a.state in ("calm", "elevated")
    last = judged[-1].baseline
    assert last is not None and last.n_windows >= DEFAULTS.session_min_windows
    now = engine.baseline(PATIENT)
    assert now is not None and now.source == "session"


def test_first_session_raises_no_alert_while_it_has_no_baseline() -> None:
    """A stress episode in a first-ever session's first half hour: nothing to compare."""
    engine = AlertEngine()
    episode = StressEpisode(start_s=600, duration_s=600)
    sr = run_session(engine, calm_day(0, stress=(episode,)), session_start(0), session="first")
    assert sr.events == []
    onset, end = sr.truth_span(sr.sim.stressed)
    during = sr.run.assessments(onset + 120, end)
    assert during and {a.state for a in during} == {"no_baseline"}


def test_first_session_baseline_catches_a_later_episode() -> None:
    engine = AlertEngine()
    episode = StressEpisode(start_s=2100, duration_s=900)
    sr = run_session(engine, calm_day(0, stress=(episode,)), session_start(0), session="first")
    onset, _ = sr.truth_span(sr.sim.stressed)
    assert states(sr.events)[:1] == [(ACUTE, "raised")]
    raised = sr.events[0]
    assert raised.explanation["baseline_source"] == "session"
    assert onset < sr.run.rel(raised.t_unix_s) <= onset + 6 * 60


# == hand-made windows ======================================================================

#: Hand-made scenarios start at noon UTC of calendar day 0.
NOON = T0 + 12 * 3600.0


def hand_engine(config: AlertConfigSet | None = None, *patients: str) -> tuple[AlertEngine, float]:
    """An engine holding the hand-made baseline of each patient; returns it and the time
    the baseline ends (the next window may come 60 s later)."""
    engine = AlertEngine(config)
    end = NOON
    for p in patients or (PATIENT,):
        windows = hand_baseline(NOON, p)
        run = feed(engine, windows)
        assert run.events == []
        b = engine.baseline(p)
        assert b is not None and b.source == "long_term"
        assert b.ln_rmssd.centre == pytest.approx(math.log(40.0), abs=1e-12)
        assert b.hr_bpm.centre == pytest.approx(BASE_HR_BPM, abs=1e-12)
        end = windows[-1].t_unix_s
    return engine, end


def observe_all(engine: AlertEngine, windows: list[Window]) -> list[tuple[float, AlertMessage]]:
    """``(window time, event)`` of every event the windows cause."""
    return [(w.t_unix_s, e) for w in windows for e in engine.observe(w).events]


def test_hand_made_scores_are_what_the_rule_says() -> None:
    """-z(lnRMSSD) and z(HR) against the floors; LF/HF joins with weight 0.5."""
    engine, t = hand_engine()
    out = engine.observe(scored(t + 60, 1.5))
    assert out.assessment is not None and out.assessment.score is not None
    assert out.assessment.score.score == pytest.approx(1.5, abs=0.01)
    assert out.assessment.state == "elevated"
    w = hand_window(t + 120, rmssd_ms=40.0 * math.exp(-0.16), hr_bpm=BASE_HR_BPM + 4, lf_hf=1.5)
    s = engine.observe(w).assessment
    assert s is not None and s.score is not None
    assert (s.score.z_ln_rmssd, s.score.z_hr) == pytest.approx((-2.0, 2.0), abs=0.05)
    assert s.score.z_ln_lf_hf == pytest.approx(0.0, abs=0.05)
    # (1 * 2 + 1 * 2 + 0.5 * 0) / (1 + 1 + 0.5)
    assert s.score.score == pytest.approx(1.6, abs=0.03)
    assert s.state == "elevated"


def test_hysteresis_min_duration_and_cooldown() -> None:
    engine, t0 = hand_engine()
    cfg = DEFAULTS

    # Just above raise_score for less than min_duration_s, then back: nothing.
    t = t0 + 60
    blip = [scored(x, 2.2) for x in every(t, 2)] + [scored(t + 120, 0.0)]
    assert observe_all(engine, blip) == []
    assert engine.assessment(PATIENT) is not None

    # Held: raised exactly when min_duration_s has passed since the first high window.
    t = t + 600
    held = [scored(x, 2.2) for x in every(t, 4)]
    events = observe_all(engine, held)
    assert [(tw, e.state) for tw, e in events] == [(t + cfg.min_duration_s, "raised")]
    first = events[0][1]
    assert first.severity == "warning"
    assert first.alert_id == alert_id(PATIENT, ACUTE, t)
    assert first.explanation["sustained_s"] == cfg.min_duration_s

    # Between clear_score and raise_score for a long time: still active, no event.
    t = t + 240
    middle = [scored(x, 1.5) for x in every(t, 20)]
    assert observe_all(engine, middle) == []
    a = engine.assessment(PATIENT)
    assert a is not None and a.state == "stressed"
    assert [m.alert_id for m in engine.open_alerts(PATIENT)] == [first.alert_id]

    # Below clear_score: resolved once it stayed there clear_duration_s.
    t = t + 20 * 60
    low = [scored(x, 0.5) for x in every(t, 7)]
    events = observe_all(engine, low)
    assert [(tw, e.state) for tw, e in events] == [(t + cfg.clear_duration_s, "resolved")]
    assert events[0][1].alert_id == first.alert_id
    resolved_at = t + cfg.clear_duration_s

    # High again within the cooldown: nothing, however long it lasts.
    t = resolved_at + 120
    n = int((cfg.cooldown_s - 240) // 60)
    assert observe_all(engine, [scored(x, 3.0) for x in every(t, n)]) == []
    a = engine.assessment(PATIENT)
    assert a is not None and a.state == "stressed"  # shown, just not alerted
    assert observe_all(engine, [scored(x, 0.0) for x in every(t + n * 60, 2)]) == []

    # After the cooldown: a new alert with a new id.
    t = resolved_at + cfg.cooldown_s + 60
    events = observe_all(engine, [scored(x, 3.0) for x in every(t, 3)])
    assert [(tw, e.state) for tw, e in events] == [(t + cfg.min_duration_s, "raised")]
    assert events[0][1].alert_id != first.alert_id
    assert events[0][1].alert_id == alert_id(PATIENT, ACUTE, t)


def test_score_dipping_under_clear_briefly_does_not_resolve() -> None:
    engine, t0 = hand_engine()
    t = t0 + 60
    raised = observe_all(engine, [scored(x, 2.5) for x in every(t, 3)])
    assert [e.state for _, e in raised] == ["raised"]
    # 4 min low, one window back up, 4 min low: the clear clock restarts.
    t += 180
    seq = (
        [scored(x, 0.5) for x in every(t, 5)]
        + [scored(t + 300, 1.5)]
        + [scored(x, 0.5) for x in every(t + 360, 5)]
    )
    assert observe_all(engine, seq) == []
    events = observe_all(engine, [scored(t + 660, 0.5)])
    assert [(tw, e.state) for tw, e in events] == [(t + 660, "resolved")]


def test_critical_severity_from_critical_score() -> None:
    engine, t0 = hand_engine()
    # -z(lnRMSSD) = 6 and z(HR) = 4 (8 bpm over a 2-bpm floor): score 5.
    ws = [
        hand_window(x, rmssd_ms=40.0 * math.exp(-6 * 0.08), hr_bpm=BASE_HR_BPM + 8)
        for x in every(t0 + 60, 3)
    ]
    (event,) = [e for _, e in observe_all(engine, ws)]
    assert event.severity == "critical"
    assert event.explanation["stress_score"] == pytest.approx(5.0, abs=0.05)


def test_lost_contact_restarts_the_pending_count() -> None:
    engine, t0 = hand_engine(None, PATIENT, "p-ctrl")
    t = t0 + 60
    # The control patient holds a high score: raised after min_duration_s.
    ctrl = [scored(x, 3.0, patient="p-ctrl") for x in every(t, 6)]
    assert [tw for tw, _ in observe_all(engine, ctrl)] == [t + DEFAULTS.min_duration_s]

    seq = [scored(t, 3.0), scored(t + 60, 3.0), scored(t + 120, 3.0, contact=False)]
    assert observe_all(engine, seq) == []
    a = engine.assessment(PATIENT)
    assert a is not None and (a.state, a.quality) == ("poor_quality", "no_contact")
    assert "skin contact" in a.message
    events = observe_all(engine, [scored(x, 3.0) for x in every(t + 180, 3)])
    assert [tw for tw, _ in events] == [t + 180 + DEFAULTS.min_duration_s]


@pytest.mark.parametrize(
    ("window", "quality", "words"),
    [
        (dict(coverage=0.5), "low_coverage", "cover only 50%"),
        (dict(artifact_pct=12.5), "artifacts", "12.5% of beats"),
        (dict(rmssd_ms=None), "missing", "too few beats"),
        (dict(contact=False), "no_contact", "skin contact"),
    ],
)
def test_quality_gate_says_why(window: dict[str, Any], quality: str, words: str) -> None:
    engine, t0 = hand_engine()
    w = dataclasses.replace(scored(t0 + 60, 3.0), **window)
    out = engine.observe(w)
    assert out.events == ()
    assert out.assessment is not None
    assert (out.assessment.state, out.assessment.quality) == ("poor_quality", quality)
    assert words in out.assessment.message
    assert out.assessment.baseline is not None  # still shown with the baseline


def test_data_stopping_resolves_an_open_alert_at_the_last_window() -> None:
    engine, t0 = hand_engine()
    ws = [scored(x, 3.0) for x in every(t0 + 60, 4)]
    assert [e.state for _, e in observe_all(engine, ws)] == ["raised"]
    last = ws[-1].t_unix_s
    (event,) = engine.observe(scored(last + DEFAULTS.max_gap_s + 60, 0.0)).events
    assert event.state == "resolved"
    assert event.t_unix_s == last
    assert event.explanation["resolved_because"] == "data stopped"


@pytest.mark.parametrize(
    ("timezone", "utc_hour", "severity", "notify"),
    [
        ("Europe/Berlin", 22, "warning", 0),  # 23:00 in Berlin (CET): quiet hours
        ("Europe/Berlin", 22, "critical", 1),  # critical alerts still notify
        ("Europe/Berlin", 18, "warning", 1),  # 19:00 in Berlin
        ("America/New_York", 22, "warning", 1),  # 17:00 in New York
        ("Europe/Berlin", 5, "warning", 0),  # 06:00 in Berlin, before 07:00
    ],
)
def test_quiet_hours_hold_back_notification(
    timezone: str, utc_hour: int, severity: str, notify: int
) -> None:
    config = AlertConfigSet(AlertConfig(timezone=timezone, quiet_hours=(22.0, 7.0)))
    engine = AlertEngine(config)
    # The baseline ends well before the alert; the alert is raised at utc_hour:00 UTC.
    start = T0 + DAY_S + utc_hour * 3600.0 - 4 * 3600.0
    feed(engine, hand_baseline(start))
    raise_at = T0 + DAY_S + utc_hour * 3600.0
    first = raise_at - DEFAULTS.min_duration_s
    ws = [
        scored(x, 2.5)
        if severity == "warning"
        else hand_window(x, rmssd_ms=40.0 * math.exp(-6 * 0.08), hr_bpm=BASE_HR_BPM + 8)
        for x in every(first, 3)
    ]
    events = observe_all(engine, ws)
    assert [(tw, e.state, e.severity) for tw, e in events] == [(raise_at, "raised", severity)]
    assert events[0][1].explanation["notify"] == notify


def test_quiet_hours_off_always_notifies() -> None:
    config = AlertConfigSet(AlertConfig(quiet_hours=None))
    engine = AlertEngine(config)
    start = T0 + DAY_S
    feed(engine, hand_baseline(start))
    raise_at = T0 + DAY_S + 3 * 3600.0  # 03:00 UTC
    ws = [scored(x, 2.5) for x in every(raise_at - 120, 3)]
    (event,) = [e for _, e in observe_all(engine, ws)]
    assert event.explanation["notify"] == 1


def test_per_patient_override_raises_the_bar() -> None:
    config = AlertConfigSet.from_mapping(
        {"raise_score": 2.0, "patients": {"p-calm": {"raise_score": 3.0}}}
    )
    assert config.for_patient("p-calm").raise_score == 3.0
    engine, t0 = hand_engine(config, PATIENT, "p-calm")
    t = t0 + 60
    for p in (PATIENT, "p-calm"):
        ws = [scored(x, 2.5, patient=p) for x in every(t, 10)]
        events = observe_all(engine, ws)
        assert [e.patient for _, e in events] == ([PATIENT] if p == PATIENT else [])
    # A score above the patient's own bar does raise.
    t += 3600
    ws = [scored(x, 3.5, patient="p-calm") for x in every(t, 3)]
    assert [(tw, e.patient) for tw, e in observe_all(engine, ws)] == [(t + 120, "p-calm")]


def test_acute_rule_can_be_switched_off() -> None:
    config = AlertConfigSet(AlertConfig(acute_enabled=False))
    engine, t0 = hand_engine(config)
    assert observe_all(engine, [scored(x, 3.0) for x in every(t0 + 60, 10)]) == []
    a = engine.assessment(PATIENT)
    assert a is not None and a.state == "stressed"


def _raised(engine: AlertEngine, t: float) -> tuple[AlertMessage, float]:
    events = observe_all(engine, [scored(x, 3.0) for x in every(t, 3)])
    assert [e.state for _, e in events] == ["raised"]
    return events[0][1], t + 180


def _resolve(engine: AlertEngine, t: float) -> tuple[AlertMessage, float]:
    events = observe_all(engine, [scored(x, 0.0) for x in every(t, 6)])
    assert [e.state for _, e in events] == ["resolved"]
    return events[0][1], t + 360


def test_acknowledge_then_resolve() -> None:
    engine, t = hand_engine()
    log: list[AlertMessage] = []
    raised, t = _raised(engine, t + 60)
    log.append(raised)

    ack = engine.acknowledge(PATIENT, raised.alert_id, "dr-lee", "called her", t + 5)
    assert ack is not None
    log.append(ack)
    assert (ack.state, ack.alert_id, ack.acknowledged_by, ack.note, ack.t_unix_s) == (
        "acknowledged",
        raised.alert_id,
        "dr-lee",
        "called her",
        t + 5,
    )
    assert ack.explanation == raised.explanation
    assert [m.state for m in engine.open_alerts(PATIENT)] == ["acknowledged"]

    # The same therapist again (a repeated message): nothing changes.
    assert engine.acknowledge(PATIENT, raised.alert_id, "dr-lee", "again", t + 10) is None
    # Somebody else: refused, naming who did.
    with pytest.raises(AlertActionError, match="dr-lee"):
        engine.acknowledge(PATIENT, raised.alert_id, "dr-kim", None, t + 10)
    with pytest.raises(AlertActionError):
        engine.acknowledge(PATIENT, "acute_stress-nope", "dr-lee", None, t + 10)
    with pytest.raises(AlertActionError):
        engine.acknowledge("p-unknown", raised.alert_id, "dr-lee", None, t + 10)

    resolved, t = _resolve(engine, t + 60)
    log.append(resolved)
    assert resolved.alert_id == raised.alert_id
    assert (resolved.acknowledged_by, resolved.note) == ("dr-lee", "called her")
    assert engine.open_alerts(PATIENT) == []  # acknowledged and resolved: closed
    assert engine.open_alerts() == []
    # A late repeat of the acknowledgement of a closed alert is recognised.
    assert engine.acknowledge(PATIENT, raised.alert_id, "dr-lee", None, t) is None
    assert [m.state for m in log] == ["raised", "acknowledged", "resolved"]
    assert {m.alert_id for m in log} == {raised.alert_id}


def test_resolve_then_acknowledge() -> None:
    engine, t = hand_engine()
    raised, t = _raised(engine, t + 60)
    resolved, t = _resolve(engine, t + 60)
    assert resolved.acknowledged_by is None
    # Resolved but not acknowledged: still open, in its latest state.
    (open_alert,) = engine.open_alerts(PATIENT)
    assert (open_alert.alert_id, open_alert.state) == (raised.alert_id, "resolved")
    assert open_alert.t_unix_s == resolved.t_unix_s

    ack = engine.acknowledge(PATIENT, raised.alert_id, "dr-kim", None, t + 30)
    assert ack is not None and ack.state == "acknowledged" and ack.note is None
    assert ack.acknowledged_by == "dr-kim"
    assert engine.open_alerts(PATIENT) == []
    assert [raised.state, resolved.state, ack.state] == ["raised", "resolved", "acknowledged"]


def test_open_alerts_newest_first_across_patients() -> None:
    engine, t0 = hand_engine(None, PATIENT, "p-2")
    a, _ = _raised(engine, t0 + 60)
    ws = [scored(x, 3.0, patient="p-2") for x in every(t0 + 600, 3)]
    (b,) = [e for _, e in observe_all(engine, ws)]
    assert [m.alert_id for m in engine.open_alerts()] == [b.alert_id, a.alert_id]
    assert [m.alert_id for m in engine.open_alerts("p-2")] == [b.alert_id]
    assert engine.open_alerts("p-nobody") == []


def test_seeded_history_builds_a_baseline_without_alerts() -> None:
    engine = AlertEngine()
    history = hand_baseline(NOON) + [scored(x, 3.0) for x in every(NOON + 31 * 300, 5)]
    engine.seed(history)
    assert engine.open_alerts() == []
    b = engine.baseline(PATIENT)
    assert b is not None and b.source == "long_term"
    # And judges the next window against it.
    out = engine.observe(scored(NOON + 40 * 300, 0.0))
    assert out.assessment is not None and out.assessment.state == "calm"


def test_assessment_json_for_the_dashboard() -> None:
    engine, t0 = hand_engine()
    a = engine.observe(scored(t0 + 60, 1.5)).assessment
    assert a is not None
    j = a.to_json()
    assert j["state"] == "elevated" and j["quality"] == "ok"
    assert j["stress_score"] == pytest.approx(1.5, abs=0.01)
    base = j["baseline"]
    assert isinstance(base, dict)
    low, mid, high = base["rmssd_ms"]
    assert low < mid < high and mid == pytest.approx(40.0)
    assert base["source"] == "long_term"


def test_events_are_valid_wire_messages(stress_run: SimRun) -> None:
    for event in stress_run.events:
        assert AlertMessage.from_json(event.to_json()) == event


def test_window_from_row_reads_nan_as_missing() -> None:
    row = {"t_s": 330.0, "coverage": 0.97, "artifact_pct": 0.0, "mean_hr_bpm": 64.0}
    row |= {"rmssd_ms": 31.0, "lf_hf": math.nan}
    w = Window.from_row(PATIENT, "s1", 1_700_000_000.0, 300.0, row)
    assert w.t_unix_s == 1_700_000_330.0
    assert (w.rmssd_ms, w.lf_hf, w.contact) == (31.0, None, None)


def test_pending_count_does_not_survive_a_day_without_data() -> None:
    engine, t0 = hand_engine()
    assert observe_all(engine, [scored(x, 3.0) for x in every(t0 + 60, 2)]) == []
    next_day = t0 + DAY_S
    assert observe_all(engine, [scored(next_day, 3.0, session="h2")]) == []


def test_restart_with_other_window_length_changes_nothing() -> None:
    def w120(i: int) -> Window:
        n = (7 * i) % 31 - 15
        w = hand_window(NOON + 30.0 * i, rmssd_ms=40.0 * math.exp(0.002 * n), hr_bpm=65 + 0.05 * n)
        return dataclasses.replace(w, window_s=120.0)

    windows = [w120(i) for i in range(60)]
    reference = feed(AlertEngine(), windows)
    before = AlertEngine()
    feed(before, windows[:20])
    after = AlertEngine()
    after.import_state(roundtrip(before.export_state(PATIENT)))
    rest = feed(after, windows[20:])
    assert [o.assessment for o in rest.outcomes] == [o.assessment for o in reference.outcomes[20:]]
