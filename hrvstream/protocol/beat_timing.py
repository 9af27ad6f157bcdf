"""Beat times from Heart Rate Measurement notifications, and notifications from beats.

A chest strap's notifications carry no timestamp: about once a second the strap sends the
RR intervals of the beats since its previous notification (0 to n of them). The receiver
knows only when each notification arrived. :class:`BeatTimer` turns that into a beat
timeline:

- The first notification anchors the timeline: its last beat is placed at the arrival
  time, the earlier ones back-dated by their RR intervals.
- Later beats continue the timeline: each beat ends ``rr`` after the previous one, so the
  intervals and the times always agree and arrival jitter (BLE connection events, a
  strap's reporting delay) does not bend the time axis.
- When the arrival time runs ahead of the timeline by more than ``gap_threshold_s``, beats
  were lost (a dropped link, a missed notification, a reconnect). The timeline is then
  re-anchored at the arrival time and the first beat after it is marked as following a
  gap. Gaps are kept, never filled with invented beats: windows spanning one report
  reduced coverage.

:func:`encode_rr_as_notifications` goes the other way, for replaying RR files through the
same code path a strap's data takes.

No I/O and stdlib only; the same code runs in ``analyze`` (capture files) and in the
agent, so both give the same beat times.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hrvstream.protocol.heart_rate import (
    HeartRateMeasurement,
    HeartRateParseError,
    encode_heart_rate_measurement,
    parse_heart_rate_measurement,
    rr_ms_to_raw,
)

#: Arrival time ahead of the beat timeline by more than this means beats were lost.
DEFAULT_GAP_THRESHOLD_S = 2.5


@dataclass(frozen=True, slots=True)
class TimedBeat:
    """One RR interval with the time of the beat that ends it.

    Attributes
    ----------
    t_s:
        Time of the beat ending the interval, on the receiver's clock (seconds).
    rr_ms:
        The interval in ms, exactly as the strap reported it.
    after_gap:
        ``True`` for the first beat after lost beats (the timeline was re-anchored).
    """

    t_s: float
    rr_ms: float
    after_gap: bool = False


class BeatTimer:
    """Assigns beat times to the RR intervals of successive notifications."""

    def __init__(self, gap_threshold_s: float = DEFAULT_GAP_THRESHOLD_S) -> None:
        if not gap_threshold_s > 0:
            raise ValueError("gap_threshold_s must be positive")
        self.gap_threshold_s = gap_threshold_s
        self._last_t: float | None = None
        self._link_lost = False
        self.gaps = 0
        self.max_lag_s = 0.0

    def link_lost(self) -> None:
        """The link dropped: the next beats are re-anchored at their arrival time.

        Beats lost while the link was down leave a gap in the timeline however short it
        was (without this, a loss shorter than ``gap_threshold_s`` would go unnoticed).
        """
        self._link_lost = True

    @property
    def last_beat_t_s(self) -> float | None:
        """Time of the latest beat, or ``None`` before the first one."""
        return self._last_t

    def lag_s(self, arrival_t_s: float) -> float | None:
        """How far ``arrival_t_s`` is ahead of the latest beat (``None`` before any)."""
        return None if self._last_t is None else arrival_t_s - self._last_t

    def push(self, arrival_t_s: float, rr_ms: Sequence[float]) -> list[TimedBeat]:
        """Time the beats of one notification that arrived at ``arrival_t_s``."""
        if not rr_ms:
            return []
        total_s = math.fsum(rr_ms) / 1000.0
        after_gap = False
        if self._last_t is None:
            start = arrival_t_s - total_s
        else:
            start = self._last_t
            lag = arrival_t_s - (self._last_t + total_s)
            self.max_lag_s = max(self.max_lag_s, lag)
            if lag > self.gap_threshold_s or (self._link_lost and lag > 0):
                start = arrival_t_s - total_s
                after_gap = True
                self.gaps += 1
        self._link_lost = False
        beats: list[TimedBeat] = []
        t = start
        for i, rr in enumerate(rr_ms):
            t = t + rr / 1000.0
            beats.append(TimedBeat(t_s=t, rr_ms=rr, after_gap=after_gap and i == 0))
        self._last_t = t
        return beats


def encode_rr_as_notifications(
    rr_ms: Sequence[float],
    *,
    period_s: float = 1.0,
    contact: bool | None = True,
) -> list[tuple[float, bytes]]:
    """Heart Rate Measurement notifications a strap would send for these beats.

    Rule: the first beat (the one that starts interval 0) is at t = 0. A notification goes
    out at every multiple of ``period_s`` (t = 1, 2, 3, ... s), carrying the RR intervals
    of the beats that ended since the previous notification (none, one or several), plus
    one at the first tick at or after the last beat. Each RR is rounded to the strap's
    1/1024 s tick. The heart rate field is ``round(60000 / mean RR)`` of the RRs in the
    notification, or the previous value when there are none.

    Parameters
    ----------
    rr_ms:
        RR intervals in ms.
    period_s:
        Seconds between notifications.
    contact:
        Sensor contact to report: ``True``/``False`` (supported, detected or not) or
        ``None`` (contact detection not supported).

    Returns
    -------
    list of (t_s, payload)
        Notification times (seconds after the first beat) and payload bytes.
    """
    raws = [rr_ms_to_raw(v) for v in rr_ms]
    out: list[tuple[float, bytes]] = []
    t = 0.0
    tick = 1
    pending: list[int] = []
    hr = 0
    for raw in raws:
        t += raw / 1024.0
        while t > tick * period_s:
            out.append((tick * period_s, _payload(pending, hr, contact)))
            hr = _hr(pending, hr)
            pending = []
            tick += 1
        pending.append(raw)
    if pending:
        out.append((tick * period_s, _payload(pending, hr, contact)))
    return out


def _hr(raws: Iterable[int], previous: int) -> int:
    vals = list(raws)
    if not vals:
        return previous
    mean_ms = sum(vals) * 1000.0 / 1024.0 / len(vals)
    return max(1, min(255, round(60000.0 / mean_ms)))


def _payload(raws: list[int], previous_hr: int, contact: bool | None) -> bytes:
    m = HeartRateMeasurement(
        heart_rate_bpm=_hr(raws, previous_hr) if raws or previous_hr else 0,
        uint16_format=False,
        sensor_contact_supported=contact is not None,
        sensor_contact_detected=contact,
        energy_expended_kj=None,
        rr_raw=tuple(raws),
    )
    return encode_heart_rate_measurement(m)


class StrapDecoder:
    """Heart Rate Measurement notifications in, timed beats out; counts what is wrong.

    The one place where a strap's bytes become beats, used alike by ``analyze`` on a
    capture file, by ``replay`` and by the agent: a malformed payload is counted (the
    first one kept with its detail) and skipped, never fatal.
    """

    def __init__(self, gap_threshold_s: float = DEFAULT_GAP_THRESHOLD_S) -> None:
        self.timer = BeatTimer(gap_threshold_s)
        self.notifications = 0
        self.malformed = 0
        self.first_error: str | None = None
        self.contact: bool | None = None
        self.heart_rate_bpm: int | None = None

    def notification(self, arrival_t_s: float, payload: bytes) -> list[TimedBeat]:
        """Decode one notification that arrived at ``arrival_t_s``."""
        self.notifications += 1
        try:
            m = parse_heart_rate_measurement(payload)
        except HeartRateParseError as exc:
            self.malformed += 1
            if self.first_error is None:
                self.first_error = f"notification {self.notifications}: {exc}"
            return []
        self.contact = m.sensor_contact_detected
        self.heart_rate_bpm = m.heart_rate_bpm
        return self.timer.push(arrival_t_s, m.rr_ms)

    def link_lost(self) -> None:
        """The link dropped (see :meth:`BeatTimer.link_lost`)."""
        self.timer.link_lost()
