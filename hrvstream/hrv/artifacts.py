"""Artifact detection and correction of RR-interval series (Lipponen & Tarvainen 2019).

Detection
---------
This is the "Kubios" beat classification of Lipponen & Tarvainen (2019), written as
whole-array NumPy/SciPy operations (every beat is classified independently from a
bounded neighbourhood; there is no sequential loop over the recording):

1. ``dRRs(j) = RR(j) - RR(j-1)``, normalised by the time-varying threshold
   ``Th1(j) = alpha * QD(j)``, where ``QD`` is the quartile deviation ``(Q3 - Q1) / 2`` of
   ``|dRRs|`` over the 91 beats centred on ``j`` (``alpha`` = 5.2). The result is ``dRR``.
2. Subspace 1 (ectopic beats): ``S11 = dRR(j)`` and ``S12 = max(dRR(j-1), dRR(j+1))`` if
   ``dRR(j) > 0``, ``min(...)`` if ``dRR(j) < 0``. Beat ``j`` is **ectopic** if
   ``S11 > 1 and S12 < -c1 * S11 - c2`` or ``S11 < -1 and S12 > -c1 * S11 + c2``
   (``c1`` = 0.13, ``c2`` = 0.17).
3. Subspace 2 (long/short beats): ``S21 = dRR(j)`` and ``S22 = min(dRR(j+1), dRR(j+2))``
   if ``dRR(j) >= 0``, ``max(...)`` if ``dRR(j) < 0``. Long: ``S21 > 1 and S22 < -1``;
   short: ``S21 < -1 and S22 > 1``.
4. ``mRRs(j) = RR(j) - medRR(j)`` with ``medRR`` an 11-beat median filter; negative values
   are doubled; normalised by ``Th2(j) = alpha * QD`` of ``|mRRs|`` over 91 beats, giving
   ``mRR``. ``|mRR(j)| > 3`` marks a long (``mRR > 0``) or short (``mRR < 0``) beat.
5. A long beat is a **missed** beat if ``|RR(j) / 2 - medRR(j)| < Th2(j)``; a short beat is
   an **extra** beat if ``|RR(j) + RR(j+1) - medRR(j)| < Th2(j)``. Other long / short beats
   are labelled :attr:`Artifact.LONG` / :attr:`Artifact.SHORT`.

Windowed quantiles use NumPy's default ("linear") definition, as pandas' rolling quantile in
neurokit2 does; windows that would extend past either end of the array are truncated
(pandas' ``min_periods=1``), never padded with invented values.

Deviations from neurokit2 0.2.13 (``neurokit2/signal/signal_fixpeaks.py``, the reference
Python port of the paper), chosen on purpose:

* **Every beat gets the full test.** neurokit2 walks the beats in a ``while`` loop. When
  beat ``j`` is a long/short candidate and ``|dRR(j+1)| < |dRR(j+2)|`` it also evaluates
  beat ``j+1``, but only for long/short/missed/extra, and then moves on to ``j+2``: beat
  ``j+1`` is never tested for the ectopic pattern. The loop also stops two beats before
  the end. Here every beat is tested for everything, with the paper's order of
  precedence (ectopic first). The "evaluate ``j+1`` too" rule is then redundant: what it
  adds (the ``|mRR| > 3`` test of beat ``j+1``) is applied to every beat (next point).
* **``|mRR| > 3`` is a detection criterion of its own.** neurokit2's second test,
  ``|dRR| > 1 or |mRR| > 3`` (its transcription of the paper's Figure 1), treats it as an
  alternative to the ``dRR`` criterion, but an earlier ``if |dRR| <= 1: continue`` makes
  the alternative unreachable except through the ``j+1`` rule above; systole's
  ``rr_artefacts`` applies it to every beat, as here. Cost: a beat at the bottom of a
  steep but physiological acceleration can cross it (+0.1 % flagged beats on a 23 h
  healthy Holter record; identical results on MIT-BIH record 100).
* **Long and short are told apart**: by subspace 2 when it classifies the beat, else by
  the sign of ``mRR`` (neurokit2 reports one "longshort" class). The missed / extra tests
  apply to every long / short beat, however it was found (neurokit2 requires the
  subspace-2 condition).
* **Array edges are handled locally.** neurokit2 fills the first interval and the first
  ``dRR`` with means over the *whole* series (so every label depends on the full
  recording). Here the input intervals are all real (no placeholder) and the series is
  mirrored at its ends for the few neighbours outside it: ``RR(-1) = RR(1)``,
  ``RR(n) = RR(n-2)``, ``RR(n+1) = RR(n-3)`` (for ``dRR`` and ``S12``/``S22``; the
  thresholds of the mirrored ``dRR`` are those of the nearest real beat). The last beat
  cannot be an extra beat (there is no next interval to merge with).
* **Thresholds have a floor** of :data:`MIN_THRESHOLD_MS`. With RR values quantised to a
  coarse clock and a very regular rhythm, the quartile deviation can be exactly 0;
  neurokit2 then sets the normalised series to NaN, which silently disables detection for
  the whole window (a 2-second missed beat would go unflagged).
* **No two consecutive extra beats.** If beat ``j-1`` also passes the extra test, beat
  ``j`` is labelled short instead (an extra beat is merged with the following interval,
  which must not itself be merged away). This keeps the correction of every beat local.
* **Labels index intervals, single pass.** ``label[i]`` is about ``rr_ms[i]``, the interval
  ending at beat ``i``; neurokit2 indexes peaks, so its index ``j`` is our ``j - 1``. Its
  optional iterative re-detection on the corrected peaks is not reproduced.

The quartile deviation is taken of ``|dRRs|`` and ``|mRRs|``, as neurokit2 and systole
do. (For Gaussian ``dRRs`` this puts ``Th1`` near 2.2 standard deviations; on 1/128 s
quantised Holter data from healthy subjects a few percent of beats, mostly small
negative-positive-negative wiggles, then fall in the ectopic region, in neurokit2 as
here.)

All of this makes each label a function of a bounded neighbourhood:
``label[i]`` depends only on ``rr[i - LOOKBEHIND_BEATS : i + LOOKAHEAD_BEATS + 1]`` (and on
where the array starts or ends inside that range).

Correction
----------
:func:`correct_artifacts` turns the labelled RR series into NN intervals:

* ectopic, long, short: replaced by the median of the *clean* intervals within
  ``+/- CORRECTION_CONTEXT_BEATS`` beats (clean = labelled normal and not the second half
  of a merged extra beat); the beat keeps its time. If there is no clean interval in that
  range the beat contributes no NN interval (its ``per_beat_nn_ms`` is NaN).
* missed: split into ``k = max(2, round(RR / m))`` equal parts, ``m`` being that same local
  median (``k = 2`` if there is none); the ``k`` beat times are evenly spaced by
  ``RR / k`` and the last is the original beat time.
* extra: merged with the following interval: beat ``i`` contributes nothing and beat
  ``i+1`` contributes ``RR(i) + RR(i+1)`` at its own time, whatever its own label. An extra
  beat that is the last one, or that is followed by a gap in the timestamps, is dropped.
* normal: unchanged.

Timestamps may contain gaps (beats lost by the transport): a gap before beat ``i`` is
``t(i) - t(i-1) > RR(i) / 1000 + GAP_TOLERANCE_S``. A gap is never filled: missed-beat
parts are spaced by ``RR / k`` inside the interval itself, and an extra beat is never merged
across a gap.

:class:`StreamingArtifactCorrector` produces exactly (bit for bit) the batch result, one
beat at a time, with a delay of ``LOOKAHEAD_BEATS + CORRECTION_CONTEXT_BEATS`` beats and
memory bounded by a fixed buffer of recent beats.

References
----------
Lipponen, J. A., & Tarvainen, M. P. (2019). A robust algorithm for heart rate variability
time series artefact correction using novel beat classification. Journal of Medical
Engineering & Technology, 43(3), 173-181. https://doi.org/10.1080/03091902.2019.1640306

Makowski, D. et al. (2021). NeuroKit2: A Python toolbox for neurophysiological signal
processing. Behavior Research Methods 53, 1689-1696 (``signal_fixpeaks``, method "kubios").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

__all__ = [
    "ARTIFACT_NAMES",
    "CORRECTION_CONTEXT_BEATS",
    "GAP_TOLERANCE_S",
    "LOOKAHEAD_BEATS",
    "LOOKBEHIND_BEATS",
    "MIN_THRESHOLD_MS",
    "Artifact",
    "CorrectedBeat",
    "Correction",
    "StreamingArtifactCorrector",
    "correct_artifacts",
    "detect_artifacts",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Int8Array = npt.NDArray[np.int8]
BoolArray = npt.NDArray[np.bool_]


class Artifact(enum.IntEnum):
    """Beat classes of Lipponen & Tarvainen (2019); the code of each RR interval."""

    NONE = 0
    ECTOPIC = 1
    MISSED = 2
    EXTRA = 3
    LONG = 4
    SHORT = 5


_ECTOPIC, _MISSED, _EXTRA, _LONG, _SHORT = (int(a) for a in list(Artifact)[1:])

ARTIFACT_NAMES: tuple[str, ...] = ("", "ectopic", "missed", "extra", "long", "short")
"""Name of each :class:`Artifact` code (index by code; normal beats have an empty name)."""

C1 = 0.13
"""Slope of the ectopic-beat decision boundary in subspace 1 (paper: c1)."""
C2 = 0.17
"""Offset of the ectopic-beat decision boundary in subspace 1 (paper: c2)."""
ALPHA = 5.2
"""Threshold multiplier of the quartile deviation (paper: alpha)."""
QD_WINDOW_BEATS = 91
"""Beats in the (centred) window of the quartile deviations Th1 and Th2."""
MEDIAN_WINDOW_BEATS = 11
"""Beats in the (centred) median filter giving medRR."""
DRR_THRESHOLD = 1.0
"""Detection threshold of the normalised dRR series."""
MRR_THRESHOLD = 3.0
"""Detection threshold of the normalised mRR series."""
MIN_THRESHOLD_MS = 10.0
"""Floor of Th1 and Th2 (ms), so that a locally constant series does not disable detection.

