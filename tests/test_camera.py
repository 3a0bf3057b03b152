"""The camera: presets by name, health alarms, and motion joined to an intrusion incident."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest

from actors.alarms import AlarmBook, AlarmStateError, alarm_id
from actors.camera import Camera
from actors.control.alarms import AlarmsCoordinator
from runtime.clock import ManualClock
from runtime.envelope import Envelope, MessageKind
from runtime.errors import InvalidCommandError, RejectedError
from runtime.inventory import Equipment
from tests.helpers import FakeContext, FakePort

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro
    return asyncio.run(main())


def camera_equipment(**attrs: Any) -> Equipment:
    base: dict[str, Any] = {"watches": "bld-dijon-0001", "presets": {"home": 1, "fire": 16}}
    base.update(attrs)
    return Equipment(id="cam-dijon-0001", kind="camera", municipality="dijon", lat=47.32,
                     lon=5.04, endpoint="mqtt", profile="camera", attrs=base)


async def started() -> tuple[Camera, FakeContext, FakePort]:
    port = FakePort({"preset": "reapply", "recording": "reapply"})
    ctx = FakeContext(camera_equipment(), port)
    entity = Camera(ctx)
    await entity.on_start(None)
    return entity, ctx, port


async def telemetry(entity: Camera, seq: int, **values: Any) -> None:
    sample = {"recording": True, "health": "ok", "preset": 1, "storage_pct": 40.0, **values}
    await entity.handle(Envelope(target=entity.ctx.id, type="telemetry",
                                 kind=MessageKind.TELEMETRY,
                                 payload={"values": sample, "seq": seq,
                                          "ts": entity.ctx.clock.time()}))


# -- presets ---------------------------------------------------------------------------

def test_a_preset_name_is_the_cameras_own_number_at_the_edge() -> None:
    eq = camera_equipment()
    assert Camera.validate_command_for(eq, "set", {"preset": "fire"}, now=0.0) == {"preset": 16}
    assert Camera.validate_command_for(eq, "set", {"preset": 3, "recording": True}, now=0.0) == {
        "preset": 3, "recording": True}
    with pytest.raises(InvalidCommandError) as err:
        Camera.validate_command_for(eq, "set", {"preset": "flood"}, now=0.0)
    assert err.value.field == "params.preset" and err.value.code == "unknown_preset"
    with pytest.raises(InvalidCommandError) as err:
        Camera.validate_command_for(eq, "set", {"preset": "Not A Name"}, now=0.0)
    assert err.value.field == "params.preset"
    with pytest.raises(InvalidCommandError) as err:
        Camera.validate_command_for(eq, "set", {"preset": "fire", "zoom": 3}, now=0.0)
    assert err.value.field == "params.zoom"


def test_a_journaled_preset_name_is_resolved_when_applied() -> None:
    async def main() -> None:
        entity, ctx, port = await started()
        await entity.handle(Envelope(target=ctx.id, type="command", payload={
            "command_id": "fire-x/camera/cam", "action": "set", "params": {"preset": "fire"}}))
        assert port.writes == [{"preset": 16}]
        assert entity.twin.desired["preset"] == 16
        with pytest.raises(RejectedError) as err:
            await entity.handle(Envelope(target=ctx.id, type="command", payload={
                "command_id": "c2", "action": "set", "params": {"preset": "snow"}}))
        assert err.value.code == "unknown_preset"
        assert len(port.writes) == 1
    run(main())


# -- health ----------------------------------------------------------------------------

def test_health_raises_and_clears_its_alarms() -> None:
    async def main() -> None:
        entity, ctx, _ = await started()
        await telemetry(entity, 1)
        assert ctx.named("alarm") == []
        await telemetry(entity, 2, recording=False, storage_pct=93.5, health="failed")
        assert sorted(f["alarm"] for f in ctx.named("alarm")) == [
            "camera_fault", "camera_not_recording", "camera_storage_full"]
        await telemetry(entity, 3)
        assert sorted(f["alarm"] for f in ctx.named("alarm_cleared")) == [
            "camera_fault", "camera_not_recording", "camera_storage_full"]
    run(main())


def test_recording_stopped_by_an_operator_is_no_alarm() -> None:
    async def main() -> None:
        entity, ctx, _ = await started()
        await entity.handle(Envelope(target=ctx.id, type="command", payload={
            "command_id": "c1", "action": "set", "params": {"recording": False}}))
        await telemetry(entity, 1, recording=False)
        assert ctx.named("alarm") == []
    run(main())


def test_a_tamper_is_a_momentary_alarm() -> None:
    async def main() -> None:
        entity, ctx, _ = await started()
        await entity.handle(Envelope(target=ctx.id, type="device_event", kind=MessageKind.EVENT,
                                     payload={"event": "tamper", "fields": {"preset": 1}}))
        assert ctx.named("alarm") == [{"alarm": "camera_tamper", "momentary": True}]
    run(main())


# -- motion and intrusion: one incident --------------------------------------------------

def test_motion_names_the_building_the_camera_watches() -> None:
    async def main() -> None:
        entity, ctx, _ = await started()
        await entity.handle(Envelope(target=ctx.id, type="device_event", kind=MessageKind.EVENT,
                                     payload={"event": "motion", "fields": {"preset": 1}}))
        [ev] = ctx.named("device_event")
        assert ev["device_event"] == "motion" and ev["watches"] == "bld-dijon-0001"
        assert ctx.named("alarm") == []  # motion alone is an event
    run(main())


def _coordinator() -> tuple[AlarmsCoordinator, FakeContext]:
    eq = Equipment(id="alarms", kind="coordinator", municipality="metropolis", lat=47.32,
                   lon=5.04, endpoint="control:alarms", profile="coordinator")
    ctx = FakeContext(eq, None)
    return AlarmsCoordinator(ctx), ctx


def _events(*events: dict[str, Any]) -> Envelope:
    return Envelope(target="alarms", type="events", kind=MessageKind.EVENT,
                    payload={"events": list(events)})


def test_motion_during_an_intrusion_is_one_incident_with_it() -> None:
    async def main() -> None:
        coord, _ = _coordinator()
        await coord.on_start(None)
        motion = {"event": "device_event", "device_event": "motion", "entity": "cam-dijon-0001",
                  "watches": "bld-dijon-0001", "municipality": "dijon", "kind": "camera"}
        await coord.handle(_events(motion))  # no intrusion: motion stays an event
        assert len(coord.book) == 0
        await coord.handle(_events({"event": "alarm", "alarm": "intrusion",
                                    "entity": "bld-dijon-0001", "municipality": "dijon",
                                    "kind": "building"}, motion))
        parent = alarm_id("bld-dijon-0001", "intrusion")
        shown = coord.book.alarms()
        assert [a["id"] for a in shown] == [parent]  # one incident in the operator's list
        assert shown[0]["count"] == 2
        both = coord.book.alarms(group=parent)
        assert [a["id"] for a in both] == [parent, alarm_id("cam-dijon-0001", "intrusion_motion")]
        assert both[1]["group"] == parent
        # Acknowledging the incident acknowledges both.
        coord.book.ack(parent, "alice")
        assert {a["state"] for a in coord.book.alarms(group=parent)} == {
            "acknowledged", "normal"}
    run(main())


def test_motion_after_an_incident_re_annunciates_it_and_survives_a_checkpoint() -> None:
    clock = ManualClock()
    book = AlarmBook(clock)
    parent = alarm_id("bld-dijon-0001", "intrusion")
    book.raise_("bld-dijon-0001", "intrusion", municipality="dijon", kind="building")
    book.ack(parent, "alice")
    book.join_incident(parent, "cam-dijon-0001", "intrusion_motion", municipality="dijon",
                       kind="camera")
    assert book.get(parent)["state"] == "unacknowledged"
    restored = AlarmBook.from_dict(book.to_dict(), clock)
    assert restored.get(parent)["count"] == 2
    assert [a["id"] for a in restored.alarms(group=parent)][1] == alarm_id(
        "cam-dijon-0001", "intrusion_motion")


def test_fire_plan_steps_are_shown_on_the_fire_alarm() -> None:
    async def main() -> None:
        coord, _ = _coordinator()
        await coord.on_start(None)
        await coord.handle(_events(
            {"event": "alarm", "alarm": "fire", "entity": "bld-dijon-0001",
             "municipality": "dijon", "kind": "building"},
            {"event": "fire_plan_step", "entity": "bld-dijon-0001", "alarm": "fire",
             "step": "doors", "state": "done", "detail": "unlocked: door 1, 2"},
            {"event": "fire_plan_step", "entity": "dispatch", "building": "bld-dijon-0001",
             "alarm": "fire", "step": "intervention", "state": "new", "detail": "int-x"},
            {"event": "fire_plan_step", "entity": "dispatch", "building": "bld-dijon-0001",
             "alarm": "fire", "step": "intervention", "state": "assigned", "detail": "veh-1"}))
        a = coord.book.get(alarm_id("bld-dijon-0001", "fire"))
        assert [(s["step"], s["state"]) for s in a["steps"]] == [
            ("doors", "done"), ("intervention", "assigned")]
        assert [h["action"] for h in a["history"]].count("plan_step") == 3
        restored = AlarmBook.from_dict(coord.book.to_dict(), ManualClock())
        assert restored.get(a["id"])["steps"] == a["steps"]
    run(main())


def test_an_incident_over_releases_what_joined_it() -> None:
    book = AlarmBook(ManualClock())
    parent = alarm_id("bld-dijon-0001", "intrusion")
    child = alarm_id("cam-dijon-0001", "intrusion_motion")
    book.raise_("bld-dijon-0001", "intrusion", municipality="dijon", kind="building")
    book.join_incident(parent, "cam-dijon-0001", "intrusion_motion", municipality="dijon",
                       kind="camera")
    book.clear("bld-dijon-0001", "intrusion")
    book.ack(parent, "alice")  # acknowledges the motion too; the incident is normal
    assert book.get(parent)["state"] == "normal" and book.get(parent)["count"] == 1
    assert book.get(child)["group"] is None and book.get(child)["state"] == "normal"
    with pytest.raises(AlarmStateError, match="not active"):
        book.join_incident(parent, "cam-dijon-0001", "intrusion_motion",
                           municipality="dijon", kind="camera")
