"""The crisis coordinator in real host cores (the equipment's and the control room's) on a
MemoryStore: activate, deactivate, overlap refused or replaced, the baseline put back with
the fields an operator set during the crisis kept, and a restart that journals nothing twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from actors.control.crisis import READ_MODEL, CrisisCoordinator, command_id
from actors.registry import factory_for
from runtime.commands import Command, CommandStatus, new_command_id
from runtime.envelope import Envelope, MessageKind, decode_batch, unpack
from runtime.host import HostConfig, HostCore
from runtime.inventory import Equipment, Inventory, Municipality
from runtime.placement import CONTROL_HOST, coordinator
from runtime.router import Directory
from runtime.store import MemoryStore
from tests.helpers import poll
from tests.test_host_core import LoopTransport

OPERATOR = "user:ana:operator"


def _eq(eid: str, kind: str, muni: str = "dijon", **attrs: Any) -> Equipment:
    profiles = {"crossroad": "traffic_controller", "lighting_circuit": "lighting_cabinet",
                "camera": "camera", "vehicle": "service_vehicle",
                "access_terminal": "access_terminal", "building": "bms"}
    lat, lon = {"dijon": (47.32, 5.04), "talant": (47.34, 5.00)}.get(muni, (47.37, 5.02))
    return Equipment(id=eid, kind=kind, municipality=muni, lat=lat, lon=lon, endpoint="mqtt",
                     profile=profiles[kind], attrs=attrs)


INVENTORY = Inventory("test", (
    Municipality("dijon", "Dijon", 47.32, 5.04, 156000),
    Municipality("talant", "Talant", 47.34, 5.00, 11000),
    Municipality("ahuy", "Ahuy", 47.37, 5.02, 1300),
), (
    _eq("at-dijon-0001", "access_terminal", tags=["flood_prone"]),
    _eq("at-dijon-0002", "access_terminal"),
    _eq("bld-dijon-0001", "building"),
    _eq("cam-dijon-0001", "camera", watches="bld-dijon-0001", presets={"home": 1, "flood": 12}),
    # The crossroads follow no schedule here: what they hold is the devices' and the crisis's.
    _eq("xr-dijon-0001", "crossroad", tags=["priority_route"], schedule=""),
    _eq("lc-dijon-0001", "lighting_circuit", tags=["road_lighting"], points=3),
    _eq("veh-dijon-0001", "vehicle", role="gritter", radio=True),
    _eq("xr-talant-0001", "crossroad", "talant", tags=["priority_route"], schedule=""),
    _eq("xr-ahuy-0001", "crossroad", "ahuy", tags=["priority_route"], schedule=""),  # never reports
    _eq("cam-ahuy-0001", "camera", "ahuy", presets={"flood": 12}),  # never reports
))
FIELD = [eq.id for eq in INVENTORY.equipment]
CONFIG = HostConfig(checkpoint_interval_s=0.01, event_flush_interval_s=0.01,
                    read_model_interval_s=0.01, journal_block_ms=20)


class City:
    """The equipment host and the control host, sharing a store and a transport."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.transport = LoopTransport()
        record = coordinator("crisis", INVENTORY,
                             attrs=CrisisCoordinator.coordinator_attrs(INVENTORY))
        directory = Directory({**dict.fromkeys(FIELD, "field"), "crisis": CONTROL_HOST})
        self.field = HostCore("field", INVENTORY.equipment, factory_for=factory_for,
                              store=store, transport=self.transport, directory=directory,
                              config=CONFIG)
        self.control = self._control(record, directory)

    def _control(self, record: Equipment, directory: Directory) -> HostCore:
        core = HostCore(CONTROL_HOST, [record], factory_for=factory_for, store=self.store,
                        transport=self.transport, directory=directory, config=CONFIG)
        self.transport.hosts[CONTROL_HOST] = core
        return core

    async def restart_control(self) -> None:
        await self.control.stop()
        record = self.control.slots["crisis"].equipment
        self.control = self._control(record, self.control.directory)
        await self.control.start()

    async def view(self) -> dict[str, Any]:
        blob = await self.store.get_blob(f"view:{READ_MODEL}")
        return dict(unpack(blob)["municipalities"]) if blob else {}

    async def decide(self, action: str, caller: str = OPERATOR, **params: Any) -> str:
        """Journal a decision for the coordinator; its id (the activation id)."""
        cmd = Command(command_id=new_command_id(), target="crisis", action=action,
                      params=params, caller=caller)
        await self.store.submit_command(cmd)
        return cmd.command_id

    async def final(self, cid: str) -> Command:
        async def done() -> bool:
            return (await self.store.get_command(cid)).terminal

        await poll(done, 5, what=f"command {cid} final")
        return await self.store.get_command(cid)

    async def operator_sets(self, eid: str, **fields: Any) -> None:
        cmd = Command(command_id=new_command_id(), target=eid, action="set", params=fields,
                      caller="user:bob:operator")
        await self.store.submit_command(cmd)
        assert (await self.final(cmd.command_id)).status is CommandStatus.ACKED

    async def settled(self, muni: str, mode: str, activation: str, count: int) -> dict[str, Any]:
        """The municipality's row once its ``count`` entities are done."""
        async def there() -> bool:
            row = (await self.view()).get(muni, {})
            return (row.get("mode") == mode and row.get("activation_id") == activation
                    and row["entities"] == {"done": count, "pending": 0, "failed": 0})

        await poll(there, 5, what=f"{muni} {mode} with {count} entities done")
        return dict((await self.view())[muni])

    def desired(self, eid: str) -> dict[str, Any]:
        entity = self.field.slots[eid].entity
        assert entity is not None
        return dict(entity.twin.desired)

    def report(self, eid: str, **values: Any) -> None:
        self.field.route(Envelope(target=eid, type="telemetry", kind=MessageKind.TELEMETRY,
                                  payload={"values": values}))


