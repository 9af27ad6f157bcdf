"""Where an agent's notifications come from, when it is not a BLE strap.

:class:`RecordSource` plays recorded notifications into an agent with the same interface
as :class:`hrvstream.adapters.ble.StrapLink` (``run``, ``stop``, ``target``), on the
recording's time axis at ``speed`` (``None``: as fast as possible). ``replay --broker``
and load tests use it to drive many patients without a BLE stack per stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from hrvstream.adapters.ble import StrapEvent, StrapEventKind
from hrvstream.pipeline import Record
from hrvstream.protocol.capture import CaptureEvent, Notification
from hrvstream.protocol.heart_rate import HEART_RATE_MEASUREMENT_UUID
from hrvstream.recordings.capture_reader import LINK_LOST_EVENTS


class RecordSource:
    """Recorded notifications played into ``on_notification(t, payload)``.

    ``t`` is the record's time plus ``t0`` (the link clock an agent would see); link-loss
    events in a capture are reported as ``DISCONNECTED`` then ``CONNECTED`` events.
    """

    def __init__(
        self,
        target: str,
        records: Sequence[Record],
        *,
        on_notification: Callable[[float, bytes], None],
        on_event: Callable[[StrapEvent], None] | None = None,
        speed: float | None = 1.0,
        t0: float = 0.0,
        start_after: asyncio.Event | None = None,
        **_: Any,
    ) -> None:
        self.target = target
        self.records = records
        self._on_notification = on_notification
        self._on_event = on_event
        self.speed = speed
        self.t0 = t0
        self._stop = asyncio.Event()
        self.done = asyncio.Event()
        self.notifications = 0
        self._start_after = start_after

    def stop(self) -> None:
        """End :meth:`run` early."""
        self._stop.set()

    def _event(self, kind: StrapEventKind, t: float) -> None:
        if self._on_event is not None:
            self._on_event(StrapEvent(kind=kind, t_s=t, strap=self.target))

    async def run(self) -> None:
        """Play every record, paced by ``speed``; then set :attr:`done`.

        With ``start_after``, playing waits for that event (``replay --broker`` waits for
        the first connection, so that a fast replay is not all spooled "backlog").
        """
        if self._start_after is not None:
            stopper = asyncio.ensure_future(self._stop.wait())
            starter = asyncio.ensure_future(self._start_after.wait())
            await asyncio.wait({stopper, starter}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            starter.cancel()
            if self._stop.is_set():
                self.done.set()
                return
        loop = asyncio.get_running_loop()
        start = loop.time()
        first_t = self.records[0].t_s if self.records else 0.0
        self._event(StrapEventKind.CONNECTED, self.t0 + first_t)
        for i, rec in enumerate(self.records):
            if self._stop.is_set():
                break
            if self.speed is not None:
                delay = start + (rec.t_s - first_t) / self.speed - loop.time()
                if delay > 0:
                    try:
                        async with asyncio.timeout(delay):
                            await self._stop.wait()
                        break
                    except TimeoutError:
                        pass
            elif i % 256 == 0:
                await asyncio.sleep(0)  # let the sender run
            t = self.t0 + rec.t_s
            if isinstance(rec, Notification):
                if rec.uuid == HEART_RATE_MEASUREMENT_UUID:
                    self.notifications += 1
                    self._on_notification(t, rec.payload)
            elif isinstance(rec, CaptureEvent) and rec.event in LINK_LOST_EVENTS:
                self._event(StrapEventKind.DISCONNECTED, t)
                self._event(StrapEventKind.CONNECTED, t)
        self.done.set()
        await self._stop.wait()
