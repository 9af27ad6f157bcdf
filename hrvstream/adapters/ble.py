"""Chest straps over BLE with bleak: find them, hold on to them for days, hand on every byte.

The only module of the agent that talks to bleak. It knows nothing about HRV: each
Heart Rate Measurement notification is handed on as ``(arrival time, payload)``, and
what happens to the link is reported as :class:`StrapEvent`\\ s.

- :func:`scan` lists devices advertising the Heart Rate Service (0x180D).
- :class:`StrapLink` finds one strap by address or name, connects with
  ``bleak-retry-connector`` (its retries handle the transient BlueZ errors), reads the
  battery level and body sensor location, subscribes to 0x2A37 and, whenever the link
  drops, reconnects with exponential backoff. It reports a strap that stays connected but
  stops notifying (a Polar H10 off the chest) and sensor-contact loss, and drops and
  re-establishes a link that stays silent too long.
- :func:`run_straps` holds several straps at once, one task each, so that one bad strap
  cannot stall another.

Both bleak classes take a ``backend`` for tests and replays: the Bumble virtual radio in
:mod:`hrvstream.adapters.bleak_bumble` plugs in there, below bleak's public API.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import BaseBleakScanner
from bleak.exc import BleakError
from bleak_retry_connector import BleakClientWithServiceCache, establish_connection

from hrvstream.adapters.virtual_clock import Clock, SystemClock
from hrvstream.errors import HrvStreamError
from hrvstream.protocol.heart_rate import (
    BATTERY_LEVEL_UUID,
    BODY_SENSOR_LOCATION_UUID,
    HEART_RATE_MEASUREMENT_UUID,
    HEART_RATE_SERVICE_UUID,
    HeartRateParseError,
    parse_body_sensor_location,
    parse_heart_rate_measurement,
)

log = logging.getLogger(__name__)

NotificationHandler = Callable[[float, bytes], None]


class BleError(HrvStreamError):
    """A Bluetooth operation failed in a way the user has to act on."""


@dataclass(frozen=True, slots=True)
class StrapFound:
    """A device advertising the Heart Rate Service."""

    name: str | None
    address: str
    rssi: int | None


class StrapEventKind(enum.StrEnum):
    """What can happen to a strap's link."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    RECONNECTING = "reconnecting"
    NOT_FOUND = "not_found"
    SILENT = "silent"
    NOTIFYING = "notifying"
    CONTACT_LOST = "contact_lost"
    CONTACT_RESTORED = "contact_restored"


@dataclass(frozen=True, slots=True)
class StrapEvent:
    """One thing that happened to a strap, at ``t_s`` on the link's clock."""

    kind: StrapEventKind
    t_s: float
    strap: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """Timing of a :class:`StrapLink`.

    Attributes
    ----------
    scan_timeout_s:
        How long to look for the strap before backing off.
    silence_s:
        No notification for this long while connected: report ``SILENT``.
    silent_reconnect_s:
        Still silent after this long: drop the link and reconnect (some stacks keep a
        dead link up for minutes; a Polar H10 drops it itself after leaving the chest).
    backoff_initial_s, backoff_max_s:
        Exponential backoff between failed attempts; reset after a good connection.
    """

    scan_timeout_s: float = 10.0
    silence_s: float = 10.0
    silent_reconnect_s: float = 60.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 60.0


async def scan(
    timeout_s: float = 5.0, *, backend: type[BaseBleakScanner] | None = None
) -> list[StrapFound]:
    """Devices advertising the Heart Rate Service, strongest signal first."""
    try:
        found = await BleakScanner.discover(
            timeout=timeout_s,
            return_adv=True,
            service_uuids=[HEART_RATE_SERVICE_UUID],
            **_backend_kwargs(backend),
        )
    except BleakError as exc:
        raise BleError(f"cannot scan for straps: {exc}") from exc
    straps = [
        StrapFound(name=adv.local_name or dev.name, address=dev.address, rssi=adv.rssi)
        for dev, adv in found.values()
        if HEART_RATE_SERVICE_UUID in [u.lower() for u in adv.service_uuids]
    ]
    straps.sort(key=lambda s: -(s.rssi if s.rssi is not None else -999))
    return straps


def _backend_kwargs(backend: type[BaseBleakScanner] | None) -> dict[str, Any]:
    """``backend=`` for bleak's scanner calls, only when one is given."""
    return {} if backend is None else {"backend": backend}


