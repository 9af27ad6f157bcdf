"""Tests of the MQTT topic scheme and JSON payloads (hrvstream.protocol.messages)."""

from __future__ import annotations

import contextlib
import json
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator  # type: ignore[import-untyped, unused-ignore]

from hrvstream.errors import ProtocolError
from hrvstream.hrv.engine import WINDOW_COLUMNS
from hrvstream.pipeline import Beat
from hrvstream.protocol.heart_rate import BodySensorLocation
from hrvstream.protocol.messages import (
    ALERT_SEVERITIES,
    ALERT_STATES,
    KINDS,
    MAX_BEATS_PER_MESSAGE,
    MAX_PAYLOAD_BYTES,
    MAX_SEQ,
    MESSAGE_TYPES,
    METRIC_FIELDS,
    SENSOR_LOCATIONS,
    SHARED_SUBSCRIPTION,
    STATUS_STATES,
    TOPIC_SPECS,
    AlertAckMessage,
    AlertMessage,
    BeatsMessage,
    Message,
    MessageError,
    MessageKind,
    MessageValueError,
    MetricsMessage,
    StatusMessage,
    StrapInfo,
    TopicError,
    check_patient,
    decode_message,
    encode_message,
    is_valid_patient,
    load_schema,
    message_topic,
    parse_topic,
    schema_name,
    schema_path,
    shared_subscription,
    subscription,
    topic,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "mqtt.md"
VALIDATORS: dict[MessageKind, Any] = {k: Draft202012Validator(load_schema(k)) for k in KINDS}


def schema_errors(kind: MessageKind, obj: object) -> list[str]:
    """The JSON Schema's complaints about ``obj`` (empty when valid)."""
    return [e.message for e in VALIDATORS[kind].iter_errors(obj)]


def dump(obj: object) -> bytes:
    return json.dumps(obj).encode()


# --- examples --------------------------------------------------------------------------

BEATS = BeatsMessage(
    patient="p017",
    session="p017-20240501T093000Z",
    seq=42,
    origin_unix_s=1714555800.25,
    sent_unix_s=1714555912.031,
    t_s=(110.8125, 111.625, 114.1),
    rr_ms=(812.5, 1000 * 833 / 1024, 812.5),
    after_gap=(2,),
    contact=True,
    hr_bpm=73,
)
METRICS = MetricsMessage(
    patient="p017",
    session="p017-20240501T093000Z",
    t_unix_s=1714556100.0,
    window_s=300.0,
    n_beats=351,
    coverage=0.98,
    artifact_pct=0.57,
    mean_hr_bpm=70.2,
    mean_nn_ms=854.7,
    sdnn_ms=48.1,
    rmssd_ms=39.6,
    pnn50_pct=17.4,
    lf_ms2=None,
    hf_ms2=None,
    lf_hf=None,
    lf_nu=None,
    hf_nu=None,
)
STATUS = StatusMessage(
    patient="p017",
    state="online",
    t_unix_s=1714555790.0,
    agent_version="0.1.0",
    battery_pct=80,
    contact=True,
    strap=StrapInfo(name="Polar H10 8C4D2E1A", location="chest"),
    spool_pending=0,
    last_beat_unix_s=1714555911.9,
)
ALERT = AlertMessage(
    alert_id="a-2024-0001",
    patient="p017",
    state="acknowledged",
    rule="rmssd_drop",
    severity="warning",
    t_unix_s=1714556200.0,
    explanation={"rmssd_ms": 21.5, "baseline_rmssd_ms": 40.0, "reason": "drop", "x": None},
    acknowledged_by="therapist-7",
    note="called the patient",
)
ACK = AlertAckMessage(
    alert_id="a-2024-0001",
    patient="p017",
    by="therapist-7",
    t_unix_s=1714556190.5,
    note=None,
)
EXAMPLES: dict[MessageKind, Message] = {
    "beats": BEATS,
    "metrics": METRICS,
    "status": STATUS,
    "alerts": ALERT,
    "alerts/ack": ACK,
}


def example_obj(kind: MessageKind) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(EXAMPLES[kind].to_json()))


# --- strategies ------------------------------------------------------------------------

patients = st.from_regex(r"[a-z0-9][a-z0-9_-]{1,63}", fullmatch=True).filter(is_valid_patient)
sessions = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}", fullmatch=True).filter(
    lambda s: ":" not in s
)
ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}", fullmatch=True).filter(
    lambda s: ":" not in s
)
staff = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}", fullmatch=True)
nonneg = st.floats(min_value=0, allow_nan=False, allow_infinity=False)
finite = st.floats(allow_nan=False, allow_infinity=False)
unix = st.floats(min_value=0, max_value=4e9, allow_nan=False) | nonneg
rr_values = st.integers(0, 0xFFFF).map(lambda raw: 1000 * raw / 1024) | nonneg
texts = st.text(min_size=1, max_size=200)  # hypothesis never generates lone surrogates
seqs = st.integers(0, MAX_SEQ)