@asynccontextmanager
async def city(store: MemoryStore | None = None) -> AsyncIterator[City]:
    c = City(store or MemoryStore())
    c.transport.hosts["field"] = c.field
    await c.field.start()
    await c.control.start()
    try:
        # What the devices report before any crisis.
        c.report("at-dijon-0001", bollard="down")
        c.report("cam-dijon-0001", preset=1, recording=True)
        c.report("xr-dijon-0001", plan=2, mode="auto")
        c.report("xr-talant-0001", plan=4, mode="auto")
        c.report("lc-dijon-0001", lamp=[{"on": True, "dim": 40}, {"on": True, "dim": 40},
                                        {"on": True, "dim": 60}])
        c.report("veh-dijon-0001", message="")
        # An operator's setpoint before the crisis: the baseline of that field.
        await c.operator_sets("xr-dijon-0001", plan=3)
        yield c
    finally:
        await c.control.stop()
        await c.field.stop()


async def _events(store: MemoryStore, name: str) -> list[dict[str, Any]]:
    return [e for e in await store.recent_events(1000, entity="crisis") if e["event"] == name]


def test_flood_raises_bollards_and_deactivation_restores_all_but_the_operators_fields() -> None:
    async def body() -> None:
        async with city() as c:
            act = await c.decide("activate", mode="flood", municipalities=["dijon"])
            assert (await c.final(act)).status is CommandStatus.ACKED
            row = await c.settled("dijon", "flood", act, 3)
            assert (row["by"], row["kept"]) == ("ana", [])
            assert c.desired("at-dijon-0001") == {"bollard": "up"}
            assert c.desired("cam-dijon-0001") == {"preset": 12}
            assert c.desired("xr-dijon-0001") == {"plan": 9}
            assert c.desired("at-dijon-0002") == {}  # not flood-prone
            sent = await c.store.get_command(command_id(act, "at-dijon-0001"))
            assert (sent.caller, dict(sent.params)) == ("crisis", {"bollard": "up"})
            masks = await _events(c.store, "crisis_masks")
            assert [(e["activation"], e["masks"]) for e in masks] == [
                (act, "at-dijon-0001/reconcile_required")]
            assert "talant" not in await c.view()

            await c.operator_sets("cam-dijon-0001", preset=5)  # during the crisis: kept
            end = await c.decide("deactivate", municipalities=["dijon"])
            assert (await c.final(end)).status is CommandStatus.ACKED
            row = await c.settled("dijon", "normal", end, 3)
            assert row["ended"] == act
            assert [(k["entity"], k["field"], k["value"], k["reason"]) for k in row["kept"]] == [
                ("cam-dijon-0001", "preset", 5, "operator")]
            assert c.desired("at-dijon-0001") == {"bollard": "down"}  # as it reported
            assert c.desired("xr-dijon-0001") == {"plan": 3}  # as the operator had set it
            assert c.desired("cam-dijon-0001") == {"preset": 5}
            with_restore = await c.store.get_command(command_id(end, "xr-dijon-0001"))
            assert dict(with_restore.params) == {"plan": 3}
            released = await _events(c.store, "crisis_released")
            assert [e["activation"] for e in released] == [act]

    asyncio.run(body())


