"""From a strap's notifications to HRV rows: the path every beat takes.

``StrapDecoder`` (bytes -> timed beats) -> origin (``t = 0`` at the first beat) ->
``StreamingAnalyzer`` (rows). ``analyze`` on a capture file runs the same decoder and the
batch engine, so a replay and an analysis of one capture give the same rows.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from hrvstream.hrv.engine import AnalysisConfig, StreamingAnalyzer
from hrvstream.protocol.beat_timing import StrapDecoder, TimedBeat, encode_rr_as_notifications
from hrvstream.protocol.capture import CaptureEvent, Notification
from hrvstream.protocol.heart_rate import HEART_RATE_MEASUREMENT_UUID
from hrvstream.recordings.capture_reader import LINK_LOST_EVENTS, beat_origin
from hrvstream.recordings.model import RRSeries

Record = Notification | CaptureEvent


@dataclass(frozen=True, slots=True)
class Beat:
    """A beat on the session timeline (``t = 0`` at the first beat)."""

    t_s: float
    rr_ms: float
    after_gap: bool
    receiver_t_s: float


class BeatPipeline:
    """Notifications in, beats and HRV window rows out (one strap, one session)."""

    def __init__(self, config: AnalysisConfig | None = None) -> None:
        self.decoder = StrapDecoder()
        self.analyzer = StreamingAnalyzer(config or AnalysisConfig(step_s=None))
        self._origin: float | None = None
        self.beats = 0

    @property
    def origin_s(self) -> float | None:
        """Receiver time of the session's first beat."""
        return self._origin

    def notification(
        self, arrival_t_s: float, payload: bytes
    ) -> tuple[list[Beat], list[dict[str, float]]]:
        """One Heart Rate Measurement notification; returns new beats and final rows."""
        timed = self.decoder.notification(arrival_t_s, payload)
        return self._beats(timed)

    def link_lost(self) -> None:
        """The link dropped; the next beats start after a gap."""
        self.decoder.link_lost()

    def close(self) -> list[dict[str, float]]:
        """End of the session: flush the remaining windows."""
        return self.analyzer.close()

    def _beats(self, timed: list[TimedBeat]) -> tuple[list[Beat], list[dict[str, float]]]:
        beats: list[Beat] = []
        rows: list[dict[str, float]] = []
        for b in timed:
            if self._origin is None:
                self._origin = beat_origin(b)
            t = b.t_s - self._origin
            beats.append(Beat(t_s=t, rr_ms=b.rr_ms, after_gap=b.after_gap, receiver_t_s=b.t_s))
            rows.extend(self.analyzer.push(b.rr_ms, t))
            self.beats += 1
        return beats, rows


def records_from_series(series: RRSeries) -> Iterator[Record]:
    """RR intervals as the notifications a strap would have sent (see the encoder)."""
    yield from encode_rr_as_notifications(series.rr_ms.tolist())


def paced(records: Iterable[Record], speed: float | None) -> Iterator[Record]:
    """Records at ``speed`` times their recorded pace (``None``: as fast as possible)."""
    if speed is None:
        yield from records
        return
    start: float | None = None
    first_t = 0.0
    for rec in records:
        if start is None:
            start, first_t = time.monotonic(), rec.t_s
        delay = start + (rec.t_s - first_t) / speed - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield rec


def run_records(pipeline: BeatPipeline, records: Iterable[Record]) -> Iterator[dict[str, float]]:
    """Feed records straight into a pipeline (no radio), yielding rows as they become final."""
    for rec in records:
        if isinstance(rec, Notification):
            if rec.uuid == HEART_RATE_MEASUREMENT_UUID:
                yield from pipeline.notification(rec.t_s, rec.payload)[1]
        elif rec.event in LINK_LOST_EVENTS:
            pipeline.link_lost()
    yield from pipeline.close()