@st.composite
def beats_messages(draw: st.DrawFn) -> BeatsMessage:
    n = draw(st.integers(0, MAX_BEATS_PER_MESSAGE))
    t = sorted(draw(st.lists(nonneg, min_size=n, max_size=n)))
    rr = draw(st.lists(rr_values, min_size=n, max_size=n))
    gaps = sorted(draw(st.sets(st.integers(0, n - 1), max_size=n))) if n else []
    return BeatsMessage(
        patient=draw(patients),
        session=draw(sessions),
        seq=draw(seqs),
        origin_unix_s=draw(unix),
        sent_unix_s=draw(unix),
        t_s=tuple(t),
        rr_ms=tuple(rr),
        after_gap=tuple(gaps),
        contact=draw(st.none() | st.booleans()),
        hr_bpm=draw(st.none() | st.integers(0, 0xFFFF)),
    )


@st.composite
def metrics_messages(draw: st.DrawFn) -> MetricsMessage:
    values = {name: draw(st.none() | finite) for name in METRIC_FIELDS[1:]}
    return MetricsMessage(
        patient=draw(patients),
        session=draw(sessions),
        t_unix_s=draw(unix),
        window_s=draw(st.floats(min_value=0, exclude_min=True, allow_infinity=False)),
        n_beats=draw(st.integers(0, MAX_SEQ)),
        **values,
    )


def _no_address(s: str) -> bool:
    try:
        StrapInfo(name=s)
    except MessageValueError:
        return False
    return True


strap_names = texts.filter(_no_address)


@st.composite
def status_messages(draw: st.DrawFn) -> StatusMessage:
    strap = draw(
        st.none()
        | st.builds(
            StrapInfo,
            name=st.none() | strap_names,
            location=st.none() | st.sampled_from(SENSOR_LOCATIONS),
        )
    )
    return StatusMessage(
        patient=draw(patients),
        state=draw(st.sampled_from(STATUS_STATES)),
        t_unix_s=draw(unix),
        agent_version=draw(st.from_regex(r"[ -~]{1,64}", fullmatch=True)),
        battery_pct=draw(st.none() | st.integers(0, 100)),
        contact=draw(st.none() | st.booleans()),
        strap=strap,
        spool_pending=draw(st.none() | seqs),
        last_beat_unix_s=draw(st.none() | unix),
    )


explanations = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9_]{0,63}", fullmatch=True),
    st.none() | finite | texts,
    max_size=32,
)
notes = st.none() | st.text(min_size=1, max_size=500)


@st.composite
def alert_messages(draw: st.DrawFn) -> AlertMessage:
    state = draw(st.sampled_from(ALERT_STATES))
    by = {
        "raised": st.none(),
        "acknowledged": staff,
        "resolved": st.none() | staff,
    }[state]
    return AlertMessage(
        alert_id=draw(ids),
        patient=draw(patients),
        state=state,
        rule=draw(st.from_regex(r"[a-z][a-z0-9_.-]{0,63}", fullmatch=True)),
        severity=draw(st.sampled_from(ALERT_SEVERITIES)),
        t_unix_s=draw(unix),
        explanation=draw(explanations),
        acknowledged_by=draw(by),
        note=draw(notes),
    )


ack_messages = st.builds(
    AlertAckMessage,
    alert_id=ids,
    patient=patients,
    by=staff,
    t_unix_s=unix,
    note=notes,
)

messages: st.SearchStrategy[Message] = st.one_of(
    beats_messages(), metrics_messages(), status_messages(), alert_messages(), ack_messages
)


# --- round trips and schema agreement --------------------------------------------------


@settings(max_examples=300)
@given(messages)
def test_encoding_validates_against_schema_and_round_trips(m: Message) -> None:
    data = m.to_json()
    assert data == encode_message(m)
    assert len(data) <= MAX_PAYLOAD_BYTES
    obj = json.loads(data)
    assert obj["schema"] == schema_name(m.KIND)
    assert next(iter(obj)) == "schema"
    assert schema_errors(m.KIND, obj) == []
    back = type(m).from_json(data)
    assert back == m
    assert back.to_json() == data
    assert decode_message(data) == m
    assert decode_message(data, message_topic(m)) == m


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


@settings(max_examples=300)
@given(beats_messages())
def test_beat_floats_round_trip_bit_for_bit(m: BeatsMessage) -> None:
    back = BeatsMessage.from_json(m.to_json())
    for a, b in zip(m.rr_ms + m.t_s, back.rr_ms + back.t_s, strict=True):
        assert type(b) is float
        assert _bits(a) == _bits(b)
    assert _bits(back.origin_unix_s) == _bits(m.origin_unix_s)
    assert _bits(back.sent_unix_s) == _bits(m.sent_unix_s)


