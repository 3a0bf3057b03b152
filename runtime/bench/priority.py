"""``commandpost bench priority-latency``: from a bus's position to the controller's receipt.

Each sample of the bench is one MQTT publish of a position that checks a bus
in at a crossroad (the first position inside the detection distance of the
approach's stop line, :mod:`actors.priority.tracker`): from just before that
publish was written to the broker's socket (``time.time()``, by the buses' own
process, :mod:`runtime.bench.buses`) to the moment the crossroad's controller simulator
decoded the request's Modbus write (its receipt log,
:meth:`devices.sim.control.SimControl.priority_log`, stamped with the same
machine's ``time.time()``). The path between is the runtime's: broker, a pool
member (its own process), one message on the lane connection of the crossroad's
host (served by its lane process, :mod:`runtime.laneproc`), the policy, one
Modbus write on the lane's own session. Each phase also
gives where each sample's time went (``legs_ms``, :func:`legs`).

The bench drives buses of its own: buses of the inventory taken off the field
at the simulator (no simulated position is published under their ids), each
driving again and again towards one crossroad of its line (its own), at
14 m/s and 2 Hz, from four samples beyond the tracker's detection reach to two
seconds past the check-in; the jump back to the start is a relocation, which
cancels the check-in (the lane clears it at the controller). The
policy grants every request (the service's ``priority_grant_all``): no sample
is filtered away by lateness or lockout. A trigger with no receipt within
:data:`MISS_S` is a miss and counts as 1,000 ms in the percentiles.

Phases: ``idle`` (the crossroads and the buses alone, the simulators holding every
sample back but the controllers' answers to polls), ``idle_traced`` (the same,
the pool's OpenTelemetry spans on, kept in memory: ``tracing_overhead_ms`` is
the difference), ``city`` (the whole metropolis at the scale given, at its
nominal rates), ``flood`` (the same city, its crossroads on one host with
every vehicle, ``[placement.colocate] fleet = "traffic"``, and
:data:`FLOOD_DEVICES` of those vehicles, service vehicles and buses but not
the bench's own, sent :data:`FLOOD_MSGS_PER_S` extra messages per second by
the load generator, :mod:`devices.sim.loadgen`, from before the first pass
to after the last). Each gives ``p50_ms``, ``p99_ms``, ``max_ms``, ``n`` and
``misses``; ``flood`` also what the generator achieved over the passes
(``offered_msgs_per_s``, ``offered_points_per_s``, ``skipped``, by its own
counters), how many devices it spoke for (``flooded_devices``) and the
entities of the crossroads' host (``host_entities``). Each phase also gives,
per pool member, where its granted requests' time went (``stages_ms``: p50 and
p99 of each stage of :data:`actors.priority.pool.STAGES`) and the positions it
dropped by reason (``member_errors``), and the points the simulated field
answered or published per second over the passes, by the simulators' own
counters (``field_points_per_s``: the city's load was there).

Every phase runs the service as a deployment that serves bus priority is
meant to run: the hosts with no entity on the priority path in the
background (``background_nice = "idle"``, :mod:`runtime.niceness`), and so
are the simulators of every family but the traffic controllers, which stand
for field devices with processors of their own (``sim_background``). The
store and Ray's daemons keep the normal priority; the priority path itself
runs in the real-time class (``priority_realtime`` :data:`REALTIME`,
``SCHED_RR``: the pool's members, the crossroads' lane processes, the
embedded broker, and with ``sim_realtime`` the traffic controllers'
simulators), as the README's deployment of ``COMMANDPOST_PRIORITY_REALTIME``
does. Each phase says what the system granted (``realtime``: the real-time
priority of each member, lane process, broker process and controllers'
simulator; 0 where it was refused, the normal class). The target
is ``flood_p99_ratio`` (flood p99 ÷ idle p99) ≤ 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import tempfile
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from actors.priority.tracker import DETECTION_DISTANCE_M, DETECTION_ETA_S
from runtime.bench.buses import HZ, SPEED_MPS
from runtime.bench.common import City, Say, hosts_of, machine, percentile
from runtime.errors import ConfigError
from runtime.inventory import Equipment, Inventory, PlacementPolicy
from runtime.transit import OUTBOUND, BusLine, Crossing, line_geometry

__all__ = ["FLOOD_DEVICES", "FLOOD_MSGS_PER_S", "LEGS", "MISS_S", "Pass", "colocated",
           "drive_passes", "flooded", "legs", "match", "matched", "passes_for", "run"]

#: A trigger with no receipt within this long is a miss (s).
MISS_S: Final = 1.0
#: The flood phase: the load generator's extra messages per second in all, and how many
#: vehicles it speaks for (4,000 messages/s of five values each: 20,000 points/s).
FLOOD_MSGS_PER_S: Final = 4000
FLOOD_DEVICES: Final = 200
#: The service's background (runtime.niceness) in every phase.
BACKGROUND: Final = "idle"
REALTIME: Final = 10
"""The real-time priority the bench asks for the priority path (``SCHED_RR``, 1..99),
unless told otherwise (``--realtime``; 0: the normal class)."""
#: How long the generator runs at its pace before the first pass (s).
_FLOOD_WARMUP_S: Final = 3.0
#: Where a pass starts and ends, from the stop line (m), its speed (m/s) and sample rate.
_BEFORE_M: Final = 330.0
_AFTER_M: Final = 30.0
_SPEED_MPS: Final = SPEED_MPS
_HZ: Final = HZ
#: How far from its stop line the tracker checks a bus at that speed in.
_REACH_M: Final = max(DETECTION_DISTANCE_M, DETECTION_ETA_S * _SPEED_MPS)
#: A short pass: from this far beyond the reach to this far past the check-in (m).
_SHORT_BEFORE_M: Final = 3.5 * _SPEED_MPS / _HZ
_SHORT_AFTER_M: Final = 2.0 * _SPEED_MPS


@dataclass(frozen=True, slots=True)
class Pass:
    """One bus driving one approach of one crossroad: its samples' positions."""

    bus_id: str
    municipality: str
    line: str
    crossroad: str
    approach: int
    direction: str
    points: tuple[tuple[float, float, float, float], ...]  # lat, lon, heading, distance to line
    delay_s: float = 120.0



