"""Access terminals under pedestrian-zone rules, on a manual clock with a recording port:
the zone's hours over whole days, exceptional passages and their end, a crisis hold against
ordinary and fire-safety passages, restarts across a transition, and the fault bits."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest

from actors.access import AccessTerminal, pedestrian_at
from actors.equipment import CRISIS_RESTORE_CALLER
from actors.schedule import parse_schedules
from runtime.entity import Checkpoint
from runtime.errors import InvalidCommandError, RejectedError, ScheduleError
from runtime.inventory import Equipment
from tests.helpers import FakeContext, FakePort, command, local, manual_clock, telemetry

T = TypeVar("T")
OPERATOR = "user:ana:operator"
WEDNESDAY = (2026, 6, 10)
SATURDAY = (2026, 6, 13)


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 10)

    return asyncio.run(bounded())


def terminal_record(zone: str | None = "pedestrian_centre") -> Equipment:
    return Equipment(id="at-dijon-0001", kind="access_terminal", municipality="dijon",
                     lat=47.322, lon=5.041, endpoint="modbus://127.0.0.1:15300/1",
                     profile="access_terminal", attrs={"zone": zone} if zone else {})


class Rig:
    """One terminal entity on a manual clock; the port's writes move a pretend bollard."""

    def __init__(self, at: float, zone: str | None = "pedestrian_centre") -> None:
        self.clock = manual_clock(at)
        self.port = FakePort({"request": "alarm"}, policy_default=None, readable=False)
        self.record = terminal_record(zone)
        self.seq = 0
        self.bollard = "down"
        self.ctx, self.entity = self._new()

    def _new(self) -> tuple[FakeContext, AccessTerminal]:
        ctx = FakeContext(self.record, self.port, self.clock)
        entity = AccessTerminal(ctx)
        ctx.entity = entity
        return ctx, entity

    async def start(self, saved: Checkpoint | None = None) -> None:
        if saved is not None:
            self.ctx, self.entity = self._new()
        await self.entity.on_start(saved)
        await self.report()
        await self.ctx.advance_to(self.clock.time())  # the schedule's first look
        await self.report()

    async def report(self, fault_bits: int = 0) -> None:
        """The terminal's reading: where the last request left the bollard."""
        for w in self.port.writes:
            self.bollard = "up" if w.get("request") == "raise" else "down"
        self.seq += 1
        await self.entity.handle(telemetry(self.record.id, {
            "bollard": self.bollard, "request": "none", "fault_bits": fault_bits},
            self.clock.time(), self.seq))

    async def until(self, t: float) -> None:
        await self.ctx.advance_to(t)
        await self.report()

    async def command(self, cid: str, action: str, caller: str = OPERATOR,
                      **params: Any) -> Any:
        reply = await self.entity.handle(command(self.record.id, cid, action, params, caller))
        await self.report()
        return reply

    def requests(self) -> list[str]:
        return [w["request"] for w in self.port.writes]


def test_a_whole_weekday_lowers_at_six_and_raises_at_eleven_once_each() -> None:
    async def body() -> None:
        rig = Rig(local(*WEDNESDAY, 0, 30))
        await rig.start()
        # Pedestrian since yesterday 11:00: the bollard goes up at once.
        assert rig.requests() == ["raise"]
        assert rig.entity.pedestrian() is True
        view = rig.entity.schedule_view()
        assert view is not None and view["step"] == "closed"
        assert view["next"] == {"step": "open", "at": local(*WEDNESDAY, 6)}
        await rig.until(local(*WEDNESDAY, 5, 59))
        assert rig.requests() == ["raise"]
        await rig.until(local(*WEDNESDAY, 6, 0))
        assert rig.requests() == ["raise", "lower"]
        assert rig.entity.pedestrian() is False
        await rig.until(local(*WEDNESDAY, 10, 59))
        await rig.until(local(*WEDNESDAY, 11, 0))
        assert rig.requests() == ["raise", "lower", "raise"]
        await rig.until(local(*WEDNESDAY, 23, 59))
        assert rig.requests() == ["raise", "lower", "raise"]
        steps = [(e["step"], e["since"]) for e in rig.ctx.named("schedule_step")]
        assert steps == [("closed", local(2026, 6, 9, 11)), ("open", local(*WEDNESDAY, 6)),
                         ("closed", local(*WEDNESDAY, 11))]
        view = rig.entity.checkpoint().state["view"]
        assert view["schedule"]["next"] == {"step": "open", "at": local(2026, 6, 11, 6)}
        assert view["pedestrian"] is True and view["bollard_by"] == "schedule"

    run(body())


