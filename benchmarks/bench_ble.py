"""Throughput and memory of the BLE path at ``--speed max``, on a 22.5-hour recording.

PhysioNet NSR2DB record nsr001 (106,459 intervals, 22.5 h) is encoded as the Heart Rate
Measurement notifications a strap would send (80,966 of them, one a second) and played by
a :class:`~hrvstream.adapters.virtual_strap.VirtualStrap` on the Bumble virtual radio at
maximum speed. At maximum speed the strap works in lockstep: it sends a notification only
once bleak's callback has returned for the previous one, so the rates below are those of
the whole stack, one notification at a time (Bumble controller, host, ATT/GATT, the bleak
backend, bleak, :class:`~hrvstream.adapters.ble.StrapLink` and what it feeds).

Paths, each in a fresh spawned process (so each peak RSS is its own):

``record``
    :func:`hrvstream.ble_session.record_virtual`, what ``hrvstream record --ble virtual
    --speed max`` runs: radio + bleak + StrapLink + capture writer (one flushed line per
    notification, fsync at most every 0.5 s). Checked: the capture holds every
    notification, and every beat decodes from it.
``replay``
    :func:`hrvstream.ble_session.replay_virtual`, what ``hrvstream replay --ble virtual
    --speed max --metrics-out`` runs: radio + bleak + StrapLink + Heart Rate Measurement
    parser + beat timing + streaming HRV engine (300-s window at every beat, artifact
    correction). Checked: every beat went through the engine, one row each.
``engine only``
    The same :class:`~hrvstream.pipeline.BeatPipeline` fed the notifications directly
    (``replay --ble none``), for reference: ``replay`` minus this is the radio's share.

Nothing is asserted on time: this is a benchmark, not a test.

Usage::

    python benchmarks/bench_ble.py [--quick] [--markdown PATH] [--recordings DIR]

``--quick`` plays the first 2 hours only. ``--recordings`` defaults to
``$HRVSTREAM_RECORDINGS`` or ``../shared/data/recordings`` relative to the repository.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from machine import cpu_model, git_revision, proc_status_bytes, recordings_dir, version

from hrvstream.ble_session import record_virtual, replay_virtual
from hrvstream.hrv.engine import AnalysisConfig
from hrvstream.pipeline import BeatPipeline, Record, records_from_series, run_records
from hrvstream.protocol.capture import Notification, decode_capture
from hrvstream.protocol.heart_rate import parse_heart_rate_measurement
from hrvstream.recordings.readers import read_recording

RECORDING = Path("physionet_nsr2db") / "nsr001_rr_secs.txt"
QUICK_HOURS = 2.0
WINDOW_S = 300.0
MIB = 1024.0 * 1024.0

STAGES: dict[str, str] = {
    "record": "radio + bleak + StrapLink + capture writer",
    "replay": "radio + bleak + StrapLink + parser + beat timing + streaming engine",
    "engine only": "parser + beat timing + streaming engine (no radio)",
}


# --------------------------------------------------------------------------- memory


def reset_peak_rss() -> None:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux >= 4.0)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def rss_bytes() -> int:
    """Current resident set size (``VmRSS``; 0 where unknown)."""
    return proc_status_bytes("VmRSS") or 0


def peak_rss_bytes() -> int:
    """Peak RSS (``VmHWM``, else ``ru_maxrss``, which a spawned child inherits)."""
    hwm = proc_status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024


# --------------------------------------------------------------------------- one stage


@dataclass(frozen=True)
class StageResult:
    """What one fresh process measured for one path."""

    stage: str
    notifications: int
    expected_notifications: int
    beats: int
    expected_beats: int
    rows: int | None
    prep_s: float
    wall_s: float
    rss_before: int
    peak_rss: int

    @property
    def complete(self) -> bool:
        rows_ok = self.rows is None or self.rows == self.beats
        return (
            self.notifications == self.expected_notifications
            and self.beats == self.expected_beats
            and rows_ok
        )


def load_records(path: Path, hours: float | None) -> tuple[list[Record], int]:
    """The recording as a strap's notifications (the first ``hours`` only), and its beats."""
    records: list[Record] = list(records_from_series(read_recording(path)))
    if hours is not None:
        records = [r for r in records if r.t_s <= hours * 3600.0]
    beats = sum(
        len(parse_heart_rate_measurement(r.payload).rr_raw)
        for r in records
        if isinstance(r, Notification)
    )
    return records, beats


def new_pipeline() -> BeatPipeline:
    """The pipeline of ``hrvstream replay --metrics-out``: a 300-s window at every beat."""
    return BeatPipeline(AnalysisConfig(window_s=WINDOW_S, step_s=None, correct=True))


def run_stage(stage: str, path: str, hours: float | None) -> StageResult:
    """Run one path in this (fresh) process and measure it."""
    t0 = time.perf_counter()
    records, expected_beats = load_records(Path(path), hours)
    expected_notifications = len(records)
    prep_s = time.perf_counter() - t0
    rows: int | None = None
    with tempfile.TemporaryDirectory(prefix="bench_ble_") as tmp:
        rss_before = rss_bytes()
        reset_peak_rss()
        if stage == "record":
            out = Path(tmp) / "bench.capture"
            t0 = time.perf_counter()
            asyncio.run(record_virtual(records, out, speed=None))
            wall_s = time.perf_counter() - t0
            peak = peak_rss_bytes()
            with out.open(encoding="utf-8") as fh:
                capture = decode_capture(fh)
            got = [r for r in capture.records if isinstance(r, Notification)]
            notifications = len(got)
            beats = len(read_recording(out))
        else:
            pipeline = new_pipeline()
            row_count = 0

            def count_rows(new: Sequence[dict[str, float]]) -> None:
                nonlocal row_count
                row_count += len(new)

            t0 = time.perf_counter()
            if stage == "replay":
                asyncio.run(replay_virtual(records, pipeline, speed=None, on_rows=count_rows))
            else:
                for _ in run_records(pipeline, records):  # rows are not kept
                    row_count += 1
            wall_s = time.perf_counter() - t0
            peak = peak_rss_bytes()
            notifications = pipeline.decoder.notifications
            beats = pipeline.beats
            rows = row_count
    return StageResult(
        stage=stage,
        notifications=notifications,
        expected_notifications=expected_notifications,
        beats=beats,
        expected_beats=expected_beats,
        rows=rows,
        prep_s=prep_s,
        wall_s=wall_s,
        rss_before=rss_before,
        peak_rss=peak,
    )


