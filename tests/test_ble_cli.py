"""``hrvstream record / replay / scan --ble virtual`` as a user runs them (subprocesses).

The round trip: ``record --ble virtual --play FILE --speed max -o CAP`` (a virtual strap on
the Bumble radio, the agent's StrapLink through bleak, the capture writer), then
``replay CAP --ble virtual`` (the same radio path into the streaming engine) and
``analyze CAP --step beat`` (the batch engine) must write byte-identical metric files.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hrvstream.pipeline import records_from_series
from hrvstream.protocol.capture import CaptureEvent, Notification, decode_capture
from hrvstream.protocol.heart_rate import HEART_RATE_MEASUREMENT_UUID
from hrvstream.recordings import read_recording

#: The long round trip uses the longest shared recording that stays reasonable:
#: PhysioNet CHF2DB chf201, 112,183 intervals (~23 h, 82,832 notifications). Measured on
#: 2 cores: record ~16 s, replay --ble virtual ~55 s, analyze ~5 s (~1.3 min in all).
LONG_RECORDING = Path("physionet_chf2db") / "chf201_rr_secs.txt"

PROBLEMS = ("Traceback", "Exception in callback", "Task exception was never retrieved")


def cli(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hrvstream.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def ok(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run the CLI; it must succeed and say nothing alarming on stderr."""
    proc = cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_clean(proc)
    return proc


def assert_clean(proc: subprocess.CompletedProcess[str]) -> None:
    for problem in PROBLEMS:
        assert problem not in proc.stderr, proc.stderr[-3000:]


def assert_clear_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert_clean(proc)
    assert "hrvstream: error:" in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def ble_round_trip(source: Path, tmp_path: Path) -> tuple[Path, str]:
    """record -> replay --ble virtual and analyze; both metric files must be identical."""
    cap, a, b = tmp_path / "s.capture", tmp_path / "a.csv", tmp_path / "b.csv"
    series = read_recording(source)
    encoded = list(records_from_series(series))

    proc = ok(
        ["record", "--ble", "virtual", "--play", str(source), "--speed", "max", "-o", str(cap)]
    )
    assert f"wrote {len(encoded) + 3} lines to {cap}" in proc.stderr

    with cap.open(encoding="utf-8") as fh:
        capture = decode_capture(fh)
    assert capture.header.source == "virtual"
    assert capture.header.device_name == "Virtual HRM"
    assert capture.header.device_address == "F0:00:00:00:00:01"
    notifications = [r for r in capture.records if isinstance(r, Notification)]
    events = [r for r in capture.records if isinstance(r, CaptureEvent)]
    assert len(notifications) == len(encoded)  # every notification the encoder made
    assert [(n.t_s, n.payload) for n in notifications] == [
        (n.t_s, n.payload) for n in encoded if isinstance(n, Notification)
    ]
    assert all(n.uuid == HEART_RATE_MEASUREMENT_UUID for n in notifications)
    assert [e.event for e in events] == ["connected", "disconnected"]

    proc = ok(["replay", str(cap), "--ble", "virtual", "--speed", "max", "--metrics-out", str(a)])
    assert f"replayed {len(encoded)} notifications, {len(series)} beats" in proc.stderr
    ok(["analyze", str(cap), "--step", "beat", "-o", str(b)])
    text = a.read_bytes()
    assert text == b.read_bytes()
    assert text.count(b"\n") == len(series) + 1
    return cap, text.decode()


def test_long_recording_round_trip_is_byte_identical(recordings: Path, tmp_path: Path) -> None:
    ble_round_trip(recordings / LONG_RECORDING, tmp_path)


def test_simulated_session_with_artifacts_round_trip(tmp_path: Path) -> None:
    rr = tmp_path / "sim.txt"
    ok(
        [
            *("simulate", "--duration", "30m", "--seed", "11", "--ectopic-rate", "0.02"),
            *("--missed-rate", "0.005", "--extra-rate", "0.005", "--stress", "10m:5m"),
            *("-o", str(rr)),
        ]
    )
    cap, via_ble = ble_round_trip(rr, tmp_path)
    # and the radio changes nothing: replay without it writes the same file
    direct = tmp_path / "direct.csv"
    ok(["replay", str(cap), "--speed", "max", "--metrics-out", str(direct)])
    assert direct.read_text() == via_ble


