"""The sliding-window engine: known answers, missing data, batch == stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hrvstream.hrv.artifacts import LOOKAHEAD_BEATS
from hrvstream.hrv.engine import (
    WINDOW_COLUMNS,
    AnalysisConfig,
    StreamingAnalyzer,
    analyze,
    window_bounds,
    window_ends,
)
from hrvstream.recordings import RRSeries
from hrvstream.simulate import ArtifactSpec, SessionConfig, StressEpisode, simulate_session
from tests.hrv.shared_files import IDS, SHARED_FILES, SharedFile


def _modulated(freq_hz: float, minutes: float = 10.0, amp_ms: float = 40.0) -> RRSeries:
    """Beats whose RR follows a pure sinusoid of ``freq_hz`` in time (no noise)."""
    rr: list[float] = []
    t = 0.0
    while t < minutes * 60:
        v = 900.0 + amp_ms * np.sin(2 * np.pi * freq_hz * t)
        rr.append(v)
        t += v / 1000.0
    return RRSeries.from_rr(np.array(rr))


def test_alternating_800_850_gives_rmssd_50() -> None:
    series = RRSeries.from_rr(np.tile([800.0, 850.0], 400))
    res = analyze(series, AnalysisConfig(window_s=300, step_s=60, correct=False))
    full = res.windows["coverage"] >= 0.999
    assert full.any()
    np.testing.assert_allclose(res.windows["rmssd_ms"][full], 50.0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(res.windows["mean_nn_ms"][full], 825.0, atol=1e-9)
    # |diff| is exactly 50, not more than 50
    np.testing.assert_array_equal(res.windows["pnn50_pct"][full], 0.0)
    n = res.windows["n_beats"][full].astype(float)
    np.testing.assert_allclose(
        res.windows["sdnn_ms"][full], 25.0 * np.sqrt(n / (n - 1)), rtol=1e-12
    )
    hr = (60000 / 800 + 60000 / 850) / 2
    np.testing.assert_allclose(res.windows["mean_hr_bpm"][full], hr, rtol=1e-3)


@pytest.mark.parametrize(("freq", "band"), [(0.1, "lf"), (0.25, "hf")])
def test_pure_modulation_lands_in_its_band(freq: float, band: str) -> None:
    res = analyze(_modulated(freq), AnalysisConfig(window_s=300, step_s=30, correct=False))
    lf = res.windows["lf_ms2"]
    hf = res.windows["hf_ms2"]
    ok = np.isfinite(lf) & np.isfinite(hf)
    assert ok.sum() >= 5
    share = lf[ok] / (lf[ok] + hf[ok]) if band == "lf" else hf[ok] / (lf[ok] + hf[ok])
    assert np.all(share > 0.95)
    # Parseval: a sinusoid of amplitude A has variance A^2/2, all of it in one band.
    total = (lf[ok] + hf[ok]) if band == "lf" else hf[ok]
    np.testing.assert_allclose(total, 40.0**2 / 2, rtol=0.15)


def test_window_membership_is_half_open_on_the_left() -> None:
    t = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    s, e = window_bounds(t, np.array([4.0]), 2.0)
    # T - W < t <= T  ->  2 < t <= 4  ->  beats at 3 and 4
    assert (int(s[0]), int(e[0])) == (2, 4)
    np.testing.assert_array_equal(window_ends(t, 2.0), [2.0, 4.0])
    np.testing.assert_array_equal(window_ends(t, None), t)


def test_short_data_is_missing_not_zero() -> None:
    series = RRSeries.from_rr(np.full(100, 1000.0))  # 100 s of data
    res = analyze(series, AnalysisConfig(window_s=300, step_s=5))
    w = res.windows
    assert np.all(w["coverage"] < 0.5)
    for col in ("rmssd_ms", "sdnn_ms", "mean_hr_bpm", "lf_ms2", "hf_ms2", "lf_hf"):
        assert np.all(np.isnan(w[col])), col
    assert np.all(w["n_beats"] > 0)


def test_gap_lowers_coverage_and_drops_frequency_domain() -> None:
    rr = np.full(1000, 800.0)
    t = np.cumsum(rr) / 1000.0
    t[500:] += 60.0  # a minute of lost beats (e.g. a reconnect)
    series = RRSeries(rr_ms=rr, t_s=t)
    res = analyze(series, AnalysisConfig(window_s=300, step_s=None, correct=False))
    w = res.windows
    across = (w["t_s"] > t[500]) & (w["t_s"] - 300 < t[499])
    assert across.any()
    assert np.all(w["coverage"][across] <= 1 - 60 / 300 + 1e-9)
    assert np.all(np.isnan(w["lf_ms2"][across]))
    # RMSSD never takes a difference across the gap: here every NN is 800 ms anyway,
    # so a difference across it would still be 0; use a jump to make it visible.
    rr2 = rr.copy()
    rr2[500:] = 900.0
    res2 = analyze(RRSeries(rr_ms=rr2, t_s=t), AnalysisConfig(step_s=None, correct=False))
    valid = np.isfinite(res2.windows["rmssd_ms"])
    assert valid.any()
    np.testing.assert_array_equal(res2.windows["rmssd_ms"][valid], 0.0)


def _stream_rows(series: RRSeries, config: AnalysisConfig) -> dict[str, np.ndarray]:
    sa = StreamingAnalyzer(config)
    rows = []
    for rr, t in zip(series.rr_ms.tolist(), series.t_s.tolist(), strict=True):
        rows.extend(sa.push(rr, t))
    rows.extend(sa.close())
    return {k: np.array([r[k] for r in rows]) for k in WINDOW_COLUMNS}


def _assert_same(batch: dict[str, np.ndarray], stream: dict[str, np.ndarray]) -> None:
    assert len(stream["t_s"]) == len(batch["t_s"])
    for col in WINDOW_COLUMNS:
        b = np.asarray(batch[col], dtype=float)
        s = np.asarray(stream[col], dtype=float)
        np.testing.assert_array_equal(np.isnan(b), np.isnan(s), err_msg=col)
        # Sums of dyadic RR values are exact; 60000/NN is not, hence the tolerance.
        np.testing.assert_allclose(s, b, rtol=1e-11, atol=0, equal_nan=True, err_msg=col)


@pytest.mark.parametrize("step", [5.0, None], ids=["step5", "beat"])
@pytest.mark.parametrize("correct", [True, False], ids=["corrected", "raw"])
def test_stream_equals_batch_on_simulated_session_with_artifacts(
    step: float | None, correct: bool
) -> None:
    sim = simulate_session(
        SessionConfig(
            duration_s=1800,
            seed=7,
            stress=(StressEpisode(start_s=600, duration_s=600),),
            artifacts=ArtifactSpec(ectopic_rate=0.01, missed_rate=0.005, extra_rate=0.005),
        )
    )
    cfg = AnalysisConfig(window_s=300, step_s=step, correct=correct)
    batch = analyze(sim.series, cfg).windows.columns
    _assert_same(dict(batch), _stream_rows(sim.series, cfg))


def test_stream_emits_with_bounded_delay() -> None:
    series = simulate_session(SessionConfig(duration_s=900, seed=1)).series
    sa = StreamingAnalyzer(AnalysisConfig(step_s=None))
    emitted = 0
    for i, (rr, t) in enumerate(zip(series.rr_ms.tolist(), series.t_s.tolist(), strict=True)):
        emitted += len(sa.push(rr, t))
        # a beat's window is out once the detector has seen enough beats after it
        assert emitted >= i + 1 - (LOOKAHEAD_BEATS + 16)
    emitted += len(sa.close())
    assert emitted == len(series)


@pytest.mark.parametrize("shared", SHARED_FILES, ids=IDS)
def test_stream_equals_batch_on_shared_recording(recordings: Path, shared: SharedFile) -> None:
    series = shared.load(recordings)
    window = 60.0 if series.duration_s < 600 else 300.0
    cfg = AnalysisConfig(window_s=window, step_s=5.0)
    batch = analyze(series, cfg).windows.columns
    _assert_same(dict(batch), _stream_rows(series, cfg))
    if not shared.long:
        cfg_beat = AnalysisConfig(window_s=window, step_s=None)
        batch_b = analyze(series, cfg_beat).windows.columns
        _assert_same(dict(batch_b), _stream_rows(series, cfg_beat))


def test_stream_rejects_time_going_backwards() -> None:
    sa = StreamingAnalyzer()
    sa.push(800.0, 0.8)
    with pytest.raises(ValueError, match="increase"):
        sa.push(800.0, 0.5)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        AnalysisConfig(window_s=0)
    with pytest.raises(ValueError):
        AnalysisConfig(step_s=-5)
