"""Tests of :mod:`hrvstream.recordings.readers` on the shared real data and on made-up files.

Expected values are computed from the files themselves (with the csv module and plain
``float``), independently of the reader under test.
"""

from __future__ import annotations

import csv
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hrvstream.errors import MalformedLineError, RecordingError
from hrvstream.recordings import FORMATS, RRSeries, read_recording
from hrvstream.recordings.readers import (
    BEAT_SYMBOLS,
    HEAD_LINES,
    detect_format,
    parse_rr_text,
)
from tests.conftest import shared_recordings_dir

# --------------------------------------------------------------------------------------
# the shared real recordings
# --------------------------------------------------------------------------------------

_LENIENT = {"physionet_healthy/008.txt", "polar_hrm/real_rri.txt"}
_GUDB_FS = 250.0


def _is_data_file(path: Path) -> bool:
    return path.is_file() and path.name != "SOURCES.md" and not path.name.startswith("LICENSE")


def _data_files() -> list[str]:
    root = shared_recordings_dir()
    if root is None:
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if _is_data_file(p))


_FILES = _data_files()


def _expected_format(rel: str) -> str:
    """The format of each shared file, as SOURCES.md describes it."""
    folder, name = rel.split("/", 1)[0], Path(rel).name
    if folder == "polar_h10_pvc":
        return "polar-csv"
    if folder == "polar_hrm":
        return "hrm" if name.endswith(".hrm") else "rr-ms"
    if folder in ("pyhrv_nsrdb", "physionet_healthy"):
        return "rr-ms"
    if folder in ("physionet_nsr2db", "physionet_chf2db"):
        return "physionet-rr-s"
    if folder == "mitdb_100":
        return "mitdb-csv" if name.endswith(".csv") else "wfdb"
    if folder == "gudb_stress":
        return "rpeaks"
    raise AssertionError(f"no expected format for the new shared file {rel}; add it here")


def _read(path: Path, rel: str) -> RRSeries:
    fs = _GUDB_FS if rel.startswith("gudb_stress/") else None
    return read_recording(path, fs=fs, lenient=rel in _LENIENT)


