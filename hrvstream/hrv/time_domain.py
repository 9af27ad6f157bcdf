"""Time-domain HRV over many windows at once: MeanNN, SDNN, RMSSD, pNN50, mean HR.

Definitions follow the Task Force (1996) and neurokit2's ``hrv_time``:

- ``mean_nn_ms``: mean of the NN intervals.
- ``sdnn_ms``: their sample standard deviation (``ddof=1``).
- ``rmssd_ms``: root mean square of the successive differences.
- ``pnn50_pct``: successive differences larger than 50 ms, as a percentage of the number
  of NN intervals (Task Force: "NN50 count divided by the total number of all NN
  intervals"; neurokit2 divides by the same count).
- ``mean_hr_bpm``: mean of the instantaneous heart rate ``60000 / NN``.

A successive difference is only taken between two NN intervals that are adjacent in time
(``successive`` flags); across a gap in the recording there is none.

Every window's sums are taken directly over its own intervals (``np.add.reduceat`` over
the windows' index ranges, no prefix sums over the whole day), so nothing drifts over a
day-long recording; the cost is proportional to the total length of all windows.

References
----------
Task Force of the European Society of Cardiology and the North American Society of Pacing
and Electrophysiology (1996). Heart rate variability: standards of measurement,
physiological interpretation and clinical use. Circulation 93(5), 1043-1065.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class TimeDomain:
    """Time-domain metrics, one entry per window (NaN where undefined)."""

    n: IntArray
    mean_nn_ms: FloatArray
    sdnn_ms: FloatArray
    rmssd_ms: FloatArray
    pnn50_pct: FloatArray
    mean_hr_bpm: FloatArray


def segment_sums(values: FloatArray, starts: IntArray, ends: IntArray) -> FloatArray:
    """``sum(values[starts[w]:ends[w]])`` for every window ``w`` (0 for an empty window)."""
    if len(starts) == 0:
        return np.zeros(0)
    padded = np.concatenate([values, np.zeros(1, dtype=values.dtype)])
    idx = np.empty(2 * len(starts), dtype=np.intp)
    idx[0::2] = starts
    idx[1::2] = ends
    sums = np.add.reduceat(padded, idx)[0::2].astype(np.float64)
    sums[ends <= starts] = 0.0
    return sums


@dataclass(frozen=True, slots=True)
class WindowSums:
    """The running sums time-domain metrics are finished from (one entry per window).

    Kept as plain sums so that a streaming window can add and remove intervals in O(1)
    and finish with :func:`finish` exactly as the batch does. Intervals are summed
    uncentred: RR values from straps (multiples of 1/128 ms) and from integer-ms files
    are dyadic, so these sums are exact in float64 and do not depend on summation order.
    """

    n: IntArray
    s1: FloatArray  # sum of NN (ms)
    s2: FloatArray  # sum of NN^2
    hr: FloatArray  # sum of 60000 / NN
    d2: FloatArray  # sum of squared successive differences
    nd: FloatArray  # number of successive differences
    n50: FloatArray  # successive differences larger than 50 ms


def window_sums(
    nn_ms: FloatArray,
    starts: IntArray,
    ends: IntArray,
    successive: BoolArray | None = None,
) -> WindowSums:
    """Sums of the windows ``nn_ms[starts[w]:ends[w]]``.

    Parameters
    ----------
    nn_ms:
        NN intervals of the whole recording, in ms.
    starts, ends:
        Index range of each window.
    successive:
        Optional flags, True where an interval directly follows the previous one (no
        gap between them); without them every interval follows the previous one.
    """
    diff = np.zeros(len(nn_ms))
    diff[1:] = np.diff(nn_ms)
    ok = np.ones(len(nn_ms), dtype=bool) if successive is None else successive.copy()
    if len(ok):
        ok[0] = False
    diff[~ok] = 0.0
    # A difference belongs to the window when both its intervals do: starts+1 .. ends-1.
    d_starts = np.minimum(starts + 1, ends)
    return WindowSums(
        n=(ends - starts).astype(np.intp),
        s1=segment_sums(nn_ms, starts, ends),
        s2=segment_sums(nn_ms * nn_ms, starts, ends),
        hr=segment_sums(60000.0 / nn_ms, starts, ends),
        d2=segment_sums(diff * diff, d_starts, ends),
        nd=segment_sums(ok.astype(np.float64), d_starts, ends),
        n50=segment_sums((np.abs(diff) > 50.0).astype(np.float64), d_starts, ends),
    )


def finish(sums: WindowSums) -> TimeDomain:
    """Metrics from window sums; shared by the batch and the streaming engines."""
    n = sums.n
    nf = n.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_nn = sums.s1 / nf
        var = (sums.s2 - sums.s1 * mean_nn) / (nf - 1.0)
        sdnn = np.sqrt(np.maximum(var, 0.0))
        rmssd = np.sqrt(sums.d2 / sums.nd)
        pnn50 = 100.0 * sums.n50 / nf
        mean_hr = sums.hr / nf
    sdnn[n < 2] = np.nan
    mean_nn[n < 1] = np.nan
    mean_hr[n < 1] = np.nan
    rmssd[sums.nd < 1] = np.nan
    pnn50[sums.nd < 1] = np.nan
    return TimeDomain(
        n=n, mean_nn_ms=mean_nn, sdnn_ms=sdnn, rmssd_ms=rmssd, pnn50_pct=pnn50, mean_hr_bpm=mean_hr
    )


def time_domain(
    nn_ms: FloatArray,
    starts: IntArray,
    ends: IntArray,
    successive: BoolArray | None = None,
) -> TimeDomain:
    """Time-domain metrics of the windows ``nn_ms[starts[w]:ends[w]]`` (see the module doc)."""
    return finish(window_sums(nn_ms, starts, ends, successive))