def test_record_at_a_finite_speed_keeps_every_payload(tmp_path: Path) -> None:
    rr = tmp_path / "short.txt"
    ok(["simulate", "--duration", "90s", "--seed", "5", "-o", str(rr)])
    cap = tmp_path / "short.capture"
    ok(["record", "--ble", "virtual", "--play", str(rr), "--speed", "60", "-o", str(cap)])
    with cap.open(encoding="utf-8") as fh:
        capture = decode_capture(fh)
    got = [r for r in capture.records if isinstance(r, Notification)]
    sent = [n for n in records_from_series(read_recording(rr)) if isinstance(n, Notification)]
    assert [n.payload for n in got] == [n.payload for n in sent]
    times = [n.t_s for n in got]
    assert times == sorted(times)  # arrival times on the strap's running clock


def test_scan_virtual_lists_the_virtual_strap(tmp_path: Path) -> None:
    rr = tmp_path / "s.txt"
    ok(["simulate", "--duration", "2m", "-o", str(rr)])
    proc = ok(["scan", "--ble", "virtual", "--play", str(rr), "--timeout", "1"])
    header, *rows = proc.stdout.splitlines()
    assert header.split() == ["name", "address", "rssi"]
    assert len(rows) == 1
    assert rows[0].startswith("Virtual HRM")
    assert "F0:00:00:00:00:01" in rows[0]


# ---------------------------------------------------------------------------------------
# Errors a user makes
# ---------------------------------------------------------------------------------------


@pytest.fixture
def rr_file(tmp_path: Path) -> Path:
    rr = tmp_path / "rr.txt"
    rr.write_text("".join(f"{800 + (i % 9) * 11}\n" for i in range(300)))
    return rr


def test_record_needs_a_device_or_virtual(tmp_path: Path) -> None:
    proc = cli(["record", "-o", str(tmp_path / "x.capture")])
    assert_clear_error(proc, "--device")
    assert not (tmp_path / "x.capture").exists()


def test_virtual_needs_play(tmp_path: Path) -> None:
    proc = cli(["record", "--ble", "virtual", "--speed", "max", "-o", str(tmp_path / "x.cap")])
    assert_clear_error(proc, "--play")
    assert not (tmp_path / "x.cap").exists()
    assert_clear_error(cli(["scan", "--ble", "virtual", "--timeout", "1"]), "--play")


def test_play_file_missing(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    proc = cli(["record", "--ble", "virtual", "--play", str(missing), "-o", str(tmp_path / "c")])
    assert_clear_error(proc, "missing.txt")


@pytest.mark.parametrize("where", ["no_such_directory", "a_directory"])
def test_record_to_an_unwritable_path(tmp_path: Path, rr_file: Path, where: str) -> None:
    out = tmp_path / "nope" / "x.capture" if where == "no_such_directory" else tmp_path
    proc = cli(
        ["record", "--ble", "virtual", "--play", str(rr_file), "--speed", "max", "-o", str(out)]
    )
    assert_clear_error(proc, f"cannot write {out}")


def test_replay_virtual_metrics_to_an_unwritable_path(tmp_path: Path, rr_file: Path) -> None:
    out = tmp_path / "nope" / "m.csv"
    proc = cli(
        ["replay", str(rr_file), "--ble", "virtual", "--speed", "max", "--metrics-out", str(out)]
    )
    assert_clear_error(proc, f"cannot write {out}")


def _file_size_limit(max_bytes: int) -> None:
    """In the child: writes past ``max_bytes`` fail with EFBIG, like a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))


@pytest.mark.skipif(os.name != "posix", reason="RLIMIT_FSIZE simulates a full disk")
def test_record_disk_full_mid_recording_is_one_clear_error(
    recordings: Path, tmp_path: Path
) -> None:
    cap = tmp_path / "full.capture"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "hrvstream.cli", "record", "--ble", "virtual"),
            *("--play", str(recordings / "pyhrv_nsrdb" / "SampleNNISeriesLong_ms.txt")),
            *("--speed", "max", "-o", str(cap)),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        preexec_fn=lambda: _file_size_limit(20_000),
    )
    assert_clear_error(proc, f"cannot write {cap}", "lines before this one are intact")
    assert proc.stderr.count("cannot write") == 1, proc.stderr[:3000]


@pytest.mark.skipif(os.name != "posix", reason="RLIMIT_FSIZE simulates a full disk")
def test_replay_virtual_disk_full_is_one_clear_error(recordings: Path, tmp_path: Path) -> None:
    out = tmp_path / "full.csv"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "hrvstream.cli", "replay", "--ble", "virtual"),
            str(recordings / "pyhrv_nsrdb" / "SampleNNISeriesLong_ms.txt"),
            *("--speed", "max", "--metrics-out", str(out)),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        preexec_fn=lambda: _file_size_limit(200_000),
    )
    assert_clear_error(proc, f"cannot write {out}")
    assert proc.stderr.count("cannot write") == 1, proc.stderr[:3000]
