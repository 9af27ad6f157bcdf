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

Speed comes from doing every window of a recording in one pass: the spline of a window
equals the spline of the whole recording except within a few knots of the window's two
ends (the influence of a boundary condition on a quadratic spline decays geometrically,
by about 0.17 per knot for regular beats), so one banded solve over the whole recording
plus two small batched solves per window (:data:`EDGE_KNOTS` coefficients at each end,
enough for the decay to reach float64 round-off) give every window's exact spline. The
grid values of all windows are evaluated as piecewise polynomials in one flat array, and
the Welch segments of all windows of the same length go through one batched real FFT.

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

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.fft
import scipy.interpolate
import scipy.signal

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

#: Spline coefficients re-solved exactly at each end of a window; beyond them the
#: whole-recording spline is used. 0.17**32 is far below float64 round-off; irregular
#: beats decay more slowly, and tests compare against a per-window exact solve.
EDGE_KNOTS = 32

#: Windows are processed in chunks of this many grid samples to bound memory.
_CHUNK_SAMPLES = 4_000_000


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


# --------------------------------------------------------------------------- spline


def _knots(x: FloatArray, mid: FloatArray, s: IntArray, e: IntArray, k: IntArray) -> FloatArray:
    """Knot ``k`` of the not-a-knot quadratic spline of beats ``x[s:e]`` (vectorised).

    Knots 0..2 are ``x[s]``, knots ``n..n+2`` are ``x[e-1]`` and knot ``k`` in between is
    the midpoint ``mid[s + k - 2]`` of beats ``s+k-2`` and ``s+k-1``.
    """
    n = e - s
    inner = mid[np.clip(s + k - 2, 0, len(mid) - 1)]
    return np.where(k <= 2, x[s], np.where(k >= n, x[e - 1], inner))


