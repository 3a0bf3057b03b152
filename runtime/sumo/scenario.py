"""The default scenario of ``commandpost bench tsp``: a signalised corridor with a bus line.

A straight east-west arterial of :data:`SIGNALS` signalised crossroads
:data:`SPACING_M` apart (junctions ``J0`` … ``J6`` from west to east), two
lanes each way at 50 km/h, from node ``W`` to node ``E`` (:data:`END_M`
beyond the end crossroads); at each crossroad a cross street, one lane each
way, runs :data:`CROSS_M` north (``N{i}``) and south (``S{i}``). Edges are
``m{k}`` eastbound (``m0`` from ``W`` to ``J0``, ``m7`` from ``J6`` to ``E``)
and ``-m{k}`` westbound; ``n{i}``/``s{i}`` drive in from the north and south
ends, ``-n{i}``/``-s{i}`` out.

**Signals.** ``netconvert`` builds each crossroad's two-phase program
(``--tls.default-type static``: the arterial's green, then the cross street's,
each followed by a 3 s yellow and a 2 s all-red); this module then sets its
timings: the arterial :data:`ARTERIAL_GREEN_S` s of green (minimum
:data:`ARTERIAL_MIN_S`), the cross street :data:`CROSS_GREEN_S` s (minimum
:data:`CROSS_MIN_S`), a 72 s cycle, every offset 0.

**Bus line** :data:`LINE` runs the arterial both ways (outbound west to east)
every :data:`HEADWAY_S` s, 20 s at each of its five stops a direction
(``busStop`` elements of ``stops.add.xml``, on the kerb lane): the first near
its end of the arterial, the others 20 m past every other crossroad (far
side, as bus-priority corridors place them: a bus brakes for its stop before
it comes within the priority tracker's reach of the next stop line, and asks
for its green once it has left; and the stop lies beyond the short queue of the
other way's traffic waiting at that crossroad, which the tracker, whose stops
serve both ways, would take for a bus at its stop), the last past the end
crossroad.

**Demand** (vehicles per hour at ``scale`` 1, :data:`DEMAND`): the arterial's
through traffic, cross-street traffic across and onto the arterial, and a few
turns off it; each vehicle is a ``trip`` (SUMO routes it) departing at a
Poisson time drawn from ``seed``, so a seed is one demand, the same with and
without priority. The files: ``corridor.net.xml``, ``stops.add.xml`` and, per
seed, ``corridor.seed{N}.rou.xml``.
"""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from runtime.errors import ConfigError

__all__ = ["ARTERIAL_GREEN_S", "CROSS_GREEN_S", "DEMAND", "HEADWAY_S", "LINE", "SIGNALS",
           "Corridor", "build_corridor", "corridor_routes", "retime_signals"]

SIGNALS: Final = 7
SPACING_M: Final = 320.0
END_M: Final = 250.0
CROSS_M: Final = 200.0
#: 50 km/h.
SPEED_MPS: Final = 13.89
ARTERIAL_GREEN_S: Final = 42
ARTERIAL_MIN_S: Final = 10
CROSS_GREEN_S: Final = 20
CROSS_MIN_S: Final = 8
YELLOW_S: Final = 3
ALL_RED_S: Final = 2
LINE: Final = "C1"
HEADWAY_S: Final = 300.0
DWELL_S: Final = 20
#: Vehicles per hour at scale 1: each arterial direction's through traffic, each
#: cross-street approach's traffic across, onto the arterial (each way), and the
#: arterial's turns off into each cross street end (from each arterial end).
DEMAND: Final = {"arterial": 420.0, "across": 110.0, "onto": 25.0, "off": 12.0}

_NET: Final = "corridor.net.xml"
_STOPS: Final = "stops.add.xml"
# Stops: outbound on these eastbound edges, inbound on these westbound ones (first to last).
_OUT_STOPS: Final = (0, 2, 4, 6, 7)
_IN_STOPS: Final = (7, 5, 3, 1, 0)
_STOP_LEN_M: Final = 20.0
#: A far-side stop starts this far past its crossroad's edge (m).
_FAR_SIDE_M: Final = 20.0


@dataclass(frozen=True, slots=True)
class Corridor:
    """The generated files: the network and the bus stops (routes are per seed)."""

    net: Path
    additional: Path

    def routes(self, seed: int, hours: float, scale: float = 1.0) -> Path:
        """The routes of ``seed`` over ``hours`` (written once, then reused)."""
        path = self.net.parent / f"corridor.seed{seed}.h{hours:g}.x{scale:g}.rou.xml"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(corridor_routes(seed, hours, scale), encoding="utf-8")
            tmp.replace(path)
        return path


