"""The dispatch coordinator in real host cores: a control host and a fleet host on one loop.

Vehicles and lighting circuits are the real entities (no device session): their
telemetry is handed to them as a device session would, so the path vehicle →
``vehicle_state`` → dispatch → ``job`` command → vehicle runs as in production.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from actors.control.dispatch import (
    FLEET_READ_MODEL,
    READ_MODEL,
    DispatchCoordinator,
    intervention_id,
)
from actors.registry import factory_for
from runtime.commands import Command, CommandStatus, new_command_id
from runtime.envelope import Envelope, MessageKind, unpack
from runtime.errors import InvalidCommandError
from runtime.geo import distance_m
from runtime.host import HostConfig, HostCore
from runtime.inventory import Equipment, Inventory, Municipality
from runtime.placement import CONTROL_HOST, coordinator
from runtime.router import Directory
from runtime.store import MemoryStore
from tests.helpers import poll
from tests.test_host_core import LoopTransport

FLEET_HOST = "fleet-0"
SITE = (47.3220, 5.0415)  # a pothole in Dijon's centre


def _inventory() -> Inventory:
    return Inventory("test", (Municipality("dijon", "Dijon", 47.32, 5.04, 156000),), ())


def vehicle(vid: str, role: str, *, radio: bool = True) -> Equipment:
    return Equipment(id=vid, kind="vehicle", municipality="dijon", lat=47.3, lon=5.0,
                     endpoint="mqtt://broker", profile="service_vehicle",
                     attrs={"role": role, "radio": radio})


def circuit(cid: str) -> Equipment:
    return Equipment(id=cid, kind="lighting_circuit", municipality="dijon", lat=47.33,
                     lon=5.05, endpoint="modbus://127.0.0.1:15100/1", profile="lighting_cabinet")


def _config() -> HostConfig:
    return HostConfig(checkpoint_interval_s=0.01, event_flush_interval_s=0.01,
                      read_model_interval_s=0.01, journal_block_ms=20)


@dataclass
class Rig:
    """A control host running dispatch and a fleet host running vehicles and circuits."""

    store: MemoryStore
    equipment: list[Equipment]
    transport: LoopTransport = field(default_factory=LoopTransport)
    cores: dict[str, HostCore] = field(default_factory=dict)
    seq: int = 0

    async def start(self) -> None:
        owners = {eq.id: FLEET_HOST for eq in self.equipment} | {"dispatch": CONTROL_HOST}
        for host_id, members in ((CONTROL_HOST, [coordinator("dispatch", _inventory())]),
                                 (FLEET_HOST, self.equipment)):
            core = HostCore(host_id, members, factory_for=factory_for, store=self.store,
                            transport=self.transport, directory=Directory(owners),
                            config=_config())
            self.transport.hosts[host_id] = core
            self.cores[host_id] = core
        for core in self.cores.values():
            await core.start()

    async def stop(self) -> None:
        for core in self.cores.values():
            await core.stop()

    def device(self, eid: str, type: str, payload: Mapping[str, Any]) -> None:
        """What a device session hands an entity (``telemetry``, ``device_status``)."""
        kind = MessageKind.TELEMETRY if type == "telemetry" else MessageKind.EVENT
        self.cores[FLEET_HOST].route(Envelope(target=eid, type=type, payload=dict(payload),
                                              sender=eid, kind=kind))

    def report(self, vid: str, lat: float, lon: float, status: str = "available",
               job: str = "", job_state: str = "idle") -> None:
        """A service vehicle's telemetry sample, stamped now (an older one would be stale)."""
        self.seq += 1
        self.device(vid, "telemetry", {"seq": self.seq, "ts": time.time(), "values": {
            "lat": lat, "lon": lon, "speed": 0.0, "heading": 0.0, "role": "x",
            "status": status, "job": job, "job_state": job_state}})

    async def interventions(self) -> dict[str, dict[str, Any]]:
        blob = await self.store.get_blob(f"view:{READ_MODEL}")
        return {r["id"]: r for r in unpack(blob)["interventions"]} if blob else {}

    async def fleet(self) -> dict[str, dict[str, Any]]:
        blob = await self.store.get_blob(f"view:{FLEET_READ_MODEL}")
        return {v["id"]: v for v in unpack(blob)["vehicles"]} if blob else {}

    async def until(self, what: str, check: Callable[[dict[str, dict[str, Any]]], bool]
                    ) -> dict[str, dict[str, Any]]:
        async def ok() -> bool:
            return check(await self.interventions())

        await poll(ok, 5, what=what)
        return await self.interventions()

    async def command(self, action: str, params: dict[str, Any],
                      caller: str = "user:op:operator") -> str:
        cmd = Command(command_id=new_command_id(), target="dispatch", action=action,
                      params=params, caller=caller)
        await self.store.submit_command(cmd)

        async def final() -> bool:
            return (await self.store.get_command(cmd.command_id)).status is not (
                CommandStatus.QUEUED) and (await self.store.get_command(
                    cmd.command_id)).status is not CommandStatus.SENT

        await poll(final, 5, what=f"{action} final")
        return str((await self.store.get_command(cmd.command_id)).status)

    async def open(self, request_id: str, category: str = "pothole",
                   at: tuple[float, float] = SITE) -> str:
        status = await self.command("open", {"request_id": request_id, "category": category,
                                             "description": "a deep hole", "lat": at[0],
                                             "lon": at[1], "municipality": "dijon"})
        assert status == "acked"
        return intervention_id(request_id)

    async def desired(self, eid: str) -> dict[str, Any]:
        state = self.cores[FLEET_HOST].snapshot([eid])[eid]
        return dict(state["twin"]["desired"]) if state else {}


