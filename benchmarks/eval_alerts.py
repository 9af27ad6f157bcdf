"""The alert engine on real recordings: stress against rest, and false alarms.

Two questions, on the shared recordings, with the engine's default settings
(:class:`hrvstream.alerts.AlertConfig`):

(a) **Does the stress score rise under mental stress?** GUDB (Glasgow University ECG
    database): chest-strap R-peaks of 15 subjects, about 2 min each of ``sitting``,
    ``maths`` (mental arithmetic), ``walking``, ``hand_bike`` and ``jogging``. Per subject,
    the median stress score of each task against a baseline built from the subject's own
    sitting windows; then whether maths scores higher than sitting, counted over subjects,
    with a one-sided sign test. Two variants (the report explains both):

    - *in-sample*: 60-s windows every 5 s, the baseline from all sitting windows, every
      task scored against it. Sitting scores about 0 by construction; this variant shows
      the size of the maths effect and how the activity gate treats the exercise tasks.
    - *leave-out* (the fair one): 30-s windows every 5 s; two folds, the baseline from the
      windows lying wholly in one half of the sitting recording, the other half's sitting
      windows and all maths windows scored against it; each task's score is the mean of
      the two folds' medians.

    Two minutes are too short for a usable LF estimate, so the score here uses lnRMSSD
    and HR only (``weight_ln_lf_hf = 0``); both have their default weight 1.

(b) **How often does it alarm on ordinary days?** The day-long Holter recordings of two
    healthy people (PhysioNet nsr2db ``nsr001``, 22.5 h; ``physionet_healthy/008``,
    22.9 h), replayed with :func:`hrvstream.alerts.offline.evaluate` (what
    ``hrvstream alerts`` runs: 300-s windows every 5 s, as the live agent). There is one
    recording per person, so three baseline designs:

    1. *previous day*: the same recording placed on the day before as the baseline (the
       best case: "a day like today");
    2. *session only*: no long-term baseline; the engine uses the recording's own first
       quiet windows;
    3. *two-fold*: the first half as the baseline of the second half, and vice versa.

    Alerts are counted per 24 h of input. ``chf2db/chf201`` (heart failure) is run for
    contrast and not counted as a false-alarm rate. Then a simulated calm week
    (:mod:`hrvstream.simulate`): seven 22-h days, the first seeding the baseline, the other
    six replayed in order through one engine.

Nothing here tunes the engine: the numbers are what the defaults do.

Usage::

    python benchmarks/eval_alerts.py [--quick] [--markdown PATH] [--recordings DIR]

The report is printed and written to ``benchmarks/results/alerts.md`` (``--markdown``
elsewhere). ``--quick`` (a CI smoke run) does GUDB and the previous-day design on nsr001
only, and writes a file only when ``--markdown`` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from machine import cpu_model, git_revision, recordings_dir, version

from hrvstream.alerts import AlertConfig, AlertConfigSet, AlertEngine, Window
from hrvstream.alerts.baseline import Baseline, Sample, Stat, build_baseline
from hrvstream.alerts.engine import stress_score
from hrvstream.alerts.offline import (
    DEFAULT_START,
    STATES,
    OfflineResult,
    baseline_of,
    evaluate,
    judged,
    parse_start,
    place_before,
    recording_windows,
    scores_of,
)
from hrvstream.errors import HrvStreamError
from hrvstream.recordings.model import RRSeries
from hrvstream.recordings.readers import read_recording
from hrvstream.simulate import ArtifactSpec, SessionConfig, simulate_session

RESULTS = Path(__file__).resolve().parent / "results" / "alerts.md"
GUDB = Path("gudb_stress")
GUDB_FS_HZ = 250.0
TASKS = ("sitting", "maths", "walking", "hand_bike", "jogging")
IN_SAMPLE_WINDOW_S = 60.0
LEAVE_OUT_WINDOW_S = 30.0
GUDB_STEP_S = 5.0
#: Fewest judged windows a fold's baseline half, its test half, or the maths task needs.
MIN_WINDOWS = 3

HOLTER = (
    ("nsr001", Path("physionet_nsr2db/nsr001_rr_secs.txt"), "healthy"),
    ("008", Path("physionet_healthy/008.txt"), "healthy"),
    ("chf201", Path("physionet_chf2db/chf201_rr_secs.txt"), "heart failure"),
)
HEALTHY = frozenset(name for name, _, kind in HOLTER if kind == "healthy")
DESIGNS = ("previous day", "session only", "two-fold")
WEEK_DAYS = 7
WEEK_DAY_S = 22 * 3600.0
SLEEP_BLOCK_H = 6


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: int = 1) -> list[str]:
    """A Markdown table; columns from ``right`` on are right-aligned."""
    align = ["---" if i < right else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


NA = "-"


def f1(x: float | None, digits: int = 1) -> str:
    """A number, or a dash for missing."""
    return NA if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def sign_test_p(k: int, n: int) -> float:
    """One-sided sign test: P(X >= k) for X ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n if n else math.nan


# --------------------------------------------------------------------------- (a) GUDB


def score_config() -> AlertConfig:
    """The default settings with LF/HF out of the score (2-min recordings)."""
    return dataclasses.replace(AlertConfig(), weight_ln_lf_hf=0.0)


