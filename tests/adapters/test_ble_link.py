"""The agent's own BLE code (:mod:`hrvstream.adapters.ble`) through bleak's real API.

``scan``, :class:`StrapLink` and ``run_straps`` run unchanged; only bleak's ``backend=``
is the Bumble virtual radio, and the link's clock is the virtual strap's. Every test runs
its own event loop (``asyncio.run``) with its own radio. Nothing sleeps to synchronise:
tests wait on the link's callbacks (:class:`Probe`) and on
:meth:`VirtualStrap.wait_for`, every wait bounded by ``asyncio.timeout``. The only timing
assertions are lower bounds (a backoff cannot be shorter than its delay), never speeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Hashable, Sequence
from typing import Any

import pytest
from bumble import core, hci
from bumble.device import AdvertisingType, Device
from bumble.gatt import GATT_BATTERY_SERVICE
from bumble.host import Host
from bumble.transport.common import AsyncPipeSink

from hrvstream.adapters.ble import (
    LinkSettings,
    StrapEvent,
    StrapEventKind,
    StrapFound,
    StrapLink,
    run_straps,
    scan,
)
from hrvstream.adapters.bleak_bumble import VirtualRadio
from hrvstream.adapters.virtual_clock import VirtualClock
from hrvstream.adapters.virtual_strap import VirtualStrap
from hrvstream.pipeline import Beat, BeatPipeline
from hrvstream.protocol.beat_timing import StrapDecoder, encode_rr_as_notifications
from hrvstream.protocol.heart_rate import (
    BodySensorLocation,
    HeartRateParseError,
    parse_heart_rate_measurement,
)

K = StrapEventKind
STEP = 10.0  # generous bound for any single wait, seconds

#: Link timing for tests that are not about silence: no SILENT event can creep in.
STEADY = LinkSettings(
    scan_timeout_s=5.0,
    silence_s=60.0,
    silent_reconnect_s=120.0,
    backoff_initial_s=0.05,
    backoff_max_s=0.4,
)
#: Short silence timing, for the silence tests.
TWITCHY = LinkSettings(
    scan_timeout_s=5.0,
    silence_s=0.3,
    silent_reconnect_s=1.5,
    backoff_initial_s=0.05,
    backoff_max_s=0.4,
)
LINK_KINDS = (K.CONNECTED, K.DISCONNECTED, K.RECONNECTING, K.NOT_FOUND)


def run(test: Callable[[], Coroutine[Any, Any, None]], timeout: float = 60.0) -> None:
    """Run one async test body in a fresh event loop, bounded by ``timeout``."""

    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await test()

    asyncio.run(bounded())


def hr_payload(i: int) -> bytes:
    """A valid, distinct Heart Rate Measurement payload: contact ok, HR 60, one RR."""
    return bytes((0x16, 60, i & 0xFF, (i >> 8) & 0xFF))


def paced_records(n: int, spacing_s: float, first: int = 0) -> list[tuple[float, bytes]]:
    """``n`` distinct payloads ``spacing_s`` apart (to play at a finite speed)."""
    return [(spacing_s * i, hr_payload(first + i)) for i in range(n)]


class Probe:
    """``on_notification`` and ``on_event`` of one link; wakes waiters on every call.

    Optionally feeds a :class:`BeatPipeline` the way the agent does (``link_lost`` on
    ``DISCONNECTED``).
    """

    def __init__(self, pipeline: BeatPipeline | None = None) -> None:
        self.payloads: list[bytes] = []
        self.times: list[float] = []
        self.session: list[int] = []  # CONNECTED events seen when each notification came
        self.events: list[StrapEvent] = []
        self.event_loop_t: list[float] = []  # event-loop time of each event
        self.beats: list[Beat] = []
        self.pipeline = pipeline
        self._changed = asyncio.Event()

    def on_notification(self, t_s: float, payload: bytes) -> None:
        self.payloads.append(payload)
        self.times.append(t_s)
        self.session.append(self.count(K.CONNECTED))
        if self.pipeline is not None:
            self.beats.extend(self.pipeline.notification(t_s, payload)[0])
        self._changed.set()

    def on_event(self, event: StrapEvent) -> None:
        self.events.append(event)
        self.event_loop_t.append(asyncio.get_running_loop().time())
        if self.pipeline is not None and event.kind is K.DISCONNECTED:
            self.pipeline.link_lost()
        self._changed.set()

    def kinds(self, only: tuple[StrapEventKind, ...] | None = None) -> list[StrapEventKind]:
        return [e.kind for e in self.events if only is None or e.kind in only]

    def count(self, kind: StrapEventKind) -> int:
        return sum(1 for e in self.events if e.kind is kind)

    def index(self, kind: StrapEventKind, nth: int = 1) -> int:
        """Position in :attr:`events` of the ``nth`` event of ``kind``."""
        seen = 0
        for i, e in enumerate(self.events):
            if e.kind is kind:
                seen += 1
                if seen == nth:
                    return i
        raise AssertionError(f"no event #{nth} of kind {kind}: {self.kinds()}")

    async def until(self, predicate: Callable[[], bool], timeout: float = STEP) -> None:
        """Wait until ``predicate()`` holds, re-checked after every callback."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def until_event(self, kind: StrapEventKind, nth: int = 1) -> StrapEvent:
        await self.until(lambda: self.count(kind) >= nth)
        return self.events[self.index(kind, nth)]

    async def until_notifications(self, n: int) -> None:
        await self.until(lambda: len(self.payloads) >= n)


