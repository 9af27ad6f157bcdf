"""Frequency-domain HRV: LF and HF power of the interpolated tachogram, for many windows at once.

Method (the one neurokit2's ``hrv_frequency(..., interpolation_rate=4, normalize=False)``
uses, reproduced to floating-point precision so results can be compared number for number):

1. The NN intervals of a window, placed at the times of the beats that end them, are
   interpolated onto a regular grid ``t_0, t_0 + 1/fs, ...`` (``fs`` = 4 Hz by default) that
   starts at the window's first beat and runs one step past its last beat, with a
   quadratic interpolating spline under the not-a-knot condition (knots at the midpoints
   between beats, as :func:`scipy.interpolate.make_interp_spline` with ``k=2`` builds them;
   grid points past the last beat take the last interval's value).
2. The mean is removed and the power spectral density is estimated with Welch's method:
   periodic Hann segments of half the signal's length (``nperseg = N/2``, so three
   segments with 50 % overlap), each zero-padded to twice its length, one-sided density
   scaling.
3. Band power is the trapezoidal integral of the PSD over the band's bins (``lo <= f < hi``),
   for LF (0.04-0.15 Hz) and HF (0.15-0.4 Hz), in ms^2. LF/HF is their ratio; normalised
   units are ``100 * LF / (LF + HF)`` and ``100 * HF / (LF + HF)``.

Speed comes from doing every window of a recording in one pass: a compiled kernel
(numba, parallel over windows) solves each window's tridiagonal spline system, evaluates
the spline on the window's grid, removes the mean and writes the Hann-weighted Welch
segments straight into one buffer, and all windows of the same grid length go through
one batched real FFT. neurokit2's FFT length (twice the segment length) is often twice a
prime; the band powers are computed exactly from an FFT of a fast length instead (see
:func:`_smooth_weights`).

References
----------
Task Force of the European Society of Cardiology and the North American Society of Pacing
and Electrophysiology (1996). Heart rate variability: standards of measurement,
physiological interpretation and clinical use. Circulation 93(5), 1043-1065.

Makowski, D. et al. (2021). NeuroKit2: A Python toolbox for neurophysiological signal
processing. Behavior Research Methods 53, 1689-1696.

Welch, P. (1967). The use of fast Fourier transform for the estimation of power spectra.
IEEE Transactions on Audio and Electroacoustics 15(2), 70-73.

de Boor, C. (1978). A Practical Guide to Splines. Springer (chapter XIII, not-a-knot).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np
import numpy.typing as npt
import scipy.fft
import scipy.interpolate
import scipy.signal

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

#: Windows are processed in chunks of about this many FFT input samples (bounded memory).
_CHUNK_SAMPLES = 250_000


@dataclass(frozen=True, slots=True)
class FrequencyConfig:
    """Parameters of the frequency-domain estimate.

    Attributes
    ----------
    interpolation_rate_hz:
        Rate of the regular grid the tachogram is interpolated onto.
    lf_band_hz, hf_band_hz:
        Band edges, ``lo <= f < hi`` (Task Force 1996).
    max_frequency_hz:
        Highest frequency kept from the PSD (neurokit2 keeps up to the VHF band's 0.5 Hz).
    """

    interpolation_rate_hz: float = 4.0
    lf_band_hz: tuple[float, float] = (0.04, 0.15)
    hf_band_hz: tuple[float, float] = (0.15, 0.4)
    max_frequency_hz: float = 0.5


@dataclass(frozen=True, slots=True)
class BandPowers:
    """LF and HF power per window (ms^2); NaN where the band had no power to integrate."""

    lf_ms2: FloatArray
    hf_ms2: FloatArray


def grid_length(first_t_s: FloatArray, last_t_s: FloatArray, fs: float) -> IntArray:
    """Number of grid samples of ``np.arange(first, last + 1/fs, 1/fs)``, vectorised."""
    step = 1.0 / fs
    n = np.ceil(((last_t_s + step) - first_t_s) / step)
    return n.astype(np.intp)


# --------------------------------------------------------------------------- kernel


@numba.njit(inline="always", cache=True)
def _knot(x: FloatArray, s: int, n: int, k: int) -> float:
    """Knot ``k`` of the not-a-knot quadratic spline through beats ``x[s:s+n]``.

    Knots 0..2 are the first beat, knots ``n..n+2`` the last one, and knot ``k`` in
    between is the midpoint of beats ``k-2`` and ``k-1`` (scipy's ``_not_a_knot`` for
    even degree: Greville sites without the second and second-to-last).
    """
    if k <= 2:
        return float(x[s])
    if k >= n:
        return float(x[s + n - 1])
    return float((x[s + k - 2] + x[s + k - 1]) / 2.0)


@numba.njit(inline="always", cache=True)
def _row(tl1: float, tl: float, tr: float, tr2: float, u: float) -> tuple[float, float, float]:
    """Collocation row at ``u`` in knot interval ``[tl, tr)``: B-spline values (a, b, c)."""
    ih = 1.0 / (tr - tl)
    b1a = (tr - u) * ih
    b1b = (u - tl) * ih
    i1 = 1.0 / (tr - tl1)
    i2 = 1.0 / (tr2 - tl)
    a = (tr - u) * i1 * b1a
    b = (u - tl1) * i1 * b1a + (tr2 - u) * i2 * b1b
    c = (u - tl) * i2 * b1b
    return a, b, c


@numba.njit(inline="always", cache=True)
def _piece(
    tl1: float, tl: float, tr: float, tr2: float
) -> tuple[float, float, float, float, float, float, float]:
    """How a piece's polynomial ``p0 + d p1 + d^2 p2`` (``d = u - tl``) depends on its
    three B-spline coefficients: ``p0 = k00 c0 + k01 c1``, ``p1 = k10 c0 + k11 c1``,
    ``p2 = k20 c0 + k21 c1 + k22 c2``."""
    hh = tr - tl
    g = tl - tl1
    q = tr2 - tl
    i1 = 1.0 / ((tr - tl1) * hh)
    i2 = 1.0 / (q * hh)
    return (hh * hh * i1, g * hh * i1, -2.0 * hh * i1, (hh - g) * i1 + q * i2, i1, -(i1 + i2), i2)


@numba.njit(cache=True)
def _global_tables(x: FloatArray) -> tuple[FloatArray, FloatArray]:  # pragma: no cover
    """Row and piece coefficients that depend only on knots between beats.

    Row ``g`` (collocation at beat ``g``) and piece ``g`` (between the midpoints before
    and after beat ``g - 2 .. g - 1``) are the same in every window that holds them away
    from its two ends, so they are computed once per recording.
    """
    n = len(x)
    rows = np.zeros((n, 3))
    pieces = np.zeros((n, 7))
    for g in range(2, n - 2):
        m0 = (x[g - 2] + x[g - 1]) / 2.0
        m1 = (x[g - 1] + x[g]) / 2.0
        m2 = (x[g] + x[g + 1]) / 2.0
        m3 = (x[g + 1] + x[g + 2]) / 2.0
        rows[g, 0], rows[g, 1], rows[g, 2] = _row(m0, m1, m2, m3, x[g])
    for g in range(3, n - 1):
        m0 = (x[g - 3] + x[g - 2]) / 2.0
        m1 = (x[g - 2] + x[g - 1]) / 2.0
        m2 = (x[g - 1] + x[g]) / 2.0
        m3 = (x[g] + x[g + 1]) / 2.0
        k = _piece(m0, m1, m2, m3)
        for j in range(7):
            pieces[g, j] = k[j]
    return rows, pieces


def _segments_impl(
    x: FloatArray,
    y: FloatArray,
    rows: FloatArray,
    pieces: FloatArray,
    starts: IntArray,
    ends: IntArray,
    fs: float,
    n_samples: int,
    nperseg: int,
    step: int,
    nseg: int,
    win: FloatArray,
    out: FloatArray,
    nthreads: int,
) -> None:  # pragma: no cover - compiled; covered through band_powers
    """Fill ``out[w, seg, :nperseg]`` with window ``w``'s Hann-weighted Welch segments.

    The zero padding beyond ``nperseg`` is the caller's: the buffer is reused, and its
    padding written once.

    Windows are split into ``nthreads`` contiguous blocks, one per thread, so that each
    window can reuse its predecessor's sweeps (see :func:`_solve_window`).

    Per window: solve the spline's tridiagonal collocation system (Thomas algorithm),
    evaluate the spline on the grid ``x0 + k/fs`` (``k < n_samples``; past the last beat
    the last interval's value), remove the mean and cut the segments. Rows and pieces
    whose knots all lie between beats come from the precomputed tables.
    """
    h = 1.0 / fs
    nwin = len(starts)
    nblocks = max(1, min(nwin, nthreads))
    for blk in numba.prange(nblocks):
        lo = blk * nwin // nblocks
        hi = (blk + 1) * nwin // nblocks
        # The previous window of this block: its sweep states by row, to reuse.
        ps = -1
        pn = 0
        pcp = np.empty(0)
        pdp = np.empty(0)
        pc = np.empty(0)
        for w in range(lo, hi):
            s = starts[w]
            n = ends[w] - s
            cp, dp, c = _solve_window(x, y, rows, s, n, ps, pn, pcp, pdp, pc)
            _grid_segments(x, y, pieces, s, n, c, h, n_samples, nperseg, step, nseg, win, out, w)
            ps, pn, pcp, pdp, pc = s, n, cp, dp, c


@numba.njit(cache=True)
def _solve_window(
    x: FloatArray,
    y: FloatArray,
    rows: FloatArray,
    s: int,
    n: int,
    ps: int,
    pn: int,
    pcp: FloatArray,
    pdp: FloatArray,
    pc: FloatArray,
) -> tuple[FloatArray, FloatArray, FloatArray]:  # pragma: no cover - compiled
    """B-spline coefficients of the window ``x[s:s+n]`` (Thomas algorithm).

    The sweeps of overlapping windows share rows: where this window's forward state at a
    row equals the previous window's (``ps``, ``pn``, ``pcp``, ``pdp``, ``pc``) bit for
    bit, and the following rows are interior rows of both, the previous window's values
    are the values this window would compute (same operations on the same numbers) and
    are copied. The result is exactly that of a full sweep.
    """
    cp = np.empty(n)
    dp = np.empty(n)
    c = np.empty(n)
    i = 0
    while i < n:
        if 3 <= i <= n - 4 and pn > 0:
            j = s + i - ps  # the same row in the previous window
            if 4 <= j <= pn - 4 and cp[i - 1] == pcp[j - 1] and dp[i - 1] == pdp[j - 1]:
                while i <= n - 4 and j <= pn - 4:
                    cp[i] = pcp[j]
                    dp[i] = pdp[j]
                    i += 1
                    j += 1
                continue
        if i == 0 or i == n - 1:
            a = 0.0
            b = 1.0
            cc = 0.0
        elif 3 <= i <= n - 4:
            a = rows[s + i, 0]
            b = rows[s + i, 1]
            cc = rows[s + i, 2]
        else:
            a, b, cc = _row(
                _knot(x, s, n, i),
                _knot(x, s, n, i + 1),
                _knot(x, s, n, i + 2),
                _knot(x, s, n, i + 3),
                x[s + i],
            )
        d = y[s + i]
        if i == 0:
            cp[0] = cc / b
            dp[0] = d / b
        else:
            inv = 1.0 / (b - a * cp[i - 1])
            cp[i] = cc * inv
            dp[i] = (d - a * dp[i - 1]) * inv
        i += 1
    c[n - 1] = dp[n - 1]
    for i in range(n - 2, -1, -1):
        j = s + i - ps
        if (
            pn > 0
            and 0 <= j <= pn - 2
            and c[i + 1] == pc[j + 1]
            and cp[i] == pcp[j]
            and dp[i] == pdp[j]
        ):
            c[i] = pc[j]
        else:
            c[i] = dp[i] - cp[i] * c[i + 1]
    return cp, dp, c


@numba.njit(cache=True)
def _grid_segments(
    x: FloatArray,
    y: FloatArray,
    pieces: FloatArray,
    s: int,
    n: int,
    c: FloatArray,
    h: float,
    n_samples: int,
    nperseg: int,
    step: int,
    nseg: int,
    win: FloatArray,
    out: FloatArray,
    w: int,
) -> None:  # pragma: no cover - compiled
    """Evaluate window ``w``'s spline on its grid and cut its Hann-weighted segments."""
    # grid values, piece by piece (piece p spans knots p .. p+1, p = 2 .. n-1; the
    # last piece includes the last beat), then the last value past the last beat
    vals = np.empty(n_samples)
    x0 = x[s]
    xl = x[s + n - 1]
    total = 0.0
    k = 0
    for piece in range(2, n):
        tl = _knot(x, s, n, piece)
        tr = _knot(x, s, n, piece + 1)
        if 4 <= piece <= n - 3:
            g = s + piece
            k00 = pieces[g, 0]
            k01 = pieces[g, 1]
            k10 = pieces[g, 2]
            k11 = pieces[g, 3]
            k20 = pieces[g, 4]
            k21 = pieces[g, 5]
            k22 = pieces[g, 6]
        else:
            k00, k01, k10, k11, k20, k21, k22 = _piece(
                _knot(x, s, n, piece - 1), tl, tr, _knot(x, s, n, piece + 2)
            )
        c0 = c[piece - 2]
        c1 = c[piece - 1]
        c2 = c[piece]
        p0 = k00 * c0 + k01 * c1
        p1 = k10 * c0 + k11 * c1
        p2 = k20 * c0 + k21 * c1 + k22 * c2
        last = piece == n - 1
        while k < n_samples:
            u = x0 + k * h
            if (u > xl) if last else (u >= tr):
                break
            dd = u - tl
            v = p0 + dd * (p1 + dd * p2)
            vals[k] = v
            total += v
            k += 1
    ylast = y[s + n - 1]
    while k < n_samples:
        vals[k] = ylast
        total += ylast
        k += 1
    mean = total / n_samples
    for sg in range(nseg):
        base = sg * step
        for m in range(nperseg):
            out[w, sg, m] = (vals[base + m] - mean) * win[m]


def _band_sums_impl(
    spec: npt.NDArray[np.complex128],
    w_lf: FloatArray,
    w_hf: FloatArray,
    out: FloatArray,
) -> None:  # pragma: no cover - compiled; covered through band_powers
    """``out[w] = sum_j W[j] * mean_seg |spec[w, seg, j]|^2`` for both bands."""
    nseg = spec.shape[1]
    for w in numba.prange(spec.shape[0]):
        lf = 0.0
        hf = 0.0
        for j in range(spec.shape[2]):
            p = 0.0
            for sg in range(nseg):
                z = spec[w, sg, j]
                p += z.real * z.real + z.imag * z.imag
            p /= nseg
            lf += w_lf[j] * p
            hf += w_hf[j] * p
        out[w, 0] = lf
        out[w, 1] = hf


def interpolate_window_exact(x: FloatArray, y: FloatArray, fs: float) -> FloatArray:
    """One window's grid values straight from scipy: the reference the fast path must equal."""
    grid = np.arange(x[0], x[-1] + 1.0 / fs, 1.0 / fs)
    spline = scipy.interpolate.make_interp_spline(x, y, k=2)
    out = spline(grid)
    out[grid > x[-1]] = y[-1]
    out[grid < x[0]] = y[0]
    return np.asarray(out, dtype=np.float64)


# Each kernel is compiled twice from the same source: parallel over windows for batches,
# serial for the one window a streaming caller passes (waking a thread pool per call
# costs milliseconds). Serial and parallel builds compute each window identically.
_segments_parallel = numba.njit(parallel=True, cache=True)(_segments_impl)
_segments_serial = numba.njit(cache=True)(_segments_impl)
_band_sums_parallel = numba.njit(parallel=True, cache=True)(_band_sums_impl)
_band_sums_serial = numba.njit(cache=True)(_band_sums_impl)

#: Fewer windows than this go through the serial kernels.
_PARALLEL_MIN_WINDOWS = 32

# --------------------------------------------------------------------------- Welch


@functools.lru_cache(maxsize=64)
def _hann(nperseg: int) -> FloatArray:
    win = np.asarray(scipy.signal.get_window("hann", nperseg), dtype=np.float64)
    win.flags.writeable = False
    return win


def _welch_layout(n_samples: int, fs: float) -> tuple[int, int, int]:
    """(nperseg, step, nseg) exactly as neurokit2's ``signal_psd`` picks them."""
    min_frequency = 2 * fs / (n_samples / 2)
    nperseg = int(2 / min_frequency * fs)
    if nperseg > n_samples / 2:
        nperseg = int(n_samples / 2)
    noverlap = nperseg // 2
    step = nperseg - noverlap
    nseg = (n_samples - noverlap) // step
    return nperseg, step, nseg


@functools.lru_cache(maxsize=256)
def _band_weights(
    n_samples: int, fs: float, config: FrequencyConfig
) -> tuple[npt.NDArray[np.float64], int]:
    """Trapezoid weights (bins x 2 bands) over the one-sided PSD, and how many bins matter."""
    nperseg, _, _ = _welch_layout(n_samples, fs)
    nfft = 2 * nperseg
    freqs = scipy.fft.rfftfreq(nfft, 1.0 / fs)
    min_frequency = 2 * fs / (n_samples / 2)
    bands = (config.lf_band_hz, config.hf_band_hz)
    top = 0
    weights = np.zeros((len(freqs), len(bands)))
    for b, (lo, hi) in enumerate(bands):
        sel = np.flatnonzero(
            (freqs >= lo)
            & (freqs < hi)
            & (freqs >= min_frequency)
            & (freqs <= config.max_frequency_hz)
        )
        if len(sel) >= 2:
            df = np.diff(freqs[sel])
            weights[sel[:-1], b] += df / 2.0
            weights[sel[1:], b] += df / 2.0
        if len(sel):
            top = max(top, int(sel[-1]) + 1)
    return weights[:top], top


@functools.lru_cache(maxsize=256)
def _smooth_weights(
    n_samples: int, fs: float, config: FrequencyConfig
) -> tuple[FloatArray, FloatArray, int]:
    """Weights that give the band powers from a periodogram of any smooth FFT length.

    The trapezoid sum of a segment's periodogram over the band's bins ``f_k = k fs/nfft``
    (``nfft = 2 nperseg``, the grid neurokit2 uses) is a quadratic form in the segment
    with a Toeplitz kernel, ``sum_d q[d] r[d]``, where ``r`` is the segment's
    autocorrelation and ``q[d] = sum_k w_k cos(2 pi k d / nfft)``. Any FFT length
    ``L >= 2 nperseg - 1`` gives that autocorrelation without wrap-around, so with
    ``W = DFT_L(q) / L`` the band power is ``sum_j W[j] |X_L[j]|^2``: the same number,
    from one FFT of a length with small prime factors (``nfft`` itself is often twice a
    prime, where an FFT is several times slower).

    Returns
    -------
    w_lf, w_hf, length:
        Weights over the ``length // 2 + 1`` rfft bins, one-sided doubling and density
        scale folded in (cached per grid length; read-only).
    """
    nperseg, _, _ = _welch_layout(n_samples, fs)
    nfft = 2 * nperseg
    length = scipy.fft.next_fast_len(nfft - 1, real=True)
    bin_w, top = _band_weights(n_samples, fs, config)
    win = scipy.signal.get_window("hann", nperseg)
    scale = 1.0 / (fs * float(np.sum(win * win)))
    k = np.arange(top)
    onesided = np.where(k == 0, 1.0, 2.0)  # Nyquist (k = nperseg) is never below top
    d = np.arange(nperseg)
    cosines = np.cos(2.0 * np.pi * np.outer(d, k) / nfft)  # (lags, bins)
    q = cosines @ (bin_w * (onesided * scale)[:, None])  # (lags, 2)
    qc = np.zeros((length, 2))
    qc[:nperseg] = q
    qc[length - nperseg + 1 :] = q[1:][::-1]
    qhat = np.real(scipy.fft.rfft(qc, axis=0)) / length
    j = np.arange(length // 2 + 1)
    fold = np.where((j == 0) | ((length % 2 == 0) & (j == length // 2)), 1.0, 2.0)
    weights = qhat * fold[:, None]
    w_lf = np.ascontiguousarray(weights[:, 0])
    w_hf = np.ascontiguousarray(weights[:, 1])
    w_lf.flags.writeable = False
    w_hf.flags.writeable = False
    return w_lf, w_hf, length


def band_powers(
    x: FloatArray,
    y: FloatArray,
    starts: IntArray,
    ends: IntArray,
    config: FrequencyConfig | None = None,
    *,
    progress: Callable[[float], None] | None = None,
) -> BandPowers:
    """LF and HF power of the windows ``[starts[w], ends[w])`` of one recording.

    Parameters
    ----------
    x:
        Beat times in seconds (strictly increasing).
    y:
        NN intervals in ms, ``y[i]`` ending at ``x[i]``.
    starts, ends:
        Beat index ranges of the windows; windows with fewer than 3 beats get NaN.
    config:
        Method parameters; defaults match neurokit2 with ``interpolation_rate=4``.
    progress:
        Called with the fraction of windows done after each chunk.

    Notes
    -----
    Each window is computed from its own beats only, in the same order of operations
    whether it is one window of many or alone, so a streaming caller that passes one
    window gets bit-for-bit the numbers the batch gets.
    """
    cfg = config or FrequencyConfig()
    fs = cfg.interpolation_rate_hz
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    nw = len(starts)
    out = np.full((nw, 2), np.nan)
    ok = np.flatnonzero(np.asarray(ends) - np.asarray(starts) >= 3)
    scratch: FloatArray | None = None
    if len(ok):
        rows_t, pieces_t = _global_tables(x)
        lengths = grid_length(x[starts[ok]], x[ends[ok] - 1], fs)
        done = 0
        for n_samples in np.unique(lengths):
            n_s = int(n_samples)
            sel = ok[lengths == n_s]
            nperseg, step, nseg = _welch_layout(n_s, fs)
            if nperseg < 2 or nseg < 1 or _band_weights(n_s, fs, cfg)[1] == 0:
                done += len(sel)
                continue
            w_lf, w_hf, length = _smooth_weights(n_s, fs, cfg)
            win = _hann(nperseg)
            per_chunk = max(1, _CHUNK_SAMPLES // (nseg * length))
            # One scratch buffer for the whole call; per layout its zero padding is
            # written once, and the kernel fills the segments' samples of every chunk.
            nrows = min(per_chunk, len(sel))
            need = nrows * nseg * length
            if scratch is None or len(scratch) < need:
                scratch = np.empty(max(need, _CHUNK_SAMPLES))
            buf_all = scratch[:need].reshape(nrows, nseg, length)
            buf_all[:, :, nperseg:] = 0.0
            for c0 in range(0, len(sel), per_chunk):
                rows = sel[c0 : c0 + per_chunk]
                buf = buf_all[: len(rows)]
                parallel = len(rows) >= _PARALLEL_MIN_WINDOWS
                segments = _segments_parallel if parallel else _segments_serial
                segments(
                    x,
                    y,
                    rows_t,
                    pieces_t,
                    np.ascontiguousarray(starts[rows], dtype=np.int64),
                    np.ascontiguousarray(ends[rows], dtype=np.int64),
                    fs,
                    n_s,
                    nperseg,
                    step,
                    nseg,
                    win,
                    buf,
                    numba.get_num_threads() if parallel else 1,
                )
                spec = scipy.fft.rfft(buf, axis=-1, workers=-1)
                sums = np.empty((len(rows), 2))
                (_band_sums_parallel if parallel else _band_sums_serial)(spec, w_lf, w_hf, sums)
                out[rows] = sums
                done += len(rows)
                if progress is not None:
                    progress(done / len(ok))
    out[out == 0.0] = np.nan
    return BandPowers(lf_ms2=out[:, 0], hf_ms2=out[:, 1])


def band_powers_reference(
    x: FloatArray, y: FloatArray, config: FrequencyConfig | None = None
) -> tuple[float, float]:
    """One window through scipy's own spline and Welch: the slow reference for tests."""
    cfg = config or FrequencyConfig()
    fs = cfg.interpolation_rate_hz
    values = interpolate_window_exact(x, y, fs)
    values = values - np.mean(values)
    n_s = len(values)
    nperseg, _, _ = _welch_layout(n_s, fs)
    freqs, psd = scipy.signal.welch(
        values,
        fs=fs,
        window="hann",
        nperseg=nperseg,
        nfft=2 * nperseg,
        detrend=False,
        scaling="density",
        average="mean",
    )
    weights, top = _band_weights(n_s, fs, cfg)
    del freqs
    lf = float(np.sum(psd[:top] * weights[:, 0]))
    hf = float(np.sum(psd[:top] * weights[:, 1]))
    return (lf if lf != 0.0 else float("nan")), (hf if hf != 0.0 else float("nan"))


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels now.

    A long-running caller (the agent) calls this at start, so that the first full window
    does not stall the event loop for the compilation.
    """
    x = np.cumsum(np.full(400, 0.8))
    y = np.full(400, 800.0) + 10.0 * np.sin(np.arange(400))
    band_powers(x, y, np.zeros(1, dtype=np.intp), np.array([400], dtype=np.intp))
    many = np.arange(0, 40, dtype=np.intp)
    band_powers(x, y, many, many + 300)
