"""Capture files (``hrvstream record``) read back as beats.

The payloads go through :class:`hrvstream.protocol.beat_timing.StrapDecoder`, the same
decoder the agent runs live, so ``analyze`` of a capture and ``replay`` of it give the same
beats. A malformed payload is counted, reported in the series' notes and skipped; a
malformed *line* (not JSON, missing keys) is a :class:`MalformedLineError` naming the line,
or is skipped with ``lenient``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from hrvstream.errors import MalformedLineError, RecordingError
from hrvstream.protocol.beat_timing import StrapDecoder, TimedBeat
from hrvstream.protocol.capture import (
    CaptureEvent,
    CaptureFormatError,
    Notification,
    decode_header,
    decode_record,
)
from hrvstream.protocol.heart_rate import HEART_RATE_MEASUREMENT_UUID
from hrvstream.recordings.model import RRSeries

#: Capture events after which the next beats are re-anchored (beats were lost).
LINK_LOST_EVENTS = frozenset({"disconnected"})


def series_from_beats(
    beats: list[TimedBeat],
    *,
    source: str,
    format: str,
    notes: tuple[str, ...] = (),
    skipped_lines: int = 0,
) -> RRSeries:
    """An :class:`RRSeries` from timed beats, with ``t = 0`` at the first beat.

    The first beat is the one that starts the first interval, ``rr[0]`` before the end of
    it; a streaming consumer subtracts the same origin the same way.
    """
    rr = np.array([b.rr_ms for b in beats], dtype=np.float64)
    t = np.array([b.t_s for b in beats], dtype=np.float64)
    if len(beats):
        t = t - beat_origin(beats[0])
    return RRSeries(
        rr_ms=rr, t_s=t, source=source, format=format, notes=notes, skipped_lines=skipped_lines
    )


def beat_origin(first: TimedBeat) -> float:
    """Receiver time of the beat that starts the first interval."""
    return first.t_s - first.rr_ms / 1000.0


class CaptureReader:
    """The records of a capture file, in order, with malformed lines handled.

    Iterate over it once; ``skipped`` counts malformed lines skipped in lenient mode.
    """

    def __init__(self, path: Path, *, source: str | None = None, lenient: bool = False) -> None:
        self.path = path
        self.source = source or str(path)
        self.lenient = lenient
        self.skipped = 0
        try:
            self._fh = path.open(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise RecordingError(f"{self.source}: cannot read: {exc.strerror}") from exc
        first = self._fh.readline()
        try:
            self.header = decode_header(first)
        except CaptureFormatError as exc:
            self._fh.close()
            raise MalformedLineError(
                self.source, 1, f"not a capture header ({exc.reason})"
            ) from exc

    def __iter__(self) -> Iterator[Notification | CaptureEvent]:
        last_t = -1.0
        with self._fh:
            for line_no, line in enumerate(self._fh, start=2):
                if not line.strip():
                    continue
                try:
                    rec = decode_record(line, line_no)
                    if rec.t_s < last_t:
                        raise CaptureFormatError(
                            f"time {rec.t_s} goes back before {last_t}", line_no=line_no
                        )
                except CaptureFormatError as exc:
                    if self.lenient:
                        self.skipped += 1
                        continue
                    raise MalformedLineError(
                        self.source, line_no, exc.reason, line.rstrip("\n")
                    ) from exc
                last_t = rec.t_s
                yield rec


def decoder_notes(decoder: StrapDecoder, skipped_lines: int) -> tuple[str, ...]:
    """What went wrong while decoding, for the user."""
    notes: list[str] = []
    if decoder.malformed:
        notes.append(
            f"skipped {decoder.malformed} malformed notification payload"
            f"{'s' if decoder.malformed != 1 else ''} of {decoder.notifications} "
            f"(first: {decoder.first_error})"
        )
    if decoder.timer.gaps:
        notes.append(f"{decoder.timer.gaps} gap(s) with lost beats kept in the timeline")
    if skipped_lines:
        notes.append(f"skipped {skipped_lines} malformed line{'s' if skipped_lines != 1 else ''}")
    return tuple(notes)


def read_capture(path: Path, *, source: str, lenient: bool) -> RRSeries:
    """Read a capture file into RR intervals with their beat times (gaps kept)."""
    decoder = StrapDecoder()
    beats: list[TimedBeat] = []
    reader = CaptureReader(path, source=source, lenient=lenient)
    for rec in reader:
        if isinstance(rec, Notification):
            if rec.uuid == HEART_RATE_MEASUREMENT_UUID:
                beats.extend(decoder.notification(rec.t_s, rec.payload))
        elif rec.event in LINK_LOST_EVENTS:
            decoder.link_lost()
    return series_from_beats(
        beats,
        source=source,
        format="capture",
        notes=decoder_notes(decoder, reader.skipped),
        skipped_lines=reader.skipped,
    )
