"""The OpenAPI document of the admin web: valid OpenAPI 3.1, every route served and only
those, authentication and scoping as it states them, and answers of the shapes it gives.

The app runs on the runtime's own backend over a real Redis, its read models filled as
hosts and coordinators fill them (``tests.admin_rig``); the property-based run against
the document is ``tests/test_openapi_fuzz.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from werkzeug.test import TestResponse

from actors.alarms import CONTRACT_FIELDS as ALARM_CONTRACT_FIELDS
from actors.alarms import AlarmState
from actors.control.dispatch import PUBLIC_FIELDS as INTERVENTION_FIELDS
from admin_web import StaticBackend, UserRegistry, create_app
from admin_web.auth import Role
from admin_web.desks import builtin_desks
from admin_web.openapi import OPENAPI_PATH, OPENAPI_VERSION, openapi_document
from admin_web.users import ADD_FIELDS, CHANGE_FIELDS
from runtime.commands import CommandStatus
from runtime.open311 import PUBLIC_FIELDS as OPEN311_PUBLIC_FIELDS
from supervisors.spec import ChildStatus
from tests.admin_rig import HOME, SUBJECT, Rig, runtime_admin

METHODS = ("get", "post", "put", "patch", "delete")
#: Operations that take no bearer token: health, this document, Open311.
PUBLIC = {("/api/v1/health", "get"), ("/api/v1/openapi.json", "get")}
_DOC_URI = "urn:commandpost:openapi"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with runtime_admin(tmp_path_factory.mktemp("redis")) as rig:
        yield rig


@pytest.fixture(scope="module")
def doc(rig: Rig) -> dict[str, Any]:
    response = rig.client.get(OPENAPI_PATH)
    assert response.status_code == 200, response.data
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert isinstance(body, dict)
    return body


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def fill(path: str, **values: str) -> str:
    """``path`` with each ``{name}`` replaced (``values``, else ``x``; ``fmt``: json)."""
    defaults = {"fmt": "json"}
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m[1], defaults.get(m[1], "x")), path)


def pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def check_answer(doc: dict[str, Any], path: str, method: str, response: TestResponse) -> Any:
    """Fail unless ``response`` is documented for the operation, with a body of its schema."""
    answers = doc["paths"][path][method]["responses"]
    status = str(response.status_code)
    assert status in answers, (f"{method.upper()} {path}: {status} is not documented "
                               f"({sorted(answers)}): {response.data[:300]!r}")
    content = answers[status].get("content")
    if content is None:
        assert response.data == b"", response.data
        return None
    assert response.mimetype in content, (response.mimetype, sorted(content))
    body = json.loads(response.data)
    ref = (f"{_DOC_URI}#/" + pointer("paths", path, method, "responses", status, "content",
                                     response.mimetype, "schema"))
    registry: Registry[Any] = Registry().with_resource(
        _DOC_URI, Resource.from_contents(doc, default_specification=DRAFT202012))
    validator = Draft202012Validator({"$ref": ref}, registry=registry,
                                     format_checker=FormatChecker())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"[:300]
              for e in validator.iter_errors(body)]
    assert not errors, f"{method.upper()} {path} {status}: " + "\n".join(errors[:10])
    return body


# -- the document --------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    assert doc["openapi"] == OPENAPI_VERSION and OPENAPI_VERSION.startswith("3.1.")
    validate(doc, cls=OpenAPIV31SpecValidator)
    # Every schema, component or inline, is one: none is left empty.
    empty: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("schema", "items", "additionalProperties") and value == {}:
                    empty.append(f"{where}/{key}")
                if key == "properties":
                    empty.extend(f"{where}/properties/{name}" for name, sub in value.items()
                                 if sub == {})
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for n, value in enumerate(node):
                walk(value, f"{where}/{n}")

    walk(doc, "")
    assert not [name for name, schema in doc["components"]["schemas"].items() if schema == {}]
    assert not empty, empty


def test_the_document_served_is_the_one_the_module_builds(doc: dict[str, Any]) -> None:
    assert doc == json.loads(json.dumps(openapi_document()))
    # Each call hands out its own copy.
    first = openapi_document()
    first["paths"].clear()
    assert openapi_document()["paths"]


def test_every_route_under_api_and_open311_is_documented_and_only_those(
    rig: Rig, doc: dict[str, Any]
) -> None:
    served = set()
    for rule in rig.app.url_map.iter_rules():
        if rule.rule.startswith(("/api/", "/open311/")):
            path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
            served |= {(path, m.lower()) for m in rule.methods or ()
                       if m not in ("HEAD", "OPTIONS")}
    documented = {(path, method) for path, method, _ in operations(doc)}
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"
    assert len(documented) >= 33
    assert any(path.startswith("/open311/v2/") for path, _ in documented)


def test_every_path_parameter_is_declared_once(doc: dict[str, Any]) -> None:
    for path, method, op in operations(doc):
        named = re.findall(r"\{(\w+)\}", path)
        declared = [p["name"] for p in op.get("parameters", ()) if p["in"] == "path"]
        assert sorted(named) == sorted(declared), (method, path)
        assert "operationId" in op and op["responses"], (method, path)


def test_the_states_it_names_are_those_the_runtime_uses(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    assert schemas["TreeNode"]["properties"]["status"]["enum"] == [
        s.value for s in ChildStatus]
    assert set(schemas["Alarm"]["properties"]["state"]["enum"]) == {
        s.value for s in AlarmState}
    assert set(schemas["Alarm"]["required"]) == set(ALARM_CONTRACT_FIELDS)
    assert set(schemas["Intervention"]["properties"]) >= set(INTERVENTION_FIELDS)
    assert set(schemas["Open311Request"]["properties"]) == set(OPEN311_PUBLIC_FIELDS)
    assert schemas["Command"]["properties"]["status"]["enum"] == [
        s.value for s in CommandStatus]


def test_the_users_and_desks_shapes_are_those_the_code_uses(
    rig: Rig, doc: dict[str, Any]
) -> None:
    schemas = doc["components"]["schemas"]
    user = rig.users.get(SUBJECT).public()
    assert set(schemas["User"]["properties"]) == set(schemas["User"]["required"]) == set(user)
    assert set(schemas["UserToken"]["properties"]) == set(user["tokens"][0])
    assert schemas["User"]["properties"]["role"]["enum"] == [r.value for r in Role]
    assert set(schemas["NewUser"]["properties"]) == ADD_FIELDS
    assert set(schemas["UserChange"]["properties"]) == CHANGE_FIELDS
    desks = builtin_desks().public()
    assert set(schemas["Desks"]["properties"]) == set(desks)
    assert set(schemas["Desk"]["properties"]) == set(desks["desks"][0])
    assert set(schemas["DeskView"]["properties"]) == set(desks["views"][0])


def test_open311_is_left_out_where_the_app_does_not_serve_it() -> None:
    app = create_app(StaticBackend(), UserRegistry())
    body = app.test_client().get(OPENAPI_PATH).get_json()
    assert body["paths"] and not [p for p in body["paths"] if p.startswith("/open311/")]
    validate(body, cls=OpenAPIV31SpecValidator)


def test_each_operation_states_its_security_and_answers(doc: dict[str, Any]) -> None:
    assert doc["security"] == [{"bearerAuth": []}, {"session": []}]
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "a user's API token"}
    assert doc["components"]["securitySchemes"]["session"]["name"] == "commandpost_session"
    for path, method, op in operations(doc):
        public = (path, method) in PUBLIC or path.startswith("/open311/")
        assert (op.get("security") == []) == public, (method, path)
        answers = op["responses"]
        assert any(s.startswith("2") for s in answers), (method, path)
        if not public:
            assert {"401", "503"} <= answers.keys(), (method, path)
        if "requestBody" in op:
            assert {"400", "422"} & answers.keys(), (method, path)
        if method == "get" and not public and path.startswith("/api/v1/"):
            # Polled reads: an unchanged answer is a 304 to the ETag sent back.
            assert "304" in answers and "content" not in answers["304"], path
            assert "If-None-Match" in {p["name"] for p in op["parameters"]}, path
    post = doc["paths"]["/open311/v2/requests.{fmt}"]["post"]
    form = doc["components"]["schemas"]["Open311NewRequest"]
    assert "api_key" in form["required"] and "403" in post["responses"]


# -- authentication and roles --------------------------------------------------------------


def test_every_api_route_unauthenticated_answers_401(rig: Rig, doc: dict[str, Any]) -> None:
    checked = 0
    guarded = [(path, method) for path, method, op in operations(doc)
               if op.get("security") != []]
    for path, method, op in operations(doc):
        if op.get("security") == []:
            continue
        for headers in ({}, {"Authorization": "Bearer not-a-token-of-anyone-at-all"},
                        {"Authorization": "Basic YWRtaW46YWRtaW4="}):
            response = rig.client.open(fill(path), method=method.upper(), headers=headers,
                                       json={} if method == "post" else None)
            check_answer(doc, path, method, response)
            assert response.status_code == 401, (method, path, headers)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            checked += 1
    assert len(guarded) >= 25 and checked == 3 * len(guarded)


def test_the_public_routes_answer_without_a_token(rig: Rig, doc: dict[str, Any]) -> None:
    values = {"service_code": "pothole", "request_id": "unknown"}
    for path, method, op in operations(doc):
        if op.get("security") != [] or method != "get":
            continue
        response = rig.client.get(fill(path, **values))
        check_answer(doc, path, method, response)
        assert response.status_code in (200, 404), (path, response.data)
    assert rig.client.get("/open311/v2/services.xml").mimetype == "text/xml"


def test_an_open311_post_needs_its_api_key(rig: Rig, doc: dict[str, Any]) -> None:
    path = "/open311/v2/requests.{fmt}"
    form = {"service_code": "pothole", "lat": "47.3220", "long": "5.0415",
            "description": "A deep pothole"}
    for key in (None, "", "not-a-key"):
        sent = form if key is None else {**form, "api_key": key}
        response = rig.client.post(fill(path), data=sent,
                                   headers={"Authorization": rig.auth("admin")["Authorization"]})
        assert response.status_code == 403, response.data
        check_answer(doc, path, "post", response)
    response = rig.client.post(fill(path), data={**form, "api_key": rig.open311_key})
    assert response.status_code == 201, response.data
    [created] = check_answer(doc, path, "post", response)
    assert response.headers["Location"].endswith(f"/{created['service_request_id']}.json")


def test_a_viewer_reads_but_neither_commands_nor_acts(rig: Rig, doc: dict[str, Any]) -> None:
    eid = rig.equipment_of(HOME)[0]
    viewer = rig.auth("viewer")
    refused = [
        ("/api/v1/equipment/{entity_id}/commands", fill("/api/v1/equipment/{entity_id}/commands",
                                                        entity_id=eid),
         {"action": "set", "params": {"dim": 10}}),
        ("/api/v1/alarms/{alarm_id}/ack", f"/api/v1/alarms/{rig.alarm_ids[0]}/ack", {}),
        ("/api/v1/crisis", "/api/v1/crisis", {"mode": "snow", "municipalities": [HOME]}),
        ("/api/v1/requests", "/api/v1/requests", {"category": "pothole", "description": "d",
                                                  "lat": 47.322, "lon": 5.0415}),
        ("/api/v1/open311/keys", "/api/v1/open311/keys", {"application": "app"}),
    ]
    for path, url, body in refused:
        response = rig.client.post(url, json=body, headers=viewer)
        assert response.status_code == 403, (url, response.data)
        assert "role" in check_answer(doc, path, "post", response)["error"]
    assert rig.client.get(f"/api/v1/equipment/{eid}", headers=viewer).status_code == 200


def test_an_operator_does_not_do_an_admins_work(rig: Rig, doc: dict[str, Any]) -> None:
    operator = rig.auth("operator")
    for path, method in [("/api/v1/system", "get"), ("/api/v1/audit", "get"),
                         ("/api/v1/open311/keys", "get"), ("/api/v1/open311/keys/{application}",
                                                           "delete"),
                         ("/api/v1/alarms/{alarm_id}/out-of-service", "post"),
                         ("/api/v1/alarms/{alarm_id}/return-to-service", "post")]:
        response = rig.client.open(fill(path, alarm_id=rig.alarm_ids[0]),
                                   method=method.upper(), headers=operator)
        assert response.status_code == 403, (path, response.data)
        check_answer(doc, path, method, response)


def test_a_scoped_operator_neither_reads_nor_commands_another_municipality(
    rig: Rig, doc: dict[str, Any]
) -> None:
    home, away = rig.towns
    mine, theirs = rig.equipment_of(home)[0], rig.equipment_of(away)[0]
    scoped = rig.auth("scoped")

    def call(method: str, path: str, url: str, body: Any = None) -> tuple[int, Any]:
        response = rig.client.open(url, method=method.upper(), headers=scoped, json=body)
        return response.status_code, check_answer(doc, path, method, response)

    # Another municipality's equipment does not exist for him, to read or to command.
    assert call("get", "/api/v1/equipment/{entity_id}", f"/api/v1/equipment/{theirs}")[0] == 404
    status, body = call("post", "/api/v1/equipment/{entity_id}/commands",
                        f"/api/v1/equipment/{theirs}/commands",
                        {"action": "set", "params": {"dim": 10}})
    assert (status, body["error"]) == (404, "unknown equipment")
    assert call("get", "/api/v1/events", f"/api/v1/events?entity={theirs}")[0] == 404
    status, items = call("get", "/api/v1/equipment", "/api/v1/equipment?limit=1000")
    assert status == 200 and {i["municipality"] for i in items} == {home}
    status, items = call("get", "/api/v1/equipment", f"/api/v1/equipment?municipality={away}")
    assert (status, items) == (200, [])
    status, events = call("get", "/api/v1/events", "/api/v1/events?limit=1000")
    assert status == 200 and events and all(e.get("municipality") in (None, home)
                                            for e in events)
    # Nor do its alarms, interventions, fleet, crisis rows or energy.
    status, alarms = call("get", "/api/v1/alarms", "/api/v1/alarms?state=all")
    assert status == 200 and alarms
    assert all(home in a["municipalities"] for a in alarms)
    away_alarm = next(a for a in rig.alarm_ids if a.startswith(rig.equipment_of(away)[0]))
    assert call("get", "/api/v1/alarms/{alarm_id}", f"/api/v1/alarms/{away_alarm}")[0] == 404
    assert call("post", "/api/v1/alarms/{alarm_id}/ack",
                f"/api/v1/alarms/{away_alarm}/ack", {})[0] == 404
    # A flood summary spanning both: seen, but acting on it needs both municipalities.
    assert call("post", "/api/v1/alarms/{alarm_id}/ack",
                "/api/v1/alarms/path:lighting.flood/ack", {})[0] == 403
    status, interventions = call("get", "/api/v1/interventions", "/api/v1/interventions")
    assert status == 200 and interventions
    assert {i["municipality"] for i in interventions} == {home}
    away_int = next(i for i in rig.intervention_ids
                    if i not in {x["id"] for x in interventions})
    assert call("get", "/api/v1/interventions/{intervention_id}",
                f"/api/v1/interventions/{away_int}")[0] == 404
    status, vehicles = call("get", "/api/v1/fleet", "/api/v1/fleet")
    assert status == 200 and {v["municipality"] for v in vehicles} == {home}
    status, rows = call("get", "/api/v1/crisis", "/api/v1/crisis")
    assert status == 200 and set(rows) == {home}
    assert call("post", "/api/v1/crisis", "/api/v1/crisis",
                {"mode": "snow", "municipalities": [away]})[0] == 403
    assert call("get", "/api/v1/energy",
                f"/api/v1/energy?scope=municipality&id={away}")[0] == 404
    # His own municipality he commands.
    status, accepted = call("post", "/api/v1/equipment/{entity_id}/commands",
                            f"/api/v1/equipment/{mine}/commands",
                            {"action": "set", "params": {"dim": 10}}
                            if mine.startswith("lc-") else {"action": "release"})
    assert status in (202, 422), accepted
    circuit = next(e for e in rig.equipment_of(home) if e.startswith("lc-"))
    status, accepted = call("post", "/api/v1/equipment/{entity_id}/commands",
                            f"/api/v1/equipment/{circuit}/commands",
                            {"action": "set", "params": {"dim": 10}})
    assert (status, accepted["status"]) == (202, "queued")


# -- answers of the documented shapes, from real data ------------------------------------------


def test_every_read_answers_in_its_documented_shape(rig: Rig, doc: dict[str, Any]) -> None:
    eid = rig.equipment_of(HOME)[0]
    values = {"entity_id": eid, "alarm_id": rig.alarm_ids[0], "service_code": "pothole",
              "intervention_id": rig.intervention_ids[0], "request_id": "none",
              "name": SUBJECT}
    queries = {
        "/api/v1/alarms": ["", "?state=all", "?group=path:lighting.flood", "?state=bogus"],
        "/api/v1/equipment": ["", "?limit=3&online=true", "?kind=lighting_circuit",
                              "?kind=spaceship", "?limit=²"],
        "/api/v1/energy": ["", "?step=night", f"?scope=municipality&id={HOME}",
                           "?scope=circuit&id=nope", "?from=2026-01-01&to=2026-01-02",
                           "?from=1e308&to=inf"],
        "/api/v1/events": ["", "?limit=2", f"?entity={eid}", "?since=1e300",
                           "?before=0-0", "?before=99999999999999999999-0"],
        "/api/v1/audit": ["", "?limit=1", "?before=0-0", "?since=1e306"],
        "/api/v1/interventions": ["", "?state=done", "?state=lost"],
        "/api/v1/fleet": ["", "?status=busy"],
        "/open311/v2/requests.{fmt}": ["", "?status=open", "?service_request_id=a&status=x",
                                       "?start_date=2026-01-01T00:00:00Z"],
    }
    seen: set[int] = set()
    for who in ("admin", "scoped", "viewer"):
        for path, method, _op in operations(doc):
            if method != "get":
                continue
            for query in queries.get(path, [""]):
                response = rig.client.get(fill(path, **values) + query, headers=rig.auth(who))
                assert response.status_code < 500 or path == "/api/v1/health", (
                    path, query, response.data)
                check_answer(doc, path, method, response)
                seen.add(response.status_code)
    assert {200, 403, 404, 422} <= seen


def test_every_change_answers_in_its_documented_shape(rig: Rig, doc: dict[str, Any]) -> None:
    admin = rig.auth("admin")
    circuit = next(e for e in rig.equipment_of(HOME) if e.startswith("lc-"))
    alarm = rig.alarm_ids[1]
    calls: list[tuple[str, str, str, Any, set[int]]] = [
        ("post", "/api/v1/equipment/{entity_id}/commands", f"/api/v1/equipment/{circuit}/commands",
         {"action": "set", "params": {"dim": 30}, "idempotency_key": "k1"}, {202}),
        ("post", "/api/v1/equipment/{entity_id}/commands", f"/api/v1/equipment/{circuit}/commands",
         {"action": "set", "params": {"dim": 300}}, {422}),
        ("post", "/api/v1/equipment/{entity_id}/commands", f"/api/v1/equipment/{circuit}/commands",
         b"[1, 2]", {400}),
        ("post", "/api/v1/alarms/{alarm_id}/ack", f"/api/v1/alarms/{alarm}/ack",
         {"comment": "seen"}, {202}),
        ("post", "/api/v1/alarms/{alarm_id}/shelve", f"/api/v1/alarms/{alarm}/shelve",
         {"minutes": 30, "reason": "crew on site"}, {202}),
        ("post", "/api/v1/alarms/{alarm_id}/shelve", f"/api/v1/alarms/{alarm}/shelve",
         {"minutes": 0, "reason": "x"}, {422}),
        ("post", "/api/v1/alarms/{alarm_id}/unshelve", f"/api/v1/alarms/{alarm}/unshelve",
         None, {202}),
        ("post", "/api/v1/alarms/{alarm_id}/out-of-service",
         f"/api/v1/alarms/{alarm}/out-of-service", {}, {202}),
        ("post", "/api/v1/alarms/{alarm_id}/return-to-service",
         f"/api/v1/alarms/{alarm}/return-to-service", {"extra": 1}, {422}),
        ("post", "/api/v1/crisis", "/api/v1/crisis",
         {"mode": "flood", "municipalities": [HOME]}, {202}),
        ("post", "/api/v1/crisis", "/api/v1/crisis",
         {"mode": "snow", "municipalities": [rig.towns[1]]}, {409}),
        ("post", "/api/v1/crisis", "/api/v1/crisis",
         {"mode": "snow", "municipalities": ["atlantis"]}, {422}),
        ("post", "/api/v1/requests", "/api/v1/requests",
         {"category": "pothole", "description": "A deep pothole", "lat": 47.322,
          "lon": 5.0415}, {201}),
        ("post", "/api/v1/requests", "/api/v1/requests",
         {"category": "pothole", "description": "At sea", "lat": 0.0, "lon": 0.0}, {422}),
        ("post", "/api/v1/open311/keys", "/api/v1/open311/keys", {"application": "ondijon"},
         {201}),
        ("delete", "/api/v1/open311/keys/{application}", "/api/v1/open311/keys/ondijon", None,
         {204}),
        ("delete", "/api/v1/open311/keys/{application}", "/api/v1/open311/keys/ondijon", None,
         {404}),
    ]
    for method, path, url, body, expected in calls:
        if isinstance(body, bytes):
            response = rig.client.open(url, method=method.upper(), headers=admin, data=body,
                                       content_type="application/json")
        else:
            response = rig.client.open(url, method=method.upper(), headers=admin, json=body)
        assert response.status_code in expected, (url, body, response.data)
        check_answer(doc, path, method, response)
        # A new request's intervention appears once the dispatch coordinator (not run
        # here) has taken it; the commands are readable at once.
        if response.status_code == 202:
            followed = rig.client.get(response.headers["Location"], headers=admin)
            assert followed.status_code == 200, response.headers["Location"]


def test_every_users_change_answers_in_its_documented_shape(
    rig: Rig, doc: dict[str, Any]
) -> None:
    """Adding, reading and changing users, their passwords and tokens, as an admin; each
    answer of its documented status and shape, and what it says holds."""
    admin = rig.auth("admin")

    def call(method: str, path: str, expected: int, body: Any = None,
             headers: dict[str, str] | None = None, **values: str) -> TestResponse:
        sent = {**admin, **(headers or {})}
        url = fill(path, **values)
        if isinstance(body, bytes):
            response = rig.client.open(url, method=method.upper(), headers=sent, data=body,
                                       content_type="application/json")
        else:
            response = rig.client.open(url, method=method.upper(), headers=sent, json=body)
        assert response.status_code == expected, (method, url, body, response.data)
        check_answer(doc, path, method, response)
        return response

    users, user, password = "/api/v1/users", "/api/v1/users/{name}", \
        "/api/v1/users/{name}/password"
    tokens, token = "/api/v1/users/{name}/tokens", "/api/v1/users/{name}/tokens/{token_id}"
    # Added: his first token (and a generated password) shown this once.
    added = call("post", users, 201, {"name": "bob", "role": "operator",
                                      "municipalities": [HOME], "desks": ["snow"]})
    body = added.get_json()
    assert added.headers["Location"].endswith("/api/v1/users/bob")
    assert (body["user"]["desks"], body["user"]["version"]) == (["snow"], 1)
    assert body["password"] and body["token"]
    bob = {"Authorization": f"Bearer {body['token']}"}
    assert rig.client.get("/api/v1/desks", headers=bob).status_code == 200
    given = call("post", users, 201, {"name": "carol", "role": "viewer",
                                      "password": "a-long-enough-secret"}).get_json()
    assert "password" not in given
    for refused in ({"name": "bob", "role": "viewer"}, {"name": "System", "role": "viewer"},
                    {"name": "dave", "role": "chief"}, {"name": "da ve", "role": "viewer"},
                    {"name": "dave", "role": "viewer", "desks": ["kitchen"]},
                    {"name": "dave", "role": "viewer", "municipalities": ["Dijon"]},
                    {"name": "dave", "role": "viewer", "password": "Password123"},
                    {"name": "dave", "role": "viewer", "password": "short"},
                    {"name": "dave", "role": "viewer", "extra": 1}, {"role": "viewer"}):
        call("post", users, 422, refused)
    call("post", users, 400, b"[1]")
    listed = call("get", users, 200).get_json()
    assert [u["name"] for u in listed] == sorted(u["name"] for u in listed)
    assert {"bob", "carol", SUBJECT} <= {u["name"] for u in listed}
    assert "dave" not in {u["name"] for u in listed}
    # Changed under If-Match: a stale version is refused whole, a bad one is no version.
    assert call("get", user, 200, name="bob").headers["ETag"] == '"1"'
    changed = call("patch", user, 200, {"desks": ["traffic"]}, {"If-Match": '"1"'},
                   name="bob")
    assert changed.headers["ETag"] == '"2"' and changed.get_json()["desks"] == ["traffic"]
    call("patch", user, 412, {"role": "viewer"}, {"If-Match": '"1"'}, name="bob")
    call("patch", user, 412, {}, {"If-Match": "1"}, name="bob")
    for bad in ("seven", "\u00b2", '"1', "1, 2", "9" * 19):
        call("patch", user, 400, {}, {"If-Match": bad}, name="bob")
    call("patch", user, 422, {"disabled": "yes"}, name="bob")
    call("patch", user, 422, {"municipalities": "dijon"}, name="bob")
    call("patch", user, 422, {"role": "chief"}, name="bob")
    call("patch", user, 404, {}, name="nobody")
    disabled = call("patch", user, 200, {"disabled": True}, {"If-Match": 'W/"2"'},
                    name="bob").get_json()
    assert disabled["disabled"] and disabled["desks"] == ["traffic"]
    assert rig.client.get("/api/v1/desks", headers=bob).status_code == 401
    assert call("patch", user, 200, {"role": None}, {"If-Match": "*"},
                name="bob").get_json() == disabled
    # The last enabled admin stays one.
    call("patch", user, 409, {"role": "viewer"}, name="admin")
    call("patch", user, 409, {"disabled": True}, name="admin")
    # Passwords: generated and shown once, or chosen.
    assert set(call("post", password, 200, name="carol").get_json()) == {"password"}
    assert set(call("post", password, 200, {}, name="carol").get_json()) == {"password"}
    assert call("post", password, 200, {"password": "another-long-secret"},
                name="carol").get_json() == {}
    call("post", password, 422, {"password": "short"}, name="carol")
    call("post", password, 422, {"password": None}, name="carol")
    call("post", password, 404, name="nobody")
    # Tokens: issued (shown once), listed by id and label, revoked once.
    issued = call("post", tokens, 201, {"label": "ci"}, name="carol")
    token_id = issued.get_json()["id"]
    assert issued.headers["Location"].endswith("/api/v1/users/carol")
    held = call("get", user, 200, name="carol").get_json()["tokens"]
    assert {"id": token_id, "label": "ci"} in [{"id": t["id"], "label": t["label"]}
                                               for t in held]
    carol = {"Authorization": f"Bearer {issued.get_json()['token']}"}
    assert rig.client.get("/api/v1/desks", headers=carol).status_code == 200
    call("post", tokens, 201, name="carol")
    call("post", tokens, 422, {"label": "x" * 65}, name="carol")
    call("post", tokens, 422, {"label": None}, name="carol")
    call("post", tokens, 404, name="nobody")
    call("delete", token, 204, name="carol", token_id=token_id)
    assert rig.client.get("/api/v1/desks", headers=carol).status_code == 401
    etag = call("get", user, 200, name="carol").headers["ETag"]
    call("delete", token, 404, name="carol", token_id=token_id)
    assert call("get", user, 200, name="carol").headers["ETag"] == etag  # nothing changed
    call("delete", token, 404, name="nobody", token_id=token_id)
    # Only an admin manages users; anyone reads the desks.
    for who in ("operator", "scoped", "viewer"):
        for method, path, sent in (("get", users, None), ("post", users, {"name": "eve",
                                                                         "role": "admin"}),
                                   ("get", user, None), ("patch", user, {"role": "admin"}),
                                   ("post", password, None), ("post", tokens, None),
                                   ("delete", token, None)):
            response = rig.client.open(fill(path, name=who, token_id=token_id),
                                       method=method.upper(), headers=rig.auth(who), json=sent)
            assert response.status_code == 403, (who, method, path, response.data)
            check_answer(doc, path, method, response)
        response = rig.client.get("/api/v1/desks", headers=rig.auth(who))
        desks = check_answer(doc, "/api/v1/desks", "get", response)
        assert [d["name"] for d in desks["desks"]] == builtin_desks().names()
    assert rig.users.get("operator").role is Role.OPERATOR