def make_link(
    radio: VirtualRadio,
    target: str,
    probe: Probe,
    clock: VirtualClock,
    settings: LinkSettings = STEADY,
) -> StrapLink:
    return StrapLink(
        target,
        on_notification=probe.on_notification,
        on_event=probe.on_event,
        clock=clock,
        settings=settings,
        scanner_backend=radio.scanner_backend(),
        client_backend=radio.client_backend(),
    )


@contextlib.asynccontextmanager
async def running(*links: StrapLink) -> AsyncIterator[asyncio.Task[None]]:
    """Run the links (one through ``StrapLink.run``, several through ``run_straps``).

    On exit every link is asked to stop, and the task must end by itself within
    ``STEP`` seconds: no cancellation.
    """
    coro = links[0].run() if len(links) == 1 else run_straps(links)
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        for link in links:
            link.stop()
        async with asyncio.timeout(STEP):
            await task


def is_in_order_subsequence(got: Sequence[Hashable], sent: Sequence[Hashable]) -> bool:
    """Whether ``got`` is ``sent`` with some items left out (items of ``sent`` distinct)."""
    assert len(set(sent)) == len(sent)
    position = {p: i for i, p in enumerate(sent)}
    indices = [position.get(p, -1) for p in got]
    return -1 not in indices and indices == sorted(set(indices))


# ---------------------------------------------------------------------------------------
# scan
# ---------------------------------------------------------------------------------------


async def start_battery_only_peripheral(radio: VirtualRadio, name: str) -> Device:
    """A connectable BLE peripheral that advertises a name and 0x180F, not 0x180D."""
    controller = radio.new_controller("not-a-strap")
    device = Device(
        name=name,
        address=hci.Address("F0:00:00:00:0A:01", hci.Address.RANDOM_DEVICE_ADDRESS),
        host=Host(controller, AsyncPipeSink(controller)),
    )
    await device.power_on()
    adv = bytes(
        core.AdvertisingData(
            [
                (core.AdvertisingData.FLAGS, bytes((0x06,))),
                (core.AdvertisingData.COMPLETE_LOCAL_NAME, name.encode()),
                (
                    core.AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
                    GATT_BATTERY_SERVICE.to_bytes(),
                ),
            ]
        )
    )
    await device.start_advertising(
        advertising_type=AdvertisingType.UNDIRECTED_CONNECTABLE_SCANNABLE,
        own_address_type=hci.OwnAddressType.RANDOM,
        advertising_data=adv,
        advertising_interval_min=20.0,
        advertising_interval_max=20.0,
    )
    return device


def test_scan_lists_heart_rate_straps_only() -> None:
    async def body() -> None:
        async with VirtualRadio() as radio:
            other = await start_battery_only_peripheral(radio, "Smart Scale")
            try:
                async with (
                    VirtualStrap(radio, name="Polar H10 8C4D2E1A", advertising_interval_ms=20),
                    VirtualStrap(radio, name="TICKR 2B31", advertising_interval_ms=20),
                ):
                    found = await scan(1.0, backend=radio.scanner_backend())
            finally:
                await other.power_off()
            assert all(isinstance(s, StrapFound) for s in found)
            assert sorted((s.name, s.address) for s in found) == [
                ("Polar H10 8C4D2E1A", "F0:00:00:00:00:01"),
                ("TICKR 2B31", "F0:00:00:00:00:02"),
            ]
            for s in found:
                assert isinstance(s.rssi, int) and -127 <= s.rssi <= 20
            rssi = [s.rssi if s.rssi is not None else -999 for s in found]
            assert rssi == sorted(rssi, reverse=True)  # strongest first

    run(body)


