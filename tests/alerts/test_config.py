"""Alert settings: the TOML mapping, per-patient overrides, validation."""

from __future__ import annotations

import math
import tomllib
from typing import Any

import pytest

from hrvstream.alerts import AlertConfig, AlertConfigSet
from hrvstream.alerts.config import parse_quiet_hours
from hrvstream.errors import ConfigError

TOML = """
[alerts]
raise_score = 2.5
min_duration_s = 180        # an integer where a float is expected is fine
baseline_min_windows = 30
quiet_hours = "21:30-06:45"
timezone = "Europe/Berlin"
trend_enabled = true

[alerts.patients.p-7f3a]
raise_score = 3.0
critical_score = 5
trend_enabled = false

[alerts.patients.p-0b1c]
quiet_hours = "off"
"""


def test_toml_section_with_patient_overrides() -> None:
    section = tomllib.loads(TOML)["alerts"]
    config = AlertConfigSet.from_mapping(section)
    d = config.default
    assert d.raise_score == 2.5
    assert d.min_duration_s == 180.0 and isinstance(d.min_duration_s, float)
    assert d.baseline_min_windows == 30
    assert d.quiet_hours == (21.5, 6.75)
    assert d.timezone == "Europe/Berlin"
    # Untouched keys keep the clinic's defaults.
    assert d.clear_score == AlertConfig().clear_score

    p = config.for_patient("p-7f3a")
    assert (p.raise_score, p.critical_score, p.trend_enabled) == (3.0, 5.0, False)
    # Overrides start from the file's defaults, not the built-in ones.
    assert p.min_duration_s == 180.0 and p.timezone == "Europe/Berlin"
    assert config.for_patient("p-0b1c").quiet_hours is None
    assert config.for_patient("p-unlisted") == d


def test_empty_section_is_the_defaults() -> None:
    config = AlertConfigSet.from_mapping({})
    assert config.default == AlertConfig()
    assert config.patients == {}


def test_quiet_hours_false_means_off() -> None:
    assert AlertConfigSet.from_mapping({"quiet_hours": False}).default.quiet_hours is None


@pytest.mark.parametrize("key", ["raise_scor", "patient", "Raise_Score"])
def test_unknown_key_is_refused_by_name(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[alerts\]: unknown key '{key}'") as info:
        AlertConfigSet.from_mapping({key: 2.0})
    assert "raise_score" in str(info.value)  # the known keys are listed


def test_unknown_key_in_a_patient_table_names_the_table() -> None:
    with pytest.raises(ConfigError, match=r"\[alerts\.patients\.p-7f3a\]: unknown key 'x'"):
        AlertConfigSet.from_mapping({"patients": {"p-7f3a": {"x": 1}}})


def test_where_names_the_file_section() -> None:
    with pytest.raises(ConfigError, match=r"server.toml \[alerts\]"):
        AlertConfigSet.from_mapping({"bogus": 1}, where="server.toml [alerts]")


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("raise_score", "high", "expected a number"),
        ("raise_score", True, "expected a number"),
        ("raise_score", [2.0], "expected a number"),
        ("baseline_min_windows", 2.5, "expected an integer"),
        ("baseline_min_windows", "24", "expected an integer"),
        ("baseline_min_windows", False, "expected an integer"),
        ("trend_enabled", "yes", "expected true or false"),
        ("trend_enabled", 1, "expected true or false"),
        ("timezone", 1, "expected a string"),
        ("quiet_hours", 22, "expected 'HH:MM-HH:MM' or 'off'"),
    ],
)
def test_bad_types_are_refused(key: str, value: Any, words: str) -> None:
    with pytest.raises(ConfigError, match=key) as info:
        AlertConfigSet.from_mapping({key: value})
    assert words in str(info.value)


