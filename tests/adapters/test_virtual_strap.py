"""The virtual strap and the Bumble bleak backend, driven only through bleak's public API.

Every test runs its own event loop (``asyncio.run``) with its own
:class:`~hrvstream.adapters.bleak_bumble.VirtualRadio`. Nothing sleeps to synchronise:
tests wait on events and on :meth:`VirtualStrap.wait_for` conditions, under timeouts.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakDeviceNotFoundError, BleakError, BleakGATTProtocolError
from bleak_retry_connector import establish_connection

from hrvstream.adapters.bleak_bumble import VirtualDeviceDetails, VirtualRadio
from hrvstream.adapters.virtual_clock import Clock, SystemClock, VirtualClock
from hrvstream.adapters.virtual_strap import (
    EVENT_STRAP_CONTACT,
    EVENT_STRAP_DROP,
    EVENT_STRAP_RESUME,
    EVENT_STRAP_SILENT,
    VirtualStrap,
)
from hrvstream.protocol.beat_timing import encode_rr_as_notifications
from hrvstream.protocol.capture import (
    EVENT_CONNECTED,
    EVENT_DISCONNECTED,
    CaptureEvent,
    Notification,
)
from hrvstream.protocol.heart_rate import (
    BATTERY_LEVEL_UUID,
    BODY_SENSOR_LOCATION_UUID,
    HEART_RATE_CONTROL_POINT_UUID,
    HEART_RATE_MEASUREMENT_UUID,
    HEART_RATE_SERVICE_UUID,
    BodySensorLocation,
    HeartRateParseError,
    parse_body_sensor_location,
    parse_heart_rate_measurement,
    rr_ms_to_raw,
)

HR = HEART_RATE_MEASUREMENT_UUID
STEP = 10.0  # generous bound for any single wait in these tests, seconds


def run(test: Callable[[], Coroutine[Any, Any, None]], timeout: float = 60.0) -> None:
    """Run one async test body in a fresh event loop, bounded by ``timeout``."""

    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await test()

    asyncio.run(bounded())


def hr_payload(i: int) -> bytes:
    """A valid, distinct Heart Rate Measurement payload: contact ok, HR 60, one RR."""
    return bytes((0x16, 60, i & 0xFF, (i >> 8) & 0xFF))


class Collector:
    """A plain (synchronous) bleak notification callback that keeps what it gets."""

    def __init__(self, clock: Clock | None = None, expect: int | None = None) -> None:
        self.payloads: list[bytes] = []
        self.times: list[float] = []
        self._clock = clock
        self._expect = expect
        self.done = asyncio.Event()

    def __call__(self, sender: BleakGATTCharacteristic, data: bytearray) -> None:
        assert isinstance(data, bytearray)
        self.payloads.append(bytes(data))
        if self._clock is not None:
            self.times.append(self._clock.now())
        if self._expect is not None and len(self.payloads) >= self._expect:
            self.done.set()

    async def wait(self) -> None:
        async with asyncio.timeout(STEP):
            await self.done.wait()

    async def wait_count(self, n: int) -> None:
        """Wait until ``n`` payloads have arrived."""
        self._expect = n
        if len(self.payloads) >= n:
            return
        self.done.clear()
        await self.wait()


async def find(radio: VirtualRadio, strap: VirtualStrap) -> BLEDevice:
    device = await BleakScanner.find_device_by_address(
        strap.address, timeout=STEP, backend=radio.scanner_backend()
    )
    assert device is not None
    return device


# ---------------------------------------------------------------------------------------
# Scanning and connecting
# ---------------------------------------------------------------------------------------


def test_scan_reports_name_address_rssi_and_heart_rate_service() -> None:
    async def body() -> None:
        async with VirtualRadio() as radio:
            strap = VirtualStrap(radio, name="Polar H10 8C4D2E1A", advertising_interval_ms=20)
            await strap.start()
            seen: list[tuple[BLEDevice, AdvertisementData]] = []
            filtered_out: list[BLEDevice] = []
            twice = asyncio.Event()

            def on_any(device: BLEDevice, adv: AdvertisementData) -> None:
                seen.append((device, adv))
                if len(seen) >= 2:
                    twice.set()

            battery_only = BleakScanner(
                lambda d, a: filtered_out.append(d),
                service_uuids=["180f"],
                backend=radio.scanner_backend(),
            )
            async with battery_only, BleakScanner(on_any, backend=radio.scanner_backend()):
                async with asyncio.timeout(STEP):
                    await twice.wait()
            device, adv = seen[0]
            assert device.address == strap.address == "F0:00:00:00:00:01"
            assert device.name == "Polar H10 8C4D2E1A"
            assert isinstance(device.details, VirtualDeviceDetails)
            assert adv.local_name == "Polar H10 8C4D2E1A"
            assert HEART_RATE_SERVICE_UUID in adv.service_uuids
            assert isinstance(adv.rssi, int) and -127 <= adv.rssi <= 20
            # both scanners got the same reports; the 0x180F filter let none through
            assert filtered_out == []

            by_name = await BleakScanner.find_device_by_name(
                "Polar H10 8C4D2E1A", timeout=STEP, backend=radio.scanner_backend()
            )
            assert by_name is not None and by_name.address == strap.address
            found = await BleakScanner.find_device_by_filter(
                lambda d, a: HEART_RATE_SERVICE_UUID in a.service_uuids,
                timeout=STEP,
                service_uuids=[HEART_RATE_SERVICE_UUID],
                backend=radio.scanner_backend(),
            )
            assert found is not None and found.address == strap.address

    run(body)


def test_connect_by_address_and_by_name_then_read_characteristics() -> None:
    async def body() -> None:
        async with VirtualRadio() as radio:
            strap = VirtualStrap(
                radio,
                name="HRM Alpha",
                battery_pct=87,
                body_sensor_location=BodySensorLocation.CHEST,
                advertising_interval_ms=20,
            )
            await strap.start()
            client_backend = radio.client_backend()

            # by address string: the backend scans for it first, like BlueZ
            async with BleakClient(strap.address, timeout=STEP, backend=client_backend) as c:
                assert c.is_connected
                assert c.address == strap.address
                assert c.backend_id == "BleakClientVirtual"
                assert c.mtu_size == 247  # client asks 517, the strap allows 247
                assert c.name == "HRM Alpha"
                assert await c.read_gatt_char(BATTERY_LEVEL_UUID) == bytearray([87])
                location = await c.read_gatt_char(BODY_SENSOR_LOCATION_UUID)
                assert parse_body_sensor_location(location) is BodySensorLocation.CHEST
                service = c.services.get_service(HEART_RATE_SERVICE_UUID)
                assert service is not None
                hrm = service.get_characteristic(HR)
                assert hrm is not None and "notify" in hrm.properties
                assert hrm.get_descriptor("2902") is not None
                cp = c.services.get_characteristic(HEART_RATE_CONTROL_POINT_UUID)
                assert cp is not None and "write" in cp.properties
                await c.write_gatt_char(cp, b"\x01", response=True)
                assert strap.energy_resets == 1
                with pytest.raises(BleakGATTProtocolError) as err:
                    await c.write_gatt_char(cp, b"\x02", response=True)
                assert err.value.code == 0x80
            assert not c.is_connected
            await strap.wait_for(lambda s: not s.connected, timeout=STEP)

            # by name, through the scanner
            device = await BleakScanner.find_device_by_name(
                "HRM Alpha", timeout=STEP, backend=radio.scanner_backend()
            )
            assert device is not None
            async with BleakClient(device, backend=client_backend) as c:
                assert c.is_connected
                await strap.set_battery(12)
                assert await c.read_gatt_char(BATTERY_LEVEL_UUID) == bytearray([12])
                await c.pair()  # a no-op, as documented
            assert strap.connections_accepted == 2

    run(body)


def test_unknown_address_raises_device_not_found() -> None:
    async def body() -> None:
        async with VirtualRadio() as radio:
            client = BleakClient("F0:00:00:00:0F:FF", timeout=0.3, backend=radio.client_backend())
            with pytest.raises(BleakDeviceNotFoundError):
                await client.connect()
            with pytest.raises(BleakError, match="Not connected"):
                await client.start_notify(HR, Collector())

    run(body)


def test_connect_times_out_while_strap_is_taken_then_succeeds() -> None:
    """A strap with one connection slot stops advertising; a second central times out.

    Also checks that the central's controller is usable after a cancelled attempt.
    """

    async def body() -> None:
        async with VirtualRadio() as radio:
            strap = VirtualStrap(radio, advertising_interval_ms=20)
            await strap.start()
            device = await find(radio, strap)
            first = BleakClient(device, backend=radio.client_backend("hci0"))
            second = BleakClient(device, timeout=0.3, backend=radio.client_backend("hci1"))
            await first.connect()
            with pytest.raises(TimeoutError):
                await second.connect()
            await first.disconnect()
            await second.connect()
            assert second.is_connected
            await second.disconnect()

    run(body)


# ---------------------------------------------------------------------------------------
# Notifications
# ---------------------------------------------------------------------------------------


def test_subscribe_receives_sequence_exactly_at_finite_speed() -> None:
    async def body() -> None:
        async with VirtualRadio() as radio:
            records = [(100.0 + 0.1 * i, hr_payload(i)) for i in range(40)]
            strap = VirtualStrap(radio, records, speed=20.0, advertising_interval_ms=20)
            await strap.start()
            got = Collector(radio.clock, expect=len(records))
            async with BleakClient(await find(radio, strap), backend=radio.client_backend()) as c:
                await c.start_notify(HR, got)
                await got.wait()
                await c.stop_notify(HR)
                await strap.wait_for(lambda s: not s.subscribed, timeout=STEP)
            assert got.payloads == [p for _, p in records]
            assert strap.notifications_sent == len(records)
            assert strap.played.is_set()
            # the clock ran on the recording's time axis at 20x
            assert got.times == sorted(got.times)
            for (t, _), now in zip(records, got.times, strict=True):
                assert t <= now < t + 5.0  # 5 recorded s = 250 ms of latency at 20x

    run(body)


def test_battery_notifications() -> None:
    async def body() -> None:
        async with VirtualRadio() as radio:
            strap = VirtualStrap(radio, battery_pct=50, advertising_interval_ms=20)
            await strap.start()
            got = Collector(expect=2)
            async with BleakClient(await find(radio, strap), backend=radio.client_backend()) as c:
                await c.start_notify(BATTERY_LEVEL_UUID, got)
                await strap.set_battery(49)
                await strap.set_battery(48)
                await got.wait()
            assert got.payloads == [b"\x31", b"\x30"]
            with pytest.raises(ValueError):
                await strap.set_battery(101)

    run(body)


def test_two_straps_at_once_each_deliver_their_own_data() -> None:
    async def body() -> None:
        async with VirtualRadio() as radio:
            rec_a = [(0.05 * i, hr_payload(i)) for i in range(30)]
            rec_b = [(0.05 * i, hr_payload(1000 + i)) for i in range(25)]
            strap_a = VirtualStrap(
                radio,
                rec_a,
                name="Strap A",
                speed=10.0,
                clock=VirtualClock(),
                advertising_interval_ms=20,
            )
            strap_b = VirtualStrap(
                radio,
                rec_b,
                name="Strap B",
                speed=10.0,
                clock=VirtualClock(),
                advertising_interval_ms=20,
            )
            await strap_a.start()
            await strap_b.start()
            assert strap_a.address != strap_b.address
            got_a, got_b = Collector(expect=len(rec_a)), Collector(expect=len(rec_b))
            backend = radio.client_backend()
            async with (
                BleakClient(await find(radio, strap_a), backend=backend) as ca,
                BleakClient(await find(radio, strap_b), backend=backend) as cb,
            ):
                await asyncio.gather(ca.start_notify(HR, got_a), cb.start_notify(HR, got_b))
                await asyncio.gather(got_a.wait(), got_b.wait())
            assert got_a.payloads == [p for _, p in rec_a]
            assert got_b.payloads == [p for _, p in rec_b]

    run(body)


def test_silent_strap_stays_connected_and_sends_nothing() -> None:
    async def body() -> None:
        async with VirtualRadio() as radio:
            records = [(float(i), hr_payload(i)) for i in range(50)]
            strap = VirtualStrap(radio, records, speed=None, advertising_interval_ms=20)
            await strap.start()
            await strap.go_silent()
            got = Collector()
            async with BleakClient(await find(radio, strap), backend=radio.client_backend()) as c:
                await c.start_notify(HR, got)
                async with asyncio.timeout(STEP):
                    await strap.played.wait()
                assert c.is_connected
                assert strap.connected and strap.subscribed
                # nothing was sent; a raw payload afterwards still goes through
                assert got.payloads == []
                assert strap.notifications_suppressed == 50
                assert strap.notifications_sent == 0
                await strap.resume()
                assert await strap.send_raw(hr_payload(7)) == 1
                assert got.payloads == [hr_payload(7)]  # lockstep: delivered on return

    run(body)


def test_scheduled_silence_then_resume() -> None:
    async def body() -> None:
        async with VirtualRadio() as radio:
            records: list[Notification | CaptureEvent] = [
                Notification(float(i), HR, hr_payload(i)) for i in range(5)
            ]
            records.append(CaptureEvent(5.0, EVENT_STRAP_SILENT))
            records += [Notification(5.0 + i, HR, hr_payload(100 + i)) for i in range(10)]
            records.append(CaptureEvent(15.0, EVENT_STRAP_RESUME))
            records += [Notification(15.0 + i, HR, hr_payload(200 + i)) for i in range(5)]
            strap = VirtualStrap(radio, records, speed=None, advertising_interval_ms=20)
            await strap.start()
            got = Collector(radio.clock)
            async with BleakClient(await find(radio, strap), backend=radio.client_backend()) as c:
                await c.start_notify(HR, got)
                async with asyncio.timeout(STEP):
                    await strap.played.wait()
                assert c.is_connected
            expected = [hr_payload(i) for i in range(5)] + [hr_payload(200 + i) for i in range(5)]
            assert got.payloads == expected
            assert got.times == [0.0, 1.0, 2.0, 3.0, 4.0, 15.0, 16.0, 17.0, 18.0, 19.0]
            assert strap.notifications_suppressed == 10

    run(body)


def test_contact_loss_re_encodes_following_payloads() -> None:
    async def body() -> None:
        async with VirtualRadio() as radio:
            beats = encode_rr_as_notifications([800.0 + (i % 7) * 10 for i in range(40)])
            half = len(beats) // 2
            records: list[Notification | CaptureEvent] = [
                *beats[:half],
                CaptureEvent(beats[half].t_s, EVENT_STRAP_CONTACT, "lost"),
                *beats[half:],
            ]
            strap = VirtualStrap(radio, records, speed=None, advertising_interval_ms=20)
            await strap.start()
            got = Collector()
            async with BleakClient(await find(radio, strap), backend=radio.client_backend()) as c:
                await c.start_notify(HR, got)
                async with asyncio.timeout(STEP):
                    await strap.played.wait()
            assert len(got.payloads) == len(beats)
            for sent, received in zip(beats[:half], got.payloads[:half], strict=True):
                assert received == sent.payload
                assert parse_heart_rate_measurement(received).sensor_contact_detected is True
            for sent, received in zip(beats[half:], got.payloads[half:], strict=True):
                m = parse_heart_rate_measurement(received)
                assert m.sensor_contact_supported and m.sensor_contact_detected is False
                assert received[0] == sent.payload[0] & ~0x02  # only bit 1 changed
                assert received[1:] == sent.payload[1:]

    run(body)


def test_corrupt_payloads_are_delivered_as_is() -> None:
    corrupt = [b"", b"\x10\x48\x01", b"\xe0\x48", b"\x01\x48", b"\x10\x48"]

    async def body() -> None:
        async with VirtualRadio() as radio:
            records = [(0.0, hr_payload(1))]
            records += [(1.0 + i, p) for i, p in enumerate(corrupt)]
            records += [(10.0, hr_payload(2))]
            strap = VirtualStrap(radio, records, speed=None, advertising_interval_ms=20)
            await strap.start()
            await strap.set_contact(False)  # re-encodes valid payloads, never corrupt ones
            got = Collector()
            async with BleakClient(await find(radio, strap), backend=radio.client_backend()) as c:
                await c.start_notify(HR, got)
                async with asyncio.timeout(STEP):
                    await strap.played.wait()
                await strap.send_raw(b"\x16\x48\x01")
            assert got.payloads[1:-2] == corrupt
            assert got.payloads[-1] == b"\x16\x48\x01"
            for p in [*corrupt, got.payloads[-1]]:
                with pytest.raises(HeartRateParseError):
                    parse_heart_rate_measurement(p)
            assert parse_heart_rate_measurement(got.payloads[0]).sensor_contact_detected is False

    run(body)


# ---------------------------------------------------------------------------------------
# Link drops and reconnection
# ---------------------------------------------------------------------------------------


def _capture_with_drop() -> tuple[list[Notification | CaptureEvent], list[bytes], list[bytes]]:
    before = [Notification(float(i), HR, hr_payload(i)) for i in range(10)]
    in_gap = [Notification(11.0, HR, hr_payload(11)), Notification(12.0, HR, hr_payload(12))]
    after = [Notification(15.0 + i, HR, hr_payload(15 + i)) for i in range(10)]
    records: list[Notification | CaptureEvent] = [
        *before,
        CaptureEvent(10.0, EVENT_DISCONNECTED, "supervision timeout"),
        *in_gap,
        CaptureEvent(15.0, EVENT_CONNECTED),
        *after,
    ]
    return (
        records,
        [n.payload for n in before + after],
        [n.payload for n in before + in_gap + after],
    )


@pytest.mark.parametrize("on_drop", ["skip", "pause"])
def test_drop_then_reconnect_with_bleak_retry_connector(on_drop: str) -> None:
    async def body() -> None:
        async with VirtualRadio() as radio:
            records, expected_skip, expected_pause = _capture_with_drop()
            strap = VirtualStrap(
                radio,
                records,
                speed=None,
                on_drop="skip" if on_drop == "skip" else "pause",
                advertising_interval_ms=20,
            )
            await strap.start()
            device = await find(radio, strap)
            got = Collector(radio.clock)
            dropped = asyncio.Event()

            def on_disconnect(client: BleakClient) -> None:
                dropped.set()

            backend = radio.client_backend()
            client = await establish_connection(
                BleakClient, device, device.name or "strap", on_disconnect, backend=backend
            )
            await client.start_notify(HR, got)
            async with asyncio.timeout(STEP):
                await dropped.wait()
            assert not client.is_connected
            assert got.payloads == expected_skip[:10]

            started = time.perf_counter()
            async with asyncio.timeout(5.0):
                client = await establish_connection(
                    BleakClient, device, device.name or "strap", on_disconnect, backend=backend
                )
            reconnect_s = time.perf_counter() - started
            assert client.is_connected
            await client.start_notify(HR, got)
            async with asyncio.timeout(STEP):
                await strap.played.wait()
            await client.disconnect()
            print(f"\nreconnect via establish_connection took {reconnect_s * 1000:.1f} ms")

            if on_drop == "skip":
                assert got.payloads == expected_skip
                assert strap.notifications_skipped == 2
                assert got.times == [float(i) for i in range(10)] + [15.0 + i for i in range(10)]
            else:
                assert got.payloads == expected_pause
                assert strap.notifications_skipped == 0
            assert strap.disconnections == 2

    run(body)


def test_strap_drop_event_skips_its_gap_at_max_speed() -> None:
    async def body() -> None:
        async with VirtualRadio() as radio:
            records: list[Notification | CaptureEvent] = [
                Notification(float(i), HR, hr_payload(i)) for i in range(5)
            ]
            records.append(CaptureEvent(4.5, EVENT_STRAP_DROP, "3"))
            records += [Notification(5.0 + i, HR, hr_payload(5 + i)) for i in range(5)]
            strap = VirtualStrap(radio, records, speed=None, advertising_interval_ms=20)
            await strap.start()
            device = await find(radio, strap)
            got = Collector()
            backend = radio.client_backend()
            dropped = asyncio.Event()
            async with BleakClient(device, lambda c: dropped.set(), backend=backend) as c:
                await c.start_notify(HR, got)
                async with asyncio.timeout(STEP):
                    await dropped.wait()
            async with BleakClient(device, backend=backend) as c:
                await c.start_notify(HR, got)
                async with asyncio.timeout(STEP):
                    await strap.played.wait()
            # t in [4.5, 7.5) was lost with the link: 5.0, 6.0 and 7.0
            assert got.payloads == [hr_payload(i) for i in (0, 1, 2, 3, 4, 8, 9)]
            assert strap.notifications_skipped == 3

    run(body)


def test_manual_drop_at_finite_speed_fires_callback_and_notifications_resume() -> None:
    async def body() -> None:
        async with VirtualRadio() as radio:
            records = [(0.1 * i, hr_payload(i)) for i in range(400)]
            strap = VirtualStrap(radio, records, speed=200.0, advertising_interval_ms=20)
            await strap.start()
            device = await find(radio, strap)
            got = Collector()
            dropped = asyncio.Event()
            backend = radio.client_backend()
            client = BleakClient(device, lambda c: dropped.set(), backend=backend)
            await client.connect()
            await client.start_notify(HR, got)
            await strap.wait_for(lambda s: s.notifications_sent >= 20, timeout=STEP)
            await strap.drop_link()
            async with asyncio.timeout(STEP):
                await dropped.wait()
            count_at_drop = len(got.payloads)

            client = await establish_connection(
                BleakClient, device, "strap", lambda c: None, backend=backend
            )
            await client.start_notify(HR, got)
            async with asyncio.timeout(STEP):
                await strap.played.wait()
            await got.wait_count(strap.notifications_sent)
            await client.disconnect()
            assert len(got.payloads) > count_at_drop  # notifications resumed
            assert strap.notifications_sent + strap.notifications_skipped == len(records)
            assert strap.notifications_skipped > 0  # a real strap does not wait for you
            index = {p: i for i, (_, p) in enumerate(records)}
            positions = [index[p] for p in got.payloads]
            assert positions == sorted(positions)  # in order, no duplicates

    run(body)


def test_manual_drop_with_pause_policy_loses_nothing_and_clock_stays_monotonic() -> None:
    async def body() -> None:
        async with VirtualRadio() as radio:
            records = [(0.1 * i, hr_payload(i)) for i in range(300)]
            strap = VirtualStrap(
                radio, records, speed=50.0, on_drop="pause", advertising_interval_ms=20
            )
            await strap.start()
            device = await find(radio, strap)
            got = Collector(radio.clock, expect=len(records))
            dropped = asyncio.Event()
            backend = radio.client_backend()
            client = BleakClient(device, lambda c: dropped.set(), backend=backend)
            await client.connect()
            await client.start_notify(HR, got)
            await strap.wait_for(lambda s: s.notifications_sent >= 20, timeout=STEP)
            await strap.drop_link(gap_s=5.0)  # ignored by "pause"
            async with asyncio.timeout(STEP):
                await dropped.wait()
            frozen = radio.clock.now()
            assert not radio.clock.running  # the recording's time stopped with the link
            client = await establish_connection(
                BleakClient, device, "strap", lambda c: None, backend=backend
            )
            await client.start_notify(HR, got)
            await got.wait()
            await client.disconnect()
            assert got.payloads == [p for _, p in records]
            assert strap.notifications_skipped == 0
            assert got.times == sorted(got.times)
            assert frozen <= got.times[len(got.times) // 2]

    run(body)


def test_client_disconnect_also_calls_disconnected_callback() -> None:
    async def body() -> None:
        async with VirtualRadio() as radio:
            strap = VirtualStrap(radio, advertising_interval_ms=20)
            await strap.start()
            calls: list[BleakClient] = []
            client = BleakClient(
                await find(radio, strap), calls.append, backend=radio.client_backend()
            )
            await client.connect()
            await client.disconnect()
            assert calls == [client]
            await strap.wait_for(lambda s: s.disconnections == 1, timeout=STEP)

    run(body)


# ---------------------------------------------------------------------------------------
# Lockstep at maximum speed
# ---------------------------------------------------------------------------------------


def test_lockstep_max_speed_delivers_everything_with_recorded_times() -> None:
    n = 5000
    rng = random.Random(20240501)
    t = 3.0
    records: list[tuple[float, bytes]] = []
    for i in range(n):
        t += rng.uniform(0.2, 2.5)
        records.append((t, hr_payload(i)))

    async def body() -> None:
        async with VirtualRadio() as radio:
            strap = VirtualStrap(radio, records, speed=None, advertising_interval_ms=20)
            await strap.start()
            got = Collector(radio.clock, expect=n)
            async with BleakClient(await find(radio, strap), backend=radio.client_backend()) as c:
                started = time.perf_counter()
                await c.start_notify(HR, got)
                async with asyncio.timeout(120):
                    await strap.played.wait()
                elapsed = time.perf_counter() - started
            assert got.payloads == [p for _, p in records]
            assert got.times == [t for t, _ in records]  # exactly, float for float
            print(f"\nlockstep at max speed: {n / elapsed:.0f} notifications/s through bleak")

    run(body, timeout=180)


def test_lockstep_holds_for_coroutine_callbacks() -> None:
    records = [(0.25 * i, hr_payload(i)) for i in range(300)]

    async def body() -> None:
        async with VirtualRadio() as radio:
            strap = VirtualStrap(radio, records, speed=None, advertising_interval_ms=20)
            await strap.start()
            times: list[float] = []

            async def on_data(sender: BleakGATTCharacteristic, data: bytearray) -> None:
                times.append(radio.clock.now())  # before the first await
                await asyncio.sleep(0)

            async with BleakClient(await find(radio, strap), backend=radio.client_backend()) as c:
                await c.start_notify(HR, on_data)
                async with asyncio.timeout(STEP):
                    await strap.played.wait()
            assert times == [t for t, _ in records]

    run(body)


# ---------------------------------------------------------------------------------------
# RR intervals to notifications; clocks
# ---------------------------------------------------------------------------------------


def test_rr_to_notifications_rule() -> None:
    # beats at 0.8, 1.6, 2.0 (exactly on a tick), 3.5, 5.5 (no beat in (4, 5])
    ns = encode_rr_as_notifications([800.0, 800.0, 400.0, 1500.0, 2000.0], start_s=10.0)
    decoded = [parse_heart_rate_measurement(n.payload) for n in ns]
    assert [n.t_s for n in ns] == [11.0, 12.0, 13.0, 14.0, 15.0, 16.0]
    assert [m.rr_raw for m in decoded] == [
        (rr_ms_to_raw(800.0),),
        (rr_ms_to_raw(800.0), rr_ms_to_raw(400.0)),
        (),
        (rr_ms_to_raw(1500.0),),
        (),
        (rr_ms_to_raw(2000.0),),
    ]
    assert [m.heart_rate_bpm for m in decoded] == [75, 100, 100, 40, 40, 30]
    assert all(m.sensor_contact_detected is True for m in decoded)
    assert all(n.uuid == HR for n in ns)

    fast = parse_heart_rate_measurement(encode_rr_as_notifications([200.0] * 5)[0].payload)
    assert fast.heart_rate_bpm == 300 and fast.uint16_format and len(fast.rr_raw) == 5

    # round half to even: 60000 / 960 = 62.5 -> 62
    tie = parse_heart_rate_measurement(encode_rr_as_notifications([960.0])[0].payload)
    assert tie.heart_rate_bpm == 62
    no_contact = parse_heart_rate_measurement(
        encode_rr_as_notifications([900.0], contact=None)[0].payload
    )
    assert no_contact.sensor_contact_supported is False

    assert encode_rr_as_notifications([]) == []
    with pytest.raises(ValueError):
        encode_rr_as_notifications([800.0, 0.0])
    with pytest.raises(ValueError):
        encode_rr_as_notifications([800.0], period_s=0.0)


def test_rr_to_notifications_keeps_every_beat() -> None:
    rng = random.Random(7)
    rr = [rng.uniform(350.0, 1600.0) for _ in range(2000)]
    ns = encode_rr_as_notifications(rr, period_s=1.0)
    raws = [r for n in ns for r in parse_heart_rate_measurement(n.payload).rr_raw]
    assert raws == [rr_ms_to_raw(x) for x in rr]
    assert [n.t_s for n in ns] == [float(k) for k in range(1, len(ns) + 1)]
    assert ns[-1].t_s >= sum(rr) / 1000 > ns[-1].t_s - 1.0


def test_virtual_clock_set_run_freeze() -> None:
    async def body() -> None:
        clock = VirtualClock()
        assert clock.now() == 0.0 and not clock.running
        clock.set(42.25)
        assert clock.now() == 42.25
        loop = asyncio.get_running_loop()
        clock.run(100.0, 10.0)
        t0 = loop.time()
        assert clock.running and clock.speed == 10.0
        await asyncio.sleep(0.02)  # let loop time advance; this is what is measured
        elapsed = loop.time() - t0
        now = clock.now()
        assert 100.0 + elapsed * 10.0 <= now + 1e-9
        clock.freeze()
        frozen = clock.now()
        assert frozen >= now and clock.now() == frozen and not clock.running
        with pytest.raises(ValueError):
            clock.run(0.0, 0.0)
        with pytest.raises(ValueError):
            clock.set(float("nan"))

    run(body)
    assert isinstance(VirtualClock(), Clock)
    assert isinstance(SystemClock(), Clock)
    assert abs(SystemClock().now() - time.time()) < 1.0


def test_strap_argument_validation() -> None:
    async def body() -> None:
        radio = VirtualRadio()
        with pytest.raises(ValueError):
            VirtualStrap(radio, speed=0.0)
        with pytest.raises(ValueError):
            VirtualStrap(radio, name="x" * 23)
        with pytest.raises(ValueError):
            VirtualStrap(radio, [(2.0, b"\x00\x00"), (1.0, b"\x00\x00")])
        with pytest.raises(TypeError):
            VirtualStrap(radio, [1.0])  # type: ignore[list-item]
        with pytest.raises(ValueError):
            VirtualStrap(radio, on_drop="drop")  # type: ignore[arg-type]
        for bad in (
            CaptureEvent(0.0, EVENT_STRAP_CONTACT, "maybe"),
            CaptureEvent(0.0, EVENT_STRAP_DROP, "-1"),
            CaptureEvent(0.0, "strap_battery", "101"),
            CaptureEvent(0.0, "strap_battery"),
        ):
            with pytest.raises(ValueError, match="detail"):
                VirtualStrap(radio, [bad])
        await radio.aclose()

    run(body)
