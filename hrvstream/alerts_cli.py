"""``hrvstream alerts``: replay a recording through the alert engine, offline.

::

    hrvstream alerts INPUT [--baseline FILE...] [--config alerts.toml] [-o alerts.jsonl]
                           [--patient ID] [--start 2026-01-05T08:00] [--window 300]
                           [--step 5] [--input-format NAME] [--fs HZ] [--lenient]
                           [--summary]

The baseline recordings (earlier recordings of the same person, oldest first) are placed
on the days before INPUT, the engine's long-term baseline is built from them, and INPUT
is replayed on its own timeline (see :mod:`hrvstream.alerts.offline`). Each alert is one
JSON object per line, with ``t_s`` in seconds since the start of INPUT. A one-line
summary goes to standard error (``--summary``: the whole summary, as JSON). Errors are one
line, ``hrvstream: error: ...``, exit status 1 (2 for a usage error).

This module imports only the standard library at import time, so ``hrvstream --help``
stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hrvstream.errors import ConfigError

if TYPE_CHECKING:
    from hrvstream.alerts.config import AlertConfigSet
    from hrvstream.recordings.model import RRSeries

__all__ = ["add_alerts_parser", "load_alerts_config", "one_line", "run_alerts"]

_PROG = "hrvstream alerts"


def add_alerts_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``alerts`` command to ``subparsers``; ``args.func(args)`` runs it.

    Parameters
    ----------
    subparsers:
        The result of ``parser.add_subparsers(...)`` of the ``hrvstream`` parser.
    """
    from hrvstream.alerts.offline import DEFAULT_PATIENT, DEFAULT_START
    from hrvstream.recordings.readers import FORMATS

    p = subparsers.add_parser(
        "alerts",
        help="replay a recording through the alert engine and list the alerts it raises",
        description=(
            "Build the patient's baseline from earlier recordings (--baseline, placed on "
            "the days before INPUT at the same clock time, each ending at least 1 h "
            "before the next), replay INPUT through the alert engine on its own timeline "
            "and write one JSON object per alert (JSON Lines): t_s (seconds since the "
            "start of INPUT), resolved_t_s, rule, severity, metric, value, baseline, "
            "deviation, deviation_pct, stress_score, notify, message, explanation."
        ),
    )
    p.set_defaults(func=run_alerts)
    p.add_argument("input", metavar="INPUT", help="the recording to judge")
    p.add_argument(
        "--baseline",
        nargs="+",
        action="extend",
        default=[],
        metavar="FILE",
        help=(
            "earlier recordings of the same person, oldest first (repeatable; give INPUT "
            "before this option). Without any, the engine has only INPUT's own quiet "
            "windows (a session baseline)"
        ),
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="alert settings: a TOML file with an [alerts] table, or holding only its keys",
    )
    p.add_argument(
        "-o", "--output", default="-", help="where the alerts go, '-' for stdout (default)"
    )
    p.add_argument(
        "--patient",
        default=DEFAULT_PATIENT,
        help=f"the pseudonym the windows carry; picks per-patient overrides (default "
        f"{DEFAULT_PATIENT})",
    )
    p.add_argument(
        "--start",
        default=DEFAULT_START,
        help=(
            "when INPUT starts, ISO 8601; without an offset it is in the configured "
            f"timezone (default {DEFAULT_START}, a Monday)"
        ),
    )
    p.add_argument("--window", default="300", help="HRV window length (default 300 s)")
    p.add_argument("--step", default="5", help="seconds between windows (default 5, as live)")
    p.add_argument(
        "--input-format", choices=FORMATS, help="force the format of INPUT and the baselines"
    )
    p.add_argument("--fs", type=float, help="sampling rate (Hz) of R-peak sample-index files")
    p.add_argument(
        "--lenient", action="store_true", help="skip malformed lines and report how many"
    )
    p.add_argument(
        "--summary", action="store_true", help="print the whole summary (JSON) to stderr"
    )


