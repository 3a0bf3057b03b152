"""A SUMO network and its routes, mapped onto the command post's crossroads and bus lines.

Read with the standard library's XML parser (no SUMO needed): the network's
edges and lanes (``.net.xml``), its traffic lights' programs (``tlLogic``)
and the links they control (``connection`` with ``tl`` and ``linkIndex``);
the routes' vehicle types, vehicles and flows with their routes and stops,
and the bus stops of any additional file.

**Positions.** A network with a geographic projection (``location``'s
``projParameter``) is placed by it (pyproj); one without (``"!"``, as
``netconvert`` builds from plain coordinates) is laid around
:data:`ANCHOR` in Lambert-93 (:data:`runtime.geo.METRIC_CRS`), the network's
metres taken as Lambert-93's.

**Controller programs** (:func:`controller_program`). A SUMO program is a
cycle of phases, each a state string (one character per controlled link:
``G``/``g`` green, ``y``/``Y`` yellow, ``u`` red-yellow, ``r``/``s`` red, ``o``/``O``
off). A *green phase* has a green link and no yellow one; the phases after it
up to the next green phase are its transition: those with a yellow link its
amber, the others its all-red. A controller phase is one green phase and its
transition, in the program's order from its first green phase: its green is
the phase's ``duration``, its minimum ``minDur`` (the duration when the program
gives none), its amber and all-red the transition's durations summed; the
transition's states are kept in order for the controller to show them
(:mod:`devices.sim.sumo_signals`). An actuated program runs as fixed time at
its durations. A program without a green phase is not controlled.

**Approaches** (:func:`approaches_of_light`). Each incoming edge of a light
is an approach. The phase that serves it is the first controller phase in
which one of its straight-ahead links (any of its links if none goes
straight) is green, priority green ``G`` first. The controller serves
approach ``a`` with phase ``(a - 1) % 4 + 1`` (``devices/profiles/traffic_controller.toml``),
so the approaches of phase ``p`` (1 to 4) are numbered ``p`` and ``p + 4`` in
the order of their links; an approach of a later phase, or a third one of a
phase, gets no number (no priority there). Its heading is its last lane
segment's direction of travel, its stop line the end of its kerb lane (index 0).

**Bus lines** (:func:`bus_lines_of`). The vehicles and flows of class
``bus`` (their ``vType``'s ``vClass``) with a ``line`` make the lines. A line's
path is its most frequent route (its outbound way), along its edges' kerb
lanes; a trip on that route drives outbound, one whose route runs the path the
other way (within :data:`~runtime.transit.PATH_TOLERANCE_M`) inbound, any
other is left out of priority. The stops are both ways' (``busStop`` or
``lane``/``endPos``), in order along the path. The line crosses each light its
outbound route drives through on a numbered approach, inbound on the approach
its inbound route (or, with none, the reverse edge) drives in on, checked by
:meth:`~runtime.transit.LineGeometry.check_crossing`.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from runtime.errors import ConfigError
from runtime.inventory import Equipment, Inventory, Municipality
from runtime.transit import (
    INBOUND,
    OUTBOUND,
    PATH_TOLERANCE_M,
    STOP_ID_PATTERN,
    Approach,
    BusLine,
    Crossing,
    LatLon,
    Stop,
    azimuth_distance,
    line_geometry,
)

__all__ = [
    "ANCHOR",
    "BusTrip",
    "ControllerPhase",
    "Crossroad",
    "Light",
    "Link",
    "NetEdge",
    "NetLane",
    "Network",
    "Routes",
    "Scenario",
    "SignalPhase",
    "approaches_of_light",
    "bus_id",
    "bus_lines_of",
    "controller_program",
    "parse_network",
    "parse_routes",
    "scenario_of",
]

#: Where a network without a projection is laid: Dijon's centre (lat, lon).
ANCHOR: Final = (47.3220, 5.0415)
#: SUMO's vehicle classes that make a bus line.
BUS_CLASS: Final = "bus"
_GREEN: Final = frozenset("Gg")
_YELLOW: Final = frozenset("yYu")
# How far back from a stop line the approach's heading is measured (m).
_HEADING_BASE_M: Final = 15.0
_SLUG: Final = "sumo"


# --------------------------------------------------------------------------- the network


@dataclass(frozen=True, slots=True)
class NetLane:
    id: str
    index: int
    length: float
    shape: tuple[tuple[float, float], ...]

    def point_at(self, pos: float) -> tuple[float, float]:
        """The point ``pos`` metres along the lane (SUMO's lane position: scaled to the
        drawn shape, whose length may differ from the lane's)."""
        drawn = _length(self.shape)
        target = max(0.0, min(drawn, pos * drawn / self.length if self.length > 0 else 0.0))
        return _along(self.shape, target)


@dataclass(frozen=True, slots=True)
class NetEdge:
    id: str
    from_node: str
    to_node: str
    lanes: tuple[NetLane, ...]

    @property
    def kerb(self) -> NetLane:
        """The rightmost lane (index 0), where buses stop."""
        return min(self.lanes, key=lambda lane: lane.index)


@dataclass(frozen=True, slots=True)
class SignalPhase:
    """One phase of a SUMO program: its duration, state and minimum (None: not given)."""

    duration: float
    state: str
    min_dur: float | None = None


@dataclass(frozen=True, slots=True)
class Link:
    """A link a light controls: its index in the state, from which edge and lane, to
    which edge, and its direction (``s`` straight, ``l``/``r`` turns, ``t`` a U-turn)."""

    index: int
    from_edge: str
    from_lane: int
    to_edge: str
    direction: str


@dataclass(frozen=True, slots=True)
class Light:
    """A traffic light: its running program's phases and offset, the links it controls."""

    id: str
    program_id: str
    offset: float
    phases: tuple[SignalPhase, ...]
    links: tuple[Link, ...]

    @property
    def size(self) -> int:
        """Characters in its state strings."""
        return len(self.phases[0].state) if self.phases else 0

    def incoming(self) -> tuple[str, ...]:
        """Its incoming edges, in the order of their first link."""
        return tuple(dict.fromkeys(link.from_edge for link in sorted(self.links,
                                                                      key=lambda k: k.index)))


@dataclass(frozen=True, slots=True)
class Network:
    """What the mapping needs of a ``.net.xml``."""

    source: str
    edges: Mapping[str, NetEdge]
    junctions: Mapping[str, tuple[float, float]]
    lights: Mapping[str, Light]
    offset: tuple[float, float] = (0.0, 0.0)
    projection: str | None = None

    def to_latlon(self, x: float, y: float) -> LatLon:
        """The WGS84 position of the network's point ``(x, y)``."""
        got: LatLon = _projector(self.projection, self.offset)(x, y)
        return got

    def centre(self) -> LatLon:
        xs = [p[0] for p in self.junctions.values()] or [0.0]
        ys = [p[1] for p in self.junctions.values()] or [0.0]
        return self.to_latlon((min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2)


@functools.lru_cache(maxsize=16)
def _projector(projection: str | None, offset: tuple[float, float]) -> Any:
    from pyproj import Proj, Transformer

    from runtime.geo import METRIC_CRS

    if projection:
        proj = Proj(projection)

        def geo(x: float, y: float) -> LatLon:
            lon, lat = proj(x - offset[0], y - offset[1], inverse=True)
            return float(lat), float(lon)

        return geo
    to_metric = Transformer.from_crs("EPSG:4326", METRIC_CRS, always_xy=True)
    to_wgs = Transformer.from_crs(METRIC_CRS, "EPSG:4326", always_xy=True)
    x0, y0 = to_metric.transform(ANCHOR[1], ANCHOR[0])

    def laid(x: float, y: float) -> LatLon:
        lon, lat = to_wgs.transform(x0 + x, y0 + y)
        return float(lat), float(lon)

    return laid


def _shape(text: str | None, where: str) -> tuple[tuple[float, float], ...]:
    if not text:
        raise ConfigError(f"{where}: no shape")
    try:
        points = tuple((float(p.split(",")[0]), float(p.split(",")[1])) for p in text.split())
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"{where}: bad shape {text[:60]!r}") from exc
    return points


def _float(element: ET.Element, key: str, where: str, default: float | None = None) -> float:
    text = element.get(key)
    if text is None:
        if default is None:
            raise ConfigError(f"{where}: no {key}")
        return default
    try:
        value = float(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: {key} {text!r} is not a number") from exc
    if not math.isfinite(value):
        raise ConfigError(f"{where}: {key} {text!r} is not finite")
    return value


def _parse_xml(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from exc
    except ET.ParseError as exc:
        raise ConfigError(f"{path}:{exc.position[0]}: {exc}") from exc


def parse_network(path: str | Path) -> Network:
    """Read a SUMO network (:class:`ConfigError` naming the file for a bad one)."""
    path = Path(path)
    root = _parse_xml(path)
    if root.tag != "net":
        raise ConfigError(f"{path}: not a SUMO network (root <{root.tag}>)")
    where = str(path)
    offset, projection = (0.0, 0.0), None
    location = root.find("location")
    if location is not None:
        try:
            ox, oy = (float(v) for v in (location.get("netOffset") or "0,0").split(","))
        except ValueError as exc:
            raise ConfigError(f"{where}: bad netOffset") from exc
        offset = (ox, oy)
        proj = (location.get("projParameter") or "!").strip()
        projection = None if proj == "!" else proj
    edges: dict[str, NetEdge] = {}
    for e in root.iter("edge"):
        if e.get("function") == "internal":
            continue
        eid = e.get("id") or ""
        lanes = tuple(
            NetLane(lane.get("id") or f"{eid}_{i}", int(lane.get("index", i)),
                    _float(lane, "length", f"{where}: lane of {eid}"),
                    _shape(lane.get("shape"), f"{where}: lane {lane.get('id')}"))
            for i, lane in enumerate(e.iter("lane")))
        if not eid or not lanes:
            raise ConfigError(f"{where}: edge {eid!r} has no id or no lane")
        edges[eid] = NetEdge(eid, e.get("from") or "", e.get("to") or "", lanes)
    junctions = {j.get("id") or "": (_float(j, "x", where), _float(j, "y", where))
                 for j in root.iter("junction") if j.get("type") != "internal"}
    links: dict[str, list[Link]] = {}
    for c in root.iter("connection"):
        tl = c.get("tl")
        if tl is None or c.get("linkIndex") is None:
            continue
        try:
            links.setdefault(tl, []).append(Link(
                int(c.get("linkIndex", "")), c.get("from") or "", int(c.get("fromLane", "0")),
                c.get("to") or "", c.get("dir") or "s"))
        except ValueError as exc:
            raise ConfigError(f"{where}: connection of {tl}: {exc}") from exc
    lights: dict[str, Light] = {}
    for logic in root.iter("tlLogic"):
        tid = logic.get("id") or ""
        if tid in lights:
            continue  # the first program loaded is the one SUMO runs
        phases = tuple(
            SignalPhase(_float(p, "duration", f"{where}: tlLogic {tid}"), p.get("state") or "",
                        _float(p, "minDur", where) if p.get("minDur") is not None else None)
            for p in logic.iter("phase"))
        sizes = {len(p.state) for p in phases}
        if len(sizes) > 1:
            raise ConfigError(f"{where}: tlLogic {tid}: phases of different lengths")
        lights[tid] = Light(tid, logic.get("programID") or "0",
                            _float(logic, "offset", where, 0.0), phases,
                            tuple(sorted(links.get(tid, ()), key=lambda k: k.index)))
    return Network(where, edges, junctions, lights, offset, projection)


# --------------------------------------------------------------------------- controller programs


@dataclass(frozen=True, slots=True)
class ControllerPhase:
    """One phase of a controller running a SUMO program (see the module doc): its green
    state, green and minimum green, amber and all-red (s), and the transition's states
    with their durations, in order."""

    green_state: str
    green_s: int
    min_green_s: int
    amber_s: int
    all_red_s: int
    transition: tuple[tuple[str, int], ...] = ()
    sumo_index: int = 0


def _is_green(state: str) -> bool:
    return any(c in _GREEN for c in state) and not any(c in _YELLOW for c in state)


def _seconds(value: float) -> int:
    return max(0, round(value))


def controller_program(light: Light) -> tuple[ControllerPhase, ...]:
    """The controller phases of ``light``'s program (none when it has no green phase)."""
    phases = light.phases
    greens = [i for i, p in enumerate(phases) if _is_green(p.state)]
    if not greens:
        return ()
    out: list[ControllerPhase] = []
    for k, i in enumerate(greens):
        end = greens[k + 1] if k + 1 < len(greens) else greens[0] + len(phases)
        transition = tuple((phases[j % len(phases)].state,
                            _seconds(phases[j % len(phases)].duration))
                           for j in range(i + 1, end))
        amber = sum(d for s, d in transition if any(c in _YELLOW for c in s))
        green = _seconds(phases[i].duration)
        least = phases[i].min_dur
        minimum = green if least is None else min(green, _seconds(least))
        out.append(ControllerPhase(phases[i].state, green, minimum, amber,
                                   sum(d for _, d in transition) - amber, transition, i))
    return tuple(out)


def approaches_of_light(network: Network, light: Light,
                        program: Sequence[ControllerPhase]) -> dict[str, Approach]:
    """The numbered approaches of ``light`` by incoming edge (module doc)."""
    serving: dict[str, int] = {}
    for edge_id in light.incoming():
        links = [k for k in light.links if k.from_edge == edge_id]
        ahead = [k for k in links if k.direction == "s"] or links
        phase = 0
        for strong in (frozenset("G"), _GREEN):
            phase = next((n for n, p in enumerate(program, 1)
                          if any(k.index < len(p.green_state) and p.green_state[k.index] in strong
                                 for k in ahead)), 0)
            if phase:
                break
        if phase and edge_id in network.edges:
            serving[edge_id] = phase
    out: dict[str, Approach] = {}
    used: Counter[int] = Counter()
    for edge_id, phase in serving.items():
        if phase > 4 or used[phase] >= 2:
            continue
        number = phase + 4 * used[phase]
        used[phase] += 1
        lane = network.edges[edge_id].kerb
        end = lane.shape[-1]
        base = _along(lane.shape, max(0.0, _length(lane.shape) - _HEADING_BASE_M))
        line_lat, line_lon = network.to_latlon(*end)
        heading, _ = azimuth_distance(network.to_latlon(*base), (line_lat, line_lon))
        out[edge_id] = Approach(number, round(heading, 1), round(line_lat, 7),
                                round(line_lon, 7))
    return out


def _length(shape: Sequence[tuple[float, float]]) -> float:
    return sum(math.dist(a, b) for a, b in itertools.pairwise(shape))


def _along(shape: Sequence[tuple[float, float]], s: float) -> tuple[float, float]:
    for a, b in itertools.pairwise(shape):
        d = math.dist(a, b)
        if s <= d and d > 0:
            f = s / d
            return a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1])
        s -= d
    return shape[-1]


# --------------------------------------------------------------------------- routes


@dataclass(frozen=True, slots=True)
class BusTrip:
    """A bus vehicle (or flow) of the routes: its line, route and stops' positions."""

    id: str
    line: str
    edges: tuple[str, ...]
    stops: tuple[tuple[str, str, float], ...]  # (stop id, lane id, end position)
    flow: bool = False


@dataclass(frozen=True, slots=True)
class Routes:
    """What the mapping needs of the routes: the buses' trips; every other vehicle is
    traffic it does not follow."""

    trips: tuple[BusTrip, ...]
    left_out: tuple[str, ...] = ()


def parse_routes(paths: Iterable[str | Path]) -> Routes:
    """The bus trips of route and additional files (``busStop`` elements may be in any of
    them); :class:`ConfigError` naming the file for a bad one."""
    roots = [(str(p), _parse_xml(Path(p))) for p in paths]
    stops: dict[str, tuple[str, float]] = {}
    vclass: dict[str, str] = {"DEFAULT_VEHTYPE": "passenger", "DEFAULT_BUSTYPE": BUS_CLASS}
    named: dict[str, tuple[str, ...]] = {}
    for where, root in roots:
        for s in root.iter("busStop"):
            stops[s.get("id") or ""] = (s.get("lane") or "", _float(s, "endPos", where, -1.0))
        for t in root.iter("vType"):
            vclass[t.get("id") or ""] = t.get("vClass") or "passenger"
        for r in root:
            if r.tag == "route" and r.get("id"):
                named[r.get("id") or ""] = tuple((r.get("edges") or "").split())
    trips: list[BusTrip] = []
    left_out: list[str] = []
    for where, root in roots:
        for v in root:
            if v.tag not in ("vehicle", "flow", "trip"):
                continue
            line = v.get("line")
            if not line or vclass.get(v.get("type") or "DEFAULT_VEHTYPE") != BUS_CLASS:
                continue
            vid = v.get("id") or ""
            inner = v.find("route")
            edges = (tuple((inner.get("edges") or "").split()) if inner is not None
                     else named.get(v.get("route") or "", ()))
            if not edges:
                left_out.append(f"{where}: bus {vid} of line {line} has no route of edges")
                continue
            calls: list[tuple[str, str, float]] = []
            for s in v.iter("stop"):
                ref = s.get("busStop")
                if ref is not None:
                    if ref not in stops:
                        raise ConfigError(f"{where}: bus {vid} stops at unknown busStop {ref!r}")
                    calls.append((ref, *stops[ref]))
                elif s.get("lane"):
                    calls.append((f"{line}-{len(calls):02d}", s.get("lane") or "",
                                  _float(s, "endPos", where, -1.0)))
            trips.append(BusTrip(vid, line, edges, tuple(calls), v.tag == "flow"))
    return Routes(tuple(trips), tuple(left_out))


# --------------------------------------------------------------------------- lines


@dataclass(frozen=True, slots=True)
class Crossroad:
    """A light as the inventory's crossroad: its id, light, centre, approaches by edge
    and controller program."""

    id: str
    light: str
    lat: float
    lon: float
    approaches: Mapping[str, Approach]
    program: tuple[ControllerPhase, ...]


@dataclass(frozen=True, slots=True)
class Scenario:
    """A network and its routes mapped (module doc): the crossroads, the lines, each bus
    trip's line and direction, and what was left out and why."""

    network: Network
    crossroads: tuple[Crossroad, ...]
    lines: Mapping[str, BusLine]
    directions: Mapping[str, tuple[str, str]]  # trip or flow id -> (line, direction)
    flows: frozenset[str] = frozenset()
    left_out: tuple[str, ...] = ()
    municipality: str = _SLUG

    def trip(self, vehicle_id: str) -> tuple[str, str] | None:
        """The line and direction of SUMO's vehicle ``vehicle_id`` (a flow's vehicles are
        ``{flow}.{n}``), None if it is no bus of a line."""
        got = self.directions.get(vehicle_id)
        if got is None and "." in vehicle_id:
            flow = vehicle_id.rsplit(".", 1)[0]
            if flow in self.flows:
                got = self.directions.get(flow)
        return got

    def crossroad_of(self, light_id: str) -> Crossroad:
        return next(c for c in self.crossroads if c.light == light_id)

    def inventory(self, *, port: int, buses: Mapping[str, int]) -> Inventory:
        """The inventory of this scenario: its crossroads' controllers on ``port`` (unit
        ids from 1, in order), and ``buses[line]`` buses for each line."""
        centre = self.network.centre()
        muni = Municipality(self.municipality, "SUMO network", centre[0], centre[1], 0)
        equipment: list[Equipment] = []
        for unit, xr in enumerate(self.crossroads, 1):
            approaches = [{"number": a.number, "heading": a.heading_deg, "lat": a.lat,
                           "lon": a.lon}
                          for a in sorted(xr.approaches.values(), key=lambda a: a.number)]
            equipment.append(Equipment(
                xr.id, "crossroad", muni.slug, xr.lat, xr.lon,
                f"modbus://127.0.0.1:{port}/{unit}", "traffic_controller",
                attrs={"approaches": approaches, "schedule": "", "sumo_light": xr.light}))
        n = 0
        for line in sorted(self.lines):
            for _ in range(buses.get(line, 0)):
                n += 1
                equipment.append(Equipment(bus_id(self.municipality, n), "vehicle", muni.slug,
                                           centre[0], centre[1], "mqtt", "bus",
                                           attrs={"line": line}))
        return Inventory("SUMO network " + Path(self.network.source).name, (muni,),
                         tuple(equipment), bus_lines=dict(self.lines),
                         source=self.network.source)


def bus_id(municipality: str, n: int) -> str:
    """The inventory id of the ``n``-th bus (from 1)."""
    return f"bus-{municipality}-{n:04d}"


def _crossroad_id(municipality: str, n: int) -> str:
    return f"xr-{municipality}-{n:04d}"


def _path(network: Network, edges: Sequence[str]) -> list[tuple[float, float]]:
    points: list[tuple[float, float]] = []
    for eid in edges:
        edge = network.edges.get(eid)
        if edge is None:
            raise ConfigError(f"{network.source}: a bus route drives edge {eid!r}, which the "
                              "network does not have")
        for p in edge.kerb.shape:
            if not points or math.dist(points[-1], p) > 0.5:
                points.append(p)
    return points


def _stop_id(raw: str, line: str, n: int) -> str:
    return raw if STOP_ID_PATTERN.match(raw) else f"{line}-{n:02d}"


def bus_lines_of(network: Network, routes: Routes, crossroads: Sequence[Crossroad],
                 municipality: str = _SLUG
                 ) -> tuple[dict[str, BusLine], dict[str, tuple[str, str]], list[str]]:
    """The lines (module doc), each trip's (line, direction), and what was left out."""
    by_line: dict[str, list[BusTrip]] = {}
    for trip in routes.trips:
        by_line.setdefault(trip.line, []).append(trip)
    lines: dict[str, BusLine] = {}
    directions: dict[str, tuple[str, str]] = {}
    left_out = list(routes.left_out)
    by_light = {c.light: c for c in crossroads}
    for line_id, trips in sorted(by_line.items()):
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$", line_id):
            left_out.append(f"line {line_id!r}: not a line id the buses can report")
            continue
        outbound = Counter(t.edges for t in trips).most_common(1)[0][0]
        xy = _path(network, outbound)
        if len(xy) < 2:
            left_out.append(f"line {line_id}: its route has no length")
            continue
        path = tuple(network.to_latlon(*p) for p in xy)
        geometry = line_geometry(path)
        inbound: tuple[str, ...] | None = None
        for trip in trips:
            if trip.edges == outbound:
                directions[trip.id] = (line_id, OUTBOUND)
                continue
            ends = [network.to_latlon(*p) for p in _path(network, trip.edges)]
            located = [geometry.locate(*p) for p in ends]
            if all(off <= PATH_TOLERANCE_M for _, off in located) and \
                    located[0][0] > located[-1][0]:
                directions[trip.id] = (line_id, INBOUND)
                inbound = inbound or trip.edges
            else:
                left_out.append(f"line {line_id}: trip {trip.id} drives neither way of the "
                                "line's path")
        calls: dict[str, tuple[float, LatLon]] = {}
        for trip in trips:
            if trip.id not in directions:
                continue
            for stop_id, lane_id, end in trip.stops:
                lane = _lane(network, lane_id)
                if lane is None or stop_id in calls:
                    continue
                pos = lane.length if end < 0 else end
                at = network.to_latlon(*lane.point_at(pos))
                s, off = geometry.locate(*at)
                if off <= PATH_TOLERANCE_M:
                    calls[stop_id] = (s, at)
        ordered = sorted(calls.items(), key=lambda kv: kv[1][0])
        stops = [Stop(_stop_id(sid, line_id, n), round(at[0], 7), round(at[1], 7))
                 for n, (sid, (_, at)) in enumerate(ordered)]
        if len(stops) < 2:
            stops = [Stop(f"{line_id}-start", *path[0]), Stop(f"{line_id}-end", *path[-1])]
        crossings: list[Crossing] = []
        start = 0.0
        for k, eid in enumerate(outbound[:-1]):
            edge = network.edges[eid]
            light = next((lt for lt in network.lights.values()
                          if any(lk.from_edge == eid and lk.to_edge == outbound[k + 1]
                                 for lk in lt.links)), None)
            if light is None or light.id not in by_light:
                continue
            xr = by_light[light.id]
            out_approach = xr.approaches.get(eid)
            in_edge = _inbound_edge(network, light, inbound, outbound[k + 1], edge)
            in_approach = xr.approaches.get(in_edge or "")
            if out_approach is None or in_approach is None:
                left_out.append(f"line {line_id}: crossroad {xr.id} ({light.id}) has no "
                                "numbered approach for the line")
                continue
            check = geometry.check_crossing(xr.id, (xr.lat, xr.lon), out_approach, in_approach,
                                            start_m=start)
            if check.crossing is None or any(c.crossroad_id == xr.id for c in crossings):
                left_out.append(f"line {line_id}: crossroad {xr.id} ({light.id}): "
                                + "; ".join(m for _, m in check.problems))
                continue
            crossings.append(check.crossing)
            start = check.centre_s_m
        lines[line_id] = BusLine(line_id, municipality, path, tuple(stops),
                                 crossings=tuple(crossings))
    return lines, directions, left_out


def _lane(network: Network, lane_id: str) -> NetLane | None:
    edge = network.edges.get(lane_id.rsplit("_", 1)[0])
    if edge is None:
        return None
    return next((lane for lane in edge.lanes if lane.id == lane_id), None)


def _inbound_edge(network: Network, light: Light, inbound: Sequence[str] | None,
                  after: str, before: NetEdge) -> str | None:
    """The edge an inbound bus drives in on at ``light``: its route's, else the edge that
    comes back from where the outbound route leaves (``after``) towards ``before``'s start."""
    incoming = set(light.incoming())
    if inbound is not None:
        for k, eid in enumerate(inbound[:-1]):
            if eid in incoming and any(lk.from_edge == eid and lk.to_edge == inbound[k + 1]
                                       for lk in light.links):
                return eid
    leave = network.edges.get(after)
    if leave is None:
        return None
    return next((eid for eid in light.incoming()
                 if network.edges[eid].from_node == leave.to_node), None)


def scenario_of(network: Network, routes: Routes, municipality: str = _SLUG) -> Scenario:
    """Map a network and its routes (module doc)."""
    crossroads: list[Crossroad] = []
    left_out: list[str] = []
    for light in network.lights.values():
        program = controller_program(light)
        if not program:
            left_out.append(f"light {light.id}: its program has no green phase")
            continue
        nodes = [network.junctions[n] for n in (light.id,) if n in network.junctions] or [
            network.junctions[network.edges[e].to_node] for e in light.incoming()
            if e in network.edges and network.edges[e].to_node in network.junctions]
        if not nodes:
            left_out.append(f"light {light.id}: no junction")
            continue
        x = sum(p[0] for p in nodes) / len(nodes)
        y = sum(p[1] for p in nodes) / len(nodes)
        lat, lon = network.to_latlon(x, y)
        approaches = approaches_of_light(network, light, program)
        unnumbered = set(light.incoming()) - set(approaches)
        if unnumbered:
            left_out.append(f"light {light.id}: no priority on {', '.join(sorted(unnumbered))} "
                            "(served after phase 4, or a third approach of a phase)")
        crossroads.append(Crossroad(_crossroad_id(municipality, len(crossroads) + 1), light.id,
                                    round(lat, 7), round(lon, 7), approaches, program))
    lines, directions, more = bus_lines_of(network, routes, crossroads, municipality)
    flows = frozenset(t.id for t in routes.trips if t.flow)
    return Scenario(network, tuple(crossroads), lines, directions, flows,
                    (*left_out, *more), municipality)
