"""Equipment and alarm views through the API, read from what hosts and coordinators publish.

The runtime's own backend on a real Redis; the hosts' equipment view, checkpoints and
the alarms' read model are written as hosts and the coordinator write them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from admin_web import Role, UserRegistry, create_app
from runtime.demo_inventory import generate_demo
from runtime.embedded import EmbeddedRedis
from runtime.envelope import pack
from runtime.host import EQUIPMENT_VIEW
from runtime.inventory import Inventory, parse_inventory
from runtime.service import (
    ALARMS_READ_MODEL,
    CRISIS_READ_MODEL,
    RuntimeBackend,
    Service,
    ServiceOptions,
)
from runtime.store import StoreKeys
from tests.conftest import poll

TOKENS = {"admin": "a" * 40, "operator": "o" * 40, "op2": "p" * 40, "viewer": "v" * 40}


@pytest.fixture(scope="module")
def inventory() -> Inventory:
    return parse_inventory(generate_demo(scale=0.05, seed=3), "<demo>")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, inventory: Inventory) -> Iterator[Service]:
    server = EmbeddedRedis(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    svc = Service(inventory, ServiceOptions(redis_url=server.url, mqtt_url="mqtt://127.0.0.1:1",
                                            namespace=f"e{uuid.uuid4().hex[:8]}"))
    svc.start_servers()
    try:
        _publish(svc, inventory)
        yield svc
    finally:
        svc.stop()
        server.stop()


def _publish(svc: Service, inventory: Inventory) -> None:
    """What hosts and the alarms coordinator would have written."""
    keys = StoreKeys(svc.options.namespace)
    r = redis.Redis.from_url(svc.redis_url)
    try:
        lines = {}
        for n, eq in enumerate(inventory.equipment):
            online = n % 5 != 0
            lines[eq.id] = json.dumps({"host": f"{eq.domain}-0", "status": "running",
                                       "online": online, "conditions": []})
            r.set(keys.checkpoint(eq.id), pack({
                "state": {"online": online}, "applied": [], "version": 1,
                "twin": {"reported": {"seq": {"value": n, "quality": "good", "source_ts": 1.0,
                                              "received_ts": 2.0, "seq": n}},
                         "desired": {}}}))
        r.hset(keys.hash(EQUIPMENT_VIEW), mapping=lines)
        first = inventory.equipment[1]
        alarms = [{"id": f"{first.id}.fire", "source": first.id, "condition": "fire",
                   "priority": "critical", "state": "unacknowledged", "active": True,
                   "municipality": first.municipality, "raised_ts": 10.0, "acked_by": None,
                   "acked_ts": None, "shelved_until": None, "suppressed_by": None,
                   "group": None, "count": 1, "message": "fire"}]
        r.set(keys.blob(f"view:{ALARMS_READ_MODEL}"), pack({"ts": 1.0, "alarms": alarms}))
    finally:
        r.close()


@pytest.fixture(scope="module", params=[False, True], ids=["read-through", "tracked"])
def client(request: pytest.FixtureRequest, service: Service,
           inventory: Inventory) -> Iterator[FlaskClient]:
    users = UserRegistry()
    towns = sorted({eq.municipality for eq in inventory.equipment})
    users.add("admin", Role.ADMIN, token=TOKENS["admin"])
    users.add("operator", Role.OPERATOR, token=TOKENS["operator"])
    users.add("op2", Role.OPERATOR, municipalities=[towns[0]], token=TOKENS["op2"])
    users.add("viewer", Role.VIEWER, token=TOKENS["viewer"])
    backend = RuntimeBackend(service, track=request.param)
    try:
        yield create_app(backend, users, secret_key=b"k" * 32).test_client()
    finally:
        backend.close()


def get(client: FlaskClient, path: str, who: str = "operator") -> Any:
    return client.get(path, headers={"Authorization": f"Bearer {TOKENS[who]}"})


def test_pages_cover_every_equipment_once_in_id_order(client: FlaskClient,
                                                      inventory: Inventory) -> None:
    seen: list[str] = []
    after = ""
    while True:
        r = get(client, f"/api/v1/equipment?limit=7{'&after=' + after if after else ''}")
        assert r.status_code == 200
        items = r.get_json()
        seen += [i["id"] for i in items]
        after = r.headers.get("X-Next-After", "")
        if not after:
            break
        assert after == items[-1]["id"] and len(items) == 7
    assert seen == sorted(eq.id for eq in inventory.equipment)


def test_items_carry_the_contracts_fields(client: FlaskClient) -> None:
    item = get(client, "/api/v1/equipment?limit=1").get_json()[0]
    assert {"id", "kind", "municipality", "online", "status", "host", "reported",
            "desired"} <= item.keys()
    assert item["reported"]["seq"].keys() == {"value", "quality", "source_ts", "received_ts"}


def test_filters(client: FlaskClient, inventory: Inventory) -> None:
    kind = inventory.equipment[0].kind
    items = get(client, f"/api/v1/equipment?kind={kind}&limit=1000").get_json()
    assert items and all(i["kind"] == kind for i in items)
    assert len(items) == sum(1 for eq in inventory.equipment if eq.kind == kind)
    offline = get(client, "/api/v1/equipment?online=false&limit=1000").get_json()
    assert len(offline) == (len(inventory.equipment) + 4) // 5
    assert not any(i["online"] for i in offline)
    alarmed = get(client, "/api/v1/equipment?in_alarm=true").get_json()
    assert [i["id"] for i in alarmed] == [inventory.equipment[1].id]
    for bad in ("online=maybe", "limit=0", "limit=5000", "in_alarm=1"):
        r = get(client, f"/api/v1/equipment?{bad}")
        assert r.status_code == 422, bad


def test_scoping_hides_other_municipalities(client: FlaskClient, inventory: Inventory) -> None:
    town = sorted({eq.municipality for eq in inventory.equipment})[0]
    items = get(client, "/api/v1/equipment?limit=1000", who="op2").get_json()
    assert items and {i["municipality"] for i in items} == {town}
    other = next(eq.id for eq in inventory.equipment if eq.municipality != town)
    assert get(client, f"/api/v1/equipment/{other}", who="op2").status_code == 404
    assert get(client, f"/api/v1/equipment/{other}").status_code == 200
    assert get(client, "/api/v1/equipment/no-such-thing").status_code == 404


def test_detail_adds_events_commands_and_alarms(client: FlaskClient,
                                                inventory: Inventory) -> None:
    eid = inventory.equipment[1].id
    body = get(client, f"/api/v1/equipment/{eid}").get_json()
    assert body["id"] == eid and body["in_alarm"] is True
    assert [a["condition"] for a in body["alarms"]] == ["fire"]
    assert isinstance(body["events"], list) and isinstance(body["commands"], list)


def test_alarms_listed_scoped_and_acted_on(client: FlaskClient, inventory: Inventory) -> None:
    first = inventory.equipment[1]
    listed = get(client, "/api/v1/alarms").get_json()
    assert [a["id"] for a in listed] == [f"{first.id}.fire"]
    towns = sorted({eq.municipality for eq in inventory.equipment})
    mine = get(client, "/api/v1/alarms", who="op2").get_json()
    assert (mine == listed) == (first.municipality == towns[0])
    r = client.post(f"/api/v1/alarms/{first.id}.fire/ack", json={"comment": "seen"},
                    headers={"Authorization": f"Bearer {TOKENS['operator']}"})
    assert r.status_code == 202
    cmd = get(client, r.headers["Location"]).get_json()
    assert cmd["status"] == "queued"
    shelve = client.post(f"/api/v1/alarms/{first.id}.fire/shelve", json={"minutes": 0},
                         headers={"Authorization": f"Bearer {TOKENS['operator']}"})
    assert shelve.status_code == 422 and shelve.get_json()["field"] == "minutes"
    oos = client.post(f"/api/v1/alarms/{first.id}.fire/out-of-service",
                      headers={"Authorization": f"Bearer {TOKENS['operator']}"})
    assert oos.status_code == 403
    viewer = client.post(f"/api/v1/alarms/{first.id}.fire/ack", json={},
                         headers={"Authorization": f"Bearer {TOKENS['viewer']}"})
    assert viewer.status_code == 403


def test_alarm_actions_are_audited(client: FlaskClient, inventory: Inventory) -> None:
    first = inventory.equipment[1]
    headers = {"Authorization": f"Bearer {TOKENS['operator']}"}
    assert client.post(f"/api/v1/alarms/{first.id}.fire/shelve",
                       json={"minutes": 30, "reason": "crew on site"},
                       headers=headers).status_code == 202
    assert client.post(f"/api/v1/alarms/{first.id}.fire/shelve", json={"minutes": -1},
                       headers=headers).status_code == 422
    trail = get(client, "/api/v1/audit?user=operator", who="admin").get_json()
    refused, accepted = trail[0], trail[1]
    assert (accepted["action"], accepted["outcome"]) == ("alarm.shelve", "ok")
    assert accepted["params"] == {"minutes": 30.0, "reason": "crew on site"}
    assert accepted["before"]["state"] == "unacknowledged"
    assert (refused["action"], refused["outcome"], refused["code"]) == (
        "alarm.shelve", "refused", "422")


def test_a_tracked_read_model_is_read_again_once_republished(service: Service) -> None:
    backend = RuntimeBackend(service, track=True)
    keys = StoreKeys(service.options.namespace)
    r = redis.Redis.from_url(service.redis_url)
    crisis = keys.blob(f"view:{CRISIS_READ_MODEL}")
    try:
        poll(lambda: backend._tracked is not None and backend._tracked.live, 5,
             what="tracking live")
        r.set(crisis, pack({"ts": 1.0, "municipalities": {}}))
        town = service.inventory.municipalities[0].slug
        poll(lambda: backend.crisis()[town]["mode"] == "normal", 5, what="crisis read")
        first = backend.crisis()
        assert backend._model(CRISIS_READ_MODEL, 1 << 20) is backend._model(
            CRISIS_READ_MODEL, 1 << 20)  # kept, decoded once
        r.set(crisis, pack({"ts": 2.0, "municipalities": {town: {
            "mode": "snow", "since": 2.0, "by": "user:a:operator", "activation_id": "a-1",
            "entities": {"done": 0, "pending": 0, "failed": 0}, "kept": []}}}))
        poll(lambda: backend.crisis()[town]["mode"] == "snow", 5, interval=0.005,
             what="the republished model read")
        assert first[town]["mode"] == "normal"
    finally:
        r.delete(crisis)
        r.close()
        backend.close()
