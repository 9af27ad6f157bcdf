"""Where the alert engine's state survives restarts: one SQLite file, a JSON row per patient.

The server saves a patient's state (baseline samples, daily totals, open alerts, the
acute rule's timers) whenever an alert changes state, and whenever a window adds a
baseline sample (at most once per window length per patient). Saves are synchronous
(``synchronous=FULL``), so an alert the server has published is never forgotten by a
restart. Baseline samples of the minutes before a crash may be missing; the metrics
themselves are in the store.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from hrvstream.errors import HrvStreamError

SCHEMA_VERSION = 1


class AlertStateError(HrvStreamError):
    """The alert-state file cannot be opened, read or written."""


class AlertStateFile:
    """Alert engine state by patient, in a SQLite file (WAL, synchronous=FULL)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists()
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            if new:
                os.chmod(self.path, 0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise AlertStateError(
                    f"{self.path}: alert state schema {version} is newer than this version "
                    f"of hrvstream understands ({SCHEMA_VERSION})"
                )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS patient_state ("
                " patient TEXT PRIMARY KEY, state TEXT NOT NULL, updated_unix_s REAL NOT NULL)"
            )
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise AlertStateError(f"{self.path}: cannot open the alert state: {exc}") from exc
        except OSError as exc:
            raise AlertStateError(
                f"{self.path}: cannot open the alert state: {exc.strerror or exc}"
            ) from exc
        self._lock = threading.Lock()

    def load_all(self) -> list[dict[str, Any]]:
        """Every saved patient state."""
        with self._lock:
            try:
                rows = self._db.execute("SELECT patient, state FROM patient_state").fetchall()
            except sqlite3.DatabaseError as exc:
                raise AlertStateError(f"{self.path}: cannot read the alert state: {exc}") from exc
        out = []
        for patient, text in rows:
            try:
                out.append(json.loads(text))
            except ValueError as exc:
                raise AlertStateError(
                    f"{self.path}: the saved state of {patient} is not valid JSON"
                ) from exc
        return out

    def save(self, patient: str, state: dict[str, Any], now_unix_s: float) -> None:
        """Replace ``patient``'s saved state (durable when this returns)."""
        text = json.dumps(state, separators=(",", ":"), allow_nan=False)
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO patient_state (patient, state, updated_unix_s) VALUES (?, ?, ?)"
                    " ON CONFLICT(patient) DO UPDATE SET state = excluded.state,"
                    " updated_unix_s = excluded.updated_unix_s",
                    (patient, text, now_unix_s),
                )
            except sqlite3.DatabaseError as exc:
                raise AlertStateError(
                    f"{self.path}: cannot save the alert state: {exc} (is the disk full?)"
                ) from exc

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()