def test_sundays_and_holidays_stay_pedestrian_all_day() -> None:
    eq = terminal_record()
    assert pedestrian_at(eq, local(*SATURDAY, 8)) is False
    assert pedestrian_at(eq, local(2026, 6, 14, 8)) is True  # Sunday
    assert pedestrian_at(eq, local(2026, 5, 1, 8)) is True  # 1 May, a Friday
    assert pedestrian_at(eq, local(2026, 5, 14, 8)) is True  # Ascension Thursday
    assert pedestrian_at(eq, local(2026, 5, 15, 8)) is False  # the Friday after
    assert pedestrian_at(terminal_record(None), local(2026, 6, 14, 8)) is False
    # A zone no schedule is named after is pedestrian at all times (the safe side).
    assert pedestrian_at(terminal_record("nowhere"), local(*WEDNESDAY, 8)) is True

    async def body() -> None:
        rig = Rig(local(2026, 6, 14, 0, 30))  # Sunday: no "open" step until Monday 06:00
        await rig.start()
        await rig.until(local(2026, 6, 14, 23, 59))
        assert rig.requests() == ["raise"]
        await rig.until(local(2026, 6, 15, 6))
        assert rig.requests() == ["raise", "lower"]

    run(body())


def test_lowering_during_pedestrian_hours_is_refused_at_the_edge_and_by_the_entity() -> None:
    eq = terminal_record()
    with pytest.raises(InvalidCommandError) as info:
        AccessTerminal.validate_command_for(eq, "set", {"bollard": "down"},
                                            now=local(*WEDNESDAY, 12))
    assert (info.value.field, info.value.code) == ("params.bollard", "pedestrian_hours")
    assert "grant_passage" in str(info.value)
    assert AccessTerminal.validate_command_for(eq, "set", {"bollard": "down"},
                                               now=local(*WEDNESDAY, 8)) == {"bollard": "down"}
    assert AccessTerminal.validate_command_for(eq, "set", {"bollard": "up"},
                                               now=local(*WEDNESDAY, 12)) == {"bollard": "up"}

    async def body() -> None:
        rig = Rig(local(*WEDNESDAY, 10, 59))
        await rig.start()
        assert rig.requests() == []  # the morning's open step: down, where it is
        # Accepted at the edge at 10:59, it reaches the entity once the hours began.
        await rig.until(local(*WEDNESDAY, 11, 0))
        with pytest.raises(RejectedError) as refused:
            await rig.command("c-late", "set", bollard="down")
        assert refused.value.code == "pedestrian_hours"
        assert rig.requests() == ["raise"]

    run(body())


def test_a_grant_lowers_for_its_time_then_the_bollard_goes_up_again() -> None:
    async def body() -> None:
        rig = Rig(local(*WEDNESDAY, 12))
        await rig.start()
        assert rig.requests() == ["raise"]
        reply = await rig.command("c-1", "grant_passage", reason="delivery to the pharmacy",
                                  for_s=120, vehicle="van-42", service="delivery")
        assert reply["result"]["passage"]["by"] == "ana"
        assert rig.requests() == ["raise", "lower"]
        granted = rig.ctx.named("passage_granted")
        assert [(g["by"], g["reason"], g["vehicle"]) for g in granted] == [
            ("ana", "delivery to the pharmacy", "van-42")]
        assert rig.entity.checkpoint().state["view"]["passage"]["until"] == \
            local(*WEDNESDAY, 12, 2)
        await rig.until(local(*WEDNESDAY, 12, 1))
        assert rig.requests() == ["raise", "lower"]
        await rig.until(local(*WEDNESDAY, 12, 2))
        assert rig.requests() == ["raise", "lower", "raise"]
        assert len(rig.ctx.named("passage_ended")) == 1
        assert "passage" not in rig.entity.checkpoint().state["view"]

    run(body())


@pytest.mark.parametrize(("params", "field"), [
    ({"for_s": 60}, "params.reason"),
    ({"reason": "   ", "for_s": 60}, "params.reason"),
    ({"reason": "x"}, "params.for_s"),
    ({"reason": "x", "for_s": 0}, "params.for_s"),
    ({"reason": "x", "for_s": 86_400}, "params.for_s"),
    ({"reason": "x", "for_s": 60, "service": "tank"}, "params.service"),
    ({"reason": "x", "for_s": 60, "colour": "red"}, "params.colour"),
])
def test_a_grant_needs_a_reason_and_a_bounded_time(params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidCommandError) as info:
        AccessTerminal.validate_command("grant_passage", params)
    assert info.value.field == field
    with pytest.raises(InvalidCommandError) as info:
        AccessTerminal.validate_command("open_sesame", {})
    assert info.value.field == "action" and "grant_passage" in str(info.value)


