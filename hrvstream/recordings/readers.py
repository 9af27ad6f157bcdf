"""Read recordings of heart beats from files into an :class:`RRSeries`.

One entry point, :func:`read_recording`, reads every supported format; the format is
detected from the file name and its first lines (:func:`detect_format`) unless it is
given. Supported formats (:data:`FORMATS`):

``rr-ms`` / ``rr-s``
    One RR interval per line, in milliseconds or seconds. Blank lines, surrounding
    whitespace and any line ending (LF, CRLF, CR) are accepted. Detected unit: seconds
    when the median of the first values is below 10, otherwise milliseconds.
``physionet-rr-s``
    PhysioNet RR files in seconds whose *first line is the offset of the first beat from
    the start of the recording*, not an RR interval (nsr2db, chf2db exports). Detected by
    values written with exactly eight decimals. The first line is dropped, with a note.
``hrm``
    Polar ``.hrm`` files recorded in R-R mode: one RR in milliseconds per line in the
    ``[HRData]`` section; the other sections are ignored.
``polar-csv``
    A CSV file (``,``, ``;`` or tab separated) with a header naming an RR column (``rr_ms``,
    ``rr``, ``RR-interval [ms]``, ...). Rows with an empty RR cell are skipped (ECG loggers
    write the RR only on beat rows).
``mitdb-csv``
    A CSV export of WFDB annotations with header ``sample_360hz,time_s,symbol,...``:
    RR intervals between consecutive *beat* annotations, from the sample indices.
``rpeaks``
    R-peak sample indices, one per line; needs the sampling rate (``fs``).
``wfdb``
    A WFDB annotation file (``100.atr``, or the record's ``100.hea`` or record name
    ``100``); read with :func:`wfdb.rdann`; only beat annotations are kept.

Every malformed line (not a number, not finite, an RR that is zero or negative, an R-peak
index that does not increase) is a :class:`~hrvstream.errors.MalformedLineError` naming the
file and the 1-based line number, unless ``lenient=True``, which skips such lines, counts
them in :attr:`RRSeries.skipped_lines` and says so in :attr:`RRSeries.notes`.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import numpy.typing as npt

from hrvstream.errors import MalformedLineError, RecordingError
from hrvstream.protocol.capture import is_capture_header
from hrvstream.recordings.model import RRSeries

__all__ = [
    "BEAT_SYMBOLS",
    "FORMATS",
    "HEAD_LINES",
    "detect_format",
    "parse_rr_text",
    "read_recording",
]

FORMATS: tuple[str, ...] = (
    "rr-ms",
    "rr-s",
    "physionet-rr-s",
    "hrm",
    "polar-csv",
    "mitdb-csv",
    "rpeaks",
    "wfdb",
    "capture",
)
"""Names of the formats :func:`read_recording` can read."""

BEAT_SYMBOLS: frozenset[str] = frozenset("NLRBAaJSVrFejnE/fQ?")
"""WFDB annotation symbols that mark a heart beat (the PhysioBank beat annotation codes).