def test_patients_must_be_tables() -> None:
    with pytest.raises(ConfigError, match="patients"):
        AlertConfigSet.from_mapping({"patients": ["p-7f3a"]})
    with pytest.raises(ConfigError, match=r"patients\.p-7f3a: expected a table"):
        AlertConfigSet.from_mapping({"patients": {"p-7f3a": 3}})


@pytest.mark.parametrize(
    ("text", "hours"),
    [
        ("22:00-07:00", (22.0, 7.0)),
        ("07:30-09:15", (7.5, 9.25)),
        (" 9:05 - 17:45 ", (9 + 5 / 60, 17.75)),
        ("00:00-23:59", (0.0, 23 + 59 / 60)),
        ("off", None),
        ("OFF", None),
        ("none", None),
        ("", None),
    ],
)
def test_quiet_hours_parse(text: str, hours: tuple[float, float] | None) -> None:
    parsed = parse_quiet_hours(text)
    if hours is None:
        assert parsed is None
    else:
        assert parsed == pytest.approx(hours)


@pytest.mark.parametrize(
    "text", ["22-07", "22:00", "22:00-7", "24:00-07:00", "22:60-07:00", "22:00-07:61", "late"]
)
def test_bad_quiet_hours_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="quiet_hours"):
        parse_quiet_hours(text)
    with pytest.raises(ConfigError, match="quiet_hours"):
        AlertConfigSet.from_mapping({"quiet_hours": text})


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"clear_score": 2.0}, "clear_score must be below raise_score"),
        ({"clear_score": 2.5}, "clear_score must be below raise_score"),
        ({"critical_score": 1.5}, "critical_score must be at least raise_score"),
        ({"trend_days": 60}, "trend_days < normal_days"),
        ({"trend_days": 0}, "trend_days < normal_days"),
        ({"trend_min_days": 61}, "trend_min_days <= normal_days"),
        ({"trend_min_days": 1}, "2 <= trend_min_days"),
        ({"weight_ln_rmssd": 0.0, "weight_hr": 0.0, "weight_ln_lf_hf": 0.0}, "weights"),
        ({"min_coverage": 1.5}, "min_coverage"),
        ({"min_duration_s": 0.0}, "min_duration_s must be a number > 0"),
        ({"clear_duration_s": math.nan}, "clear_duration_s"),
        ({"sd_floor_hr_bpm": -1.0}, "sd_floor_hr_bpm"),
        ({"cooldown_s": -1.0}, "cooldown_s must be a number >= 0"),
        ({"max_gap_s": math.inf}, "max_gap_s"),
        ({"session_min_windows": 0}, "session_min_windows must be >= 1"),
        ({"trend_min_windows_per_day": 0}, "trend_min_windows_per_day"),
    ],
)
def test_invalid_combinations_are_refused(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        AlertConfig(**changes)
    assert words in str(info.value)
    # The same through the TOML path.
    with pytest.raises(ConfigError):
        AlertConfigSet.from_mapping(changes)


def test_zero_cooldown_and_hold_are_allowed() -> None:
    c = AlertConfig(cooldown_s=0.0, activity_hold_s=0.0)
    assert (c.cooldown_s, c.activity_hold_s) == (0.0, 0.0)


def test_a_patient_override_is_checked_against_the_defaults() -> None:
    """raise_score 1.0 for one patient clashes with the default clear_score 1.0."""
    with pytest.raises(ConfigError, match="clear_score"):
        AlertConfigSet.from_mapping({"patients": {"p-7f3a": {"raise_score": 1.0}}})


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "Europe/Berlinn", "", "../etc/passwd"])
def test_unknown_timezone_is_refused(zone: str) -> None:
    with pytest.raises(ConfigError, match="timezone"):
        AlertConfig(timezone=zone)
    with pytest.raises(ConfigError, match="timezone"):
        AlertConfigSet.from_mapping({"timezone": zone})


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"])
def test_known_timezones(zone: str) -> None:
    assert AlertConfig(timezone=zone).zone().key == zone