def test_only_an_operator_grants_a_passage() -> None:
    async def body() -> None:
        rig = Rig(local(*WEDNESDAY, 12))
        await rig.start()
        for caller in ("crisis", "dispatch", "user:vic:viewer", "open311:app", ""):
            with pytest.raises(RejectedError) as info:
                await rig.command(f"c-{caller}", "grant_passage", caller=caller,
                                  reason="x", for_s=60)
            assert info.value.code == "forbidden"
        assert rig.requests() == ["raise"]
        await rig.command("c-admin", "grant_passage", caller="user:root:admin", reason="x",
                          for_s=60)
        assert rig.requests() == ["raise", "lower"]
        # The API journals an equipment command under the operator's bare name.
        reply = await rig.command("c-api", "grant_passage", caller="ana", reason="x", for_s=60)
        assert reply["result"]["passage"]["by"] == "ana"

    run(body())


def test_a_crisis_hold_refuses_an_ordinary_passage_but_never_a_fire_safety_one() -> None:
    async def body() -> None:
        rig = Rig(local(*WEDNESDAY, 7))  # open: the bollard is down
        await rig.start()
        assert rig.requests() == []
        await rig.command("crisis-flood-at", "set", caller="crisis", bollard="up")
        assert rig.requests() == ["raise"]
        with pytest.raises(RejectedError) as held:
            await rig.command("c-1", "grant_passage", reason="delivery", for_s=60)
        assert held.value.code == "crisis_hold"
        with pytest.raises(RejectedError) as held:
            await rig.command("c-2", "set", bollard="down")
        assert held.value.code == "crisis_hold"
        assert rig.requests() == ["raise"]  # nothing reached the terminal
        reply = await rig.command("c-3", "grant_passage", reason="fire at 3 rue des Forges",
                                  for_s=300, vehicle="veh-dijon-0007", service="fire_safety")
        assert reply["result"]["by"] == "fire_passage"
        assert rig.requests() == ["raise", "lower"]
        # The fire passage ends: the crisis still holds the bollard up.
        await rig.until(local(*WEDNESDAY, 7, 5))
        assert rig.requests() == ["raise", "lower", "raise"]
        # The plan ends: the schedule's "open" step wants it down again.
        await rig.command("crisis-normal-at", "set", caller=CRISIS_RESTORE_CALLER,
                          bollard="up")
        assert rig.requests() == ["raise", "lower", "raise", "lower"]
        assert rig.ctx.named("crisis_released")

    run(body())


def test_a_fire_passage_wins_over_a_crisis_during_pedestrian_hours_too() -> None:
    async def body() -> None:
        rig = Rig(local(*WEDNESDAY, 15))
        await rig.start()
        await rig.command("crisis-1", "set", caller="crisis", bollard="up")
        assert rig.requests() == ["raise"]  # up already by the hours: one raise in all
        await rig.command("c-fire", "grant_passage", reason="fire", for_s=60,
                          service="fire_safety")
        assert rig.requests() == ["raise", "lower"]
        # A crisis setpoint cannot lower it during the hours either.
        with pytest.raises(RejectedError) as info:
            await rig.command("crisis-2", "set", caller="crisis", bollard="down")
        assert info.value.code == "pedestrian_hours"

    run(body())


def test_outside_the_hours_an_operator_lowers_and_his_setting_ends_at_the_next_step() -> None:
    async def body() -> None:
        rig = Rig(local(*SATURDAY, 8))
        await rig.start()
        assert rig.requests() == []
        await rig.command("c-up", "set", bollard="up")
        await rig.command("c-down", "set", bollard="down")
        await rig.command("c-up2", "set", bollard="up")
        assert rig.requests() == ["raise", "lower", "raise"]
        assert rig.entity.wanted() == ("up", "operator")
        await rig.until(local(*SATURDAY, 11))
        # The closed step wants it up, where it is: no request; the operator's layer is gone.
        assert rig.requests() == ["raise", "lower", "raise"]
        assert rig.entity.wanted() == ("up", "schedule")

    run(body())


