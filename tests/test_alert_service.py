"""The alert service's own parts: recent HR and contact from beats, its state file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from hrvstream.adapters.alert_state import AlertStateError
from hrvstream.alert_service import AlertService
from hrvstream.alerts import AlertEngine
from hrvstream.protocol.messages import AlertMessage, BeatsMessage, MetricsMessage

T0 = 1_767_636_000.0


def beats(seq: int, t0: float, rr: list[float], contact: bool | None = True) -> BeatsMessage:
    t = list(np.cumsum(rr) / 1000.0)
    return BeatsMessage(
        patient="p1",
        session="s",
        seq=seq,
        origin_unix_s=t0,
        sent_unix_s=t0 + t[-1],
        t_s=tuple(t),
        rr_ms=tuple(rr),
        after_gap=(),
        contact=contact,
    )


def test_recent_hr_is_the_last_30_s_of_beats_across_messages() -> None:
    service = AlertService()
    rng = np.random.default_rng(1)
    rr_all: list[float] = []
    t = T0
    for seq in range(20):  # 20 messages of 8 beats, ~800 ms each
        rr = [float(x) for x in rng.uniform(700, 900, 8)]
        service.observe(beats(seq, t, rr))
        t += sum(rr) / 1000
        rr_all += rr
    times = T0 + np.cumsum(rr_all) / 1000
    # An end half-way between two beats, with no beat near end - 30 s either (float
    # times differ by rounding between the two ways of adding them up).
    end = next(
        e
        for e in (times[1:-2] + times[2:-1]) / 2
        if e - times[0] > 40 and np.min(np.abs(times - (e - 30))) > 0.005
    )
    inside = [r for tt, r in zip(times, rr_all, strict=True) if end - 30 < tt <= end]
    assert service.recent_hr_bpm("p1", end) == pytest.approx(60000 / np.mean(inside))
    assert service.recent_hr_bpm("p1", T0 - 100) is None  # no beats then
    assert service.recent_hr_bpm("p2", end) is None  # unknown patient


def test_contact_lost_in_beats_gates_the_next_window() -> None:
    service = AlertService()
    service.observe(beats(0, T0, [800.0] * 5, contact=False))
    window = MetricsMessage(
        patient="p1",
        session="s",
        t_unix_s=T0 + 4,
        window_s=300,
        n_beats=300,
        coverage=1.0,
        artifact_pct=0.0,
        mean_hr_bpm=70.0,
        rmssd_ms=30.0,
    )
    asyncio.run(service.on_metrics(window))
    a = service.assessment("p1")
    assert a is not None and (a["state"], a["quality"]) == ("poor_quality", "no_contact")


def test_unreadable_state_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "alert-state.db"
    path.write_bytes(b"this is not a database, just some bytes " * 100)
    with pytest.raises(AlertStateError) as err:
        AlertService(state_path=path)
    assert str(path) in str(err.value)


def test_alerts_wait_for_the_broker_and_go_out_in_order(tmp_path: Path) -> None:
    """A publish that fails keeps the alert change queued; the next call sends it first."""
    sent: list[AlertMessage] = []
    broker_up = False

    async def publish(m: AlertMessage) -> None:
        if not broker_up:
            from hrvstream.adapters.mqtt import BrokerUnavailable

            raise BrokerUnavailable("broker away")
        sent.append(m)

    service = AlertService(state_path=tmp_path / "s.db")
    service.attach(publish)
    engine: AlertEngine = service.engine
    # A baseline of hand-made calm windows, then a held high score.
    calm = [
        MetricsMessage(
            patient="p1",
            session="s",
            t_unix_s=T0 + 300 * i,
            window_s=300,
            n_beats=300,
            coverage=1.0,
            artifact_pct=0.0,
            mean_hr_bpm=65.0 + (i % 3) * 0.5,
            rmssd_ms=40.0 + (i % 5),
            lf_hf=1.5,
        )
        for i in range(30)
    ]
    high = [
        MetricsMessage(
            patient="p1",
            session="s",
            t_unix_s=T0 + 9000 + 30 * i,
            window_s=300,
            n_beats=300,
            coverage=1.0,
            artifact_pct=0.0,
            mean_hr_bpm=80.0,
            rmssd_ms=20.0,
            lf_hf=4.0,
        )
        for i in range(8)
    ]

    async def body() -> None:
        nonlocal broker_up
        for m in calm + high:
            await service.on_metrics(m)
        assert engine.open_alerts("p1") and sent == [] and service.pending == 1
        broker_up = True
        alert_id = engine.open_alerts("p1")[0].alert_id
        await service.acknowledge("p1", alert_id, "t1", "seen")
        assert [(m.alert_id, m.state) for m in sent] == [
            (alert_id, "raised"),
            (alert_id, "acknowledged"),
        ]
        assert service.pending == 0

    asyncio.run(body())
    service.close()
    # The acknowledged alert is in the state file for the next start.
    again = AlertService(state_path=tmp_path / "s.db")
    assert [m.state for m in again.open_alerts("p1")] == ["acknowledged"]
    again.close()
