"""The pool's partitions on a store's leases, without Ray or a broker: each member serves
its own partition, a renewal late under load pauses a partition without giving it up, and
a member that stops renewing (killed) has its partition taken by the next within a second."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from actors.priority.pool import _LOST_S, _SAFE_S, LEASE_S, PoolMember
from runtime.clock import SystemClock
from runtime.inventory import Equipment, Inventory, Municipality
from runtime.placement import coordinator
from runtime.store import MemoryStore
from tests.helpers import poll

MEMBERS = ("priority-1", "priority-2")
BUSES = {f"bus-{n:03d}": "dijon" for n in range(40)}
INVENTORY = Inventory("pool", (Municipality("dijon", "Dijon", 47.32, 5.04, 156000),), ())


class LeaseContext:
    """What a member asks of its host: the store's leases, its record, and where its
    events go."""

    def __init__(self, member: str, store: MemoryStore) -> None:
        self._id = member
        self.store = store
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._clock = SystemClock()
        self._equipment = coordinator(member, INVENTORY, placement="dedicated", attrs={
            "members": list(MEMBERS), "buses": BUSES, "bus_lines": []})

    @property
    def id(self) -> str:
        return self._id

    @property
    def equipment(self) -> Equipment:
        return self._equipment

    @property
    def clock(self) -> SystemClock:
        return self._clock

    @property
    def lease_owner(self) -> str:
        return f"{self._id}#1"

    def option(self, name: str) -> Any:
        return None

    async def hold_lease(self, name: str, ttl_s: float) -> bool:
        return await self.store.hold_lease(name, self.lease_owner, int(ttl_s * 1000))

    async def release_lease(self, name: str) -> bool:
        return await self.store.release_lease(name, self.lease_owner)

    async def lease_owners(self, names: Sequence[str]) -> dict[str, str]:
        return await self.store.lease_owners(names)

    def emit(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    def publish_read_model(self, name: str, data: bytes) -> None:
        return None

    def partitions(self, taken: bool) -> list[int]:
        return [int(f["partition"]) for e, f in self.events
                if e == "priority_partition" and f["taken"] is taken]


def _bus_of(member: PoolMember, partition: int) -> str:
    return member.parts[partition][0]


def _position(bus: str) -> tuple[str, bytes]:
    return f"city/dijon/vehicle/{bus}/telemetry", b"{}"


def test_members_serve_their_partitions_pause_when_late_and_take_over_a_dead_one() -> None:
    async def body() -> None:
        store = MemoryStore()
        ctxs = {m: LeaseContext(m, store) for m in MEMBERS}
        members: dict[str, PoolMember] = {}
        for m in MEMBERS:
            members[m] = PoolMember(ctxs[m])  # type: ignore[arg-type]
            await members[m].on_start(None)
        one, two = members["priority-1"], members["priority-2"]
        await poll(lambda: one.serving.keys() == {0} and two.serving.keys() == {1}, 3,
                   what="each member on its own partition")
        # A renewal late past the safe window (a loop stalled under load), the lease not
        # lapsed: a position meanwhile is dropped, and the partition stays (no give-up, no
        # resubscription) and is served again at the next renewal. Set and sent in one
        # step: no tick runs in between.
        one.serving[0] = time.monotonic() - (_SAFE_S + 0.05)
        one._on_message(*_position(_bus_of(one, 0)))
        assert one.errors["lease_unsure"] == 1 and one.errors["not_served"] == 0
        await poll(lambda: time.monotonic() - one.serving.get(0, 0.0) < _SAFE_S, 3,
                   what="member 1 renewed")
        assert 0 not in ctxs["priority-1"].partitions(taken=False)
        assert 0 not in two.serving
        # Member 1 stops renewing without a word (killed): member 2 serves its partition
        # within the lease and a tick or two.
        one._loop.cancel()
        stopped = time.monotonic()
        await poll(lambda: 0 in two.serving, 3, what="member 2 takes partition 0")
        assert time.monotonic() - stopped < 1.0
        assert LEASE_S < 1.0 and _LOST_S > LEASE_S
        for member in members.values():
            await member.on_stop()

    asyncio.run(asyncio.wait_for(body(), 20.0))
