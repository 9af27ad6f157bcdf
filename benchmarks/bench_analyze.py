"""Speed and memory of the HRV engine on a 22.5-hour recording, against neurokit2.

Measures, in-process, on PhysioNet NSR2DB record nsr001 (106,459 intervals, 22.5 h):

1. :func:`hrvstream.hrv.engine.analyze` with 300-s windows: every 5 s (``--step 5``,
   frequency domain included), corrected and uncorrected (``correct=False``); a window at
   every beat (``--step beat``, corrected); and, as an extra, every 5 s uncorrected with the
   time domain only (``min_coverage_freq=inf`` skips the frequency domain). Each
   configuration is run once as a warm-up, then the median of 5 runs (3 for ``--step
   beat``) is reported. The one-time numba JIT compile / cache load is excluded from the
   median and reported separately as the first call of a fresh process.
2. neurokit2 computing the same windows in a loop (``nk.hrv_time`` and
   ``nk.hrv_frequency(..., interpolation_rate=4, normalize=False)`` per window, the method
   hrvstream reproduces): the mean time per window over a sample of windows spread evenly
   over the recording (those with >= 90 % coverage, where hrvstream computes the frequency
   domain too), scaled to the number of windows of the layout. Ratio = neurokit2 scaled /
   hrvstream median. The sampled windows' metrics are also compared with hrvstream's
   uncorrected ones (same input) as a check that the same windows are computed.
3. Memory of each configuration, in fresh spawned processes: the tracemalloc peak of one
   ``analyze`` call (numpy allocations; numba's own allocations are not traced), the
   increase of the process's peak RSS (``ru_maxrss``) over one call made after the
   kernels were loaded, and the process's peak RSS.
4. The streaming engine (:class:`hrvstream.hrv.engine.StreamingAnalyzer`) fed beat by beat:
   cost per beat with a window every 5 s (whole recording) and at every beat (first
   20,000 beats only: it computes a frequency domain per beat).

Nothing is asserted on time: this is a benchmark, not a test.

Usage::

    python benchmarks/bench_analyze.py [--quick] [--markdown PATH] [--recordings DIR]

``--quick`` (a smoke run for CI) samples 30 neurokit2 windows, does 1 run of each
configuration and streams fewer beats. ``--recordings`` defaults to
``$HRVSTREAM_RECORDINGS`` or ``../shared/data/recordings`` relative to the repository.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numba
import numpy as np
import numpy.typing as npt
import scipy
from machine import cpu_model, git_revision, proc_status_bytes, recordings_dir, version

import hrvstream.hrv.frequency
from hrvstream.hrv.engine import (
    Analysis,
    AnalysisConfig,
    StreamingAnalyzer,
    analyze,
    window_bounds,
    window_ends,
)
from hrvstream.recordings.model import RRSeries
from hrvstream.recordings.readers import read_recording

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
T = TypeVar("T")

RECORDING = Path("physionet_nsr2db") / "nsr001_rr_secs.txt"
WINDOW_S = 300.0
MIB = 1024.0 * 1024.0


# --------------------------------------------------------------------------- configurations


@dataclass(frozen=True)
class Case:
    """One batch configuration of :func:`analyze`."""

    label: str
    step_s: float | None
    correct: bool
    frequency: bool
    runs: int

    def config(self) -> AnalysisConfig:
        return AnalysisConfig(
            window_s=WINDOW_S,
            step_s=self.step_s,
            correct=self.correct,
            min_coverage_freq=0.9 if self.frequency else math.inf,
        )


def cases(quick: bool) -> list[Case]:
    full, beat = (1, 1) if quick else (5, 3)
    return [
        Case("`--step 5` (corrected)", 5.0, True, True, full),
        Case("`--step 5 --no-correct`", 5.0, False, True, full),
        Case("`--step beat` (corrected)", None, True, True, beat),
        Case("`--step 5 --no-correct`, time domain only", 5.0, False, False, full),
    ]


# --------------------------------------------------------------------------- helpers


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return proc_status_bytes("VmHWM") is not None


def rss_bytes() -> int:
    """Current resident set size (``VmRSS``; 0 where unknown)."""
    return proc_status_bytes("VmRSS") or 0


def peak_rss_bytes() -> int:
    """Peak RSS since the last :func:`reset_peak_rss` (``VmHWM``), else ``ru_maxrss``.

    ``ru_maxrss`` survives ``fork`` + ``exec``: a spawned child starts with its parent's
    peak, which is why ``VmHWM`` is preferred.
    """
    hwm = proc_status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024


def peak_increase(f: Callable[[], object]) -> int | None:
    """How far one call raises the RSS above its level before the call (None: unknown)."""
    before = rss_bytes()
    if not reset_peak_rss():
        f()
        return None
    f()
    return peak_rss_bytes() - before


def timed(f: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def numba_cache_stats() -> tuple[int, int]:
    """(cache hits, cache misses = compilations) of the frequency kernels in this process."""
    hits = misses = 0
    for obj in vars(hrvstream.hrv.frequency).values():
        stats = getattr(obj, "stats", None)
        if isinstance(obj, numba.core.dispatcher.Dispatcher) and stats is not None:
            hits += sum(stats.cache_hits.values())
            misses += sum(stats.cache_misses.values())
    return hits, misses


# --------------------------------------------------------------------------- fresh processes


@dataclass(frozen=True)
class Probe:
    """What a fresh process measures for one configuration."""

    first_s: float
    cache_hits: int
    cache_misses: int
    base_rss: int
    first_increase: int | None
    warm_increase: int | None
    tracemalloc_peak: int
    peak_rss: int


def probe(path: str, case: Case) -> Probe:
    """In a fresh process: time the first call (JIT / cache load) and measure memory.

    The RSS increases are of the first call (including loading or compiling the numba
    kernels) and of a second call; then a third call runs under tracemalloc.
    """
    series = read_recording(path)
    config = case.config()
    base = rss_bytes()
    peak = peak_rss_bytes()
    seconds = 0.0

    def first() -> None:
        nonlocal seconds
        seconds = timed(lambda: analyze(series, config))

    first_increase = peak_increase(first)
    hits, misses = numba_cache_stats()
    peak = max(peak, peak_rss_bytes())
    warm_increase = peak_increase(lambda: analyze(series, config))
    peak = max(peak, peak_rss_bytes())
    tracemalloc.start()
    analyze(series, config)
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = max(peak, peak_rss_bytes())
    return Probe(seconds, hits, misses, base, first_increase, warm_increase, traced, peak)


def in_fresh_process(f: Callable[[str, Case], T], path: str, case: Case) -> T:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(f, path, case).result()


# --------------------------------------------------------------------------- hrvstream timing


@dataclass(frozen=True)
class BatchResult:
    case: Case
    windows: int
    times: list[float]
    first: Probe
    analysis: Analysis

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def run_case(series: RRSeries, path: str, case: Case) -> BatchResult:
    first = in_fresh_process(probe, path, case)
    config = case.config()
    result = analyze(series, config)  # warm-up in this process
    times = [timed(lambda: analyze(series, config)) for _ in range(case.runs)]
    return BatchResult(case, len(result.windows), times, first, result)


# --------------------------------------------------------------------------- neurokit2


@dataclass(frozen=True)
class NeurokitSample:
    """Mean seconds per window of neurokit2 over a sample of windows."""

    layout: str
    n_windows: int
    sampled: int
    time_s: float
    freq_s: float
    max_rel_diff: dict[str, float]

    @property
    def both_s(self) -> float:
        return self.time_s + self.freq_s


#: hrvstream column -> neurokit2 column, for the agreement check.
COMPARED = {
    "mean_nn_ms": "HRV_MeanNN",
    "sdnn_ms": "HRV_SDNN",
    "rmssd_ms": "HRV_RMSSD",
    "lf_ms2": "HRV_LF",
    "hf_ms2": "HRV_HF",
}


def rel_diff(ours: float, theirs: float) -> float:
    """``|ours - theirs| / |theirs|``; 0 if both are NaN, inf if only one is."""
    if math.isnan(ours) or math.isnan(theirs):
        return 0.0 if math.isnan(ours) and math.isnan(theirs) else math.inf
    if ours == theirs:
        return 0.0
    return abs(ours - theirs) / abs(theirs) if theirs != 0.0 else math.inf


def sample_windows(coverage: FloatArray, n: int) -> IntArray:
    """``n`` window indices spread evenly over the windows with >= 90 % coverage."""
    eligible = np.flatnonzero(coverage >= 0.9)
    pick = np.unique(np.round(np.linspace(0, len(eligible) - 1, n)).astype(np.intp))
    return np.asarray(eligible[pick], dtype=np.intp)


def neurokit_sample(
    series: RRSeries, step_s: float | None, reference: Analysis, n: int
) -> NeurokitSample:
    """Time neurokit2 on ``n`` windows of a layout; compare with hrvstream (uncorrected)."""
    import neurokit2 as nk

    rr, t = series.rr_ms, series.t_s
    ends_t = window_ends(t, step_s)
    starts, ends = window_bounds(t, ends_t, WINDOW_S)
    table = reference.windows
    idx = sample_windows(np.asarray(table["coverage"], dtype=np.float64), n)
    t_time = t_freq = 0.0
    worst = dict.fromkeys(COMPARED, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = {
            "RRI": rr[starts[idx[0]] : ends[idx[0]]],
            "RRI_Time": t[starts[idx[0]] : ends[idx[0]]],
        }
        nk.hrv_time(first)  # warm-up (lazy imports)
        nk.hrv_frequency(first, interpolation_rate=4, normalize=False)
        for i in idx:
            data = {"RRI": rr[starts[i] : ends[i]], "RRI_Time": t[starts[i] : ends[i]]}
            t0 = time.perf_counter()
            td = nk.hrv_time(data)
            t1 = time.perf_counter()
            fd = nk.hrv_frequency(data, interpolation_rate=4, normalize=False)
            t2 = time.perf_counter()
            t_time += t1 - t0
            t_freq += t2 - t1
            theirs = {**td.iloc[0].to_dict(), **fd.iloc[0].to_dict()}
            for ours_name, nk_name in COMPARED.items():
                d = rel_diff(float(table[ours_name][i]), float(theirs[nk_name]))
                worst[ours_name] = max(worst[ours_name], d)
    layout = "5" if step_s is not None else "beat"
    k = len(idx)
    return NeurokitSample(layout, len(ends_t), k, t_time / k, t_freq / k, worst)


# --------------------------------------------------------------------------- streaming


@dataclass(frozen=True)
class StreamResult:
    label: str
    beats: int
    windows: int
    seconds: float

    @property
    def us_per_beat(self) -> float:
        return self.seconds / self.beats * 1e6


def stream(series: RRSeries, step_s: float | None, n_beats: int, label: str) -> StreamResult:
    """Feed the first ``n_beats`` intervals through a :class:`StreamingAnalyzer`."""
    n = min(n_beats, len(series))
    rr = series.rr_ms[:n].tolist()
    t = series.t_s[:n].tolist()
    config = AnalysisConfig(window_s=WINDOW_S, step_s=step_s)
    warm = StreamingAnalyzer(config)  # warm-up: the serial kernels, lru caches
    for r, ts in zip(rr[:500], t[:500], strict=True):
        warm.push(r, ts)
    warm.close()
    analyzer = StreamingAnalyzer(config)
    windows = 0
    t0 = time.perf_counter()
    for r, ts in zip(rr, t, strict=True):
        windows += len(analyzer.push(r, ts))
    windows += len(analyzer.close())
    return StreamResult(label, n, windows, time.perf_counter() - t0)


# --------------------------------------------------------------------------- report


def fmt_s(seconds: float) -> str:
    if seconds >= 100:
        return f"{seconds:.0f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.0f} ms"


def fmt_mib(n_bytes: int | None) -> str:
    return "n/a" if n_bytes is None else f"{n_bytes / MIB:.0f} MiB"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: int = 1) -> list[str]:
    """A Markdown table; columns from ``right`` on are right-aligned."""
    align = ["---" if i < right else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


@dataclass(frozen=True)
class Report:
    series: RRSeries
    quick: bool
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    batch: list[BatchResult]
    nk: dict[str, NeurokitSample]
    streams: list[StreamResult]
    wall_s: float


def render(rep: Report) -> str:
    n_beats = len(rep.series)
    hours = rep.series.duration_s / 3600.0
    lb = ", ".join(f"{x:.2f}" for x in rep.load_before)
    la = ", ".join(f"{x:.2f}" for x in rep.load_after)
    out = [
        "# `analyze` benchmark: hrvstream vs neurokit2",
        "",
        f"Recording: `{RECORDING.as_posix()}`, {n_beats:,} intervals, {hours:.1f} h; "
        f"{WINDOW_S:.0f}-s windows.{' **Quick run** (`--quick`).' if rep.quick else ''}",
        "",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores (numba threads: "
        f"{numba.get_num_threads()}), {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, numpy {np.__version__}, scipy "
        f"{scipy.__version__}, numba {numba.__version__}, neurokit2 {version('neurokit2')}, "
        f"hrvstream {version('hrvstream')} at {git_revision()}",
        f"- Load average (1, 5, 15 min) before: {lb}; after: {la}. "
        f"Benchmark wall time {rep.wall_s:.0f} s.",
        "",
        "## Batch `analyze`",
        "",
    ]
    rows = []
    for b in rep.batch:
        nk = rep.nk.get("5" if b.case.step_s is not None else "beat")
        if nk is None:
            nk_total, ratio = "n/a", "n/a"
        else:
            per = nk.both_s if b.case.frequency else nk.time_s
            total = per * b.windows
            nk_total, ratio = fmt_s(total), f"{total / b.median:,.0f}x"
        spread = f" ({fmt_s(min(b.times))}-{fmt_s(max(b.times))})" if len(b.times) > 1 else ""
        rows.append(
            [
                b.case.label,
                f"{b.windows:,}",
                fmt_s(b.first.first_s),
                f"{fmt_s(b.median)}{spread}",
                str(len(b.times)),
                f"{b.median / b.windows * 1e6:.1f} us",
                nk_total,
                ratio,
            ]
        )
    out += table(
        [
            "configuration",
            "windows",
            "first call incl. JIT/cache load",
            "median (min-max)",
            "runs",
            "per window",
            "neurokit2 loop (scaled)",
            "ratio",
        ],
        rows,
    )
    jit = [
        f"{'compiled' if b.first.cache_misses else 'cache load'} "
        f"({b.first.cache_hits} hits, {b.first.cache_misses} misses)"
        for b in rep.batch
    ]
    out += [
        "",
        "The first call is timed in a fresh process (numba kernels loaded from the on-disk "
        "cache, or compiled when the cache is stale); numba cache per configuration: "
        + "; ".join(jit)
        + ". The median excludes it (one warm-up call first).",
        "neurokit2 loop = mean time per window over the sample below x the number of windows; "
        "for the time-domain-only row, `nk.hrv_time` alone.",
        "",
        "## neurokit2 per window (sample)",
        "",
    ]
    rows = []
    for nk in rep.nk.values():
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in nk.max_rel_diff.items())
        rows.append(
            [
                f"`--step {nk.layout}`",
                f"{nk.sampled} of {nk.n_windows:,}",
                f"{nk.time_s * 1000:.2f} ms",
                f"{nk.freq_s * 1000:.2f} ms",
                f"{nk.both_s * 1000:.2f} ms",
                diffs,
            ]
        )
    if rows:
        out += table(
            [
                "layout",
                "windows sampled",
                "`hrv_time`",
                "`hrv_frequency`",
                "both",
                "max rel. diff. vs hrvstream `correct=False`",
            ],
            rows,
            right=2,
        )
        out += [
            "",
            "Windows spread evenly over those with >= 90 % coverage; "
            "`nk.hrv_frequency(..., interpolation_rate=4, normalize=False)`, warnings "
            "suppressed. neurokit2 computes more time-domain metrics per call than "
            "hrvstream (percentiles, MadNN, TINN, HTI, ...).",
        ]
    else:
        out += ["neurokit2 is not installed: no comparison."]
    out += ["", "## Memory (fresh process per configuration)", ""]
    rows = [
        [
            b.case.label,
            fmt_mib(b.first.tracemalloc_peak),
            fmt_mib(b.first.warm_increase),
            fmt_mib(b.first.first_increase),
            fmt_mib(b.first.base_rss),
            fmt_mib(b.first.peak_rss),
        ]
        for b in rep.batch
    ]
    out += table(
        [
            "configuration",
            "tracemalloc peak of one call",
            "peak-RSS increase, warm call",
            "peak-RSS increase, first call",
            "RSS before (imports + recording)",
            "process peak RSS",
        ],
        rows,
    )
    out += [
        "",
        "One spawned process per configuration: the first call (loads or compiles the numba "
        "kernels), a second (warm) call, then a third under tracemalloc. The increases are "
        "the peak RSS during a call (`VmHWM`, reset before it through "
        "`/proc/self/clear_refs`) minus the RSS before it. tracemalloc sees numpy's "
        "allocations only (numba's own, such as the per-recording spline tables, are not "
        "traced).",
        "",
        "## Streaming (`StreamingAnalyzer`, beat by beat)",
        "",
    ]
    rows = [
        [
            s.label,
            f"{s.beats:,}",
            f"{s.windows:,}",
            fmt_s(s.seconds),
            f"{s.us_per_beat:.0f} us",
        ]
        for s in rep.streams
    ]
    out += table(["configuration", "beats fed", "windows emitted", "total", "per beat"], rows)
    out += [
        "",
        "`push` with Python floats, then `close`; includes the streaming artifact corrector. "
        "A window every beat computes a frequency domain per beat, so only the first beats "
        "are fed.",
        "",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer windows and runs")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown report here")
    parser.add_argument("--recordings", help="directory of the shared recordings")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quick: bool = args.quick
    path = recordings_dir(args.recordings) / RECORDING
    if not path.is_file():
        print(f"bench_analyze: {path} not found (set HRVSTREAM_RECORDINGS)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    load_before = os.getloadavg()
    series = read_recording(path)

    batch = []
    for case in cases(quick):
        print(f"analyze: {case.label} ...", file=sys.stderr, flush=True)
        batch.append(run_case(series, str(path), case))

    nk: dict[str, NeurokitSample] = {}
    n_sample = 30 if quick else 200
    try:
        import neurokit2  # noqa: F401
    except ImportError:
        print("neurokit2 is not installed: its rows are omitted", file=sys.stderr)
    else:
        uncorrected = next(b for b in batch if not b.case.correct and b.case.frequency)
        print(f"neurokit2: {n_sample} windows per layout ...", file=sys.stderr, flush=True)
        nk["5"] = neurokit_sample(series, 5.0, uncorrected.analysis, n_sample)
        # Uncorrected per-beat reference for the agreement check (not timed).
        beat_ref = analyze(series, AnalysisConfig(window_s=WINDOW_S, step_s=None, correct=False))
        nk["beat"] = neurokit_sample(series, None, beat_ref, n_sample)

    print("streaming ...", file=sys.stderr, flush=True)
    n5, nbeat = (20_000, 2_000) if quick else (len(series), 20_000)
    streams = [
        stream(series, 5.0, n5, "`step_s=5`" + ("" if n5 >= len(series) else " (first beats)")),
        stream(series, None, nbeat, "`step_s=None` (first beats only)"),
    ]

    rep = Report(
        series=series,
        quick=quick,
        load_before=load_before,
        load_after=os.getloadavg(),
        batch=batch,
        nk=nk,
        streams=streams,
        wall_s=time.perf_counter() - started,
    )
    text = render(rep)
    print(text)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