def run_fresh(stage: str, path: Path, hours: float | None) -> StageResult:
    """:func:`run_stage` in a freshly spawned process."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(run_stage, stage, str(path), hours).result()


# --------------------------------------------------------------------------- report


def mib(n: int) -> str:
    return f"{n / MIB:,.0f} MiB"


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}" if seconds > 0 else "n/a"


def verdict(r: StageResult) -> str:
    if r.complete:
        return f"yes: {r.beats:,} of {r.expected_beats:,} beats"
    parts = [
        f"notifications {r.notifications:,}/{r.expected_notifications:,}",
        f"beats {r.beats:,}/{r.expected_beats:,}",
    ]
    if r.rows is not None:
        parts.append(f"rows {r.rows:,}")
    return "**NO**: " + ", ".join(parts)


@dataclass(frozen=True)
class Report:
    recording: Path
    hours: float | None
    results: list[StageResult]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    wall_s: float


def render(rep: Report) -> str:
    first = rep.results[0]
    span = "first 2 h" if rep.hours is not None else "whole recording, 22.5 h"
    by_stage = {r.stage: r for r in rep.results}
    lines = [
        "# BLE path benchmark: virtual strap at `--speed max`",
        "",
        f"Recording: `{rep.recording.as_posix()}` ({span}): {first.expected_beats:,} beats "
        f"in {first.expected_notifications:,} Heart Rate Measurement notifications.",
        "",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores, "
        f"{platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, bleak {version('bleak')}, bumble "
        f"{version('bumble')}, bleak-retry-connector {version('bleak-retry-connector')}, "
        f"hrvstream {version('hrvstream')} at {git_revision()}",
        "- Load average (1, 5, 15 min) before: "
        + ", ".join(f"{x:.2f}" for x in rep.load_before)
        + "; after: "
        + ", ".join(f"{x:.2f}" for x in rep.load_after)
        + f". Benchmark wall time {rep.wall_s:.0f} s.",
        "",
        "| path | what runs | wall time | notifications/s | beats/s | RSS before | peak RSS "
        "| complete |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rep.results:
        lines.append(
            f"| `{r.stage}` | {STAGES[r.stage]} | {r.wall_s:.2f} s "
            f"| {rate(r.notifications, r.wall_s)} | {rate(r.beats, r.wall_s)} "
            f"| {mib(r.rss_before)} | {mib(r.peak_rss)} | {verdict(r)} |"
        )
    lines += [
        "",
        "One spawned process per path. Wall time covers the run only (radio and strap set-up, "
        "connection, playback, disconnection), not reading and encoding the recording "
        f"({first.prep_s:.1f} s). RSS before: after imports and encoding; peak RSS: the "
        "process's peak during the run (`VmHWM`, reset before it).",
        "At maximum speed the virtual strap sends each notification only after bleak's "
        "callback has returned for the previous one (lockstep), so notifications/s is the "
        "round-trip rate of the whole stack; a real strap sends about one a second.",
    ]
    replay, engine = by_stage.get("replay"), by_stage.get("engine only")
    if replay is not None and engine is not None and replay.notifications:
        radio_us = (replay.wall_s - engine.wall_s) / replay.notifications * 1e6
        lines.append(
            f"The radio's share of `replay` (`replay` minus `engine only`): about "
            f"{radio_us:,.0f} us per notification."
        )
    complete = all(r.complete for r in rep.results)
    lines += [
        "",
        "Every beat arrived on every path."
        if complete
        else "**Some beats or notifications were lost: see the last column.**",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help=f"play the first {QUICK_HOURS:g} hours only"
    )
    parser.add_argument("--markdown", type=Path, help="also write the Markdown report here")
    parser.add_argument("--recordings", help="directory of the shared recordings")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    hours: float | None = QUICK_HOURS if args.quick else None
    path = recordings_dir(args.recordings) / RECORDING
    if not path.is_file():
        print(f"bench_ble: {path} not found (set HRVSTREAM_RECORDINGS)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    load_before = os.getloadavg()
    results: list[StageResult] = []
    for stage in STAGES:
        print(f"bench_ble: {stage} ...", file=sys.stderr, flush=True)
        results.append(run_fresh(stage, path, hours))
    rep = Report(
        recording=RECORDING,
        hours=hours,
        results=results,
        load_before=load_before,
        load_after=os.getloadavg(),
        wall_s=time.perf_counter() - started,
    )
    text = render(rep)
    print(text)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    for r in results:
        print(
            f"bench_ble: {r.stage}: {r.beats:,} of {r.expected_beats:,} beats, "
            f"{r.notifications:,} of {r.expected_notifications:,} notifications"
            + ("" if r.rows is None else f", {r.rows:,} rows")
            + (" - complete" if r.complete else " - INCOMPLETE"),
            file=sys.stderr,
        )
    return 0 if all(r.complete for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
