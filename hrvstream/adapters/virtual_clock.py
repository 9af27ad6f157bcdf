"""Clocks for receivers: the wall clock, and a virtual clock that replay drives.

A receiver timestamps each notification it gets with ``clock.now()``, inside its bleak
notification callback. Live, that is :class:`SystemClock`. During replay through the
virtual strap (:mod:`hrvstream.adapters.virtual_strap`) it is a :class:`VirtualClock`
that the strap drives so that ``clock.now()`` returns the *recording's* time of the
notification being delivered:

* at a finite replay speed the clock runs with the event loop,
  ``now = start + (loop.time() - t0) * speed``, re-anchored by the strap when playback
  starts or resumes;
* at maximum speed (``speed=None``) the clock is frozen and the strap sets it to each
  notification's recorded time just before sending it, and waits until the receiver's
  callback has returned before it moves on (lockstep), so the callback reads exactly the
  recorded time.

The receiver only ever calls :meth:`Clock.now`; nothing in its code knows whether the
time is real or replayed.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "VirtualClock"]


@runtime_checkable
class Clock(Protocol):
    """Anything that tells the time in seconds."""

    def now(self) -> float:
        """Return the current time in seconds.

        Returns
        -------
        float
            Seconds on this clock's time axis (Unix time for :class:`SystemClock`, the
            recording's time axis for a :class:`VirtualClock` driven by replay).
        """
        ...


class SystemClock:
    """The wall clock: :func:`time.time`, seconds since the Unix epoch."""

    def now(self) -> float:
        """Return :func:`time.time`.

        Returns
        -------
        float
            Seconds since the Unix epoch.
        """
        return time.time()

    def __repr__(self) -> str:
        return "SystemClock()"


def _check_time(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out


class VirtualClock:
    """A clock set or run by replay instead of by the wall.

    Two states:

    *frozen* (the initial state, and after :meth:`set` or :meth:`freeze`)
        :meth:`now` returns the value last set.
    *running* (after :meth:`run`)
        :meth:`now` returns ``start + (loop.time() - t0) * speed``, where ``t0`` is the
        event loop's time when :meth:`run` was called.

    Parameters
    ----------
    start:
        The initial (frozen) time, seconds. Default ``0.0``.

    Examples
    --------
    >>> c = VirtualClock()
    >>> c.set(12.5)
    >>> c.now()
    12.5
    """

    def __init__(self, start: float = 0.0) -> None:
        self._start = _check_time("start", start)
        self._speed: float | None = None
        self._t0 = 0.0
        self._loop_time: Callable[[], float] | None = None

    def now(self) -> float:
        """Return the current virtual time.

        Returns
        -------
        float
            The frozen value, or the running value computed from the event loop's time.
        """
        if self._speed is None or self._loop_time is None:
            return self._start
        return self._start + (self._loop_time() - self._t0) * self._speed

    def set(self, t_s: float) -> None:
        """Freeze the clock at ``t_s``.

        Parameters
        ----------
        t_s:
            The time :meth:`now` returns from now on, seconds.

        Raises
        ------
        TypeError, ValueError
            If ``t_s`` is not a finite number.
        """
        self._start = _check_time("t_s", t_s)
        self._speed = None
        self._loop_time = None

    def freeze(self) -> None:
        """Stop the clock at its current time (no-op when already frozen)."""
        self.set(self.now())

    def run(self, t_s: float, speed: float, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Let the clock run from ``t_s`` at ``speed`` times the event loop's rate.

        Parameters
        ----------
        t_s:
            The value of :meth:`now` at this instant, seconds.
        speed:
            Virtual seconds per event-loop second; finite and ``> 0``.
        loop:
            The event loop whose :meth:`~asyncio.AbstractEventLoop.time` drives the
            clock; the running loop when ``None``.

        Raises
        ------
        TypeError, ValueError
            If ``t_s`` is not finite or ``speed`` is not finite and positive.
        RuntimeError
            If ``loop`` is ``None`` and no event loop is running.
        """
        start = _check_time("t_s", t_s)
        rate = _check_time("speed", speed)
        if rate <= 0:
            raise ValueError(f"speed must be > 0, got {speed!r}")
        the_loop = loop if loop is not None else asyncio.get_running_loop()
        self._loop_time = the_loop.time
        self._t0 = the_loop.time()
        self._start = start
        self._speed = rate

    @property
    def running(self) -> bool:
        """Whether the clock advances by itself (:meth:`run`) rather than being frozen."""
        return self._speed is not None

    @property
    def speed(self) -> float | None:
        """The running rate, or ``None`` while frozen."""
        return self._speed

    def __repr__(self) -> str:
        state = f"running x{self._speed}" if self._speed is not None else "frozen"
        return f"VirtualClock(now={self.now()!r}, {state})"
