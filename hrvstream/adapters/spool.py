"""The agent's store-and-forward spool: every message on disk before it goes upstream.

The agent writes every MQTT message it will publish (beats, metrics) to a local SQLite
database *before* publishing it, publishes with QoS 1, and deletes it only when the
broker's PUBACK arrives::

    seq = spool.put(topic, payload, now=clock.now())   # durable when it returns
    await publisher.publish(topic, payload)              # returns on PUBACK
    spool.ack(seq)

After a restart, or when the broker comes back after hours away, the agent resends
:meth:`Spool.pending` page by page in ``seq`` order (``after_seq`` continues a page),
rate-limited, while live messages keep being spooled and sent. A message may reach the
broker twice (sent, PUBACK lost, resent): the server writes idempotently, so a duplicate
is harmless, while a loss is not. Nothing is ever removed from the spool but by
:meth:`Spool.ack`.

Durability
----------
The database runs in WAL mode (``PRAGMA journal_mode=WAL``): a commit appends to the
``-wal`` file, which is copied into the database at checkpoints.

* ``synchronous="FULL"`` (the default): every commit fsyncs the WAL before it returns.
  A :meth:`Spool.put` that returned survives a process crash (``SIGKILL``, OOM kill), a
  kernel panic and a power cut (provided the storage honours the flush: some cheap SD
  cards and virtual disks acknowledge it before the data is safe).
* ``synchronous="NORMAL"``: the WAL is fsynced only at checkpoints (every
  ``wal_autocheckpoint`` pages). A returned put still survives a process crash (its
  bytes are in the operating system's page cache), but the last transactions before a
  power cut or kernel panic may be rolled back. The database is never corrupted.

The default is FULL because the agent typically runs on a small box that is unplugged
rather than shut down, and a beat that was accepted must not vanish. At the rate the
agent produces messages (a beat or a metric a second) one fsync per message costs
nothing; :meth:`Spool.put_many` commits a batch with a single fsync where throughput
matters. :meth:`Spool.ack` and :meth:`Spool.mark_sent` commit *without* their own fsync
even under FULL (the next put's fsync covers them): if power fails, an acknowledged
message may come back as pending and be sent again, a duplicate, never a loss.

Measured on the development VM (ext4 on a virtio disk, 2 vCPUs, SQLite 3.40.1, Python
3.11.7), 200-byte payloads, one fdatasync per FULL commit checked with ``strace``:

========================  =========================  ==========================
operation                 ``synchronous="FULL"``     ``synchronous="NORMAL"``
========================  =========================  ==========================
``put``                   280 - 32,000 puts/s        35,000 - 73,000 puts/s
``put_many``, 100 a time  28,000 - 380,000 puts/s    370,000 - 440,000 puts/s
put + mark_sent + ack     290 - 15,000 cycles/s      5,000 - 27,000 cycles/s
========================  =========================  ==========================

FULL is bounded by the fsync latency, which on this VM swung between about 30 us and
3 ms from one run to the next; a Raspberry Pi's SD card is slower still, so measure on
the target: ``python -m pytest tests/adapters/test_spool.py -k throughput -s`` prints the
figures. Even a few hundred puts a second is far above a strap's pace. Each commit also
writes at least one 4 KiB WAL frame, so on flash storage it pays to put the messages of
one notification together with :meth:`Spool.put_many`.

Bounded disk use
----------------
``max_bytes`` bounds the database file plus its WAL. Part of it is reserved for the WAL
(checkpointed every ``wal_pages`` pages and truncated back after a checkpoint, so it stays
below about twice that); the rest is the database's page budget, enforced by SQLite itself
(``PRAGMA max_page_count``). A few pages of that budget are held back as headroom so that
acknowledging and bookkeeping still succeed when the spool is at its limit (on a truly
full disk an ack raises and the message stays pending; :meth:`Spool.mark_sent` is
skipped). The *fill* of
the spool counts the pages holding messages (``page_count - freelist_count``): the file
keeps its high-water size, and pages freed by acknowledgements are reused.

* At ``warn_fraction`` (80 % by default) one WARNING is logged, repeated at most every
  :data:`WARN_INTERVAL_S` of the caller's clock while the spool stays that full, and
  re-armed once it drains below.
* When the spool is full, :meth:`Spool.put` raises :class:`SpoolFullError` and stores
  nothing. Nothing already stored is ever dropped to make room: the agent decides what
  to do (it keeps computing metrics locally and reports the loss explicitly).
* A real full disk (SQLite's ``SQLITE_FULL``, an ``ENOSPC``) raises the same
  :class:`SpoolFullError`, with ``disk_full`` set.

Opening runs ``PRAGMA quick_check`` (about 55 ms for a 64 MiB spool on the development
VM). A database file that is not a spool (``PRAGMA application_id``), is corrupt, was
written by a newer hrvstream (``PRAGMA user_version``, :data:`SCHEMA_VERSION`) or is
locked by another agent raises :class:`SpoolError` naming the file; the file is left
untouched.

Concurrency
-----------
One agent owns a spool: the database is opened with ``PRAGMA locking_mode=EXCLUSIVE``, so
a second process (a second agent started by mistake) gets a :class:`SpoolError` instead of
sending the same backlog twice. Within the process, calls are serialised by a lock, so the
spool may be used from the event loop directly (each call is short: one indexed
statement and, for puts under FULL, one fsync) or through :func:`asyncio.to_thread`.
"""

