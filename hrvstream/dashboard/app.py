"""The therapist dashboard: pages, JSON API and live WebSocket on the server's aiohttp app.

:func:`setup_dashboard` adds everything to the server's existing
:class:`aiohttp.web.Application` (which keeps its public ``/healthz`` and ``/metrics``)
and returns the :class:`~hrvstream.dashboard.live.LiveHub` the server feeds with every
message it handled. ``docs/dashboard.md`` lists the routes, the JSON and the WebSocket
messages; in short:

* **Pages** ``/``, ``/patients/{patient}``, ``/admin``, ``/login``: static HTML from
  ``static/`` whose scripts fetch the data; ``POST /login`` and ``POST /logout``.
* **API** under ``/api/``: the signed-in user, the overview, per-patient metrics, beats
  and alert history, acknowledging an alert, a patient's alert settings, and (admins)
  assignments.
* **Live** ``GET /ws``: status, metrics, assessments, alerts and (for a watched patient)
  beats, as they are stored.

Security
--------
* **Sign-in**: :class:`~hrvstream.dashboard.accounts.Accounts` (Argon2id hashes,
  throttling). The session token lives in the ``hrvstream_session`` cookie (HttpOnly,
  SameSite=Strict, Path=/, Secure when ``cookie_secure``). A failed, throttled or
  malformed sign-in gets the same "Wrong username or password" and status 401.
* **Who sees whom**: every patient route, API call and live message is checked with
  :meth:`Accounts.can_see`; a patient the user may not see answers 404, exactly like an
  unknown one.
* **CSRF**: every state-changing request except the sign-in form carries the session's
  CSRF token in ``X-CSRF-Token`` (compared in constant time); a foreign ``Origin`` or a
  ``Sec-Fetch-Site`` of ``cross-site``/``same-site`` is refused as well (see
  :func:`same_origin`). The sign-in form uses a double-submit cookie
  (``hrvstream_login_csrf``) against login CSRF. The WebSocket handshake must come
  from this host's ``Origin`` (against cross-site WebSocket hijacking).
* **Headers** on every response: a strict Content-Security-Policy (no inline script or
  style, nothing from other origins), ``nosniff``, ``no-referrer``, framing refused,
  ``Cache-Control: no-store`` (static files: ``no-cache``).
* **Logs** carry no password, token, RR value or patient data above DEBUG.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import json
import logging
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit

from aiohttp import web

from hrvstream.dashboard.accounts import AccountError, Accounts, Session, UnknownUser, User
from hrvstream.dashboard.live import LiveHub
from hrvstream.dashboard.source import AlertActionError, AlertSettingsError, DashboardSource
from hrvstream.dashboard.views import (
    CHART_METRICS,
    alert_json,
    beats_rows_json,
    dumps,
    group_alerts,
    metric_row_json,
    metrics_series_json,
    status_json,
)
from hrvstream.errors import HrvStreamError
from hrvstream.protocol.messages import MAX_NOTE_CHARS, AlertMessage, is_valid_patient
from hrvstream.store import METRIC_NAMES, TOKEN_PATTERN, StoreError

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "LOGIN_CSRF_COOKIE",
    "SESSION_COOKIE",
    "STATIC_DIR",
    "DashboardSettings",
    "setup_dashboard",
]

log = logging.getLogger(__name__)

#: The session cookie (the token of :class:`~hrvstream.dashboard.accounts.Session`).
SESSION_COOKIE: Final = "hrvstream_session"
#: The sign-in form's double-submit CSRF cookie.
LOGIN_CSRF_COOKIE: Final = "hrvstream_login_csrf"
#: Header carrying the session's CSRF token on state-changing requests.
CSRF_HEADER: Final = "X-CSRF-Token"
#: Sent on every response of the app.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
#: Where the pages, scripts and styles are (shipped as package data).
STATIC_DIR: Final = Path(__file__).resolve().parent / "static"

#: The message for any refused sign-in (wrong password, unknown user, throttled).
LOGIN_REFUSED: Final = "Wrong username or password"
#: The message when the sign-in form's CSRF token does not match its cookie.
LOGIN_EXPIRED: Final = "The sign-in page had expired. Please try again."

#: Points in an overview sparkline (RMSSD, last hour).
SPARKLINE_POINTS: Final = 120
SPARKLINE_S: Final = 3600.0
#: Most points in a metrics series answer.
MAX_METRIC_POINTS: Final = 1500
#: Most points in a beats (RR tachogram) answer.
MAX_BEAT_POINTS: Final = 3000
#: Longest metrics range, seconds (a little over 31 days).
MAX_METRICS_SPAN_S: Final = 32 * 86400.0
#: Longest beats range, seconds.
MAX_BEATS_SPAN_S: Final = 3600.0
#: Default and longest alert-history range, seconds, and most alerts returned.
ALERTS_DEFAULT_S: Final = 30 * 86400.0
MAX_ALERTS_SPAN_S: Final = 366 * 86400.0
MAX_ALERTS: Final = 200
#: Largest request body of the JSON API and the sign-in form, bytes.
MAX_BODY_BYTES: Final = 8192
#: Seconds between purges of expired sessions.
PURGE_INTERVAL_S: Final = 600.0

_PAGE_CONTENT_TYPE: Final = "text/html"
_STATIC_TYPES: Final[Mapping[str, str]] = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
}
_TEXT_TYPES: Final = frozenset({"text/javascript", "text/css", "image/svg+xml", "application/json"})
_TOKEN_RE: Final = re.compile(TOKEN_PATTERN)
_LOGIN_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9_-]{20,100}")
_PLACEHOLDER: Final = re.compile(r"\{\{([a-z_]+)\}\}")
_SEVERITY_RANK: Final[Mapping[str, int]] = {"critical": 3, "warning": 2, "info": 1}


@dataclass(frozen=True, slots=True)
class DashboardSettings:
    """How the dashboard runs.

    Attributes
    ----------
    accounts_path:
        The accounts file (see :class:`~hrvstream.dashboard.accounts.Accounts`); used when
        :func:`setup_dashboard` is not given an ``Accounts``.
    cookie_secure:
        Mark cookies ``Secure``: set it when browsers reach the server over HTTPS (a
        TLS-terminating reverse proxy that passes the ``Host`` header on).
    idle_timeout_s, max_age_s:
        Session lifetime without use, and at most (for the ``Accounts`` opened here).
    live_queue_max:
        Live messages a WebSocket client may fall behind before it is disconnected (it
        reconnects and re-fetches).
    """

    accounts_path: Path
    cookie_secure: bool = False
    idle_timeout_s: float = 1800.0
    max_age_s: float = 43200.0
    live_queue_max: int = 1000


def setup_dashboard(
    app: web.Application,
    *,
    source: DashboardSource,
    settings: DashboardSettings,
    accounts: Accounts | None = None,
) -> LiveHub:
    """Add the dashboard's routes, headers and shutdown hooks to ``app``.

    Parameters
    ----------
    app:
        The server's application, not yet started. Its other routes (``/healthz``,
        ``/metrics``) stay public; they get the security headers too.
    source:
        The server side: store, statuses, assessments, open alerts, acknowledging.
    settings:
        Cookies, session lifetime, live queue size, accounts file.
    accounts:
        The accounts to use; by default ``Accounts(settings.accounts_path, ...)`` is
        opened here and closed when the app cleans up.

    Returns
    -------
    LiveHub
        Register it with the server as a live observer (``hub.observe(message)``).

    Raises
    ------
    AccountError
        If the accounts file cannot be opened.
    """
    owns_accounts = accounts is None
    if accounts is None:
        accounts = Accounts(
            settings.accounts_path,
            idle_timeout_s=settings.idle_timeout_s,
            max_age_s=settings.max_age_s,
        )
    hub = LiveHub(accounts=accounts, source=source, queue_max=settings.live_queue_max)
    dashboard = _Dashboard(source, settings, accounts, hub, owns_accounts=owns_accounts)
    dashboard.add_routes(app.router)
    app.on_response_prepare.append(_security_headers)
    app.cleanup_ctx.append(dashboard.housekeeping)
    app.on_shutdown.append(dashboard.on_shutdown)
    app.on_cleanup.append(dashboard.on_cleanup)
    return hub


# == helpers ================================================================================


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Security headers on every response (pages, API, static files, errors, handshakes)."""
    h = response.headers
    h.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("Referrer-Policy", "no-referrer")
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    h.setdefault("Cross-Origin-Resource-Policy", "same-origin")
    static = request.path.startswith("/static/")
    h.setdefault("Cache-Control", "no-cache" if static else "no-store")


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=dumps(obj), status=status, content_type="application/json", charset="utf-8"
    )


