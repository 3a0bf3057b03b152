"""History and audit: the audit trail and the event stream, written and paged on a real Redis.

The admin web runs on the real :class:`RuntimeBackend` and its store (no Ray:
the events a host would append are appended here through the hosts' own
:class:`RedisStore`).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from admin_web import Role, UserRegistry, create_app
from runtime.audit import MAX_VALUE_BYTES, AuditRecord
from runtime.demo_inventory import generate_demo
from runtime.embedded import EmbeddedRedis
from runtime.inventory import Inventory, parse_inventory
from runtime.service import RuntimeBackend, Service, ServiceOptions
from runtime.store import RedisStore, StoreKeys, SyncStore
from tests.conftest import poll

TOKENS = {name: f"{name}-token-{name[0] * 20}" for name in ("admin", "operator", "viewer")}
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedRedis(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def inventory() -> Inventory:
    return parse_inventory(generate_demo(scale=0.05, seed=4), "<demo>")


@pytest.fixture(scope="module")
def towns(inventory: Inventory) -> list[str]:
    return sorted({eq.municipality for eq in inventory.equipment})


@pytest.fixture(scope="module")
def service(redis_url: str, inventory: Inventory) -> Iterator[Service]:
    svc = Service(inventory, ServiceOptions(redis_url=redis_url, mqtt_url="mqtt://127.0.0.1:1",
                                            namespace=f"h{uuid.uuid4().hex[:8]}"))
    svc.start_servers()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def backend(service: Service) -> RuntimeBackend:
    return RuntimeBackend(service)


@pytest.fixture(scope="module")
def client(backend: RuntimeBackend, towns: list[str]) -> FlaskClient:
    users = UserRegistry()
    users.add("admin", Role.ADMIN, password=PASSWORD, token=TOKENS["admin"])
    users.add("operator", Role.OPERATOR, municipalities=[towns[0]], password=PASSWORD,
              token=TOKENS["operator"])
    users.add("viewer", Role.VIEWER, token=TOKENS["viewer"])
    return create_app(backend, users, secret_key=b"k" * 32).test_client()


def bearer(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[who]}"}


def get(client: FlaskClient, path: str, who: str = "admin") -> tuple[int, Any, str | None]:
    response = client.get(path, headers=bearer(who))
    return response.status_code, response.get_json(), response.headers.get("X-Next-Before")


def trail(client: FlaskClient, user: str, limit: int = 20) -> list[dict[str, Any]]:
    status, body, _ = get(client, f"/api/v1/audit?user={user}&limit={limit}")
    assert status == 200, body
    return list(body)


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match is not None
    return match.group(1)


def login(client: FlaskClient, name: str, password: str) -> int:
    token = csrf_from(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"name": name, "password": password,
                                       "csrf_token": token, "next": "/"}).status_code


# -- the audit trail -----------------------------------------------------------------------


def test_login_failed_login_and_logout_are_audited(client: FlaskClient) -> None:
    started = time.time()
    assert login(client, "operator", "wrong password") == 401
    assert login(client, "operator", PASSWORD) == 302
    html = client.get("/").get_data(as_text=True)
    assert client.post("/logout", data={"csrf_token": csrf_from(html)}).status_code == 302
    logout, ok, refused = trail(client, "operator")[:3]
    assert [refused["action"], ok["action"], logout["action"]] == ["login", "login", "logout"]
    assert (refused["outcome"], refused["code"]) == ("refused", "bad_credentials")
    assert (ok["outcome"], ok["role"]) == ("ok", "operator")
    assert (logout["outcome"], logout["role"]) == ("ok", "operator")
    for entry in (refused, ok, logout):
        assert entry["user"] == "operator"
        assert entry["source"] == "127.0.0.1"
        assert started - 1 <= entry["ts"] <= time.time() + 1


def test_an_invalid_api_token_is_a_failed_login(client: FlaskClient) -> None:
    response = client.get("/api/v1/tree", headers={"Authorization": "Bearer " + "x" * 30})
    assert response.status_code == 401
    entry = trail(client, "")[0]
    assert (entry["action"], entry["outcome"], entry["code"]) == (
        "login.token", "refused", "invalid_token")


def test_command_submissions_are_audited_accepted_and_refused(
    client: FlaskClient, inventory: Inventory, towns: list[str]
) -> None:
    mine = next(eq.id for eq in inventory.equipment
                if eq.kind == "lighting_circuit" and eq.municipality == towns[0])
    other = next(eq.id for eq in inventory.equipment if eq.municipality != towns[0])

    def submit(entity: str, body: Any) -> int:
        return client.post(f"/api/v1/equipment/{entity}/commands", json=body,
                           headers=bearer("operator")).status_code

    assert submit(mine, {"action": "set", "params": {"dim": 30}, "idempotency_key": "a1"}) == 202
    assert submit(mine, {"action": "set", "params": {"dim": 150}}) == 422
    assert submit(mine, {"action": "x" * 100_000}) == 422
    assert submit(other, {"action": "set", "params": {"dim": 30}}) == 404
    scope, huge, out_of_range, accepted = trail(client, "operator")[:4]
    assert all(e["action"] == "command.submit" and e["role"] == "operator"
               for e in (scope, huge, out_of_range, accepted))
    assert accepted["outcome"] == "ok" and accepted["target"] == mine
    assert accepted["params"] == {"action": "set", "params": {"dim": 30},
                                  "idempotency_key": "a1"}
    assert accepted["after"]["command_id"].startswith("c-")
    assert accepted["after"]["status"] == "queued"
    assert (out_of_range["outcome"], out_of_range["code"]) == ("refused", "out_of_range")
    assert "150" in out_of_range["detail"]
    assert out_of_range["params"] == {"action": "set", "params": {"dim": 150}}
    # What broke the limits is not kept: the trail says why, in a line.
    assert (huge["code"], huge["params"]) == ("too_long", None)
    assert len(json.dumps(huge)) < 1000
    assert (scope["outcome"], scope["code"], scope["target"]) == ("refused", "404", other)


def test_refusals_before_any_view_are_in_the_stored_trail(
        client: FlaskClient, service: Service, towns: list[str]) -> None:
    # A role refused (403) and a body refused by its shape: no view recorded them, the app did.
    assert client.post("/api/v1/open311/keys", json={"application": "x", "api_key": "s3cret"},
                       headers=bearer("viewer")).status_code == 403
    assert client.post("/api/v1/crisis", json={"mode": "snow", "municipalities": towns[0]},
                       headers=bearer("operator")).status_code == 422
    rows, _ = service.store.page("audit", limit=50)  # straight from the Redis stream
    viewer = next(r for r in rows if r["user"] == "viewer" and r["action"] == "http.post")
    crisis = next(r for r in rows if r["user"] == "operator" and r["action"] == "http.post")
    assert (viewer["role"], viewer["outcome"], viewer["code"]) == ("viewer", "refused", "403")
    assert viewer["target"] == "/api/v1/open311/keys" and "s3cret" not in str(viewer)
    assert json.loads(viewer["params"])["body"] == {"application": "x", "api_key": "***"}
    assert (crisis["outcome"], crisis["code"], crisis["source"]) == ("refused", "422",
                                                                     "127.0.0.1")


def test_the_audit_trail_is_for_admins_only(client: FlaskClient) -> None:
    assert client.get("/api/v1/audit").status_code == 401
    assert get(client, "/api/v1/audit", who="operator")[0] == 403
    assert get(client, "/api/v1/audit", who="viewer")[0] == 403
    # Append-only: the API has nothing that changes it.
    for method in ("POST", "PUT", "DELETE"):
        assert client.open("/api/v1/audit", method=method, headers=bearer("admin")).status_code \
            == 405


def test_the_audit_trail_pages_newest_first(client: FlaskClient, backend: RuntimeBackend) -> None:
    t0 = time.time()
    for n in range(25):
        backend.audit(AuditRecord(user="pager", action="crisis.switch", target=f"t{n}",
                                  ts=t0 + n, params={"n": n}, before={"mode": "normal"},
                                  after={"mode": "snow"}))
    seen: list[dict[str, Any]] = []
    cursor: str | None = ""
    pages = 0
    while cursor is not None:
        query = "/api/v1/audit?user=pager&limit=10" + (f"&before={cursor}" if cursor else "")
        status, body, cursor = get(client, query)
        assert status == 200, body
        seen += body
        pages += 1
    assert pages == 3
    assert [e["target"] for e in seen] == [f"t{n}" for n in range(24, -1, -1)]
    assert seen[0]["before"] == {"mode": "normal"} and seen[0]["after"] == {"mode": "snow"}
    ids = [e["id"] for e in seen]
    assert ids == sorted(ids, key=lambda i: tuple(int(p) for p in i.split("-")), reverse=True)
    # since is by the time the entry was written.
    status, body, _ = get(client, f"/api/v1/audit?user=pager&since={time.time() + 60}")
    assert (status, body) == (200, [])
    status, body, _ = get(client, f"/api/v1/audit?user=pager&since={t0 - 60}&limit=1000")
    assert len(body) == 25


def test_the_audit_trail_filters_by_action_family_outcome_and_until(
        client: FlaskClient, backend: RuntimeBackend) -> None:
    for action, outcome in [("alarm.ack", "ok"), ("alarm.shelve", "refused"),
                            ("alarms.export", "ok"), ("alarm", "ok")]:
        backend.audit(AuditRecord(user="filtered", action=action, outcome=outcome,
                                  ts=time.time(), code="" if outcome == "ok" else "403"))
    cut = time.time()
    # The next entry is written in a later millisecond than ``cut`` (its stream id's).
    poll(lambda: time.time() * 1000 > math.ceil(cut * 1000) + 1, 1, what="a later ms")
    backend.audit(AuditRecord(user="filtered", action="alarm.unshelve", ts=time.time()))

    def actions(query: str) -> list[str]:
        status, body, _ = get(client, f"/api/v1/audit?user=filtered&{query}")
        assert status == 200, body
        return [e["action"] for e in body]

    assert actions("action=alarm") == ["alarm.unshelve", "alarm", "alarm.shelve", "alarm.ack"]
    assert actions("action=alarm.ack") == ["alarm.ack"]
    assert actions("outcome=refused") == ["alarm.shelve"]
    assert actions(f"until={cut}") == ["alarm", "alarms.export", "alarm.shelve", "alarm.ack"]
    assert actions(f"action=alarm&outcome=ok&until={cut}") == ["alarm", "alarm.ack"]
    # until and a cursor together: the older bound of the two.
    first, = trail(client, "filtered", limit=1)
    assert first["action"] == "alarm.unshelve"
    status, body, _ = get(client, f"/api/v1/audit?user=filtered&before={first['id']}"
                                  f"&until={cut - 3600}")
    assert (status, body) == (200, [])


def test_an_oversized_value_is_noted_not_kept(backend: RuntimeBackend, client: FlaskClient) -> None:
    backend.audit(AuditRecord(user="big", action="request.create", ts=time.time(),
                              params={"description": "x" * (2 * MAX_VALUE_BYTES)}))
    entry = trail(client, "big")[0]
    assert entry["params"] == {"omitted": f"{2 * MAX_VALUE_BYTES + 18} bytes"}


@pytest.mark.parametrize(
    ("query", "field"),
    [("limit=0", "limit"), ("limit=1001", "limit"), ("limit=x", "limit"),
     ("since=abc", "since"), ("since=nan", "since"), ("since=-1", "since"),
     ("before=12", "before"), ("before=1-2-3", "before"), ("user=" + "u" * 201, "user")],
)
def test_bad_audit_queries_are_422(client: FlaskClient, query: str, field: str) -> None:
    status, body, _ = get(client, f"/api/v1/audit?{query}")
    assert status == 422 and body["field"] == field


def test_the_audit_stream_is_trimmed_by_age(redis_url: str) -> None:
    store = SyncStore(redis_url, namespace=f"r{uuid.uuid4().hex[:8]}", retention_s=1.0)
    try:
        for n in range(250):
            store.append_audit(AuditRecord(user="u", action="a", ts=time.time(),
                                           params={"n": n}).to_fields())
        raw = redis.Redis.from_url(redis_url)
        assert raw.xlen(store.keys.audit) == 250  # never by count
        time.sleep(1.2)
        store.append_audit(AuditRecord(user="u", action="last", ts=time.time()).to_fields())
        # Whole stream nodes (100 entries) older than a second are gone.
        assert raw.xlen(store.keys.audit) <= 101
        rows, _ = store.page("audit", limit=1)
        assert rows[0]["action"] == "last"
        raw.close()
    finally:
        store.close()


# -- the event stream ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def events(service: Service, inventory: Inventory, towns: list[str]) -> dict[str, Any]:
    """Events of equipment in two municipalities and of a host, as hosts append them."""
    a = [eq for eq in inventory.equipment if eq.municipality == towns[0]][:3]
    b = [eq for eq in inventory.equipment if eq.municipality == towns[1]][:2]
    rows: list[dict[str, Any]] = []
    for n in range(30):
        eq = (a + b)[n % 5]
        rows.append({"ts": time.time(), "entity": eq.id, "event": "setpoint" if n % 2 else "alarm",
                     "n": n})
    rows.append({"ts": time.time(), "entity": "host-lighting-0", "event": "host_started", "n": 30})

    async def append() -> None:
        store = RedisStore(service.redis_url, namespace=service.options.namespace)
        await store.connect()
        try:
            await store.append_events(rows)
        finally:
            await store.close()

    asyncio.run(append())
    return {"a": a, "b": b, "rows": rows}


def test_events_are_listed_newest_first_with_their_equipment(
    client: FlaskClient, events: dict[str, Any]
) -> None:
    status, body, cursor = get(client, "/api/v1/events?limit=1000", who="viewer")
    assert status == 200 and cursor is None
    assert [e["n"] for e in body] == list(range(30, -1, -1))
    first_a = events["a"][0]
    row = next(e for e in body if e["n"] == 0)
    assert (row["entity"], row["kind"], row["municipality"]) == (
        first_a.id, first_a.kind, first_a.municipality)
    assert "kind" not in body[0]  # the host's event: not equipment


def test_events_filter_by_entity_kind_event_and_since(
    client: FlaskClient, events: dict[str, Any]
) -> None:
    eq = events["a"][1]
    _, body, _ = get(client, f"/api/v1/events?entity={eq.id}", who="viewer")
    assert [e["n"] for e in body] == [n for n in range(29, -1, -1) if n % 5 == 1]
    _, body, _ = get(client, f"/api/v1/events?kind={eq.kind}&limit=1000", who="viewer")
    assert body and all(e["kind"] == eq.kind for e in body)
    _, body, _ = get(client, "/api/v1/events?event=alarm&limit=1000", who="viewer")
    assert [e["n"] for e in body] == list(range(28, -1, -2))
    _, body, _ = get(client, f"/api/v1/events?since={time.time() + 60}", who="viewer")
    assert body == []
    status, body, _ = get(client, "/api/v1/events?kind=spaceship", who="viewer")
    assert status == 422 and body["field"] == "kind"


def test_an_operator_sees_only_his_municipalities_events(
    client: FlaskClient, events: dict[str, Any], towns: list[str]
) -> None:
    status, body, _ = get(client, "/api/v1/events?limit=1000", who="operator")
    assert status == 200
    mine = {eq.id for eq in events["a"]}
    assert {e["entity"] for e in body} == mine
    assert all(e["municipality"] == towns[0] for e in body)
    assert get(client, f"/api/v1/events?entity={events['a'][0].id}", who="operator")[0] == 200
    # Another municipality's equipment, a host, nothing at all: as if they did not exist.
    for entity in (events["b"][0].id, "host-lighting-0", "no-such-thing"):
        status, body, _ = get(client, f"/api/v1/events?entity={entity}", who="operator")
        assert (status, body) == (404, {"error": "unknown equipment"})


def test_events_page_with_a_cursor(client: FlaskClient, events: dict[str, Any]) -> None:
    seen: list[int] = []
    query = "/api/v1/events?limit=7&event=setpoint"
    status, body, cursor = get(client, query, who="viewer")
    while True:
        assert status == 200
        seen += [e["n"] for e in body]
        if cursor is None:
            break
        status, body, cursor = get(client, f"{query}&before={cursor}", who="viewer")
    assert seen == list(range(29, 0, -2))
    assert client.get("/api/v1/events").status_code == 401


def test_a_page_stops_scanning_and_hands_a_cursor_back(
    service: Service, events: dict[str, Any]
) -> None:
    store = service.store
    assert store is not None
    keys = StoreKeys(service.options.namespace)
    raw = redis.Redis.from_url(service.redis_url)
    try:
        total = int(raw.xlen(keys.events))
    finally:
        raw.close()
    # One matching event, the oldest of all: a 10-entry scan finds it only page by page.
    wanted = {"event": "alarm", "n": "0"}
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    reads = 0
    while True:
        rows, cursor = store.page("events", limit=5, before=cursor, match=wanted, scan=10)
        reads += 1
        found += rows
        if cursor is None:
            break
    assert [e["n"] for e in found] == [0]
    assert reads == total // 10 + 1


def test_an_entity_that_is_not_equipment_is_scoped_by_what_its_event_says(
    client: FlaskClient, service: Service, events: dict[str, Any], towns: list[str]
) -> None:
    rows = [{"ts": time.time(), "entity": "alarms", "event": "alarm_raised",
             "municipality": town, "n": 100 + i} for i, town in enumerate(towns[:2])]

    async def append() -> None:
        store = RedisStore(service.redis_url, namespace=service.options.namespace)
        await store.connect()
        try:
            await store.append_events(rows)
        finally:
            await store.close()

    asyncio.run(append())
    _, body, _ = get(client, "/api/v1/events?event=alarm_raised", who="operator")
    assert [(e["n"], e["municipality"]) for e in body] == [(100, towns[0])]
    _, body, _ = get(client, "/api/v1/events?event=alarm_raised", who="viewer")
    assert [e["n"] for e in body] == [101, 100]