Every other symbol (rhythm changes ``+``, noise ``~``, artifacts ``|``, comments ...) is not
a beat and is dropped before the RR intervals are formed.
"""

HEAD_LINES = 64
"""How many lines from the start of a file :func:`detect_format` looks at."""

_ENCODING = "utf-8-sig"  # tolerate a byte-order mark (Windows CSV exports)
_MAX_PLAUSIBLE_RR_MS = 3000.0  # an R-peak index range beyond this cannot be one RR
_SECONDS_MEDIAN_LIMIT = 10.0  # a median RR below this is in seconds, not milliseconds
_MAX_LISTED_SKIPS = 3  # skipped lines listed by line number in the lenient note

_PHYSIONET_VALUE = re.compile(r"\d+\.\d{8}")
_INTEGER = re.compile(r"\d+")
_SAMPLE_COLUMN = re.compile(r"sample(?:_?(\d+(?:\.\d+)?)_?hz)?")
_RR_COLUMN = re.compile(r"(?:rr|rri|ibi|nn|rr_?intervals?)(?:_(ms|s|sec|secs|seconds))?")
_BRACKETED = re.compile(r"[\[(]\s*([^\])]*?)\s*[\])]")
_HRM_SECTION = re.compile(r"\[([^\]]+)\]")


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------


def read_recording(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    fs: float | None = None,
    lenient: bool = False,
) -> RRSeries:
    """Read a recording file into RR intervals.

    Parameters
    ----------
    path : str or os.PathLike
        The file to read. For WFDB records the record name without extension (``100``)
        or its ``.hea`` file may be given instead of the ``.atr`` annotation file.
    format : str, optional
        One of :data:`FORMATS`; skips format detection. ``None`` (the default) detects
        the format with :func:`detect_format`.
    fs : float, optional
        Sampling rate in Hz of the sample indices in ``rpeaks`` files (required there),
        ``mitdb-csv`` files and WFDB annotations (where the file usually knows it; a
        different explicit value is an error). Ignored, with a note, by the RR formats.
    lenient : bool, default False
        Skip malformed lines instead of raising, count them in ``skipped_lines`` and
        add a note.

    Returns
    -------
    RRSeries
        The intervals in milliseconds (float64, not rounded) with ``t_s`` the cumulative
        sum in seconds (``t = 0`` at the first beat), ``source`` the path and ``format``
        the format name read.

    Raises
    ------
    MalformedLineError
        A line is not a valid value (not in lenient mode). The message names the file
        and the 1-based line number.
    RecordingError
        The file is missing or unreadable, the format is unknown or cannot be detected,
        a needed sampling rate is missing, or the file holds no RR interval.
    """
    if format is not None and format not in FORMATS:
        raise RecordingError(
            f"unknown recording format {format!r}; known formats: {', '.join(FORMATS)}"
        )
    if fs is not None and not (math.isfinite(fs) and fs > 0):
        raise RecordingError(f"the sampling rate must be a positive number of Hz, got {fs!r}")

    p = Path(path)
    if not p.exists():
        record_atr = Path(f"{p}.atr")
        if format in (None, "wfdb") and record_atr.is_file():
            p, format = record_atr, "wfdb"
        else:
            raise RecordingError(f"{p}: no such file")
    if not p.is_file():
        raise RecordingError(f"{p}: not a regular file")

    fmt = format if format is not None else detect_format(p, read_head(p))
    series = _READERS[fmt](_Context(path=p, source=str(p), fs=fs, lenient=lenient))
    if len(series) == 0:
        raise RecordingError(f"{p}: no RR intervals found (read as {fmt})")
    return series


def detect_format(path: Path, head: list[str]) -> str:
    """Guess the format of a recording from its name and its first lines.

    Parameters
    ----------
    path : Path
        The file name; only its suffix is used (``.atr``/``.hea`` mean WFDB, ``.hrm``
        means Polar HRM).
    head : list of str
        The first lines of the file (about :data:`HEAD_LINES` of them), with or without
        their line endings.

    Returns
    -------
    str
        One of :data:`FORMATS`.

    Raises
    ------
    RecordingError
        A CSV header without an RR column, or lines that look like no known format.

    Notes
    -----
    In order: WFDB by suffix; an hrvstream capture by its JSON header line; Polar HRM
    by suffix or a ``[Params]``/``[HRData]`` line; a CSV header (a first line with
    ``,``/``;``/tab separators and a non-numeric field) with a ``sample``/``symbol`` pair
    of columns (``mitdb-csv``) or an RR column
    (``polar-csv``); values with exactly eight decimals (``physionet-rr-s``); at least
    three strictly increasing integers spanning more than any plausible RR
    (``rpeaks``); otherwise one RR per line, in seconds if the median is below 10.
    """
    suffix = path.suffix.lower()
    if suffix in (".atr", ".hea"):
        return "wfdb"
    if head and is_capture_header(head[0]):
        return "capture"
    lines = [line.strip() for line in head]
    if suffix == ".hrm" or any(line.lower() in ("[params]", "[hrdata]") for line in lines):
        return "hrm"
    nonblank = [line for line in lines if line]
    if not nonblank:
        return "rr-ms"  # an empty file; reading it says so

    first = nonblank[0]
    delimiter = _sniff_delimiter(first)
    if delimiter is not None:
        fields = [f.strip() for f in first.split(delimiter)]
        if not all(_is_number(f) for f in fields if f):
            columns = _CsvColumns.from_header(fields)
            if columns.sample is not None and columns.symbol is not None:
                return "mitdb-csv"
            if columns.rr is not None:
                return "polar-csv"
            raise RecordingError(
                f"{path}: the CSV header has no RR column (columns: {', '.join(fields)}); "
                "name it rr_ms (or rr, RR-interval [ms]), or pass --format"
            )

    numeric = [line for line in nonblank if _is_number(line)]
    if not numeric:
        raise RecordingError(
            f"{path}: cannot detect the format (first line {first[:60]!r}); "
            f"pass --format (one of {', '.join(FORMATS)})"
        )
    if len(numeric) >= 2 and all(_PHYSIONET_VALUE.fullmatch(v) for v in numeric[:8]):
        return "physionet-rr-s"
    values = np.array([float(v) for v in numeric])
    if (
        len(values) >= 3
        and all(_INTEGER.fullmatch(v) for v in numeric)
        and bool(np.all(np.diff(values) > 0))
        and values[-1] - values[0] > _MAX_PLAUSIBLE_RR_MS
    ):
        return "rpeaks"
    return "rr-s" if float(np.median(values)) < _SECONDS_MEDIAN_LIMIT else "rr-ms"


def parse_rr_text(
    lines: Iterable[str],
    *,
    source: str,
    unit: str,
    lenient: bool,
    first_line_no: int = 1,
    format: str | None = None,
) -> RRSeries:
    """Parse one RR interval per line.

    Parameters
    ----------
    lines : iterable of str
        The lines, with or without line endings. Blank lines and surrounding whitespace
        are ignored.
    source : str
        Where the lines come from (a path), for messages and :attr:`RRSeries.source`.
    unit : {"ms", "s", "auto"}
        Unit of the values; ``"auto"`` means seconds if the median value is below 10,
        milliseconds otherwise.
    lenient : bool
        Skip malformed lines (counted and noted) instead of raising.
    first_line_no : int, default 1
        Line number of the first line, for messages about a part of a file.
    format : str, optional
        The format name to record; default ``"rr-ms"`` or ``"rr-s"`` after the unit.

    Returns
    -------
    RRSeries
        The intervals in milliseconds; possibly empty.

    Raises
    ------
    MalformedLineError
        The first line that is not a positive finite number (unless ``lenient``).
    RecordingError
        An unknown ``unit``.
    """
    if unit not in ("ms", "s", "auto"):
        raise RecordingError(f"unknown RR unit {unit!r}; use 'ms', 's' or 'auto'")
    problems = _Problems(source, lenient)
    numbers = _positive(
        _parse_numbers(lines, first_line_no, problems, what="RR interval"), problems
    )
    unit = _resolve_unit(unit, numbers.values)
    return RRSeries.from_rr(
        _to_ms(numbers.values, unit),
        source=source,
        format=format or f"rr-{unit}",
        notes=problems.finish(),
        skipped_lines=problems.count,
    )


# --------------------------------------------------------------------------------------
# readers, one per format
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Context:
    """What every reader gets: the file, its display name and the options."""

    path: Path
    source: str
    fs: float | None
    lenient: bool


def _read_rr_ms(ctx: _Context) -> RRSeries:
    """Format ``rr-ms``: one RR in milliseconds per line."""
    series = parse_rr_text(_read_lines(ctx.path), source=ctx.source, unit="ms", lenient=ctx.lenient)
    return _with_fs_note(series, ctx)


def _read_rr_s(ctx: _Context) -> RRSeries:
    """Format ``rr-s``: one RR in seconds per line."""
    series = parse_rr_text(_read_lines(ctx.path), source=ctx.source, unit="s", lenient=ctx.lenient)
    return _with_fs_note(series, ctx)


def _read_physionet_rr_s(ctx: _Context) -> RRSeries:
    """Format ``physionet-rr-s``: line 1 is the first beat's offset, then RRs in seconds."""
    lines = _read_lines(ctx.path)
    problems = _Problems(ctx.source, ctx.lenient)
    notes: list[str] = []
    first_line_no = 1
    offset_idx = next((i for i, line in enumerate(lines) if line.strip()), None)
    if offset_idx is not None:
        text = lines[offset_idx].strip()
        line_no = offset_idx + 1
        offset = _float_or_nan(text)
        if math.isfinite(offset) and offset >= 0:
            notes.append(
                f"first line {offset:.3f} s taken as the offset of the first beat "
                "from the recording start, not an RR"
            )
        else:
            problems.add(line_no, "expected the offset of the first beat in seconds (>= 0)", text)
        lines = lines[offset_idx + 1 :]
        first_line_no = line_no + 1
    numbers = _parse_numbers(lines, first_line_no, problems, what="RR interval")
    numbers = _positive(numbers, problems)
    series = RRSeries.from_rr(
        _to_ms(numbers.values, "s"),
        source=ctx.source,
        format="physionet-rr-s",
        notes=(*notes, *problems.finish()),
        skipped_lines=problems.count,
    )
    return _with_fs_note(series, ctx)


