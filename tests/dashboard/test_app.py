"""The dashboard web app over real HTTP: sign-in, sessions, CSRF, who sees whom, live.

Each test runs a real aiohttp server on a free loopback port (``aiohttp.test_utils.
TestServer``) with :func:`setup_dashboard` on a real :class:`SqliteStore` and real
:class:`Accounts` in ``tmp_path``. The only stand-in is :class:`FakeSource`, the alert
engine's side of :class:`DashboardSource` (statuses, assessments, open alerts,
acknowledging, and alert settings: checked by the real
:func:`~hrvstream.alerts.config.therapist_config`, kept in memory). Nothing sleeps: live
messages are pushed through ``hub.observe`` and read from the socket with a deadline;
absence is shown by ordering (a message for the other patient is observed first, then one
for the user's own; the first to arrive must be the user's own).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, ClientWebSocketResponse, WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher

from hrvstream.adapters.alert_state import AlertStateError
from hrvstream.adapters.sqlite_store import SqliteStore
from hrvstream.alerts.config import AlertConfig, therapist_config, therapist_values
from hrvstream.dashboard.accounts import LOGIN_FAILURE_LIMIT, Accounts
from hrvstream.dashboard.app import (
    CONTENT_SECURITY_POLICY,
    STATIC_DIR,
    DashboardSettings,
    safe_next,
    setup_dashboard,
)
from hrvstream.dashboard.live import CLOSE_SESSION_ENDED, CLOSE_TOO_SLOW, LiveHub
from hrvstream.dashboard.source import AlertActionError, Assessment, DashboardSource
from hrvstream.protocol.messages import (
    AlertMessage,
    BeatsMessage,
    MetricsMessage,
    StatusMessage,
)
from hrvstream.server import alert_row
from hrvstream.store import BeatRow, MetricRow, Store
from tests.waiting import run

PASSWORD = "correct horse battery"
ALICE, BOB, ADMIN = "alice", "bob", "root"
P_ALICE, P_BOB = "p-alice-01", "p-bob-01"
TIMEOUT_S = 20.0

Client = TestClient[web.Request, web.Application]


# == the alert engine's side, faked ===========================================================


@dataclass
class FakeSource:
    """The alert-engine side of DashboardSource: what the test sets, and acks recorded."""

    store: Store
    status: dict[str, StatusMessage] = field(default_factory=dict)
    assessments: dict[str, dict[str, Any]] = field(default_factory=dict)
    alerts: list[AlertMessage] = field(default_factory=list)
    acks: list[tuple[str, str, str, str | None]] = field(default_factory=list)
    #: Alert settings by patient: (therapist overrides, updated_unix_s, by).
    settings: dict[str, tuple[dict[str, object], float, str]] = field(default_factory=dict)
    settings_calls: list[tuple[str, dict[str, object], str]] = field(default_factory=list)
    saving_fails: bool = False

    def statuses(self) -> Mapping[str, StatusMessage]:
        return self.status

    def assessment(self, patient: str) -> Assessment | None:
        return self.assessments.get(patient)

    def open_alerts(self, patient: str | None = None) -> list[AlertMessage]:
        found = [a for a in self.alerts if patient is None or a.patient == patient]
        return sorted(found, key=lambda a: a.t_unix_s, reverse=True)

    async def acknowledge(
        self, patient: str, alert_id: str, by: str, note: str | None
    ) -> AlertMessage:
        self.acks.append((patient, alert_id, by, note))
        for i, a in enumerate(self.alerts):
            if a.alert_id == alert_id and a.patient == patient:
                if a.acknowledged_by is not None:
                    raise AlertActionError("This alert was acknowledged already.")
                acked = AlertMessage(
                    alert_id=a.alert_id,
                    patient=a.patient,
                    state="acknowledged",
                    rule=a.rule,
                    severity=a.severity,
                    t_unix_s=time.time(),
                    explanation=a.explanation,
                    acknowledged_by=by,
                    note=note,
                )
                await self.store.write_alerts([alert_row(acked)])
                self.alerts[i] = acked
                return acked
        raise AlertActionError("No such alert for this patient.")

    def alert_settings(self, patient: str) -> Mapping[str, object]:
        overrides, t, by = self.settings.get(patient, ({}, None, None))
        cfg, _ = therapist_config(AlertConfig(), overrides)
        return {"settings": therapist_values(cfg), "updated_by": by, "updated_unix_s": t}

    async def set_alert_settings(
        self, patient: str, values: Mapping[str, object], by: str
    ) -> Mapping[str, object]:
        self.settings_calls.append((patient, dict(values), by))
        current = self.settings.get(patient, ({}, 0.0, ""))[0]
        _, overrides = therapist_config(AlertConfig(), current, values)
        if self.saving_fails:
            raise AlertStateError("/var/lib/hrvstream/alert-state.db: disk full")
        self.settings[patient] = (overrides, time.time(), by)
        return self.alert_settings(patient)


# == the rig ==================================================================================


@dataclass
class Rig:
    server: TestServer
    hub: LiveHub
    source: FakeSource
    accounts: Accounts
    store: SqliteStore
    clients: list[Client] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return f"http://{self.server.host}:{self.server.port}"

    async def client(self) -> Client:
        c: Client = TestClient(self.server)
        await c.start_server()
        self.clients.append(c)
        return c

    async def signed_in(self, username: str) -> tuple[Client, str]:
        """A client signed in as ``username`` and its CSRF token."""
        c = await self.client()
        resp = await login(c, username, PASSWORD)
        assert resp.status == 303, await resp.text()
        me = await c.get("/api/me")
        assert me.status == 200
        body = await me.json()
        return c, str(body["csrf_token"])


def cheap_hasher() -> PasswordHasher:
    return PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@asynccontextmanager
async def rig(
    tmp_path: Path,
    *,
    cookie_secure: bool = False,
    live_queue_max: int = 1000,
    clock: Any = time.time,
) -> AsyncIterator[Rig]:
    store = SqliteStore(tmp_path / "store.db")
    accounts = Accounts(tmp_path / "accounts.db", hasher=cheap_hasher(), clock=clock)
    accounts.add_user(ALICE, PASSWORD)
    accounts.add_user(BOB, PASSWORD)
    accounts.add_user(ADMIN, PASSWORD, role="admin")
    accounts.assign(ALICE, P_ALICE)
    accounts.assign(BOB, P_BOB)
    source = FakeSource(store)
    app = web.Application()

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_get("/healthz", healthz)  # the server's own public route
    settings = DashboardSettings(
        accounts_path=tmp_path / "unused.db",
        cookie_secure=cookie_secure,
        live_queue_max=live_queue_max,
    )
    hub = setup_dashboard(app, source=source, settings=settings, accounts=accounts)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    r = Rig(server, hub, source, accounts, store)
    try:
        yield r
    finally:
        for c in r.clients:
            await c.close()
        await server.close()
        accounts.close()
        await store.close()


def go(body: Any, tmp_path: Path, **kw: Any) -> None:
    async def main() -> None:
        async with rig(tmp_path, **kw) as r:
            await body(r)

    run(main, TIMEOUT_S)


async def login(
    c: Client,
    username: str,
    password: str,
    next_path: str | None = None,
) -> ClientResponse:
    page = await c.get("/login")
    assert page.status == 200
    m = re.search(r'name="csrf_token" value="([^"]+)"', await page.text())
    assert m is not None
    data = {"username": username, "password": password, "csrf_token": m.group(1)}
    if next_path is not None:
        data["next"] = next_path
    return await c.post("/login", data=data, allow_redirects=False)


def set_cookies(resp: ClientResponse) -> dict[str, str]:
    """``{cookie name: whole Set-Cookie header}``."""
    out: dict[str, str] = {}
    for header in resp.headers.getall("Set-Cookie", []):
        out[header.split("=", 1)[0]] = header
    return out


async def receive(ws: ClientWebSocketResponse) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), 5.0)
    assert msg.type == WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
    data = msg.json()
    assert isinstance(data, dict)
    return data


async def live(rig_: Rig, c: Client) -> ClientWebSocketResponse:
    ws = await c.ws_connect("/ws", headers={"Origin": rig_.origin})
    hello = await receive(ws)
    assert hello["type"] == "hello"
    return ws


def status(patient: str, battery: int = 80, state: str = "online") -> StatusMessage:
    return StatusMessage(
        patient=patient,
        state="online" if state == "online" else "offline",
        t_unix_s=time.time(),
        agent_version="0.1.0",
        battery_pct=battery,
        contact=True,
    )


def metrics(patient: str, t: float, rmssd: float = 42.0) -> MetricsMessage:
    return MetricsMessage(
        patient=patient,
        session="s1",
        t_unix_s=t,
        window_s=300.0,
        n_beats=300,
        coverage=0.99,
        artifact_pct=0.5,
        mean_hr_bpm=64.0,
        rmssd_ms=rmssd,
        lf_hf=1.5,
    )


def raised(patient: str, alert_id: str, t: float) -> AlertMessage:
    return AlertMessage(
        alert_id=alert_id,
        patient=patient,
        state="raised",
        rule="acute_stress",
        severity="warning",
        t_unix_s=t,
        explanation={"message": "Stress score 2.6 for 5+ min", "stress_score": 2.6},
    )


# == sign-in ==================================================================================


def test_sign_in_sets_a_strict_http_only_cookie_and_goes_to_next(tmp_path: Path) -> None:
    async def body(r: Rig) -> None:
        c = await r.client()
        resp = await login(c, ALICE, PASSWORD, next_path=f"/patients/{P_ALICE}")
        assert resp.status == 303
        assert resp.headers["Location"] == f"/patients/{P_ALICE}"
        cookie = set_cookies(resp)["hrvstream_session"]
        attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
        assert "httponly" in attributes
        assert "samesite=strict" in attributes
        assert "path=/" in attributes
        assert "secure" not in attributes
        me = await (await c.get("/api/me")).json()
        assert me["username"] == ALICE and me["role"] == "therapist"
        assert me["patients"] == [P_ALICE]
        assert len(me["csrf_token"]) >= 20

    go(body, tmp_path)


def test_cookie_secure_marks_cookies_secure(tmp_path: Path) -> None:
    async def body(r: Rig) -> None:
        c = await r.client()
        page = await c.get("/login")
        assert "secure" in set_cookies(page)["hrvstream_login_csrf"].lower()
        m = re.search(r'name="csrf_token" value="([^"]+)"', await page.text())
        assert m is not None
        # The jar does not send Secure cookies over http: hand the token back by hand.
        resp = await c.post(
            "/login",
            data={"username": ALICE, "password": PASSWORD, "csrf_token": m.group(1)},
            headers={"Cookie": f"hrvstream_login_csrf={m.group(1)}"},
            allow_redirects=False,
        )
        assert resp.status == 303
        attributes = {a.strip().lower() for a in set_cookies(resp)["hrvstream_session"].split(";")}
        assert "secure" in attributes

    go(body, tmp_path, cookie_secure=True)


@pytest.mark.parametrize(
    "target", ["//evil.example/x", "https://evil.example/", "/\\evil", "/login"]
)
def test_sign_in_never_redirects_off_site(tmp_path: Path, target: str) -> None:
    async def body(r: Rig) -> None:
        c = await r.client()
        resp = await login(c, ALICE, PASSWORD, next_path=target)
        assert resp.status == 303
        assert resp.headers["Location"] == "/"

    go(body, tmp_path)


def test_safe_next_keeps_local_paths_only() -> None:
    assert safe_next("/patients/p-1?x=1") == "/patients/p-1?x=1"
    for bad in (None, "", "x", "//h", "/\\h", "http://h/", "/a b", "/\x00", "/logout"):
        assert safe_next(bad) == "/", bad


def test_wrong_password_and_unknown_user_get_401_and_one_message(tmp_path: Path) -> None:
    async def body(r: Rig) -> None:
        c = await r.client()
        for username, password in ((ALICE, "wrong password!"), ("nobody", PASSWORD)):
            resp = await login(c, username, password)
            assert resp.status == 401
            text = await resp.text()
            assert 'data-testid="login-error"' in text
            assert "Wrong username or password" in text
            assert f'value="{username}"' in text  # kept for the next try
            assert "hrvstream_session" not in set_cookies(resp)
        resp = await login(c, '"><script>x</script>', PASSWORD)
        assert resp.status == 401
        assert "<script>x" not in await resp.text()  # escaped
        assert (await c.get("/api/me")).status == 401

    go(body, tmp_path)


def test_sign_in_is_throttled_after_repeated_failures_with_the_same_message(
    tmp_path: Path,
) -> None:
    async def body(r: Rig) -> None:
        c = await r.client()
        for _ in range(LOGIN_FAILURE_LIMIT):
            assert (await login(c, ALICE, "wrong password!")).status == 401
        resp = await login(c, ALICE, PASSWORD)  # the right password, now refused
        assert resp.status == 401
        assert "Wrong username or password" in await resp.text()
        assert "hrvstream_session" not in set_cookies(resp)
        # Another user is not affected.
        assert (await login(c, BOB, PASSWORD)).status == 303

    go(body, tmp_path)


def test_sign_in_form_needs_its_double_submit_token(tmp_path: Path) -> None:
    async def body(r: Rig) -> None:
        c = await r.client()
        await c.get("/login")  # sets the cookie
        for token in (None, "x" * 43):
            data = {"username": ALICE, "password": PASSWORD}
            if token is not None:
                data["csrf_token"] = token
            resp = await c.post("/login", data=data, allow_redirects=False)
            assert resp.status == 403
            assert "hrvstream_session" not in set_cookies(resp)
        # The right token from another site's page: refused; from ours (Origin null under
        # our no-referrer policy): accepted.
        page = await c.get("/login")
        m = re.search(r'name="csrf_token" value="([^"]+)"', await page.text())
        assert m is not None
        form = {"username": ALICE, "password": PASSWORD, "csrf_token": m.group(1)}
        for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
            resp = await c.post("/login", data=form, headers=headers, allow_redirects=False)
            assert resp.status == 403, headers
            assert "hrvstream_session" not in set_cookies(resp)
        resp = await c.post(
            "/login",
            data=form,
            headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"},
            allow_redirects=False,
        )
        assert resp.status == 303
        # No cookie at all (a cross-site form post): refused too.
        bare = await r.client()
        resp = await bare.post(
            "/login",
            data={"username": ALICE, "password": PASSWORD, "csrf_token": "y" * 43},
            allow_redirects=False,
        )
        assert resp.status == 403

    go(body, tmp_path)


def test_without_a_session_pages_redirect_api_401_and_health_stays_public(
    tmp_path: Path,
) -> None:
    async def body(r: Rig) -> None:
        c = await r.client()
        for path in ("/", f"/patients/{P_ALICE}", "/admin"):
            resp = await c.get(path, allow_redirects=False)
            assert resp.status == 303
            assert resp.headers["Location"].startswith("/login?next=")
        for path in ("/api/me", "/api/patients", f"/api/patients/{P_ALICE}/metrics"):
            resp = await c.get(path)
            assert resp.status == 401
            assert (await resp.json())["error"] == "not signed in"
        resp = await c.post(f"/api/patients/{P_ALICE}/alerts/a1/ack", json={})
        assert resp.status == 401
        assert (await c.get("/healthz")).status == 200
        # A made-up cookie is no session either.
        c.session.cookie_jar.update_cookies({"hrvstream_session": "made-up"})
        assert (await c.get("/api/me")).status == 401

    go(body, tmp_path)


def test_logout_ends_the_session_and_its_socket(tmp_path: Path) -> None:
    async def body(r: Rig) -> None:
        c, csrf = await r.signed_in(ALICE)
        token = c.session.cookie_jar.filter_cookies(c.make_url("/"))["hrvstream_session"].value
        ws = await live(r, c)
        # Without the CSRF token, logging out is refused (a cross-site logout).
        assert (await c.post("/logout", allow_redirects=False)).status == 403
        resp = await c.post("/logout", headers={"X-CSRF-Token": csrf}, allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == "/login"
        msg = await asyncio.wait_for(ws.receive(), 5.0)
        assert msg.type == WSMsgType.CLOSE and msg.data == CLOSE_SESSION_ENDED
        other = await r.client()
        other.session.cookie_jar.update_cookies({"hrvstream_session": token})
        assert (await other.get("/api/me")).status == 401

    go(body, tmp_path)


def test_an_expired_session_closes_the_socket(tmp_path: Path) -> None:
    now = [time.time()]

    async def body(r: Rig) -> None:
        c, _ = await r.signed_in(ALICE)
        r.hub.session_check_s = 0.05
        ws = await live(r, c)
        now[0] += r.accounts.idle_timeout_s + 1
        msg = await asyncio.wait_for(ws.receive(), 5.0)
        assert msg.type == WSMsgType.CLOSE and msg.data == CLOSE_SESSION_ENDED
        assert (await c.get("/api/me")).status == 401

    go(body, tmp_path, clock=lambda: now[0])


# == headers and static files =================================================================


def test_every_response_has_the_security_headers(tmp_path: Path) -> None:
    async def body(r: Rig) -> None:
        c, _ = await r.signed_in(ALICE)
        for path in ("/", "/login", "/api/patients", "/static/js/common.js", "/nowhere"):
            resp = await c.get(path)
            h = resp.headers
            assert h["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, path
            assert h["X-Content-Type-Options"] == "nosniff"
            assert h["Referrer-Policy"] == "no-referrer"
            expected = "no-cache" if path.startswith("/static/") else "no-store"
            assert h["Cache-Control"] == expected, path

    go(body, tmp_path)


def test_static_files_are_served_with_their_types_and_nothing_else(tmp_path: Path) -> None:
    async def body(r: Rig) -> None:
        c = await r.client()  # static files need no session (the sign-in page uses them)
        types = {
            "/static/js/common.js": "text/javascript",
            "/static/js/overview.js": "text/javascript",
            "/static/js/charts.js": "text/javascript",
            "/static/css/dashboard.css": "text/css",
            "/static/favicon.png": "image/png",
        }
        for path, ctype in types.items():
            resp = await c.get(path)
            assert resp.status == 200, path
            assert resp.content_type == ctype, path
            assert len(await resp.read()) > 0
        for path in (
            "/static/index.html",  # pages only through their routes (behind sign-in)
            "/static/../app.py",
            "/static/%2e%2e/app.py",
            "/static/js/missing.js",
        ):
            assert (await c.get(path)).status == 404, path

    go(body, tmp_path)


_URL = re.compile(r"""(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}|https?://""")


