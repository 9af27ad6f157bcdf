"""Personal baselines: robust centre and spread of a patient's clean resting windows.

A baseline is built from *samples*: one per independent (non-overlapping) clean, resting
window, holding lnRMSSD, mean HR and ln(LF/HF). Its centre is the median and its spread
the MAD scaled to a normal SD (1.4826 MAD), so a few odd windows move neither. A
deviation is a z-score against it, with a floor on the spread.

References: Plews DJ et al. (2012), "Heart rate variability in elite triathletes";
Buchheit M (2014), "Monitoring training status with HR measures". HRV4Training's normal
range (mean +/- 0.5 SD of 60 days of daily lnRMSSD) is the model of the trend rule.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: Scales a MAD to the SD of a normal distribution.
MAD_TO_SD = 1.482602218505602


@dataclass(frozen=True, slots=True)
class Sample:
    """One clean resting window's values (``None``: not computed, e.g. no frequency domain)."""

    t_unix_s: float
    ln_rmssd: float
    hr_bpm: float
    ln_lf_hf: float | None
    local_h: float | None = None  # hour of the patient's local day, 0 <= h < 24

    def to_list(self) -> list[float | None]:
        """Compact JSON form."""
        return [self.t_unix_s, self.ln_rmssd, self.hr_bpm, self.ln_lf_hf, self.local_h]

    @classmethod
    def from_list(cls, v: Sequence[float | None]) -> Sample:
        """From :meth:`to_list`."""
        t, a, b, c = v[:4]
        h = v[4] if len(v) > 4 else None
        assert t is not None and a is not None and b is not None
        return cls(
            float(t),
            float(a),
            float(b),
            None if c is None else float(c),
            None if h is None else float(h),
        )


def hours_apart(a: float, b: float) -> float:
    """Distance between two hours of the day, across midnight (0..12)."""
    d = abs(a - b) % 24.0
    return min(d, 24.0 - d)


def median(values: Sequence[float]) -> float:
    """The median (NaN for none)."""
    if not values:
        return math.nan
    s = sorted(values)
    n = len(s)
    mid = n // 2
    return s[mid] if n % 2 else 0.5 * (s[mid - 1] + s[mid])


def robust_centre_spread(values: Sequence[float]) -> tuple[float, float]:
    """``(median, 1.4826 * MAD)``."""
    m = median(values)
    return m, MAD_TO_SD * median([abs(v - m) for v in values])


@dataclass(frozen=True, slots=True)
class Stat:
    """Centre and spread of one metric in a baseline, plus its normal band."""

    centre: float
    spread: float

    def z(self, value: float, floor: float) -> float:
        """The z-score of ``value`` (spread floored at ``floor``)."""
        return (value - self.centre) / max(self.spread, floor)


@dataclass(frozen=True, slots=True)
class Baseline:
    """A patient's resting baseline (see :func:`build_baseline`).

    Attributes
    ----------
    ln_rmssd, hr_bpm, ln_lf_hf:
        Median and robust SD of each metric (``ln_lf_hf`` ``None`` without frequency data).
    n_windows:
        Samples it rests on.
    days:
        The time those samples span, days.
    source:
        ``"long_term"`` (rolling days) or ``"session"`` (the current session's quiet
        windows).
    around_h:
        The hour of the day whose samples (within ``baseline_hours``) it was built from,
        or ``None`` for all of them.
    """

    ln_rmssd: Stat
    hr_bpm: Stat
    ln_lf_hf: Stat | None
    n_windows: int
    days: float
    source: str
    around_h: float | None = None


def build_baseline(
    samples: Sequence[Sample], source: str, around_h: float | None = None
) -> Baseline | None:
    """The baseline of ``samples`` (``None`` for none)."""
    if not samples:
        return None
    ln_rmssd = robust_centre_spread([s.ln_rmssd for s in samples])
    hr = robust_centre_spread([s.hr_bpm for s in samples])
    lfhf_values = [s.ln_lf_hf for s in samples if s.ln_lf_hf is not None]
    lfhf = (
        robust_centre_spread(lfhf_values) if len(lfhf_values) >= max(3, len(samples) // 2) else None
    )
    span = (samples[-1].t_unix_s - samples[0].t_unix_s) / 86400.0
    return Baseline(
        ln_rmssd=Stat(*ln_rmssd),
        hr_bpm=Stat(*hr),
        ln_lf_hf=None if lfhf is None else Stat(*lfhf),
        n_windows=len(samples),
        days=span,
        source=source,
        around_h=around_h,
    )


class SamplePool:
    """Samples at least ``spacing_s`` apart, kept for ``keep_s`` (oldest dropped first)."""

    def __init__(self, keep_s: float, spacing_s: float) -> None:
        self.keep_s = keep_s
        self.spacing_s = spacing_s
        self.samples: deque[Sample] = deque()
        self._cached: tuple[str, int, float, float, Baseline | None] | None = None

    def due(self, t_unix_s: float) -> bool:
        """Whether a window ending at ``t_unix_s`` is independent of the last sample."""
        return not self.samples or t_unix_s - self.samples[-1].t_unix_s >= self.spacing_s - 1e-6

    def add(self, sample: Sample) -> bool:
        """Add if due (and in time order); returns whether it was added."""
        if not self.due(sample.t_unix_s):
            return False
        self.samples.append(sample)
        horizon = sample.t_unix_s - self.keep_s
        while self.samples and self.samples[0].t_unix_s < horizon:
            self.samples.popleft()
        return True

    def extend(self, samples: Iterable[Sample]) -> int:
        """Add several (sorted by time first); returns how many were kept."""
        return sum(self.add(s) for s in sorted(samples, key=lambda s: s.t_unix_s))

    def __len__(self) -> int:
        return len(self.samples)

    def baseline(
        self, source: str, *, hour: float | None = None, hours: float = 0.0, min_n: int = 1
    ) -> Baseline | None:
        """The baseline of the pool (computed again only when the pool changed).

        With ``hour`` and ``hours`` > 0: of the samples taken within ``hours`` of that
        hour of the day when there are at least ``min_n`` of them (HRV and HR follow the
        day: a baseline of the same time of day is tighter), else of the whole pool.
        """
        bucket = -1.0 if hour is None or hours <= 0 else round(hour * 4) / 4
        key = (
            source,
            len(self.samples),
            self.samples[-1].t_unix_s if self.samples else 0.0,
            bucket,
        )
        if self._cached is not None and self._cached[:4] == key:
            return self._cached[4]
        samples = list(self.samples)
        result = None
        if bucket >= 0:
            near = [
                s
                for s in samples
                if s.local_h is not None and hours_apart(s.local_h, bucket) <= hours
            ]
            if len(near) >= min_n:
                result = build_baseline(near, source, around_h=bucket)
        if result is None:
            result = build_baseline(samples, source)
        self._cached = (*key, result)
        return result


@dataclass(slots=True)
class DayTotal:
    """lnRMSSD summed over one local day's clean resting windows."""

    n: int = 0
    total: float = 0.0

    @property
    def mean(self) -> float:
        """The day's mean lnRMSSD."""
        return self.total / self.n if self.n else math.nan


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample SD (``(nan, nan)`` for fewer than 2 values)."""
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    m = sum(values) / n
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