def _read_hrm(ctx: _Context) -> RRSeries:
    """Format ``hrm``: RRs in milliseconds in the ``[HRData]`` section of a Polar file."""
    lines = _read_lines(ctx.path)
    sections: dict[str, int] = {}  # lower-case section name -> index of its header line
    for i, line in enumerate(lines):
        m = _HRM_SECTION.fullmatch(line.strip())
        if m:
            sections.setdefault(m.group(1).strip().lower(), i)
    if "hrdata" not in sections:
        raise RecordingError(f"{ctx.source}: no [HRData] section; is this a Polar .hrm file?")
    if "params" in sections:
        interval = _hrm_param(lines, sections["params"], "interval")
        if interval is not None and interval != "238":
            raise RecordingError(
                f"{ctx.source}: Interval={interval} in [Params]: this .hrm file holds heart "
                "rate samples, not RR intervals (R-R recordings have Interval=238)"
            )
    start = sections["hrdata"] + 1
    end = min((i for i in sections.values() if i >= start), default=len(lines))
    series = parse_rr_text(
        lines[start:end],
        source=ctx.source,
        unit="ms",
        lenient=ctx.lenient,
        first_line_no=start + 1,
        format="hrm",
    )
    return _with_fs_note(series, ctx)


def _read_polar_csv(ctx: _Context) -> RRSeries:
    """Format ``polar-csv``: the RR column of a CSV file; empty cells are skipped."""
    problems = _Problems(ctx.source, ctx.lenient)
    tokens: list[str] = []
    line_nos: list[int] = []
    with _open_text(ctx.path, newline="") as fh:
        header_no, header, delimiter = _csv_header(fh, ctx.source)
        columns = _CsvColumns.from_header(header)
        if columns.rr is None:
            raise RecordingError(
                f"{ctx.source}, line {header_no}: the CSV header has no RR column "
                f"(columns: {', '.join(header)}); name it rr_ms (or rr, RR-interval [ms])"
            )
        col = columns.rr
        reader = csv.reader(fh, delimiter=delimiter)
        for row in reader:
            if len(row) > col:
                cell = row[col].strip()
                if cell:
                    tokens.append(cell)
                    line_nos.append(header_no + reader.line_num)
    numbers = _positive(_to_numbers(tokens, line_nos, problems, what="RR interval"), problems)
    unit = _resolve_unit(columns.rr_unit or "auto", numbers.values)
    series = RRSeries.from_rr(
        _to_ms(numbers.values, unit),
        source=ctx.source,
        format="polar-csv",
        notes=problems.finish(),
        skipped_lines=problems.count,
    )
    return _with_fs_note(series, ctx)


