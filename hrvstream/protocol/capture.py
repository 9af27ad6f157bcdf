"""The capture file: raw BLE notifications as JSON Lines, for exact replay.

A capture records what the radio delivered, not what we made of it: every notification's
payload bytes with its arrival time, plus link events, so a session can be replayed through
the same parser and pipeline bit for bit, and parser bugs can be fixed after the fact.

This module is a pure codec: it turns lines (``str``, without the trailing newline) into
frozen dataclasses and back. Opening, appending, flushing and rotating files is the
caller's job. Every line is one compact JSON object (``separators=(",", ":")``, ASCII only,
so no raw newline or Unicode line separator can ever split a record).

Format, version 1
-----------------
Line 1, the header::

    {"format":"hrvstream-capture","version":1,"device_name":"Polar H10 8C4D2E1A",
     "device_address":"A0:9E:1A:8C:4D:2E","started_at":"2024-05-01T09:30:00.123456Z",
     "software":"hrvstream 0.1.0","source":"ble","patient":null,"metadata":{}}

* ``format`` (required): always ``"hrvstream-capture"``.
* ``version`` (required): integer format version. A reader refuses versions newer than
  :data:`CAPTURE_VERSION` with :class:`UnsupportedCaptureVersionError`.
* ``started_at`` (required): ISO 8601 instant with an explicit UTC offset, written in UTC
  with a ``Z`` suffix and microseconds. The ``t`` of every record counts from here.
* ``software`` (required): what wrote the file, ``"hrvstream <version>"``.
* ``source`` (required): ``"ble"`` (a real sensor), ``"virtual"`` (the simulated sensor)
  or ``"file"`` (notifications synthesised from a recording).
* ``device_name``, ``device_address`` (optional, may be ``null``): the advertised name and
  the address (a MAC on Linux/Windows, a CoreBluetooth UUID on macOS).
* ``patient`` (optional, may be ``null``): a *pseudonymous* participant code. Never a name.
* ``metadata`` (optional): an object of free-form string keys and string values
  (firmware version, body sensor location, negotiated MTU, notes).

Unknown header keys are ignored by this reader (a writer of version 1 never adds any);
anything a reader must understand bumps ``version``.

Every further line is a record. A **notification**::

    {"t":12.034817,"uuid":"00002a37-0000-1000-8000-00805f9b34fb","hex":"1048b103"}

* ``t``: seconds since ``started_at`` at which the host received the notification (a
  monotonic clock, not the sensor's: notifications carry no timestamp), a finite number
  ``>= 0``, written with ``repr`` precision so it round trips exactly.
* ``uuid``: the characteristic's full 128-bit UUID, lowercase.
* ``hex``: the payload, lowercase hex (a reader also accepts uppercase), possibly empty.

An **event** (``uuid``/``hex`` absent)::

    {"t":95.5,"event":"disconnected","detail":"supervision timeout"}

Events let replay reproduce what the live stream saw around the data: a link drop
(``disconnected`` ... ``connected``: replay pauses, the pipeline marks a gap), loss and
return of skin contact, and user markers. Known names are in :data:`KNOWN_EVENTS`; a
reader accepts any name made of lowercase letters, digits and ``_`` (so newer writers'
events pass through) and replay ignores the ones it does not know. ``detail`` is an
optional free-text string.

Records are written in arrival order; :func:`decode_capture` checks that ``t`` never
decreases.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal, TypeAlias, cast, get_args

from hrvstream import __version__
from hrvstream.errors import ProtocolError

__all__ = [
    "CAPTURE_FORMAT",
    "CAPTURE_VERSION",
    "EVENT_CONNECTED",
    "EVENT_CONTACT_LOST",
    "EVENT_CONTACT_RESTORED",
    "EVENT_DISCONNECTED",
    "EVENT_MARKER",
    "KNOWN_EVENTS",
    "Capture",
    "CaptureEvent",
    "CaptureFormatError",
    "CaptureHeader",
    "CaptureRecord",
    "CaptureSource",
    "Notification",
    "UnsupportedCaptureVersionError",
    "decode_capture",
    "decode_header",
    "decode_record",
    "encode_header",
    "encode_record",
    "is_capture_header",
]

CAPTURE_FORMAT: Final = "hrvstream-capture"
"""Value of the header's ``format`` key."""

CAPTURE_VERSION: Final = 1
"""The newest capture format version this module reads and the one it writes."""

