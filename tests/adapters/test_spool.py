"""The store-and-forward spool: order, acknowledgement, crash safety, bounded size, bad files.

Nothing sleeps: the crash test kills its child after reading what it printed, and "time"
is whatever ``now`` the test passes.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from hrvstream.adapters.spool import (
    MIN_MAX_BYTES,
    SCHEMA_VERSION,
    WARN_INTERVAL_S,
    Spool,
    SpooledMessage,
    SpoolError,
    SpoolFullError,
)
from hrvstream.errors import HrvStreamError

T0 = 1_714_555_800.0  # 2024-05-01T09:30:00Z
LOGGER = "hrvstream.adapters.spool"


def _all(spool: Spool) -> list[SpooledMessage]:
    return spool.pending(10**9)


def _pairs(spool: Spool) -> list[tuple[int, str, bytes]]:
    return [(m.seq, m.topic, m.payload) for m in _all(spool)]


def _integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


# -- order, acknowledgement, restart ---------------------------------------------------------


def test_put_returns_increasing_seqs_kept_in_order_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool(path) as spool:
        first = [spool.put("hrv/a/beats", f"beat {i}".encode(), now=T0 + i) for i in range(5)]
        assert spool.count() == 5
        assert spool.oldest_unix() == T0
    with Spool(path) as spool:
        more = spool.put_many([("hrv/a/metrics", b"m0"), ("hrv/a/beats", b"beat 5")], now=T0 + 9)
        last = spool.put("hrv/a/beats", bytearray(b"beat 6"), now=T0 + 10)
        seqs = [*first, *more, last]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        messages = _all(spool)
    assert [m.seq for m in messages] == seqs
    assert [m.payload for m in messages] == [
        *(f"beat {i}".encode() for i in range(5)),
        b"m0",
        b"beat 5",
        b"beat 6",
    ]
    assert messages[5].topic == "hrv/a/metrics"
    assert [m.created_unix for m in messages] == [T0 + i for i in range(5)] + [T0 + 9] * 2 + [
        T0 + 10
    ]
    assert all(m.attempts == 0 and m.last_sent is None for m in messages)


def test_ack_removes_and_is_idempotent(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.db") as spool:
        seqs = [spool.put("t", bytes([i]), now=T0) for i in range(6)]
        assert spool.ack(seqs[2]) is True
        assert spool.ack(seqs[2]) is False  # twice: fine
        assert spool.ack(10**9) is False  # never existed: fine
        assert spool.ack(-1) is False
        assert spool.ack_many([seqs[0], seqs[2], seqs[4], 123456]) == 2
        assert spool.ack_many([]) == 0
        assert spool.count() == 3
        assert [m.seq for m in _all(spool)] == [seqs[1], seqs[3], seqs[5]]
        assert spool.oldest_unix() == T0
        assert spool.ack_many(seqs) == 3
        assert spool.count() == 0
        assert _all(spool) == []
        assert spool.oldest_unix() is None


def test_pending_after_restart_is_exactly_the_unacked_messages_in_order(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool(path) as spool:
        seqs = spool.put_many([("hrv/x/beats", f"{i}".encode()) for i in range(40)], now=T0)
        spool.mark_sent(seqs[:30], T0 + 1)
        spool.ack_many(seqs[:10])
        spool.ack_many(seqs[15:20])
        spool.mark_sent(seqs[10:12], T0 + 2)
    with Spool(path) as spool:
        expected = seqs[10:15] + seqs[20:]
        assert spool.count() == len(expected)
        # paging with after_seq, as the agent resends a backlog
        pages: list[list[SpooledMessage]] = []
        after: int | None = None
        while page := spool.pending(7, after_seq=after):
            pages.append(page)
            after = page[-1].seq
        got = [m for page in pages for m in page]
        assert [m.seq for m in got] == expected
        assert [m.payload for m in got] == [f"{seqs.index(s)}".encode() for s in expected]
        assert [len(p) for p in pages] == [7, 7, 7, 4]
        by_seq = {m.seq: m for m in got}
        assert (by_seq[seqs[10]].attempts, by_seq[seqs[10]].last_sent) == (2, T0 + 2)
        assert (by_seq[seqs[12]].attempts, by_seq[seqs[12]].last_sent) == (1, T0 + 1)
        assert (by_seq[seqs[30]].attempts, by_seq[seqs[30]].last_sent) == (0, None)
        assert spool.mark_sent([seqs[0], 10**9], T0 + 3) == 0  # acked / unknown: ignored


def test_seq_is_never_reused_even_once_empty(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool(path) as spool:
        seqs = [spool.put("t", b"x", now=T0) for _ in range(3)]
        spool.ack_many(seqs)
    with Spool(path) as spool:
        assert spool.count() == 0
        assert spool.put("t", b"y", now=T0) == seqs[-1] + 1


def test_threads_share_a_spool_safely(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.db", synchronous="NORMAL") as spool:
        results: list[list[int]] = [[] for _ in range(4)]

        def work(k: int) -> None:
            for i in range(50):
                seq = spool.put("t", f"{k}:{i}".encode(), now=T0)
                results[k].append(seq)
                if i % 3 == 0:
                    spool.ack(seq)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        every = [s for r in results for s in r]
        assert len(set(every)) == 200
        assert all(r == sorted(r) for r in results)
        kept = {s for r in results for i, s in enumerate(r) if i % 3 != 0}
        assert {m.seq for m in _all(spool)} == kept
        assert spool.count() == len(kept)


# -- crash safety ----------------------------------------------------------------------------

_CHILD = """
import sys
from hrvstream.adapters.spool import Spool

