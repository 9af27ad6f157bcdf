"""``hrvstream server``'s whole configuration: server, alert rules, dashboard."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from hrvstream.adapters.alert_state import AlertStateFile
from hrvstream.clinic import load_clinic_settings
from hrvstream.dashboard.accounts import Accounts
from hrvstream.errors import ConfigError
from tests import waiting
from tests.e2e_helpers import free_http_port, server_config, server_process
from tests.infra import MosquittoFactory, hrv_config, mosquitto_factory

__all__ = ["mosquitto_factory"]  # a fixture, used by name

REPO = Path(__file__).resolve().parents[1]
BROKER = '[broker]\nurl = "mqtt://server@127.0.0.1:1883"\n'
PATIENT = "p-clinic-01"


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


def test_hrvstream_server_serves_the_dashboard_with_its_accounts(
    tmp_path: Path, mosquitto_factory: MosquittoFactory
) -> None:
    """The real command: TLS to mosquitto, SQLite, alert state file, dashboard sign-in, a
    patient's alert settings changed on the dashboard (on top of the file's) and saved."""
    broker = mosquitto_factory(hrv_config(tls=True))
    accounts = tmp_path / "accounts.db"
    added = subprocess.run(
        [
            sys.executable,
            "-m",
            "hrvstream.cli",
            "users",
            "add",
            "anna",
            "--accounts",
            str(accounts),
            "--password-stdin",
        ],
        check=False,
        input="a long enough password\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    with Accounts(accounts) as acc:
        acc.assign("anna", PATIENT)
    port = free_http_port()
    cfg = server_config(
        tmp_path / "server.toml",
        broker,
        store={"kind": "sqlite", "path": str(tmp_path / "hrv.db")},
        http_port=port,
    )
    with cfg.open("a") as fh:
        fh.write(f'\n[alerts]\nstate_path = "{tmp_path / "alert-state.db"}"\n')
        fh.write(f"\n[alerts.patients.{PATIENT}]\ntrend_enabled = false\n")
        fh.write(f'\n[dashboard]\naccounts = "{accounts}"\n')

    async def body() -> None:
        async with (
            server_process(cfg, port),
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,
        ):
            base = f"http://127.0.0.1:{port}"
            async with http.get(f"{base}/api/me") as r:
                assert r.status == 401
            async with http.get(f"{base}/login") as r:
                assert r.status == 200
                page = await r.text()
                assert "Content-Security-Policy" in r.headers
            token = re.search(r'name="csrf_token" value="([^"]+)"', page)
            assert token is not None, page
            form = {
                "username": "anna",
                "password": "a long enough password",
                "csrf_token": token.group(1),
            }
            async with http.post(f"{base}/login", data=form, allow_redirects=False) as r:
                assert r.status == 303, await r.text()
            async with http.get(f"{base}/api/me") as r:
                me = await r.json()
                assert r.status == 200 and me["username"] == "anna"
            url = f"{base}/api/patients/{PATIENT}/alert-settings"
            change = {"raise_score": 2.5, "quiet_hours": "off"}
            headers = {"X-CSRF-Token": me["csrf_token"]}
            async with http.post(url, json=change, headers=headers) as r:
                assert r.status == 200, await r.text()
            async with http.get(url) as r:
                got = await r.json()
            assert got["updated_by"] == "anna"
            settings = got["settings"]
            assert (settings["raise_score"], settings["quiet_hours"]) == (2.5, "off")
            assert settings["trend_enabled"] is False  # the file's, for this patient
        state = AlertStateFile(tmp_path / "alert-state.db")
        try:
            [(overrides, _, by)] = state.load_settings().values()
            assert (overrides, by) == (change, "anna")
            assert [(by, o) for _, by, o in state.settings_audit(PATIENT)] == [("anna", change)]
        finally:
            state.close()

    waiting.run(body, 120)