@dataclass(frozen=True)
class TaskData:
    """One task of one subject: judged windows at both window lengths (``None``: no file)."""

    duration_s: float
    w60: list[Window]
    w30: list[Window]
    n60: int
    n30: int


@dataclass(frozen=True)
class SubjectResult:
    """The GUDB numbers of one subject."""

    name: str
    tasks: dict[str, TaskData | None]
    problems: list[str]
    in_sample: dict[str, float]  # task -> median score (60-s windows)
    activity: dict[str, float]  # task -> share of windows the activity gate takes
    leave_out: tuple[float, float] | None  # (sitting, maths) mean of fold medians
    folds: int


def read_task(path: Path, cfg: AlertConfig) -> TaskData:
    series = read_recording(path, fs=GUDB_FS_HZ)
    all60 = recording_windows(
        series,
        patient="gudb",
        session=path.parent.name,
        origin_unix_s=0.0,
        window_s=IN_SAMPLE_WINDOW_S,
        step_s=GUDB_STEP_S,
    )
    all30 = recording_windows(
        series,
        patient="gudb",
        session=path.parent.name,
        origin_unix_s=0.0,
        window_s=LEAVE_OUT_WINDOW_S,
        step_s=GUDB_STEP_S,
    )
    return TaskData(
        series.duration_s, judged(all60, cfg), judged(all30, cfg), len(all60), len(all30)
    )


def gate_hr(w: Window) -> float:
    """The HR the activity gate compares with the resting HR: the higher of the window's
    mean and the last 30 s of beats."""
    assert w.mean_hr_bpm is not None
    return max(w.mean_hr_bpm, w.recent_hr_bpm or w.mean_hr_bpm)


def leave_out(sitting: TaskData, maths: TaskData, cfg: AlertConfig) -> list[tuple[float, float]]:
    """(sitting, maths) median scores of each usable fold."""
    half = sitting.duration_s / 2
    first = [w for w in sitting.w30 if w.t_unix_s <= half]
    second = [w for w in sitting.w30 if w.t_unix_s - w.window_s >= half]
    out = []
    for base, test in ((first, second), (second, first)):
        if len(base) < MIN_WINDOWS or len(test) < MIN_WINDOWS or len(maths.w30) < MIN_WINDOWS:
            continue
        b = baseline_of(base)
        assert b is not None
        sit = statistics.median(s.score for s in scores_of(test, b, cfg))
        mat = statistics.median(s.score for s in scores_of(maths.w30, b, cfg))
        out.append((sit, mat))
    return out


def gudb_subject(folder: Path, cfg: AlertConfig) -> SubjectResult:
    tasks: dict[str, TaskData | None] = {}
    problems: list[str] = []
    for task in TASKS:
        path = folder / task / "annotation_cs.tsv"
        if not path.is_file():
            tasks[task] = None
            problems.append(f"{task}: no chest-strap file")
            continue
        try:
            tasks[task] = read_task(path, cfg)
        except HrvStreamError as exc:
            tasks[task] = None
            problems.append(f"{task}: {exc}")
    in_sample: dict[str, float] = {}
    activity: dict[str, float] = {}
    sit = tasks.get("sitting")
    if sit is not None and len(sit.w60) >= MIN_WINDOWS:
        base = baseline_of(sit.w60)
        assert base is not None
        rest_hr = base.hr_bpm.centre
        for task, data in tasks.items():
            if data is None or not data.w60:
                continue
            in_sample[task] = statistics.median(s.score for s in scores_of(data.w60, base, cfg))
            gated = [w for w in data.w60 if gate_hr(w) - rest_hr >= cfg.activity_hr_delta_bpm]
            activity[task] = len(gated) / len(data.w60)
    else:
        problems.append("sitting: too few usable 60-s windows for a baseline")
    maths = tasks.get("maths")
    folds: list[tuple[float, float]] = []
    if sit is not None and maths is not None:
        folds = leave_out(sit, maths, cfg)
        if not folds:
            half = sit.duration_s / 2
            n1 = sum(w.t_unix_s <= half for w in sit.w30)
            n2 = sum(w.t_unix_s - w.window_s >= half for w in sit.w30)
            problems.append(
                f"leave-out: usable 30-s windows sitting 1st half {n1}, 2nd half {n2}, "
                f"maths {len(maths.w30)} (each needs {MIN_WINDOWS})"
            )
    lo = None
    if folds:
        lo = (statistics.mean(f[0] for f in folds), statistics.mean(f[1] for f in folds))
    return SubjectResult(folder.name, tasks, problems, in_sample, activity, lo, len(folds))


@dataclass(frozen=True)
class GudbCounts:
    """Subjects where maths scored higher than sitting, of those with usable data."""

    in_sample: tuple[int, int]
    leave_out: tuple[int, int]
    p_leave_out: float
    #: Median over subjects of maths - sitting: HR (bpm) and RMSSD (ratio - 1, %).
    hr_change_bpm: float
    rmssd_change_pct: float


