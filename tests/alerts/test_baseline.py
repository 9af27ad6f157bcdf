"""Personal baselines: robust centre and spread, the sample pool, day totals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hrvstream.alerts.baseline import (
    MAD_TO_SD,
    DayTotal,
    Sample,
    SamplePool,
    Stat,
    build_baseline,
    mean_sd,
    median,
    robust_centre_spread,
)


def sample(t: float, ln_rmssd: float = 3.5, hr: float = 65.0, lfhf: float | None = 0.4) -> Sample:
    return Sample(t, ln_rmssd, hr, lfhf)


def test_median_known_answers() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert median([7.0]) == 7.0
    assert math.isnan(median([]))


def test_robust_centre_spread_known_answer() -> None:
    # Deviations from the median 3 are 2, 1, 0, 1, 2: MAD 1.
    centre, spread = robust_centre_spread([1.0, 2.0, 3.0, 4.0, 5.0])
    assert centre == 3.0
    assert spread == pytest.approx(MAD_TO_SD)
    # MAD_TO_SD is 1 / Phi^-1(3/4).
    assert pytest.approx(1.0 / 0.6744897501960817) == MAD_TO_SD


def test_spread_of_normal_data_is_its_sd() -> None:
    values = np.random.default_rng(7).normal(3.2, 0.25, 20001).tolist()
    centre, spread = robust_centre_spread(values)
    assert centre == pytest.approx(3.2, abs=0.01)
    assert spread == pytest.approx(0.25, rel=0.03)


def test_a_few_extreme_outliers_barely_move_the_baseline() -> None:
    rng = np.random.default_rng(11)
    clean = rng.normal(3.2, 0.2, 200).tolist()
    dirty = [*clean, 50.0, 60.0, -40.0, 1e6, 90.0]  # five wild windows (2.5%)
    c0, s0 = robust_centre_spread(clean)
    c1, s1 = robust_centre_spread(dirty)
    assert abs(c1 - c0) < 0.1 * s0
    assert s1 == pytest.approx(s0, rel=0.1)
    # The mean and SD would not survive them.
    assert abs(float(np.mean(dirty)) - c0) > 1000


def test_z_uses_the_spread_floor() -> None:
    stat = Stat(centre=3.0, spread=0.02)
    assert stat.z(2.84, floor=0.08) == pytest.approx(-2.0)
    assert Stat(centre=3.0, spread=0.2).z(2.6, floor=0.08) == pytest.approx(-2.0)


def test_build_baseline() -> None:
    samples = [sample(1000.0 + 300 * i, 3.0 + 0.01 * i, 60.0 + i, math.log(1.5)) for i in range(9)]
    b = build_baseline(samples, "long_term")
    assert b is not None
    assert b.ln_rmssd.centre == pytest.approx(3.04)
    assert b.hr_bpm.centre == 64.0
    assert b.hr_bpm.spread == pytest.approx(2 * MAD_TO_SD)  # |dev| 4,3,2,1,0,1,2,3,4
    assert b.ln_lf_hf is not None and b.ln_lf_hf.centre == pytest.approx(math.log(1.5))
    assert b.n_windows == 9
    assert b.days == pytest.approx(8 * 300 / 86400)
    assert b.source == "long_term"
    assert build_baseline([], "session") is None


def test_build_baseline_without_lf_hf() -> None:
    samples = [sample(300.0 * i, lfhf=None) for i in range(10)]
    b = build_baseline(samples, "session")
    assert b is not None and b.ln_lf_hf is None
    assert b.ln_rmssd.centre == 3.5 and b.hr_bpm.centre == 65.0
    # Frequency values from fewer than half the windows are not used either.
    some = [sample(300.0 * i, lfhf=0.5 if i < 4 else None) for i in range(10)]
    b = build_baseline(some, "session")
    assert b is not None and b.ln_lf_hf is None
    half = [sample(300.0 * i, lfhf=0.5 if i < 5 else None) for i in range(10)]
    b = build_baseline(half, "session")
    assert b is not None and b.ln_lf_hf is not None and b.ln_lf_hf.centre == 0.5


def test_sample_list_round_trip() -> None:
    for s in (sample(12.5, 3.1, 61.0, -0.2), sample(99.0, 2.9, 70.0, None)):
        assert Sample.from_list(s.to_list()) == s


def test_pool_keeps_samples_a_window_apart() -> None:
    pool = SamplePool(keep_s=86400.0, spacing_s=300.0)
    assert pool.add(sample(1000.0))
    assert not pool.add(sample(1100.0))  # overlaps the last one's window
    assert not pool.add(sample(1299.0))
    assert pool.due(1300.0 - 1e-7)  # float noise in the window times does not matter
    assert pool.add(sample(1300.0))
    assert not pool.add(sample(900.0))  # out of order
    assert [s.t_unix_s for s in pool.samples] == [1000.0, 1300.0]
    assert len(pool) == 2


def test_pool_drops_expired_samples() -> None:
    pool = SamplePool(keep_s=1000.0, spacing_s=300.0)
    for t in (0.0, 300.0, 600.0, 900.0):
        pool.add(sample(t))
    assert len(pool) == 4
    pool.add(sample(1200.0))  # horizon 200: the sample at 0 goes
    assert [s.t_unix_s for s in pool.samples] == [300.0, 600.0, 900.0, 1200.0]
    pool.add(sample(5000.0))  # everything else is older than keep_s
    assert [s.t_unix_s for s in pool.samples] == [5000.0]


def test_pool_extend_sorts_first() -> None:
    pool = SamplePool(keep_s=1e9, spacing_s=300.0)
    kept = pool.extend([sample(900.0), sample(0.0), sample(600.0), sample(100.0), sample(300.0)])
    assert kept == 4
    assert [s.t_unix_s for s in pool.samples] == [0.0, 300.0, 600.0, 900.0]
    b = pool.baseline("long_term")
    assert b is not None and b.n_windows == 4 and b.source == "long_term"
    assert SamplePool(1.0, 1.0).baseline("session") is None


def test_mean_sd_and_day_totals() -> None:
    m, sd = mean_sd([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and sd == pytest.approx(math.sqrt(5.0 / 3.0))
    assert all(math.isnan(v) for v in mean_sd([1.0]))
    day = DayTotal()
    assert math.isnan(day.mean)
    day.n, day.total = 4, 13.0
    assert day.mean == 3.25
