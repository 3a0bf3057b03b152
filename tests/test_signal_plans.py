"""Signal plans as data and at the controller: the shipped plans and schedule, a plan that
breaks minimum green or clearance refused with file and line, a schedule naming an unknown
plan refused likewise, and the simulated controller over Modbus TCP refusing an unsafe table
(counted) and latching a selected plan at its cycle boundary."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors.crossroad import Crossroad
from actors.plan import builtin_plans
from actors.schedule import builtin_schedules, parse_schedules
from actors.signal_plan import (
    MIN_GREEN_S,
    builtin_signal_plans,
    parse_signal_plans,
    table_fields,
)
from devices.modbus import ModbusSession
from devices.profile import builtin_profile
from devices.sim.traffic import TrafficSimulator
from runtime.embedded import free_port
from runtime.errors import PlanError, RejectedError, ScheduleError
from runtime.inventory import Equipment

# -- the data ------------------------------------------------------------------------


def test_the_shipped_plans_and_schedule_hold_together() -> None:
    book = builtin_signal_plans()
    assert book.numbers() == [1, 2, 3, 4, 5, 6, 7, 9]
    for plan in book.plans.values():
        plan.check()
        assert list(plan.table()) == list(table_fields())
        assert plan.cycle_s == sum(p.green_s + p.amber_s + p.all_red_s for p in plan.phases)
    # Every plan a schedule or a crisis plan selects exists.
    signals = builtin_schedules().get("signals")
    assert signals.kind == "crossroad"
    scheduled = {step.set["plan"] for step in signals.steps}
    crisis = {s.setpoints["plan"] for p in builtin_plans().plans.values() for s in p.steps
              if s.kind == "crossroad"}
    assert scheduled == {1, 2, 3, 4, 5, 6} and crisis == {7, 9}
    assert (scheduled | crisis) <= set(book.numbers())


BAD_PLANS = '''\
[[plan]]
number = 3
name = "short"
cycle_s = 50
offset_s = 0

  [[plan.phase]]
  min_green_s = 4
  green_s = 20
  amber_s = 3
  all_red_s = 2

  [[plan.phase]]
  pedestrian = true
  min_green_s = 7
  green_s = 6
  amber_s = 2
  all_red_s = 0

[[plan]]
number = 4
name = "offset"
cycle_s = 30
offset_s = 30

  [[plan.phase]]
  min_green_s = 6
  green_s = 10
  amber_s = 3
  all_red_s = 2

  [[plan.phase]]
  min_green_s = 6
  green_s = 10
  amber_s = 3
  all_red_s = 2

[[plan]]
number = 3
name = "again"
cycle_s = 0
'''


def test_a_plan_breaking_minimum_green_or_clearance_is_refused_with_file_and_line() -> None:
    with pytest.raises(PlanError) as info:
        parse_signal_plans(BAD_PLANS, "plans.toml")
    issues = info.value.issues

    def at(line: int, *words: str) -> bool:
        return any(i.startswith(f"plans.toml:{line}: ") and all(w in i for w in words)
                   for i in issues)

    assert at(4, "plan[0].cycle_s", "(33 s)"), issues
    assert at(8, "plan[0].phase[0].min_green_s", f"below {MIN_GREEN_S} s"), issues
    assert at(16, "plan[0].phase[1].green_s", "shorter than the phase's minimum green 7 s"), issues
    assert at(17, "plan[0].phase[1].amber_s", "amber 2 s", "clearance"), issues
    assert at(18, "plan[0].phase[1].all_red_s", "all-red 0 s", "clearance"), issues
    assert at(24, "plan[1].offset_s", "outside 0..cycle-1"), issues
    assert at(39, "plan[2].number", "plan 3 is defined twice (first at line 1)"), issues
    assert at(38, "plan[2].phase", "expected [[plan.phase]] tables"), issues
    with pytest.raises(PlanError, match=r"^x\.toml:2: syntax"):
        parse_signal_plans("[[plan]]\nnumber = \n", "x.toml")
    with pytest.raises(PlanError, match=r"unknown key 'green' \(did you mean 'green_s'"):
        parse_signal_plans(BAD_PLANS.replace("green_s = 20", "green = 20"), "plans.toml")


def test_a_schedule_naming_an_unknown_plan_is_refused_with_file_and_line() -> None:
    text = '''[[schedule]]
name = "signals_test"
kind = "crossroad"
  [[schedule.step]]
  name = "peak"
  at = "07:00"
  set = { plan = 2 }
  [[schedule.step]]
  name = "later"
  at = "10:00"
  set = { plan = 8 }
  [[schedule.step]]
  name = "night"
  at = "22:00"
  set = { plan = 40 }
'''
    with pytest.raises(ScheduleError) as info:
        parse_schedules(text, "signals.toml")
    issues = info.value.issues
    assert any(i.startswith("signals.toml:11: schedule[0].step[1].set.plan: no signal plan 8")
               and "plans: 1, 2, 3, 4, 5, 6, 7, 9" in i for i in issues), issues
    assert any(i.startswith("signals.toml:15:") and "plan=40 is outside 1..32" in i
               for i in issues), issues
    assert Crossroad.check_schedule_step({"plan": 2}) == []


# -- the simulated controller over Modbus TCP ----------------------------------------

PROFILE = builtin_profile("traffic_controller")


def slot_write(slot: int, table: dict[str, Any]) -> tuple[int, list[int]]:
    """One request writing a whole plan table slot (1..4), as the device manager sends it."""
    regs: list[int] = []
    start = None
    for name in table_fields():
        address, raw = PROFILE.encode_block_field("plan_table", slot - 1, name, table[name])
        start = address if start is None else start
        regs += raw
    assert start is not None
    return start, regs


def test_the_controller_refuses_an_unsafe_table_and_latches_a_plan_at_its_boundary() -> None:
    async def body() -> None:
        port = free_port()
        eq = Equipment(id="xr-1", kind="crossroad", municipality="dijon", lat=47.32, lon=5.04,
                       endpoint=f"modbus://127.0.0.1:{port}/1", profile="traffic_controller")
        sim = TrafficSimulator([eq], autotick=False)
        await sim.start()
        session = ModbusSession("127.0.0.1", port, timeout_s=0.5)
        first, count = PROFILE.register_span({})

        async def read() -> dict[str, Any]:
            return PROFILE.decode_registers(first, await session.read(1, first, count), {})

        try:
            plan = builtin_signal_plans().get(2)
            assert plan is not None
            # A green below the controller's own minimum (5 s): exception 3, counted, and
            # the slot is left as it was.
            unsafe = {**plan.table(), "min_green_2": 4, "green_2": 4,
                      "cycle": plan.cycle_s - 11}
            with pytest.raises(RejectedError) as info:
                await session.write(1, *slot_write(2, unsafe))
            assert info.value.code == "modbus_exception_3"
            assert sim.counters.writes_refused == 1
            assert sim.device_counters()["xr-1"].refused == 1
            assert "minimum green 4 s < 5 s" in sim.model("xr-1").refusals[-1]
            assert (await read())["plan_table"][1]["number"] == 0
            # No clearance after a phase: refused too.
            with pytest.raises(RejectedError):
                await session.write(1, *slot_write(2, {**plan.table(), "all_red_3": 0,
                                                       "cycle": plan.cycle_s - 2}))
            # A plan the table does not hold cannot be selected.
            with pytest.raises(RejectedError):
                await session.write(1, *PROFILE.encode_field("plan", 2))
            assert sim.device_counters()["xr-1"].refused == 3

            # The plan's own table is taken, then selected: latched at the boundary.
            await session.write(1, *slot_write(2, plan.table()))
            values = await read()
            assert plan.held_by(values["plan_table"][1])
            await session.write(1, *PROFILE.encode_field("plan", 2))
            values = await read()
            assert (values["plan"], values["plan_running"]) == (2, 1)
            model = sim.model("xr-1")
            seen: list[tuple[int, int, int]] = []
            for _ in range(1300):  # 130 s in 0.1 s steps: past the factory plan's 73 s cycle
                await sim.tick(0.1)
                v = model.values()
                seen.append((v["plan_running"], v["phase"], v["cycle_s"]))
            switch = next(i for i, (running, _, _) in enumerate(seen) if running == 2)
            # Until then the factory cycle ran to its end; then phase 1 opened plan 2's cycle.
            assert seen[switch - 1][0] == 1 and seen[switch - 1][2] >= 72
            assert seen[switch][1:] == (1, 0)
            assert model.cycles == 1 and model.program.cycle == plan.cycle_s
            # Plan 2's phase 1 has its own green (35 s), not the factory's 10 s.
            shown = [p for _, p, _ in seen[switch:switch + 390]]
            assert shown[:379].count(1) == 379 and shown[385] == 0  # 35 s + amber, all-red
            assert sim.counters.writes_refused == 3
        finally:
            await session.close()
            await sim.stop()

    asyncio.run(asyncio.wait_for(body(), 30))


def test_the_device_manager_writes_a_whole_slot_in_one_request() -> None:
    from devices.manager import _joined

    plan = builtin_signal_plans().get(4)
    assert plan is not None
    fields: dict[str, Any] = {f"plan_table.3.{k}": v for k, v in plan.table().items()}
    fields["plan"] = 4
    writes = [PROFILE.encode_block_field("plan_table", 2, k, v) for k, v in plan.table().items()]
    writes.append(PROFILE.encode_field("plan", 4))
    owners: list[tuple[str, int] | None] = [("plan_table", 3)] * len(plan.table()) + [None]
    assert _joined(PROFILE, fields, writes, owners) == [slot_write(3, plan.table()),
                                                         PROFILE.encode_field("plan", 4)]
    # Part of a repeat (or of a lighting cabinet's lamp) goes one register range a request.
    part = {"plan_table.3.cycle": plan.cycle_s, "plan_table.3.offset": plan.offset_s}
    ranges = [PROFILE.encode_block_field("plan_table", 2, k.split(".")[2], v)
              for k, v in part.items()]
    assert _joined(PROFILE, part, ranges, [("plan_table", 3)] * 2) == ranges