def _strip_comments(path: Path, text: str) -> str:
    if path.suffix in (".js", ".css"):
        text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    if path.suffix == ".js":
        text = re.sub(r"(?m)^\s*//.*$", "", text)
    if path.suffix == ".html":
        text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    return text


def test_static_files_load_nothing_from_the_internet() -> None:
    files = [p for p in STATIC_DIR.rglob("*") if p.is_file()]
    suffixes = {p.suffix for p in files}
    assert {".html", ".js", ".css"} <= suffixes
    for path in files:
        if path.suffix not in (".html", ".js", ".css", ".svg", ".json"):
            continue
        text = _strip_comments(path, path.read_text(encoding="utf-8"))
        found = _URL.findall(text)
        assert not found, f"{path.name}: {found}"
        assert "@import" not in text and "@font-face" not in text, path.name
        if path.suffix == ".html":
            assert "<script>" not in text and " style=" not in text, path.name
            assert not re.search(r"\son[a-z]+=", text), f"inline handler in {path.name}"


def test_the_url_scan_would_catch_an_external_url() -> None:
    for snippet in (
        '<script src="https://cdn.example.com/x.js">',
        "url(//fonts.example.org/f.woff2)",
        'fetch("http://10.0.0.1/")',
    ):
        assert _URL.search(snippet), snippet
    assert not _URL.search('fetch("/api/patients"); const a = b // c;')


