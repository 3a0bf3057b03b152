"""Bus tracking for signal priority: positions in, check-ins and check-outs out.

The tracker is pure, synchronous code. It does no I/O, and every time is given
to it: each sample's own ``ts`` and the caller's ``now``, both on the city's
clock. The priority pool feeds it each bus position and runs :meth:`expire`
from a timer. It turns the positions into the events of NTCIP 1211's
priority requests, per crossroad approach::

    tracker = BusTracker(inventory.bus_lines)
    for event in tracker.update("bus-dijon-0001", sample, now=clock.time()):
        ...                                   # check_in, check_out or cancel
    for event in tracker.expire(clock.time()):  # every second or so
        ...

**Where a bus is.** Each position is placed on the bus's line
(:meth:`~runtime.transit.LineGeometry.locate`, near where the bus last was):
``s``, its distance along the path, and ``offset``, its distance off it. The
bus's direction is the one it reports. The position is checked against it:
its heading (while it moves at 2 m/s or more) must follow the line that way,
and its last move along the line (5 m or more) must go that way.

**Check-in.** A bus is checked in at one crossroad at a time: the next one
ahead whose stop line it has not passed. It checks in when it is within
``detection_distance_m`` of that stop line, or within ``detection_eta_s`` of it
at its speed. The bus must be on the line (``offset`` within ``off_line_m``)
and not dwelling at a stop before the stop line. The event carries the
crossroad, the approach the bus drives in on, the ETA at the stop line (at the
bus's speed, or the line's free-flow speed below 1 m/s), the direction, and
the bus's lateness:

* On a line with a timetable, the lateness is the bus's own ``delay_s``
  (positive: late).
* On a line without one, or when ``delay_s`` is missing, it is measured
  against the free-flow schedule: the time since the bus left its trip's
  first stop (its last position standing there), minus the time the line's
  free-flow speed and :data:`~runtime.transit.DWELL_S` at each stop passed
  would take to get here. It is None until the tracker has seen the bus
  leave that stop.

**Check-out and cancel.** Every check-in is followed by exactly one check-out
or one cancel:

* ``check_out`` when the bus passes the stop line.
* ``cancel`` with a :class:`CancelReason`:

  * ``dwell`` when the bus stands at a stop before the stop line (within
    ``stop_radius_m``). The green would be wasted. It checks in again once it
    moves off.
  * ``off_line`` when it leaves its line.
  * ``reversed`` when it turns back.
  * ``direction`` when its position no longer fits its direction.
  * ``line_changed`` when it reports another line.
  * ``relocated`` when its position jumps and stays there (see below).
  * ``stale`` when no fresh position arrives within ``max_age_s``.
  * ``dropped`` when the pool forgets the bus (:meth:`drop`).

**Bad input.** Bad input is ignored without an event and counted in
:attr:`BusTracker.ignored` by reason:

* ``malformed``: not a position.
* ``unknown_line``.
* ``stale``: older than ``max_age_s``.
* ``future``: more than ``max_skew_s`` ahead of ``now``.
* ``out_of_order``: not newer than the last accepted one. Duplicates count
  here. The order is that of ``ts``, since a device's ``seq`` restarts with
  the device.
* ``jump``: farther from the last accepted position than ``max_speed_mps``
  allows in the time between them, plus GNSS slack. Two consecutive jumps
  that agree with each other mean the bus really is there. The tracker then
  takes the new position, after a ``relocated`` cancel.

Ages (``stale``, ``future``) are judged in the machine's seconds, as
:mod:`actors.vehicle` does. On an accelerated city clock (``clock_speed`` > 1)
the devices publish at the machine's cadence, so the tracker divides city
seconds by the speed.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

from runtime.errors import ConfigError, MalformedMessageError
from runtime.geo import distance_m
from runtime.transit import (
    DIRECTIONS,
    DWELL_S,
    INBOUND,
    OUTBOUND,
    BusLine,
    Crossing,
    LineGeometry,
    angle_diff,
    line_geometry,
)

if TYPE_CHECKING:
    from runtime.inventory import Inventory

__all__ = [
    "DETECTION_DISTANCE_M",
    "DETECTION_ETA_S",
    "MAX_AGE_S",
    "MAX_SKEW_S",
    "MAX_SPEED_MPS",
    "OFF_LINE_M",
    "STOP_RADIUS_M",
    "BusSample",
    "BusTracker",
    "CancelReason",
    "EventKind",
    "TrackEvent",
]

#: A bus checks in this close to the stop line, ...
DETECTION_DISTANCE_M: Final = 150.0
#: ... or this many seconds from it at its speed.
DETECTION_ETA_S: Final = 20.0
#: A position older than this (machine seconds) is stale: the bus profile's ``max_age_s``.
MAX_AGE_S: Final = 3.0
#: A bus standing this close to a stop dwells there.
STOP_RADIUS_M: Final = 20.0
#: A bus this far from its line's path has left it.
OFF_LINE_M: Final = 30.0
#: No bus moves faster (144 km/h): a position that needs more speed is a jump.
MAX_SPEED_MPS: Final = 40.0
#: A sample stamped further ahead of ``now`` than this (machine seconds) is from the future.
MAX_SKEW_S: Final = 2.0
#: A bus's state is forgotten after this long without a position (machine seconds).
FORGET_AFTER_S: Final = 600.0

# GNSS error allowed on top of the distance a bus may drive between two positions.
_GNSS_SLACK_M: Final = 25.0
# Slower than this, a bus stands; from this speed on, its heading means something.
_STOPPED_MPS: Final = 0.5
_MOVING_MPS: Final = 2.0
# Below this speed the ETA uses the line's free-flow speed.
_ETA_MIN_MPS: Final = 1.0
# A heading within this of the line's direction follows it.
_HEADING_FIT_DEG: Final = 60.0
# A move along the line this long tells which way the bus goes.
_MOTION_M: Final = 5.0


class EventKind(StrEnum):
    """The kinds of :class:`TrackEvent` (NTCIP 1211's request, clear and cancel)."""

    CHECK_IN = "check_in"
    CHECK_OUT = "check_out"
    CANCEL = "cancel"


class CancelReason(StrEnum):
    """Why a check-in ended without the bus passing the stop line (module doc)."""

    DWELL = "dwell"
    OFF_LINE = "off_line"
    REVERSED = "reversed"
    DIRECTION = "direction"
    LINE_CHANGED = "line_changed"
    RELOCATED = "relocated"
    STALE = "stale"
    DROPPED = "dropped"


@dataclass(frozen=True, slots=True)
class BusSample:
    """One bus position, as the bus profile publishes it (``devices/profiles/bus.toml``)."""

    ts: float
    lat: float
    lon: float
    speed: float
    heading: float
    line: str
    direction: str | None = None
    delay_s: float | None = None
    seq: int | None = None

    @classmethod
    def of(cls, sample: BusSample | Mapping[str, Any]) -> BusSample:
        """``sample`` as a :class:`BusSample`, checked.

        Raises :class:`MalformedMessageError` when it is not a usable position.
        """
        if isinstance(sample, BusSample):
            return cls._checked(sample)
        if not isinstance(sample, Mapping):
            raise MalformedMessageError(f"a bus sample is a map, not {type(sample).__name__}")
        missing = [k for k in ("ts", "lat", "lon", "speed", "heading", "line") if k not in sample]
        if missing:
            raise MalformedMessageError(f"bus sample without {', '.join(missing)}")
        delay = sample.get("delay_s")
        seq = sample.get("seq")
        direction = sample.get("direction")
        return cls._checked(cls(
            ts=sample["ts"], lat=sample["lat"], lon=sample["lon"], speed=sample["speed"],
            heading=sample["heading"], line=sample["line"],
            direction=direction if isinstance(direction, str) else None,
            delay_s=delay if _finite(delay) else None,
            seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else None))

    @classmethod
    def _checked(cls, s: BusSample) -> BusSample:
        for name in ("ts", "lat", "lon", "speed", "heading"):
            if not _finite(getattr(s, name)):
                raise MalformedMessageError(f"bus sample {name} {getattr(s, name)!r} is not a "
                                            "finite number")
        if not (-90.0 <= s.lat <= 90.0 and -180.0 <= s.lon <= 180.0):
            raise MalformedMessageError(f"bus position ({s.lat}, {s.lon}) outside WGS84's range")
        if s.speed < 0:
            raise MalformedMessageError(f"bus speed {s.speed} is negative")
        if not isinstance(s.line, str) or not s.line:
            raise MalformedMessageError(f"bus line {s.line!r} is not a line id")
        return s


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class TrackEvent:
    """A check-in, check-out or cancel of one bus at one crossroad approach.

    ``request`` numbers the bus's check-ins from 1. Its check-out or cancel
    carries the same number. ``ts`` is the sample's time, or ``now`` for
    events of :meth:`BusTracker.expire` and :meth:`BusTracker.drop`.
    ``eta_s``, ``lateness_s`` and ``distance_m`` (to the stop line) describe a
    check-in. ``reason`` is set only on a cancel.
    """

    kind: EventKind
    bus_id: str
    line: str
    crossroad: str
    approach: int
    direction: str
    request: int
    ts: float
    eta_s: float | None = None
    lateness_s: float | None = None
    distance_m: float | None = None
    reason: CancelReason | None = None


@dataclass(slots=True)
class _LineData:
    line: BusLine
    geometry: LineGeometry
    stop_s: tuple[float, ...]
    outbound: tuple[Crossing, ...]  # by outbound stop line
    outbound_s: tuple[float, ...]
    inbound: tuple[Crossing, ...]  # by inbound stop line
    inbound_s: tuple[float, ...]


@dataclass(slots=True)
class _Active:
    crossing: Crossing
    direction: str
    request: int
    event: TrackEvent


@dataclass(slots=True)
class _Bus:
    line: str
    ts: float = -math.inf
    lat: float = 0.0
    lon: float = 0.0
    s: float | None = None  # None: off its line, or not yet placed
    active: _Active | None = None
    requests: int = 0
    pending: tuple[float, float, float] | None = None  # a jump: (ts, lat, lon)
    trip_direction: str | None = None
    trip_start_ts: float | None = None
    seen: bool = False


class BusTracker:
    """Check-ins, check-outs and cancels of buses at the crossroads of their lines.

    ``lines`` are the inventory's bus lines (a mapping by id, or an iterable).
    Their crossings already hold the crossroads' geometry the tracker needs:
    the approach a bus drives in on in each direction and the stop line's
    distance along the path. The thresholds are described in the module doc.
    Not thread-safe: one tracker per pool member.
    """

    def __init__(
        self,
        lines: Mapping[str, BusLine] | Iterable[BusLine],
        *,
        detection_distance_m: float = DETECTION_DISTANCE_M,
        detection_eta_s: float = DETECTION_ETA_S,
        max_age_s: float = MAX_AGE_S,
        stop_radius_m: float = STOP_RADIUS_M,
        off_line_m: float = OFF_LINE_M,
        max_speed_mps: float = MAX_SPEED_MPS,
        max_skew_s: float = MAX_SKEW_S,
        clock_speed: float = 1.0,
        forget_after_s: float = FORGET_AFTER_S,
    ) -> None:
        for name, value in (("detection_distance_m", detection_distance_m),
                            ("detection_eta_s", detection_eta_s), ("max_age_s", max_age_s),
                            ("stop_radius_m", stop_radius_m), ("off_line_m", off_line_m),
                            ("max_speed_mps", max_speed_mps), ("max_skew_s", max_skew_s),
                            ("clock_speed", clock_speed), ("forget_after_s", forget_after_s)):
            if not _finite(value) or value < 0 or (value == 0 and name == "clock_speed"):
                raise ConfigError(f"bus tracker: {name} must be a number >= 0, not {value!r}")
        self.detection_distance_m = float(detection_distance_m)
        self.detection_eta_s = float(detection_eta_s)
        self.max_age_s = float(max_age_s)
        self.stop_radius_m = float(stop_radius_m)
        self.off_line_m = float(off_line_m)
        self.max_speed_mps = float(max_speed_mps)
        self.max_skew_s = float(max_skew_s)
        self.clock_speed = float(clock_speed)
        self.forget_after_s = float(forget_after_s)
        items = lines.values() if isinstance(lines, Mapping) else lines
        self._lines: dict[str, _LineData] = {}
        for line in items:
            geometry = line_geometry(line)
            stop_s, _ = geometry.check_stops(line.stops)
            outbound = tuple(sorted(line.crossings, key=lambda c: c.s_m))
            inbound = tuple(sorted(line.crossings, key=lambda c: c.inbound_s_m))
            self._lines[line.id] = _LineData(
                line, geometry, stop_s, outbound, tuple(c.s_m for c in outbound),
                inbound, tuple(c.inbound_s_m for c in inbound))
        self._buses: dict[str, _Bus] = {}
        #: Samples ignored, by reason (module doc).
        self.ignored: Counter[str] = Counter()

    @classmethod
    def from_inventory(cls, inventory: Inventory, **options: Any) -> BusTracker:
        """A tracker of the inventory's bus lines (``options`` as for the constructor)."""
        return cls(inventory.bus_lines, **options)

    # -- queries

    def checked_in(self) -> dict[str, TrackEvent]:
        """The open check-ins (their check-in events), by bus."""
        return {bus_id: bus.active.event for bus_id, bus in self._buses.items()
                if bus.active is not None}

    def buses(self) -> tuple[str, ...]:
        """The buses the tracker follows."""
        return tuple(self._buses)

    # -- input

    def update(self, bus_id: str, sample: BusSample | Mapping[str, Any],
               now: float) -> list[TrackEvent]:
        """The events that the position ``sample`` of ``bus_id``, received at ``now``,
        brings (often none)."""
        try:
            s = BusSample.of(sample)
        except MalformedMessageError:
            self.ignored["malformed"] += 1
            return []
        age = (now - s.ts) / self.clock_speed
        if age < -self.max_skew_s:
            self.ignored["future"] += 1
            return []
        if age > self.max_age_s:
            self.ignored["stale"] += 1
            return []
        data = self._lines.get(s.line)
        if data is None:
            self.ignored["unknown_line"] += 1
            return []
        bus = self._buses.get(bus_id)
        if bus is None:
            bus = self._buses[bus_id] = _Bus(line=s.line)
        elif s.ts <= bus.ts:
            self.ignored["out_of_order"] += 1
            return []
        events: list[TrackEvent] = []
        if bus.active is not None and (now - bus.ts) / self.clock_speed > self.max_age_s:
            events.append(self._end(bus_id, bus, CancelReason.STALE, s.ts))
        if bus.line != s.line:
            if bus.active is not None:
                events.append(self._end(bus_id, bus, CancelReason.LINE_CHANGED, s.ts))
            bus.line, bus.s, bus.trip_direction, bus.trip_start_ts = s.line, None, None, None
        if bus.seen and not self._plausible(bus.ts, bus.lat, bus.lon, s):
            if bus.pending is None or not self._plausible(*bus.pending, s):
                bus.pending = (s.ts, s.lat, s.lon)
                self.ignored["jump"] += 1
                return events
            # Two positions that agree with each other: the bus really is here.
            if bus.active is not None:
                events.append(self._end(bus_id, bus, CancelReason.RELOCATED, s.ts))
            bus.s, bus.trip_direction, bus.trip_start_ts = None, None, None
        bus.pending = None
        events += self._track(bus_id, bus, data, s)
        return events

    def expire(self, now: float) -> list[TrackEvent]:
        """Cancels (``stale``) of check-ins whose bus has sent no fresh position within
        ``max_age_s``; forgets buses silent for ``forget_after_s`` (machine seconds)."""
        events: list[TrackEvent] = []
        for bus_id, bus in list(self._buses.items()):
            silent = (now - bus.ts) / self.clock_speed
            if bus.active is not None and (silent > self.max_age_s
                                           or silent > self.forget_after_s):
                events.append(self._end(bus_id, bus, CancelReason.STALE, now))
            if silent > self.forget_after_s:
                del self._buses[bus_id]
        return events

    def drop(self, bus_id: str, now: float) -> list[TrackEvent]:
        """Forget ``bus_id``: the cancel (``dropped``) of its check-in if it has one."""
        bus = self._buses.pop(bus_id, None)
        if bus is None or bus.active is None:
            return []
        return [self._end(bus_id, bus, CancelReason.DROPPED, now)]

    # -- internals

    def _plausible(self, ts: float, lat: float, lon: float, s: BusSample) -> bool:
        """Whether a bus at ``(lat, lon)`` at ``ts`` can be at ``s`` by ``s.ts``."""
        if s.ts <= ts:
            return False
        return distance_m((lat, lon), (s.lat, s.lon)) <= (
            self.max_speed_mps * (s.ts - ts) + _GNSS_SLACK_M)

    def _end(self, bus_id: str, bus: _Bus, reason: CancelReason | None,
             ts: float) -> TrackEvent:
        """The check-out (``reason`` None) or cancel that closes the bus's check-in."""
        active = bus.active
        assert active is not None
        bus.active = None
        return TrackEvent(
            EventKind.CHECK_OUT if reason is None else EventKind.CANCEL, bus_id, bus.line,
            active.crossing.crossroad_id, active.crossing.approach(active.direction),
            active.direction, active.request, ts, reason=reason)

    def _locate(self, bus: _Bus, data: _LineData, s: BusSample) -> tuple[float, float]:
        geometry = data.geometry
        if bus.s is not None:
            # Near where the bus was: a path that passes near itself does not fool it.
            reach = self.max_speed_mps * (s.ts - bus.ts) + self.off_line_m + 50.0
            along, offset = geometry.locate(s.lat, s.lon, start_m=bus.s - reach,
                                            end_m=bus.s + reach)
            if offset <= self.off_line_m:
                return along, offset
        return geometry.locate(s.lat, s.lon)

    def _direction(self, bus: _Bus, data: _LineData, s: BusSample, along: float,
                   previous: float | None) -> tuple[str | None, str | None]:
        """The bus's direction (None when it does not fit what it does), and the
        direction its heading or move says when that contradicts the direction."""
        heading: str | None = None
        if s.speed >= _MOVING_MPS:
            fits = [d for d in DIRECTIONS
                    if angle_diff(s.heading, data.geometry.heading_at(along, d))
                    <= _HEADING_FIT_DEG]
            heading = fits[0] if len(fits) == 1 else None
        motion: str | None = None
        if previous is not None and abs(along - previous) >= _MOTION_M:
            motion = OUTBOUND if along > previous else INBOUND
        claimed = s.direction if s.direction in DIRECTIONS else None
        direction = claimed or heading or motion
        for evidence in (heading, motion):
            if evidence is not None and evidence != direction:
                return None, evidence
        return direction, None

    def _track(self, bus_id: str, bus: _Bus, data: _LineData,
               s: BusSample) -> list[TrackEvent]:
        events: list[TrackEvent] = []
        along, offset = self._locate(bus, data, s)
        previous = bus.s
        bus.ts, bus.lat, bus.lon, bus.seen = s.ts, s.lat, s.lon, True
        if offset > self.off_line_m:
            bus.s = None
            if bus.active is not None:
                events.append(self._end(bus_id, bus, CancelReason.OFF_LINE, s.ts))
            return events
        bus.s = along
        direction, against = self._direction(bus, data, s, along, previous)
        active = bus.active
        if active is not None and direction != active.direction:
            turned = (direction or against) not in (None, active.direction)
            events.append(self._end(bus_id, bus, CancelReason.REVERSED if turned
                                    else CancelReason.DIRECTION, s.ts))
        if direction is None:
            return events
        self._follow_trip(bus, data, along, direction, s)
        if bus.active is not None:
            crossing = bus.active.crossing
            if self._ahead(crossing, direction, along) <= 0.0:
                events.append(self._end(bus_id, bus, None, s.ts))
            elif self._dwelling(data, crossing, direction, along, s.speed):
                events.append(self._end(bus_id, bus, CancelReason.DWELL, s.ts))
                return events
            else:
                return events
        nxt = self._next(data, direction, along)
        if nxt is None or self._dwelling(data, nxt, direction, along, s.speed):
            return events
        distance = self._ahead(nxt, direction, along)
        speed = s.speed if s.speed >= _ETA_MIN_MPS else data.line.free_flow_speed_mps
        eta = distance / speed
        if distance > self.detection_distance_m and not (
                s.speed >= _ETA_MIN_MPS and eta <= self.detection_eta_s):
            return events
        bus.requests += 1
        event = TrackEvent(
            EventKind.CHECK_IN, bus_id, data.line.id, nxt.crossroad_id, nxt.approach(direction),
            direction, bus.requests, s.ts, eta_s=round(eta, 1),
            lateness_s=self._lateness(bus, data, s, along, direction),
            distance_m=round(distance, 1))
        bus.active = _Active(nxt, direction, bus.requests, event)
        events.append(event)
        return events

    @staticmethod
    def _ahead(crossing: Crossing, direction: str, along: float) -> float:
        """How far ahead of the bus the stop line is (negative: passed)."""
        line = crossing.stop_line_s(direction)
        return line - along if direction == OUTBOUND else along - line

    @staticmethod
    def _next(data: _LineData, direction: str, along: float) -> Crossing | None:
        """The first crossing whose stop line lies ahead of the bus."""
        if direction == OUTBOUND:
            i = bisect.bisect_right(data.outbound_s, along)
            return data.outbound[i] if i < len(data.outbound) else None
        i = bisect.bisect_left(data.inbound_s, along) - 1
        return data.inbound[i] if i >= 0 else None

    def _dwelling(self, data: _LineData, crossing: Crossing, direction: str, along: float,
                  speed: float) -> bool:
        """Whether the bus stands at a stop that lies before the stop line."""
        if speed >= _STOPPED_MPS:
            return False
        line = crossing.stop_line_s(direction)
        lo = bisect.bisect_left(data.stop_s, along - self.stop_radius_m)
        hi = bisect.bisect_right(data.stop_s, along + self.stop_radius_m)
        for stop in data.stop_s[lo:hi]:
            if (stop < line) if direction == OUTBOUND else (stop > line):
                return True
        return False

    def _follow_trip(self, bus: _Bus, data: _LineData, along: float, direction: str,
                     s: BusSample) -> None:
        """Keep the time the bus left its trip's first stop (for free-flow lateness)."""
        if direction != bus.trip_direction:
            bus.trip_direction, bus.trip_start_ts = direction, None
        first = data.stop_s[0] if direction == OUTBOUND else data.stop_s[-1]
        if abs(along - first) <= self.stop_radius_m and s.speed < _STOPPED_MPS:
            bus.trip_start_ts = s.ts  # standing at the first stop: the trip starts when it leaves

    def _lateness(self, bus: _Bus, data: _LineData, s: BusSample, along: float,
                  direction: str) -> float | None:
        if data.line.timetable is not None and s.delay_s is not None:
            return float(s.delay_s)
        if bus.trip_start_ts is None:
            return None
        stops = data.stop_s
        if direction == OUTBOUND:
            driven = max(0.0, along - stops[0])
            passed = sum(1 for x in stops[1:-1] if x < along - self.stop_radius_m)
        else:
            driven = max(0.0, stops[-1] - along)
            passed = sum(1 for x in stops[1:-1] if x > along + self.stop_radius_m)
        expected = driven / data.line.free_flow_speed_mps + DWELL_S * passed
        return round((s.ts - bus.trip_start_ts) - expected, 1)