def test_a_municipality_with_a_plan_is_refused_whole_unless_replace_keeps_the_baseline() -> None:
    async def body() -> None:
        async with city() as c:
            snow = await c.decide("activate", mode="snow", municipalities=["dijon"])
            await c.settled("dijon", "snow", snow, 3)
            assert c.desired("lc-dijon-0001") == {"on": True, "dim": 100.0}
            assert c.desired("veh-dijon-0001") == {
                "message": "Snow plan in dijon: grit the priority routes first"}
            assert c.desired("xr-dijon-0001") == {"plan": 7}

            refused = await c.decide("activate", mode="flood", municipalities=["talant", "dijon"])
            failed = await c.final(refused)
            assert failed.status is CommandStatus.FAILED
            assert "dijon already has a crisis plan" in failed.error
            view = await c.view()
            assert "talant" not in view and view["dijon"]["activation_id"] == snow

            unknown = await c.final(await c.decide("activate", mode="tsunami",
                                                   municipalities=["ahuy"]))
            assert unknown.status is CommandStatus.FAILED and "no crisis plan" in unknown.error

            flood = await c.decide("activate", mode="flood", municipalities=["talant", "dijon"],
                                   replace=True)
            assert (await c.final(flood)).status is CommandStatus.ACKED
            # Dijon: three entities under flood, and the snow-only ones put back.
            row = await c.settled("dijon", "flood", flood, 5)
            assert row["kept"] == []
            await c.settled("talant", "flood", flood, 1)
            assert c.desired("xr-dijon-0001") == {"plan": 9}
            assert c.desired("lc-dijon-0001") == {"on": True, "dim": 40.0}  # most lamps' dim
            assert c.desired("veh-dijon-0001") == {"message": ""}
            released = await _events(c.store, "crisis_released")
            assert snow not in [e["activation"] for e in released]  # snow masked nothing

            end = await c.decide("deactivate", municipalities=["dijon", "talant", "ahuy"])
            await c.settled("dijon", "normal", end, 3)
            await c.settled("talant", "normal", end, 1)
            # The baseline from before the snow, not the snow's setpoint.
            assert c.desired("xr-dijon-0001") == {"plan": 3}
            assert c.desired("xr-talant-0001") == {"plan": 4}
            assert c.desired("at-dijon-0001") == {"bollard": "down"}
            assert c.desired("cam-dijon-0001") == {"preset": 1}
            assert "ahuy" not in await c.view()

    asyncio.run(body())


def test_a_field_without_a_baseline_is_released_to_the_layers_below() -> None:
    async def body() -> None:
        async with city() as c:
            entity = c.field.slots["xr-ahuy-0001"].entity
            assert entity is not None

            def plan() -> dict[str, Any]:
                return dict(entity.control_view()["fields"]["plan"])  # type: ignore[attr-defined]

            # The crossroad never reported and follows no schedule: the plan's 7 has no
            # value from before to go back to.
            act = await c.decide("activate", mode="snow", municipalities=["ahuy"])
            await c.settled("ahuy", "snow", act, 1)
            assert c.desired("xr-ahuy-0001") == {"plan": 7}
            assert plan()["source"] == "crisis"
            end = await c.decide("deactivate", municipalities=["ahuy"])
            row = await c.settled("ahuy", "normal", end, 1)
            # Released, not held: the crisis layer is gone and the plan stays as it is.
            assert row["kept"] == []
            restore = await c.store.get_command(command_id(end, "xr-ahuy-0001"))
            assert (restore.caller, dict(restore.params)) == ("crisis:restore", {"plan": 7})
            assert c.desired("xr-ahuy-0001") == {"plan": 7}
            assert plan() == {"value": 7, "source": None}
            assert "crisis" not in entity.state["layers"]

            # Under a second snow, an operator's plan waits below the crisis's: it takes
            # the field when the plan is released.
            again = await c.decide("activate", mode="snow", municipalities=["ahuy"])
            await c.settled("ahuy", "snow", again, 1)
            await c.operator_sets("xr-ahuy-0001", plan=5, for_s=3600)
            assert plan()["source"] == "crisis" and c.desired("xr-ahuy-0001") == {"plan": 7}
            end = await c.decide("deactivate", municipalities=["ahuy"])
            row = await c.settled("ahuy", "normal", end, 1)
            assert row["kept"] == []
            assert c.desired("xr-ahuy-0001") == {"plan": 5}
            assert plan()["source"] == "operator"

    asyncio.run(body())


