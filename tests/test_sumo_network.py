"""A SUMO network and its routes mapped onto crossroads, approaches, controller programs and
bus lines, from a hand-written fixture (no SUMO needed), and the default corridor's files."""

from __future__ import annotations

import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from devices.sumo import REQUIREMENTS
from runtime.errors import ConfigError
from runtime.sumo.network import (
    Light,
    SignalPhase,
    controller_program,
    parse_network,
    parse_routes,
    scenario_of,
)
from runtime.sumo.scenario import (
    ARTERIAL_GREEN_S,
    CROSS_GREEN_S,
    HEADWAY_S,
    LINE,
    SIGNALS,
    corridor_routes,
    retime_signals,
)
from runtime.transit import INBOUND, OUTBOUND, angle_diff
from tests import sumo_fixtures


@pytest.fixture
def scenario(tmp_path: Path):  # type: ignore[no-untyped-def]
    net, routes = sumo_fixtures.write(tmp_path)
    return scenario_of(parse_network(net), parse_routes([routes]))


def test_network_is_read(tmp_path: Path) -> None:
    net, _ = sumo_fixtures.write(tmp_path)
    network = parse_network(net)
    assert set(network.edges) == {"in_w", "out_e", "in_e", "out_w", "in_n", "out_s", "in_s",
                                  "out_n"}  # internal edges are left out
    light = network.lights["J"]
    assert light.size == 5 and len(light.phases) == 5
    assert light.incoming() == ("in_n", "in_e", "in_s", "in_w")
    assert network.projection is None


def test_program_starts_at_its_first_green_and_groups_transitions() -> None:
    light = Light("J", "0", 0.0, (
        SignalPhase(4, "yryrr"), SignalPhase(30, "rGrGg", 6), SignalPhase(3, "ryryy"),
        SignalPhase(2, "rrrrr"), SignalPhase(20, "GrGrr")), ())
    one, two = controller_program(light)
    assert (one.green_state, one.green_s, one.min_green_s, one.amber_s, one.all_red_s) == \
        ("rGrGg", 30, 6, 3, 2)
    assert one.transition == (("ryryy", 3), ("rrrrr", 2))
    # The second green's transition wraps round to the program's first phase; no minDur:
    # its minimum is its duration (a fixed-time program's green is never cut).
    assert (two.green_state, two.green_s, two.min_green_s, two.amber_s, two.all_red_s) == \
        ("GrGrr", 20, 20, 4, 0)
    assert (one.sumo_index, two.sumo_index) == (1, 4)


def test_program_without_green_is_not_controlled() -> None:
    light = Light("J", "0", 0.0, (SignalPhase(5, "rrrr"), SignalPhase(5, "yyyy")), ())
    assert controller_program(light) == ()


def test_approaches_follow_the_controllers_phase_numbering(scenario) -> None:  # type: ignore[no-untyped-def]
    (xr,) = scenario.crossroads
    numbers = {edge: a.number for edge, a in xr.approaches.items()}
    # East-west is phase 1: approaches 1 and 5; north-south phase 2: 2 and 6.
    assert numbers == {"in_e": 1, "in_w": 5, "in_n": 2, "in_s": 6}
    for edge, heading in (("in_e", 270.0), ("in_w", 90.0), ("in_n", 180.0), ("in_s", 0.0)):
        assert angle_diff(xr.approaches[edge].heading_deg, heading) < 3.0  # grid vs true north
    assert xr.id == "xr-sumo-0001" and xr.light == "J"


def test_bus_lines_paths_stops_and_crossings(scenario) -> None:  # type: ignore[no-untyped-def]
    x, y = scenario.lines["X"], scenario.lines["Y"]
    assert "Z" not in scenario.lines  # a trip without a route of edges
    assert any("b4" in why for why in scenario.left_out)
    # Both ways' stops, in order along the outbound path.
    assert [s.id for s in x.stops] == ["st_w2", "st_w1", "st_e2", "st_e1"]
    (crossing,) = x.crossings
    assert (crossing.outbound_approach, crossing.inbound_approach) == (5, 1)
    assert crossing.s_m == pytest.approx(190, abs=2)
    assert crossing.inbound_s_m == pytest.approx(210, abs=2)
    # Line Y has no inbound trip: the reverse edge is its inbound approach; no stop: its ends.
    (crossing,) = y.crossings
    assert (crossing.outbound_approach, crossing.inbound_approach) == (2, 6)
    assert [s.id for s in y.stops] == ["Y-start", "Y-end"]


