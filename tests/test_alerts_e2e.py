"""Alerts end to end: windows over MQTT -> server -> alert engine -> store -> MQTT -> ack.

A real mosquitto with the clinic's passwords and ACL; the server (with the alert service,
on SQLite) runs in the test's event loop. The patient publishes the metrics windows of a
simulated session with a stress episode; a therapist subscribed to the patient's alerts
sees the alert raised, acknowledges it over MQTT, and the acknowledgement is stored. The
server is then restarted on its saved alert state in the middle of the episode: the alert
resolves once, with the same id, and no second alert is raised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hrvstream.alert_service import AlertService
from hrvstream.alerts import Window
from hrvstream.clinic import build_clinic
from hrvstream.hrv.engine import AnalysisConfig, analyze
from hrvstream.protocol.messages import AlertAckMessage, AlertMessage, MetricsMessage, topic
from hrvstream.server import load_server_settings
from hrvstream.simulate import SessionConfig, StressEpisode, simulate_session
from tests.infra import MosquittoFactory, hrv_config, mosquitto_factory, subscriber
from tests.test_server import STEP, publish, run, running, until, write_config

__all__ = ["mosquitto_factory"]

DAY = 86400.0
T0 = 1_767_636_000.0  # 2026-01-05T18:00:00Z: sessions at 18:00 UTC, outside quiet hours
ONSET_S, LENGTH_S = 1500.0, 900.0


def windows(seed: int, origin: float, session: str, stress: bool = False) -> list[MetricsMessage]:
    """The metrics messages an agent publishes for a simulated one-hour session."""
    episode = (StressEpisode(start_s=ONSET_S, duration_s=LENGTH_S),) if stress else ()
    sim = simulate_session(SessionConfig(duration_s=3600, seed=seed, stress=episode))
    cols = analyze(sim.series, AnalysisConfig(window_s=300, step_s=5)).windows.columns
    rows = [{k: float(np.asarray(v)[i]) for k, v in cols.items()} for i in range(len(cols["t_s"]))]
    return [
        MetricsMessage.from_row(
            patient="p1", session=session, origin_unix_s=origin, window_s=300.0, row=r
        )
        for r in rows
    ]


def test_alert_raised_stored_published_acknowledged_and_survives_a_restart(
    tmp_path: Path, mosquitto_factory: MosquittoFactory
) -> None:
    broker = mosquitto_factory(hrv_config(patients=("p1",), therapists=("t1",)))
    settings = load_server_settings(write_config(tmp_path / "server.toml", broker), {})
    state = tmp_path / "alert-state.db"
    history = [w for d in range(4) for w in windows(40 + d, T0 + d * DAY, f"day{d}")]
    today = T0 + 4 * DAY
    session = windows(99, today, "today", stress=True)
    onset = today + ONSET_S
    # Up to 10 minutes into the episode, then the rest after a restart.
    split = next(i for i, m in enumerate(session) if m.t_unix_s >= onset + 600)
    first, rest = session[:split], session[split:]

    seeding = AlertService(state_path=state)
    seeding.seed(Window.from_message(m) for m in history)
    seeding.close()

    def payloads(ms: list[MetricsMessage]) -> list[tuple[str, bytes]]:
        return [(topic("p1", "metrics"), m.to_json()) for m in ms]

    async def body() -> None:
        alerts = AlertService(state_path=state)
        server = build_clinic(settings, alerts)
        async with (
            subscriber(
                broker.url("t1"), [topic("p1", "alerts")], password=broker.password("t1")
            ) as seen,
            running(server),
        ):
            await publish(broker, "p1", payloads(first))
            got = await seen.wait(1, timeout=STEP)
            raised = AlertMessage.from_json(got[0].payload)
            assert raised.state == "raised" and raised.rule == "acute_stress"
            assert onset < raised.t_unix_s <= onset + 6 * 60, raised.t_unix_s - onset
            ex = raised.explanation
            for key in ("message", "metric", "value", "baseline", "deviation", "coverage"):
                assert ex.get(key) is not None, key
            assert isinstance(ex["deviation"], float) and ex["deviation"] < -2
            stored = await server.store.alerts("p1")
            assert [(r.alert_id, r.state) for r in stored] == [(raised.alert_id, "raised")]

            # The therapist acknowledges over MQTT (the ACL lets therapists publish acks).
            ack = AlertAckMessage(
                alert_id=raised.alert_id,
                patient="p1",
                by="t1",
                t_unix_s=today + 2000,
                note="called, patient OK",
            )
            await publish(broker, "t1", [(topic("p1", "alerts/ack"), ack.to_json())])
            got = await seen.wait(2, timeout=STEP)
            acked = AlertMessage.from_json(got[1].payload)
            assert (acked.alert_id, acked.state) == (raised.alert_id, "acknowledged")
            assert (acked.acknowledged_by, acked.note) == ("t1", "called, patient OK")

            async def ack_stored() -> bool:
                rows = await server.store.alerts("p1")
                return any(r.state == "acknowledged" for r in rows)

            await until(ack_stored, "the acknowledgement in the store")
            rows = await server.store.alerts("p1")
            row = next(r for r in rows if r.state == "acknowledged")
            assert row.fields["acknowledged_by"] == "t1"
            assert row.fields["note"] == "called, patient OK"
            assert alerts.open_alerts("p1")[0].state == "acknowledged"
        alerts.close()

        # Restart on the saved state, mid-episode.
        again = AlertService(state_path=state)
        assert [m.alert_id for m in again.open_alerts("p1")] == [raised.alert_id]
        server2 = build_clinic(settings, again)
        async with (
            subscriber(
                broker.url("t1"), [topic("p1", "alerts")], password=broker.password("t1")
            ) as seen2,
            running(server2),
        ):
            await publish(broker, "p1", payloads(rest))
            got2 = await seen2.wait(1, timeout=STEP)
            resolved = AlertMessage.from_json(got2[0].payload)
            assert (resolved.alert_id, resolved.state) == (raised.alert_id, "resolved")
            assert resolved.t_unix_s > onset + LENGTH_S
            assert resolved.acknowledged_by == "t1"

            async def all_processed() -> bool:
                return server2.stats.metrics_stored >= len(rest)

            await until(all_processed, "every window stored")
            final = await server2.store.alerts("p1")
            assert sorted(r.state for r in final) == ["acknowledged", "raised", "resolved"]
            assert {r.alert_id for r in final} == {raised.alert_id}
            assert again.open_alerts("p1") == []  # acknowledged and resolved: closed
            assert again.raised == 0
        again.close()

    run(body, timeout=240)
