"""``hrvstream server``'s whole configuration: server, alert rules, dashboard."""

from __future__ import annotations

from pathlib import Path

import pytest

from hrvstream.clinic import load_clinic_settings
from hrvstream.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
BROKER = '[broker]\nurl = "mqtt://server@127.0.0.1:1883"\n'


def test_deploy_example_loads_with_alerts_and_dashboard(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    (tmp_path / "tok").write_text("token\n")
    env = {
        "HRVSTREAM_BROKER_PASSWORD_FILE": str(tmp_path / "pw"),
        "HRVSTREAM_STORE_TOKEN_FILE": str(tmp_path / "tok"),
    }
    s = load_clinic_settings(REPO / "deploy" / "server.example.toml", env)
    assert s.alert_state_path == Path("/var/lib/hrvstream/alert-state.db")
    assert s.dashboard_accounts == Path("/var/lib/hrvstream/accounts.db")
    assert s.cookie_secure is True and s.idle_timeout_s == 1800.0
    assert s.alerts.default.raise_score == 2.0


def test_alert_rules_per_patient_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text(
        BROKER
        + "[alerts]\nraise_score = 2.5\nquiet_hours = 'off'\n"
        + "[alerts.patients.p-7f3a]\nraise_score = 3.0\n"
    )
    s = load_clinic_settings(path, {"HRVSTREAM_ALERTS_STATE_PATH": str(tmp_path / "st.db")})
    assert s.alerts.default.raise_score == 2.5 and s.alerts.default.quiet_hours is None
    assert s.alerts.for_patient("p-7f3a").raise_score == 3.0
    assert s.alerts.for_patient("p-7f3a").quiet_hours is None  # inherits the clinic's
    assert s.alerts.for_patient("other").raise_score == 2.5
    assert s.alert_state_path == tmp_path / "st.db"
    assert s.dashboard_accounts is None  # no accounts file: no dashboard


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("[alerts]\nraise_scor = 2\n", {}, "unknown key 'raise_scor'"),
        ("[alerts]\nraise_score = 'high'\n", {}, "raise_score: expected a number"),
        ("[alerts]\nclear_score = 3\n", {}, "clear_score must be below raise_score"),
        ("[alerts]\ntimezone = 'Mars/Olympus'\n", {}, "not a known zone"),
        ("[alerts.patients.p1]\nmin_coverage = 2\n", {}, "min_coverage must be in 0..1"),
        ("[dashboard]\nenabled = true\n", {}, "[dashboard] accounts is not set"),
        ("[dashboard]\naccounts = 'a.db'\ncolour = 'x'\n", {}, "unknown key 'colour'"),
        ("", {"HRVSTREAM_DASHBOARD_ENABLED": "maybe"}, "expected true or false"),
    ],
)
def test_bad_settings_are_clear_errors(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    path = tmp_path / "server.toml"
    path.write_text(BROKER + toml)
    with pytest.raises(ConfigError) as err:
        load_clinic_settings(path, env)
    assert message in str(err.value)


def test_dashboard_on_by_environment(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text(BROKER)
    env = {"HRVSTREAM_DASHBOARD_ACCOUNTS": str(tmp_path / "acc.db")}
    s = load_clinic_settings(path, env)
    assert s.dashboard_accounts == tmp_path / "acc.db" and s.cookie_secure is False
    off = load_clinic_settings(path, {**env, "HRVSTREAM_DASHBOARD_ENABLED": "false"})
    assert off.dashboard_accounts is None
