"""The alert service's own parts: recent HR and contact from beats, its state file, and
the alert settings therapists change on the dashboard."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hrvstream.adapters.alert_state import SCHEMA_VERSION, AlertStateError
from hrvstream.alert_service import AlertService
from hrvstream.alerts import AlertConfigSet, AlertEngine, AlertSettingsError
from hrvstream.errors import HrvStreamError
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


# == a therapist's alert settings ==============================================================


def window(patient: str, t: float, hr: float, rmssd: float, lf_hf: float) -> MetricsMessage:
    return MetricsMessage(
        patient=patient,
        session="s",
        t_unix_s=t,
        window_s=300,
        n_beats=300,
        coverage=1.0,
        artifact_pct=0.0,
        mean_hr_bpm=hr,
        rmssd_ms=rmssd,
        lf_hf=lf_hf,
    )


async def calm(
    service: AlertService, patient: str, t0: float = T0, n: int = 30, every_s: float = 300.0
) -> None:
    """Hand-made calm windows (a baseline: every 5 min)."""
    for i in range(n):
        await service.on_metrics(
            window(patient, t0 + every_s * i, 65.0 + (i % 3) * 0.5, 40.0 + i % 5, 1.5)
        )


async def moderate_stress(service: AlertService, patient: str, t0: float) -> None:
    """4 min of windows scoring about 2.6 against :func:`calm`: an alert at the default 2.0."""
    for i in range(8):
        await service.on_metrics(window(patient, t0 + 30 * i, 70.0, 33.0, 2.2))


def audit_rows(path: Path) -> list[tuple[float, str, str, dict[str, Any]]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT t_unix_s, patient, by, settings FROM settings_audit ORDER BY rowid"
        ).fetchall()
    return [(t, p, by, json.loads(s)) for t, p, by, s in rows]


def test_a_therapists_settings_apply_at_once_to_that_patient_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = AlertService(state_path=tmp_path / "s.db", clock=lambda: T0 + 9000)

    async def body() -> None:
        for p in ("p1", "p2"):
            await calm(service, p)
        with caplog.at_level(logging.DEBUG, logger="hrvstream.alert_service"):
            new = await service.set_alert_settings("p1", {"raise_score": 3.0}, by="alice")
        assert new["settings"]["raise_score"] == 3.0  # type: ignore[index]
        assert (new["updated_by"], new["updated_unix_s"]) == ("alice", T0 + 9000)
        for p in ("p1", "p2"):
            await moderate_stress(service, p, T0 + 9000)

    asyncio.run(body())
    # p2, judged by the clinic's 2.0, has its alert; p1 (3.0 from now on) has none, with
    # its baseline and state kept: it reads as elevated.
    assert [a.state for a in service.open_alerts("p2")] == ["raised"]
    assert service.open_alerts("p1") == []
    a1 = service.assessment("p1")
    assert a1 is not None and a1["state"] == "elevated", a1
    assert isinstance(a1["stress_score"], float) and 2.0 < a1["stress_score"] < 3.0
    assert service.alert_settings("p2") == {
        "settings": {
            "acute_enabled": True,
            "raise_score": 2.0,
            "min_duration_s": 120.0,
            "clear_score": 1.0,
            "cooldown_s": 1800.0,
            "trend_enabled": True,
            "quiet_hours": "22:00-07:00",
            "timezone": "UTC",
        },
        "updated_by": None,
        "updated_unix_s": None,
    }
    # Who changed them at INFO; the patient and the values only at DEBUG.
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert loud == ["alert settings of a patient changed by alice"]
    assert any("p1" in r.getMessage() and "3.0" in r.getMessage() for r in caplog.records)
    service.close()


def test_settings_survive_a_restart_on_top_of_the_files_and_are_audited(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    # The server's file: the clinic raises at 2.2, and p1 has no trend rule.
    toml = {"raise_score": 2.2, "patients": {"p1": {"trend_enabled": False}}}
    config = AlertConfigSet.from_mapping(toml)
    times = iter([T0 + 100.0, T0 + 200.0])
    service = AlertService(config, state_path=path, clock=lambda: next(times))

    async def changes() -> None:
        await service.set_alert_settings(
            "p1", {"raise_score": 3.0, "quiet_hours": "off", "min_duration_s": 300}, by="alice"
        )
        # Back to the file's value: not kept as the therapist's.
        await service.set_alert_settings("p1", {"min_duration_s": 120.0}, by="root")

    asyncio.run(changes())
    before = service.alert_settings("p1")
    service.close()

    again = AlertService(config, state_path=path)
    assert again.alert_settings("p1") == before
    assert before["updated_by"] == "root" and before["updated_unix_s"] == T0 + 200.0
    cfg = again.engine.config.for_patient("p1")
    # default + the file's patient table + the therapists' values
    assert (cfg.raise_score, cfg.quiet_hours, cfg.min_duration_s, cfg.trend_enabled) == (
        3.0,
        None,
        120.0,
        False,
    )
    assert again.engine.config.for_patient("p2").raise_score == 2.2
    assert audit_rows(path) == [
        (
            T0 + 100.0,
            "p1",
            "alice",
            {"raise_score": 3.0, "quiet_hours": "off", "min_duration_s": 300.0},
        ),
        (T0 + 200.0, "p1", "root", {"raise_score": 3.0, "quiet_hours": "off"}),
    ]
    again.close()


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({}, "no settings given"),
        ({"critical_score": 5.0}, "'critical_score' cannot be changed here"),
        ({"raise_score": "high"}, "raise_score: expected a number"),
        ({"raise_score": True}, "raise_score: expected a number"),
        ({"raise_score": math.nan}, "raise_score must be a finite number"),
        ({"raise_score": 5.0}, "above the clinic's critical score 4"),
        ({"clear_score": 3.0}, "clear_score (3) must be below raise_score (2.5)"),
        ({"min_duration_s": 0}, "min_duration_s must be a number > 0"),
        ({"cooldown_s": -60}, "cooldown_s must be a number >= 0"),
        ({"acute_enabled": 1}, "acute_enabled: expected true or false"),
        ({"quiet_hours": "late"}, "quiet_hours 'late': expected HH:MM-HH:MM"),
        ({"quiet_hours": "25:00-07:00"}, "hours 0-23"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone 'Mars/Olympus_Mons' is not a known zone"),
        ({"raise_score": 2.5, "timezone": "x" * 65}, "timezone is longer than 64 characters"),
    ],
)
def test_invalid_settings_are_refused_and_change_nothing(
    tmp_path: Path, values: dict[str, object], says: str
) -> None:
    path = tmp_path / "s.db"
    service = AlertService(state_path=path, clock=lambda: T0)
    asyncio.run(service.set_alert_settings("p1", {"raise_score": 2.5}, by="alice"))
    before, config = service.alert_settings("p1"), service.engine.config
    with pytest.raises(AlertSettingsError) as err:
        asyncio.run(service.set_alert_settings("p1", values, by="mallory"))
    assert says in str(err.value)
    assert isinstance(err.value, HrvStreamError) and isinstance(err.value, ValueError)
    assert service.alert_settings("p1") == before
    assert service.engine.config is config
    assert [row[2] for row in audit_rows(path)] == ["alice"]
    service.close()


def test_saved_settings_that_no_longer_fit_the_file_are_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.db"
    service = AlertService(state_path=path, clock=lambda: T0)
    asyncio.run(service.set_alert_settings("p1", {"raise_score": 3.5}, by="alice"))
    service.close()
    # Meanwhile the clinic lowered its critical score under the therapist's raise score.
    lowered = AlertConfigSet.from_mapping({"critical_score": 3.0})
    with caplog.at_level(logging.WARNING, logger="hrvstream.alert_service"):
        again = AlertService(lowered, state_path=path)
    assert again.engine.config.for_patient("p1").raise_score == 2.0
    assert again.alert_settings("p1")["updated_by"] is None
    [warning] = [r.getMessage() for r in caplog.records]
    assert "saved by alice no longer fit" in warning and "p1" not in warning
    # The therapist can set them again.
    asyncio.run(again.set_alert_settings("p1", {"raise_score": 2.5}, by="alice"))
    assert again.engine.config.for_patient("p1").raise_score == 2.5
    again.close()


def test_an_alert_open_when_its_rule_is_turned_off_still_resolves() -> None:
    service = AlertService()

    async def body() -> None:
        await calm(service, "p1")
        await moderate_stress(service, "p1", T0 + 9000)
        assert [a.state for a in service.open_alerts("p1")] == ["raised"]
        await service.set_alert_settings("p1", {"acute_enabled": False}, by="alice")
        await calm(service, "p1", T0 + 9300, n=14, every_s=30.0)  # 6.5 min back at baseline
        await moderate_stress(service, "p1", T0 + 10300)  # no new alert: the rule is off

    asyncio.run(body())
    [alert] = service.open_alerts("p1")
    assert alert.state == "resolved"
    assert alert.explanation["resolved_because"] == "back to baseline"


def test_a_version_1_state_file_is_upgraded_in_place(tmp_path: Path) -> None:
    """A file written before therapists' settings existed: only ``patient_state``."""
    memory = AlertService()
    asyncio.run(calm(memory, "p1"))
    state = memory.engine.export_state("p1")
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE patient_state ("
            " patient TEXT PRIMARY KEY, state TEXT NOT NULL, updated_unix_s REAL NOT NULL)"
        )
        conn.execute("INSERT INTO patient_state VALUES (?, ?, ?)", ("p1", json.dumps(state), T0))
        conn.execute("PRAGMA user_version=1")
    conn.close()

    service = AlertService(state_path=path, clock=lambda: T0)
    assert service.engine.export_state("p1") == state  # the old state is read
    assert service.alert_settings("p1")["updated_by"] is None
    asyncio.run(service.set_alert_settings("p1", {"trend_enabled": False}, by="alice"))
    service.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert tables == {"patient_state", "patient_settings", "settings_audit"}
    assert audit_rows(path) == [(T0, "p1", "alice", {"trend_enabled": False})]
    again = AlertService(state_path=path)
    assert again.engine.export_state("p1") == state
    assert again.engine.config.for_patient("p1").trend_enabled is False
    again.close()


def test_a_state_file_of_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(AlertStateError, match="newer than this version"):
        AlertService(state_path=path)