def test_a_restart_across_a_transition_applies_it_once() -> None:
    async def body() -> None:
        rig = Rig(local(*WEDNESDAY, 10, 58))
        await rig.start()
        assert rig.requests() == []
        saved = rig.entity.checkpoint()
        # The host is down from 10:58 to 11:04: the closed step is applied when it is back.
        await rig.clock.advance(local(*WEDNESDAY, 11, 4) - rig.clock.time())
        await rig.start(saved)
        assert rig.requests() == ["raise"]
        assert rig.entity.schedule_view() is not None
        assert [e["step"] for e in rig.ctx.named("schedule_step")] == ["closed"]
        # Once more, right after: nothing to apply, nothing written.
        saved = rig.entity.checkpoint()
        await rig.start(saved)
        assert rig.requests() == ["raise"]
        assert rig.ctx.named("schedule_step") == []

    run(body())


def test_a_grant_survives_a_restart_and_still_ends_on_time() -> None:
    async def body() -> None:
        rig = Rig(local(*WEDNESDAY, 12))
        await rig.start()
        await rig.command("c-1", "grant_passage", reason="removal van", for_s=600)
        saved = rig.entity.checkpoint()
        await rig.start(saved)
        assert rig.requests() == ["raise", "lower"]
        await rig.until(local(*WEDNESDAY, 12, 10))
        assert rig.requests() == ["raise", "lower", "raise"]

    run(body())


def test_a_refused_move_is_an_event_and_is_tried_again() -> None:
    async def body() -> None:
        rig = Rig(local(*WEDNESDAY, 5, 59))
        await rig.start()
        rig.port.refuse = "device busy"
        await rig.until(local(*WEDNESDAY, 6))
        assert [e["desired"] for e in rig.ctx.named("actuation_failed")] == ["down"]
        rig.port.refuse = None
        await rig.until(local(*WEDNESDAY, 6, 1))
        assert rig.requests() == ["raise", "lower"]

    run(body())


def test_fault_bits_raise_the_terminal_fault_and_the_forced_passage_alarms() -> None:
    async def body() -> None:
        rig = Rig(local(*WEDNESDAY, 12))
        await rig.start()
        await rig.report(fault_bits=0x0002)
        assert [e["alarm"] for e in rig.ctx.named("alarm")] == ["forced_passage"]
        await rig.report(fault_bits=0x0003)
        assert [e["alarm"] for e in rig.ctx.named("alarm")] == ["forced_passage",
                                                                 "terminal_fault"]
        await rig.report(fault_bits=0)
        assert sorted(e["alarm"] for e in rig.ctx.named("alarm_cleared")) == [
            "forced_passage", "terminal_fault"]

    run(body())


def test_a_zone_schedule_is_checked_with_its_file_and_line() -> None:
    text = """\
[[schedule]]
name = "pedestrian_test"
kind = "access_terminal"

  [[schedule.step]]
  name = "closed"
  at = "11:00"
  set = { pedestrian = true, bollard = "down" }

  [[schedule.step]]
  name = "open"
  at = "06:00"
  set = { bollard = "down" }
"""
    with pytest.raises(ScheduleError) as info:
        parse_schedules(text, "zones.toml")
    assert info.value.issues == [
        "zones.toml:8: schedule[0].step[0].set.bollard: a pedestrian step cannot lower the "
        "bollard (during pedestrian hours it stays up)",
        "zones.toml:13: schedule[0].step[1].set.pedestrian: a pedestrian zone's step needs "
        "pedestrian = true or false"]


def test_the_simulated_terminal_reports_a_forced_passage_and_still_takes_requests() -> None:
    from devices.sim import EXC_DEVICE_FAILURE
    from devices.sim.access import AccessSimulator

    async def body() -> None:
        sim = AccessSimulator([terminal_record()], autotick=False, travel_s=1.0)
        eid = terminal_record().id
        model = sim.model(eid)
        assert model.apply(None, 0, "request", "raise") is None
        await sim.tick(1.0)
        assert model.values()["bollard"] == "up"
        await sim.fault(eid, "forced", True)
        assert model.values() == {"bollard": "down", "request": "none", "fault_bits": 2}
        assert model.apply(None, 0, "request", "raise") is None  # a forced passage: no fault
        await sim.tick(1.0)
        await sim.fault(eid, "controller", True)
        assert model.fault_bits == 3
        assert model.apply(None, 0, "request", "lower") == EXC_DEVICE_FAILURE
        await sim.fault(eid, "forced", False)
        await sim.fault(eid, "controller", False)
        assert model.fault_bits == 0 and model.values()["bollard"] == "up"

    run(body())
