"""Tests of the RR session simulator (:mod:`hrvstream.simulate`).

Expectations are computed here from first principles (RMSSD as ``sqrt(mean(diff^2))``,
band powers from ``scipy.signal.welch`` on an evenly resampled tachogram, artifact
structure from beat times), never by calling the simulator's own helpers.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.signal import welch

from hrvstream.errors import ConfigError
from hrvstream.recordings.model import RRSeries
from hrvstream.simulate import (
    ArtifactSpec,
    ExerciseBout,
    SessionConfig,
    SimulatedSession,
    StressEpisode,
    parse_duration_s,
    parse_stress_spec,
    simulate_session,
    write_rr_file,
)

FloatArray = npt.NDArray[np.float64]
FS_HZ = 4.0

# Only one oscillator (or none) switched on, tiny jitter: for the spectral checks.
QUIET = SessionConfig(
    duration_s=1200.0,
    hf_amplitude_ms=0.0,
    lf_amplitude_ms=0.0,
    vlf_amplitude_ms=0.0,
    jitter_ms=0.5,
)


def rmssd(rr: FloatArray) -> float:
    return float(np.sqrt(np.mean(np.diff(rr) ** 2)))


def mean_hr_bpm(rr: FloatArray) -> float:
    return float(60000.0 / np.mean(rr))


def window(series: RRSeries, start_s: float, end_s: float) -> tuple[FloatArray, FloatArray]:
    """Beat times and intervals of the intervals ending inside ``[start_s, end_s)``."""
    keep = (series.t_s >= start_s) & (series.t_s < end_s)
    return series.t_s[keep], series.rr_ms[keep]


def resampled(t_s: FloatArray, rr_ms: FloatArray) -> FloatArray:
    """The tachogram linearly interpolated at 4 Hz, linear trend removed."""
    grid = np.arange(t_s[0], t_s[-1], 1.0 / FS_HZ)
    x: FloatArray = np.interp(grid, t_s, rr_ms)
    slope, intercept = np.polyfit(grid, x, 1)
    detrended: FloatArray = x - (float(slope) * grid + float(intercept))
    return detrended


def spectrum(t_s: FloatArray, rr_ms: FloatArray) -> tuple[FloatArray, FloatArray]:
    x = resampled(t_s, rr_ms)
    f, p = welch(x, fs=FS_HZ, nperseg=min(1024, x.size), detrend="constant")
    return f, p


def band_power(f: FloatArray, p: FloatArray, lo: float, hi: float) -> float:
    band = (f >= lo) & (f < hi)
    return float(np.trapezoid(p[band], f[band]))


def lf_hf(t_s: FloatArray, rr_ms: FloatArray) -> float:
    f, p = spectrum(t_s, rr_ms)
    return band_power(f, p, 0.04, 0.15) / band_power(f, p, 0.15, 0.40)


# ----------------------------------------------------------------- determinism


def full_config(seed: int) -> SessionConfig:
    return SessionConfig(
        duration_s=900.0,
        seed=seed,
        stress=(StressEpisode(start_s=300.0, duration_s=300.0),),
        exercise=(ExerciseBout(start_s=700.0, duration_s=120.0),),
        artifacts=ArtifactSpec(ectopic_rate=0.02, missed_rate=0.02, extra_rate=0.02),
    )


def assert_same(a: SimulatedSession, b: SimulatedSession) -> None:
    np.testing.assert_array_equal(a.series.rr_ms, b.series.rr_ms)
    np.testing.assert_array_equal(a.series.t_s, b.series.t_s)
    np.testing.assert_array_equal(a.clean_rr_ms, b.clean_rr_ms)
    np.testing.assert_array_equal(a.truth, b.truth)
    np.testing.assert_array_equal(a.stressed, b.stressed)


def test_same_seed_same_session() -> None:
    assert_same(simulate_session(full_config(5)), simulate_session(full_config(5)))


def test_different_seed_different_session() -> None:
    a = simulate_session(full_config(5))
    b = simulate_session(full_config(6))
    n = min(len(a.clean_rr_ms), len(b.clean_rr_ms))
    assert not np.allclose(a.clean_rr_ms[:n], b.clean_rr_ms[:n])
    assert not np.array_equal(a.truth[:n], b.truth[:n])


def test_artifacts_do_not_change_the_clean_series() -> None:
    with_artifacts = simulate_session(full_config(9))
    without = simulate_session(replace(full_config(9), artifacts=ArtifactSpec()))
    np.testing.assert_array_equal(with_artifacts.clean_rr_ms, without.clean_rr_ms)


def test_series_metadata() -> None:
    s = simulate_session(SessionConfig(duration_s=60.0, seed=7))
    assert s.series.format == "simulated"
    assert s.series.source == "<simulated seed=7>"
    assert s.truth.dtype == np.int8
    assert s.stressed.dtype == np.bool_
    assert s.truth.shape == s.stressed.shape == s.series.rr_ms.shape


# ------------------------------------------------------------- basic properties


@pytest.mark.parametrize("hr", [45.0, 65.0, 90.0, 120.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_heart_rate_close_to_config(hr: float, seed: int) -> None:
    s = simulate_session(SessionConfig(duration_s=900.0, seed=seed, mean_hr_bpm=hr))
    assert mean_hr_bpm(s.clean_rr_ms) == pytest.approx(hr, abs=1.5)
    # Beats per minute counted directly agree too.
    assert len(s.series) / (s.series.duration_s / 60.0) == pytest.approx(hr, abs=1.5)


def test_heart_rate_trend() -> None:
    cfg = SessionConfig(duration_s=7200.0, seed=4, mean_hr_bpm=70.0, hr_trend_bpm_per_h=10.0)
    s = simulate_session(cfg)
    # The trend is centred: -10 bpm at the start, +10 bpm at the end, 70 on average.
    first = mean_hr_bpm(window(s.series, 0.0, 600.0)[1])
    last = mean_hr_bpm(window(s.series, 6600.0, 7200.0)[1])
    assert first == pytest.approx(70.0 - 9.2, abs=2.0)
    assert last == pytest.approx(70.0 + 9.2, abs=2.0)
    assert mean_hr_bpm(s.clean_rr_ms) == pytest.approx(70.0, abs=1.5)


def test_circadian_rhythm_peaks_in_the_afternoon() -> None:
    cfg = SessionConfig(duration_s=86400.0, seed=2, circadian_amplitude_bpm=8.0, start_clock_h=0.0)
    s = simulate_session(cfg)
    night = mean_hr_bpm(window(s.series, 3.5 * 3600, 4.5 * 3600)[1])  # 04:00
    afternoon = mean_hr_bpm(window(s.series, 15.5 * 3600, 16.5 * 3600)[1])  # 16:00
    assert afternoon - night == pytest.approx(16.0, abs=3.0)


@pytest.mark.parametrize("duration_s", [1.0, 59.5, 600.0, 3600.0])
def test_beat_times_and_coverage(duration_s: float) -> None:
    s = simulate_session(SessionConfig(duration_s=duration_s, seed=3, artifacts=ArtifactSpec(0.02)))
    np.testing.assert_allclose(s.series.t_s, np.cumsum(s.series.rr_ms) / 1000.0, rtol=1e-12)
    # The last beat is the first one at or after the configured duration.
    assert s.series.t_s[-1] >= duration_s
    assert len(s.series) == 1 or s.series.t_s[-2] < duration_s
    # Artifacts move beats around but keep the total time.
    assert np.sum(s.series.rr_ms) == pytest.approx(np.sum(s.clean_rr_ms), rel=1e-12)


@pytest.mark.parametrize(
    "cfg",
    [
        SessionConfig(duration_s=3600.0, seed=1),
        SessionConfig(duration_s=3600.0, seed=2, mean_hr_bpm=40.0, hf_amplitude_ms=60.0),
        SessionConfig(duration_s=3600.0, seed=3, mean_hr_bpm=180.0),
        full_config(4),
    ],
    ids=["rest", "bradycardic-athlete", "tachycardic", "stress-exercise"],
)
def test_clean_intervals_are_physiological(cfg: SessionConfig) -> None:
    s = simulate_session(replace(cfg, artifacts=ArtifactSpec()))
    assert np.all((s.series.rr_ms >= 300.0) & (s.series.rr_ms <= 2000.0))
    assert not np.any(s.truth)
    np.testing.assert_array_equal(s.series.rr_ms, s.clean_rr_ms)


def test_default_session_looks_like_a_resting_adult() -> None:
    s = simulate_session(SessionConfig(duration_s=600.0, seed=11))
    rr = s.clean_rr_ms
    assert np.all((rr > 650.0) & (rr < 1250.0))
    # Resting short-term RMSSD of healthy adults is typically 15..60 ms.
    assert 15.0 < rmssd(rr) < 60.0
    # Successive intervals rarely differ by more than 20 % in clean data.
    assert np.mean(np.abs(np.diff(rr)) / rr[:-1] > 0.2) < 0.01


def test_24_hour_session_is_fast() -> None:
    cfg = SessionConfig(
        duration_s=86400.0,
        seed=1,
        stress=(StressEpisode(start_s=3600.0, duration_s=600.0),),
        artifacts=ArtifactSpec(ectopic_rate=0.01, missed_rate=0.005, extra_rate=0.005),
    )
    simulate_session(replace(cfg, duration_s=60.0))  # warm up imports and caches
    t0 = time.perf_counter()
    s = simulate_session(cfg)
    elapsed = time.perf_counter() - t0
    assert 86400 / 60 * 60 * 0.95 < len(s.clean_rr_ms) < 86400 / 60 * 70
    assert elapsed < 2.0, f"24 h took {elapsed:.2f} s"


# -------------------------------------------------------------------- spectrum


@pytest.mark.parametrize("resp_hz", [0.2, 0.25, 0.33])
@pytest.mark.parametrize("seed", [0, 1])
def test_hf_only_peaks_at_the_respiration_rate(resp_hz: float, seed: int) -> None:
    s = simulate_session(replace(QUIET, seed=seed, resp_rate_hz=resp_hz, hf_amplitude_ms=25.0))
    f, p = spectrum(s.series.t_s, s.series.rr_ms)
    assert f[np.argmax(p)] == pytest.approx(resp_hz, abs=0.02)
    assert band_power(f, p, 0.15, 0.4) > 10 * band_power(f, p, 0.0, 0.15)


@pytest.mark.parametrize("lf_hz", [0.08, 0.1, 0.12])
@pytest.mark.parametrize("seed", [0, 1])
def test_lf_only_peaks_at_the_mayer_frequency(lf_hz: float, seed: int) -> None:
    s = simulate_session(replace(QUIET, seed=seed, lf_freq_hz=lf_hz, lf_amplitude_ms=20.0))
    f, p = spectrum(s.series.t_s, s.series.rr_ms)
    assert f[np.argmax(p)] == pytest.approx(lf_hz, abs=0.02)
    assert band_power(f, p, 0.04, 0.15) > 10 * band_power(f, p, 0.15, 0.4)


@pytest.mark.parametrize("component", ["hf", "lf"])
@pytest.mark.parametrize("hr", [50.0, 100.0])
def test_amplitude_is_that_of_an_equivalent_sinusoid(component: str, hr: float) -> None:
    cfg = replace(QUIET, duration_s=1800.0, seed=2, mean_hr_bpm=hr)
    if component == "hf":
        cfg = replace(cfg, hf_amplitude_ms=30.0)
    else:
        cfg = replace(cfg, lf_amplitude_ms=30.0)
    s = simulate_session(cfg)
    # A sinusoid of amplitude A has variance A^2 / 2 (plus 0.5 ms of jitter).
    expected = np.sqrt(30.0**2 / 2.0 + 0.5**2)
    assert np.std(s.clean_rr_ms) == pytest.approx(expected, rel=0.07)


def test_vlf_noise_stays_below_the_lf_band() -> None:
    s = simulate_session(replace(QUIET, duration_s=3600.0, seed=5, vlf_amplitude_ms=15.0))
    f, p = spectrum(s.series.t_s, s.series.rr_ms)
    vlf = band_power(f, p, 0.0, 0.04)
    assert vlf > 5 * band_power(f, p, 0.04, 0.4)
    # 1/f-like: power density falls with frequency inside the band.
    assert np.mean(p[(f > 0.005) & (f < 0.01)]) > 2 * np.mean(p[(f > 0.02) & (f < 0.04)])


# ---------------------------------------------------------------------- stress

STRESS = StressEpisode(start_s=1200.0, duration_s=720.0, ramp_s=60.0)


@pytest.mark.parametrize("seed", range(6))
def test_stress_episode_lowers_rmssd_and_raises_hr_and_lf_hf(seed: int) -> None:
    s = simulate_session(SessionConfig(duration_s=2400.0, seed=seed, stress=(STRESS,)))
    before_t, before = window(s.series, 300.0, 1200.0)
    during_t, during = window(s.series, STRESS.start_s + 120.0, STRESS.end_s - 60.0)
    assert rmssd(during) <= 0.7 * rmssd(before)
    assert mean_hr_bpm(during) > mean_hr_bpm(before) + 10.0
    assert lf_hf(during_t, during) > 1.5 * lf_hf(before_t, before)


@pytest.mark.parametrize("seed", range(4))
def test_stress_scales_the_lf_component(seed: int) -> None:
    episode = StressEpisode(1200.0, 720.0, hr_increase_bpm=0.0, lf_scale=2.0)
    cfg = replace(QUIET, duration_s=2400.0, seed=seed, lf_amplitude_ms=20.0, stress=(episode,))
    s = simulate_session(cfg)
    _, before = window(s.series, 300.0, 1200.0)
    _, during = window(s.series, 1320.0, 1860.0)
    # Expected ratio 2; the random envelope of a narrow-band process spreads it.
    assert 1.3 < np.std(during) / np.std(before) < 3.0


def test_stress_effect_ends_with_the_episode() -> None:
    s = simulate_session(SessionConfig(duration_s=2400.0, seed=1, stress=(STRESS,)))
    _, before = window(s.series, 300.0, 1200.0)
    _, after = window(s.series, STRESS.end_s, 2400.0)
    assert mean_hr_bpm(after) == pytest.approx(mean_hr_bpm(before), abs=3.0)
    assert rmssd(after) > 0.75 * rmssd(before)


def test_stressed_mask_marks_the_episode_window() -> None:
    episodes = (StressEpisode(100.0, 50.0, ramp_s=5.0), StressEpisode(400.0, 100.0))
    s = simulate_session(SessionConfig(duration_s=600.0, seed=2, stress=episodes))
    t = s.series.t_s
    expected = ((t >= 100.0) & (t < 150.0)) | ((t >= 400.0) & (t < 500.0))
    np.testing.assert_array_equal(s.stressed, expected)
    assert not np.any(simulate_session(SessionConfig(duration_s=600.0)).stressed)


def test_ramp_makes_the_heart_rate_rise_gradually() -> None:
    episode = StressEpisode(start_s=600.0, duration_s=900.0, ramp_s=300.0, hr_increase_bpm=20.0)
    cfg = SessionConfig(
        duration_s=1800.0, seed=0, stress=(episode,), hf_amplitude_ms=5.0, lf_amplitude_ms=5.0
    )
    s = simulate_session(cfg)
    base = mean_hr_bpm(window(s.series, 300.0, 600.0)[1])
    mid_ramp = mean_hr_bpm(window(s.series, 720.0, 780.0)[1])  # smoothstep(0.5) = 0.5
    full = mean_hr_bpm(window(s.series, 1000.0, 1200.0)[1])
    assert full - base == pytest.approx(20.0, abs=3.0)
    assert mid_ramp - base == pytest.approx(10.0, abs=3.0)


# -------------------------------------------------------------------- exercise


def test_exercise_bout_high_rising_heart_rate_and_low_hrv() -> None:
    bout = ExerciseBout(start_s=600.0, duration_s=1200.0, peak_hr_bpm=150.0)
    s = simulate_session(SessionConfig(duration_s=2700.0, seed=3, exercise=(bout,)))
    _, rest = window(s.series, 0.0, 600.0)
    _, early = window(s.series, 800.0, 1000.0)
    _, late = window(s.series, 1600.0, 1800.0)
    _, recovered = window(s.series, 2400.0, 2700.0)
    assert mean_hr_bpm(early) > mean_hr_bpm(rest) + 50.0
    assert mean_hr_bpm(late) > mean_hr_bpm(early) + 5.0  # steadily rising
    assert mean_hr_bpm(late) == pytest.approx(150.0, abs=8.0)
    assert rmssd(late) < 0.35 * rmssd(rest)
    assert mean_hr_bpm(recovered) < mean_hr_bpm(late) - 50.0
    t = s.series.t_s
    np.testing.assert_array_equal(s.exercising, (t >= 600.0) & (t < 1800.0))


# ------------------------------------------------------------------- artifacts


def is_boundary(
    points: FloatArray, clean_edges: FloatArray
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.intp]]:
    """Which ``points`` are clean beat times, and the index of the nearest clean beat."""
    j = np.clip(np.searchsorted(clean_edges, points), 1, clean_edges.size - 1)
    nearest = np.where(
        np.abs(clean_edges[j - 1] - points) < np.abs(clean_edges[j] - points), j - 1, j
    )
    return np.abs(clean_edges[nearest] - points) < 1e-6, nearest


def check_truth_alignment(s: SimulatedSession) -> dict[int, int]:
    """Check each labelled interval against the clean series; return event counts."""
    clean = s.clean_rr_ms
    clean_edges = np.concatenate([[0.0], np.cumsum(clean)])  # ms
    out_edges = np.concatenate([[0.0], np.cumsum(s.series.rr_ms)])
    on_clean, k = is_boundary(out_edges, clean_edges)
    rr = s.series.rr_ms
    truth = s.truth.tolist()
    counts = {0: 0, 1: 0, 2: 0, 3: 0}
    j = 0
    while j < len(truth):
        label = truth[j]
        counts[label] += 1
        assert on_clean[j], f"interval {j} does not start on a clean beat"
        if label == 0:
            assert on_clean[j + 1] and k[j + 1] == k[j] + 1
            assert rr[j] == pytest.approx(clean[k[j]])
            j += 1
        elif label == 2:  # one interval = two clean ones merged
            assert on_clean[j + 1] and k[j + 1] == k[j] + 2
            assert rr[j] == pytest.approx(clean[k[j]] + clean[k[j] + 1])
            j += 1
        else:  # a pair: ectopic (short, long) or extra (split)
            assert truth[j + 1] == label, f"interval {j}: {label} must come in pairs"
            assert not on_clean[j + 1], f"interval {j}: the inner beat must be new"
            assert on_clean[j + 2]
            first = clean[k[j]]
            if label == 1:
                assert k[j + 2] == k[j] + 2
                assert rr[j] + rr[j + 1] == pytest.approx(first + clean[k[j] + 1])
                assert rr[j] < 0.85 * first  # premature
                assert rr[j + 1] > first  # compensatory pause
            else:
                assert k[j + 2] == k[j] + 1
                assert rr[j] + rr[j + 1] == pytest.approx(first)
                assert max(rr[j], rr[j + 1]) < first
            j += 2
    return counts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_artifacts_at_the_configured_rates_and_truth_lines_up(seed: int) -> None:
    rates = {1: 0.02, 2: 0.01, 3: 0.015}
    cfg = SessionConfig(
        duration_s=3 * 3600.0,
        seed=seed,
        artifacts=ArtifactSpec(ectopic_rate=rates[1], missed_rate=rates[2], extra_rate=rates[3]),
    )
    s = simulate_session(cfg)
    counts = check_truth_alignment(s)
    n = len(s.clean_rr_ms)
    for label, rate in rates.items():
        expected = rate * n
        # A binomial count, slightly thinned by dropping overlapping artifacts.
        assert abs(counts[label] - 0.97 * expected) < 4 * np.sqrt(expected) + 0.03 * expected
    # Labelled intervals are exactly those that differ from a clean interval.
    assert np.count_nonzero(s.truth == 2) == counts[2]
    assert np.count_nonzero(s.truth == 1) == 2 * counts[1]
    assert len(s.series) == n - counts[2] + counts[3]


def test_high_artifact_rates_still_line_up() -> None:
    spec = ArtifactSpec(ectopic_rate=0.2, missed_rate=0.2, extra_rate=0.2)
    s = simulate_session(SessionConfig(duration_s=600.0, seed=8, artifacts=spec))
    counts = check_truth_alignment(s)
    assert min(counts[1], counts[2], counts[3]) > 50


def test_artifacts_at_given_times() -> None:
    spec = ArtifactSpec(ectopic_at_s=(100.0, 400.0), missed_at_s=(200.0,), extra_at_s=(300.0,))
    s = simulate_session(SessionConfig(duration_s=600.0, seed=4, artifacts=spec))
    counts = check_truth_alignment(s)
    assert counts == {0: counts[0], 1: 2, 2: 1, 3: 1}
    starts = np.concatenate([[0.0], s.series.t_s[:-1]])
    for label, at in ((1, 100.0), (1, 400.0), (2, 200.0), (3, 300.0)):
        hit = np.flatnonzero((s.truth == label) & (s.series.t_s >= at))[0]
        # The artifact starts at the first clean interval ending at or after `at`.
        assert starts[hit] < at <= starts[hit] + 2.5


def test_overlapping_scheduled_artifacts_are_refused() -> None:
    spec = ArtifactSpec(ectopic_at_s=(100.0,), missed_at_s=(100.2,))
    with pytest.raises(ConfigError, match="overlap"):
        simulate_session(SessionConfig(duration_s=600.0, artifacts=spec))


def test_scheduled_artifact_after_the_end_is_refused() -> None:
    spec = ArtifactSpec(extra_at_s=(700.0,))
    with pytest.raises(ConfigError, match="after the end"):
        simulate_session(SessionConfig(duration_s=600.0, artifacts=spec))


# ---------------------------------------------------------------- config checks


@pytest.mark.parametrize(
    "make",
    [
        lambda: SessionConfig(duration_s=0.0),
        lambda: SessionConfig(duration_s=float("nan")),
        lambda: SessionConfig(mean_hr_bpm=250.0),
        lambda: SessionConfig(resp_rate_hz=0.0),
        lambda: SessionConfig(mean_hr_bpm=40.0, resp_rate_hz=0.4),
        lambda: SessionConfig(hf_amplitude_ms=-1.0),
        lambda: SessionConfig(seed=-1),
        lambda: SessionConfig(exercise=(ExerciseBout(0.0, 60.0, peak_hr_bpm=60.0),)),
        lambda: StressEpisode(start_s=-1.0, duration_s=10.0),
        lambda: StressEpisode(start_s=0.0, duration_s=0.0),
        lambda: StressEpisode(start_s=0.0, duration_s=10.0, hf_scale=-0.1),
        lambda: ExerciseBout(start_s=0.0, duration_s=60.0, peak_hr_bpm=230.0),
        lambda: ArtifactSpec(ectopic_rate=1.5),
        lambda: ArtifactSpec(ectopic_rate=0.6, missed_rate=0.6),
        lambda: ArtifactSpec(extra_at_s=(-5.0,)),
    ],
)
def test_invalid_configuration_is_a_config_error(make: object) -> None:
    assert callable(make)
    with pytest.raises(ConfigError):
        make()


# --------------------------------------------------------------- CLI helpers


@pytest.mark.parametrize(
    ("text", "start_s", "duration_s"),
    [
        ("20m:10m", 1200.0, 600.0),
        ("0:30s", 0.0, 30.0),
        ("90:120", 90.0, 120.0),
        ("1h", 3600.0, 600.0),
        ("1.5h:45m", 5400.0, 2700.0),
        ("1h30m:1m30s", 5400.0, 90.0),
        (" 5M : 2m ", 300.0, 120.0),
    ],
)
def test_parse_stress_spec(text: str, start_s: float, duration_s: float) -> None:
    episode = parse_stress_spec(text)
    assert episode.start_s == pytest.approx(start_s)
    assert episode.duration_s == pytest.approx(duration_s)
    assert episode.ramp_s == StressEpisode(0.0, 1.0).ramp_s


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":",
        "20m:",
        ":10m",
        "abc",
        "10x",
        "1:2:3",
        "-5m:1m",
        "20m:0",
        "1e3",
        "5m1h",
        "1m1m",
        "m",
        "10m:nan",
        "1.2.3",
    ],
)
def test_parse_stress_spec_rejects_bad_text(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid stress episode") as info:
        parse_stress_spec(text)
    message = str(info.value)
    assert repr(text) in message
    assert "START[:DURATION]" in message or "duration must be > 0" in message


@given(
    h=st.integers(0, 30),
    m=st.integers(0, 59),
    s=st.integers(0, 59),
)
def test_parse_duration_units(h: int, m: int, s: int) -> None:
    assert parse_duration_s(f"{h}h{m}m{s}s") == 3600 * h + 60 * m + s
    assert parse_duration_s(f"{h}h") == 3600 * h
    assert parse_duration_s(f"{m}m") == 60 * m
    assert parse_duration_s(f"{s}s") == parse_duration_s(str(s)) == s


# ----------------------------------------------------------------- RR file


@pytest.mark.parametrize("decimals", [0, 3, 6])
def test_write_rr_file_round_trip(tmp_path: Path, decimals: int) -> None:
    s = simulate_session(SessionConfig(duration_s=300.0, seed=1, artifacts=ArtifactSpec(0.02)))
    path = tmp_path / "out.txt"
    write_rr_file(s.series, path, decimals=decimals)
    raw = path.read_bytes()
    assert b"\r" not in raw
    assert raw.endswith(b"\n")
    assert raw.count(b"\n") == len(s.series)
    back = np.loadtxt(path, dtype=np.float64)
    np.testing.assert_allclose(back, s.series.rr_ms, atol=0.5 * 10.0**-decimals + 1e-9)
    if decimals == 0:
        assert b"." not in raw


def test_write_rr_file_rejects_negative_decimals(tmp_path: Path) -> None:
    series = RRSeries.from_rr([800.0, 810.0])
    with pytest.raises(ConfigError):
        write_rr_file(series, tmp_path / "x.txt", decimals=-1)


@pytest.mark.parametrize("text", ["", "h", "1d", "-3s", "1h1h", "30s2m", "1,5h", "inf"])
def test_parse_duration_rejects_bad_text(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid session duration"):
        parse_duration_s(text, what="session duration")
