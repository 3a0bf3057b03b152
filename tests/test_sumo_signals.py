"""Controllers running SUMO's programs: the states they show SUMO, where their cycle starts,
and bus priority served by the traffic controller's own request handling (no SUMO needed);
the delay accounting of SUMO's trip output."""

from __future__ import annotations

import asyncio
import doctest
from typing import Any

import pytest

import runtime.sumo.delay
from devices.sim.sumo_signals import (
    SumoSignalModel,
    SumoSignalSimulator,
    amber_between,
    cycle_elapsed,
    red_between,
)
from runtime.errors import ConfigError
from runtime.inventory import Equipment
from runtime.sumo.delay import Trip, change_pct, parse_trips, summarise
from runtime.sumo.network import ControllerPhase, Light, SignalPhase, controller_program

# Three phases of two links each; each green followed by a 3 s yellow and a 2 s all-red.
LIGHT = Light("J", "0", 0.0, (
    SignalPhase(20, "GGrrrr", 6), SignalPhase(3, "yyrrrr"), SignalPhase(2, "rrrrrr"),
    SignalPhase(10, "rrGGrr", 5), SignalPhase(3, "rryyrr"), SignalPhase(2, "rrrrrr"),
    SignalPhase(10, "rrrrGG", 5), SignalPhase(3, "rrrryy"), SignalPhase(2, "rrrrrr")), ())
PROGRAM = controller_program(LIGHT)


def shown(model: SumoSignalModel, seconds: int) -> list[str]:
    """The state at each of ``seconds`` steps of 1 s (shown, then advanced)."""
    out = []
    for _ in range(seconds):
        out.append(model.state())
        model.advance(1.0)
    return out


def request(model: SumoSignalModel, request_id: int, approach: int, kind: str, eta: int,
            command: str = "request") -> None:
    """A request written whole to the controller, as the priority lane writes it."""
    regs: dict[str, Any] = {"prio_id": request_id, "prio_command": command,
                            "prio_approach": approach, "prio_type": kind, "prio_eta_s": eta,
                            "prio_deadline_s": 60, "prio_max_extension_s": 15}
    writes = [("prio_request", 0, name, value) for name, value in regs.items()]
    assert model.check_write(writes) is None
    for block, index, name, value in writes:
        assert model.apply(block, index, name, value) is None
    model.applied(writes)


def test_without_requests_the_light_shows_the_sumo_program() -> None:
    model = SumoSignalModel(PROGRAM)
    expected = [p.state for p in LIGHT.phases for _ in range(int(p.duration))]
    assert shown(model, 2 * len(expected)) == expected * 2
    assert model.cycles == 2 and model.values()["plan_running"] == 1


def test_cycle_starts_where_sumo_stands() -> None:
    # SUMO in its 5th phase (the second yellow) for 1 s: 20 + 3 + 2 + 10 + 1 s into the cycle.
    assert cycle_elapsed(LIGHT, PROGRAM, 4, 1.0) == 36.0
    model = SumoSignalModel(PROGRAM, elapsed_s=36.0)
    assert shown(model, 3) == ["rryyrr", "rryyrr", "rrrrrr"]
    # A program that starts with a transition: its cycle starts at its first green.
    rotated = Light("K", "0", 0.0, (LIGHT.phases[-1], *LIGHT.phases[:-1]), ())
    program = controller_program(rotated)
    assert program[0].sumo_index == 1
    assert cycle_elapsed(rotated, program, 0, 1.0) == 54.0  # 1 s before its green


def test_extension_holds_the_green_for_the_bus() -> None:
    model = SumoSignalModel(PROGRAM)
    shown(model, 15)
    # Approach 1 is served by phase 1, green now: the bus is 12 s away, past the 20 s green.
    request(model, 7, 1, "extension", 12)
    states = shown(model, 20)
    assert states[:15] == ["GGrrrr"] * 15  # 15 + 12 + 3 s crossing = 30 s of green
    assert states[15] == "yyrrrr"
    assert model.priority.granted == 1 and model.priority.served == 1


