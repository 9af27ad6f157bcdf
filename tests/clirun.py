"""Running ``hrvstream`` as a user does: a separate process, its exit code and output."""

from __future__ import annotations

import subprocess
import sys


def hrvstream(
    args: list[str], *, input: str | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """``hrvstream ARGS`` in a subprocess (``python -m hrvstream.cli``)."""
    return subprocess.run(
        [sys.executable, "-m", "hrvstream.cli", *args],
        input=input,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