def _see_other(location: str) -> web.Response:
    """A 303 redirect as a plain response (it carries cookies)."""
    return web.Response(status=303, headers={"Location": location})


def _json_error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def same_origin(request: web.Request, *, allow_null: bool = False) -> bool:
    """Whether the request may come from this site, by its ``Origin`` and ``Sec-Fetch-Site``.

    Parameters
    ----------
    request:
        The request.
    allow_null:
        Accept ``Origin: null``. Our own ``Referrer-Policy: no-referrer`` makes browsers
        send ``null`` on the pages' own POSTs, so for those it tells nothing and the CSRF
        token decides; a WebSocket handshake always carries the real origin, so there it
        is refused.

    Returns
    -------
    bool
        False for an ``Origin`` other than ``http(s)://<this Host header>`` (and for
        ``null`` unless allowed), or a ``Sec-Fetch-Site`` of ``cross-site`` or
        ``same-site``. A request without either header passes (browsers send them on
        cross-origin requests, so their absence means same-origin or not a browser).
    """
    if request.headers.get("Sec-Fetch-Site", "").lower() in ("cross-site", "same-site"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if origin.strip() == "null":
        return allow_null
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        return False
    host = request.headers.get("Host", "")
    return bool(host) and parts.netloc.lower() == host.lower()


def safe_next(value: str | None) -> str:
    """A local path to go to after signing in: ``value`` if safe, else ``"/"``.

    Safe: starts with one ``/`` (not ``//`` or ``/\\``, which browsers read as another
    host), no control characters or spaces, no scheme or host, not the sign-in page.
    """
    if not value or len(value) > 1000 or not value.startswith("/"):
        return "/"
    if value.startswith("//") or "\\" in value:
        return "/"
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in value):
        return "/"
    try:
        parts = urlsplit(value)
    except ValueError:
        return "/"
    if parts.scheme or parts.netloc or parts.path in ("/login", "/logout"):
        return "/"
    return value


