"""Mailbox, entity and cell, driven directly: no host, no Ray, no sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from runtime.cell import EntityCell, EntitySlot
from runtime.clock import Clock, SystemClock
from runtime.entity import Checkpoint, Entity, EntityContext
from runtime.envelope import Envelope, MessageKind
from runtime.errors import (
    CommandpostError,
    MailboxFullError,
    MalformedMessageError,
    RejectedError,
)
from runtime.mailbox import Mailbox
from supervisors import ExitKind
from tests.helpers import FakeContext, make_equipment, poll


def tele(target: str, sender: str, type: str, value: Any) -> Envelope:
    return Envelope(target=target, type=type, payload=value, sender=sender,
                    kind=MessageKind.TELEMETRY)


# -- mailbox -------------------------------------------------------------------


def test_mailbox_conflates_telemetry_per_sender_and_type_when_full() -> None:
    box = Mailbox(capacity=3)
    box.offer(tele("e", "s1", "temp", 1))
    box.offer(tele("e", "s2", "temp", 10))
    box.offer(tele("e", "s1", "hum", 50))
    assert box.offer(tele("e", "s1", "temp", 2)) is True
    assert box.offer(tele("e", "s1", "temp", 3)) is True
    assert len(box) == 3
    assert box.stats.conflated == 2
    assert box.stats.accepted == 3
    values = {(e.sender, e.type): e.payload for e in box.drain()}
    assert values == {("s1", "temp"): 3, ("s2", "temp"): 10, ("s1", "hum"): 50}


def test_mailbox_drops_oldest_telemetry_when_nothing_to_conflate() -> None:
    box = Mailbox(capacity=2)
    box.offer(tele("e", "s1", "a", 1))
    box.offer(tele("e", "s2", "b", 2))
    box.offer(tele("e", "s3", "c", 3))
    assert box.stats.dropped_telemetry == 1
    assert [e.payload for e in box.drain()] == [2, 3]


def test_mailbox_refuses_commands_and_events_when_full_but_admits_control() -> None:
    box = Mailbox(capacity=1)
    box.offer(Envelope(target="e", type="x", kind=MessageKind.COMMAND))
    with pytest.raises(MailboxFullError):
        box.offer(Envelope(target="e", type="x", kind=MessageKind.COMMAND))
    with pytest.raises(MailboxFullError):
        box.offer(Envelope(target="e", type="x", kind=MessageKind.EVENT))
    assert box.stats.refused == 2
    assert box.offer(Envelope(target="e", type="ping", kind=MessageKind.CONTROL)) is True
    assert box.offer(Envelope(target="e", type="reply", kind=MessageKind.REPLY)) is True
    assert len(box) == 3
    # Telemetry into a box full of commands/control: the telemetry itself is dropped.
    box.offer(tele("e", "s", "t", 1))
    assert box.stats.dropped_telemetry == 1
    assert all(e.kind is not MessageKind.TELEMETRY for e in box.drain())


def test_mailbox_drops_and_counts_duplicates() -> None:
    box = Mailbox(capacity=10)
    env = Envelope(target="e", type="x")
    assert box.offer(env) is True
    assert box.offer(env) is False
    box.get_nowait()
    assert box.offer(env) is False  # still remembered after it was taken
    assert box.stats.duplicates == 2
    assert len(box) == 0
    box.remember("restored-id")
    assert box.offer(Envelope(target="e", type="x", id="restored-id")) is False
    assert box.stats.duplicates == 3


def test_mailbox_dedupe_window_is_bounded() -> None:
    box = Mailbox(capacity=10, dedupe_window=2)
    for i in range(3):
        box.remember(f"id{i}")
    assert not box.seen("id0")
    assert box.seen("id1") and box.seen("id2")


def test_mailbox_get_waits_for_an_offer() -> None:
    async def main() -> Envelope:
        box = Mailbox(capacity=2)
        getter = asyncio.create_task(box.get())
        await asyncio.sleep(0)
        assert not getter.done()
        box.offer(Envelope(target="e", type="x", payload=7))
        return await asyncio.wait_for(getter, 2.0)

    assert asyncio.run(main()).payload == 7


def test_mailbox_rejects_zero_capacity() -> None:
    with pytest.raises(ValueError):
        Mailbox(capacity=0)


# -- entity --------------------------------------------------------------------

CRASHES: list[str] = []


class Counter(Entity):
    kind = "counter"

    async def on_start(self, saved: Checkpoint | None) -> None:
        await super().on_start(saved)
        self.state.setdefault("n", 0)

    async def on_add(self, msg: Envelope) -> dict[str, Any]:
        self.state["n"] += int(msg.payload.get("by", 1))
        return {"n": self.state["n"]}

    async def on_boom(self, msg: Envelope) -> None:
        CRASHES.append(msg.id)
        raise RuntimeError("boom")

    async def on_refuse(self, msg: Envelope) -> None:
        raise RejectedError("not now", code="not_now")

    async def on_bad(self, msg: Envelope) -> None:
        raise MalformedMessageError("bad shape")

    async def apply_command(self, action: str, params: dict[str, Any]) -> Any:
        if action != "add":
            return await super().apply_command(action, params)
        self.state["n"] += int(params["by"])
        return {"n": self.state["n"]}


def started_counter(saved: Checkpoint | None = None) -> Counter:
    ctx: EntityContext = FakeContext(make_equipment("e1"), clock=SystemClock())
    entity = Counter(ctx)
    asyncio.run(entity.on_start(saved))
    return entity


def test_entity_dispatches_to_on_type_and_counts_versions() -> None:
    entity = started_counter()
    result = asyncio.run(entity.handle(Envelope(target="e1", type="add", payload={"by": 4})))
    assert result == {"n": 4}
    assert entity.version == 1
    ping = asyncio.run(entity.handle(Envelope(target="e1", type="ping")))
    assert ping == {"id": "e1", "version": 1}
    assert entity.version == 1  # ping observes only


@pytest.mark.parametrize("msg_type", ["nope", "start", "stop", "priority", "not-an-identifier"])
def test_entity_refuses_unknown_and_reserved_types(msg_type: str) -> None:
    entity = started_counter()
    with pytest.raises(RejectedError) as info:
        asyncio.run(entity.handle(Envelope(target="e1", type=msg_type)))
    assert info.value.code == "unknown_message"
    assert entity.version == 0


def test_entity_command_applies_once_and_acks_replays() -> None:
    entity = started_counter()
    cmd = Envelope(target="e1", type="command",
                   payload={"command_id": "c1", "action": "add", "params": {"by": 2}})
    first = asyncio.run(entity.handle(cmd))
    assert first == {"command_id": "c1", "result": {"n": 2}}
    again = asyncio.run(entity.handle(cmd))
    assert again == {"command_id": "c1", "duplicate": True}
    assert entity.state["n"] == 2
    assert entity.applied == ["c1"]
    # A restart from the checkpoint still knows c1 was applied.
    restored = started_counter(Checkpoint.from_dict(entity.checkpoint().to_dict()))
    assert asyncio.run(restored.handle(cmd)) == {"command_id": "c1", "duplicate": True}
    assert restored.state["n"] == 2


def test_entity_command_validation() -> None:
    entity = started_counter()
    with pytest.raises(MalformedMessageError):
        asyncio.run(entity.handle(Envelope(target="e1", type="command", payload={"x": 1})))
    with pytest.raises(MalformedMessageError):
        asyncio.run(entity.handle(Envelope(target="e1", type="command",
                                           payload={"action": "add", "params": [1]})))
    with pytest.raises(RejectedError) as info:
        asyncio.run(entity.handle(Envelope(target="e1", type="command",
                                           payload={"command_id": "c9", "action": "fly"})))
    assert info.value.code == "unknown_action"
    assert entity.applied == []


def test_entity_applied_window_is_bounded() -> None:
    entity = started_counter()
    for i in range(100):
        entity.mark_applied(f"c{i}")
    assert len(entity.checkpoint().applied) == 64
    assert entity.already_applied("c99") and not entity.already_applied("c0")


def test_checkpoint_round_trip() -> None:
    cp = Checkpoint(state={"n": 3}, twin={"reported": {}, "desired": {"dim": 4.0}},
                    applied=("a", "b"), version=7)
    assert Checkpoint.from_dict(cp.to_dict()) == cp
    assert Checkpoint.from_dict({}) == Checkpoint(state={}, twin={}, applied=(), version=0)


def test_default_priority_lane_refuses() -> None:
    with pytest.raises(RejectedError) as info:
        asyncio.run(Counter.on_priority({}, Envelope(target="e1", type="x"), None))  # type: ignore[arg-type]
    assert info.value.code == "no_priority"


# -- cell ----------------------------------------------------------------------


class FakeHost:
    """HostServices that records routed envelopes and finished messages."""

    def __init__(self) -> None:
        self.clock: Clock = SystemClock()
        self.routed: list[Envelope] = []
        self.events: list[tuple[str, str]] = []
        self.dirty: list[str] = []
        self.read_models: dict[str, bytes] = {}
        self.views: dict[str, Mapping[str, Any]] = {}
        self.done: list[tuple[str, CommandpostError | None]] = []

    def route(self, env: Envelope) -> None:
        self.routed.append(env)

    def emit(self, entity_id: str, event: str, fields: Mapping[str, Any]) -> None:
        self.events.append((entity_id, event))

    def mark_dirty(self, slot: EntitySlot) -> None:
        self.dirty.append(slot.id)

    def publish_read_model(self, name: str, data: bytes) -> None:
        self.read_models[name] = data

    def view_published(self, entity_id: str, view: Mapping[str, Any]) -> None:
        self.views[entity_id] = view

    def message_done(self, slot: EntitySlot, env: Envelope,
                     error: CommandpostError | None) -> None:
        self.done.append((env.id, error))


def request(type: str, payload: Any = None, **kw: Any) -> Envelope:
    return Envelope(target="e1", type=type, payload=payload, sender="t", reply_to="t",
                    kind=MessageKind.CONTROL, **kw)


def test_cell_serves_refuses_and_records_a_crash_without_redelivery() -> None:
    async def main() -> None:
        CRASHES.clear()
        host = FakeHost()
        slot = EntitySlot(make_equipment("e1"), Counter, Mailbox(16))
        slot.saved = Checkpoint(state={"n": 10}, twin={})
        cell = EntityCell(slot, host)
        await cell.start()
        assert slot.status == "running"
        add, refuse, bad, late = (request("add", {"by": 1}), request("refuse"), request("bad"),
                                  request("add", {"by": 1}, deadline=1.0))
        for env in (add, refuse, bad, late):
            slot.mailbox.offer(env)
        await poll(lambda: len(host.done) == 4, what="four messages done")
        replies = {r.correlation_id: r for r in host.routed}
        assert replies[add.id].type == "reply" and replies[add.id].payload == {"n": 11}
        assert replies[refuse.id].payload["code"] == "not_now"
        assert replies[bad.id].type == "error"
        assert replies[late.id].payload["code"] == "expired"
        assert (slot.stats.handled, slot.stats.refused, slot.stats.malformed,
                slot.stats.expired) == (1, 1, 1, 1)
        assert host.dirty == ["e1"]

        boom = request("boom")
        slot.mailbox.offer(boom)
        reason = await asyncio.wait_for(cell.wait(), 2.0)
        assert reason.kind is ExitKind.ERROR and "boom" in reason.detail
        assert slot.status == "restarting" and slot.entity is None
        assert [c.message_id for c in slot.crashes] == [boom.id]
        assert slot.stats.crashes == 1
        assert host.routed[-1].payload["code"] == "crashed"
        assert ("e1", "entity_crash") in host.events
        await cell.stop()

        # The next incarnation resumes from the checkpoint and never sees the poison message.
        cell2 = EntityCell(slot, host)
        await cell2.start()
        slot.mailbox.offer(boom)  # a duplicate delivery is dropped by id
        ping = request("ping")
        slot.mailbox.offer(ping)
        await poll(lambda: any(r.correlation_id == ping.id for r in host.routed),
                   what="ping reply")
        assert CRASHES == [boom.id]
        assert slot.mailbox.stats.duplicates == 1
        assert slot.entity is not None and slot.entity.state["n"] == 10
        await cell2.stop()
        assert slot.status == "stopped" and slot.saved is not None

    asyncio.run(main())


def test_cell_stop_checkpoints_and_wait_reports_shutdown() -> None:
    async def main() -> None:
        host = FakeHost()
        slot = EntitySlot(make_equipment("e1"), Counter, Mailbox(16))
        cell = EntityCell(slot, host)
        assert (await cell.wait()).kind is ExitKind.SHUTDOWN  # never started
        await cell.start()
        slot.mailbox.offer(request("add", {"by": 5}))
        await poll(lambda: slot.stats.handled == 1, what="add handled")
        waiter = asyncio.create_task(cell.wait())
        await cell.stop()
        assert (await asyncio.wait_for(waiter, 2.0)).kind is ExitKind.SHUTDOWN
        assert slot.saved is not None and slot.saved.state["n"] == 5
        assert slot.entity is None

    asyncio.run(main())