def _nonblank(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _head(path: Path) -> list[str]:
    with path.open(encoding="utf-8", errors="replace") as fh:
        return [line for _, line in zip(range(HEAD_LINES), fh, strict=False)]


def test_shared_recordings_are_present_and_known(recordings: Path) -> None:
    files = [p for p in recordings.rglob("*") if _is_data_file(p)]
    assert files, "the shared recordings directory is empty"
    assert len(files) == len(_FILES)
    for p in files:
        _expected_format(p.relative_to(recordings).as_posix())


@pytest.mark.parametrize("rel", _FILES)
def test_every_shared_file_loads(recordings: Path, rel: str) -> None:
    path = recordings / rel
    series = _read(path, rel)
    assert series.format == _expected_format(rel)
    assert series.source == str(path)
    assert len(series) > 0
    assert series.rr_ms.dtype == np.float64
    assert np.all(np.isfinite(series.rr_ms))
    assert np.all(series.rr_ms > 0)
    np.testing.assert_array_equal(series.t_s, np.cumsum(series.rr_ms) / 1000.0)
    assert series.skipped_lines == (1 if rel in _LENIENT else 0)


@pytest.mark.parametrize("rel", _FILES)
def test_detection_picks_the_documented_format(recordings: Path, rel: str) -> None:
    path = recordings / rel
    assert detect_format(path, _head(path)) == _expected_format(rel)


@pytest.mark.parametrize(
    "rel", ["physionet_nsr2db/nsr001_rr_secs.txt", "physionet_chf2db/chf201_rr_secs.txt"]
)
def test_physionet_seconds_first_line_is_the_offset(recordings: Path, rel: str) -> None:
    lines = _nonblank(recordings / rel)
    series = read_recording(recordings / rel)
    assert len(series) == len(lines) - 1
    assert series.rr_ms[0] == float(lines[1]) * 1000
    np.testing.assert_array_equal(series.rr_ms, np.array([float(v) for v in lines[1:]]) * 1000)
    offset = f"{float(lines[0]):.3f}"
    assert any(offset in note and "offset" in note for note in series.notes)
    # forcing the plain seconds format skips detection: line 1 is then an RR
    forced = read_recording(recordings / rel, format="rr-s")
    assert forced.format == "rr-s"
    assert len(forced) == len(lines)
    assert forced.rr_ms[0] == float(lines[0]) * 1000


def test_physionet_seconds_files_load_fast(recordings: Path) -> None:
    path = recordings / "physionet_chf2db/chf201_rr_secs.txt"
    start = time.perf_counter()
    series = read_recording(path)
    elapsed = time.perf_counter() - start
    assert len(series) > 100_000
    assert elapsed < 1.0, f"{elapsed:.2f} s to read {len(series)} intervals"


@pytest.mark.parametrize(
    "rel",
    [
        "pyhrv_nsrdb/SampleNNISeriesLong_ms.txt",
        "pyhrv_nsrdb/SampleNNISeriesShort_ms.txt",
        "polar_hrm/rest_rri.txt",
        "polar_hrm/08012805.txt",
    ],
)
def test_plain_ms_files_read_back_their_values(recordings: Path, rel: str) -> None:
    expected = [float(v) for v in _nonblank(recordings / rel)]
    series = read_recording(recordings / rel)
    assert series.format == "rr-ms"
    np.testing.assert_array_equal(series.rr_ms, expected)
    assert series.notes == ()


def _first_bad_line(path: Path) -> tuple[int, str]:
    """1-based number and text of the first non-blank line that is not a positive number."""
    for no, line in enumerate(path.read_text().splitlines(), 1):
        text = line.strip()
        if text and not (_is_float(text) and float(text) > 0):
            return no, text
    raise AssertionError(f"{path} has no malformed line")


@pytest.mark.parametrize("rel", sorted(_LENIENT))
def test_malformed_shared_files(recordings: Path, rel: str) -> None:
    path = recordings / rel
    bad_no, bad_text = _first_bad_line(path)
    with pytest.raises(MalformedLineError) as info:
        read_recording(path)
    assert info.value.line_no == bad_no
    assert info.value.line == bad_text
    assert info.value.path == str(path)
    assert f"{path}, line {bad_no}" in str(info.value)

    series = read_recording(path, lenient=True)
    good = [float(v) for v in _nonblank(path) if _is_float(v) and float(v) > 0]
    np.testing.assert_array_equal(series.rr_ms, good)
    assert series.skipped_lines == 1
    assert any(f"line {bad_no}" in note for note in series.notes)


def test_stray_at_sign_is_the_last_line_of_008(recordings: Path) -> None:
    path = recordings / "physionet_healthy/008.txt"
    lines = path.read_text().splitlines()
    with pytest.raises(MalformedLineError) as info:
        read_recording(path)
    assert info.value.line_no == len(lines)
    assert lines[-1].strip() == "@"


@pytest.mark.parametrize("name", ["exercise_rri.hrm", "noisy_rri.hrm"])
def test_hrm_reads_only_the_hrdata_section(recordings: Path, name: str) -> None:
    path = recordings / "polar_hrm" / name
    lines = [line.strip() for line in path.read_text().splitlines()]
    start = lines.index("[HRData]") + 1
    expected = [float(v) for v in lines[start:] if v]
    series = read_recording(path)
    assert series.format == "hrm"
    np.testing.assert_array_equal(series.rr_ms, expected)


def _csv_column(path: Path, column: str) -> list[str]:
    with path.open(newline="") as fh:
        return [row[column] for row in csv.DictReader(fh)]


@pytest.mark.parametrize("name", ["polar_h10_rr.csv", "polar_h10_ecg_hr_rr.csv"])
def test_polar_csv_values(recordings: Path, name: str) -> None:
    path = recordings / "polar_h10_pvc" / name
    expected = [float(v) for v in _csv_column(path, "rr_ms") if v.strip()]
    series = read_recording(path)
    assert series.format == "polar-csv"
    np.testing.assert_array_equal(series.rr_ms, expected)


def test_polar_ecg_log_has_the_same_beats_as_the_rr_log(recordings: Path) -> None:
    rr_log = read_recording(recordings / "polar_h10_pvc/polar_h10_rr.csv")
    ecg_log = read_recording(recordings / "polar_h10_pvc/polar_h10_ecg_hr_rr.csv")
    np.testing.assert_array_equal(rr_log.rr_ms, ecg_log.rr_ms)


def _mitdb_csv_beats(path: Path) -> tuple[npt.NDArray[np.float64], list[str]]:
    with path.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["symbol"] in BEAT_SYMBOLS]
    return np.array([float(r["sample_360hz"]) for r in rows]), [r["symbol"] for r in rows]