from __future__ import annotations

import errno
import logging
import math
import operator
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, TypeAlias

from hrvstream.errors import HrvStreamError

__all__ = [
    "APPLICATION_ID",
    "DEFAULT_MAX_BYTES",
    "MIN_MAX_BYTES",
    "SCHEMA_VERSION",
    "WARN_INTERVAL_S",
    "Payload",
    "Spool",
    "SpoolError",
    "SpoolFullError",
    "SpooledMessage",
    "Synchronous",
]

log = logging.getLogger(__name__)

Payload: TypeAlias = bytes | bytearray | memoryview
"""What :meth:`Spool.put` accepts as a payload (stored and returned as ``bytes``)."""

Synchronous: TypeAlias = Literal["FULL", "NORMAL"]
"""SQLite's ``PRAGMA synchronous`` levels a spool accepts (see the module docstring)."""

SCHEMA_VERSION: Final = 1
"""The schema version this module writes (``PRAGMA user_version``) and the newest it reads."""

APPLICATION_ID: Final = 0x68727673
"""``PRAGMA application_id`` of a spool (``"hrvs"``): tells a spool from other databases."""

DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
"""Default size bound: about 250,000 messages of 200 bytes, two days and more of beats
and metrics at a strap's pace."""

MIN_MAX_BYTES: Final = 256 * 1024
"""The smallest ``max_bytes`` accepted (room for the WAL reserve and some messages)."""

WARN_INTERVAL_S: Final = 600.0
"""While the spool stays above ``warn_fraction``, the warning is repeated at most this often."""

_PAGE_SIZE: Final = 4096
_WAL_FRAME_HEADER: Final = 24
_WAL_PAGES_MAX: Final = 1000  # SQLite's default wal_autocheckpoint
_WAL_PAGES_MIN: Final = 8
_HEADROOM_MIN_PAGES: Final = 8
_MIN_CAPACITY_PAGES: Final = 16
_REARM_MARGIN: Final = 0.05
_LOCK_TIMEOUT_S: Final = 1.0
_MAX_TOPIC_BYTES: Final = 65535
_SEQ_MIN: Final = -(2**63)
_SEQ_MAX: Final = 2**63 - 1

# Primary SQLite result codes (sqlite_errorcode & 0xFF).
_SQLITE_BUSY: Final = 5
_SQLITE_LOCKED: Final = 6
_SQLITE_READONLY: Final = 8
_SQLITE_IOERR: Final = 10
_SQLITE_CORRUPT: Final = 11
_SQLITE_FULL: Final = 13
_SQLITE_CANTOPEN: Final = 14
_SQLITE_NOTADB: Final = 26

