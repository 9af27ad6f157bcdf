"""The fast frequency-domain kernel against scipy's own spline and Welch, window by window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hrvstream.hrv.frequency import band_powers, band_powers_reference
from hrvstream.recordings import read_recording
from hrvstream.simulate import ArtifactSpec, SessionConfig, simulate_session


def _windows(t: np.ndarray, step_s: float, width_s: float) -> tuple[np.ndarray, np.ndarray]:
    ends_t = np.arange(width_s, t[-1], step_s)
    starts = np.searchsorted(t, ends_t - width_s, side="right")
    ends = np.searchsorted(t, ends_t, side="right")
    return starts.astype(np.intp), ends.astype(np.intp)


@pytest.mark.parametrize("source", ["simulated", "nsr001"])
def test_kernel_equals_scipy_reference_and_single_window_calls(
    source: str, recordings: Path
) -> None:
    if source == "nsr001":
        series = read_recording(recordings / "physionet_nsr2db/nsr001_rr_secs.txt")
        t, rr = series.t_s[:20000], series.rr_ms[:20000]
    else:
        sim = simulate_session(
            SessionConfig(duration_s=3600, seed=5, artifacts=ArtifactSpec(ectopic_rate=0.01))
        )
        t, rr = sim.series.t_s, sim.series.rr_ms
    starts, ends = _windows(t, 37.0, 300.0)
    batch = band_powers(t, rr, starts, ends)
    rng = np.random.default_rng(0)
    for w in rng.choice(len(starts), 40, replace=False):
        s, e = int(starts[w]), int(ends[w])
        lf, hf = band_powers_reference(t[s:e], rr[s:e])
        # the same method: equal to rounding
        assert batch.lf_ms2[w] == pytest.approx(lf, rel=1e-10)
        assert batch.hf_ms2[w] == pytest.approx(hf, rel=1e-10)
        # a window alone (what the stream does) gives the batch's very bits
        one = band_powers(t[s:e].copy(), rr[s:e].copy(), np.array([0]), np.array([e - s]))
        assert one.lf_ms2[0] == batch.lf_ms2[w]
        assert one.hf_ms2[0] == batch.hf_ms2[w]


def test_too_few_beats_is_missing() -> None:
    t = np.array([0.8, 1.6])
    rr = np.array([800.0, 800.0])
    bp = band_powers(t, rr, np.array([0]), np.array([2]))
    assert np.isnan(bp.lf_ms2[0]) and np.isnan(bp.hf_ms2[0])