@asynccontextmanager
async def running(equipment: list[Equipment], store: MemoryStore | None = None
                  ) -> AsyncIterator[Rig]:
    rig = Rig(store or MemoryStore(), equipment)
    await rig.start()
    try:
        yield rig
    finally:
        await rig.stop()


async def fleet_ready(rig: Rig, ids: list[str]) -> None:
    async def known() -> bool:
        return set(ids) <= set(await rig.fleet())

    await poll(known, 5, what="fleet indexed")


def online(rig: Rig, *ids: str) -> None:
    for vid in ids:
        rig.device(vid, "device_status", {"online": True})


# -- the choice of a vehicle --------------------------------------------------------------
def test_the_nearest_available_vehicle_of_a_suitable_role_is_sent() -> None:
    # Bearing east of the site, at growing distances; the nearest ones are each unfit.
    def east(metres: float) -> tuple[float, float]:
        return SITE[0], SITE[1] + metres / (111_320.0 * math.cos(math.radians(SITE[0])))

    fleet = {
        "waste-near": ("waste", east(100)),        # wrong role for a pothole
        "maint-busy": ("maintenance", east(200)),  # busy
        "maint-off": ("maintenance", east(300)),   # its device is offline
        "maint-mid": ("maintenance", east(900)),   # the one
        "maint-far": ("maintenance", east(5000)),
    }

    async def body() -> None:
        async with running([vehicle(v, role) for v, (role, _) in fleet.items()]) as rig:
            online(rig, *(v for v in fleet if v != "maint-off"))
            for vid, (_, (lat, lon)) in fleet.items():
                rig.report(vid, lat, lon, status="busy" if vid == "maint-busy" else "available")
            await fleet_ready(rig, list(fleet))
            iid = await rig.open("101")
            got = await rig.until("assigned", lambda x: x.get(iid, {}).get("state") == "assigned")
            assert got[iid]["vehicle"] == "maint-mid"
            assert got[iid]["municipality"] == "dijon" and got[iid]["request_id"] == "101"
            chosen = distance_m(SITE, fleet["maint-mid"][1])
            assert 850 < chosen < 950

            async def tasked() -> bool:
                return (await rig.desired("maint-mid")).get("job") == iid

            await poll(tasked, 5, what="the job on the vehicle")
            desired = await rig.desired("maint-mid")
            assert (desired["job_lat"], desired["job_lon"]) == SITE
            assert iid in desired["message"]  # it has a radio: the crew is told
            # The same request again (a second open of it) makes no second intervention.
            await rig.open("101")
            assert len(await rig.interventions()) == 1

            async def busy_in_fleet() -> bool:  # the fleet is published once a second
                return bool((await rig.fleet())["maint-mid"]["assigned"] == iid)

            await poll(busy_in_fleet, 5, what="the vehicle held in the fleet")

    asyncio.run(body())