def maths_change(results: Sequence[SubjectResult]) -> tuple[float, float]:
    """Median over subjects of the change of median HR (bpm) and RMSSD (%) from sitting
    to maths."""
    d_hr: list[float] = []
    d_rmssd: list[float] = []
    for r in results:
        sit, mat = r.tasks.get("sitting"), r.tasks.get("maths")
        if sit is None or mat is None or not sit.w60 or not mat.w60:
            continue
        hr = [statistics.median(w.mean_hr_bpm or math.nan for w in t.w60) for t in (sit, mat)]
        rm = [statistics.median(w.rmssd_ms or math.nan for w in t.w60) for t in (sit, mat)]
        d_hr.append(hr[1] - hr[0])
        d_rmssd.append(100.0 * (rm[1] / rm[0] - 1.0))
    if not d_hr:
        return math.nan, math.nan
    return statistics.median(d_hr), statistics.median(d_rmssd)


def summary_baseline(summary: dict[str, Any]) -> Baseline | None:
    """The long-term baseline at the start of an :func:`evaluate` run, from its summary."""
    b = summary["baseline"]
    if b is None:
        return None
    return Baseline(
        ln_rmssd=Stat(math.log(b["rmssd_ms"]), b["ln_rmssd_sd"]),
        hr_bpm=Stat(b["hr_bpm"], b["hr_sd_bpm"]),
        ln_lf_hf=None,
        n_windows=summary["baseline_windows"],
        days=1.0,
        source="long_term",
    )


def response_score(base: Baseline | None, change: tuple[float, float]) -> float:
    """The stress score of a window changed by ``(HR bpm, RMSSD %)`` from the baseline's
    centre (lnRMSSD and HR only; LF/HF unchanged, so left out)."""
    hr_change_bpm, rmssd_change_pct = change
    if base is None or not math.isfinite(hr_change_bpm + rmssd_change_pct):
        return math.nan
    base = dataclasses.replace(base, ln_lf_hf=None)
    w = Window(
        patient="what-if",
        session="s",
        t_unix_s=0.0,
        window_s=300.0,
        coverage=1.0,
        artifact_pct=0.0,
        mean_hr_bpm=base.hr_bpm.centre + hr_change_bpm,
        rmssd_ms=math.exp(base.ln_rmssd.centre) * (1.0 + rmssd_change_pct / 100.0),
        lf_hf=None,
    )
    return stress_score(w, base, AlertConfig()).score


