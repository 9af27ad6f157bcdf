"""A virtual BLE chest strap: a Bumble peripheral that replays heart rate notifications.

:class:`VirtualStrap` is a real BLE peripheral on Google's Bumble stack, attached to a
:class:`~hrvstream.adapters.bleak_bumble.VirtualRadio`. It advertises its name and the
Heart Rate Service UUID, accepts connections, and serves over real ATT/GATT:

* Heart Rate Service (0x180D): Heart Rate Measurement (0x2A37, notify, with its CCCD),
  Body Sensor Location (0x2A38, read) and Heart Rate Control Point (0x2A39, write;
  ``0x01`` "reset energy expended" is accepted, anything else answers ATT error 0x80,
  "Control Point value not supported");
* Battery Service (0x180F): Battery Level (0x2A19, read and notify);
* Device Information (0x180A): manufacturer, model and firmware strings;
* plus Bumble's GAP (device name) and GATT services.

Playback
--------
The strap plays a sequence of records: capture :class:`~hrvstream.protocol.capture.Notification`
and :class:`~hrvstream.protocol.capture.CaptureEvent` objects, or ``(t_s, payload)``
tuples (Heart Rate Measurement payloads). Playback starts when a client first enables
Heart Rate Measurement notifications and follows the records' times ``t_s``:

``speed`` a positive float
    Notification ``i`` goes out ``(t_i - t_anchor) / speed`` event-loop seconds after the
    anchor (the first record, or the resumption point after a pause). The strap runs its
    :class:`~hrvstream.adapters.virtual_clock.VirtualClock` at the same rate, so a
    receiver's ``clock.now()`` follows the recording's time axis.
``speed=None`` (maximum speed, lockstep)
    No waiting: for each notification the strap sets the clock to the record's ``t_s``,
    sends it, and does not go on until the bleak backend reports that the client's
    notification callback has returned (see
    :class:`~hrvstream.adapters.bleak_bumble.DeliveryLedger`). A receiver that calls
    ``clock.now()`` in its callback therefore reads exactly the recorded time.

Link drops: ``on_drop``
    After :meth:`VirtualStrap.drop_link` (or any loss of the subscribed client) the strap
    advertises again; playback goes on when a client re-enables notifications.
    ``"skip"`` (default, like a real strap): the recording's time keeps running while no
    client listens; records that fall due meanwhile are dropped (counted in
    :attr:`~VirtualStrap.notifications_skipped`), and so are records inside the drop's
    *gap* (``drop_link(gap_s=...)``, or up to the next ``connected`` event for a
    ``disconnected`` event of a capture). ``"pause"``: nothing is lost; the recording's
    time stops at the drop (the clock freezes) and resumes from there on resubscription.
    At maximum speed there is no wall-clock time to miss, so both policies wait for the
    client to come back and only ``"skip"``'s gap removes records.

Cues, as methods or as events in the sequence
    ============================  ==================================================
    method                        event in the sequence (``CaptureEvent.event``)
    ============================  ==================================================
    ``drop_link(gap_s)``          ``disconnected`` (a capture's own link drop; the gap
                                  runs to the next ``connected`` event) or
                                  ``strap_drop`` (``detail``: gap in seconds, optional)
    ``go_silent()``/``resume()``  ``strap_silent`` / ``strap_resume``: stay connected,
                                  send nothing (records consumed meanwhile are counted
                                  in :attr:`~VirtualStrap.notifications_suppressed`)
    ``set_contact(detected)``     ``strap_contact`` (``detail``: ``detected``, ``lost``
                                  or ``passthrough``)
    ``set_battery(pct)``          ``strap_battery`` (``detail``: the percentage)
    ``send_raw(payload)``         a :class:`Notification` record with any bytes: records
                                  are sent as they are unless ``set_contact`` is active
    ============================  ==================================================

    A capture's ``connected``, ``contact_lost``, ``contact_restored`` and ``marker``
    events change nothing: the payloads already carry the contact bits, and replay must
    reproduce them byte for byte. Unknown events are ignored.

RR intervals to notifications
-----------------------------
:func:`hrvstream.protocol.beat_timing.encode_rr_as_notifications` turns an RR series
(milliseconds) into the notification sequence a strap would send; see its docstring for
the exact rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import replace
from typing import Any, Final, Literal, TypeAlias

from bumble import att, core, hci
from bumble.controller import Controller
from bumble.device import AdvertisingType, Connection, Device
from bumble.gatt import (
    GATT_BATTERY_LEVEL_CHARACTERISTIC,
    GATT_BATTERY_SERVICE,
    GATT_BODY_SENSOR_LOCATION_CHARACTERISTIC,
    GATT_HEART_RATE_CONTROL_POINT_CHARACTERISTIC,
    GATT_HEART_RATE_MEASUREMENT_CHARACTERISTIC,
    GATT_HEART_RATE_SERVICE,
    Characteristic,
    CharacteristicValue,
    Service,
)
from bumble.host import Host
from bumble.profiles.device_information_service import DeviceInformationService
from bumble.transport.common import AsyncPipeSink

from hrvstream import __version__
from hrvstream.adapters.bleak_bumble import DeliveryKey, VirtualRadio, format_address
from hrvstream.adapters.virtual_clock import VirtualClock
from hrvstream.protocol.capture import (
    EVENT_CONNECTED,
    EVENT_DISCONNECTED,
    CaptureEvent,
    Notification,
)
from hrvstream.protocol.heart_rate import (
    BATTERY_LEVEL_UUID,
    HEART_RATE_MEASUREMENT_UUID,
    RESET_ENERGY_EXPENDED,
    BodySensorLocation,
    HeartRateParseError,
    encode_heart_rate_measurement,
    parse_heart_rate_measurement,
)

__all__ = [
    "EVENT_STRAP_BATTERY",
    "EVENT_STRAP_CONTACT",
    "EVENT_STRAP_DROP",
    "EVENT_STRAP_RESUME",
    "EVENT_STRAP_SILENT",
    "OnDrop",
    "PlaybackRecord",
    "VirtualStrap",
]

logger = logging.getLogger(__name__)

OnDrop: TypeAlias = Literal["skip", "pause"]
"""What happens to the recording's time while no client listens (see the module doc)."""