def test_a_crew_without_radio_gets_the_job_and_no_message() -> None:
    async def body() -> None:
        async with running([vehicle("quiet", "maintenance", radio=False)]) as rig:
            online(rig, "quiet")
            rig.report("quiet", *SITE)
            await fleet_ready(rig, ["quiet"])
            iid = await rig.open("7")

            async def tasked() -> bool:
                return (await rig.desired("quiet")).get("job") == iid

            await poll(tasked, 5, what="the job on the vehicle")
            assert "message" not in await rig.desired("quiet")

    asyncio.run(body())


def test_waiting_requests_go_to_the_first_vehicle_freed() -> None:
    async def body() -> None:
        async with running([vehicle("m1", "maintenance")]) as rig:
            online(rig, "m1")
            rig.report("m1", *SITE)
            await fleet_ready(rig, ["m1"])
            first, second = await rig.open("1"), await rig.open("2")
            got = await rig.until("first assigned, second listed",
                                  lambda x: x.get(first, {}).get("state") == "assigned"
                                  and second in x)
            assert got[second]["state"] == "new" and got[second]["vehicle"] is None
            rig.report("m1", *SITE, status="busy", job=first, job_state="en_route")
            await rig.until("en route", lambda x: x[first]["state"] == "en_route")
            rig.report("m1", *SITE, status="busy", job=first, job_state="on_site")
            await rig.until("on site", lambda x: x[first]["state"] == "on_site")
            rig.report("m1", *SITE, status="available", job=first, job_state="done")
            got = await rig.until("done, and the next one assigned",
                                  lambda x: x[first]["state"] == "done"
                                  and x[second]["state"] == "assigned")
            assert got[second]["vehicle"] == "m1"
            assert got[first]["notes"] == "Done by crew m1."
            assert [got[first][k] is not None for k in ("created_ts", "updated_ts")]
            # Its timeline: each change, oldest first, with the crew and the notes of then.
            timeline = got[first]["timeline"]
            assert [(t["state"], t["vehicle"]) for t in timeline] == [
                ("new", None), ("assigned", "m1"), ("en_route", "m1"), ("on_site", "m1"),
                ("done", "m1")]
            assert timeline[1]["notes"] == "Assigned to vehicle m1 (maintenance)."
            assert timeline[0]["ts"] >= got[first]["created_ts"]
            assert timeline[-1]["ts"] == got[first]["updated_ts"]
            assert [t["ts"] for t in timeline] == sorted(t["ts"] for t in timeline)
            assert got[first]["equipment"] is None  # a citizen's request names none

    asyncio.run(body())


def test_a_report_that_skips_a_step_moves_on_and_never_back() -> None:
    async def body() -> None:
        async with running([vehicle("m1", "maintenance")]) as rig:
            online(rig, "m1")
            rig.report("m1", *SITE)
            await fleet_ready(rig, ["m1"])
            iid = await rig.open("1")
            await rig.until("assigned", lambda x: x.get(iid, {}).get("state") == "assigned")
            rig.report("m1", *SITE, status="busy", job=iid, job_state="on_site")
            await rig.until("on site", lambda x: x[iid]["state"] == "on_site")
            rig.report("m1", 47.0, 5.0, status="busy", job=iid, job_state="en_route")
            await poll(lambda: True, 1)

            async def moved() -> bool:
                return bool((await rig.fleet())["m1"]["lat"] == 47.0)

            await poll(moved, 5, what="the new position indexed")
            assert (await rig.interventions())[iid]["state"] == "on_site"

    asyncio.run(body())


