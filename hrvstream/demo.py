"""``hrvstream demo``: the whole system on one machine, on embedded defaults.

- An embedded MQTT broker (amqtt, in process; MQTT 3.1.1) on a free loopback port.
- A few patients, each wearing a virtual chest strap (Bumble BLE peripheral) that plays a
  simulated session; one of them has a stress episode, one has artifacts.
- One agent per patient: the real agent code (bleak -> HRV -> spool -> MQTT over TCP).
- The real server on the embedded SQLite store, with the alert engine (baselines seeded
  from three simulated earlier days per patient) and the therapist dashboard on
  ``http://127.0.0.1:8080/`` (a therapist and an admin account with a fresh password,
  printed at the start).
- A live table in the terminal.

Time runs ``speed`` times faster than real time (default 10) so that five-minute HRV
windows fill and the stress episode arrives within minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import secrets
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from hrvstream.adapters.ble import LinkSettings, StrapLink
from hrvstream.adapters.mqtt import parse_broker_url
from hrvstream.agent import Agent, AgentSettings
from hrvstream.alert_service import AlertService
from hrvstream.alerts import Window, windows_from_analysis
from hrvstream.clinic import build_clinic, dashboard_settings
from hrvstream.hrv.engine import AnalysisConfig, analyze
from hrvstream.pipeline import records_from_series
from hrvstream.protocol.messages import Message, MetricsMessage
from hrvstream.server import Server, ServerSettings, StoreSettings
from hrvstream.simulate import ArtifactSpec, SessionConfig, StressEpisode, simulate_session

if TYPE_CHECKING:
    from hrvstream.dashboard.accounts import Accounts

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DemoPatient:
    """A simulated patient: a pseudonym and the session their strap plays."""

    patient: str
    session: SessionConfig
    note: str


def demo_patients(duration_s: float) -> list[DemoPatient]:
    """Three patients: calm, a stress episode 15 minutes in, artifacts."""
    return [
        DemoPatient(
            "p-calm-01",
            SessionConfig(duration_s=duration_s, seed=11, mean_hr_bpm=62),
            "calm",
        ),
        DemoPatient(
            "p-stress-02",
            SessionConfig(
                duration_s=duration_s,
                seed=12,
                mean_hr_bpm=66,
                stress=(StressEpisode(start_s=15 * 60, duration_s=12 * 60, ramp_s=90),),
            ),
            "stress episode at 15-27 min",
        ),
        DemoPatient(
            "p-noisy-03",
            SessionConfig(
                duration_s=duration_s,
                seed=13,
                mean_hr_bpm=70,
                artifacts=ArtifactSpec(ectopic_rate=0.02, missed_rate=0.005),
            ),
            "ectopic and missed beats",
        ),
    ]


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class _Latest:
    """The latest metrics of each patient (a live observer of the server)."""

    metrics: dict[str, MetricsMessage] = field(default_factory=dict)

    def observe(self, message: Message) -> None:
        if isinstance(message, MetricsMessage):
            self.metrics[message.patient] = message


HISTORY_DAYS = 3
DAY_S = 86400.0


def seed_history(patients: Sequence[DemoPatient], now_unix_s: float) -> list[Window]:
    """Windows of three earlier calm evenings per patient (45 min each): their baselines."""
    out: list[Window] = []
    for k, p in enumerate(patients):
        for day in range(HISTORY_DAYS, 0, -1):
            config = dataclasses.replace(
                p.session,
                duration_s=45 * 60.0,
                seed=1000 * (k + 1) + day,
                stress=(),
                exercise=(),
                artifacts=ArtifactSpec(),  # earlier days: a well-fitted strap
            )
            series = simulate_session(config).series
            cols = analyze(series, AnalysisConfig(window_s=300.0, step_s=5.0)).windows.columns
            origin = now_unix_s - day * DAY_S
            out += windows_from_analysis(
                p.patient, f"history-{day}", origin, 300.0, cols, series.t_s, series.rr_ms
            )
    return out


@dataclass(frozen=True, slots=True)
class SignIn:
    """The demo's dashboard accounts."""

    url: str
    password: str
    therapist: str = "therapist"
    admin: str = "admin"


