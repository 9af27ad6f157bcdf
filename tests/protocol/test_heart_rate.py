"""Tests of the Heart Rate Measurement (0x2A37) codec."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hrvstream.errors import ProtocolError
from hrvstream.protocol.heart_rate import (
    BATTERY_LEVEL_UUID,
    BODY_SENSOR_LOCATION_UUID,
    HEART_RATE_CONTROL_POINT_UUID,
    HEART_RATE_MEASUREMENT_UUID,
    HEART_RATE_SERVICE_UUID,
    BodySensorLocation,
    HeartRateMeasurement,
    HeartRateParseError,
    HeartRateValueError,
    bluetooth_uuid,
    encode_heart_rate_measurement,
    parse_body_sensor_location,
    parse_heart_rate_measurement,
    rr_ms_to_raw,
)

# --- known vectors -------------------------------------------------------------------


def test_vector_contact_detected_two_rr() -> None:
    data = bytes.fromhex("16 48 54 01 EC 02")
    m = parse_heart_rate_measurement(data)
    assert m.heart_rate_bpm == 72
    assert m.uint16_format is False
    assert m.sensor_contact_supported is True
    assert m.sensor_contact_detected is True
    assert m.energy_expended_kj is None
    assert m.rr_raw == (340, 748)
    assert m.rr_ms == (340 * 1000 / 1024, 748 * 1000 / 1024)
    assert m.rr_ms == (332.03125, 730.46875)
    assert encode_heart_rate_measurement(m) == data


def test_vector_single_rr_no_contact_feature() -> None:
    data = bytes.fromhex("10 3E B1 03")
    m = parse_heart_rate_measurement(data)
    assert m.heart_rate_bpm == 62
    assert m.sensor_contact_supported is False
    assert m.sensor_contact_detected is None
    assert m.rr_raw == (945,)
    assert m.rr_ms == (945 * 1000 / 1024,)
    assert encode_heart_rate_measurement(m) == data


def test_vector_uint16_heart_rate() -> None:
    data = bytes.fromhex("01 01 01")
    m = parse_heart_rate_measurement(data)
    assert m.heart_rate_bpm == 257
    assert m.uint16_format is True
    assert m.rr_raw == ()
    assert m.rr_ms == ()
    assert encode_heart_rate_measurement(m) == data


def test_vector_energy_expended_saturated() -> None:
    data = bytes.fromhex("09 00 00 FF FF")
    m = parse_heart_rate_measurement(data)
    assert m.heart_rate_bpm == 0
    assert m.uint16_format is True
    assert m.energy_expended_kj == 65535
    assert m.rr_raw == ()
    assert encode_heart_rate_measurement(m) == data


def test_contact_supported_not_detected() -> None:
    m = parse_heart_rate_measurement(bytes.fromhex("04 50"))
    assert m.sensor_contact_supported is True
    assert m.sensor_contact_detected is False


def test_contact_bits_0b01_mean_not_supported_and_round_trip() -> None:
    # The spec lists both 0b00 and 0b01 as "Sensor Contact feature is not supported".
    data = bytes.fromhex("02 50")
    m = parse_heart_rate_measurement(data)
    assert m.sensor_contact_supported is False
    assert m.sensor_contact_detected is None
    assert m.contact_bit1_without_support is True
    assert encode_heart_rate_measurement(m) == data
    assert m != parse_heart_rate_measurement(bytes.fromhex("00 50"))


def test_all_fields_uint16_energy_and_rr() -> None:
    data = bytes.fromhex("1f 2c 01 10 00 00 04 ff ff")
    m = parse_heart_rate_measurement(data)
    assert m == HeartRateMeasurement(
        heart_rate_bpm=300,
        uint16_format=True,
        sensor_contact_supported=True,
        sensor_contact_detected=True,
        energy_expended_kj=16,
        rr_raw=(1024, 65535),
    )
    assert m.rr_ms == (1000.0, 65535 * 1000 / 1024)
    assert encode_heart_rate_measurement(m) == data


def test_more_than_nine_rr_values_are_all_kept() -> None:
    rr = tuple(range(700, 700 + 30))
    m = HeartRateMeasurement(heart_rate_bpm=80, rr_raw=rr)
    data = encode_heart_rate_measurement(m)
    assert len(data) == 2 + 60
    assert parse_heart_rate_measurement(data).rr_raw == rr


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_accepts_bytes_like(kind: type) -> None:
    m = parse_heart_rate_measurement(kind(bytes.fromhex("10 3E B1 03")))
    assert m.rr_raw == (945,)


def test_rejects_non_bytes() -> None:
    with pytest.raises(TypeError):
        parse_heart_rate_measurement("10 3e b1 03")  # type: ignore[arg-type]


# --- malformed payloads ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("hex_payload", "fragment"),
    [
        ("", "empty"),
        ("00", "truncated at byte 1"),
        ("01", "truncated at byte 1"),
        ("01 48", "truncated at byte 2"),
        ("08 48", "truncated at byte 2"),
        ("08 48 01", "truncated at byte 3"),
        ("10 48", "no RR-interval values"),
        ("10 48 54", "odd number of RR-interval bytes"),
        ("10 48 54 01 EC", "odd number of RR-interval bytes"),
        ("20 48", "reserved flag bits"),
        ("40 48", "reserved flag bits"),
        ("80 48", "reserved flag bits"),
        ("f6 48 54 01", "reserved flag bits"),
        ("00 48 00", "trailing"),
        ("06 48 54 01", "trailing"),
    ],
)
def test_malformed_payloads(hex_payload: str, fragment: str) -> None:
    data = bytes.fromhex(hex_payload)
    with pytest.raises(HeartRateParseError) as info:
        parse_heart_rate_measurement(data)
    assert fragment in str(info.value)
    assert fragment in info.value.reason
    assert info.value.data == data
    assert isinstance(info.value, ProtocolError)


def test_parse_error_message_shows_payload() -> None:
    with pytest.raises(HeartRateParseError, match=r"\[10 48 54\]"):
        parse_heart_rate_measurement(bytes.fromhex("10 48 54"))


# --- construction / encoding validation ---------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"heart_rate_bpm": 256},
        {"heart_rate_bpm": -1},
        {"heart_rate_bpm": 65536, "uint16_format": True},
        {"heart_rate_bpm": 72.0},
        {"heart_rate_bpm": True},
        {"heart_rate_bpm": 72, "sensor_contact_supported": True},
        {"heart_rate_bpm": 72, "sensor_contact_detected": True},
        {"heart_rate_bpm": 72, "sensor_contact_detected": False},
        {
            "heart_rate_bpm": 72,
            "sensor_contact_supported": True,
            "sensor_contact_detected": True,
            "contact_bit1_without_support": True,
        },
        {"heart_rate_bpm": 72, "energy_expended_kj": 65536},
        {"heart_rate_bpm": 72, "energy_expended_kj": -1},
        {"heart_rate_bpm": 72, "rr_raw": (65536,)},
        {"heart_rate_bpm": 72, "rr_raw": (-1,)},
        {"heart_rate_bpm": 72, "rr_raw": (800.0,)},
        {"heart_rate_bpm": 72, "rr_raw": [800]},
    ],
)
def test_invalid_measurements_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(HeartRateValueError):
        HeartRateMeasurement(**kwargs)  # type: ignore[arg-type]


def test_value_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="heart_rate_bpm"):
        HeartRateMeasurement(heart_rate_bpm=300)


def test_measurement_is_frozen_and_hashable() -> None:
    m = HeartRateMeasurement(72, rr_raw=(800,))
    with pytest.raises(AttributeError):
        m.heart_rate_bpm = 80  # type: ignore[misc]
    assert hash(m) == hash(HeartRateMeasurement(72, rr_raw=(800,)))


# --- rr_ms_to_raw --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rr_ms", "raw"),
    [
        (0.0, 0),
        (1000.0, 1024),
        (1000, 1024),
        (332.03125, 340),
        (800.0, 819),  # 819.2 ticks
        (800.5, 820),  # 819.712 ticks
        (0.48828125, 0),  # exactly half a tick -> even
        (1.46484375, 2),  # exactly one and a half ticks -> even
        (63999.0, 65535),  # 65534.976 ticks
    ],
)
def test_rr_ms_to_raw(rr_ms: float, raw: int) -> None:
    assert rr_ms_to_raw(rr_ms) == raw


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, -math.inf, 64000.0, True, "800"])
def test_rr_ms_to_raw_rejects(bad: object) -> None:
    with pytest.raises(HeartRateValueError):
        rr_ms_to_raw(bad)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=65535))
def test_rr_ms_to_raw_inverts_rr_ms(raw: int) -> None:
    (ms,) = HeartRateMeasurement(60, rr_raw=(raw,)).rr_ms
    assert ms == raw * 1000 / 1024
    assert Fraction(ms) == Fraction(raw * 1000, 1024)  # exact, never rounded
    assert rr_ms_to_raw(ms) == raw


@given(st.floats(min_value=0.0, max_value=63999.0, allow_nan=False))
def test_rr_ms_to_raw_is_nearest_tick(rr_ms: float) -> None:
    raw = rr_ms_to_raw(rr_ms)
    exact = Fraction(rr_ms) * 1024 / 1000
    assert abs(raw - exact) <= Fraction(1, 2)


# --- property tests --------------------------------------------------------------------------


@given(st.binary(max_size=64))
def test_any_bytes_parse_or_raise_parse_error(data: bytes) -> None:
    try:
        m = parse_heart_rate_measurement(data)
    except HeartRateParseError:
        return
    assert isinstance(m, HeartRateMeasurement)
    assert encode_heart_rate_measurement(m) == data


@st.composite
def valid_payloads(draw: st.DrawFn) -> bytes:
    """Payloads that follow the spec: build them field by field from the flags."""
    flags = draw(st.integers(min_value=0, max_value=0x1F))
    out = bytearray([flags])
    if flags & 0x01:
        out += draw(st.binary(min_size=2, max_size=2))
    else:
        out += draw(st.binary(min_size=1, max_size=1))
    if flags & 0x08:
        out += draw(st.binary(min_size=2, max_size=2))
    if flags & 0x10:
        n = draw(st.integers(min_value=1, max_value=40))
        out += draw(st.binary(min_size=2 * n, max_size=2 * n))
    return bytes(out)


@given(valid_payloads())
def test_encode_parse_round_trips_bytes(data: bytes) -> None:
    m = parse_heart_rate_measurement(data)
    assert encode_heart_rate_measurement(m) == data
    assert parse_heart_rate_measurement(bytearray(data)) == m


@st.composite
def measurements(draw: st.DrawFn) -> HeartRateMeasurement:
    uint16 = draw(st.booleans())
    hr = draw(st.integers(min_value=0, max_value=65535 if uint16 else 255))
    contact = draw(st.sampled_from(["none", "bit1-only", "not-detected", "detected"]))
    return HeartRateMeasurement(
        heart_rate_bpm=hr,
        uint16_format=uint16,
        sensor_contact_supported=contact in ("not-detected", "detected"),
        sensor_contact_detected={"not-detected": False, "detected": True}.get(contact),
        energy_expended_kj=draw(st.none() | st.integers(min_value=0, max_value=65535)),
        rr_raw=tuple(draw(st.lists(st.integers(min_value=0, max_value=65535), max_size=20))),
        contact_bit1_without_support=contact == "bit1-only",
    )


@given(measurements())
def test_parse_encode_round_trips_measurements(m: HeartRateMeasurement) -> None:
    data = encode_heart_rate_measurement(m)
    assert parse_heart_rate_measurement(data) == m
    assert data[0] & 0xE0 == 0
    assert data[0] == m.flags


# --- UUIDs and body sensor location ----------------------------------------------------------


def test_uuids() -> None:
    assert HEART_RATE_MEASUREMENT_UUID == "00002a37-0000-1000-8000-00805f9b34fb"
    assert HEART_RATE_SERVICE_UUID == "0000180d-0000-1000-8000-00805f9b34fb"
    assert BATTERY_LEVEL_UUID == "00002a19-0000-1000-8000-00805f9b34fb"
    assert BODY_SENSOR_LOCATION_UUID == "00002a38-0000-1000-8000-00805f9b34fb"
    assert HEART_RATE_CONTROL_POINT_UUID == "00002a39-0000-1000-8000-00805f9b34fb"
    assert bluetooth_uuid(0xFFFF) == "0000ffff-0000-1000-8000-00805f9b34fb"


@pytest.mark.parametrize("bad", [-1, 0x10000, True, "2a37"])
def test_bluetooth_uuid_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        bluetooth_uuid(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "location"),
    [
        (0, BodySensorLocation.OTHER),
        (1, BodySensorLocation.CHEST),
        (2, BodySensorLocation.WRIST),
        (3, BodySensorLocation.FINGER),
        (4, BodySensorLocation.HAND),
        (5, BodySensorLocation.EAR_LOBE),
        (6, BodySensorLocation.FOOT),
    ],
)
def test_body_sensor_location(value: int, location: BodySensorLocation) -> None:
    assert parse_body_sensor_location(bytes([value])) is location
    assert parse_body_sensor_location(bytearray([value])) is location


@pytest.mark.parametrize(
    ("data", "fragment"),
    [(b"", "exactly 1 byte"), (b"\x01\x00", "exactly 1 byte"), (b"\x07", "reserved")],
)
def test_body_sensor_location_malformed(data: bytes, fragment: str) -> None:
    with pytest.raises(HeartRateParseError, match=fragment):
        parse_body_sensor_location(data)