def _read_mitdb_csv(ctx: _Context) -> RRSeries:
    """Format ``mitdb-csv``: intervals between the beat annotations of a CSV export."""
    problems = _Problems(ctx.source, ctx.lenient)
    tokens: list[str] = []
    symbols: list[str] = []
    line_nos: list[int] = []
    with _open_text(ctx.path, newline="") as fh:
        header_no, header, delimiter = _csv_header(fh, ctx.source)
        columns = _CsvColumns.from_header(header)
        if columns.sample is None or columns.symbol is None:
            raise RecordingError(
                f"{ctx.source}, line {header_no}: expected 'sample_<fs>hz' and 'symbol' "
                f"columns (columns: {', '.join(header)})"
            )
        fs = _resolve_fs(ctx, columns.sample_fs, "the CSV header")
        s_col, y_col = columns.sample, columns.symbol
        reader = csv.reader(fh, delimiter=delimiter)
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            line_no = header_no + reader.line_num
            if len(row) <= max(s_col, y_col):
                problems.add(line_no, "too few columns", delimiter.join(row))
                continue
            symbol = row[y_col].strip()
            if symbol in BEAT_SYMBOLS:
                tokens.append(row[s_col].strip())
                symbols.append(symbol)
                line_nos.append(line_no)
    numbers = _to_numbers(tokens, line_nos, problems, what="sample index")
    numbers = _increasing_samples(numbers, problems)
    beat_symbols = [symbols[i] for i in numbers.index]
    return _from_samples(
        numbers.values, fs, beat_symbols, ctx=ctx, fmt="mitdb-csv", problems=problems
    )