def gudb_section(root: Path) -> tuple[list[str], GudbCounts]:
    cfg = score_config()
    folders = sorted(p for p in (root / GUDB).glob("subject_*") if p.is_dir())
    results = [gudb_subject(f, cfg) for f in folders]
    out = [
        "## (a) GUDB: mental arithmetic against rest",
        "",
        f"`{GUDB.as_posix()}/subject_*/<task>/annotation_cs.tsv`: chest-strap R-peak sample "
        f"indices at {GUDB_FS_HZ:g} Hz, about 2 min per task, {len(folders)} subjects.",
        "",
        "**Method.** Each task is analysed with `analyze` (artifact correction on) and each "
        "window goes through the engine's quality gate (coverage >= "
        f"{cfg.min_coverage:g}, artifacts <= {cfg.max_artifact_pct:g} %). The baseline is built "
        "from the subject's own sitting windows with the engine's `build_baseline` (median "
        "and 1.4826 MAD, the engine's SD floors apply in the z-scores), and each window is "
        "scored with the engine's `stress_score`: the mean of -z(lnRMSSD) and z(HR). LF/HF "
        "is left out (`weight_ln_lf_hf = 0`): a 30- or 60-s window holds one to a few LF "
        "cycles, too few for an LF estimate. The per-task number is the median over its "
        "windows. Overlapping windows (5-s step) are not independent; the counts below are "
        "of subjects.",
        "",
        f"- *In-sample* ({IN_SAMPLE_WINDOW_S:g}-s windows): baseline = all sitting windows; "
        "sitting is scored against a baseline built from itself, so it is near 0 by "
        "construction. Shown for the effect sizes and the activity gate.",
        f"- *Leave-out* ({LEAVE_OUT_WINDOW_S:g}-s windows, the fair comparison): the sitting "
        "recording is cut in two halves; fold 1 builds the baseline from the windows lying "
        "wholly in the first half and scores the second half's windows and all maths "
        "windows; fold 2 the other way round. A task's score is the mean of the folds' "
        f"medians. A fold needs {MIN_WINDOWS} usable windows in each half and in maths. "
        "30-s windows are needed because a 1-min half holds one 60-s window; RMSSD from "
        "30 s is an accepted ultra-short measure, and the baseline of ~1 min of rest leans "
        "on the SD floors (lnRMSSD 0.08, HR 2 bpm), so this is a harsh test: small natural "
        "changes within rest give scores of +-2.",
        f"- *Activity gate*: share of the {IN_SAMPLE_WINDOW_S:g}-s windows whose HR (the "
        "higher of the window mean and the last 30 s of beats) is "
        f">= {cfg.activity_hr_delta_bpm:g} bpm above the sitting baseline: the gate's first "
        "criterion, recomputed here; its rising-HR criterion needs "
        f"{cfg.activity_trend_s / 60:g} min of data and cannot fire on 2-min recordings.",
        "",
    ]
    rows = []
    for r in results:
        usable = "/".join(NA if (d := r.tasks.get(t)) is None else f"{len(d.w60)}" for t in TASKS)
        usable30 = "/".join(
            NA if (d := r.tasks.get(t)) is None else f"{len(d.w30)}" for t in TASKS[:2]
        )
        lo = r.leave_out
        rows.append(
            [
                r.name,
                usable,
                usable30,
                *(f1(r.in_sample.get(t), 2) for t in TASKS),
                *(NA if t not in r.activity else f"{100 * r.activity[t]:.0f} %" for t in TASKS[1:]),
                NA if lo is None else f1(lo[0], 2),
                NA if lo is None else f1(lo[1], 2),
                NA if lo is None else ("yes" if lo[1] > lo[0] else "**no**"),
                str(r.folds),
            ]
        )
    out += table(
        [
            "subject",
            "usable 60-s windows sit/maths/walk/bike/jog",
            "usable 30-s sit/maths",
            "in-sample sitting",
            "maths",
            "walking",
            "hand_bike",
            "jogging",
            "gated as activity: maths",
            "walking",
            "hand_bike",
            "jogging",
            "leave-out sitting",
            "leave-out maths",
            "maths higher",
            "folds",
        ],
        rows,
        right=1,
    )
    ins = [r for r in results if "sitting" in r.in_sample and "maths" in r.in_sample]
    k_in = sum(r.in_sample["maths"] > r.in_sample["sitting"] for r in ins)
    los = [r for r in results if r.leave_out is not None]
    k_lo = sum(r.leave_out[1] > r.leave_out[0] for r in los if r.leave_out is not None)
    med_delta = (
        statistics.median(r.leave_out[1] - r.leave_out[0] for r in los if r.leave_out)
        if los
        else math.nan
    )
    gate = {t: [r.activity[t] for r in results if t in r.activity] for t in ("maths", *TASKS[2:])}
    out += [
        "",
        f"**Maths scores higher than sitting**: in-sample {k_in} of {len(ins)} subjects "
        f"(one-sided sign test p = {sign_test_p(k_in, len(ins)):.2g}); **leave-out {k_lo} "
        f"of {len(los)}** (p = {sign_test_p(k_lo, len(los)):.2g}), median difference "
        f"maths - sitting {med_delta:.2f}.",
        "",
        "Windows taken as activity (mean share over subjects): "
        + ", ".join(
            f"{t} {100 * statistics.mean(v):.0f} % ({sum(x > 0.5 for x in v)} of {len(v)} "
            "subjects mostly)"
            for t, v in gate.items()
            if v
        )
        + ". Maths windows taken as activity would raise no stress alert live.",
        "",
    ]
    d_hr, d_rmssd = maths_change(results)
    out += [
        f"Median change from sitting to maths over subjects (60-s windows): HR {d_hr:+.1f} "
        f"bpm, RMSSD {d_rmssd:+.0f} %.",
        "",
    ]
    problems = [f"- {r.name}: {p}" for r in results for p in r.problems]
    if problems:
        out += ["Missing or short data:", "", *problems, ""]
    return out, GudbCounts(
        (k_in, len(ins)), (k_lo, len(los)), sign_test_p(k_lo, len(los)), d_hr, d_rmssd
    )


# --------------------------------------------------------------------------- (b) Holter


def halves(series: RRSeries) -> tuple[RRSeries, RRSeries]:
    """The recording cut at its midpoint, each half starting at ``t = 0``."""
    mid = series.duration_s / 2
    k = int(np.searchsorted(series.t_s, mid, side="right"))
    parts = []
    for lo, hi in ((0, k), (k, len(series))):
        rr = series.rr_ms[lo:hi]
        t = series.t_s[lo:hi]
        origin = float(t[0] - rr[0] / 1000.0)
        parts.append(
            RRSeries(
                rr_ms=rr.copy(),
                t_s=t - origin,
                source=f"{series.source} [{'first' if lo == 0 else 'second'} half]",
                format=series.format,
            )
        )
    return parts[0], parts[1]


@dataclass(frozen=True)
class DesignRun:
    """One recording under one baseline design (two runs for two-fold)."""

    recording: str
    kind: str
    design: str
    runs: list[tuple[str, OfflineResult, float]]  # (label, result, offset of input, s)

    @property
    def hours(self) -> float:
        return sum(float(r.summary["input_duration_s"]) for _, r, _ in self.runs) / 3600.0

    @property
    def alerts(self) -> int:
        return sum(len(r.alerts) for _, r, _ in self.runs)

    def open_hours(self) -> float:
        """Time with an acute alert open (raised, not yet resolved), hours."""
        total = 0.0
        for _, r, _ in self.runs:
            end = float(r.summary["input_duration_s"])
            for a in r.alerts:
                resolved = a["resolved_t_s"]
                total += (end if resolved is None else float(resolved)) - float(a["t_s"])
        return total / 3600.0

    def states(self) -> Counter[str]:
        c: Counter[str] = Counter()
        for _, r, _ in self.runs:
            c.update(r.summary["windows_by_state"])
        return c

    def poor(self) -> Counter[str]:
        c: Counter[str] = Counter()
        for _, r, _ in self.runs:
            c.update(r.summary["poor_quality_by_reason"])
        return c


