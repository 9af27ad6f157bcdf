"""Alert rules' settings: defaults, per-patient overrides, and their TOML form.

An ``alerts.toml`` (or the ``[alerts]`` section of the server's file)::

    [alerts]
    raise_score = 2.0          # composite z-score that starts an acute alert
    min_duration_s = 120       # ... held this long
    quiet_hours = "22:00-07:00"
    timezone = "Europe/London"

    [alerts.patients.p-7f3a]   # a therapist's overrides for one patient
    raise_score = 2.5
    trend_enabled = false

Every key is a field of :class:`AlertConfig`. Unknown keys are refused (a typo must not
silently leave a default in place).

Therapists change a few of these for their own patients on the dashboard
(:data:`THERAPIST_KEYS`); :func:`therapist_config` checks such changes and applies them on
top of the file's settings for the patient (clinic defaults, then ``[alerts.patients.<code>]``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hrvstream.errors import ConfigError

#: The settings a therapist may change for a patient on the dashboard, in this order.
THERAPIST_KEYS: Final[tuple[str, ...]] = (
    "acute_enabled",
    "raise_score",
    "min_duration_s",
    "clear_score",
    "cooldown_s",
    "trend_enabled",
    "quiet_hours",
    "timezone",
)
#: Longest text accepted for a therapist's ``quiet_hours`` or ``timezone``.
_MAX_TEXT: Final = 64


class AlertSettingsError(ConfigError, ValueError):
    """A therapist's alert settings for a patient are refused; ``str(exc)`` says why."""


_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