def test_scan_with_nothing_advertising_is_empty() -> None:
    async def body() -> None:
        async with VirtualRadio() as radio:
            assert await scan(0.3, backend=radio.scanner_backend()) == []

    run(body)


# ---------------------------------------------------------------------------------------
# One link: connect, notifications, link info
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["address", "name"])
def test_link_connects_reports_info_and_hands_on_every_notification(by: str) -> None:
    records = encode_rr_as_notifications([780.0 + (i % 11) * 13.5 for i in range(600)])

    async def body() -> None:
        async with (
            VirtualRadio() as radio,
            VirtualStrap(
                radio,
                records,
                name="Polar H10 8C4D2E1A",
                speed=None,
                battery_pct=73,
                body_sensor_location=BodySensorLocation.CHEST,
                advertising_interval_ms=20,
            ) as strap,
        ):
            probe = Probe()
            target = strap.address if by == "address" else strap.name
            link = make_link(radio, target, probe, strap.clock)
            async with running(link):
                connected = await probe.until_event(K.CONNECTED)
                async with asyncio.timeout(STEP):
                    await strap.played.wait()
                await probe.until_notifications(len(records))
            assert connected.strap == target
            assert connected.detail == {
                "name": "Polar H10 8C4D2E1A",
                "battery_pct": 73,
                "body_location": "chest",
            }
            assert link.battery_pct == 73 and link.body_location == "chest"
            assert link.device_name == "Polar H10 8C4D2E1A"
            assert link.address == strap.address
            assert link.connections == 1
            assert link.notifications == len(records)
            # every byte, in order, at exactly the recorded time (lockstep replay)
            assert probe.payloads == [n.payload for n in records]
            assert probe.times == [n.t_s for n in records]
            # stop() disconnects cleanly: one session, nothing else
            assert probe.kinds() == [K.CONNECTED, K.DISCONNECTED]
            assert probe.events[-1].detail == {"notifications": len(records)}

    run(body)


# ---------------------------------------------------------------------------------------
# Link drops
# ---------------------------------------------------------------------------------------


def test_drop_mid_stream_reconnects_and_pipeline_marks_a_gap() -> None:
    rr = [800.0 + 40.0 * ((i * 7) % 5) for i in range(1500)]
    records = encode_rr_as_notifications(rr)
    sent = [(n.t_s, n.payload) for n in records]

    async def body() -> None:
        async with (
            VirtualRadio() as radio,
            VirtualStrap(radio, records, speed=None, advertising_interval_ms=20) as strap,
        ):
            probe = Probe(BeatPipeline())
            link = make_link(radio, strap.address, probe, strap.clock)
            async with running(link):
                await strap.wait_for(lambda s: s.notifications_sent >= 100, timeout=STEP)
                await strap.set_battery(42)  # read again on the new connection
                # the records of the next 3 s on the recording's axis are lost with it
                await strap.drop_link(gap_s=3.0)
                await probe.until_event(K.CONNECTED, 2)
                async with asyncio.timeout(STEP):
                    await strap.played.wait()
                await probe.until(lambda: link.notifications >= strap.notifications_sent - 1)

            assert probe.kinds(LINK_KINDS) == [
                K.CONNECTED,
                K.DISCONNECTED,
                K.RECONNECTING,
                K.CONNECTED,
                K.DISCONNECTED,  # stop()
            ]
            reconnecting = probe.events[probe.index(K.RECONNECTING)]
            assert reconnecting.detail == {"attempt": 1, "delay_s": STEADY.backoff_initial_s}
            assert link.connections == 2 and strap.connections_accepted == 2
            assert probe.events[probe.index(K.CONNECTED, 1)].detail["battery_pct"] == 100
            assert probe.events[probe.index(K.CONNECTED, 2)].detail["battery_pct"] == 42

            # notifications resumed on the new link; nothing reordered or duplicated
            second = probe.session.index(2)
            assert 100 <= second < len(probe.payloads)
            assert is_in_order_subsequence(
                list(zip(probe.times, probe.payloads, strict=True)), sent
            )
            assert 1 <= strap.notifications_skipped <= 4
            # a notification in flight when the link went down may be lost with it
            assert strap.notifications_sent - 1 <= len(probe.payloads)
            assert len(probe.payloads) <= strap.notifications_sent
            assert probe.times == sorted(probe.times)

            # the pipeline: exactly one gap, at the first beat after the reconnect
            beats = probe.beats
            assert probe.pipeline is not None
            assert probe.pipeline.decoder.timer.gaps == 1
            gap_at = [i for i, b in enumerate(beats) if b.after_gap]
            assert len(gap_at) == 1
            first_after = sum(
                len(parse_heart_rate_measurement(p).rr_raw) for p in probe.payloads[:second]
            )
            assert gap_at == [first_after]
            before, after = beats[first_after - 1], beats[first_after]
            assert after.t_s - before.t_s > after.rr_ms / 1000 + 2.0  # >= 3 s lost
            assert [b.t_s for b in beats] == sorted(b.t_s for b in beats)

    run(body)


