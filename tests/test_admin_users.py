"""Users managed through the API and the page, and desks enforced on reads and commands.

The app runs on the runtime's own backend and a real Redis (no Ray, no broker:
nothing reads the journal), its users kept in that Redis.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from actors.registry import BEHAVIOURS
from admin_web import auth, create_app
from admin_web.auth import Role, UserRegistry
from admin_web.desks import BUILTIN_SOURCE, DeskError, builtin_desks, parse_desks
from runtime.demo_inventory import generate_demo
from runtime.errors import InvalidCommandError
from runtime.inventory import Inventory, parse_inventory
from runtime.service import RuntimeBackend, Service, ServiceOptions
from runtime.users import RedisUserRecords

ADMIN_PASSWORD = "the-admins-password"


@pytest.fixture(scope="module")
def inventory() -> Inventory:
    return parse_inventory(generate_demo(scale=0.05, seed=2), "<demo>")


@pytest.fixture(scope="module")
def service(shared_redis_url: str, inventory: Inventory) -> Iterator[Service]:
    svc = Service(inventory, ServiceOptions(redis_url=shared_redis_url,
                                            mqtt_url="mqtt://127.0.0.1:1",
                                            namespace=f"a{uuid.uuid4().hex[:8]}"))
    svc.start_servers()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def tokens(service: Service) -> dict[str, str]:
    """The users of the module (in Redis) and their tokens: an admin, operators with
    desks, one without, a viewer."""
    users = registry(service)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(auth, "SCRYPT_N", 2**8)
        out = {"admin": users.add("admin", Role.ADMIN, password=ADMIN_PASSWORD)[1]}
        for name, desks in (("traffic", ["traffic"]), ("security", ["security"]),
                            ("snow", ["snow"]), ("calls", ["citizen_calls"]), ("free", [])):
            out[name] = users.add(name, Role.OPERATOR, desks=desks)[1]
        out["viewer"] = users.add("viewer", Role.VIEWER)[1]
    return out


def registry(service: Service) -> UserRegistry:
    return UserRegistry(RedisUserRecords(service.redis_url,
                                         namespace=service.options.namespace))


def make_app(service: Service) -> Flask:
    """One admin-web process: its own registry on the shared store."""
    return create_app(RuntimeBackend(service), registry(service), secret_key=b"k" * 32)


@pytest.fixture(scope="module")
def client(service: Service, tokens: dict[str, str]) -> FlaskClient:
    return make_app(service).test_client()


def call(client: FlaskClient, method: str, path: str, who: str, tokens: dict[str, str],
         body: Any = None, **headers: str) -> tuple[int, Any]:
    response = client.open(path, method=method, json=body,
                           headers={"Authorization": f"Bearer {tokens[who]}", **headers})
    return response.status_code, response.get_json(silent=True)


def first(inventory: Inventory, kind: str) -> str:
    return next(eq.id for eq in inventory.equipment if eq.kind == kind)


# -- desks as data ----------------------------------------------------------------------------


def test_the_shipped_desks_name_actions_their_kinds_have() -> None:
    book = builtin_desks()
    assert book.names() == ["security", "municipal_police", "urban_supervision", "traffic",
                            "citizen_calls", "snow"]
    for desk in book.desks.values():
        for kind, actions in desk.commands.items():
            for action in actions:
                try:
                    BEHAVIOURS[kind].validate_command(action, {})
                except InvalidCommandError as exc:
                    assert exc.code != "unknown_action", (desk.name, kind, action)


def test_a_bad_desk_file_is_refused_with_file_and_line() -> None:
    text = ('[view.video]\nkinds = ["camera"]\n\n[desk.traffic]\n'
            'commands = { crossroad = ["set"], camera = ["set"] }\nviews = ["radar"]\n'
            'crisis = ["rain"]\nrequests = "yes"\nteam = 3\n')
    with pytest.raises(DeskError) as refused:
        parse_desks(text, "desks.toml")
    assert refused.value.issues == [
        "desks.toml:5: desk.traffic.commands.camera: commands camera in the video view: "
        "add 'video' to the desk's views",
        "desks.toml:6: desk.traffic.views[0]: unknown view \"radar\" (known: video)",
        "desks.toml:7: desk.traffic.crisis[0]: unknown crisis mode \"rain\" (known: snow, "
        "flood)",
        "desks.toml:8: desk.traffic.requests: expected true or false, got string \"yes\"",
        "desks.toml:9: desk.traffic.team: unknown key 'team' (expected one of title, views, "
        "commands, crisis, requests)",
    ]
    assert BUILTIN_SOURCE == "admin_web/desks.toml"


def test_hidden_fields_and_events_leave_the_rest() -> None:
    from admin_web.auth import User, hash_password

    user = User("t", Role.OPERATOR, frozenset(), hash_password("x" * 12),
                desks=frozenset({"traffic"}))
    hidden = builtin_desks().hidden(user)
    record = {"id": "b1", "kind": "building",
              "reported": {"door.1.locked": {"value": True}, "door": 1, "fire": {"value": 0},
                           "doorbell": 2},
              "desired": {"door.2.locked": True, "mode": "occupied"},
              "events": [{"event": "door_command"}, {"event": "fire"}]}
    shown = hidden.equipment(record)
    assert set(shown["reported"]) == {"fire", "doorbell"}
    assert shown["desired"] == {"mode": "occupied"}
    assert shown["events"] == [{"event": "fire"}]
    assert builtin_desks().hidden(
        User("s", Role.OPERATOR, frozenset(), user.password_hash,
             desks=frozenset({"security"}))).equipment(record) == record


# -- desks enforced through the API ----------------------------------------------------------


def test_the_traffic_desk_commands_crossroads_not_building_doors(
        client: FlaskClient, tokens: dict[str, str], inventory: Inventory) -> None:
    building, crossroad = first(inventory, "building"), first(inventory, "crossroad")
    door = {"action": "unlock", "params": {"door": 1, "reason": "a delivery"}}
    status, body = call(client, "POST", f"/api/v1/equipment/{building}/commands", "traffic",
                        tokens, door)
    assert status == 403 and body == {
        "error": "desk(s) traffic do not command unlock on building", "field": "action"}
    status, _ = call(client, "POST", f"/api/v1/equipment/{crossroad}/commands", "traffic",
                     tokens, {"action": "set", "params": {"plan": 2}})
    assert status == 202
    # The security desk owns the doors; an operator without a desk keeps his role's reach.
    for who in ("security", "free", "admin"):
        status, body = call(client, "POST", f"/api/v1/equipment/{building}/commands", who,
                            tokens, door)
        assert status == 202, (who, body)
    status, _ = call(client, "POST", f"/api/v1/equipment/{crossroad}/commands", "security",
                     tokens, {"action": "set", "params": {"plan": 2}})
    assert status == 403


def test_the_security_desk_reads_cameras_the_traffic_desk_does_not(
        client: FlaskClient, tokens: dict[str, str], inventory: Inventory) -> None:
    camera = first(inventory, "camera")
    for who in ("security", "free", "viewer", "admin"):
        status, body = call(client, "GET", f"/api/v1/equipment/{camera}", who, tokens)
        assert status == 200 and body["id"] == camera, who
        status, body = call(client, "GET", "/api/v1/equipment?kind=camera", who, tokens)
        assert status == 200 and body and {i["kind"] for i in body} == {"camera"}
    status, body = call(client, "GET", f"/api/v1/equipment/{camera}", "traffic", tokens)
    assert status == 403 and "video" in body["error"] and "traffic" in body["error"]
    status, _ = call(client, "GET", "/api/v1/equipment?kind=camera", "traffic", tokens)
    assert status == 403
    status, body = call(client, "GET", "/api/v1/equipment?limit=1000", "traffic", tokens)
    kinds = {i["kind"] for i in body}
    assert status == 200 and "camera" not in kinds and "access_terminal" not in kinds
    assert "crossroad" in kinds and "building" in kinds
    status, _ = call(client, "GET", "/api/v1/events?kind=camera", "traffic", tokens)
    assert status == 403
    status, _ = call(client, "GET", f"/api/v1/events?entity={camera}", "traffic", tokens)
    assert status == 403


def test_crisis_modes_and_citizen_calls_belong_to_their_desks(
        client: FlaskClient, tokens: dict[str, str]) -> None:
    snow = {"mode": "snow", "municipalities": ["talant"]}
    status, body = call(client, "POST", "/api/v1/crisis", "traffic", tokens, snow)
    assert status == 403 and body["field"] == "mode" and "snow" in body["error"]
    status, body = call(client, "POST", "/api/v1/crisis", "snow", tokens, snow)
    assert status == 202, body
    call_in = {"category": "pothole", "description": "a hole", "lat": 47.322, "lon": 5.041}
    status, body = call(client, "POST", "/api/v1/requests", "traffic", tokens, call_in)
    assert status == 403 and "citizens' calls" in body["error"]
    status, _ = call(client, "POST", "/api/v1/requests", "calls", tokens, call_in)
    assert status != 403


# -- users through the API ------------------------------------------------------------------


def test_admins_manage_users_through_the_api(
        client: FlaskClient, tokens: dict[str, str], service: Service) -> None:
    name = f"u{uuid.uuid4().hex[:6]}"
    status, body = call(client, "POST", "/api/v1/users", "admin", tokens,
                        {"name": name, "role": "operator", "municipalities": ["dijon"],
                         "desks": ["traffic"]})
    assert status == 201, body
    assert body["user"]["desks"] == ["traffic"] and body["user"]["version"] == 1
    assert len(body["password"]) >= 16 and len(body["token"]) >= 40
    assert "password_hash" not in json.dumps(body["user"]) and "digest" not in json.dumps(body)
    tokens[name] = body["token"]
    # Another admin-web process sees him at once, and his token works there.
    other = make_app(service).test_client()
    assert call(other, "GET", "/api/v1/equipment?limit=1", name, tokens)[0] == 200
    status, body = call(other, "GET", f"/api/v1/users/{name}", "admin", tokens)
    assert status == 200 and body["municipalities"] == ["dijon"]
    # Desks changed by one admin; a stale If-Match by another is refused whole.
    response = client.patch(f"/api/v1/users/{name}", json={"desks": ["security", "snow"]},
                            headers={"Authorization": f"Bearer {tokens['admin']}",
                                     "If-Match": '"1"'})
    assert response.status_code == 200 and response.headers["ETag"] == '"2"'
    status, body = call(other, "PATCH", f"/api/v1/users/{name}", "admin", tokens,
                        {"role": "viewer"}, **{"If-Match": '"1"'})
    assert status == 412 and "changed meanwhile" in body["error"]
    assert registry(service).get(name).role is Role.OPERATOR
    status, body = call(client, "PATCH", f"/api/v1/users/{name}", "admin", tokens,
                        {"desks": ["bakery"]})
    assert status == 422 and body["field"] == "desks"
    # Disabled: his token stops in every process at once.
    status, body = call(client, "PATCH", f"/api/v1/users/{name}", "admin", tokens,
                        {"disabled": True})
    assert status == 200 and body["disabled"] is True
    assert call(other, "GET", "/api/v1/equipment?limit=1", name, tokens)[0] == 401
    call(client, "PATCH", f"/api/v1/users/{name}", "admin", tokens, {"disabled": False})
    # Tokens: issued (shown once), revoked at once.
    status, body = call(client, "POST", f"/api/v1/users/{name}/tokens", "admin", tokens,
                        {"label": "script"})
    assert status == 201
    tokens["script"] = body["token"]
    assert call(other, "GET", "/api/v1/equipment?limit=1", "script", tokens)[0] == 200
    assert client.delete(f"/api/v1/users/{name}/tokens/{body['id']}",
                         headers={"Authorization": f"Bearer {tokens['admin']}"}
                         ).status_code == 204
    assert call(other, "GET", "/api/v1/equipment?limit=1", "script", tokens)[0] == 401
    # Passwords: a demo's is refused, a reset is shown once.
    status, body = call(client, "POST", f"/api/v1/users/{name}/password", "admin", tokens,
                        {"password": "viewer-password"})
    assert status == 422 and "demo" in body["error"]
    status, body = call(client, "POST", f"/api/v1/users/{name}/password", "admin", tokens)
    assert status == 200 and len(body["password"]) >= 16
    # Listing is for admins only.
    assert call(client, "GET", "/api/v1/users", "free", tokens)[0] == 403
    status, body = call(client, "GET", "/api/v1/users", "admin", tokens)
    assert status == 200 and name in [u["name"] for u in body]
    status, body = call(client, "GET", "/api/v1/desks", "viewer", tokens)
    assert status == 200 and [d["name"] for d in body["desks"]][3] == "traffic"


def test_every_change_of_a_user_is_audited_without_a_secret(
        client: FlaskClient, tokens: dict[str, str]) -> None:
    name = f"v{uuid.uuid4().hex[:6]}"
    status, created = call(client, "POST", "/api/v1/users", "admin", tokens,
                           {"name": name, "role": "viewer", "password": "a-chosen-secret-1"})
    assert status == 201 and "password" not in created
    status, issued = call(client, "POST", f"/api/v1/users/{name}/tokens", "admin", tokens)
    call(client, "POST", f"/api/v1/users/{name}/password", "admin", tokens,
         {"password": "another-secret-2"})
    call(client, "PATCH", f"/api/v1/users/{name}", "admin", tokens, {"role": "superuser"})
    status, trail = call(client, "GET", "/api/v1/audit?limit=50", "admin", tokens)
    mine = [(e["action"], e["outcome"]) for e in trail if e["target"] == name]
    assert mine == [("user.update", "refused"), ("user.password", "ok"),
                    ("user.token_issue", "ok"), ("user.add", "ok")]
    text = json.dumps(trail)
    for secret in ("a-chosen-secret-1", "another-secret-2", created["token"], issued["token"]):
        assert secret not in text


def test_the_users_page_adds_a_user_and_shows_his_secrets_once(
        client: FlaskClient, tokens: dict[str, str], service: Service) -> None:
    page = make_app(service).test_client()
    form = page.get("/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert csrf
    assert page.post("/login", data={"name": "admin", "password": ADMIN_PASSWORD,
                                     "csrf_token": csrf.group(1)}).status_code == 302
    html = page.get("/users").get_data(as_text=True)
    assert 'id="user-traffic"' in html and "Add a user" in html
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert csrf
    name = f"p{uuid.uuid4().hex[:6]}"
    response = page.post("/users", data={"name": name, "role": "operator",
                                         "municipalities": "dijon, talant",
                                         "desks": ["security", "snow"],
                                         "csrf_token": csrf.group(1)})
    html = response.get_data(as_text=True)
    token = re.search(r'id="issued-token">([^<]+)<', html)
    assert response.status_code == 201 and token
    user = registry(service).by_token(token.group(1))
    assert user.desks == frozenset({"security", "snow"})
    assert user.municipalities == frozenset({"dijon", "talant"})
    response = page.post(f"/users/{name}", data={"op": "disable", "csrf_token": csrf.group(1)})
    assert response.status_code == 200 and registry(service).get(name).disabled
    assert page.post(f"/users/{name}", data={"op": "enable"}).status_code == 400  # no CSRF
    viewer_page = make_app(service).test_client()
    assert viewer_page.get("/users").status_code == 302  # to the login form


def test_desks_act_on_the_alarms_of_what_they_command() -> None:
    from admin_web import StaticBackend
    from runtime.users import MemoryUserRecords

    users = UserRegistry(MemoryUserRecords())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(auth, "SCRYPT_N", 2**8)
        tokens = {name: users.add(name, Role.OPERATOR, desks=desks)[1]
                  for name, desks in (("traffic", ["traffic"]), ("police", ["municipal_police"]),
                                      ("free", []))}
    alarms = [{"id": f"al-{n}", "source": source, "condition": "x", "priority": "high",
               "state": "unacknowledged", "active": True, "municipality": "dijon",
               "raised_ts": 1.0} for n, source in enumerate(("cam-1", "xr-1", "flood-1"))]
    backend = StaticBackend(equipment={"cam-1": "dijon", "xr-1": "dijon"},
                            kinds={"cam-1": "camera", "xr-1": "crossroad"}, alarms=alarms)
    client = create_app(backend, users, secret_key=b"k" * 32).test_client()
    expected = {("traffic", "al-0"): 403, ("traffic", "al-1"): 202, ("traffic", "al-2"): 202,
                ("police", "al-0"): 202, ("police", "al-1"): 403, ("free", "al-0"): 202}
    for (who, alarm), status in expected.items():
        got, body = call(client, "POST", f"/api/v1/alarms/{alarm}/ack", who, tokens)
        assert got == status, (who, alarm, body)
    got, body = call(client, "POST", "/api/v1/alarms/al-0/ack", "traffic", tokens)
    assert body["error"] == "desk(s) traffic do not handle camera alarms"
    # Reading them is not acting: every alarm stays listed.
    assert len(call(client, "GET", "/api/v1/alarms", "traffic", tokens)[1]) == 3