def test_mitdb_csv_and_wfdb_annotation_agree(recordings: Path) -> None:
    samples, symbols = _mitdb_csv_beats(recordings / "mitdb_100/100_annotations.csv")
    expected_rr = np.diff(samples) / 360.0 * 1000.0
    from_csv = read_recording(recordings / "mitdb_100/100_annotations.csv")
    assert from_csv.format == "mitdb-csv"
    np.testing.assert_array_equal(from_csv.rr_ms, expected_rr)
    assert from_csv.symbols == tuple(symbols[1:])
    # SOURCES.md: 2,239 N + 33 A + 1 V beats
    assert Counter(symbols) == {"N": 2239, "A": 33, "V": 1}
    assert len(from_csv) == len(symbols) - 1
    assert from_csv.symbols is not None
    assert Counter(from_csv.symbols) == Counter(symbols[1:])
    for name in ("100.atr", "100.hea", "100"):
        from_atr = read_recording(recordings / "mitdb_100" / name)
        assert from_atr.format == "wfdb"
        np.testing.assert_array_equal(from_atr.rr_ms, from_csv.rr_ms)
        assert from_atr.symbols == from_csv.symbols


def test_wfdb_fs_must_agree_with_the_annotation(recordings: Path) -> None:
    assert len(read_recording(recordings / "mitdb_100/100.atr", fs=360)) > 0
    with pytest.raises(RecordingError, match="disagrees"):
        read_recording(recordings / "mitdb_100/100.atr", fs=250)


@pytest.mark.parametrize(
    "rel", [r for r in _FILES if r.startswith("gudb_stress/") and "subject_00" in r]
)
def test_gudb_rpeaks_values(recordings: Path, rel: str) -> None:
    path = recordings / rel
    samples = np.array([float(v) for v in _nonblank(path)])
    series = read_recording(path, fs=_GUDB_FS)
    assert series.format == "rpeaks"
    np.testing.assert_array_equal(series.rr_ms, np.diff(samples) / _GUDB_FS * 1000.0)


def test_gudb_without_fs_asks_for_it(recordings: Path) -> None:
    path = recordings / "gudb_stress/subject_00/maths/annotation_cs.tsv"
    with pytest.raises(RecordingError) as info:
        read_recording(path)
    assert "looks like R-peak sample indices; pass --fs (the sampling rate in Hz)" in str(
        info.value
    )
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------------------
# made-up files
# --------------------------------------------------------------------------------------


