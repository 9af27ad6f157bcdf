"""Tests of the capture-file (JSON Lines) codec."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hrvstream import __version__
from hrvstream.errors import ProtocolError
from hrvstream.protocol.capture import (
    CAPTURE_FORMAT,
    CAPTURE_VERSION,
    KNOWN_EVENTS,
    Capture,
    CaptureEvent,
    CaptureFormatError,
    CaptureHeader,
    CaptureRecord,
    Notification,
    UnsupportedCaptureVersionError,
    decode_capture,
    decode_header,
    decode_record,
    encode_header,
    encode_record,
    is_capture_header,
)
from hrvstream.protocol.heart_rate import HEART_RATE_MEASUREMENT_UUID

HR = HEART_RATE_MEASUREMENT_UUID
STARTED = datetime(2024, 5, 1, 9, 30, 0, 123456, tzinfo=UTC)


def _header(**kwargs: object) -> CaptureHeader:
    base: dict[str, object] = {
        "started_at": STARTED,
        "source": "ble",
        "device_name": "Polar H10 8C4D2E1A",
        "device_address": "A0:9E:1A:8C:4D:2E",
    }
    base.update(kwargs)
    return CaptureHeader(**base)  # type: ignore[arg-type]


# --- header ----------------------------------------------------------------------------


def test_header_line_layout() -> None:
    line = encode_header(_header())
    assert line == _header().to_json()
    assert "\n" not in line
    assert ", " not in line and ": " not in line  # compact separators
    assert line.startswith('{"format":"hrvstream-capture","version":1,')
    obj = json.loads(line)
    assert obj == {
        "format": CAPTURE_FORMAT,
        "version": CAPTURE_VERSION,
        "device_name": "Polar H10 8C4D2E1A",
        "device_address": "A0:9E:1A:8C:4D:2E",
        "started_at": "2024-05-01T09:30:00.123456Z",
        "software": f"hrvstream {__version__}",
        "source": "ble",
        "patient": None,
        "metadata": {},
    }


def test_header_round_trip_all_fields() -> None:
    h = _header(
        source="virtual",
        patient="P-017",
        software="hrvstream 9.9.9",
        metadata={"firmware": "3.0.35", "mtu": "232"},
    )
    assert decode_header(encode_header(h)) == h


def test_header_started_at_normalised_to_utc() -> None:
    local = datetime(2024, 5, 1, 11, 30, tzinfo=timezone(timedelta(hours=2)))
    h = _header(started_at=local)
    assert h.started_at.tzinfo is UTC
    assert h.started_at == datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
    assert '"started_at":"2024-05-01T09:30:00.000000Z"' in encode_header(h)


def test_header_accepts_offset_started_at_on_read() -> None:
    line = encode_header(_header()).replace(
        "2024-05-01T09:30:00.123456Z", "2024-05-01T11:30:00.123456+02:00"
    )
    assert decode_header(line).started_at == STARTED


def test_header_ignores_unknown_keys_and_bom_and_newline() -> None:
    obj = json.loads(encode_header(_header()))
    obj["future_key"] = [1, 2]
    line = "\ufeff" + json.dumps(obj) + "\r\n"
    assert decode_header(line) == _header()
    assert is_capture_header(line)


def test_header_optional_keys_may_be_missing() -> None:
    line = json.dumps(
        {
            "format": CAPTURE_FORMAT,
            "version": 1,
            "started_at": "2024-05-01T09:30:00Z",
            "software": "other 1",
            "source": "file",
        }
    )
    h = decode_header(line)
    assert h.device_name is None and h.device_address is None and h.patient is None
    assert h.metadata == {}
    assert h.source == "file"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"started_at": datetime(2024, 5, 1)}, "timezone-aware"),
        ({"started_at": "2024-05-01T00:00:00Z"}, "datetime"),
        ({"source": "bluetooth"}, "source"),
        ({"device_name": 5}, "device_name"),
        ({"software": None}, "software"),
        ({"metadata": {"mtu": 232}}, "metadata"),
    ],
)
def test_header_constructor_validates(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _header(**kwargs)


def test_header_hashable_and_frozen() -> None:
    h = _header(metadata={"a": "b"})
    assert hash(h) == hash(_header(metadata={"a": "b"}))
    with pytest.raises(AttributeError):
        h.patient = "x"  # type: ignore[misc]


def _header_obj() -> dict[str, object]:
    obj: dict[str, object] = json.loads(encode_header(_header()))
    return obj


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda o: o.update(format="something-else"), "not a capture header"),
        (lambda o: o.pop("format"), "not a capture header"),
        (lambda o: o.pop("version"), "'version'"),
        (lambda o: o.update(version="1"), "'version'"),
        (lambda o: o.update(version=0), "'version'"),
        (lambda o: o.update(version=True), "'version'"),
        (lambda o: o.pop("started_at"), "missing required key 'started_at'"),
        (lambda o: o.pop("software"), "missing required key 'software'"),
        (lambda o: o.pop("source"), "missing required key 'source'"),
        (lambda o: o.update(started_at="yesterday"), "not an ISO 8601"),
        (lambda o: o.update(started_at=1714555800), "ISO 8601 string"),
        (lambda o: o.update(started_at="2024-05-01T09:30:00"), "no UTC offset"),
        (lambda o: o.update(started_at="0001-01-01T00:00:00+01:00"), "out of range"),
        (lambda o: o.update(source="ant+"), "'source'"),
        (lambda o: o.update(software=1), "'software'"),
        (lambda o: o.update(device_name=["a"]), "'device_name'"),
        (lambda o: o.update(patient=17), "'patient'"),
        (lambda o: o.update(metadata=[]), "'metadata'"),
        (lambda o: o.update(metadata={"mtu": 232}), "'metadata'"),
    ],
)
def test_header_malformed(mutate: object, match: str) -> None:
    obj = _header_obj()
    mutate(obj)  # type: ignore[operator]
    line = json.dumps(obj)
    with pytest.raises(CaptureFormatError, match=match) as info:
        decode_header(line)
    assert info.value.line_no == 1
    assert str(info.value).startswith("capture line 1: ")


@pytest.mark.parametrize("line", ["", "   ", "{", "[1, 2]", '"header"', "NaN", "not json"])
def test_header_not_json_object(line: str) -> None:
    with pytest.raises(CaptureFormatError, match="capture line 1"):
        decode_header(line)
    assert not is_capture_header(line)


def test_future_version_is_a_clear_error() -> None:
    obj = _header_obj()
    obj["version"] = 2
    line = json.dumps(obj)
    assert is_capture_header(line)  # sniffing says "ours", decoding explains the version
    with pytest.raises(UnsupportedCaptureVersionError, match="version 2 is newer") as info:
        decode_header(line)
    assert info.value.version == 2
    assert "upgrade hrvstream" in str(info.value)
    assert isinstance(info.value, CaptureFormatError)
    assert isinstance(info.value, ProtocolError)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (encode_header(_header()), True),
        ('{"format":"hrvstream-capture"}', True),
        ('{"format":"other"}', False),
        ("# rr intervals", False),
        ("812\n", False),
        ("time,rr\n", False),
        ('["hrvstream-capture"]', False),
        ('{"format": "hrvstream-capture"', False),
    ],
)
def test_is_capture_header(line: str, expected: bool) -> None:
    assert is_capture_header(line) is expected


# --- records -----------------------------------------------------------------------------


def test_notification_line_layout() -> None:
    n = Notification(t_s=12.034817, uuid=HR, payload=bytes.fromhex("10 48 B1 03"))
    line = encode_record(n)
    assert line == '{"t":12.034817,"uuid":"00002a37-0000-1000-8000-00805f9b34fb","hex":"1048b103"}'
    assert decode_record(line, 2) == n


def test_event_line_layout() -> None:
    e = CaptureEvent(t_s=95.5, event="disconnected", detail="supervision timeout")
    line = encode_record(e)
    assert line == '{"t":95.5,"event":"disconnected","detail":"supervision timeout"}'
    assert decode_record(line, 3) == e
    assert encode_record(CaptureEvent(t_s=0.0, event="connected")) == (
        '{"t":0.0,"event":"connected"}'
    )
    assert "disconnected" in KNOWN_EVENTS


def test_record_normalisation() -> None:
    # bleak hands a bytearray; the constructor stores bytes (the annotation says bytes).
    n = Notification(t_s=3, uuid=HR.upper(), payload=bytearray(b"\x00\x48"))  # type: ignore[arg-type]
    assert isinstance(n.t_s, float)
    assert n.uuid == HR
    assert type(n.payload) is bytes
    # Readers accept integer t, uppercase uuid and uppercase hex.
    line = '{"t":3,"uuid":"' + HR.upper() + '","hex":"0048"}'
    assert decode_record(line, 9) == n
    upper = decode_record('{"t":1,"uuid":"' + HR + '","hex":"ABcd"}', 9)
    assert isinstance(upper, Notification)
    assert upper.payload == b"\xab\xcd"


def test_empty_payload_and_unknown_event_pass() -> None:
    n = Notification(t_s=1.0, uuid=HR, payload=b"")
    assert decode_record(encode_record(n), 2) == n
    e = CaptureEvent(t_s=1.0, event="battery_low_v2")
    assert decode_record(encode_record(e), 2) == e


def test_t_written_with_repr_precision() -> None:
    t = 0.1 + 0.2  # 0.30000000000000004
    line = encode_record(Notification(t_s=t, uuid=HR, payload=b"\x00\x00"))
    assert '"t":0.30000000000000004' in line
    assert decode_record(line, 2).t_s == t


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("", "empty line"),
        ("{", "not valid JSON"),
        ('{"t":1,"uuid":"x",}', "not valid JSON"),
        ("[1,2]", "expected a JSON object"),
        ("12.5", "expected a JSON object"),
        ('{"uuid":"' + HR + '","hex":"00"}', "missing required key 't'"),
        ('{"t":"1.0","uuid":"' + HR + '","hex":"00"}', "t must be a number"),
        ('{"t":true,"uuid":"' + HR + '","hex":"00"}', "t must be a number"),
        ('{"t":null,"event":"connected"}', "t must be a number"),
        ('{"t":-0.5,"uuid":"' + HR + '","hex":"00"}', "t must be >= 0"),
        ('{"t":NaN,"uuid":"' + HR + '","hex":"00"}', "not valid JSON"),
        ('{"t":Infinity,"event":"connected"}', "not valid JSON"),
        ('{"t":1e999,"event":"connected"}', "t must be finite"),
        ('{"t":1.0}', "neither a notification"),
        ('{"t":1.0,"hex":"00"}', "missing required key 'uuid'"),
        ('{"t":1.0,"uuid":"' + HR + '"}', "missing required key 'hex'"),
        ('{"t":1.0,"uuid":"2a37","hex":"00"}', "'uuid' must be a 128-bit UUID"),
        ('{"t":1.0,"uuid":42,"hex":"00"}', "'uuid' must be a 128-bit UUID"),
        ('{"t":1.0,"uuid":"' + HR + '","hex":"0g"}', "only hex digits"),
        ('{"t":1.0,"uuid":"' + HR + '","hex":"00 48"}', "odd number of digits"),
        ('{"t":1.0,"uuid":"' + HR + '","hex":"00 4"}', "only hex digits"),
        ('{"t":1.0,"uuid":"' + HR + '","hex":"104"}', "odd number of digits"),
        ('{"t":1.0,"uuid":"' + HR + '","hex":16}', "'hex' must be a string"),
        ('{"t":1.0,"event":"disconnected","hex":"00"}', "both 'event'"),
        ('{"t":1.0,"event":"Disconnected"}', "'event' must be"),
        ('{"t":1.0,"event":""}', "'event' must be"),
        ('{"t":1.0,"event":7}', "'event' must be"),
        ('{"t":1.0,"event":"marker","detail":5}', "'detail' must be a string"),
    ],
)
def test_malformed_records_name_the_line(line: str, match: str) -> None:
    with pytest.raises(CaptureFormatError, match=match) as info:
        decode_record(line, 42)
    assert info.value.line_no == 42
    assert str(info.value).startswith("capture line 42: ")
    assert info.value.line == line


def test_error_message_shortens_long_lines() -> None:
    line = '{"t":1.0,"uuid":"' + HR + '","hex":"' + "0" * 1001 + '"}'
    with pytest.raises(CaptureFormatError) as info:
        decode_record(line, 7)
    assert len(str(info.value)) < 200
    assert str(info.value).endswith("...'")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"t_s": -1.0, "uuid": HR, "payload": b""},
        {"t_s": math.nan, "uuid": HR, "payload": b""},
        {"t_s": math.inf, "uuid": HR, "payload": b""},
        {"t_s": "1", "uuid": HR, "payload": b""},
        {"t_s": 1.0, "uuid": "2a37", "payload": b""},
        {"t_s": 1.0, "uuid": HR, "payload": "00"},
    ],
)
def test_notification_constructor_validates(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Notification(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"t_s": -1.0, "event": "connected"},
        {"t_s": 1.0, "event": "two words"},
        {"t_s": 1.0, "event": "connected", "detail": 3},
    ],
)
def test_event_constructor_validates(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        CaptureEvent(**kwargs)  # type: ignore[arg-type]


def test_encode_record_rejects_other_types() -> None:
    with pytest.raises(TypeError):
        encode_record("hello")  # type: ignore[arg-type]


# --- whole captures ----------------------------------------------------------------------


def test_decode_capture() -> None:
    h = _header()
    records: tuple[CaptureRecord, ...] = (
        CaptureEvent(0.0, "connected"),
        Notification(0.98, HR, bytes.fromhex("16 48 54 01 ec 02")),
        Notification(1.97, HR, bytes.fromhex("16 47")),
        CaptureEvent(1.97, "contact_lost"),
        CaptureEvent(47.0, "disconnected", "supervision timeout"),
    )
    text = "\n".join([encode_header(h), *map(encode_record, records)]) + "\n"
    capture = decode_capture(text.splitlines())
    assert capture == Capture(header=h, records=records)
    # An open file iterates lines with their newline; that works too.
    assert decode_capture(text.splitlines(keepends=True)) == capture


def test_decode_capture_errors() -> None:
    with pytest.raises(CaptureFormatError, match="no header"):
        decode_capture([])
    header = encode_header(_header())
    lines = [
        header,
        encode_record(Notification(2.0, HR, b"\x00\x48")),
        encode_record(Notification(1.0, HR, b"\x00\x48")),
    ]
    with pytest.raises(CaptureFormatError, match="capture line 3: t goes backwards"):
        decode_capture(lines)
    with pytest.raises(CaptureFormatError, match="capture line 4: not valid JSON"):
        decode_capture([header, "", lines[1], '{"t":'])


# --- property tests ----------------------------------------------------------------------

_times = st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False)
_uuids = st.uuids().map(str) | st.integers(0, 0xFFFF).map(
    lambda n: f"0000{n:04x}-0000-1000-8000-00805f9b34fb"
)
_texts = st.text(max_size=30)
_event_names = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)

_notifications = st.builds(Notification, t_s=_times, uuid=_uuids, payload=st.binary(max_size=64))
_events = st.builds(CaptureEvent, t_s=_times, event=_event_names, detail=st.none() | _texts)
_headers = st.builds(
    CaptureHeader,
    started_at=st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.just(UTC) | st.timezones(),
    ),
    source=st.sampled_from(["ble", "virtual", "file"]),
    device_name=st.none() | _texts,
    device_address=st.none() | _texts,
    software=_texts,
    patient=st.none() | _texts,
    metadata=st.dictionaries(_texts, _texts, max_size=4),
)


@given(_notifications | _events)
def test_record_round_trip(record: Notification | CaptureEvent) -> None:
    line = encode_record(record)
    assert "\n" not in line and "\r" not in line
    assert line.isascii()
    assert len(line.splitlines()) == 1
    assert decode_record(line, 2) == record
    assert encode_record(decode_record(line, 2)) == line


@given(_headers)
def test_header_round_trip(header: CaptureHeader) -> None:
    line = encode_header(header)
    assert line.isascii() and len(line.splitlines()) == 1
    assert is_capture_header(line)
    decoded = decode_header(line)
    assert decoded == header
    assert encode_header(decoded) == line


@given(st.text(max_size=80))
def test_arbitrary_text_gives_record_or_format_error(line: str) -> None:
    try:
        decode_record(line, 5)
    except CaptureFormatError as exc:
        assert exc.line_no == 5


@given(st.text(max_size=80))
def test_arbitrary_text_header_gives_header_or_format_error(line: str) -> None:
    try:
        decode_header(line)
    except CaptureFormatError as exc:
        assert exc.line_no == 1
    assert isinstance(is_capture_header(line), bool)