def _read_rpeaks(ctx: _Context) -> RRSeries:
    """Format ``rpeaks``: intervals between R-peak sample indices (needs ``fs``)."""
    if ctx.fs is None:
        raise RecordingError(
            f"{ctx.source} looks like R-peak sample indices; pass --fs (the sampling rate in Hz)"
        )
    problems = _Problems(ctx.source, ctx.lenient)
    numbers = _parse_numbers(_read_lines(ctx.path), 1, problems, what="R-peak sample index")
    numbers = _increasing_samples(numbers, problems)
    return _from_samples(numbers.values, ctx.fs, None, ctx=ctx, fmt="rpeaks", problems=problems)


def _read_wfdb(ctx: _Context) -> RRSeries:
    """Format ``wfdb``: intervals between the beat annotations of a WFDB record."""
    import wfdb  # heavy (pandas); only this format needs it

    suffix = ctx.path.suffix.lower()
    record = ctx.path.with_suffix("") if suffix else ctx.path
    extension = "atr" if suffix in ("", ".hea", ".dat") else suffix[1:]
    ann_path = f"{record}.{extension}"
    if not Path(ann_path).is_file():
        raise RecordingError(f"{ann_path}: no such annotation file")
    try:
        ann = wfdb.rdann(str(record), extension)
    except Exception as exc:
        raise RecordingError(f"{ann_path}: cannot read the WFDB annotation: {exc}") from exc
    file_fs = float(ann.fs) if ann.fs is not None else None
    fs = _resolve_fs(ctx, file_fs, "the WFDB annotation or header")
    all_symbols = [str(s) for s in ann.symbol]
    is_beat = np.array([s in BEAT_SYMBOLS for s in all_symbols], dtype=bool)
    samples = np.asarray(ann.sample, dtype=np.float64)[is_beat]
    symbols = [s for s in all_symbols if s in BEAT_SYMBOLS]
    problems = _Problems(ctx.source, ctx.lenient)
    keep = _increasing_mask(samples)
    if not bool(keep.all()):
        if not ctx.lenient:
            i = int(np.flatnonzero(~keep)[0])
            raise RecordingError(
                f"{ann_path}: beat annotation {i} (sample {int(samples[i])}) does not come "
                "after the previous beat; pass --lenient to drop such beats"
            )
        problems.extra_skips(int((~keep).sum()), "beat annotations out of order")
        samples = samples[keep]
        symbols = [s for s, k in zip(symbols, keep.tolist(), strict=True) if k]
    return _from_samples(samples, fs, symbols, ctx=ctx, fmt="wfdb", problems=problems)


def _read_capture(ctx: _Context) -> RRSeries:
    from hrvstream.recordings.capture_reader import read_capture

    return read_capture(ctx.path, source=ctx.source, lenient=ctx.lenient)


