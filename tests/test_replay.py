"""Capture files through analyze and replay: the same beats, the same rows."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

import pytest

from hrvstream.cli import main
from hrvstream.pipeline import records_from_series
from hrvstream.protocol.capture import (
    CaptureEvent,
    CaptureHeader,
    Notification,
    encode_header,
    encode_record,
)
from hrvstream.protocol.heart_rate import parse_heart_rate_measurement
from hrvstream.recordings import RRSeries, read_recording
from tests.clirun import hrvstream


def write_capture(
    path: Path,
    records: Sequence[Notification | CaptureEvent] | None = None,
    series: RRSeries | None = None,
) -> Path:
    if records is None:
        assert series is not None
        records = list(records_from_series(series))
    recs = records
    header = CaptureHeader(
        started_at=datetime.datetime(2026, 11, 21, tzinfo=datetime.UTC), source="file"
    )
    with path.open("w") as fh:
        fh.write(encode_header(header) + "\n")
        for r in recs:
            fh.write(encode_record(r) + "\n")
    return path


def test_replay_and_analyze_give_identical_rows_on_a_day_long_recording(
    recordings: Path, tmp_path: Path
) -> None:
    series = read_recording(recordings / "physionet_nsr2db/nsr001_rr_secs.txt")
    cap = write_capture(tmp_path / "nsr001.capture", series=series)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert main(["replay", str(cap), "--speed", "max", "--metrics-out", str(a)]) == 0
    assert main(["analyze", str(cap), "--step", "beat", "-o", str(b)]) == 0
    ta, tb = a.read_text(), b.read_text()
    assert ta.count("\n") == len(series) + 1
    assert ta == tb


def test_rr_file_replays_through_the_strap_encoding(tmp_path: Path) -> None:
    rr = tmp_path / "s.txt"
    assert main(["simulate", "--duration", "10m", "--seed", "4", "-o", str(rr)]) == 0
    out = tmp_path / "m.csv"
    proc = hrvstream(["replay", str(rr), "--speed", "max", "--metrics-out", str(out)])
    assert proc.returncode == 0, proc.stderr
    n = len(read_recording(rr))
    assert f"{n} beats" in proc.stderr
    assert out.read_text().count("\n") == n + 1


def test_corrupt_payloads_are_counted_and_the_rest_analysed(tmp_path: Path) -> None:
    series = read_recording_sim(tmp_path)
    recs = [r for r in records_from_series(series) if isinstance(r, Notification)]
    bad = b"\x10\x48\x54"  # RR present, odd number of RR bytes
    corrupt = [9, 200, 201]
    lost_rr = 0
    for i in corrupt:
        lost_rr += len(parse_heart_rate_measurement(recs[i].payload).rr_raw)
        recs[i] = Notification(t_s=recs[i].t_s, uuid=recs[i].uuid, payload=bad)
    cap = write_capture(tmp_path / "c.capture", records=recs)
    loaded = read_recording(cap)
    assert len(loaded) == len(series) - lost_rr
    assert any("3 malformed notification payloads" in n for n in loaded.notes)
    proc = hrvstream(["analyze", str(cap)])
    assert proc.returncode == 0
    assert "3 malformed notification payloads" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = hrvstream(["replay", str(cap), "--speed", "max"])
    assert proc.returncode == 0 and "3 malformed notification payloads" in proc.stderr


def test_disconnect_event_is_a_gap(tmp_path: Path) -> None:
    series = read_recording_sim(tmp_path)
    recs: list[Notification | CaptureEvent] = list(records_from_series(series))
    t_drop = recs[300].t_s
    del recs[300:303]
    recs.insert(300, CaptureEvent(t_s=t_drop, event="disconnected"))
    cap = write_capture(tmp_path / "g.capture", records=recs)
    loaded = read_recording(cap)
    jumps = loaded.t_s[1:] - loaded.t_s[:-1] - loaded.rr_ms[1:] / 1000
    assert (jumps > 1.0).sum() == 1
    assert any("gap" in n for n in loaded.notes)


def test_malformed_capture_line_names_the_line(tmp_path: Path) -> None:
    series = read_recording_sim(tmp_path)
    cap = write_capture(tmp_path / "m.capture", series=series)
    lines = cap.read_text().splitlines()
    lines[5] = '{"t": 3.0, "uuid": "00002a37-0000-1000-8000-00805f9b34fb", "hex": "zz"}'
    cap.write_text("\n".join(lines) + "\n")
    for cmd in (["analyze", str(cap)], ["replay", str(cap), "--speed", "max"]):
        proc = hrvstream(cmd)
        assert proc.returncode == 1
        assert f"{cap}, line 6" in proc.stderr and "Traceback" not in proc.stderr
    proc = hrvstream(["analyze", str(cap), "--lenient"])
    assert proc.returncode == 0 and "skipped 1 malformed line" in proc.stderr


@pytest.mark.parametrize("speed", ["0", "-1", "fast"])
def test_bad_speed(tmp_path: Path, speed: str) -> None:
    proc = hrvstream(["replay", "x.txt", "--speed", speed])
    assert proc.returncode == 1 and "--speed" in proc.stderr


def read_recording_sim(tmp_path: Path) -> RRSeries:
    rr = tmp_path / "sim.txt"
    if not rr.exists():
        assert main(["simulate", "--duration", "10m", "--seed", "9", "-o", str(rr)]) == 0
    return read_recording(rr)
