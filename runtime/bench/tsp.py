"""``commandpost bench tsp``: transit signal priority, proven in Eclipse SUMO.

SUMO simulates the traffic; each of its traffic lights is run by a traffic
controller of the ``traffic_controller`` profile that runs exactly that light's
program (:mod:`devices.sim.sumo_signals`), step-locked with SUMO
(:mod:`devices.sim.sumo_field`). Every seed runs twice, with the same demand
and SUMO's same seed (``--time-to-teleport -1``):

* **off**: SUMO under the controllers alone, as fast as it goes. The
  controllers show SUMO's own programs, untouched;
* **on**: the command post runs (Redis, a broker, Ray, the crossroads' host,
  the bus-priority pool) on the city's accelerated clock (``--clock-speed``,
  10 by default), which SUMO follows step by step: SUMO's buses publish their
  positions on MQTT in the bus profile's format, the pool tracks them, the
  crossroads' priority lanes decide and write each request to its controller
  over Modbus, and the controllers serve them (green extension, early green)
  within their limits; what they show is what SUMO's traffic drives under.

The priority rules are the shipped ones (``actors/plans/priority.toml``: a
60 s reservice time per crossroad, at most 4 greens per 10 min, 15 s of
extension at most) with the scenario's lines given unconditional priority, as
the shipped file gives the metropolis's high-frequency lines
(``min_lateness_s = 0``): the service runs them as its rules
(``ServiceOptions.priority_rules``).

**Figures**, per trip from SUMO's trip output (:mod:`runtime.sumo.delay`),
the trips of every seed pooled: ``bus_signal_delay_s`` is the mean time a bus
stood (speed below 0.1 m/s) outside its dwell at stops: at red lights and in
queues; ``other_delay_s`` the same for every other vehicle;
``bus_travel_time_s`` the buses' mean trip time, dwell included. Each is given
``off`` and ``on``, with the relative changes
``bus_signal_delay_reduction_pct`` (positive: less delay) and
``other_delay_increase_pct``; ``bus_trips`` and ``other_trips`` count the
finished trips of the runs with priority. ``requests`` are the pool's
(granted, refused and why); ``controllers`` what the controllers made of the
writes they received (:class:`~devices.sim.control.PriorityCounters`, summed).
``lag_s`` says how far SUMO ever fell behind the city's clock (city seconds;
0: always in step). A bus's position is used while it is at most 3 machine
seconds old (the bus profile's ``max_age_s``), 30 city seconds at x10: a lag
well below that delays what the runtime sees of a bus, it loses nothing.
``per_seed`` has each seed's figures.

**Scenario.** By default the corridor of :mod:`runtime.sumo.scenario`
(7 signals, a bus line both ways every 5 minutes), its demand drawn anew for
each seed and scaled by ``--scale``. ``--net`` and ``--routes`` (comma-separated
files; bus stops may be there or in ``--additional`` files) run any SUMO
network: the same routes for every seed, under SUMO's seed.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Final

from runtime.bench.common import Say, hosts_of, machine
from runtime.errors import ConfigError
from runtime.inventory import Equipment, Inventory
from runtime.sumo.delay import Summary, change_pct, read_trips, summarise
from runtime.sumo.network import Scenario, bus_id, parse_network, parse_routes, scenario_of

__all__ = ["CLOCK_SPEED", "DRAIN_S", "priority_rules", "run"]

#: The city's clock speed of the runs with priority: an hour of traffic in 6 minutes.
CLOCK_SPEED: Final = 10.0
#: After the demand's last departure, how long the traffic may take to drain (s).
DRAIN_S: Final = 1800.0
#: Equipped buses of a line beyond the most the run without priority had at once.
_SPARE_BUSES: Final = 2
#: How long the runtime may take to reach every controller (s).
_ONLINE_S: Final = 120.0
#: Between two runs with priority: the pool's last requests end, a lockout runs out
#: (machine seconds).
_SETTLE_S: Final = 8.0


def priority_rules(lines: Sequence[str]) -> str:
    """The shipped rules, with ``lines`` given unconditional priority (module doc)."""
    from actors.priority.policy import builtin_priority_config

    text = importlib.resources.files("actors").joinpath("plans/priority.toml").read_text(
        encoding="utf-8")
    shipped = builtin_priority_config()
    extra = [f"\n[line.{line}]\nmin_lateness_s = 0\n" for line in lines
             if line not in shipped.lines]
    return text + "".join(extra)


class _Files:
    """The scenario's files: the network, each seed's routes, the additional files."""

    def __init__(self, workdir: Path, *, net: str | None, routes: str | None,
                 additional: str | None, hours: float, scale: float) -> None:
        self.hours, self.scale = hours, scale
        self.corridor = None
        if net is None:
            if routes is not None:
                raise ConfigError("--routes needs --net")
            from runtime.sumo.scenario import build_corridor

            self.corridor = build_corridor(workdir)
            self.net = self.corridor.net
            self.additional = [self.corridor.additional]
            self.name = "corridor"
        else:
            if routes is None:
                raise ConfigError("--net needs --routes")
            if scale != 1.0:
                raise ConfigError("--scale scales the generated corridor's demand, not the "
                                  "routes given")
            self.net = Path(net)
            self.given = [Path(p) for p in routes.split(",") if p]
            self.additional = [Path(p) for p in (additional or "").split(",") if p]
            self.name = self.net.name

    def routes(self, seed: int) -> list[Path]:
        if self.corridor is not None:
            return [self.corridor.routes(seed, self.hours, self.scale)]
        return self.given

    def sumo_args(self, seed: int, trips: Path) -> list[str]:
        from devices.sim.sumo_field import trip_output

        args = ["-n", str(self.net), "-r", ",".join(str(p) for p in self.routes(seed))]
        if self.additional:
            args += ["-a", ",".join(str(p) for p in self.additional)]
        return [*args, *trip_output(trips)]


def _summary(trips: Path, scenario: Scenario) -> Summary:
    return summarise(read_trips(trips), lambda t: scenario.trip(t.id) is not None)


def _figures(s: Summary) -> dict[str, Any]:
    return {"bus_trips": s.bus_trips, "other_trips": s.other_trips, "unfinished": s.unfinished,
            "bus_signal_delay_s": _r(s.bus_delay_s), "bus_travel_time_s": _r(s.bus_travel_s),
            "other_delay_s": _r(s.other_delay_s)}


def _r(x: float | None, digits: int = 2) -> float | None:
    return None if x is None else round(x, digits)


def _crossroads(inventory: Inventory) -> list[Equipment]:
    return [eq for eq in inventory.equipment if eq.kind == "crossroad"]


def _signals(scenario: Scenario, inventory: Inventory) -> Any:
    from devices.sim.sumo_signals import SumoSignalSimulator

    return SumoSignalSimulator(_crossroads(inventory),
                               {xr.id: xr.program for xr in scenario.crossroads})


def _run_off(files: _Files, scenario: Scenario, seed: int, workdir: Path
             ) -> tuple[Summary, Counter[str]]:
    from devices.sim.sumo_field import SumoField

    trips = workdir / f"off.seed{seed}.xml"
    inventory = scenario.inventory(port=1, buses={})
    field = SumoField(scenario, _signals(scenario, inventory), files.sumo_args(seed, trips),
                      seed=seed, limit_s=files.hours * 3600.0 + DRAIN_S)
    report = asyncio.run(field.run())
    return _summary(trips, scenario), report.max_buses


class _FieldLoop:
    """The co-simulation's event loop, in a thread of its own: the controllers' Modbus
    servers and the buses' MQTT session live there across the runs with priority."""

    def __init__(self, scenario: Scenario, inventory: Inventory, mqtt_url: str) -> None:
        from devices.mqtt import MqttSession

        self.scenario = scenario
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sumo-field",
                                       daemon=True)
        self.thread.start()
        self.signals = _signals(scenario, inventory)
        self.mqtt = MqttSession(mqtt_url, client_id=f"cp-sumo-buses-{time.monotonic_ns()}",
                                clean_session=True)
        self.call(self._start())

    async def _start(self) -> None:
        await self.signals.start()
        await self.mqtt.start()
        await self.mqtt.wait_connected()

    def call(self, coro: Any) -> Any:
        done: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return done.result()

    async def _stop(self) -> None:
        await self.mqtt.stop()
        await self.signals.stop()

    def stop(self) -> None:
        try:
            self.call(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)