Where more than half of the window's ``|dRRs|`` are equal (a very regular rhythm recorded
with a coarse clock, e.g. 1/128 s = 7.8 ms Holter data) the quartile deviation is exactly
0: neurokit2 then gets NaN and detects nothing, while an unfloored threshold would flag
every one-tick step. The floor keeps a one-tick step (7.8 ms) below the threshold. It
rarely bites otherwise: resting thresholds are 20-150 ms, and even at exercise heart rates
(RMSSD of a few ms) ``alpha * QD`` stays around 10 ms; artifacts are tens to hundreds of
ms."""
CORRECTION_CONTEXT_BEATS = 5
"""Correction of beat ``i`` uses intervals and labels of beats ``i - 5 ... i + 5``."""
GAP_TOLERANCE_S = 0.2
"""A timestamp step longer than the beat's RR by more than this (s) is a gap.

A lost beat lengthens the step by a whole RR interval, at least 0.3 s up to 200 bpm; the
tolerance absorbs rounding and timestamp jitter below 0.2 s."""

_QD_HALF = QD_WINDOW_BEATS // 2
_MED_HALF = MEDIAN_WINDOW_BEATS // 2

LOOKBEHIND_BEATS: int = _QD_HALF + _MED_HALF + 1
"""``label[i]`` depends on no interval before ``i - LOOKBEHIND_BEATS``.