CaptureSource: TypeAlias = Literal["ble", "virtual", "file"]
"""Where the notifications of a capture came from."""

_SOURCES: Final[tuple[str, ...]] = get_args(CaptureSource)

EVENT_CONNECTED: Final = "connected"
"""The link is up and notifications are enabled (again)."""
EVENT_DISCONNECTED: Final = "disconnected"
"""The link dropped; ``detail`` may carry the reason."""
EVENT_CONTACT_LOST: Final = "contact_lost"
"""The sensor reported loss of skin contact (contact supported, not detected)."""
EVENT_CONTACT_RESTORED: Final = "contact_restored"
"""The sensor reported skin contact again."""
EVENT_MARKER: Final = "marker"
"""A user annotation (``detail`` says what: "exposure start", "patient stood up" ...)."""

KNOWN_EVENTS: Final = frozenset(
    {
        EVENT_CONNECTED,
        EVENT_DISCONNECTED,
        EVENT_CONTACT_LOST,
        EVENT_CONTACT_RESTORED,
        EVENT_MARKER,
    }
)
"""Event names this version of hrvstream writes and replays."""

_UUID_RE: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX_RE: Final = re.compile(r"(?:[0-9a-fA-F]{2})*")
_EVENT_RE: Final = re.compile(r"[a-z][a-z0-9_]*")
_SHOWN_CHARS: Final = 80


class CaptureFormatError(ProtocolError):
    """A capture line is malformed.

    Parameters
    ----------
    reason:
        What is wrong with the line.
    line_no:
        1-based line number (the header is line 1), when known.
    line:
        The offending line, shown shortened in the message.

    Attributes
    ----------
    reason, line_no, line:
        As given, so a file reader can re-raise with the path
        (:class:`hrvstream.errors.MalformedLineError`).
    """

    def __init__(self, reason: str, line_no: int | None = None, line: str = "") -> None:
        self.reason = reason
        self.line_no = line_no
        self.line = line
        where = f"capture line {line_no}: " if line_no is not None else "capture: "
        shown = line if len(line) <= _SHOWN_CHARS else line[: _SHOWN_CHARS - 3] + "..."
        detail = f": {shown!r}" if line else ""
        super().__init__(f"{where}{reason}{detail}")


class UnsupportedCaptureVersionError(CaptureFormatError):
    """The capture was written in a format version this hrvstream cannot read.

    Attributes
    ----------
    version:
        The version found in the header.
    """

    def __init__(self, version: int, line: str = "") -> None:
        self.version = version
        super().__init__(
            f"capture format version {version} is newer than this hrvstream "
            f"({__version__}) reads (up to {CAPTURE_VERSION}); upgrade hrvstream",
            1,
            line,
        )


def _format_started_at(dt: datetime) -> str:
    naive_utc = dt.astimezone(UTC).replace(tzinfo=None)
    return naive_utc.isoformat(timespec="microseconds") + "Z"