PlaybackRecord: TypeAlias = Notification | CaptureEvent | tuple[float, bytes]
"""One item of a playback sequence; a tuple is ``(t_s, heart rate measurement payload)``."""

EVENT_STRAP_DROP: Final = "strap_drop"
"""Cue: drop the link; ``detail`` is the gap in seconds (optional)."""
EVENT_STRAP_SILENT: Final = "strap_silent"
"""Cue: stay connected but stop notifying (a Polar H10 off the chest)."""
EVENT_STRAP_RESUME: Final = "strap_resume"
"""Cue: notify again after ``strap_silent``."""
EVENT_STRAP_CONTACT: Final = "strap_contact"
"""Cue: ``detail`` ``detected``/``lost`` re-encodes the contact bits; ``passthrough`` stops."""
EVENT_STRAP_BATTERY: Final = "strap_battery"
"""Cue: set the battery level; ``detail`` is the percentage."""

_CONTROL_POINT_NOT_SUPPORTED: Final = 0x80
_YIELD_EVERY: Final = 256
_DEFAULT_ADVERTISING_INTERVAL_MS: Final = 100.0
_DEFAULT_MAX_MTU: Final = 247


_CONTACT_DETAILS: Final[dict[str | None, bool | None]] = {
    "detected": True,
    "lost": False,
    "passthrough": None,
    None: None,
}


def _check_cue(index: int, event: CaptureEvent) -> None:
    """Reject a strap cue whose ``detail`` the strap could not act on, before playback."""
    detail = event.detail
    problem: str | None = None
    if event.event == EVENT_STRAP_DROP and detail is not None:
        try:
            gap = float(detail)
        except ValueError:
            gap = math.nan
        if not math.isfinite(gap) or gap < 0:
            problem = "a gap in seconds (finite, >= 0) or no detail"
    elif event.event == EVENT_STRAP_CONTACT and detail not in _CONTACT_DETAILS:
        problem = "'detected', 'lost' or 'passthrough'"
    elif event.event == EVENT_STRAP_BATTERY and not (
        detail is not None and detail.isdigit() and int(detail) <= 100
    ):
        problem = "a battery percentage 0..100"
    if problem is not None:
        raise ValueError(f"record {index}: {event.event} detail must be {problem}, got {detail!r}")