_SCHEMA: Final = """
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_unix REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_sent REAL
)
"""


class SpoolError(HrvStreamError):
    """The spool cannot be used (corrupt or foreign file, locked, I/O error, closed).

    Attributes
    ----------
    path:
        The spool's database file.
    """

    def __init__(self, path: Path, message: str) -> None:
        self.path = path
        super().__init__(message)


class SpoolFullError(SpoolError):
    """A message was refused because the spool (or its disk) is full; nothing was stored.

    Messages stored earlier are all still there: the spool never drops an accepted
    message to make room.

    Attributes
    ----------
    path:
        The spool's database file.
    used_bytes, limit_bytes:
        The pages holding messages, and the spool's capacity, in bytes.
    count:
        Messages waiting in the spool.
    disk_full:
        ``True`` if the disk itself is full, ``False`` if the spool reached ``max_bytes``.
    """

    def __init__(
        self,
        path: Path,
        message: str,
        *,
        used_bytes: int,
        limit_bytes: int,
        count: int,
        disk_full: bool,
    ) -> None:
        self.used_bytes = used_bytes
        self.limit_bytes = limit_bytes
        self.count = count
        self.disk_full = disk_full
        super().__init__(path, message)


@dataclass(frozen=True, slots=True)
class SpooledMessage:
    """One message waiting in the spool for the broker's PUBACK.

    Attributes
    ----------
    seq:
        Its sequence number: unique, increasing in the order of :meth:`Spool.put`, never
        reused (not even after a restart or once the spool is empty).
    topic, payload:
        What to publish.
    created_unix:
        When it was put, Unix seconds of the caller's clock.
    attempts:
        How many times it was sent (:meth:`Spool.mark_sent`) without a PUBACK yet.
    last_sent:
        When it was last sent, or ``None`` if never.
    """

    seq: int
    topic: str
    payload: bytes
    created_unix: float
    attempts: int
    last_sent: float | None


def _iso(t: float | None) -> str:
    if t is None:
        return "(unknown)"
    try:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{t!r} (Unix s)"


def _duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _check_now(now: float | None) -> float:
    t = time.time() if now is None else now
    if not isinstance(t, int | float) or isinstance(t, bool) or not math.isfinite(t):
        raise ValueError(f"now must be a finite number of Unix seconds, got {now!r}")
    return float(t)


def _check_message(topic: object, payload: object) -> tuple[str, bytes]:
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"topic must be a non-empty string, got {topic!r}")
    if "\x00" in topic or "+" in topic or "#" in topic:
        raise ValueError(f"topic {topic!r} is not a valid MQTT topic name (NUL, + or #)")
    try:
        encoded = topic.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"topic {topic!r} is not valid Unicode (lone surrogate)") from None
    if len(encoded) > _MAX_TOPIC_BYTES:
        raise ValueError(f"topic is longer than {_MAX_TOPIC_BYTES} bytes")
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    return topic, bytes(payload)


def _seqs(seqs: Iterable[int]) -> list[tuple[int]]:
    # A seq outside SQLite's 64-bit range cannot be in the spool: nothing to do for it.
    out = []
    for s in seqs:
        if isinstance(s, bool):
            raise TypeError(f"sequence numbers are integers, got {s!r}")
        n = operator.index(s)
        if _SEQ_MIN <= n <= _SEQ_MAX:
            out.append((n,))
    return out


def _code(exc: sqlite3.Error) -> int:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else -1


