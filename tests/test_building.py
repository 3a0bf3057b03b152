"""The building: door commands, badge events and the fire plan, on a manual clock and a
fake BMS."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest

from actors.building import Building
from actors.fire_plan import FirePlan, FireStep
from runtime.commands import CommandStatus
from runtime.envelope import Envelope, MessageKind
from runtime.errors import InvalidCommandError, RejectedError
from runtime.inventory import Equipment
from tests.helpers import FakeContext, FakePort

T = TypeVar("T")

PLAN = FirePlan("test", 0.0, (FireStep("unlock_doors", "evacuation"),
                              FireStep("camera_preset", "fire"),
                              FireStep("intervention", "fire_safety")))


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro
    return asyncio.run(main())


def building_equipment(**attrs: Any) -> Equipment:
    base: dict[str, Any] = {"doors": {"evacuation": [1, 2]},
                            "watched_by": ["cam-dijon-0001", "cam-dijon-0002"]}
    base.update(attrs)
    return Equipment(id="bld-dijon-0001", kind="building", municipality="dijon", lat=47.32,
                     lon=5.04, endpoint="opcua://127.0.0.1:4840/bld/bld-dijon-0001",
                     profile="bms", attrs=base)


async def started(plan: FirePlan = PLAN, **attrs: Any) -> tuple[Building, FakeContext, FakePort]:
    port = FakePort()
    ctx = FakeContext(building_equipment(**attrs), port)
    entity = Building(ctx)
    ctx.entity = entity
    await entity.on_start(None)
    entity.fire_plan = plan
    return entity, ctx, port


async def command(entity: Building, cid: str, action: str, caller: str = "user:alice:operator",
                  **params: Any) -> Any:
    return await entity.handle(Envelope(target=entity.ctx.id, type="command", payload={
        "command_id": cid, "action": action, "params": params, "caller": caller}))


async def fire(entity: Building, ctx: FakeContext) -> None:
    """The BMS raises a fire event (zone 1), then the plan's timer runs."""
    await entity.handle(Envelope(target=ctx.id, type="device_event", kind=MessageKind.EVENT,
                                 payload={"event": "fire", "fields": {"zone": 1}}))
    await ctx.run_timers()


def steps(ctx: FakeContext) -> list[tuple[str, str]]:
    return [(f["step"], f["state"]) for f in ctx.named("fire_plan_step")]


# -- door commands ---------------------------------------------------------------------

def test_unlock_needs_a_reason_at_the_edge() -> None:
    eq = building_equipment()
    with pytest.raises(InvalidCommandError) as err:
        Building.validate_command_for(eq, "unlock", {"door": 1}, now=0.0)
    assert err.value.field == "params.reason"
    with pytest.raises(InvalidCommandError) as err:
        Building.validate_command_for(eq, "unlock", {"door": 1, "reason": "   "}, now=0.0)
    assert err.value.field == "params.reason"
    assert Building.validate_command_for(eq, "lock", {"door": 6, "reason": "night"}, now=0.0) == {
        "door": 6, "reason": "night"}


def test_a_door_the_bms_does_not_have_is_refused_at_the_edge() -> None:
    eq = building_equipment()
    with pytest.raises(InvalidCommandError) as err:
        # The profile has 6 doors.
        Building.validate_command_for(eq, "lock", {"door": 7, "reason": "x"}, now=0.0)
    assert err.value.field == "params.door"
    with pytest.raises(InvalidCommandError) as err:
        Building.validate_command_for(eq, "lock", {"door": "1", "reason": "x"}, now=0.0)
    assert err.value.field == "params.door"
    with pytest.raises(InvalidCommandError) as err:
        Building.validate_command_for(eq, "open_sesame", {"reason": "x"}, now=0.0)
    assert err.value.field == "action"


def test_unlock_writes_the_door_node_and_records_who_and_why() -> None:
    async def main() -> None:
        entity, ctx, port = await started()
        await command(entity, "c1", "unlock", door=3, reason="delivery at the back")
        assert port.writes == [{"door.3.locked": False}]
        assert entity.twin.desired["door.3.locked"] is False
        [ev] = ctx.named("door_command")
        assert ev == {"door": 3, "locked": False, "reason": "delivery at the back",
                      "by": "user:alice:operator"}
        # Replayed from the journal after a restart: acknowledged, not written twice.
        await command(entity, "c1", "unlock", door=3, reason="delivery at the back")
        assert len(port.writes) == 1
    run(main())


def test_a_door_command_the_bms_does_not_answer_is_refused() -> None:
    async def main() -> None:
        entity, _, port = await started()
        port.down = True
        with pytest.raises(RejectedError) as err:
            await command(entity, "c1", "lock", door=1, reason="x")
        assert err.value.code == "device_offline"
    run(main())


