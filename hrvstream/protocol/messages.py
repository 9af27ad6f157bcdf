"""MQTT topics and JSON payloads of hrvstream, version 1.

A pure codec in the style of :mod:`hrvstream.protocol.heart_rate` and
:mod:`hrvstream.protocol.capture`: topic strings and payload bytes in, frozen dataclasses
out, and back. No broker, no clock, no I/O. The agent (next to the patient's strap), the
server and the therapists' clients all speak through these functions; ``docs/mqtt.md``
describes the scheme for people, and the JSON Schemas in ``hrvstream/protocol/schemas``
(see :func:`schema_path`) describe it for other programs.

Topics
------
::

    hrv/v1/<patient>/beats        agent  -> server      BeatsMessage    QoS 1
    hrv/v1/<patient>/metrics      agent  -> clients     MetricsMessage  QoS 1
    hrv/v1/<patient>/status       agent  -> all         StatusMessage   QoS 1, retained, will
    hrv/v1/<patient>/alerts       server -> therapists  AlertMessage    QoS 1
    hrv/v1/<patient>/alerts/ack   therapist -> server   AlertAckMessage QoS 1

``<patient>`` is a **pseudonym** from the configuration, never a name and never a BLE
address. The rule (:func:`check_patient`), chosen so that an id is one topic level, cannot
be a wildcard and cannot be mistaken for a device address:

* 2 to 64 characters from ``a-z``, ``0-9``, ``_`` and ``-``, starting with a letter or a
  digit (regex ``[a-z0-9][a-z0-9_-]{1,63}``). So no ``+``, ``#``, ``/``, ``$``, ``:``,
  spaces or uppercase letters (MQTT topics are case sensitive; ``P017`` and ``p017`` would
  be two patients).
* Refused as "looks like a BLE address": an id that, once ``-`` and ``_`` are removed,
  is exactly 12 hexadecimal digits (a 48-bit MAC address, ``a0-9e-1a-8c-4d-2e``,
  ``a09e1a8c4d2e``) or exactly 32 (a CoreBluetooth identifier). Note that
  ``123456789012`` is refused too: prefix numeric study codes, ``p-123456789012``.

Payloads
--------
Every payload is one UTF-8 JSON object (RFC 8259: no ``NaN``, no ``Infinity``) whose
``"schema"`` member names its kind and version, ``"hrvstream.<kind>/1"`` (the ack's is
``"hrvstream.alerts_ack/1"``). Floats are written with Python's ``repr`` precision, the
shortest text that reads back as the same double, so RR intervals such as
``1000 * raw / 1024`` cross the broker bit for bit. Optional members may be absent or
``null``; our encoders always write them.

Decoding (:meth:`BeatsMessage.from_json` and friends, :func:`decode_message`) checks, in
this order: the size (at most :data:`MAX_PAYLOAD_BYTES`, before parsing), UTF-8, JSON
syntax (no ``NaN``/``Infinity``, no number too large for a double, no duplicate keys), a
top-level object, the ``schema`` string, then every field's presence, type and range and
the cross-field rules the JSON Schemas cannot express (parallel arrays of equal length,
``after_gap`` indices in range and increasing, beat times non-decreasing). Any failure
raises :class:`MessageError`, whose message names the field by its path (``$.rr_ms[3]``).

**Unknown members are accepted and ignored**, at the top level and inside ``strap``:
adding an optional member is a compatible change that keeps version ``/1``, so an old
reader must not choke on a newer writer's payload. Anything an old reader would
misunderstand (a renamed, removed or re-typed member, new units) is a breaking change:
it gets schema ``/2`` and new topics ``hrv/v2/...``.

Constructing a message validates it the same way (so every instance encodes, and
``from_json(to_json(m)) == m``); a bad value given to a constructor raises
:class:`MessageValueError`, which is also a :class:`ValueError`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from typing import ClassVar, Final, Literal, Protocol, TypeAlias, TypeVar, cast, get_args

from hrvstream.errors import ProtocolError

__all__ = [
    "ALERT_SEVERITIES",
    "ALERT_STATES",
    "KINDS",
    "MAX_BEATS_PER_MESSAGE",
    "MAX_PAYLOAD_BYTES",
    "MAX_SEQ",
    "MESSAGE_TYPES",
    "METRIC_FIELDS",
    "SCHEMA_VERSION",
    "SENSOR_LOCATIONS",
    "SHARED_SUBSCRIPTION",
    "STATUS_STATES",
    "TOPIC_PREFIX",
    "TOPIC_SPECS",
    "AlertAckMessage",
    "AlertMessage",
    "AlertSeverity",
    "AlertState",
    "BeatsMessage",
    "Message",
    "MessageError",
    "MessageKind",
    "MessageValueError",
    "MetricsMessage",
    "StatusMessage",
    "StatusState",
    "StrapInfo",
    "TopicError",
    "TopicSpec",
    "check_patient",
    "decode_message",
    "encode_message",
    "is_valid_patient",
    "load_schema",
    "message_topic",
    "parse_topic",
    "schema_name",
    "schema_path",
    "shared_subscription",
    "subscription",
    "topic",
]

# --- constants -------------------------------------------------------------------------

TOPIC_ROOT: Final = "hrv"
TOPIC_VERSION: Final = "v1"
TOPIC_PREFIX: Final = f"{TOPIC_ROOT}/{TOPIC_VERSION}"
"""Every topic of this version starts with ``hrv/v1/``."""

SCHEMA_VERSION: Final = 1
"""The payload schema version this module writes and the only one it reads."""

MAX_PAYLOAD_BYTES: Final = 64 * 1024
"""Largest payload :func:`decode_message` parses (checked before parsing). Every valid
message encodes well below it (a full beats message is about 4 KiB)."""

MAX_BEATS_PER_MESSAGE: Final = 64
"""Most beats one :class:`BeatsMessage` carries. A notification with more RR intervals
(possible with a large ATT MTU, never seen from a real strap) is split across messages
with consecutive ``seq``."""

MAX_SEQ: Final = 2**53 - 1
"""Largest ``seq`` (and counter): the largest integer every JSON reader holds exactly."""

MessageKind: TypeAlias = Literal["beats", "metrics", "status", "alerts", "alerts/ack"]
"""The last topic level(s), which say what a topic carries."""

KINDS: Final[tuple[MessageKind, ...]] = get_args(MessageKind)
"""Every :data:`MessageKind`, in topic-table order."""

StatusState: TypeAlias = Literal["online", "offline"]
AlertState: TypeAlias = Literal["raised", "acknowledged", "resolved"]
AlertSeverity: TypeAlias = Literal["info", "warning", "critical"]

STATUS_STATES: Final[tuple[StatusState, ...]] = get_args(StatusState)
ALERT_STATES: Final[tuple[AlertState, ...]] = get_args(AlertState)
ALERT_SEVERITIES: Final[tuple[AlertSeverity, ...]] = get_args(AlertSeverity)

SENSOR_LOCATIONS: Final = ("other", "chest", "wrist", "finger", "hand", "ear_lobe", "foot")
"""Values of ``strap.location``: :class:`~hrvstream.protocol.heart_rate.BodySensorLocation`
names in lowercase."""

METRIC_FIELDS: Final[tuple[str, ...]] = (
    "n_beats",
    "coverage",
    "artifact_pct",
    "mean_hr_bpm",
    "mean_nn_ms",
    "sdnn_ms",
    "rmssd_ms",
    "pnn50_pct",
    "lf_ms2",
    "hf_ms2",
    "lf_hf",
    "lf_nu",
    "hf_nu",
)
"""The metric members of :class:`MetricsMessage`: :data:`hrvstream.hrv.engine.WINDOW_COLUMNS`
without ``t_s`` (the window end is sent as ``t_unix_s``). Kept here, not imported, so the
codec does not pull in numpy; a test checks that the two agree."""

MAX_EXPLANATION_ITEMS: Final = 32
MAX_TEXT_CHARS: Final = 200
MAX_NOTE_CHARS: Final = 500
MAX_NAME_CHARS: Final = 248  # a GAP device name is at most 248 octets

_PATIENT_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{1,63}")
_BLE_LIKE_ID_RE: Final = re.compile(r"[-_]*(?:(?:[0-9a-f][-_]*){12}|(?:[0-9a-f][-_]*){32})")
_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_MAC_IN_TEXT_RE: Final = re.compile(r"[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5}")
_UUID_IN_TEXT_RE: Final = re.compile(
    r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
)
_RULE_RE: Final = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_KEY_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
_BY_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
_VERSION_RE: Final = re.compile(r"[ -~]{1,64}")
_GROUP_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SCHEMA_RE: Final = re.compile(r"hrvstream\.([a-z_]+)/([0-9]+)")

_T = TypeVar("_T")
_TOPIC_VERSION_RE: Final = re.compile(r"v[0-9]+")


def schema_name(kind: MessageKind) -> str:
    """The ``schema`` string of a kind's payloads, ``"hrvstream.<kind>/1"``.

    ``"alerts/ack"`` becomes ``"hrvstream.alerts_ack/1"`` (a ``/`` already separates the
    version).

    Examples
    --------
    >>> schema_name("beats")
    'hrvstream.beats/1'
    """
    _check_kind(kind)
    return f"hrvstream.{_stem(kind)}/{SCHEMA_VERSION}"


def _stem(kind: str) -> str:
    return kind.replace("/", "_")


def _check_kind(kind: object) -> MessageKind:
    if kind not in KINDS:
        raise MessageValueError(
            f"unknown message kind {kind!r} (one of {', '.join(KINDS)})", "kind"
        )
    return kind


# --- errors ----------------------------------------------------------------------------


class MessageError(ProtocolError):
    """A topic or payload does not follow the hrvstream MQTT protocol.

    Parameters
    ----------
    reason:
        What is wrong, in words.
    path:
        Where: ``"$"`` for the whole payload, ``"$.rr_ms[3]"`` for a member, ``"topic"``
        for the topic.
    kind:
        The message kind being decoded, when known.

    Attributes
    ----------
    reason, path, kind:
        As given.
    """

    def __init__(self, reason: str, path: str = "$", kind: str | None = None) -> None:
        self.reason = reason
        self.path = path
        self.kind = kind
        what = f"{kind} message" if kind else "message"
        super().__init__(f"invalid {what}: {path}: {reason}")


class MessageValueError(MessageError, ValueError):
    """A value given to a message constructor or to :func:`topic` is invalid.

    The local error, in h11's terms: our own mistake, never a peer's. Decoding never
    raises it (it raises a plain :class:`MessageError`).
    """


class TopicError(MessageError):
    """A received topic is not an hrvstream ``v1`` topic.

    Parameters
    ----------
    reason:
        What is wrong.
    topic:
        The topic, kept for logging.
    """

    def __init__(self, reason: str, topic: object) -> None:
        self.topic = topic
        super().__init__(f"{reason} (topic {topic!r})", "topic")


@contextmanager
def _in_kind(kind: str) -> Iterator[None]:
    """Attach ``kind`` to the :class:`MessageValueError` raised by field checks."""
    try:
        yield
    except MessageValueError as exc:
        if exc.kind is not None:
            raise
        raise MessageValueError(exc.reason, exc.path, kind) from None


# --- field checks (shared by constructors and decoders) --------------------------------


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _bad(path: str, reason: str) -> MessageValueError:
    return MessageValueError(reason, path)


def _text(value: object, path: str, max_chars: int, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str):
        raise _bad(path, f"expected a string, got {_json_type(value)}")
    if pattern is not None:
        if not pattern.fullmatch(value):
            raise _bad(path, f"{value[:80]!r} does not match {pattern.pattern}")
        return value
    if not value:
        raise _bad(path, "must not be empty")
    if len(value) > max_chars:
        raise _bad(path, f"longer than {max_chars} characters ({len(value)})")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(path, "is not valid Unicode (it contains a lone surrogate)") from None
    return value


def _opt_text(
    value: object, path: str, max_chars: int, pattern: re.Pattern[str] | None = None
) -> str | None:
    return None if value is None else _text(value, path, max_chars, pattern)


def _float(value: object, path: str, *, ge: float | None = None, gt: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(path, f"expected a number, got {_json_type(value)}")
    try:
        f = float(value)
    except OverflowError:
        raise _bad(path, "number too large for a double") from None
    if not math.isfinite(f):
        raise _bad(path, f"must be finite, got {f!r}")
    if ge is not None and not f >= ge:
        raise _bad(path, f"must be >= {ge:g}, got {f!r}")
    if gt is not None and not f > gt:
        raise _bad(path, f"must be > {gt:g}, got {f!r}")
    return f


def _opt_float(
    value: object, path: str, *, ge: float | None = None, gt: float | None = None
) -> float | None:
    return None if value is None else _float(value, path, ge=ge, gt=gt)


def _int(value: object, path: str, lo: int, hi: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type: 3.0 is the integer 3
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(path, f"expected an integer, got {_json_type(value)} {value!r}")
    if not lo <= value <= hi:
        raise _bad(path, f"must be in {lo}..{hi}, got {value}")
    return value


def _opt_int(value: object, path: str, lo: int, hi: int) -> int | None:
    return None if value is None else _int(value, path, lo, hi)


def _opt_bool(value: object, path: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise _bad(path, f"expected true, false or null, got {_json_type(value)}")
    return value


def _choice(value: object, path: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise _bad(path, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _array(value: object, path: str, max_items: int) -> Sequence[object]:
    if not isinstance(value, list | tuple):
        raise _bad(path, f"expected an array, got {_json_type(value)}")
    if len(value) > max_items:
        raise _bad(path, f"more than {max_items} items ({len(value)})")
    return cast(Sequence[object], value)


def _patient(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise _bad(path, f"expected a patient pseudonym string, got {_json_type(value)}")
    if not _PATIENT_RE.fullmatch(value):
        raise _bad(
            path,
            f"patient pseudonym {value[:80]!r} must be 2-64 characters of a-z, 0-9, '_' "
            "and '-', starting with a letter or digit",
        )
    if _BLE_LIKE_ID_RE.fullmatch(value):
        raise _bad(
            path,
            f"patient pseudonym {value!r} looks like a BLE address (12 or 32 hex digits); "
            "use the pseudonym from the configuration",
        )
    return value


def _no_address(value: str, path: str, uuid_too: bool) -> str:
    if _MAC_IN_TEXT_RE.search(value) or (uuid_too and _UUID_IN_TEXT_RE.search(value)):
        raise _bad(path, f"{value[:80]!r} contains what looks like a BLE address")
    return value


def _session(value: object, path: str) -> str:
    return _no_address(_text(value, path, 64, _ID_RE), path, uuid_too=False)


def check_patient(patient: object) -> str:
    """Check a patient pseudonym against the topic rule (see the module docstring).

    Parameters
    ----------
    patient:
        The candidate id, typically from the configuration.

    Returns
    -------
    str
        ``patient``, unchanged.

    Raises
    ------
    MessageValueError
        If it is not a string, breaks the character rule, or looks like a BLE address.

    Examples
    --------
    >>> check_patient("p-017")
    'p-017'
    """
    return _patient(patient, "patient")


def is_valid_patient(patient: object) -> bool:
    """Whether :func:`check_patient` accepts ``patient``. Never raises."""
    try:
        _patient(patient, "patient")
    except MessageValueError:
        return False
    return True


# --- topics ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """How one kind of topic is used (the table in ``docs/mqtt.md``).

    Attributes
    ----------
    kind:
        The topic kind.
    publisher, subscribers:
        Who writes and who reads it (the ACL).
    qos:
        The QoS publishers use and subscribers ask for.
    retain:
        Whether publishers set the retain flag.
    schema:
        The payload's ``schema`` string.
    """

    kind: MessageKind
    publisher: str
    subscribers: str
    qos: int
    retain: bool
    schema: str


TOPIC_SPECS: Final[Mapping[MessageKind, TopicSpec]] = {
    "beats": TopicSpec("beats", "agent", "server", 1, False, "hrvstream.beats/1"),
    "metrics": TopicSpec("metrics", "agent", "server, therapists", 1, False, "hrvstream.metrics/1"),
    "status": TopicSpec(
        "status", "agent (and its will)", "server, therapists", 1, True, "hrvstream.status/1"
    ),
    "alerts": TopicSpec("alerts", "server", "therapists", 1, False, "hrvstream.alerts/1"),
    "alerts/ack": TopicSpec(
        "alerts/ack", "therapists", "server", 1, False, "hrvstream.alerts_ack/1"
    ),
}
"""Publisher, subscribers, QoS, retain flag and schema of every kind."""


def topic(patient: str, kind: MessageKind) -> str:
    """The topic of one patient's messages of one kind.

    Parameters
    ----------
    patient:
        The patient's pseudonym (:func:`check_patient`).
    kind:
        One of :data:`KINDS`.

    Returns
    -------
    str
        ``"hrv/v1/<patient>/<kind>"``.

    Raises
    ------
    MessageValueError
        If the pseudonym or the kind is invalid.

    Examples
    --------
    >>> topic("p017", "alerts/ack")
    'hrv/v1/p017/alerts/ack'
    """
    return f"{TOPIC_PREFIX}/{check_patient(patient)}/{_check_kind(kind)}"


def parse_topic(topic: str) -> tuple[str, MessageKind]:
    """Split a received topic into patient pseudonym and kind.

    Parameters
    ----------
    topic:
        A topic *name*, as a message arrives on (never a filter with wildcards).

    Returns
    -------
    tuple of (str, MessageKind)
        The patient and the kind; ``topic(*parse_topic(t)) == t``.

    Raises
    ------
    TopicError
        If the topic is not a string, contains a wildcard, is not under ``hrv/v1/``
        (another version gets its own message), has an invalid patient pseudonym or an
        unknown kind.

    Examples
    --------
    >>> parse_topic("hrv/v1/p017/beats")
    ('p017', 'beats')
    """
    if not isinstance(topic, str):
        raise TopicError(f"expected a string, got {type(topic).__name__}", topic)
    if "+" in topic or "#" in topic:
        raise TopicError("wildcards '+' and '#' are not allowed in a topic name", topic)
    parts = topic.split("/")
    if len(parts) < 4 or parts[0] != TOPIC_ROOT:
        raise TopicError(f"not an hrvstream topic ({TOPIC_ROOT}/<version>/<patient>/<kind>)", topic)
    if parts[1] != TOPIC_VERSION:
        if _TOPIC_VERSION_RE.fullmatch(parts[1]):
            raise TopicError(
                f"topic version {parts[1]} is not supported (this hrvstream reads {TOPIC_VERSION})",
                topic,
            )
        raise TopicError(f"not an hrvstream topic version: {parts[1]!r}", topic)
    try:
        patient = check_patient(parts[2])
    except MessageValueError as exc:
        raise TopicError(exc.reason, topic) from None
    kind = "/".join(parts[3:])
    if kind not in KINDS:
        raise TopicError(f"unknown kind {kind!r} (one of {', '.join(KINDS)})", topic)
    return patient, kind


def subscription(kind: MessageKind, patient: str = "+") -> str:
    """A topic filter for one kind: every patient's (``+``) or one patient's.

    Examples
    --------
    >>> subscription("metrics")
    'hrv/v1/+/metrics'
    """
    if patient != "+":
        check_patient(patient)
    return f"{TOPIC_PREFIX}/{patient}/{_check_kind(kind)}"


def shared_subscription(group: str, kind: MessageKind) -> str:
    """An MQTT 5 shared subscription to one kind for every patient.

    Server workers that subscribe with the same ``group`` share the messages: each
    message goes to one of them.

    Parameters
    ----------
    group:
        The share name: 1-64 characters of ``A-Z a-z 0-9 _ -``.
    kind:
        One of :data:`KINDS`.

    Returns
    -------
    str
        ``"$share/<group>/hrv/v1/+/<kind>"``.

    Raises
    ------
    MessageValueError
        If the group or the kind is invalid.

    Examples
    --------
    >>> shared_subscription("ingest", "beats")
    '$share/ingest/hrv/v1/+/beats'
    """
    if not isinstance(group, str) or not _GROUP_RE.fullmatch(group):
        raise MessageValueError(
            f"share group {group!r} must be 1-64 characters of A-Z, a-z, 0-9, '_' and '-'",
            "group",
        )
    return f"$share/{group}/{subscription(kind)}"


SHARED_SUBSCRIPTION: Final = shared_subscription
"""Alias of :func:`shared_subscription`."""


# --- payload decoding helpers ----------------------------------------------------------


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def _parse_float(text: str) -> float:
    f = float(text)
    if not math.isfinite(f):
        raise ValueError(f"number {text[:40]} is too large for a double")
    return f


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj: dict[str, object] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _load(data: bytes | bytearray | memoryview) -> dict[str, object]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"payload must be bytes, got {type(data).__name__}")
    n = len(data) if not isinstance(data, memoryview) else data.nbytes
    if n > MAX_PAYLOAD_BYTES:
        raise MessageError(f"payload of {n} bytes is larger than {MAX_PAYLOAD_BYTES} bytes")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        obj = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_parse_float,
            object_pairs_hook=_unique_keys,
        )
    except (ValueError, RecursionError) as exc:
        raise MessageError(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise MessageError(f"expected a JSON object, got {_json_type(obj)}")
    return cast(dict[str, object], obj)


def _check_schema(obj: Mapping[str, object], kind: MessageKind) -> None:
    expected = schema_name(kind)
    got = obj.get("schema", _MISSING)
    if got is _MISSING:
        raise MessageError(f"required member is missing (expected {expected!r})", "$.schema")
    if got == expected:
        return
    if not isinstance(got, str) or not (m := _SCHEMA_RE.fullmatch(got)):
        raise MessageError(f"not an hrvstream schema: {got!r}, expected {expected!r}", "$.schema")
    if m.group(1) != _stem(kind):
        raise MessageError(
            f"this is a {m.group(1)} message ({got!r}), expected {expected!r}", "$.schema"
        )
    raise MessageError(
        f"schema version {m.group(2)} is not supported ({got!r}; this hrvstream reads "
        f"{expected!r})",
        "$.schema",
    )


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final = _Missing()


def _required(obj: Mapping[str, object], key: str) -> object:
    if key not in obj:
        raise MessageValueError("required member is missing", f"$.{key}")
    return obj[key]


def _decode(
    kind: MessageKind,
    data: bytes | bytearray | memoryview,
    build: Callable[[Mapping[str, object]], _T],
) -> _T:
    obj = _load(data)
    try:
        _check_schema(obj, kind)
        with _in_kind(kind):
            return build(obj)
    except MessageError as exc:  # a peer's error: plain MessageError, not ValueError
        raise MessageError(exc.reason, exc.path, kind) from None


def _dumps(obj: Mapping[str, object], kind: str) -> bytes:
    out = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    if len(out) > MAX_PAYLOAD_BYTES:  # pragma: no cover - field limits keep every message small
        raise MessageValueError(
            f"encodes to {len(out)} bytes, more than {MAX_PAYLOAD_BYTES}", "$", kind
        )
    return out


# --- payloads --------------------------------------------------------------------------


class _BeatLike(Protocol):
    @property
    def t_s(self) -> float: ...
    @property
    def rr_ms(self) -> float: ...
    @property
    def after_gap(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class BeatsMessage:
    """The beats of one notification: ``hrv/v1/<patient>/beats``, ``hrvstream.beats/1``.

    Beats are parallel arrays: beat ``i`` ended an interval of ``rr_ms[i]`` milliseconds at
    ``origin_unix_s + t_s[i]`` (unix seconds). ``(session, seq)`` is the idempotency and
    ordering key: a redelivered message (QoS 1 gives at least once) repeats both, and a
    consumer that sees ``seq`` jump knows messages were lost.

    Parameters
    ----------
    patient:
        The patient's pseudonym.
    session:
        The agent's session id, opaque: 1-64 characters of ``A-Z a-z 0-9 . _ : -``,
        starting with a letter or digit (a UUID, or ``<patient>-<start time>``). Must not
        contain a BLE address.
    seq:
        Message number in the session, ``0..MAX_SEQ``, strictly increasing (the agent's
        spool keeps it across reconnects).
    origin_unix_s:
        Receiver time, unix seconds, of the session's first beat (``t = 0``); the same in
        every message of the session. Finite, ``>= 0``.
    sent_unix_s:
        When the agent published the message (unix seconds, for latency measurements).
    t_s:
        Beat times in seconds since the origin, finite, ``>= 0``, non-decreasing.
    rr_ms:
        RR intervals in ms, finite, ``>= 0``, exactly as decoded (``1000 * raw / 1024``).
    after_gap:
        Indices, strictly increasing, of the beats preceded by lost beats.
    contact:
        The strap's skin-contact flag in this notification, ``None`` if not supported.
    hr_bpm:
        The heart rate the strap reported, ``0..65535``, or ``None``.

    Raises
    ------
    MessageValueError
        If a field is invalid, the arrays differ in length or hold more than
        :data:`MAX_BEATS_PER_MESSAGE` beats.
    """

    KIND: ClassVar[MessageKind] = "beats"

    patient: str
    session: str
    seq: int
    origin_unix_s: float
    sent_unix_s: float
    t_s: tuple[float, ...] = ()
    rr_ms: tuple[float, ...] = ()
    after_gap: tuple[int, ...] = ()
    contact: bool | None = None
    hr_bpm: int | None = None

    def __post_init__(self) -> None:
        with _in_kind(self.KIND):
            _patient(self.patient, "$.patient")
            _session(self.session, "$.session")
            _set(self, "seq", _int(self.seq, "$.seq", 0, MAX_SEQ))
            _set(self, "origin_unix_s", _float(self.origin_unix_s, "$.origin_unix_s", ge=0))
            _set(self, "sent_unix_s", _float(self.sent_unix_s, "$.sent_unix_s", ge=0))
            t_raw = _array(self.t_s, "$.t_s", MAX_BEATS_PER_MESSAGE)
            rr_raw = _array(self.rr_ms, "$.rr_ms", MAX_BEATS_PER_MESSAGE)
            if len(rr_raw) != len(t_raw):
                raise _bad(
                    "$.rr_ms",
                    f"has {len(rr_raw)} items but $.t_s has {len(t_raw)}: the arrays are parallel",
                )
            t = tuple(_float(v, f"$.t_s[{i}]", ge=0) for i, v in enumerate(t_raw))
            for i in range(1, len(t)):
                if t[i] < t[i - 1]:
                    raise _bad(
                        f"$.t_s[{i}]",
                        f"beat times must not decrease ({t[i]!r} after {t[i - 1]!r})",
                    )
            rr = tuple(_float(v, f"$.rr_ms[{i}]", ge=0) for i, v in enumerate(rr_raw))
            gaps_raw = _array(self.after_gap, "$.after_gap", MAX_BEATS_PER_MESSAGE)
            gaps: list[int] = []
            for i, v in enumerate(gaps_raw):
                path = f"$.after_gap[{i}]"
                if not t:
                    raise _bad(path, "index into an empty beat list")
                g = _int(v, path, 0, len(t) - 1)
                if gaps and g <= gaps[-1]:
                    raise _bad(path, f"indices must increase strictly ({g} after {gaps[-1]})")
                gaps.append(g)
            _set(self, "t_s", t)
            _set(self, "rr_ms", rr)
            _set(self, "after_gap", tuple(gaps))
            _opt_bool(self.contact, "$.contact")
            _set(self, "hr_bpm", _opt_int(self.hr_bpm, "$.hr_bpm", 0, 0xFFFF))

    @classmethod
    def from_beats(
        cls,
        *,
        patient: str,
        session: str,
        seq: int,
        origin_unix_s: float,
        sent_unix_s: float,
        beats: Iterable[_BeatLike],
        contact: bool | None = None,
        hr_bpm: int | None = None,
    ) -> BeatsMessage:
        """Build from :class:`hrvstream.pipeline.Beat` objects (or anything with ``t_s``,
        ``rr_ms`` and ``after_gap``), ``t_s`` on the session timeline."""
        bs = list(beats)
        return cls(
            patient=patient,
            session=session,
            seq=seq,
            origin_unix_s=origin_unix_s,
            sent_unix_s=sent_unix_s,
            t_s=tuple(b.t_s for b in bs),
            rr_ms=tuple(b.rr_ms for b in bs),
            after_gap=tuple(i for i, b in enumerate(bs) if b.after_gap),
            contact=contact,
            hr_bpm=hr_bpm,
        )

    @property
    def key(self) -> tuple[str, str, int]:
        """``(patient, session, seq)``: identical for a message and its redeliveries."""
        return (self.patient, self.session, self.seq)

    def beats(self) -> tuple[tuple[float, float, bool], ...]:
        """The beats as ``(t_s, rr_ms, after_gap)`` triples, oldest first."""
        gaps = set(self.after_gap)
        return tuple(
            (t, rr, i in gaps) for i, (t, rr) in enumerate(zip(self.t_s, self.rr_ms, strict=True))
        )

    def to_json(self) -> bytes:
        """Encode as a compact UTF-8 JSON payload, ``schema`` first."""
        return _dumps(
            {
                "schema": schema_name(self.KIND),
                "patient": self.patient,
                "session": self.session,
                "seq": self.seq,
                "origin_unix_s": self.origin_unix_s,
                "sent_unix_s": self.sent_unix_s,
                "t_s": list(self.t_s),
                "rr_ms": list(self.rr_ms),
                "after_gap": list(self.after_gap),
                "contact": self.contact,
                "hr_bpm": self.hr_bpm,
            },
            self.KIND,
        )

    @classmethod
    def from_json(cls, data: bytes | bytearray | memoryview) -> BeatsMessage:
        """Decode a payload; raises :class:`MessageError` naming the bad member."""

        def build(o: Mapping[str, object]) -> BeatsMessage:
            return cls(
                patient=cast(str, _required(o, "patient")),
                session=cast(str, _required(o, "session")),
                seq=cast(int, _required(o, "seq")),
                origin_unix_s=cast(float, _required(o, "origin_unix_s")),
                sent_unix_s=cast(float, _required(o, "sent_unix_s")),
                t_s=cast("tuple[float, ...]", _required(o, "t_s")),
                rr_ms=cast("tuple[float, ...]", _required(o, "rr_ms")),
                after_gap=cast("tuple[int, ...]", _required(o, "after_gap")),
                contact=cast("bool | None", o.get("contact")),
                hr_bpm=cast("int | None", o.get("hr_bpm")),
            )

        return _decode(cls.KIND, data, build)


@dataclass(frozen=True, slots=True)
class MetricsMessage:
    """The latest HRV window: ``hrv/v1/<patient>/metrics``, ``hrvstream.metrics/1``.

    The metric members are named as :data:`hrvstream.hrv.engine.WINDOW_COLUMNS` (see
    :data:`METRIC_FIELDS`), in the same units. A metric that could not be computed (too
    few beats, too little coverage) is ``None`` (JSON ``null``), never 0.

    Parameters
    ----------
    patient, session:
        As in :class:`BeatsMessage`.
    t_unix_s:
        The window's end, unix seconds (``origin_unix_s`` plus the row's ``t_s``).
    window_s:
        The window length in seconds, ``> 0``.
    n_beats:
        Intervals in the window, ``>= 0``.
    coverage ... hf_nu:
        The metrics: finite numbers or ``None``.

    Raises
    ------
    MessageValueError
        If a field is invalid (a NaN metric among them: missing is ``None``).
    """

    KIND: ClassVar[MessageKind] = "metrics"

    patient: str
    session: str
    t_unix_s: float
    window_s: float
    n_beats: int
    coverage: float | None = None
    artifact_pct: float | None = None
    mean_hr_bpm: float | None = None
    mean_nn_ms: float | None = None
    sdnn_ms: float | None = None
    rmssd_ms: float | None = None
    pnn50_pct: float | None = None
    lf_ms2: float | None = None
    hf_ms2: float | None = None
    lf_hf: float | None = None
    lf_nu: float | None = None
    hf_nu: float | None = None

    def __post_init__(self) -> None:
        with _in_kind(self.KIND):
            _patient(self.patient, "$.patient")
            _session(self.session, "$.session")
            _set(self, "t_unix_s", _float(self.t_unix_s, "$.t_unix_s", ge=0))
            _set(self, "window_s", _float(self.window_s, "$.window_s", gt=0))
            _set(self, "n_beats", _int(self.n_beats, "$.n_beats", 0, MAX_SEQ))
            for name in METRIC_FIELDS[1:]:
                _set(self, name, _opt_float(getattr(self, name), f"$.{name}"))

    @classmethod
    def from_row(
        cls,
        *,
        patient: str,
        session: str,
        origin_unix_s: float,
        window_s: float,
        row: Mapping[str, float],
    ) -> MetricsMessage:
        """Build from a window row of :class:`hrvstream.hrv.engine.StreamingAnalyzer`.

        ``t_unix_s = origin_unix_s + row["t_s"]``; NaN (the engine's "missing") and absent
        columns become ``None``.
        """
        values: dict[str, float | None] = {}
        for name in METRIC_FIELDS[1:]:
            v = row.get(name)
            values[name] = None if v is None or math.isnan(v) else float(v)
        return cls(
            patient=patient,
            session=session,
            t_unix_s=origin_unix_s + row["t_s"],
            window_s=window_s,
            n_beats=cast(int, row["n_beats"]),  # a float column; the check makes it an int
            **values,
        )

    def metric_values(self) -> dict[str, float | int | None]:
        """The metrics by :data:`METRIC_FIELDS` name, ``n_beats`` first."""
        return {name: getattr(self, name) for name in METRIC_FIELDS}

    def to_json(self) -> bytes:
        """Encode as a compact UTF-8 JSON payload, ``schema`` first."""
        obj: dict[str, object] = {
            "schema": schema_name(self.KIND),
            "patient": self.patient,
            "session": self.session,
            "t_unix_s": self.t_unix_s,
            "window_s": self.window_s,
        }
        obj.update(self.metric_values())
        return _dumps(obj, self.KIND)

    @classmethod
    def from_json(cls, data: bytes | bytearray | memoryview) -> MetricsMessage:
        """Decode a payload; raises :class:`MessageError` naming the bad member."""

        def build(o: Mapping[str, object]) -> MetricsMessage:
            metrics = {k: cast("float | None", _required(o, k)) for k in METRIC_FIELDS[1:]}
            return cls(
                patient=cast(str, _required(o, "patient")),
                session=cast(str, _required(o, "session")),
                t_unix_s=cast(float, _required(o, "t_unix_s")),
                window_s=cast(float, _required(o, "window_s")),
                n_beats=cast(int, _required(o, "n_beats")),
                **metrics,
            )

        return _decode(cls.KIND, data, build)


@dataclass(frozen=True, slots=True)
class StrapInfo:
    """The strap an agent uses, as shown to therapists; never its address.

    Parameters
    ----------
    name:
        The advertised name (``"Polar H10 8C4D2E1A"``), at most 248 characters, or
        ``None``. Must not contain a MAC address or a UUID.
    location:
        The Body Sensor Location, one of :data:`SENSOR_LOCATIONS`, or ``None``.
    """

    name: str | None = None
    location: str | None = None

    def __post_init__(self) -> None:
        if self.name is not None:
            _no_address(_text(self.name, "$.strap.name", MAX_NAME_CHARS), "$.strap.name", True)
        if self.location is not None:
            _choice(self.location, "$.strap.location", SENSOR_LOCATIONS)


@dataclass(frozen=True, slots=True)
class StatusMessage:
    """Agent and strap status: ``hrv/v1/<patient>/status``, ``hrvstream.status/1``.

    Published retained, so a new subscriber learns the current state at once; the agent
    registers :meth:`offline` as its MQTT will when it connects, so the broker publishes
    ``"offline"`` if the agent vanishes.

    Parameters
    ----------
    patient:
        The patient's pseudonym.
    state:
        ``"online"`` or ``"offline"``.
    t_unix_s:
        When the status was composed (for a will: when the agent connected).
    agent_version:
        The agent's version, 1-64 printable ASCII characters (``"0.1.0"``).
    battery_pct:
        The strap's battery level, ``0..100``, or ``None``.
    contact:
        Skin contact, ``None`` if unknown or unsupported.
    strap:
        The strap in use, or ``None`` (none connected).
    spool_pending:
        Beats messages waiting in the agent's spool, or ``None``.
    last_beat_unix_s:
        Time of the latest beat, or ``None``.
    """

    KIND: ClassVar[MessageKind] = "status"

    patient: str
    state: StatusState
    t_unix_s: float
    agent_version: str
    battery_pct: int | None = None
    contact: bool | None = None
    strap: StrapInfo | None = None
    spool_pending: int | None = None
    last_beat_unix_s: float | None = None

    def __post_init__(self) -> None:
        with _in_kind(self.KIND):
            _patient(self.patient, "$.patient")
            _choice(self.state, "$.state", STATUS_STATES)
            _set(self, "t_unix_s", _float(self.t_unix_s, "$.t_unix_s", ge=0))
            _text(self.agent_version, "$.agent_version", 64, _VERSION_RE)
            _set(self, "battery_pct", _opt_int(self.battery_pct, "$.battery_pct", 0, 100))
            _opt_bool(self.contact, "$.contact")
            if self.strap is not None and not isinstance(self.strap, StrapInfo):
                raise _bad("$.strap", f"expected a StrapInfo, got {type(self.strap).__name__}")
            _set(self, "spool_pending", _opt_int(self.spool_pending, "$.spool_pending", 0, MAX_SEQ))
            _set(
                self,
                "last_beat_unix_s",
                _opt_float(self.last_beat_unix_s, "$.last_beat_unix_s", ge=0),
            )

    @classmethod
    def offline(cls, patient: str, t_unix_s: float, agent_version: str) -> StatusMessage:
        """The status to register as the MQTT will (and to publish on a clean exit)."""
        return cls(patient=patient, state="offline", t_unix_s=t_unix_s, agent_version=agent_version)

    def to_json(self) -> bytes:
        """Encode as a compact UTF-8 JSON payload, ``schema`` first."""
        strap = (
            None
            if self.strap is None
            else {"name": self.strap.name, "location": self.strap.location}
        )
        return _dumps(
            {
                "schema": schema_name(self.KIND),
                "patient": self.patient,
                "state": self.state,
                "t_unix_s": self.t_unix_s,
                "agent_version": self.agent_version,
                "battery_pct": self.battery_pct,
                "contact": self.contact,
                "strap": strap,
                "spool_pending": self.spool_pending,
                "last_beat_unix_s": self.last_beat_unix_s,
            },
            self.KIND,
        )

    @classmethod
    def from_json(cls, data: bytes | bytearray | memoryview) -> StatusMessage:
        """Decode a payload; raises :class:`MessageError` naming the bad member."""

        def build(o: Mapping[str, object]) -> StatusMessage:
            raw_strap = o.get("strap")
            strap: StrapInfo | None = None
            if raw_strap is not None:
                if not isinstance(raw_strap, dict):
                    raise _bad(
                        "$.strap", f"expected an object or null, got {_json_type(raw_strap)}"
                    )
                s = cast(dict[str, object], raw_strap)
                strap = StrapInfo(
                    name=cast("str | None", s.get("name")),
                    location=cast("str | None", s.get("location")),
                )
            return cls(
                patient=cast(str, _required(o, "patient")),
                state=cast(StatusState, _required(o, "state")),
                t_unix_s=cast(float, _required(o, "t_unix_s")),
                agent_version=cast(str, _required(o, "agent_version")),
                battery_pct=cast("int | None", o.get("battery_pct")),
                contact=cast("bool | None", o.get("contact")),
                strap=strap,
                spool_pending=cast("int | None", o.get("spool_pending")),
                last_beat_unix_s=cast("float | None", o.get("last_beat_unix_s")),
            )

        return _decode(cls.KIND, data, build)


ExplanationValue: TypeAlias = float | str | None


@dataclass(frozen=True, slots=True)
class AlertMessage:
    """An alert's state: ``hrv/v1/<patient>/alerts``, ``hrvstream.alerts/1``.

    The server publishes one message each time an alert changes state (raised, then
    acknowledged and/or resolved), always with the same ``alert_id``.

    Parameters
    ----------
    alert_id:
        The alert's id, 1-64 characters of ``A-Z a-z 0-9 . _ : -``.
    patient:
        The patient's pseudonym.
    state:
        ``"raised"``, ``"acknowledged"`` or ``"resolved"``.
    rule:
        The rule that fired (``"rmssd_drop"``), ``[a-z][a-z0-9_.-]{0,63}``.
    severity:
        ``"info"``, ``"warning"`` or ``"critical"``.
    t_unix_s:
        When the alert entered ``state``.
    explanation:
        Why: up to 32 entries, snake_case keys (``[a-z][a-z0-9_]{0,63}``), values finite
        numbers, strings of at most 200 characters, or ``None``.
    acknowledged_by:
        Who acknowledged (a staff id, ``[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}``); required
        when ``state`` is ``"acknowledged"``, ``None`` when it is ``"raised"``.
    note:
        The acknowledging therapist's note, at most 500 characters, or ``None``.
    """

    KIND: ClassVar[MessageKind] = "alerts"

    alert_id: str
    patient: str
    state: AlertState
    rule: str
    severity: AlertSeverity
    t_unix_s: float
    explanation: Mapping[str, ExplanationValue] = field(default_factory=dict, hash=False)
    acknowledged_by: str | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        with _in_kind(self.KIND):
            _text(self.alert_id, "$.alert_id", 64, _ID_RE)
            _patient(self.patient, "$.patient")
            _choice(self.state, "$.state", ALERT_STATES)
            _text(self.rule, "$.rule", 64, _RULE_RE)
            _choice(self.severity, "$.severity", ALERT_SEVERITIES)
            _set(self, "t_unix_s", _float(self.t_unix_s, "$.t_unix_s", ge=0))
            _set(self, "explanation", _explanation(self.explanation))
            _opt_text(self.acknowledged_by, "$.acknowledged_by", 128, _BY_RE)
            if self.state == "acknowledged" and self.acknowledged_by is None:
                raise _bad("$.acknowledged_by", "required when state is 'acknowledged'")
            if self.state == "raised" and self.acknowledged_by is not None:
                raise _bad("$.acknowledged_by", "must be null when state is 'raised'")
            _opt_text(self.note, "$.note", MAX_NOTE_CHARS)

    def to_json(self) -> bytes:
        """Encode as a compact UTF-8 JSON payload, ``schema`` first."""
        return _dumps(
            {
                "schema": schema_name(self.KIND),
                "alert_id": self.alert_id,
                "patient": self.patient,
                "state": self.state,
                "rule": self.rule,
                "severity": self.severity,
                "t_unix_s": self.t_unix_s,
                "explanation": dict(self.explanation),
                "acknowledged_by": self.acknowledged_by,
                "note": self.note,
            },
            self.KIND,
        )

    @classmethod
    def from_json(cls, data: bytes | bytearray | memoryview) -> AlertMessage:
        """Decode a payload; raises :class:`MessageError` naming the bad member."""

        def build(o: Mapping[str, object]) -> AlertMessage:
            explanation = o.get("explanation")
            return cls(
                alert_id=cast(str, _required(o, "alert_id")),
                patient=cast(str, _required(o, "patient")),
                state=cast(AlertState, _required(o, "state")),
                rule=cast(str, _required(o, "rule")),
                severity=cast(AlertSeverity, _required(o, "severity")),
                t_unix_s=cast(float, _required(o, "t_unix_s")),
                explanation=cast(
                    "Mapping[str, ExplanationValue]", {} if explanation is None else explanation
                ),
                acknowledged_by=cast("str | None", o.get("acknowledged_by")),
                note=cast("str | None", o.get("note")),
            )

        return _decode(cls.KIND, data, build)


def _explanation(value: object) -> dict[str, ExplanationValue]:
    if not isinstance(value, Mapping):
        raise _bad("$.explanation", f"expected an object, got {_json_type(value)}")
    items = cast(Mapping[object, object], value)
    if len(items) > MAX_EXPLANATION_ITEMS:
        raise _bad("$.explanation", f"more than {MAX_EXPLANATION_ITEMS} entries ({len(items)})")
    out: dict[str, ExplanationValue] = {}
    for key, v in items.items():
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise _bad("$.explanation", f"key {key!r} does not match {_KEY_RE.pattern}")
        path = f"$.explanation.{key}"
        if v is None or isinstance(v, str):
            out[key] = _opt_text(v, path, MAX_TEXT_CHARS)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[key] = _float(v, path)
        else:
            raise _bad(path, f"expected a number, a string or null, got {_json_type(v)}")
    return out


@dataclass(frozen=True, slots=True)
class AlertAckMessage:
    """A therapist acknowledges an alert: ``hrv/v1/<patient>/alerts/ack``,
    ``hrvstream.alerts_ack/1``.

    Parameters
    ----------
    alert_id:
        The acknowledged alert's id.
    patient:
        The patient's pseudonym; must match the topic's.
    by:
        The therapist's staff id, ``[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}`` (the server
        checks it against the client's credentials).
    t_unix_s:
        When the therapist acknowledged.
    note:
        Free text, at most 500 characters, or ``None``.
    """

    KIND: ClassVar[MessageKind] = "alerts/ack"

    alert_id: str
    patient: str
    by: str
    t_unix_s: float
    note: str | None = None

    def __post_init__(self) -> None:
        with _in_kind(self.KIND):
            _text(self.alert_id, "$.alert_id", 64, _ID_RE)
            _patient(self.patient, "$.patient")
            _text(self.by, "$.by", 128, _BY_RE)
            _set(self, "t_unix_s", _float(self.t_unix_s, "$.t_unix_s", ge=0))
            _opt_text(self.note, "$.note", MAX_NOTE_CHARS)

    def to_json(self) -> bytes:
        """Encode as a compact UTF-8 JSON payload, ``schema`` first."""
        return _dumps(
            {
                "schema": schema_name(self.KIND),
                "alert_id": self.alert_id,
                "patient": self.patient,
                "by": self.by,
                "t_unix_s": self.t_unix_s,
                "note": self.note,
            },
            self.KIND,
        )

    @classmethod
    def from_json(cls, data: bytes | bytearray | memoryview) -> AlertAckMessage:
        """Decode a payload; raises :class:`MessageError` naming the bad member."""

        def build(o: Mapping[str, object]) -> AlertAckMessage:
            return cls(
                alert_id=cast(str, _required(o, "alert_id")),
                patient=cast(str, _required(o, "patient")),
                by=cast(str, _required(o, "by")),
                t_unix_s=cast(float, _required(o, "t_unix_s")),
                note=cast("str | None", o.get("note")),
            )

        return _decode(cls.KIND, data, build)


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


Message: TypeAlias = BeatsMessage | MetricsMessage | StatusMessage | AlertMessage | AlertAckMessage
"""Any payload."""

MESSAGE_TYPES: Final[Mapping[MessageKind, type[Message]]] = {
    "beats": BeatsMessage,
    "metrics": MetricsMessage,
    "status": StatusMessage,
    "alerts": AlertMessage,
    "alerts/ack": AlertAckMessage,
}
"""The payload class of every kind."""

_KIND_BY_STEM: Final[Mapping[str, MessageKind]] = {_stem(k): k for k in KINDS}


def encode_message(message: Message) -> bytes:
    """Encode any message; same as ``message.to_json()``."""
    return message.to_json()


def message_topic(message: Message) -> str:
    """The topic a message is published on, ``hrv/v1/<message.patient>/<its kind>``."""
    return topic(message.patient, message.KIND)


def decode_message(data: bytes | bytearray | memoryview, topic: str | None = None) -> Message:
    """Decode a payload of any kind, optionally checking it against its topic.

    Parameters
    ----------
    data:
        The payload as received.
    topic:
        The topic it arrived on. When given, the payload's kind must be the topic's and
        its ``patient`` the topic's pseudonym: together with the broker's ACL (a patient
        publishes only under its own id) this keeps one patient's agent from writing
        another's data.

    Returns
    -------
    Message
        The decoded message, of the class its ``schema`` names.

    Raises
    ------
    MessageError
        If the payload is invalid, or does not match the topic (:class:`TopicError` if the
        topic itself is invalid).
    TypeError
        If ``data`` is not bytes-like.
    """
    expected: tuple[str, MessageKind] | None = None
    if topic is not None:
        expected = parse_topic(topic)
    obj = _load(data)
    raw = obj.get("schema", _MISSING)
    m = _SCHEMA_RE.fullmatch(raw) if isinstance(raw, str) else None
    if raw is _MISSING:
        raise MessageError("required member is missing", "$.schema")
    if m is None or m.group(1) not in _KIND_BY_STEM:
        raise MessageError(f"not an hrvstream message schema: {raw!r}", "$.schema")
    kind = expected[1] if expected is not None else _KIND_BY_STEM[m.group(1)]
    message = MESSAGE_TYPES[kind].from_json(data)
    if expected is not None and message.patient != expected[0]:
        raise MessageError(
            f"patient {message.patient!r} does not match the topic's {expected[0]!r}",
            "$.patient",
            kind,
        )
    return message


# --- JSON Schemas ----------------------------------------------------------------------


def schema_path(kind: MessageKind) -> Traversable:
    """The JSON Schema (draft 2020-12) of a kind's payloads, shipped with the package.

    Parameters
    ----------
    kind:
        One of :data:`KINDS`.

    Returns
    -------
    importlib.resources.abc.Traversable
        ``hrvstream/protocol/schemas/<kind>.schema.json`` (``alerts_ack`` for the ack);
        ``.read_text()`` it, or ``importlib.resources.as_file`` it for a real path.
    """
    return (
        resources.files("hrvstream.protocol")
        / "schemas"
        / f"{_stem(_check_kind(kind))}.schema.json"
    )


def load_schema(kind: MessageKind) -> dict[str, object]:
    """The parsed JSON Schema of a kind's payloads (see :func:`schema_path`)."""
    return cast(dict[str, object], json.loads(schema_path(kind).read_text(encoding="utf-8")))