class Spool:
    """A durable, bounded queue of MQTT messages in one SQLite file.

    Parameters
    ----------
    path:
        The database file; created (with its parent directories) if missing.
    max_bytes:
        Bound on the database file plus its WAL, at least :data:`MIN_MAX_BYTES`.
    synchronous:
        ``"FULL"`` (default: a returned put survives a power cut) or ``"NORMAL"`` (survives
        a process crash only). See the module docstring.
    warn_fraction:
        Fill fraction, in ``(0, 1]``, at which a WARNING is logged.

    Raises
    ------
    ValueError
        If a parameter is out of range.
    SpoolError
        If the file is not a spool, is corrupt, comes from a newer hrvstream, is in use by
        another process, or cannot be opened.
    SpoolFullError
        If the disk is too full to create the spool.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        synchronous: Synchronous = "FULL",
        warn_fraction: float = 0.8,
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
            raise ValueError(f"max_bytes must be an integer, got {max_bytes!r}")
        if max_bytes < MIN_MAX_BYTES:
            raise ValueError(f"max_bytes must be at least {MIN_MAX_BYTES}, got {max_bytes}")
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        if not (isinstance(warn_fraction, int | float) and 0 < warn_fraction <= 1):
            raise ValueError(f"warn_fraction must be in (0, 1], got {warn_fraction!r}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.synchronous: Synchronous = synchronous
        self.warn_fraction = float(warn_fraction)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._count = 0
        self._warned_at: float | None = None
        self._relaxed = False
        self._page_size = _PAGE_SIZE
        self._wal_pages = _WAL_PAGES_MIN
        self._hard_pages = 0
        self._capacity_pages = 0
        self._open()

    # -- opening -------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._translate(exc, "create the spool's directory") from exc
        if self.path.is_dir():
            raise SpoolError(self.path, f"cannot open spool {self.path}: it is a directory")
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=_LOCK_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,
            )
        except (sqlite3.Error, OSError) as exc:
            raise self._translate(exc, "open") from exc
        try:
            self._setup(conn)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error | OSError):
                raise self._translate(exc, "open") from exc
            raise
        self._conn = conn

    def _setup(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        # The first read: a garbage file fails here with SQLITE_NOTADB.
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        if pages == 0:
            self._create(conn)
        else:
            self._check_existing(conn)
            problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise self._corrupt("; ".join(problems))
        (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
        if str(mode).lower() != "wal":
            raise SpoolError(
                self.path,
                f"spool {self.path}: SQLite refused WAL mode (journal_mode is {mode}); "
                "put the spool on a local file system",
            )
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        (self._page_size,) = conn.execute("PRAGMA page_size").fetchone()
        self._size_budget()
        conn.execute(f"PRAGMA wal_autocheckpoint={self._wal_pages}")
        conn.execute(f"PRAGMA journal_size_limit={self._wal_bytes()}")
        conn.execute(f"PRAGMA max_page_count={self._hard_pages}")
        # Take the write lock now (EXCLUSIVE mode keeps it until close): a second agent on
        # the same file fails here, at start-up, rather than later.
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("COMMIT")
        (self._count,) = conn.execute("SELECT COUNT(*) FROM messages").fetchone()

    def _create(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA page_size={_PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_SCHEMA)
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")

    def _check_existing(self, conn: sqlite3.Connection) -> None:
        (app_id,) = conn.execute("PRAGMA application_id").fetchone()
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if app_id != APPLICATION_ID:
            raise SpoolError(
                self.path,
                f"{self.path} is an SQLite database but not an hrvstream spool "
                f"(application_id {app_id:#x}); choose another spool path, nothing was changed",
            )
        if version > SCHEMA_VERSION:
            raise SpoolError(
                self.path,
                f"spool {self.path} has schema version {version}, written by a newer "
                f"hrvstream (this one reads up to {SCHEMA_VERSION}); upgrade hrvstream, "
                "the spool was left untouched",
            )
        if version < 1:
            raise self._corrupt(f"unexpected schema version {version}")
        # Future schema migrations go here, keyed on ``version``.
        row = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages'"
        ).fetchone()
        if row is None:
            raise self._corrupt("its messages table is missing")

    def _size_budget(self) -> None:
        ps = self._page_size
        self._wal_pages = max(_WAL_PAGES_MIN, min(_WAL_PAGES_MAX, self.max_bytes // (16 * ps)))
        # The WAL may overshoot the checkpoint threshold by one transaction: reserve twice.
        reserve = 2 * self._wal_bytes()
        self._hard_pages = (self.max_bytes - reserve) // ps
        headroom = max(_HEADROOM_MIN_PAGES, self._hard_pages // 50)
        self._capacity_pages = self._hard_pages - headroom
        if self._capacity_pages < _MIN_CAPACITY_PAGES:
            raise ValueError(
                f"max_bytes {self.max_bytes} is too small for page size {ps}; "
                f"use at least {MIN_MAX_BYTES * max(1, ps // _PAGE_SIZE)}"
            )

    def _wal_bytes(self) -> int:
        return self._wal_pages * (self._page_size + _WAL_FRAME_HEADER) + 32

    # -- errors --------------------------------------------------------------------------

    def _corrupt(self, reason: str) -> SpoolError:
        return SpoolError(
            self.path,
            f"spool {self.path} is corrupt or not a spool ({reason}). Nothing was changed: "
            "move the file aside (keep it: undelivered messages may be recoverable with the "
            "sqlite3 tool) and restart to create a new spool",
        )

    def _free_disk(self) -> int | None:
        try:
            return shutil.disk_usage(self.path.parent).free
        except OSError:
            return None

    def _full(self, *, disk_full: bool) -> SpoolFullError:
        used = self._live_pages_quiet() * self._page_size
        limit = self._capacity_pages * self._page_size
        oldest = self._oldest_quiet()
        waiting = f"{self._count} messages waiting"
        if oldest is not None:
            waiting += f", the oldest from {_iso(oldest)}"
        kept = "this message was NOT stored; nothing stored earlier was dropped"
        if disk_full:
            free = self._free_disk()
            shown = "unknown" if free is None else f"{free} bytes"
            message = (
                f"the disk holding spool {self.path} is full (free: {shown}; the spool uses "
                f"{used} of its {limit} bytes, {waiting}): {kept}. Free disk space or move "
                "the spool to a larger disk"
            )
        else:
            message = (
                f"spool {self.path} is full ({used} of {limit} bytes used, {waiting}): "
                f"{kept}. The broker has not acknowledged these messages: restore the "
                "connection so the backlog drains, or give the spool a larger max_bytes"
            )
        return SpoolFullError(
            self.path,
            message,
            used_bytes=used,
            limit_bytes=limit,
            count=self._count,
            disk_full=disk_full,
        )

    def _translate(self, exc: BaseException, action: str) -> SpoolError:
        where = f"spool {self.path}: cannot {action}"
        if isinstance(exc, OSError):
            if exc.errno == errno.ENOSPC:
                return self._full(disk_full=True)
            return SpoolError(self.path, f"{where}: {exc.strerror or exc}")
        if not isinstance(exc, sqlite3.Error):
            return SpoolError(self.path, f"{where}: {exc}")
        code = _code(exc)
        if code == _SQLITE_FULL:
            # SQLite says SQLITE_FULL both at max_page_count and on ENOSPC.
            at_limit = (
                self._conn is not None
                and self._live_pages_quiet() >= self._hard_pages - _HEADROOM_MIN_PAGES
            )
            free = self._free_disk()
            tight = free is not None and free < 2 * self._wal_bytes()
            return self._full(disk_full=tight or not at_limit)
        if code in (_SQLITE_NOTADB, _SQLITE_CORRUPT):
            return self._corrupt(str(exc))
        if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return SpoolError(
                self.path,
                f"spool {self.path} is in use by another process (another agent?): {exc}. "
                "Stop it, or give this agent its own spool",
            )
        if code == _SQLITE_READONLY:
            return SpoolError(self.path, f"{where}: the file or its directory is read-only")
        if code == _SQLITE_CANTOPEN:
            return SpoolError(
                self.path,
                f"{where}: the file cannot be opened or created (check the path and "
                "the permissions of the file and its directory)",
            )
        if code == _SQLITE_IOERR:
            return SpoolError(self.path, f"{where}: I/O error ({exc}); check the disk")
        return SpoolError(self.path, f"{where}: {exc}")

    @contextmanager
    def _guard(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise SpoolError(self.path, f"spool {self.path} is closed; cannot {action}")
            try:
                yield conn
            except (sqlite3.Error, OSError) as exc:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        log.debug("rollback after %r failed", exc, exc_info=True)
                raise self._translate(exc, action) from exc

    @contextmanager
    def _not_synced(self, conn: sqlite3.Connection) -> Iterator[None]:
        """Commit without an fsync of its own (the next durable commit covers it)."""
        if self.synchronous == "NORMAL":
            yield
            return
        self._relaxed = True
        conn.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            # SQLite refuses to change the level inside a transaction: end it first.
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.debug("rollback failed", exc_info=True)
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            self._relaxed = False

    def _durable(self, conn: sqlite3.Connection) -> None:
        """Make sure the next commit runs at the configured level (after a failed restore)."""
        if self._relaxed:
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            self._relaxed = False

    # -- size ----------------------------------------------------------------------------

    def _live_pages(self, conn: sqlite3.Connection) -> int:
        row = conn.execute(
            "SELECT page_count - freelist_count FROM pragma_page_count(), pragma_freelist_count()"
        ).fetchone()
        return int(row[0])

    def _live_pages_quiet(self) -> int:
        if self._conn is None:
            return 0
        try:
            return self._live_pages(self._conn)
        except sqlite3.Error:
            return 0

    def _oldest(self, conn: sqlite3.Connection) -> float | None:
        row = conn.execute("SELECT created_unix FROM messages ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else float(row[0])

    def _oldest_quiet(self) -> float | None:
        if self._conn is None:
            return None
        try:
            return self._oldest(self._conn)
        except sqlite3.Error:
            return None

    def _check_room(self, conn: sqlite3.Connection, payload_bytes: int) -> None:
        if payload_bytes > self._capacity_pages * self._page_size // 2:
            raise ValueError(
                f"{payload_bytes} bytes of payload cannot fit in spool {self.path} "
                f"({self._capacity_pages * self._page_size} bytes)"
            )
        if self._live_pages(conn) >= self._capacity_pages:
            raise self._full(disk_full=False)

    def _after_put(self, conn: sqlite3.Connection, now: float) -> None:
        # The message is committed: a failure here must not make the put look failed.
        try:
            fraction = self._live_pages(conn) / self._capacity_pages
            if fraction < self.warn_fraction:
                if self._warned_at is not None and fraction < self.warn_fraction - _REARM_MARGIN:
                    self._warned_at = None
                    log.info("spool %s drained to %.0f%% full", self.path, 100 * fraction)
                return
            if self._warned_at is not None and abs(now - self._warned_at) < WARN_INTERVAL_S:
                return
            oldest = self._oldest(conn)
        except sqlite3.Error:
            log.debug("spool %s: cannot measure the fill", self.path, exc_info=True)
            return
        self._warned_at = now
        since = "" if oldest is None else f" since about {_iso(oldest)}, {_duration(now - oldest)}"
        log.warning(
            "spool %s is %.0f%% full (%d messages, oldest from %s): the broker has been "
            "unreachable or not acknowledging%s; at 100%% new messages are refused",
            self.path,
            100 * fraction,
            self._count,
            _iso(oldest),
            since,
        )

    # -- the API -------------------------------------------------------------------------

    def put(self, topic: str, payload: Payload, *, now: float | None = None) -> int:
        """Store one message; when this returns it is on disk (see the durability policy).

        Parameters
        ----------
        topic:
            The MQTT topic name (no wildcards).
        payload:
            The message body.
        now:
            The current time, Unix seconds; ``time.time()`` when ``None``.

        Returns
        -------
        int
            The message's sequence number, greater than every one returned before.

        Raises
        ------
        SpoolFullError
            If the spool or its disk is full; the message was not stored.
        SpoolError
            If the spool is closed or the database fails.
        ValueError, TypeError
            If the topic, payload or time is invalid.
        """
        t = _check_now(now)
        topic, data = _check_message(topic, payload)
        with self._guard("store a message") as conn:
            self._durable(conn)
            self._check_room(conn, len(data))
            cur = conn.execute(
                "INSERT INTO messages (topic, payload, created_unix) VALUES (?, ?, ?)",
                (topic, data, t),
            )
            seq = cur.lastrowid
            assert seq is not None
            self._count += 1
            self._after_put(conn, t)
        return seq

    def put_many(
        self, messages: Iterable[tuple[str, Payload]], *, now: float | None = None
    ) -> list[int]:
        """Store several messages in one transaction (one fsync): all of them, or none.

        Parameters
        ----------
        messages:
            ``(topic, payload)`` pairs, stored in this order.
        now:
            The current time, Unix seconds; ``time.time()`` when ``None``.

        Returns
        -------
        list of int
            The sequence numbers, increasing, one per message.

        Raises
        ------
        SpoolFullError
            If the spool or its disk is full; none of the messages was stored.
        SpoolError
            If the spool is closed or the database fails.
        ValueError, TypeError
            If a topic, payload or the time is invalid; nothing was stored.
        """
        t = _check_now(now)
        rows = [_check_message(topic, payload) for topic, payload in messages]
        if not rows:
            return []
        with self._guard("store messages") as conn:
            self._durable(conn)
            self._check_room(conn, sum(len(data) for _, data in rows))
            conn.execute("BEGIN IMMEDIATE")
            seqs: list[int] = []
            for topic, data in rows:
                cur = conn.execute(
                    "INSERT INTO messages (topic, payload, created_unix) VALUES (?, ?, ?)",
                    (topic, data, t),
                )
                assert cur.lastrowid is not None
                seqs.append(cur.lastrowid)
            conn.execute("COMMIT")
            self._count += len(seqs)
            self._after_put(conn, t)
        return seqs

    def pending(self, limit: int, *, after_seq: int | None = None) -> list[SpooledMessage]:
        """Messages not acknowledged yet, oldest (lowest ``seq``) first.

        Parameters
        ----------
        limit:
            At most this many, at least 1.
        after_seq:
            Only messages with a greater ``seq`` (the last ``seq`` of the previous page).

        Returns
        -------
        list of SpooledMessage
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        if after_seq is not None and (
            isinstance(after_seq, bool) or not isinstance(after_seq, int)
        ):
            raise TypeError(f"after_seq must be an integer or None, got {after_seq!r}")
        start = -1 if after_seq is None else min(max(after_seq, -1), _SEQ_MAX)
        with self._guard("read messages") as conn:
            rows = conn.execute(
                "SELECT seq, topic, payload, created_unix, attempts, last_sent FROM messages "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (start, limit),
            ).fetchall()
        return [
            SpooledMessage(
                seq=int(seq),
                topic=str(topic),
                payload=bytes(payload),
                created_unix=float(created),
                attempts=int(attempts),
                last_sent=None if last is None else float(last),
            )
            for seq, topic, payload, created, attempts, last in rows
        ]

    def mark_sent(self, seqs: Iterable[int], now: float | None = None) -> int:
        """Record that messages were (re)sent: ``attempts += 1``, ``last_sent = now``.

        Bookkeeping only, committed without an fsync of its own. Unknown (already
        acknowledged) sequence numbers are ignored. When the spool or its disk is full the
        update is skipped (and 0 returned) rather than raised: sending is what drains a
        full spool, so the bookkeeping must never stop it.

        Parameters
        ----------
        seqs:
            The messages just (re)published.
        now:
            When, Unix seconds; ``time.time()`` when ``None``.

        Returns
        -------
        int
            How many messages were updated.
        """
        t = _check_now(now)
        rows = [(t, s) for (s,) in _seqs(seqs)]
        if not rows:
            return 0
        try:
            with self._guard("record sent messages") as conn, self._not_synced(conn):
                conn.execute("BEGIN IMMEDIATE")
                cur = conn.executemany(
                    "UPDATE messages SET attempts = attempts + 1, last_sent = ? WHERE seq = ?",
                    rows,
                )
                conn.execute("COMMIT")
                return max(0, cur.rowcount)
        except SpoolFullError as exc:
            # Sending is what drains a full spool: never let the bookkeeping stop it.
            log.debug("spool %s: sent messages not recorded: %s", self.path, exc)
            return 0

    def ack(self, seq: int) -> bool:
        """Remove a message the broker acknowledged (PUBACK).

        Idempotent: acknowledging twice, or a ``seq`` the spool never had, does nothing.
        Committed without an fsync of its own: after a power cut the message may be
        pending again, and is sent again (a duplicate, which the server absorbs).

        Parameters
        ----------
        seq:
            The number :meth:`put` returned.

        Returns
        -------
        bool
            Whether a message was removed.

        Raises
        ------
        SpoolFullError
            Only on a truly full disk (the deletion must be written too); the message
            stays pending and will be sent again.
        SpoolError
            If the spool is closed or the database fails.
        """
        return self.ack_many((seq,)) == 1

    def ack_many(self, seqs: Iterable[int]) -> int:
        """Remove several acknowledged messages in one transaction; unknown ones are ignored.

        Parameters
        ----------
        seqs:
            Numbers :meth:`put` or :meth:`put_many` returned.

        Returns
        -------
        int
            How many messages were removed.
        """
        rows = _seqs(seqs)
        if not rows:
            return 0
        with self._guard("remove acknowledged messages") as conn, self._not_synced(conn):
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.executemany("DELETE FROM messages WHERE seq = ?", rows)
            conn.execute("COMMIT")
            removed = max(0, cur.rowcount)
            self._count -= removed
        if self._warned_at is not None:
            with suppress(SpoolError):
                fraction = self.fill_fraction()
                if fraction < self.warn_fraction - _REARM_MARGIN:
                    self._warned_at = None
                    log.info("spool %s drained to %.0f%% full", self.path, 100 * fraction)
        return removed

    def last_seq(self) -> int | None:
        """The highest ``seq`` waiting for a PUBACK, or ``None`` when nothing waits."""
        with self._guard("read the last message") as conn:
            row = conn.execute("SELECT MAX(seq) FROM messages").fetchone()
            return None if row is None or row[0] is None else int(row[0])

    def count(self) -> int:
        """How many messages wait for a PUBACK."""
        with self._guard("count messages"):
            return self._count

    def bytes_used(self) -> int:
        """Bytes of the database's pages that hold messages (what counts against the bound)."""
        with self._guard("measure the spool") as conn:
            return self._live_pages(conn) * self._page_size

    @property
    def capacity_bytes(self) -> int:
        """Bytes of pages the messages may use; :meth:`put` refuses beyond this."""
        return self._capacity_pages * self._page_size

    def fill_fraction(self) -> float:
        """``bytes_used() / capacity_bytes``; may slightly exceed 1 after a large batch."""
        with self._guard("measure the spool") as conn:
            return self._live_pages(conn) / self._capacity_pages

    def oldest_unix(self) -> float | None:
        """``created_unix`` of the oldest (lowest ``seq``) waiting message, ``None`` if empty."""
        with self._guard("read the oldest message") as conn:
            return self._oldest(conn)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._conn is None

    def close(self) -> None:
        """Checkpoint the WAL and close the database; further calls raise :class:`SpoolError`.

        Closing twice is fine.
        """
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                conn.close()
            except sqlite3.Error as exc:
                raise self._translate(exc, "close") from exc

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else f"{self._count} messages"
        return f"Spool({str(self.path)!r}, {state}, max_bytes={self.max_bytes})"
