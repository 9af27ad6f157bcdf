"""A bleak backend whose radio is Google's Bumble stack on an in-process link.

:class:`VirtualRadio` owns one Bumble :class:`~bumble.link.LocalLink`: a software "air"
between Bumble's simulated controllers. Virtual peripherals
(:class:`hrvstream.adapters.virtual_strap.VirtualStrap`) and one or more central hosts
(each a Bumble ``Device`` + ``Host`` + ``Controller``, like one Bluetooth adapter named
``"hci0"``, ``"hci1"``...) attach to it. Everything above the controllers is the real
Bumble host stack: HCI commands and events, ACL, L2CAP, ATT and GATT, exactly as with a
USB dongle.

:meth:`VirtualRadio.scanner_backend` and :meth:`VirtualRadio.client_backend` return
:class:`~bleak.backends.scanner.BaseBleakScanner` and
:class:`~bleak.backends.client.BaseBleakClient` subclasses bound to the radio, to pass as
bleak's ``backend=``. Application code stays ordinary bleak code::

    radio = VirtualRadio()
    device = await BleakScanner.find_device_by_name(
        "Polar H10 8C4D2E1A", backend=radio.scanner_backend()
    )
    async with BleakClient(device, backend=radio.client_backend()) as client:
        await client.start_notify(HEART_RATE_MEASUREMENT_UUID, on_measurement)

``bleak_retry_connector.establish_connection`` works too: pass ``backend=`` through its
``**kwargs`` (it forwards them to the client class) and a :class:`~bleak.BLEDevice` from
this radio's scanner (its ``details`` is not a BlueZ dict, so the connector skips every
BlueZ/D-Bus path).

Delivery reports (lockstep replay)
----------------------------------
When the backend hands a notification to bleak's callback, and the callback has
returned, it records the delivery in :attr:`VirtualRadio.deliveries` (a
:class:`DeliveryLedger`), one ``call_soon`` later so that the first step of a coroutine
callback (bleak runs those as tasks) has run too. The virtual strap waits on that ledger
at maximum replay speed before it advances its :class:`VirtualClock` and sends the next
notification. The application never sees any of this.

Errors
------
Bumble exceptions are translated at this edge: ATT error responses become
:class:`~bleak.exc.BleakGATTProtocolError`, Bumble timeouts :class:`TimeoutError`, a
request cut short by a disconnection or any other Bumble error :class:`BleakError`; an
address no scanner sees becomes :class:`~bleak.exc.BleakDeviceNotFoundError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import uuid as uuid_module
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple, Protocol, cast

from bleak import BleakScanner
from bleak.args import SizedBuffer
from bleak.assigned_numbers import CHARACTERISTIC_PROPERTIES, CharacteristicPropertyName
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakDeviceNotFoundError, BleakError, BleakGATTProtocolError
from bleak.uuids import normalize_uuid_str
from bumble import att, core, hci
from bumble.controller import Controller
from bumble.core import AdvertisingData
from bumble.device import Advertisement, Connection, Device
from bumble.gatt import GATT_DEVICE_NAME_CHARACTERISTIC
from bumble.gatt_client import CharacteristicProxy, DescriptorProxy, ServiceProxy
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink

from hrvstream.adapters.virtual_clock import VirtualClock

__all__ = [
    "DeliveryKey",
    "DeliveryLedger",
    "VirtualBleakClient",
    "VirtualBleakScanner",
    "VirtualDeviceDetails",
    "VirtualRadio",
    "bleak_uuid",
    "format_address",
]

logger = logging.getLogger(__name__)

_DEFAULT_ADAPTER = "hci0"
_DEFAULT_CENTRAL_MTU = 517  # what BlueZ asks for in its ATT Exchange MTU Request
_ATT_DEFAULT_MTU = 23
_SCAN_INTERVAL_MS = 20.0  # scan window == interval: the central listens all the time


def format_address(address: hci.Address) -> str:
    """Format a Bumble address the way bleak on Linux shows one.

    Parameters
    ----------
    address:
        A Bumble address.

    Returns
    -------
    str
        Six upper-case hex octets separated by colons, most significant first, with no
        address-type suffix (``"F0:00:00:00:00:01"``).
    """
    return address.to_string(with_type_qualifier=False)


def bleak_uuid(value: core.UUID) -> str:
    """Convert a Bumble UUID to bleak's form: full 128-bit, lower case.

    Parameters
    ----------
    value:
        A 16-, 32- or 128-bit Bumble UUID.

    Returns
    -------
    str
        For example ``"0000180d-0000-1000-8000-00805f9b34fb"`` for 0x180D.
    """
    return str(uuid_module.UUID(bytes=bytes(reversed(value.uuid_128_bytes))))


# ---------------------------------------------------------------------------------------
# Delivery ledger
# ---------------------------------------------------------------------------------------


class DeliveryKey(NamedTuple):
    """Identifies one notification stream: who sent it, who got it, which attribute.

    Attributes
    ----------
    peripheral:
        The peripheral's address, as :func:`format_address` writes it.
    central:
        The central host's address, same format.
    handle:
        The ATT handle of the characteristic value.
    """

    peripheral: str
    central: str
    handle: int


class DeliveryLedger:
    """Counts notifications that reached a bleak callback, per :class:`DeliveryKey`.

    The client backend calls :meth:`record` after bleak's notification callback has
    returned; a peripheral that wants lockstep takes ``target = count(key) + 1`` before
    sending, sends, and awaits :meth:`expect`. :meth:`abort` releases waiters when their
    notification can no longer arrive (link down, unsubscribed).
    """

    def __init__(self) -> None:
        self._counts: dict[DeliveryKey, int] = {}
        self._waiters: dict[DeliveryKey, list[tuple[int, asyncio.Future[bool]]]] = {}

    def count(self, key: DeliveryKey) -> int:
        """Return how many notifications of ``key`` were delivered so far.

        Parameters
        ----------
        key:
            The stream.

        Returns
        -------
        int
            The count (0 for a stream never seen).
        """
        return self._counts.get(key, 0)

    def record(self, key: DeliveryKey) -> None:
        """Record one delivery of ``key`` and wake the waiters it satisfies.

        Parameters
        ----------
        key:
            The stream whose notification was delivered.
        """
        n = self._counts.get(key, 0) + 1
        self._counts[key] = n
        waiters = self._waiters.get(key)
        if not waiters:
            return
        keep: list[tuple[int, asyncio.Future[bool]]] = []
        for target, fut in waiters:
            if target <= n:
                if not fut.done():
                    fut.set_result(True)
            else:
                keep.append((target, fut))
        if keep:
            self._waiters[key] = keep
        else:
            del self._waiters[key]

    def expect(self, key: DeliveryKey, target: int) -> asyncio.Future[bool]:
        """Return a future that resolves when ``count(key) >= target``.

        Parameters
        ----------
        key:
            The stream.
        target:
            The delivery count to wait for.

        Returns
        -------
        asyncio.Future[bool]
            Resolves to ``True`` once the count is reached, or to ``False`` if
            :meth:`abort` gives up on it first.
        """
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._counts.get(key, 0) >= target:
            fut.set_result(True)
        else:
            self._waiters.setdefault(key, []).append((target, fut))
        return fut

    def abort(self, peripheral: str, central: str | None = None, handle: int | None = None) -> None:
        """Resolve to ``False`` every waiter matching the given parts of the key.

        Parameters
        ----------
        peripheral:
            The peripheral address.
        central:
            Only this central, or every central when ``None``.
        handle:
            Only this handle, or every handle when ``None``.
        """
        for key in [k for k in self._waiters if k.peripheral == peripheral]:
            if (central is None or key.central == central) and (
                handle is None or key.handle == handle
            ):
                for _, fut in self._waiters.pop(key):
                    if not fut.done():
                        fut.set_result(False)

    def reset(self, peripheral: str, central: str) -> None:
        """Forget the counts of one peripheral-central pair (a new connection).

        Parameters
        ----------
        peripheral, central:
            The pair's addresses.
        """
        self.abort(peripheral, central)
        for key in [k for k in self._counts if k.peripheral == peripheral and k.central == central]:
            del self._counts[key]


# ---------------------------------------------------------------------------------------
# Radio and central hosts
# ---------------------------------------------------------------------------------------


# LocalLink.__init__ carries no annotations; calling it through a typed alias keeps
# mypy --strict (disallow_untyped_calls) satisfied without a blanket override.
_new_local_link: Callable[[], LocalLink] = LocalLink


class _Closable(Protocol):
    async def close(self) -> None: ...


class _CentralController(Controller):
    """Bumble's simulated controller, with LE Create Connection Cancel completed.

    Bumble 0.0.236's controller answers the cancel command but forgets the pending
    connection and never sends the LE Connection Complete event (status 0x02, Unknown
    Connection Identifier) that the specification requires afterwards (Core 5.4, Vol 4,
    Part E, 7.8.13), so a host whose connection attempt timed out waits forever and the
    controller refuses the next attempt. This subclass does what a real controller does.
    """

    def on_hci_le_create_connection_cancel_command(
        self, _command: hci.HCI_LE_Create_Connection_Cancel_Command
    ) -> hci.HCI_StatusReturnParameters:
        pending = self.pending_le_connection
        if pending is None:
            return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.COMMAND_DISALLOWED_ERROR)
        self.pending_le_connection = None
        event = hci.HCI_LE_Connection_Complete_Event(
            status=hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR,
            connection_handle=0,
            role=hci.Role.CENTRAL,
            peer_address_type=pending.peer_address.address_type,
            peer_address=pending.peer_address,
            connection_interval=0,
            peripheral_latency=0,
            supervision_timeout=0,
            central_clock_accuracy=0,
        )
        # After the Command Complete event that our caller sends for this command.
        asyncio.get_running_loop().call_soon(self.send_hci_packet, event)
        return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.SUCCESS)


AdvertisementListener = Callable[[Advertisement], None]


class CentralHost:
    """One central "adapter" on a :class:`VirtualRadio`: Bumble device, host, controller.

    Created by :meth:`VirtualRadio.central`; shared by every scanner and client backend
    bound to the same adapter name, like a BlueZ adapter. Scanning is reference-counted
    (it runs while any scanner is started) and connection attempts are serialised (one
    LE Create Connection at a time, as a controller requires).

    Parameters
    ----------
    name:
        The adapter name (``"hci0"``).
    device:
        The powered-on Bumble device.
    controller:
        Its simulated controller on the radio's link.
    """

    def __init__(self, name: str, device: Device, controller: Controller) -> None:
        self.name = name
        self.device = device
        self.controller = controller
        self.connect_lock = asyncio.Lock()
        self._listeners: list[AdvertisementListener] = []
        self._scan_lock = asyncio.Lock()
        self.device.on(Device.EVENT_ADVERTISEMENT, self._on_advertisement)

    @property
    def address(self) -> str:
        """This host's (random static) address."""
        return format_address(self.device.random_address)

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        for listener in list(self._listeners):
            try:
                listener(advertisement)
            except Exception:
                logger.exception("advertisement listener failed")

    async def start_scan(self, listener: AdvertisementListener, *, active: bool) -> None:
        """Register ``listener`` and start scanning if this is the first one.

        Parameters
        ----------
        listener:
            Called with every advertisement report.
        active:
            Active scanning (the mode of the first listener wins while others run).
        """
        async with self._scan_lock:
            self._listeners.append(listener)
            if len(self._listeners) == 1:
                await self.device.start_scanning(
                    active=active,
                    scan_interval=_SCAN_INTERVAL_MS,
                    scan_window=_SCAN_INTERVAL_MS,
                    filter_duplicates=False,
                )

    async def stop_scan(self, listener: AdvertisementListener) -> None:
        """Unregister ``listener`` and stop scanning if it was the last one.

        Parameters
        ----------
        listener:
            As given to :meth:`start_scan`; unknown listeners are ignored.
        """
        async with self._scan_lock:
            if listener not in self._listeners:
                return
            self._listeners.remove(listener)
            if not self._listeners and self.device.is_scanning:
                await self.device.stop_scanning()

    async def close(self) -> None:
        """Stop scanning, drop every connection and power the device off."""
        self._listeners.clear()
        with contextlib.suppress(core.BaseBumbleError):
            if self.device.is_scanning:
                await self.device.stop_scanning()
        for connection in list(self.device.connections.values()):
            with contextlib.suppress(core.BaseBumbleError):
                await connection.disconnect()
        await self.device.power_off()


