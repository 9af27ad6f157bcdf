"""Where the alert engine's state survives restarts: one SQLite file, a JSON row per patient.

The server saves a patient's state (baseline samples, daily totals, open alerts, the
acute rule's timers) whenever an alert changes state, and whenever a window adds a
baseline sample (at most once per window length per patient). Saves are synchronous
(``synchronous=FULL``), so an alert the server has published is never forgotten by a
restart. Baseline samples of the minutes before a crash may be missing; the metrics
themselves are in the store.

The same file keeps the alert settings therapists chose for their patients on the
dashboard (``patient_settings``: the overrides in force, when and by whom they were last
changed) and every change of them (``settings_audit``, append-only: when, which patient,
by whom, the overrides after the change).

Schema versions (``PRAGMA user_version``): 1 had ``patient_state`` only; 2 adds the two
settings tables. A version-1 file is upgraded in place when it is opened.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hrvstream.errors import HrvStreamError

SCHEMA_VERSION = 2

_TABLES = (
    "CREATE TABLE IF NOT EXISTS patient_state ("
    " patient TEXT PRIMARY KEY, state TEXT NOT NULL, updated_unix_s REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS patient_settings ("
    " patient TEXT PRIMARY KEY, settings TEXT NOT NULL, updated_unix_s REAL NOT NULL,"
    " updated_by TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS settings_audit ("
    " t_unix_s REAL NOT NULL, patient TEXT NOT NULL, by TEXT NOT NULL, settings TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS settings_audit_patient ON settings_audit (patient, t_unix_s)",
)

#: A patient's saved alert settings: (overrides, updated_unix_s, updated_by).
SavedSettings = tuple[dict[str, Any], float, str]


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
            if version < SCHEMA_VERSION:  # new, or older: create what is missing
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _TABLES:
                        self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
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

    def load_settings(self) -> dict[str, SavedSettings]:
        """Every patient's saved alert settings: ``{patient: (overrides, updated_unix_s, by)}``."""
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT patient, settings, updated_unix_s, updated_by FROM patient_settings"
                ).fetchall()
            except sqlite3.DatabaseError as exc:
                raise AlertStateError(
                    f"{self.path}: cannot read the alert settings: {exc}"
                ) from exc
        out: dict[str, SavedSettings] = {}
        for patient, text, t, by in rows:
            try:
                overrides = json.loads(text)
            except ValueError:
                overrides = None
            if not isinstance(overrides, dict):
                raise AlertStateError(
                    f"{self.path}: the saved alert settings of {patient} are not a JSON object"
                )
            out[str(patient)] = (overrides, float(t), str(by))
        return out

    def save_settings(
        self, patient: str, overrides: Mapping[str, Any], by: str, now_unix_s: float
    ) -> None:
        """Replace ``patient``'s alert settings and add the change to the audit table.

        Both in one transaction, durable when this returns.
        """
        text = json.dumps(dict(overrides), separators=(",", ":"), allow_nan=False, sort_keys=True)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.execute(
                        "INSERT INTO patient_settings (patient, settings, updated_unix_s,"
                        " updated_by) VALUES (?, ?, ?, ?) ON CONFLICT(patient) DO UPDATE SET"
                        " settings = excluded.settings, updated_unix_s = excluded.updated_unix_s,"
                        " updated_by = excluded.updated_by",
                        (patient, text, now_unix_s, by),
                    )
                    self._db.execute(
                        "INSERT INTO settings_audit (t_unix_s, patient, by, settings)"
                        " VALUES (?, ?, ?, ?)",
                        (now_unix_s, patient, by, text),
                    )
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                raise AlertStateError(
                    f"{self.path}: cannot save the alert settings: {exc} (is the disk full?)"
                ) from exc

    def settings_audit(self, patient: str) -> list[tuple[float, str, dict[str, Any]]]:
        """Every change of ``patient``'s alert settings, oldest first.

        Returns
        -------
        list of (t_unix_s, by, overrides)
        """
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT t_unix_s, by, settings FROM settings_audit WHERE patient = ?"
                    " ORDER BY t_unix_s, rowid",
                    (patient,),
                ).fetchall()
            except sqlite3.DatabaseError as exc:
                raise AlertStateError(
                    f"{self.path}: cannot read the alert settings' audit: {exc}"
                ) from exc
        return [(float(t), str(by), json.loads(text)) for t, by, text in rows]

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()