def _requests(svc: Any) -> tuple[int, Counter[str]]:
    from runtime.service import RuntimeBackend

    doc = RuntimeBackend(svc).priority()["requests"]
    return int(doc.get("granted", 0)), Counter({str(k): int(v)
                                               for k, v in doc.get("refused", {}).items()})


def _online(svc: Any) -> int:
    return sum(int(h.get("online", 0)) for h in hosts_of(svc.tree()))


def _add(total: dict[str, Any], counters: Mapping[str, Any]) -> None:
    for key, value in counters.items():
        if isinstance(value, dict):
            sub = total.setdefault(key, {})
            for k, v in value.items():
                sub[k] = sub.get(k, 0) + int(v)
        else:
            total[key] = total.get(key, 0) + int(value)


def _runs_on(files: _Files, scenario: Scenario, seeds: Sequence[int], workdir: Path,
             buses: Mapping[str, int], clock_speed: float, broker: str, say: Say
             ) -> tuple[dict[int, Summary], dict[str, Any]]:
    from devices.sim.sumo_field import SumoField
    from runtime.embedded import free_port
    from runtime.service import DEVICES, Service, ServiceOptions

    inventory = scenario.inventory(port=free_port(), buses=buses)
    fleet: dict[str, list[str]] = {}
    n = 0
    for line in sorted(scenario.lines):
        for _ in range(buses.get(line, 0)):
            n += 1
            fleet.setdefault(line, []).append(bus_id(scenario.municipality, n))
    svc = Service(inventory, ServiceOptions(
        devices=DEVICES, simulate=False, broker=broker, clock_speed=clock_speed,
        coordinators=(), spares=0, priority_rules=priority_rules(sorted(scenario.lines))))
    out: dict[int, Summary] = {}
    extra: dict[str, Any] = {"granted": 0, "refused": Counter(), "controllers": {},
                             "lag_s": 0.0, "published": 0, "unequipped_trips": 0,
                             "per_seed": {}}
    field_loop: _FieldLoop | None = None
    try:
        svc.start_servers()
        # The buses publish as themselves: the broker takes from an account only what its
        # devices may publish (the runtime's own account is dropped on their topics).
        field_loop = _FieldLoop(scenario, inventory, svc.publisher_url(
            "sumo-buses", [eq for eq in inventory.equipment if eq.profile == "bus"]))
        svc.start_ray()
        svc.start_tree()
        want = len(_crossroads(inventory))
        deadline = time.monotonic() + _ONLINE_S
        while _online(svc) < want and time.monotonic() < deadline:
            time.sleep(0.5)
        say(f"on: the runtime is up, {_online(svc)}/{want} controllers online, clock x"
            f"{clock_speed:g}")
        for seed in seeds:
            granted0, refused0 = _requests(svc)
            trips = workdir / f"on.seed{seed}.xml"
            field = SumoField(scenario, field_loop.signals, files.sumo_args(seed, trips),
                              seed=seed, limit_s=files.hours * 3600.0 + DRAIN_S,
                              buses=fleet, mqtt=field_loop.mqtt, clock=svc.city_clock,
                              pace=True)
            report = field_loop.call(field.run())
            time.sleep(_SETTLE_S)
            granted1, refused1 = _requests(svc)
            out[seed] = _summary(trips, scenario)
            extra["granted"] += granted1 - granted0
            refused = refused1 - refused0
            extra["refused"] += refused
            for counters in report.controllers.values():
                _add(extra["controllers"], counters)
            figures = report.figures()
            lag = figures["lag_s"]["max"]
            extra["lag_s"] = max(extra["lag_s"], lag or 0.0)
            extra["published"] += report.published
            extra["unequipped_trips"] += report.unequipped_trips
            extra["per_seed"][seed] = {"granted": granted1 - granted0,
                                       "refused": sum(refused.values()),
                                       "wall_s": figures["wall_s"], "lag_s": lag}
            say(f"on, seed {seed}: {_figures(out[seed])}, granted {granted1 - granted0}, "
                f"refused {dict(refused)}, {figures['wall_s']} s, lag {lag} s")
    finally:
        try:
            if field_loop is not None:
                field_loop.stop()
        finally:
            svc.stop()
    return out, extra


