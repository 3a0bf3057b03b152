"""SUMO itself (the extra ``tsp``, installed here when missing: about 15 s): the default
corridor's files load, and SUMO stepped under the controllers that run its lights' programs
drives exactly the traffic SUMO drives under its own programs."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from devices.sim.sumo_field import SumoField, trip_output
from devices.sim.sumo_signals import SumoSignalSimulator
from devices.sumo import STEP_S, binary, ensure_sumo, tool_env
from runtime.sumo.delay import read_trips
from runtime.sumo.network import parse_network, parse_routes, scenario_of
from runtime.sumo.scenario import LINE, SIGNALS, build_corridor


def test_controllers_drive_sumo_as_its_own_programs(tmp_path: Path) -> None:
    ensure_sumo(print)
    corridor = build_corridor(tmp_path)
    routes = corridor.routes(5, 0.06)  # a bus each way
    scenario = scenario_of(parse_network(corridor.net),
                           parse_routes([routes, corridor.additional]))
    assert len(scenario.crossroads) == SIGNALS and scenario.left_out == ()
    assert len(scenario.lines[LINE].crossings) == SIGNALS
    inputs = ["-n", str(corridor.net), "-r", str(routes), "-a", str(corridor.additional)]
    inventory = scenario.inventory(port=1, buses={})
    signals = SumoSignalSimulator([eq for eq in inventory.equipment if eq.kind == "crossroad"],
                                  {xr.id: xr.program for xr in scenario.crossroads})
    field = SumoField(scenario, signals, [*inputs, *trip_output(tmp_path / "field.xml")],
                      seed=5, limit_s=3600)
    report = asyncio.run(field.run())
    assert report.steps > 180 and report.max_buses[LINE] >= 1
    subprocess.run([str(binary("sumo")), *inputs, *trip_output(tmp_path / "plain.xml"),
                    "--seed", "5", "--step-length", str(STEP_S), "--time-to-teleport", "-1",
                    "--no-step-log", "true", "--no-warnings", "true"],
                   env=tool_env(), check=True, capture_output=True, timeout=120)
    field_trips = read_trips(tmp_path / "field.xml")
    plain_trips = read_trips(tmp_path / "plain.xml")
    assert len(field_trips) > 100
    assert sum(1 for t in field_trips if scenario.trip(t.id) is not None) >= 2
    assert sorted(field_trips, key=lambda t: t.id) == sorted(plain_trips, key=lambda t: t.id)
