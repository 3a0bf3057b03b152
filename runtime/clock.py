"""Clocks injected into entities and supervisors.

Entity and supervisor code never calls :func:`time.monotonic` or
:func:`asyncio.sleep` directly: it asks its clock, so tests can run hours of
timers in microseconds with :class:`ManualClock`.

The city's time can run faster than the machine's (:class:`ScaledClock`,
``commandpost demo --clock-speed N``): every process of a service derives it
from the same :class:`ClockSpec`, so that the hosts, the device sessions, the
simulators and the admin web agree on the simulated time. What the city sees
runs on that clock: entity timers and timestamps, schedules, telemetry stamps,
crews driving and lamps burning. The transport keeps the machine's time: poll
and publication cadences, timeouts and liveness, checkpoints, supervision and
retries (a code path paced by the machine divides by :attr:`Clock.speed`).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol
from zoneinfo import ZoneInfo

from runtime.errors import ConfigError

#: The city's time zone (daylight saving included): schedules and reports are in local time.
CITY_TZ: Final = ZoneInfo("Europe/Paris")


class Clock(Protocol):
    """What time is it, and wait for a while."""

    @property
    def speed(self) -> float:
        """Seconds of this clock per second of the machine's (1 but for a :class:`ScaledClock`)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for deadlines and windows)."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch, UTC (for timestamps)."""

    async def sleep(self, seconds: float) -> None:
        """Suspend the caller for ``seconds`` of this clock's time."""


class SystemClock:
    """The real clock."""

    speed = 1.0

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when a test calls :meth:`advance`.

    Sleepers wake in deadline order; ``advance`` yields to the loop after each
    wake-up so that the woken coroutines run before time moves on.
    """

    speed = 1.0

    def __init__(self, start: float = 1_000.0, wall_offset: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_offset
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut

    @property
    def pending(self) -> int:
        """How many sleepers are waiting."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking every sleeper due on the way."""
        target = self._now + seconds
        await _settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            due, _, fut = heapq.heappop(self._sleepers)
            self._now = max(self._now, due)
            if not fut.done():
                fut.set_result(None)
            await _settle()
        self._now = target
        await _settle()


@dataclass(frozen=True, slots=True)
class ClockSpec:
    """The city's clock, shared by every process of a service.

    At the machine's epoch time ``origin`` the city's time was ``start``; since
    then it has run ``speed`` times as fast. ``speed`` 1 with ``start`` equal
    to ``origin`` is the machine's own clock.
    """

    speed: float = 1.0
    origin: float = 0.0
    start: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.speed) and 0 < self.speed <= MAX_SPEED):
            raise ConfigError(f"clock speed must be in (0, {MAX_SPEED:g}], not {self.speed!r}")
        if not (math.isfinite(self.origin) and math.isfinite(self.start)):
            raise ConfigError("clock origin and start must be finite epoch seconds")

    @classmethod
    def starting_now(cls, speed: float = 1.0, start: float | None = None) -> ClockSpec:
        """The city's clock from now, at ``speed``, from ``start`` (default: now)."""
        now = time.time()
        return cls(speed=float(speed), origin=now, start=now if start is None else float(start))

    @property
    def real(self) -> bool:
        """Whether this is the machine's own clock."""
        return self.speed == 1.0 and self.start == self.origin

    def to_wire(self) -> dict[str, float]:
        return {"speed": self.speed, "origin": self.origin, "start": self.start}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any] | None) -> ClockSpec:
        if not d:
            return cls()
        try:
            return cls(speed=float(d["speed"]), origin=float(d["origin"]),
                       start=float(d["start"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"bad clock spec {dict(d)!r}: {exc}") from None

    def clock(self) -> Clock:
        """This process's clock on this spec."""
        return SystemClock() if self.real else ScaledClock(self)


#: The fastest city clock: a day in 86.4 s.
MAX_SPEED = 1000.0


class ScaledClock:
    """The city's time of a :class:`ClockSpec`: ``speed`` times the machine's.

    ``time()`` is the same in every process on the spec; ``monotonic()`` runs
    at the same speed from this process's own origin; ``sleep(s)`` waits
    ``s / speed`` seconds of the machine's time.
    """

    def __init__(self, spec: ClockSpec) -> None:
        self.spec = spec
        self.speed = spec.speed
        self._mono0 = time.monotonic()

    def monotonic(self) -> float:
        return self._mono0 + (time.monotonic() - self._mono0) * self.speed

    def time(self) -> float:
        return self.spec.start + (time.time() - self.spec.origin) * self.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)


def clock_from_wire(d: Mapping[str, Any] | None) -> Clock:
    """The clock of a spec as :meth:`ClockSpec.to_wire` wrote it (the machine's when none)."""
    return ClockSpec.from_wire(d).clock()


async def _settle(rounds: int = 20) -> None:
    # Several loop iterations: a woken coroutine may schedule others in turn.
    for _ in range(rounds):
        await asyncio.sleep(0)