def parse_quiet_hours(text: str) -> tuple[float, float] | None:
    """``"22:00-07:00"`` as ``(22.0, 7.0)`` hours of the local day; ``""``/``"off"``: none."""
    if text.strip().lower() in ("", "off", "none"):
        return None
    m = _HOURS.match(text)
    if m is None:
        raise ConfigError(f"quiet_hours {text!r}: expected HH:MM-HH:MM, e.g. '22:00-07:00'")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ConfigError(f"quiet_hours {text!r}: hours 0-23, minutes 0-59")
    return (h1 + m1 / 60, h2 + m2 / 60)


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """How one patient's windows are judged. Defaults are the clinic's defaults.

    Quality gating
    --------------
    min_coverage:
        A window whose beats cover less of it than this is not judged (``low_coverage``).
    max_artifact_pct:
        Nor one with more corrected artifacts than this percentage (``artifacts``).
    activity_hr_delta_bpm:
        HR (the window's, or the last 30 s of beats) this far above the resting baseline
        is taken as physical activity.
    activity_rise_bpm_per_min, activity_rise_min_delta_bpm:
        Or the recent HR (last 30 s of beats) rising steadily, at least this fast, over
        ``activity_trend_s`` while ``activity_rise_min_delta_bpm`` above baseline:
        exercise building up. "Steadily": in steps of similar size, which the ramp of a
        stress response (a minute or two, then level) is not.
    activity_trend_s:
        The span over which the rise is measured.
    activity_hold_s:
        Windows are still treated as activity this long after the last active one
        (recovery: HRV stays low for minutes after exercise; the window also still holds
        exercise beats).

    Baselines
    ---------
    baseline_days:
        The long-term baseline pools clean resting windows of this many days.
    baseline_min_windows:
        Windows it needs before it is used (independent windows, one per ``window_s``).
    baseline_hours:
        Time-of-day matching: the long-term baseline uses the samples taken within this
        many hours of the current hour of the day, when there are ``baseline_min_windows``
        of them (HR and HRV follow the day, and a whole-day baseline mixes sleep with
        waking); else the whole pool. 0 turns matching off.
    session_min_windows:
        Without a long-term baseline, the current session's quiet windows form a
        short-term baseline once there are this many.
    sd_floor_ln_rmssd, sd_floor_hr_bpm, sd_floor_ln_lf_hf:
        Smallest spread used in z-scores (a very regular baseline must not turn small
        changes into large z).

    Acute stress rule
    -----------------
    acute_enabled:
        The rule is on.
    weight_ln_rmssd, weight_hr, weight_ln_lf_hf:
        Weights of ``-z(lnRMSSD)``, ``z(HR)`` and ``z(ln LF/HF)`` in the stress score.
    raise_score, min_duration_s:
        An alert is raised when the score stays at or above ``raise_score`` for
        ``min_duration_s``.
    clear_score, clear_duration_s:
        It resolves when the score stays below ``clear_score`` for ``clear_duration_s``
        (hysteresis: between the two, nothing changes).
    critical_score:
        Raised as ``critical`` (not ``warning``) when the score reaches this.
    cooldown_s:
        After an acute alert resolves, no new one for this long.
    max_gap_s:
        An open alert whose data stops for this long resolves (``data stopped``).

    Multi-day trend rule
    --------------------
    trend_enabled, trend_days, normal_days, trend_min_days, trend_sd_factor:
        The mean of daily lnRMSSD over the last ``trend_days`` days below the normal range
        (mean - ``trend_sd_factor`` SD of the daily values over the ``normal_days`` days
        before them; at least ``trend_min_days`` of those) raises ``trend_decline``. It
        resolves when the rolling mean is back above the lower edge.
    trend_z:
        ... and the rolling mean must also be this many standard errors below the
        normal mean (SD of daily values / sqrt(days averaged)): a 7-day mean scatters
        less than single days, and mean - 0.5 SD alone would be crossed on ~10% of
        calm days.
    trend_sd_floor:
        Smallest SD of daily lnRMSSD used (very regular days must not make a few percent
        look like a decline).
    trend_days_below:
        Days in a row the rule must hold before the alert is raised.
    trend_min_windows_per_day:
        A day counts when it has at least this many clean resting windows.

    Notifications
    -------------
    quiet_hours:
        ``(start_h, end_h)`` local hours (may wrap midnight) or ``None``. Alerts raised
        in them are stored and shown but carry ``notify = 0`` (critical ones still notify).
    timezone:
        The patient's IANA time zone, for days and quiet hours.
    """

    min_coverage: float = 0.9
    max_artifact_pct: float = 5.0
    activity_hr_delta_bpm: float = 30.0
    activity_rise_bpm_per_min: float = 1.0
    activity_rise_min_delta_bpm: float = 10.0
    activity_trend_s: float = 240.0
    activity_hold_s: float = 600.0
    baseline_days: float = 14.0
    baseline_min_windows: int = 24
    baseline_hours: float = 3.0
    session_min_windows: int = 6
    sd_floor_ln_rmssd: float = 0.08
    sd_floor_hr_bpm: float = 2.0
    sd_floor_ln_lf_hf: float = 0.15
    acute_enabled: bool = True
    weight_ln_rmssd: float = 1.0
    weight_hr: float = 1.0
    weight_ln_lf_hf: float = 0.5
    raise_score: float = 2.0
    min_duration_s: float = 120.0
    clear_score: float = 1.0
    clear_duration_s: float = 300.0
    critical_score: float = 4.0
    cooldown_s: float = 1800.0
    max_gap_s: float = 1800.0
    trend_enabled: bool = True
    trend_days: int = 7
    normal_days: int = 60
    trend_min_days: int = 14
    trend_sd_factor: float = 0.5
    trend_z: float = 2.0
    trend_sd_floor: float = 0.05
    trend_days_below: int = 2
    trend_min_windows_per_day: int = 6
    quiet_hours: tuple[float, float] | None = (22.0, 7.0)
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        positive = (
            "min_duration_s",
            "clear_duration_s",
            "activity_trend_s",
            "baseline_days",
            "sd_floor_ln_rmssd",
            "sd_floor_hr_bpm",
            "sd_floor_ln_lf_hf",
            "max_gap_s",
            "trend_sd_factor",
            "trend_z",
            "trend_sd_floor",
        )
        for name in positive:
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ConfigError(f"[alerts] {name} must be a number > 0, got {v!r}")
        for name in ("activity_hold_s", "cooldown_s", "activity_hr_delta_bpm", "baseline_hours"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"[alerts] {name} must be a number >= 0, got {v!r}")
        if not 0 <= self.min_coverage <= 1:
            raise ConfigError(f"[alerts] min_coverage must be in 0..1, got {self.min_coverage}")
        if self.clear_score >= self.raise_score:
            raise ConfigError("[alerts] clear_score must be below raise_score (hysteresis)")
        if self.critical_score < self.raise_score:
            raise ConfigError("[alerts] critical_score must be at least raise_score")
        for name in (
            "baseline_min_windows",
            "session_min_windows",
            "trend_min_windows_per_day",
            "trend_days_below",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"[alerts] {name} must be >= 1")
        if not 1 <= self.trend_days < self.normal_days:
            raise ConfigError("[alerts] need 1 <= trend_days < normal_days")
        if not 2 <= self.trend_min_days <= self.normal_days:
            raise ConfigError("[alerts] need 2 <= trend_min_days <= normal_days")
        if self.weight_ln_rmssd + self.weight_hr + self.weight_ln_lf_hf <= 0:
            raise ConfigError("[alerts] the stress-score weights must not all be 0")
        self.zone()  # raises for an unknown zone

    def zone(self) -> ZoneInfo:
        """The patient's time zone."""
        try:
            return ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"[alerts] timezone {self.timezone!r} is not a known zone") from exc

    def with_values(self, values: Mapping[str, Any], where: str = "[alerts]") -> AlertConfig:
        """A copy with ``values`` (TOML keys) applied; unknown keys and bad types refused."""
        changes: dict[str, Any] = {}
        for key, raw in values.items():
            if key not in _FIELDS:
                known = ", ".join(sorted(_FIELDS))
                raise ConfigError(f"{where}: unknown key {key!r} (known: {known})")
            changes[key] = _convert(key, raw, where)
        return dataclasses.replace(self, **changes)