def test_a_refused_badge_is_an_alarm_and_a_granted_one_only_an_event() -> None:
    async def main() -> None:
        entity, ctx, _ = await started()
        for granted in (True, False):
            await entity.handle(Envelope(target=ctx.id, type="device_event",
                                         kind=MessageKind.EVENT, payload={
                                             "event": "badge",
                                             "fields": {"door": 2, "badge": "B0042",
                                                        "granted": granted}}))
        assert [f["device_event"] for f in ctx.named("device_event")] == ["badge", "badge"]
        [alarm] = ctx.named("alarm")
        assert alarm["alarm"] == "badge_refused" and alarm["momentary"] is True
        assert alarm["badge"] == "B0042"
    run(main())


# -- the fire plan ---------------------------------------------------------------------

def test_fire_runs_the_plan_at_once_doors_cameras_and_dispatch() -> None:
    async def main() -> None:
        entity, ctx, port = await started()
        await fire(entity, ctx)
        assert ctx.named("alarm")[0]["alarm"] == "fire"
        assert port.writes == [{"door.1.locked": False, "door.2.locked": False}]
        assert sorted(ctx.journal) == [
            f"{entity.state['fire']['plan']}/camera/cam-dijon-0001",
            f"{entity.state['fire']['plan']}/camera/cam-dijon-0002"]
        assert {c.action for c in ctx.journal.values()} == {"set"}
        assert {c.params["preset"] for c in ctx.journal.values()} == {"fire"}
        [dispatch] = ctx.named("fire_dispatch")
        assert dispatch["role"] == "fire_safety" and dispatch["building"] == ctx.id
        assert entity.state["fire"]["first_action_ts"] == entity.state["fire"]["raised_ts"]
        assert steps(ctx) == [("doors", "done"), ("cameras", "sent"),
                              ("intervention", "requested")]
        # The cameras answer: the step ends once both have.
        ids = sorted(ctx.journal)
        ctx.settle(ids[0], CommandStatus.ACKED)
        await ctx.advance(0.2)
        assert steps(ctx)[-1] == ("intervention", "requested")
        ctx.settle(ids[1], CommandStatus.FAILED)
        await ctx.advance(0.2)
        assert steps(ctx)[-1] == ("cameras", "partial")
        assert "not moved: cam-dijon-0002" in ctx.named("fire_plan_step")[-1]["detail"]
        assert "fire_follow" not in ctx.timers
    run(main())


def test_the_plan_runs_once_per_incident_and_undoes_nothing_when_the_fire_clears() -> None:
    async def main() -> None:
        entity, ctx, port = await started()
        await fire(entity, ctx)
        entity.check_conditions()  # values caught up: still burning
        await ctx.advance(11.0)  # the latch ends; no zone reported: the alarm clears
        entity.check_conditions()
        assert ctx.named("alarm_cleared")[-1]["alarm"] == "fire"
        await fire(entity, ctx)  # raised again: the same incident, the plan is not rerun
        assert len(ctx.named("fire_dispatch")) == 1
        assert port.writes == [{"door.1.locked": False, "door.2.locked": False}]
        assert entity.state["fire"]["phase"] == "held"
    run(main())


def test_a_fire_unlock_wins_over_a_lockdown_until_an_operator_resets_it() -> None:
    async def main() -> None:
        entity, ctx, port = await started()
        await fire(entity, ctx)
        port.writes.clear()
        await command(entity, "c1", "set", mode="lockdown")
        assert port.writes == [{"mode": "lockdown"},
                               {"door.1.locked": False, "door.2.locked": False}]
        # A lockdown at the BMS panel: a reading after the write shows door 2 locked again.
        port.writes.clear()
        await ctx.clock.advance(1.0)  # type: ignore[attr-defined]
        entity.twin.report_many({"door.2.locked": True}, source_ts=ctx.clock.time(),
                                received_ts=ctx.clock.time())
        entity.check_conditions()
        await ctx.run_timers()
        assert port.writes == [{"door.1.locked": False, "door.2.locked": False}]
        # An operator resets the plan: the next lockdown keeps the doors locked.
        with pytest.raises(RejectedError):
            await command(entity, "c2", "fire_reset")  # no reason: refused
        await command(entity, "c3", "fire_reset", reason="fire brigade left, all clear")
        assert steps(ctx)[-1] == ("reset", "done")
        port.writes.clear()
        await command(entity, "c4", "set", mode="lockdown")
        assert port.writes == [{"mode": "lockdown"}]
    run(main())


def test_an_operator_lock_takes_a_door_out_of_the_hold() -> None:
    async def main() -> None:
        entity, ctx, port = await started()
        await fire(entity, ctx)
        await command(entity, "c1", "lock", door=2, reason="smoke spreading to wing B")
        assert entity.state["fire"]["held"] == [1]
        assert steps(ctx)[-1][0] == "doors" and steps(ctx)[-1][1] == "operator"
        port.writes.clear()
        await command(entity, "c2", "set", mode="lockdown")
        assert port.writes == [{"mode": "lockdown"}, {"door.1.locked": False}]
    run(main())