_READERS: dict[str, Callable[[_Context], RRSeries]] = {
    "capture": _read_capture,
    "rr-ms": _read_rr_ms,
    "rr-s": _read_rr_s,
    "physionet-rr-s": _read_physionet_rr_s,
    "hrm": _read_hrm,
    "polar-csv": _read_polar_csv,
    "mitdb-csv": _read_mitdb_csv,
    "rpeaks": _read_rpeaks,
    "wfdb": _read_wfdb,
}


# --------------------------------------------------------------------------------------
# numbers with their line numbers; malformed-line bookkeeping
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Problems:
    """Malformed lines met while reading: raise the earliest, or count them (lenient)."""

    source: str
    lenient: bool
    errors: list[MalformedLineError] = field(default_factory=list)
    other: list[tuple[int, str]] = field(default_factory=list)  # skips without a line

    def add(self, line_no: int, reason: str, line: str) -> None:
        """Record a malformed line."""
        self.errors.append(MalformedLineError(self.source, line_no, reason, line))

    def extra_skips(self, count: int, what: str) -> None:
        """Record skipped items that have no line number (binary formats)."""
        if count:
            self.other.append((count, what))

    @property
    def count(self) -> int:
        """Number of skipped lines (and items)."""
        return len(self.errors) + sum(n for n, _ in self.other)

    def finish(self) -> tuple[str, ...]:
        """Raise the earliest malformed line, or (lenient) return notes on the skips."""
        self.errors.sort(key=lambda e: e.line_no)
        if self.errors and not self.lenient:
            raise self.errors[0]
        notes = [f"skipped {n} {what} (--lenient)" for n, what in self.other]
        if self.errors:
            n = len(self.errors)
            listed = "; ".join(
                f"line {e.line_no} {e.line[:20]!r}: {e.reason}"
                for e in self.errors[:_MAX_LISTED_SKIPS]
            )
            more = "; ..." if n > _MAX_LISTED_SKIPS else ""
            plural = "s" if n != 1 else ""
            notes.insert(0, f"skipped {n} malformed line{plural} (--lenient): {listed}{more}")
        return tuple(notes)


@dataclass(frozen=True, slots=True)
class _Numbers:
    """Parsed values with the line number they came from and their input position."""

    values: npt.NDArray[np.float64]
    line_nos: npt.NDArray[np.int64]
    index: npt.NDArray[np.intp]  # position of each value in ``tokens``
    tokens: Sequence[str]  # every input token, for messages

    def subset(self, mask: npt.NDArray[np.bool_]) -> _Numbers:
        """The values where ``mask`` is true."""
        return _Numbers(self.values[mask], self.line_nos[mask], self.index[mask], self.tokens)

    def reject(self, mask: npt.NDArray[np.bool_], problems: _Problems, reason: str) -> _Numbers:
        """Record the values where ``mask`` is false as malformed lines and drop them."""
        if bool(mask.all()):
            return self
        for i in np.flatnonzero(~mask).tolist():
            problems.add(int(self.line_nos[i]), reason, self.tokens[int(self.index[i])])
        return self.subset(mask)


def _parse_numbers(
    lines: Iterable[str], first_line_no: int, problems: _Problems, *, what: str
) -> _Numbers:
    """Parse every non-blank line as one number (blank lines are skipped)."""
    tokens: list[str] = []
    line_nos: list[int] = []
    for no, raw in enumerate(lines, first_line_no):
        text = raw.strip()
        if text:
            tokens.append(text)
            line_nos.append(no)
    return _to_numbers(tokens, line_nos, problems, what=what)