def _looks_like_address(target: str) -> bool:
    parts = target.split(":")
    hexdigits = set("0123456789abcdefABCDEF")
    if len(parts) == 6 and all(len(p) == 2 and set(p) <= hexdigits for p in parts):
        return True
    # CoreBluetooth identifies devices by UUID
    return len(target) == 36 and target.count("-") == 4


class StrapLink:
    """One strap, held connected for as long as :meth:`run` runs.

    Parameters
    ----------
    target:
        The strap's address (``AA:BB:...``, or a CoreBluetooth UUID) or its advertised
        name.
    on_notification:
        Called with ``(clock.now(), payload)`` inside bleak's notification callback,
        for every Heart Rate Measurement notification, malformed or not.
    on_event:
        Called with every :class:`StrapEvent`.
    clock:
        Where arrival times come from (the system clock; a virtual clock in replays).
    settings:
        Timeouts and backoff.
    scanner_backend, client_backend:
        bleak backends (``None``: the platform's own).
    """

    def __init__(
        self,
        target: str,
        *,
        on_notification: NotificationHandler,
        on_event: Callable[[StrapEvent], None] | None = None,
        clock: Clock | None = None,
        settings: LinkSettings | None = None,
        scanner_backend: type[BaseBleakScanner] | None = None,
        client_backend: type[BaseBleakClient] | None = None,
    ) -> None:
        self.target = target
        self._on_notification = on_notification
        self._on_event = on_event
        self.clock: Clock = clock or SystemClock()
        self.settings = settings or LinkSettings()
        self._scanner_backend = scanner_backend
        self._client_backend = client_backend
        self._last_notification = 0.0
        self._loop_last: float = 0.0
        self._contact: bool | None = None
        self._silent = False
        self.battery_pct: int | None = None
        self.body_location: str | None = None
        self.device_name: str | None = None
        self.address: str | None = None
        self.connections = 0
        self.notifications = 0
        self._stopping = asyncio.Event()
        self._failed = asyncio.Event()
        self.handler_error: BaseException | None = None

    def _handler_failed(self, exc: BaseException) -> None:
        """A callback of ours raised (a full disk, say): end the link and report it."""
        if self.handler_error is None:
            self.handler_error = exc
            log.debug("strap %s: handler failed: %r", self.target, exc)
        self._failed.set()

    def stop(self) -> None:
        """Ask :meth:`run` to disconnect cleanly and return (instead of cancelling it)."""
        self._stopping.set()

    # -- events ----------------------------------------------------------------------
    def _emit(self, kind: StrapEventKind, **detail: Any) -> None:
        event = StrapEvent(kind=kind, t_s=self.clock.now(), strap=self.target, detail=detail)
        log.info("strap %s: %s %s", self.target, kind.value, detail or "")
        if self._on_event is not None and self.handler_error is None:
            try:
                self._on_event(event)
            except Exception as exc:
                self._handler_failed(exc)

    # -- the loop --------------------------------------------------------------------
    async def run(self) -> None:
        """Find, connect, stream and reconnect until :meth:`stop` (or cancellation).

        Errors of a session are logged and answered with a reconnect. An exception from
        ``on_notification`` or ``on_event`` (the caller's own failure, such as a full disk)
        ends the link and is raised from here.
        """
        delay = self.settings.backoff_initial_s
        attempt = 0
        while not self._stopping.is_set() and self.handler_error is None:
            try:
                streamed = await self._session()
            except asyncio.CancelledError:
                raise
            except (BleakError, TimeoutError, OSError, EOFError) as exc:
                log.warning("strap %s: %s", self.target, exc)
                streamed = False
            except Exception:
                log.exception("strap %s: unexpected error; retrying", self.target)
                streamed = False
            if self._stopping.is_set() or self.handler_error is not None:
                break
            if streamed:
                delay = self.settings.backoff_initial_s
                attempt = 0
            attempt += 1
            self._emit(StrapEventKind.RECONNECTING, attempt=attempt, delay_s=delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            delay = min(delay * 2, self.settings.backoff_max_s)
        if self.handler_error is not None:
            raise self.handler_error

    async def _unless_stopped(self, coro: Any) -> Any:
        """Await ``coro`` unless :meth:`stop` comes first (then cancel it, return None)."""
        task = asyncio.ensure_future(coro)
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, BleakError, TimeoutError, OSError):
            await task
        return None

    async def _find(self) -> BLEDevice | None:
        timeout = self.settings.scan_timeout_s
        kwargs = _backend_kwargs(self._scanner_backend)
        if _looks_like_address(self.target):
            return await BleakScanner.find_device_by_address(self.target, timeout=timeout, **kwargs)
        return await BleakScanner.find_device_by_name(self.target, timeout=timeout, **kwargs)

    async def _session(self) -> bool:
        """One connection, from finding the strap to losing it; True if data flowed."""
        device = await self._unless_stopped(self._find())
        if device is None:
            if not self._stopping.is_set():
                self._emit(StrapEventKind.NOT_FOUND)
            return False
        lost = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_disconnect(_: BleakClient) -> None:
            loop.call_soon_threadsafe(lost.set)

        if self._client_backend is not None:
            client = await establish_connection(
                BleakClient,
                device,
                device.name or self.target,
                on_disconnect,
                max_attempts=3,
                backend=self._client_backend,
            )
        else:
            client = await establish_connection(
                BleakClientWithServiceCache,
                device,
                device.name or self.target,
                on_disconnect,
                max_attempts=3,
            )
        self.connections += 1
        self.device_name = device.name
        self.address = device.address
        got_data = False
        try:
            await self._read_info(client)
            self._last_notification = self.clock.now()
            self._loop_last = loop.time()
            self._silent = False
            counted = self.notifications

            def on_data(_: BleakGATTCharacteristic, data: bytearray) -> None:
                self._handle(bytes(data), loop.time())

            self._emit(
                StrapEventKind.CONNECTED,
                name=device.name,
                battery_pct=self.battery_pct,
                body_location=self.body_location,
            )
            await client.start_notify(HEART_RATE_MEASUREMENT_UUID, on_data)
            await self._watch(lost, loop)
            got_data = self.notifications > counted
        finally:
            if client.is_connected:
                with contextlib.suppress(BleakError, TimeoutError, OSError):
                    await client.disconnect()
            self._emit(StrapEventKind.DISCONNECTED, notifications=self.notifications)
        return got_data

    async def _read_info(self, client: BleakClient) -> None:
        try:
            self.battery_pct = (await client.read_gatt_char(BATTERY_LEVEL_UUID))[0]
        except (BleakError, IndexError) as exc:
            log.debug("strap %s: no battery level (%s)", self.target, exc)
        try:
            raw = await client.read_gatt_char(BODY_SENSOR_LOCATION_UUID)
            self.body_location = parse_body_sensor_location(bytes(raw)).name.lower()
        except (BleakError, HrvStreamError, IndexError, ValueError) as exc:
            log.debug("strap %s: no body sensor location (%s)", self.target, exc)

    async def _watch(self, lost: asyncio.Event, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for the link to drop; report silence, end a link silent too long."""
        s = self.settings
        while not lost.is_set() and not self._stopping.is_set() and not self._failed.is_set():
            quiet = loop.time() - self._loop_last
            if not self._silent and quiet >= s.silence_s:
                self._silent = True
                self._emit(StrapEventKind.SILENT, quiet_s=round(quiet, 1))
            if quiet >= s.silent_reconnect_s:
                log.warning("strap %s: silent for %.0f s; reconnecting", self.target, quiet)
                return
            wait = (s.silence_s if not self._silent else s.silent_reconnect_s) - quiet
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.05)):
                    await _first(lost, self._stopping, self._failed)

    def _handle(self, payload: bytes, loop_t: float) -> None:
        now = self.clock.now()
        self.notifications += 1
        self._last_notification = now
        self._loop_last = loop_t
        if self._silent:
            self._silent = False
            self._emit(StrapEventKind.NOTIFYING)
        if self.handler_error is not None:
            return
        try:
            self._on_notification(now, payload)
        except Exception as exc:
            self._handler_failed(exc)
            return
        try:
            contact = parse_heart_rate_measurement(payload).sensor_contact_detected
        except HeartRateParseError:
            return  # counted where it is decoded
        if contact is None:
            return
        if contact is False and self._contact is not False:
            self._emit(StrapEventKind.CONTACT_LOST)
        elif contact is True and self._contact is False:
            self._emit(StrapEventKind.CONTACT_RESTORED)
        self._contact = contact


async def _first(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def run_straps(links: Sequence[StrapLink]) -> None:
    """Hold several straps at once, one task each, until cancelled."""
    async with asyncio.TaskGroup() as group:
        for link in links:
            group.create_task(link.run(), name=f"strap {link.target}")
