"""A small bus line through two crossroads, for the transit and tracker tests.

The path runs 1200 m north from ``START``, then 800 m east. Crossroad
``xr-dijon-0001`` stands on the northbound stretch, 600 m from the start.
``xr-dijon-0002`` stands at the corner, where the line turns east. Both have
the demo's four arms, with stop lines 25 m before their centres. The stops
are the two termini, ``L7-01`` on the near side of the first crossroad
(560 m, 15 m before its outbound stop line), and ``L7-02`` on the eastbound
stretch (1600 m).
"""

from __future__ import annotations

from typing import Any

from runtime.demo_inventory import ARMS
from runtime.inventory import Equipment, Inventory, Municipality
from runtime.transit import (
    Approach,
    BusLine,
    Crossing,
    LatLon,
    Stop,
    Timetable,
    destination,
    line_geometry,
)

START: LatLon = (47.300000, 5.040000)
CORNER: LatLon = destination(START, 0.0, 1200.0)
END: LatLon = destination(CORNER, 90.0, 800.0)
PATH: tuple[LatLon, ...] = (START, CORNER, END)
CROSSROADS: dict[str, LatLon] = {"xr-dijon-0001": destination(START, 0.0, 600.0),
                                 "xr-dijon-0002": CORNER}
#: The approaches the line drives in on: (outbound, inbound) per crossroad.
USED: dict[str, tuple[int, int]] = {"xr-dijon-0001": (3, 1), "xr-dijon-0002": (3, 2)}
STOP_S: tuple[float, ...] = (0.0, 560.0, 1600.0, 2000.0)
DIJON = Municipality("dijon", "Dijon", 47.3220, 5.0415, 159000)


def approaches(centre: LatLon, offset_m: float = 25.0) -> tuple[Approach, ...]:
    """The four arms of a crossroad at ``centre``."""
    out = []
    for number, bearing, heading in ARMS:
        lat, lon = destination(centre, bearing, offset_m)
        out.append(Approach(number, heading, lat, lon))
    return tuple(out)


def approach_attrs(centre: LatLon) -> list[dict[str, Any]]:
    return [{"number": a.number, "heading": a.heading_deg, "lat": a.lat, "lon": a.lon}
            for a in approaches(centre)]


def crossings(path: tuple[LatLon, ...] = PATH) -> tuple[Crossing, ...]:
    geometry = line_geometry(path)
    out: list[Crossing] = []
    start = 0.0
    for ident, centre in CROSSROADS.items():
        arms = {a.number: a for a in approaches(centre)}
        outbound, inbound = USED[ident]
        found = geometry.check_crossing(ident, centre, arms[outbound], arms[inbound],
                                        start_m=start)
        assert found.crossing is not None, found.problems
        out.append(found.crossing)
        start = found.centre_s_m
    return tuple(out)


def make_line(line_id: str = "L7", *, timetable: bool = True,
              speed: float = 10.0) -> BusLine:
    """The test line; with a timetable its stops' times are the free-flow schedule."""
    geometry = line_geometry(PATH)
    points = [geometry.point_at(s) for s in STOP_S]
    stops = tuple(Stop(f"{line_id}-{n:02d}", lat, lon) for n, (lat, lon) in enumerate(points))
    draft = BusLine(line_id, "dijon", PATH, stops, free_flow_speed_mps=speed)
    if not timetable:
        return BusLine(line_id, "dijon", PATH, stops, free_flow_speed_mps=speed,
                       crossings=crossings())
    stop_s, _ = geometry.check_stops(stops)
    timed = tuple(Stop(s.id, s.lat, s.lon, round(t, 1))
                  for s, t in zip(stops, draft.free_flow_s(stop_s), strict=True))
    return BusLine(line_id, "dijon", PATH, timed, timetable=Timetable(600, "05:30", "00:30"),
                   free_flow_speed_mps=speed, crossings=crossings())


def make_inventory(line: BusLine | None = None, *, bus_line: str = "L7") -> Inventory:
    """Two crossroads with their approaches, one bus of ``bus_line``, and the line."""
    line = line or make_line()
    equipment = [
        Equipment(ident, "crossroad", "dijon", lat, lon, f"modbus://127.0.0.1:15020/{n}",
                  "traffic_controller", attrs={"approaches": approach_attrs((lat, lon))})
        for n, (ident, (lat, lon)) in enumerate(CROSSROADS.items(), start=1)
    ]
    equipment.append(Equipment("bus-dijon-0001", "vehicle", "dijon", *START, "mqtt", "bus",
                               attrs={"line": bus_line}))
    return Inventory("Test", (DIJON,), tuple(equipment), bus_lines={line.id: line})