def _normalise(records: Iterable[PlaybackRecord]) -> tuple[Notification | CaptureEvent, ...]:
    out: list[Notification | CaptureEvent] = []
    last_t = -math.inf
    for i, record in enumerate(records):
        item: Notification | CaptureEvent
        if isinstance(record, Notification | CaptureEvent):
            item = record
        elif isinstance(record, tuple) and len(record) == 2:
            t_s, payload = record
            item = Notification(t_s=t_s, uuid=HEART_RATE_MEASUREMENT_UUID, payload=payload)
        else:
            raise TypeError(
                f"record {i} must be a Notification, a CaptureEvent or a (t_s, payload) "
                f"tuple, got {type(record).__name__}"
            )
        if isinstance(item, CaptureEvent):
            _check_cue(i, item)
        if item.t_s < last_t:
            raise ValueError(f"record {i}: t_s goes backwards ({item.t_s!r} after {last_t!r})")
        last_t = item.t_s
        out.append(item)
    return tuple(out)


def _link_gaps(items: Sequence[Notification | CaptureEvent]) -> dict[int, float]:
    """Map the index of each ``disconnected`` event to the time until the next ``connected``."""
    gaps: dict[int, float] = {}
    pending: int | None = None
    for i, item in enumerate(items):
        if not isinstance(item, CaptureEvent):
            continue
        if item.event == EVENT_DISCONNECTED and pending is None:
            pending = i
        elif item.event == EVENT_CONNECTED and pending is not None:
            gaps[pending] = item.t_s - items[pending].t_s
            pending = None
    return gaps