def _write(tmp_path: Path, text: str, name: str = "rr.txt", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


@pytest.mark.parametrize(
    "text",
    [
        "800\n810.5\n790\n",
        "800\r\n810.5\r\n790\r\n",
        "800\r810.5\r790",
        "\n\n800\n\n810.5\n   \n790\n\n",
        "  800  \r\n\t810.5\t\r\n\r\n 790",
        "800\n810.5\r\n790",
    ],
    ids=["lf", "crlf", "cr", "blank-lines", "whitespace", "mixed"],
)
def test_line_endings_blank_lines_and_whitespace(tmp_path: Path, text: str) -> None:
    series = read_recording(_write(tmp_path, text))
    assert series.format == "rr-ms"
    np.testing.assert_array_equal(series.rr_ms, [800.0, 810.5, 790.0])
    np.testing.assert_array_equal(series.t_s, [0.8, 1.6105, 2.4005])
    assert series.skipped_lines == 0


def test_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = _write(tmp_path, "800\n900\n", encoding="utf-8-sig")
    np.testing.assert_array_equal(read_recording(path).rr_ms, [800.0, 900.0])


def test_seconds_are_detected_by_the_median(tmp_path: Path) -> None:
    series = read_recording(_write(tmp_path, "0.8\n0.81\n0.79\n"))
    assert series.format == "rr-s"
    np.testing.assert_array_equal(series.rr_ms, [0.8 * 1000, 0.81 * 1000, 0.79 * 1000])


def test_forced_format_skips_detection(tmp_path: Path) -> None:
    path = _write(tmp_path, "0.8\n0.81\n0.79\n")
    series = read_recording(path, format="rr-ms")
    assert series.format == "rr-ms"
    np.testing.assert_array_equal(series.rr_ms, [0.8, 0.81, 0.79])


@pytest.mark.parametrize(
    ("text", "line_no", "reason"),
    [
        ("800\n\nabc\n900\n", 3, "not a number"),
        ("800\n900\n0\n", 3, "greater than 0"),
        ("800\r\n-650\r\n900\r\n", 2, "greater than 0"),
        ("800\nnan\n900\n", 2, "not finite"),
        ("800\n900\ninf\n", 3, "not finite"),
        ("800\n1,5\n", 2, "not a number"),
        ("800\n900\n12x\n0\n", 3, "not a number"),  # the earliest problem is reported
        ("800\n0\n12x\n", 2, "greater than 0"),
    ],
)
def test_malformed_lines(tmp_path: Path, text: str, line_no: int, reason: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(MalformedLineError) as info:
        read_recording(path, format="rr-ms")
    exc = info.value
    assert exc.path == str(path)
    assert exc.line_no == line_no
    assert reason in exc.reason
    assert f"{path}, line {line_no}" in str(exc)
    assert "--lenient" in str(exc)


def test_lenient_counts_the_skipped_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "800\nabc\n0\n900\n-1\n\n1000\n@\n")
    series = read_recording(path, lenient=True)
    np.testing.assert_array_equal(series.rr_ms, [800.0, 900.0, 1000.0])
    assert series.skipped_lines == 4
    (note,) = series.notes
    assert "skipped 4 malformed lines" in note
    assert "line 2" in note
    np.testing.assert_array_equal(series.t_s, [0.8, 1.7, 2.7])


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    for text in ("", "\n\n  \r\n"):
        with pytest.raises(RecordingError, match="no RR intervals"):
            read_recording(_write(tmp_path, text))


def test_only_malformed_lines_in_lenient_mode_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="no RR intervals"):
        read_recording(_write(tmp_path, "0\n@\n"), format="rr-ms", lenient=True)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(RecordingError) as info:
        read_recording(missing)
    assert str(missing) in str(info.value)
    assert not isinstance(info.value, MalformedLineError)


def test_directory_is_not_a_recording(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="not a regular file"):
        read_recording(tmp_path)


def test_unknown_format_lists_the_formats(tmp_path: Path) -> None:
    with pytest.raises(RecordingError) as info:
        read_recording(_write(tmp_path, "800\n"), format="garmin-fit")
    message = str(info.value)
    assert "garmin-fit" in message
    for name in FORMATS:
        assert name in message


@pytest.mark.parametrize("fs", [0.0, -250.0, math.nan, math.inf])
def test_bad_sampling_rate(tmp_path: Path, fs: float) -> None:
    with pytest.raises(RecordingError, match="sampling rate"):
        read_recording(_write(tmp_path, "100\n300\n"), format="rpeaks", fs=fs)


def test_fs_is_ignored_with_a_note_by_rr_formats(tmp_path: Path) -> None:
    series = read_recording(_write(tmp_path, "800\n900\n"), fs=250)
    np.testing.assert_array_equal(series.rr_ms, [800.0, 900.0])
    assert any("--fs 250 ignored" in note for note in series.notes)


def test_undetectable_text(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="cannot detect"):
        read_recording(_write(tmp_path, "hello\nworld\n"))


# physionet-style seconds ---------------------------------------------------------------


def test_physionet_detection_and_offset(tmp_path: Path) -> None:
    path = _write(tmp_path, "12.50000000\r\n0.75781250\r\n0.78906250\r\n\r\n")
    series = read_recording(path)
    assert series.format == "physionet-rr-s"
    np.testing.assert_array_equal(series.rr_ms, [0.7578125 * 1000, 0.7890625 * 1000])
    assert series.notes[0].startswith("first line 12.500 s taken as the offset")


def test_physionet_malformed_line_numbers_count_the_offset_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "12.50000000\n0.75781250\n0.00000000\n")
    with pytest.raises(MalformedLineError) as info:
        read_recording(path)
    assert info.value.line_no == 3
    with pytest.raises(MalformedLineError) as info:
        read_recording(_write(tmp_path, "x\n0.75781250\n"), format="physionet-rr-s")
    assert info.value.line_no == 1
    lenient = read_recording(tmp_path / "rr.txt", format="physionet-rr-s", lenient=True)
    assert lenient.skipped_lines == 1
    np.testing.assert_array_equal(lenient.rr_ms, [757.8125])


# Polar HRM ------------------------------------------------------------------------------

