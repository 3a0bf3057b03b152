"""Open311 GeoReport v2: the catalogue, the request store on a real Redis, the HTTP routes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from flask.testing import FlaskClient

from admin_web import StaticBackend, UserRegistry, create_app
from admin_web.open311 import OPEN311_PREFIX, Open311Backend, open311_blueprint
from runtime.demo_inventory import SERVICE_ROLES
from runtime.embedded import EmbeddedRedis
from runtime.errors import ConfigError
from runtime.geo import demo_geography
from runtime.open311 import (
    PRIVATE_FIELDS,
    PUBLIC_FIELDS,
    NewRequest,
    Open311Error,
    Open311Store,
    ServiceRequest,
    SyncOpen311Store,
    default_catalogue,
    parse_catalogue,
    parse_query,
    validate_request,
)
from runtime.store import RetryPolicy

DIJON = {"lat": "47.3220", "long": "5.0415"}
TALANT = {"lat": "47.3370", "long": "5.0050"}
DAY = 86_400.0


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with EmbeddedRedis(Path(tmp_path_factory.mktemp("redis"))) as server:
        yield server.url


@dataclass
class Rig:
    """One app with the Open311 routes, on a store of its own namespace."""

    client: FlaskClient
    store: SyncOpen311Store
    key: str
    handed: list[ServiceRequest] = field(default_factory=list)
    admin: StaticBackend = field(default_factory=StaticBackend)  # holds the audit trail

    def post(self, fmt: str = "json", **form: str) -> tuple[int, Any]:
        response = self.client.post(f"{OPEN311_PREFIX}/requests.{fmt}", data=form)
        return response.status_code, response.get_json()

    def get(self, path: str, **args: str | list[str]) -> tuple[int, Any]:
        response = self.client.get(OPEN311_PREFIX + path, query_string=args)
        return response.status_code, response.get_json()


@pytest.fixture
def rig(redis_url: str) -> Iterator[Rig]:
    store = SyncOpen311Store(redis_url, namespace=f"t{uuid.uuid4().hex[:8]}")
    handed: list[ServiceRequest] = []
    backend = Open311Backend(store=store, geography=demo_geography(), on_request=handed.append)
    # Mounted on the real admin app, as the composition root does: its handlers must not
    # turn the routes' refusals into pages or into the API's {"error": …} shape.
    admin = StaticBackend()
    app = create_app(admin, UserRegistry())
    app.register_blueprint(open311_blueprint(backend))
    try:
        yield Rig(app.test_client(), store, store.issue_key("ondijon"), handed, admin)
    finally:
        store.close()


def assert_refused(status: int, body: Any, code: int, words: str = "") -> None:
    assert status == code, body
    assert isinstance(body, list) and len(body) == 1
    assert body[0]["code"] == code
    assert words in body[0]["description"]


# -- the catalogue ------------------------------------------------------------------------------
def test_the_catalogue_covers_the_field_services_with_the_fleet_roles() -> None:
    catalogue = default_catalogue()
    for code in ("bulky_waste", "pothole", "lighting_fault", "green_areas", "cleaning",
                 "graffiti", "illegal_dumping", "sign_damage"):
        assert code in catalogue
    for service in catalogue:
        assert service.metadata is False and service.type == "realtime"
        assert set(service.vehicle_roles) <= set(SERVICE_ROLES)
        assert service.keywords and service.group


def test_a_bad_catalogue_is_refused_with_line_numbers() -> None:
    text = (
        'jurisdiction_id = "x.fr"\n'
        "[[service]]\n"
        'service_code = "pothole"\n'
        'service_name = "Pothole"\n'
        'description = "A hole"\n'
        'group = "roads"\n'
        'keywords = ["hole"]\n'
        'vehicle_roles = ["tractor"]\n'
        "[[service]]\n"
        'service_code = "pothole"\n'
        'service_nam = "typo"\n'
    )
    with pytest.raises(ConfigError) as info:
        parse_catalogue(text, "cat.toml")
    lines = str(info.value).splitlines()
    assert any(line.startswith("cat.toml:2: service[0]:") and "tractor" in line for line in lines)
    assert any(line.startswith("cat.toml:11: service[1].service_nam:") for line in lines)


# -- validation, without HTTP -------------------------------------------------------------------
def test_validation_resolves_the_service_and_the_municipality() -> None:
    new = validate_request({"service_code": "lighting_fault", **TALANT, "description": " Off "},
                           default_catalogue(), demo_geography())
    assert new.municipality == "talant"
    assert new.service_name == "Street lighting fault" and new.description == "Off"
    assert new.expected_hours == 48
    by_address = validate_request({"service_code": "cleaning", "address_string": "Place Darcy"},
                                  default_catalogue(), demo_geography())
    assert by_address.municipality is None and by_address.lat is None


@pytest.mark.parametrize("form, code, words", [
    ({}, 400, "service_code was not provided"),
    ({"service_code": "unicorns", **DIJON}, 404, "not found"),
    ({"service_code": "pothole"}, 400, "location is required"),
    ({"service_code": "pothole", "lat": "47.3"}, 400, "together"),
    ({"service_code": "pothole", "lat": "nan", "long": "5.0"}, 400, "decimal"),
    ({"service_code": "pothole", "lat": "47.6", "long": "5.04"}, 400, "outside the metropolis"),
    ({"service_code": "pothole", **DIJON, "description": "x" * 4001}, 400, "4000"),
    ({"service_code": "pothole", **DIJON, "media_url": "javascript:alert(1)"}, 400, "media_url"),
    ({"service_code": "pothole", **DIJON, "phone": "12\n34"}, 400, "control"),
    ({"service_code": "pothole", **DIJON, "jurisdiction_id": "paris.fr"}, 404, "jurisdiction"),
])
def test_validation_refusals(form: dict[str, str], code: int, words: str) -> None:
    with pytest.raises(Open311Error) as info:
        validate_request(form, default_catalogue(), demo_geography())
    assert info.value.status == code
    assert words in info.value.description


def test_query_parsing_follows_the_specification() -> None:
    now = 1_700_000_000.0
    default = parse_query({}, now)
    assert default.start_ts == now - 90 * DAY and default.limit == 1000
    both = parse_query({"start_date": "2023-11-01T00:00:00Z",
                        "end_date": "2023-11-02T00:00:00+01:00", "status": "open, closed"}, now)
    assert both.end_ts - both.start_ts == DAY - 3600
    assert both.statuses == {"open", "closed"}
    assert parse_query({"service_request_id": "3,1,3", "status": "bogus"}, now).ids == ("3", "1")
    for args in ({"status": "pending"}, {"start_date": "yesterday"},
                 {"start_date": "2023-11-01T00:00:00"},  # no timezone
                 {"start_date": "2023-01-01T00:00:00Z", "end_date": "2023-06-01T00:00:00Z"},
                 {"start_date": "2023-02-01T00:00:00Z", "end_date": "2023-01-01T00:00:00Z"}):
        with pytest.raises(Open311Error) as info:
            parse_query(args, now)
        assert info.value.status == 400, args


# -- the HTTP routes ----------------------------------------------------------------------------
def test_services_list_and_definitions(rig: Rig) -> None:
    status, body = rig.get("/services.json")
    assert status == 200
    assert [s["service_code"] for s in body] == list(default_catalogue().codes)
    pothole = next(s for s in body if s["service_code"] == "pothole")
    assert set(pothole) == {"service_code", "service_name", "description", "metadata", "type",
                            "keywords", "group"}
    assert pothole["metadata"] is False and pothole["type"] == "realtime"
    assert "nid-de-poule" in pothole["keywords"].split(", ")
    assert rig.get("/services/pothole.json") == (200, {"service_code": "pothole",
                                                       "attributes": []})
    assert_refused(*rig.get("/services/unicorns.json"), 404, "unicorns")
    assert_refused(*rig.get("/services.yaml"), 404, "json or xml")


def test_post_as_the_specification_example_then_read_it_back(rig: Rig) -> None:
    response = rig.client.post(
        f"{OPEN311_PREFIX}/requests.json",
        content_type="application/x-www-form-urlencoded; charset=utf-8",
        data=(
            f"api_key={rig.key}&jurisdiction_id=metropole-dijon.fr&service_code=pothole"
            "&lat=47.3220&long=5.0415&address_string=1+rue+de+la+Libert%C3%A9"
            "&email=smit333%40example.fr&device_id=tt222111&account_id=123456&first_name=john"
            "&last_name=smith&phone=111111111&description=A+large+sinkhole+is+destroying+the+street"
            "&media_url=http%3A%2F%2Fexample.fr%2F2212426634.jpg"
            "&attribute[WHISPAWN]=123456&attribute[WHISDORN]=COISL001"
        ),
    )
    assert response.status_code == 201, response.get_json()
    assert response.content_type == "application/json; charset=utf-8"
    [answer] = response.get_json()
    request_id = answer["service_request_id"]
    assert answer == {"service_request_id": request_id, "account_id": None,
                      "service_notice": default_catalogue().get("pothole").service_notice}
    assert response.headers["Location"].endswith(f"/open311/v2/requests/{request_id}.json")
    # The coordinator gets the whole record, personal details and municipality included.
    [handed] = rig.handed
    assert handed.service_request_id == request_id and handed.municipality == "dijon"
    assert handed.email == "smit333@example.fr" and handed.app == "ondijon"

    status, body = rig.get(f"/requests/{request_id}.json")
    assert status == 200 and len(body) == 1
    [public] = body
    assert list(public) == list(PUBLIC_FIELDS)
    assert not set(PRIVATE_FIELDS) & set(public)
    assert "smit333" not in str(body) and "111111111" not in str(body)
    assert public["status"] == "open" and public["status_notes"] is None
    assert public["address"] == "1 rue de la Liberté"
    assert public["lat"] == 47.322 and public["long"] == 5.0415
    assert public["requested_datetime"].endswith("Z")

    closed = rig.store.update_status(request_id, "closed", "Filled in.")
    assert closed.updated_ts >= closed.requested_ts
    [public] = rig.get(f"/requests/{request_id}.json")[1]
    assert public["status"] == "closed" and public["status_notes"] == "Filled in."


def test_the_api_key_is_required_and_checked(rig: Rig) -> None:
    assert_refused(*rig.post(service_code="pothole", **DIJON), 403, "api_key")
    assert_refused(*rig.post(api_key="   ", service_code="pothole", **DIJON), 403, "api_key")
    forged = rig.key[:-4] + ("AAAA" if not rig.key.endswith("AAAA") else "BBBB")
    assert_refused(*rig.post(api_key=forged, service_code="pothole", **DIJON), 403, "invalid")
    assert_refused(*rig.post(api_key="nonsense", service_code="pothole", **DIJON), 403)
    # A key is checked before the rest: an unknown service without a key is still a 403.
    assert_refused(*rig.post(service_code="unicorns"), 403)
    assert rig.store.revoke("ondijon")
    assert_refused(*rig.post(api_key=rig.key, service_code="pothole", **DIJON), 403)
    assert rig.handed == []
    assert rig.get("/requests.json") == (200, [])


def test_refusals_of_the_request_itself(rig: Rig) -> None:
    assert_refused(*rig.post(api_key=rig.key, service_code="unicorns", **DIJON), 404, "unicorns")
    assert_refused(*rig.post(api_key=rig.key, **DIJON), 400, "service_code")
    assert_refused(*rig.post(api_key=rig.key, service_code="pothole", lat="47.60", long="5.04"),
                   400, "outside the metropolis")
    assert_refused(*rig.post(api_key=rig.key, service_code="pothole"), 400, "location")
    response = rig.client.post(f"{OPEN311_PREFIX}/requests.json",
                               json={"api_key": rig.key, "service_code": "pothole", **DIJON})
    assert_refused(response.status_code, response.get_json(), 400, "form-encoded")
    assert rig.handed == []
    status, _ = rig.post(api_key=rig.key, service_code="cleaning",
                         address_string="Place Darcy, Dijon")
    assert status == 201 and rig.handed[0].municipality is None


def test_posts_with_a_key_are_audited_without_the_key_or_the_citizen(rig: Rig) -> None:
    citizen = {"email": "ana@example.fr", "first_name": "Ana", "phone": "0601020304",
               "description": "A hole by my door"}
    assert rig.post(api_key=rig.key, service_code="pothole", **DIJON, **citizen)[0] == 201
    assert rig.post(api_key="not-a-key", service_code="pothole", **DIJON)[0] == 403
    assert rig.post(api_key=rig.key, service_code="unicorns", **DIJON)[0] == 404
    assert rig.post(service_code="pothole", **DIJON)[0] == 403  # no key at all: not recorded
    unknown, forged, opened = rig.admin.audit_trail(limit=10)[0]
    assert [e["action"] for e in (unknown, forged, opened)] == ["open311.request_create"] * 3
    assert (opened["user"], opened["role"], opened["outcome"]) == ("open311:ondijon", "open311",
                                                                   "ok")
    assert opened["target"] == opened["after"]["service_request_id"]
    assert opened["params"] == {"service_code": "pothole", **DIJON}
    assert opened["source"] == "127.0.0.1" and opened["ts"] > 0
    assert (forged["user"], forged["outcome"], forged["code"]) == ("", "refused", "open311_403")
    assert (unknown["user"], unknown["outcome"], unknown["code"]) == (
        "open311:ondijon", "refused", "open311_404")
    trail = str(rig.admin.audit_trail(limit=10)[0])
    assert rig.key not in trail and "not-a-key" not in trail
    assert not any(value in trail for value in citizen.values())


def test_unknown_requests_are_404(rig: Rig) -> None:
    assert_refused(*rig.get("/requests/999999.json"), 404, "999999")
    assert_refused(*rig.get("/requests/seq.json"), 404, "seq")
    assert_refused(*rig.get("/requests/-1.json"), 404)
    assert_refused(*rig.get("/requests/1.json", jurisdiction_id="paris.fr"), 404, "jurisdiction")


def test_list_filters(rig: Rig) -> None:
    geo, catalogue, store = demo_geography(), default_catalogue(), rig.store
    now = time.time()

    def opened(code: str, days_ago: float, where: dict[str, str] = DIJON) -> str:
        new = validate_request({"service_code": code, **where}, catalogue, geo)
        return store.create(new, app="ondijon", ts=now - days_ago * DAY).service_request_id

    pothole = opened("pothole", 1)
    graffiti = opened("graffiti", 2, TALANT)
    cleaning = opened("cleaning", 3)
    old = opened("pothole", 120)
    store.update_status(graffiti, "closed", "Cleaned.")

    def ids(**args: str | list[str]) -> list[str]:
        status, body = rig.get("/requests.json", **args)
        assert status == 200, body
        return [r["service_request_id"] for r in body]

    assert ids() == [pothole, graffiti, cleaning]  # the last 90 days, newest first
    assert ids(status="open") == [pothole, cleaning]
    assert ids(status="closed") == [graffiti]
    assert ids(status=["open", "closed"]) == [pothole, graffiti, cleaning]
    assert ids(service_code="pothole") == [pothole]
    assert ids(service_code="pothole,graffiti", status="open") == [pothole]
    assert ids(service_code="unicorns") == []
    assert ids(service_request_id=f"{old},{cleaning},424242") == [cleaning, old]
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 150 * DAY))
    assert ids(start_date=iso) == [old]  # the 90 days after start_date
    assert ids(end_date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 2.5 * DAY))) \
        == [cleaning]
    assert_refused(*rig.get("/requests.json", status="pending"), 400, "status")
    assert_refused(*rig.get("/requests.json", start_date="01/02/2024"), 400, "W3C")


def test_xml_variants(rig: Rig) -> None:
    response = rig.client.get(f"{OPEN311_PREFIX}/services.xml")
    assert response.status_code == 200
    assert response.content_type == "text/xml; charset=utf-8"
    assert response.data.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    root = ET.fromstring(response.data)
    assert root.tag == "services"
    assert [s.findtext("service_code") for s in root] == list(default_catalogue().codes)
    assert root[0].findtext("metadata") == "false"
    response = rig.client.post(f"{OPEN311_PREFIX}/requests.xml",
                               data={"api_key": rig.key, "service_code": "graffiti", **TALANT})
    assert response.status_code == 201
    request_id = ET.fromstring(response.data).findtext("request/service_request_id")
    root = ET.fromstring(rig.client.get(f"{OPEN311_PREFIX}/requests/{request_id}.xml").data)
    assert root.tag == "service_requests" and root.findtext("request/status") == "open"
    assert root.find("request/status_notes") is not None  # empty, as the spec's example
    assert root.find("request/email") is None
    response = rig.client.get(f"{OPEN311_PREFIX}/requests/0.xml")
    assert response.status_code == 404
    assert ET.fromstring(response.data).findtext("error/code") == "404"


def test_store_unreachable_is_503(redis_url: str) -> None:
    dead = SyncOpen311Store("redis://127.0.0.1:1/0", retry=RetryPolicy(deadline_s=0.2))
    app = create_app(StaticBackend(), UserRegistry())
    app.register_blueprint(open311_blueprint(Open311Backend(dead, demo_geography())))
    response = app.test_client().post(f"{OPEN311_PREFIX}/requests.json",
                                      data={"api_key": "x" * 10, "service_code": "pothole"})
    # A malformed key never reaches Redis: the refusal needs no store.
    assert response.status_code == 403
    response = app.test_client().get(f"{OPEN311_PREFIX}/requests/1.json")
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.get_json()[0]["code"] == 503


# -- the stores ---------------------------------------------------------------------------------
def test_keys_rotate_and_revoke(redis_url: str) -> None:
    store = SyncOpen311Store(redis_url, namespace=f"t{uuid.uuid4().hex[:8]}")
    try:
        first = store.issue_key("fixmystreet")
        second = store.issue_key("fixmystreet")
        other = store.issue_key("ondijon")
        assert store.check_key(first) is None  # reissuing replaces the key
        assert store.check_key(second) == "fixmystreet" and store.check_key(other) == "ondijon"
        assert store.apps() == ["fixmystreet", "ondijon"]
        assert store.revoke("fixmystreet") and not store.revoke("fixmystreet")
        assert store.check_key(second) is None and store.apps() == ["ondijon"]
        key_id, secret = other.split(".")
        stored = str(store._redis.hgetall(store.keys.api_key(key_id)))
        assert "digest" in stored and secret not in stored  # only the digest is kept
    finally:
        store.close()


def test_the_async_store_shares_the_data(redis_url: str) -> None:
    namespace = f"t{uuid.uuid4().hex[:8]}"
    sync = SyncOpen311Store(redis_url, namespace=namespace)
    new = NewRequest(service_code="snow_ice", service_name="Snow", lat=47.3, long=5.05,
                     municipality="dijon")

    async def coordinator() -> tuple[ServiceRequest, ServiceRequest]:
        store = Open311Store(redis_url, namespace=namespace)
        try:
            created = await store.create(new, ts=1_700_000_000.0)
            closed = await store.update_status(created.service_request_id, "closed", "Gritted.")
            with pytest.raises(KeyError):
                await store.update_status("404", "closed")
            return created, closed
        finally:
            await store.close()

    try:
        created, closed = asyncio.run(coordinator())
        assert created.service_request_id == "1" and created.status == "open"
        assert sync.get("1") == closed and closed.status_notes == "Gritted."
        reopened = sync.update_status("1", "open")
        assert reopened.status_notes is None
        assert [r.service_request_id for r in sync.list_requests(
            parse_query({"status": "open", "start_date": "2023-11-01T00:00:00Z"}, time.time())
        )] == ["1"]
    finally:
        sync.close()