def _float_param(query: Mapping[str, str], name: str) -> float | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise _BadRequest(f"{name} must be a number, got {raw[:40]!r}") from None
    if not math.isfinite(value):
        raise _BadRequest(f"{name} must be a finite number")
    return value


class _BadRequest(Exception):
    """A query parameter or body is invalid (answered 400 with the message)."""


def _time_range(
    query: Mapping[str, str], *, end_default: float, since_default: float, max_span_s: float
) -> tuple[float, float]:
    """``(start, end)`` from ``?since_s=`` (ending at ``end_default``) or ``?start=&end=``."""
    start = _float_param(query, "start")
    end = _float_param(query, "end")
    since = _float_param(query, "since_s")
    if start is not None or end is not None:
        if since is not None:
            raise _BadRequest("give since_s, or start and end, not both")
        end = end_default if end is None else end
        start = end - since_default if start is None else start
    else:
        since = since_default if since is None else since
        if since <= 0:
            raise _BadRequest("since_s must be > 0")
        end = end_default
        start = end - since
    if start < 0 or end <= start:
        raise _BadRequest("the range must have 0 <= start < end")
    if end - start > max_span_s:
        raise _BadRequest(f"the range is longer than {max_span_s:g} s")
    return start, end


def _int_param(query: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _BadRequest(f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise _BadRequest(f"{name} must be in {lo}..{hi}")
    return value


def _user_json(user: User) -> dict[str, Any]:
    return {"username": user.username, "role": user.role, "patients": sorted(user.patients)}


@cache
def _page_text(name: str) -> str:
    return (STATIC_DIR / name).read_text(encoding="utf-8")


def _render(name: str, values: Mapping[str, str], status: int = 200) -> web.Response:
    """A page from ``static/<name>`` with ``{{key}}`` placeholders replaced (escaped)."""
    text = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), _page_text(name))
    return web.Response(text=text, status=status, content_type=_PAGE_CONTENT_TYPE, charset="utf-8")


def _static_page(name: str, status: int = 200) -> web.Response:
    return _render(name, {}, status)