# == CSRF on acknowledging ====================================================================


def test_ack_needs_the_csrf_token_and_a_same_origin(tmp_path: Path) -> None:
    async def body(r: Rig) -> None:
        t = time.time()
        r.source.alerts.append(raised(P_ALICE, "a-1", t))
        c, csrf = await r.signed_in(ALICE)
        url = f"/api/patients/{P_ALICE}/alerts/a-1/ack"
        attempts: list[dict[str, str]] = [
            {},
            {"X-CSRF-Token": "wrong"},
            {"X-CSRF-Token": csrf, "Origin": "http://evil.example"},
            {"X-CSRF-Token": csrf, "Origin": f"{r.origin}.evil.example"},
            {"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"},
            {"X-CSRF-Token": csrf, "Sec-Fetch-Site": "same-site"},
        ]
        for headers in attempts:
            resp = await c.post(url, json={"note": "x"}, headers=headers)
            assert resp.status == 403, headers
        assert r.source.acks == []
        # What a browser sends from our page (Referrer-Policy no-referrer: Origin null).
        page_headers = {"X-CSRF-Token": csrf, "Origin": "null", "Sec-Fetch-Site": "same-origin"}
        resp = await c.post(url, json={"note": "  Called her; she is OK.  "}, headers=page_headers)
        assert resp.status == 200, await resp.text()
        alert = (await resp.json())["alert"]
        assert alert["state"] == "acknowledged"
        assert alert["acknowledged_by"] == ALICE
        assert alert["note"] == "Called her; she is OK."
        assert r.source.acks == [(P_ALICE, "a-1", ALICE, "Called her; she is OK.")]
        # With the page's own Origin it works too; acknowledging twice is a 409.
        resp = await c.post(url, json={}, headers={"X-CSRF-Token": csrf, "Origin": r.origin})
        assert resp.status == 409
        assert "acknowledged already" in (await resp.json())["error"]

    go(body, tmp_path)


