"""The one exception tree of hrvstream.

Every error a user can cause (a malformed file line, a corrupt packet, a wrong password)
is an :class:`HrvStreamError` with a message that says what went wrong, where, and what to
do. Library exceptions are re-raised as ours (``raise ... from exc``) at the edge.
"""

from __future__ import annotations


class HrvStreamError(Exception):
    """Base class of every error hrvstream raises on purpose."""


class RecordingError(HrvStreamError):
    """A recording could not be read (unknown format, unreadable file)."""


class MalformedLineError(RecordingError):
    """A line of a recording file could not be parsed.

    Carries the file path and the 1-based line number so the message can point at it.
    """

    def __init__(self, path: str, line_no: int, reason: str, line: str = "") -> None:
        self.path = path
        self.line_no = line_no
        self.reason = reason
        self.line = line
        shown = line if len(line) <= 60 else line[:57] + "..."
        detail = f": {shown!r}" if line else ""
        super().__init__(
            f"{path}, line {line_no}: {reason}{detail} "
            "(fix the line, or pass --lenient to skip malformed lines)"
        )


class ConfigError(HrvStreamError):
    """A command-line option or configuration value is invalid."""


class ProtocolError(HrvStreamError):
    """Bytes received from a device or peer do not follow the protocol."""