def test_a_bms_out_of_reach_is_retried_and_the_other_steps_go_on() -> None:
    async def main() -> None:
        entity, ctx, port = await started()
        port.down = True
        await fire(entity, ctx)
        assert ("doors", "retrying") in steps(ctx)
        assert len(ctx.journal) == 2 and len(ctx.named("fire_dispatch")) == 1
        port.down = False
        await ctx.advance(2.0)
        assert port.writes == [{"door.1.locked": False, "door.2.locked": False}]
        assert ("doors", "done") in steps(ctx)
        assert len(ctx.journal) == 2 and len(ctx.named("fire_dispatch")) == 1
    run(main())


def test_a_confirmation_step_waits_for_an_operator_or_its_time() -> None:
    plan = FirePlan("confirm", 30.0, PLAN.steps)

    async def main() -> None:
        entity, ctx, port = await started(plan)
        await fire(entity, ctx)
        assert port.writes == [] and steps(ctx) == [("confirm", "waiting")]
        await ctx.advance(5.0)
        assert port.writes == []
        await command(entity, "c1", "fire_confirm", reason="smoke on camera 3")
        assert entity.state["fire"]["first_action_ts"] == ctx.clock.time()
        assert port.writes == [{"door.1.locked": False, "door.2.locked": False}]
        assert ("confirm", "confirmed") in steps(ctx)
        assert "fire_confirm" not in ctx.timers

        # Unconfirmed: acts when the time is up if the fire holds.
        entity2, ctx2, port2 = await started(plan)
        await fire(entity2, ctx2)
        await ctx2.advance(30.0)
        assert ("confirm", "timeout") in steps(ctx2)
        assert port2.writes == [{"door.1.locked": False, "door.2.locked": False}]
    run(main())


def test_a_fire_that_clears_before_confirmation_drops_the_plan() -> None:
    plan = FirePlan("confirm", 30.0, PLAN.steps)

    async def main() -> None:
        entity, ctx, port = await started(plan)
        await fire(entity, ctx)
        await ctx.advance(11.0)
        entity.check_conditions()  # the latch ended and no zone is in alarm
        await ctx.advance(20.0)
        assert steps(ctx)[-1] == ("confirm", "dropped")
        assert port.writes == [] and ctx.journal == {} and ctx.named("fire_dispatch") == []
    run(main())


def test_a_building_nobody_watches_and_without_tagged_doors_reports_so() -> None:
    async def main() -> None:
        entity, ctx, port = await started(doors={}, watched_by=[])
        await fire(entity, ctx)
        assert port.writes == [] and ctx.journal == {}
        assert ("doors", "done") in steps(ctx) and ("cameras", "done") in steps(ctx)
    run(main())


def test_inventory_attrs_lists_the_cameras_that_watch_the_building() -> None:
    from runtime.demo_inventory import build_demo

    inv = build_demo(0.1)
    for eq in inv.equipment:
        if eq.kind != "building":
            continue
        watchers = Building.inventory_attrs(eq, inv)["watched_by"]
        assert watchers == sorted(c.id for c in inv.equipment
                                  if c.kind == "camera" and c.attrs.get("watches") == eq.id)
    assert any(Building.inventory_attrs(eq, inv)["watched_by"]
               for eq in inv.equipment if eq.kind == "building")


def test_a_restart_mid_plan_finishes_it_without_doing_anything_twice() -> None:
    async def main() -> None:
        entity, ctx, port = await started()
        port.down = True
        await fire(entity, ctx)
        saved = entity.checkpoint()
        # The host is replaced: a new incarnation starts from the checkpoint.
        port.down = False
        ctx2 = FakeContext(ctx.equipment, port, ctx.clock)
        ctx2.journal = dict(ctx.journal)
        again = Building(ctx2)
        ctx2.entity = again
        await again.on_start(saved)
        again.fire_plan = PLAN
        assert {"fire_retry", "fire_follow"} <= set(ctx2.timers)
        await ctx2.run_timers()
        assert port.writes == [{"door.1.locked": False, "door.2.locked": False}]
        assert ctx2.named("fire_dispatch") == [] and len(ctx2.journal) == 2
        assert again.state["fire"]["phase"] == "held"
        for cid in ctx2.journal:
            ctx2.settle(cid, CommandStatus.ACKED)
        await ctx2.advance(0.2)
        assert steps(ctx2)[-1] == ("cameras", "done")
    run(main())


def test_door_commands_supersede_only_commands_for_the_same_door() -> None:
    from runtime.commands import Command
    from runtime.host import _setpoint_key

    eq = building_equipment()

    def key(action: str, **params: Any) -> tuple[str, str, tuple[str, ...]]:
        cmd = Command(command_id=f"c-{action}-{params}", target=eq.id, action=action,
                      params=params, caller="user:alice:operator")
        return _setpoint_key(cmd, eq, Building)

    assert key("lock", door=1, reason="a") != key("lock", door=2, reason="a")
    assert key("lock", door=1, reason="a") == key("unlock", door=1, reason="b")
    assert key("set", mode="lockdown") == key("set", mode="occupied")
    assert key("fire_reset", reason="a") != key("fire_confirm", reason="a")
