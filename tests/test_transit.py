"""Bus lines and approaches: value objects, the projected geometry, the inventory's
[[bus_line]] tables checked with file and line, the demo's lines and the simulated buses
that drive them."""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.profile import builtin_profile
from devices.sim.mqtt_devices import MqttDeviceSimulator, _Bus
from runtime.demo_inventory import BUS_LINES, STOP_LINE_M, build_demo
from runtime.errors import ConfigError, InventoryError
from runtime.inventory import dump_inventory, parse_inventory
from runtime.transit import (
    INBOUND,
    OUTBOUND,
    PATH_TOLERANCE_M,
    Approach,
    Crossing,
    Stop,
    Timetable,
    angle_diff,
    approaches_of,
    azimuth_distance,
    destination,
    line_geometry,
)
from tests.helpers import line_of
from tests.transit_fakes import (
    CROSSROADS,
    END,
    PATH,
    START,
    approaches,
    make_inventory,
    make_line,
)

SRC = "lines.toml"


def issues_of(text: str) -> list[str]:
    with pytest.raises(InventoryError) as info:
        parse_inventory(text, SRC)
    return info.value.issues


# --------------------------------------------------------------------------- value objects


def test_value_objects_check_themselves() -> None:
    assert Approach(3, 360, 47.3, 5.04).heading_deg == 0.0
    for args in [(0, 0.0, 47.3, 5.04), (9, 0.0, 47.3, 5.04), (1, 361.0, 47.3, 5.04),
                 (1, float("nan"), 47.3, 5.04), (1, 0.0, 91.0, 5.04), (True, 0.0, 47.3, 5.04)]:
        with pytest.raises(ConfigError):
            Approach(*args)
    with pytest.raises(ConfigError):
        Stop("bad id", 47.3, 5.04)
    with pytest.raises(ConfigError):
        Stop("L1-00", 47.3, 5.04, at_s=-1.0)
    with pytest.raises(ConfigError):
        Timetable(0, "05:30")
    with pytest.raises(ConfigError):
        Timetable(600, "24:00")
    with pytest.raises(ConfigError):
        Crossing("xr", 1, 3, s_m=50.0, inbound_s_m=40.0)
    with pytest.raises(ConfigError):
        Crossing("xr", 1, 9, s_m=40.0, inbound_s_m=50.0)


