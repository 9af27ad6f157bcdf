"""``hrvstream alerts``: the offline replay, end to end as a user runs it, and its parts.

The recordings are simulated (:mod:`hrvstream.simulate`): three calm 2-h days as the
baseline, and 2-h inputs with and without a 15-min stress episode (HR +15 bpm, HF
amplitude x 0.35: RMSSD falls by about half).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from hrvstream.alerts import AlertConfigSet
from hrvstream.alerts.offline import (
    ALERT_KEYS,
    DEFAULT_START,
    alerts_config_from_toml,
    evaluate,
    parse_start,
    place_before,
)
from hrvstream.errors import ConfigError
from hrvstream.recordings.model import RRSeries
from hrvstream.simulate import SessionConfig, StressEpisode, simulate_session, write_rr_file
from tests.clirun import hrvstream

ONSET_S = 3600.0
EPISODE_S = 900.0
#: An alert needs the 5-min window to be partly stressed and the score held for 2 min.
RAISE_WITHIN_S = 360.0

REQUIRED = ("t_s", "rule", "severity", "metric", "value", "baseline", "deviation")


def _session(seed: int, stress: bool = False) -> RRSeries:
    episodes = (StressEpisode(start_s=ONSET_S, duration_s=EPISODE_S),) if stress else ()
    return simulate_session(SessionConfig(duration_s=7200.0, seed=seed, stress=episodes)).series


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("offline")
    out: dict[str, Path] = {}
    for name, series in (
        ("calm1", _session(1)),
        ("calm2", _session(2)),
        ("calm3", _session(3)),
        ("stress", _session(7, stress=True)),
        ("calm_in", _session(8)),
    ):
        out[name] = d / f"{name}.txt"
        write_rr_file(series, out[name])
    return out


def _baselines(files: dict[str, Path]) -> list[str]:
    return ["--baseline", str(files["calm1"]), str(files["calm2"]), str(files["calm3"])]


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("hrvstream: error: ")
    return lines[0]


# -- the command, end to end ----------------------------------------------------------------


def test_stress_episode_raises_one_acute_alert(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "alerts.jsonl"
    r = hrvstream(["alerts", str(files["stress"]), *_baselines(files), "-o", str(out)])
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
    alerts = _lines(out.read_text())
    assert [a["rule"] for a in alerts] == ["acute_stress"]
    a = alerts[0]
    for key in (*REQUIRED, *ALERT_KEYS):
        assert key in a, key
    assert ONSET_S < a["t_s"] <= ONSET_S + RAISE_WITHIN_S
    # it resolves after the episode, once the 5-min windows are calm again
    assert a["resolved_t_s"] is not None
    assert ONSET_S + EPISODE_S < a["resolved_t_s"] <= ONSET_S + EPISODE_S + 1200
    assert a["severity"] in ("warning", "critical")
    assert a["metric"] == "ln_rmssd"
    assert a["value"] < a["baseline"] and a["deviation"] < 0 and a["deviation_pct"] < -20
    assert a["stress_score"] >= 2.0
    assert a["explanation"]["baseline_source"] == "long_term"
    # the default start: 2026-01-05T08:00 UTC, so raised a little after 09:00
    assert a["time"].startswith("2026-01-05T09:0")
    assert a["notify"] is True
    summary = r.stderr.strip().splitlines()[-1]
    assert "1 alert in 2.0 h" in summary and "long-term baseline" in summary


def test_calm_input_writes_no_alert_line(files: dict[str, Path]) -> None:
    r = hrvstream(["alerts", str(files["calm_in"]), *_baselines(files), "--summary"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert "0 alerts in 2.0 h" in r.stderr
    summary = json.loads(r.stderr[r.stderr.index("{") :])
    assert summary["alerts"] == 0
    assert summary["baseline_source"] == "long_term"
    assert summary["baseline_windows"] >= 24
    assert [b["start"] for b in summary["baseline_recordings"]] == [
        "2026-01-02T08:00:00+00:00",
        "2026-01-03T08:00:00+00:00",
        "2026-01-04T08:00:00+00:00",
    ]
    assert sum(summary["windows_by_state"].values()) == summary["windows"]


def test_stdout_is_json_lines_and_start_sets_the_clock(files: dict[str, Path]) -> None:
    r = hrvstream(
        [
            "alerts",
            str(files["stress"]),
            *_baselines(files),
            "--start",
            "2026-07-01T23:30+02:00",
        ]
    )
    assert r.returncode == 0, r.stderr
    (a,) = _lines(r.stdout)
    assert ONSET_S < a["t_s"] <= ONSET_S + RAISE_WITHIN_S
    # 23:30+02:00 is 21:30 UTC; one hour later is 22:30 UTC, inside the default quiet hours
    assert a["time"].startswith("2026-07-01T22:3")
    assert a["notify"] is (a["severity"] == "critical")


def test_without_baseline_says_so(files: dict[str, Path]) -> None:
    r = hrvstream(["alerts", str(files["calm_in"])])
    assert r.returncode == 0, r.stderr
    assert "no --baseline" in r.stderr and "session baseline" in r.stderr
    assert r.stdout == ""


def test_config_per_patient_override_in_a_clinic_file(
    files: dict[str, Path], tmp_path: Path
) -> None:
    # the acute rule switched off for one patient only, in an [alerts] table
    cfg = tmp_path / "clinic.toml"
    cfg.write_text(
        '[alerts]\nstate_path = "/var/lib/x.json"\n\n'
        "[alerts.patients.p-01]\nacute_enabled = false\n\n"
        '[dashboard]\naccounts = "a.db"\n'
    )
    args = ["alerts", str(files["stress"]), *_baselines(files), "--config", str(cfg)]
    off = hrvstream([*args, "--patient", "p-01"])
    assert off.returncode == 0, off.stderr
    assert off.stdout == ""
    on = hrvstream([*args, "--patient", "p-02"])
    assert on.returncode == 0, on.stderr
    assert [a["patient"] for a in _lines(on.stdout)] == ["p-02"]


@pytest.fixture
def bad_inputs(files: dict[str, Path], tmp_path: Path) -> Iterator[dict[str, Path]]:
    malformed = tmp_path / "malformed.txt"
    malformed.write_text("812.5\n790.0\n8x0\n805.0\n")
    unknown = tmp_path / "typo.toml"
    unknown.write_text("[alerts]\nraise_scor = 2.5\n")
    not_toml = tmp_path / "broken.toml"
    not_toml.write_text("[alerts\nraise_score = 2.5\n")
    yield {"malformed": malformed, "unknown": unknown, "not_toml": not_toml}


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("missing baseline", "missing.txt: no such file"),
        ("malformed baseline", "malformed.txt, line 3"),
        ("unknown key", "unknown key 'raise_scor'"),
        ("invalid toml", "not valid TOML"),
        ("missing config", "no such configuration file"),
        ("bad start", "--start 'monday'"),
        ("bad patient", "--patient 'Patient Zero'"),
    ],
)
def test_errors_are_one_line(
    files: dict[str, Path], bad_inputs: dict[str, Path], tmp_path: Path, case: str, expect: str
) -> None:
    base = ["alerts", str(files["calm_in"])]
    extra = {
        "missing baseline": ["--baseline", str(files["calm1"]), str(tmp_path / "missing.txt")],
        "malformed baseline": ["--baseline", str(bad_inputs["malformed"])],
        "unknown key": ["--config", str(bad_inputs["unknown"])],
        "invalid toml": ["--config", str(bad_inputs["not_toml"])],
        "missing config": ["--config", str(tmp_path / "nope.toml")],
        "bad start": ["--start", "monday"],
        "bad patient": ["--patient", "Patient Zero"],
    }[case]
    out = tmp_path / "out.jsonl"
    r = hrvstream([*base, *extra, "-o", str(out)])
    assert r.returncode != 0
    assert expect in _one_error_line(r.stderr)
    assert not out.exists()  # nothing half-written


def test_usage_error_exits_2(files: dict[str, Path]) -> None:
    r = hrvstream(["alerts", str(files["calm_in"]), "--window"])
    assert r.returncode == 2
    assert "Traceback" not in r.stderr


# -- the parts ------------------------------------------------------------------------------


UTC = ZoneInfo("UTC")
DAY = 86400.0


def test_place_before_daily_sessions_land_on_consecutive_days() -> None:
    start = parse_start(DEFAULT_START, UTC)
    starts = place_before([7200.0, 7200.0, 7200.0], start, UTC)
    assert starts == [start - 3 * DAY, start - 2 * DAY, start - DAY]


def test_place_before_keeps_an_hour_between_recordings() -> None:
    start = parse_start(DEFAULT_START, UTC)
    # 22.5 h ends 1.5 h before the input: the previous day; 23.5 h would leave 0.5 h
    assert place_before([22.5 * 3600], start, UTC) == [start - DAY]
    assert place_before([23.5 * 3600], start, UTC) == [start - 2 * DAY]
    durations = [23.5 * 3600, 30 * 3600, 600.0]
    starts = place_before(durations, start, UTC)
    ends = [s + d for s, d in zip(starts, durations, strict=True)]
    for end, nxt in zip(ends, [*starts[1:], start], strict=True):
        assert nxt - end >= 3600.0


def test_place_before_keeps_the_local_clock_across_a_dst_change() -> None:
    london = ZoneInfo("Europe/London")
    start = parse_start("2026-03-30T08:00", london)  # BST, the day after the change
    starts = place_before([3600.0, 3600.0], start, london)
    local = [datetime.fromtimestamp(s, london).isoformat() for s in starts]
    assert local == ["2026-03-28T08:00:00+00:00", "2026-03-29T08:00:00+01:00"]


def test_parse_start() -> None:
    assert parse_start("2026-01-05T08:00", UTC) == parse_start("2026-01-05T09:00+01:00", UTC)
    with pytest.raises(ConfigError, match="ISO 8601"):
        parse_start("5 Jan", UTC)


def test_config_from_toml() -> None:
    assert alerts_config_from_toml({}, "f").default.raise_score == 2.0
    cfg = alerts_config_from_toml({"alerts": {"raise_score": 3.0}, "mqtt": {"url": "x"}}, "f")
    assert cfg.default.raise_score == 3.0
    assert alerts_config_from_toml({"raise_score": 2.5}, "f").default.raise_score == 2.5
    with pytest.raises(ConfigError, match=r"no \[alerts\] table"):
        alerts_config_from_toml({"mqtt": {"url": "x"}}, "f")
    with pytest.raises(ConfigError, match="unknown key 'raise'"):
        alerts_config_from_toml({"alerts": {"raise": 3.0}}, "f")


def test_evaluate_is_deterministic_and_counts_add_up() -> None:
    calm = [_session(11), _session(12)]
    stress = _session(13, stress=True)
    a = evaluate(stress, calm, AlertConfigSet())
    b = evaluate(stress, calm, AlertConfigSet())
    assert a.alerts == b.alerts
    assert len(a.alerts) == 1
    s = a.summary
    assert s["windows"] == len(a.trace.windows) == sum(s["windows_by_state"].values())
    assert s["windows_judged"] == sum(
        s["windows_by_state"][k] for k in ("calm", "elevated", "stressed")
    )
    assert s["alerts_per_24h"] == pytest.approx(24.0 / (stress.duration_s / 3600.0))
    assert [p.session for p in a.placements] == ["baseline-1", "baseline-2", "input"]
    json.dumps(s, allow_nan=False)  # JSON-able
