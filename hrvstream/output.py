"""Writing analysis results (CSV, JSON Lines) and a progress bar for terminals."""

from __future__ import annotations

import json
import math
import time
from typing import TextIO

import numpy as np
import numpy.typing as npt

from hrvstream.hrv.artifacts import ARTIFACT_NAMES
from hrvstream.hrv.engine import BEAT_COLUMNS, WINDOW_COLUMNS, BeatTable, WindowTable

#: Decimal places written per column; counts are integers.
DECIMALS: dict[str, int] = {
    "t_s": 4,
    "coverage": 4,
    "artifact_pct": 3,
    "mean_hr_bpm": 3,
    "mean_nn_ms": 3,
    "sdnn_ms": 4,
    "rmssd_ms": 4,
    "pnn50_pct": 3,
    "lf_ms2": 4,
    "hf_ms2": 4,
    "lf_hf": 5,
    "lf_nu": 3,
    "hf_nu": 3,
    "rr_ms": 4,
    "nn_ms": 4,
}
INTEGER_COLUMNS = frozenset({"n_beats"})


def _cell_format(name: str) -> str:
    return "{:d}" if name in INTEGER_COLUMNS else f"{{:.{DECIMALS.get(name, 6)}f}}"


def _format_column(name: str, values: npt.NDArray[np.float64] | npt.NDArray[np.intp]) -> list[str]:
    """Strings for one column; missing values (NaN) are empty cells."""
    fmt = _cell_format(name)
    if name in INTEGER_COLUMNS:
        return [fmt.format(int(v)) for v in values.tolist()]
    return ["" if math.isnan(v) else fmt.format(v) for v in values.tolist()]


def format_window_row(row: dict[str, float]) -> str:
    """One window row as the CSV line ``analyze`` writes for it (without newline)."""
    cells = []
    for name in WINDOW_COLUMNS:
        v = row[name]
        if name in INTEGER_COLUMNS:
            cells.append(_cell_format(name).format(int(v)))
        else:
            cells.append("" if math.isnan(v) else _cell_format(name).format(v))
    return ",".join(cells)


def window_header() -> str:
    """The CSV header line of window rows (without newline)."""
    return ",".join(WINDOW_COLUMNS)


def _json_value(name: str, text: str) -> float | int | str | None:
    if text == "":
        return None
    if name == "artifact":
        return text
    if name in INTEGER_COLUMNS:
        return int(text)
    return float(text)


def _write(columns: list[tuple[str, list[str]]], fh: TextIO, fmt: str) -> None:
    names = [n for n, _ in columns]
    cells = [c for _, c in columns]
    if fmt == "csv":
        fh.write(",".join(names) + "\n")  # == window_header() for window rows
        fh.writelines(",".join(row) + "\n" for row in zip(*cells, strict=True))
    else:
        for row in zip(*cells, strict=True):
            obj = {n: _json_value(n, v) for n, v in zip(names, row, strict=True)}
            fh.write(json.dumps(obj, separators=(",", ":")) + "\n")


def window_cells(table: WindowTable) -> list[tuple[str, list[str]]]:
    """The window table as formatted columns (the exact text ``analyze`` writes)."""
    return [(name, _format_column(name, table[name])) for name in WINDOW_COLUMNS]


def write_windows(table: WindowTable, fh: TextIO, fmt: str = "csv") -> None:
    """Write window rows as CSV (header in :data:`WINDOW_COLUMNS` order) or JSON Lines."""
    _write(window_cells(table), fh, fmt)


def write_beats(beats: BeatTable, fh: TextIO, fmt: str = "csv") -> None:
    """Write one row per input beat: ``t_s,rr_ms,artifact,nn_ms``."""
    labels = [ARTIFACT_NAMES[int(c)] for c in beats.artifact]
    cols = [
        ("t_s", _format_column("t_s", beats.t_s)),
        ("rr_ms", _format_column("rr_ms", beats.rr_ms)),
        ("artifact", labels),
        ("nn_ms", _format_column("nn_ms", beats.nn_ms)),
    ]
    assert tuple(n for n, _ in cols) == BEAT_COLUMNS
    _write(cols, fh, fmt)


class ProgressBar:
    """A one-line progress bar on a terminal; silent when stderr is not a terminal."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self._stage = ""
        self._last = 0.0
        self._shown = False

    @classmethod
    def for_stream(cls, stream: TextIO, *, enabled: bool = True) -> ProgressBar:
        """A bar on ``stream`` if it is a terminal and ``enabled``; otherwise a silent one."""
        isatty = getattr(stream, "isatty", None)
        show = enabled and callable(isatty) and bool(isatty())
        return cls(stream if show else None)

    def stage(self, name: str) -> None:
        """Start a named stage at 0 %."""
        self._stage = name
        self.update(0.0, force=True)

    def update(self, fraction: float, *, force: bool = False) -> None:
        """Show ``fraction`` (0..1) of the current stage, at most 10 times a second."""
        if self._stream is None:
            return
        now = time.monotonic()
        if not force and fraction < 1.0 and now - self._last < 0.1:
            return
        self._last = now
        width = 30
        filled = round(width * min(max(fraction, 0.0), 1.0))
        bar = "#" * filled + "-" * (width - filled)
        self._stream.write(f"\r{self._stage:<10} [{bar}] {100 * fraction:5.1f}%")
        self._stream.flush()
        self._shown = True

    def done(self) -> None:
        """Clear the bar's line."""
        if self._stream is not None and self._shown:
            self._stream.write("\r" + " " * 60 + "\r")
            self._stream.flush()