class VirtualRadio:
    """An in-process BLE "air": one Bumble ``LocalLink`` plus the replay clock.

    Create it inside a running event loop's lifetime and use it from that loop only
    (Bumble's controllers bind to the running loop).

    Parameters
    ----------
    clock:
        The clock virtual straps drive by default; a fresh :class:`VirtualClock` when
        ``None``.

    Attributes
    ----------
    link:
        The Bumble link every controller of this radio is attached to.
    clock:
        The default replay clock.
    deliveries:
        Notifications delivered to bleak callbacks, for lockstep replay.
    """

    def __init__(self, clock: VirtualClock | None = None) -> None:
        self.link = _new_local_link()
        self.clock = clock if clock is not None else VirtualClock()
        self.deliveries = DeliveryLedger()
        self._centrals: dict[str, CentralHost] = {}
        self._central_lock = asyncio.Lock()
        self._powering: set[asyncio.Task[None]] = set()
        self._peripherals: list[_Closable] = []
        self._next_peripheral = 1
        self._scanner_backends: dict[str, type[VirtualBleakScanner]] = {}
        self._client_backends: dict[tuple[str, int], type[VirtualBleakClient]] = {}
        self._closed = False

    async def __aenter__(self) -> VirtualRadio:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def allocate_peripheral_address(self) -> str:
        """Return a fresh random static address for a peripheral on this radio.

        Returns
        -------
        str
            ``"F0:00:00:00:00:01"``, ``"F0:00:00:00:00:02"``, ...
        """
        n = self._next_peripheral
        self._next_peripheral += 1
        return f"F0:00:00:00:{n >> 8 & 0xFF:02X}:{n & 0xFF:02X}"

    def new_controller(self, name: str) -> Controller:
        """Create a plain Bumble controller attached to this radio's link.

        Parameters
        ----------
        name:
            A label for Bumble's logs.

        Returns
        -------
        bumble.controller.Controller
            The controller (must be called inside the running event loop).
        """
        return Controller(name, link=self.link)

    def register_peripheral(self, peripheral: _Closable) -> None:
        """Have :meth:`aclose` close ``peripheral`` too.

        Parameters
        ----------
        peripheral:
            Anything with an ``async close()``.
        """
        self._peripherals.append(peripheral)

    def unregister_peripheral(self, peripheral: _Closable) -> None:
        """Undo :meth:`register_peripheral` (unknown objects are ignored).

        Parameters
        ----------
        peripheral:
            As registered.
        """
        with contextlib.suppress(ValueError):
            self._peripherals.remove(peripheral)

    async def central(self, adapter: str = _DEFAULT_ADAPTER) -> CentralHost:
        """Return the central host named ``adapter``, powering it on at first use.

        Parameters
        ----------
        adapter:
            The adapter name; each distinct name is a separate central with its own
            controller and address (``C0:00:00:00:00:01``, ...).

        Returns
        -------
        CentralHost
            The powered-on host.

        Raises
        ------
        BleakError
            If the radio was closed.
        """
        if self._closed:
            raise BleakError("the virtual radio is closed")
        async with self._central_lock:
            host = self._centrals.get(adapter)
            if host is not None:
                return host
            n = len(self._centrals) + 1
            address = hci.Address(f"C0:00:00:00:{n >> 8 & 0xFF:02X}:{n & 0xFF:02X}")
            controller = _CentralController(f"central-{adapter}", link=self.link)
            device = Device(
                name=f"hrvstream {adapter}",
                address=address,
                host=Host(controller, AsyncPipeSink(controller)),
            )
            # Shielded: a caller cancelled mid power-on (a link stopped while scanning)
            # must not leave Bumble's host with a cancelled HCI command whose answer
            # then trips over it; the power-on finishes and the host is kept.
            host = CentralHost(adapter, device, controller)
            task = asyncio.ensure_future(self._power_on(host))
            self._powering.add(task)
            task.add_done_callback(self._powering.discard)
            await asyncio.shield(task)
            return host

    async def _power_on(self, host: CentralHost) -> None:
        await host.device.power_on()
        self._centrals[host.name] = host
        logger.debug("central %s powered on at %s", host.name, host.address)

    def scanner_backend(self, adapter: str = _DEFAULT_ADAPTER) -> type[BaseBleakScanner]:
        """Return a bleak scanner backend class bound to this radio.

        Parameters
        ----------
        adapter:
            Which central host scans.

        Returns
        -------
        type[BaseBleakScanner]
            A subclass of :class:`VirtualBleakScanner`, for ``BleakScanner(backend=...)``.
        """
        cls = self._scanner_backends.get(adapter)
        if cls is None:
            cls = cast(
                type[VirtualBleakScanner],
                type(
                    "BleakScannerVirtual",
                    (VirtualBleakScanner,),
                    {"_radio": self, "_adapter": adapter},
                ),
            )
            self._scanner_backends[adapter] = cls
        return cls

    def client_backend(
        self, adapter: str = _DEFAULT_ADAPTER, *, mtu: int = _DEFAULT_CENTRAL_MTU
    ) -> type[BaseBleakClient]:
        """Return a bleak client backend class bound to this radio.

        Parameters
        ----------
        adapter:
            Which central host connects.
        mtu:
            The ATT MTU the client asks for after connecting (BlueZ asks for 517); the
            result is the smaller of this and the peripheral's maximum.

        Returns
        -------
        type[BaseBleakClient]
            A subclass of :class:`VirtualBleakClient`, for ``BleakClient(backend=...)``
            and ``establish_connection(..., backend=...)``.
        """
        if not _ATT_DEFAULT_MTU <= mtu <= 0xFFFF:
            raise ValueError(f"mtu must be in {_ATT_DEFAULT_MTU}..65535, got {mtu}")
        cls = self._client_backends.get((adapter, mtu))
        if cls is None:
            cls = cast(
                type[VirtualBleakClient],
                type(
                    "BleakClientVirtual",
                    (VirtualBleakClient,),
                    {"_radio": self, "_adapter": adapter, "_requested_mtu": mtu},
                ),
            )
            self._client_backends[(adapter, mtu)] = cls
        return cls

    async def aclose(self) -> None:
        """Close every registered peripheral and central host (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._powering:  # a power-on whose caller was cancelled: let it finish first
            await asyncio.wait(list(self._powering), timeout=5.0)
        for peripheral in list(self._peripherals):
            try:
                await peripheral.close()
            except Exception:
                logger.exception("closing a peripheral failed")
        self._peripherals.clear()
        for host in list(self._centrals.values()):
            try:
                await host.close()
            except Exception:
                logger.exception("closing central %s failed", host.name)
        self._centrals.clear()


# ---------------------------------------------------------------------------------------
# Scanner backend
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VirtualDeviceDetails:
    """``BLEDevice.details`` for devices seen on a :class:`VirtualRadio`.

    Attributes
    ----------
    address:
        The device address.
    adapter:
        The central host that saw it.
    """

    address: str
    adapter: str


@dataclass(slots=True)
class _ParsedAdvertisement:
    local_name: str | None
    service_uuids: list[str]
    manufacturer_data: dict[int, bytes]
    service_data: dict[str, bytes]
    tx_power: int | None


_UUID_LIST_SIZES: dict[int, int] = {
    AdvertisingData.INCOMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS: 2,
    AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS: 2,
    AdvertisingData.INCOMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS: 4,
    AdvertisingData.COMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS: 4,
    AdvertisingData.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS: 16,
    AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS: 16,
}
_SERVICE_DATA_SIZES: dict[int, int] = {
    AdvertisingData.SERVICE_DATA_16_BIT_UUID: 2,
    AdvertisingData.SERVICE_DATA_32_BIT_UUID: 4,
    AdvertisingData.SERVICE_DATA_128_BIT_UUID: 16,
}


def _parse_advertising_data(data: AdvertisingData) -> _ParsedAdvertisement:
    """Decode AD structures (advertisement and scan response merged, repeats allowed)."""
    complete_name: str | None = None
    short_name: str | None = None
    uuids: list[str] = []
    manufacturer: dict[int, bytes] = {}
    service_data: dict[str, bytes] = {}
    tx_power: int | None = None
    for ad_type, value in data.ad_structures:
        if ad_type == AdvertisingData.COMPLETE_LOCAL_NAME:
            complete_name = value.decode("utf-8", errors="replace")
        elif ad_type == AdvertisingData.SHORTENED_LOCAL_NAME:
            short_name = value.decode("utf-8", errors="replace")
        elif ad_type in _UUID_LIST_SIZES:
            size = _UUID_LIST_SIZES[ad_type]
            for i in range(0, len(value) - size + 1, size):
                u = bleak_uuid(core.UUID.from_bytes(value[i : i + size]))
                if u not in uuids:
                    uuids.append(u)
        elif ad_type == AdvertisingData.MANUFACTURER_SPECIFIC_DATA and len(value) >= 2:
            (company,) = struct.unpack_from("<H", value)
            manufacturer[company] = bytes(value[2:])
        elif ad_type in _SERVICE_DATA_SIZES and len(value) >= _SERVICE_DATA_SIZES[ad_type]:
            size = _SERVICE_DATA_SIZES[ad_type]
            service_data[bleak_uuid(core.UUID.from_bytes(value[:size]))] = bytes(value[size:])
        elif ad_type == AdvertisingData.TX_POWER_LEVEL and len(value) == 1:
            (tx_power,) = struct.unpack("<b", value)
    return _ParsedAdvertisement(
        local_name=complete_name if complete_name is not None else short_name,
        service_uuids=uuids,
        manufacturer_data=manufacturer,
        service_data=service_data,
        tx_power=tx_power,
    )


class VirtualBleakScanner(BaseBleakScanner):
    """bleak scanner backend on a :class:`VirtualRadio` (use :meth:`~VirtualRadio.scanner_backend`).

    Parameters
    ----------
    detection_callback, service_uuids:
        As for :class:`~bleak.backends.scanner.BaseBleakScanner`.
    scanning_mode:
        ``"active"`` or ``"passive"``.
    **kwargs:
        Other bleak arguments (``bluez=``, ``cb=``), accepted and ignored.
    """

    _radio: ClassVar[VirtualRadio]
    _adapter: ClassVar[str]

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: Literal["active", "passive"] = "active",
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        if scanning_mode not in ("active", "passive"):
            raise BleakError(f"scanning_mode must be 'active' or 'passive', not {scanning_mode!r}")
        self._active = scanning_mode == "active"
        self._host: CentralHost | None = None
        self._listener: AdvertisementListener = self._on_advertisement
        if self._service_uuids is not None:
            self._service_uuids = [normalize_uuid_str(u) for u in self._service_uuids]

    async def start(self) -> None:
        """Start scanning on this backend's central host (clears ``seen_devices``)."""
        if self._host is not None:
            raise BleakError("scanner already started")
        self.seen_devices = {}
        host = await self._radio.central(self._adapter)
        with _bleak_errors(f"starting a scan on {self._adapter}"):
            await host.start_scan(self._listener, active=self._active)
        self._host = host

    async def stop(self) -> None:
        """Stop scanning (no-op when not started)."""
        host, self._host = self._host, None
        if host is not None:
            with _bleak_errors(f"stopping the scan on {self._adapter}"):
                await host.stop_scan(self._listener)

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        parsed = _parse_advertising_data(advertisement.data)
        if not self.is_allowed_uuid(parsed.service_uuids):
            return
        address = format_address(advertisement.address)
        adv = AdvertisementData(
            local_name=parsed.local_name,
            manufacturer_data=parsed.manufacturer_data,
            service_data=parsed.service_data,
            service_uuids=parsed.service_uuids,
            tx_power=parsed.tx_power,
            rssi=advertisement.rssi,
            platform_data=(advertisement,),
        )
        device = self.create_or_update_device(
            address,
            address,
            parsed.local_name,
            VirtualDeviceDetails(address=address, adapter=self._adapter),
            adv,
        )
        self.call_detection_callbacks(device, adv)