def test_repeated_drops_each_reconnect_with_the_initial_backoff() -> None:
    """A link that streamed data resets its backoff: every reconnect is attempt 1."""

    async def body() -> None:
        async with (
            VirtualRadio() as radio,
            VirtualStrap(
                radio, paced_records(5000, 0.05), speed=1.0, advertising_interval_ms=20
            ) as strap,
        ):
            probe = Probe()
            link = make_link(radio, strap.address, probe, strap.clock)
            async with running(link):
                for cycle in range(1, 4):
                    await probe.until_event(K.CONNECTED, cycle)
                    n = len(probe.payloads)
                    await probe.until_notifications(n + 3)
                    await strap.drop_link()
                    await probe.until_event(K.DISCONNECTED, cycle)
                await probe.until_event(K.CONNECTED, 4)
                n = len(probe.payloads)
                await probe.until_notifications(n + 3)
            assert probe.kinds(LINK_KINDS) == [K.CONNECTED] + [
                K.DISCONNECTED,
                K.RECONNECTING,
                K.CONNECTED,
            ] * 3 + [K.DISCONNECTED]
            for e in probe.events:
                if e.kind is K.RECONNECTING:
                    assert e.detail == {"attempt": 1, "delay_s": STEADY.backoff_initial_s}
            assert is_in_order_subsequence(probe.payloads, [hr_payload(i) for i in range(5000)])
            assert set(probe.session) == {1, 2, 3, 4}

    run(body)


# ---------------------------------------------------------------------------------------
# Silence
# ---------------------------------------------------------------------------------------


def test_silent_strap_reported_then_notifying_again() -> None:
    async def body() -> None:
        async with (
            VirtualRadio() as radio,
            VirtualStrap(
                radio, paced_records(5000, 0.05), speed=1.0, advertising_interval_ms=20
            ) as strap,
        ):
            probe = Probe()
            link = make_link(radio, strap.address, probe, strap.clock, TWITCHY)
            async with running(link):
                await probe.until_notifications(5)
                await strap.go_silent()
                silent = await probe.until_event(K.SILENT)
                at_silence = len(probe.payloads)
                await strap.resume()
                await probe.until_event(K.NOTIFYING)
                await probe.until_notifications(at_silence + 5)
            assert probe.kinds() == [K.CONNECTED, K.SILENT, K.NOTIFYING, K.DISCONNECTED]
            assert silent.detail["quiet_s"] >= TWITCHY.silence_s - 0.05  # rounded to 0.1
            # the link stayed up: one connection, the NOTIFYING event came with data
            assert link.connections == 1 and strap.connections_accepted == 1
            assert strap.notifications_suppressed > 0
            assert probe.session == [1] * len(probe.payloads)
            assert is_in_order_subsequence(probe.payloads, [hr_payload(i) for i in range(5000)])

    run(body)


