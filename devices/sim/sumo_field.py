"""The field of a SUMO co-simulation: traffic, lights and buses, step-locked with SUMO.

One :class:`SumoField` runs one SUMO simulation (:class:`devices.sumo.TraciSession`)
of a mapped network (:class:`runtime.sumo.network.Scenario`) under its lights'
controllers (:class:`~devices.sim.sumo_signals.SumoSignalSimulator`). Each step:

1. SUMO moves the traffic one step (:data:`~devices.sumo.STEP_S`) under the
   states the controllers showed;
2. every bus of a line publishes its position on MQTT, as the bus profile
   says (``city/{municipality}/vehicle/{id}/telemetry``, msgpack: ``ts``,
   ``lat``, ``lon``, ``speed``, ``heading``, ``seq``, ``line``,
   ``direction``, ``delay_s``), stamped with the city's time of the step;
3. the controllers advance one step (serving what the runtime wrote to them
   over Modbus meanwhile) and SUMO is given the state each shows next
   (``trafficlight.setRedYellowGreenState``);
4. with ``pace`` on, the field waits until the city's clock
   (:mod:`runtime.clock`, accelerated) reaches the step's time: SUMO's clock
   *is* the city's, so an hour of traffic takes an hour divided by the clock's
   speed, and the runtime, on the same clock, sees buses move in its time.
   How far the field ever fell behind the city's clock is reported (``lag_s``).

**Buses.** A SUMO bus vehicle of a line (and its direction) takes one of the
line's equipped buses of the inventory (``buses[line]``, ids in order) when it
departs and gives it back when it arrives: the same bus drives trip after trip.
A departure finding none free runs unequipped (counted). ``delay_s`` is its
lateness against a free-flow schedule as driven: the time since it departed,
less the time it stood at its stops, less the distance it drove along its line
at the line's free-flow speed.

Without an MQTT session (the runs without priority), nothing is published, and
the controllers' Modbus servers need not listen: the same controllers run the
same programs, untouched by priority.
The simulation runs until every vehicle of the routes has arrived, or
``limit_s`` (vehicles still running then are written as unfinished to the trip
output).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from devices.sim.sumo_signals import SumoSignalSimulator, cycle_elapsed
from devices.sumo import STEP_S, TraciSession
from runtime.clock import Clock
from runtime.sumo.network import Scenario
from runtime.transit import line_geometry

__all__ = ["FieldReport", "SumoField"]

#: How often the field yields to the Modbus servers without pacing (steps).
_YIELD_EVERY: Final = 50


@dataclass(slots=True)
class FieldReport:
    """What one run of the field did."""

    sim_s: float = 0.0
    steps: int = 0
    wall_s: float = 0.0
    published: int = 0
    equipped_trips: int = 0
    unequipped_trips: int = 0
    lag_s: list[float] = field(default_factory=list)  # the city clock's lead, per step (s)
    max_buses: Counter[str] = field(default_factory=Counter)  # line -> most at once
    controllers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def figures(self) -> dict[str, Any]:
        lag = sorted(self.lag_s)
        return {
            "sim_s": self.sim_s, "steps": self.steps, "wall_s": round(self.wall_s, 1),
            "published": self.published, "equipped_trips": self.equipped_trips,
            "unequipped_trips": self.unequipped_trips,
            "lag_s": {"p50": round(lag[len(lag) // 2], 2) if lag else None,
                      "max": round(lag[-1], 2) if lag else None},
        }


@dataclass(slots=True)
class _Ride:
    bus_id: str
    line: str
    direction: str
    departed: float
    start_s: float | None = None
    stood: float = 0.0
    seq: int = 0


class SumoField:
    """One SUMO run under the lights' controllers (module doc).

    ``sumo_args`` are SUMO's (network, routes, additional files, trip output);
    ``signals`` the controllers of :attr:`Scenario.crossroads` (by crossroad id),
    loaded afresh for this run.
    """

    def __init__(self, scenario: Scenario, signals: SumoSignalSimulator,
                 sumo_args: Sequence[str], *, seed: int, limit_s: float,
                 buses: Mapping[str, Sequence[str]] | None = None,
                 mqtt: Any = None, clock: Clock | None = None, pace: bool = False) -> None:
        self.scenario = scenario
        self.signals = signals
        self.session = TraciSession(sumo_args, seed=seed)
        self.limit_s = limit_s
        self.free = {line: deque(ids) for line, ids in (buses or {}).items()}
        self.mqtt = mqtt
        self.clock = clock
        self.pace = pace
        self.report = FieldReport()
        self._rides: dict[str, _Ride] = {}
        self._unequipped: set[str] = set()
        self._lights = {xr.id: xr.light for xr in scenario.crossroads}

    async def run(self) -> FieldReport:
        """Run the simulation to its end (module doc)."""
        session = self.session
        started = time.monotonic()
        await asyncio.to_thread(session.start)
        try:
            elapsed = {}
            for xr in self.scenario.crossroads:
                light = self.scenario.network.lights[xr.light]
                phase, spent = session.signal_position(xr.light)
                elapsed[xr.id] = cycle_elapsed(light, xr.program, phase, spent)
            self.signals.load(elapsed)
            self._show()
            origin = self.clock.time() if self.clock is not None else 0.0
            while session.pending() > 0 and session.time() < self.limit_s:
                session.step()
                now = session.time()
                self._arrivals()
                self._count_buses()
                if self.mqtt is not None:
                    await self._publish(now, origin + now)
                await self.signals.tick(STEP_S)
                self._show()
                self.report.steps += 1
                if self.pace and self.clock is not None:
                    lead = self.clock.time() - (origin + now)
                    self.report.lag_s.append(lead)
                    if lead < 0:
                        await self.clock.sleep(-lead)
                elif self.report.steps % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            self.report.sim_s = session.time()
        finally:
            await asyncio.to_thread(session.close)
        self.report.wall_s = time.monotonic() - started
        self.report.controllers = {eid: dataclasses.asdict(self.signals.signal(eid).priority)
                                   for eid in self.signals.ids}
        return self.report

    def _show(self) -> None:
        for eid, state in self.signals.states().items():
            self.session.set_signal(self._lights[eid], state)

    def _arrivals(self) -> None:
        for vid in self.session.arrived():
            ride = self._rides.pop(vid, None)
            if ride is not None:
                self.free[ride.line].append(ride.bus_id)

    async def _publish(self, now: float, ts: float) -> None:
        from devices.mqtt import encode_payload, topic

        scenario = self.scenario
        network = scenario.network
        for vid, v in self.session.vehicles().items():
            ride = self._rides.get(vid)
            if ride is None:
                trip = scenario.trip(vid)
                if trip is None or vid in self._unequipped:
                    continue
                line, direction = trip
                pool = self.free.get(line)
                if not pool:
                    self._unequipped.add(vid)
                    self.report.unequipped_trips += 1
                    continue
                ride = self._rides[vid] = _Ride(pool.popleft(), line, direction, now)
                self.report.equipped_trips += 1
            lat, lon = network.to_latlon(v.x, v.y)
            line_obj = scenario.lines[ride.line]
            s, _ = line_geometry(line_obj).locate(lat, lon)
            if ride.start_s is None:
                ride.start_s = s
            if v.stopped:
                ride.stood += STEP_S
            delay = (now - ride.departed) - ride.stood - abs(s - ride.start_s) / \
                line_obj.free_flow_speed_mps
            ride.seq += 1
            payload = encode_payload({
                "ts": ts, "lat": round(lat, 7), "lon": round(lon, 7),
                "speed": round(max(0.0, v.speed), 2), "heading": round(v.angle % 360.0, 1),
                "seq": ride.seq, "line": ride.line, "direction": ride.direction,
                "delay_s": round(max(-3600.0, delay), 1)})
            await self.mqtt.publish(topic(scenario.municipality, "vehicle", ride.bus_id,
                                          "telemetry"), payload, qos=0)
            self.report.published += 1

    def _count_buses(self) -> None:
        riding = Counter[str]()
        for vid in self.session.vehicles():
            trip = self.scenario.trip(vid)
            if trip is not None:
                riding[trip[0]] += 1
        for line, n in riding.items():
            self.report.max_buses[line] = max(self.report.max_buses[line], n)


def trip_output(path: Path) -> list[str]:
    """SUMO's arguments writing every trip (unfinished ones too) to ``path``."""
    return ["--tripinfo-output", str(path), "--tripinfo-output.write-unfinished", "true"]