def _pooled(summaries: Sequence[Summary]) -> Summary:
    """The trips of several runs as one (means weighted by trips)."""
    def mean(pairs: list[tuple[int, float | None]]) -> float | None:
        n = sum(k for k, v in pairs if v is not None)
        return sum(k * v for k, v in pairs if v is not None) / n if n else None

    return Summary(sum(s.bus_trips for s in summaries), sum(s.other_trips for s in summaries),
                   mean([(s.bus_trips, s.bus_delay_s) for s in summaries]),
                   mean([(s.bus_trips, s.bus_travel_s) for s in summaries]),
                   mean([(s.other_trips, s.other_delay_s) for s in summaries]),
                   mean([(s.other_trips, s.other_travel_s) for s in summaries]),
                   sum(s.unfinished for s in summaries))


def run(*, seeds: int = 3, sim_hours: float = 1.0, net: str | None = None,
        routes: str | None = None, additional: str | None = None, scale: float = 1.0,
        clock_speed: float = CLOCK_SPEED, say: Say = print, broker: str = "auto",
        **_: Any) -> dict[str, Any]:
    """The figures of this bench (see the module docstring)."""
    from devices.sumo import ensure_sumo, sumo_version

    if seeds < 1:
        raise ConfigError(f"seeds must be at least 1, not {seeds}")
    if not 0 < sim_hours <= 24:
        raise ConfigError(f"sim_hours {sim_hours!r} outside (0, 24]")
    # The install is said on stderr even with --json: it takes a while, and changes the
    # environment.
    ensure_sumo(lambda line: print(line, file=sys.stderr))
    logging.getLogger("devices.mqtt").setLevel(logging.ERROR)
    seed_list = list(range(1, seeds + 1))
    with tempfile.TemporaryDirectory(prefix="cp-tsp-") as tmp:
        workdir = Path(tmp)
        files = _Files(workdir, net=net, routes=routes, additional=additional,
                       hours=sim_hours, scale=scale)
        scenario = scenario_of(parse_network(files.net),
                               parse_routes([*files.routes(seed_list[0]), *files.additional]))
        if not scenario.crossroads:
            raise ConfigError(f"{files.net}: no traffic light to run")
        if not any(line.crossings for line in scenario.lines.values()):
            raise ConfigError("no bus line of the routes crosses a traffic light on an "
                              "approach with priority: "
                              + "; ".join(scenario.left_out[:5]))
        say(f"scenario {files.name}: {len(scenario.crossroads)} signals, lines "
            f"{', '.join(f'{k} ({len(v.crossings)} crossings)' for k, v in scenario.lines.items())}"
            f"; left out: {len(scenario.left_out)}")
        off: dict[int, Summary] = {}
        most: Counter[str] = Counter()
        for seed in seed_list:
            off[seed], buses = _run_off(files, scenario, seed, workdir)
            for line, k in buses.items():
                most[line] = max(most[line], k)
            say(f"off, seed {seed}: {_figures(off[seed])}")
        fleet = {line: most.get(line, 0) + _SPARE_BUSES for line in scenario.lines}
        on, extra = _runs_on(files, scenario, seed_list, workdir, fleet, clock_speed, broker,
                             say)
    if after_buses := sum(on[s].bus_trips for s in seed_list):
        if not extra["granted"] and not sum(extra["refused"].values()):
            # No request reached a crossroad: the runs "with priority" ran without it.
            raise ConfigError(f"no priority request was decided in {after_buses} bus trips "
                              f"({extra['published']} positions published): the pool "
                              "received none, or none checked in")
    before, after = _pooled(list(off.values())), _pooled([on[s] for s in seed_list])
    reduction = change_pct(before.bus_delay_s, after.bus_delay_s)
    refused: Counter[str] = extra["refused"]
    return {
        "seeds": seed_list,
        "sim_hours": sim_hours,
        "bus_trips": after.bus_trips,
        "other_trips": after.other_trips,
        "bus_signal_delay_s": {"off": _r(before.bus_delay_s), "on": _r(after.bus_delay_s)},
        "bus_travel_time_s": {"off": _r(before.bus_travel_s), "on": _r(after.bus_travel_s)},
        "other_delay_s": {"off": _r(before.other_delay_s), "on": _r(after.other_delay_s)},
        "bus_signal_delay_reduction_pct": None if reduction is None else round(-reduction, 1),
        "other_delay_increase_pct": _r(change_pct(before.other_delay_s, after.other_delay_s),
                                       1),
        "requests": {"granted": extra["granted"], "refused": sum(refused.values()),
                     "refused_by_reason": dict(refused)},
        "controllers": extra["controllers"],
        "lag_s": round(extra["lag_s"], 2),
        "buses": {"published": extra["published"], "equipped": fleet,
                  "unequipped_trips": extra["unequipped_trips"]},
        "per_seed": [{"seed": s, "off": _figures(off[s]), "on": _figures(on[s]),
                      **extra["per_seed"].get(s, {})} for s in seed_list],
        "scenario": {"name": files.name, "signals": len(scenario.crossroads),
                     "lines": sorted(scenario.lines), "scale": scale,
                     "left_out": list(scenario.left_out)},
        "clock_speed": clock_speed,
        "sumo": sumo_version(),
        "machine": machine(),
    }