@given(st.lists(st.integers(0, 0xFFFF), max_size=MAX_BEATS_PER_MESSAGE))
def test_wire_rr_values_round_trip_exactly(raw: list[int]) -> None:
    rr = tuple(1000 * r / 1024 for r in raw)
    t = tuple(float(i) for i in range(len(rr)))
    m = BeatsMessage("p017", "s1", 0, 1.0, 2.0, t_s=t, rr_ms=rr)
    back = BeatsMessage.from_json(m.to_json())
    assert [x * 1024 / 1000 for x in back.rr_ms] == raw
    assert back.rr_ms == rr


def test_exact_rr_text() -> None:
    obj = json.loads(BEATS.to_json())
    assert obj["rr_ms"] == [812.5, 813.4765625, 812.5]
    assert b'"rr_ms":[812.5,813.4765625,812.5]' in BEATS.to_json()


@pytest.mark.parametrize("kind", KINDS)
def test_examples_validate(kind: MessageKind) -> None:
    m = EXAMPLES[kind]
    assert kind == m.KIND
    assert schema_errors(kind, example_obj(kind)) == []
    assert type(m).from_json(m.to_json()) == m
    assert MESSAGE_TYPES[kind] is type(m)


def test_compact_utf8_encoding() -> None:
    m = AlertAckMessage("a1", "p017", "t1", 1.0, note="Blutdruck erhöht — ruft zurück ✓ 😀")
    data = m.to_json()
    assert b", " not in data and b": " not in data
    assert "😀".encode() in data  # UTF-8, not \\u escapes
    assert AlertAckMessage.from_json(data) == m


# --- schemas ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_schemas_are_valid_draft_2020_12(kind: MessageKind) -> None:
    schema = load_schema(kind)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    stem = kind.replace("/", "_")
    assert schema["$id"] == f"https://hrvstream.example/schemas/{stem}-1.json"
    props = cast(dict[str, Any], schema["properties"])
    assert props["schema"] == {"const": schema_name(kind)}
    assert TOPIC_SPECS[kind].schema == schema_name(kind)
    assert schema_path(kind).name == f"{stem}.schema.json"
    assert schema_path(kind).is_file()
    assert "additionalProperties" not in schema  # unknown members are allowed


def test_schema_names() -> None:
    assert [schema_name(k) for k in KINDS] == [
        "hrvstream.beats/1",
        "hrvstream.metrics/1",
        "hrvstream.status/1",
        "hrvstream.alerts/1",
        "hrvstream.alerts_ack/1",
    ]
    with pytest.raises(MessageValueError):
        schema_name(cast(MessageKind, "beat"))


def test_metric_fields_follow_the_engine() -> None:
    assert WINDOW_COLUMNS[1:] == METRIC_FIELDS
    props = cast(dict[str, Any], load_schema("metrics")["properties"])
    assert [k for k in props if k in METRIC_FIELDS] == list(METRIC_FIELDS)


def test_sensor_locations_follow_the_heart_rate_service() -> None:
    assert tuple(loc.name.lower() for loc in BodySensorLocation) == SENSOR_LOCATIONS


# --- payloads both our decoder and the schema reject -----------------------------------

