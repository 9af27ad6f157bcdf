"""Artifact detection: hrvstream vs neurokit2 (Kubios method, Lipponen & Tarvainen 2019).

Prints a table with, for each implementation:

* sensitivity and false-positive rate on MIT-BIH Arrhythmia record 100 (33 atrial and 1
  ventricular premature beats among 2,273 beats). A non-normal beat counts as detected if
  the interval ending at it or the next one is flagged; false positives are flagged
  intervals ending at a normal beat, excluding the two intervals around each non-normal
  beat;
* the time to label the 22.5 h NSR2DB record nsr001 (106,459 intervals), best of a few runs.

neurokit2 runs ``signal_fixpeaks(..., method="kubios", iterative=False)``: with
``iterative=True`` the returned indices refer to the peaks corrected by an earlier pass and
cannot be mapped back to the input beats (its first pass is the ``iterative=False`` one);
its time is shown for reference. The streaming corrector's cost per beat is shown too.

Usage::

    python benchmarks/artifacts_mitdb.py [RECORDINGS_DIR]

``RECORDINGS_DIR`` defaults to $HRVSTREAM_RECORDINGS or ``../shared/data/recordings``.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from hrvstream.hrv.artifacts import (
    Artifact,
    StreamingArtifactCorrector,
    detect_artifacts,
)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
BEAT_SYMBOLS = set("NLRBAaJSVrFejnE/fQ")


def recordings_dir(argv: list[str]) -> Path:
    if len(argv) > 1:
        return Path(argv[1])
    env = os.environ.get("HRVSTREAM_RECORDINGS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "recordings"


def mitdb_100(root: Path) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.str_]]:
    """Sample index (360 Hz) and symbol of every beat annotation (non-beat ones dropped)."""
    rows = (root / "mitdb_100" / "100_annotations.csv").read_text().splitlines()[1:]
    fields = [r.split(",") for r in rows]
    beats = [(int(f[0]), f[2]) for f in fields if f[2] in BEAT_SYMBOLS]
    return np.array([b[0] for b in beats]), np.array([b[1] for b in beats])


def nsr001_seconds(root: Path) -> FloatArray:
    """RR intervals (s) of nsr001; line 1 of the file is the first beat's offset."""
    values = np.loadtxt(root / "physionet_nsr2db" / "nsr001_rr_secs.txt")
    return np.asarray(values[1:], dtype=np.float64)


def score(flagged: BoolArray, symbols: npt.NDArray[np.str_]) -> tuple[float, float]:
    """Sensitivity and false-positive rate; ``flagged[i]`` is interval i (ends at beat i+1)."""
    n = flagged.size
    abnormal = np.flatnonzero(symbols != "N")
    abnormal = abnormal[(abnormal >= 1) & (abnormal <= n)]
    detected = flagged[abnormal - 1] | (flagged[np.minimum(abnormal, n - 1)] & (abnormal < n))
    excluded = np.zeros(n, dtype=bool)
    excluded[abnormal - 1] = True
    excluded[abnormal[abnormal < n]] = True
    normal = (symbols[1:] == "N") & ~excluded
    return float(detected.mean()), float(flagged[normal].mean())


def neurokit_flags(
    peaks: npt.NDArray[np.int64], sampling_rate: int, iterative: bool = False
) -> BoolArray:
    """Intervals flagged by neurokit2; its artifact index j (peak j) is our interval j-1."""
    import neurokit2 as nk

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info, _ = nk.signal_fixpeaks(
            peaks, sampling_rate=sampling_rate, method="kubios", iterative=iterative, show=False
        )
    n = peaks.size - 1
    flagged = np.zeros(n, dtype=bool)
    for key in ("ectopic", "missed", "extra", "longshort"):
        idx = np.asarray(info[key], dtype=np.int64) - 1
        flagged[idx[(idx >= 0) & (idx < n)]] = True
    return flagged


def best_time(f: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def stream_cost_us(rr_ms: FloatArray, t_s: FloatArray) -> float:
    corrector = StreamingArtifactCorrector()
    t0 = time.perf_counter()
    for r, t in zip(rr_ms.tolist(), t_s.tolist(), strict=True):
        corrector.push(r, t)
    corrector.close()
    return (time.perf_counter() - t0) / rr_ms.size * 1e6


def main(argv: list[str]) -> int:
    root = recordings_dir(argv)
    samples, symbols = mitdb_100(root)
    rr_mitdb = np.diff(samples) / 0.36
    n_abnormal = int(np.count_nonzero(symbols != "N"))

    rr_s = nsr001_seconds(root)
    rr_nsr = rr_s * 1000.0
    peaks_nsr = np.concatenate(([0], np.rint(np.cumsum(rr_s) * 128.0).astype(np.int64)))

    ours = detect_artifacts(rr_mitdb) != Artifact.NONE
    rows: list[tuple[str, float, float, float]] = []
    sens, fpr = score(ours, symbols)
    detect_artifacts(rr_nsr)  # warm-up
    rows.append(("hrvstream", sens, fpr, best_time(lambda: detect_artifacts(rr_nsr), 5)))
    try:
        sens, fpr = score(neurokit_flags(samples, 360), symbols)
        t_nk = best_time(lambda: neurokit_flags(peaks_nsr, 128), 2)
        rows.append(("neurokit2 (iterative=False)", sens, fpr, t_nk))
        t_nk_it = best_time(lambda: neurokit_flags(peaks_nsr, 128, iterative=True), 1)
        rows.append(("neurokit2 (iterative=True)", float("nan"), float("nan"), t_nk_it))
    except ImportError:
        print("neurokit2 is not installed: its rows are omitted", file=sys.stderr)

    print(f"MIT-BIH 100: {samples.size} beats, {n_abnormal} non-normal (A/V)")
    print(f"nsr001: {rr_nsr.size} intervals ({rr_s.sum() / 3600:.1f} h)")
    print()
    print(f"{'implementation':<28} {'sensitivity':>11} {'FPR':>8} {'label nsr001':>13}")
    for name, sens, fpr, t in rows:
        s = "n/a" if np.isnan(sens) else f"{sens:.4f}"
        f = "n/a" if np.isnan(fpr) else f"{100 * fpr:.2f}%"
        print(f"{name:<28} {s:>11} {f:>8} {1000 * t:>10.1f} ms")
    print()
    t_nsr = np.cumsum(rr_s)
    print(f"StreamingArtifactCorrector: {stream_cost_us(rr_nsr, t_nsr):.0f} us per beat (nsr001)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