def test_silent_too_long_drops_the_link_and_reconnects() -> None:
    async def body() -> None:
        async with (
            VirtualRadio() as radio,
            VirtualStrap(
                radio, paced_records(5000, 0.05), speed=1.0, advertising_interval_ms=20
            ) as strap,
        ):
            probe = Probe()
            link = make_link(radio, strap.address, probe, strap.clock, TWITCHY)
            async with running(link):
                await probe.until_notifications(5)
                await strap.go_silent()
                await probe.until_event(K.DISCONNECTED)
                last_data_loop_t = (
                    probe.event_loop_t[probe.index(K.SILENT)]
                    - (probe.events[probe.index(K.SILENT)].detail["quiet_s"])
                )
                await probe.until_event(K.CONNECTED, 2)
                # the strap never dropped the link itself: the central did
                await strap.wait_for(lambda s: s.connections_accepted == 2, timeout=STEP)
                at_resume = len(probe.payloads)
                await strap.resume()
                await probe.until_notifications(at_resume + 5)
            kinds = probe.kinds(LINK_KINDS)
            assert kinds == [
                K.CONNECTED,
                K.DISCONNECTED,
                K.RECONNECTING,
                K.CONNECTED,
                K.DISCONNECTED,
            ]
            assert probe.index(K.SILENT) < probe.index(K.DISCONNECTED)
            dropped_after = probe.event_loop_t[probe.index(K.DISCONNECTED)] - last_data_loop_t
            assert dropped_after >= TWITCHY.silent_reconnect_s - 0.1
            # no data in the silent session: the backoff was not reset, but it starts low
            reconnecting = probe.events[probe.index(K.RECONNECTING)]
            assert reconnecting.detail["attempt"] == 1
            assert probe.session[-1] == 2  # data flows on the new link

    run(body)


# ---------------------------------------------------------------------------------------
# Sensor contact
# ---------------------------------------------------------------------------------------


def test_contact_lost_and_restored() -> None:
    async def body() -> None:
        async with (
            VirtualRadio() as radio,
            VirtualStrap(
                radio, paced_records(5000, 0.05), speed=1.0, advertising_interval_ms=20
            ) as strap,
        ):
            probe = Probe()
            link = make_link(radio, strap.address, probe, strap.clock)
            async with running(link):
                await probe.until_notifications(3)
                await strap.set_contact(False)
                await probe.until_event(K.CONTACT_LOST)
                lost_at = len(probe.payloads)
                await probe.until_notifications(lost_at + 3)  # no repeated events
                await strap.set_contact(True)
                await probe.until_event(K.CONTACT_RESTORED)
                restored_at = len(probe.payloads)
                await probe.until_notifications(restored_at + 3)
            assert probe.kinds() == [
                K.CONNECTED,
                K.CONTACT_LOST,
                K.CONTACT_RESTORED,
                K.DISCONNECTED,
            ]
            contact = [
                parse_heart_rate_measurement(p).sensor_contact_detected for p in probe.payloads
            ]
            # each event follows the first payload that says so (handed on just before it)
            assert contact[: lost_at - 1] == [True] * (lost_at - 1)
            assert contact[lost_at - 1 : restored_at - 1] == [False] * (restored_at - lost_at)
            assert all(contact[restored_at - 1 :])

    run(body)


# ---------------------------------------------------------------------------------------
# Corrupt payloads
# ---------------------------------------------------------------------------------------


def test_corrupt_payloads_are_handed_on_unchanged_and_counted_by_the_decoder() -> None:
    corrupt = [b"", b"\x10\x48\x01", b"\xe0\x48", b"\x01\x48", b"\x10\x48"]
    valid = encode_rr_as_notifications([850.0 + (i % 3) * 25.0 for i in range(60)])

    async def body() -> None:
        # no playback: the test sends every payload itself, driving the strap's clock
        async with (
            VirtualRadio() as radio,
            VirtualStrap(radio, speed=None, advertising_interval_ms=20) as strap,
        ):
            probe = Probe()
            link = make_link(radio, strap.address, probe, strap.clock)
            async with running(link):
                await strap.wait_for(lambda s: s.subscribed, timeout=STEP)
                sent: list[tuple[float, bytes]] = []
                for i, n in enumerate(valid):
                    strap.clock.set(n.t_s)
                    assert await strap.send_raw(n.payload) == 1  # lockstep: delivered
                    sent.append((n.t_s, n.payload))
                    if i in (10, 30):
                        for bad in corrupt:
                            assert await strap.send_raw(bad) == 1
                            sent.append((n.t_s, bad))
                await probe.until_notifications(len(sent))
            assert probe.payloads == [p for _, p in sent]  # byte for byte, in order
            assert probe.times == [t for t, _ in sent]
            for bad in corrupt:
                with pytest.raises(HeartRateParseError):
                    parse_heart_rate_measurement(bad)

            decoder = StrapDecoder()
            per_payload = [
                decoder.notification(t, p) for t, p in zip(probe.times, probe.payloads, strict=True)
            ]
            assert decoder.notifications == len(sent)
            assert decoder.malformed == 2 * len(corrupt)
            assert decoder.first_error is not None and decoder.first_error.startswith(
                "notification 12:"
            )
            beats = [b for bs in per_payload for b in bs]
            expected_rr = [
                rr for n in valid for rr in parse_heart_rate_measurement(n.payload).rr_ms
            ]
            assert [b.rr_ms for b in beats] == expected_rr  # every beat, none invented
            assert not any(b.after_gap for b in beats)
            last_corrupt = max(i for i, (_, p) in enumerate(sent) if p in corrupt)
            assert any(per_payload[last_corrupt + 1 :])  # beats keep flowing after

    run(body)


