"""The ``hrvstream`` command line: analyze and simulate, as a user runs them."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hrvstream.cli import main, parse_duration
from hrvstream.errors import ConfigError
from tests.clirun import hrvstream

HEADER = (
    "t_s,n_beats,coverage,artifact_pct,mean_hr_bpm,mean_nn_ms,sdnn_ms,rmssd_ms,"
    "pnn50_pct,lf_ms2,hf_ms2,lf_hf"
)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sim") / "session.txt"
    assert main(["simulate", "--duration", "15m", "--seed", "3", "-o", str(path)]) == 0
    return path


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_simulate_writes_one_rr_per_line(session: Path) -> None:
    rr = np.loadtxt(session)
    assert 14 * 60 < rr.sum() / 1000 <= 15 * 60 + 2
    assert np.all((rr > 300) & (rr < 2000))


def test_analyze_csv_header_and_window_ends(
    session: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["analyze", str(session)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(HEADER)
    rows = _rows(out)
    t = [float(r["t_s"]) for r in rows]
    assert t[:3] == [5.0, 10.0, 15.0]
    assert np.allclose(np.diff(t), 5.0)
    total_s = np.loadtxt(session).sum() / 1000
    assert t[-1] <= total_s < t[-1] + 5
    # early windows are too short: empty cells, not zeros
    assert rows[0]["rmssd_ms"] == "" and rows[0]["lf_ms2"] == ""
    assert rows[-1]["rmssd_ms"] != "" and float(rows[-1]["lf_ms2"]) > 0


def test_analyze_step_beat_and_per_beat(session: Path, tmp_path: Path) -> None:
    n = len(np.loadtxt(session))
    out = tmp_path / "w.csv"
    assert main(["analyze", str(session), "--step", "beat", "-o", str(out)]) == 0
    assert len(_rows(out.read_text())) == n
    beats = tmp_path / "b.csv"
    assert main(["analyze", str(session), "--per-beat", "-o", str(beats)]) == 0
    text = beats.read_text()
    assert text.splitlines()[0] == "t_s,rr_ms,artifact,nn_ms"
    rows = _rows(text)
    assert len(rows) == n
    rr = np.loadtxt(session)
    np.testing.assert_allclose([float(r["rr_ms"]) for r in rows], rr, atol=1e-4)


def test_analyze_json_lines(session: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(session), "--format", "json", "--window", "2m"]) == 0
    lines = capsys.readouterr().out.splitlines()
    objs = [json.loads(x) for x in lines]
    assert list(objs[0])[:12] == HEADER.split(",")
    assert objs[0]["rmssd_ms"] is None
    assert isinstance(objs[-1]["rmssd_ms"], float)
    assert isinstance(objs[-1]["n_beats"], int)


def test_no_correct_changes_results_with_artifacts(tmp_path: Path) -> None:
    path = tmp_path / "art.txt"
    assert main(["simulate", "--duration", "10m", "--ectopic-rate", "0.03", "-o", str(path)]) == 0
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert main(["analyze", str(path), "-o", str(a)]) == 0
    assert main(["analyze", str(path), "--no-correct", "-o", str(b)]) == 0
    ra, rb = _rows(a.read_text()), _rows(b.read_text())
    last_a, last_b = ra[-1], rb[-1]
    assert float(last_a["artifact_pct"]) > 0
    assert float(last_b["rmssd_ms"]) > 1.5 * float(last_a["rmssd_ms"])


def test_malformed_line_is_a_clear_error_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("800\n810\nabc\n820\n")
    proc = hrvstream(["analyze", str(bad)])
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"{bad}, line 3" in proc.stderr
    assert "--lenient" in proc.stderr


def test_lenient_skips_and_reports(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(["800", "x", "810", "0", *["805"] * 400]) + "\n")
    proc = hrvstream(["analyze", str(bad), "--lenient"])
    assert proc.returncode == 0, proc.stderr
    assert "skipped 2 malformed lines" in proc.stderr
    assert proc.stdout.startswith("t_s,")


def test_missing_file_and_bad_options(tmp_path: Path) -> None:
    proc = hrvstream(["analyze", str(tmp_path / "nope.txt")])
    assert proc.returncode == 1 and "nope.txt" in proc.stderr and "Traceback" not in proc.stderr
    proc = hrvstream(["analyze", str(tmp_path / "nope.txt"), "--window", "abc"])
    assert proc.returncode == 1 and "--window" in proc.stderr
    proc = hrvstream(["analyze", "x.txt", "--format", "xml"])
    assert proc.returncode == 1 and "csv or json" in proc.stderr


def test_stdin_input(session: Path) -> None:
    proc = hrvstream(["analyze", "-", "--window", "60"], input=session.read_text())
    assert proc.returncode == 0, proc.stderr
    assert len(_rows(proc.stdout)) > 100


def test_unwritable_output_is_a_clear_error(session: Path, tmp_path: Path) -> None:
    proc = hrvstream(["analyze", str(session), "-o", str(tmp_path / "no" / "such" / "dir.csv")])
    assert proc.returncode == 1
    assert "cannot write" in proc.stderr and "Traceback" not in proc.stderr


def test_shared_recording_needs_fs(recordings: Path) -> None:
    path = recordings / "gudb_stress/subject_00/maths/annotation_cs.tsv"
    proc = hrvstream(["analyze", str(path)])
    assert proc.returncode == 1 and "--fs" in proc.stderr
    proc = hrvstream(["analyze", str(path), "--fs", "250", "--window", "60"])
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("1.5h", 5400.0)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "-5", "0", "inf"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_progress_bar_on_a_terminal_only(session: Path, tmp_path: Path) -> None:
    import os
    import pty

    out = tmp_path / "w.csv"
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "hrvstream.cli", "analyze", str(session), "-o", str(out)],
            stderr=slave,
            stdout=subprocess.DEVNULL,
            check=False,
            timeout=300,
        )
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    assert proc.returncode == 0
    shown = b"".join(chunks).decode()
    assert "analysing" in shown and "100.0%" in shown
    piped = hrvstream(["analyze", str(session), "-o", str(out)])
    assert piped.returncode == 0 and piped.stderr == ""