def _pass(bus_id: str, municipality: str, line: BusLine, crossing: Crossing,
          direction: str, through: bool) -> Pass | None:
    """A pass from beyond the detection reach to past the stop line (``through``), or
    only to :data:`_SHORT_AFTER_M` past the check-in."""
    geometry = line_geometry(line)
    stop = crossing.stop_line_s(direction)
    sign = 1.0 if direction == OUTBOUND else -1.0
    before = _BEFORE_M if through else _REACH_M + _SHORT_BEFORE_M
    after = _AFTER_M if through else _SHORT_AFTER_M - _REACH_M
    start, end = stop - sign * before, stop + sign * after
    if not (0.0 <= min(start, end) and max(start, end) <= geometry.length_m):
        return None
    step = _SPEED_MPS / _HZ
    n = int(abs(end - start) / step) + 1
    points = []
    for i in range(n):
        s = start + sign * i * step
        lat, lon = geometry.point_at(s)
        points.append((lat, lon, geometry.heading_at(s, direction), sign * (stop - s)))
    return Pass(bus_id, municipality, line.id, crossing.crossroad_id,
                crossing.approach(direction), direction, tuple(points))


def passes_for(inventory: Inventory, buses: Sequence[str], *, through: bool = True
               ) -> dict[str, list[Pass]]:
    """Per bus, its pass on the outbound approach of a crossroad of its own (no other bus
    of the bench uses it) where no other crossing of the line lies on the way (none for a
    bus whose line has no such crossing): across it (``through``: checked out), or from
    just beyond the detection reach to a few seconds past the check-in (the jump back to
    the start cancels it as a relocation)."""
    out: dict[str, list[Pass]] = {}
    used: set[str] = set()
    for bus in buses:
        eq = inventory.by_id(bus)
        line = inventory.bus_lines.get(str(eq.attrs.get("line", "")))
        if line is None:
            continue
        for crossing in line.crossings:
            if crossing.crossroad_id in used:
                continue
            stop = crossing.s_m
            # No other crossing whose approach the pass drives on, before or after.
            if any(stop - _BEFORE_M - 50.0 <= c.s_m <= stop + _AFTER_M + _REACH_M + 50.0
                   for c in line.crossings if c is not crossing):
                continue
            one = _pass(bus, eq.municipality, line, crossing, OUTBOUND, through)
            if one is not None:
                out[bus] = [one]
                used.add(crossing.crossroad_id)
                break
    return out