def test_a_vehicle_that_refuses_is_left_out_and_another_goes() -> None:
    async def body() -> None:
        async with running([vehicle("real", "maintenance")]) as rig:
            online(rig, "real")
            rig.report("real", 47.30, 5.00)
            await fleet_ready(rig, ["real"])
            # A vehicle the coordinator hears of but whose entity is nowhere: the job
            # command comes back refused (unknown entity).
            rig.cores[CONTROL_HOST].route(Envelope(
                target="dispatch", type="vehicle_state", sender="ghost",
                kind=MessageKind.TELEMETRY,
                payload={"ts": 1.0, "municipality": "dijon", "role": "maintenance",
                         "radio": False, "lat": SITE[0], "lon": SITE[1],
                         "status": "available", "job": "", "job_state": "idle",
                         "online": True}))
            await fleet_ready(rig, ["ghost"])
            iid = await rig.open("55")
            got = await rig.until("reassigned to the real one",
                                  lambda x: x.get(iid, {}).get("vehicle") == "real")
            assert got[iid]["state"] == "assigned"

            async def left_out() -> bool:
                ghost = (await rig.fleet())["ghost"]
                return ghost["excluded_until"] is not None and ghost["assigned"] is None

            await poll(left_out, 5, what="the ghost left out")

    asyncio.run(body())


def test_out_of_service_gives_the_job_up_and_cancel_releases_the_vehicle() -> None:
    async def body() -> None:
        async with running([vehicle("a", "maintenance"), vehicle("b", "maintenance")]) as rig:
            online(rig, "a", "b")
            rig.report("a", *SITE)
            rig.report("b", 47.30, 5.00)
            await fleet_ready(rig, ["a", "b"])
            iid = await rig.open("9")
            await rig.until("to a", lambda x: x.get(iid, {}).get("vehicle") == "a")
            rig.report("a", *SITE, status="out_of_service")
            await rig.until("to b", lambda x: x[iid]["vehicle"] == "b")
            assert await rig.command("cancel", {"id": iid, "reason": "duplicate"}) == "acked"
            got = await rig.until("cancelled", lambda x: x[iid]["state"] == "cancelled")
            assert got[iid]["vehicle"] is None and "duplicate" in got[iid]["notes"]

            async def cleared() -> bool:
                return (await rig.desired("b")).get("job") == ""

            await poll(cleared, 5, what="the job taken back from b")

            async def released() -> bool:
                return (await rig.fleet())["b"]["assigned"] is None

            await poll(released, 5, what="b released in the fleet")
            assert await rig.command("cancel", {"id": "int-nope"}) == "failed"

    asyncio.run(body())


# -- faults -------------------------------------------------------------------------------
def lamps(*failed: int, n: int = 6) -> list[dict[str, Any]]:
    return [{"on": True, "dim": 100, "fault_bits": 1 if i in failed else 0}
            for i in range(1, n + 1)]