# ---------------------------------------------------------------------------------------
# Client backend
# ---------------------------------------------------------------------------------------


def _properties(bits: int) -> list[CharacteristicPropertyName]:
    return [name for bit, name in CHARACTERISTIC_PROPERTIES.items() if bits & bit]


@contextlib.contextmanager
def _bleak_errors(what: str) -> Iterator[None]:
    """Translate Bumble exceptions raised inside the block into bleak's."""
    try:
        yield
    except att.ATT_Error as exc:
        raise BleakGATTProtocolError(int(exc.error_code)) from exc
    except core.TimeoutError as exc:
        raise TimeoutError(f"{what} timed out") from exc
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        # Bumble cancels a pending GATT request when the link goes down.
        raise BleakError(f"{what} failed: disconnected") from None
    except core.BaseBumbleError as exc:
        raise BleakError(f"{what} failed: {exc}") from exc


class VirtualBleakClient(BaseBleakClient):
    """bleak client backend on a :class:`VirtualRadio` (use :meth:`~VirtualRadio.client_backend`).

    Behaves like bleak's BlueZ backend where bleak leaves room: ``disconnected_callback``
    is called on every disconnection, whichever side initiated it; connecting by a bare
    address string scans for it first (and raises
    :class:`~bleak.exc.BleakDeviceNotFoundError` if no advertisement is seen within the
    timeout); the client asks for an ATT MTU of 517 after connecting; pairing is a no-op
    (a heart rate strap needs none).

    Parameters
    ----------
    address_or_ble_device:
        An address string or a :class:`~bleak.BLEDevice`.
    disconnected_callback:
        Called (no arguments; bleak binds the client) when the link goes down.
    timeout:
        Default connection timeout, seconds.
    services:
        Optional set of service UUIDs to keep after discovery (bleak normalises them).
    **kwargs:
        Other bleak / bleak-retry-connector arguments (``bluez=``, ``winrt=``,
        ``_is_retry_client=``), accepted and ignored.
    """

    _radio: ClassVar[VirtualRadio]
    _adapter: ClassVar[str]
    _requested_mtu: ClassVar[int]

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        *,
        disconnected_callback: Callable[[], None] | None,
        timeout: float,
        services: set[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            address_or_ble_device,
            disconnected_callback=disconnected_callback,
            timeout=timeout,
            **kwargs,
        )
        self.address = self.address.upper()
        self._name: str | None = None
        self._resolved = False
        if isinstance(address_or_ble_device, BLEDevice):
            self._name = address_or_ble_device.name
            self._resolved = isinstance(address_or_ble_device.details, VirtualDeviceDetails)
        self._service_filter = None if services is None else {u.lower() for u in services}
        self._connection: Connection | None = None
        self._last_mtu = _ATT_DEFAULT_MTU
        self._notify_callbacks: dict[int, NotifyCallback] = {}
        self._dispatchers: dict[int, Callable[[bytes], None]] = {}

    # -- properties ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The advertised or GAP device name, else the address with dashes."""
        if self._name:
            return self._name
        return self.address.replace(":", "-")

    @property
    def mtu_size(self) -> int:
        """The negotiated ATT MTU (the last one after a disconnection, 23 before any)."""
        if self._connection is not None:
            return int(self._connection.att_mtu)
        return self._last_mtu

    @property
    def is_connected(self) -> bool:
        """Whether the link is up."""
        return self._connection is not None

    # -- connectivity --------------------------------------------------------------------

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        """Connect, exchange the MTU and discover all services.

        Parameters
        ----------
        pair:
            Ignored (logged): the virtual peripherals need no pairing.
        **kwargs:
            ``timeout`` (seconds) overrides the constructor's; others
            (``dangerous_use_bleak_cache``) are ignored.

        Raises
        ------
        BleakDeviceNotFoundError
            If the client was given an address string and no scanner on this radio sees
            it advertise within the timeout.
        TimeoutError
            If the peripheral does not accept the connection within the timeout (it is
            not advertising, for example because it is connected elsewhere).
        BleakError
            If the client is already connected or the link drops during setup.
        """
        if self.is_connected:
            raise BleakError("Client is already connected")
        if pair:
            logger.info("%s: pairing requested; virtual peripherals need none, ignored", self)
        timeout = float(kwargs.get("timeout", self._timeout))
        host = await self._radio.central(self._adapter)
        if not self._resolved:
            device = await BleakScanner.find_device_by_address(
                self.address, timeout=timeout, backend=self._radio.scanner_backend(self._adapter)
            )
            if device is None:
                raise BleakDeviceNotFoundError(
                    self.address, f"Device with address {self.address} was not found."
                )
            self._name = self._name or device.name
            self._resolved = True

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with asyncio.timeout(timeout):
            await host.connect_lock.acquire()
        try:
            remaining = max(deadline - loop.time(), 0.001)
            with _bleak_errors(f"connecting to {self.address}"):
                connection = await host.device.connect(
                    hci.Address(self.address, hci.Address.RANDOM_DEVICE_ADDRESS),
                    transport=core.PhysicalTransport.LE,
                    timeout=remaining,
                )
        finally:
            host.connect_lock.release()

        self._connection = connection
        connection.on(Connection.EVENT_DISCONNECTION, self._on_disconnection)
        logger.debug("%s: connected (handle 0x%04X)", self, connection.handle)
        try:
            async with asyncio.timeout(max(deadline - loop.time(), 0.001)):
                with _bleak_errors(f"setting up the connection to {self.address}"):
                    await connection.gatt_client.request_mtu(self._requested_mtu)
                    self._last_mtu = int(connection.att_mtu)
                    self.services = await self._discover_services(connection)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.disconnect()
            raise
        if self._connection is None:
            raise BleakError(f"{self.address} disconnected during service discovery")

    async def _discover_services(self, connection: Connection) -> BleakGATTServiceCollection:
        client = connection.gatt_client
        collection = BleakGATTServiceCollection()
        service_proxies: list[ServiceProxy] = await client.discover_services()
        for service in service_proxies:
            service_uuid = bleak_uuid(service.uuid)
            if self._service_filter is not None and service_uuid not in self._service_filter:
                continue
            bleak_service = BleakGATTService(service, service.handle, service_uuid)
            collection.add_service(bleak_service)
            characteristics: list[
                CharacteristicProxy[bytes]
            ] = await client.discover_characteristics((), service)
            for char in characteristics:
                bleak_char = BleakGATTCharacteristic(
                    char,
                    char.handle,
                    bleak_uuid(char.uuid),
                    _properties(int(char.properties)),
                    lambda: self.mtu_size - 3,
                    bleak_service,
                )
                collection.add_characteristic(bleak_char)
                descriptors: list[DescriptorProxy] = await client.discover_descriptors(char)
                for desc in descriptors:
                    collection.add_descriptor(
                        BleakGATTDescriptor(desc, desc.handle, bleak_uuid(desc.type), bleak_char)
                    )
                if char.uuid == GATT_DEVICE_NAME_CHARACTERISTIC and not self._name:
                    with contextlib.suppress(att.ATT_Error):
                        value: bytes = await char.read_value()
                        self._name = value.decode("utf-8", errors="replace")
        return collection

    async def disconnect(self) -> None:
        """Disconnect (no-op when not connected); returns once the link is down."""
        connection = self._connection
        if connection is None:
            return
        try:
            with _bleak_errors(f"disconnecting from {self.address}"):
                await connection.disconnect(reason=hci.HCI_REMOTE_USER_TERMINATED_CONNECTION_ERROR)
        except BleakError as exc:
            logger.debug("%s: disconnect: %s", self, exc)
        if self._connection is connection:  # no disconnection event came: clean up anyway
            self._on_disconnection(hci.HCI_CONNECTION_TERMINATED_BY_LOCAL_HOST_ERROR)

    def _on_disconnection(self, reason: int) -> None:
        connection = self._connection
        if connection is None:
            return
        with contextlib.suppress(Exception):
            connection.remove_listener(Connection.EVENT_DISCONNECTION, self._on_disconnection)
        self._last_mtu = int(connection.att_mtu)
        self._connection = None
        self.services = None
        self._notify_callbacks.clear()
        self._dispatchers.clear()
        logger.info("%s: disconnected (reason 0x%02X)", self, reason)
        if self._disconnected_callback is not None:
            try:
                self._disconnected_callback()
            except Exception:
                logger.exception("%s: disconnected_callback raised", self)

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        """Do nothing: virtual peripherals need no pairing (logged)."""
        logger.info("%s: pair() is a no-op on the virtual radio", self)

    async def unpair(self) -> None:
        """Do nothing: nothing is ever bonded on the virtual radio (logged)."""
        logger.info("%s: unpair() is a no-op on the virtual radio", self)

    # -- I/O -----------------------------------------------------------------------------

    def _require_connection(self) -> Connection:
        if self._connection is None:
            raise BleakError("Not connected")
        return self._connection

    async def read_gatt_char(
        self,
        characteristic: BleakGATTCharacteristic,
        *,
        use_cached: bool = False,
        **kwargs: Any,
    ) -> bytearray:
        """Read a characteristic value (``use_cached`` is ignored: always reads).

        Parameters
        ----------
        characteristic:
            From this client's service collection.
        use_cached:
            Ignored.
        **kwargs:
            Ignored.

        Returns
        -------
        bytearray
            The value.
        """
        self._require_connection()
        proxy = cast(CharacteristicProxy[bytes], characteristic.obj)
        with _bleak_errors(f"reading {characteristic.uuid}"):
            value: bytes = await proxy.read_value()
        return bytearray(value)

    async def read_gatt_descriptor(
        self,
        descriptor: BleakGATTDescriptor,
        *,
        use_cached: bool = False,
        **kwargs: Any,
    ) -> bytearray:
        """Read a descriptor value (``use_cached`` is ignored).

        Parameters
        ----------
        descriptor:
            From this client's service collection.
        use_cached:
            Ignored.
        **kwargs:
            Ignored.

        Returns
        -------
        bytearray
            The value.
        """
        self._require_connection()
        proxy = cast(DescriptorProxy, descriptor.obj)
        with _bleak_errors(f"reading descriptor {descriptor.handle}"):
            value: bytes = await proxy.read_value()
        return bytearray(value)

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool
    ) -> None:
        """Write a characteristic value, with or without response.

        Parameters
        ----------
        characteristic:
            From this client's service collection.
        data:
            The bytes.
        response:
            Write Request (``True``) or Write Command (``False``).
        """
        self._require_connection()
        proxy = cast(CharacteristicProxy[bytes], characteristic.obj)
        with _bleak_errors(f"writing {characteristic.uuid}"):
            await proxy.write_value(bytes(memoryview(data)), with_response=response)

    async def write_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, data: SizedBuffer
    ) -> None:
        """Write a descriptor value (with response).

        Parameters
        ----------
        descriptor:
            From this client's service collection.
        data:
            The bytes.
        """
        self._require_connection()
        proxy = cast(DescriptorProxy, descriptor.obj)
        with _bleak_errors(f"writing descriptor {descriptor.handle}"):
            await proxy.write_value(bytes(memoryview(data)), with_response=True)

    async def start_notify(
        self,
        characteristic: BleakGATTCharacteristic,
        callback: NotifyCallback,
        **kwargs: Any,
    ) -> None:
        """Enable notifications (or indications) and route them to ``callback``.

        Calling it again for the same characteristic replaces the callback.

        Parameters
        ----------
        characteristic:
            From this client's service collection.
        callback:
            bleak's wrapped callback, called with a ``bytearray`` per notification.
        **kwargs:
            Platform arguments (``bluez=``, ``cb=``), ignored.
        """
        connection = self._require_connection()
        handle = characteristic.handle
        already = handle in self._dispatchers
        self._notify_callbacks[handle] = callback
        if already:
            return
        key = DeliveryKey(
            peripheral=format_address(connection.peer_address),
            central=format_address(connection.self_address),
            handle=handle,
        )
        dispatcher = self._make_dispatcher(key)
        self._dispatchers[handle] = dispatcher
        proxy = cast(CharacteristicProxy[bytes], characteristic.obj)
        try:
            with _bleak_errors(f"enabling notifications on {characteristic.uuid}"):
                await proxy.subscribe(dispatcher, prefer_notify=True)
        except BaseException:
            self._notify_callbacks.pop(handle, None)
            self._dispatchers.pop(handle, None)
            raise

    def _make_dispatcher(self, key: DeliveryKey) -> Callable[[bytes], None]:
        ledger = self._radio.deliveries
        loop = asyncio.get_running_loop()
        callbacks = self._notify_callbacks

        def dispatch(value: bytes) -> None:
            callback = callbacks.get(key.handle)
            if callback is None:
                return
            try:
                callback(bytearray(value))
            except Exception:
                logger.exception("notification callback for handle %d raised", key.handle)
            # One loop turn later, so a coroutine callback's first step has run as well.
            loop.call_soon(ledger.record, key)

        return dispatch

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        """Disable notifications on a characteristic (no-op when not enabled).

        Parameters
        ----------
        characteristic:
            From this client's service collection.
        """
        self._require_connection()
        handle = characteristic.handle
        dispatcher = self._dispatchers.pop(handle, None)
        self._notify_callbacks.pop(handle, None)
        if dispatcher is None:
            return
        proxy = cast(CharacteristicProxy[bytes], characteristic.obj)
        with _bleak_errors(f"disabling notifications on {characteristic.uuid}"):
            await proxy.unsubscribe(dispatcher)

    def __repr__(self) -> str:
        return f"VirtualBleakClient({self.address}, {self._adapter})"