SCHEMA_VIOLATIONS: list[tuple[MessageKind, str, Callable[[dict[str, Any]], object], str]] = [
    ("beats", "rr_ms string", lambda o: o["rr_ms"].__setitem__(1, "812.5"), "$.rr_ms[1]"),
    ("beats", "rr_ms negative", lambda o: o["rr_ms"].__setitem__(0, -1.0), "$.rr_ms[0]"),
    ("beats", "t_s null", lambda o: o["t_s"].__setitem__(0, None), "$.t_s[0]"),
    ("beats", "seq negative", lambda o: o.__setitem__("seq", -1), "$.seq"),
    ("beats", "seq fraction", lambda o: o.__setitem__("seq", 1.5), "$.seq"),
    ("beats", "seq bool", lambda o: o.__setitem__("seq", True), "$.seq"),
    ("beats", "seq string", lambda o: o.__setitem__("seq", "42"), "$.seq"),
    ("beats", "seq too big", lambda o: o.__setitem__("seq", 2**53), "$.seq"),
    ("beats", "missing seq", lambda o: o.pop("seq"), "$.seq"),
    ("beats", "missing t_s", lambda o: o.pop("t_s"), "$.t_s"),
    ("beats", "missing session", lambda o: o.pop("session"), "$.session"),
    ("beats", "rr_ms object", lambda o: o.__setitem__("rr_ms", {}), "$.rr_ms"),
    ("beats", "after_gap dup", lambda o: o.__setitem__("after_gap", [2, 2]), "$.after_gap[1]"),
    ("beats", "after_gap neg", lambda o: o.__setitem__("after_gap", [-1]), "$.after_gap[0]"),
    (
        "beats",
        "too many beats",
        lambda o: o.update(t_s=[1.0] * 65, rr_ms=[800.0] * 65, after_gap=[]),
        "$.t_s",
    ),
    ("beats", "contact string", lambda o: o.__setitem__("contact", "yes"), "$.contact"),
    ("beats", "hr_bpm float", lambda o: o.__setitem__("hr_bpm", 72.5), "$.hr_bpm"),
    ("beats", "hr_bpm too big", lambda o: o.__setitem__("hr_bpm", 65536), "$.hr_bpm"),
    ("beats", "origin negative", lambda o: o.__setitem__("origin_unix_s", -1), "$.origin_unix_s"),
    ("beats", "patient upper", lambda o: o.__setitem__("patient", "P017"), "$.patient"),
    ("beats", "patient MAC", lambda o: o.__setitem__("patient", "a0-9e-1a-8c-4d-2e"), "$.patient"),
    ("beats", "patient name", lambda o: o.__setitem__("patient", "Jane Doe"), "$.patient"),
    ("beats", "patient number", lambda o: o.__setitem__("patient", 17), "$.patient"),
    ("beats", "session MAC", lambda o: o.__setitem__("session", "A0:9E:1A:8C:4D:2E"), "$.session"),
    ("beats", "session space", lambda o: o.__setitem__("session", "a b"), "$.session"),
    ("beats", "schema other", lambda o: o.__setitem__("schema", "hrvstream.beats/2"), "$.schema"),
    ("beats", "schema missing", lambda o: o.pop("schema"), "$.schema"),
    ("metrics", "metric string", lambda o: o.__setitem__("rmssd_ms", "39.6"), "$.rmssd_ms"),
    ("metrics", "metric missing", lambda o: o.pop("lf_hf"), "$.lf_hf"),
    ("metrics", "n_beats negative", lambda o: o.__setitem__("n_beats", -1), "$.n_beats"),
    ("metrics", "n_beats null", lambda o: o.__setitem__("n_beats", None), "$.n_beats"),
    ("metrics", "window zero", lambda o: o.__setitem__("window_s", 0), "$.window_s"),
    ("metrics", "t_unix missing", lambda o: o.pop("t_unix_s"), "$.t_unix_s"),
    ("status", "state", lambda o: o.__setitem__("state", "busy"), "$.state"),
    ("status", "battery 101", lambda o: o.__setitem__("battery_pct", 101), "$.battery_pct"),
    ("status", "battery float", lambda o: o.__setitem__("battery_pct", 50.5), "$.battery_pct"),
    ("status", "spool negative", lambda o: o.__setitem__("spool_pending", -3), "$.spool_pending"),
    ("status", "strap string", lambda o: o.__setitem__("strap", "Polar"), "$.strap"),
    (
        "status",
        "strap name MAC",
        lambda o: o["strap"].__setitem__("name", "Polar A0:9E:1A:8C:4D:2E"),
        "$.strap.name",
    ),
    (
        "status",
        "strap name UUID",
        lambda o: o["strap"].__setitem__("name", "12345678-9abc-def0-1234-56789abcdef0"),
        "$.strap.name",
    ),
    (
        "status",
        "strap location",
        lambda o: o["strap"].__setitem__("location", "belly"),
        "$.strap.location",
    ),
    ("status", "agent_version", lambda o: o.__setitem__("agent_version", ""), "$.agent_version"),
    ("status", "missing version", lambda o: o.pop("agent_version"), "$.agent_version"),
    ("alerts", "severity", lambda o: o.__setitem__("severity", "high"), "$.severity"),
    ("alerts", "ack without by", lambda o: o.__setitem__("acknowledged_by", None), "$.ack"),
    (
        "alerts",
        "raised with by",
        lambda o: o.__setitem__("state", "raised"),
        "$.acknowledged_by",
    ),
    (
        "alerts",
        "explanation list",
        lambda o: o.__setitem__("explanation", [1, 2]),
        "$.explanation",
    ),
    (
        "alerts",
        "explanation bool",
        lambda o: o["explanation"].__setitem__("flag", True),
        "$.explanation.flag",
    ),
    (
        "alerts",
        "explanation key",
        lambda o: o["explanation"].__setitem__("Bad Key", 1),
        "$.explanation",
    ),
    (
        "alerts",
        "explanation long",
        lambda o: o["explanation"].__setitem__("reason", "x" * 201),
        "$.explanation.reason",
    ),
    ("alerts", "note long", lambda o: o.__setitem__("note", "x" * 501), "$.note"),
    ("alerts", "rule", lambda o: o.__setitem__("rule", "RMSSD"), "$.rule"),
    ("alerts", "alert_id", lambda o: o.__setitem__("alert_id", ""), "$.alert_id"),
    ("alerts/ack", "by missing", lambda o: o.pop("by"), "$.by"),
    ("alerts/ack", "by spaces", lambda o: o.__setitem__("by", "Dr Who"), "$.by"),
    ("alerts/ack", "note empty", lambda o: o.__setitem__("note", ""), "$.note"),
    ("alerts/ack", "t number", lambda o: o.__setitem__("t_unix_s", "now"), "$.t_unix_s"),
]