_FIELDS: Final[dict[str, Any]] = {f.name: f.type for f in dataclasses.fields(AlertConfig)}


def _convert(key: str, raw: Any, where: str) -> Any:
    default = getattr(AlertConfig(), key)
    if key == "quiet_hours":
        if raw is False or raw is None:
            return None
        if not isinstance(raw, str):
            raise ConfigError(f"{where} quiet_hours: expected 'HH:MM-HH:MM' or 'off'")
        return parse_quiet_hours(raw)
    if isinstance(default, bool):
        if not isinstance(raw, bool):
            raise ConfigError(f"{where} {key}: expected true or false, got {raw!r}")
        return raw
    if isinstance(default, int):
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(f"{where} {key}: expected an integer, got {raw!r}")
        return raw
    if isinstance(default, float):
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ConfigError(f"{where} {key}: expected a number, got {raw!r}")
        return float(raw)
    if not isinstance(raw, str):
        raise ConfigError(f"{where} {key}: expected a string, got {raw!r}")
    return raw


@dataclass(frozen=True, slots=True)
class AlertConfigSet:
    """The clinic's defaults and each patient's overrides."""

    default: AlertConfig = field(default_factory=AlertConfig)
    patients: Mapping[str, AlertConfig] = field(default_factory=dict)

    def for_patient(self, patient: str) -> AlertConfig:
        """The settings that apply to ``patient``."""
        return self.patients.get(patient, self.default)

    def with_patient(self, patient: str, config: AlertConfig) -> AlertConfigSet:
        """A copy in which ``patient``'s settings are ``config`` (the others unchanged)."""
        return AlertConfigSet(self.default, {**self.patients, patient: config})

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any], where: str = "[alerts]") -> AlertConfigSet:
        """From the ``[alerts]`` table of a TOML file (with its ``patients`` sub-tables)."""
        values = {k: v for k, v in section.items() if k != "patients"}
        default = AlertConfig().with_values(values, where)
        patients: dict[str, AlertConfig] = {}
        raw_patients = section.get("patients", {})
        if not isinstance(raw_patients, Mapping):
            raise ConfigError(f"{where} patients: expected tables [alerts.patients.<code>]")
        for code, overrides in raw_patients.items():
            if not isinstance(overrides, Mapping):
                raise ConfigError(f"{where}.patients.{code}: expected a table")
            patients[str(code)] = default.with_values(overrides, f"[alerts.patients.{code}]")
        return cls(default, patients)


