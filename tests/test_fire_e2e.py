"""The fire plan and the camera end to end: simulators on their protocols, device sessions,
hosts, the coordinators, the journal and the admin API.

A fire raised at the BMS simulator unlocks the building's evacuation doors (read
back over OPC UA), turns its cameras to their fire preset (acked) and has a
fire-safety crew assigned, each step shown on the fire alarm; bad door and
preset commands are refused at the edge and reach no device.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from runtime.bench.common import ApiClient, City
from runtime.bench.fire import candidates, fire_round
from tests.conftest import poll

pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("ray_runtime")]


@pytest.fixture(scope="module")
def city() -> Iterator[City]:
    with City(scale=0.05, kinds={"building", "camera", "vehicle"}, say=lambda _: None) as c:
        c.control.pace(1000.0)
        yield c


def _alarm(api: ApiClient, source: str, condition: str) -> dict[str, Any]:
    code, body = api.call("GET", f"/api/v1/alarms?state=all&source={source}")
    assert code == 200, body
    return next((a for a in body if a["condition"] == condition), {})


def test_a_fire_runs_its_plan_through_the_simulators(city: City) -> None:
    building = candidates(city)[0]
    operator = ApiClient(city.admin_url, city.token("operator"))
    got = fire_round(city, operator, building, timeout_s=30.0)
    assert got is not None, "the plan did not finish"
    assert set(got) == {"doors", "cameras", "intervention"}
    # At the devices: the cameras hold their own number for "fire".
    for cam in (eq for eq in city.inventory.equipment
                if eq.kind == "camera" and eq.attrs.get("watches") == building.id):
        assert city.control.values(cam.id)["preset"] == cam.attrs["presets"]["fire"]
    # Every step is on the fire alarm, the intervention's too.
    # The round ended with an operator's reset: the last step the alarm shows.
    steps = poll(lambda: (a := _alarm(operator, building.id, "fire"))
                 and "reset" in {s["step"] for s in a.get("steps") or ()} and a["steps"],
                 30, what="the plan's steps on the alarm")
    states = {s["step"]: s["state"] for s in steps}
    assert states["doors"] == "done" and states["cameras"] == "done"
    assert states["intervention"] in ("assigned", "en_route", "on_site", "done")
    assert states["reset"] == "done"


def test_bad_door_and_preset_commands_are_refused_at_the_edge(city: City) -> None:
    building = candidates(city)[0]
    camera = next(eq for eq in city.inventory.equipment if eq.kind == "camera")
    operator = ApiClient(city.admin_url, city.token("operator"))
    viewer = ApiClient(city.admin_url, city.token("viewer"))
    before = city.control.counters([building.id, camera.id])["devices"]
    for target, body, field in (
            (building.id, {"action": "unlock", "params": {"door": 1}}, "params.reason"),
            (building.id, {"action": "unlock", "params": {"door": 9, "reason": "x"}},
             "params.door"),
            (camera.id, {"action": "set", "params": {"preset": "nowhere"}}, "params.preset")):
        code, answer = operator.call("POST", f"/api/v1/equipment/{target}/commands", body)
        assert (code, answer.get("field")) == (422, field), answer
    code, _ = viewer.call("POST", f"/api/v1/equipment/{building.id}/commands",
                          {"action": "unlock", "params": {"door": 1, "reason": "x"}})
    assert code == 403
    after = city.control.counters([building.id, camera.id])["devices"]
    assert [after[i]["writes"] for i in (building.id, camera.id)] == [
        before[i]["writes"] for i in (building.id, camera.id)]
    # The door command an operator may send is audited with its reason.
    code, body = operator.call("POST", f"/api/v1/equipment/{building.id}/commands",
                               {"action": "unlock", "params": {"door": 3,
                                                               "reason": "locksmith visit"}})
    assert code == 202, body
    admin = ApiClient(city.admin_url, city.token("admin"))
    code, trail = admin.call("GET", "/api/v1/audit?limit=20")
    assert code == 200
    assert any(e.get("params", {}).get("params", {}).get("reason") == "locksmith visit"
               for e in trail), trail[:3]


def test_camera_health_and_motion_in_an_intrusion(city: City) -> None:
    operator = ApiClient(city.admin_url, city.token("operator"))
    camera = next(eq for eq in city.inventory.equipment
                  if eq.kind == "camera" and eq.attrs.get("watches"))
    building = str(camera.attrs["watches"])
    city.control.fault(camera.id, "storage_full", True)
    poll(lambda: _alarm(operator, camera.id, "camera_storage_full").get("active"), 30,
         what="storage alarm")
    city.control.fault(camera.id, "storage_full", False)
    poll(lambda: _alarm(operator, camera.id, "camera_storage_full").get("active") is False, 30,
         what="storage alarm cleared")
    city.control.fault(building, "intrusion", True)
    poll(lambda: _alarm(operator, building, "intrusion").get("active"), 30, what="intrusion")
    city.control.fault(camera.id, "motion", True)
    parent = f"{building}.intrusion"
    _, both = poll(lambda: (r := operator.call("GET", f"/api/v1/alarms?group={parent}"))
                      and len(r[1]) == 2 and r, 30, what="motion joined to the intrusion")
    assert sorted(a["id"] for a in both) == sorted([parent, f"{camera.id}.intrusion_motion"])
    code, listed = operator.call("GET", f"/api/v1/alarms?source={building}")
    assert code == 200
    assert [a["count"] for a in listed if a["id"] == parent] == [2]
    city.control.fault(building, "intrusion", False)