@dataclass(frozen=True, slots=True)
class _Auth:
    session: Session
    user: User


_AuthHandler = Callable[[web.Request, _Auth], Awaitable[web.StreamResponse]]
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# == the app ================================================================================


class _Dashboard:
    """The handlers, bound to the source, the accounts and the hub."""

    def __init__(
        self,
        source: DashboardSource,
        settings: DashboardSettings,
        accounts: Accounts,
        hub: LiveHub,
        *,
        owns_accounts: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.settings = settings
        self.accounts = accounts
        self.hub = hub
        self.owns_accounts = owns_accounts
        self.clock = clock

    def add_routes(self, router: web.UrlDispatcher) -> None:
        page, api = self._page, self._api
        router.add_get("/", page(self.overview_page))
        router.add_get("/patients/{patient}", page(self.patient_page))
        router.add_get("/admin", page(self.admin_page, admin=True))
        router.add_get("/login", self.login_page)
        router.add_post("/login", self.login)
        router.add_post("/logout", self.logout)
        router.add_get("/static/{path:.+}", self.static)
        router.add_get("/ws", self.websocket)
        router.add_get("/api/me", api(self.api_me))
        router.add_get("/api/patients", api(self.api_patients))
        router.add_get("/api/patients/{patient}", api(self.api_patient))
        router.add_get("/api/patients/{patient}/metrics", api(self.api_metrics))
        router.add_get("/api/patients/{patient}/beats", api(self.api_beats))
        router.add_get("/api/patients/{patient}/alerts", api(self.api_alerts))
        router.add_post(
            "/api/patients/{patient}/alerts/{alert_id}/ack", api(self.api_ack, write=True)
        )
        settings = "/api/patients/{patient}/alert-settings"
        router.add_get(settings, api(self.api_alert_settings))
        router.add_post(settings, api(self.api_set_alert_settings, write=True))
        router.add_get("/api/admin/users", api(self.api_users, admin=True))
        assignment = "/api/admin/users/{username}/patients/{patient}"
        router.add_put(assignment, api(self.api_assign, admin=True, write=True))
        router.add_delete(assignment, api(self.api_unassign, admin=True, write=True))

    # -- lifecycle -------------------------------------------------------------------------

    async def housekeeping(self, app: web.Application) -> AsyncIterator[None]:
        """Purge expired sessions every :data:`PURGE_INTERVAL_S` while the app runs."""

        async def purge() -> None:
            while True:
                await asyncio.sleep(PURGE_INTERVAL_S)
                try:
                    n = await asyncio.to_thread(self.accounts.purge_expired)
                except AccountError as exc:
                    log.warning("purging expired dashboard sessions failed: %s", exc)
                else:
                    log.debug("purged %d expired dashboard sessions", n)

        task = asyncio.create_task(purge())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def on_shutdown(self, app: web.Application) -> None:
        await self.hub.close()

    async def on_cleanup(self, app: web.Application) -> None:
        if self.owns_accounts:
            self.accounts.close()

    # -- authentication --------------------------------------------------------------------

    def _auth(self, request: web.Request) -> _Auth | None:
        """The signed-in user of the request's session cookie, or ``None``."""
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            return None
        session = self.accounts.session(token)
        if session is None:
            return None
        user = self.accounts.user(session.username)
        if user is None:
            return None
        return _Auth(session, user)

    def _page(self, handler: _AuthHandler, *, admin: bool = False) -> _Handler:
        async def page(request: web.Request) -> web.StreamResponse:
            auth = self._auth(request)
            if auth is None:
                raise web.HTTPSeeOther(f"/login?next={quote(request.path_qs, safe='/')}")
            if admin and auth.user.role != "admin":
                return _static_page("forbidden.html", 403)
            return await handler(request, auth)

        return page

    def _api(self, handler: _AuthHandler, *, admin: bool = False, write: bool = False) -> _Handler:
        async def api(request: web.Request) -> web.StreamResponse:
            auth = self._auth(request)
            if auth is None:
                return _json_error(401, "not signed in")
            if write:
                refusal = self._csrf_refusal(request, auth.session)
                if refusal is not None:
                    return _json_error(403, refusal)
            if admin and auth.user.role != "admin":
                return _json_error(403, "admins only")
            try:
                return await handler(request, auth)
            except _BadRequest as exc:
                return _json_error(400, str(exc))
            except StoreError as exc:
                log.warning("the dashboard could not read the store: %s", exc)
                return _json_error(503, "the database is not answering; try again shortly")

        return api

    @staticmethod
    def _csrf_refusal(request: web.Request, session: Session) -> str | None:
        """Why a state-changing request is refused as possible CSRF, or ``None``."""
        if not same_origin(request, allow_null=True):
            return "cross-origin request refused"
        sent = request.headers.get(CSRF_HEADER, "")
        if not sent or not hmac.compare_digest(
            sent.encode("utf-8", "replace"), session.csrf_token.encode("utf-8")
        ):
            return "missing or wrong CSRF token: reload the page"
        return None

    def _visible(self, auth: _Auth, patient: str) -> bool:
        return is_valid_patient(patient) and self.accounts.can_see(auth.user.username, patient)

    def _patient_or_404(self, request: web.Request, auth: _Auth) -> str:
        patient = request.match_info["patient"]
        if not self._visible(auth, patient):
            raise _NotFound()
        return patient

    def _known_patients(self) -> set[str]:
        known = set(self.source.statuses()) | self.hub.known_patients()
        for user in self.accounts.users():
            known |= user.patients
        return {p for p in known if is_valid_patient(p)}

    def _cookie(self, response: web.StreamResponse, name: str, value: str, **kw: Any) -> None:
        response.set_cookie(
            name,
            value,
            httponly=True,
            samesite="Strict",
            secure=self.settings.cookie_secure,
            **kw,
        )

    # -- pages -----------------------------------------------------------------------------

    async def overview_page(self, request: web.Request, auth: _Auth) -> web.StreamResponse:
        return _static_page("index.html")

    async def patient_page(self, request: web.Request, auth: _Auth) -> web.StreamResponse:
        if not self._visible(auth, request.match_info["patient"]):
            return _static_page("not_found.html", 404)
        return _static_page("patient.html")

    async def admin_page(self, request: web.Request, auth: _Auth) -> web.StreamResponse:
        return _static_page("admin.html")

    def _login_form(
        self,
        request: web.Request,
        *,
        error: str | None,
        status: int,
        next_path: str,
        username: str = "",
    ) -> web.Response:
        token = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not _LOGIN_TOKEN_RE.fullmatch(token):
            token = secrets.token_urlsafe(32)
        error_html = (
            ""
            if error is None
            else f'<p class="login-error" role="alert" data-testid="login-error">'
            f"{html.escape(error)}</p>"
        )
        response = _render(
            "login.html",
            {
                "csrf_token": html.escape(token),
                "next": html.escape(next_path),
                "username": html.escape(username[:64]),
                "error": error_html,
            },
            status,
        )
        self._cookie(response, LOGIN_CSRF_COOKIE, token, path="/login", max_age=3600)
        return response

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        next_path = safe_next(request.query.get("next"))
        if self._auth(request) is not None:
            raise web.HTTPSeeOther(next_path)
        return self._login_form(request, error=None, status=200, next_path=next_path)

    async def login(self, request: web.Request) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return self._login_form(request, error=LOGIN_REFUSED, status=401, next_path="/")
        form = await request.post()
        username, password = form.get("username"), form.get("password")
        sent_token, next_raw = form.get("csrf_token"), form.get("next")
        next_path = safe_next(next_raw if isinstance(next_raw, str) else None)
        cookie_token = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if (
            not same_origin(request, allow_null=True)
            or not isinstance(sent_token, str)
            or not _LOGIN_TOKEN_RE.fullmatch(cookie_token)
            or not hmac.compare_digest(
                sent_token.encode("utf-8", "replace"), cookie_token.encode("ascii")
            )
        ):
            return self._login_form(request, error=LOGIN_EXPIRED, status=403, next_path=next_path)
        if (
            not isinstance(username, str)
            or not isinstance(password, str)
            or len(username) > 256
            or len(password) > 1024
        ):
            return self._login_form(request, error=LOGIN_REFUSED, status=401, next_path=next_path)
        session = await asyncio.to_thread(self.accounts.login, username, password)
        if session is None:
            return self._login_form(
                request, error=LOGIN_REFUSED, status=401, next_path=next_path, username=username
            )
        response = _see_other(next_path)
        max_age = int(self.accounts.max_age_s)
        self._cookie(response, SESSION_COOKIE, session.token, path="/", max_age=max_age)
        response.del_cookie(LOGIN_CSRF_COOKIE, path="/login")
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        auth = self._auth(request)
        if auth is not None:
            refusal = self._csrf_refusal(request, auth.session)
            if refusal is not None:
                return _json_error(403, refusal)
            self.accounts.logout(auth.session.token)
            self.hub.end_session(auth.session.token)
        response = _see_other("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def static(self, request: web.Request) -> web.StreamResponse:
        rel = request.match_info["path"]
        ctype = _STATIC_TYPES.get(Path(rel).suffix.lower())
        if ctype is None or rel.startswith("/") or "\\" in rel or "\x00" in rel:
            raise web.HTTPNotFound()
        root = STATIC_DIR
        path = (root / rel).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise web.HTTPNotFound()
        headers = {"Content-Type": f"{ctype}; charset=utf-8" if ctype in _TEXT_TYPES else ctype}
        return web.FileResponse(path, headers=headers)

    # -- live ------------------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        if not same_origin(request):
            return _json_error(403, "cross-origin WebSocket refused")
        auth = self._auth(request)
        if auth is None:
            return _json_error(401, "not signed in")
        return await self.hub.serve(request, auth.session)

    # -- API: reading ----------------------------------------------------------------------

    async def api_me(self, request: web.Request, auth: _Auth) -> web.StreamResponse:
        patients = self.accounts.visible_patients(auth.user.username, self._known_patients())
        return _json(
            {
                "username": auth.user.username,
                "role": auth.user.role,
                "csrf_token": auth.session.csrf_token,
                "patients": patients,
                "now_unix_s": self.clock(),
            }
        )

    def _data_end(self, now: float, *times: float | None) -> float:
        """The end of "the last N seconds": now, or just after the newest data if later
        (a patient's clock running ahead, or a demo running faster than real time)."""
        newest = max((t for t in times if t is not None), default=None)
        return now if newest is None or newest < now else newest + 1e-3

    async def _summary(self, patient: str, now: float) -> dict[str, Any]:
        """What an overview tile shows of one patient."""
        store = self.source.store
        status = self.source.statuses().get(patient)
        latest = await store.latest_metrics(patient)
        end = self._data_end(now, None if latest is None else latest.t_unix_s)
        rows = await store.metrics(patient, max(0.0, end - SPARKLINE_S), end, ["rmssd_ms"])
        spark = metrics_series_json(rows, ["rmssd_ms"], SPARKLINE_POINTS)
        seen: list[float] = []
        hub_seen = self.hub.last_seen(patient)
        if hub_seen is not None:
            seen.append(hub_seen)
        if latest is not None:
            seen.append(latest.t_unix_s)
        if status is not None:
            if status.state == "online":
                seen.append(status.t_unix_s)
            if status.last_beat_unix_s is not None:
                seen.append(status.last_beat_unix_s)
        open_alerts = [alert_json(a) for a in self.source.open_alerts(patient)]
        assessment = self.source.assessment(patient)
        return {
            "patient": patient,
            "online": status is not None and status.state == "online",
            "status": None if status is None else status_json(status),
            "last_seen_unix_s": max(seen) if seen else None,
            "metrics": None if latest is None else metric_row_json(latest),
            "assessment": None if assessment is None else dict(assessment),
            "sparkline": {"t_unix_s": spark["t_unix_s"], "rmssd_ms": spark["rmssd_ms"]},
            "open_alerts": open_alerts,
        }

    async def api_patients(self, request: web.Request, auth: _Auth) -> web.StreamResponse:
        now = self.clock()
        patients = self.accounts.visible_patients(auth.user.username, self._known_patients())
        tiles = list(await asyncio.gather(*(self._summary(p, now) for p in patients)))
        tiles.sort(key=_tile_order)
        alerts = [a for t in tiles for a in t["open_alerts"]]
        alerts.sort(key=lambda a: (-_SEVERITY_RANK.get(a["severity"], 0), -a["t_unix_s"]))
        return _json({"now_unix_s": now, "patients": tiles, "open_alerts": alerts})

    async def api_patient(self, request: web.Request, auth: _Auth) -> web.StreamResponse:
        patient = self._patient_or_404(request, auth)
        now = self.clock()
        return _json({"now_unix_s": now, **await self._summary(patient, now)})

    async def api_metrics(self, request: web.Request, auth: _Auth) -> web.StreamResponse:
        patient = self._patient_or_404(request, auth)
        names_raw = request.query.get("names")
        if names_raw:
            names = list(dict.fromkeys(n for n in names_raw.split(",") if n))
            unknown = [n for n in names if n not in METRIC_NAMES]
            if unknown or not names:
                raise _BadRequest(f"unknown metric names; known: {', '.join(METRIC_NAMES)}")
        else:
            names = list(CHART_METRICS)
        max_points = _int_param(
            request.query, "max_points", MAX_METRIC_POINTS, 2, MAX_METRIC_POINTS
        )
        store = self.source.store
        now = self.clock()
        latest = await store.latest_metrics(patient)
        end_default = self._data_end(now, None if latest is None else latest.t_unix_s)
        start, end = _time_range(
            request.query,
            end_default=end_default,
            since_default=3600.0,
            max_span_s=MAX_METRICS_SPAN_S,
        )
        rows = await store.metrics(patient, start, end, names)
        series = metrics_series_json(rows, names, max_points)
        return _json(
            {"patient": patient, "start_unix_s": start, "end_unix_s": end, "now_unix_s": now}
            | series
        )

    async def api_beats(self, request: web.Request, auth: _Auth) -> web.StreamResponse:
        patient = self._patient_or_404(request, auth)
        now = self.clock()
        status = self.source.statuses().get(patient)
        end_default = self._data_end(
            now, self.hub.last_seen(patient), None if status is None else status.last_beat_unix_s
        )
        start, end = _time_range(
            request.query, end_default=end_default, since_default=300.0, max_span_s=MAX_BEATS_SPAN_S
        )
        max_points = _int_param(request.query, "max_points", MAX_BEAT_POINTS, 2, MAX_BEAT_POINTS)
        rows = await self.source.store.beats(patient, start, end)
        return _json(
            {"patient": patient, "start_unix_s": start, "end_unix_s": end, "now_unix_s": now}
            | beats_rows_json(rows, max_points)
        )

    async def api_alerts(self, request: web.Request, auth: _Auth) -> web.StreamResponse:
        patient = self._patient_or_404(request, auth)
        now = self.clock()
        start, end = _time_range(
            request.query,
            end_default=now + 86400.0,  # alerts are few: include any clock skew ahead
            since_default=ALERTS_DEFAULT_S,
            max_span_s=MAX_ALERTS_SPAN_S,
        )
        rows = await self.source.store.alerts(patient, start, end)
        open_ids = [a.alert_id for a in self.source.open_alerts(patient)]
        grouped = group_alerts(rows, open_ids)
        # Open alerts the store does not have (yet) still show, with their live state.
        known = {g["alert_id"] for g in grouped}
        extra = [a for a in self.source.open_alerts(patient) if a.alert_id not in known]
        grouped = [_open_alert_group(a) for a in extra] + grouped
        return _json(
            {
                "patient": patient,
                "now_unix_s": now,
                "alerts": grouped[:MAX_ALERTS],
                "truncated": len(grouped) > MAX_ALERTS,
            }
        )

    # -- API: acknowledging ----------------------------------------------------------------

    async def api_ack(self, request: web.Request, auth: _Auth) -> web.StreamResponse:
        patient = self._patient_or_404(request, auth)
        alert_id = request.match_info["alert_id"]
        if not _TOKEN_RE.fullmatch(alert_id):
            return _json_error(404, "not found")
        body = await _json_body(request)
        note = _note(body.get("note"))
        try:
            alert = await self.source.acknowledge(
                patient, alert_id, by=auth.user.username, note=note
            )
        except AlertActionError as exc:
            return _json_error(409, str(exc))
        log.info("alert acknowledged on the dashboard by %s", auth.user.username)
        return _json({"alert": alert_json(alert)})

    # -- API: alert settings ---------------------------------------------------------------

    async def api_alert_settings(self, request: web.Request, auth: _Auth) -> web.StreamResponse:
        patient = self._patient_or_404(request, auth)
        return _json({"patient": patient, **self.source.alert_settings(patient)})

    async def api_set_alert_settings(self, request: web.Request, auth: _Auth) -> web.StreamResponse:
        patient = self._patient_or_404(request, auth)
        body = await _json_body(request)
        if not body:
            raise _BadRequest("no settings given")
        try:
            settings = await self.source.set_alert_settings(patient, body, by=auth.user.username)
        except AlertSettingsError as exc:
            raise _BadRequest(str(exc)) from exc
        except HrvStreamError as exc:
            log.warning("alert settings could not be saved: %s", exc)
            return _json_error(503, "the settings could not be saved; try again shortly")
        return _json({"patient": patient, **settings})

    # -- API: admin ------------------------------------------------------------------------

    async def api_users(self, request: web.Request, auth: _Auth) -> web.StreamResponse:
        users = self.accounts.users()
        return _json(
            {
                "users": [_user_json(u) for u in users],
                "patients": sorted(self._known_patients()),
            }
        )

    async def _assignment(self, request: web.Request, assign: bool) -> web.StreamResponse:
        username = request.match_info["username"]
        patient = request.match_info["patient"]
        if not is_valid_patient(patient):
            raise _BadRequest(
                "invalid patient code: 2-64 characters a-z, 0-9, '_' or '-', "
                "starting with a letter or digit"
            )
        try:
            if assign:
                self.accounts.assign(username, patient)
            else:
                self.accounts.unassign(username, patient)
        except UnknownUser:
            return _json_error(404, "no such user")
        except AccountError as exc:
            raise _BadRequest(str(exc)) from exc
        user = self.accounts.user(username)
        if user is None:
            return _json_error(404, "no such user")
        return _json({"user": _user_json(user)})

    async def api_assign(self, request: web.Request, auth: _Auth) -> web.StreamResponse:
        return await self._assignment(request, assign=True)

    async def api_unassign(self, request: web.Request, auth: _Auth) -> web.StreamResponse:
        return await self._assignment(request, assign=False)


class _NotFound(web.HTTPNotFound):
    """A patient the user may not see, or that does not exist: the same 404."""

    def __init__(self) -> None:
        super().__init__(text=dumps({"error": "not found"}), content_type="application/json")


def _tile_order(tile: Mapping[str, Any]) -> tuple[int, int, str]:
    """Patients with open alerts first (highest severity first), then by code."""
    alerts: list[dict[str, Any]] = tile["open_alerts"]
    rank = max((_SEVERITY_RANK.get(a["severity"], 0) for a in alerts), default=0)
    return (0 if alerts else 1, -rank, tile["patient"])


def _open_alert_group(alert: AlertMessage) -> dict[str, Any]:
    """An open alert from the engine, shaped like :func:`group_alerts` output."""
    shaped = alert_json(alert)
    acked = alert.acknowledged_by is not None
    return {
        "alert_id": alert.alert_id,
        "patient": alert.patient,
        "rule": alert.rule,
        "severity": alert.severity,
        "raised_unix_s": alert.t_unix_s,
        "last_unix_s": alert.t_unix_s,
        "state": alert.state,
        "explanation": shaped["explanation"],
        "acknowledged": {"by": alert.acknowledged_by, "note": alert.note, "t_unix_s": None}
        if acked
        else None,
        "resolved_unix_s": alert.t_unix_s if alert.state == "resolved" else None,
        "open": True,
        "events": [shaped],
    }


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body (``{}`` when empty); :class:`_BadRequest` otherwise."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise _BadRequest(f"the body is larger than {MAX_BODY_BYTES} bytes")
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise _BadRequest(f"the body is larger than {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return {}
    try:
        obj = json.loads(raw)
    except ValueError:
        raise _BadRequest("the body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise _BadRequest("the body must be a JSON object")
    return obj


def _note(value: object) -> str | None:
    """An acknowledgement note: trimmed text of at most 500 characters, or ``None``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise _BadRequest("note must be text")
    note = value.strip()
    if not note:
        return None
    if len(note) > MAX_NOTE_CHARS:
        raise _BadRequest(f"the note is longer than {MAX_NOTE_CHARS} characters")
    try:
        note.encode("utf-8")
    except UnicodeEncodeError:
        raise _BadRequest("the note is not valid text") from None
    return note