@pytest.mark.parametrize(
    ("kind", "mutate", "path"),
    [pytest.param(k, f, p, id=f"{k}: {name}") for k, name, f, p in SCHEMA_VIOLATIONS],
)
def test_schema_violations_are_rejected_by_both(
    kind: MessageKind, mutate: Callable[[dict[str, Any]], object], path: str
) -> None:
    obj = example_obj(kind)
    mutate(obj)
    assert schema_errors(kind, obj), "the JSON Schema accepted it"
    cls = MESSAGE_TYPES[kind]
    with pytest.raises(MessageError) as info:
        cls.from_json(dump(obj))
    err = info.value
    assert not isinstance(err, ValueError)  # a peer's error, not a local one
    assert err.kind == kind
    if path == "$.ack":  # the rule may be reported on either member
        assert err.path in ("$.acknowledged_by", "$.state")
    else:
        assert err.path == path, str(err)
    assert err.path in str(err)
    with pytest.raises(MessageError):
        decode_message(dump(obj))


# --- rules only our decoder enforces ---------------------------------------------------

DECODER_ONLY: list[tuple[MessageKind, str, Callable[[dict[str, Any]], object], str]] = [
    ("beats", "arrays differ", lambda o: o["rr_ms"].pop(), "$.rr_ms"),
    ("beats", "t_s decreases", lambda o: o["t_s"].__setitem__(1, 1.0), "$.t_s[1]"),
    ("beats", "after_gap range", lambda o: o.__setitem__("after_gap", [3]), "$.after_gap[0]"),
    ("beats", "after_gap order", lambda o: o.__setitem__("after_gap", [2, 0]), "$.after_gap[1]"),
    ("beats", "rr_ms huge int", lambda o: o["rr_ms"].__setitem__(0, 10**400), "$.rr_ms[0]"),
    ("alerts", "lone surrogate", lambda o: o.__setitem__("note", "\ud800"), "$.note"),
]


@pytest.mark.parametrize(
    ("kind", "mutate", "path"),
    [pytest.param(k, f, p, id=f"{k}: {name}") for k, name, f, p in DECODER_ONLY],
)
def test_cross_field_rules(
    kind: MessageKind, mutate: Callable[[dict[str, Any]], object], path: str
) -> None:
    obj = example_obj(kind)
    mutate(obj)
    with pytest.raises(MessageError) as info:
        MESSAGE_TYPES[kind].from_json(dump(obj))
    assert info.value.path == path, str(info.value)


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"[]", "expected a JSON object, got array"),
        (b'"beats"', "expected a JSON object, got string"),
        (b"null", "expected a JSON object, got null"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{}", "required member is missing"),
        (b'{"schema": 1}', "not an hrvstream schema"),
        (b'{"schema": "beats"}', "not an hrvstream schema"),
        (b'{"schema": "hrvstream.status/1"}', "this is a status message"),
        (b'{"schema": "hrvstream.beats/2"}', "schema version 2 is not supported"),
        (b'{"schema": "hrvstream.beats/1", "schema": "hrvstream.beats/1"}', "duplicate key"),
        (b"[" * 100_000, "larger than"),
        (b"[" * 60_000, "not valid JSON"),
    ],
)
def test_malformed_payloads(payload: bytes, needle: str) -> None:
    with pytest.raises(MessageError) as info:
        BeatsMessage.from_json(payload)
    assert needle in str(info.value)
    assert isinstance(info.value, ProtocolError)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])
@pytest.mark.parametrize("member", ["rr_ms", "unknown_extra"])
def test_non_standard_numbers_are_rejected(constant: str, member: str) -> None:
    obj = example_obj("beats")
    obj[member] = [0]
    text = json.dumps(obj).replace(f'"{member}": [0]', f'"{member}": [{constant}, 1, 2]')
    assert constant in text
    with pytest.raises(MessageError, match="not valid JSON"):
        BeatsMessage.from_json(text.encode())