# ---------------------------------------------------------------------------------------
# Several straps
# ---------------------------------------------------------------------------------------


def test_run_straps_one_bad_strap_does_not_disturb_the_other() -> None:
    good_records = paced_records(300, 0.02, first=10_000)

    async def body() -> None:
        async with (
            VirtualRadio() as radio,
            VirtualStrap(
                radio,
                paced_records(5000, 0.05),
                name="Bad Strap",
                speed=1.0,
                clock=VirtualClock(),
                advertising_interval_ms=20,
            ) as bad,
            VirtualStrap(
                radio,
                good_records,
                name="Good Strap",
                speed=1.0,
                clock=VirtualClock(),
                advertising_interval_ms=20,
            ) as good,
        ):
            assert bad.clock is not good.clock
            p_bad, p_good = Probe(), Probe()
            link_bad = make_link(radio, bad.name, p_bad, bad.clock, TWITCHY)
            # a stall of a second would be reported; silence after the end is expected
            watchful = LinkSettings(scan_timeout_s=5.0, silence_s=1.0, silent_reconnect_s=30.0)
            link_good = make_link(radio, good.address, p_good, good.clock, watchful)
            async with running(link_bad, link_good):
                await p_good.until_notifications(5)
                await p_bad.until_notifications(3)
                cycles = 0
                # misbehave while the good strap streams, at least 4 times
                while cycles < 4 or not good.played.is_set():
                    cycles += 1
                    n = len(p_bad.payloads)
                    await p_bad.until_notifications(n + 2)
                    if cycles % 2:
                        connected = p_bad.count(K.CONNECTED)
                        await bad.drop_link()
                        await p_bad.until_event(K.CONNECTED, connected + 1)
                    else:
                        silent = p_bad.count(K.SILENT)
                        await bad.go_silent()
                        await p_bad.until_event(K.SILENT, silent + 1)
                        await bad.resume()
                        await p_bad.until_event(K.NOTIFYING, silent + 1)
                await p_good.until_notifications(len(good_records))
            assert p_good.payloads == [p for _, p in good_records]
            assert p_good.times == sorted(p_good.times)
            assert p_good.kinds(LINK_KINDS) == [K.CONNECTED, K.DISCONNECTED]
            assert p_good.count(K.NOTIFYING) == 0  # never silent while it streamed
            assert p_bad.count(K.CONNECTED) >= 3 and p_bad.count(K.SILENT) >= 2
            assert is_in_order_subsequence(p_bad.payloads, [hr_payload(i) for i in range(5000)])

    run(body, timeout=120)


