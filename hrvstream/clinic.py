"""The clinic side assembled: ingest server + alert engine + therapist dashboard.

``hrvstream server --config server.toml`` runs this. Besides the sections of
:func:`hrvstream.server.load_server_settings` the file may have::

    [alerts]                         # rules: see hrvstream.alerts.config
    state_path = "/var/lib/hrvstream/alert-state.db"
    raise_score = 2.0
    [alerts.patients.p-7f3a]
    raise_score = 2.5

    [dashboard]
    enabled = true                   # default: on when accounts is set; on [http] listen
    accounts = "/var/lib/hrvstream/accounts.db"   # `hrvstream users add ...` writes it
    cookie_secure = true             # behind an HTTPS reverse proxy (deployments: yes)
    idle_timeout_min = 30

``HRVSTREAM_ALERTS_STATE_PATH`` and ``HRVSTREAM_DASHBOARD_<KEY>`` override them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from hrvstream.alert_service import AlertService
from hrvstream.alerts import AlertConfigSet
from hrvstream.config import get, load_toml, with_env
from hrvstream.errors import ConfigError
from hrvstream.protocol.messages import AlertMessage, StatusMessage
from hrvstream.server import Server, ServerSettings, load_server_settings, run_until_signalled
from hrvstream.store import Store

if TYPE_CHECKING:
    from hrvstream.dashboard.accounts import Accounts
    from hrvstream.dashboard.app import DashboardSettings

log = logging.getLogger(__name__)

#: Keys of the sections this module reads (typed; ``HRVSTREAM_<SECTION>_<KEY>`` overrides).
_KNOWN: Final[Mapping[str, Mapping[str, type]]] = {
    "alerts": {"state_path": str},
    "dashboard": {
        "enabled": bool,
        "accounts": str,
        "cookie_secure": bool,
        "idle_timeout_min": float,
    },
}


@dataclass(frozen=True, slots=True)
class ClinicSettings:
    """Everything ``hrvstream server`` runs."""

    server: ServerSettings
    alerts: AlertConfigSet
    alert_state_path: Path | None = None
    dashboard_accounts: Path | None = None
    cookie_secure: bool = False
    idle_timeout_s: float = 1800.0


def load_clinic_settings(
    path: str | Path | None, env: Mapping[str, str] | None = None
) -> ClinicSettings:
    """Server, alert and dashboard settings from one TOML file plus ``HRVSTREAM_*``."""
    environ: Mapping[str, str] = os.environ if env is None else env
    server = load_server_settings(path, environ)
    c = with_env(load_toml(path), _KNOWN, environ)
    alerts_section: dict[str, Any] = dict(c.get("alerts", {}))
    alerts_section.pop("state_path", None)
    state_path = get(c, "alerts", "state_path", str, None)
    alerts = AlertConfigSet.from_mapping(alerts_section)

    for key in c.get("dashboard", {}):
        if key not in _KNOWN["dashboard"]:
            known = ", ".join(_KNOWN["dashboard"])
            raise ConfigError(f"[dashboard]: unknown key {key!r} (known: {known})")
    accounts = get(c, "dashboard", "accounts", str, None)
    enabled = get(c, "dashboard", "enabled", bool, accounts is not None)
    secure = get(c, "dashboard", "cookie_secure", bool, False)
    idle_min = get(c, "dashboard", "idle_timeout_min", float, 30.0)
    if idle_min <= 0:
        raise ConfigError(f"[dashboard] idle_timeout_min must be a number > 0, got {idle_min!r}")
    if enabled and accounts is None:
        raise ConfigError(
            "[dashboard] accounts is not set: name the accounts file (created with "
            "'hrvstream users add NAME --accounts FILE'), or set enabled = false"
        )
    return ClinicSettings(
        server=server,
        alerts=alerts,
        alert_state_path=None if state_path is None else Path(state_path),
        dashboard_accounts=Path(accounts) if enabled and accounts is not None else None,
        cookie_secure=secure,
        idle_timeout_s=float(idle_min) * 60.0,
    )


class ClinicSource:
    """The dashboard's view of the server and the alert engine (a ``DashboardSource``)."""

    def __init__(self, server: Server, alerts: AlertService) -> None:
        self._server = server
        self._alerts = alerts

    @property
    def store(self) -> Store:
        """The server's store."""
        return self._server.store

    def statuses(self) -> Mapping[str, StatusMessage]:
        """Latest status per patient."""
        return self._server.statuses

    def assessment(self, patient: str) -> Mapping[str, object] | None:
        """The alert engine's view of the patient."""
        return self._alerts.assessment(patient)

    def open_alerts(self, patient: str | None = None) -> list[AlertMessage]:
        """Open alerts, newest first."""
        return self._alerts.open_alerts(patient)

    async def acknowledge(
        self, patient: str, alert_id: str, by: str, note: str | None
    ) -> AlertMessage:
        """Acknowledge through the alert service (stored and published)."""
        return await self._alerts.acknowledge(patient, alert_id, by, note)

    def alert_settings(self, patient: str) -> Mapping[str, object]:
        """The patient's therapist-editable alert settings in force."""
        return self._alerts.alert_settings(patient)

    async def set_alert_settings(
        self, patient: str, values: Mapping[str, object], by: str
    ) -> Mapping[str, object]:
        """Change them through the alert service (saved, audited, in force at once)."""
        return await self._alerts.set_alert_settings(patient, values, by)