def test_oversized_payload_is_rejected_before_parsing() -> None:
    obj = example_obj("status")
    obj["padding"] = "x" * MAX_PAYLOAD_BYTES
    with pytest.raises(MessageError, match=f"larger than {MAX_PAYLOAD_BYTES} bytes"):
        StatusMessage.from_json(dump(obj))
    with pytest.raises(MessageError, match="larger than"):
        StatusMessage.from_json(b" " * (MAX_PAYLOAD_BYTES + 1))
    with pytest.raises(MessageError, match="larger than"):
        decode_message(memoryview(b" " * (MAX_PAYLOAD_BYTES + 1)))


def test_payload_must_be_bytes() -> None:
    with pytest.raises(TypeError):
        BeatsMessage.from_json(cast(bytes, BEATS.to_json().decode()))
    assert BeatsMessage.from_json(bytearray(BEATS.to_json())) == BEATS
    assert BeatsMessage.from_json(memoryview(BEATS.to_json())) == BEATS


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_members_are_ignored(kind: MessageKind) -> None:
    obj = example_obj(kind)
    obj["added_in_1_1"] = {"nested": [1, None, "x"]}
    if kind == "status":
        obj["strap"]["firmware"] = "3.0.35"
    assert schema_errors(kind, obj) == []
    assert MESSAGE_TYPES[kind].from_json(dump(obj)) == EXAMPLES[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_optional_members_may_be_absent(kind: MessageKind) -> None:
    obj = example_obj(kind)
    required = set(cast(list[str], load_schema(kind)["required"]))
    for key in list(obj):
        if key not in required and not (kind == "alerts" and key == "acknowledged_by"):
            del obj[key]
    assert schema_errors(kind, obj) == []
    m = MESSAGE_TYPES[kind].from_json(dump(obj))
    assert m.patient == "p017"


def test_integral_floats_are_integers() -> None:
    obj = example_obj("beats")
    obj["seq"] = 42.0
    obj["hr_bpm"] = 73.0
    assert schema_errors("beats", obj) == []
    m = BeatsMessage.from_json(dump(obj))
    assert m == BEATS
    assert type(m.seq) is int and type(m.hr_bpm) is int


def test_integers_in_float_members_become_floats() -> None:
    obj = example_obj("beats")
    obj["rr_ms"] = [812, 1000, 900]
    m = BeatsMessage.from_json(dump(obj))
    assert m.rr_ms == (812.0, 1000.0, 900.0)
    assert all(type(x) is float for x in m.rr_ms)


# --- fuzzing: only MessageError, and what we accept the schema accepts -----------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_message_error(data: bytes) -> None:
    with contextlib.suppress(MessageError):
        decode_message(data)


@settings(max_examples=500)
@given(st.sampled_from(KINDS), st.data())
def test_decoder_is_at_least_as_strict_as_the_schema(
    kind: MessageKind, data: st.DataObject
) -> None:
    obj = example_obj(kind)
    key = data.draw(st.sampled_from(sorted(obj)))
    obj[key] = data.draw(json_values)
    payload = dump(obj)
    try:
        m = MESSAGE_TYPES[kind].from_json(payload)
    except MessageError as exc:
        assert exc.path.startswith("$")
        return
    assert schema_errors(kind, obj) == [], f"decoder accepted {key}={obj[key]!r}"
    assert m.to_json() == MESSAGE_TYPES[kind].from_json(m.to_json()).to_json()


# --- constructors ----------------------------------------------------------------------


def test_constructor_errors_are_value_errors() -> None:
    with pytest.raises(MessageValueError, match=r"\$\.rr_ms\[0\]") as info:
        BeatsMessage("p017", "s", 0, 0.0, 0.0, t_s=(1.0,), rr_ms=(math.nan,))
    assert isinstance(info.value, ValueError)
    assert info.value.kind == "beats"
    assert str(info.value).startswith("invalid beats message: $.rr_ms[0]: must be finite")
    with pytest.raises(ValueError, match="parallel"):
        BeatsMessage("p017", "s", 0, 0.0, 0.0, t_s=(1.0,), rr_ms=())
    with pytest.raises(ValueError, match=r"\$\.rmssd_ms"):
        MetricsMessage("p017", "s", 0.0, 300.0, 3, rmssd_ms=math.nan)
    with pytest.raises(ValueError, match=r"\$\.strap\.name"):
        StrapInfo(name="H10 aa:bb:cc:dd:ee:ff")
    with pytest.raises(ValueError, match=r"\$\.strap"):
        StatusMessage("p017", "online", 0.0, "1", strap=cast(StrapInfo, {"name": "x"}))
    with pytest.raises(ValueError, match="more than 64"):
        BeatsMessage("p017", "s", 0, 0.0, 0.0, t_s=(1.0,) * 65, rr_ms=(1.0,) * 65)


def test_from_beats_uses_pipeline_beats() -> None:
    beats = [
        Beat(t_s=0.8125, rr_ms=812.5, after_gap=False, receiver_t_s=100.8125),
        Beat(t_s=1.625, rr_ms=812.5, after_gap=False, receiver_t_s=101.625),
        Beat(t_s=9.0, rr_ms=800.0, after_gap=True, receiver_t_s=109.0),
    ]
    m = BeatsMessage.from_beats(
        patient="p017",
        session="s1",
        seq=7,
        origin_unix_s=1714555800.0,
        sent_unix_s=1714555809.1,
        beats=beats,
        contact=None,
        hr_bpm=74,
    )
    assert m.t_s == (0.8125, 1.625, 9.0)
    assert m.after_gap == (2,)
    assert m.beats() == ((0.8125, 812.5, False), (1.625, 812.5, False), (9.0, 800.0, True))
    assert m.key == ("p017", "s1", 7)
    empty = BeatsMessage.from_beats(
        patient="p017", session="s1", seq=8, origin_unix_s=1.0, sent_unix_s=2.0, beats=[]
    )
    assert BeatsMessage.from_json(empty.to_json()) == empty


def test_from_row_maps_nan_to_null() -> None:
    row = dict.fromkeys(WINDOW_COLUMNS, math.nan)
    row.update(t_s=300.0, n_beats=351.0, coverage=0.98, rmssd_ms=39.6)
    m = MetricsMessage.from_row(
        patient="p017", session="s1", origin_unix_s=1714555800.0, window_s=300.0, row=row
    )
    assert m.t_unix_s == 1714556100.0
    assert m.n_beats == 351 and type(m.n_beats) is int
    assert m.rmssd_ms == 39.6 and m.lf_hf is None
    obj = json.loads(m.to_json())
    assert obj["lf_hf"] is None and obj["sdnn_ms"] is None
    assert list(m.metric_values()) == list(METRIC_FIELDS)


def test_offline_will() -> None:
    will = StatusMessage.offline("p017", 1714555790.0, "0.1.0")
    obj = json.loads(will.to_json())
    assert obj["state"] == "offline" and obj["strap"] is None
    assert TOPIC_SPECS["status"].retain
    assert not any(TOPIC_SPECS[k].retain for k in KINDS if k != "status")
    assert all(spec.qos == 1 for spec in TOPIC_SPECS.values())


def test_alert_hashable_despite_explanation() -> None:
    assert hash(ALERT) == hash(AlertMessage.from_json(ALERT.to_json()))


# --- topics ----------------------------------------------------------------------------


@given(patients, st.sampled_from(KINDS))
def test_topic_round_trip(patient: str, kind: MessageKind) -> None:
    t = topic(patient, kind)
    assert t == f"hrv/v1/{patient}/{kind}"
    assert parse_topic(t) == (patient, kind)


def test_topic_examples() -> None:
    assert topic("p017", "beats") == "hrv/v1/p017/beats"
    assert parse_topic("hrv/v1/p017/alerts/ack") == ("p017", "alerts/ack")
    assert subscription("metrics") == "hrv/v1/+/metrics"
    assert subscription("status", "p017") == "hrv/v1/p017/status"
    assert shared_subscription("ingest", "beats") == "$share/ingest/hrv/v1/+/beats"
    assert SHARED_SUBSCRIPTION("ingest", "alerts/ack") == "$share/ingest/hrv/v1/+/alerts/ack"
    assert message_topic(BEATS) == "hrv/v1/p017/beats"
    assert message_topic(ACK) == "hrv/v1/p017/alerts/ack"


@pytest.mark.parametrize(
    ("patient", "ok"),
    [
        ("p017", True),
        ("p-017", True),
        ("ab", True),
        ("0a", True),
        ("study_3-participant_12", True),
        ("a" * 64, True),
        ("p-123456789012", True),
        ("deadbeefcafe01", True),  # 14 hex digits: not an address
        ("a", False),  # too short
        ("a" * 65, False),
        ("P017", False),  # uppercase
        ("jane doe", False),  # spaces
        ("Jane", False),
        ("p+017", False),
        ("p#017", False),
        ("+", False),
        ("#", False),
        ("p/017", False),
        ("$sys", False),
        ("-p017", False),
        ("_p017", False),
        ("p.017", False),
        ("jöns", False),
        ("", False),
        ("A0:9E:1A:8C:4D:2E", False),
        ("a0:9e:1a:8c:4d:2e", False),
        ("a0-9e-1a-8c-4d-2e", False),
        ("a0_9e_1a_8c_4d_2e", False),
        ("a09e1a8c4d2e", False),
        ("123456789012", False),
        ("12345678-9abc-def0-1234-56789abcdef0", False),  # CoreBluetooth identifier
        ("123456789abcdef0123456789abcdef0", False),
    ],
)
def test_patient_rule(patient: str, ok: bool) -> None:
    assert is_valid_patient(patient) is ok
    if ok:
        assert check_patient(patient) == patient
        assert parse_topic(topic(patient, "status")) == (patient, "status")
    else:
        with pytest.raises(MessageValueError):
            check_patient(patient)
        with pytest.raises(MessageValueError):
            topic(patient, "beats")
        with pytest.raises(TopicError):
            parse_topic(f"hrv/v1/{patient}/beats")


def test_patient_rule_non_strings() -> None:
    assert not is_valid_patient(None)
    assert not is_valid_patient(17)
    with pytest.raises(MessageValueError):
        check_patient(b"p017")


@pytest.mark.parametrize(
    ("t", "needle"),
    [
        ("hrv/v1/+/beats", "wildcards"),
        ("hrv/v1/#", "wildcards"),
        ("hrv/v1/p017/+", "wildcards"),
        ("$share/g/hrv/v1/+/beats", "wildcards"),
        ("hrv/v2/p017/beats", "topic version v2 is not supported"),
        ("hrv/V1/p017/beats", "not an hrvstream topic version"),
        ("hrv/v1/p017", "not an hrvstream topic"),
        ("hrv/v1/p017/", "unknown kind ''"),
        ("hrv/v1/p017/beat", "unknown kind 'beat'"),
        ("hrv/v1/p017/alerts/ack/x", "unknown kind"),
        ("hrv/v1/p017/ack", "unknown kind"),
        ("/hrv/v1/p017/beats", "not an hrvstream topic"),
        ("hrv/v1/p017/beats/", "unknown kind"),
        ("HRV/v1/p017/beats", "not an hrvstream topic"),
        ("hrv/v1//beats", "patient pseudonym"),
        ("hrv/v1/P017/beats", "patient pseudonym"),
        ("hrv/v1/a0-9e-1a-8c-4d-2e/beats", "looks like a BLE address"),
        ("", "not an hrvstream topic"),
    ],
)
def test_topic_rejections(t: str, needle: str) -> None:
    with pytest.raises(TopicError) as info:
        parse_topic(t)
    assert needle in str(info.value)
    assert info.value.path == "topic"
    assert isinstance(info.value, MessageError)


def test_parse_topic_requires_a_string() -> None:
    with pytest.raises(TopicError, match="expected a string"):
        parse_topic(cast(str, b"hrv/v1/p017/beats"))


def test_topic_helper_rejections() -> None:
    with pytest.raises(MessageValueError, match="unknown message kind"):
        topic("p017", cast(MessageKind, "alerts/acks"))
    with pytest.raises(MessageValueError, match="share group"):
        shared_subscription("a/b", "beats")
    with pytest.raises(MessageValueError, match="share group"):
        shared_subscription("", "beats")
    with pytest.raises(MessageValueError):
        subscription("beats", "#")


# --- decoding against the topic --------------------------------------------------------


def test_decode_message_checks_the_topic() -> None:
    data = BEATS.to_json()
    assert decode_message(data, "hrv/v1/p017/beats") == BEATS
    with pytest.raises(MessageError, match="does not match the topic") as info:
        decode_message(data, "hrv/v1/p018/beats")
    assert info.value.path == "$.patient"
    with pytest.raises(MessageError, match="this is a beats message") as info:
        decode_message(data, "hrv/v1/p017/metrics")
    assert info.value.path == "$.schema"
    with pytest.raises(TopicError):
        decode_message(data, "hrv/v1/+/beats")


def test_decode_message_dispatches_on_schema() -> None:
    for kind, m in EXAMPLES.items():
        assert decode_message(m.to_json()) == m
        assert decode_message(m.to_json(), topic("p017", kind)) == m
    with pytest.raises(MessageError, match="not an hrvstream message schema"):
        decode_message(b'{"schema": "hrvstream.beat/1"}')
    with pytest.raises(MessageError, match="required member is missing"):
        decode_message(b'{"patient": "p017"}')
    with pytest.raises(MessageError, match="version 3 is not supported"):
        decode_message(b'{"schema": "hrvstream.metrics/3"}')


# --- documentation ---------------------------------------------------------------------


def test_docs_describe_every_topic_and_schema() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for kind in KINDS:
        assert f"`hrv/v1/<patient>/{kind}`" in text
        assert schema_name(kind) in text
        assert f"schemas/{kind.replace('/', '_')}.schema.json" in text
    assert "$share/<group>/hrv/v1/+/<kind>" in text


def test_docs_examples_decode_and_validate() -> None:
    text = DOCS.read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0].strip() for b in text.split("```json\n")[1:]]
    assert len(blocks) == 6
    seen = set()
    for block in blocks:
        m = decode_message(block.encode())
        assert m.to_json() == block.encode()  # the examples are exactly what we write
        assert schema_errors(m.KIND, json.loads(block)) == []
        seen.add(m.KIND)
    assert seen == set(KINDS)
