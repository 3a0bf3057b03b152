"""Vehicles and access terminals end to end: the API, the journal, the hosts and the device
sessions, down to the simulators on MQTT and Modbus, with what reaches them counted there.

The city's clock starts at noon on a working day, in the demo zone's pedestrian hours.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from runtime.bench.common import ApiClient, City
from runtime.envelope import unpack
from runtime.inventory import Equipment
from tests.conftest import poll
from tests.helpers import next_local

pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("ray_runtime")]


@pytest.fixture(scope="module")
def city() -> Iterator[City]:
    with City(scale=0.05, kinds={"vehicle", "access_terminal"}, say=lambda _: None,
              clock_start=next_local(12)) as c:
        yield c


def _reported(city: City, eid: str, name: str) -> Any:
    blob = city.svc.store.load_checkpoints([eid]).get(eid)
    reported = unpack(blob)["twin"]["reported"] if blob else {}
    return reported.get(name, {}).get("value")


def _writes(city: City, eid: str) -> int:
    return int(city.control.counters([eid])["devices"][eid]["writes"])


def _acked(api: ApiClient, command_id: str) -> bool:
    code, body = api.call("GET", f"/api/v1/commands/{command_id}")
    assert code == 200, body
    assert body["status"] not in ("failed", "expired"), body
    return bool(body["status"] == "acked")


def test_a_bollard_stays_up_in_pedestrian_hours_and_a_grant_lowers_it(city: City) -> None:
    at = next(eq for eq in city.inventory.equipment if eq.kind == "access_terminal")
    api = ApiClient(city.admin_url, city.token("operator"))
    # The zone's closed step (since 11:00) raised the bollard when the terminal started.
    poll(lambda: _reported(city, at.id, "bollard") == "up", 30, interval=0.2,
         what="bollard up by the zone's hours")
    code, detail = api.call("GET", f"/api/v1/equipment/{at.id}")
    assert code == 200
    assert (detail["schedule"]["name"], detail["schedule"]["step"]) == ("pedestrian_centre",
                                                                        "closed")
    assert detail["schedule"]["next"]["step"] == "open"
    before = _writes(city, at.id)

    code, body = api.call("POST", f"/api/v1/equipment/{at.id}/commands",
                          {"action": "set", "params": {"bollard": "down"}})
    assert code == 422, body
    assert body["field"] == "params.bollard" and "pedestrian" in body["error"]
    code, body = api.call("POST", f"/api/v1/equipment/{at.id}/commands",
                          {"action": "grant_passage", "params": {"for_s": 20}})
    assert code == 422 and body["field"] == "params.reason"
    code, detail = api.call("GET", f"/api/v1/equipment/{at.id}")
    assert detail["commands"] == []  # nothing journaled
    assert _writes(city, at.id) == before  # nothing reached the terminal

    code, body = api.call("POST", f"/api/v1/equipment/{at.id}/commands", {
        "action": "grant_passage",
        "params": {"reason": "removal van at 5 rue Musette", "for_s": 15,
                   "vehicle": "AB-123-CD", "service": "delivery"}})
    assert code == 202, body
    poll(lambda: _acked(api, body["command_id"]), 30, interval=0.2, what="grant acked")
    poll(lambda: _reported(city, at.id, "bollard") == "down", 30, interval=0.2,
         what="bollard lowered for the passage")
    assert _writes(city, at.id) == before + 1
    # The passage ends by itself: the bollard goes up again.
    poll(lambda: _reported(city, at.id, "bollard") == "up", 60, interval=0.5,
         what="bollard raised after the passage")
    assert _writes(city, at.id) == before + 2


def _fleet(city: City, radio: bool) -> Equipment:
    return next(eq for eq in city.inventory.equipment if eq.kind == "vehicle"
                and eq.attrs.get("role") and eq.attrs.get("radio") is radio)


def test_a_crew_message_reaches_radio_vehicles_only(city: City) -> None:
    api = ApiClient(city.admin_url, city.token("operator"))
    silent, radio = _fleet(city, False), _fleet(city, True)
    before = _writes(city, silent.id)
    code, body = api.call("POST", f"/api/v1/equipment/{silent.id}/commands",
                          {"action": "set", "params": {"message": "Salt the bridge"}})
    assert code == 422, body
    assert body["field"] == "params.message" and "no radio" in body["error"]
    code, detail = api.call("GET", f"/api/v1/equipment/{silent.id}")
    assert detail["commands"] == []
    assert _writes(city, silent.id) == before

    code, body = api.call("POST", f"/api/v1/equipment/{radio.id}/commands",
                          {"action": "set", "params": {"message": "Salt the bridge"}})
    assert code == 202, body
    poll(lambda: _acked(api, body["command_id"]), 30, interval=0.2, what="message acked")
    assert city.control.values(radio.id)["message"] == "Salt the bridge"


def test_the_vehicle_view_places_it_and_a_bus_tells_its_stop(city: City) -> None:
    api = ApiClient(city.admin_url, city.token("operator"))
    vehicle = _fleet(city, True)

    def placed() -> dict[str, Any] | None:
        code, detail = api.call("GET", f"/api/v1/equipment/{vehicle.id}")
        assert code == 200
        return detail if detail.get("municipality_in") else None

    detail = poll(placed, 30, interval=0.5, what="the vehicle placed in a municipality")
    assert detail["home_municipality"] == vehicle.municipality == detail["municipality"]
    assert detail["position"]["stale"] is False
    assert (detail["service"], detail["radio"]) == (vehicle.attrs["role"], True)
    bus = next(eq for eq in city.inventory.equipment if eq.attrs.get("line"))
    poll(lambda: _reported(city, bus.id, "next_stop") is not None, 30, interval=0.5,
         what="a bus's next stop")
    assert str(_reported(city, bus.id, "next_stop")).startswith(f"{bus.attrs['line']}-")
    assert _reported(city, bus.id, "direction") in ("outbound", "inbound")
    assert isinstance(_reported(city, bus.id, "delay_s"), float)
