"""What the dashboard reads and does, as a seam: the server implements it, the web app uses it.

The dashboard never talks to MQTT or the database directly: :class:`DashboardSource`
gives it the store (history), the latest status of each patient, the alert engine's
assessment, acknowledging an alert, and a patient's alert settings. Live updates arrive through
:class:`LiveObserver`: the server calls :meth:`LiveObserver.observe` with every message
it has handled (after storing it), so what the browser sees is what the clinic stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from hrvstream.alerts.config import AlertSettingsError as _AlertSettingsError
from hrvstream.alerts.engine import AlertActionError as _AlertActionError
from hrvstream.protocol.messages import AlertMessage, Message, StatusMessage
from hrvstream.store import Store

#: An assessment as plain JSON-able data (see :meth:`DashboardSource.assessment`).
Assessment = Mapping[str, object]


# An acknowledgement that cannot be done (unknown alert, acknowledged by someone else);
# ``str(exc)`` is a message for the therapist.
AlertActionError = _AlertActionError

# Alert settings a therapist may not set (a key that is not theirs to change, a bad
# value, values that do not fit together); ``str(exc)`` is a message for the therapist.
AlertSettingsError = _AlertSettingsError


@runtime_checkable
class DashboardSource(Protocol):
    """The server side of the dashboard."""

    @property
    def store(self) -> Store:
        """History: beats, metrics and alert events (see :class:`hrvstream.store.Store`)."""
        ...

    def statuses(self) -> Mapping[str, StatusMessage]:
        """The latest status message of every patient seen (online/offline, battery ...)."""
        ...

    def assessment(self, patient: str) -> Assessment | None:
        """The alert engine's current view of ``patient``, or ``None`` if it has none.

        Keys (all present; numbers may be ``None``):

        - ``t_unix_s``: time of the window assessed;
        - ``state``: ``"no_baseline"``, ``"calm"``, ``"elevated"``, ``"stressed"``,
          ``"poor_quality"`` or ``"activity"``;
        - ``stress_score``: the composite z-score (0 = the patient's baseline, > 2 stressed);
        - ``quality``: ``"ok"`` or the reason the window was not used (``"low_coverage"``,
          ``"artifacts"``, ``"no_contact"``, ``"activity"``, ``"missing"``);
        - ``message``: one human sentence explaining the state;
        - ``baseline``: ``None`` or ``{"rmssd_ms": [low, median, high], "hr_bpm": [low,
          median, high], "lf_hf": [low, median, high], "n_windows": int, "days": float}``
          (low/high: the normal band, for shading charts);
        - ``z``: ``{"ln_rmssd": z, "hr": z, "ln_lf_hf": z}`` (numbers or ``None``).
        """
        ...

    def open_alerts(self, patient: str | None = None) -> list[AlertMessage]:
        """Alerts not yet resolved or not yet acknowledged (latest state of each), newest first."""
        ...

    async def acknowledge(
        self, patient: str, alert_id: str, by: str, note: str | None
    ) -> AlertMessage:
        """Acknowledge an alert (stored and published); returns its new state.

        Raises
        ------
        AlertActionError
            Unknown alert of this patient, or already acknowledged.
        """
        ...

    def alert_settings(self, patient: str) -> Mapping[str, object]:
        """The alert settings a therapist may change, as they are now for ``patient``.

        Keys: ``settings`` (``{"acute_enabled": bool, "raise_score": float,
        "min_duration_s": float, "clear_score": float, "cooldown_s": float,
        "trend_enabled": bool, "quiet_hours": "HH:MM-HH:MM" or "off", "timezone": str}``),
        ``updated_by`` and ``updated_unix_s`` (who changed them last on the dashboard, and
        when; ``None`` if nobody has).
        """
        ...

    async def set_alert_settings(
        self, patient: str, values: Mapping[str, object], by: str
    ) -> Mapping[str, object]:
        """Change some of ``patient``'s alert settings (saved, audited, in force at once).

        ``values`` holds some of the keys of :meth:`alert_settings`' ``settings``
        (``None``: back to the clinic's setting). Returns the settings now in force, as
        :meth:`alert_settings`.

        Raises
        ------
        AlertSettingsError
            A key that may not be changed, a bad value, or values that do not fit
            together; nothing is changed.
        """
        ...


@runtime_checkable
class LiveObserver(Protocol):
    """Receives every message the server handled, for live views. Must not block."""

    def observe(self, message: Message) -> None:
        """One message: beats/metrics after they are stored, status as it arrives, alerts
        after they are stored and published, acknowledgements after they are handled."""
        ...
