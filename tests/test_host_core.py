"""HostCore with a MemoryStore and an in-process transport: no Ray, no sockets."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

from actors.lighting import LightingCircuit
from actors.registry import factory_for
from runtime.cell import EntityFactory
from runtime.clock import Clock, ManualClock
from runtime.commands import Command, CommandStatus, new_command_id
from runtime.entity import Checkpoint, Entity, PriorityLane
from runtime.envelope import Envelope, MessageKind, unpack
from runtime.errors import RejectedError, RetryableError
from runtime.host import HostConfig, HostCore
from runtime.inventory import Equipment
from runtime.router import Directory
from runtime.store import MemoryStore
from supervisors import IntensityScope, RestartType, Strategy, SupervisorOptions
from tests.helpers import make_equipment, poll

STARTS: dict[str, int] = defaultdict(int)
BOOMS: list[str] = []
APPLIED: dict[str, int] = defaultdict(int)


class Counter(Entity):
    """A test entity: a counter that can crash and refuse on request."""

    kind = "counter"

    async def on_start(self, saved: Checkpoint | None) -> None:
        await super().on_start(saved)
        self.state.setdefault("n", 0)
        STARTS[self.ctx.id] += 1

    async def on_add(self, msg: Envelope) -> dict[str, Any]:
        self.state["n"] += int((msg.payload or {}).get("by", 1))
        return {"n": self.state["n"]}

    async def on_boom(self, msg: Envelope) -> None:
        BOOMS.append(msg.id)
        raise RuntimeError("boom")

    async def on_refuse(self, msg: Envelope) -> None:
        raise RejectedError("not now", code="not_now")


class CountingCircuit(LightingCircuit):
    """A lighting circuit that counts how often a command was actually applied."""

    async def apply_command(self, action: str, params: dict[str, Any]) -> Any:
        APPLIED[self.ctx.id] += 1
        return await super().apply_command(action, params)


class LoopTransport:
    """Delivers batches straight into another in-process HostCore, counting calls."""

    def __init__(self) -> None:
        self.hosts: dict[str, HostCore] = {}
        self.calls: dict[str, int] = defaultdict(int)

    async def send_batch(self, host_id: str, blob: bytes) -> Mapping[str, Any]:
        self.calls[host_id] += 1
        host = self.hosts.get(host_id)
        if host is None:
            raise RetryableError(f"no host {host_id}")
        return host.deliver_batch(blob)


def counters(eq: Equipment) -> EntityFactory:
    return Counter


def make_core(
    ids: Sequence[str],
    *,
    host_id: str = "h1",
    store: MemoryStore | None = None,
    transport: LoopTransport | None = None,
    directory: Directory | None = None,
    factory: Callable[[Equipment], EntityFactory] = counters,
    kind: str = "crossroad",
    clock: Clock | None = None,
    **config: Any,
) -> HostCore:
    config.setdefault("checkpoint_interval_s", 0.01)
    config.setdefault("event_flush_interval_s", 0.01)
    config.setdefault("journal_block_ms", 20)
    equipment = [make_equipment(i, kind) for i in ids]
    directory = directory or Directory({i: host_id for i in ids})
    return HostCore(host_id, equipment, factory_for=factory, store=store or MemoryStore(),
                    transport=transport or LoopTransport(), directory=directory, clock=clock,
                    config=HostConfig(**config))


@asynccontextmanager
async def running(core: HostCore) -> AsyncIterator[HostCore]:
    await core.start()
    try:
        yield core
    finally:
        await core.stop()


def reset() -> None:
    STARTS.clear()
    BOOMS.clear()
    APPLIED.clear()


async def crash(core: HostCore, eid: str) -> None:
    with pytest.raises(RejectedError) as info:
        await core.request(eid, "boom", timeout=2.0)
    assert info.value.code == "crashed"


# -- one entity in a host -----------------------------------------------------


def test_request_crash_restart_from_checkpoint_without_redelivery() -> None:
    async def main() -> None:
        reset()
        clock = ManualClock()
        store = MemoryStore()
        core = make_core(["e1"], store=store, clock=clock)
        async with running(core):
            assert await core.request("e1", "add", {"by": 5}) == {"n": 5}
            await clock.advance(0.01)  # one checkpoint pass
            saved = await store.load_checkpoints(["e1"])
            assert unpack(saved["e1"])["state"] == {"n": 5}
            assert await core.request("e1", "add", {"by": 3}) == {"n": 8}

            await crash(core, "e1")
            slot = core.slots["e1"]
            await poll(lambda: STARTS["e1"] == 2 and slot.status == "running",
                       what="e1 restarted")
            # Restarted from the last checkpoint: the unsaved +3 is gone.
            assert (await core.request("e1", "get_state"))["state"] == {"n": 5}
            assert [c.message_id for c in slot.crashes] == BOOMS
            assert len(BOOMS) == 1  # handled exactly once, never redelivered
            assert await core.request("e1", "ping") == {"id": "e1", "version": 1}
            assert len(BOOMS) == 1
            assert slot.restarts == 1

    asyncio.run(main())


def test_refusals_unknown_types_targets_and_malformed_batches() -> None:
    async def main() -> None:
        reset()
        core = make_core(["e1"])
        async with running(core):
            with pytest.raises(RejectedError) as info:
                await core.request("e1", "refuse")
            assert info.value.code == "not_now"
            with pytest.raises(RejectedError) as info:
                await core.request("e1", "fly")
            assert info.value.code == "unknown_message"
            assert STARTS["e1"] == 1  # refusals are not crashes
            assert core.slots["e1"].stats.crashes == 0
            assert core.slots["e1"].stats.refused == 2

            with pytest.raises(RejectedError) as info:
                await core.request("nobody", "ping")
            assert info.value.code == "unknown_entity"
            assert core.counters["unknown_target"] == 1

            assert core.deliver_batch(b"\xc1garbage") == {"accepted": 0, "malformed": 1}
            assert core.counters["malformed_batches"] == 1
            assert await core.request("e1", "add", {"by": 2}) == {"n": 2}

    asyncio.run(main())


# -- supervision strategies inside a host --------------------------------------

IDS = ["s1", "s2", "s3"]


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (Strategy.ONE_FOR_ONE, {"s1": 1, "s2": 2, "s3": 1}),
        (Strategy.ONE_FOR_ALL, {"s1": 2, "s2": 2, "s3": 2}),
        (Strategy.REST_FOR_ONE, {"s1": 1, "s2": 2, "s3": 2}),
    ],
)
def test_strategy_restarts_the_right_entities(strategy: Strategy,
                                              expected: dict[str, int]) -> None:
    async def main() -> None:
        reset()
        options = SupervisorOptions(strategy=strategy, max_restarts=10, max_seconds=60)
        core = make_core(IDS, supervision=options)
        async with running(core):
            await crash(core, "s2")
            await poll(lambda: dict(STARTS) == expected
                       and all(s.status == "running" for s in core.slots.values()),
                       what=f"starts {expected}")
            pings = await core.ping_entities()
            assert pings["answered"] == 3
            assert dict(STARTS) == expected

    asyncio.run(main())


@pytest.mark.parametrize(
    ("restart_type", "restarted"),
    [(RestartType.PERMANENT, True), (RestartType.TRANSIENT, True),
     (RestartType.TEMPORARY, False)],
)
def test_restart_types_after_a_crash(restart_type: RestartType, restarted: bool) -> None:
    async def main() -> None:
        reset()
        core = make_core(IDS, restart_type=restart_type)
        async with running(core):
            await crash(core, "s1")
            assert core.supervisor is not None
            sup = core.supervisor
            if restarted:
                await poll(lambda: STARTS["s1"] == 2 and core.slots["s1"].status == "running",
                           what="s1 restarted")
                assert await core.request("s1", "add") == {"n": 1}
            else:
                await poll(lambda: sup.status().child("s1").status == "stopped",
                           what="s1 stopped for good")
                assert STARTS["s1"] == 1
                assert core.slots["s1"].entity is None
            assert await core.request("s2", "add") == {"n": 1}

    asyncio.run(main())


def test_child_scope_intensity_fails_only_the_crash_looping_entity() -> None:
    async def main() -> None:
        reset()
        options = SupervisorOptions(max_restarts=2, max_seconds=60, scope=IntensityScope.CHILD)
        core = make_core(IDS, supervision=options)
        async with running(core):
            for n in range(2):
                await crash(core, "s2")
                await poll(lambda n=n: STARTS["s2"] == n + 2  # type: ignore[misc]
                           and core.slots["s2"].status == "running", what="s2 restarted")
            await crash(core, "s2")
            await poll(lambda: core.slots["s2"].status == "failed", what="s2 failed")
            assert STARTS["s2"] == 3
            assert not core.gave_up
            assert await core.request("s1", "add") == {"n": 1}
            assert await core.request("s3", "add") == {"n": 1}

    asyncio.run(main())


def test_supervisor_scope_intensity_gives_up_the_host() -> None:
    async def main() -> None:
        reset()
        options = SupervisorOptions(max_restarts=1, max_seconds=60,
                                    scope=IntensityScope.SUPERVISOR)
        core = make_core(IDS, supervision=options)
        async with running(core):
            await crash(core, "s1")
            await poll(lambda: STARTS["s1"] == 2 and core.slots["s1"].status == "running",
                       what="s1 restarted")
            assert not core.gave_up
            await crash(core, "s3")
            await poll(lambda: core.gave_up, what="host supervisor gave up")
            assert core.status()["gave_up"] is True

    asyncio.run(main())


# -- batching between hosts -----------------------------------------------------


def test_thousand_envelopes_in_one_turn_cross_in_few_calls() -> None:
    async def main() -> None:
        reset()
        a_ids = ["a1"]
        b_ids = [f"b{i}" for i in range(10)]
        directory = Directory({**{i: "A" for i in a_ids}, **{i: "B" for i in b_ids}})
        transport = LoopTransport()
        a = make_core(a_ids, host_id="A", transport=transport, directory=directory)
        b = make_core(b_ids, host_id="B", transport=transport, directory=directory)
        transport.hosts.update(A=a, B=b)
        async with running(a), running(b):
            for i in range(1000):
                a.route(Envelope(target=b_ids[i % 10], type="add", payload={"by": 1},
                                 sender="a1", kind=MessageKind.EVENT))

            async def total() -> bool:
                states = b.snapshot()
                return bool(sum(s["state"]["n"] for s in states.values() if s) == 1000)

            await poll(total, what="all 1000 envelopes handled on B")
            assert 1 <= transport.calls["B"] <= 10
            assert b.counters["delivered"] == 1000
            assert a.outbox.stats.envelopes == 1000

    asyncio.run(main())


# -- commands through the journal ------------------------------------------------


def set_dim(target: str, dim: float, **kw: Any) -> Command:
    return Command(command_id=new_command_id(), target=target, action="set",
                   params={"dim": dim}, caller="t", **kw)


async def status_of(store: MemoryStore, cid: str) -> CommandStatus:
    return (await store.get_command(cid)).status


async def wait_status(store: MemoryStore, cid: str, want: CommandStatus) -> None:
    async def ok() -> bool:
        return await status_of(store, cid) == want

    await poll(ok, what=f"{cid} {want}")


def test_command_acked_after_checkpoint_and_out_of_range_fails() -> None:
    async def main() -> None:
        store = MemoryStore()
        core = make_core(["lc1"], store=store, factory=factory_for, kind="lighting_circuit")
        async with running(core):
            good, _ = await store.submit_command(set_dim("lc1", 40.0))
            await wait_status(store, good.command_id, CommandStatus.ACKED)
            saved = unpack((await store.load_checkpoints(["lc1"]))["lc1"])
            assert saved["twin"]["desired"] == {"dim": 40.0}
            assert good.command_id in saved["applied"]

            bad, _ = await store.submit_command(set_dim("lc1", 140.0))
            await wait_status(store, bad.command_id, CommandStatus.FAILED)
            assert "outside" in (await store.get_command(bad.command_id)).error
            snap = core.snapshot(["lc1"])["lc1"]
            assert snap["twin"]["desired"] == {"dim": 40.0}

    asyncio.run(main())


def test_older_setpoint_superseded_and_past_deadline_expired() -> None:
    async def main() -> None:
        store = MemoryStore()
        old, _ = await store.submit_command(set_dim("lc1", 10.0))
        new, _ = await store.submit_command(set_dim("lc1", 20.0))
        late, _ = await store.submit_command(
            Command(command_id=new_command_id(), target="lc1", action="set",
                    params={"on": True}, caller="t", deadline_ts=time.time() - 1))
        core = make_core(["lc1"], store=store, factory=factory_for, kind="lighting_circuit")
        async with running(core):
            await wait_status(store, new.command_id, CommandStatus.ACKED)
            await wait_status(store, late.command_id, CommandStatus.EXPIRED)
            assert await status_of(store, old.command_id) == CommandStatus.SUPERSEDED
            assert core.snapshot(["lc1"])["lc1"]["twin"]["desired"] == {"dim": 20.0}

    asyncio.run(main())


def test_journal_replay_acks_again_without_applying_twice() -> None:
    async def main() -> None:
        reset()
        store = MemoryStore()

        def circuits(eq: Equipment) -> EntityFactory:
            return CountingCircuit

        core = make_core(["lc1"], store=store, factory=circuits, kind="lighting_circuit")
        async with running(core):
            cmd, _ = await store.submit_command(set_dim("lc1", 40.0))
            await wait_status(store, cmd.command_id, CommandStatus.ACKED)
        assert APPLIED["lc1"] == 1
        assert await store.get_cursor("host:h1") != "0"

        await store.set_cursor("host:h1", "0")
        again = make_core(["lc1"], store=store, factory=circuits, kind="lighting_circuit")
        async with running(again):
            await poll(lambda: again._cursor != "0", what="journal replayed")
            state = await again.request("lc1", "get_state")
            assert state["applied"] == [cmd.command_id]
            assert APPLIED["lc1"] == 1
            assert await status_of(store, cmd.command_id) == CommandStatus.ACKED

    asyncio.run(main())


# -- priority lane -----------------------------------------------------------------


class Signal(Entity):
    """Publishes its phase for the priority lane; the lane posts notes back."""

    kind = "signal"

    async def on_set_phase(self, msg: Envelope) -> None:
        self.state["phase"] = msg.payload["phase"]
        self.ctx.publish_view({"phase": self.state["phase"]})

    async def on_note(self, msg: Envelope) -> None:
        self.state.setdefault("notes", []).append(msg.payload)

    @classmethod
    async def on_priority(cls, view: Mapping[str, Any], msg: Envelope,
                          lane: PriorityLane) -> Any:
        phase = view.get("phase")
        lane.post(Envelope(target=msg.target, type="note", sender="priority",
                           payload={"seen": phase, "ask": msg.payload},
                           kind=MessageKind.CONTROL))
        return {"phase": phase}


class ThreadLane:
    """A priority lane whose posts hop back onto the host's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, core: HostCore) -> None:
        self.resources: dict[str, Any] = {}
        self._loop = loop
        self._core = core
        self.thread_ids: list[int] = []

    def post(self, env: Envelope) -> None:
        self.thread_ids.append(threading.get_ident())
        self._loop.call_soon_threadsafe(self._core.route, env)


def test_priority_lane_reads_published_view_and_posts_back() -> None:
    async def main() -> None:
        core = make_core(["sig1"], factory=lambda eq: Signal)
        async with running(core):
            await core.request("sig1", "set_phase", {"phase": "green"})
            lane = ThreadLane(asyncio.get_running_loop(), core)
            slot = core.slots["sig1"]
            ask = Envelope(target="sig1", type="preempt", payload="bus-12",
                           kind=MessageKind.CONTROL)

            def on_other_thread() -> Any:
                return asyncio.run(Signal.on_priority(slot.view, ask, lane))

            answer = await asyncio.to_thread(on_other_thread)
            assert answer == {"phase": "green"}
            assert lane.thread_ids and lane.thread_ids[0] != threading.get_ident()

            async def noted() -> bool:
                state = await core.request("sig1", "get_state")
                return bool(state["state"].get("notes"))

            await poll(noted, what="posted note handled")
            state = await core.request("sig1", "get_state")
            assert state["state"]["notes"] == [{"seen": "green", "ask": "bus-12"}]

    asyncio.run(main())
