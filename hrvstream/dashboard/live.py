"""Live updates for the dashboard: the server's messages, fanned out over WebSockets.

The server calls :meth:`LiveHub.observe` (the
:class:`~hrvstream.dashboard.source.LiveObserver` seam) with every message it handled.
``observe`` never blocks and never waits on a browser: it encodes the message once and
appends it to each connected client's bounded queue. One sender task per client drains
its queue, checks at send time that the client's user may still see each patient
(:meth:`Accounts.can_see <hrvstream.dashboard.accounts.Accounts.can_see>`: assignments
can change while a page is open) and writes the messages to the socket. A client whose
queue overflows (a stalled browser or link) is disconnected with close code
:data:`CLOSE_TOO_SLOW`; the page reconnects and re-fetches its state, which is cheaper
and more honest than skipping messages silently.

Messages (server -> browser, one JSON object per WebSocket text message; see
``docs/dashboard.md``): ``hello``, ``status``, ``metrics``, ``assessment``, ``alert``,
``beats`` (only for a patient the client watches), ``watching``, ``error``, ``pong``.
Browser -> server: ``{"type": "watch", "patient": p}``, ``{"type": "unwatch",
"patient": p}``, ``{"type": "ping"}``.

The session behind a socket is checked every :data:`SESSION_CHECK_S` seconds (and
immediately on sign-out through :meth:`LiveHub.end_session`); when it has ended the
socket is closed with :data:`CLOSE_SESSION_ENDED`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from aiohttp import WSCloseCode, WSMsgType, web

from hrvstream.dashboard.accounts import Accounts, Session
from hrvstream.dashboard.source import DashboardSource
from hrvstream.dashboard.views import (
    alert_json,
    beats_message_json,
    dumps,
    metrics_message_json,
    status_json,
)
from hrvstream.protocol.messages import (
    AlertMessage,
    BeatsMessage,
    Message,
    MetricsMessage,
    StatusMessage,
    is_valid_patient,
)

__all__ = [
    "CLOSE_SESSION_ENDED",
    "CLOSE_TOO_SLOW",
    "HEARTBEAT_S",
    "MAX_WATCHED",
    "SESSION_CHECK_S",
    "LiveHub",
]

log = logging.getLogger(__name__)

#: WebSocket close code: the session expired or was signed out (the page goes to /login).
CLOSE_SESSION_ENDED: Final = 4001
#: WebSocket close code: the client fell :attr:`LiveHub.queue_max` messages behind.
CLOSE_TOO_SLOW: Final = 4002
#: Seconds between checks that a socket's session is still live.
SESSION_CHECK_S: Final = 5.0
#: Seconds between WebSocket pings (aiohttp's ``heartbeat``): a dead peer is found
#: within about twice this.
HEARTBEAT_S: Final = 15.0
#: Most patients one socket may watch (beats are sent only for watched patients).
MAX_WATCHED: Final = 16
#: Largest message a browser may send, bytes.
MAX_CLIENT_MESSAGE_BYTES: Final = 4096


class _Event(NamedTuple):
    """One encoded message for the browsers."""

    patient: str | None  # None: not patient data (replies), always sent
    text: str
    watch_only: bool  # beats: only to clients watching the patient


@dataclass(eq=False)
class _Client:
    ws: web.WebSocketResponse
    token: str
    username: str
    queue: deque[_Event] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    watching: set[str] = field(default_factory=set)
    closing: tuple[int, str] | None = None


class LiveHub:
    """Fans the server's messages out to the dashboard's WebSocket clients.

    Implements :class:`~hrvstream.dashboard.source.LiveObserver`. Create it through
    :func:`hrvstream.dashboard.app.setup_dashboard`; call :meth:`observe` from the
    event loop that serves the dashboard.

    Parameters
    ----------
    accounts:
        Sessions and who may see whom.
    source:
        The server side (for the assessment sent after each metrics message).
    queue_max:
        Messages a client may fall behind before it is disconnected.
    session_check_s:
        Seconds between checks of a socket's session.
    max_clients:
        Sockets served at once; more are refused with 503.
    clock:
        Wall-clock time (for ``hello.now_unix_s``).
    """

    def __init__(
        self,
        *,
        accounts: Accounts,
        source: DashboardSource,
        queue_max: int = 1000,
        session_check_s: float = SESSION_CHECK_S,
        max_clients: int = 500,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if queue_max < 1:
            raise ValueError(f"queue_max must be >= 1, got {queue_max}")
        self.accounts = accounts
        self.source = source
        self.queue_max = queue_max
        self.session_check_s = session_check_s
        self.max_clients = max_clients
        self._clock = clock
        self._clients: set[_Client] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_seen: dict[str, float] = {}
        self._assessment_due: set[str] = set()
        self._closed = False
        #: Clients disconnected for falling behind (for tests and logs).
        self.overflows = 0

    # -- the LiveObserver side ------------------------------------------------------------

    def observe(self, message: Message) -> None:
        """Take one message the server handled; never blocks.

        Beats, metrics, status and alert messages go to the clients (filtered per user
        when sent); an alert acknowledgement is not forwarded (the alert message with
        state ``acknowledged`` that follows it is). After a metrics message, the
        patient's assessment is read from the source on the next loop iteration (so
        the alert engine, fed by the same message, is ahead of it) and sent too.
        """
        patient = message.patient
        seen = _seen_time(message)
        if seen is not None and seen > self._last_seen.get(patient, float("-inf")):
            self._last_seen[patient] = seen
        elif patient not in self._last_seen:
            self._last_seen[patient] = float("-inf")
        if not self._clients:
            return
        if isinstance(message, BeatsMessage):
            if not message.t_s:
                return
            self._broadcast(_event("beats", patient, beats_message_json(message), watch_only=True))
        elif isinstance(message, MetricsMessage):
            self._broadcast(_event("metrics", patient, metrics_message_json(message)))
            self._schedule_assessment(patient)
        elif isinstance(message, StatusMessage):
            self._broadcast(_event("status", patient, status_json(message)))
        elif isinstance(message, AlertMessage):
            self._broadcast(_event("alert", patient, alert_json(message)))

    def known_patients(self) -> set[str]:
        """Every patient a message was observed for since start."""
        return set(self._last_seen)

    def last_seen(self, patient: str) -> float | None:
        """Time of the newest data observed for ``patient`` (beat, window, status)."""
        t = self._last_seen.get(patient)
        return None if t is None or t == float("-inf") else t

    @property
    def client_count(self) -> int:
        """WebSocket clients connected now."""
        return len(self._clients)

    def _schedule_assessment(self, patient: str) -> None:
        if patient in self._assessment_due:
            return
        self._assessment_due.add(patient)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._send_assessment(patient)
            return
        loop.call_soon(self._send_assessment, patient)

    def _send_assessment(self, patient: str) -> None:
        self._assessment_due.discard(patient)
        if not self._clients:
            return
        try:
            assessment = self.source.assessment(patient)
            if assessment is None:
                return
            event = _event("assessment", patient, dict(assessment))
        except Exception:
            log.exception("reading or encoding an assessment for the dashboard failed")
            return
        self._broadcast(event)

    def _broadcast(self, event: _Event) -> None:
        for client in self._clients:
            if event.watch_only and event.patient not in client.watching:
                continue
            self._put(client, event)

    def _put(self, client: _Client, event: _Event) -> None:
        if client.closing is not None:
            return
        if len(client.queue) >= self.queue_max:
            self.overflows += 1
            client.queue.clear()
            client.closing = (CLOSE_TOO_SLOW, "too slow: reconnect and reload")
            log.info("a dashboard client fell %d messages behind: disconnecting it", self.queue_max)
        else:
            client.queue.append(event)
        client.wake.set()

    # -- sessions ----------------------------------------------------------------------

    def end_session(self, token: str) -> None:
        """Close the sockets of a session that was signed out."""
        for client in self._clients:
            if client.token == token and client.closing is None:
                client.closing = (CLOSE_SESSION_ENDED, "signed out")
                client.queue.clear()
                client.wake.set()

    async def close(self) -> None:
        """Close every socket (server shutdown); later connections are refused."""
        self._closed = True
        for client in list(self._clients):
            client.closing = (WSCloseCode.GOING_AWAY, "server shutting down")
            client.queue.clear()
            client.wake.set()
        tasks = list(self._tasks)
        if tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await asyncio.gather(*tasks, return_exceptions=True)
        for client in list(self._clients):
            with contextlib.suppress(Exception):
                await client.ws.close(code=WSCloseCode.GOING_AWAY)

    # -- the WebSocket endpoint ----------------------------------------------------------

    async def serve(self, request: web.Request, session: Session) -> web.StreamResponse:
        """Serve one authenticated WebSocket (the caller checked cookie and Origin)."""
        if self._closed:
            raise web.HTTPServiceUnavailable(text="shutting down")
        if len(self._clients) >= self.max_clients:
            raise web.HTTPServiceUnavailable(text="too many live connections")
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=MAX_CLIENT_MESSAGE_BYTES)
        await ws.prepare(request)
        client = _Client(ws=ws, token=session.token, username=session.username)
        self._clients.add(client)
        self._put(
            client,
            _event(
                "hello",
                None,
                {
                    "username": session.username,
                    "role": session.role,
                    "now_unix_s": self._clock(),
                },
            ),
        )
        sender = asyncio.create_task(self._send_loop(client))
        self._tasks.add(sender)
        sender.add_done_callback(self._tasks.discard)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._on_client_message(client, msg.data)
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            self._clients.discard(client)
            if not sender.done():
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
        return ws

    def _on_client_message(self, client: _Client, data: str) -> None:
        try:
            obj = json.loads(data)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            self._reply(client, {"type": "error", "error": "expected a JSON object"})
            return
        kind = obj.get("type")
        patient = obj.get("patient")
        if kind == "ping":
            self._reply(client, {"type": "pong", "now_unix_s": self._clock()})
        elif kind == "watch":
            if (
                isinstance(patient, str)
                and is_valid_patient(patient)
                and self.accounts.can_see(client.username, patient)
            ):
                if patient not in client.watching and len(client.watching) >= MAX_WATCHED:
                    self._reply(
                        client,
                        {"type": "error", "error": f"watching more than {MAX_WATCHED} patients"},
                    )
                    return
                client.watching.add(patient)
                self._reply(client, {"type": "watching", "patient": patient})
            else:
                shown = patient if isinstance(patient, str) and len(patient) <= 64 else None
                self._reply(client, {"type": "error", "error": "not found", "patient": shown})
        elif kind == "unwatch":
            if isinstance(patient, str):
                client.watching.discard(patient)
        else:
            self._reply(client, {"type": "error", "error": "unknown message type"})

    def _reply(self, client: _Client, obj: dict[str, Any]) -> None:
        self._put(client, _Event(None, dumps(obj), False))

    async def _send_loop(self, client: _Client) -> None:
        loop = asyncio.get_running_loop()
        ws = client.ws
        last_check = loop.time()
        try:
            while True:
                if not client.queue and client.closing is None:
                    client.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.session_check_s):
                            await client.wake.wait()
                if client.closing is None and loop.time() - last_check >= self.session_check_s:
                    last_check = loop.time()
                    if self.accounts.session(client.token, touch=False) is None:
                        client.closing = (CLOSE_SESSION_ENDED, "session ended")
                if client.closing is not None:
                    code, reason = client.closing
                    await ws.close(code=code, message=reason.encode())
                    return
                batch = list(client.queue)
                client.queue.clear()
                patients = {e.patient for e in batch if e.patient is not None}
                visible = {p for p in patients if self.accounts.can_see(client.username, p)}
                for e in batch:
                    if e.patient is None or e.patient in visible:
                        await ws.send_str(e.text)
        except (ConnectionResetError, RuntimeError) as exc:  # the socket went away
            log.debug("dashboard socket closed while sending: %s", exc)
            with contextlib.suppress(Exception):
                await ws.close()


def _event(kind: str, patient: str | None, data: Any, *, watch_only: bool = False) -> _Event:
    obj: dict[str, Any] = {"type": kind}
    if patient is not None:
        obj["patient"] = patient
    obj.update({"data": data} if kind not in ("hello",) else data)
    return _Event(patient, dumps(obj), watch_only)


def _seen_time(message: Message) -> float | None:
    """When the patient's strap was last heard from, by this message."""
    if isinstance(message, BeatsMessage):
        return message.origin_unix_s + message.t_s[-1] if message.t_s else None
    if isinstance(message, MetricsMessage):
        return message.t_unix_s
    if isinstance(message, StatusMessage):
        last = message.last_beat_unix_s
        if message.state == "online":
            return max(message.t_unix_s, last) if last is not None else message.t_unix_s
        return last
    return None