_HRM = (
    "[Params]\r\nVersion=106\r\nInterval=238\r\n\r\n[Note]\r\nabc\r\n\r\n"
    "[HRZones]\r\n180\r\n0\r\n\r\n[HRData]\r\n{data}"
)


def test_hrm_detection_and_section(tmp_path: Path) -> None:
    path = _write(tmp_path, _HRM.format(data="1000\r\n950\r\n\r\n900\r\n"), name="x.txt")
    assert detect_format(path, _head(path)) == "hrm"
    series = read_recording(path)
    assert series.format == "hrm"
    np.testing.assert_array_equal(series.rr_ms, [1000.0, 950.0, 900.0])


def test_hrm_malformed_line_number_is_the_file_line(tmp_path: Path) -> None:
    text = _HRM.format(data="1000\r\n0\r\n900\r\n")
    path = _write(tmp_path, text, name="x.hrm")
    expected = text.split("\r\n").index("[HRData]") + 2 + 1
    with pytest.raises(MalformedLineError) as info:
        read_recording(path)
    assert info.value.line_no == expected


def test_hrm_stops_at_the_next_section(tmp_path: Path) -> None:
    path = _write(tmp_path, _HRM.format(data="1000\n950\n[Other]\nx=1\n"), name="x.hrm")
    np.testing.assert_array_equal(read_recording(path).rr_ms, [1000.0, 950.0])


def test_hrm_without_hrdata(tmp_path: Path) -> None:
    path = _write(tmp_path, "[Params]\nVersion=106\n", name="x.hrm")
    with pytest.raises(RecordingError, match=r"no \[HRData\] section"):
        read_recording(path)


def test_hrm_with_heart_rate_samples_is_refused(tmp_path: Path) -> None:
    text = _HRM.replace("Interval=238", "Interval=5").format(data="70\n72\n")
    with pytest.raises(RecordingError, match="Interval=5"):
        read_recording(_write(tmp_path, text, name="x.hrm"))


# CSV ------------------------------------------------------------------------------------


def test_polar_sensor_logger_semicolon_csv(tmp_path: Path) -> None:
    text = "Phone timestamp;RR-interval [ms]\n2024-01-01T10:00:00;812\n2024-01-01T10:00:01;;\n"
    text += "2024-01-01T10:00:01;799\n"
    path = _write(tmp_path, text, name="x.txt")
    assert detect_format(path, _head(path)) == "polar-csv"
    np.testing.assert_array_equal(read_recording(path).rr_ms, [812.0, 799.0])


@pytest.mark.parametrize("column", ["rr", "RR", "rr-interval", "RR-interval [ms]", "RR_MS"])
def test_polar_csv_column_names(tmp_path: Path, column: str) -> None:
    path = _write(tmp_path, f"time,{column}\r\n1,800\r\n2,\r\n3,900\r\n", name="x.csv")
    series = read_recording(path)
    assert series.format == "polar-csv"
    np.testing.assert_array_equal(series.rr_ms, [800.0, 900.0])


def test_polar_csv_in_seconds(tmp_path: Path) -> None:
    path = _write(tmp_path, "t,RR [s]\n1,0.8\n2,0.9\n", name="x.csv")
    np.testing.assert_array_equal(read_recording(path).rr_ms, [800.0, 900.0])


def test_polar_csv_malformed_cell(tmp_path: Path) -> None:
    path = _write(tmp_path, "time_ns,hr_bpm,rr_ms\n1,60,800\n\n2,60,x\n3,60,0\n", name="x.csv")
    with pytest.raises(MalformedLineError) as info:
        read_recording(path)
    assert info.value.line_no == 4
    series = read_recording(path, lenient=True)
    np.testing.assert_array_equal(series.rr_ms, [800.0])
    assert series.skipped_lines == 2


def test_csv_without_rr_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "time,hr\n1,60\n", name="x.csv")
    with pytest.raises(RecordingError, match="no RR column"):
        read_recording(path)
    with pytest.raises(RecordingError, match="no RR column"):
        read_recording(path, format="polar-csv")


def test_mitdb_csv_needs_a_sampling_rate(tmp_path: Path) -> None:
    text = "sample,time_s,symbol\n10,0,+\n100,0,N\n400,1,V\n\n700,2,N\n"
    path = _write(tmp_path, text, name="a.csv")
    assert detect_format(path, _head(path)) == "mitdb-csv"
    with pytest.raises(RecordingError, match="pass --fs"):
        read_recording(path)
    series = read_recording(path, fs=300)
    np.testing.assert_array_equal(series.rr_ms, [1000.0, 1000.0])
    assert series.symbols == ("V", "N")