def run_designs(series: RRSeries, name: str, kind: str, designs: Sequence[str]) -> list[DesignRun]:
    out = []
    for design in designs:
        if design == "previous day":
            runs = [("", evaluate(series, [series]), 0.0)]
        elif design == "session only":
            runs = [("", evaluate(series, []), 0.0)]
        else:
            a, b = halves(series)
            runs = [
                ("2nd half, baseline 1st", evaluate(b, [a]), series.duration_s - b.duration_s),
                ("1st half, baseline 2nd", evaluate(a, [b]), 0.0),
            ]
        out.append(DesignRun(name, kind, design, runs))
    return out


def sleep_block(hourly_hr: Sequence[float]) -> tuple[int, int] | None:
    """The ``SLEEP_BLOCK_H`` consecutive hours with the lowest mean of hourly median HR."""
    valid = [h for h in hourly_hr if math.isfinite(h)]
    if len(hourly_hr) < SLEEP_BLOCK_H or len(valid) < SLEEP_BLOCK_H:
        return None
    best: tuple[float, int] | None = None
    for i in range(len(hourly_hr) - SLEEP_BLOCK_H + 1):
        block = [h for h in hourly_hr[i : i + SLEEP_BLOCK_H] if math.isfinite(h)]
        if len(block) < SLEEP_BLOCK_H // 2:
            continue
        m = statistics.mean(block)
        if best is None or m < best[0]:
            best = (m, i)
    return None if best is None else (best[1], best[1] + SLEEP_BLOCK_H)


@dataclass(frozen=True)
class Hour:
    hr: float
    rmssd: float
    states: Counter[str]
    alerts: int


