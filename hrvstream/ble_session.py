"""Wiring of straps to captures and to the beat pipeline (``record``, ``replay --ble``).

A :class:`~hrvstream.adapters.ble.StrapLink` hands every notification on with its
arrival time; here it goes to a :class:`CaptureWriter` (``hrvstream record``) or to a
:class:`~hrvstream.pipeline.BeatPipeline` (``hrvstream replay --ble virtual``, and the
agent). With ``--ble virtual`` the strap is a
:class:`~hrvstream.adapters.virtual_strap.VirtualStrap` on a Bumble radio playing a
recording, and the link's clock is the strap's, so arrival times are the recording's.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from hrvstream import __version__
from hrvstream.adapters.ble import LinkSettings, StrapEvent, StrapEventKind, StrapLink
from hrvstream.errors import HrvStreamError
from hrvstream.pipeline import BeatPipeline, Record
from hrvstream.protocol.capture import (
    CaptureEvent,
    CaptureHeader,
    Notification,
    encode_header,
    encode_record,
)
from hrvstream.protocol.heart_rate import HEART_RATE_MEASUREMENT_UUID

log = logging.getLogger(__name__)

#: Strap events written to a capture file (the others are link housekeeping).
CAPTURED_EVENTS = {
    StrapEventKind.CONNECTED: "connected",
    StrapEventKind.DISCONNECTED: "disconnected",
    StrapEventKind.CONTACT_LOST: "contact_lost",
    StrapEventKind.CONTACT_RESTORED: "contact_restored",
}

#: At most this long between fsyncs of a capture file (each line is flushed anyway).
FSYNC_INTERVAL_S = 0.5


class CaptureWriteError(HrvStreamError):
    """The capture file could not be written (full disk, removed directory ...)."""


class CaptureWriter:
    """Writes a capture file line by line, flushing each line.

    Each line is flushed to the operating system as soon as it is written, and synced
    to the disk at most :data:`FSYNC_INTERVAL_S` after it: at a strap's pace (one
    notification a second) every line is synced before the next arrives, so a crash or a
    power cut loses at most the last line. At replay speed syncs are batched.
    """

    def __init__(self, path: Path, header: CaptureHeader, *, t0: float) -> None:
        self.path = path
        self.t0 = t0
        self.lines = 0
        self._last_sync = 0.0
        self._failed = False
        try:
            self._fh: TextIO = path.open("w", encoding="utf-8", newline="\n")
        except OSError as exc:
            raise CaptureWriteError(f"cannot write {path}: {exc.strerror}") from exc
        self._write(encode_header(header))

    def _write(self, line: str) -> None:
        try:
            self._fh.write(line + "\n")
            self._fh.flush()
            now = time.monotonic()
            if now - self._last_sync >= FSYNC_INTERVAL_S:
                os.fsync(self._fh.fileno())
                self._last_sync = now
        except OSError as exc:
            self._failed = True
            raise CaptureWriteError(
                f"cannot write {self.path}: {exc.strerror}; the {self.lines} lines "
                "before this one are intact"
            ) from exc
        self.lines += 1

    def notification(self, arrival_t_s: float, payload: bytes) -> None:
        """One Heart Rate Measurement notification."""
        self._write(
            encode_record(
                Notification(
                    t_s=max(0.0, arrival_t_s - self.t0),
                    uuid=HEART_RATE_MEASUREMENT_UUID,
                    payload=payload,
                )
            )
        )

    def event(self, event: StrapEvent) -> None:
        """A link event, if it is one captures keep."""
        name = CAPTURED_EVENTS.get(event.kind)
        if name is not None:
            self._write(encode_record(CaptureEvent(t_s=max(0.0, event.t_s - self.t0), event=name)))

    def close(self) -> None:
        """Sync and close the file (after a failed write, just close what is there)."""
        try:
            if not self._failed:
                self._fh.flush()
                os.fsync(self._fh.fileno())
        except OSError as exc:
            self._failed = True
            raise CaptureWriteError(f"cannot write {self.path}: {exc.strerror}") from exc
        finally:
            with contextlib.suppress(OSError):
                self._fh.close()


def capture_header(
    *, device_name: str | None, device_address: str | None, source: str
) -> CaptureHeader:
    """A capture header stamped now."""
    return CaptureHeader(
        started_at=datetime.datetime.now(datetime.UTC),
        source=source,  # type: ignore[arg-type]
        device_name=device_name,
        device_address=device_address,
        software=f"hrvstream {__version__}",
    )


@dataclass
class VirtualSetup:
    """A virtual radio with one strap playing a recording, and how to reach it."""

    link_kwargs: dict[str, object]
    target: str
    name: str
    played: asyncio.Event
    clock_now: Callable[[], float]
    sent: Callable[[], int]


@contextlib.asynccontextmanager
async def virtual_strap(
    records: Iterable[Record], *, speed: float | None, name: str = "Virtual HRM"
) -> AsyncIterator[VirtualSetup]:
    """A Bumble radio with one virtual strap playing ``records``."""
    from hrvstream.adapters.bleak_bumble import VirtualRadio
    from hrvstream.adapters.virtual_strap import VirtualStrap

    async with VirtualRadio() as radio:
        strap = VirtualStrap(radio, records, name=name, speed=speed)
        async with strap:
            yield VirtualSetup(
                link_kwargs={
                    "clock": strap.clock,
                    "scanner_backend": radio.scanner_backend(),
                    "client_backend": radio.client_backend(),
                },
                target=strap.address,
                name=strap.name,
                played=strap.played,
                clock_now=strap.clock.now,
                sent=lambda: strap.notifications_sent + strap.raw_sent,
            )


class _Progress:
    """Counts notifications handed on by a link, and wakes whoever waits for a count."""

    def __init__(self, handler: Callable[[float, bytes], None]) -> None:
        self.handler = handler
        self.count = 0
        self.changed = asyncio.Event()

    def __call__(self, t: float, payload: bytes) -> None:
        self.handler(t, payload)
        self.count += 1
        self.changed.set()


async def _until_played(link: StrapLink, progress: _Progress, vs: VirtualSetup) -> None:
    """Run ``link`` until the virtual strap has played everything and it has arrived."""
    task = asyncio.create_task(link.run(), name=f"strap {link.target}")
    waiter = asyncio.create_task(vs.played.wait())
    try:
        done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # re-raise whatever ended the link (a failed write, say)
        while progress.count < vs.sent() and link.handler_error is None:
            progress.changed.clear()
            try:
                async with asyncio.timeout(10.0):
                    await progress.changed.wait()
            except TimeoutError:
                log.warning(
                    "%d of %d notifications arrived; giving up on the rest",
                    progress.count,
                    vs.sent(),
                )
                break
    finally:
        waiter.cancel()
        await stop_link(link, task)
    if link.handler_error is not None:
        raise link.handler_error


async def stop_link(link: StrapLink, task: asyncio.Task[None], timeout_s: float = 10.0) -> None:
    """Stop a link cleanly (disconnect awaited, not cancelled mid-command), then reap it."""
    link.stop()
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.shield(task)
    except TimeoutError:
        log.warning("strap %s did not stop within %.0f s; cancelling", link.target, timeout_s)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    except Exception as exc:  # the link's own error: callers raise link.handler_error
        log.debug("strap %s ended with %r", link.target, exc)


async def record_virtual(
    records: Iterable[Record], out: Path, *, speed: float | None
) -> CaptureWriter:
    """``record --ble virtual --play FILE``: a recording through the virtual strap to a capture."""
    async with virtual_strap(records, speed=speed) as vs:
        writer = CaptureWriter(
            out,
            capture_header(device_name=vs.name, device_address=vs.target, source="virtual"),
            t0=0.0,
        )
        try:
            progress = _Progress(writer.notification)
            link = StrapLink(
                vs.target,
                on_notification=progress,
                on_event=writer.event,
                settings=LinkSettings(silence_s=30.0, silent_reconnect_s=120.0),
                **vs.link_kwargs,  # type: ignore[arg-type]
            )
            await _until_played(link, progress, vs)
        finally:
            writer.close()
    return writer


async def record_ble(target: str, out: Path, *, duration_s: float | None) -> CaptureWriter:
    """``record --device ADDR|NAME``: a real strap to a capture until stopped."""
    t0 = time.time()
    writer = CaptureWriter(
        out, capture_header(device_name=None, device_address=None, source="ble"), t0=t0
    )
    try:
        link = StrapLink(target, on_notification=writer.notification, on_event=writer.event)
        async with asyncio.timeout(duration_s):
            await link.run()
    except TimeoutError:
        pass
    finally:
        writer.close()
    return writer


async def replay_virtual(
    records: Iterable[Record],
    pipeline: BeatPipeline,
    *,
    speed: float | None,
    on_rows: Callable[[list[dict[str, float]]], None],
) -> None:
    """``replay --ble virtual``: records through the virtual strap, bleak and the pipeline."""

    def on_notification(t: float, payload: bytes) -> None:
        rows = pipeline.notification(t, payload)[1]
        if rows:
            on_rows(rows)

    def on_event(event: StrapEvent) -> None:
        if event.kind is StrapEventKind.DISCONNECTED:
            pipeline.link_lost()

    async with virtual_strap(records, speed=speed) as vs:
        progress = _Progress(on_notification)
        link = StrapLink(
            vs.target,
            on_notification=progress,
            on_event=on_event,
            settings=LinkSettings(silence_s=30.0, silent_reconnect_s=120.0),
            **vs.link_kwargs,  # type: ignore[arg-type]
        )
        await _until_played(link, progress, vs)
    on_rows(pipeline.close())