def test_a_field_without_a_baseline_of_a_kind_without_layers_is_kept_and_listed() -> None:
    async def body() -> None:
        async with city() as c:
            # Neither the crossroad nor the camera of Ahuy ever reported.
            act = await c.decide("activate", mode="flood", municipalities=["ahuy"])
            await c.settled("ahuy", "flood", act, 2)
            assert c.desired("cam-ahuy-0001") == {"preset": 12}
            end = await c.decide("deactivate", municipalities=["ahuy"])
            row = await c.settled("ahuy", "normal", end, 2)
            # A camera holds no layer: its preset stays, listed; the crossroad's is released.
            assert row["kept"] == [{"entity": "cam-ahuy-0001", "field": "preset", "value": 12,
                                    "command_id": "", "reason": "no_baseline"}]
            assert c.desired("cam-ahuy-0001") == {"preset": 12}
            assert not await c.store.get_commands([command_id(end, "cam-ahuy-0001")])
            restore = await c.store.get_command(command_id(end, "xr-ahuy-0001"))
            assert dict(restore.params) == {"plan": 9}

    asyncio.run(body())


def test_a_restarted_coordinator_journals_nothing_twice() -> None:
    async def body() -> None:
        store = MemoryStore()
        async with city(store) as c:
            act = await c.decide("activate", mode="snow", municipalities=["dijon", "talant"])
            await c.final(act)
            await c.restart_control()
            await c.settled("dijon", "snow", act, 3)
            await c.settled("talant", "snow", act, 1)
            await c.restart_control()
            await c.settled("dijon", "snow", act, 3)
            journaled = [cid for _, cid, _ in store._journal if cid.startswith("crisis-")]
            assert sorted(journaled) == sorted(
                command_id(act, e) for e in ("xr-dijon-0001", "lc-dijon-0001", "veh-dijon-0001",
                                             "xr-talant-0001"))
            assert c.field.slots["xr-dijon-0001"].entity is not None

    asyncio.run(body())


def test_commands_are_checked_by_shape_before_the_journal() -> None:
    from runtime.errors import InvalidCommandError

    check = CrisisCoordinator.validate_command
    assert check("activate", {"mode": "snow", "municipalities": ["dijon", "dijon"]}) == {
        "mode": "snow", "municipalities": ["dijon"], "replace": False}
    assert check("deactivate", {"municipalities": ["dijon"]}) == {"municipalities": ["dijon"]}
    for action, params, field in [
        ("ack", {}, "action"),
        ("activate", {"mode": "snow", "municipalities": []}, "params.municipalities"),
        ("activate", {"municipalities": ["dijon"]}, "params.mode"),
        ("activate", {"mode": "snow", "municipalities": ["dijon"], "replace": "yes"},
         "params.replace"),
        ("deactivate", {"municipalities": ["dijon"], "mode": "snow"}, "params.mode"),
    ]:
        try:
            check(action, params)
        except InvalidCommandError as exc:
            assert exc.field == field, (action, params, exc.field)
        else:
            raise AssertionError(f"{action} {params} passed")


def test_a_layered_kind_is_not_asked_and_gets_back_what_it_recorded() -> None:
    """Crossroads and access terminals hold a plan as a layer and keep their own baseline:
    their setpoints go out with the decision (no ``get_state`` first), and the restore
    gives back what each recorded as the plan took the field."""
    async def body() -> None:
        async with city() as c:
            asked: list[str] = []
            send = c.transport.send_batch

            async def spy(host_id: str, blob: bytes) -> Any:
                envelopes, _ = decode_batch(blob)
                asked.extend(e.target for e in envelopes if e.type == "get_state")
                return await send(host_id, blob)

            c.transport.send_batch = spy  # type: ignore[method-assign]
            act = await c.decide("activate", mode="flood", municipalities=["dijon"])
            await c.settled("dijon", "flood", act, 3)
            assert asked == ["cam-dijon-0001"]  # the camera keeps no layer
            xr = c.field.slots["xr-dijon-0001"].entity
            assert xr is not None
            # The operator's plan 3 from before, by his command, taken by the plan's.
            value, by, taken = xr.state["crisis_base"]["plan"]
            assert (value, taken) == (3, command_id(act, "xr-dijon-0001")) and by
            end = await c.decide("deactivate", municipalities=["dijon"])
            await c.settled("dijon", "normal", end, 3)
            assert c.desired("xr-dijon-0001") == {"plan": 3}
            assert c.desired("at-dijon-0001") == {"bollard": "down"}
            assert xr.state["crisis_base"] == {}
            restore = await c.store.get_command(command_id(end, "at-dijon-0001"))
            assert dict(restore.params) == {"bollard": "down"}

    asyncio.run(body())