def test_ack_checks_the_note_and_the_alert(tmp_path: Path) -> None:
    async def body(r: Rig) -> None:
        r.source.alerts.append(raised(P_ALICE, "a-2", time.time()))
        c, csrf = await r.signed_in(ALICE)
        h = {"X-CSRF-Token": csrf}
        url = f"/api/patients/{P_ALICE}/alerts/a-2/ack"
        assert (await c.post(url, json={"note": "x" * 501}, headers=h)).status == 400
        assert (await c.post(url, json={"note": 5}, headers=h)).status == 400
        assert (await c.post(url, data=b"not json", headers=h)).status == 400
        assert r.source.acks == []
        resp = await c.post(f"/api/patients/{P_ALICE}/alerts/nope/ack", json={}, headers=h)
        assert resp.status == 409
        assert (await resp.json())["error"] == "No such alert for this patient."
        resp = await c.post(url, json={"note": ""}, headers=h)  # empty note: none
        assert resp.status == 200
        assert r.source.acks[-1] == (P_ALICE, "a-2", ALICE, None)

    go(body, tmp_path)


# == alert settings ===========================================================================

DEFAULT_SETTINGS = {
    "acute_enabled": True,
    "raise_score": 2.0,
    "min_duration_s": 120.0,
    "clear_score": 1.0,
    "cooldown_s": 1800.0,
    "trend_enabled": True,
    "quiet_hours": "22:00-07:00",
    "timezone": "UTC",
}