def _x(i: int) -> float:
    return i * SPACING_M


def _nodes() -> str:
    rows = [f'<node id="W" x="{-END_M}" y="0"/>',
            f'<node id="E" x="{_x(SIGNALS - 1) + END_M}" y="0"/>']
    for i in range(SIGNALS):
        rows += [f'<node id="J{i}" x="{_x(i)}" y="0" type="traffic_light"/>',
                 f'<node id="N{i}" x="{_x(i)}" y="{CROSS_M}"/>',
                 f'<node id="S{i}" x="{_x(i)}" y="{-CROSS_M}"/>']
    return "<nodes>\n" + "\n".join(rows) + "\n</nodes>\n"


def _main_nodes() -> list[str]:
    return ["W", *(f"J{i}" for i in range(SIGNALS)), "E"]


def _edges() -> str:
    rows = []
    main = _main_nodes()
    for k in range(len(main) - 1):
        a, b = main[k], main[k + 1]
        rows += [f'<edge id="m{k}" from="{a}" to="{b}" numLanes="2" speed="{SPEED_MPS}" '
                 'priority="3"/>',
                 f'<edge id="-m{k}" from="{b}" to="{a}" numLanes="2" speed="{SPEED_MPS}" '
                 'priority="3"/>']
    for i in range(SIGNALS):
        for end in ("n", "s"):
            node = f"{end.upper()}{i}"
            rows += [f'<edge id="{end}{i}" from="{node}" to="J{i}" numLanes="1" '
                     f'speed="{SPEED_MPS}" priority="1"/>',
                     f'<edge id="-{end}{i}" from="J{i}" to="{node}" numLanes="1" '
                     f'speed="{SPEED_MPS}" priority="1"/>']
    return "<edges>\n" + "\n".join(rows) + "\n</edges>\n"


def retime_signals(net: Path) -> None:
    """Set the corridor's signal timings in ``net`` (see the module doc): each green phase
    that gives the arterial a green gets the arterial's green and minimum, the other the
    cross street's; yellows and all-reds stay as ``netconvert`` built them."""
    tree = ET.parse(net)
    root = tree.getroot()
    arterial_links: dict[str, set[int]] = {}
    for conn in root.iter("connection"):
        tl, index = conn.get("tl"), conn.get("linkIndex")
        if tl is None or index is None:
            continue
        if conn.get("from", "").lstrip("-").startswith("m"):
            arterial_links.setdefault(tl, set()).add(int(index))
    for logic in root.iter("tlLogic"):
        links = arterial_links.get(logic.get("id", ""), set())
        for phase in logic.iter("phase"):
            state = phase.get("state", "")
            if "y" in state.lower() or not any(c in "Gg" for c in state):
                continue
            arterial = any(state[i] in "Gg" for i in links if i < len(state))
            green, least = ((ARTERIAL_GREEN_S, ARTERIAL_MIN_S) if arterial
                            else (CROSS_GREEN_S, CROSS_MIN_S))
            phase.set("duration", str(green))
            phase.set("minDur", str(least))
            phase.set("maxDur", str(green))
    tree.write(net, encoding="UTF-8", xml_declaration=True)


def _stops() -> str:
    rows = []
    for k in _OUT_STOPS:
        rows.append(_stop_row(f"{LINE}-out-{k}", f"m{k}_0", _stop_pos(k, k == _OUT_STOPS[0])))
    for k in _IN_STOPS:
        rows.append(_stop_row(f"{LINE}-in-{k}", f"-m{k}_0", _stop_pos(k, k == _IN_STOPS[0])))
    return "<additional>\n" + "\n".join(rows) + "\n</additional>\n"


def _stop_pos(k: int, first: bool) -> float:
    """Where a stop ends on arterial edge ``k`` (either way): the line's first stop near
    the arterial's end, its last 80 m past the end crossroad, the others 20 m past the
    crossroad the edge leaves (module doc)."""
    if first or k not in (0, SIGNALS):
        return _FAR_SIDE_M + _STOP_LEN_M
    return 80.0


def _stop_row(stop_id: str, lane: str, end: float) -> str:
    return (f'<busStop id="{stop_id}" lane="{lane}" startPos="{end - _STOP_LEN_M:.1f}" '
            f'endPos="{end:.1f}" lines="{LINE}"/>')


