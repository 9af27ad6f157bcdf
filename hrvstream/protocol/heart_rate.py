"""Bluetooth SIG Heart Rate Service: the Heart Rate Measurement characteristic (0x2A37).

A pure codec in the style of h11 and the Bluetooth-Devices ``*-ble`` parsers: bytes in,
frozen dataclasses out, and back. No I/O, no clock, no BLE library: the adapter that owns
the connection hands each notification's payload to :func:`parse_heart_rate_measurement`.

Wire format (GATT Specification Supplement, "Heart Rate Measurement"; all multi-octet
fields little endian)::

    octet 0      Flags
                 bit 0    Heart Rate Value Format: 0 = uint8, 1 = uint16
                 bit 1    Sensor Contact detected  (meaningful only when bit 2 is set)
                 bit 2    Sensor Contact feature supported
                 bit 3    Energy Expended field present (uint16, kilojoules)
                 bit 4    RR-Interval field present (one or more uint16, 1/1024 s)
                 bits 5-7 reserved for future use
    octet 1..    Heart Rate Measurement Value (uint8 or uint16, beats per minute)
    then         Energy Expended (uint16), if bit 3
    then         RR-Interval values (uint16 each, oldest first), if bit 4, to the end

Decisions (see ``firmware_notes/heart_rate_service.md``):

* **Reserved flag bits 5-7 set** -> :class:`HeartRateParseError`. No shipping sensor we
  know of sets them, and a payload that does is more likely corrupt (or a different
  characteristic routed here by mistake) than a future extension we could interpret.
* **Sensor contact bits ``0b01``** (bit 1 "detected" set, bit 2 "supported" clear) are
  *valid*: the specification lists both ``0`` and ``1`` as "Sensor Contact feature is not
  supported in the current connection". Such a payload parses with
  ``sensor_contact_supported=False`` and ``sensor_contact_detected=None``; the stray bit is
  kept in :attr:`HeartRateMeasurement.contact_bit1_without_support` only so that
  :func:`encode_heart_rate_measurement` reproduces the exact bytes. Consumers ignore it.
* **RR-Interval flag set but no RR bytes** -> error: the specification says the flag means
  "one or more RR-Interval values are present".
* **Odd number of RR bytes** -> error (a truncated uint16).
* The number of RR values is *not* capped at 9: at the default ATT MTU (23) a notification
  carries at most 20 octets, which leaves room for 9 (uint8 HR, no energy field), but a
  larger negotiated MTU allows more and a parser has no business dropping beats.
* RR values are kept exact, as integer ticks of 1/1024 s (:attr:`~HeartRateMeasurement.rr_raw`);
  :attr:`~HeartRateMeasurement.rr_ms` converts without rounding.

Every malformed payload raises :class:`HeartRateParseError` and nothing else; a value that
cannot be represented on the wire (an out-of-range field given to the constructor or to
:func:`rr_ms_to_raw`) raises :class:`HeartRateValueError`, which is also a ``ValueError``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from enum import IntEnum
from fractions import Fraction
from typing import Final

from hrvstream.errors import ProtocolError

__all__ = [
    "BATTERY_LEVEL_UUID",
    "BATTERY_SERVICE_UUID",
    "BODY_SENSOR_LOCATION_UUID",
    "HEART_RATE_CONTROL_POINT_UUID",
    "HEART_RATE_MEASUREMENT_UUID",
    "HEART_RATE_SERVICE_UUID",
    "RESET_ENERGY_EXPENDED",
    "RR_TICKS_PER_SECOND",
    "BodySensorLocation",
    "HeartRateMeasurement",
    "HeartRateParseError",
    "HeartRateValueError",
    "bluetooth_uuid",
    "encode_heart_rate_measurement",
    "parse_body_sensor_location",
    "parse_heart_rate_measurement",
    "rr_ms_to_raw",
]

_BASE_UUID_SUFFIX: Final = "-0000-1000-8000-00805f9b34fb"


def bluetooth_uuid(short: int) -> str:
    """Expand a 16-bit SIG-assigned number to the full 128-bit UUID string.

    Parameters
    ----------
    short:
        The assigned number, for example ``0x2A37``.

    Returns
    -------
    str
        The lowercase canonical form, ``0000xxxx-0000-1000-8000-00805f9b34fb``, as
        BLE libraries such as bleak report it.

    Raises
    ------
    ValueError
        If ``short`` is not in ``0..0xFFFF``.

    Examples
    --------
    >>> bluetooth_uuid(0x2A37)
    '00002a37-0000-1000-8000-00805f9b34fb'
    """
    if isinstance(short, bool) or not isinstance(short, int) or not 0 <= short <= 0xFFFF:
        raise ValueError(f"a 16-bit assigned number must be an int in 0..0xFFFF, got {short!r}")
    return f"0000{short:04x}{_BASE_UUID_SUFFIX}"


HEART_RATE_SERVICE_UUID: Final = bluetooth_uuid(0x180D)
"""Heart Rate Service, ``0000180d-0000-1000-8000-00805f9b34fb``."""

HEART_RATE_MEASUREMENT_UUID: Final = bluetooth_uuid(0x2A37)
"""Heart Rate Measurement characteristic (notify), ``00002a37-...``."""

BODY_SENSOR_LOCATION_UUID: Final = bluetooth_uuid(0x2A38)
"""Body Sensor Location characteristic (read), ``00002a38-...``."""

HEART_RATE_CONTROL_POINT_UUID: Final = bluetooth_uuid(0x2A39)
"""Heart Rate Control Point characteristic (write), ``00002a39-...``."""

BATTERY_SERVICE_UUID: Final = bluetooth_uuid(0x180F)
"""Battery Service, ``0000180f-0000-1000-8000-00805f9b34fb``."""

BATTERY_LEVEL_UUID: Final = bluetooth_uuid(0x2A19)
"""Battery Level characteristic (read/notify, uint8 percent), ``00002a19-...``."""

RESET_ENERGY_EXPENDED: Final = b"\x01"
"""The only value defined for the Heart Rate Control Point: reset Energy Expended to 0."""

RR_TICKS_PER_SECOND: Final = 1024
"""RR-Interval resolution: one tick is 1/1024 s."""

_FLAG_UINT16: Final = 0x01
_FLAG_CONTACT_DETECTED: Final = 0x02
_FLAG_CONTACT_SUPPORTED: Final = 0x04
_FLAG_ENERGY: Final = 0x08
_FLAG_RR: Final = 0x10
_FLAGS_RESERVED: Final = 0xE0

_UINT8_MAX: Final = 0xFF
_UINT16_MAX: Final = 0xFFFF


class HeartRateParseError(ProtocolError):
    """A Heart Rate Service payload is malformed.

    Parameters
    ----------
    reason:
        What is wrong, in words (``"empty payload"``, ``"truncated at byte 3: ..."``).
    data:
        The offending payload, kept for logging and bug reports.

    Attributes
    ----------
    reason:
        As given.
    data:
        As given, as ``bytes``.
    """

    def __init__(self, reason: str, data: bytes = b"") -> None:
        self.reason = reason
        self.data = bytes(data)
        shown = self.data.hex(" ") if len(self.data) <= 32 else self.data[:32].hex(" ") + " ..."
        super().__init__(f"malformed heart rate payload [{shown}]: {reason}")


class HeartRateValueError(ProtocolError, ValueError):
    """A value cannot be represented in a Heart Rate Measurement.

    Raised when building a :class:`HeartRateMeasurement` (or converting with
    :func:`rr_ms_to_raw`) with a value the wire format cannot carry, for example a heart
    rate of 300 in uint8 format or a negative RR interval. This is the "local" error, in
    h11's terms: our own mistake, never the device's.
    """


def _check_uint(name: str, value: object, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise HeartRateValueError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value <= maximum:
        raise HeartRateValueError(f"{name} must be in 0..{maximum}, got {value}")


@dataclass(frozen=True, slots=True)
class HeartRateMeasurement:
    """One decoded Heart Rate Measurement notification.

    Construction validates every field against what the wire format can carry, so every
    instance can be encoded and ``parse(encode(m)) == m`` holds.

    Parameters
    ----------
    heart_rate_bpm:
        Heart rate in beats per minute as the sensor reported it (0 is legal on the wire;
        many straps send it while they have no contact).
    uint16_format:
        Whether the value was sent as uint16 (flags bit 0). Kept so encoding reproduces the
        exact bytes; a value above 255 requires it.
    sensor_contact_supported:
        Flags bit 2: the sensor reports skin contact in this connection.
    sensor_contact_detected:
        Flags bit 1 when contact is supported; ``None`` when it is not (then bit 1 carries
        no information: do *not* read "not supported" as "no contact").
    energy_expended_kj:
        Accumulated energy expended in kilojoules since the last reset, or ``None`` when the
        field is absent. ``65535`` means "at least 65535" (the sensor saturates; see
        :data:`RESET_ENERGY_EXPENDED`).
    rr_raw:
        RR intervals in ticks of 1/1024 s, oldest first, exactly as sent. Empty when the
        notification carried none (common: no beat completed since the last notification).
    contact_bit1_without_support:
        ``True`` only for the spec-permitted but meaningless contact bits ``0b01`` (bit 1
        set while bit 2 is clear). Carries no information; kept so that encoding
        reproduces the exact bytes. Must be ``False`` when contact is supported.

    Raises
    ------
    HeartRateValueError
        If a field is out of range, or the contact fields are inconsistent.
    """

    heart_rate_bpm: int
    uint16_format: bool = False
    sensor_contact_supported: bool = False
    sensor_contact_detected: bool | None = None
    energy_expended_kj: int | None = None
    rr_raw: tuple[int, ...] = ()
    contact_bit1_without_support: bool = False

    def __post_init__(self) -> None:
        _check_uint(
            "heart_rate_bpm",
            self.heart_rate_bpm,
            _UINT16_MAX if self.uint16_format else _UINT8_MAX,
        )
        if self.sensor_contact_supported:
            if not isinstance(self.sensor_contact_detected, bool):
                raise HeartRateValueError(
                    "sensor_contact_detected must be True or False when contact is supported"
                )
            if self.contact_bit1_without_support:
                raise HeartRateValueError(
                    "contact_bit1_without_support must be False when contact is supported"
                )
        elif self.sensor_contact_detected is not None:
            raise HeartRateValueError(
                "sensor_contact_detected must be None when contact is not supported"
            )
        if self.energy_expended_kj is not None:
            _check_uint("energy_expended_kj", self.energy_expended_kj, _UINT16_MAX)
        if not isinstance(self.rr_raw, tuple):
            raise HeartRateValueError(
                f"rr_raw must be a tuple of ints, got {type(self.rr_raw).__name__}"
            )
        for i, rr in enumerate(self.rr_raw):
            _check_uint(f"rr_raw[{i}]", rr, _UINT16_MAX)

    @property
    def rr_ms(self) -> tuple[float, ...]:
        """RR intervals in milliseconds, ``raw * 1000 / 1024``, oldest first.

        Exact: ``raw * 1000`` is an integer below 2**26 and dividing by 1024 only shifts
        the binary exponent, so no rounding happens anywhere.
        """
        return tuple(rr * 1000 / RR_TICKS_PER_SECOND for rr in self.rr_raw)

    @property
    def flags(self) -> int:
        """The flags octet this measurement encodes to."""
        flags = 0
        if self.uint16_format:
            flags |= _FLAG_UINT16
        if self.sensor_contact_supported:
            flags |= _FLAG_CONTACT_SUPPORTED
            if self.sensor_contact_detected:
                flags |= _FLAG_CONTACT_DETECTED
        elif self.contact_bit1_without_support:
            flags |= _FLAG_CONTACT_DETECTED
        if self.energy_expended_kj is not None:
            flags |= _FLAG_ENERGY
        if self.rr_raw:
            flags |= _FLAG_RR
        return flags


def parse_heart_rate_measurement(data: bytes | bytearray | memoryview) -> HeartRateMeasurement:
    """Decode one Heart Rate Measurement (0x2A37) notification payload.

    Parameters
    ----------
    data:
        The characteristic value exactly as notified (bleak hands a ``bytearray``).

    Returns
    -------
    HeartRateMeasurement
        The decoded measurement; ``encode_heart_rate_measurement`` of it gives back
        exactly ``bytes(data)``.

    Raises
    ------
    HeartRateParseError
        If the payload is empty, has reserved flag bits set, is truncated, has an odd
        number of RR bytes, has the RR flag set with no RR values, or has bytes left over
        after the last field the flags announce.
    TypeError
        If ``data`` is not a bytes-like object of the accepted types.

    Examples
    --------
    >>> m = parse_heart_rate_measurement(bytes.fromhex("16 48 54 01 ec 02"))
    >>> m.heart_rate_bpm, m.sensor_contact_detected, m.rr_raw
    (72, True, (340, 748))
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(
            f"heart rate payload must be bytes, bytearray or memoryview, got {type(data).__name__}"
        )
    buf = bytes(data)
    n = len(buf)
    if n == 0:
        raise HeartRateParseError("empty payload (no flags byte)", buf)
    flags = buf[0]
    if flags & _FLAGS_RESERVED:
        raise HeartRateParseError(
            f"reserved flag bits set (flags 0x{flags:02x}, bits 5-7 must be 0)", buf
        )

    uint16_format = bool(flags & _FLAG_UINT16)
    pos = 1
    if uint16_format:
        if n < pos + 2:
            raise HeartRateParseError(
                f"truncated at byte {n}: flags announce a uint16 heart rate at bytes 1-2", buf
            )
        (heart_rate,) = struct.unpack_from("<H", buf, pos)
        pos += 2
    else:
        if n < pos + 1:
            raise HeartRateParseError(
                f"truncated at byte {n}: flags announce a uint8 heart rate at byte 1", buf
            )
        heart_rate = buf[pos]
        pos += 1

    contact_supported = bool(flags & _FLAG_CONTACT_SUPPORTED)
    bit1 = bool(flags & _FLAG_CONTACT_DETECTED)
    contact_detected: bool | None = bit1 if contact_supported else None

    energy: int | None = None
    if flags & _FLAG_ENERGY:
        if n < pos + 2:
            raise HeartRateParseError(
                f"truncated at byte {n}: flags announce energy expended (uint16) "
                f"at bytes {pos}-{pos + 1}",
                buf,
            )
        (energy,) = struct.unpack_from("<H", buf, pos)
        pos += 2

    rr_raw: tuple[int, ...] = ()
    remaining = n - pos
    if flags & _FLAG_RR:
        if remaining == 0:
            raise HeartRateParseError(
                f"truncated at byte {n}: RR-interval flag set but no RR-interval values follow",
                buf,
            )
        if remaining % 2:
            raise HeartRateParseError(
                f"odd number of RR-interval bytes ({remaining} from byte {pos}): "
                f"the last RR value is truncated at byte {n}",
                buf,
            )
        rr_raw = struct.unpack_from(f"<{remaining // 2}H", buf, pos)
    elif remaining:
        raise HeartRateParseError(
            f"{remaining} unexpected trailing byte(s) from byte {pos}: "
            "no field announced by the flags is left",
            buf,
        )

    return HeartRateMeasurement(
        heart_rate_bpm=heart_rate,
        uint16_format=uint16_format,
        sensor_contact_supported=contact_supported,
        sensor_contact_detected=contact_detected,
        energy_expended_kj=energy,
        rr_raw=rr_raw,
        contact_bit1_without_support=bit1 and not contact_supported,
    )


