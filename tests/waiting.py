"""Waiting in tests: bounded event loops, polling a condition, reading /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


def run(body: Callable[[], Awaitable[None]], timeout: float) -> None:
    """Run a test body in a fresh event loop, bounded."""

    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await body()

    asyncio.run(bounded())


async def until(
    check: Callable[[], bool | Awaitable[bool]],
    what: str | Callable[[], str],
    timeout: float,
    interval: float = 0.02,
) -> None:
    """Poll ``check`` until true; fail after ``timeout`` s saying ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            detail = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g} s waiting for {detail}")
        await asyncio.sleep(interval)  # the polling interval, not a synchronisation


def parse_prometheus(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` of a Prometheus text page (checks its basic syntax)."""
    out: dict[str, float] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if not line or line.startswith("#"):
            continue
        key, value = line.rsplit(" ", 1)
        base = key.split("{", 1)[0]
        assert any(base == t or base in (f"{t}_sum", f"{t}_count") for t in typed), line
        out[key] = float(value)
    return out
