"""Open311 API keys issued and revoked by an admin, on the runtime's backend and a real Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from admin_web import UserRegistry, create_app
from admin_web.auth import Role
from admin_web.open311 import open311_blueprint
from runtime.demo_inventory import generate_demo
from runtime.embedded import EmbeddedRedis
from runtime.inventory import parse_inventory
from runtime.service import RuntimeBackend, Service, ServiceOptions

TOKENS = {"admin": "admin-token-" + "a" * 24, "operator": "operator-token-" + "o" * 24}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    redis = EmbeddedRedis(Path(tmp_path_factory.mktemp("redis")))
    redis.start()
    inventory = parse_inventory(generate_demo(scale=0.05, seed=3), "<demo>")
    svc = Service(inventory, ServiceOptions(redis_url=redis.url, mqtt_url="mqtt://127.0.0.1:1",
                                            namespace=f"k{uuid.uuid4().hex[:8]}"))
    svc.start_servers()
    try:
        yield svc
    finally:
        svc.stop()
        redis.stop()


@pytest.fixture(scope="module")
def client(service: Service) -> FlaskClient:
    users = UserRegistry()
    users.add("admin", Role.ADMIN, token=TOKENS["admin"])
    users.add("operator", Role.OPERATOR, token=TOKENS["operator"])
    backend = RuntimeBackend(service)
    app = create_app(backend, users, secret_key=b"k" * 32)
    app.register_blueprint(open311_blueprint(backend.open311_backend()))
    return app.test_client()


def call(client: FlaskClient, method: str, path: str, who: str = "admin",
         body: Any = None) -> Any:
    return client.open(path, method=method, json=body,
                       headers={"Authorization": f"Bearer {TOKENS[who]}"})


def citizen_post(client: FlaskClient, key: str | None) -> Any:
    form = {"service_code": "pothole", "lat": "47.3220", "long": "5.0415",
            "description": "a pothole in the street"}
    if key is not None:
        form["api_key"] = key
    return client.post("/open311/v2/requests.json", data=form)


def test_an_admin_issues_a_key_an_app_uses_and_an_admin_revokes(client: FlaskClient) -> None:
    got = call(client, "POST", "/api/v1/open311/keys", body={"application": "dijon-app"})
    assert got.status_code == 201, got.get_json()
    key = got.get_json()["api_key"]
    assert got.get_json()["application"] == "dijon-app" and len(key) > 30
    assert "dijon-app" in call(client, "GET", "/api/v1/open311/keys").get_json()["applications"]
    posted = citizen_post(client, key)
    assert posted.status_code == 201, posted.get_json()
    assert posted.get_json()[0]["service_request_id"]
    # Issuing again replaces the key: the first stops working at once.
    second = call(client, "POST", "/api/v1/open311/keys",
                  body={"application": "dijon-app"}).get_json()["api_key"]
    assert citizen_post(client, key).status_code == 403
    assert citizen_post(client, second).status_code == 201
    assert call(client, "DELETE", "/api/v1/open311/keys/dijon-app").status_code == 204
    assert citizen_post(client, second).status_code == 403
    assert call(client, "DELETE", "/api/v1/open311/keys/dijon-app").status_code == 404
    assert "dijon-app" not in call(client, "GET",
                                   "/api/v1/open311/keys").get_json()["applications"]
    # Every issue and revocation is audited, never with the key.
    trail = call(client, "GET", "/api/v1/audit?limit=50").get_json()
    mine = [e for e in trail if str(e.get("action", "")).startswith("open311.key")]
    assert [e["action"] for e in mine].count("open311.key_issue") == 2
    assert any(e["action"] == "open311.key_revoke" and e["outcome"] == "ok" for e in mine)
    assert all(e.get("target") == "dijon-app" for e in mine)
    assert key not in str(trail) and second not in str(trail)


def test_keys_are_an_admins_and_bad_names_are_refused(client: FlaskClient) -> None:
    for method, path in (("GET", "/api/v1/open311/keys"), ("POST", "/api/v1/open311/keys"),
                         ("DELETE", "/api/v1/open311/keys/x")):
        assert call(client, method, path, who="operator",
                    body={"application": "x"}).status_code == 403
        assert client.open(path, method=method).status_code == 401
    for body, field in (({"application": ""}, "application"), ({"application": 7}, "application"),
                        ({"application": "a\nb"}, "application"),
                        ({"application": "a", "scope": "all"}, "scope")):
        got = call(client, "POST", "/api/v1/open311/keys", body=body)
        assert got.status_code == 422 and got.get_json()["field"] == field, got.get_json()
