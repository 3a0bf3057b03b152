"""Crisis modes through the API: GET scoped to the user's municipalities, POST journaled for
the coordinator (202), refused whole with 409 when a municipality has a plan unless replace,
422 for an unknown mode or municipality; on the static backend and on the runtime's own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from actors.control.crisis import READ_MODEL
from admin_web import Role, StaticBackend, UserRegistry, create_app
from runtime.demo_inventory import generate_demo
from runtime.embedded import EmbeddedRedis
from runtime.envelope import pack
from runtime.inventory import Inventory, parse_inventory
from runtime.service import CRISIS_READ_MODEL, RuntimeBackend, Service, ServiceOptions
from runtime.store import StoreKeys

TOKENS = {name: f"{name}-token-{name[0] * 20}" for name in ("admin", "operator", "op2",
                                                             "viewer", "v2")}
SNOW = {"mode": "snow", "since": 5.0, "by": "ana", "activation_id": "c-1",
        "entities": {"done": 3, "pending": 1, "failed": 0}, "kept": []}


@pytest.fixture(scope="module")
def users() -> UserRegistry:
    registry = UserRegistry()
    registry.add("admin", Role.ADMIN, token=TOKENS["admin"])
    registry.add("operator", Role.OPERATOR, token=TOKENS["operator"])
    registry.add("op2", Role.OPERATOR, municipalities=["talant"], token=TOKENS["op2"])
    registry.add("viewer", Role.VIEWER, token=TOKENS["viewer"])
    registry.add("v2", Role.VIEWER, municipalities=["talant"], token=TOKENS["v2"])
    return registry


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def static_client(users: UserRegistry) -> FlaskClient:
    backend = StaticBackend(equipment={"xr-dijon-1": "dijon", "xr-talant-1": "talant"},
                            crisis={"dijon": SNOW})
    return create_app(backend, users, secret_key=b"k" * 32).test_client()


def test_get_lists_the_municipalities_the_user_may_read(users: UserRegistry) -> None:
    client = static_client(users)
    assert client.get("/api/v1/crisis").status_code == 401
    every = client.get("/api/v1/crisis", headers=bearer("viewer")).get_json()
    assert every["dijon"] == SNOW
    assert every["talant"]["mode"] == "normal" and every["talant"]["activation_id"] is None
    assert set(client.get("/api/v1/crisis", headers=bearer("v2")).get_json()) == {"talant"}


@pytest.mark.parametrize(
    ("who", "body", "status", "field"),
    [
        ("viewer", {"mode": "flood", "municipalities": ["talant"]}, 403, None),
        ("op2", {"mode": "flood", "municipalities": ["talant", "dijon"]}, 403, "municipality"),
        ("operator", {"mode": "tsunami", "municipalities": ["talant"]}, 422, "mode"),
        ("operator", {"mode": "flood", "municipalities": ["atlantis"]}, 422, "municipalities"),
        ("operator", {"mode": "flood", "municipalities": []}, 422, "municipalities"),
        ("operator", {"mode": "flood", "municipalities": "talant"}, 422, "municipalities"),
        ("operator", {"mode": "flood", "municipalities": ["talant"], "replace": "yes"}, 422,
         "replace"),
        ("operator", {"mode": "flood", "municipality": ["talant"]}, 422, "municipality"),
        ("operator", {"mode": "flood", "municipalities": ["talant", "dijon"]}, 409,
         "municipalities"),
    ],
)
def test_post_refusals(users: UserRegistry, who: str, body: dict[str, Any], status: int,
                       field: str | None) -> None:
    response = static_client(users).post("/api/v1/crisis", json=body, headers=bearer(who))
    assert response.status_code == status, response.get_json()
    assert response.get_json().get("field") == field
    if status == 409:
        assert "dijon already have a crisis plan" in response.get_json()["error"]


def test_post_answers_202_with_the_activation_id(users: UserRegistry) -> None:
    client = static_client(users)
    for who, body in [("op2", {"mode": "flood", "municipalities": ["talant"]}),
                      ("operator", {"mode": "flood", "municipalities": ["dijon"],
                                    "replace": True}),
                      ("operator", {"mode": "normal", "municipalities": ["dijon", "talant"]})]:
        response = client.post("/api/v1/crisis", json=body, headers=bearer(who))
        assert response.status_code == 202, response.get_json()
        activation = response.get_json()["activation_id"]
        assert response.headers["Location"].endswith(f"/api/v1/commands/{activation}")


# -- the runtime's backend: the read model and the journal in Redis ------------------------


@pytest.fixture(scope="module")
def inventory() -> Inventory:
    return parse_inventory(generate_demo(scale=0.05, seed=5), "<demo>")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, inventory: Inventory) -> Iterator[Service]:
    server = EmbeddedRedis(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    svc = Service(inventory, ServiceOptions(redis_url=server.url, mqtt_url="mqtt://127.0.0.1:1",
                                            namespace=f"k{uuid.uuid4().hex[:8]}"))
    svc.start_servers()
    try:
        yield svc
    finally:
        svc.stop()
        server.stop()


def test_runtime_backend_reads_the_model_and_journals_decisions(
        service: Service, users: UserRegistry) -> None:
    assert READ_MODEL == CRISIS_READ_MODEL
    record = next(c for c in service.coordinators if c.id == "crisis")
    assert record.attrs["modes"] == ("flood", "snow")
    keys = StoreKeys(service.options.namespace)
    r = redis.Redis.from_url(service.redis_url)
    try:
        r.set(keys.blob(f"view:{CRISIS_READ_MODEL}"),
              pack({"ts": 1.0, "municipalities": {"dijon": SNOW}}))
    finally:
        r.close()
    client = create_app(RuntimeBackend(service), users, secret_key=b"k" * 32).test_client()
    rows = client.get("/api/v1/crisis", headers=bearer("viewer")).get_json()
    assert set(rows) == {m.slug for m in service.inventory.municipalities}
    assert rows["dijon"] == SNOW and rows["talant"]["mode"] == "normal"

    refused = client.post("/api/v1/crisis", json={"mode": "flood",
                                                   "municipalities": ["talant", "dijon"]},
                          headers=bearer("operator"))
    assert refused.status_code == 409 and "dijon" in refused.get_json()["error"]
    ok = client.post("/api/v1/crisis", json={"mode": "flood", "municipalities": ["talant"]},
                     headers=bearer("operator"))
    assert ok.status_code == 202, ok.get_json()
    assert service.store is not None
    cmd = service.store.get_command(ok.get_json()["activation_id"])
    assert (cmd.target, cmd.action, dict(cmd.params), cmd.caller) == (
        "crisis", "activate", {"mode": "flood", "municipalities": ["talant"], "replace": False},
        "user:operator:operator")
    end = client.post("/api/v1/crisis", json={"mode": "normal", "municipalities": ["dijon"]},
                      headers=bearer("operator"))
    assert end.status_code == 202
    cmd = service.store.get_command(end.get_json()["activation_id"])
    assert (cmd.action, dict(cmd.params)) == ("deactivate", {"municipalities": ["dijon"]})
    trail, _ = service.store.page("audit", limit=5)
    assert {row["action"] for row in trail} >= {"crisis.activate", "crisis.deactivate"}