def test_mitdb_csv_out_of_order_beat(tmp_path: Path) -> None:
    text = "sample_250hz,symbol\n100,N\n350,N\n300,A\n600,N\n"
    path = _write(tmp_path, text, name="a.csv")
    with pytest.raises(MalformedLineError) as info:
        read_recording(path)
    assert info.value.line_no == 4
    series = read_recording(path, lenient=True)
    np.testing.assert_array_equal(series.rr_ms, [1000.0, 1000.0])
    assert series.symbols == ("N", "N")
    with pytest.raises(RecordingError, match="disagrees"):
        read_recording(path, fs=360)


# R-peaks --------------------------------------------------------------------------------


def test_rpeaks_detection_needs_fs(tmp_path: Path) -> None:
    samples = np.cumsum(np.full(30, 200)).tolist()
    path = _write(tmp_path, "\n".join(str(s) for s in samples) + "\n", name="peaks.tsv")
    assert detect_format(path, _head(path)) == "rpeaks"
    with pytest.raises(RecordingError) as info:
        read_recording(path)
    assert "looks like R-peak sample indices; pass --fs (the sampling rate in Hz)" in str(
        info.value
    )
    series = read_recording(path, fs=250)
    np.testing.assert_array_equal(series.rr_ms, np.full(29, 800.0))


@pytest.mark.parametrize(
    ("text", "line_no"),
    [("100\n300\n250\n500\n", 3), ("100\n300\n\n300\n500\n", 4), ("100\n-5\n", 2)],
)
def test_rpeaks_not_increasing(tmp_path: Path, text: str, line_no: int) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(MalformedLineError) as info:
        read_recording(path, format="rpeaks", fs=250)
    assert info.value.line_no == line_no
    assert f"{path}, line {line_no}" in str(info.value)


def test_rpeaks_lenient_drops_the_out_of_order_index(tmp_path: Path) -> None:
    path = _write(tmp_path, "100\n300\n250\nx\n500\n")
    series = read_recording(path, format="rpeaks", fs=250, lenient=True)
    np.testing.assert_array_equal(series.rr_ms, [800.0, 800.0])
    assert series.skipped_lines == 2


def test_single_rpeak_has_no_interval(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="no RR intervals"):
        read_recording(_write(tmp_path, "100\n"), format="rpeaks", fs=250)


# WFDB -----------------------------------------------------------------------------------


def test_wfdb_unreadable_annotation(tmp_path: Path) -> None:
    path = tmp_path / "bad.atr"
    path.write_bytes(b"\x01")  # an odd number of bytes cannot be WFDB annotations
    with pytest.raises(RecordingError) as info:
        read_recording(path, fs=360)
    assert str(path) in str(info.value)
    assert info.value.__cause__ is not None


def test_wfdb_record_without_annotation(tmp_path: Path) -> None:
    path = _write(tmp_path, "100 2 360 650000\n", name="100.hea")
    with pytest.raises(RecordingError, match="no such annotation file"):
        read_recording(path)


# --------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------

_positive_floats = st.floats(
    min_value=0.0, max_value=1e15, exclude_min=True, allow_nan=False, allow_infinity=False
)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(_positive_floats, min_size=1, max_size=50),
    ending=st.sampled_from(["\n", "\r\n", "\r"]),
    trailing=st.booleans(),
)
def test_written_ms_read_back_equal(values: list[float], ending: str, trailing: bool) -> None:
    text = ending.join(repr(v) for v in values) + (ending if trailing else "")
    series = parse_rr_text(text.splitlines(), source="<text>", unit="ms", lenient=False)
    np.testing.assert_array_equal(series.rr_ms, values)
    np.testing.assert_array_equal(series.t_s, np.cumsum(values) / 1000.0)


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.integers(min_value=250, max_value=2500), min_size=1, max_size=80))
def test_written_ms_files_are_detected_and_read_back(
    tmp_path_factory: pytest.TempPathFactory, values: list[int]
) -> None:
    path = tmp_path_factory.mktemp("prop") / "rr.txt"
    path.write_text("".join(f"{v}\n" for v in values))
    series = read_recording(path)
    assert series.format == "rr-ms"
    np.testing.assert_array_equal(series.rr_ms, values)