def encode_heart_rate_measurement(m: HeartRateMeasurement) -> bytes:
    """Encode a measurement as a Heart Rate Measurement (0x2A37) payload.

    Used by the virtual sensor and by replay to turn recordings back into notifications.

    Parameters
    ----------
    m:
        The measurement (already validated by its constructor).

    Returns
    -------
    bytes
        The payload. For every valid payload ``x``,
        ``encode_heart_rate_measurement(parse_heart_rate_measurement(x)) == x``.

    Examples
    --------
    >>> encode_heart_rate_measurement(HeartRateMeasurement(62, rr_raw=(945,))).hex(" ")
    '10 3e b1 03'
    """
    parts = [bytes((m.flags,))]
    if m.uint16_format:
        parts.append(struct.pack("<H", m.heart_rate_bpm))
    else:
        parts.append(bytes((m.heart_rate_bpm,)))
    if m.energy_expended_kj is not None:
        parts.append(struct.pack("<H", m.energy_expended_kj))
    if m.rr_raw:
        parts.append(struct.pack(f"<{len(m.rr_raw)}H", *m.rr_raw))
    return b"".join(parts)


def rr_ms_to_raw(rr_ms: float) -> int:
    """Convert an RR interval in milliseconds to the nearest 1/1024 s tick.

    For encoding recordings (which store milliseconds) into notifications. The conversion
    is done in exact rational arithmetic on the float's true value; an exact tie between
    two ticks rounds to the even tick (Python's :func:`round`). Values that came from
    :attr:`HeartRateMeasurement.rr_ms` convert back to exactly the original tick.

    Parameters
    ----------
    rr_ms:
        The interval in milliseconds; finite and non-negative.

    Returns
    -------
    int
        Ticks of 1/1024 s, in ``0..65535``.

    Raises
    ------
    HeartRateValueError
        If ``rr_ms`` is not a finite non-negative number, or is too long for a uint16
        (above about 63999.5 ms).

    Examples
    --------
    >>> rr_ms_to_raw(1000.0)
    1024
    >>> rr_ms_to_raw(332.03125)
    340
    """
    if isinstance(rr_ms, bool) or not isinstance(rr_ms, int | float):
        raise HeartRateValueError(f"rr_ms must be a number, got {type(rr_ms).__name__}")
    if not math.isfinite(rr_ms) or rr_ms < 0:
        raise HeartRateValueError(f"rr_ms must be finite and non-negative, got {rr_ms!r}")
    raw = round(Fraction(rr_ms) * RR_TICKS_PER_SECOND / 1000)
    if raw > _UINT16_MAX:
        raise HeartRateValueError(
            f"rr_ms {rr_ms!r} is {raw} ticks of 1/1024 s, more than a uint16 holds (65535)"
        )
    return raw