spool = Spool(sys.argv[1])
i = int(sys.argv[2])
while True:
    if i % 2:
        seqs = spool.put_many([("hrv/k/beats", f"beat {i + k}".encode()) for k in range(3)],
                              now=float(i))
        for k, seq in enumerate(seqs):
            print(seq, i + k, flush=True)
        i += 3
    else:
        seq = spool.put("hrv/k/beats", f"beat {i}".encode(), now=float(i))
        print(seq, i, flush=True)
        i += 1
"""


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_sigkill_mid_stream_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, synchronous: str
) -> None:
    path = tmp_path / "spool.db"
    child = _CHILD.replace("Spool(sys.argv[1])", f"Spool(sys.argv[1], synchronous={synchronous!r})")
    printed: dict[int, int] = {}
    next_index = 0
    for kill_after in (57, 203, 11, 420):
        proc = subprocess.Popen(
            [sys.executable, "-c", child, str(path), str(next_index)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        lines: list[str] = []
        while len(lines) < kill_after:
            line = proc.stdout.readline()
            if not line:
                proc.wait()
                pytest.fail(f"child exited early ({proc.returncode}): {proc.stderr.read()}")
            lines.append(line)
        proc.send_signal(signal.SIGKILL)
        # Printed before it died: all stored. The child may die in the middle of a print
        # (blocked on a full pipe), so only newline-terminated lines are records.
        lines += proc.stdout.read().split("\n")[:-1]
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        for line in lines:
            if line.strip():
                seq, index = map(int, line.split())
                printed[seq] = index

        assert _integrity(path) == "ok"
        with Spool(path) as spool:
            messages = _all(spool)
            assert spool.count() == len(messages)
        seqs = [m.seq for m in messages]
        # every seq the child printed is there, with its payload
        by_seq = {m.seq: m.payload for m in messages}
        for seq, index in printed.items():
            assert by_seq.get(seq) == f"beat {index}".encode(), f"seq {seq} lost"
        # nothing duplicated, nothing skipped: one message per index, in order
        assert seqs == list(range(1, len(seqs) + 1))
        assert [m.payload for m in messages] == [f"beat {i}".encode() for i in range(len(seqs))]
        assert len(seqs) >= max(printed)
        next_index = len(seqs)


# -- bounded size ----------------------------------------------------------------------------


def test_fills_up_warns_once_refuses_then_accepts_after_acks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    path = tmp_path / "spool.db"
    payload = bytes(range(200))
    accepted: list[int] = []
    with Spool(path, max_bytes=MIN_MAX_BYTES, warn_fraction=0.8) as spool:
        warned_at_fraction: float | None = None
        warned_count = 0
        before = 0.0
        with pytest.raises(SpoolFullError) as excinfo:
            for i in range(100_000):
                accepted.append(spool.put("hrv/s/beats", payload, now=T0 + i))
                fraction = spool.fill_fraction()
                if warned_at_fraction is None and _warnings(caplog):
                    warned_at_fraction = fraction
                    warned_count = len(accepted)
                    assert before < 0.8 <= fraction  # logged on crossing 80 %
                before = fraction
        err = excinfo.value
        assert isinstance(err, SpoolError) and isinstance(err, HrvStreamError)
        assert str(path) in str(err) and "full" in str(err)
        assert "NOT stored" in str(err) and "max_bytes" in str(err)
        assert not err.disk_full
        assert err.count == len(accepted) == spool.count()
        assert err.limit_bytes == spool.capacity_bytes
        assert len(accepted) > 300  # 256 KiB hold several hundred 200-byte messages

        (warning,) = _warnings(caplog)  # once, not on every put
        text = warning.getMessage()
        assert str(path) in text and "% full" in text
        assert f"({warned_count} messages" in text
        assert "2024-05-01T09:30:00Z" in text and "unreachable" in text

        # still full: refused again, batches too, and nothing changes
        with pytest.raises(SpoolFullError):
            spool.put("hrv/s/beats", payload, now=T0)
        with pytest.raises(SpoolFullError):
            spool.put_many([("hrv/s/beats", payload)] * 3, now=T0)
        assert [m.seq for m in _all(spool)] == accepted
        assert all(m.payload == payload for m in _all(spool))
        assert len(_warnings(caplog)) == 1

        # disk use: database plus WAL within the bound
        on_disk = sum(p.stat().st_size for p in tmp_path.iterdir())
        assert on_disk <= MIN_MAX_BYTES

        # the broker is back: the oldest half is acknowledged, new messages fit again
        half = len(accepted) // 2
        assert spool.ack_many(accepted[:half]) == half
        assert spool.fill_fraction() < 0.8
        fresh = [spool.put("hrv/s/beats", b"live", now=T0 + 10**5 + i) for i in range(20)]
        assert fresh[0] > accepted[-1]
    with Spool(path, max_bytes=MIN_MAX_BYTES) as spool:
        assert [m.seq for m in _all(spool)] == accepted[half:] + fresh
    assert _integrity(path) == "ok"


def test_full_warning_repeats_only_after_the_interval_or_after_draining(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    payload = b"p" * 500
    with Spool(tmp_path / "s.db", max_bytes=MIN_MAX_BYTES, warn_fraction=0.5) as spool:
        seqs: list[int] = []
        while spool.fill_fraction() < 0.6:
            seqs.append(spool.put("t", payload, now=T0))
        assert len(_warnings(caplog)) == 1
        seqs.append(spool.put("t", payload, now=T0 + WARN_INTERVAL_S - 1))
        assert len(_warnings(caplog)) == 1
        seqs.append(spool.put("t", payload, now=T0 + WARN_INTERVAL_S))
        assert len(_warnings(caplog)) == 2
        spool.ack_many(seqs)  # drained: re-armed
        assert any("drained" in r.getMessage() for r in caplog.records)
        while spool.fill_fraction() < 0.6:
            spool.put("t", payload, now=T0 + WARN_INTERVAL_S + 1)
        assert len(_warnings(caplog)) == 3


def test_full_disk_is_a_spool_full_error_and_keeps_everything(tmp_path: Path) -> None:
    """SQLite reports a full disk as SQLITE_FULL; ``max_page_count`` makes it do so here."""
    path = tmp_path / "spool.db"
    with Spool(path) as spool:
        accepted = [spool.put("t", b"x", now=T0) for _ in range(30)]
        conn = spool._conn
        assert conn is not None
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        conn.execute(f"PRAGMA max_page_count={pages}")  # the disk has no room left
        with pytest.raises(SpoolFullError) as excinfo:
            for _ in range(10_000):
                accepted.append(spool.put("t", b"x", now=T0))
        err = excinfo.value
        assert err.disk_full
        assert str(path) in str(err) and "disk" in str(err) and "NOT stored" in str(err)
        count = spool.count()
        assert count == len(accepted)
        with pytest.raises(SpoolFullError):  # a batch: all or nothing
            spool.put_many([("t", b"y")] * 500, now=T0)
        assert spool.count() == count
        assert [m.seq for m in _all(spool)] == accepted
        # recording the sends needs room too (each small row grows by a third, so every
        # page splits): skipped, not raised, so the resending that drains the spool goes on;
        # puts stay fsynced (FULL = 2)
        assert spool.mark_sent(accepted, T0 + 0.5) == 0
        assert all(m.attempts == 0 for m in _all(spool))
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)
        assert spool.ack(accepted[0])  # acknowledging still works
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)
    assert _integrity(path) == "ok"
    with Spool(path) as spool:  # space is back
        assert [m.seq for m in _all(spool)] == accepted[1:]
        assert spool.put("t", b"z", now=T0) > accepted[-1]


def test_enospc_from_the_os_is_a_spool_full_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(self: Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "mkdir", no_space)
    path = tmp_path / "new" / "spool.db"
    with pytest.raises(SpoolFullError) as excinfo:
        Spool(path)
    assert excinfo.value.disk_full and str(path) in str(excinfo.value)


def test_a_payload_larger_than_the_spool_is_a_value_error(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db", max_bytes=MIN_MAX_BYTES) as spool:
        with pytest.raises(ValueError, match="cannot fit"):
            spool.put("t", bytes(MIN_MAX_BYTES), now=T0)
        assert spool.count() == 0


# -- bad files, bad calls --------------------------------------------------------------------


def _make_spool(path: Path, n: int = 200) -> None:
    with Spool(path) as spool:
        spool.put_many([("t", os.urandom(100)) for _ in range(n)], now=T0)


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database\n" * 500)


def _scribble(path: Path) -> None:
    _make_spool(path)
    data = bytearray(path.read_bytes())
    data[4096:] = b"\xa5" * (len(data) - 4096)  # keep the header page, ruin the rest
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    _make_spool(path, 2000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [_garbage, _scribble, _truncate])
def test_corrupt_file_is_a_spool_error_naming_it_and_left_untouched(
    tmp_path: Path, damage: object
) -> None:
    path = tmp_path / "spool.db"
    assert callable(damage)
    damage(path)
    before = path.read_bytes()
    with pytest.raises(SpoolError) as excinfo:
        Spool(path)
    assert not isinstance(excinfo.value, SpoolFullError)
    assert str(path) in str(excinfo.value) and "corrupt" in str(excinfo.value)
    assert excinfo.value.path == path
    assert path.read_bytes() == before


def test_a_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE patients (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(SpoolError, match="not an hrvstream spool") as excinfo:
        Spool(path)
    assert str(path) in str(excinfo.value)


def test_a_spool_from_a_newer_hrvstream_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    _make_spool(path, 3)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(SpoolError, match="newer hrvstream") as excinfo:
        Spool(path)
    assert str(path) in str(excinfo.value)


def test_a_spool_in_use_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool(path) as spool:
        spool.put("t", b"x", now=T0)
        with pytest.raises(SpoolError, match="in use") as excinfo:
            Spool(path)
        assert str(path) in str(excinfo.value)
        assert spool.count() == 1  # the owner is unaffected


def test_a_directory_is_not_a_spool(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="directory"):
        Spool(tmp_path)


def test_closed_spool_raises_and_close_is_idempotent(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    assert not spool.closed
    spool.close()
    spool.close()
    assert spool.closed
    assert "closed" in repr(spool)
    with pytest.raises(SpoolError, match="closed"):
        spool.put("t", b"x", now=T0)
    with pytest.raises(SpoolError, match="closed"):
        spool.pending(1)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda s: s.put("", b"x", now=T0), ValueError),
        (lambda s: s.put("a/+/b", b"x", now=T0), ValueError),
        (lambda s: s.put("a/#", b"x", now=T0), ValueError),
        (lambda s: s.put("a\x00", b"x", now=T0), ValueError),
        (lambda s: s.put("a\ud800", b"x", now=T0), ValueError),
        (lambda s: s.put("t", "text", now=T0), TypeError),
        (lambda s: s.put("t", b"x", now=float("nan")), ValueError),
        (lambda s: s.put_many([("t", b"x"), ("", b"y")], now=T0), ValueError),
        (lambda s: s.pending(0), ValueError),
        (lambda s: s.mark_sent([1], float("inf")), ValueError),
    ],
)
def test_invalid_calls_raise_and_store_nothing(tmp_path: Path, call: object, error: type) -> None:
    with Spool(tmp_path / "s.db") as spool:
        assert callable(call)
        with pytest.raises(error):
            call(spool)
        assert spool.count() == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_bytes": MIN_MAX_BYTES - 1},
        {"max_bytes": 1.5e9},
        {"synchronous": "OFF"},
        {"warn_fraction": 0.0},
        {"warn_fraction": 1.5},
    ],
)
def test_invalid_parameters(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Spool(tmp_path / "s.db", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "s.db").exists()


# -- the invariant, under random operations --------------------------------------------------


class SpoolMachine(RuleBasedStateMachine):
    """pending() == everything put minus everything acked, in seq order, across reopens."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "spool.db"
        self.spool = Spool(self.path, synchronous="NORMAL")
        self.model: dict[int, tuple[str, bytes]] = {}
        self.attempts: dict[int, int] = {}
        self.last_seq = 0

    def _stored(self, seqs: list[int], messages: list[tuple[str, bytes]]) -> None:
        assert len(seqs) == len(messages)
        for seq, message in zip(seqs, messages, strict=True):
            assert seq > self.last_seq  # monotonic, never reused
            self.last_seq = seq
            self.model[seq] = message
            self.attempts[seq] = 0

    @initialize()
    def start(self) -> None:
        assert self.spool.count() == 0

    @rule(topic=st.sampled_from(["hrv/a/beats", "hrv/a/metrics"]), payload=st.binary(max_size=64))
    def put(self, topic: str, payload: bytes) -> None:
        self._stored([self.spool.put(topic, payload, now=T0)], [(topic, payload)])

    @rule(
        messages=st.lists(
            st.tuples(st.sampled_from(["a", "b/c"]), st.binary(max_size=32)), max_size=5
        )
    )
    def put_many(self, messages: list[tuple[str, bytes]]) -> None:
        self._stored(self.spool.put_many(messages, now=T0), messages)

    @rule(pick=st.integers(min_value=0), known=st.booleans())
    def ack(self, pick: int, known: bool) -> None:
        seq = sorted(self.model)[pick % len(self.model)] if known and self.model else pick
        assert self.spool.ack(seq) is (seq in self.model)
        self.model.pop(seq, None)

    @rule(picks=st.lists(st.integers(min_value=0, max_value=200), max_size=6))
    def ack_many(self, picks: list[int]) -> None:
        seqs = sorted(self.model)
        chosen = {seqs[p % len(seqs)] for p in picks} if seqs else set()
        chosen |= {10**9 + p for p in picks}  # unknown ones are ignored
        assert self.spool.ack_many(chosen) == len(chosen & set(self.model))
        for seq in chosen:
            self.model.pop(seq, None)

    @rule(picks=st.lists(st.integers(min_value=0, max_value=200), max_size=4))
    def mark_sent(self, picks: list[int]) -> None:
        seqs = sorted(self.model)
        chosen = sorted({seqs[p % len(seqs)] for p in picks}) if seqs else []
        assert self.spool.mark_sent(chosen, T0 + 1) == len(chosen)
        for seq in chosen:
            self.attempts[seq] += 1

    @rule()
    def reopen(self) -> None:
        self.spool.close()
        self.spool = Spool(self.path, synchronous="NORMAL")

    @invariant()
    def pending_is_put_minus_acked(self) -> None:
        messages = _all(self.spool)
        assert [(m.seq, m.topic, m.payload) for m in messages] == [
            (seq, *self.model[seq]) for seq in sorted(self.model)
        ]
        assert [m.attempts for m in messages] == [self.attempts[s] for s in sorted(self.model)]
        assert self.spool.count() == len(self.model)
        if messages:
            page = self.spool.pending(2, after_seq=messages[0].seq)
            assert page == messages[1:3]

    def teardown(self) -> None:
        self.spool.close()
        self.dir.cleanup()


TestSpoolMachine = SpoolMachine.TestCase
TestSpoolMachine.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- throughput (printed, not asserted) ------------------------------------------------------


def test_throughput(tmp_path: Path) -> None:
    payload = os.urandom(200)
    for mode in ("FULL", "NORMAL"):
        with Spool(tmp_path / f"{mode}.db", synchronous=mode) as spool:
            n = 300
            start = time.perf_counter()
            for _ in range(n):
                spool.put("hrv/t/beats", payload, now=T0)
            single = n / (time.perf_counter() - start)
            start = time.perf_counter()
            for _ in range(10):
                spool.put_many([("hrv/t/beats", payload)] * 100, now=T0)
            batched = 1000 / (time.perf_counter() - start)
        print(f"spool {mode}: put {single:,.0f}/s, put_many(100) {batched:,.0f}/s")
