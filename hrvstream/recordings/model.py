"""The in-memory form of every recording: RR intervals with their beat times."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class RRSeries:
    """RR intervals of one recording.

    Attributes
    ----------
    rr_ms:
        Interval ``i`` in milliseconds (float, never rounded on the way in).
    t_s:
        Time of the beat that *ends* interval ``i``, in seconds, with ``t = 0`` at the
        first beat (the beat that starts interval 0). For a gap-free recording this is
        ``cumsum(rr_ms) / 1000``. Where beats were lost (a BLE reconnect), ``t_s`` jumps
        by more than ``rr_ms``: the gap is kept, never filled with invented beats.
    source:
        Where the series came from (a path, ``"<simulated>"``, a device name).
    format:
        The format name it was read as (see :mod:`hrvstream.recordings.readers`).
    symbols:
        Optional per-interval beat annotation of the beat ending the interval (WFDB
        symbols such as ``"N"``, ``"A"``, ``"V"``), for labelled reference data.
    notes:
        Human-readable remarks made while reading (for example the PhysioNet
        first-line offset, or how many malformed lines ``--lenient`` skipped).
    skipped_lines:
        Number of malformed lines skipped in lenient mode.
    """

    rr_ms: FloatArray
    t_s: FloatArray
    source: str = "<memory>"
    format: str = "rr"
    symbols: tuple[str, ...] | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    skipped_lines: int = 0

    def __post_init__(self) -> None:
        if self.rr_ms.shape != self.t_s.shape or self.rr_ms.ndim != 1:
            raise ValueError("rr_ms and t_s must be 1-D arrays of the same length")
        if self.symbols is not None and len(self.symbols) != len(self.rr_ms):
            raise ValueError("symbols must have one entry per interval")

    @classmethod
    def from_rr(
        cls,
        rr_ms: npt.ArrayLike,
        *,
        source: str = "<memory>",
        format: str = "rr",
        symbols: tuple[str, ...] | None = None,
        notes: tuple[str, ...] = (),
        skipped_lines: int = 0,
    ) -> RRSeries:
        """Build a gap-free series: beat times are the cumulative sum of the intervals."""
        rr = np.ascontiguousarray(rr_ms, dtype=np.float64)
        return cls(
            rr_ms=rr,
            t_s=np.cumsum(rr) / 1000.0,
            source=source,
            format=format,
            symbols=symbols,
            notes=notes,
            skipped_lines=skipped_lines,
        )

    def __len__(self) -> int:
        return int(self.rr_ms.shape[0])

    @property
    def duration_s(self) -> float:
        """Time from the first beat to the last, in seconds."""
        return float(self.t_s[-1]) if len(self) else 0.0