def build_corridor(workdir: Path) -> Corridor:
    """Write the corridor's network (``netconvert``) and stops into ``workdir``, once."""
    from devices.sumo import run_tool

    workdir.mkdir(parents=True, exist_ok=True)
    net, stops = workdir / _NET, workdir / _STOPS
    if not net.exists():
        nodes, edges = workdir / "corridor.nod.xml", workdir / "corridor.edg.xml"
        nodes.write_text(_nodes(), encoding="utf-8")
        edges.write_text(_edges(), encoding="utf-8")
        tmp = workdir / "corridor.tmp.net.xml"
        run_tool("netconvert", ["-n", str(nodes), "-e", str(edges), "-o", str(tmp),
                                "--tls.default-type", "static", "--no-turnarounds", "true",
                                "--tls.yellow.time", str(YELLOW_S),
                                "--tls.allred.time", str(ALL_RED_S)])
        retime_signals(tmp)
        tmp.replace(net)
    if not stops.exists():
        stops.write_text(_stops(), encoding="utf-8")
    return Corridor(net, stops)


def _poisson(rng: random.Random, per_hour: float, horizon_s: float) -> Iterator[float]:
    if per_hour <= 0:
        return
    t = rng.expovariate(per_hour / 3600.0)
    while t < horizon_s:
        yield t
        t += rng.expovariate(per_hour / 3600.0)


def _flows(scale: float) -> list[tuple[str, str, float]]:
    """Every origin-destination pair of the demand: (from edge, to edge, vehicles/h)."""
    last = SIGNALS  # the arterial's last edge, m{SIGNALS}
    out = [("m0", f"m{last}", DEMAND["arterial"]), (f"-m{last}", "-m0", DEMAND["arterial"])]
    for i in range(SIGNALS):
        out += [(f"n{i}", f"-s{i}", DEMAND["across"]), (f"s{i}", f"-n{i}", DEMAND["across"])]
        for side in ("n", "s"):
            out += [(f"{side}{i}", "-m0", DEMAND["onto"]),
                    (f"{side}{i}", f"m{last}", DEMAND["onto"]),
                    ("m0", f"-{side}{i}", DEMAND["off"]),
                    (f"-m{last}", f"-{side}{i}", DEMAND["off"])]
    return [(a, b, rate * scale) for a, b, rate in out]


def corridor_routes(seed: int, hours: float, scale: float = 1.0) -> str:
    """The routes file of ``seed``: the buses every :data:`HEADWAY_S` both ways and the
    other vehicles' trips, over ``hours`` of departures."""
    if not 0 < hours <= 24:
        raise ConfigError(f"hours {hours!r} outside (0, 24]")
    if not 0 <= scale <= 10:
        raise ConfigError(f"scale {scale!r} outside [0, 10]")
    horizon = hours * 3600.0
    rng = random.Random(seed)
    departures: list[tuple[float, str]] = []
    for a, b, rate in _flows(scale):
        for t in _poisson(rng, rate, horizon):
            departures.append((t, f'<trip id="{{id}}" type="car" depart="{t:.2f}" from="{a}" '
                                  f'to="{b}" departLane="best" departSpeed="max"/>'))
    out_edges = " ".join(f"m{k}" for k in range(SIGNALS + 1))
    in_edges = " ".join(f"-m{k}" for k in range(SIGNALS, -1, -1))
    for direction, first, edges, stops in (("out", 30.0, out_edges, _OUT_STOPS),
                                           ("in", 180.0, in_edges, _IN_STOPS)):
        k = 0
        while first + k * HEADWAY_S < horizon:
            t = first + k * HEADWAY_S
            calls = "".join(f'<stop busStop="{LINE}-{direction}-{s}" duration="{DWELL_S}"/>'
                            for s in stops)
            departures.append((t, f'<vehicle id="{LINE}.{direction}.{k:03d}" type="bus" '
                                  f'line="{LINE}" depart="{t:.2f}" departLane="0" departSpeed="0">'
                                  f'<route edges="{edges}"/>{calls}</vehicle>'))
            k += 1
    departures.sort(key=lambda d: d[0])
    rows = ['<routes>',
            '<vType id="car" vClass="passenger"/>',
            '<vType id="bus" vClass="bus" length="12" maxSpeed="13.89" accel="1.2" '
            'decel="4.0"/>']
    n = 0
    for _, row in departures:
        if "{id}" in row:
            n += 1
            row = row.replace("{id}", f"car{n:05d}")
        rows.append(row)
    rows.append("</routes>")
    return "\n".join(rows) + "\n"