def demo_accounts(path: Path, patients: Sequence[str], password: str) -> Accounts:
    """A therapist (all demo patients) and an admin, both with ``password``."""
    from hrvstream.dashboard.accounts import Accounts

    accounts = Accounts(path)
    for name, role in (("therapist", "therapist"), ("admin", "admin")):
        if accounts.user(name) is None:
            accounts.add_user(name, password, role)  # type: ignore[arg-type]
        else:
            accounts.set_password(name, password)
    for p in patients:
        accounts.assign("therapist", p)
    return accounts


def _fmt(v: float | None, spec: str) -> str:
    """A number, or a dash padded to the same width when it is missing."""
    width = int("".join(ch for ch in spec.split(".", maxsplit=1)[0] if ch.isdigit()) or 0)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-".rjust(width)
    return format(v, spec)


def render_table(
    patients: Sequence[DemoPatient],
    latest: _Latest,
    server: Server,
    alerts: AlertService | None = None,
) -> str:
    """The terminal view: one line per patient."""
    head = (
        f"{'patient':<13} {'state':<8} {'HR':>5} {'RMSSD':>7} {'LF/HF':>6} {'cover':>6} "
        f"{'stress':<12} {'alerts':>6}  note"
    )
    lines = [head, "-" * len(head)]
    for p in patients:
        m = latest.metrics.get(p.patient)
        st = server.statuses.get(p.patient)
        a = None if alerts is None else alerts.engine.assessment(p.patient)
        n_open = 0 if alerts is None else len(alerts.open_alerts(p.patient))
        lines.append(
            f"{p.patient:<13} {(st.state if st else '?'):<8} "
            f"{_fmt(m.mean_hr_bpm if m else None, '5.1f')} "
            f"{_fmt(m.rmssd_ms if m else None, '7.1f')} "
            f"{_fmt(m.lf_hf if m else None, '6.2f')} "
            f"{_fmt(m.coverage if m else None, '6.2f')} "
            f"{(a.state if a else '-'):<12} {n_open:>6}  {p.note}"
        )
    return "\n".join(lines)