def test_alert_settings_are_read_and_changed_with_the_csrf_token(tmp_path: Path) -> None:
    async def body(r: Rig) -> None:
        c, csrf = await r.signed_in(ALICE)
        url = f"/api/patients/{P_ALICE}/alert-settings"
        resp = await c.get(url)
        assert resp.status == 200
        assert await resp.json() == {
            "patient": P_ALICE,
            "settings": DEFAULT_SETTINGS,
            "updated_by": None,
            "updated_unix_s": None,
        }
        change = {"raise_score": 2.6, "quiet_hours": "off"}
        refused: list[dict[str, str]] = [
            {},
            {"X-CSRF-Token": "wrong"},
            {"X-CSRF-Token": csrf, "Origin": "http://evil.example"},
            {"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"},
        ]
        for headers in refused:
            resp = await c.post(url, json=change, headers=headers)
            assert resp.status == 403, headers
        assert r.source.settings_calls == []
        # What the page sends (Origin null under Referrer-Policy no-referrer).
        page_headers = {"X-CSRF-Token": csrf, "Origin": "null", "Sec-Fetch-Site": "same-origin"}
        before = time.time()
        resp = await c.post(url, json=change, headers=page_headers)
        assert resp.status == 200, await resp.text()
        got = await resp.json()
        assert got["patient"] == P_ALICE and got["updated_by"] == ALICE
        assert got["updated_unix_s"] >= before
        assert got["settings"] == DEFAULT_SETTINGS | change
        assert r.source.settings_calls == [(P_ALICE, change, ALICE)]
        assert await (await c.get(url)).json() == got
        # An admin may change them too.
        admin, admin_csrf = await r.signed_in(ADMIN)
        resp = await admin.post(
            url, json={"min_duration_s": 300}, headers={"X-CSRF-Token": admin_csrf}
        )
        assert resp.status == 200, await resp.text()
        got = await resp.json()
        assert got["updated_by"] == ADMIN
        assert got["settings"] == DEFAULT_SETTINGS | change | {"min_duration_s": 300.0}
        # Signed out: 401.
        anonymous = await r.client()
        assert (await anonymous.get(url)).status == 401
        assert (await anonymous.post(url, json=change)).status == 401

    go(body, tmp_path)


def test_invalid_alert_settings_get_400_with_the_reason(tmp_path: Path) -> None:
    async def body(r: Rig) -> None:
        c, csrf = await r.signed_in(ALICE)
        url = f"/api/patients/{P_ALICE}/alert-settings"
        h = {"X-CSRF-Token": csrf}
        for sent, says in (
            ({"critical_score": 5}, "'critical_score' cannot be changed here"),
            ({"raise_score": "high"}, "raise_score: expected a number"),
            ({"clear_score": 2.0}, "clear_score (2) must be below raise_score (2)"),
            ({"quiet_hours": "after dinner"}, "expected HH:MM-HH:MM"),
            ({}, "no settings given"),
        ):
            resp = await c.post(url, json=sent, headers=h)
            assert resp.status == 400, sent
            assert says in (await resp.json())["error"], sent
        for raw in (b"not json", b"[1, 2]", b"{" + b" " * 9000 + b"}"):
            resp = await c.post(url, data=raw, headers=h | {"Content-Type": "application/json"})
            assert resp.status == 400, raw[:10]
        assert r.source.settings == {}
        assert (await (await c.get(url)).json())["settings"] == DEFAULT_SETTINGS
        # The state file cannot be written: 503, and nothing says it was saved.
        r.source.saving_fails = True
        resp = await c.post(url, json={"raise_score": 3.0}, headers=h)
        assert resp.status == 503
        assert "could not be saved" in (await resp.json())["error"]
        assert r.source.settings == {}

    go(body, tmp_path)


# == who sees whom ============================================================================