@dataclass(frozen=True, slots=True)
class CaptureHeader:
    """The first line of a capture: what was recorded, from what, and when.

    Parameters
    ----------
    started_at:
        The instant ``t = 0`` of every record. Must be timezone-aware; stored converted
        to UTC. Sub-microsecond precision does not exist in :class:`datetime`.
    source:
        ``"ble"``, ``"virtual"`` or ``"file"``.
    device_name, device_address:
        The sensor's advertised name and address, or ``None``.
    software:
        The writer, ``"hrvstream <version>"`` by default.
    patient:
        A pseudonymous participant code, or ``None``. Never a name.
    metadata:
        Free-form string-to-string annotations (firmware, MTU, sensor location, notes).
        Not part of the hash.

    Raises
    ------
    ValueError
        If a field has the wrong type or value (a naive ``started_at``, an unknown
        ``source``).
    """

    started_at: datetime
    source: CaptureSource = "ble"
    device_name: str | None = None
    device_address: str | None = None
    software: str = f"hrvstream {__version__}"
    patient: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.started_at, datetime):
            raise ValueError(f"started_at must be a datetime, got {type(self.started_at).__name__}")
        if self.started_at.utcoffset() is None:
            raise ValueError("started_at must be timezone-aware (UTC), got a naive datetime")
        try:
            object.__setattr__(self, "started_at", self.started_at.astimezone(UTC))
        except OverflowError:
            raise ValueError(f"started_at {self.started_at} is out of range in UTC") from None
        if self.source not in _SOURCES:
            raise ValueError(f"source must be one of {', '.join(_SOURCES)}, got {self.source!r}")
        for name in ("device_name", "device_address", "patient"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string or None, got {type(value).__name__}")
        if not isinstance(self.software, str):
            raise ValueError(f"software must be a string, got {type(self.software).__name__}")
        if not isinstance(self.metadata, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.metadata.items()
        ):
            raise ValueError("metadata must map strings to strings")
        object.__setattr__(self, "metadata", dict(self.metadata))

    def to_json(self) -> str:
        """Encode as the header line; same as :func:`encode_header`."""
        return encode_header(self)


@dataclass(frozen=True, slots=True)
class Notification:
    """One characteristic notification as received.

    Parameters
    ----------
    t_s:
        Arrival time in seconds since the capture's ``started_at``; finite, ``>= 0``.
        Stored as ``float``.
    uuid:
        The characteristic's 128-bit UUID (stored lowercase), for example
        :data:`hrvstream.protocol.heart_rate.HEART_RATE_MEASUREMENT_UUID`.
    payload:
        The value bytes exactly as notified (stored as ``bytes``).

    Raises
    ------
    ValueError
        If a field is invalid.
    """

    t_s: float
    uuid: str
    payload: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "t_s", _check_t(self.t_s))
        if not isinstance(self.uuid, str) or not _UUID_RE.fullmatch(self.uuid.lower()):
            raise ValueError(f"uuid must be a 128-bit UUID string, got {self.uuid!r}")
        object.__setattr__(self, "uuid", self.uuid.lower())
        if not isinstance(self.payload, bytes | bytearray | memoryview):
            raise ValueError(f"payload must be bytes, got {type(self.payload).__name__}")
        object.__setattr__(self, "payload", bytes(self.payload))


@dataclass(frozen=True, slots=True)
class CaptureEvent:
    """Something that happened to the link or the session at time ``t_s``.

    Parameters
    ----------
    t_s:
        Seconds since the capture's ``started_at``; finite, ``>= 0``.
    event:
        The event name: lowercase letters, digits and ``_``, starting with a letter;
        see :data:`KNOWN_EVENTS`.
    detail:
        Optional free text (a disconnect reason, a marker's label).

    Raises
    ------
    ValueError
        If a field is invalid.
    """

    t_s: float
    event: str
    detail: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "t_s", _check_t(self.t_s))
        if not isinstance(self.event, str) or not _EVENT_RE.fullmatch(self.event):
            raise ValueError(
                "event must be lowercase letters, digits and '_', starting with a letter, "
                f"got {self.event!r}"
            )
        if self.detail is not None and not isinstance(self.detail, str):
            raise ValueError(f"detail must be a string or None, got {type(self.detail).__name__}")


CaptureRecord: TypeAlias = Notification | CaptureEvent
"""Any line after the header."""


@dataclass(frozen=True, slots=True)
class Capture:
    """A whole decoded capture: its header and records in file order."""

    header: CaptureHeader
    records: tuple[CaptureRecord, ...]


