"""The crossroad entity on a ManualClock: its schedule through a week-end in seconds, the
precedence of crisis, operator and schedule, overrides that expire, a restart across a
transition that applies it once, manual modes that need a reason, and fault bits as alarms.

The controller behind the entity's device port is the simulator's own model
(:class:`devices.sim.traffic.TrafficModel`) without sockets: it checks each plan table
it is given, latches a selected plan at its cycle boundary and counts what it is written.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

import pytest

from actors.crossroad import Crossroad
from actors.schedule import PRECEDENCE
from actors.signal_plan import builtin_signal_plans
from devices.sim import EXC_ILLEGAL_VALUE
from devices.sim.traffic import TrafficModel
from runtime.clock import CITY_TZ, Clock, ManualClock
from runtime.entity import Checkpoint
from runtime.envelope import Envelope, MessageKind
from runtime.errors import InvalidCommandError, RejectedError
from tests.helpers import FakeContext, make_equipment

T = TypeVar("T")


def local(*args: int) -> float:
    return datetime.datetime(*args, tzinfo=CITY_TZ).timestamp()  # type: ignore[misc]


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 60.0)

    return asyncio.run(bounded())


class Controller:
    """A traffic controller behind a device port: the simulator's model, without sockets.

    Time moves for it with the clock (the model advances on each read and write). A
    write of a whole plan table slot is one request, as the device manager sends it.
    """

    def __init__(self, clock: Clock) -> None:
        self.model = TrafficModel()
        self.clock = clock
        self.last = clock.time()
        self.online = True
        self.reads = 0
        self.writes: list[dict[str, Any]] = []
        self.refused = 0

    def _advance(self) -> None:
        now = self.clock.time()
        self.model.advance(now - self.last)
        self.last = now

    def policy(self, field: str) -> str | None:
        return {"plan": "reapply", "mode": "alarm"}.get(field, "reapply")

    async def settled(self) -> bool:
        return self.online

    async def read(self) -> Mapping[str, Any]:
        self._advance()
        self.reads += 1
        return self.model.values()

    async def write(self, fields: Mapping[str, Any], *, command_id: str) -> Mapping[str, Any]:
        self._advance()
        table = [(k.split(".")[1], k.split(".")[2], v) for k, v in fields.items()
                 if k.startswith("plan_table.")]
        if table:
            request = [("plan_table", int(n) - 1, name, v) for n, name, v in table]
            code = self.model.check_write(request)
            if code is not None:
                self.refused += 1
                raise RejectedError(f"Modbus exception {code}", code=f"modbus_exception_{code}")
            for _, index, name, v in request:
                self.model.apply("plan_table", index, name, v)
        for key, value in fields.items():
            if key.startswith("plan_table."):
                continue
            code = self.model.apply(None, 0, key, value)
            if code is not None:
                self.refused += 1
                raise RejectedError(f"Modbus exception {code}", code=f"modbus_exception_{code}")
        self.writes.append(dict(fields))
        return dict(fields)

    def downloads(self) -> list[int]:
        """The plan numbers whose tables were downloaded, in order."""
        return [int(w[next(k for k in w if k.endswith(".number"))]) for w in self.writes
                if any(k.startswith("plan_table.") for k in w)]

    def selections(self) -> list[int]:
        return [int(w["plan"]) for w in self.writes if "plan" in w]


class Run:
    """One incarnation of a crossroad, its timers fired as the ManualClock reaches them."""

    def __init__(self, clock: ManualClock, port: Controller | None,
                 saved: Checkpoint | None = None, **attrs: Any) -> None:
        self.clock = clock
        self.ctx = FakeContext(
            make_equipment("xr-dijon-0001", lat=47.322, lon=5.041, attrs=attrs), port, clock)
        self.entity = Crossroad(self.ctx)
        self.ctx.entity = self.entity
        self.sent = 0
        run(self._start(saved))

    async def _start(self, saved: Checkpoint | None) -> None:
        await self.entity.on_start(saved)
        await self.ctx.run_timers()

    def until(self, t: float) -> None:
        """Move the clock to ``t`` (epoch s), handling every timer due on the way."""
        run(self.ctx.advance_to(t))

    def command(self, caller: str = "user:ana:operator", **params: Any) -> dict[str, Any]:
        self.sent += 1
        env = Envelope(target=self.ctx.id, type="command", kind=MessageKind.COMMAND,
                       payload={"command_id": f"c{self.sent}-{self.clock.time()}",
                                "action": "set", "params": params, "caller": caller})
        return dict(run(self.entity.handle(env)))

    def steps(self) -> list[tuple[str, str]]:
        """The schedule steps applied, with when (local ``Dow HH:MM``)."""
        out = []
        for event, fields in self.ctx.events:
            if event == "schedule_step":
                at = datetime.datetime.fromtimestamp(fields["since"], CITY_TZ)
                out.append((fields["step"], at.strftime("%a %H:%M")))
        return out

    def plan(self) -> dict[str, Any]:
        return dict(self.entity.control_view()["fields"]["plan"])

    def telemetry(self, port: Controller) -> None:
        """A sample of the controller as the device session delivers it."""
        async def go() -> None:
            await self.entity.handle(Envelope(
                target=self.ctx.id, type="telemetry", kind=MessageKind.TELEMETRY,
                payload={"values": await port.read(), "seq": port.reads,
                         "ts": self.clock.time()}))

        run(go())


def clock_at(*when: int) -> ManualClock:
    return ManualClock(start=local(*when), wall_offset=0.0)


# -- the schedule through a week-end, in seconds -----------------------------------


def test_the_schedule_runs_friday_to_monday_each_step_once_each_table_downloaded_once() -> None:
    clock = clock_at(2026, 6, 19, 12, 0)  # a Friday
    port = Controller(clock)
    xr = Run(clock, port)
    xr.until(local(2026, 6, 22, 7, 0))  # Monday 07:00
    assert xr.steps() == [
        ("day", "Fri 09:30"),  # in force when the crossroad started, at noon
        ("evening_peak", "Fri 16:30"), ("evening", "Fri 19:30"), ("night", "Fri 22:00"),
        ("saturday", "Sat 08:00"), ("night", "Sat 22:00"),
        ("sunday", "Sun 09:00"), ("night", "Sun 22:00"),
        ("morning_peak", "Mon 06:30"),
    ]
    # Each step's plan selected once; a table the controller holds is not downloaded again.
    assert port.selections() == [1, 3, 1, 4, 5, 4, 6, 4, 2]
    assert port.downloads() == [1, 3, 4, 5, 6, 2]
    assert port.refused == 0
    # The controller latched each plan at a cycle boundary: it runs Monday's now.
    port._advance()
    assert port.model.values()["plan_running"] == 2
    slot = next(s for s in port.model.slots if s["number"] == 2)
    assert builtin_signal_plans().get(2).held_by(slot)  # type: ignore[union-attr]
    state = xr.entity.state
    assert (state["schedule"]["step"], state["schedule"]["since"]) == (
        "morning_peak", local(2026, 6, 22, 6, 30))
    assert state["schedule"]["next"] == {"step": "day", "at": local(2026, 6, 22, 9, 30)}
    assert xr.plan() == {"value": 2, "source": "schedule", "by": "schedule:signals:morning_peak",
                         "until": None}
    assert xr.entity.control_view()["precedence"] == list(PRECEDENCE) == [
        "crisis", "operator", "schedule"]


def test_a_public_holiday_runs_the_sunday_plan() -> None:
    clock = clock_at(2026, 7, 14, 8, 0)  # Bastille Day, a Tuesday
    xr = Run(clock, None)
    xr.until(local(2026, 7, 14, 10, 0))
    assert xr.steps() == [("night", "Mon 22:00"), ("sunday", "Tue 09:00")]
    assert xr.entity.twin.desired == {"plan": 6}


# -- precedence ----------------------------------------------------------------------


def test_crisis_over_operator_over_schedule_and_overrides_expire() -> None:
    clock = clock_at(2026, 6, 16, 10, 0)  # a Tuesday: the day plan, 1
    port = Controller(clock)
    xr = Run(clock, port)
    assert xr.plan()["value"] == 1 and xr.plan()["source"] == "schedule"

    # An operator's override for ten minutes.
    done = xr.command(plan=2, for_s=600)
    assert done["result"]["source"] == {"plan": "operator"} and done["result"]["held_by"] == {}
    assert xr.plan() == {"value": 2, "source": "operator", "by": "user:ana:operator",
                         "until": local(2026, 6, 16, 10, 10)}
    assert port.model.plan == 2

    # A crisis plan wins; an operator's command meanwhile is kept beneath it.
    xr.command(caller="crisis", plan=7)
    assert xr.plan()["source"] == "crisis" and port.model.plan == 7
    held = xr.command(plan=3, for_s=3600)
    assert held["result"]["held_by"] == {"plan": "crisis"}
    assert xr.entity.twin.desired["plan"] == 7 and port.model.plan == 7
    assert xr.entity.state["layers"]["operator"]["set"] == {"plan": 3}

    # The crisis ends: the coordinator gives back the value from before it (2); the field
    # leaves the crisis layer and the operator's later override is in force.
    xr.command(caller="crisis:restore", plan=2)
    assert "crisis" not in xr.entity.state["layers"]
    assert xr.plan()["source"] == "operator" and xr.plan()["value"] == 3
    assert port.model.plan == 3

    # The override ends by itself: the schedule's plan again, with no command.
    xr.until(local(2026, 6, 16, 11, 0, 1))
    assert xr.plan()["source"] == "schedule" and xr.plan()["value"] == 1
    assert port.model.plan == 1
    assert "operator" not in xr.entity.state["layers"]


def test_an_override_without_a_duration_holds_until_the_next_step() -> None:
    clock = clock_at(2026, 6, 16, 15, 0)
    port = Controller(clock)
    xr = Run(clock, port)
    xr.command(plan=5)
    assert xr.plan()["until"] == local(2026, 6, 16, 16, 30)
    xr.until(local(2026, 6, 16, 16, 29))
    assert port.model.plan == 5
    xr.until(local(2026, 6, 16, 16, 31))
    assert xr.plan()["source"] == "schedule" and port.model.plan == 3
    assert xr.steps()[-1] == ("evening_peak", "Tue 16:30")


def test_a_crisis_restore_after_a_transition_gives_the_schedules_new_plan() -> None:
    clock = clock_at(2026, 6, 16, 16, 0)
    port = Controller(clock)
    xr = Run(clock, port)
    xr.command(caller="crisis", plan=9)
    xr.until(local(2026, 6, 16, 16, 45))  # the evening peak came during the crisis
    assert port.model.plan == 9
    xr.command(caller="crisis:restore", plan=1)  # the coordinator's baseline: the day plan
    assert xr.plan()["source"] == "schedule" and port.model.plan == 3
    assert ("crisis_released", {"field": "plan"}) in xr.ctx.events


def test_a_plan_replacing_another_gives_back_what_the_first_set_alone() -> None:
    clock = clock_at(2026, 6, 16, 10, 0)
    port = Controller(clock)
    xr = Run(clock, port)
    xr.telemetry(port)  # the controller's mode (auto) is known: the coordinator's baseline
    xr.command(caller="crisis", plan=7, mode="flashing")  # snow, say, with flashing
    # Flood replaces it: its plan, and the mode put back as it was (in the same command).
    xr.command(caller="crisis", plan=9, mode="auto")
    assert xr.entity.state["layers"]["crisis"]["set"] == {"plan": 9}
    assert port.model.plan == 9
    # A restore of a value already in force still releases the layer (sent to a kind
    # that holds a crisis layer even then).
    xr.command(caller="crisis:restore", plan=1)
    assert "crisis" not in xr.entity.state["layers"] and port.model.plan == 1


def test_a_crossroad_without_schedule_takes_back_the_restored_value() -> None:
    clock = clock_at(2026, 6, 16, 10, 0)
    port = Controller(clock)
    xr = Run(clock, port, schedule="")
    xr.command(caller="crisis", plan=7)
    xr.command(caller="crisis:restore", plan=4)
    assert xr.entity.twin.desired == {"plan": 4} and port.model.plan == 4
    assert xr.plan() == {"value": 4, "source": None}


# -- restarts ------------------------------------------------------------------------


def test_a_restart_across_a_transition_applies_it_once_never_twice() -> None:
    clock = clock_at(2026, 6, 19, 16, 0)
    port = Controller(clock)
    first = Run(clock, port)
    before = first.entity.checkpoint()
    assert before.state["schedule"]["step"] == "day"
    writes = len(port.writes)

    # Down across 16:30: the next incarnation applies the evening peak, once.
    clock_run(clock, local(2026, 6, 19, 16, 40))
    second = Run(clock, port, before)
    assert second.steps() == [("evening_peak", "Fri 16:30")]
    assert port.selections()[writes:] == [3] and port.downloads()[-1:] == [3]
    after = second.entity.checkpoint()
    writes = len(port.writes)

    # Killed before that checkpoint: the one after starts from `before` again. It applies
    # the step, but the controller holds plan 3 already: nothing is written.
    third = Run(clock, port, before)
    assert third.steps() == [("evening_peak", "Fri 16:30")]
    assert len(port.writes) == writes
    assert third.entity.twin.desired == {"plan": 3}

    # From the checkpoint that recorded it, the step is not applied at all.
    fourth = Run(clock, port, after)
    assert fourth.steps() == [] and len(port.writes) == writes
    assert fourth.entity.state["schedule"]["step"] == "evening_peak"


def clock_run(clock: ManualClock, t: float) -> None:
    run(clock.advance(t - clock.time()))


def test_a_crossroad_without_a_schedule_follows_none() -> None:
    clock = clock_at(2026, 6, 16, 10, 0)
    xr = Run(clock, None, schedule="")
    assert xr.steps() == [] and xr.entity.twin.desired == {}
    unknown = Run(clock, None, schedule="road_lighting")  # another kind's
    assert ("schedule_unknown", {"schedule": "road_lighting"}) in unknown.ctx.events


# -- manual modes and commands -------------------------------------------------------


@pytest.mark.parametrize("mode", ["manual", "flashing", "all_red", "off"])
def test_a_manual_mode_needs_a_reason(mode: str) -> None:
    with pytest.raises(InvalidCommandError) as info:
        Crossroad.validate_command("set", {"mode": mode})
    assert (info.value.field, info.value.code) == ("params.reason", "reason_required")
    with pytest.raises(InvalidCommandError):
        Crossroad.validate_command("set", {"mode": mode, "reason": "   "})
    assert Crossroad.validate_command("set", {"mode": mode, "reason": "crash on the junction"}) \
        == {"mode": mode, "reason": "crash on the junction"}


@pytest.mark.parametrize(("params", "field", "code"), [
    ({"plan": 8}, "params.plan", "unknown_plan"),  # 1..32, but no plan 8 in the data
    ({"plan": 2, "for_s": 0}, "params.for_s", "out_of_range"),
    ({"plan": 2, "for_s": 8 * 86400}, "params.for_s", "out_of_range"),
    ({"mode": "off", "reason": "x" * 201}, "params.reason", "bad_value"),
    ({"reason": "nothing to set"}, "params", "bad_value"),
])
def test_commands_are_checked_at_the_edge(params: dict[str, Any], field: str, code: str) -> None:
    with pytest.raises(InvalidCommandError) as info:
        Crossroad.validate_command("set", params)
    assert (info.value.field, info.value.code) == (field, code)
    assert Crossroad.validate_command("set", {"plan": 2, "for_s": 60}) == {"plan": 2,
                                                                          "for_s": 60.0}


def test_modes_reach_the_controller_and_the_reason_is_kept() -> None:
    clock = clock_at(2026, 6, 16, 10, 0)
    port = Controller(clock)
    xr = Run(clock, port)
    with pytest.raises(InvalidCommandError):
        xr.command(mode="flashing")  # the entity holds the same rule as the edge
    xr.command(mode="all_red", reason="police on the junction")
    assert port.model.mode == "all_red"
    assert xr.entity.state["layers"]["operator"]["reason"] == "police on the junction"
    # A crisis plan's modes need no reason of their own (the activation is audited).
    xr.command(caller="crisis", mode="flashing")
    assert port.model.mode == "flashing"
    # From off, auto comes back through the controller's start: it holds auto meanwhile.
    xr.command(caller="crisis", mode="off")
    xr.command(caller="crisis", mode="auto")
    assert port.model.mode == "start_flashing"
    xr.telemetry(port)
    assert Crossroad.effective({"desired": {}, "reported": {
        "mode": {"value": "start_all_red"}}}) == {"mode": "auto"}
    assert xr.entity.pending_setpoints() == {}


def test_a_table_the_controller_refuses_fails_the_command_and_raises_an_alarm() -> None:
    clock = clock_at(2026, 6, 16, 10, 0)
    port = Controller(clock)
    xr = Run(clock, port)

    def stricter(writes: Any) -> int | None:
        return EXC_ILLEGAL_VALUE if any(b == "plan_table" for b, *_ in writes) else None

    port.model.check_write = stricter  # type: ignore[method-assign]
    with pytest.raises(RejectedError) as info:
        xr.command(plan=2, for_s=60)
    assert info.value.code == "modbus_exception_3"
    assert port.refused == 1 and port.model.plan == 1
    assert any(event == "alarm" and f["alarm"] == "signal_plan_refused" and f["momentary"]
               for event, f in xr.ctx.events)


def test_a_plan_that_breaks_the_limits_is_never_downloaded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from actors import crossroad

    book = builtin_signal_plans()
    plan = book.get(2)
    assert plan is not None
    short = dataclasses.replace(plan, phases=(dataclasses.replace(plan.phases[0], amber_s=2),
                                              *plan.phases[1:]))
    monkeypatch.setattr(crossroad, "builtin_signal_plans",
                        lambda: dataclasses.replace(book, plans={**book.plans, 2: short}))
    clock = clock_at(2026, 6, 16, 10, 0)
    port = Controller(clock)
    xr = Run(clock, port)
    writes = len(port.writes)
    with pytest.raises(RejectedError, match="amber 2 s") as info:
        xr.command(plan=2)
    assert info.value.code == "unsafe_plan" and len(port.writes) == writes


# -- faults --------------------------------------------------------------------------


def test_fault_bits_are_alarm_conditions() -> None:
    clock = clock_at(2026, 6, 16, 10, 0)
    port = Controller(clock)
    xr = Run(clock, port)

    def alarms() -> set[str]:
        return set(xr.entity.state["conditions"])

    port.model.set_faults(0x4)  # the conflict monitor: the controller goes flashing
    xr.telemetry(port)
    assert alarms() == {"signal_conflict"} and port.model.mode == "flashing"
    port.model.set_faults(0x2 | 0x8)
    xr.telemetry(port)
    assert alarms() == {"signal_lamp_fault", "detector_fault"}
    port.model.set_faults(0x1 | 0x40)
    xr.telemetry(port)
    assert alarms() == {"controller_fault"}
    port.model.set_faults(0)
    xr.telemetry(port)
    assert alarms() == set()
    raised = [f["alarm"] for e, f in xr.ctx.events if e == "alarm"]
    assert raised == ["signal_conflict", "detector_fault", "signal_lamp_fault",
                      "controller_fault"]


def test_the_equipment_view_shows_the_schedule_and_each_fields_source() -> None:
    from runtime.envelope import pack
    from runtime.service import _equipment_record

    clock = clock_at(2026, 6, 16, 10, 0)
    xr = Run(clock, Controller(clock))
    xr.command(plan=2, for_s=600)
    shown = _equipment_record(xr.ctx.equipment, {}, pack(xr.entity.checkpoint().to_dict()),
                              False)
    assert shown["schedule"] == {"name": "signals", "step": "day",
                                 "since": local(2026, 6, 16, 9, 30),
                                 "next": {"step": "evening_peak",
                                          "at": local(2026, 6, 16, 16, 30)}}
    control = shown["control"]
    assert control["precedence"] == ["crisis", "operator", "schedule"]
    assert control["fields"]["plan"]["source"] == "operator"
    assert control["layers"]["schedule"]["set"] == {"plan": 1}
    assert control["layers"]["operator"]["until"] == local(2026, 6, 16, 10, 10)
    assert shown["desired"] == {"plan": 2}
    # A crossroad that follows no schedule shows none.
    bare = Run(clock, None, schedule="")
    assert "schedule" not in bare.entity.view_extras()
