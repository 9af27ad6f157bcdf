"""Sliding-window HRV for a whole recording (batch) and beat by beat (stream).

Both engines define windows the same way and give the same numbers:

- Interval ``i`` ends at beat time ``t_i`` (``t = 0`` at the first beat) and belongs to the
  window ending at ``T`` when ``T - W < t_i <= T``.
- Windows end every ``step_s`` seconds (``T = step, 2 step, ...`` up to the last beat) or,
  with ``step_s=None``, at every beat.
- Artifacts are detected on the raw intervals (:mod:`hrvstream.hrv.artifacts`); with
  ``correct=True`` the metrics are computed on the corrected NN series.
- ``coverage`` is the fraction of the window covered by raw intervals (a lost stretch, a
  gap before the first beat or after the last one lowers it). Time-domain metrics need
  ``coverage >= min_coverage_time`` and ``min_beats`` NN intervals; frequency-domain
  metrics need ``coverage >= min_coverage_freq`` (90 %). Otherwise they are missing (NaN),
  never zero.

The stream (:class:`StreamingAnalyzer`) keeps running sums for the time domain (O(1)
amortised per beat) and computes the frequency domain of a window when it emits it. It
emits a window once every interval in it is final, i.e. once the artifact detector has
seen enough beats after it (:data:`hrvstream.hrv.artifacts.LOOKAHEAD_BEATS`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from hrvstream.hrv.artifacts import (
    CorrectedBeat,
    StreamingArtifactCorrector,
    correct_artifacts,
    detect_artifacts,
)
from hrvstream.hrv.frequency import FrequencyConfig, band_powers
from hrvstream.hrv.time_domain import WindowSums, finish, segment_sums, window_sums
from hrvstream.recordings.model import RRSeries

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

#: Column order of window rows (``analyze`` CSV header). More columns may follow later.
WINDOW_COLUMNS: tuple[str, ...] = (
    "t_s",
    "n_beats",
    "coverage",
    "artifact_pct",
    "mean_hr_bpm",
    "mean_nn_ms",
    "sdnn_ms",
    "rmssd_ms",
    "pnn50_pct",
    "lf_ms2",
    "hf_ms2",
    "lf_hf",
    "lf_nu",
    "hf_nu",
)

#: Column order of per-beat rows (``analyze --per-beat``).
BEAT_COLUMNS: tuple[str, ...] = ("t_s", "rr_ms", "artifact", "nn_ms")

_ZERO = np.zeros(1, dtype=np.intp)

#: A beat whose time is more than this beyond the previous beat plus its RR starts a gap.
GAP_TOLERANCE_MS = 10.0


@dataclass(frozen=True, slots=True)
class AnalysisConfig:
    """How windows are laid out and when a metric counts as computable.

    Attributes
    ----------
    window_s:
        Window length W in seconds (300 s is the Task Force short-term standard).
    step_s:
        Seconds between window ends, or ``None`` for a window ending at every beat.
    correct:
        Compute metrics on artifact-corrected NN intervals (default) or the raw ones.
    min_coverage_time, min_beats:
        Requirements for time-domain metrics.
    min_coverage_freq:
        Requirement for frequency-domain metrics.
    frequency:
        Frequency-domain method parameters.
    """

    window_s: float = 300.0
    step_s: float | None = 5.0
    correct: bool = True
    min_coverage_time: float = 0.5
    min_beats: int = 5
    min_coverage_freq: float = 0.9
    frequency: FrequencyConfig = field(default_factory=FrequencyConfig)

    def __post_init__(self) -> None:
        if not (self.window_s > 0 and math.isfinite(self.window_s)):
            raise ValueError("window_s must be a positive number of seconds")
        if self.step_s is not None and not (self.step_s > 0 and math.isfinite(self.step_s)):
            raise ValueError("step_s must be a positive number of seconds or None")


@dataclass(frozen=True, slots=True)
class WindowTable:
    """One row per window; every column is an array (NaN = missing)."""

    columns: dict[str, npt.NDArray[np.float64] | npt.NDArray[np.intp]]

    def __len__(self) -> int:
        return len(self.columns["t_s"])

    def __getitem__(self, name: str) -> npt.NDArray[np.float64] | npt.NDArray[np.intp]:
        return self.columns[name]

    def rows(self) -> Iterator[dict[str, float]]:
        """Rows as dicts in :data:`WINDOW_COLUMNS` order."""
        cols = [(k, self.columns[k]) for k in WINDOW_COLUMNS]
        for i in range(len(self)):
            yield {k: float(v[i]) for k, v in cols}


@dataclass(frozen=True, slots=True)
class BeatTable:
    """One row per input interval: time, raw RR, artifact label, corrected value."""

    t_s: FloatArray
    rr_ms: FloatArray
    artifact: npt.NDArray[np.int8]
    nn_ms: FloatArray


@dataclass(frozen=True, slots=True)
class Analysis:
    """The result of :func:`analyze`."""

    windows: WindowTable
    beats: BeatTable


def gap_flags(rr_ms: FloatArray, t_s: FloatArray) -> npt.NDArray[np.bool_]:
    """``True`` for a beat preceded by lost beats (its time jumps by more than its RR)."""
    gaps = np.zeros(len(rr_ms), dtype=bool)
    if len(rr_ms) > 1:
        gaps[1:] = np.diff(t_s) * 1000.0 - rr_ms[1:] > GAP_TOLERANCE_MS
    return gaps


def window_ends(t_s: FloatArray, step_s: float | None) -> FloatArray:
    """Window end times: multiples of ``step_s`` up to the last beat, or every beat time."""
    if len(t_s) == 0:
        return np.zeros(0)
    if step_s is None:
        return np.asarray(t_s, dtype=np.float64).copy()
    k = np.arange(1, math.floor(float(t_s[-1]) / step_s) + 1, dtype=np.float64)
    return k * step_s


def window_bounds(
    t_s: FloatArray, ends_t: FloatArray, window_s: float
) -> tuple[IntArray, IntArray]:
    """Index ranges ``[start, end)`` of the intervals with ``T - W < t <= T``."""
    starts = np.searchsorted(t_s, ends_t - window_s, side="right").astype(np.intp)
    ends = np.searchsorted(t_s, ends_t, side="right").astype(np.intp)
    return starts, ends


def _coverage(
    rr_ms: FloatArray,
    t_s: FloatArray,
    starts: IntArray,
    ends: IntArray,
    ends_t: FloatArray,
    w: float,
) -> FloatArray:
    covered = segment_sums(rr_ms, starts, ends)
    nonempty = ends > starts
    first = np.minimum(starts, len(rr_ms) - 1)
    first_begin_ms = t_s[first] * 1000.0 - rr_ms[first]
    outside = np.maximum(0.0, (ends_t - w) * 1000.0 - first_begin_ms)
    covered = np.where(nonempty, covered - np.minimum(outside, rr_ms[first]), 0.0)
    return np.asarray(np.minimum(covered / (w * 1000.0), 1.0), dtype=np.float64)


def _successive(nn_source: IntArray, gaps: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """NN ``j`` follows NN ``j-1`` unless its source beat starts after a gap."""
    succ = np.ones(len(nn_source), dtype=bool)
    if len(nn_source):
        succ[0] = False
        first_of_source = np.ones(len(nn_source), dtype=bool)
        first_of_source[1:] = nn_source[1:] != nn_source[:-1]
        succ &= ~(first_of_source & gaps[nn_source])
    return succ


def _assemble(
    ends_t: FloatArray,
    n_nn: IntArray,
    coverage: FloatArray,
    artifact_pct: FloatArray,
    sums: WindowSums,
    lf: FloatArray,
    hf: FloatArray,
    config: AnalysisConfig,
) -> WindowTable:
    """Apply the data-sufficiency rules and derive ratios; shared by batch and stream."""
    td = finish(sums)
    time_ok = (coverage >= config.min_coverage_time) & (n_nn >= config.min_beats)
    freq_ok = coverage >= config.min_coverage_freq
    nan = np.nan
    lf = np.where(freq_ok, lf, nan)
    hf = np.where(freq_ok, hf, nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        lf_hf = lf / hf
        lf_nu = 100.0 * lf / (lf + hf)
        hf_nu = 100.0 * hf / (lf + hf)
    cols: dict[str, npt.NDArray[np.float64] | npt.NDArray[np.intp]] = {
        "t_s": ends_t,
        "n_beats": n_nn,
        "coverage": coverage,
        "artifact_pct": artifact_pct,
        "mean_hr_bpm": np.where(time_ok, td.mean_hr_bpm, nan),
        "mean_nn_ms": np.where(time_ok, td.mean_nn_ms, nan),
        "sdnn_ms": np.where(time_ok, td.sdnn_ms, nan),
        "rmssd_ms": np.where(time_ok, td.rmssd_ms, nan),
        "pnn50_pct": np.where(time_ok, td.pnn50_pct, nan),
        "lf_ms2": lf,
        "hf_ms2": hf,
        "lf_hf": lf_hf,
        "lf_nu": lf_nu,
        "hf_nu": hf_nu,
    }
    return WindowTable(cols)


def analyze(
    series: RRSeries,
    config: AnalysisConfig | None = None,
    *,
    progress: Callable[[float], None] | None = None,
) -> Analysis:
    """All windows of a recording at once.

    Parameters
    ----------
    series:
        The recording's RR intervals and beat times.
    config:
        Window layout and rules; defaults to 300-s windows every 5 s, corrected.
    progress:
        Called with the fraction done (0..1) as the frequency domain advances.

    Returns
    -------
    Analysis
        The window table and the per-beat table.
    """
    cfg = config or AnalysisConfig()
    rr, t = series.rr_ms, series.t_s
    labels = detect_artifacts(rr)
    gaps = gap_flags(rr, t)
    if cfg.correct:
        corr = correct_artifacts(rr, t, labels)
        nn, nt, src, per_beat = corr.nn_ms, corr.nn_t_s, corr.nn_source, corr.per_beat_nn_ms
        keep = np.isfinite(nn)
        nn, nt, src = nn[keep], nt[keep], src[keep]
    else:
        nn, nt, src, per_beat = rr, t, np.arange(len(rr), dtype=np.intp), rr
    beats = BeatTable(t_s=t, rr_ms=rr, artifact=labels, nn_ms=per_beat)

    ends_t = window_ends(t, cfg.step_s)
    w = cfg.window_s
    rs, re = window_bounds(t, ends_t, w)
    coverage = _coverage(rr, t, rs, re, ends_t, w)
    n_raw = (re - rs).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        artifact_pct = 100.0 * segment_sums((labels != 0).astype(np.float64), rs, re) / n_raw
    ns, ne = window_bounds(nt, ends_t, w)
    sums = window_sums(nn, ns, ne, _successive(src, gaps))
    freq_ok = (coverage >= cfg.min_coverage_freq) & (ne - ns >= 3)
    lf = np.full(len(ends_t), np.nan)
    hf = np.full(len(ends_t), np.nan)
    idx = np.flatnonzero(freq_ok)
    if len(idx):
        bp = band_powers(nt, nn, ns[idx], ne[idx], cfg.frequency, progress=progress)
        lf[idx] = bp.lf_ms2
        hf[idx] = bp.hf_ms2
    table = _assemble(ends_t, (ne - ns).astype(np.intp), coverage, artifact_pct, sums, lf, hf, cfg)
    return Analysis(windows=table, beats=beats)


@dataclass(slots=True)
class _Raw:
    t_s: float
    rr_ms: float
    artifact: bool


@dataclass(slots=True)
class _NN:
    t_s: float
    nn_ms: float
    successive: bool


class StreamingAnalyzer:
    """The same windows as :func:`analyze`, computed as beats arrive.

    Feed intervals in time order with :meth:`push`; it returns the window rows that
    became final. :meth:`close` flushes the rest at the end of a recording.
    """

    def __init__(self, config: AnalysisConfig | None = None) -> None:
        self.config = config or AnalysisConfig()
        self._corrector = StreamingArtifactCorrector()
        self._raw: deque[_Raw] = deque()
        self._nn: deque[_NN] = deque()
        self._raw_in = 0  # items of self._raw inside the window (from the left)
        self._nn_in = 0
        self._last_t: float | None = None
        self._last_final_t: float | None = None
        self._gaps: deque[bool] = deque()
        self._next_step = 1
        self._prev_nn = False
        # running sums of the window's contents
        self._cov_ms = 0.0
        self._art = 0
        self._n = 0
        self._s1 = 0.0
        self._s2 = 0.0
        self._hr = 0.0
        self._d2 = 0.0
        self._nd = 0
        self._n50 = 0
        self._pending_raw: deque[_Raw] = deque()
        self._pending_nn: deque[_NN] = deque()
        self.beats_in = 0

    # -- input ---------------------------------------------------------------------
    def push(self, rr_ms: float, t_s: float) -> list[dict[str, float]]:
        """Add one interval ending at ``t_s``; return the windows that became final."""
        gap = self._last_t is not None and (t_s - self._last_t) * 1000.0 - rr_ms > GAP_TOLERANCE_MS
        if self._last_t is not None and t_s <= self._last_t:
            raise ValueError(f"beat times must increase: {t_s} after {self._last_t}")
        self._last_t = t_s
        self._gaps.append(gap)
        self.beats_in += 1
        return self._take(self._corrector.push(rr_ms, t_s))

    def close(self) -> list[dict[str, float]]:
        """End of input: finalise the remaining beats and emit the remaining windows."""
        rows = self._take(self._corrector.close())
        if self._last_final_t is not None and self.config.step_s is not None:
            rows.extend(self._emit_until(self._last_final_t))
        return rows

    def _take(self, finals: list[CorrectedBeat]) -> list[dict[str, float]]:
        rows: list[dict[str, float]] = []
        cfg = self.config
        for b in finals:
            gap = self._gaps.popleft()
            pairs = b.nn if cfg.correct else ((b.rr_ms, b.t_s),)
            first = True
            for nn_ms, nn_t in pairs:
                if not math.isfinite(nn_ms):
                    continue
                succ = self._prev_nn and not (first and gap)
                self._pending_nn.append(_NN(nn_t, nn_ms, succ))
                first = False
                self._prev_nn = True
            # Windows ending before this beat are final now: their NN (including the
            # parts of a missed beat split before this beat's time) are all queued.
            if cfg.step_s is not None:
                rows.extend(self._emit_until(b.t_s, strict=True))
            self._pending_raw.append(_Raw(b.t_s, b.rr_ms, b.label != 0))
            self._last_final_t = b.t_s
            if cfg.step_s is None:
                rows.append(self._emit(b.t_s))
        return rows

    # -- windows -------------------------------------------------------------------
    def _emit_until(self, t: float, strict: bool = False) -> list[dict[str, float]]:
        step = self.config.step_s
        assert step is not None
        rows = []
        while True:
            end = self._next_step * step
            if end > t or (strict and end >= t):
                break
            rows.append(self._emit(end))
            self._next_step += 1
        return rows

    def _emit(self, end: float) -> dict[str, float]:
        w = self.config.window_s
        lo = end - w
        # admit pending items with t <= end
        while self._pending_raw and self._pending_raw[0].t_s <= end:
            r = self._pending_raw.popleft()
            self._raw.append(r)
            self._cov_ms += r.rr_ms
            self._art += int(r.artifact)
        while self._pending_nn and self._pending_nn[0].t_s <= end:
            x = self._pending_nn.popleft()
            self._add_nn(x)
            self._nn.append(x)
        # drop items with t <= end - W
        while self._raw and self._raw[0].t_s <= lo:
            r = self._raw.popleft()
            self._cov_ms -= r.rr_ms
            self._art -= int(r.artifact)
        while self._nn and self._nn[0].t_s <= lo:
            x = self._nn.popleft()
            self._remove_first_nn(x)
        return self._row(end)

    def _add_nn(self, x: _NN) -> None:
        self._n += 1
        self._s1 += x.nn_ms
        self._s2 += x.nn_ms * x.nn_ms
        self._hr += 60000.0 / x.nn_ms
        if self._nn and x.successive:
            d = x.nn_ms - self._nn[-1].nn_ms
            self._d2 += d * d
            self._nd += 1
            self._n50 += int(abs(d) > 50.0)

    def _remove_first_nn(self, x: _NN) -> None:
        self._n -= 1
        self._s1 -= x.nn_ms
        self._s2 -= x.nn_ms * x.nn_ms
        self._hr -= 60000.0 / x.nn_ms
        if self._nn and self._nn[0].successive:
            d = self._nn[0].nn_ms - x.nn_ms
            self._d2 -= d * d
            self._nd -= 1
            self._n50 -= int(abs(d) > 50.0)
        if self._n == 0:
            self._s1 = self._s2 = self._hr = self._d2 = 0.0

    def _row(self, end: float) -> dict[str, float]:
        cfg = self.config
        w = cfg.window_s
        if self._raw:
            first = self._raw[0]
            begin_ms = first.t_s * 1000.0 - first.rr_ms
            outside = max(0.0, (end - w) * 1000.0 - begin_ms)
            covered = self._cov_ms - min(outside, first.rr_ms)
            coverage = min(covered / (w * 1000.0), 1.0)
            art_pct = 100.0 * self._art / len(self._raw)
        else:
            coverage = 0.0
            art_pct = float("nan")
        sums = WindowSums(
            n=np.array([self._n], dtype=np.intp),
            s1=np.array([self._s1]),
            s2=np.array([self._s2]),
            hr=np.array([self._hr]),
            d2=np.array([self._d2]),
            nd=np.array([float(self._nd)]),
            n50=np.array([float(self._n50)]),
        )
        lf = hf = float("nan")
        if coverage >= cfg.min_coverage_freq and self._n >= 3:
            x = np.fromiter((v.t_s for v in self._nn), dtype=np.float64, count=self._n)
            y = np.fromiter((v.nn_ms for v in self._nn), dtype=np.float64, count=self._n)
            bp = band_powers(x, y, _ZERO, np.array([self._n], dtype=np.intp), cfg.frequency)
            lf, hf = float(bp.lf_ms2[0]), float(bp.hf_ms2[0])
        table = _assemble(
            np.array([end]),
            np.array([self._n], dtype=np.intp),
            np.array([coverage]),
            np.array([art_pct]),
            sums,
            np.array([lf]),
            np.array([hf]),
            cfg,
        )
        return next(table.rows())