# == a therapist's settings for one patient ================================================


def format_quiet_hours(hours: tuple[float, float] | None) -> str:
    """``(22.0, 7.0)`` as ``"22:00-07:00"``; ``None`` as ``"off"`` (the TOML form)."""
    if hours is None:
        return "off"

    def hhmm(h: float) -> str:
        minutes = round(h * 60)
        return f"{minutes // 60:02d}:{minutes % 60:02d}"

    return f"{hhmm(hours[0])}-{hhmm(hours[1])}"


def therapist_values(cfg: AlertConfig) -> dict[str, object]:
    """The therapist-editable settings of ``cfg`` in their TOML form (see THERAPIST_KEYS)."""
    out: dict[str, object] = {}
    for key in THERAPIST_KEYS:
        value = getattr(cfg, key)
        out[key] = format_quiet_hours(value) if key == "quiet_hours" else value
    return out


def therapist_config(
    base: AlertConfig,
    current: Mapping[str, object],
    changes: Mapping[str, object] | None = None,
) -> tuple[AlertConfig, dict[str, object]]:
    """A patient's settings with a therapist's overrides on top of ``base``.

    Parameters
    ----------
    base:
        What the server's file says for the patient (clinic defaults plus its
        ``[alerts.patients.<code>]`` table).
    current:
        The therapist overrides in force (as returned here before).
    changes:
        New values by key (TOML form: numbers, ``true``/``false``, ``quiet_hours`` as
        ``"HH:MM-HH:MM"`` or ``"off"``, ``timezone`` an IANA name); ``None`` as a value
        goes back to ``base``'s.

    Returns
    -------
    (AlertConfig, dict)
        The settings that apply, and the overrides to keep: those that differ from
        ``base``, so a value set back to the file's follows later changes of the file.

    Raises
    ------
    AlertSettingsError
        A key a therapist may not change, a value of the wrong type or out of range, or
        settings that do not fit together (``clear_score`` must stay below
        ``raise_score``); the message says which.
    """
    merged: dict[str, object] = dict(current)
    for key, value in (changes or {}).items():
        if key not in THERAPIST_KEYS:
            raise AlertSettingsError(
                f"{key!r} cannot be changed here (these can: {', '.join(THERAPIST_KEYS)})"
            )
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    converted: dict[str, Any] = {}
    for key, value in merged.items():
        if key not in THERAPIST_KEYS:
            raise AlertSettingsError(f"{key!r} is not a setting a therapist can change")
        if isinstance(value, float) and not math.isfinite(value):
            raise AlertSettingsError(f"{key} must be a finite number, got {value!r}")
        if isinstance(value, str) and len(value) > _MAX_TEXT:
            raise AlertSettingsError(f"{key} is longer than {_MAX_TEXT} characters")
        try:
            converted[key] = _convert(key, value, "alert setting")
        except ConfigError as exc:
            raise AlertSettingsError(str(exc)) from None
    raise_score = converted.get("raise_score", base.raise_score)
    clear_score = converted.get("clear_score", base.clear_score)
    if raise_score > base.critical_score:
        raise AlertSettingsError(
            f"raise_score {raise_score:g} is above the clinic's critical score "
            f"{base.critical_score:g} (to stop acute alerts, turn acute_enabled off)"
        )
    if clear_score >= raise_score:
        raise AlertSettingsError(
            f"clear_score ({clear_score:g}) must be below raise_score ({raise_score:g}): "
            "an alert resolves only once the score is clearly below what raised it"
        )
    try:
        cfg = dataclasses.replace(base, **converted)  # runs AlertConfig's own checks
    except ConfigError as exc:
        raise AlertSettingsError(_plain(str(exc))) from None
    shown = therapist_values(cfg)
    kept = {
        key: shown[key]
        for key in THERAPIST_KEYS
        if key in merged and getattr(cfg, key) != getattr(base, key)
    }
    return cfg, kept


def _plain(message: str) -> str:
    """A configuration message without the TOML section it names."""
    return message.removeprefix("[alerts] ")