def hourly(result: OfflineResult) -> list[Hour]:
    """Per hour since the start of the input: median HR and RMSSD of judged windows,
    windows by state, alerts raised."""
    tr = result.trace
    start = result.placements[-1].start_unix_s
    n_hours = max(1, math.ceil(result.summary["input_duration_s"] / 3600.0))
    hr: list[list[float]] = [[] for _ in range(n_hours)]
    rm: list[list[float]] = [[] for _ in range(n_hours)]
    st: list[Counter[str]] = [Counter() for _ in range(n_hours)]
    for w, s in zip(tr.windows, tr.states, strict=True):
        h = min(n_hours - 1, int((w.t_unix_s - start) // 3600))
        st[h][s] += 1
        if s != "poor_quality" and w.mean_hr_bpm is not None and w.rmssd_ms is not None:
            hr[h].append(w.mean_hr_bpm)
            rm[h].append(w.rmssd_ms)
    al = [0] * n_hours
    for a in result.alerts:
        al[min(n_hours - 1, int(a["t_s"] // 3600))] += 1
    return [
        Hour(
            statistics.median(hr[i]) if hr[i] else math.nan,
            statistics.median(rm[i]) if rm[i] else math.nan,
            st[i],
            al[i],
        )
        for i in range(n_hours)
    ]


def alert_rows(run: DesignRun, block: tuple[int, int] | None) -> list[list[str]]:
    rows = []
    for label, res, offset in run.runs:
        trace = res.trace
        start = res.placements[-1].start_unix_s
        for a in res.alerts:
            ex = a["explanation"]
            t_h = (a["t_s"] + offset) / 3600.0
            t_unix = start + a["t_s"]
            before = [
                s
                for w, s in zip(trace.windows, trace.states, strict=True)
                if t_unix - 1800 <= w.t_unix_s < t_unix
            ]
            act = sum(s == "activity" for s in before)
            in_sleep = block is not None and block[0] <= t_h < block[1]
            dur = (
                "open at end"
                if a["resolved_t_s"] is None
                else f"{(a['resolved_t_s'] - a['t_s']) / 60:.0f} min"
            )
            rows.append(
                [
                    run.recording,
                    run.design + (f" ({label})" if label else ""),
                    f"{int(t_h)}:{round(t_h % 1 * 60):02d}",
                    a["severity"],
                    f1(a["stress_score"]),
                    f"{f1(ex.get('hr_bpm'), 0)} ({f1(ex.get('baseline_hr_bpm'), 0)})",
                    f"{f1(ex.get('rmssd_ms'), 0)} ({f1(ex.get('baseline_rmssd_ms'), 0)})",
                    f1(ex.get("z_hr")),
                    f1(-(ex.get("deviation") or 0.0)),
                    f1(ex.get("z_ln_lf_hf")),
                    dur,
                    "yes" if in_sleep else "no",
                    f"{100 * act / len(before):.0f} %" if before else NA,
                    "yes" if a["notify"] else "no (quiet hours)",
                ]
            )
    return rows


def drivers(
    runs: Sequence[DesignRun], blocks: dict[str, tuple[int, int] | None], cfg: AlertConfig
) -> list[str]:
    """Computed remarks on what the healthy recordings' alerts and rejections have in
    common."""
    healthy = [r for r in runs if r.kind == "healthy"]
    alerts = [a for r in healthy for _, res, _ in r.runs for a in res.alerts]
    if not healthy:
        return []
    near = [
        a
        for a in alerts
        if (hr := a["explanation"].get("hr_bpm")) is not None
        and (base := a["explanation"].get("baseline_hr_bpm")) is not None
        and cfg.activity_hr_delta_bpm - 15 <= hr - base < cfg.activity_hr_delta_bpm
    ]
    long_open = [
        a for a in alerts if a["resolved_t_s"] is None or a["resolved_t_s"] - a["t_s"] > 3 * 3600
    ]
    out = [
        "**What the healthy recordings' alerts have in common** (all designs): "
        f"{len(near)} of {len(alerts)} were raised with HR "
        f"{cfg.activity_hr_delta_bpm - 15:g}-{cfg.activity_hr_delta_bpm:g} bpm above the "
        f"baseline, just under the activity gate's {cfg.activity_hr_delta_bpm:g} bpm; "
        f"{len(long_open)} stayed open for more than 3 h (an open alert keeps the engine "
        "from adding windows to the baseline, so a baseline that does not fit the day is "
        "never corrected while it is open)."
    ]
    for r in healthy:
        if r.design != "previous day":
            continue
        res = r.runs[0][1]
        block = blocks.get(r.recording)
        start = res.placements[-1].start_unix_s
        awake = asleep = awake_poor = asleep_poor = 0
        for w, st in zip(res.trace.windows, res.trace.states, strict=True):
            h = (w.t_unix_s - start) / 3600.0
            sleeping = block is not None and block[0] <= h < block[1]
            if sleeping:
                asleep += 1
                asleep_poor += st == "poor_quality"
            else:
                awake += 1
                awake_poor += st == "poor_quality"
        out.append(
            f"{r.recording}: windows not judged for quality: "
            f"{100 * awake_poor / max(awake, 1):.0f} % outside the likely-sleep block, "
            f"{100 * asleep_poor / max(asleep, 1):.0f} % inside it."
        )
    return [" ".join(out), ""]


def holter_section(
    root: Path, quick: bool, change: tuple[float, float]
) -> tuple[list[str], dict[str, float], list[str], dict[str, float]]:
    cfg = AlertConfig()
    recs = HOLTER[:1] if quick else HOLTER
    designs = DESIGNS[:1] if quick else DESIGNS
    runs: list[DesignRun] = []
    notes: list[str] = []
    series_of: dict[str, RRSeries] = {}
    for name, rel, kind in recs:
        path = root / rel
        if not path.is_file():
            notes.append(f"- {rel.as_posix()}: not found, skipped")
            continue
        series = read_recording(path, lenient=True)
        for n in series.notes:
            notes.append(f"- {rel.as_posix()}: {n}")
        series_of[name] = series
        print(f"holter: {name} ...", file=sys.stderr, flush=True)
        runs += run_designs(series, name, kind, designs)
    out = [
        "## (b) False alarms on day-long recordings",
        "",
        "**Method.** `hrvstream.alerts.offline.evaluate` (what `hrvstream alerts` runs): "
        "300-s windows every 5 s as the live agent, default settings, the input starting at "
        f"{DEFAULT_START} UTC (only the quiet-hours flag `notify` depends on the clock; "
        "every alert is counted, notified or not). Designs, one recording per person:",
        "",
        "1. *previous day*: the same recording as the baseline, placed on the day before "
        "(best case: a day like today; the engine's pool keeps only clean, resting, "
        "non-stressed windows, one per 5 min).",
        "2. *session only*: no baseline recording; the engine builds a session baseline "
        f"from the input's first {cfg.session_min_windows} quiet windows (30 min), and from "
        "there on keeps adding quiet windows to its long-term pool, used once it holds "
        f"{cfg.baseline_min_windows} (2 h).",
        "3. *two-fold*: first half as the baseline of the second, then the second half as "
        "the baseline of the first (each run counted; times below are hours since the "
        "start of the whole recording).",
        "",
        "The recordings carry no clock time. The *likely sleep* block is the "
        f"{SLEEP_BLOCK_H} consecutive hours with the lowest hourly median HR.",
        "",
    ]
    rows = []
    rates: dict[str, float] = {}
    for r in runs:
        c = r.states()
        total = sum(c.values()) or 1
        rate = r.alerts * 24.0 / r.hours if r.hours else math.nan
        rates[f"{r.recording} / {r.design}"] = rate
        base = ", ".join(str(res.summary["baseline_windows"]) for _, res, _ in r.runs)
        notified = sum(res.summary["alerts_notified"] for _, res, _ in r.runs)
        rows.append(
            [
                f"{r.recording} ({r.kind})",
                r.design,
                f"{r.hours:.1f}",
                str(r.alerts),
                str(notified),
                f"**{rate:.2f}**" if r.kind == "healthy" else f"({rate:.2f})",
                f"{r.open_hours():.1f}",
                *(f"{100 * c[s] / total:.1f}" for s in STATES),
                ", ".join(f"{k} {100 * v / total:.1f}" for k, v in r.poor().most_common()),
                base,
            ]
        )
    out += table(
        [
            "recording",
            "design",
            "hours",
            "alerts",
            "notified",
            "alerts per 24 h",
            "hours with an alert open",
            *(f"% {s}" for s in STATES),
            "% poor quality by reason",
            "baseline windows at start",
        ],
        rows,
        right=2,
    )
    out += [
        "",
        "% = share of the input's windows in each assessment state (one window per 5 s). "
        "chf201 is not healthy: its rate (in brackets) is not a false-alarm rate.",
        "",
        "### Every alert",
        "",
    ]
    blocks: dict[str, tuple[int, int] | None] = {}
    for name in series_of:
        first = next(r for r in runs if r.recording == name and r.design == "previous day")
        blocks[name] = sleep_block([h.hr for h in hourly(first.runs[0][1])])
    arows = [row for r in runs for row in alert_rows(r, blocks.get(r.recording))]
    if arows:
        out += table(
            [
                "recording",
                "design",
                "raised at (h:mm since start)",
                "severity",
                "score",
                "HR (baseline), bpm",
                "RMSSD (baseline), ms",
                "z HR",
                "-z lnRMSSD",
                "z ln LF/HF",
                "lasted",
                "in likely sleep",
                "activity in the 30 min before",
                "notified",
            ],
            arows,
            right=2,
        )
    else:
        out.append("None.")
    out += [
        "",
        "z values are against the baseline in use at the time (the score is their "
        "weighted mean, weights 1, 1, 0.5, each clipped to [-4, 8]).",
        "",
        *drivers(runs, blocks, cfg),
    ]
    what_ifs: dict[str, float] = {}
    for name in series_of:
        first = next(r for r in runs if r.recording == name and r.design == "previous day")
        res = first.runs[0][1]
        hours = hourly(res)
        block = blocks[name]
        med: dict[str, Any] = res.summary["baseline"] or {}
        what_if = response_score(summary_baseline(res.summary), change)
        what_ifs[name] = what_if
        out += [
            f"### Hour by hour: {name} (previous-day design)",
            "",
            f"Baseline at the start: {res.summary['baseline_windows']} resting windows, "
            f"HR {f1(med.get('hr_bpm'), 0)} bpm (robust SD {f1(med.get('hr_sd_bpm'))}), "
            f"RMSSD {f1(med.get('rmssd_ms'), 0)} ms (robust SD of lnRMSSD "
            f"{f1(med.get('ln_rmssd_sd'), 2)}). Against it, a window changed as GUDB's "
            f"median maths response (HR {change[0]:+.1f} bpm, RMSSD {change[1]:+.0f} %) "
            f"would score **{f1(what_if)}** (an alert needs {cfg.raise_score:g} for "
            f"{cfg.min_duration_s:g} s). Likely sleep: "
            + (NA if block is None else f"hours {block[0]}-{block[1]}")
            + ".",
            "",
        ]
        hrows = []
        for i, h in enumerate(hours):
            tot = sum(h.states.values()) or 1
            hrows.append(
                [
                    f"{i}" + (" (sleep)" if block and block[0] <= i < block[1] else ""),
                    f1(h.hr, 0),
                    f1(h.rmssd, 0),
                    *(f"{100 * h.states[s] / tot:.0f}" for s in STATES if s != "no_baseline"),
                    str(h.alerts) if h.alerts else "",
                ]
            )
        out += table(
            [
                "hour",
                "median HR",
                "median RMSSD",
                *(f"% {s}" for s in STATES if s != "no_baseline"),
                "alerts",
            ],
            hrows,
            right=1,
        )
        out.append("")
    return out, rates, notes, what_ifs


# --------------------------------------------------------------------------- simulated week


def pool_baseline(engine: AlertEngine, patient: str) -> Baseline | None:
    """The patient's long-term baseline now (from the engine's exported pool)."""
    state = engine.export_state(patient)
    if state is None or not state["pool"]:
        return None
    return build_baseline([Sample.from_list(v) for v in state["pool"]], "long_term")


def describe(base: Baseline | None) -> str:
    if base is None:
        return "none"
    return (
        f"{base.n_windows} windows, HR {base.hr_bpm.centre:.0f} bpm (robust SD "
        f"{base.hr_bpm.spread:.1f}), RMSSD {math.exp(base.ln_rmssd.centre):.0f} ms (robust "
        f"SD of lnRMSSD {base.ln_rmssd.spread:.2f})"
    )


def week_section(change: tuple[float, float]) -> tuple[list[str], float]:
    cfg = AlertConfigSet()
    zone = ZoneInfo("UTC")
    days = [
        simulate_session(
            SessionConfig(
                duration_s=WEEK_DAY_S,
                seed=100 + d,
                circadian_amplitude_bpm=6.0,
                start_clock_h=8.0,
                artifacts=ArtifactSpec(ectopic_rate=0.0005, missed_rate=0.0005),
            )
        ).series
        for d in range(WEEK_DAYS)
    ]
    end = parse_start(DEFAULT_START, zone)
    starts = place_before([d.duration_s for d in days], end, zone)
    engine = AlertEngine(cfg)
    patient = "sim-week"
    alerts: list[tuple[int, float, float, float, float]] = []
    states: Counter[str] = Counter()
    hours = 0.0
    first_base: Baseline | None = None
    for i, (day, start) in enumerate(zip(days, starts, strict=True)):
        print(f"week: day {i + 1} ...", file=sys.stderr, flush=True)
        ws = recording_windows(day, patient=patient, session=f"day-{i + 1}", origin_unix_s=start)
        if i == 0:
            engine.seed(ws)
            first_base = pool_baseline(engine, patient)
            continue
        hours += day.duration_s / 3600.0
        for w in ws:
            o = engine.observe(w)
            if o.assessment is not None:
                states[o.assessment.state] += 1
            for ev in o.events:
                if ev.state == "raised":
                    ex = ev.explanation
                    alerts.append(
                        (
                            i + 1,
                            (ev.t_unix_s - start) / 3600.0,
                            float(ex.get("stress_score") or math.nan),
                            float(ex.get("z_hr") or math.nan),
                            -float(ex.get("deviation") or math.nan),
                        )
                    )
    rate = len(alerts) * 24.0 / hours
    last_base = pool_baseline(engine, patient)
    total = sum(states.values()) or 1
    out = [
        "## Simulated calm week",
        "",
        f"`simulate_session`: {WEEK_DAYS} days of {WEEK_DAY_S / 3600:g} h from 08:00 "
        "(mean HR 65 bpm with a 6-bpm circadian rhythm, default HF/LF/VLF modulation, "
        "0.05 % ectopic and 0.05 % missed beats, no stress, no exercise, one seed per "
        "day), placed on consecutive days; day 1 seeds the engine, days 2-7 are replayed "
        "in order through the same engine (its pool grows over the week, as live).",
        "",
        f"**{len(alerts)} alerts in {hours:.0f} h: {rate:.2f} per 24 h.** Windows: "
        + ", ".join(f"{s} {100 * states[s] / total:.1f} %" for s in STATES)
        + ".",
        "",
        f"Baseline after day 1: {describe(first_base)}; after day {WEEK_DAYS}: "
        f"{describe(last_base)}. GUDB's median maths response (HR {change[0]:+.1f} bpm, "
        f"RMSSD {change[1]:+.0f} %) would score {f1(response_score(first_base, change))} "
        f"and {f1(response_score(last_base, change))} against them.",
        "",
    ]
    if alerts:
        out += table(
            ["day", "raised at (h since 08:00)", "score", "z HR", "-z lnRMSSD"],
            [[str(d), f"{t:.2f}", f1(s), f1(zh), f1(zr)] for d, t, s, zh, zr in alerts],
        )
        out.append("")
    return out, rate


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: GUDB and nsr001 (previous day) only"
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        help=f"where the report goes (default {RESULTS.relative_to(RESULTS.parents[2])}; "
        "none with --quick)",
    )
    parser.add_argument("--recordings", help="directory of the shared recordings")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quick: bool = args.quick
    root = recordings_dir(args.recordings)
    if not (root / GUDB).is_dir():
        print(f"eval_alerts: {root / GUDB} not found (set HRVSTREAM_RECORDINGS)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    print("gudb ...", file=sys.stderr, flush=True)
    gudb, g = gudb_section(root)
    change = (g.hr_change_bpm, g.rmssd_change_pct)
    holter, rates, notes, what_ifs = holter_section(root, quick, change)
    week: list[str] = []
    week_rate = math.nan
    if not quick:
        week, week_rate = week_section(change)
    wall = time.perf_counter() - started

    k_lo, n_lo = g.leave_out
    healthy = {k: v for k, v in rates.items() if k.split(" / ")[0] in HEALTHY}
    text = [
        "# Alert engine on real recordings: stress against rest, false alarms",
        "",
        f"Default alert settings; generated by `benchmarks/eval_alerts.py`"
        f"{' **Quick run** (`--quick`).' if quick else ''}.",
        "",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}",
        f"- Python {platform.python_version()}, numpy {np.__version__}, "
        f"hrvstream {version('hrvstream')} at {git_revision()}",
        f"- Wall time {wall:.0f} s.",
        "",
        "## Summary",
        "",
        f"- GUDB, leave-out: maths scores higher than sitting for **{k_lo} of {n_lo}** "
        f"subjects (sign test p = {g.p_leave_out:.2g}).",
        "- Alerts per 24 h on healthy day-long recordings: "
        + "; ".join(f"{k} **{v:.2f}**" for k, v in healthy.items())
        + ".",
    ]
    text.append(
        f"- Sensitivity on the same days: GUDB's median maths response (HR "
        f"{change[0]:+.1f} bpm, RMSSD {change[1]:+.0f} %) would score "
        + ", ".join(f"{k} {v:.1f}" for k, v in what_ifs.items() if k in HEALTHY)
        + f" against the previous-day baselines (an alert needs {AlertConfig().raise_score:g})."
    )
    if not quick:
        text.append(f"- Simulated calm week: {week_rate:.2f} alerts per 24 h.")
    if notes:
        text += ["", "Notes from reading the recordings:", "", *notes]
    text += ["", *gudb, *holter, *week]
    report = "\n".join(text) + "\n"
    print(report)
    target: Path | None = args.markdown
    if target is None and not quick:
        target = RESULTS
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(report)
        print(f"eval_alerts: wrote {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