def dashboard_settings(
    accounts_path: Path, *, cookie_secure: bool = False, idle_timeout_s: float = 1800.0
) -> DashboardSettings:
    """The dashboard's settings object (imports the web app lazily)."""
    from hrvstream.dashboard.app import DashboardSettings

    return DashboardSettings(
        accounts_path=accounts_path, cookie_secure=cookie_secure, idle_timeout_s=idle_timeout_s
    )


def build_clinic(
    settings: ServerSettings,
    alerts: AlertService,
    *,
    dashboard: DashboardSettings | None = None,
    accounts: Accounts | None = None,
    store: Store | None = None,
) -> Server:
    """A server wired to the alert service and (optionally) the dashboard."""
    server: Server

    def web_setup(app: web.Application) -> None:
        from hrvstream.dashboard.app import setup_dashboard

        assert dashboard is not None
        hub = setup_dashboard(
            app, source=ClinicSource(server, alerts), settings=dashboard, accounts=accounts
        )
        server.add_observer(hub)

    server = Server(
        settings,
        store=store,
        metrics_listener=alerts,
        alert_ack_listener=alerts,
        observers=[alerts],
        web_setup=None if dashboard is None else web_setup,
    )
    alerts.attach(server.publish_alert)
    return server


async def serve_clinic(settings: ClinicSettings, *, stop: asyncio.Event | None = None) -> Server:
    """Run the clinic until SIGTERM/SIGINT (or ``stop``); a second signal aborts shutdown."""
    stop = stop or asyncio.Event()
    alerts = AlertService(settings.alerts, state_path=settings.alert_state_path)
    dash = (
        None
        if settings.dashboard_accounts is None
        else dashboard_settings(
            settings.dashboard_accounts,
            cookie_secure=settings.cookie_secure,
            idle_timeout_s=settings.idle_timeout_s,
        )
    )
    server = build_clinic(settings.server, alerts, dashboard=dash)
    try:
        await run_until_signalled(server, stop)
    finally:
        alerts.close()
    return server


def main_clinic(args: argparse.Namespace) -> int:
    """``hrvstream server``: returns the exit status; errors are HrvStreamError."""
    settings = load_clinic_settings(args.config)
    try:
        asyncio.run(serve_clinic(settings))
    except asyncio.CancelledError:
        return 130
    return 0
