"""Configuration: a TOML file, then ``HRVSTREAM_*`` environment overrides.

Keys are flat within a section; an environment variable ``HRVSTREAM_<SECTION>_<KEY>``
(upper case) overrides ``[section] key``, e.g. ``HRVSTREAM_BROKER_URL`` for
``[broker] url``. Secrets are never read from the file itself: ``password_file`` names a
file, or ``HRVSTREAM_MQTT_PASSWORD`` holds the password; neither is ever printed.

An agent's file::

    [agent]
    patient = "p-7f3a"            # a pseudonym: never a name, never a BLE address
    straps = ["C4:5A:12:34:56:78"]  # addresses or advertised names
    spool = "/var/lib/hrvstream/spool.db"
    spool_max_mb = 512

    [broker]
    url = "mqtts://p-7f3a@broker.clinic.example:8883"
    ca_file = "/etc/hrvstream/ca.pem"
    password_file = "/etc/hrvstream/mqtt-password"

    [hrv]
    window_s = 300
    metrics_every_s = 5
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hrvstream.errors import ConfigError

ENV_PREFIX = "HRVSTREAM_"


def load_toml(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """The file's sections (``{}`` without a file); a clear error for a bad file."""
    if path is None:
        return {}
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    out: dict[str, dict[str, Any]] = {}
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{p}: {section!r} must be a [section] of keys")
        out[section] = dict(values)
    return out


def with_env(
    sections: Mapping[str, Mapping[str, Any]],
    known: Mapping[str, Mapping[str, type]],
    env: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Apply ``HRVSTREAM_<SECTION>_<KEY>`` overrides for the ``known`` keys, typed."""
    environ = os.environ if env is None else env
    out = {s: dict(v) for s, v in sections.items()}
    for section, keys in known.items():
        for key, kind in keys.items():
            name = f"{ENV_PREFIX}{section}_{key}".upper()
            if name in environ:
                out.setdefault(section, {})[key] = _convert(name, environ[name], kind)
    return out


def _convert(name: str, text: str, kind: type) -> Any:
    try:
        if kind is bool:
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind is list:
            return [p.strip() for p in text.split(",") if p.strip()]
        return kind(text)
    except ValueError:
        expected = "true or false" if kind is bool else f"a {kind.__name__}"
        raise ConfigError(f"{name}={text!r}: expected {expected}") from None


def get(
    sections: Mapping[str, Mapping[str, Any]],
    section: str,
    key: str,
    kind: type,
    default: Any = ...,
) -> Any:
    """``[section] key`` as ``kind``, or ``default``; a missing required key is an error."""
    value = sections.get(section, {}).get(key, default)
    if value is ...:
        env = f"{ENV_PREFIX}{section}_{key}".upper()
        raise ConfigError(f"missing [{section}] {key} (or the environment variable {env})")
    if value is None or value is default:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is list and isinstance(value, list):
        return value
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"[{section}] {key} = {value!r}: expected a {kind.__name__}")
    return value