``Th2(i)`` covers ``mRRs(i-45 ... i+45)`` and each ``mRRs(k)`` the median of
``RR(k-5 ... k+5)``: 50 beats each way; the no-two-consecutive-extras rule needs the
extra test of beat ``i-1``: one beat more behind."""
LOOKAHEAD_BEATS: int = _QD_HALF + _MED_HALF
"""``label[i]`` depends on no interval after ``i + LOOKAHEAD_BEATS`` (see LOOKBEHIND_BEATS).

The dRR part needs less (``Th1(i+2)`` covers ``dRRs`` up to ``i+47``)."""

# Below this length every windowed statistic is computed by sorting the windows (cheaper
# than SciPy's rank filters for short arrays). Both paths select the same order
# statistics and interpolate them with the same expression, so results are identical.
_SMALL_N = 512


# ---------------------------------------------------------------------------------------
# Windowed order statistics (windows truncated at the array ends)
# ---------------------------------------------------------------------------------------
def _interpolate(lo: FloatArray, hi: FloatArray, frac: FloatArray) -> FloatArray:
    """``lo + (hi - lo) * frac``, and exactly ``lo`` where ``frac == 0``."""
    return np.where(frac == 0.0, lo, lo + (hi - lo) * frac)


def _sorted_window_quantiles(
    x: FloatArray, half: int, qs: tuple[float, ...], rows: IntArray
) -> list[FloatArray]:
    """Quantiles of ``x[max(0, i-half) : i+half+1]`` for each ``i`` in ``rows``, by sorting."""
    n = x.size
    padded = np.full(n + 2 * half, np.nan)
    padded[half : half + n] = x
    windows = padded[rows[:, None] + np.arange(2 * half + 1)]
    windows.sort(axis=1)  # the NaN padding sorts last
    count = np.minimum(rows + half, n - 1) - np.maximum(rows - half, 0) + 1
    pos = np.array(qs)[:, None] * (count - 1)  # one row per quantile
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, count - 1)
    r = np.arange(rows.size)
    return list(_interpolate(windows[r, lo], windows[r, hi], pos - lo))


def _window_quantiles(
    x: FloatArray, half: int, qs: tuple[float, ...], rows: IntArray | None = None
) -> list[FloatArray]:
    """Quantiles (NumPy's "linear" definition) of ``x`` over centred windows of ``2*half+1``.

    Windows are truncated at the ends of ``x``. With ``rows`` the quantiles of those
    windows only. All windows of a long array are computed with
    :func:`scipy.ndimage.rank_filter` (O(n log w)) except those at the ends, which are
    sorted. Both ways select the same order statistics and interpolate them with the same
    expression, so a window's quantile is the same bits whichever way it is computed.
    """
    n = x.size
    width = 2 * half + 1
    if rows is not None:
        return _sorted_window_quantiles(x, half, qs, rows)
    if n <= max(_SMALL_N, 2 * width):
        return _sorted_window_quantiles(x, half, qs, np.arange(n, dtype=np.int64))
    edge_rows = np.concatenate(
        (np.arange(half, dtype=np.int64), np.arange(n - half, n, dtype=np.int64))
    )
    edges = _sorted_window_quantiles(x, half, qs, edge_rows)
    out = []
    for q, edge in zip(qs, edges, strict=True):
        pos = q * float(width - 1)
        lo_rank = int(np.floor(pos))
        frac = np.full(n - 2 * half, pos - lo_rank)
        lo = ndimage.rank_filter(x, lo_rank, size=width, mode="nearest")[half : n - half]
        if pos == lo_rank:
            hi = lo
        else:
            hi = ndimage.rank_filter(x, lo_rank + 1, size=width, mode="nearest")[half : n - half]
        res = np.empty(n)
        res[half : n - half] = _interpolate(lo, hi, frac)
        res[:half] = edge[:half]
        res[n - half :] = edge[half:]
        out.append(res)
    return out


def _threshold(x: FloatArray, rows: IntArray | None = None) -> FloatArray:
    """``alpha`` times the quartile deviation of ``|x|`` over 91 beats, floored."""
    q1, q3 = _window_quantiles(np.abs(x), _QD_HALF, (0.25, 0.75), rows)
    return np.maximum(ALPHA * ((q3 - q1) / 2.0), MIN_THRESHOLD_MS)


# ---------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------
def _as_rr(rr_ms: npt.ArrayLike) -> FloatArray:
    rr = np.asarray(rr_ms, dtype=np.float64)
    if rr.ndim != 1:
        raise ValueError(f"rr_ms must be one-dimensional, got shape {rr.shape}")
    if not np.all(np.isfinite(rr)) or np.any(rr <= 0.0):
        raise ValueError("rr_ms must contain finite, strictly positive intervals")
    return rr


def _classify(rr: FloatArray, first: int, stop: int) -> Int8Array:
    """Labels of beats ``first ... stop - 1`` of ``rr`` (``rr.size >= 2``).

    Only the windows these labels depend on are evaluated (the streaming corrector asks
    for one label per beat); each value is computed by the same expressions whichever
    range is asked for, so a label does not depend on how it was requested.
    """
    n = rr.size
    full = first == 0 and stop == n
    # Beats classified before the no-two-consecutive-extras rule: one more in front.
    e0 = max(0, first - 1)
    ev = np.arange(e0, stop, dtype=np.int64)

    # RR mirrored at both ends: rr_ext[k + 2] = RR(k), k = -2 ... n + 1.
    left, right = ([2, 1], [n - 2, n - 3]) if n > 2 else ([0, 1], [0, 1])
    rr_ext = np.concatenate((rr[left], rr, rr[right]))
    drr_ext = np.diff(rr_ext)  # drr_ext[k + 1] = dRRs(k), k = -1 ... n + 1

    # Normalised dRR at beats ev - 1 ... ev + 2; mirrored beats take the threshold of the
    # nearest real beat.
    a, b = max(0, e0 - 1), min(n, stop + 2)
    drr = drr_ext[1 : n + 1]
    th1 = _threshold(drr, None if full else np.arange(a, b, dtype=np.int64))
    k = np.arange(e0 - 1, stop + 2)
    dn_k = drr_ext[k + 1] / th1[np.clip(k, 0, n - 1) - a]
    m = ev.size
    prev, dn, nxt, nxt2 = dn_k[:m], dn_k[1 : m + 1], dn_k[2 : m + 2], dn_k[3 : m + 3]
    s12 = np.where(dn > 0, np.maximum(prev, nxt), np.where(dn < 0, np.minimum(prev, nxt), 0.0))
    s22 = np.where(dn >= 0, np.minimum(nxt, nxt2), np.maximum(nxt, nxt2))

    # Normalised mRR at beats ev: Th2 needs mRRs 45 beats around them.
    lo, hi = max(0, e0 - _QD_HALF), min(n, stop + _QD_HALF)
    (medrr,) = _window_quantiles(
        rr, _MED_HALF, (0.5,), None if full else np.arange(lo, hi, dtype=np.int64)
    )
    mrrs = rr[lo:hi] - medrr
    mrrs = np.where(mrrs < 0, 2.0 * mrrs, mrrs)
    th2 = _threshold(mrrs, None if full else ev - lo)
    mn = mrrs[e0 - lo : stop - lo] / th2
    med = medrr[e0 - lo : stop - lo]

    ectopic = ((dn > DRR_THRESHOLD) & (s12 < -C1 * dn - C2)) | (
        (dn < -DRR_THRESHOLD) & (s12 > -C1 * dn + C2)
    )
    long_s2 = (dn > DRR_THRESHOLD) & (s22 < -DRR_THRESHOLD)
    short_s2 = (dn < -DRR_THRESHOLD) & (s22 > DRR_THRESHOLD)
    flagged = ~ectopic & (long_s2 | short_s2 | (np.abs(mn) > MRR_THRESHOLD))
    is_long = flagged & (long_s2 | (~short_s2 & (mn > 0)))
    is_short = flagged & ~is_long
    rr_ev = rr[e0:stop]
    missed = is_long & (np.abs(rr_ev / 2.0 - med) < th2)
    extra = is_short & (np.abs(rr_ev + rr_ext[e0 + 3 : stop + 3] - med) < th2) & (ev < n - 1)
    extra[1:] &= ~extra[:-1]

    labels = np.zeros(m, dtype=np.int8)
    labels[ectopic] = _ECTOPIC
    labels[is_long] = _LONG
    labels[missed] = _MISSED
    labels[is_short] = _SHORT
    labels[extra] = _EXTRA
    return labels[first - e0 :]


def detect_artifacts(rr_ms: npt.NDArray[np.float64]) -> npt.NDArray[np.int8]:
    """Classify each RR interval as normal or as one of five artifact types.

    Implements the beat classification of Lipponen & Tarvainen (2019) (see the module
    docstring for the method and for the deliberate differences from neurokit2).

    Parameters
    ----------
    rr_ms : ndarray of float64
        Consecutive RR intervals in milliseconds (finite, > 0). ``rr_ms[i]`` is the
        interval ending at beat ``i``.

    Returns
    -------
    ndarray of int8
        One :class:`Artifact` code per interval. ``label[i]`` depends only on
        ``rr_ms[i - LOOKBEHIND_BEATS : i + LOOKAHEAD_BEATS + 1]`` (and on where the array
        starts or ends inside that range).

    Raises
    ------
    ValueError
        If ``rr_ms`` is not one-dimensional or holds non-finite or non-positive values.

    References
    ----------
    Lipponen, J. A., & Tarvainen, M. P. (2019). A robust algorithm for heart rate
    variability time series artefact correction using novel beat classification.
    J Med Eng Technol 43(3), 173-181.
    """
    rr = _as_rr(rr_ms)
    if rr.size < 2:
        return np.zeros(rr.size, dtype=np.int8)
    return _classify(rr, 0, rr.size)


# ---------------------------------------------------------------------------------------
# Correction
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Correction:
    """Result of :func:`correct_artifacts`.

    Attributes
    ----------
    nn_ms : ndarray of float64
        Corrected NN intervals (ms). Its length may differ from the input: missed beats
        are split, extra beats merged, uncorrectable beats dropped.
    nn_t_s : ndarray of float64
        Time (s, the clock of the input ``t_s``) of the beat ending each NN interval.
    nn_source : ndarray of int64
        Index of the input interval each NN interval came from (non-decreasing).
    per_beat_nn_ms : ndarray of float64
        One value per *input* interval: its corrected value; for a missed beat the value
        of each of its equal parts; NaN for a beat that contributes no NN interval (an
        extra beat merged into the next one or dropped, or an ectopic/long/short beat
        with no clean neighbour to take a median from).
    labels : ndarray of int8
        The :class:`Artifact` code of each input interval (from :func:`detect_artifacts`
        unless given).
    """

    nn_ms: FloatArray
    nn_t_s: FloatArray
    nn_source: IntArray
    per_beat_nn_ms: FloatArray
    labels: Int8Array


def _local_clean_median(rr: FloatArray, clean: BoolArray, rows: IntArray) -> FloatArray:
    """Median of ``rr[j]`` over clean ``j`` within ``+/- CORRECTION_CONTEXT_BEATS`` of each row.

    NaN where there is none. Windows are truncated at the array ends.
    """
    half = CORRECTION_CONTEXT_BEATS
    if rows.size == 0:
        return np.empty(0)
    pad = np.full(half, np.nan)
    values = np.concatenate((pad, np.where(clean, rr, np.nan), pad))
    windows = np.sort(sliding_window_view(values, 2 * half + 1)[rows], axis=1)
    count = np.sum(~np.isnan(windows), axis=1)
    r = np.arange(rows.size)
    lo = np.maximum((count - 1) // 2, 0)
    hi = np.maximum(count // 2, 0)
    median = (windows[r, lo] + windows[r, hi]) / 2.0
    return np.where(count > 0, median, np.nan)


def _per_beat(
    rr: FloatArray, t: FloatArray, labels: Int8Array, rows: IntArray
) -> tuple[FloatArray, IntArray]:
    """Corrected value and number of NN intervals contributed by each beat in ``rows``.

    Uses only beats ``row - CORRECTION_CONTEXT_BEATS - 1 ... row + CORRECTION_CONTEXT_BEATS``
    of the arrays (the extra beat ``row - 6`` decides whether ``row - 5`` is clean), so the
    streaming corrector can call it on a slice and get the batch values bit for bit.
    """
    n = rr.size
    gap_before = np.zeros(n, dtype=np.bool_)
    gap_before[1:] = (t[1:] - t[:-1]) > rr[1:] / 1000.0 + GAP_TOLERANCE_S
    merged = np.zeros(n, dtype=np.bool_)
    merged[1:] = (labels[:-1] == _EXTRA) & ~gap_before[1:]
    clean = (labels == 0) & ~merged

    lab = labels[rows]
    value = rr[rows].copy()
    parts = np.ones(rows.size, dtype=np.int64)

    is_extra = lab == _EXTRA
    value[is_extra] = np.nan
    parts[is_extra] = 0

    needs_median = (lab != 0) & ~is_extra
    needs_median &= ~merged[rows]
    med_rows = np.flatnonzero(needs_median)
    ref = _local_clean_median(rr, clean, rows[med_rows])
    is_missed = lab[med_rows] == _MISSED
    k = np.where(np.isnan(ref), 2.0, np.maximum(2.0, np.rint(rr[rows[med_rows]] / ref)))
    replaced = np.where(is_missed, rr[rows[med_rows]] / k, ref)
    value[med_rows] = replaced
    parts[med_rows] = np.where(is_missed, k.astype(np.int64), np.where(np.isnan(ref), 0, 1))

    merge_rows = np.flatnonzero(merged[rows])
    value[merge_rows] = rr[rows[merge_rows] - 1] + rr[rows[merge_rows]]
    parts[merge_rows] = 1
    return value, parts


def _flatten(
    value: FloatArray, parts: IntArray, t: FloatArray, source: IntArray
) -> tuple[FloatArray, FloatArray, IntArray]:
    """NN values, times and sources from per-beat values and part counts."""
    nn_ms = np.repeat(value, parts)
    nn_source = np.repeat(source, parts)
    # Parts of a split beat are spaced by the part's length and end at the beat's time.
    last = np.cumsum(parts) - 1
    steps_before_end = np.repeat(last, parts) - np.arange(nn_ms.size)
    nn_t_s = np.repeat(t, parts) - steps_before_end * (nn_ms / 1000.0)
    return nn_ms, nn_t_s, nn_source


def _as_labels(labels: npt.ArrayLike, n: int) -> Int8Array:
    lab = np.asarray(labels)
    if lab.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {lab.shape}")
    if lab.size and (lab.min() < 0 or lab.max() > max(Artifact)):
        raise ValueError("labels must be Artifact codes (0-5)")
    lab = lab.astype(np.int8)
    extra = lab == _EXTRA
    if np.any(extra[1:] & extra[:-1]):
        raise ValueError("two consecutive extra beats: an extra beat merges with the next one")
    return lab


def correct_artifacts(
    rr_ms: FloatArray, t_s: FloatArray, labels: Int8Array | None = None
) -> Correction:
    """Correct the artifacts of an RR series into an NN series.

    Parameters
    ----------
    rr_ms : ndarray of float64
        RR intervals (ms), finite and > 0.
    t_s : ndarray of float64
        Time (s) of the beat ending each interval. Gaps (lost beats) are allowed:
        ``t_s[i] - t_s[i-1] > rr_ms[i] / 1000 + GAP_TOLERANCE_S``; they are never filled.
    labels : ndarray of int8, optional
        :class:`Artifact` codes of the intervals; :func:`detect_artifacts` by default.

    Returns
    -------
    Correction
        The NN series and the per-beat view of it.

    Raises
    ------
    ValueError
        On malformed input (shapes, non-finite values, invalid labels or two consecutive
        extra beats in ``labels``).

    Notes
    -----
    Correction rules (the module docstring has the details):

    * ectopic, long, short: replaced by the median of the clean intervals within
      ``+/- CORRECTION_CONTEXT_BEATS`` beats, at the beat's own time (no clean
      neighbour: the beat contributes nothing);
    * missed: ``k = max(2, round(RR / median))`` equal parts, evenly spaced, the last at
      the beat's time;
    * extra: merged with the following interval (``RR(i) + RR(i+1)`` at ``t(i+1)``),
      unless it is the last beat or a gap follows it, in which case it is dropped.

    References
    ----------
    Lipponen, J. A., & Tarvainen, M. P. (2019). A robust algorithm for heart rate
    variability time series artefact correction using novel beat classification.
    J Med Eng Technol 43(3), 173-181.
    """
    rr = _as_rr(rr_ms)
    t = np.asarray(t_s, dtype=np.float64)
    if t.shape != rr.shape:
        raise ValueError(f"t_s must have the shape of rr_ms {rr.shape}, got {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError("t_s must be finite")
    lab = detect_artifacts(rr) if labels is None else _as_labels(labels, rr.size)
    rows = np.arange(rr.size, dtype=np.int64)
    value, parts = _per_beat(rr, t, lab, rows)
    nn_ms, nn_t_s, nn_source = _flatten(value, parts, t, rows)
    return Correction(
        nn_ms=nn_ms, nn_t_s=nn_t_s, nn_source=nn_source, per_beat_nn_ms=value, labels=lab
    )


# ---------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CorrectedBeat:
    """One input beat, final, as emitted by :class:`StreamingArtifactCorrector`.

    Attributes
    ----------
    index : int
        Position of the beat in the input stream (0-based).
    t_s : float
        Its input time (s).
    rr_ms : float
        Its input RR interval (ms).
    label : int
        Its :class:`Artifact` code.
    nn : tuple of (float, float)
        The ``(nn_ms, nn_t_s)`` pairs this beat contributes to the NN series: none (extra
        or uncorrectable beat), one, or ``k`` (missed beat split in ``k``).
    """

    index: int
    t_s: float
    rr_ms: float
    label: int
    nn: tuple[tuple[float, float], ...]


class StreamingArtifactCorrector:
    """Fed one interval at a time; emits exactly the batch result, delayed by a bounded
    number of beats.

    Beat ``i`` is emitted by the :meth:`push` of beat
    ``i + LOOKAHEAD_BEATS + CORRECTION_CONTEXT_BEATS`` (or by :meth:`close`). Its label,
    and the NN intervals it contributes, are bit for bit those of
    :func:`detect_artifacts` and :func:`correct_artifacts` applied to the whole recording:
    the same functions are called on a slice that holds the full dependency range of the
    beat (at the start of the stream the slice starts at beat 0, as the batch array does).
    Memory is a fixed buffer of ``4 * (LOOKBEHIND_BEATS + LOOKAHEAD_BEATS +
    2 * CORRECTION_CONTEXT_BEATS + 2)`` recent beats (older ones are discarded), and the
    work per beat is one classification of a ``LOOKBEHIND_BEATS + LOOKAHEAD_BEATS + 1``
    beat slice plus one correction of an 11-beat slice (about 0.1 ms).

    Examples
    --------
    >>> corrector = StreamingArtifactCorrector()
    >>> beats = []
    >>> t = 0.0
    >>> for rr in [800.0] * 100:
    ...     t += rr / 1000
    ...     beats += corrector.push(rr, t)
    >>> beats += corrector.close()
    >>> len(beats)
    100
    """

    _KEEP = LOOKBEHIND_BEATS + LOOKAHEAD_BEATS + 2 * CORRECTION_CONTEXT_BEATS + 2

    def __init__(self) -> None:
        cap = 4 * self._KEEP
        self._rr = np.empty(cap)
        self._t = np.empty(cap)
        self._lab = np.zeros(cap, dtype=np.int8)
        self._base = 0  # stream index of buffer slot 0
        self._n = 0  # beats received
        self._next_label = 0  # first beat without a final label
        self._next_emit = 0  # first beat not yet emitted
        self._closed = False

    def push(self, rr_ms: float, t_s: float) -> list[CorrectedBeat]:
        """Add the next interval; return the beats that became final (oldest first).

        Parameters
        ----------
        rr_ms : float
            The RR interval (ms), finite and > 0.
        t_s : float
            Time (s) of the beat ending it.

        Returns
        -------
        list of CorrectedBeat
            Zero or one beat (none during the first
            ``LOOKAHEAD_BEATS + CORRECTION_CONTEXT_BEATS`` pushes).

        Raises
        ------
        ValueError
            If the interval is not finite and positive or the time is not finite.
        RuntimeError
            After :meth:`close`.
        """
        if self._closed:
            raise RuntimeError("push() after close()")
        rr = float(rr_ms)
        t = float(t_s)
        if not (np.isfinite(rr) and rr > 0.0):
            raise ValueError(f"rr_ms must be finite and > 0, got {rr_ms!r}")
        if not np.isfinite(t):
            raise ValueError(f"t_s must be finite, got {t_s!r}")
        self._append(rr, t)
        while self._next_label + LOOKAHEAD_BEATS < self._n:
            first = self._next_label
            self._label(first, first + 1, first + LOOKAHEAD_BEATS + 1)
        return self._emit(self._next_label - CORRECTION_CONTEXT_BEATS)

    def close(self) -> list[CorrectedBeat]:
        """End of the recording: return all the beats not emitted yet (oldest first)."""
        if self._closed:
            return []
        self._closed = True
        if self._next_label < self._n:
            self._label(self._next_label, self._n, self._n)
        return self._emit(self._n)

    # -- internals ----------------------------------------------------------------------
    def _append(self, rr: float, t: float) -> None:
        slot = self._n - self._base
        if slot == self._rr.size:
            oldest = max(
                0,
                min(
                    self._next_label - LOOKBEHIND_BEATS,
                    self._next_emit - CORRECTION_CONTEXT_BEATS - 1,
                ),
            )
            shift = oldest - self._base
            keep = slot - shift
            self._rr[:keep] = self._rr[shift:slot]
            self._t[:keep] = self._t[shift:slot]
            self._lab[:keep] = self._lab[shift:slot]
            self._base = oldest
            slot = keep
        self._rr[slot] = rr
        self._t[slot] = t
        self._n += 1

    def _label(self, first: int, stop: int, end: int) -> None:
        """Final labels of beats ``first ... stop - 1`` from the slice of beats before ``end``.

        ``end`` is ``stop + LOOKAHEAD_BEATS`` (or the end of the stream) and the slice starts
        ``LOOKBEHIND_BEATS`` before ``first`` (or at the start of the stream), so it holds
        the whole dependency range of each label.
        """
        lo = max(0, first - LOOKBEHIND_BEATS)
        b = self._base
        rr = self._rr[lo - b : end - b]
        if rr.size >= 2:
            self._lab[first - b : stop - b] = _classify(rr, first - lo, stop - lo)
        self._next_label = stop

    def _emit(self, stop: int) -> list[CorrectedBeat]:
        """Emit beats ``_next_emit ... stop - 1``, whose labels and context are final."""
        out: list[CorrectedBeat] = []
        b = self._base
        for i in range(self._next_emit, stop):
            lo = max(0, i - CORRECTION_CONTEXT_BEATS - 1)
            hi = min(self._n, i + CORRECTION_CONTEXT_BEATS + 1)
            rows = np.array([i - lo], dtype=np.int64)
            rr = self._rr[lo - b : hi - b]
            t = self._t[lo - b : hi - b]
            value, parts = _per_beat(rr, t, self._lab[lo - b : hi - b], rows)
            nn_ms, nn_t_s, _ = _flatten(value, parts, t[rows], rows)
            out.append(
                CorrectedBeat(
                    index=i,
                    t_s=float(t[i - lo]),
                    rr_ms=float(rr[i - lo]),
                    label=int(self._lab[i - b]),
                    nn=tuple(zip(nn_ms.tolist(), nn_t_s.tolist(), strict=True)),
                )
            )
        self._next_emit = max(self._next_emit, stop)
        return out