def test_early_green_jumps_with_a_derived_transition() -> None:
    model = SumoSignalModel(PROGRAM)
    shown(model, 2)
    request(model, 8, 3, "early_green", 30)  # approach 3: phase 3, two phases on
    states = shown(model, 12)
    # Phase 1's green ends at its 6 s minimum; phase 2 is skipped: links 0-1 yellow, then
    # all red, then phase 3's green.
    assert states[:4] == ["GGrrrr"] * 4
    assert states[4:7] == ["yyrrrr"] * 3
    assert states[7:9] == ["rrrrrr"] * 2
    assert states[9:] == ["rrrrGG"] * 3


def test_derived_transitions_keep_shared_greens() -> None:
    assert amber_between("GgrsO", "GrGrr") == "GyrsO"
    assert red_between("GgrsO", "GrGrr") == "GrrsO"


def test_modes_without_a_phase() -> None:
    model = SumoSignalModel(PROGRAM)
    model.mode = "flashing"
    assert model.state() == "oooooo"
    model.mode = "off"
    assert model.state() == "OOOOOO"
    model.mode = "all_red"
    assert model.state() == "rrrrrr"
    with pytest.raises(ConfigError):
        SumoSignalModel(())


def test_simulator_serves_the_programs_and_starts_anew() -> None:
    eq = Equipment("xr-sumo-0001", "crossroad", "sumo", 47.3, 5.0,
                   "modbus://127.0.0.1:15999/1", "traffic_controller")
    sim = SumoSignalSimulator([eq], {eq.id: PROGRAM})
    assert sim.states() == {eq.id: "GGrrrr"}
    asyncio.run(sim.tick(21.0))
    assert sim.states() == {eq.id: "yyrrrr"}
    request(sim.signal(eq.id), 9, 1, "extension", 5)
    sim.load({eq.id: 25.0})  # another run: new controllers, their counters too
    assert sim.states() == {eq.id: "rrGGrr"}
    assert sim.signal(eq.id).priority.received == 0
    assert sim.device_counters()[eq.id].priority is sim.signal(eq.id).priority


def test_program_fits_the_plan_table() -> None:
    values = SumoSignalModel(PROGRAM).values()
    slot = values["plan_table"][0]
    assert (slot["number"], slot["cycle"], slot["green_1"], slot["min_green_1"]) == \
        (1, 55, 20, 6)
    many = tuple(ControllerPhase("Gr", 10, 5, 3, 1) for _ in range(6))
    assert SumoSignalModel(many).values()["plan_table"][0]["number"] == 0  # six do not fit


def test_delay_accounting() -> None:
    trips = parse_trips("""<tripinfos>
        <tripinfo id="b1" vType="bus" duration="400" waitingTime="10" arrival="410"/>
        <tripinfo id="b2" vType="bus" duration="300" waitingTime="30" arrival="330"/>
        <tripinfo id="c1" vType="car" duration="100" waitingTime="5" arrival="120"/>
        <tripinfo id="c2" vType="car" duration="50" waitingTime="0" arrival="-1"/>
    </tripinfos>""")
    summary = summarise(trips, lambda t: t.vtype == "bus")
    assert (summary.bus_trips, summary.other_trips, summary.unfinished) == (2, 1, 1)
    assert (summary.bus_delay_s, summary.bus_travel_s) == (20.0, 350.0)
    assert (summary.other_delay_s, summary.other_travel_s) == (5.0, 100.0)
    empty = summarise([Trip("c", "car", 10, 1)], lambda t: False)
    assert empty.bus_delay_s is None and empty.bus_trips == 0
    assert change_pct(40.0, 30.0) == -25.0
    assert change_pct(None, 3.0) is None and change_pct(0.0, 3.0) is None
    with pytest.raises(ConfigError, match="waitingTime"):
        parse_trips('<t><tripinfo id="x" duration="1" waitingTime="?" arrival="1"/></t>')
    assert doctest.testmod(runtime.sumo.delay).failed == 0