class BodySensorLocation(IntEnum):
    """Body Sensor Location (0x2A38) values defined by the Bluetooth SIG."""

    OTHER = 0
    CHEST = 1
    WRIST = 2
    FINGER = 3
    HAND = 4
    EAR_LOBE = 5
    FOOT = 6


def parse_body_sensor_location(data: bytes | bytearray | memoryview) -> BodySensorLocation:
    """Decode a Body Sensor Location (0x2A38) value.

    Parameters
    ----------
    data:
        The characteristic value as read: exactly one octet.

    Returns
    -------
    BodySensorLocation
        The location (``CHEST`` for a chest strap).

    Raises
    ------
    HeartRateParseError
        If the value is not exactly one octet, or is a reserved value (7-255).
    TypeError
        If ``data`` is not a bytes-like object of the accepted types.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(
            f"body sensor location must be bytes, bytearray or memoryview, "
            f"got {type(data).__name__}"
        )
    buf = bytes(data)
    if len(buf) != 1:
        raise HeartRateParseError(
            f"body sensor location must be exactly 1 byte, got {len(buf)}", buf
        )
    try:
        return BodySensorLocation(buf[0])
    except ValueError:
        raise HeartRateParseError(
            f"body sensor location {buf[0]} is reserved (defined values are 0-6)", buf
        ) from None
