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

* **Every beat is classified.** neurokit2 walks the beats in a ``while`` loop whose
  "also evaluate beat ``j+1``" branch advances the loop counter once per candidate, so the
  beat after a two-candidate evaluation is never itself tested for the ectopic pattern,
  and the loop stops two beats before the end. Here each beat gets the full test. The
  "evaluate ``j+1`` too" rule exists only to apply the ``|mRR| > 3`` test to the beat
  after a detection; since that test is applied to *every* beat here (next point), the
  rule adds nothing and is not needed.
* **``|mRR| > 3`` is an independent detection criterion**, as the paper defines the
  ``mRR`` threshold (and as systole's ``rr_artefacts`` implements it). In neurokit2 it is
  only reached after ``|dRR| > 1`` has already passed, which makes it almost dead code:
  a beat that deviates strongly from the local median but only gradually from its
  predecessor (e.g. the second of two consecutive long beats) is missed.
* **Missed / extra tests apply to every long / short beat**, whether it was found in
  subspace 2 or by the ``mRR`` criterion (neurokit2 requires the subspace-2 condition).
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
memory bounded by a fixed ring of recent beats.

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
GAP_TOLERANCE_S = 0.25
"""A timestamp step longer than the beat's RR by more than this (s) is a gap.

One lost beat lengthens the step by at least one RR (>= 0.25 s up to 240 bpm)."""

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
# Windowed order statistics (truncated at the array ends)
# ---------------------------------------------------------------------------------------
def _interpolate(lo: FloatArray, hi: FloatArray, frac: FloatArray) -> FloatArray:
    """``lo + (hi - lo) * frac``, and exactly ``lo`` where ``frac == 0``."""
    return np.where(frac == 0.0, lo, lo + (hi - lo) * frac)


def _sorted_window_quantiles(
    x: FloatArray, half: int, qs: tuple[float, ...], rows: IntArray
) -> list[FloatArray]:
    """Quantiles of ``x[max(0, i-half) : i+half+1]`` for ``i`` in ``rows``, by sorting."""
    n = x.size
    width = 2 * half + 1
    padded = np.concatenate((np.full(half, np.nan), x, np.full(half, np.nan)))
    windows = np.sort(sliding_window_view(padded, width)[rows], axis=1)  # NaNs sort last
    count = np.minimum(rows + half, n - 1) - np.maximum(rows - half, 0) + 1
    out = []
    r = np.arange(rows.size)
    for q in qs:
        pos = q * (count - 1).astype(np.float64)
        lo = np.floor(pos).astype(np.int64)
        frac = pos - lo
        hi = np.minimum(lo + 1, count - 1)
        out.append(_interpolate(windows[r, lo], windows[r, hi], frac))
    return out


def _window_quantiles(x: FloatArray, half: int, qs: tuple[float, ...]) -> list[FloatArray]:
    """Linear-interpolation quantiles of ``x`` over centred windows of ``2*half+1`` beats.

    Windows are truncated at the ends of ``x``. Interior windows of long arrays use
    :func:`scipy.ndimage.rank_filter` (O(n log w)); the rest are sorted.
    """
    n = x.size
    width = 2 * half + 1
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


def _threshold(x: FloatArray) -> FloatArray:
    """``alpha`` times the quartile deviation of ``|x|`` over 91 beats, floored."""
    q1, q3 = _window_quantiles(np.abs(x), _QD_HALF, (0.25, 0.75))
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
    n = rr.size
    labels = np.zeros(n, dtype=np.int8)
    if n < 2:
        return labels

    # RR mirrored at both ends: rr_ext[k + 2] = RR(k) for k = -2 ... n + 1.
    rr_ext = np.pad(rr, 2, mode="reflect")
    drr_ext = np.diff(rr_ext)  # drr_ext[k + 1] = dRRs(k), k = -1 ... n + 1
    drr = drr_ext[1 : n + 1]
    th1 = _threshold(drr)
    th1_ext = np.concatenate((th1[:1], th1, th1[-1:], th1[-1:]))
    dn_ext = drr_ext / th1_ext
    dn = dn_ext[1 : n + 1]
    prev, nxt, nxt2 = dn_ext[:n], dn_ext[2 : n + 2], dn_ext[3 : n + 3]

    s12 = np.where(dn > 0, np.maximum(prev, nxt), np.where(dn < 0, np.minimum(prev, nxt), 0.0))
    s22 = np.where(dn >= 0, np.minimum(nxt, nxt2), np.maximum(nxt, nxt2))

    (medrr,) = _window_quantiles(rr, _MED_HALF, (0.5,))
    mrrs = rr - medrr
    mrrs = np.where(mrrs < 0, 2.0 * mrrs, mrrs)
    th2 = _threshold(mrrs)
    mn = mrrs / th2

    ectopic = ((dn > DRR_THRESHOLD) & (s12 < -C1 * dn - C2)) | (
        (dn < -DRR_THRESHOLD) & (s12 > -C1 * dn + C2)
    )
    long_s2 = (dn > DRR_THRESHOLD) & (s22 < -DRR_THRESHOLD)
    short_s2 = (dn < -DRR_THRESHOLD) & (s22 > DRR_THRESHOLD)
    far_mrr = np.abs(mn) > MRR_THRESHOLD
    flagged = ~ectopic & (long_s2 | short_s2 | far_mrr)
    is_long = flagged & (long_s2 | (~short_s2 & (mn > 0)))
    is_short = flagged & ~is_long

    missed = is_long & (np.abs(rr / 2.0 - medrr) < th2)
    rr_next = rr_ext[3 : n + 3]
    extra = is_short & (np.abs(rr + rr_next - medrr) < th2)
    extra[-1] = False
    extra_after_extra = extra & np.concatenate(([False], extra[:-1]))

    labels[ectopic] = Artifact.ECTOPIC
    labels[is_long] = Artifact.LONG
    labels[missed] = Artifact.MISSED
    labels[is_short] = Artifact.SHORT
    labels[extra & ~extra_after_extra] = Artifact.EXTRA
    return labels
