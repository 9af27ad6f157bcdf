"""The alert engine inside the server: windows in, alerts stored and published, acks.

:class:`AlertService` is the server's :class:`~hrvstream.server.MetricsListener` and
:class:`~hrvstream.server.AlertAckListener`, and a live observer (it reads the skin
contact flag of beats messages). For each stored metrics window it asks the pure
:class:`~hrvstream.alerts.AlertEngine` for a judgement; alert state changes are saved
(:class:`~hrvstream.adapters.alert_state.AlertStateFile`), then stored in the store and
published on ``hrv/v1/<patient>/alerts`` through :meth:`Server.publish_alert`.

Acknowledgements come from therapists over MQTT (``hrv/v1/<patient>/alerts/ack``) or the
dashboard (:meth:`AlertService.acknowledge`); both become an ``acknowledged`` state change,
stored and published the same way. An alert that could be stored but not published (the
broker is away) is published again later, in order.

Therapists change a few alert settings of their patients on the dashboard
(:meth:`AlertService.set_alert_settings`): the change is checked, saved with an audit row
in the state file, and applies to the running engine from the patient's next window. The
settings that apply to a patient are the server's file's (``[alerts]``, then
``[alerts.patients.<code>]``) with the therapist's overrides on top.

Sharding: the engine keeps per-patient state in this process, so with several servers in
a shared subscription group each patient's windows must reach one server (see
deploy/SCALING.md).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path

from hrvstream.adapters.alert_state import AlertStateError, AlertStateFile
from hrvstream.alerts import AlertActionError, AlertConfigSet, AlertEngine, Window
from hrvstream.alerts.config import AlertSettingsError, therapist_config, therapist_values
from hrvstream.alerts.engine import recent_hr_bpm
from hrvstream.errors import HrvStreamError
from hrvstream.protocol.messages import (
    AlertAckMessage,
    AlertMessage,
    BeatsMessage,
    Message,
    MetricsMessage,
)

log = logging.getLogger(__name__)

Publish = Callable[[AlertMessage], Awaitable[None]]
#: Beats kept per patient for the recent HR (more than RECENT_HR_S: messages interleave).
_BEATS_KEPT_S = 120.0
Observer = Callable[[AlertMessage], None]


class AlertService:
    """Runs the alert engine on what the server stores.

    Parameters
    ----------
    config:
        Alert settings (defaults and per-patient overrides).
    state_path:
        Where the engine's state is kept across restarts (``None``: in memory only).
    clock:
        Wall clock for acknowledgement times (the engine itself never reads one).
    """

    def __init__(
        self,
        config: AlertConfigSet | None = None,
        *,
        state_path: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config or AlertConfigSet()
        self.engine = AlertEngine(self._config)
        self._clock = clock
        self._state = None if state_path is None else AlertStateFile(state_path)
        #: Therapists' settings by patient: (overrides, updated_unix_s, updated_by).
        self._settings: dict[str, tuple[dict[str, object], float, str]] = {}
        if self._state is not None:
            for patient, saved in self._state.load_settings().items():
                self._apply_saved(patient, *saved)
            for data in self._state.load_all():
                try:
                    self.engine.import_state(data)
                except (KeyError, TypeError, ValueError) as exc:
                    raise AlertStateError(
                        f"{state_path}: the saved alert state of "
                        f"{data.get('patient', '?')} cannot be read ({exc})"
                    ) from exc
        self._contact: dict[str, bool | None] = {}
        self._beats: dict[str, deque[tuple[float, float]]] = {}
        self._publish: Publish | None = None
        self._unpublished: deque[AlertMessage] = deque()
        self._lock = asyncio.Lock()
        self.raised = 0

    def attach(self, publish: Publish) -> None:
        """Where alert changes go: normally :meth:`hrvstream.server.Server.publish_alert`."""
        self._publish = publish

    def close(self) -> None:
        """Close the state file."""
        if self._state is not None:
            self._state.close()

    def seed(self, windows: Iterable[Window]) -> None:
        """Build baselines from history (earlier sessions); saved, no alerts kept."""
        items = list(windows)
        self.engine.seed(items)
        for patient in {w.patient for w in items}:
            self._save(patient)

    # -- server hooks ---------------------------------------------------------------------

    def observe(self, message: Message) -> None:
        """Keep each patient's latest skin-contact flag and last minutes of beats."""
        if not isinstance(message, BeatsMessage):
            return
        if message.contact is not None:
            self._contact[message.patient] = message.contact
        beats = self._beats.setdefault(message.patient, deque())
        for t, rr in zip(message.t_s, message.rr_ms, strict=True):
            t_unix = message.origin_unix_s + t
            if rr > 0 and (not beats or t_unix > beats[-1][0]):
                beats.append((t_unix, rr))
        if beats:
            horizon = beats[-1][0] - _BEATS_KEPT_S
            while beats and beats[0][0] < horizon:
                beats.popleft()

    def recent_hr_bpm(self, patient: str, t_unix_s: float) -> float | None:
        """Mean HR of the patient's beats in the last 30 s before ``t_unix_s`` (or None)."""
        beats = self._beats.get(patient)
        if not beats:
            return None
        t, rr = zip(*beats, strict=True)
        hr = float(recent_hr_bpm(t, rr, [t_unix_s])[0])
        return None if math.isnan(hr) else hr

    async def on_metrics(self, message: MetricsMessage) -> None:
        """Judge one stored window; store and publish the alert changes it causes."""
        window = Window.from_message(
            message,
            contact=self._contact.get(message.patient),
            recent_hr_bpm=self.recent_hr_bpm(message.patient, message.t_unix_s),
        )
        async with self._lock:
            outcome = self.engine.observe(window)
            if outcome.duplicate:
                return
            if outcome.events or outcome.sample_added:
                self._save(message.patient)
            for event in outcome.events:
                if event.state == "raised":
                    self.raised += 1
                    log.info("alert %s raised (%s, %s)", event.alert_id, event.rule, event.severity)
                self._unpublished.append(event)
            await self._flush()

    async def on_alert_ack(self, message: AlertAckMessage) -> None:
        """A therapist's acknowledgement over MQTT."""
        try:
            await self.acknowledge(message.patient, message.alert_id, message.by, message.note)
        except AlertActionError as exc:
            log.warning("acknowledgement from %s not applied: %s", message.by, exc)

    # -- the dashboard's side ---------------------------------------------------------------

    async def acknowledge(
        self, patient: str, alert_id: str, by: str, note: str | None
    ) -> AlertMessage:
        """Acknowledge an alert; returns its new (or, for a repeat, current) state.

        Raises
        ------
        AlertActionError
            Unknown alert of this patient, or acknowledged by someone else.
        """
        async with self._lock:
            event = self.engine.acknowledge(patient, alert_id, by, note, self._clock())
            if event is None:  # the same person again: nothing changes
                current = [m for m in self.engine.open_alerts(patient) if m.alert_id == alert_id]
                if current:
                    return current[0]
                raise AlertActionError(f"alert {alert_id} is already closed")
            self._save(patient)
            log.info("alert %s acknowledged by %s", alert_id, by)
            self._unpublished.append(event)
            await self._flush()
            return event

    def assessment(self, patient: str) -> Mapping[str, object] | None:
        """The engine's view of the patient as JSON-able data."""
        a = self.engine.assessment(patient)
        return None if a is None else a.to_json()

    def open_alerts(self, patient: str | None = None) -> list[AlertMessage]:
        """Alerts not both resolved and acknowledged, newest first."""
        return self.engine.open_alerts(patient)

    # -- therapists' alert settings ---------------------------------------------------------

    def alert_settings(self, patient: str) -> dict[str, object]:
        """The therapist-editable alert settings in force for ``patient``.

        Returns
        -------
        dict
            ``settings``: ``{key: value}`` for every key of
            :data:`~hrvstream.alerts.config.THERAPIST_KEYS` (``quiet_hours`` as
            ``"HH:MM-HH:MM"`` or ``"off"``); ``updated_by`` and ``updated_unix_s``: who
            last changed them on the dashboard and when (both ``None`` if nobody has).
        """
        saved = self._settings.get(patient)
        return {
            "settings": therapist_values(self.engine.config.for_patient(patient)),
            "updated_by": None if saved is None else saved[2],
            "updated_unix_s": None if saved is None else saved[1],
        }

    async def set_alert_settings(
        self, patient: str, values: Mapping[str, object], by: str
    ) -> dict[str, object]:
        """Change some of ``patient``'s alert settings (a therapist's, on the dashboard).

        The change is saved (with a row in the audit table) before it applies, and it
        applies from the patient's next window; baselines, timers and open alerts carry
        on. A value of ``None`` goes back to the server's setting.

        Returns
        -------
        dict
            The settings now in force, as :meth:`alert_settings`.

        Raises
        ------
        AlertSettingsError
            Nothing given, a key a therapist may not change, a bad value, or settings
            that do not fit together; nothing is changed.
        AlertStateError
            The state file could not be written; nothing is changed.
        """
        if not values:
            raise AlertSettingsError("no settings given")
        async with self._lock:
            base = self._config.for_patient(patient)
            saved = self._settings.get(patient)
            cfg, overrides = therapist_config(base, {} if saved is None else saved[0], values)
            now = self._clock()
            if self._state is not None:
                self._state.save_settings(patient, overrides, by, now)
            self.engine.set_patient_config(patient, cfg)
            self._settings[patient] = (overrides, now, by)
        log.info("alert settings of a patient changed by %s", by)
        log.debug("alert settings of %s changed by %s: %s", patient, by, overrides)
        return self.alert_settings(patient)

    def _apply_saved(
        self, patient: str, overrides: dict[str, object], t_unix_s: float, by: str
    ) -> None:
        """Apply settings saved by a therapist (at start); refused ones are left out."""
        try:
            cfg, kept = therapist_config(self._config.for_patient(patient), overrides)
        except AlertSettingsError as exc:
            # The server's file changed since (e.g. a clear_score now above them).
            log.warning(
                "alert settings saved by %s no longer fit the server's settings; the "
                "server's settings apply to that patient until they are changed again",
                by,
            )
            log.debug("refused alert settings of %s (%s): %s", patient, exc, overrides)
            return
        self.engine.set_patient_config(patient, cfg)
        self._settings[patient] = (kept, t_unix_s, by)

    # -- internals --------------------------------------------------------------------------

    def _save(self, patient: str) -> None:
        if self._state is None:
            return
        data = self.engine.export_state(patient)
        if data is None:
            return
        try:
            self._state.save(patient, data, self._clock())
        except AlertStateError as exc:
            log.error("%s; alert state is kept in memory only until it can be saved", exc)

    async def _flush(self) -> None:
        """Store and publish pending alert changes, in order; stop at the first failure."""
        publish = self._publish
        if publish is None:
            return
        while self._unpublished:
            event = self._unpublished[0]
            try:
                await publish(event)
            except HrvStreamError as exc:
                log.warning(
                    "alert %s (%s) not delivered yet, %d waiting: %s",
                    event.alert_id,
                    event.state,
                    len(self._unpublished),
                    exc,
                )
                return
            self._unpublished.popleft()

    @property
    def pending(self) -> int:
        """Alert changes not yet stored and published."""
        return len(self._unpublished)
