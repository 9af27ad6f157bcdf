"""Relapse-stress alerts: personal baselines, quality gating, rules, lifecycle. Pure.

See :mod:`hrvstream.alerts.engine` for how a window is judged.
"""

from hrvstream.alerts.config import AlertConfig, AlertConfigSet, AlertSettingsError
from hrvstream.alerts.engine import (
    ACUTE,
    TREND,
    AlertActionError,
    AlertEngine,
    Assessment,
    Outcome,
    Window,
    recent_hr_bpm,
    windows_from_analysis,
)

__all__ = [
    "ACUTE",
    "TREND",
    "AlertActionError",
    "AlertConfig",
    "AlertConfigSet",
    "AlertEngine",
    "AlertSettingsError",
    "Assessment",
    "Outcome",
    "Window",
    "recent_hr_bpm",
    "windows_from_analysis",
]