# ---------------------------------------------------------------------------------------
# stop() and a strap nobody can find
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "when",
    ["mid_stream", "mid_stream_max_speed", "after_playback", "after_a_drop", "before_connecting"],
)
def test_stop_ends_run_cleanly_without_asyncio_errors(
    when: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)

    async def body() -> None:
        async with VirtualRadio() as radio:
            if when in ("after_playback", "mid_stream_max_speed"):
                n = 500 if when == "after_playback" else 50_000
                strap = VirtualStrap(
                    radio, paced_records(n, 1.0), speed=None, advertising_interval_ms=20
                )
            else:
                strap = VirtualStrap(
                    radio, paced_records(5000, 0.01), speed=1.0, advertising_interval_ms=20
                )
            async with strap:
                probe = Probe()
                link = make_link(radio, strap.address, probe, strap.clock)
                task = asyncio.create_task(link.run())
                if when in ("mid_stream", "mid_stream_max_speed"):
                    await probe.until_notifications(20)
                elif when == "after_a_drop":
                    await probe.until_notifications(20)
                    await strap.drop_link()
                    await probe.until_event(K.DISCONNECTED)  # stop while reconnecting
                elif when == "after_playback":
                    async with asyncio.timeout(STEP):
                        await strap.played.wait()
                    await probe.until_notifications(500)
                link.stop()
                async with asyncio.timeout(STEP):
                    await task  # returns by itself; no cancellation
                assert task.done() and not task.cancelled() and task.exception() is None
                if when == "after_a_drop":
                    assert probe.kinds()[:3] == [K.CONNECTED, K.DISCONNECTED, K.RECONNECTING]
                    assert probe.count(K.CONNECTED) == probe.count(K.DISCONNECTED)
                    await strap.wait_for(lambda s: not s.connected, timeout=STEP)
                elif when != "before_connecting":
                    assert probe.kinds() == [K.CONNECTED, K.DISCONNECTED]
                    await strap.wait_for(lambda s: not s.connected, timeout=STEP)
                else:
                    assert probe.kinds() == []  # stopped before it found the strap

    run(body)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert "Exception in callback" not in caplog.text


@pytest.mark.parametrize("by", ["name", "address"])
def test_strap_not_found_backs_off_with_doubling_delays(by: str) -> None:
    settings = LinkSettings(
        scan_timeout_s=0.2,
        silence_s=60.0,
        silent_reconnect_s=120.0,
        backoff_initial_s=0.05,
        backoff_max_s=0.3,
    )

    async def body() -> None:
        # another strap advertises; it is not the one asked for
        async with (
            VirtualRadio() as radio,
            VirtualStrap(radio, name="Someone Else", advertising_interval_ms=20),
        ):
            probe = Probe()
            target = "Nobody's Strap" if by == "name" else "F0:00:00:00:0E:EE"
            link = StrapLink(
                target,
                on_notification=probe.on_notification,
                on_event=probe.on_event,
                settings=settings,
                scanner_backend=radio.scanner_backend(),
                client_backend=radio.client_backend(),
            )
            async with running(link) as task:
                await probe.until_event(K.RECONNECTING, 5)
                link.stop()  # in the middle of a backoff wait: returns promptly
                async with asyncio.timeout(STEP):
                    await asyncio.shield(task)
            kinds = probe.kinds()
            assert kinds[:10] == [K.NOT_FOUND, K.RECONNECTING] * 5
            reconnecting = [e for e in probe.events if e.kind is K.RECONNECTING]
            assert [e.detail["attempt"] for e in reconnecting][:5] == [1, 2, 3, 4, 5]
            assert [e.detail["delay_s"] for e in reconnecting][:5] == [
                0.05,
                0.1,
                0.2,
                0.3,
                0.3,
            ]
            assert link.connections == 0 and probe.payloads == []
            # each wait lasted at least its delay, then a scan of scan_timeout_s
            for i, e in enumerate(probe.events[:-1]):
                if e.kind is K.RECONNECTING:
                    waited = probe.event_loop_t[i + 1] - probe.event_loop_t[i]
                    assert waited >= e.detail["delay_s"] + settings.scan_timeout_s - 0.02

    run(body)


def test_stop_while_scanning_returns_without_waiting_for_the_scan_timeout() -> None:
    async def body() -> None:
        async with VirtualRadio() as radio:
            scanning = asyncio.Event()
            base = radio.scanner_backend()

            async def start(self: Any) -> None:
                await base.start(self)
                scanning.set()

            spy: type[Any] = type("ScanSpy", (base,), {"start": start})
            probe = Probe()
            link = StrapLink(
                "Nobody's Strap",
                on_notification=probe.on_notification,
                on_event=probe.on_event,
                settings=LinkSettings(scan_timeout_s=3600.0),
                scanner_backend=spy,
                client_backend=radio.client_backend(),
            )
            task = asyncio.create_task(link.run())
            try:
                async with asyncio.timeout(STEP):
                    await scanning.wait()
                link.stop()
                # a scan of an hour is under way: only stop() can end run() this soon
                async with asyncio.timeout(3.0):
                    await asyncio.shield(task)
            finally:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            assert probe.kinds() == []  # nothing reported after stop()

    run(body)
