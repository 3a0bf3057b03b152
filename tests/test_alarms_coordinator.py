"""The alarms coordinator in a real host core: fed by the event stream, commanded
through the journal, restarted from its checkpoint without losing or replaying alarms."""

from __future__ import annotations

import asyncio
from typing import Any

from actors.control.alarms import READ_MODEL, AlarmsCoordinator
from actors.registry import factory_for
from runtime.commands import Command, CommandStatus, new_command_id
from runtime.envelope import unpack
from runtime.host import HostConfig, HostCore
from runtime.inventory import Inventory, Municipality
from runtime.placement import CONTROL_HOST, coordinator
from runtime.router import Directory
from runtime.service import ALARMS_READ_MODEL
from runtime.store import MemoryStore
from tests.helpers import poll
from tests.test_host_core import LoopTransport


def _inventory() -> Inventory:
    return Inventory("test", (Municipality("dijon", "Dijon", 47.32, 5.04, 156000),), ())


def _core(store: MemoryStore) -> HostCore:
    eq = coordinator("alarms", _inventory())
    return HostCore(CONTROL_HOST, [eq], factory_for=factory_for, store=store,
                    transport=LoopTransport(), directory=Directory({"alarms": CONTROL_HOST}),
                    config=HostConfig(checkpoint_interval_s=0.01, event_flush_interval_s=0.01,
                                      read_model_interval_s=0.01, journal_block_ms=20))


async def _alarms(store: MemoryStore) -> list[dict[str, Any]]:
    blob = await store.get_blob(f"view:{READ_MODEL}")
    return list(unpack(blob)["alarms"]) if blob else []


def _event(entity: str, event: str, **fields: Any) -> dict[str, Any]:
    return {"ts": 1.0e9, "entity": entity, "event": event, "municipality": "dijon",
            "kind": "building", **fields}


def test_read_model_name_is_the_runtimes() -> None:
    assert READ_MODEL == ALARMS_READ_MODEL
    assert factory_for(coordinator("alarms", _inventory())) is AlarmsCoordinator


def test_fire_raised_acked_cleared_then_survives_a_restart() -> None:
    async def body() -> None:
        store = MemoryStore()
        core = _core(store)
        await core.start()
        try:
            await store.append_events([_event("bld-1", "alarm", alarm="fire")])

            async def listed() -> bool:
                return any(a["condition"] == "fire" for a in await _alarms(store))

            await poll(listed, 5, what="fire listed")
            got = [a for a in await _alarms(store) if a["condition"] == "fire"]
            assert got[0]["state"] == "unacknowledged" and got[0]["priority"] == "critical"
            cmd = Command(command_id=new_command_id(), target="alarms", action="ack",
                          params={"id": got[0]["id"]}, caller="user:op:operator")
            await store.submit_command(cmd)

            async def acked() -> bool:
                return (await store.get_command(cmd.command_id)).status is CommandStatus.ACKED

            await poll(acked, 5, what="ack acked")
            await store.append_events([_event("bld-1", "alarm_cleared", alarm="fire"),
                                       _event("cam-1", "alarm", alarm="camera_tamper",
                                              momentary=True)])

            async def settled() -> bool:
                a = {x["condition"]: x for x in await _alarms(store)}
                return (a.get("fire", {}).get("state") == "normal"
                        and a.get("camera_tamper", {}).get("state") == "rtn_unacknowledged")

            await poll(settled, 5, what="fire normal, tamper waiting for an ack")
        finally:
            await core.stop()
        again = _core(store)
        await again.start()
        try:
            states = {a["condition"]: (a["state"], a["acked_by"]) for a in await _alarms(store)}
            assert states == {"fire": ("normal", "op"),
                              "camera_tamper": ("rtn_unacknowledged", None)}
        finally:
            await again.stop()

    asyncio.run(body())


def test_events_are_acknowledged_only_once_handled() -> None:
    async def body() -> None:
        store = MemoryStore()
        await store.append_events([_event(f"bld-{i}", "alarm", alarm="intrusion")
                                   for i in range(5)])
        core = _core(store)
        await core.start()
        try:
            async def all_five() -> bool:
                return len(await _alarms(store)) == 5

            await poll(all_five, 5, what="five alarms")
        finally:
            await core.stop()
        # No alarm left for the group: a restart replays none. (The host's own events of
        # its stop reach the stream after its feed stopped: they wait for the next start.)
        left = await store.read_event_group("alarms")
        assert [e for _, e in left if e["event"] == "alarm"] == []

    asyncio.run(body())