def test_a_therapist_cannot_see_or_open_another_therapists_patient(tmp_path: Path) -> None:
    async def body(r: Rig) -> None:
        t = time.time()
        r.source.status = {P_ALICE: status(P_ALICE), P_BOB: status(P_BOB)}
        r.source.alerts = [raised(P_BOB, "b-1", t)]
        c, csrf = await r.signed_in(ALICE)
        overview = await (await c.get("/api/patients")).json()
        assert [p["patient"] for p in overview["patients"]] == [P_ALICE]
        assert overview["open_alerts"] == []
        # The other's patient and a patient that does not exist look the same: 404.
        for patient in (P_BOB, "p-nobody-9"):
            page = await c.get(f"/patients/{patient}")
            assert page.status == 404
            assert 'data-testid="not-found"' in await page.text()
            for suffix in ("", "/metrics", "/beats", "/alerts", "/alert-settings"):
                resp = await c.get(f"/api/patients/{patient}{suffix}")
                assert resp.status == 404, suffix
                assert await resp.json() == {"error": "not found"}
            resp = await c.post(
                f"/api/patients/{patient}/alerts/b-1/ack", json={}, headers={"X-CSRF-Token": csrf}
            )
            assert resp.status == 404
            resp = await c.post(
                f"/api/patients/{patient}/alert-settings",
                json={"raise_score": 3.0},
                headers={"X-CSRF-Token": csrf},
            )
            assert resp.status == 404
            assert await resp.json() == {"error": "not found"}
        assert r.source.acks == [] and r.source.settings_calls == []
        assert (await c.get(f"/patients/{P_ALICE}")).status == 200
        # Nor by WebSocket: watching is refused, and nothing of the patient arrives.
        ws = await live(r, c)
        await ws.send_json({"type": "watch", "patient": P_BOB})
        assert await receive(ws) == {"type": "error", "error": "not found", "patient": P_BOB}
        r.hub.observe(status(P_BOB, battery=11))
        r.hub.observe(metrics(P_BOB, t))
        r.hub.observe(raised(P_BOB, "b-2", t))
        r.hub.observe(status(P_ALICE, battery=77))
        got = await receive(ws)
        assert got["type"] == "status" and got["patient"] == P_ALICE
        assert got["data"]["battery_pct"] == 77
        await ws.close()
        # Admin pages and API are not for therapists.
        assert (await c.get("/admin")).status == 403
        assert (await c.get("/api/admin/users")).status == 403
        resp = await c.put(
            f"/api/admin/users/{ALICE}/patients/{P_BOB}", headers={"X-CSRF-Token": csrf}
        )
        assert resp.status == 403
        assert not r.accounts.can_see(ALICE, P_BOB)

    go(body, tmp_path)