async def run_demo(
    workdir: Path,
    *,
    speed: float = 10.0,
    duration_s: float = 2 * 3600.0,
    http_port: int = 0,
    stop: asyncio.Event,
    out: TextIO = sys.stdout,
    table_every_s: float = 10.0,
    dashboard: bool = True,
    password: str | None = None,
    on_ready: Callable[[SignIn], None] | None = None,
) -> Server:
    """Run the demo until ``stop`` is set (or the sessions end); returns the server.

    ``password`` is the dashboard accounts' password (default: a fresh random one,
    printed); ``on_ready`` is called with the sign-in once the dashboard listens.
    """
    from amqtt.broker import Broker

    from hrvstream.adapters.bleak_bumble import VirtualRadio
    from hrvstream.adapters.virtual_clock import VirtualClock
    from hrvstream.adapters.virtual_strap import VirtualStrap

    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    url = f"mqtt://127.0.0.1:{port}"
    patients = demo_patients(duration_s)
    latest = _Latest()
    started = time.time()

    def demo_clock() -> float:
        """The demo's time: the straps' sessions run ``speed`` times faster than the wall."""
        return started + (time.time() - started) * speed

    # In memory: each demo starts from its seeded history. Acknowledgements are dated on
    # the demo's clock, like the beats and windows.
    alerts = AlertService(clock=demo_clock)
    alerts.seed(seed_history(patients, time.time()))
    password = password or secrets.token_urlsafe(9)
    accounts = (
        demo_accounts(workdir / "accounts.db", [p.patient for p in patients], password)
        if dashboard
        else None
    )
    server = build_clinic(
        ServerSettings(
            broker=parse_broker_url(url, client_id="hrvstream-demo-server", mqtt5=False),
            store=StoreSettings(kind="sqlite", path=workdir / "demo.db"),
            http_port=http_port,
        ),
        alerts,
        dashboard=None if accounts is None else dashboard_settings(workdir / "accounts.db"),
        accounts=accounts,
    )
    server.add_observer(latest)
    tasks: list[asyncio.Task[None]] = []
    agents: list[Agent] = []
    try:
        tasks.append(asyncio.create_task(server.run(stop), name="server"))
        async with VirtualRadio() as radio:
            straps = []
            for i, p in enumerate(patients):
                sim = simulate_session(p.session)
                strap = VirtualStrap(
                    radio,
                    list(records_from_series(sim.series)),
                    name=f"Demo HRM {i + 1}",
                    speed=speed,
                    clock=VirtualClock(),
                )
                await strap.start()
                straps.append(strap)

                def factory(target: str, *, _strap: Any = strap, **kw: Any) -> StrapLink:
                    return StrapLink(
                        _strap.address,
                        clock=_strap.clock,
                        scanner_backend=radio.scanner_backend(),
                        client_backend=radio.client_backend(),
                        **kw,
                    )

                agent = Agent(
                    AgentSettings(
                        patient=p.patient,
                        straps=(strap.address,),
                        broker=parse_broker_url(
                            url, client_id=f"hrvstream-demo-{p.patient}", mqtt5=False
                        ),
                        spool_path=workdir / f"spool-{p.patient}.db",
                        metrics_every_s=5.0,
                        link=LinkSettings(silence_s=20.0 / speed + 5, silent_reconnect_s=120.0),
                    ),
                    link_factory=factory,
                    unix_offset_s=time.time(),
                )
                agents.append(agent)
                tasks.append(asyncio.create_task(agent.run(stop), name=p.patient))
            for _ in range(200):  # the server's HTTP port, once it listens
                if server.http_port or stop.is_set() or tasks[0].done():
                    break
                await asyncio.sleep(0.025)
            if tasks[0].done():
                tasks[0].result()  # the server could not start: say why
            sign_in = SignIn(f"http://127.0.0.1:{server.http_port}/", password)
            board = (
                f"  dashboard {sign_in.url}\n"
                f"            sign in as {sign_in.therapist!r} (or {sign_in.admin!r}), "
                f"password {sign_in.password!r}\n"
                if accounts is not None
                else "  dashboard off\n"
            )
            print(
                f"hrvstream demo: {len(patients)} virtual patients, time x{speed:g}\n"
                f"  broker    {url} (embedded, MQTT 3.1.1, anonymous)\n"
                f"            watch it: mosquitto_sub -p {port} -t 'hrv/v1/#' -v\n"
                f"  store     {workdir / 'demo.db'} (SQLite)\n"
                f"  server    http://127.0.0.1:{server.http_port}/healthz "
                "and /metrics\n"
                f"{board}"
                "  alerts    baselines from 3 simulated earlier days per patient\n"
                "  Ctrl-C stops.",
                file=out,
                flush=True,
            )
            if on_ready is not None:
                on_ready(sign_in)
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(table_every_s):
                        await stop.wait()
                failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
                if failed:
                    stop.set()
                    raise failed[0].exception()  # type: ignore[misc]
                if all(s.played.is_set() for s in straps):
                    # The sessions are over: let the agents deliver what they spooled.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(120.0):
                            await asyncio.gather(*(a.wait_drained() for a in agents))
                    stop.set()
                print("\n" + render_table(patients, latest, server, alerts), file=out, flush=True)
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for r in results:
                if isinstance(r, Exception):
                    raise r
            for s in straps:
                await s.close()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await broker.shutdown()
        if accounts is not None:
            accounts.close()
    return server