def test_timetable_times() -> None:
    late = Timetable(600, "05:30", "00:30")
    assert late.first_s == 5.5 * 3600
    assert late.last_s == 24.5 * 3600  # past midnight
    assert Timetable(600, "06:00", "21:00").last_s == 21 * 3600
    assert Timetable(900, "00:00").last_s is None  # around the clock


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(path=((47.3, 5.04),)), "at least two points"),
        (dict(path=(START, START, END)), "repeats"),
        (dict(id="L 7"), "does not match"),
        (dict(free_flow_speed_mps=0.0), "free-flow speed"),
        (dict(timetable=None), "no timetable"),
        (dict(crossings=tuple(reversed(make_line().crossings))), "not in order"),
    ],
)
def test_bus_line_rejects(change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(make_line(), **change)  # type: ignore[arg-type]


def test_bus_line_stop_times() -> None:
    line = make_line()
    stops = list(line.stops)
    with pytest.raises(ConfigError, match="every stop needs"):
        dataclasses.replace(line, stops=(*stops[:-1], dataclasses.replace(stops[-1], at_s=None)))
    with pytest.raises(ConfigError, match="must not decrease"):
        dataclasses.replace(line, stops=(stops[0], dataclasses.replace(stops[1], at_s=500.0),
                                         *stops[2:]))
    with pytest.raises(ConfigError, match="must be 0"):
        dataclasses.replace(line, stops=(dataclasses.replace(stops[0], at_s=5.0), *stops[1:]))
    # Free flow at 10 m/s with 20 s at each intermediate stop passed.
    assert line.free_flow_s((0.0, 560.0, 1600.0, 2000.0)) == (0.0, 56.0, 180.0, 240.0)
    assert line.crossing("xr-dijon-0002").outbound_approach == 3
    with pytest.raises(KeyError):
        line.crossing("xr-dijon-0009")


# --------------------------------------------------------------------------- geometry


def test_geometry_locates_along_and_off_the_path() -> None:
    geometry = line_geometry(PATH)
    # Lambert-93's scale is within 0.1 % of the true distance around Dijon.
    assert geometry.length_m == pytest.approx(2000.0, rel=1e-3)
    assert geometry.vertex_s_m[1] == pytest.approx(1200.0, rel=1e-3)
    s, off = geometry.locate(*destination(START, 0.0, 300.0))
    assert s == pytest.approx(300.0, rel=1e-3) and off < 0.01
    beside = destination(destination(START, 0.0, 300.0), 90.0, 12.0)
    s, off = geometry.locate(*beside)
    assert s == pytest.approx(300.0, rel=1e-3) and off == pytest.approx(12.0, rel=1e-3)
    # Before the start, the nearest point is the start.
    s, off = geometry.locate(*destination(START, 180.0, 40.0))
    assert s == 0.0 and off == pytest.approx(40.0, rel=1e-3)
    for along in (0.0, 123.4, 1200.0, 1555.5, geometry.length_m):
        lat, lon = geometry.point_at(along)
        s, off = geometry.locate(lat, lon)
        assert s == pytest.approx(along, abs=0.01) and off < 0.01
    assert geometry.point_at(-5.0) == pytest.approx(START)
    assert geometry.point_at(1e9) == pytest.approx(END)


def test_heading_at_follows_the_direction_of_travel() -> None:
    geometry = line_geometry(PATH)
    corner = geometry.vertex_s_m[1]
    assert angle_diff(geometry.heading_at(100.0), 0.0) < 0.01
    assert angle_diff(geometry.heading_at(100.0, INBOUND), 180.0) < 0.01
    assert angle_diff(geometry.heading_at(1500.0, OUTBOUND), 90.0) < 0.2
    assert angle_diff(geometry.heading_at(1500.0, INBOUND), 270.0) < 0.2
    # At the corner, a bus still drives the segment it arrives on.
    assert angle_diff(geometry.heading_at(corner, OUTBOUND), 0.0) < 0.01
    assert angle_diff(geometry.heading_at(corner, INBOUND), 270.0) < 0.2


def test_locate_in_a_stretch_tells_apart_a_path_that_doubles_back() -> None:
    # Out 500 m east and back 20 m further north: two stretches 20 m apart.
    a = START
    b = destination(a, 90.0, 500.0)
    c = destination(b, 0.0, 20.0)
    d = destination(c, 270.0, 500.0)
    geometry = line_geometry((a, b, c, d))
    probe = destination(destination(a, 90.0, 200.0), 0.0, 16.0)  # nearer the way back
    s, off = geometry.locate(*probe)
    assert s > 500.0 and off == pytest.approx(4.0, abs=0.1)
    s, off = geometry.locate(*probe, start_m=0.0, end_m=400.0)
    assert s == pytest.approx(200.0, rel=1e-2) and off == pytest.approx(16.0, abs=0.1)
    s, off = geometry.locate(*probe, start_m=300.0, end_m=300.0)  # a stretch of no length
    assert s == 300.0 and off > 90.0


def test_geometry_checks_stops_and_crossings() -> None:
    geometry = line_geometry(PATH)
    points = [geometry.point_at(s) for s in (0.0, 500.0, 1500.0)]
    stop_s, problems = geometry.check_stops(points)
    assert problems == () and stop_s[1] == pytest.approx(500.0, abs=0.01)
    _, problems = geometry.check_stops([points[0], points[2], points[1]])
    assert problems == ((2, "stop comes before the previous stop along the path"),)
    _, problems = geometry.check_stops([points[0], destination(points[1], 90.0, 100.0)])
    assert problems == ((1, f"stop is 100 m from the path (limit {PATH_TOLERANCE_M:g} m)"),)

    centre = CROSSROADS["xr-dijon-0001"]
    arms = {a.number: a for a in approaches(centre)}
    found = geometry.check_crossing("xr-dijon-0001", centre, arms[3], arms[1])
    assert found.problems == () and found.crossing is not None
    assert found.crossing.s_m < found.centre_s_m < found.crossing.inbound_s_m
    assert found.crossing.inbound_s_m - found.crossing.s_m == pytest.approx(50.0, rel=1e-3)
    wrong = geometry.check_crossing("xr-dijon-0001", centre, arms[1], arms[3])
    assert wrong.crossing is None
    assert [f for f, _ in wrong.problems] == ["outbound", "inbound"]
    assert "approach 1 heads 180°, but the line drives outbound at 0° at its stop line" in (
        wrong.problems[0][1])
    aside = geometry.check_crossing("xr-x", destination(centre, 90.0, 45.0), arms[3], arms[1])
    assert aside.problems == (("id", "crossroad is 45 m from the path (limit 30 m)"),)
    far = {a.number: a for a in approaches(centre, 40.0)}
    side_arm = geometry.check_crossing("xr-dijon-0001", centre, far[3], far[2])
    assert side_arm.problems == (("inbound", "approach 2's stop line is 40 m from the path "
                                             "(limit 30 m)"),)


def test_approaches_of_a_crossroad() -> None:
    inv = make_inventory()
    arms = approaches_of(inv.by_id("xr-dijon-0001"))
    assert [(a.number, a.heading_deg) for a in arms] == [(1, 180.0), (2, 270.0), (3, 0.0),
                                                        (4, 90.0)]
    assert approaches_of(inv.by_id("bus-dijon-0001")) == ()
    bad = dataclasses.replace(inv.by_id("xr-dijon-0001"),
                              attrs={"approaches": [{"number": 1, "heading": 0.0,
                                                     "lat": 47.3, "lon": 5.04}] * 2})
    with pytest.raises(ConfigError, match="same number"):
        approaches_of(bad)


# --------------------------------------------------------------------------- the inventory


def test_the_inventory_reads_lines_and_writes_them_back() -> None:
    inv = make_inventory()
    text = dump_inventory(inv)
    again = parse_inventory(text, SRC)
    assert again == inv
    assert dump_inventory(again) == text
    line = again.bus_lines["L7"]
    assert [c.crossroad_id for c in line.crossings] == list(CROSSROADS)
    assert [s.id for s in line.stops] == ["L7-00", "L7-01", "L7-02", "L7-03"]
    first, corner = line.crossings
    assert first.s_m == pytest.approx(575.0, rel=1e-3)
    assert first.inbound_s_m == pytest.approx(625.0, rel=1e-3)
    assert corner.s_m == pytest.approx(1175.0, rel=1e-3)
    assert corner.inbound_s_m == pytest.approx(1225.0, rel=1e-3)
    # A line without a timetable, with the default free-flow speed, reads back too.
    plain = dataclasses.replace(make_line(timetable=False), free_flow_speed_mps=8.0)
    text = dump_inventory(make_inventory(plain)).replace("free_flow_speed_mps = 8.0\n", "")
    assert parse_inventory(text, SRC).bus_lines["L7"] == plain


def test_construction_checks_what_lines_name() -> None:
    inv = make_inventory()
    line = inv.bus_lines["L7"]
    with pytest.raises(ConfigError, match="not declared"):
        dataclasses.replace(inv, bus_lines={"L7": dataclasses.replace(line,
                                                                      municipality="talant")})
    with pytest.raises(ConfigError, match="not a crossroad of the inventory"):
        dataclasses.replace(inv, equipment=inv.equipment[1:])
    stray = dataclasses.replace(line, crossings=(dataclasses.replace(
        line.crossings[0], inbound_approach=7), line.crossings[1]))
    with pytest.raises(ConfigError, match="has no approach 7"):
        dataclasses.replace(inv, bus_lines={"L7": stray})
    with pytest.raises(ConfigError, match="drives line 'L7', which is not declared"):
        dataclasses.replace(inv, bus_lines={"L8": dataclasses.replace(line, id="L8")})
    with pytest.raises(ConfigError, match="not a BusLine of that id"):
        dataclasses.replace(inv, bus_lines={"L8": line})
    # Without lines, buses drive whatever line they name (the simulator invents it).
    assert dataclasses.replace(inv, bus_lines={}).bus_lines == {}


def test_a_restricted_inventory_keeps_its_lines() -> None:
    inv = make_inventory()
    fleet = inv.restricted({"vehicle"})
    assert fleet.count_by_kind()["crossroad"] == 0
    assert fleet.bus_lines["L7"].crossings == ()
    assert fleet.bus_lines["L7"].path == inv.bus_lines["L7"].path
    assert parse_inventory(dump_inventory(fleet), SRC) == fleet
    assert inv.restricted({"crossroad", "vehicle"}) == inv


def edit(old: str, new: str, occurrence: int = 1) -> Callable[[str], str]:
    def apply(text: str) -> str:
        parts = text.split(old)
        assert len(parts) > occurrence, old
        return old.join(parts[:occurrence]) + new + old.join(parts[occurrence:])

    return apply


TEXT = dump_inventory(make_inventory())
LINE = "bus_line[0]"


@pytest.mark.parametrize(
    ("change", "needle", "field", "message"),
    [
        (edit("number = 1, heading = 180.0", "number = 9, heading = 180.0"), "approaches =",
         "equipment[0].attrs.approaches[0].number", "approach number 9 outside 1..8"),
        (edit("number = 2, heading = 270.0", "number = 1, heading = 270.0"), "approaches =",
         "equipment[0].attrs.approaches[1].number", "approach 1 is listed twice"),
        (edit("heading = 270.0", "heading = 400.0"), "approaches =",
         "equipment[0].attrs.approaches[1].heading", "heading 400 outside [0, 360]"),
        (edit("lat = 47.305621679190125", "lat = 47.3076"), "approaches =",
         "equipment[0].attrs.approaches[0]", "stop line is 245 m from the crossroad"),
        (edit('line = "L7"', 'line = "L7"\napproaches = []'), "approaches = []",
         "equipment[2].attrs.approaches", "only a crossroad has approaches (this is a vehicle)"),
        (edit('line = "L7"', 'line = "L8"'), 'line = "L8"', "equipment[2].attrs.line",
         "line 'L8' is not declared by a [[bus_line]]"),
        (edit('id = "L7"', 'id = "L 7"'), 'id = "L 7"', f"{LINE}.id", "does not match"),
        (edit('municipality = "dijon"\nfree_flow', 'municipality = "dijom"\nfree_flow'),
         'municipality = "dijom"', f"{LINE}.municipality",
         "municipality 'dijom' is not declared (did you mean 'dijon'?)"),
        (edit("free_flow_speed_mps = 10.0", "free_flow_speed_mps = 45.0"), "free_flow_speed",
         f"{LINE}.free_flow_speed_mps", "speed 45 m/s outside (0, 30]"),
        (edit("free_flow_speed_mps = 10.0", "free_flow_speed_mps = 10.0\ncolour = 3"),
         "colour =", f"{LINE}.colour", "unknown key 'colour'"),
        (edit("    [47.3, 5.04],\n", "    [47.3, 5.04],\n    [47.3, 5.04],\n"), "path = [",
         f"{LINE}.path[1]", "point repeats the one before it"),
        (edit("    [47.3, 5.04],\n", "    [47.3, 5.04, 3],\n"), "path = [",
         f"{LINE}.path[0]", "expected a point [lat, lon], got [47.3, 5.04, 3]"),
        (edit("headway_s = 600.0", "headway_s = 0"), "headway_s =",
         f"{LINE}.timetable.headway_s", "headway 0 s outside (0, 86400]"),
        (edit('last = "00:30"', 'last = "24:30"'), "last =", f"{LINE}.timetable.last",
         "'24:30' is not a local time \"HH:MM\""),
        (edit("at_s = 0.0", "at_s = 3.0"), "at_s = 3.0", f"{LINE}.stop[0].at_s",
         "at_s must be 0, not 3"),
        (edit("at_s = 180.0", "at_s = 50.0"), "at_s = 50.0", f"{LINE}.stop[2].at_s",
         "at_s 50 is earlier than the previous stop's 56"),
        (edit("at_s = 56.0\n", ""), ("[[bus_line.stop]]", 2), f"{LINE}.stop[1].at_s",
         "required field missing"),
        (edit('id = "L7-02"', 'id = "L7-01"'), ('id = "L7-01"', 2), f"{LINE}.stop[2].id",
         "stop 'L7-01' is listed twice (first as stop[1])"),
        (edit("lat = 47.30504133763139\nlon = 5.04", "lat = 47.30504133763139\nlon = 5.0414"),
         ("[[bus_line.stop]]", 2), f"{LINE}.stop[1]", "stop is 106 m from the path (limit 30 m)"),
        (edit('id = "xr-dijon-0002"\noutbound', 'id = "xr-dijon-0003"\noutbound'),
         'id = "xr-dijon-0003"', f"{LINE}.crossroad[1].id",
         "unknown crossroad 'xr-dijon-0003' (did you mean"),
        (edit('id = "xr-dijon-0002"\noutbound', 'id = "bus-dijon-0001"\noutbound'),
         ('id = "bus-dijon-0001"', 2), f"{LINE}.crossroad[1].id",
         "'bus-dijon-0001' is a vehicle, not a crossroad"),
        (edit("inbound = 2", "inbound = 6"), "inbound = 6", f"{LINE}.crossroad[1].inbound",
         "crossroad 'xr-dijon-0002' has no approach 6 (it has 1, 2, 3, 4)"),
        (edit("inbound = 2", "inbound = 4"), "inbound = 4", f"{LINE}.crossroad[1].inbound",
         "approach 4 heads 90°, but the line drives inbound at 180° at its stop line"),
        (edit("outbound = 3\ninbound = 1", "outbound = 1\ninbound = 1"), "outbound = 1",
         f"{LINE}.crossroad[0].outbound",
         "approach 1 heads 180°, but the line drives outbound at 0° at its stop line"),
        (edit('id = "xr-dijon-0001"\noutbound = 3\ninbound = 1',
              'id = "xr-dijon-0001"\noutbound = 3\ninbound = 1\nlabel = "x"'), 'label = "x"',
         f"{LINE}.crossroad[0].label", "unknown key 'label'"),
    ],
)
def test_line_errors_name_file_line_and_field(change: Callable[[str], str],
                                              needle: str | tuple[str, int], field: str,
                                              message: str) -> None:
    text = change(TEXT)
    issues = issues_of(text)
    assert len(issues) == 1, issues
    line = line_of(text, *needle) if isinstance(needle, tuple) else line_of(text, needle)
    assert issues[0].startswith(f"{SRC}:{line}: {field}: "), issues
    assert message in issues[0], issues


def test_crossroads_must_come_in_order_along_the_line() -> None:
    first = 'id = "xr-dijon-0001"\noutbound = 3\ninbound = 1'
    second = 'id = "xr-dijon-0002"\noutbound = 3\ninbound = 2'
    text = TEXT.replace(first, "FIRST").replace(second, first).replace("FIRST", second)
    issues = issues_of(text)
    # The first crossroad, met after the corner, comes before it along the path.
    assert [i.split(": ")[1] for i in issues] == [f"{LINE}.crossroad[1].id",
                                                 f"{LINE}.crossroad[1].outbound",
                                                 f"{LINE}.crossroad[1].inbound"]
    assert "crossroad comes before the previous crossroad along the path" in issues[0]


def test_a_line_needs_stops_and_a_path() -> None:
    start = TEXT.index("[[bus_line.stop]]")
    end = TEXT.index("[[bus_line.crossroad]]")
    no_stops = TEXT[:start] + TEXT[end:]
    (issue,) = issues_of(no_stops)
    assert issue.startswith(f"{SRC}:{line_of(no_stops, '[[bus_line]]')}: {LINE}.stop: ")
    assert "at least two [[bus_line.stop]]" in issue
    no_path = TEXT.replace("path = [\n    [47.3, 5.04],\n", "path = [\n")
    no_path = no_path[:no_path.index("path = [")] + "path = [[47.3, 5.04]]\n" + no_path[
        no_path.index("[bus_line.timetable]"):]
    (issue,) = issues_of(no_path)
    assert issue.startswith(f"{SRC}:{line_of(no_path, 'path = [[')}: {LINE}.path: ")
    duplicate = TEXT + TEXT[TEXT.index("[[bus_line]]"):]
    issues = issues_of(duplicate)
    first = line_of(duplicate, "[[bus_line]]")
    second = line_of(duplicate, 'id = "L7"', 2)
    assert issues == [f"{SRC}:{second}: bus_line[1].id: duplicate line 'L7' (first at line "
                      f"{first}, bus_line[0])"]


def test_timetable_and_stop_times_go_together() -> None:
    start = TEXT.index("[bus_line.timetable]")
    end = TEXT.index("[[bus_line.stop]]")
    untimed = TEXT[:start] + TEXT[end:]
    issues = issues_of(untimed)
    assert len(issues) == 4
    assert all("at_s needs a [bus_line.timetable]" in i for i in issues)
    assert issues[0].startswith(f"{SRC}:{line_of(untimed, 'at_s = 0.0')}: {LINE}.stop[0].at_s")


# --------------------------------------------------------------------------- the demo


def test_the_demo_lines_pass_through_every_crossroad() -> None:
    inv = build_demo(1.0)
    assert list(inv.bus_lines) == list(BUS_LINES)
    crossroads = {eq.id: eq for eq in inv.equipment if eq.kind == "crossroad"}
    crossed: set[str] = set()
    for line in inv.bus_lines.values():
        geometry = line_geometry(line)
        assert line.timetable is not None and line.timetable.headway_s >= 300.0
        assert line.stops[0].at_s == 0.0 and len(line.stops) >= 2
        stop_s, problems = geometry.check_stops(line.stops)
        assert problems == ()
        assert all(b - a >= 50.0 for a, b in itertools.pairwise(stop_s))
        for crossing in line.crossings:
            xr = crossroads[crossing.crossroad_id]
            s, off = geometry.locate(xr.lat, xr.lon)
            assert off < 0.5  # the path runs through the crossroad's centre
            assert crossing.s_m < s < crossing.inbound_s_m
            arms = {a.number: a for a in approaches_of(xr)}
            assert angle_diff(arms[crossing.outbound_approach].heading_deg,
                              geometry.heading_at(crossing.s_m, OUTBOUND)) < 1.0
            assert angle_diff(arms[crossing.inbound_approach].heading_deg,
                              geometry.heading_at(crossing.inbound_s_m, INBOUND)) < 1.0
            crossed.add(xr.id)
    assert crossed == set(crossroads)  # every crossroad has bus priority
    for xr in crossroads.values():
        four = approaches_of(xr)
        assert [a.number for a in four] == [1, 2, 3, 4]
        assert all(azimuth_distance((xr.lat, xr.lon), (a.lat, a.lon))[1] <= STOP_LINE_M + 0.2
                   for a in four)
    buses = [eq for eq in inv.equipment if eq.profile == "bus"]
    assert {eq.attrs["line"] for eq in buses} <= set(inv.bus_lines)


def test_the_demo_lines_read_back_at_other_scales() -> None:
    for scale, seed in ((0.1, 0), (0.3, 5), (0.0123, 0)):
        inv = build_demo(scale, seed)
        assert parse_inventory(dump_inventory(inv, decimals=6), "demo") == inv
        assert len(inv.bus_lines) == len(BUS_LINES)


# --------------------------------------------------------------------------- simulated buses


def drive(model: _Bus, seconds: int) -> list[dict[str, object]]:
    rng = random.Random(3)
    return [model.sample(1_700_000_000.0 + t, rng) for t in range(seconds)]


def test_a_simulated_bus_drives_its_inventory_line() -> None:
    inv = make_inventory()
    sim = MqttDeviceSimulator([inv.by_id("bus-dijon-0001")], url="mqtt://127.0.0.1:1",
                              rng=random.Random(1), lines=inv.bus_lines)
    model = sim._devices["bus-dijon-0001"]
    assert isinstance(model, _Bus) and model.duty is not None
    duty = model.duty
    # 240 s each way, at least 120 s at each terminus, on the 600 s headway grid.
    assert duty.cycle == 1200.0
    geometry = line_geometry(inv.bus_lines["L7"])
    samples = drive(model, 1500)
    profile = builtin_profile("bus")
    assert set(samples[0]) == {f.name for f in profile.fields} - {"message"}
    directions = [s["direction"] for s in samples]
    assert {OUTBOUND, INBOUND} <= set(directions)
    flips = sum(1 for a, b in itertools.pairwise(directions) if a != b)
    assert flips >= 2
    for sample in samples:
        lat, lon = float(sample["lat"]), float(sample["lon"])  # type: ignore[arg-type]
        s, off = geometry.locate(lat, lon)
        assert off < 0.5
        # Where the timetable puts the bus delay_s seconds ago.
        expected, direction = duty.at(float(sample["ts"]) - float(sample["delay_s"]))  # type: ignore[arg-type]
        assert s == pytest.approx(expected, abs=1.0)
        assert sample["direction"] == direction
        assert sample["next_stop"] in {"L7-00", "L7-01", "L7-02", "L7-03"}
        if float(sample["speed"]) > 3.0:  # type: ignore[arg-type]
            assert angle_diff(float(sample["heading"]),  # type: ignore[arg-type]
                              geometry.heading_at(s, str(sample["direction"]))) < 1.0
    outbound = [s for s in samples if s["direction"] == OUTBOUND]
    assert {s["next_stop"] for s in outbound} >= {"L7-01", "L7-02", "L7-03"}
    assert any(s["speed"] == 0.0 for s in samples), "buses dwell at stops"


def test_buses_of_a_line_take_their_own_slots_and_unknown_lines_are_invented() -> None:
    inv = make_inventory()
    bus = inv.by_id("bus-dijon-0001")
    fleet = [dataclasses.replace(bus, id=f"bus-dijon-000{n}") for n in range(1, 4)]
    stray = dataclasses.replace(bus, id="bus-dijon-0009", attrs={"line": "B99"})
    sim = MqttDeviceSimulator([*fleet, stray], url="mqtt://127.0.0.1:1", rng=random.Random(1),
                              lines=inv.bus_lines)
    offsets = [sim._devices[b.id].duty.offset for b in fleet]  # type: ignore[attr-defined]
    assert offsets == [0.0, 600.0, 0.0]  # two departure slots in the 1200 s round trip
    assert sim._devices["bus-dijon-0009"].duty is None  # type: ignore[attr-defined]
    assert str(sim.sample("bus-dijon-0009")["next_stop"]).startswith("B99-")
    # Without the inventory's lines every bus invents its line.
    plain = MqttDeviceSimulator(fleet, url="mqtt://127.0.0.1:1", rng=random.Random(1))
    assert plain._devices[fleet[0].id].duty is None  # type: ignore[attr-defined]


def test_a_line_without_timetable_spreads_its_buses_over_the_round_trip() -> None:
    inv = make_inventory(make_line(timetable=False))
    bus = inv.by_id("bus-dijon-0001")
    fleet = [dataclasses.replace(bus, id=f"bus-dijon-000{n}") for n in range(1, 5)]
    sim = MqttDeviceSimulator(fleet, url="mqtt://127.0.0.1:1", rng=random.Random(1),
                              lines=inv.bus_lines)
    duties = [sim._devices[b.id].duty for b in fleet]  # type: ignore[attr-defined]
    cycle = duties[0].cycle
    assert cycle == pytest.approx(2 * (240.0 + 120.0), rel=1e-3)
    assert [d.offset for d in duties] == pytest.approx([0, cycle / 4, cycle / 2, 3 * cycle / 4])
    model = sim._devices[fleet[0].id]
    assert isinstance(model, _Bus)
    geometry = line_geometry(inv.bus_lines["L7"])
    for sample in drive(model, 400):
        _, off = geometry.locate(float(sample["lat"]), float(sample["lon"]))  # type: ignore[arg-type]
        assert off < 0.5


@settings(max_examples=200, deadline=None)
@given(start=st.floats(-50.0, 2500.0), span=st.floats(0.0, 2500.0),
       bearing=st.floats(0.0, 360.0), dist=st.floats(0.0, 400.0), along=st.floats(0.0, 1.0))
def test_locate_in_a_stretch_is_shapely_s_substring(start: float, span: float, bearing: float,
                                                    dist: float, along: float) -> None:
    from shapely.geometry import Point
    from shapely.ops import substring

    from runtime.transit import _transformers

    geometry = line_geometry(PATH)
    probe = destination(geometry.point_at(along * geometry.length_m), bearing, dist)
    s, off = geometry.locate(*probe, start_m=start, end_m=start + span)
    # The oracle: the stretch as shapely cuts it.
    lo = max(0.0, min(geometry.length_m, start))
    hi = max(lo, min(geometry.length_m, start + span))
    x, y = _transformers()[0].transform(probe[1], probe[0])
    part = substring(geometry._line, lo, hi)
    if lo <= 0.0 and hi >= geometry.length_m:
        part = geometry._line
        lo = 0.0
    want_s = lo if part.geom_type != "LineString" else lo + part.project(Point(x, y))
    assert s == pytest.approx(want_s, abs=1e-6)
    assert off == pytest.approx(part.distance(Point(x, y)), abs=1e-6)
