"""Field devices end to end: simulators on real protocols, entities in real hosts.

The simulators run in this process (on a loop in a thread of their own) so the
tests can stop and restart them; the runtime reaches them over real Modbus
TCP, OPC UA and MQTT sockets.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
import ray

from runtime.commands import Command, new_command_id
from runtime.demo_inventory import DemoPorts, generate_demo
from runtime.inventory import Inventory, parse_inventory
from tests.conftest import Http, poll

pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("ray_runtime")]


class SimThread:
    """Simulators on an event loop of their own, driven from the test thread."""

    def __init__(self, inventory: Inventory, mqtt_urls: tuple[str, str]) -> None:
        from devices.sim.runner import build

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sims", daemon=True)
        self.thread.start()
        self.sims, self.info = build(inventory, mqtt_urls[0], telemetry_url=mqtt_urls[1])

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def sim(self, name: str) -> Any:
        return next(s for s in self.sims if type(s).__name__ == name)

    def start(self) -> None:
        for s in self.sims:
            self.call(s.start())

    def stop(self) -> None:
        for s in reversed(self.sims):
            self.call(s.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Field:
    def __init__(self, svc: Any, sims: SimThread, http: Http, inv: Inventory) -> None:
        self.svc, self.sims, self.http, self.inv = svc, sims, http, inv
        self.operator = self.admin = http

    def ids(self, kind: str) -> list[str]:
        return [eq.id for eq in self.inv.equipment if eq.kind == kind]

    def entity(self, eid: str) -> dict[str, Any]:
        host = self.svc.plan.owner[eid]
        return dict(ray.get(self.svc.host_handle(host).entity.remote(eid), timeout=10))

    def submit(self, eid: str, params: dict[str, Any]) -> str:
        cmd = Command(command_id=new_command_id(), target=eid, action="set", params=params,
                      caller="test")
        return str(self.svc.store.submit_command(cmd)[0].command_id)

    def status(self, cid: str) -> str:
        return str(self.svc.store.get_command(cid).status)

    def events(self, entity: str) -> list[dict[str, Any]]:
        return [e for e in self.svc.store.recent_events(2000) if e.get("entity") == entity]


@pytest.fixture(scope="module")
def field() -> Iterator[Field]:
    from admin_web import AdminServer, SwappableBackend, UserRegistry, create_app
    from admin_web.auth import create_demo_users
    from runtime.service import DEVICES, RuntimeBackend, Service, ServiceOptions

    inv = parse_inventory(generate_demo(scale=0.02, seed=11, ports=DemoPorts.free()), "<devices>")
    svc = Service(inv, ServiceOptions(devices=DEVICES, spares=0))
    svc.start_servers()
    sims = SimThread(inv, svc.simulator_urls())
    users = UserRegistry()
    creds = create_demo_users(users, [m.slug for m in inv.municipalities])
    server = AdminServer(create_app(SwappableBackend(RuntimeBackend(svc)), users),
                         "127.0.0.1", 0)
    try:
        sims.start()
        server.start()
        svc.start_ray()
        svc.start_tree()
        f = Field(svc, sims, Http(server.url), inv)
        f.operator = Http(server.url, creds["operator"]["token"])
        f.admin = Http(server.url, creds["admin"]["token"])
        yield f
    finally:
        svc.stop()
        server.stop()
        sims.stop()


def online(f: Field) -> int:
    _, body = f.http.call("GET", "/api/v1/health")
    return int(body["online"])


def test_every_device_comes_online_and_reports(field: Field) -> None:
    total = len(field.inv.equipment)
    poll(lambda: online(field) == total, 90, interval=0.5, what=f"{total} devices online")
    lc = field.ids("lighting_circuit")[0]
    rep = poll(lambda: field.entity(lc)["checkpoint"]["twin"]["reported"].get("lamp"), 30,
               what="lamps reported")
    assert rep["quality"] == "good" and isinstance(rep["value"], list) and rep["value"]
    xr = field.ids("crossroad")[0]
    poll(lambda: "phase" in field.entity(xr)["checkpoint"]["twin"]["reported"], 30,
         what="crossroad phase reported")
    bld = field.ids("building")[0]
    poll(lambda: "seq" in field.entity(bld)["checkpoint"]["twin"]["reported"], 30,
         what="building reported over OPC UA")
    veh = field.ids("vehicle")[0]
    poll(lambda: "lat" in field.entity(veh)["checkpoint"]["twin"]["reported"], 30,
         what="vehicle position over MQTT")


def test_commands_are_acked_by_the_devices(field: Field) -> None:
    total = len(field.inv.equipment)
    poll(lambda: online(field) == total, 90, interval=0.5, what="devices online")
    lc, xr = field.ids("lighting_circuit")[0], field.ids("crossroad")[0]
    cam, bld = field.ids("camera")[0], field.ids("building")[0]
    cids = {
        field.submit(lc, {"dim": 40.0}): "acked",
        field.submit(xr, {"plan": 3}): "acked",
        field.submit(cam, {"preset": 12}): "acked",
        field.submit(bld, {"mode": "unoccupied"}): "acked",
    }
    poll(lambda: all(field.status(c) == want for c, want in cids.items()), 60,
         what="device acks")

    def dims() -> list[Any]:
        lamps = field.entity(lc)["checkpoint"]["twin"]["reported"]["lamp"]["value"]
        return [lamp.get("dim") for lamp in lamps]

    poll(lambda: set(dims()) == {40.0} or set(dims()) == {40}, 30,
         what="lamps reporting dim 40")


def test_device_outage_goes_offline_then_reconciles(field: Field) -> None:
    total = len(field.inv.equipment)
    poll(lambda: online(field) == total, 90, interval=0.5, what="devices online")
    lighting = field.sims.sim("LightingSimulator")
    lc = field.ids("lighting_circuit")[0]
    n_lighting = len(field.ids("lighting_circuit"))
    field.sims.call(lighting.stop())
    poll(lambda: online(field) == total - n_lighting, 60, what="lighting offline")
    poll(lambda: any(e.get("alarm") == "device_offline" for e in field.events(lc)), 30,
         what="offline alarm")
    refused = field.submit(lc, {"dim": 25.0})
    poll(lambda: field.status(refused) == "failed", 30, what="command refused while offline")
    field.sims.call(lighting.start())
    poll(lambda: online(field) == total, 90, interval=0.5, what="lighting back online")

    def dims() -> set[Any]:
        lamps = field.entity(lc)["checkpoint"]["twin"]["reported"]["lamp"]["value"]
        return {float(lamp.get("dim")) for lamp in lamps}

    poll(lambda: dims() == {25.0}, 60, what="desired dim re-applied on reconnect")


def test_bad_payloads_are_counted_and_the_entity_keeps_serving(field: Field) -> None:
    from devices.mqtt import MqttSession, encode_payload, topic

    veh = next(eq for eq in field.inv.equipment if eq.kind == "vehicle")
    host = field.svc.host_handle(field.svc.plan.owner[veh.id])
    t = topic(veh.municipality, veh.kind, veh.id, "telemetry")
    bad = [b"\xc1\xc1 not msgpack", encode_payload({"ts": "yesterday", "lat": "x"}),
           encode_payload({"pad": "x" * 10_000})]

    async def publish() -> None:
        url = field.svc.publisher_url("test-bad-input", [veh])
        session = MqttSession(url, client_id="test-bad-input", clean_session=True)
        await session.start()
        try:
            await session.wait_connected(10)
            for payload in bad:
                await session.publish(t, payload, qos=1)
        finally:
            await session.stop()

    def bad_count() -> int:
        st = ray.get(host.status.remote(), timeout=10)
        return sum(v for k, v in st["devices"]["bad_input"].items() if k.startswith("mqtt:"))

    before = bad_count()
    asyncio.run(publish())
    poll(lambda: bad_count() >= before + len(bad), 30, what="bad payloads counted")
    seq0 = field.entity(veh.id)["checkpoint"]["state"]["seq"]
    poll(lambda: field.entity(veh.id)["checkpoint"]["state"]["seq"] != seq0, 30,
         what="the vehicle keeps reporting")
    assert field.entity(veh.id)["status"] == "running"


def test_building_outage_over_opcua_and_alarm_policy_on_reconnect(field: Field) -> None:
    total = len(field.inv.equipment)
    poll(lambda: online(field) == total, 90, interval=0.5, what="devices online")
    bms = field.sims.sim("BmsSimulator")
    bld = field.ids("building")[0]
    field.sims.call(bms.set_offline(bld, True))
    poll(lambda: online(field) == total - 1, 60, what="building offline (nodes Bad)")
    refused = field.submit(bld, {"mode": "lockdown"})
    poll(lambda: field.status(refused) == "failed", 30, what="command refused while offline")
    field.sims.call(bms.set_offline(bld, False))
    poll(lambda: online(field) == total, 60, what="building back online")
    # mode's policy is "alarm": an operator decides, nothing is re-applied blindly.
    poll(lambda: any(e.get("alarm") == "reconcile_required" and e.get("field") == "mode"
                     for e in field.events(bld)), 30, what="reconcile alarm for mode")
    assert field.sims.call(_value(bms, bld, "mode")) != 2  # lockdown was not applied


async def _value(sim: Any, device: str, key: str) -> Any:
    return sim.value(device, key)


def test_camera_outage_over_mqtt_and_reapply_on_reconnect(field: Field) -> None:
    total = len(field.inv.equipment)
    poll(lambda: online(field) == total, 90, interval=0.5, what="devices online")
    mq = field.sims.sim("MqttDeviceSimulator")
    cam = field.ids("camera")[-1]
    field.sims.call(mq.stop_device(cam))
    poll(lambda: online(field) == total - 1, 60, what="camera offline (retained status)")
    refused = field.submit(cam, {"preset": 42})
    poll(lambda: field.status(refused) == "failed", 30, what="command refused while offline")
    field.sims.call(mq.start_device(cam))
    poll(lambda: online(field) == total, 60, what="camera back online")
    poll(lambda: field.sims.call(_values(mq, cam)).get("preset") == 42, 30,
         what="preset re-applied on reconnect")
    # The retained status was understood, never counted as a bad payload.
    st = ray.get(field.svc.host_handle(field.svc.plan.owner[cam]).status.remote(), timeout=10)
    assert not [k for k in st["devices"]["bad_input"] if k.startswith("mqtt:status")]


async def _values(sim: Any, device: str) -> dict[str, Any]:
    return dict(sim.values(device))


def test_modbus_exceptions_and_garbage_are_counted_and_survived(field: Field) -> None:
    total = len(field.inv.equipment)
    poll(lambda: online(field) == total, 90, interval=0.5, what="devices online")
    traffic = field.sims.sim("TrafficSimulator")
    xr = field.ids("crossroad")[0]
    host = field.svc.host_handle(field.svc.plan.owner[xr])

    def bad(prefix: str) -> int:
        st = ray.get(host.status.remote(), timeout=10)
        return sum(v for k, v in st["devices"]["bad_input"].items() if k.startswith(prefix))

    before = bad("modbus:")
    field.sims.loop.call_soon_threadsafe(traffic.exception, xr, 4)
    poll(lambda: bad("modbus:") > before, 30, what="exception responses counted")
    field.sims.loop.call_soon_threadsafe(traffic.exception, xr, None)
    mid = bad("modbus:")
    field.sims.loop.call_soon_threadsafe(traffic.malformed, xr, True)
    poll(lambda: bad("modbus:") > mid, 30, what="malformed frames counted")
    field.sims.loop.call_soon_threadsafe(traffic.malformed, xr, False)
    seq0 = field.entity(xr)["checkpoint"]["state"]["seq"]
    poll(lambda: field.entity(xr)["checkpoint"]["state"]["seq"] != seq0, 30,
         what="the crossroad keeps reporting")
    assert field.entity(xr)["status"] == "running"
    poll(lambda: online(field) == total, 60, what="all online again")


# -- alarms, end to end: device → entity → event stream → alarms coordinator → API --------

def _alarm(f: Field, source: str, condition: str) -> dict[str, Any] | None:
    code, body = f.operator.call("GET", f"/api/v1/alarms?state=all&source={source}")
    assert code == 200, body
    return next((a for a in body if a["condition"] == condition), None)


def test_fire_alarm_lifecycle_through_the_api(field: Field) -> None:
    bld = field.ids("building")[0]
    bms = field.sims.sim("BmsSimulator")
    poll(lambda: online(field) == len(field.inv.equipment), 90, interval=0.5,
         what="devices online")
    field.sims.call(bms.fault(bld, "fire", True))
    raised = poll(lambda: (a := _alarm(field, bld, "fire")) and a["active"] and a, 30,
                  what="fire alarm listed")
    assert raised["priority"] == "critical" and raised["state"] == "unacknowledged"
    code, listed = field.operator.call("GET", "/api/v1/alarms?priority=critical")
    assert code == 200 and any(a["id"] == raised["id"] for a in listed)
    code, body = field.operator.call("POST", f"/api/v1/alarms/{raised['id']}/ack",
                                     {"comment": "crew sent"})
    assert code == 202, body
    acked = poll(lambda: (a := _alarm(field, bld, "fire")) and a["state"] == "acknowledged"
                 and a, 30, what="fire alarm acknowledged")
    assert acked["acked_by"] == "operator"
    field.sims.call(bms.fault(bld, "fire", False))
    try:
        poll(lambda: (a := _alarm(field, bld, "fire")) and a["state"] == "normal", 30,
             what="fire alarm back to normal once cleared at the source")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {_alarm(field, bld, 'fire')}; events "
                             f"{[(e['event'], e.get('alarm')) for e in field.events(bld)]}; "
                             f"reported {field.entity(bld)['checkpoint']['twin']['reported']}"
                             ) from None


def test_alarm_actions_are_checked_at_the_edge(field: Field) -> None:
    code, _ = field.operator.call("POST", "/api/v1/alarms/no-such-alarm/ack", {})
    assert code == 404
    code, body = field.operator.call("GET", "/api/v1/alarms?state=bogus")
    assert code == 422 and body["field"] == "state"
    code, _ = field.http.call("GET", "/api/v1/alarms")
    assert code == 401
