"""Requests to interventions through the HTTP API and Open311, on a real Redis, without Ray.

The dispatch coordinator and the fleet run in real host cores on the runtime's
Redis store (in a thread of their own, as a host actor would run them); the
admin web is the real app on :class:`RuntimeBackend`, served on a free port
so that a published Open311 client (``georeport``) can talk to it. Vehicle
telemetry is handed to the vehicle entities as their device session would.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from flask.testing import FlaskClient
from georeport import GeoReport

from actors.registry import factory_for
from admin_web import AdminServer, Role, UserRegistry, create_app
from admin_web.open311 import OPEN311_PREFIX, open311_blueprint
from runtime.demo_inventory import generate_demo
from runtime.embedded import EmbeddedRedis
from runtime.envelope import Envelope, MessageKind
from runtime.host import HostConfig, HostCore
from runtime.inventory import Inventory, parse_inventory
from runtime.open311 import RequestQuery
from runtime.placement import CONTROL_HOST
from runtime.router import Directory
from runtime.service import RuntimeBackend, Service, ServiceOptions
from runtime.store import RedisStore
from tests.test_host_core import LoopTransport

T = TypeVar("T")
TOKENS = {name: f"{name}-token-{name[0] * 20}" for name in ("operator", "viewer", "talant")}
DIJON = (47.3220, 5.0415)
TALANT = (47.3370, 5.0050)
FLEET_HOST = "fleet-0"


def wait_for(check: Callable[[], T | None], timeout: float = 10.0, what: str = "it") -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Cores:
    """The control host (dispatch) and a fleet host in a thread with its own event loop."""

    def __init__(self, svc: Service, fleet: list[Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="cores", daemon=True)
        self.thread.start()
        self.cores: dict[str, HostCore] = {}
        self._svc, self._fleet = svc, fleet
        self.seq = 0
        self.call(self._start())

    def call(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(30)

    async def _start(self) -> None:
        svc = self._svc
        owners = {eq.id: FLEET_HOST for eq in self._fleet} | {"dispatch": CONTROL_HOST}
        transport = LoopTransport()
        dispatch = next(c for c in svc.coordinators if c.id == "dispatch")
        for host_id, members in ((CONTROL_HOST, [dispatch]), (FLEET_HOST, self._fleet)):
            store = RedisStore(svc.redis_url, namespace=svc.options.namespace)
            await store.connect()
            core = HostCore(host_id, members, factory_for=factory_for, store=store,
                            transport=transport, directory=Directory(owners),
                            config=HostConfig(read_model_interval_s=0.05, journal_block_ms=50))
            transport.hosts[host_id] = core
            self.cores[host_id] = core
            await core.start()

    async def _stop(self) -> None:
        for core in self.cores.values():
            await core.stop()

    def stop(self) -> None:
        self.call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def device(self, eid: str, type: str, payload: dict[str, Any]) -> None:
        kind = MessageKind.TELEMETRY if type == "telemetry" else MessageKind.EVENT
        env = Envelope(target=eid, type=type, payload=payload, sender=eid, kind=kind)
        self.loop.call_soon_threadsafe(self.cores[FLEET_HOST].route, env)

    def report(self, vid: str, at: tuple[float, float], status: str = "available",
               job: str = "", job_state: str = "idle") -> None:
        self.seq += 1
        self.device(vid, "telemetry", {"seq": self.seq, "ts": time.time(), "values": {
            "lat": at[0], "lon": at[1], "speed": 0.0, "heading": 0.0, "status": status,
            "job": job, "job_state": job_state}})


@dataclass
class Rig:
    svc: Service
    backend: RuntimeBackend
    client: FlaskClient
    url: str
    cores: Cores
    api_key: str
    maintenance: list[str]

    def call(self, method: str, path: str, body: Any = None, who: str = "operator") -> Any:
        response = self.client.open(path, method=method, json=body,
                                    headers={"Authorization": f"Bearer {TOKENS[who]}"})
        return response.status_code, response.get_json()

    def intervention(self, iid: str, who: str = "operator") -> dict[str, Any] | None:
        status, body = self.call("GET", f"/api/v1/interventions/{iid}", who=who)
        return body if status == 200 else None

    def state_of(self, iid: str, *states: str) -> dict[str, Any] | None:
        rec = self.intervention(iid)
        return rec if rec is not None and rec["state"] in states else None


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    inventory: Inventory = parse_inventory(generate_demo(scale=0.05, seed=2), "<demo>")
    fleet = [eq for eq in inventory.equipment if eq.kind == "vehicle" and "role" in eq.attrs]
    maintenance = sorted(eq.id for eq in fleet if eq.attrs["role"] == "maintenance")
    assert maintenance, "the demo at this scale has a maintenance crew"
    with EmbeddedRedis(Path(tmp_path_factory.mktemp("redis"))) as redis_server:
        svc = Service(inventory, ServiceOptions(
            redis_url=redis_server.url, mqtt_url="mqtt://127.0.0.1:1",
            namespace=f"d{uuid.uuid4().hex[:8]}", coordinators=("alarms", "dispatch")))
        svc.start_servers()
        backend = RuntimeBackend(svc)
        users = UserRegistry()
        users.add("operator", Role.OPERATOR, token=TOKENS["operator"])
        users.add("viewer", Role.VIEWER, token=TOKENS["viewer"])
        users.add("talant", Role.OPERATOR, municipalities=["talant"], token=TOKENS["talant"])
        app = create_app(backend, users, secret_key=b"k" * 32)
        app.register_blueprint(open311_blueprint(backend.open311_backend()))
        server = AdminServer(app, "127.0.0.1", 0)
        server.start()
        cores = Cores(svc, fleet)
        svc.start_request_sync()
        try:
            # Every maintenance crew available, parked away from the sites but one.
            for i, vid in enumerate(maintenance):
                cores.device(vid, "device_status", {"online": True})
                cores.report(vid, (47.30 - 0.01 * i, 5.00))
            yield Rig(svc, backend, app.test_client(), server.url, cores,
                      backend.open311_store().issue_key("tests"), maintenance)
        finally:
            cores.stop()
            server.stop()
            svc.stop()


def drive(rig: Rig, iid: str) -> str:
    """The assigned crew goes, works and reports done; its id."""
    rec = wait_for(lambda: rig.state_of(iid, "assigned"), what=f"{iid} assigned")
    vid = str(rec["vehicle"])
    site = (float(rec["lat"]), float(rec["lon"]))
    rig.cores.report(vid, site, "busy", iid, "en_route")
    wait_for(lambda: rig.state_of(iid, "en_route"), what="en route")
    rig.cores.report(vid, site, "busy", iid, "on_site")
    wait_for(lambda: rig.state_of(iid, "on_site"), what="on site")
    rig.cores.report(vid, site, "available", iid, "done")
    wait_for(lambda: rig.state_of(iid, "done"), what="done")
    return vid


def test_a_phone_request_becomes_an_intervention_that_a_crew_closes(rig: Rig) -> None:
    status, body = rig.call("POST", "/api/v1/requests", {
        "category": "pothole", "description": "A deep hole by the tram stop",
        "lat": DIJON[0], "lon": DIJON[1]})
    assert status == 201, body
    iid = body["intervention_id"]
    assert iid == f"int-{body['request_id']}"
    rec = wait_for(lambda: rig.intervention(iid), what="the intervention listed")
    assert rec["municipality"] == "dijon" and rec["category"] == "pothole"
    assert rec["request_id"] == body["request_id"]
    assert set(rec) >= {"id", "request_id", "category", "description", "municipality", "state",
                        "vehicle", "lat", "lon", "created_ts", "updated_ts"}
    vid = drive(rig, iid)
    assert vid in rig.maintenance
    # The citizen's view follows: closed, with the crew's notes.
    got = wait_for(lambda: (lambda r: r if r["status"] == "closed" else None)(
        rig.client.get(f"{OPEN311_PREFIX}/requests/{body['request_id']}.json").get_json()[0]),
        what="the Open311 request closed")
    assert got["status_notes"] == f"Done by crew {vid}."
    listed = rig.call("GET", "/api/v1/interventions?state=done")[1]
    assert iid in [x["id"] for x in listed]
    # The fleet is published once a second.
    wait_for(lambda: {v["id"] for v in rig.call("GET", "/api/v1/fleet?role=maintenance")[1]}
             == set(rig.maintenance), what="the maintenance crews listed")


def test_a_published_open311_client_lists_services_and_reads_the_status(rig: Rig) -> None:
    root = f"{rig.url}{OPEN311_PREFIX}"
    # As the specification's example: a form-encoded POST with the api_key.
    response = requests.post(f"{root}/requests.json", data={
        "api_key": rig.api_key, "service_code": "pothole", "lat": str(DIJON[0]),
        "long": str(DIJON[1]), "description": "A large pothole at the corner",
        "email": "citizen@example.org"}, timeout=10)
    assert response.status_code == 201, response.text
    request_id = response.json()[0]["service_request_id"]
    client = GeoReport(root, api_key=rig.api_key)
    codes = {s["service_code"] for s in client.get_service_list()}
    assert {"pothole", "bulky_waste", "lighting_fault", "graffiti"} <= codes
    first = client.get_service_request(request_id)
    assert first["status"] == "open" and first["service_code"] == "pothole"
    assert "email" not in first
    drive(rig, f"int-{request_id}")
    closed = wait_for(lambda: (lambda r: r if r["status"] == "closed" else None)(
        client.get_service_request(request_id)), what="closed through georeport")
    assert closed["status_notes"].startswith("Done by crew")
    assert request_id in [r["service_request_id"]
                          for r in client.get_service_requests(status="closed")]


def test_scoping_holds_on_requests_and_interventions(rig: Rig) -> None:
    status, body = rig.call("POST", "/api/v1/requests", {
        "category": "graffiti", "description": "Tags on the town hall",
        "lat": DIJON[0], "lon": DIJON[1]}, who="talant")
    assert status == 403 and body["field"] == "municipality"
    status, body = rig.call("POST", "/api/v1/requests", {
        "category": "graffiti", "description": "Tags on the school", "lat": TALANT[0],
        "lon": TALANT[1], "municipality": "talant"}, who="talant")
    assert status == 201, body
    talant_iid = body["intervention_id"]
    wait_for(lambda: rig.intervention(talant_iid, who="talant"), what="listed")
    dijon = [x for x in rig.call("GET", "/api/v1/interventions")[1]
             if x["municipality"] == "dijon"]
    assert dijon
    assert rig.call("GET", f"/api/v1/interventions/{dijon[0]['id']}", who="talant")[0] == 404
    mine = rig.call("GET", "/api/v1/interventions", who="talant")[1]
    assert {x["municipality"] for x in mine} == {"talant"}
    assert rig.call("GET", "/api/v1/interventions/int-999999")[0] == 404


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"category": "pothole", "description": "x", "lat": 48.85, "lon": 2.35}, 422, "lat"),
    ({"category": "bogus", "description": "x", "lat": DIJON[0], "lon": DIJON[1]}, 422,
     "category"),
    ({"category": "pothole", "description": "x", "lat": DIJON[0], "lon": DIJON[1],
      "municipality": "talant"}, 422, "municipality"),
    ({"category": "pothole", "description": "x", "lat": "47.3", "lon": DIJON[1]}, 422, "lat"),
    ({"category": "pothole", "description": "", "lat": DIJON[0], "lon": DIJON[1]}, 422,
     "description"),
    ({"category": "pothole", "description": "x", "lat": DIJON[0], "lon": DIJON[1],
      "priority": 1}, 422, "priority"),
    ({"category": "pothole", "description": "x", "lat": DIJON[0], "lon": 500}, 422, "lon"),
])
def test_bad_requests_are_refused_and_nothing_is_opened(
        rig: Rig, body: dict[str, Any], status: int, field: str) -> None:
    before = len(rig.backend.open311_store().list_requests(RequestQuery()))
    got, answer = rig.call("POST", "/api/v1/requests", body)
    assert (got, answer.get("field")) == (status, field), answer
    assert len(rig.backend.open311_store().list_requests(RequestQuery())) == before


def test_not_json_numbers_roles_and_authentication(rig: Rig) -> None:
    raw = b'{"category": "pothole", "description": "x", "lat": NaN, "lon": 5.04}'
    response = rig.client.post("/api/v1/requests", data=raw, headers={
        "Authorization": f"Bearer {TOKENS['operator']}", "Content-Type": "application/json"})
    assert response.status_code == 400
    assert rig.call("POST", "/api/v1/requests", {}, who="viewer")[0] == 403
    assert rig.client.get("/api/v1/interventions").status_code == 401
    assert rig.call("GET", "/api/v1/interventions?state=lost")[0] == 422


def test_open311_errors_keep_the_specification_shape_outside_its_routes(rig: Rig) -> None:
    for response in (rig.client.get(f"{OPEN311_PREFIX}/nothing-here.json"),
                     rig.client.delete(f"{OPEN311_PREFIX}/services.json")):
        body = response.get_json()
        assert response.status_code in (404, 405)
        assert body == [{"code": response.status_code, "description": body[0]["description"]}]
    missing_key = rig.client.post(f"{OPEN311_PREFIX}/requests.json", data={
        "service_code": "pothole", "lat": str(DIJON[0]), "long": str(DIJON[1])})
    assert missing_key.status_code == 403 and missing_key.get_json()[0]["code"] == 403