def _rows(
    x: FloatArray, y: FloatArray, mid: FloatArray, s: IntArray, e: IntArray, i: IntArray
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Collocation row ``i`` of each window's spline: ``a c[i-1] + b c[i] + c c[i+1] = d``."""
    n = e - s
    u = x[np.clip(s + i, 0, len(x) - 1)]
    edge = (i <= 0) | (i >= n - 1)
    ii = np.where(edge, 1, i)
    tl1 = _knots(x, mid, s, e, ii)
    tl = _knots(x, mid, s, e, ii + 1)
    tr = _knots(x, mid, s, e, ii + 2)
    tr2 = _knots(x, mid, s, e, ii + 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        b1a = (tr - u) / (tr - tl)
        b1b = (u - tl) / (tr - tl)
        a = (tr - u) / (tr - tl1) * b1a
        b = (u - tl1) / (tr - tl1) * b1a + (tr2 - u) / (tr2 - tl) * b1b
        c = (u - tl) / (tr2 - tl) * b1b
    a = np.where(edge, 0.0, a)
    b = np.where(edge, 1.0, b)
    c = np.where(edge, 0.0, c)
    d = y[np.clip(s + i, 0, len(y) - 1)]
    return a, b, c, d


def _thomas(a: FloatArray, b: FloatArray, c: FloatArray, d: FloatArray) -> FloatArray:
    """Solve many tridiagonal systems at once; arrays are (systems, size)."""
    m = a.shape[1]
    cp = np.empty_like(c)
    dp = np.empty_like(d)
    cp[:, 0] = c[:, 0] / b[:, 0]
    dp[:, 0] = d[:, 0] / b[:, 0]
    for i in range(1, m):
        den = b[:, i] - a[:, i] * cp[:, i - 1]
        cp[:, i] = c[:, i] / den
        dp[:, i] = (d[:, i] - a[:, i] * dp[:, i - 1]) / den
    out = np.empty_like(d)
    out[:, m - 1] = dp[:, m - 1]
    for i in range(m - 2, -1, -1):
        out[:, i] = dp[:, i] - cp[:, i] * out[:, i + 1]
    return out


def _solve_block(
    x: FloatArray,
    y: FloatArray,
    mid: FloatArray,
    glob: FloatArray | None,
    s: IntArray,
    e: IntArray,
    i0: IntArray,
    m: int,
) -> FloatArray:
    """Coefficients ``i0 .. i0+m-1`` of each window's spline.

    Coefficients just outside the block (``i0 - 1`` and ``i0 + m``), where they exist, are
    taken from the whole-recording spline ``glob``.
    """
    i = i0[:, None] + np.arange(m)[None, :]
    ss, ee = s[:, None], e[:, None]
    a, b, c, d = _rows(x, y, mid, ss, ee, i)
    if glob is not None:
        left = i0 - 1
        has_left = left >= 0
        d[:, 0] -= np.where(has_left, a[:, 0] * glob[np.clip(s + left, 0, None)], 0.0)
        right = i0 + m
        has_right = right <= (e - s - 1)
        d[:, -1] -= np.where(has_right, c[:, -1] * glob[np.clip(s + right, 0, len(glob) - 1)], 0.0)
    a[:, 0] = 0.0
    c[:, -1] = 0.0
    return _thomas(a, b, c, d)


def window_spline_coefficients(
    x: FloatArray, y: FloatArray, starts: IntArray, ends: IntArray
) -> tuple[FloatArray, IntArray]:
    """B-spline coefficients of every window's not-a-knot quadratic spline, concatenated.

    Parameters
    ----------
    x, y:
        Beat times (s, strictly increasing) and NN intervals (ms) of the whole recording.
    starts, ends:
        Window ``w`` holds beats ``starts[w]:ends[w]``; every window needs at least 3.

    Returns
    -------
    coef, offsets:
        Window ``w``'s coefficients are ``coef[offsets[w]:offsets[w] + n_w]``.
    """
    n = ends - starts
    if np.any(n < 3):
        raise ValueError("every window needs at least 3 beats for a quadratic spline")
    mid = (x[1:] + x[:-1]) / 2.0
    offsets = np.zeros(len(n), dtype=np.intp)
    np.cumsum(n[:-1], out=offsets[1:])
    total = int(n.sum())
    w_of = np.repeat(np.arange(len(n)), n)
    local = np.arange(total) - offsets[w_of]
    glob: FloatArray = scipy.interpolate.make_interp_spline(x, y, k=2).c
    big = n >= 2 * EDGE_KNOTS + 2
    coef = np.empty(total)
    if big.any():
        coef[:] = glob[starts[w_of] + local]
        sb, eb = starts[big], ends[big]
        k = EDGE_KNOTS
        left = _solve_block(x, y, mid, glob, sb, eb, np.zeros(len(sb), np.intp), k)
        right = _solve_block(x, y, mid, glob, sb, eb, (eb - sb) - k, k)
        ob = offsets[big]
        coef[ob[:, None] + np.arange(k)[None, :]] = left
        coef[(ob + (eb - sb) - k)[:, None] + np.arange(k)[None, :]] = right
    for size in np.unique(n[~big]):
        sel = np.flatnonzero((n == size) & ~big)
        sol = _solve_block(
            x, y, mid, None, starts[sel], ends[sel], np.zeros(len(sel), np.intp), int(size)
        )
        coef[offsets[sel][:, None] + np.arange(size)[None, :]] = sol
    return coef, offsets


def interpolate_windows(
    x: FloatArray, y: FloatArray, starts: IntArray, ends: IntArray, fs: float
) -> tuple[FloatArray, IntArray, IntArray]:
    """Every window's tachogram on its regular grid, concatenated.

    Returns
    -------
    values, offsets, lengths:
        Window ``w``'s grid values are ``values[offsets[w]:offsets[w] + lengths[w]]``.
    """
    n = ends - starts
    coef, coff = window_spline_coefficients(x, y, starts, ends)
    mid = (x[1:] + x[:-1]) / 2.0
    step = 1.0 / fs
    x0 = x[starts]
    xl = x[ends - 1]
    lengths = grid_length(x0, xl, fs)

    # Pieces per window: intervals l = 2..n-1 of the knot vector, then one "fill" piece
    # for grid points past the last beat.
    npieces = n - 1
    poff = np.zeros(len(n), dtype=np.intp)
    np.cumsum(npieces[:-1], out=poff[1:])
    ptotal = int(npieces.sum())
    pw = np.repeat(np.arange(len(n)), npieces)
    j = np.arange(ptotal) - poff[pw]
    s, e = starts[pw], ends[pw]
    is_fill = j == npieces[pw] - 1
    li = np.where(is_fill, 2, j + 2)  # knot interval index (fill pieces: any valid one)
    tl1 = _knots(x, mid, s, e, li - 1)
    tl = _knots(x, mid, s, e, li)
    tr = _knots(x, mid, s, e, li + 1)
    tr2 = _knots(x, mid, s, e, li + 2)
    cbase = coff[pw] + li - 2
    c0 = coef[cbase]
    c1 = coef[cbase + 1]
    c2 = coef[np.minimum(cbase + 2, len(coef) - 1)]
    h = tr - tl
    g = tl - tl1
    q = tr2 - tl
    with np.errstate(divide="ignore", invalid="ignore"):
        d1 = (tr - tl1) * h
        d2 = q * h
        p0 = c0 * h * h / d1 + c1 * g * h / d1
        p1 = -2.0 * c0 * h / d1 + c1 * ((h - g) / d1 + q / d2)
        p2 = c0 / d1 - c1 * (1.0 / d1 + 1.0 / d2) + c2 / d2
    p0 = np.where(is_fill, y[e - 1], p0)
    p1 = np.where(is_fill, 0.0, p1)
    p2 = np.where(is_fill, 0.0, p2)
    tl = np.where(is_fill, xl[pw], tl)

    # First grid index of each piece: the first k with x0 + k*step >= knot (the fill piece
    # starts at the first k with x0 + k*step > last beat).
    first = np.ceil((tl - x0[pw]) / step)
    first = np.where(is_fill, np.floor((xl[pw] - x0[pw]) / step) + 1, first)
    first = np.where(j == 0, 0.0, first)
    first_i = np.minimum(first.astype(np.intp), lengths[pw])
    nxt = np.empty_like(first_i)
    nxt[:-1] = first_i[1:]
    last_piece = np.zeros(ptotal, dtype=bool)
    last_piece[poff + npieces - 1] = True
    nxt[last_piece] = lengths
    counts = np.maximum(nxt - first_i, 0)
    piece = np.repeat(np.arange(ptotal), counts)
    goff = np.zeros(len(n), dtype=np.intp)
    np.cumsum(lengths[:-1], out=goff[1:])
    gw = pw[piece]
    k = np.arange(len(piece)) - goff[gw]
    u = x0[gw] + k * step
    dd = u - tl[piece]
    values = p0[piece] + dd * (p1[piece] + dd * p2[piece])
    return values, goff, lengths


def interpolate_window_exact(x: FloatArray, y: FloatArray, fs: float) -> FloatArray:
    """One window's grid values straight from scipy: the reference the fast path must equal."""
    grid = np.arange(x[0], x[-1] + 1.0 / fs, 1.0 / fs)
    spline = scipy.interpolate.make_interp_spline(x, y, k=2)
    out = spline(grid)
    out[grid > x[-1]] = y[-1]
    out[grid < x[0]] = y[0]
    return np.asarray(out, dtype=np.float64)


# --------------------------------------------------------------------------- Welch


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


def welch_band_powers(
    values: FloatArray,
    offsets: IntArray,
    lengths: IntArray,
    fs: float,
    config: FrequencyConfig,
) -> BandPowers:
    """LF and HF power of many interpolated windows (see the module docstring)."""
    nw = len(lengths)
    out = np.full((nw, 2), np.nan)
    for n_samples in np.unique(lengths):
        n_s = int(n_samples)
        sel = np.flatnonzero(lengths == n_s)
        nperseg, step, nseg = _welch_layout(n_s, fs)
        if nperseg < 2 or nseg < 1:
            continue
        win = scipy.signal.get_window("hann", nperseg)
        scale = 1.0 / (fs * float(np.sum(win * win)))
        weights, top = _band_weights(n_s, fs, config)
        if top == 0:
            continue
        nfft = 2 * nperseg
        per_chunk = max(1, _CHUNK_SAMPLES // (nseg * nfft))
        seg_idx = (np.arange(nseg) * step)[:, None] + np.arange(nperseg)[None, :]
        for c0 in range(0, len(sel), per_chunk):
            rows = sel[c0 : c0 + per_chunk]
            sig = values[offsets[rows][:, None] + np.arange(n_s)[None, :]]
            sig -= sig.mean(axis=1, keepdims=True)
            segs = sig[:, seg_idx] * win
            spec = scipy.fft.rfft(segs, n=nfft, axis=-1, workers=-1)[..., :top]
            psd = (spec.real**2 + spec.imag**2) * scale
            psd = psd.mean(axis=1)
            if top > 1:
                last = nfft // 2
                psd[:, 1 : min(top, last)] *= 2.0
            power = psd @ weights
            out[rows] = power
    out[out == 0.0] = np.nan
    return BandPowers(lf_ms2=out[:, 0], hf_ms2=out[:, 1])


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
    """
    cfg = config or FrequencyConfig()
    fs = cfg.interpolation_rate_hz
    nw = len(starts)
    lf = np.full(nw, np.nan)
    hf = np.full(nw, np.nan)
    ok = np.flatnonzero(ends - starts >= 3)
    if len(ok) == 0:
        return BandPowers(lf, hf)
    x0, xl = x[starts[ok]], x[ends[ok] - 1]
    lengths = grid_length(x0, xl, fs)
    # Chunk windows so the flat grid stays bounded in memory.
    chunk_of = (np.cumsum(lengths) - 1) // _CHUNK_SAMPLES
    done = 0
    for cid in np.unique(chunk_of):
        part = ok[chunk_of == cid]
        values, offs, lens = interpolate_windows(x, y, starts[part], ends[part], fs)
        bp = welch_band_powers(values, offs, lens, fs, cfg)
        lf[part] = bp.lf_ms2
        hf[part] = bp.hf_ms2
        done += len(part)
        if progress is not None:
            progress(done / len(ok))
    return BandPowers(lf, hf)


def band_powers_exact(
    x: FloatArray, y: FloatArray, config: FrequencyConfig | None = None
) -> tuple[float, float]:
    """LF and HF power of a single window through scipy's own spline (streaming path)."""
    cfg = config or FrequencyConfig()
    fs = cfg.interpolation_rate_hz
    if len(x) < 3:
        return float("nan"), float("nan")
    values = interpolate_window_exact(x, y, fs)
    bp = welch_band_powers(
        values, np.zeros(1, np.intp), np.array([len(values)], dtype=np.intp), fs, cfg
    )
    return float(bp.lf_ms2[0]), float(bp.hf_ms2[0])
