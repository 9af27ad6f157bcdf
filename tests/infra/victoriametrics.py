"""A real VictoriaMetrics server for tests, on a free loopback port.

VictoriaMetrics (Debian package ``victoria-metrics``) accepts InfluxDB line protocol on
``/api/v2/write`` (what ``influxdb-client`` sends), so it stands in for InfluxDB 2 on the
write path. What it does with those writes (checked against 1.79):

* series are named ``<measurement>_<field>``; tags become labels; ``org``/``bucket`` and
  the token are ignored (no ``db`` label is added);
* timestamps are kept in **milliseconds**, truncated (``...999999999 ns`` -> ``...999 ms``);
* values are float64 with about 12 significant decimal digits kept (``812.5`` and
  ``813.4765625`` exactly; ``0.1234567890123456`` comes back as ``0.12345678901234``);
* integer fields (``1i``) become plain numbers; **string fields are stored as 0**;
* samples outside ``-retentionPeriod`` (default one month!) are dropped silently, hence
  ``-retentionPeriod 100y`` for test data in the past;
* the same sample written twice is stored twice unless ``-dedup.minScrapeInterval`` is
  set: with ``1ms`` it keeps one sample per series and millisecond (export and queries
  deduplicate; merges drop the rest). Which one it keeps when the *values* differ at one
  timestamp is not specified in 1.79 (we saw the last write win across requests, and the
  lower value win inside one request); rewriting identical points, which is what
  retries do, always leaves exactly one.

Data is not visible to ``/api/v1/export`` until ``GET /internal/force_flush`` (or about a
second). ``stop()`` is a graceful SIGTERM (data flushed to disk); ``kill()`` is SIGKILL,
which loses the last second of acknowledged samples: VictoriaMetrics' own trade-off.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

#: Where Debian installs it; ``$HRVSTREAM_VICTORIA_METRICS`` overrides.
DEFAULT_BINARY = "/usr/bin/victoria-metrics"
#: Bound of every wait on the server (start, stop, one HTTP request), seconds.
WAIT_S = 30.0
_POLL_S = 0.02


def victoria_metrics_binary() -> str | None:
    """Path of the ``victoria-metrics`` binary, or ``None`` if it is not installed."""
    env = os.environ.get("HRVSTREAM_VICTORIA_METRICS")
    candidates: list[str | None] = [env, shutil.which("victoria-metrics"), DEFAULT_BINARY]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Series:
    """One exported series: name, labels and its samples (timestamps in ms)."""

    name: str
    labels: dict[str, str]
    timestamps_ms: list[int]
    values: list[float]


class VictoriaMetricsError(RuntimeError):
    """The test server did not start, stop or answer as expected."""


class VictoriaMetrics:
    """One ``victoria-metrics`` process and its data directory.

    ``start()`` after ``stop()`` or ``kill()`` restarts it on the same port with the same
    data: an outage as a client sees it.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        binary: str | None = None,
        port: int | None = None,
        dedup: bool = True,
        extra_flags: tuple[str, ...] = (),
    ) -> None:
        found = binary or victoria_metrics_binary()
        if found is None:
            raise VictoriaMetricsError(
                "victoria-metrics is not installed (apt-get install victoria-metrics)"
            )
        self.binary = found
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.log_path = workdir / "victoria-metrics.log"
        self._pinned = port is not None
        self.port = port if port is not None else free_port()
        self.dedup = dedup
        self.extra_flags = extra_flags
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False

    @property
    def url(self) -> str:
        """Base URL, for ``InfluxStore(url=...)`` and the HTTP APIs."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """The process is alive (it may not answer yet)."""
        return self._proc is not None and self._proc.poll() is None

    def _command(self) -> list[str]:
        cmd = [
            self.binary,
            f"-storageDataPath={self.data_dir}",
            f"-httpListenAddr=127.0.0.1:{self.port}",
            "-retentionPeriod=100y",
            "-loggerLevel=INFO",
        ]
        if self.dedup:
            cmd.append("-dedup.minScrapeInterval=1ms")
        return cmd + list(self.extra_flags)

    # -- lifecycle ------------------------------------------------------------------

    def start(self, timeout_s: float = WAIT_S) -> None:
        """Start the server and wait until ``/health`` answers OK (bounded)."""
        if self.running:
            raise VictoriaMetricsError("already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if (self._pinned or self._started_once) else 3
        for attempt in range(attempts):
            if self._spawn_and_wait(timeout_s):
                self._started_once = True
                return
            # Exited at once: most likely someone took the free port in between.
            if attempt + 1 < attempts:
                self.port = free_port()
        raise VictoriaMetricsError(
            f"victoria-metrics exited on start (port {self.port}); log:\n{self.log_tail()}"
        )

    def _spawn_and_wait(self, timeout_s: float) -> bool:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            if self.healthy():
                return True
            time.sleep(_POLL_S)  # polling /health, bounded by the deadline
        self.kill()
        raise VictoriaMetricsError(
            f"victoria-metrics did not become healthy within {timeout_s:g} s; "
            f"log:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = WAIT_S) -> None:
        """Graceful stop (SIGTERM): pending data is written to disk. No-op if stopped."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
            raise VictoriaMetricsError(
                f"victoria-metrics ignored SIGTERM for {timeout_s:g} s (killed)"
            ) from None

    def kill(self) -> None:
        """Hard stop (SIGKILL): the last second of acknowledged samples may be lost."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait(timeout=WAIT_S)

    def __enter__(self) -> VictoriaMetrics:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log, for failure messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- HTTP -----------------------------------------------------------------------

    def _get(self, path: str, data: bytes | None = None) -> bytes:
        request = urllib.request.Request(self.url + path, data=data)
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            body: bytes = response.read()
            return body

    def healthy(self) -> bool:
        """``GET /health`` answers OK."""
        try:
            return self._get("/health").strip() == b"OK"
        except (urllib.error.URLError, OSError):
            return False

    def force_flush(self) -> None:
        """Make everything written so far visible to queries and export."""
        self._get("/internal/force_flush")

    def export(self, match: str = '{__name__=~"beats.*"}') -> list[Series]:
        """``/api/v1/export`` of the series matching ``match``, sorted by name and labels.

        Deduplicated as configured (``-dedup.minScrapeInterval``); call
        :meth:`force_flush` first.
        """
        body = urllib.parse.urlencode({"match[]": match}).encode()
        out: list[Series] = []
        for line in self._get("/api/v1/export", data=body).splitlines():
            if not line.strip():
                continue
            obj = json.loads(line)
            labels = dict(obj["metric"])
            name = labels.pop("__name__")
            out.append(Series(name, labels, list(obj["timestamps"]), list(obj["values"])))
        out.sort(key=lambda s: (s.name, sorted(s.labels.items())))
        return out

    def write_line_protocol(self, lines: str) -> None:
        """POST raw line protocol to ``/api/v2/write`` (precision ns), bypassing the store."""
        self._get("/api/v2/write?precision=ns", data=lines.encode())