@dataclass(slots=True)
class Trigger:
    bus_id: str
    crossroad: str
    approach: int
    published: float


def drive_passes(mqtt_url: str, passes: Mapping[str, Sequence[Pass]], *, rounds: int,
                 clock: Any, lines: Mapping[str, BusLine]) -> list[Trigger]:
    """Drive every bus through its passes ``rounds`` times, concurrently, from a process
    of their own (:mod:`runtime.bench.buses`), and return each check-in trigger with
    its publish time.

    ``mqtt_url`` must be allowed to publish as these buses (:meth:`City.publisher_url`).
    """
    import json
    import os
    import subprocess
    import sys

    from runtime.transit import line_to_wire

    spec = {"passes": {bus: [dataclasses.asdict(p) for p in route]
                       for bus, route in passes.items()},
            "rounds": rounds, "clock": _clock_wire(clock),
            "lines": [line_to_wire(line) for line in lines.values()]}
    with tempfile.TemporaryDirectory(prefix="cp-buses-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "triggers.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        # The URL carries the account's password: the environment, not the command line.
        env = dict(os.environ, COMMANDPOST_MQTT_URL=mqtt_url)
        done = subprocess.run([sys.executable, "-m", "runtime.bench.buses", str(spec_path),
                               str(out_path)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, check=False)
        if done.returncode != 0:
            raise ConfigError(f"the bench's buses failed ({done.returncode}): "
                              f"{done.stderr.strip()[-2000:]}")
        rows = json.loads(out_path.read_text(encoding="utf-8"))
    return [Trigger(str(b), str(c), int(a), float(t)) for b, c, a, t in rows]


def _clock_wire(clock: Any) -> dict[str, float] | None:
    """The spec of the city's clock on the wire (None: the machine's)."""
    spec = getattr(clock, "spec", None)
    return None if spec is None else dict(spec.to_wire())


def match(triggers: Sequence[Trigger], receipts: Sequence[Mapping[str, Any]],
          device_of: Mapping[str, str]) -> list[float]:
    """Latency (s) of each trigger: to the first request the crossroad's controller
    received on the trigger's approach after it; :data:`MISS_S` + when none."""
    return [x for x, _ in matched(triggers, receipts, device_of)]


def matched(triggers: Sequence[Trigger], receipts: Sequence[Mapping[str, Any]],
            device_of: Mapping[str, str]) -> list[tuple[float, Mapping[str, Any] | None]]:
    """Each trigger's latency (s) as :func:`match` gives it, with the receipt it matched
    (None for a miss), in the order of their publishes."""
    by_key: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for r in receipts:
        if r.get("command") == "request":
            by_key.setdefault((str(r["device"]), int(r["approach"])), []).append(r)
    for records in by_key.values():
        records.sort(key=lambda r: float(r["ts"]))
    used: dict[tuple[str, int], int] = {}
    out: list[tuple[float, Mapping[str, Any] | None]] = []
    for t in sorted(triggers, key=lambda t: t.published):
        key = (device_of.get(t.crossroad, t.crossroad), t.approach)
        records = by_key.get(key, [])
        k = used.get(key, 0)
        while k < len(records) and float(records[k]["ts"]) < t.published:
            k += 1
        if k < len(records) and float(records[k]["ts"]) - t.published <= MISS_S:
            out.append((float(records[k]["ts"]) - t.published, records[k]))
            used[key] = k + 1
        else:
            out.append((math.inf, None))
    return out


#: The legs of a sample's way (:func:`legs`), each between two of its stamps.
LEGS: Final = ("broker", "member", "call", "policy", "field")


def legs(samples: Sequence[tuple[float, Mapping[str, Any] | None]],
         published: Sequence[float],
         timelines: Sequence[Sequence[Sequence[float]]]) -> dict[str, Any]:
    """Where each matched sample's time went (ms: p50, p99), joined by request id with
    the members' timelines (:meth:`actors.priority.pool.PoolMember.on_status`): from the
    publish to the member's receipt (``broker``), to its request sent (``member``), to the
    lane's taking it (``call``), to its decision (``policy``), to the controller's receipt
    of the write (``field``); ``joined``: how many samples were found in a timeline."""
    by_id = {int(t[0]): t for line in timelines for t in line if len(t) == 6}
    spans: dict[str, list[float]] = {leg: [] for leg in LEGS}
    joined = 0
    for (latency, record), at in zip(samples, published, strict=True):
        if record is None or not math.isfinite(latency):
            continue
        t = by_id.get(int(record["request_id"]))
        if t is None:
            continue
        joined += 1
        _, received, sent, entered, decided, _ = map(float, t)
        stamps = (at, received, sent, entered, decided, float(record["ts"]))
        for leg, a, b in zip(LEGS, stamps, stamps[1:], strict=False):
            spans[leg].append((b - a) * 1000.0)
    out: dict[str, Any] = {leg: {"p50": round(percentile(v, 50), 3),
                                 "p99": round(percentile(v, 99), 3)} if v else None
                           for leg, v in spans.items()}
    out["joined"] = joined
    return out


def summary(latencies: Sequence[float]) -> dict[str, Any]:
    ms = [min(x, MISS_S) * 1000.0 for x in latencies]
    if not ms:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None, "n": 0, "misses": 0}
    return {"p50_ms": round(percentile(ms, 50), 3), "p99_ms": round(percentile(ms, 99), 3),
            "max_ms": round(max(ms), 3), "n": len(ms),
            "misses": sum(1 for x in latencies if not math.isfinite(x))}


def _bench_buses(inventory: Inventory, want: int) -> list[str]:
    buses = [eq.id for eq in inventory.equipment if eq.profile == "bus"]
    return buses[:want] if want else buses


def colocated(policy: PlacementPolicy) -> PlacementPolicy:
    """The flood phase's placement: ``policy`` with one traffic host, which the fleet
    joins (the vehicles have no shard count of their own then)."""
    shards = {d: n for d, n in policy.shards.items() if d != "fleet"}
    shards["traffic"] = 1
    return dataclasses.replace(policy, shards=shards,
                               colocate={**policy.colocate, "fleet": "traffic"})


def flooded(inventory: Inventory, bench_buses: Collection[str],
            want: int = FLOOD_DEVICES) -> list[Equipment]:
    """The MQTT vehicles the load generator speaks for: ``want`` of them (all when there
    are fewer), spread evenly over the inventory's order, none of ``bench_buses``
    (the bench drives those itself)."""
    vehicles = [eq for eq in inventory.equipment
                if eq.kind == "vehicle" and eq.endpoint == "mqtt" and eq.id not in bench_buses]
    if len(vehicles) <= want:
        return vehicles
    return [vehicles[i * len(vehicles) // want] for i in range(want)]


def _emitted(report: Mapping[str, Any], key: str) -> int:
    return sum(int(d.get(key, 0)) for d in report["devices"].values())


def _phase(city: City, say: Say, samples: int, name: str, *, flood: bool = False,
           quiet: bool = False) -> dict[str, Any]:
    inv = city.inventory
    passes = passes_for(inv, _bench_buses(inv, 0), through=False)
    if not passes:
        raise ConfigError("no bus line of this inventory crosses a crossroad with room "
                          "for a pass")
    city.control.offline(list(passes))
    if quiet:
        city.control.hold()  # no simulated device publishes: the bench's buses alone
    per_round = len(passes)
    rounds = max(1, math.ceil(samples / per_round))
    say(f"{name}: {len(passes)} buses, each across its own crossroad, {rounds} rounds")
    with tempfile.TemporaryDirectory(prefix="cp-flood-") as tmp:
        gen = _Flood(city, Path(tmp), passes) if flood else None
        try:
            since = time.time()
            field0 = _field_points(city)
            url = city.publisher_url("bench-buses", [inv.by_id(b) for b in passes])
            triggers = drive_passes(url, passes, rounds=rounds,
                                    clock=city.city_clock, lines=inv.bus_lines)
            load = gen.finish() if gen is not None else {}
            field = (_field_points(city) - field0) / (time.time() - since)
        finally:
            if gen is not None:
                gen.stop()
    time.sleep(MISS_S + 0.5)
    receipts = city.control.priority_log(since=since)
    found = matched(triggers, receipts, {})
    out = summary([x for x, _ in found])
    out["field_points_per_s"] = round(field, 1)
    out.update(load)
    from runtime.service import RuntimeBackend

    members = RuntimeBackend(city.svc).priority()["members"]
    out["spans"] = sum(int(m.get("spans", 0)) for m in members)
    # Where a granted request's time went, per member (pool.STAGES), and what they dropped.
    out["stages_ms"] = {str(m.get("id")): m.get("stages_ms", {}) for m in members}
    out["member_errors"] = {str(m.get("id")): m.get("errors", {}) for m in members}
    out["legs_ms"] = legs(found, sorted(t.published for t in triggers),
                          _timelines(city, [str(m.get("id")) for m in members]))
    out["realtime"] = realtime_granted(city, [int(m.get("pid") or 0) for m in members])
    say(f"{name}: {json_line(out)}")
    city.control.offline(list(passes), False)
    if quiet:
        city.control.hold(False)
    return out


def realtime_granted(city: City, members: Sequence[int]) -> dict[str, list[int]]:
    """The real-time priority each process of the priority path runs at (0: the normal
    class; :mod:`runtime.niceness`): the members, the crossroads' lane processes, the
    broker and the traffic controllers' simulators, as the system says."""
    import psutil

    from runtime.niceness import realtime_of

    lanes: list[int] = []
    for host in hosts_of(city.svc.tree()):
        with contextlib.suppress(psutil.Error, ValueError):
            lanes += [p.pid for p in psutil.Process(int(host.get("pid") or 0)).children()
                      if "runtime.laneproc" in p.cmdline()]
    controllers: list[int] = []
    if city.svc.sim_proc is not None:
        with contextlib.suppress(psutil.Error):
            runner = psutil.Process(city.svc.sim_proc.pid)
            for proc in [runner, *runner.children(recursive=True)]:
                argv = proc.cmdline()
                if "--kinds" in argv and "traffic" in argv[argv.index("--kinds") + 1]:
                    controllers.append(proc.pid)
    return {"members": [realtime_of(pid) for pid in members],
            "lanes": [realtime_of(pid) for pid in lanes],
            "broker": [realtime_of(pid) for pid in city.process_groups()["broker"]],
            "controllers": [realtime_of(pid) for pid in controllers]}


def _timelines(city: City, members: Sequence[str]) -> list[list[list[float]]]:
    """Each member's recent grants' times (its ``status``)."""
    import ray

    out = []
    for member in members:
        handle = city.svc.host_handle(city.svc.plan.owner[member])
        status = ray.get(handle.request.remote(member, "status", None, 10.0), timeout=15)
        out.append(list(status.get("timeline") or ()))
    return out


def _field_points(city: City) -> int:
    """The points every simulated device has answered or published so far, by the
    simulators' own counters (the load generator's are its own)."""
    counters = city.control.counters()
    return sum(int(d.get("points", 0)) for d in counters.get("devices", {}).values())


class _Flood:
    """The flood phase's load generator: started at :data:`FLOOD_MSGS_PER_S` over the
    :func:`flooded` vehicles, its counters read before the first pass and after the last."""

    def __init__(self, city: City, workdir: Path, passes: Collection[str]) -> None:
        from runtime.bench.ingest import GeneratorProcess

        devices = flooded(city.inventory, passes)
        if not devices:
            raise ConfigError("no MQTT vehicle is left for the load generator to speak for")
        host = city.svc.plan.owner[next(
            eq.id for eq in city.inventory.equipment if eq.kind == "crossroad")]
        self.figures: dict[str, Any] = {
            "flooded_devices": len(devices), "flood_host": host,
            "host_entities": len(city.svc.plan.host(host).entity_ids),
        }
        self.gen = GeneratorProcess(city, workdir, devices)
        try:
            self.gen.rate(FLOOD_MSGS_PER_S)
            time.sleep(_FLOOD_WARMUP_S)
            self._r0 = self.gen.report()
        except BaseException:
            self.gen.stop()
            raise
        self._t0 = time.monotonic()

    def finish(self) -> dict[str, Any]:
        """What the generator achieved since the first pass, by its own counters."""
        r1 = self.gen.report()
        dt = time.monotonic() - self._t0
        self.gen.rate(0)
        return {**self.figures, "rate_msgs_per_s": FLOOD_MSGS_PER_S,
                "offered_msgs_per_s": round(
                    (_emitted(r1, "emitted") - _emitted(self._r0, "emitted")) / dt, 1),
                "offered_points_per_s": round(
                    (_emitted(r1, "points") - _emitted(self._r0, "points")) / dt, 1),
                "skipped": int(r1.get("skipped", 0)) - int(self._r0.get("skipped", 0)),
                "window_s": round(dt, 1)}

    def stop(self) -> None:
        self.gen.stop()


def json_line(d: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


def _phases(scale: float) -> Iterator[tuple[str, dict[str, Any], str]]:
    """Each phase: its name, its city and the pool's trace exporter."""
    yield "idle", {"scale": scale, "kinds": ("crossroad", "vehicle")}, "none"
    yield "idle_traced", {"scale": scale, "kinds": ("crossroad", "vehicle")}, "memory"
    yield "city", {"scale": scale}, "none"
    yield "flood", {"scale": scale, "placement": colocated}, "none"


def run(*, scale: float = 1.0, say: Say = print, broker: str = "auto",
        samples: int = 1000, realtime: int = REALTIME, **_: Any) -> dict[str, Any]:
    """The figures of this bench (see the module docstring); ``realtime`` 0 runs the
    priority path in the normal class (a deployment without the privilege)."""
    import os

    from actors.priority.tracing import ENV
    from runtime.niceness import check_realtime

    realtime = check_realtime(realtime)

    # The bench's own publisher queues many samples at once: aiomqtt warns of each.
    logging.getLogger("devices.mqtt").setLevel(logging.ERROR)
    out: dict[str, Any] = {}
    for name, kw, traces in _phases(scale):
        before = os.environ.get(ENV)
        os.environ[ENV] = traces  # the pool's processes inherit it
        try:
            with City(say=say, broker=broker, priority_grant_all=True,
                      background_nice=BACKGROUND, sim_background=True,
                      priority_realtime=realtime, sim_realtime=bool(realtime), **kw) as city:
                out[name] = _phase(city, say, samples, name, flood=name == "flood",
                                   quiet=name.startswith("idle"))
                out.setdefault("broker", city.broker_kind)
        finally:
            if before is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = before
    idle, traced = out["idle"], out["idle_traced"]
    out["tracing_overhead_ms"] = {
        q: None if idle[f"{q}_ms"] is None or traced[f"{q}_ms"] is None
        else round(traced[f"{q}_ms"] - idle[f"{q}_ms"], 3) for q in ("p50", "p99")}
    flood = out["flood"]
    out["flood_p99_ratio"] = (None if not idle["p99_ms"] or flood["p99_ms"] is None
                              else round(flood["p99_ms"] / idle["p99_ms"], 2))
    out["machine"] = machine()
    out["background"] = BACKGROUND
    out["realtime_asked"] = realtime
    out["scale"] = scale
    out["left_out"] = []
    return out