def test_the_websocket_needs_a_session_and_this_sites_origin(tmp_path: Path) -> None:
    async def body(r: Rig) -> None:
        anonymous = await r.client()
        resp = await anonymous.get("/ws", headers={"Origin": r.origin})
        assert resp.status == 401
        c, _ = await r.signed_in(ALICE)
        for origin in ("http://evil.example", f"{r.origin}.evil.example", "null"):
            resp = await c.get(
                "/ws",
                headers={
                    "Origin": origin,
                    "Upgrade": "websocket",
                    "Connection": "Upgrade",
                    "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                },
            )
            assert resp.status == 403, origin
        assert r.hub.client_count == 0
        ws = await live(r, c)
        assert r.hub.client_count == 1
        await ws.close()

    go(body, tmp_path)


def test_an_admin_sees_everyone_and_assignments_apply_to_open_sockets(tmp_path: Path) -> None:
    async def body(r: Rig) -> None:
        t = time.time()
        r.source.status = {
            P_ALICE: status(P_ALICE),
            P_BOB: status(P_BOB),
            "p-new-3": status("p-new-3"),
        }
        admin, admin_csrf = await r.signed_in(ADMIN)
        overview = await (await admin.get("/api/patients")).json()
        assert {p["patient"] for p in overview["patients"]} == {P_ALICE, P_BOB, "p-new-3"}
        users = await (await admin.get("/api/admin/users")).json()
        assert {u["username"]: u["patients"] for u in users["users"]} == {
            ALICE: [P_ALICE],
            BOB: [P_BOB],
            ADMIN: [],
        }
        assert set(users["patients"]) == {P_ALICE, P_BOB, "p-new-3"}
        assert (await admin.get(f"/patients/{P_BOB}")).status == 200
        assert (await admin.get("/admin")).status == 200

        alice, _ = await r.signed_in(ALICE)
        ws = await live(r, alice)
        r.hub.observe(metrics("p-new-3", t, rmssd=31.0))
        r.hub.observe(status(P_ALICE, battery=50))
        got = await receive(ws)
        assert (got["type"], got["patient"]) == ("status", P_ALICE)

        url = f"/api/admin/users/{ALICE}/patients/p-new-3"
        assert (await admin.put(url)).status == 403  # CSRF applies to admins too
        resp = await admin.put(url, headers={"X-CSRF-Token": admin_csrf})
        assert resp.status == 200
        assert (await resp.json())["user"]["patients"] == [P_ALICE, "p-new-3"]
        r.hub.observe(metrics("p-new-3", t + 5, rmssd=33.0))
        got = await receive(ws)
        assert (got["type"], got["patient"]) == ("metrics", "p-new-3")
        assert got["data"]["rmssd_ms"] == 33.0
        overview = await (await alice.get("/api/patients")).json()
        assert [p["patient"] for p in overview["patients"]] == [P_ALICE, "p-new-3"]

        resp = await admin.delete(url, headers={"X-CSRF-Token": admin_csrf})
        assert resp.status == 200
        r.hub.observe(status("p-new-3"))
        r.hub.observe(status(P_ALICE, battery=49))
        got = await receive(ws)
        assert (got["type"], got["patient"]) == ("status", P_ALICE)

        bad = await admin.put(
            f"/api/admin/users/{ALICE}/patients/NOT%20VALID", headers={"X-CSRF-Token": admin_csrf}
        )
        assert bad.status == 400
        missing = await admin.put(
            "/api/admin/users/nobody/patients/p-x1", headers={"X-CSRF-Token": admin_csrf}
        )
        assert missing.status == 404
        await ws.close()

    go(body, tmp_path)


# == live =====================================================================================


def test_metrics_are_followed_by_the_assessment_and_beats_go_to_watchers_only(
    tmp_path: Path,
) -> None:
    async def body(r: Rig) -> None:
        t = time.time()
        assessment = {"t_unix_s": t, "state": "calm", "stress_score": 0.4, "baseline": None}
        r.source.assessments[P_ALICE] = assessment
        c, _ = await r.signed_in(ALICE)
        ws = await live(r, c)
        r.hub.observe(metrics(P_ALICE, t, rmssd=55.5))
        got = await receive(ws)
        assert got["type"] == "metrics" and got["data"]["rmssd_ms"] == 55.5
        assert got["data"]["mean_hr_bpm"] == 64.0 and got["data"]["pnn50_pct"] is None
        got = await receive(ws)
        assert got == {"type": "assessment", "patient": P_ALICE, "data": assessment}

        beats = BeatsMessage(
            patient=P_ALICE,
            session="s1",
            seq=1,
            origin_unix_s=t - 10,
            sent_unix_s=t,
            t_s=(1.0, 1.8, 2.65),
            rr_ms=(800.0, 800.0, 850.0),
            after_gap=(2,),
        )
        r.hub.observe(beats)  # not watched yet: not sent
        r.hub.observe(status(P_ALICE, battery=66))
        got = await receive(ws)
        assert got["type"] == "status"
        await ws.send_json({"type": "watch", "patient": P_ALICE})
        assert await receive(ws) == {"type": "watching", "patient": P_ALICE}
        r.hub.observe(beats)
        got = await receive(ws)
        assert got["type"] == "beats" and got["patient"] == P_ALICE
        assert got["data"]["rr_ms"] == [800.0, 800.0, 850.0]
        assert got["data"]["t_unix_s"] == pytest.approx([t - 9.0, t - 8.2, t - 7.35])
        assert got["data"]["after_gap"] == [2]
        await ws.send_json({"type": "ping"})
        assert (await receive(ws))["type"] == "pong"
        await ws.close()

    go(body, tmp_path)


def test_a_client_that_falls_behind_is_disconnected(tmp_path: Path) -> None:
    async def body(r: Rig) -> None:
        c, _ = await r.signed_in(ALICE)
        ws = await live(r, c)
        for i in range(20):  # without yielding: the sender cannot drain meanwhile
            r.hub.observe(status(P_ALICE, battery=i))
        msg = await asyncio.wait_for(ws.receive(), 5.0)
        assert msg.type == WSMsgType.CLOSE and msg.data == CLOSE_TOO_SLOW
        assert r.hub.overflows == 1

    go(body, tmp_path, live_queue_max=5)


def test_the_hub_is_a_live_observer_and_closes_sockets_on_shutdown(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(tmp_path / "store.db")
        source = FakeSource(store)
        assert isinstance(source, DashboardSource)
        app = web.Application()
        settings = DashboardSettings(accounts_path=tmp_path / "acc" / "accounts.db")
        hub = setup_dashboard(app, source=source, settings=settings)
        from hrvstream.dashboard.source import LiveObserver

        assert isinstance(hub, LiveObserver)
        accounts = hub.accounts  # opened by setup_dashboard from settings
        assert accounts.path == settings.accounts_path
        accounts.add_user(ALICE, PASSWORD)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        c: Client = TestClient(server)
        await c.start_server()
        try:
            assert (await login(c, ALICE, PASSWORD)).status == 303
            ws = await c.ws_connect("/ws")
            assert (await receive(ws))["type"] == "hello"
            await server.close()
            msg = await asyncio.wait_for(ws.receive(), 5.0)
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
            assert hub.client_count == 0
            with pytest.raises(Exception, match="closed"):
                accounts.users()  # closed on cleanup: it was opened by setup_dashboard
        finally:
            await c.close()
            await store.close()

    run(main, TIMEOUT_S)


# == the JSON API =============================================================================


def test_series_are_downsampled_evenly_keeping_both_ends(tmp_path: Path) -> None:
    async def body(r: Rig) -> None:
        now = time.time()
        n = 5000
        rows = [
            MetricRow(P_ALICE, now - n + i, 300.0, {"rmssd_ms": 20.0 + i % 50, "lf_hf": None})
            for i in range(n)
        ]
        await r.store.write_metrics(rows)
        beats = [
            BeatRow(P_ALICE, now - 3000 + 0.75 * i, 750.0 + i % 7, i == 10, "s1", i)
            for i in range(4000)
        ]
        await r.store.write_beats(beats)
        c, _ = await r.signed_in(ALICE)

        resp = await c.get(f"/api/patients/{P_ALICE}/metrics?since_s=7200&names=rmssd_ms,lf_hf")
        series = await resp.json()
        assert series["n_rows"] == n
        assert len(series["t_unix_s"]) == 1500 == len(series["rmssd_ms"]) == len(series["lf_hf"])
        assert series["t_unix_s"][0] == rows[0].t_unix_s
        assert series["t_unix_s"][-1] == rows[-1].t_unix_s
        ts = series["t_unix_s"]
        steps = {round(b - a) for a, b in itertools.pairwise(ts)}
        assert steps <= {3, 4}  # evenly: 4999 / 1499 = 3.33 s apart
        assert set(series["lf_hf"]) == {None}  # missing stays missing
        by_t = {row.t_unix_s: row.values["rmssd_ms"] for row in rows}
        assert [by_t[t] for t in ts] == series["rmssd_ms"]

        resp = await c.get(f"/api/patients/{P_ALICE}/metrics?since_s=600")
        short = await resp.json()
        assert short["end_unix_s"] - short["start_unix_s"] == pytest.approx(600)
        expected = [r for r in rows if short["start_unix_s"] <= r.t_unix_s < short["end_unix_s"]]
        assert len(expected) >= 598
        assert short["n_rows"] == len(expected) == len(short["t_unix_s"])
        assert set(short) >= {"mean_hr_bpm", "rmssd_ms", "lf_hf", "coverage", "artifact_pct"}
        start, end = rows[4000].t_unix_s, rows[4100].t_unix_s  # canonical times
        resp = await c.get(f"/api/patients/{P_ALICE}/metrics?start={start}&end={end}")
        ranged = await resp.json()
        assert ranged["n_rows"] == 100
        assert all(start <= t < end for t in ranged["t_unix_s"])

        overview = await (await c.get("/api/patients")).json()
        spark = overview["patients"][0]["sparkline"]
        assert len(spark["t_unix_s"]) == 120 == len(spark["rmssd_ms"])
        assert spark["t_unix_s"][-1] == rows[-1].t_unix_s
        assert spark["t_unix_s"][0] >= now - 3600
        assert overview["patients"][0]["metrics"]["rmssd_ms"] == rows[-1].values["rmssd_ms"]

        resp = await c.get(f"/api/patients/{P_ALICE}/beats?since_s=3600")
        tach = await resp.json()
        assert tach["n_beats"] == 4000 and len(tach["rr_ms"]) == 3000
        assert tach["t_unix_s"][0] == beats[0].t_unix_s
        assert tach["t_unix_s"][-1] == beats[-1].t_unix_s
        resp = await c.get(f"/api/patients/{P_ALICE}/beats")  # default: last 5 minutes
        recent = await resp.json()
        assert recent["end_unix_s"] - recent["start_unix_s"] == pytest.approx(300)
        in_range = [b for b in beats if recent["start_unix_s"] <= b.t_unix_s < recent["end_unix_s"]]
        assert len(in_range) >= 398
        assert recent["n_beats"] == len(in_range) == len(recent["rr_ms"])

        for query in (
            "since_s=-5",
            "since_s=abc",
            "since_s=99999999",
            "names=bogus",
            "start=5&end=1",
        ):
            resp = await c.get(f"/api/patients/{P_ALICE}/metrics?{query}")
            assert resp.status == 400, query
        assert (await c.get(f"/api/patients/{P_ALICE}/beats?since_s=7200")).status == 400

    go(body, tmp_path)


def test_overview_puts_patients_with_open_alerts_first(tmp_path: Path) -> None:
    async def body(r: Rig) -> None:
        t = time.time()
        for p in ("p-a-1", "p-b-2", "p-c-3"):
            r.accounts.assign(ALICE, p)
        r.source.status = {"p-a-1": status("p-a-1", battery=42)}
        r.source.alerts = [raised("p-c-3", "c-1", t)]
        r.source.assessments["p-a-1"] = {"state": "calm", "stress_score": 0.1}
        c, _ = await r.signed_in(ALICE)
        overview = await (await c.get("/api/patients")).json()
        tiles = overview["patients"]
        assert [p["patient"] for p in tiles] == ["p-c-3", "p-a-1", P_ALICE, "p-b-2"]
        assert [a["alert_id"] for a in overview["open_alerts"]] == ["c-1"]
        assert tiles[0]["open_alerts"][0]["explanation"]["message"].startswith("Stress score")
        a1 = tiles[1]
        assert a1["online"] is True and a1["status"]["battery_pct"] == 42
        assert a1["assessment"] == {"state": "calm", "stress_score": 0.1}
        assert a1["metrics"] is None and a1["sparkline"] == {"t_unix_s": [], "rmssd_ms": []}
        b2 = tiles[3]
        assert b2["online"] is False and b2["status"] is None and b2["last_seen_unix_s"] is None

    go(body, tmp_path)


def test_alert_history_groups_events_with_their_explanation(tmp_path: Path) -> None:
    async def body(r: Rig) -> None:
        t = time.time() - 600
        first = raised(P_ALICE, "h-1", t)
        await r.store.write_alerts([alert_row(first)])
        r.source.alerts = [first]
        second = raised(P_ALICE, "h-2", t + 100)
        resolved = AlertMessage(
            alert_id="h-2",
            patient=P_ALICE,
            state="resolved",
            rule="acute_stress",
            severity="warning",
            t_unix_s=t + 300,
        )
        await r.store.write_alerts([alert_row(second), alert_row(resolved)])
        c, csrf = await r.signed_in(ALICE)
        resp = await c.post(
            f"/api/patients/{P_ALICE}/alerts/h-1/ack",
            json={"note": "spoke on the phone"},
            headers={"X-CSRF-Token": csrf},
        )
        assert resp.status == 200
        history = await (await c.get(f"/api/patients/{P_ALICE}/alerts")).json()
        alerts = {a["alert_id"]: a for a in history["alerts"]}
        assert [a["alert_id"] for a in history["alerts"]] == ["h-2", "h-1"]
        h1 = alerts["h-1"]
        assert [e["state"] for e in h1["events"]] == ["raised", "acknowledged"]
        assert h1["explanation"]["message"] == "Stress score 2.6 for 5+ min"
        assert h1["acknowledged"]["by"] == ALICE
        assert h1["acknowledged"]["note"] == "spoke on the phone"
        assert h1["open"] is True  # the (fake) engine still lists it: not resolved yet
        h2 = alerts["h-2"]
        assert h2["resolved_unix_s"] == pytest.approx(t + 300)
        assert h2["acknowledged"] is None and h2["open"] is False
        assert h2["state"] == "resolved"

    go(body, tmp_path)


def test_pages_are_served_to_the_signed_in(tmp_path: Path) -> None:
    async def body(r: Rig) -> None:
        c, _ = await r.signed_in(ALICE)
        for path, script in (
            ("/", "/static/js/overview.js"),
            (f"/patients/{P_ALICE}", "/static/js/patient.js"),
        ):
            resp = await c.get(path)
            assert resp.status == 200
            assert resp.content_type == "text/html"
            assert f'<script type="module" src="{script}"></script>' in await resp.text()
        # Signed in already: /login goes on to the app.
        resp = await c.get("/login?next=/patients/p-alice-01", allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == "/patients/p-alice-01"

    go(body, tmp_path)
