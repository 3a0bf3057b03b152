"""Simulated MQTT field devices: buses, service vehicles and cameras.

One :class:`MqttDeviceSimulator` speaks for many devices over one MQTT
session, publishing exactly what the real devices would, on the topics of
CONTRACT.md and in the shape of their profiles::

    sim = MqttDeviceSimulator(inventory.equipment, url=broker.url)
    await sim.start()          # retained "online" for every device, then telemetry
    await sim.stop_device("cam-dijon-0001")   # retained "offline", silence
    await sim.malformed("bus-dijon-0001", "oversize")
    await sim.stop()           # retained "offline" for every device

* Buses drive their line back and forth. Their lateness ``delay_s`` drifts as
  a bounded random walk, and their position is where the timetable puts them
  ``delay_s`` seconds ago, so speed and heading stay consistent with the track.
  They report their ``direction`` (``outbound`` from the line's first stop,
  ``inbound`` back) and ``next_stop``. Given the inventory's bus lines
  (``lines``, :mod:`runtime.transit`), a bus drives its line's path through its
  crossroads, stops at its stops, and keeps to its timetable (or, without one,
  to the free-flow schedule). It runs outbound trips every ``headway_s`` from
  the line's first departure and inbound trips in the reverse order. The buses
  of a line share one round trip with a layover of at least
  :data:`~runtime.transit.LAYOVER_S` at each end, and each takes its own
  departure slot. The simulator runs the headway around the clock, anchored at
  the first departure of the day it starts. The service hours stay the
  timetable's for the command post to read. A bus whose line the inventory
  does not declare drives an invented line: a polyline of street-like segments
  through its municipality's centre, with a stop every 400 m numbered
  ``{line}-{nn}`` from the first stop.
* Service vehicles wait parked (at their base, then where their last job
  was) and report ``available``; given a job (``job``, ``job_lat``,
  ``job_lon``, written by dispatch) the crew reports ``busy``, drives there at
  town speed (``job_state`` ``en_route``), works a few minutes (``on_site``),
  then reports ``done`` and ``available`` again; a sample goes out at once at
  each step. A vehicle without a radio (``attrs.radio`` not true) refuses a crew
  ``message`` (counted in ``radio_refused``). :meth:`MqttDeviceSimulator.set_pace`
  makes crews drive and work faster (a bench's accelerated day); fault
  ``out_of_service`` takes a vehicle out of service (it reports ``out_of_service``
  until the fault is cleared).
* Cameras send a heartbeat every profile period and raise ``motion`` (mostly)
  or ``tamper`` events at random (QoS 1).
* Commands on each device's ``cmd`` topic with action ``set`` change the profile's
  writable fields (camera ``preset``/``recording``, vehicle and bus ``message``); each
  is acknowledged on the ``ack`` topic (QoS 1), with ``ok: false`` and an
  ``error`` when a parameter is unknown, not writable, of the wrong type or
  out of range, followed at once by a fresh telemetry sample.

Each message carries one device's sample; ``rate_hz`` replaces every device's
telemetry period by ``1 / rate_hz`` for benchmarks. Equipment whose profile is
not an MQTT profile is ignored, so a whole inventory can be handed over.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import itertools
import logging
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from devices.mqtt import (
    MqttSession,
    check_field,
    decode_command,
    encode_payload,
    encode_status,
    parse_topic,
    topic,
)
from devices.mqtt_wire import TelemetryPublisher
from devices.profile import Profile, builtin_profile
from devices.sim.control import DeviceCounters
from runtime.clock import CITY_TZ, Clock, SystemClock
from runtime.demo_inventory import municipalities
from runtime.envelope import pack
from runtime.errors import (
    ConfigError,
    DeviceUnavailableError,
    MalformedMessageError,
    ProtocolError,
    RejectedError,
)
from runtime.inventory import Equipment
from runtime.transit import DWELL_S, INBOUND, LAYOVER_S, OUTBOUND, BusLine, line_geometry

__all__ = ["MALFORMED_KINDS", "MqttDeviceSimulator", "line_route"]

_log = logging.getLogger(__name__)

MALFORMED_KINDS: Final = (
    "garbage",
    "not_map",
    "missing_key",
    "wrong_type",
    "out_of_range",
    "oversize",
)
EVENT_INTERVAL_S: Final = 120.0  # mean time between a camera's events
#: A camera's faults (``fault``): held while on, reported in its samples (``motion`` is an
#: event at once); ``tamper`` is one event.
CAMERA_FAULTS: Final = ("recording_stopped", "storage_full", "failed", "motion")
CAMERA_STORAGE_FULL_AT: Final = 96.0
#: Tampers per camera per year (a real city's rate); every other event is motion.
TAMPERS_PER_YEAR: Final = 2.0
_M_PER_DEG: Final = 111_320.0
_I32_MAX: Final = 2**31 - 1
_COMMAND_QUEUE: Final = 10_000

# Bus timetable: cruise between stops, dwell at each.
BUS_CRUISE_MS: Final = 8.0
BUS_STOP_SPACING_M: Final = 400.0
BUS_DWELL_S: Final = 20.0
_BUS_DELAY_RANGE: Final = (-120.0, 900.0)

JOB_WORK_S: Final = (180.0, 600.0)  # how long a crew works on site: a few minutes
#: A crew's road speed driving to a job through town (m/s), by role.
ROLE_SPEED_MS: Final = {
    "gritter": 9.0,
    "sweeper": 7.0,
    "police": 12.0,
    "waste": 7.0,
    "maintenance": 9.0,
    "green_areas": 8.0,
    "fire_safety": 13.0,
}


# --- geometry ---------------------------------------------------------------

_Point = tuple[float, float]  # metres east, metres north of an origin


def _bearing(dx: float, dy: float) -> float:
    """Degrees clockwise from north of a displacement, in [0, 360)."""
    return math.degrees(math.atan2(dx, dy)) % 360.0


def _to_lat_lon(origin: _Point, x: float, y: float) -> tuple[float, float]:
    lat0, lon0 = origin
    return lat0 + y / _M_PER_DEG, lon0 + x / (_M_PER_DEG * math.cos(math.radians(lat0)))


def line_route(municipality: str, line: str) -> tuple[_Point, ...]:
    """Waypoints (metres from the municipality's centre) of bus line ``line``.

    A deterministic street-like track: about 5 to 6 km across the centre along a
    main axis of the line's own, in segments of ~450 m that turn by up to 35°.
    """
    rng = random.Random(f"{municipality}:{line}")
    axis = rng.uniform(0.0, 180.0)
    half = rng.uniform(2_300.0, 3_000.0)
    ax, ay = math.sin(math.radians(axis)), math.cos(math.radians(axis))
    offset = rng.uniform(-400.0, 400.0)
    x, y = -ax * half + ay * offset, -ay * half - ax * offset
    points: list[_Point] = [(x, y)]
    steps = 12
    step = 2 * half / steps
    for _ in range(steps):
        # Pull back toward the axis so the line crosses the centre.
        lateral = (x * ay - y * ax) / max(step, 1.0)
        turn = max(-35.0, min(35.0, rng.gauss(0.0, 18.0) + 10.0 * lateral))
        heading = math.radians(axis + turn)
        x += math.sin(heading) * step
        y += math.cos(heading) * step
        points.append((x, y))
    return tuple(points)


@dataclass(frozen=True, slots=True)
class _Polyline:
    points: tuple[_Point, ...]
    cumulative: tuple[float, ...]

    @classmethod
    def of(cls, points: Iterable[_Point]) -> _Polyline:
        pts = tuple(points)
        if len(pts) < 2:
            raise ConfigError("a route needs at least two waypoints")
        total = [0.0]
        for (x0, y0), (x1, y1) in itertools.pairwise(pts):
            total.append(total[-1] + math.hypot(x1 - x0, y1 - y0))
        return cls(pts, tuple(total))

    @property
    def length(self) -> float:
        return self.cumulative[-1]

    def at(self, s: float) -> tuple[float, float, float]:
        """``(x, y, heading)`` at distance ``s`` from the first waypoint."""
        s = max(0.0, min(self.length, s))
        i = min(bisect.bisect_right(self.cumulative, s) - 1, len(self.points) - 2)
        (x0, y0), (x1, y1) = self.points[i], self.points[i + 1]
        seg = self.cumulative[i + 1] - self.cumulative[i]
        f = (s - self.cumulative[i]) / seg if seg > 0 else 0.0
        return x0 + (x1 - x0) * f, y0 + (y1 - y0) * f, _bearing(x1 - x0, y1 - y0)


class _LineRoute:
    """A bus's duty on an inventory line: its departure slot on the line's round trip.

    ``at(tau)`` is where the timetable puts the bus at the city time ``tau``:
    the distance along the path and the direction. Outbound trips leave the
    first stop at ``anchor + offset + k * cycle``, and inbound trips leave the
    last stop half a cycle later, driving the outbound trip's schedule in
    reverse.
    """

    def __init__(self, line: BusLine, slot: int, buses: int) -> None:
        self.line = line
        self.geometry = line_geometry(line)
        self.stop_s, _ = self.geometry.check_stops(line.stops)
        if line.timetable is not None:
            arrive = [float(stop.at_s or 0.0) for stop in line.stops]
        else:
            arrive = list(line.free_flow_s(self.stop_s))
        # A bus dwells at each intermediate stop, never longer than half the time to the next.
        depart = [arrive[0]] + [a + min(DWELL_S, 0.5 * (b - a))
                                for a, b in itertools.pairwise(arrive[1:])] + [arrive[-1]]
        self.arrive, self.depart = arrive, depart[: len(arrive)]
        self.trip_s = arrive[-1]
        least = 2.0 * (self.trip_s + LAYOVER_S)
        if line.timetable is not None:
            headway = line.timetable.headway_s
            slots = max(1, math.ceil(least / headway))
            self.cycle = slots * headway
            self.offset = (slot % slots) * headway
            self.first_s = line.timetable.first_s
        else:
            self.cycle = least
            self.offset = slot * least / max(1, buses)
            self.first_s = 0.0
        self.anchor: float | None = None

    def trip_position(self, t: float) -> float:
        """Distance along the path of an outbound trip ``t`` seconds after its departure."""
        if t <= 0.0:
            return self.stop_s[0]
        i = bisect.bisect_right(self.arrive, t) - 1
        if i >= len(self.arrive) - 1:
            return self.stop_s[-1]
        if t < self.depart[i]:
            return self.stop_s[i]  # dwelling
        span = self.arrive[i + 1] - self.depart[i]
        f = (t - self.depart[i]) / span if span > 0 else 1.0
        return self.stop_s[i] + (self.stop_s[i + 1] - self.stop_s[i]) * f

    def at(self, tau: float) -> tuple[float, str]:
        """``(s_m, direction)`` at the city time ``tau`` (epoch seconds)."""
        if self.anchor is None:
            # The first departure of the day the duty starts (local time).
            day = datetime.fromtimestamp(tau, CITY_TZ).replace(hour=0, minute=0, second=0,
                                                               microsecond=0)
            self.anchor = day.timestamp() + self.first_s
        u = (tau - self.anchor - self.offset) % self.cycle
        half = self.cycle / 2.0
        if u < half:
            return self.trip_position(u), OUTBOUND
        return self.trip_position(self.trip_s - (u - half)), INBOUND

    def next_stop(self, s: float, direction: str) -> str:
        """The id of the stop a bus at ``s`` driving ``direction`` drives to next."""
        if direction == OUTBOUND:
            i = min(bisect.bisect_right(self.stop_s, s + 0.5), len(self.stop_s) - 1)
        else:
            i = max(bisect.bisect_left(self.stop_s, s - 0.5) - 1, 0)
        return self.line.stops[i].id


# --- device models -------------------------------------------------------------


class _Device:
    """One simulated device: its sample and the writable values it holds."""

    def __init__(self, equipment: Equipment, profile: Profile) -> None:
        self.equipment = equipment
        self.profile = profile
        self.id = equipment.id
        self.running = True
        self.seq = 0
        self.published = 0
        self.events = 0
        self.writes: dict[str, Any] = {}
        self.counters = DeviceCounters("mqtt", profile.name)

    def topic(self, leaf: str) -> str:
        return topic(self.equipment.municipality, self.equipment.kind, self.id, leaf)

    @property
    def telemetry_topic(self) -> bytes:
        return self.topic("telemetry").encode("utf-8")

    def next_seq(self) -> int:
        self.seq = self.seq + 1 if self.seq < _I32_MAX else 0
        return self.seq

    def sample(self, now: float, rng: random.Random) -> dict[str, Any]:
        raise NotImplementedError

    def event(self, now: float, rng: random.Random) -> dict[str, Any] | None:
        """An event to raise now, or None for a device that raises none."""
        return None

    def apply(self, values: dict[str, Any]) -> None:
        self.writes.update(values)


class _Bus(_Device):
    def __init__(
        self, equipment: Equipment, profile: Profile, origin: _Point, rng: random.Random,
        duty: _LineRoute | None = None,
    ) -> None:
        super().__init__(equipment, profile)
        self.line = str(equipment.attrs.get("line", "L1"))
        self.duty = duty
        self.last_s: float | None = None
        self.origin = origin
        self.route = _Polyline.of(line_route(equipment.municipality, self.line))
        legs = math.ceil(self.route.length / BUS_STOP_SPACING_M)
        self.one_way_s = legs * (BUS_STOP_SPACING_M / BUS_CRUISE_MS + BUS_DWELL_S)
        # Buses of one line are spread over the timetable by their id.
        self.phase = random.Random(equipment.id).uniform(0.0, 2 * self.one_way_s)
        self.delay = rng.uniform(-30.0, 120.0)
        self.target_delay = self.delay
        self.last_now: float | None = None
        self.last_progress = 0.0

    def _leg_distance(self, tau: float) -> float:
        cycle = BUS_STOP_SPACING_M / BUS_CRUISE_MS + BUS_DWELL_S
        k = math.floor(tau / cycle)
        moving = min(BUS_STOP_SPACING_M, BUS_CRUISE_MS * (tau - k * cycle))
        return min(self.route.length, k * BUS_STOP_SPACING_M + moving)

    def _progress(self, tau: float) -> tuple[float, int, float]:
        """(total distance driven, leg number, distance into the leg) at timetable time tau."""
        leg, into = divmod(tau, self.one_way_s)
        d = self._leg_distance(into)
        return leg * self.route.length + d, int(leg), d

    def sample(self, now: float, rng: random.Random) -> dict[str, Any]:
        dt = 1.0 if self.last_now is None else max(1e-3, now - self.last_now)
        # Lateness wanders toward a target lateness that changes every ten
        # minutes or so (traffic builds up, clears). It never grows faster than
        # time passes (the bus would drive backwards) and shrinks at most 30 %
        # faster (a bus catches up by skipping dwell time, not by flying).
        if rng.random() < dt / 600.0:
            self.target_delay = rng.uniform(-30.0, 300.0)
        drift = rng.gauss(0.0, 0.25 * math.sqrt(dt)) + 0.002 * (self.target_delay - self.delay) * dt
        drift = max(-0.3 * dt, min(0.9 * dt, drift))
        self.delay = max(_BUS_DELAY_RANGE[0], min(_BUS_DELAY_RANGE[1], self.delay + drift))
        if self.duty is not None:
            return self._on_line(self.duty, now, dt)
        tau = now + self.phase - self.delay
        progress, leg, d = self._progress(tau)
        if self.last_now is None:
            previous, _, _ = self._progress(tau - dt)
        else:
            previous = self.last_progress
        self.last_now, self.last_progress = now, progress
        speed = min(60.0, max(0.0, progress - previous) / dt)
        stops = math.ceil(self.route.length / BUS_STOP_SPACING_M)
        ahead = min(stops, math.floor(d / BUS_STOP_SPACING_M + 1e-9) + 1)  # stops of this way
        if leg % 2 == 0:
            x, y, heading = self.route.at(d)
            direction, next_stop = "outbound", ahead
        else:
            x, y, heading = self.route.at(self.route.length - d)
            heading = (heading + 180.0) % 360.0
            direction, next_stop = "inbound", stops - ahead
        lat, lon = _to_lat_lon(self.origin, x, y)
        out: dict[str, Any] = {
            "ts": now,
            "lat": round(lat, 7),
            "lon": round(lon, 7),
            "speed": round(speed, 2),
            "heading": round(heading, 1) % 360.0,
            "seq": self.next_seq(),
            "line": self.line,
            "direction": direction,
            "next_stop": f"{self.line}-{next_stop:02d}",
            "delay_s": round(self.delay, 1),
        }
        # Only once set: the position messages keep their size on the priority path.
        if "message" in self.writes:
            out["message"] = self.writes["message"]
        return out

    def _on_line(self, duty: _LineRoute, now: float, dt: float) -> dict[str, Any]:
        """A sample on an inventory line: where the timetable put the bus ``delay`` ago."""
        s, direction = duty.at(now - self.delay)
        previous = self.last_s if self.last_s is not None else duty.at(now - dt - self.delay)[0]
        self.last_now, self.last_s = now, s
        lat, lon = duty.geometry.point_at(s)
        out: dict[str, Any] = {
            "ts": now,
            "lat": round(lat, 7),
            "lon": round(lon, 7),
            "speed": round(min(60.0, abs(s - previous) / dt), 2),
            "heading": round(duty.geometry.heading_at(s, direction), 1) % 360.0,
            "seq": self.next_seq(),
            "line": self.line,
            "direction": direction,
            "next_stop": duty.next_stop(s, direction),
            "delay_s": round(self.delay, 1),
        }
        if "message" in self.writes:
            out["message"] = self.writes["message"]
        return out


class _ServiceVehicle(_Device):
    """A crew that waits parked, and drives to and works on the jobs dispatch gives it.

    Times are wall-clock seconds (the ``now`` of :meth:`sample`); ``pace`` > 1
    shortens the drive and the work by that factor (the reported ``speed``
    stays the crew's road speed, as a compressed day would show it).
    """

    def __init__(self, equipment: Equipment, profile: Profile, rng: random.Random) -> None:
        super().__init__(equipment, profile)
        role = str(equipment.attrs.get("role", "maintenance"))
        spec = profile.field("role")
        self.role = role if role in spec.choices else spec.choices[-1]
        self.origin: _Point = (equipment.lat, equipment.lon)
        self.cruise = ROLE_SPEED_MS.get(self.role, 8.0)
        self.radio = equipment.attrs.get("radio") is True
        self.x = self.y = 0.0
        self.heading = rng.uniform(0.0, 360.0)
        self.out_of_service = False
        self.job = ""
        self.job_state = "idle"
        self.start: _Point = (0.0, 0.0)
        self.target: _Point = (0.0, 0.0)
        self.depart_at = self.arrive_at = self.done_at = 0.0
        self.writes["message"] = ""
        self.writes["job"] = ""

    def _local(self, lat: float, lon: float) -> _Point:
        lat0, lon0 = self.origin
        return ((lon - lon0) * _M_PER_DEG * math.cos(math.radians(lat0)),
                (lat - lat0) * _M_PER_DEG)

    def _advance(self, now: float) -> float:
        """Move the crew to where it is at ``now``; its speed (m/s)."""
        if not self.job or self.job_state in ("idle", "done"):
            return 0.0
        if now < self.arrive_at:
            span = max(self.arrive_at - self.depart_at, 1e-9)
            f = max(0.0, (now - self.depart_at) / span)
            (x0, y0), (x1, y1) = self.start, self.target
            self.x, self.y = x0 + (x1 - x0) * f, y0 + (y1 - y0) * f
            self.job_state = "en_route"
            return self.cruise
        self.x, self.y = self.target
        self.job_state = "on_site" if now < self.done_at else "done"
        return 0.0

    def take_job(self, now: float, rng: random.Random, pace: float) -> list[float]:
        """Start the job now written in ``writes`` (or drop it for ``""``).

        Returns the wall-clock times of the crew's next steps (arrival, done),
        at which the simulator sends a sample at once.
        """
        job = str(self.writes.get("job") or "")
        if job == self.job:
            return []  # the same job again (a reconnect re-applies it): carry on
        self._advance(now)
        self.job = job
        if not job:
            self.job_state = "idle"
            return []
        self.start = (self.x, self.y)
        self.target = self._local(float(self.writes.get("job_lat", self.origin[0])),
                                  float(self.writes.get("job_lon", self.origin[1])))
        dx, dy = self.target[0] - self.x, self.target[1] - self.y
        if dx or dy:
            self.heading = _bearing(dx, dy)
        self.depart_at = now
        self.arrive_at = now + math.hypot(dx, dy) / self.cruise / pace
        self.done_at = self.arrive_at + rng.uniform(*JOB_WORK_S) / pace
        self.job_state = "en_route"
        return [self.arrive_at, self.done_at]

    def sample(self, now: float, rng: random.Random) -> dict[str, Any]:
        speed = self._advance(now) * (rng.uniform(0.8, 1.1) if self.job_state == "en_route"
                                      else 0.0)
        if self.out_of_service:
            status = "out_of_service"
        elif self.job_state in ("en_route", "on_site"):
            status = "busy"
        else:
            status = "available"
        lat, lon = _to_lat_lon(self.origin, self.x, self.y)
        return {
            "ts": now,
            "lat": round(lat, 7),
            "lon": round(lon, 7),
            "speed": round(min(speed, 60.0), 2),
            "heading": round(self.heading, 1) % 360.0,
            "seq": self.next_seq(),
            "role": self.role,
            "status": status,
            "job": self.job,
            "job_state": self.job_state,
            "message": self.writes["message"],
        }


class _Camera(_Device):
    def __init__(self, equipment: Equipment, profile: Profile) -> None:
        super().__init__(equipment, profile)
        self.health = "ok"
        self.writes.update(recording=True, preset=0)
        # Recorders overwrite their oldest footage: the fill stays where it settled.
        self.storage_pct = float(20 + sum(equipment.id.encode()) % 50)
        self.faults: set[str] = set()

    def sample(self, now: float, rng: random.Random) -> dict[str, Any]:
        if "failed" in self.faults:
            self.health = "failed"
        elif self.health == "failed":
            self.health = "ok"
        elif self.health == "ok" and rng.random() < 0.005:
            self.health = "degraded"
        elif self.health == "degraded" and rng.random() < 0.3:
            self.health = "ok"
        return {
            "ts": now,
            "seq": self.next_seq(),
            "recording": bool(self.writes["recording"]) and "recording_stopped" not in self.faults,
            "health": self.health,
            "preset": self.writes["preset"],
            "storage_pct": CAMERA_STORAGE_FULL_AT if "storage_full" in self.faults
            else self.storage_pct,
        }

    def event(self, now: float, rng: random.Random) -> dict[str, Any] | None:
        p_tamper = TAMPERS_PER_YEAR * EVENT_INTERVAL_S / (8766.0 * 3600.0)
        name = "tamper" if rng.random() < p_tamper else "motion"
        if name not in self.profile.events:
            return None
        self.events += 1
        return {"ts": now, "event": name, "preset": self.writes["preset"]}


def _raise_if_cancelling() -> None:
    """Honour a cancellation that an awaited library call swallowed."""
    current = asyncio.current_task()
    if current is not None and current.cancelling():
        raise asyncio.CancelledError


# --- the simulator -----------------------------------------------------------------


class MqttDeviceSimulator:
    """Many simulated MQTT devices behind one session (see the module docstring).

    ``clock`` times telemetry and stamps ``ts`` (default: the system clock);
    ``rng`` drives every random choice (seed it for reproducible runs);
    ``rate_hz`` replaces each device's telemetry period by ``1 / rate_hz``;
    ``event_interval_s`` is the mean time between a camera's events.
    ``client_id`` names the persistent session: commands sent while the
    simulator is away are delivered when it comes back with the same id.
    Telemetry leaves on a second connection, to ``telemetry_url`` when given
    (a broker that allows one connection per account, such as the embedded
    one's devices' listener, needs a second account), else to ``url``.
    """

    def __init__(
        self,
        equipment: Iterable[Equipment],
        *,
        url: str,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        rate_hz: float | None = None,
        event_interval_s: float = EVENT_INTERVAL_S,
        client_id: str = "sim-mqtt",
        lines: Mapping[str, BusLine] | None = None,
        telemetry_url: str | None = None,
    ) -> None:
        if rate_hz is not None and not (rate_hz > 0 and math.isfinite(rate_hz)):
            raise ConfigError(f"rate_hz must be a positive number, not {rate_hz!r}")
        if not event_interval_s > 0:
            raise ConfigError("event_interval_s must be positive")
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._rate_hz = rate_hz
        self._event_interval_s = event_interval_s
        centres = {m.slug: (m.lat, m.lon) for m in municipalities()}
        self._lines = dict(lines or {})
        self._devices: dict[str, _Device] = {}
        chosen = [(eq, builtin_profile(eq.profile)) for eq in equipment]
        self._duties = self._bus_duties([eq for eq, p in chosen if p.name == "bus"])
        for eq, profile in chosen:
            if profile.protocol != "mqtt":
                continue
            self._devices[eq.id] = self._model(eq, profile, centres)
        self._session = MqttSession(url, client_id=client_id, clean_session=False)
        self._session.on_message(self._on_message)
        # Telemetry (QoS 0) leaves on a lean connection of its own, written in batches.
        self._telemetry = TelemetryPublisher(telemetry_url or url,
                                             client_id=f"{client_id}-telemetry")
        self._telemetry_retry = 0.0
        self._schedule: list[tuple[float, int, str, str]] = []
        self._order = itertools.count()
        self._wake = asyncio.Event()
        self._commands: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(_COMMAND_QUEUE)
        self._tasks: list[asyncio.Task[None]] = []
        self.acks = 0
        self.commands_refused = 0
        self.radio_refused = 0  # crew messages sent to a vehicle without radio
        self.bad_commands = 0
        self.telemetry_dropped = 0
        self.late = 0
        self._held = False
        self._loss_rate = 0.0
        self._loss_rng = random.Random(0)
        self._pace = 1.0

    def _bus_duties(self, buses: list[Equipment]) -> dict[str, _LineRoute]:
        """Each bus of a declared line gets its departure slot: the line's buses in id
        order share its round trip."""
        by_line: dict[str, list[str]] = {}
        for eq in buses:
            line = eq.attrs.get("line")
            if isinstance(line, str) and line in self._lines:
                by_line.setdefault(line, []).append(eq.id)
        duties: dict[str, _LineRoute] = {}
        for line, ids in by_line.items():
            for slot, ident in enumerate(sorted(ids)):
                duties[ident] = _LineRoute(self._lines[line], slot, len(ids))
        return duties

    def _model(
        self, eq: Equipment, profile: Profile, centres: dict[str, tuple[float, float]]
    ) -> _Device:
        if profile.name == "bus":
            return _Bus(eq, profile, centres.get(eq.municipality, (eq.lat, eq.lon)), self._rng,
                        self._duties.get(eq.id))
        if profile.name == "service_vehicle":
            return _ServiceVehicle(eq, profile, self._rng)
        if profile.name == "camera":
            return _Camera(eq, profile)
        raise ConfigError(
            f"equipment {eq.id!r}: no MQTT simulator model for profile {profile.name!r}"
        )

    # -- observation --

    @property
    def devices(self) -> tuple[str, ...]:
        """Ids of the simulated devices."""
        return tuple(self._devices)

    @property
    def session(self) -> MqttSession:
        """The simulator's MQTT session (for its counters)."""
        return self._session

    def published(self, device_id: str) -> int:
        """Telemetry samples published for ``device_id``."""
        return self._device(device_id).published

    def last_seq(self, device_id: str) -> int:
        """The ``seq`` of the last sample of ``device_id`` (0 before the first)."""
        return self._device(device_id).seq

    def values(self, device_id: str) -> dict[str, Any]:
        """The writable values the device holds now (what commands changed)."""
        return dict(self._device(device_id).writes)

    def sample(self, device_id: str) -> dict[str, Any]:
        """A fresh sample of ``device_id``, as it would publish it now (not published)."""
        return self._device(device_id).sample(self._clock.time(), self._rng)

    def running(self, device_id: str) -> bool:
        """False while the device is stopped by :meth:`stop_device`."""
        return self._device(device_id).running

    def _device(self, device_id: str) -> _Device:
        try:
            return self._devices[device_id]
        except KeyError:
            raise ConfigError(f"no simulated MQTT device {device_id!r}") from None

    # -- life cycle --

    async def start(self, timeout: float = 10.0) -> None:
        """Connect, subscribe to commands, announce every device, start publishing.

        Raises :class:`DeviceUnavailableError` when the broker does not answer
        within ``timeout`` seconds.
        """
        if self._tasks:
            raise ConfigError("the MQTT simulator is already started")
        await self._session.start()
        try:
            await self._session.wait_connected(timeout)
            # Each device's own command topic: a broker that checks what an account
            # may read when it subscribes (amqtt) refuses a wildcard over every device.
            await asyncio.gather(*(self._session.subscribe(d.topic("cmd"), qos=1)
                                   for d in self._devices.values()))
            for device in self._devices.values():
                if device.running:
                    await self._announce(device, online=True)
            await self._telemetry.connect(timeout)
        except BaseException:
            await self._telemetry.close()
            await self._session.stop()
            raise
        now = self._clock.monotonic()
        for device in self._devices.values():
            period = self._period(device)
            # Spread first samples over one period so devices do not publish in lockstep.
            self._push(now + self._rng.uniform(0.0, period), device.id, "telemetry")
            if isinstance(device, _Camera):
                self._push(now + self._next_event_gap(), device.id, "event")
        self._tasks = [
            asyncio.create_task(self._publish_loop(), name="mqtt-sim.publish_loop"),
            asyncio.create_task(self._command_loop(), name="mqtt-sim.command_loop"),
        ]

    async def stop(self) -> None:
        """Stop publishing, announce every running device offline, disconnect."""
        tasks, self._tasks = self._tasks, []
        failure: BaseException | None = None
        for task in tasks:
            # Python 3.11's asyncio.wait_for (inside aiomqtt) can drop a
            # cancellation that races with its result: cancel until it ends.
            while not task.done():
                task.cancel()
                await asyncio.wait((task,), timeout=1.0)
            if not task.cancelled() and task.exception() is not None:
                failure = task.exception()  # re-raised below, after the cleanup
        self._schedule.clear()
        await self._telemetry.flush()
        await self._telemetry.close()
        if self._session.connected:
            for device in self._devices.values():
                if device.running:
                    with contextlib.suppress(DeviceUnavailableError):
                        await self._announce(device, online=False)
        await self._session.stop()
        if failure is not None:
            raise failure
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise asyncio.CancelledError

    async def run(self) -> None:
        """Start, publish until cancelled (or a loop fails), then stop."""
        await self.start()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            await self.stop()

    # -- the control channel (devices.sim.control.ControlTarget) --

    @property
    def protocol(self) -> str:
        return "mqtt"

    def device_counters(self) -> dict[str, DeviceCounters]:
        """Per device: samples emitted with their seq range, values carried, commands."""
        return {did: d.counters for did, d in self._devices.items()}

    def hold(self, on: bool) -> None:
        """While held, devices send no telemetry (status, events and acks go on)."""
        self._held = on

    def set_loss_rate(self, rate: float) -> None:
        """Drop this fraction of telemetry after counting it as emitted."""
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"loss rate {rate!r} outside [0, 1]")
        self._loss_rate = rate

    def set_pace(self, speedup: float) -> None:
        """Crews drive to their next jobs and work on them ``speedup`` times faster."""
        if not (speedup >= 1.0 and math.isfinite(speedup)):
            raise ConfigError(f"pace {speedup!r} must be a number >= 1")
        self._pace = float(speedup)

    async def set_offline(self, device_id: str, on: bool) -> None:
        """Silence a device (retained ``offline``) or bring it back."""
        if on:
            await self.stop_device(device_id)
        else:
            await self.start_device(device_id)

    async def fault(self, device_id: str, name: str, on: bool) -> None:
        """``tamper`` (camera): one tamper event now, clearing is a no-op; a camera's
        :data:`CAMERA_FAULTS`;
        ``out_of_service`` (service vehicle): reported as its status while on."""
        device = self._device(device_id)
        if name == "out_of_service" and isinstance(device, _ServiceVehicle):
            device.out_of_service = on
            if device.running and not self._held:
                await self._send_sample(device)
            return
        if isinstance(device, _Camera) and name in CAMERA_FAULTS:
            await self._camera_fault(device, name, on)
            return
        if name != "tamper" or name not in device.profile.events:
            raise RejectedError(f"{device.profile.name} has no fault {name!r}",
                                code="unknown_fault")
        if on and device.running:
            event = {"ts": self._clock.time(), "event": "tamper",
                     "preset": device.writes.get("preset", 0)}
            device.events += 1
            await self._session.publish(device.topic("event"), encode_payload(event), qos=1)

    async def _camera_fault(self, device: _Camera, name: str, on: bool) -> None:
        """A camera's health fault held (or cleared), with a sample at once; ``motion``: one
        motion event now."""
        if name == "motion":
            if on and device.running:
                event = {"ts": self._clock.time(), "event": "motion",
                         "preset": device.writes.get("preset", 0)}
                device.events += 1
                await self._session.publish(device.topic("event"), encode_payload(event), qos=1)
            return
        if on:
            device.faults.add(name)
        else:
            device.faults.discard(name)
        if device.running and not self._held:
            await self._send_sample(device)

    def held_values(self, device_id: str) -> dict[str, Any]:
        """The writable values the device holds."""
        return self.values(device_id)

    # -- fault injection --

    async def stop_device(self, device_id: str) -> None:
        """The device falls silent: retained ``offline``, no telemetry, no acks."""
        device = self._device(device_id)
        if not device.running:
            return
        device.running = False
        await self._announce(device, online=False)

    async def start_device(self, device_id: str) -> None:
        """The device comes back: retained ``online``, telemetry at once."""
        device = self._device(device_id)
        if device.running:
            return
        device.running = True
        await self._announce(device, online=True)
        self._push(self._clock.monotonic(), device.id, "telemetry")

    async def malformed(self, device_id: str, kind: str) -> None:
        """Publish one bad telemetry payload for ``device_id`` (see ``MALFORMED_KINDS``).

        ``garbage``: not msgpack; ``not_map``: a msgpack array; ``missing_key``:
        a sample without ``seq``; ``wrong_type``: ``seq`` as a string;
        ``out_of_range``: ``seq`` negative; ``oversize``: a valid sample padded
        past the profile's ``max_payload_bytes``.
        """
        device = self._device(device_id)
        if kind not in MALFORMED_KINDS:
            raise ConfigError(f"malformed kind {kind!r} is not one of {', '.join(MALFORMED_KINDS)}")
        sample = device.sample(self._clock.time(), self._rng)
        payload: bytes
        if kind == "garbage":
            payload = b"\xc1\xff\x00not msgpack"
        elif kind == "not_map":
            payload = pack([sample["seq"], "not", "a", "map"])
        elif kind == "missing_key":
            del sample["seq"]
            payload = encode_payload(sample)
        elif kind == "wrong_type":
            sample["seq"] = str(sample["seq"])
            payload = encode_payload(sample)
        elif kind == "out_of_range":
            sample["seq"] = -1
            payload = encode_payload(sample)
        else:
            sample["padding"] = "x" * device.profile.max_payload_bytes
            payload = encode_payload(sample)
        await self._session.publish(device.topic("telemetry"), payload, qos=0)

    # -- internals --

    def _period(self, device: _Device) -> float:
        # Publications keep the machine's cadence on an accelerated clock (they are transport).
        base = 1.0 / self._rate_hz if self._rate_hz else device.profile.poll_interval_s
        return base * self._clock.speed

    def _next_event_gap(self) -> float:
        return self._rng.expovariate(1.0 / self._event_interval_s)

    def _push(self, due: float, device_id: str, what: str) -> None:
        heapq.heappush(self._schedule, (due, next(self._order), device_id, what))
        self._wake.set()

    async def _announce(self, device: _Device, *, online: bool) -> None:
        await self._session.publish(
            device.topic("status"), encode_status(online), qos=1, retain=True
        )

    async def _publish_loop(self) -> None:
        burst = 0
        while True:
            _raise_if_cancelling()
            now = self._clock.monotonic()
            burst += 1
            if burst >= 64:
                # Telemetry is written without awaiting: let the loop serve the rest.
                burst = 0
                await self._telemetry.flush()
                await asyncio.sleep(0)
            if not self._schedule or self._schedule[0][0] > now:
                burst = 0
                wait = self._schedule[0][0] - now if self._schedule else 3600.0
                self._wake.clear()
                sleeper = asyncio.ensure_future(self._clock.sleep(wait))
                woken = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait((sleeper, woken), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    sleeper.cancel()
                    woken.cancel()
                continue
            due, _, device_id, what = heapq.heappop(self._schedule)
            device = self._devices[device_id]
            if what == "telemetry":
                period = self._period(device)
                following = due + period
                if following < now:
                    self.late += 1  # fell behind: skip, never burst to catch up
                    device.counters.late += 1
                    following = now + period
                if device.running and not self._held:
                    await self._send_sample(device)
                self._push(following, device_id, what)
            elif what == "job":
                # A crew reached its site or finished: it reports at once.
                if device.running and not self._held:
                    await self._send_sample(device)
            else:
                if device.running:
                    event = device.event(self._clock.time(), self._rng)
                    if event is not None:
                        await self._session.publish(
                            device.topic("event"), encode_payload(event), qos=1
                        )
                self._push(now + self._next_event_gap(), device_id, what)

    async def _send_sample(self, device: _Device) -> None:
        sample = device.sample(self._clock.time(), self._rng)
        device.counters.sample(int(sample["seq"]), len(sample) - 2)  # seq and ts carry no value
        if self._loss_rate and self._loss_rng.random() < self._loss_rate:
            device.counters.dropped += 1
            return
        if not self._telemetry.connected:
            now = self._clock.monotonic()
            if now >= self._telemetry_retry:
                try:
                    await self._telemetry.connect()
                except DeviceUnavailableError as exc:
                    self._telemetry_retry = now + 1.0
                    _log.warning("mqtt simulator: %s", exc)
        try:
            # Telemetry is QoS 0: a real device offline drops it rather than queue stale positions.
            self._telemetry.publish(device.telemetry_topic, encode_payload(sample))
        except DeviceUnavailableError:
            self.telemetry_dropped += 1
            device.counters.dropped += 1
            return
        device.published += 1

    def _on_message(self, name: str, payload: bytes) -> None:
        try:
            _, _, device_id, leaf = parse_topic(name)
        except ProtocolError:
            return
        if leaf != "cmd" or device_id not in self._devices:
            return
        try:
            self._commands.put_nowait((device_id, payload))
        except asyncio.QueueFull:
            self.bad_commands += 1
            _log.warning("mqtt simulator: command queue full; dropped a command for %s", device_id)

    async def _command_loop(self) -> None:
        while True:
            _raise_if_cancelling()
            device_id, payload = await self._commands.get()
            device = self._devices[device_id]
            if not device.running:
                continue  # a silent device does not answer
            try:
                command = decode_command(payload)
            except MalformedMessageError as exc:
                self.bad_commands += 1
                _log.warning("mqtt simulator: %s sent a bad command: %s", device_id, exc)
                continue
            before = dict(device.writes)
            error = self._apply(device, command)
            if error is None:
                device.counters.write(device.writes != before)
            else:
                device.counters.writes += 1
            ack: dict[str, Any] = {
                "command_id": command["command_id"],
                "ok": error is None,
                "ts": self._clock.time(),
            }
            if error is not None:
                ack["error"] = error
                self.commands_refused += 1
            await self._session.publish(device.topic("ack"), encode_payload(ack), qos=1)
            self.acks += 1
            if error is None and not self._held:
                await self._send_sample(device)

    def _apply(self, device: _Device, command: dict[str, Any]) -> str | None:
        """Apply a command all-or-nothing; the refusal's reason, or None when applied."""
        if command["action"] != "set":
            return f"unknown action {command['action']!r}"
        params: dict[str, Any] = command["params"]
        if not params:
            return "set needs at least one parameter"
        if "message" in params and isinstance(device, _ServiceVehicle) and not device.radio:
            self.radio_refused += 1
            return f"{device.id} has no radio: a crew message cannot reach it"
        writable = device.profile.writable()
        values: dict[str, Any] = {}
        for name, value in params.items():
            spec = writable.get(name)
            if spec is None:
                return f"{name!r} is not a writable field of {device.profile.name}"
            try:
                values[name] = check_field(spec, value)
            except MalformedMessageError as exc:
                return str(exc)
        device.apply(values)
        if isinstance(device, _ServiceVehicle) and "job" in values:
            now = self._clock.time()
            for when in device.take_job(now, self._rng, self._pace):
                self._push(self._clock.monotonic() + max(0.0, when - now), device.id, "job")
        return None
