"""The city's pages and their API: the overview's map (``GET /api/v1/city``), the equipment
list, one equipment's page and the commands it offers (``GET /api/v1/equipment/ID/actions``).

The app runs on the runtime's own backend over a real Redis with its read models filled
(``tests.admin_rig``): every equipment's line of the hosts' view (one in five offline), a
few alarms, and users of every role, one held to a municipality (``scoped``) and one to
the traffic desk (``alice``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from shapely.geometry import Point, shape

from admin_web import StaticBackend, UserRegistry, auth, create_app
from admin_web.auth import Role
from admin_web.city_pages import DOT_STATES, UNDRAWN_KINDS
from tests.admin_rig import HOME, SUBJECT, TEST_SCRYPT_N, Rig, runtime_admin

PASSWORD = "a-long-enough-password-for-tests"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with runtime_admin(tmp_path_factory.mktemp("redis")) as rig:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(auth, "SCRYPT_N", TEST_SCRYPT_N)
            for name in ("admin", "operator", "scoped", "viewer", SUBJECT):
                rig.users.set_password(name, PASSWORD)
        yield rig


@pytest.fixture(scope="module")
def alice(rig: Rig) -> dict[str, str]:
    """The bearer header of ``alice``: an operator of HOME held to the traffic desk."""
    _, token = rig.users.issue_token(SUBJECT, "tests")
    return {"Authorization": f"Bearer {token}"}


def session(rig: Rig, name: str) -> FlaskClient:
    """A client of its own, logged in as ``name`` through the login form."""
    client = rig.app.test_client()
    page = client.get("/login").get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match is not None
    answer = client.post("/login", data={"name": name, "password": PASSWORD,
                                         "csrf_token": match[1], "next": "/"})
    assert answer.status_code == 302, answer.data
    return client


def first(rig: Rig, town: str, kind: str) -> str:
    return next(eq.id for eq in rig.inventory.equipment
                if eq.municipality == town and eq.kind == kind)


# -- the pages ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/equipment", "/equipment?kind=camera", "/equipment/x"])
def test_the_pages_send_an_anonymous_visitor_to_the_login_form(rig: Rig, path: str) -> None:
    response = rig.app.test_client().get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")


def test_the_overview_carries_the_city_map(rig: Rig) -> None:
    page = session(rig, "viewer").get("/").get_data(as_text=True)
    for hook in ('id="city-map"', 'id="city-rows"', 'id="city-total"', 'id="city-in-alarm"',
                 "/static/city_map.js", "/static/city.css"):
        assert hook in page, hook
    # The map stands above the rest of the overview.
    assert page.index('id="city-map"') < page.index("Supervision tree")


def test_the_equipment_list_reflects_its_filters(rig: Rig) -> None:
    client = session(rig, "viewer")
    response = client.get(f"/equipment?kind=camera&municipality={HOME}&online=false"
                          "&in_alarm=true&status=running")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    for hook in ('id="equipment-table"', 'id="equipment-filters"', 'id="next-page"',
                 "/static/equipment.js"):
        assert hook in page, hook
    for name, value in (("kind", "camera"), ("municipality", HOME), ("online", "false"),
                        ("in_alarm", "true"), ("status", "running")):
        select = re.search(rf'<select name="{name}".*?</select>', page, re.S)
        assert select is not None, name
        assert re.search(rf'<option value="{value}" selected>', select[0]), (name, value)
    # Every municipality the viewer reads is offered, by name.
    assert page.count("<option value=") >= len(rig.inventory.municipalities)


def test_a_scoped_operator_is_offered_his_municipalities_only(rig: Rig) -> None:
    page = session(rig, "scoped").get("/equipment").get_data(as_text=True)
    select = re.search(r'<select name="municipality".*?</select>', page, re.S)
    assert select is not None
    assert re.findall(r'<option value="([^"]*)"', select[0]) == ["", HOME]


def test_an_equipment_page_is_a_shell_for_its_id(rig: Rig) -> None:
    circuit = first(rig, HOME, "lighting_circuit")
    response = session(rig, "viewer").get(f"/equipment/{circuit}")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert f'data-entity-id="{circuit}"' in page and 'data-kind="lighting_circuit"' in page
    for hook in ('id="twin-rows"', 'id="action-forms"', 'id="schedule-body"',
                 'id="command-rows"', 'id="event-rows"', "/static/equipment_detail.js"):
        assert hook in page, hook


def test_an_equipment_page_is_404_unknown_or_in_another_municipality(rig: Rig) -> None:
    client = session(rig, "scoped")
    away = rig.equipment_of(rig.towns[1])[0]
    assert client.get("/equipment/no-such-thing").status_code == 404
    assert client.get(f"/equipment/{away}").status_code == 404
    assert client.get(f"/equipment/{rig.equipment_of(HOME)[0]}").status_code == 200


def test_an_equipment_page_of_a_kind_the_desks_do_not_read_is_403(rig: Rig) -> None:
    camera = first(rig, HOME, "camera")
    response = session(rig, SUBJECT).get(f"/equipment/{camera}")
    assert response.status_code == 403
    assert "video" in response.get_data(as_text=True)


# -- GET /api/v1/city --------------------------------------------------------------------


def city(rig: Rig, headers: dict[str, str]) -> dict[str, Any]:
    response = rig.client.get("/api/v1/city", headers=headers)
    assert response.status_code == 200, response.data
    body = response.get_json()
    assert isinstance(body, dict)
    return body


def test_the_city_counts_every_equipment_and_draws_all_but_vehicles(rig: Rig) -> None:
    body = city(rig, rig.auth("admin"))
    towns = {m["slug"]: m for m in body["municipalities"]}
    assert set(towns) == {m.slug for m in rig.inventory.municipalities}
    inventory = rig.inventory.equipment
    assert body["totals"]["total"] == len(inventory)
    assert body["totals"]["online"] + body["totals"]["offline"] == len(inventory)
    for kind in {eq.kind for eq in inventory}:
        assert body["totals"]["kinds"][kind]["total"] == sum(eq.kind == kind for eq in inventory)
    for slug, town in towns.items():
        mine = [eq for eq in inventory if eq.municipality == slug]
        assert town["counts"]["total"] == len(mine)
        assert sorted(d["id"] for d in town["equipment"]) == sorted(
            eq.id for eq in mine if eq.kind not in UNDRAWN_KINDS)
        area = shape({"type": "Polygon", "coordinates": town["polygon"]})
        lon, lat = town["centre"]
        assert area.contains(Point(lon, lat)), slug
    west, south, east, north = body["bbox"]
    for town in towns.values():
        for lon, lat in town["polygon"][0]:
            assert west <= lon <= east and south <= lat <= north


def test_the_city_colours_each_dot_by_alarm_then_session(rig: Rig) -> None:
    body = city(rig, rig.auth("admin"))
    dots = {d["id"]: d for m in body["municipalities"] for d in m["equipment"]}
    assert {d["state"] for d in dots.values()} <= set(DOT_STATES)
    listed = rig.client.get("/api/v1/equipment?limit=1000", headers=rig.auth("admin"))
    for item in listed.get_json():
        if item["id"] not in dots:
            continue
        expected = "alarm" if item["in_alarm"] else "online" if item["online"] else "offline"
        assert dots[item["id"]]["state"] == expected, item["id"]
    # The rig raised a fire on HOME's first equipment, and counted it in alarm.
    home = next(m for m in body["municipalities"] if m["slug"] == HOME)
    assert home["counts"]["in_alarm"] >= 2
    assert dots[rig.equipment_of(HOME)[0]]["state"] == "alarm"


def test_the_city_lists_only_the_municipalities_a_user_reads(rig: Rig) -> None:
    body = city(rig, rig.auth("scoped"))
    assert [m["slug"] for m in body["municipalities"]] == [HOME]
    assert body["totals"]["total"] == len(rig.equipment_of(HOME))
    away = set(rig.equipment_of(rig.towns[1]))
    assert not away & {d["id"] for m in body["municipalities"] for d in m["equipment"]}


def test_the_city_leaves_out_the_kinds_a_users_desks_do_not_read(
        rig: Rig, alice: dict[str, str]) -> None:
    body = city(rig, alice)
    kinds = set(body["totals"]["kinds"])
    assert kinds and not kinds & {"camera", "access_terminal"}
    assert not {d["kind"] for m in body["municipalities"] for d in m["equipment"]} & {
        "camera", "access_terminal"}


def test_the_city_needs_a_user_and_answers_304_while_unchanged(rig: Rig) -> None:
    assert rig.client.get("/api/v1/city").status_code == 401
    first_answer = rig.client.get("/api/v1/city", headers=rig.auth("viewer"))
    again = rig.client.get("/api/v1/city", headers={
        **rig.auth("viewer"), "If-None-Match": first_answer.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""


def test_the_city_of_a_runtime_still_starting_has_names_and_no_geometry() -> None:
    users = UserRegistry()
    users.add("viewer", Role.VIEWER, token="viewer-token-" + "v" * 20)
    app = create_app(StaticBackend(equipment={"lc-a-1": "a", "xr-b-1": "b"},
                                   kinds={"lc-a-1": "lighting_circuit", "xr-b-1": "crossroad"}),
                     users, secret_key=b"k" * 32)
    response = app.test_client().get("/api/v1/city", headers={
        "Authorization": "Bearer viewer-token-" + "v" * 20})
    body = response.get_json()
    assert response.status_code == 200
    assert body["bbox"] is None
    assert [(m["slug"], m["polygon"], m["equipment"]) for m in body["municipalities"]] == [
        ("a", None, []), ("b", None, [])]
    assert body["totals"] == {"total": 2, "online": 0, "offline": 2, "in_alarm": 0, "kinds": {
        "crossroad": {"total": 1, "online": 0, "offline": 1, "in_alarm": 0},
        "lighting_circuit": {"total": 1, "online": 0, "offline": 1, "in_alarm": 0}}}


# -- GET /api/v1/equipment/ID/actions ------------------------------------------------------


def actions(rig: Rig, eid: str, headers: dict[str, str], status: int = 200) -> Any:
    response = rig.client.get(f"/api/v1/equipment/{eid}/actions", headers=headers)
    assert response.status_code == status, response.data
    return response.get_json()


def test_an_operator_is_offered_the_kinds_commands_with_their_bounds(rig: Rig) -> None:
    circuit = first(rig, HOME, "lighting_circuit")
    body = actions(rig, circuit, rig.auth("operator"))
    assert body["refusal"] is None and body["kind"] == "lighting_circuit"
    [form] = body["actions"]
    assert form["action"] == "set" and set(form["requires_one_of"]) == {"on", "dim"}
    assert form["params"]["dim"] == {"type": "number", "required": False, "min": 0, "max": 100}
    assert form["params"]["on"]["type"] == "boolean"
    crossroad = actions(rig, first(rig, HOME, "crossroad"), rig.auth("operator"))
    reason = crossroad["actions"][0]["params"]["reason"]
    assert "manual" in reason["required_when"]["mode"]
    building = actions(rig, first(rig, HOME, "building"), rig.auth("admin"))
    assert {a["action"] for a in building["actions"]} == {
        "set", "lock", "unlock", "fire_confirm", "fire_reset"}
    unlock = next(a for a in building["actions"] if a["action"] == "unlock")
    assert unlock["params"]["reason"]["required"] and unlock["params"]["door"]["min"] == 1


def test_a_viewer_is_offered_no_command_and_told_why(rig: Rig) -> None:
    body = actions(rig, first(rig, HOME, "lighting_circuit"), rig.auth("viewer"))
    assert body["actions"] == [] and "operator role" in body["refusal"]


def test_a_scoped_operator_is_offered_nothing_of_another_municipality(rig: Rig) -> None:
    away = first(rig, rig.towns[1], "lighting_circuit")
    assert actions(rig, away, rig.auth("scoped"), 404) == {"error": "unknown equipment"}
    mine = actions(rig, first(rig, HOME, "lighting_circuit"), rig.auth("scoped"))
    assert [a["action"] for a in mine["actions"]] == ["set"]
    assert actions(rig, "no-such-thing", rig.auth("admin"), 404)["error"] == "unknown equipment"


def test_a_desk_is_offered_only_the_commands_it_owns(rig: Rig, alice: dict[str, str]) -> None:
    crossroad = actions(rig, first(rig, HOME, "crossroad"), alice)
    assert [a["action"] for a in crossroad["actions"]] == ["set"]
    circuit = actions(rig, first(rig, HOME, "lighting_circuit"), alice)
    assert circuit["actions"] == [] and "traffic" in circuit["refusal"]
    assert "video" in actions(rig, first(rig, HOME, "camera"), alice, 403)["error"]


def test_a_vehicle_without_radio_offers_no_command(rig: Rig) -> None:
    from actors.vehicle import has_radio

    silent = next((eq for eq in rig.inventory.equipment
                   if eq.kind == "vehicle" and not has_radio(eq.attrs)), None)
    assert silent is not None, "the rig's demo inventory has a vehicle without radio"
    body = actions(rig, silent.id, rig.auth("admin"))
    assert body["actions"] == [] and "takes no command" in body["refusal"]


def test_a_form_filled_as_described_is_accepted_by_the_api(rig: Rig) -> None:
    circuit = first(rig, HOME, "lighting_circuit")
    [form] = actions(rig, circuit, rig.auth("operator"))["actions"]
    dim = form["params"]["dim"]
    client = session(rig, "operator")
    page = client.get("/equipment").get_data(as_text=True)
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', page)
    assert csrf is not None
    sent = client.post(f"/api/v1/equipment/{circuit}/commands",
                       json={"action": form["action"], "params": {"dim": dim["max"]},
                             "idempotency_key": "page-form-1"},
                       headers={"X-CSRF-Token": csrf[1]})
    assert sent.status_code == 202, sent.data
    refused = client.post(f"/api/v1/equipment/{circuit}/commands",
                          json={"action": "set", "params": {"dim": dim["max"] + 1}},
                          headers={"X-CSRF-Token": csrf[1]})
    assert refused.status_code == 422 and refused.get_json()["field"] == "params.dim"