def load_alerts_config(path: str) -> AlertConfigSet:
    """The alert settings of a TOML file (see
    :func:`hrvstream.alerts.offline.alerts_config_from_toml`).

    Raises
    ------
    ConfigError
        A missing or unreadable file, invalid TOML, or a bad setting.
    """
    from hrvstream.alerts.offline import alerts_config_from_toml

    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such configuration file (--config)") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory, not a configuration file (--config)") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text file (--config)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    return alerts_config_from_toml(data, str(p))


def _read(path: str, args: argparse.Namespace, what: str) -> RRSeries:
    from hrvstream.recordings.readers import read_recording

    if path == "-":
        raise ConfigError(f"{what} '-': {_PROG} reads files, not standard input")
    series = read_recording(path, format=args.input_format, fs=args.fs, lenient=args.lenient)
    if series.skipped_lines:
        print(
            f"{_PROG}: {series.source}: skipped {series.skipped_lines} malformed "
            f"line{'s' if series.skipped_lines != 1 else ''} (--lenient)",
            file=sys.stderr,
        )
    return series


def run_alerts(args: argparse.Namespace) -> int:
    """Run ``hrvstream alerts`` (the parser's ``func``).

    Returns
    -------
    int
        0. Errors are raised as :class:`~hrvstream.errors.HrvStreamError` for the
        ``hrvstream`` entry point to print as one line.
    """
    from hrvstream.alerts.config import AlertConfigSet
    from hrvstream.alerts.offline import evaluate, iter_json_lines, parse_start
    from hrvstream.cli import _open_output, parse_duration
    from hrvstream.protocol.messages import is_valid_patient

    if not is_valid_patient(args.patient):
        raise ConfigError(
            f"--patient {args.patient!r}: a pseudonym of 2-64 characters a-z, 0-9, '_' and "
            "'-', starting with a letter or digit"
        )
    config = AlertConfigSet() if args.config is None else load_alerts_config(args.config)
    cfg = config.for_patient(args.patient)
    start = parse_start(args.start, cfg.zone())
    window_s = parse_duration(args.window, what="--window")
    step_s = parse_duration(args.step, what="--step")

    series = _read(args.input, args, "INPUT")
    baselines = [_read(b, args, "--baseline") for b in args.baseline]
    if not baselines:
        print(
            f"{_PROG}: no --baseline: the engine has only INPUT's own quiet windows (a "
            f"session baseline, after {cfg.session_min_windows} windows of "
            f"{window_s:g} s); give earlier recordings of the same person for a "
            "long-term baseline",
            file=sys.stderr,
        )
    result = evaluate(
        series,
        baselines,
        config,
        patient=args.patient,
        start_unix_s=start,
        window_s=window_s,
        step_s=step_s,
    )
    summary = result.summary
    if baselines and summary["baseline_source"] != "long_term":
        print(
            f"{_PROG}: the baseline recordings gave {summary['baseline_windows']} resting "
            f"windows, fewer than the {cfg.baseline_min_windows} a long-term baseline "
            "needs: the engine falls back on INPUT's session baseline",
            file=sys.stderr,
        )
    with _open_output(args.output) as fh:
        fh.writelines(iter_json_lines(result.alerts))
    print(one_line(summary), file=sys.stderr)
    if args.summary:
        print(json.dumps(summary, indent=2, allow_nan=False), file=sys.stderr)
    return 0


def one_line(summary: dict[str, Any]) -> str:
    """The summary as the one line printed after every run."""
    n = summary["alerts"]
    hours = summary["input_duration_s"] / 3600.0
    rate = summary["alerts_per_24h"]
    by = summary["windows_by_state"]
    n_rec = len(summary["baseline_recordings"])
    base = (
        f"long-term baseline of {summary['baseline_windows']} resting windows from "
        f"{n_rec} recording{'s' if n_rec != 1 else ''}"
        if summary["baseline_source"] == "long_term"
        else "session baseline only"
    )
    return (
        f"{_PROG}: {summary['input']}: {n} alert{'s' if n != 1 else ''} in {hours:.1f} h"
        + ("" if rate is None else f" ({rate:.2f} per 24 h)")
        + f"; {summary['windows']} windows: {summary['windows_judged']} judged, "
        f"{by['activity']} activity, {by['poor_quality']} poor quality, "
        f"{by['no_baseline']} without a baseline; {base}"
    )
