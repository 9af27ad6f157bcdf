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
from fractions import Fraction

from hrvstream.protocol.capture import Notification
from hrvstream.protocol.heart_rate import (
    HEART_RATE_MEASUREMENT_UUID,
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
    rr_ms: Iterable[float],
    *,
    start_s: float = 0.0,
    period_s: float = 1.0,
    contact: bool | None = True,
    uuid: str = HEART_RATE_MEASUREMENT_UUID,
) -> list[Notification]:
    """Encode an RR series as the Heart Rate Measurement notifications a strap would send.

    The rule, computed in exact rational arithmetic on the floats' true values:

    1. Beat ``k`` (``k = 1..n``) happens at ``T_k = start_s + (rr_1 + ... + rr_k) / 1000``
       seconds: the series starts with a beat at ``start_s`` that closes no interval.
    2. Notifications go out on a tick grid ``start_s + m * period_s``, ``m = 1, 2, ...``.
       Beat ``k`` is reported at tick ``m_k = ceil((T_k - start_s) / period_s)``: the time
       of the beat rounded *up* to the grid, a beat exactly on a tick belonging to that
       tick. So a notification carries the beats in ``(tick_{m-1}, tick_m]``, oldest first.
    3. There is one notification per tick from the first beat's tick to the last beat's
       tick, including ticks without beats (no RR field, like a strap during a long
       interval).
    4. Heart rate: ``round(60000 / mean)`` of the notification's RR values in ms (Python's
       round half to even), or the previous notification's value when it carries none;
       sent as uint16 only if above 255.
    5. RR values: :func:`~hrvstream.protocol.heart_rate.rr_ms_to_raw` (nearest 1/1024 s).
    6. Sensor contact: supported and detected (``contact=True``), supported and not
       detected (``False``) or not supported (``None``); no energy field.
    7. The notification's ``t_s`` is its tick, converted to the nearest float.

    The number of RR values per notification is not capped (at the default ATT MTU of 23
    a payload holds 9, which needs a heart rate above 540 bpm at one notification per
    second).

    Parameters
    ----------
    rr_ms:
        RR intervals in milliseconds, each finite and ``> 0``.
    start_s:
        Time of the beat that starts the series, seconds, ``>= 0``.
    period_s:
        Tick spacing, seconds, ``> 0`` (about 1 s on real straps).
    contact:
        Sensor contact bits, see rule 6.
    uuid:
        The characteristic UUID of the records.

    Returns
    -------
    list[Notification]
        The sequence, in time order; empty for an empty series.

    Raises
    ------
    ValueError
        If an RR value is not finite and positive (or does not fit a uint16 in 1/1024 s),
        or ``start_s``/``period_s`` is out of range.

    Examples
    --------
    >>> ns = encode_rr_as_notifications([800.0, 800.0, 1500.0])
    >>> [(n.t_s, n.payload.hex()) for n in ns]
    [(1.0, '164b3303'), (2.0, '164b3303'), (3.0, '064b'), (4.0, '16280006')]
    """
    if not math.isfinite(start_s) or start_s < 0:
        raise ValueError(f"start_s must be finite and >= 0, got {start_s!r}")
    if not math.isfinite(period_s) or period_s <= 0:
        raise ValueError(f"period_s must be finite and > 0, got {period_s!r}")
    start = Fraction(start_s)
    period = Fraction(period_s)
    elapsed = Fraction(0)
    by_tick: dict[int, list[float]] = {}
    for i, rr in enumerate(rr_ms):
        if isinstance(rr, bool) or not isinstance(rr, int | float):
            raise ValueError(f"rr_ms[{i}] must be a number, got {type(rr).__name__}")
        if not math.isfinite(rr) or rr <= 0:
            raise ValueError(f"rr_ms[{i}] must be finite and > 0, got {rr!r}")
        elapsed += Fraction(rr) / 1000
        tick = math.ceil(elapsed / period)
        by_tick.setdefault(tick, []).append(float(rr))
    if not by_tick:
        return []
    out: list[Notification] = []
    heart_rate = 0
    for tick in range(min(by_tick), max(by_tick) + 1):
        rrs = by_tick.get(tick, [])
        if rrs:
            mean = sum((Fraction(r) for r in rrs), Fraction(0)) / len(rrs)
            heart_rate = round(Fraction(60000) / mean)
        m = HeartRateMeasurement(
            heart_rate_bpm=heart_rate,
            uint16_format=heart_rate > 0xFF,
            sensor_contact_supported=contact is not None,
            sensor_contact_detected=contact,
            rr_raw=tuple(rr_ms_to_raw(r) for r in rrs),
        )
        out.append(
            Notification(
                t_s=float(start + tick * period),
                uuid=uuid,
                payload=encode_heart_rate_measurement(m),
            )
        )
    return out


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