def _to_numbers(
    tokens: Sequence[str], line_nos: Sequence[int], problems: _Problems, *, what: str
) -> _Numbers:
    """Convert tokens to finite float64 values; bad tokens are located only if present."""
    n = len(tokens)
    nos = np.asarray(line_nos, dtype=np.int64)
    ok = np.ones(n, dtype=bool)
    try:
        values = np.fromiter(map(float, tokens), dtype=np.float64, count=n)
    except ValueError:  # slow path: find the bad tokens
        values = np.empty(n, dtype=np.float64)
        for i, tok in enumerate(tokens):
            try:
                values[i] = float(tok)
            except ValueError:
                ok[i] = False
                problems.add(int(nos[i]), f"not a number (expected one {what} per line)", tok)
    numbers = _Numbers(values, nos, np.arange(n, dtype=np.intp), tokens).subset(ok)
    return numbers.reject(np.isfinite(numbers.values), problems, f"the {what} is not finite")


def _positive(numbers: _Numbers, problems: _Problems) -> _Numbers:
    """Reject RR values that are not greater than zero."""
    return numbers.reject(numbers.values > 0, problems, "an RR interval must be greater than 0")


def _increasing_mask(samples: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """True for each sample greater than every sample before it."""
    if samples.size < 2 or bool(np.all(np.diff(samples) > 0)):
        return np.ones(samples.shape, dtype=bool)
    keep = np.ones(samples.shape, dtype=bool)
    last = -math.inf
    for i, s in enumerate(samples.tolist()):
        if s > last:
            last = s
        else:
            keep[i] = False
    return keep


def _increasing_samples(numbers: _Numbers, problems: _Problems) -> _Numbers:
    """Non-negative sample indices, each greater than the previous kept one."""
    numbers = numbers.reject(numbers.values >= 0, problems, "a sample index must be >= 0")
    keep = _increasing_mask(numbers.values)
    if bool(keep.all()):
        return numbers
    running_max = np.maximum.accumulate(numbers.values)
    for i in np.flatnonzero(~keep).tolist():
        problems.add(
            int(numbers.line_nos[i]),
            f"R-peak sample index not greater than the previous one ({running_max[i - 1]:g})",
            numbers.tokens[int(numbers.index[i])],
        )
    return numbers.subset(keep)


def _from_samples(
    samples: npt.NDArray[np.float64],
    fs: float,
    beat_symbols: Sequence[str] | None,
    *,
    ctx: _Context,
    fmt: str,
    problems: _Problems,
) -> RRSeries:
    """RR intervals (ms) between consecutive beats given by sample indices at ``fs`` Hz."""
    notes = problems.finish()
    return RRSeries.from_rr(
        np.diff(samples) / fs * 1000.0,
        source=ctx.source,
        format=fmt,
        symbols=tuple(beat_symbols[1:]) if beat_symbols is not None else None,
        notes=notes,
        skipped_lines=problems.count,
    )


# --------------------------------------------------------------------------------------
# files, CSV headers, small helpers
# --------------------------------------------------------------------------------------


def _open_text(path: Path, newline: str | None = None) -> TextIO:
    """Open a text file; undecodable bytes become U+FFFD (and fail as numbers)."""
    try:
        return path.open(encoding=_ENCODING, errors="replace", newline=newline)
    except OSError as exc:
        raise RecordingError(f"{path}: cannot open: {exc.strerror or exc}") from exc


def _read_lines(path: Path) -> list[str]:
    """All lines, without endings (LF, CRLF and CR all end a line)."""
    with _open_text(path) as fh:
        try:
            return fh.read().split("\n")
        except OSError as exc:
            raise RecordingError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def read_head(path: Path) -> list[str]:
    """The first :data:`HEAD_LINES` lines, for format detection."""
    with _open_text(path) as fh:
        try:
            return [line.rstrip("\n") for line in itertools.islice(fh, HEAD_LINES)]
        except OSError as exc:
            raise RecordingError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _csv_header(fh: TextIO, source: str) -> tuple[int, list[str], str]:
    """Skip blank lines, read the header: (its line number, its fields, the delimiter)."""
    for line_no, line in enumerate(fh, 1):
        if line.strip():
            delimiter = _sniff_delimiter(line) or ","
            fields = next(csv.reader([line], delimiter=delimiter))
            return line_no, [f.strip() for f in fields], delimiter
    raise RecordingError(f"{source}: empty file, no CSV header")


def _sniff_delimiter(line: str) -> str | None:
    """The most frequent of ``,``, ``;`` and tab in a header line, if any."""
    counts = {d: line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else None


@dataclass(frozen=True, slots=True)
class _CsvColumns:
    """Positions of the columns the CSV readers use (``None`` when absent)."""

    rr: int | None = None
    rr_unit: str | None = None  # "ms", "s" or None (decide from the values)
    sample: int | None = None
    sample_fs: float | None = None
    symbol: int | None = None

    @classmethod
    def from_header(cls, fields: Sequence[str]) -> _CsvColumns:
        """Find the columns by name, case-insensitively; the first match wins."""
        rr = rr_unit = sample = sample_fs = symbol = None
        for i, name in enumerate(fields):
            low = name.strip().lower()
            bracket = _BRACKETED.search(low)
            norm = re.sub(r"[^a-z0-9.]+", "_", _BRACKETED.sub(" ", low)).strip("_")
            if rr is None and (m := _RR_COLUMN.fullmatch(norm)):
                rr = i
                rr_unit = _unit_name(m.group(1) or (bracket.group(1) if bracket else None))
            elif sample is None and (m := _SAMPLE_COLUMN.fullmatch(norm)):
                sample = i
                sample_fs = float(m.group(1)) if m.group(1) else None
            elif symbol is None and norm in ("symbol", "sym", "annotation_symbol"):
                symbol = i
        return cls(rr=rr, rr_unit=rr_unit, sample=sample, sample_fs=sample_fs, symbol=symbol)


def _unit_name(text: str | None) -> str | None:
    """``"ms"``, ``"s"`` or ``None`` (unknown) for a unit written in a column name."""
    if text in ("ms", "msec", "millisecond", "milliseconds"):
        return "ms"
    if text in ("s", "sec", "secs", "second", "seconds"):
        return "s"
    return None


def _resolve_unit(unit: str, values: npt.NDArray[np.float64]) -> str:
    """``"ms"``/``"s"`` as given; ``"auto"``: seconds when the median is below 10."""
    if unit != "auto":
        return unit
    small = values.size > 0 and float(np.median(values)) < _SECONDS_MEDIAN_LIMIT
    return "s" if small else "ms"


def _to_ms(values: npt.NDArray[np.float64], unit: str) -> npt.NDArray[np.float64]:
    """Values in ``unit`` (``"ms"`` or ``"s"``) converted to milliseconds."""
    return values * 1000.0 if unit == "s" else values


def _resolve_fs(ctx: _Context, file_fs: float | None, where: str) -> float:
    """The sampling rate: from the file, or from ``fs``; both must agree."""
    if file_fs is None:
        if ctx.fs is None:
            raise RecordingError(
                f"{ctx.source}: the sampling rate is not in {where}; "
                "pass --fs (the sampling rate in Hz)"
            )
        return ctx.fs
    if ctx.fs is not None and not math.isclose(ctx.fs, file_fs):
        raise RecordingError(
            f"{ctx.source}: --fs {ctx.fs:g} disagrees with the {file_fs:g} Hz in {where}"
        )
    return file_fs


def _with_fs_note(series: RRSeries, ctx: _Context) -> RRSeries:
    """Say that ``fs`` was ignored by a format that holds RR intervals."""
    if ctx.fs is None:
        return series
    note = f"--fs {ctx.fs:g} ignored: {series.format} files hold RR intervals, not samples"
    return dataclasses.replace(series, notes=(*series.notes, note))


def _hrm_param(lines: Sequence[str], section_start: int, key: str) -> str | None:
    """The value of ``key=value`` in the .hrm section starting at ``section_start``."""
    for line in lines[section_start + 1 :]:
        text = line.strip()
        if text.startswith("["):
            break
        name, sep, value = text.partition("=")
        if sep and name.strip().lower() == key:
            return value.strip()
    return None


def _is_number(text: str) -> bool:
    """Whether ``float`` parses ``text`` (to something other than NaN)."""
    return not math.isnan(_float_or_nan(text))


def _float_or_nan(text: str) -> float:
    """``float(text)``, or NaN when it is not a number."""
    try:
        return float(text)
    except ValueError:
        return math.nan