class VirtualStrap:
    """A heart rate strap on a :class:`~hrvstream.adapters.bleak_bumble.VirtualRadio`.

    Create it, then ``await strap.start()`` (or ``async with``) inside the radio's event
    loop; it then advertises until :meth:`close`.

    Parameters
    ----------
    radio:
        The radio to attach to.
    records:
        The playback sequence (see :data:`PlaybackRecord` and the module doc); times must
        not decrease.
    name:
        Advertised local name and GAP device name (at most 22 UTF-8 bytes, so that the
        advertisement fits in 31 octets). Default ``"Virtual HRM <address tail>"``.
    address:
        The (random static) BLE address, ``"F0:00:00:00:00:01"`` style; allocated by the
        radio when ``None``.
    speed:
        Replay speed factor (``1.0`` real time), or ``None`` for maximum speed in
        lockstep with delivery.
    clock:
        The clock the strap drives; the radio's when ``None``. Give each strap its own
        clock if several play at once: a clock follows one recording.
    on_drop:
        ``"skip"`` (default) or ``"pause"``, see the module doc.
    battery_pct:
        Initial Battery Level, 0..100.
    body_sensor_location:
        Value of the Body Sensor Location characteristic.
    advertising_interval_ms:
        Advertising interval (20 ms or more).
    max_mtu:
        The largest ATT MTU the strap accepts (its answer to Exchange MTU).
    max_connections:
        How many centrals may be connected at once (a Polar H10 allows 2); the strap
        keeps advertising while it has fewer.
    replay_link_events:
        Whether a capture's ``disconnected`` events drop the link (default ``True``).
    lockstep_timeout_s:
        At maximum speed, how long to wait for a delivery report before giving up on it
        (logged as a warning) and going on.

    Attributes
    ----------
    played:
        Set when every record has been consumed (sent, skipped or suppressed).
    notifications_sent:
        Heart Rate Measurement records sent by playback (once per record, whatever the
        number of subscribed clients).
    notifications_skipped:
        Records dropped because no client listened (``on_drop="skip"``) or inside a
        drop's gap.
    notifications_suppressed:
        Records consumed while silent.
    raw_sent:
        Payloads sent with :meth:`send_raw`.
    records_ignored:
        Notification records for characteristics the strap does not have.
    connections_accepted, disconnections:
        Link counters.
    energy_resets:
        Accepted "reset energy expended" writes to the control point.
    """

    def __init__(
        self,
        radio: VirtualRadio,
        records: Iterable[PlaybackRecord] = (),
        *,
        name: str | None = None,
        address: str | None = None,
        speed: float | None = 1.0,
        clock: VirtualClock | None = None,
        on_drop: OnDrop = "skip",
        battery_pct: int = 100,
        body_sensor_location: BodySensorLocation = BodySensorLocation.CHEST,
        advertising_interval_ms: float = _DEFAULT_ADVERTISING_INTERVAL_MS,
        max_mtu: int = _DEFAULT_MAX_MTU,
        max_connections: int = 1,
        replay_link_events: bool = True,
        lockstep_timeout_s: float = 10.0,
    ) -> None:
        if speed is not None and (not math.isfinite(speed) or speed <= 0):
            raise ValueError(f"speed must be a finite number > 0 or None, got {speed!r}")
        if on_drop not in ("skip", "pause"):
            raise ValueError(f"on_drop must be 'skip' or 'pause', got {on_drop!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        if advertising_interval_ms < 20:
            raise ValueError("advertising_interval_ms must be >= 20 (the BLE minimum)")
        if not 23 <= max_mtu <= 517:
            raise ValueError(f"max_mtu must be in 23..517, got {max_mtu}")
        self._check_battery(battery_pct)
        self._radio = radio
        self._address = (address or radio.allocate_peripheral_address()).upper()
        try:
            hci.Address(self._address)
        except (core.InvalidArgumentError, ValueError):
            raise ValueError(f"not a BLE address: {address!r}") from None
        self._name = name if name is not None else f"Virtual HRM {self._address[-5:]}"
        if len(self._name.encode("utf-8")) > 22:
            raise ValueError(f"name must be at most 22 UTF-8 bytes, got {self._name!r}")
        self._items = _normalise(records)
        self._gaps = _link_gaps(self._items)
        self._speed = speed
        self._clock = clock if clock is not None else radio.clock
        self._on_drop: OnDrop = on_drop
        self._battery = battery_pct
        self._location = body_sensor_location
        self._adv_interval = float(advertising_interval_ms)
        self._max_mtu = max_mtu
        self._max_connections = max_connections
        self._replay_link_events = replay_link_events
        self._lockstep_timeout = lockstep_timeout_s

        self.played = asyncio.Event()
        self.notifications_sent = 0
        self.notifications_skipped = 0
        self.notifications_suppressed = 0
        self.raw_sent = 0
        self.records_ignored = 0
        self.connections_accepted = 0
        self.disconnections = 0
        self.energy_resets = 0

        self._device: Device | None = None
        self._controller: Controller | None = None
        self._hrm: Characteristic[bytes] | None = None
        self._battery_char: Characteristic[bytes] | None = None
        self._connections: list[Connection] = []
        self._hr_subscribers: list[Connection] = []
        self._battery_subscribers: list[Connection] = []
        self._subscribed = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._pos = 0
        self._silent = False
        self._contact: bool | None = None
        self._skip_from = math.inf
        self._skip_until = -math.inf
        self._last_t = self._items[0].t_s if self._items else 0.0
        self._anchor_loop = 0.0
        self._anchor_t = 0.0
        self._paused_at: float | None = None
        self._play_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._waiters: list[tuple[Callable[[VirtualStrap], bool], asyncio.Future[None]]] = []
        self._started = False
        self._closed = False
        if not self._items:
            self.played.set()

    # -- properties ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The advertised name."""
        return self._name

    @property
    def address(self) -> str:
        """The BLE address, as bleak reports it."""
        return self._address

    @property
    def speed(self) -> float | None:
        """The replay speed (``None``: maximum, lockstep)."""
        return self._speed

    @property
    def clock(self) -> VirtualClock:
        """The clock this strap drives."""
        return self._clock

    @property
    def connected(self) -> bool:
        """Whether at least one central is connected."""
        return bool(self._connections)

    @property
    def subscribed(self) -> bool:
        """Whether at least one central has Heart Rate Measurement notifications on."""
        return bool(self._hr_subscribers)

    @property
    def silent(self) -> bool:
        """Whether the strap is silent (:meth:`go_silent`)."""
        return self._silent

    @property
    def position(self) -> int:
        """Index of the next record to play."""
        return self._pos

    @property
    def battery_pct(self) -> int:
        """The current Battery Level."""
        return self._battery

    @property
    def records(self) -> tuple[Notification | CaptureEvent, ...]:
        """The playback sequence, normalised (tuples became Notifications)."""
        return self._items

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> VirtualStrap:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Power on and start advertising (call once, inside the radio's event loop)."""
        if self._started:
            raise RuntimeError("the strap is already started")
        self._started = True
        controller = self._radio.new_controller(f"strap-{self._address}")
        device = Device(
            name=self._name,
            address=hci.Address(self._address, hci.Address.RANDOM_DEVICE_ADDRESS),
            host=Host(controller, AsyncPipeSink(controller)),
        )
        device.gatt_server.max_mtu = self._max_mtu
        self._device = device
        self._controller = controller
        self._build_services(device)
        device.on(Device.EVENT_CONNECTION, self._on_connection)
        await device.power_on()
        self._radio.register_peripheral(self)
        await self._advertise()
        logger.info("virtual strap %s (%s) advertising", self._name, self._address)

    def _build_services(self, device: Device) -> None:
        self._hrm = Characteristic(
            GATT_HEART_RATE_MEASUREMENT_CHARACTERISTIC,
            Characteristic.Properties.NOTIFY,
            Characteristic.Permissions(0),
            b"",
        )
        location: Characteristic[bytes] = Characteristic(
            GATT_BODY_SENSOR_LOCATION_CHARACTERISTIC,
            Characteristic.Properties.READ,
            Characteristic.Permissions.READABLE,
            CharacteristicValue[bytes](read=lambda _c: bytes((int(self._location),))),
        )
        control_point: Characteristic[bytes] = Characteristic(
            GATT_HEART_RATE_CONTROL_POINT_CHARACTERISTIC,
            Characteristic.Properties.WRITE,
            Characteristic.Permissions.WRITEABLE,
            CharacteristicValue[bytes](write=self._on_control_point_write),
        )
        self._battery_char = Characteristic(
            GATT_BATTERY_LEVEL_CHARACTERISTIC,
            Characteristic.Properties.READ | Characteristic.Properties.NOTIFY,
            Characteristic.Permissions.READABLE,
            CharacteristicValue[bytes](read=lambda _c: bytes((self._battery,))),
        )
        self._hrm.on(Characteristic.EVENT_SUBSCRIPTION, self._on_hrm_subscription)
        self._battery_char.on(Characteristic.EVENT_SUBSCRIPTION, self._on_battery_subscription)
        device.add_services(
            [
                Service(GATT_HEART_RATE_SERVICE, [self._hrm, location, control_point]),
                Service(GATT_BATTERY_SERVICE, [self._battery_char]),
                DeviceInformationService(
                    manufacturer_name="hrvstream",
                    model_number="VirtualStrap",
                    firmware_revision=__version__,
                ),
            ]
        )

    def _advertising_data(self) -> bytes:
        data = bytes(
            core.AdvertisingData(
                [
                    (
                        core.AdvertisingData.FLAGS,
                        bytes(
                            (
                                core.AdvertisingData.LE_GENERAL_DISCOVERABLE_MODE_FLAG
                                | core.AdvertisingData.BR_EDR_NOT_SUPPORTED_FLAG,
                            )
                        ),
                    ),
                    (core.AdvertisingData.COMPLETE_LOCAL_NAME, self._name.encode("utf-8")),
                    (
                        core.AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
                        GATT_HEART_RATE_SERVICE.to_bytes(),
                    ),
                ]
            )
        )
        if len(data) > 31:  # unreachable: the name length is checked in __init__
            raise ValueError("advertising data longer than 31 octets")
        return data

    async def _advertise(self) -> None:
        device = self._device
        if device is None or self._closed or len(self._connections) >= self._max_connections:
            return
        await device.start_advertising(
            advertising_type=AdvertisingType.UNDIRECTED_CONNECTABLE_SCANNABLE,
            own_address_type=hci.OwnAddressType.RANDOM,
            advertising_data=self._advertising_data(),
            advertising_interval_min=self._adv_interval,
            advertising_interval_max=self._adv_interval,
        )

    def _spawn(self, coro_fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        async def run() -> None:
            try:
                await coro_fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("virtual strap %s: background task failed", self._name)

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Stop playback and advertising, drop every link, detach from the radio."""
        if self._closed:
            return
        self._closed = True
        if self._play_task is not None:
            self._play_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._play_task
        # Let in-flight background commands (re-advertising after a drop) finish:
        # cancelling one mid-command leaves Bumble's host with a cancelled response
        # future that its controller's answer then trips over (InvalidStateError).
        pending = list(self._background)
        if pending:
            _, late = await asyncio.wait(pending, timeout=5.0)
            for task in late:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        device = self._device
        if device is not None:
            with contextlib.suppress(core.BaseBumbleError):
                await device.stop_advertising()
            for connection in list(self._connections):
                with contextlib.suppress(core.BaseBumbleError):
                    await connection.disconnect()
            await device.power_off()
            if self._controller is not None:
                with contextlib.suppress(KeyError):
                    self._radio.link.remove_controller(self._controller)
        self._radio.unregister_peripheral(self)
        self._resolve_waiters(force=True)

    # -- link events ---------------------------------------------------------------------

    def _on_connection(self, connection: Connection) -> None:
        if connection.role != hci.Role.PERIPHERAL:
            return
        self._connections.append(connection)
        self.connections_accepted += 1
        self._radio.deliveries.reset(self._address, format_address(connection.peer_address))
        connection.on(
            Connection.EVENT_DISCONNECTION,
            lambda reason: self._on_disconnection(connection, reason),
        )
        logger.info(
            "virtual strap %s: connected to %s", self._name, format_address(connection.peer_address)
        )
        if len(self._connections) < self._max_connections:
            self._spawn(self._advertise)
        self._changed()

    def _on_disconnection(self, connection: Connection, reason: int) -> None:
        with contextlib.suppress(ValueError):
            self._connections.remove(connection)
        self.disconnections += 1
        peer = format_address(connection.peer_address)
        self._radio.deliveries.abort(self._address, peer)
        with contextlib.suppress(ValueError):
            self._battery_subscribers.remove(connection)
        if connection in self._hr_subscribers:
            self._hr_subscribers.remove(connection)
            self._subscription_changed()
        logger.info("virtual strap %s: %s disconnected (reason 0x%02X)", self._name, peer, reason)
        if not self._closed:
            self._spawn(self._advertise)
        self._changed()

    def _on_hrm_subscription(
        self, bearer: att.Bearer, notify_enabled: bool, indicate_enabled: bool
    ) -> None:
        if not isinstance(bearer, Connection):
            return
        if notify_enabled and bearer not in self._hr_subscribers:
            self._hr_subscribers.append(bearer)
        elif not notify_enabled and bearer in self._hr_subscribers:
            self._hr_subscribers.remove(bearer)
            assert self._hrm is not None
            self._radio.deliveries.abort(
                self._address, format_address(bearer.peer_address), self._hrm.handle
            )
        self._subscription_changed()
        self._changed()

    def _on_battery_subscription(
        self, bearer: att.Bearer, notify_enabled: bool, indicate_enabled: bool
    ) -> None:
        if not isinstance(bearer, Connection):
            return
        if notify_enabled and bearer not in self._battery_subscribers:
            self._battery_subscribers.append(bearer)
        elif not notify_enabled and bearer in self._battery_subscribers:
            self._battery_subscribers.remove(bearer)

    def _on_control_point_write(self, _connection: Connection, value: bytes) -> None:
        if bytes(value) != RESET_ENERGY_EXPENDED:
            raise att.ATT_Error(_CONTROL_POINT_NOT_SUPPORTED)
        self.energy_resets += 1
        logger.info("virtual strap %s: energy expended reset", self._name)

    def _subscription_changed(self) -> None:
        if self._hr_subscribers:
            self._subscribed.set()
            if self._paused_at is not None and self._speed is not None:
                self._run_timeline(self._paused_at)
                self._paused_at = None
            if self._play_task is None and not self.played.is_set() and not self._closed:
                self._start_playback()
        else:
            self._subscribed.clear()
            playing = self._play_task is not None and not self._play_task.done()
            if (
                playing
                and self._speed is not None
                and self._on_drop == "pause"
                and self._paused_at is None
            ):
                self._paused_at = self._timeline_now()
                self._clock.set(self._paused_at)
                self._wake.set()

    # -- timeline ------------------------------------------------------------------------

    def _run_timeline(self, t_s: float) -> None:
        assert self._speed is not None
        loop = asyncio.get_running_loop()
        self._anchor_loop = loop.time()
        self._anchor_t = t_s
        self._clock.run(t_s, self._speed, loop)
        self._wake.set()

    def _timeline_now(self) -> float:
        if self._speed is None:
            return self._last_t
        if self._paused_at is not None:
            return self._paused_at
        loop_now = asyncio.get_running_loop().time()
        return self._anchor_t + (loop_now - self._anchor_loop) * self._speed

    def _due(self, t_s: float) -> float:
        assert self._speed is not None
        if self._paused_at is not None:
            return math.inf
        return self._anchor_loop + (t_s - self._anchor_t) / self._speed

    async def _sleep_until(self, t_s: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            delay = self._due(t_s) - loop.time()
            if delay <= 0:
                return
            self._wake.clear()
            if math.isinf(delay):
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()

    # -- playback ------------------------------------------------------------------------

    def _start_playback(self) -> None:
        if self._speed is not None:
            self._run_timeline(self._items[self._pos].t_s)
        self._play_task = asyncio.get_running_loop().create_task(self._play())
        self._play_task.add_done_callback(self._on_play_done)
        logger.info(
            "virtual strap %s: playback of %d records starts (speed %s)",
            self._name,
            len(self._items) - self._pos,
            "max" if self._speed is None else self._speed,
        )

    def _on_play_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error(
                "virtual strap %s: playback failed at record %d",
                self._name,
                self._pos,
                exc_info=exc,
            )

    async def _play(self) -> None:
        items = self._items
        since_yield = 0
        while self._pos < len(items):
            item = items[self._pos]
            t_s = item.t_s
            if self._speed is not None:
                await self._sleep_until(t_s)
            else:
                self._last_t = t_s
                since_yield += 1
                if since_yield >= _YIELD_EVERY:
                    since_yield = 0
                    await asyncio.sleep(0)
            if isinstance(item, CaptureEvent):
                self._pos += 1
                await self._apply_event(item, self._pos - 1)
                continue
            if item.uuid == BATTERY_LEVEL_UUID:
                self._pos += 1
                if len(item.payload) == 1 and item.payload[0] <= 100:
                    await self.set_battery(item.payload[0])
                else:
                    self.records_ignored += 1
                continue
            if item.uuid != HEART_RATE_MEASUREMENT_UUID:
                self._pos += 1
                self.records_ignored += 1
                continue
            if self._skip_from <= t_s < self._skip_until:
                self._pos += 1
                self.notifications_skipped += 1
                self._changed()
                continue
            if self._silent:
                self._pos += 1
                self.notifications_suppressed += 1
                self._changed()
                continue
            if not self._hr_subscribers:
                if self._speed is not None and self._on_drop == "skip":
                    self._pos += 1
                    self.notifications_skipped += 1
                    self._changed()
                    continue
                await self._subscribed.wait()
                continue
            payload = self._apply_contact(item.payload)
            if self._speed is None:
                self._clock.set(t_s)
            await self._send_hrm(payload, lockstep=self._speed is None)
            self._pos += 1
            self.notifications_sent += 1
            since_yield = 0
            self._changed()
        logger.info(
            "virtual strap %s: playback finished (%d sent, %d skipped, %d suppressed)",
            self._name,
            self.notifications_sent,
            self.notifications_skipped,
            self.notifications_suppressed,
        )
        self.played.set()
        self._changed()

    async def _apply_event(self, event: CaptureEvent, index: int) -> None:
        name, detail = event.event, event.detail
        if name == EVENT_DISCONNECTED and self._replay_link_events:
            await self.drop_link(gap_s=self._gaps.get(index))
        elif name == EVENT_STRAP_DROP:
            await self.drop_link(gap_s=float(detail) if detail is not None else None)
        elif name == EVENT_STRAP_SILENT:
            await self.go_silent()
        elif name == EVENT_STRAP_RESUME:
            await self.resume()
        elif name == EVENT_STRAP_CONTACT:
            await self.set_contact(_CONTACT_DETAILS[detail])
        elif name == EVENT_STRAP_BATTERY:
            await self.set_battery(int(detail or ""))
        else:
            logger.debug("virtual strap %s: event %r at %r ignored", self._name, name, event.t_s)

    def _apply_contact(self, payload: bytes) -> bytes:
        if self._contact is None:
            return payload
        try:
            m = parse_heart_rate_measurement(payload)
        except HeartRateParseError:
            return payload
        return encode_heart_rate_measurement(
            replace(
                m,
                sensor_contact_supported=True,
                sensor_contact_detected=self._contact,
                contact_bit1_without_support=False,
            )
        )

    async def _send_hrm(self, payload: bytes, *, lockstep: bool) -> int:
        device, hrm = self._device, self._hrm
        if device is None or hrm is None:
            raise RuntimeError("the strap is not started")
        ledger = self._radio.deliveries
        async with self._send_lock:
            targets = list(self._hr_subscribers)
            pending: list[asyncio.Future[bool]] = []
            for connection in targets:
                if len(payload) > connection.att_mtu - 3:
                    logger.warning(
                        "virtual strap %s: %d-byte payload truncated to ATT MTU %d - 3",
                        self._name,
                        len(payload),
                        connection.att_mtu,
                    )
                if lockstep:
                    key = DeliveryKey(
                        self._address, format_address(connection.peer_address), hrm.handle
                    )
                    pending.append(ledger.expect(key, ledger.count(key) + 1))
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("virtual strap %s: notify %s", self._name, payload.hex())
                await device.notify_subscriber(connection, hrm, payload)
            for fut in pending:
                try:
                    async with asyncio.timeout(self._lockstep_timeout):
                        await fut
                except TimeoutError:
                    logger.warning(
                        "virtual strap %s: no delivery report within %.1f s; going on",
                        self._name,
                        self._lockstep_timeout,
                    )
            return len(targets)

    # -- cues ----------------------------------------------------------------------------

    async def drop_link(
        self,
        *,
        gap_s: float | None = None,
        reason: int = hci.HCI_REMOTE_USER_TERMINATED_CONNECTION_ERROR,
    ) -> None:
        """Disconnect every central (peripheral-initiated), then advertise again.

        Parameters
        ----------
        gap_s:
            With ``on_drop="skip"``, records with ``t_s`` in ``[now, now + gap_s)`` on the
            recording's time axis are dropped even if a client comes back sooner (at
            maximum speed this is the only way a drop loses records). Ignored with
            ``"pause"``.
        reason:
            The HCI reason code the central receives (default 0x13, remote user
            terminated connection).
        """
        if gap_s is not None:
            if not math.isfinite(gap_s) or gap_s < 0:
                raise ValueError(f"gap_s must be finite and >= 0, got {gap_s!r}")
            if self._on_drop == "skip":
                now = self._timeline_now()
                self._skip_from, self._skip_until = now, now + gap_s
        logger.info("virtual strap %s: dropping the link", self._name)
        for connection in list(self._connections):
            with contextlib.suppress(core.BaseBumbleError):
                await connection.disconnect(reason=reason)

    async def go_silent(self) -> None:
        """Stay connected but stop notifying (records are consumed and counted)."""
        self._silent = True
        self._changed()

    async def resume(self) -> None:
        """Notify again after :meth:`go_silent`."""
        self._silent = False
        self._changed()

    async def set_contact(self, detected: bool | None) -> None:
        """Re-encode the sensor contact bits of the following payloads.

        Parameters
        ----------
        detected:
            ``True``/``False``: every following parseable payload is sent with contact
            supported and detected/not detected (other fields and bytes unchanged);
            unparseable payloads go out as they are. ``None``: send payloads unchanged.
        """
        self._contact = detected

    async def send_raw(self, payload: bytes) -> int:
        """Notify ``payload`` on Heart Rate Measurement now, exactly as given.

        Bypasses :meth:`set_contact`. At maximum speed it is delivered in lockstep like
        playback. Payloads longer than the ATT MTU minus 3 are truncated by the stack.

        Parameters
        ----------
        payload:
            Any bytes (corrupt payloads included).

        Returns
        -------
        int
            The number of subscribed clients it was sent to.
        """
        sent = await self._send_hrm(bytes(payload), lockstep=self._speed is None)
        self.raw_sent += 1
        self._changed()
        return sent

    @staticmethod
    def _check_battery(pct: int) -> None:
        if isinstance(pct, bool) or not isinstance(pct, int) or not 0 <= pct <= 100:
            raise ValueError(f"battery percentage must be an int in 0..100, got {pct!r}")

    async def set_battery(self, pct: int) -> None:
        """Set the Battery Level and notify subscribed clients.

        Parameters
        ----------
        pct:
            0..100.
        """
        self._check_battery(pct)
        self._battery = pct
        device, char = self._device, self._battery_char
        if device is None or char is None:
            return
        for connection in list(self._battery_subscribers):
            await device.notify_subscriber(connection, char, bytes((pct,)))

    # -- waiting -------------------------------------------------------------------------

    async def wait_for(
        self, predicate: Callable[[VirtualStrap], bool], timeout: float | None = None
    ) -> None:
        """Wait until ``predicate(self)`` holds; it is checked at every state change.

        State changes: a connection or disconnection, a (un)subscription, any counter
        update, silence and the end of playback.

        Parameters
        ----------
        predicate:
            A cheap function of the strap.
        timeout:
            Seconds, or ``None`` for no limit.

        Raises
        ------
        TimeoutError
            If ``timeout`` expires first.
        RuntimeError
            If the strap is closed while waiting.
        """
        if predicate(self):
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (predicate, fut)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await fut
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    def _changed(self) -> None:
        if self._waiters:
            self._resolve_waiters(force=False)

    def _resolve_waiters(self, *, force: bool) -> None:
        for predicate, fut in list(self._waiters):
            if fut.done():
                continue
            if force:
                fut.set_exception(RuntimeError("the virtual strap was closed"))
            elif predicate(self):
                fut.set_result(None)

    def __repr__(self) -> str:
        return (
            f"VirtualStrap({self._name!r}, {self._address}, records={len(self._items)}, "
            f"position={self._pos}, speed={self._speed})"
        )
