"""The ``hrvstream`` command: the one place that parses arguments and configures logging."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from hrvstream import __version__
from hrvstream.alerts_cli import add_alerts_parser, run_alerts
from hrvstream.dashboard.users_cli import add_users_parser, run_users
from hrvstream.errors import ConfigError, HrvStreamError

if TYPE_CHECKING:
    from hrvstream.pipeline import Record
    from hrvstream.recordings.capture_reader import CaptureReader

log = logging.getLogger("hrvstream")

OUTPUT_FORMATS = ("csv", "json")


def parse_duration(text: str, *, what: str = "duration") -> float:
    """Positive seconds from ``"90"``, ``"90s"``, ``"15m"``, ``"1.5h"`` or ``"1h30m"``."""
    from hrvstream.simulate import parse_duration_s

    value = parse_duration_s(text, what=what)
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"invalid {what} {text!r}: it must be more than 0 s")
    return value


def _step(text: str) -> float | None:
    if text.strip().lower() == "beat":
        return None
    return parse_duration(text, what="--step")


def _add_input_options(p: argparse.ArgumentParser, formats: Sequence[str]) -> None:
    """Options about reading the input recording, shared by analyze and replay."""
    p.add_argument("--window", default="300", help="window length (default 300 s; 5m works)")
    p.add_argument(
        "--no-correct", action="store_true", help="compute on the raw intervals (no correction)"
    )
    p.add_argument("--input-format", choices=formats, help="force the input format")
    p.add_argument("--fs", type=float, help="sampling rate (Hz) of R-peak sample-index files")
    p.add_argument(
        "--lenient", action="store_true", help="skip malformed lines and report how many"
    )


def _add_virtual_strap_options(
    p: argparse.ArgumentParser, *, system_help: str, speed: bool = True
) -> None:
    """``--ble system|virtual``, ``--play FILE`` (and ``--speed``): a virtual strap instead."""
    p.add_argument(
        "--ble",
        choices=("system", "virtual"),
        default="system",
        help=f"system: {system_help}; virtual: a virtual strap playing --play FILE",
    )
    p.add_argument("--play", metavar="FILE", help="with --ble virtual: the recording it plays")
    if speed:
        p.add_argument("--speed", default="1", help="with --ble virtual: 1 = real time, N, or max")


def _build_parser() -> argparse.ArgumentParser:
    from hrvstream.recordings.readers import FORMATS

    parser = argparse.ArgumentParser(
        prog="hrvstream",
        description="Heart rate variability from chest straps to the clinic.",
    )
    parser.add_argument("--version", action="version", version=f"hrvstream {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    a = sub.add_parser(
        "analyze",
        help="HRV metrics of a whole recording over sliding windows",
        description=(
            "Compute HRV over sliding windows of a recording: one row per window "
            "(or per beat with --per-beat). Input formats are detected automatically: "
            + ", ".join(FORMATS)
            + "."
        ),
    )
    a.add_argument("input", help="recording file ('-' reads one RR per line from stdin)")
    a.add_argument(
        "--step",
        default="5",
        help="seconds between window ends, or 'beat' for a window at every beat (default 5)",
    )
    a.add_argument(
        "--per-beat",
        action="store_true",
        help="one row per input beat: t_s,rr_ms,artifact,nn_ms",
    )
    a.add_argument(
        "--format",
        action="append",
        default=[],
        metavar="FMT",
        help=(
            "output format csv (default) or json (JSON Lines); an input format name "
            f"({', '.join(FORMATS)}) forces the input format. May be given twice."
        ),
    )
    _add_input_options(a, FORMATS)
    a.add_argument("-o", "--output", default="-", help="output file, '-' for stdout (default)")
    a.add_argument("--no-progress", action="store_true", help="never show a progress bar")

    sc = sub.add_parser(
        "scan",
        help="list chest straps advertising the Heart Rate Service",
        description="Scan for BLE devices advertising the Heart Rate Service (0x180D).",
    )
    sc.add_argument("--timeout", default="5", help="how long to scan (default 5 s)")
    _add_virtual_strap_options(sc, system_help="this machine's Bluetooth adapter", speed=False)

    rec = sub.add_parser(
        "record",
        help="record a strap's notifications byte for byte to a capture file",
        description=(
            "Record every Heart Rate Measurement notification of a strap, with its "
            "arrival time, to a capture file (JSON Lines, one flushed line each)."
        ),
    )
    rec.add_argument("--device", help="the strap's address or advertised name")
    rec.add_argument("-o", "--output", required=True, help="capture file to write")
    rec.add_argument("--duration", help="stop after this long (default: until Ctrl-C)")
    _add_virtual_strap_options(rec, system_help="a real strap (--device)")
    rec.add_argument("--fs", type=float, help="sampling rate (Hz) of R-peak files to play")

    r = sub.add_parser(
        "replay",
        help="feed a recording through the agent's pipeline as if live",
        description=(
            "Feed a recording (a capture file, or any RR file encoded as a strap's "
            "notifications) through the agent's pipeline: Heart Rate Measurement parser, "
            "beat timing, streaming HRV engine."
        ),
    )
    r.add_argument("input", help="capture file or RR recording")
    r.add_argument(
        "--speed", default="1", help="1 = real time, N = N times faster, max = no waiting"
    )
    r.add_argument(
        "--metrics-out",
        metavar="PATH",
        help="write the per-beat metric rows (analyze CSV format) to PATH ('-' = stdout)",
    )
    _add_input_options(r, FORMATS)
    r.add_argument(
        "--broker",
        metavar="URL",
        help=(
            "publish the recording as if live to this broker (mqtt://user@host:port or "
            "mqtts://...; password from HRVSTREAM_MQTT_PASSWORD or --password-file)"
        ),
    )
    r.add_argument("--patient", help="with --broker: the patient's pseudonym")
    r.add_argument("--ca-file", help="with mqtts://: CA certificate of the broker")
    r.add_argument("--password-file", help="with --broker: file holding the password")
    r.add_argument("--spool", help="with --broker: spool database (default: a temporary one)")
    r.add_argument("--mqtt311", action="store_true", help="speak MQTT 3.1.1 (brokers without v5)")
    r.add_argument(
        "--ble",
        choices=("none", "virtual"),
        default="none",
        help=(
            "none: feed the notifications straight to the parser (default); virtual: "
            "play them from a virtual strap on a Bumble BLE stack through bleak"
        ),
    )

    ag = sub.add_parser(
        "agent",
        help="run the agent: straps -> HRV -> MQTT (a long-running service)",
        description=(
            "Hold the configured straps, compute HRV beat by beat and publish beats, "
            "metrics and status over MQTT, spooling everything to disk until the broker "
            "acknowledges it. Stops cleanly on SIGTERM/SIGINT."
        ),
    )
    ag.add_argument("--config", required=True, help="agent TOML file (see deploy/)")
    _add_virtual_strap_options(ag, system_help="the straps in the configuration")

    from hrvstream.server import add_server_arguments

    sv = sub.add_parser(
        "server",
        help="run the clinic server: MQTT -> validation -> store, health and metrics",
        description=(
            "Subscribe to the patients' topics, validate every message, store beats, "
            "metrics and alerts (SQLite or InfluxDB) and acknowledge each message only "
            "once it is stored. Serves /healthz and /metrics. Stops cleanly on SIGTERM."
        ),
    )
    add_server_arguments(sv)

    dm = sub.add_parser(
        "demo",
        help="the whole system on this machine: virtual straps, broker, server, store",
        description=(
            "Run the whole system on embedded defaults: an in-process MQTT broker, three "
            "virtual patients wearing virtual straps (one with a stress episode), their "
            "agents, and the server on a SQLite store. Nothing else needs installing."
        ),
    )
    dm.add_argument("--speed", default="10", help="time factor (default 10; 1 = real time)")
    dm.add_argument("--duration", default="2h", help="length of the simulated sessions")
    dm.add_argument("--dir", default="hrvstream-demo", help="where the store and spools go")
    dm.add_argument("--http-port", type=int, default=8080, help="server HTTP port (0: any)")
    dm.add_argument(
        "--no-browser",
        action="store_true",
        help="do not open the dashboard in a web browser (it opens when there is a display)",
    )

    s = sub.add_parser(
        "simulate",
        help="write a simulated RR session (one RR in ms per line)",
        description=(
            "Simulate a realistic RR-interval session with respiratory (HF) and Mayer-wave "
            "(LF) modulation, optional stress episodes, exercise and artifacts."
        ),
    )
    s.add_argument("--duration", default="10m", help="session length (default 10m)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--hr", type=float, default=65.0, help="resting heart rate, bpm (default 65)")
    s.add_argument(
        "--stress",
        action="append",
        default=[],
        metavar="START[:DURATION]",
        help="a stress episode, e.g. 20m:10m (repeatable)",
    )
    s.add_argument(
        "--exercise",
        action="append",
        default=[],
        metavar="START:DURATION",
        help="an exercise bout, e.g. 40m:15m (repeatable)",
    )
    s.add_argument("--ectopic-rate", type=float, default=0.0, help="ectopic beats per beat")
    s.add_argument("--missed-rate", type=float, default=0.0, help="missed beats per beat")
    s.add_argument("--extra-rate", type=float, default=0.0, help="extra beats per beat")
    s.add_argument("-o", "--output", default="-", help="output file, '-' for stdout (default)")
    add_alerts_parser(sub)
    add_users_parser(sub)
    return parser


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def _cmd_analyze(args: argparse.Namespace) -> int:
    from hrvstream.hrv.engine import AnalysisConfig, analyze
    from hrvstream.output import ProgressBar, write_beats, write_windows
    from hrvstream.recordings.readers import FORMATS, parse_rr_text, read_recording

    out_format = "csv"
    in_format: str | None = args.input_format
    for f in args.format:
        if f in OUTPUT_FORMATS:
            out_format = f
        elif f in FORMATS:
            in_format = f
        else:
            raise ConfigError(
                f"--format {f!r}: use csv or json for the output, or an input format: "
                + ", ".join(FORMATS)
            )
    window = parse_duration(args.window, what="--window")
    step = _step(args.step)
    progress = ProgressBar.for_stream(sys.stderr, enabled=not args.no_progress)
    progress.stage("reading")
    if args.input == "-":
        series = parse_rr_text(sys.stdin, source="<stdin>", unit="auto", lenient=args.lenient)
    else:
        series = read_recording(args.input, format=in_format, fs=args.fs, lenient=args.lenient)
    for note in series.notes:
        log.warning("%s: %s", series.source, note)
    config = AnalysisConfig(window_s=window, step_s=step, correct=not args.no_correct)
    progress.stage("analysing")
    result = analyze(series, config, progress=progress.update)
    progress.stage("writing")
    with _open_output(args.output) as fh:
        if args.per_beat:
            write_beats(result.beats, fh, out_format)
        else:
            write_windows(result.windows, fh, out_format)
    progress.done()
    if series.skipped_lines:
        print(
            f"hrvstream: {series.source}: skipped {series.skipped_lines} malformed "
            f"line{'s' if series.skipped_lines != 1 else ''} (--lenient)",
            file=sys.stderr,
        )
    return 0


def parse_speed(text: str) -> float | None:
    """``max`` -> ``None`` (no waiting), else a positive factor."""
    if text.strip().lower() == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--speed {text!r}: use a factor such as 1 or 10, or max") from None
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"--speed {text!r}: the factor must be positive")
    return value


def _load_records(
    input_path: str, fmt: str | None, fs: float | None, lenient: bool
) -> tuple[CaptureReader | None, Iterable[Record]]:
    """A capture's records, or an RR recording encoded as a strap's notifications."""
    from hrvstream.pipeline import records_from_series
    from hrvstream.recordings.capture_reader import CaptureReader
    from hrvstream.recordings.readers import detect_format, read_head, read_recording

    path = Path(input_path)
    if fmt is None and path.is_file():
        fmt = detect_format(path, read_head(path))
    if fmt == "capture":
        reader = CaptureReader(path, lenient=lenient)
        return reader, reader
    series = read_recording(path, format=fmt, fs=fs, lenient=lenient)
    for note in series.notes:
        log.warning("%s: %s", series.source, note)
    return None, list(records_from_series(series))


def _cmd_scan(args: argparse.Namespace) -> int:
    from hrvstream.adapters.ble import scan

    timeout = parse_duration(args.timeout, what="--timeout")

    async def run() -> list[tuple[str | None, str, int | None]]:
        if args.ble == "virtual":
            from hrvstream.ble_session import virtual_strap

            if not args.play:
                raise ConfigError("--ble virtual needs --play FILE (what the strap plays)")
            _, records = _load_records(args.play, None, None, False)
            async with virtual_strap(records, speed=1.0) as vs:
                found = await scan(timeout, backend=vs.link_kwargs["scanner_backend"])  # type: ignore[arg-type]
        else:
            found = await scan(timeout)
        return [(s.name, s.address, s.rssi) for s in found]

    rows = asyncio.run(run())
    if not rows:
        print("hrvstream: no strap advertising the Heart Rate Service found", file=sys.stderr)
        return 1
    print(f"{'name':<24} {'address':<20} rssi")
    for name, address, rssi in rows:
        print(f"{name or '?':<24} {address:<20} {rssi if rssi is not None else ''}")
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if args.ble == "virtual":
        from hrvstream.ble_session import record_virtual

        if not args.play:
            raise ConfigError("--ble virtual needs --play FILE (what the strap plays)")
        _, records = _load_records(args.play, None, args.fs, False)
        writer = asyncio.run(record_virtual(records, out, speed=parse_speed(args.speed)))
    else:
        from hrvstream.ble_session import record_ble

        if not args.device:
            raise ConfigError("record needs --device ADDRESS|NAME (see hrvstream scan)")
        duration = parse_duration(args.duration, what="--duration") if args.duration else None
        writer = asyncio.run(record_ble(args.device, out, duration_s=duration))
    print(f"hrvstream: wrote {writer.lines} lines to {out}", file=sys.stderr)
    return 0


def _cmd_server(args: argparse.Namespace) -> int:
    from hrvstream.clinic import main_clinic

    return main_clinic(args)


def _has_display() -> bool:
    """Whether a web browser could show a window here (not in CI, not over plain SSH)."""
    if os.environ.get("CI", "").lower() == "true":
        return False
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _cmd_demo(args: argparse.Namespace) -> int:
    from hrvstream.agent import install_stop_signals
    from hrvstream.demo import SignIn, run_demo

    speed = parse_speed(args.speed) or 1000.0
    duration = parse_duration(args.duration, what="--duration")

    def opened(sign_in: SignIn) -> None:
        if not args.no_browser and _has_display():
            import webbrowser

            webbrowser.open(sign_in.url)

    async def run() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await run_demo(
            Path(args.dir),
            speed=speed,
            duration_s=duration,
            http_port=args.http_port,
            stop=stop,
            on_ready=opened,
        )

    asyncio.run(run())
    return 0


def _cmd_agent(args: argparse.Namespace) -> int:
    from hrvstream.agent import Agent, install_stop_signals, load_agent_settings

    settings = load_agent_settings(args.config)

    async def run() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        if args.ble == "virtual":
            from hrvstream.adapters.ble import StrapLink
            from hrvstream.ble_session import virtual_strap

            if not args.play:
                raise ConfigError("--ble virtual needs --play FILE (what the strap plays)")
            _, records = _load_records(args.play, None, None, False)
            async with virtual_strap(records, speed=parse_speed(args.speed)) as vs:

                def factory(target: str, **kw: object) -> StrapLink:
                    return StrapLink(vs.target, **vs.link_kwargs, **kw)  # type: ignore[arg-type]

                import time as _time

                agent = Agent(settings, link_factory=factory, unix_offset_s=_time.time())
                await agent.run(stop)
        else:
            await Agent(settings).run(stop)

    asyncio.run(run())
    return 0


def _replay_to_broker(args: argparse.Namespace, records: Iterable[Record]) -> int:
    import tempfile

    from hrvstream.adapters.mqtt import load_password, parse_broker_url
    from hrvstream.agent import AgentSettings, replay_to_broker

    if not args.patient:
        raise ConfigError("--broker needs --patient ID (the patient's pseudonym)")
    from hrvstream.protocol.messages import check_patient

    try:
        check_patient(args.patient)
    except ValueError as exc:
        raise ConfigError(f"--patient {args.patient!r}: {exc}") from exc
    broker = parse_broker_url(
        args.broker,
        password=load_password(file=args.password_file),
        ca_file=args.ca_file,
        client_id=f"hrvstream-replay-{args.patient}",
        mqtt5=not args.mqtt311,
    )
    with tempfile.TemporaryDirectory(prefix="hrvstream-replay-") as tmp:
        settings = AgentSettings(
            patient=args.patient,
            straps=("replay",),
            broker=broker,
            spool_path=Path(args.spool) if args.spool else Path(tmp) / "spool.db",
            window_s=parse_duration(args.window, what="--window"),
        )
        agent = asyncio.run(
            replay_to_broker(settings, list(records), speed=parse_speed(args.speed))
        )
    print(
        f"hrvstream: published {agent.published} messages for {args.patient} to {broker.display}",
        file=sys.stderr,
    )
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from hrvstream.hrv.engine import AnalysisConfig
    from hrvstream.output import format_window_row, window_header
    from hrvstream.pipeline import BeatPipeline, paced, run_records
    from hrvstream.recordings.capture_reader import decoder_notes

    speed = parse_speed(args.speed)
    reader, records = _load_records(args.input, args.input_format, args.fs, args.lenient)
    if args.broker:
        return _replay_to_broker(args, records)
    config = AnalysisConfig(
        window_s=parse_duration(args.window, what="--window"),
        step_s=None,
        correct=not args.no_correct,
    )
    pipeline = BeatPipeline(config)
    with contextlib.ExitStack() as stack:
        fh = stack.enter_context(_open_output(args.metrics_out)) if args.metrics_out else None
        if fh is not None:
            fh.write(window_header() + "\n")

        def write(rows: Iterable[dict[str, float]]) -> None:
            if fh is not None:
                for row in rows:
                    fh.write(format_window_row(row) + "\n")
            else:
                for _ in rows:
                    pass

        if args.ble == "virtual":
            from hrvstream.ble_session import replay_virtual

            asyncio.run(replay_virtual(records, pipeline, speed=speed, on_rows=write))
        else:
            write(run_records(pipeline, paced(records, speed)))
    d = pipeline.decoder
    print(
        f"hrvstream: replayed {d.notifications} notifications, {pipeline.beats} beats"
        + "".join(f"; {n}" for n in decoder_notes(d, reader.skipped if reader else 0)),
        file=sys.stderr,
    )
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from hrvstream.simulate import (
        ArtifactSpec,
        ExerciseBout,
        SessionConfig,
        parse_stress_spec,
        simulate_session,
    )

    stress = tuple(parse_stress_spec(x) for x in args.stress)
    exercise = []
    for x in args.exercise:
        ep = parse_stress_spec(x)
        exercise.append(ExerciseBout(start_s=ep.start_s, duration_s=ep.duration_s))
    for name in ("ectopic_rate", "missed_rate", "extra_rate"):
        v = getattr(args, name)
        if not (0.0 <= v < 0.5):
            raise ConfigError(
                f"--{name.replace('_', '-')} {v}: use a probability per beat, 0 to 0.5"
            )
    config = SessionConfig(
        duration_s=parse_duration(args.duration, what="--duration"),
        seed=args.seed,
        mean_hr_bpm=args.hr,
        stress=stress,
        exercise=tuple(exercise),
        artifacts=ArtifactSpec(
            ectopic_rate=args.ectopic_rate,
            missed_rate=args.missed_rate,
            extra_rate=args.extra_rate,
        ),
    )
    session = simulate_session(config)
    with _open_output(args.output) as fh:
        for v in session.series.rr_ms:
            fh.write(f"{v:.3f}\n")
    if args.output != "-":
        print(
            f"hrvstream: wrote {len(session.series)} RR intervals "
            f"({session.series.duration_s / 60:.1f} min) to {args.output}",
            file=sys.stderr,
        )
    return 0


@contextlib.contextmanager
def _open_output(target: str) -> Iterator[TextIO]:
    """stdout for ``-``, else the file; write errors become a clear message."""
    if target == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    try:
        fh = Path(target).open("w", encoding="utf-8", newline="")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise HrvStreamError(f"cannot write {target}: {exc.strerror}") from exc
    try:
        with fh:
            yield fh
    except OSError as exc:
        raise HrvStreamError(f"cannot write {target}: {exc.strerror}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hrvstream`` console script."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    handlers = {
        "server": _cmd_server,
        "agent": _cmd_agent,
        "demo": _cmd_demo,
        "users": run_users,
        "alerts": run_alerts,
        "analyze": _cmd_analyze,
        "record": _cmd_record,
        "replay": _cmd_replay,
        "scan": _cmd_scan,
        "simulate": _cmd_simulate,
    }
    try:
        return handlers[args.command](args)
    except HrvStreamError as exc:
        print(f"hrvstream: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); that is not an error.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("hrvstream: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        where = f" {exc.filename}:" if exc.filename else ""
        print(f"hrvstream: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
