"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.infra"]

_REPO = Path(__file__).resolve().parent.parent


def shared_recordings_dir() -> Path | None:
    """The directory of real recordings (``../shared/data/recordings`` or $HRVSTREAM_RECORDINGS)."""
    env = os.environ.get("HRVSTREAM_RECORDINGS")
    candidates = [Path(env)] if env else []
    candidates.append(_REPO.parent / "shared" / "data" / "recordings")
    for c in candidates:
        if c.is_dir():
            return c
    return None


def require(what: str) -> None:
    """Skip a test for a missing dependency, except in CI, where it is a failure."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {what} is missing")
    pytest.skip(f"{what} is missing")


@pytest.fixture(scope="session")
def recordings() -> Path:
    """Path of the shared real recordings; missing in CI is a failure, not a skip."""
    d = shared_recordings_dir()
    if d is None:
        require("../shared/data/recordings")
        raise AssertionError("unreachable")
    return d
