"""A TCP proxy on loopback to break the network between a client and the broker.

Point the client at ``proxy.port`` instead of the broker's port, then:

- :meth:`TcpProxy.cut` closes every connection at once (both sides get a reset) and
  closes new ones right after accepting them: a link that drops and stays down;
- :meth:`TcpProxy.stall` keeps connections open but forwards nothing in either
  direction, and holds new connections without reaching the broker: a dead network with
  no FIN or RST, where only keepalives notice. What the two sides send meanwhile is held
  like TCP segments in flight; if a side closes its end during the stall, the other side
  never learns until the restore, when the connection is reset;
- :meth:`TcpProxy.restore` forwards again: held bytes are delivered in order (as TCP
  retransmission would), held new connections reach the broker.

The proxy runs its own event loop in a daemon thread, so synchronous and asyncio tests
use it alike; the methods return once the change is in effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

__all__ = ["Mode", "TcpProxy"]

Mode = Literal["forward", "cut", "stall"]
T = TypeVar("T")
_CHUNK = 65536
_UP, _DOWN = 0, 1  # client -> target, target -> client


@dataclass(eq=False)
class _Conn:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    held: tuple[list[bytes], list[bytes]] = field(default_factory=lambda: ([], []))
    dead: bool = False  # a side closed during a stall: reset both at the restore
    closed: bool = False  # closed in order (FIN after the buffered bytes)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def writer(self, direction: int) -> asyncio.StreamWriter | None:
        return self.upstream if direction == _UP else self.client

    def abort(self) -> None:
        if not self.closed:
            for w in (self.client, self.upstream):
                if w is not None:
                    w.transport.abort()
        self.done.set()

    def close(self) -> None:
        for w in (self.client, self.upstream):
            if w is not None:
                w.close()
        self.closed = True
        self.done.set()

    def flush(self, direction: int) -> None:
        w = self.writer(direction)
        if w is not None and not w.is_closing():
            for chunk in self.held[direction]:
                w.write(chunk)
            self.held[direction].clear()


class TcpProxy:
    """Forward ``listen_host:port`` to ``target_host:target_port``, with fault switches.

    Parameters
    ----------
    target_host : str
        Where to forward (the broker's address).
    target_port : int
        The broker's port.
    listen_host : str
        Address to listen on.
    listen_port : int
        Port to listen on; 0 for a free one (see :attr:`port`).

    Notes
    -----
    If the target refuses a connection (broker down), the proxy closes the client's
    connection right after accepting it, so the client sees a closed connection rather
    than "connection refused".
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = listen_host
        self._listen_port = listen_port
        self._mode: Mode = "forward"
        self._conns: set[_Conn] = set()
        self._accepted = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._forwarding: asyncio.Event | None = None

    # -- public API ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port clients connect to."""
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def mode(self) -> Mode:
        """``"forward"``, ``"cut"`` or ``"stall"``."""
        return self._mode

    @property
    def active_connections(self) -> int:
        """Connections currently open through the proxy (held ones included)."""
        return len(self._conns)

    @property
    def accepted(self) -> int:
        """Connections accepted since the start (refused ones during a cut included)."""
        return self._accepted

    def url(self, user: str | None = None, *, tls: bool = False) -> str:
        """``mqtt://[user@]host:port`` (``mqtts`` with ``tls``) pointing at the proxy.

        Parameters
        ----------
        user : str, optional
            User name for the URL.
        tls : bool
            ``mqtts`` scheme (the proxy forwards TLS untouched; the certificate is
            for 127.0.0.1, which is also the proxy's address).

        Returns
        -------
        str
            The URL, without a password.
        """
        who = f"{user}@" if user else ""
        return f"{'mqtts' if tls else 'mqtt'}://{who}{self.host}:{self.port}"

    def start(self) -> Self:
        """Start the loop thread and listen.

        Returns
        -------
        TcpProxy
            ``self``.
        """
        if self._thread is not None:
            raise RuntimeError("the proxy is already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"TcpProxy->{self.target_port}", daemon=True
        )
        self._thread.start()
        self._call(self._start())
        return self

    def cut(self) -> None:
        """Reset every connection now and close new ones as soon as they are accepted."""
        self._call(self._set_mode("cut"))

    def stall(self) -> None:
        """Stop forwarding but keep connections open (and hold new ones)."""
        self._call(self._set_mode("stall"))

    def restore(self) -> None:
        """Forward again; deliver what was held during a stall."""
        self._call(self._set_mode("forward"))

    def close(self) -> None:
        """Stop listening, reset every connection, stop the thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if not loop.is_closed() and loop.is_running():
            with contextlib.suppress(Exception):
                self._call(self._shutdown())
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        if not loop.is_running():
            loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self._server is not None else "not started"
        return (
            f"<TcpProxy {where} -> {self.target_host}:{self.target_port} {self._mode}, "
            f"{len(self._conns)} open>"
        )

    # -- in the proxy's loop ------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the proxy is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _start(self) -> None:
        self._forwarding = asyncio.Event()
        self._forwarding.set()
        self._server = await asyncio.start_server(self._handle, self.host, self._listen_port)

    def _cut(self) -> bool:
        return self._mode == "cut"  # a method: the mode changes while a handler awaits

    async def _set_mode(self, mode: Mode) -> None:
        assert self._forwarding is not None
        if mode == "cut":
            for c in list(self._conns):
                c.abort()
        elif mode == "forward":
            for c in list(self._conns):
                if c.dead:
                    c.abort()
                else:
                    c.flush(_UP)
                    c.flush(_DOWN)
        self._mode = mode
        if mode == "forward":
            self._forwarding.set()
        else:
            self._forwarding.clear()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for c in list(self._conns):
            c.abort()
            for t in c.tasks:
                t.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._accepted += 1
        if self._mode == "cut":
            writer.transport.abort()
            return
        assert self._forwarding is not None
        conn = _Conn(client=writer)
        self._conns.add(conn)
        try:
            conn.tasks.add(asyncio.create_task(self._pipe(conn, reader, _UP)))
            # During a stall a new connection waits here: the broker must not see it.
            waiter = asyncio.create_task(self._forwarding.wait())
            stopper = asyncio.create_task(conn.done.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
            if conn.done.is_set() or conn.dead:
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                return
            conn.upstream = up_writer
            if conn.done.is_set() or conn.dead or self._cut():
                return
            if self._mode == "forward":
                conn.flush(_UP)
            conn.tasks.add(asyncio.create_task(self._pipe(conn, up_reader, _DOWN)))
            await conn.done.wait()
        finally:
            conn.abort()
            for t in conn.tasks:
                t.cancel()
            self._conns.discard(conn)

    async def _pipe(self, conn: _Conn, reader: asyncio.StreamReader, direction: int) -> None:
        """Copy one direction; hold the bytes while not forwarding."""
        while True:
            try:
                data = await reader.read(_CHUNK)
            except OSError:
                data = b""
            dst = conn.writer(direction)
            forwarding = self._mode == "forward" and dst is not None
            if not data:
                if forwarding:
                    conn.close()  # an orderly close: buffered bytes, then FIN both ways
                else:
                    conn.dead = True
                    conn.held[direction].clear()
                return
            if forwarding:
                assert dst is not None
                dst.write(data)
                try:
                    await dst.drain()
                except OSError:
                    conn.abort()
                    return
            else:
                conn.held[direction].append(data)