def test_trips_and_flow_vehicles_have_their_direction(scenario) -> None:  # type: ignore[no-untyped-def]
    assert scenario.trip("b1") == ("X", OUTBOUND)
    assert scenario.trip("b2") == ("X", INBOUND)
    assert scenario.trip("f1.3") == ("X", OUTBOUND)
    assert scenario.trip("car1") is None  # a passenger car, whatever its line attribute
    assert scenario.trip("b9") is None


def test_inventory_of_the_scenario(scenario) -> None:  # type: ignore[no-untyped-def]
    inv = scenario.inventory(port=15555, buses={"X": 2, "Y": 1})
    xr = inv.by_id("xr-sumo-0001")
    assert xr.endpoint == "modbus://127.0.0.1:15555/1"
    assert xr.attrs["schedule"] == "" and xr.attrs["sumo_light"] == "J"
    assert [a["number"] for a in xr.attrs["approaches"]] == [1, 2, 5, 6]
    buses = [eq for eq in inv.equipment if eq.profile == "bus"]
    assert [(b.id, b.attrs["line"]) for b in buses] == [
        ("bus-sumo-0001", "X"), ("bus-sumo-0002", "X"), ("bus-sumo-0003", "Y")]
    assert set(inv.bus_lines) == {"X", "Y"}


def test_bad_files_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.net.xml"
    bad.write_text("<net><edge id='a'", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.net\.xml:1"):
        parse_network(bad)
    other = tmp_path / "routes.xml"
    other.write_text("<routes/>", encoding="utf-8")
    with pytest.raises(ConfigError, match="not a SUMO network"):
        parse_network(other)
    with pytest.raises(ConfigError, match=r"missing\.xml"):
        parse_routes([tmp_path / "missing.xml"])
    unknown = tmp_path / "stops.rou.xml"
    unknown.write_text('<routes><vType id="b" vClass="bus"/><vehicle id="v" type="b" line="L" '
                       'depart="0"><route edges="a b"/><stop busStop="nowhere"/></vehicle>'
                       '</routes>', encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown busStop 'nowhere'"):
        parse_routes([unknown])


def test_corridor_routes_are_one_demand_per_seed() -> None:
    one, again, other = corridor_routes(3, 0.5), corridor_routes(3, 0.5), corridor_routes(4, 0.5)
    assert one == again and one != other
    root = ET.fromstring(one)
    buses = [v for v in root.iter("vehicle") if v.get("line") == LINE]
    assert len(buses) == 2 * int(1800 / HEADWAY_S)
    departs = [float(v.get("depart", "")) for v in root if v.tag in ("trip", "vehicle")]
    assert departs == sorted(departs) and max(departs) < 1800
    assert len(list(root.iter("trip"))) > 1000
    half = ET.fromstring(corridor_routes(3, 0.5, scale=0.5))
    assert len(list(half.iter("trip"))) < 0.6 * len(list(root.iter("trip")))
    with pytest.raises(ConfigError):
        corridor_routes(3, 0)


def test_corridor_signals_are_retimed(tmp_path: Path) -> None:
    net, _ = sumo_fixtures.write(tmp_path)
    text = net.read_text(encoding="utf-8").replace('from="in_w"', 'from="m0"', 2)
    net.write_text(text.replace('id="in_w"', 'id="m0"'), encoding="utf-8")
    retime_signals(net)
    light = parse_network(net).lights["J"]
    greens = [p for p in light.phases if "y" not in p.state and "G" in p.state]
    # The phase with the arterial's (m0's) links gets the arterial's green.
    assert [(p.state, p.duration) for p in greens] == [("rGrGg", ARTERIAL_GREEN_S),
                                                       ("GrGrr", CROSS_GREEN_S)]
    assert SIGNALS >= 6


def test_extra_matches_the_installer() -> None:
    doc = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text("utf-8"))
    assert tuple(doc["project"]["optional-dependencies"]["tsp"]) == REQUIREMENTS