def test_failed_lamps_of_a_circuit_are_one_intervention_that_new_failures_join() -> None:
    async def body() -> None:
        async with running([circuit("lc-1"), vehicle("m1", "maintenance")]) as rig:
            seq = iter(range(1, 100))

            def cabinet(*failed: int) -> None:
                rig.device("lc-1", "telemetry", {"seq": next(seq), "ts": 1.0e9,
                                                 "values": {"lamp": lamps(*failed)}})

            cabinet()
            cabinet(2)
            got = await rig.until("a fault intervention", lambda x: len(x) == 1)
            (rec,) = got.values()
            assert rec["source"] == "fault" and rec["category"] == "lighting_fault"
            assert rec["lamps"] == [2] and (rec["lat"], rec["lon"]) == (47.33, 5.05)
            assert rec["municipality"] == "dijon" and rec["request_id"] is None
            assert rec["equipment"] == "lc-1"
            cabinet(2, 5)
            got = await rig.until("lamp 5 joined", lambda x: x[rec["id"]]["lamps"] == [2, 5])
            # The alarm flaps (all lamps back, then failing again): still the one intervention.
            cabinet()
            cabinet(2, 5)
            cabinet(2, 5, 6)
            got = await rig.until("lamp 6 joined",
                                  lambda x: x[rec["id"]]["lamps"] == [2, 5, 6])
            assert len(got) == 1 and "2, 5, 6" in got[rec["id"]]["description"]
            # A crew comes, fixes, reports done; a later failure opens a new one.
            online(rig, "m1")
            rig.report("m1", 47.33, 5.05)
            await rig.until("assigned", lambda x: x[rec["id"]]["vehicle"] == "m1")
            rig.report("m1", 47.33, 5.05, job=rec["id"], job_state="done")
            await rig.until("done", lambda x: x[rec["id"]]["state"] == "done")
            cabinet(2, 5, 6, 1)
            got = await rig.until("a second intervention", lambda x: len(x) == 2)
            (second,) = [r for r in got.values() if r["id"] != rec["id"]]
            assert second["lamps"] == [1, 2, 5, 6]

    asyncio.run(body())


def test_a_replayed_event_batch_and_a_restart_open_nothing_twice() -> None:
    event = {"ts": 1.7e9, "entity": "lc-9", "event": "lamps_failed", "lamps": "3",
             "new": "3", "count": 1, "lat": 47.31, "lon": 5.03, "municipality": "dijon",
             "kind": "lighting_circuit"}

    async def body() -> None:
        store = MemoryStore()
        async with running([], store) as rig:
            control = rig.cores[CONTROL_HOST]
            for _ in range(2):
                await control.request("dispatch", "events", {"events": [event]})
            got = await rig.until("one intervention", lambda x: len(x) == 1)
            assert list(got) == ["int-lc-9-1700000000000"]
            iid = await rig.open("31")
            await rig.until("two", lambda x: len(x) == 2)
        async with running([], store) as again:
            got = await again.until("both back", lambda x: len(x) == 2)
            assert got[iid]["state"] == "new"
            await again.cores[CONTROL_HOST].request("dispatch", "events", {"events": [event]})
            await again.open("31")
            assert len(await again.interventions()) == 2

    asyncio.run(body())


# -- what the coordinator takes -----------------------------------------------------------
@pytest.mark.parametrize(("action", "params", "where"), [
    ("assign", {}, "action"),
    ("open", {"category": "pothole"}, "params.request_id"),
    ("open", {"request_id": "1", "category": "bogus"}, "params.category"),
    ("open", {"request_id": "1", "category": "pothole", "lat": 47.0}, "params.lat"),
    ("open", {"request_id": "1", "category": "pothole", "lat": math.nan, "lon": 5.0},
     "params.lat"),
    ("open", {"request_id": "1", "category": "pothole", "lat": 47.0, "lon": 200.0},
     "params.lon"),
    ("cancel", {}, "params.id"),
])
def test_refusals_name_the_field(action: str, params: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidCommandError) as info:
        DispatchCoordinator.validate_command(action, params)
    assert info.value.field == where


def test_an_operator_cannot_send_a_vehicle_a_job_himself() -> None:
    async def body() -> None:
        async with running([vehicle("m1", "maintenance")]) as rig:
            cmd = Command(command_id=new_command_id(), target="m1", action="job",
                          params={"job": "x", "job_lat": 47.0, "job_lon": 5.0},
                          caller="user:op:operator")
            await rig.store.submit_command(cmd)

            async def failed() -> bool:
                return (await rig.store.get_command(cmd.command_id)).status is (
                    CommandStatus.FAILED)

            await poll(failed, 5, what="the job refused")
            assert "job" not in await rig.desired("m1")

    asyncio.run(body())