def _check_t(t: object) -> float:
    if isinstance(t, bool) or not isinstance(t, int | float):
        raise ValueError(f"t must be a number of seconds, got {type(t).__name__}")
    try:
        value = float(t)
    except OverflowError:
        raise ValueError(f"t is too large: {t!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"t must be finite, got {t!r}")
    if value < 0:
        raise ValueError(f"t must be >= 0 (seconds since capture start), got {t!r}")
    return value


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _loads_object(line: str, line_no: int | None) -> dict[str, object]:
    text = line.removeprefix("\ufeff").rstrip("\r\n")
    if not text.strip():
        raise CaptureFormatError("empty line", line_no, line)
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise CaptureFormatError(f"not valid JSON ({exc})", line_no, line) from None
    if not isinstance(obj, dict):
        raise CaptureFormatError(f"expected a JSON object, got {type(obj).__name__}", line_no, line)
    return cast(dict[str, object], obj)


def _optional_str(obj: Mapping[str, object], key: str, line_no: int, line: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise CaptureFormatError(
            f"{key!r} must be a string or null, got {type(value).__name__}", line_no, line
        )
    return value


def encode_header(h: CaptureHeader) -> str:
    """Encode the header line.

    Parameters
    ----------
    h:
        The header.

    Returns
    -------
    str
        One compact JSON object, no trailing newline; ``format`` and ``version`` first.
    """
    return _dumps(
        {
            "format": CAPTURE_FORMAT,
            "version": CAPTURE_VERSION,
            "device_name": h.device_name,
            "device_address": h.device_address,
            "started_at": _format_started_at(h.started_at),
            "software": h.software,
            "source": h.source,
            "patient": h.patient,
            "metadata": dict(h.metadata),
        }
    )


def is_capture_header(first_line: str) -> bool:
    """Tell whether a file's first line is a capture header, of any version.

    For format sniffing: ``True`` also for versions this hrvstream cannot read, so the
    caller goes on to :func:`decode_header` and reports a clear version error instead of
    "unknown format". Never raises.

    Parameters
    ----------
    first_line:
        The file's first line, with or without its newline (a UTF-8 BOM is ignored).

    Returns
    -------
    bool
        Whether it is a JSON object whose ``format`` is ``"hrvstream-capture"``.
    """
    if not isinstance(first_line, str) or CAPTURE_FORMAT not in first_line:
        return False
    try:
        obj = _loads_object(first_line, 1)
    except CaptureFormatError:
        return False
    return obj.get("format") == CAPTURE_FORMAT


def decode_header(line: str) -> CaptureHeader:
    """Decode the header line (line 1).

    Parameters
    ----------
    line:
        The first line of the file, with or without its newline (a UTF-8 BOM is ignored).

    Returns
    -------
    CaptureHeader
        The header.

    Raises
    ------
    UnsupportedCaptureVersionError
        If the version is newer than :data:`CAPTURE_VERSION`.
    CaptureFormatError
        If the line is not a version-1 capture header (bad JSON, wrong ``format``, missing
        or ill-typed keys, an unparsable or naive ``started_at``).
    """
    obj = _loads_object(line, 1)
    fmt = obj.get("format")
    if fmt != CAPTURE_FORMAT:
        raise CaptureFormatError(
            f"not a capture header: 'format' is {fmt!r}, expected {CAPTURE_FORMAT!r}", 1, line
        )
    version = obj.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CaptureFormatError(f"'version' must be a positive integer, got {version!r}", 1, line)
    if version > CAPTURE_VERSION:
        raise UnsupportedCaptureVersionError(version, line)

    for key in ("started_at", "software", "source"):
        if key not in obj:
            raise CaptureFormatError(f"header is missing required key {key!r}", 1, line)
    started_raw = obj["started_at"]
    if not isinstance(started_raw, str):
        raise CaptureFormatError(
            f"'started_at' must be an ISO 8601 string, got {type(started_raw).__name__}", 1, line
        )
    try:
        started_at = datetime.fromisoformat(started_raw)
    except ValueError:
        raise CaptureFormatError(
            f"'started_at' is not an ISO 8601 date-time: {started_raw!r}", 1, line
        ) from None
    if started_at.utcoffset() is None:
        raise CaptureFormatError(
            f"'started_at' has no UTC offset: {started_raw!r} (write it with a 'Z')", 1, line
        )
    software = obj["software"]
    if not isinstance(software, str):
        raise CaptureFormatError(
            f"'software' must be a string, got {type(software).__name__}", 1, line
        )
    source = obj["source"]
    if source not in _SOURCES:
        raise CaptureFormatError(
            f"'source' must be one of {', '.join(_SOURCES)}, got {source!r}", 1, line
        )
    metadata = obj.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CaptureFormatError("'metadata' must be an object of string values", 1, line)

    device_name = _optional_str(obj, "device_name", 1, line)
    device_address = _optional_str(obj, "device_address", 1, line)
    patient = _optional_str(obj, "patient", 1, line)
    try:
        return CaptureHeader(
            started_at=started_at,
            source=cast(CaptureSource, source),
            device_name=device_name,
            device_address=device_address,
            software=software,
            patient=patient,
            metadata=cast(dict[str, str], metadata),
        )
    except ValueError as exc:
        raise CaptureFormatError(str(exc), 1, line) from None


def encode_record(r: CaptureRecord) -> str:
    """Encode a notification or an event as one line.

    Parameters
    ----------
    r:
        The record.

    Returns
    -------
    str
        One compact JSON object, no trailing newline. ``t`` is written with ``repr``
        precision (Python's shortest round-tripping float form).

    Raises
    ------
    TypeError
        If ``r`` is neither a :class:`Notification` nor a :class:`CaptureEvent`.
    """
    if isinstance(r, Notification):
        return _dumps({"t": r.t_s, "uuid": r.uuid, "hex": r.payload.hex()})
    if isinstance(r, CaptureEvent):
        obj: dict[str, object] = {"t": r.t_s, "event": r.event}
        if r.detail is not None:
            obj["detail"] = r.detail
        return _dumps(obj)
    raise TypeError(f"expected a Notification or CaptureEvent, got {type(r).__name__}")


def decode_record(line: str, line_no: int) -> CaptureRecord:
    """Decode one record line (any line after the header).

    Parameters
    ----------
    line:
        The line, with or without its newline.
    line_no:
        Its 1-based line number in the file, for error messages.

    Returns
    -------
    Notification or CaptureEvent
        A :class:`Notification` if the line has ``uuid`` and ``hex``, a
        :class:`CaptureEvent` if it has ``event``.

    Raises
    ------
    CaptureFormatError
        If the line is not valid JSON, is not an object, lacks ``t`` or has both or
        neither of a notification's and an event's keys, or has a bad value (``t`` not a
        finite number ``>= 0``; ``uuid`` not a 128-bit UUID; ``hex`` not an even-length
        hex string; ``event`` not a valid name).
    """
    obj = _loads_object(line, line_no)
    if "t" not in obj:
        raise CaptureFormatError("record is missing required key 't'", line_no, line)
    try:
        t_s = _check_t(obj["t"])
    except ValueError as exc:
        raise CaptureFormatError(str(exc), line_no, line) from None

    is_event = "event" in obj
    is_notification = "uuid" in obj or "hex" in obj
    if is_event and is_notification:
        raise CaptureFormatError(
            "record has both 'event' and notification keys ('uuid'/'hex')", line_no, line
        )
    if is_event:
        event = obj["event"]
        if not isinstance(event, str) or not _EVENT_RE.fullmatch(event):
            raise CaptureFormatError(
                "'event' must be lowercase letters, digits and '_', starting with a letter, "
                f"got {event!r}",
                line_no,
                line,
            )
        detail = _optional_str(obj, "detail", line_no, line)
        return CaptureEvent(t_s=t_s, event=event, detail=detail)
    if not is_notification:
        raise CaptureFormatError(
            "record is neither a notification ('uuid' and 'hex') nor an event ('event')",
            line_no,
            line,
        )
    for key in ("uuid", "hex"):
        if key not in obj:
            raise CaptureFormatError(
                f"notification record is missing required key {key!r}", line_no, line
            )
    uuid = obj["uuid"]
    if not isinstance(uuid, str) or not _UUID_RE.fullmatch(uuid.lower()):
        raise CaptureFormatError(
            f"'uuid' must be a 128-bit UUID like {'00002a37-0000-1000-8000-00805f9b34fb'!r}, "
            f"got {uuid!r}",
            line_no,
            line,
        )
    hex_text = obj["hex"]
    if not isinstance(hex_text, str):
        raise CaptureFormatError(
            f"'hex' must be a string, got {type(hex_text).__name__}", line_no, line
        )
    if len(hex_text) % 2:
        raise CaptureFormatError(
            f"'hex' has an odd number of digits ({len(hex_text)})", line_no, line
        )
    if not _HEX_RE.fullmatch(hex_text):
        raise CaptureFormatError(
            "'hex' must contain only hex digits 0-9 and a-f, no spaces", line_no, line
        )
    return Notification(t_s=t_s, uuid=uuid, payload=bytes.fromhex(hex_text))


def decode_capture(lines: Iterable[str]) -> Capture:
    """Decode a whole capture from its lines.

    Parameters
    ----------
    lines:
        The file's lines in order, with or without newlines (an open text file works).
        Blank lines after the header are skipped (a trailing newline at the end of the
        file is normal).

    Returns
    -------
    Capture
        The header and every record in file order.

    Raises
    ------
    CaptureFormatError
        If there is no header, any line is malformed, or ``t`` decreases from one record
        to the next (the message names the line).
    """
    it = iter(lines)
    first = next(it, None)
    if first is None:
        raise CaptureFormatError("empty capture: no header line", 1)
    header = decode_header(first)
    records: list[CaptureRecord] = []
    last_t = 0.0
    for line_no, line in enumerate(it, start=2):
        if not line.strip():
            continue
        record = decode_record(line, line_no)
        if record.t_s < last_t:
            raise CaptureFormatError(
                f"t goes backwards: {record.t_s!r} after {last_t!r}", line_no, line
            )
        last_t = record.t_s
        records.append(record)
    return Capture(header=header, records=tuple(records))
