"""Beat timing from notifications, and the RR -> notification encoder."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hrvstream.protocol.beat_timing import (
    DEFAULT_GAP_THRESHOLD_S,
    BeatTimer,
    StrapDecoder,
    TimedBeat,
    encode_rr_as_notifications,
)
from hrvstream.protocol.heart_rate import parse_heart_rate_measurement, rr_ms_to_raw


def _rr(n: int = 600, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(800 + 60 * np.sin(np.arange(n) / 5) + rng.normal(0, 15, n))


def _quantised(rr: list[float]) -> list[float]:
    return [rr_ms_to_raw(v) * 1000 / 1024 for v in rr]


def test_encoder_carries_every_beat_once_with_strap_rounding() -> None:
    rr = _rr()
    notes = _pairs(rr)
    carried = [v for _, p in notes for v in parse_heart_rate_measurement(p).rr_ms]
    assert carried == _quantised(rr)
    times = [t for t, _ in notes]
    assert times == [float(k) for k in range(1, len(times) + 1)]
    # each notification carries the beats that ended in the second before it
    ends = iter(np.cumsum(rr) / 1000)
    for tick, payload in notes:
        for _ in parse_heart_rate_measurement(payload).rr_ms:
            t = next(ends)
            assert tick - 1 < t <= tick + 1e-9


def test_encoder_sends_hr_only_notifications_in_slow_seconds() -> None:
    notes = _pairs([1500.0] * 20)
    parsed = [parse_heart_rate_measurement(p) for _, p in notes]
    assert any(not m.rr_raw for m in parsed)
    assert all(m.heart_rate_bpm == 40 for m in parsed[1:])
    assert all(m.sensor_contact_detected for m in parsed)


def test_timer_keeps_a_continuous_timeline() -> None:
    rr = _rr()
    timer = BeatTimer()
    beats = [b for t, p in _pairs(rr) for b in _push(timer, t, p)]
    assert len(beats) == len(rr)
    q = np.array(_quantised(rr))
    t = np.array([b.t_s for b in beats])
    np.testing.assert_allclose(np.diff(t) * 1000, q[1:], atol=1e-9)
    assert not any(b.after_gap for b in beats)


def test_arrival_jitter_does_not_bend_the_timeline() -> None:
    rr = _rr(seed=1)
    rng = np.random.default_rng(5)
    timer = BeatTimer()
    beats = []
    for t, p in _pairs(rr):
        beats.extend(_push(timer, t + float(rng.uniform(0, 0.9)), p))
    times = np.array([b.t_s for b in beats])
    np.testing.assert_allclose(np.diff(times) * 1000, np.array(_quantised(rr))[1:], atol=1e-9)
    assert timer.gaps == 0


def test_lost_notifications_leave_a_gap_and_invent_nothing() -> None:
    rr = _rr()
    notes = _pairs(rr)
    lost = range(100, 104)  # four seconds of notifications never arrive
    timer = BeatTimer()
    beats = [b for i, (t, p) in enumerate(notes) if i not in lost for b in _push(timer, t, p)]
    lost_rr = [v for i in lost for v in parse_heart_rate_measurement(notes[i][1]).rr_ms]
    assert len(beats) == len(rr) - len(lost_rr)
    gap_idx = [i for i, b in enumerate(beats) if b.after_gap]
    assert len(gap_idx) == 1
    i = gap_idx[0]
    jump_s = beats[i].t_s - beats[i - 1].t_s - beats[i].rr_ms / 1000
    # the timeline re-anchors at the arrival time: the jump is the lost beats' time,
    # up to the one-second notification granularity
    assert abs(jump_s - sum(lost_rr) / 1000) < 1.0
    assert all(b2.t_s > b1.t_s for b1, b2 in itertools.pairwise(beats))


def test_link_lost_marks_even_a_short_gap() -> None:
    rr = _rr()
    notes = _pairs(rr)
    timer = BeatTimer()
    beats = []
    for i, (t, p) in enumerate(notes):
        if i == 50:
            timer.link_lost()
            continue  # one notification (about a second of beats) lost
        beats.extend(_push(timer, t, p))
    assert timer.gaps == 1
    assert sum(b.after_gap for b in beats) == 1
    assert DEFAULT_GAP_THRESHOLD_S / 10 < 1.0  # the loss was shorter than the threshold


def test_decoder_counts_malformed_payloads_and_keeps_going() -> None:
    rr = _rr(200)
    notes = _pairs(rr)
    dec = StrapDecoder()
    beats = []
    for i, (t, p) in enumerate(notes):
        payload = b"\x10\x48\x54" if i == 30 else p  # RR flag with an odd RR byte count
        beats.extend(dec.notification(t, payload))
    assert dec.malformed == 1
    assert dec.first_error is not None and "notification 31" in dec.first_error
    assert dec.notifications == len(notes)
    assert len(beats) == len(rr) - len(parse_heart_rate_measurement(notes[30][1]).rr_raw)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(min_value=250, max_value=2500), min_size=1, max_size=300),
    st.floats(min_value=0.0, max_value=0.9),
)
def test_times_increase_and_match_rr_without_loss(rr: list[float], jitter: float) -> None:
    timer = BeatTimer()
    beats = []
    for k, (t, p) in enumerate(_pairs(rr)):
        beats.extend(_push(timer, t + (jitter if k % 2 else 0.0), p))
    assert len(beats) == len(rr)
    for b1, b2 in itertools.pairwise(beats):
        assert math.isclose(b2.t_s - b1.t_s, b2.rr_ms / 1000, abs_tol=1e-9)


def test_invalid_threshold() -> None:
    with pytest.raises(ValueError):
        BeatTimer(gap_threshold_s=0)


def _push(timer: BeatTimer, t: float, payload: bytes) -> list[TimedBeat]:
    return timer.push(t, parse_heart_rate_measurement(payload).rr_ms)


def _pairs(rr: list[float]) -> list[tuple[float, bytes]]:
    return [(n.t_s, n.payload) for n in encode_rr_as_notifications(rr)]
