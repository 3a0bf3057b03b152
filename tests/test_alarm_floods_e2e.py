"""Alarm floods end to end: a storm silences 300 devices behind one network host.

The city runs as the benches run it (simulators in their own process, device
sessions, hosts, the alarms coordinator); the storm comes through the
simulators' control channel. The operator sees one summary row with the count;
every child stays queryable by its group.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from runtime.bench.common import ApiClient, City
from tests.conftest import poll

pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("ray_runtime")]

STORMED = 300


@pytest.fixture(scope="module")
def city() -> Iterator[City]:
    with City(scale=0.3, kinds={"lighting_circuit"}, say=lambda _: None) as c:
        yield c


def test_storm_behind_one_network_host_is_one_summary(city: City) -> None:
    ids = sorted(eq.id for eq in city.inventory.equipment)
    # Every cabinet's gateway sits on one network host: one communication path.
    paths = {city.inventory.by_id(e).endpoint.split("://")[1].split(":")[0] for e in ids}
    assert len(ids) >= STORMED and len(paths) == 1
    api = ApiClient(city.admin_url, city.token("operator"))
    stormed = ids[:STORMED]
    city.control.storm(stormed, 60.0)

    def summary() -> dict[str, Any] | None:
        code, body = api.call("GET", "/api/v1/alarms")
        assert code == 200
        rows = [a for a in body if a["condition"] == "flood_summary"]
        return rows[0] if rows and rows[0]["count"] == STORMED else None

    row = poll(summary, 120, interval=0.5, what=f"one summary counting {STORMED}")
    code, listed = api.call("GET", "/api/v1/alarms")
    assert code == 200
    offline_rows = [a for a in listed if a["condition"] == "device_offline"]
    assert offline_rows == [], "children are listed under their summary only"
    code, children = api.call("GET", f"/api/v1/alarms?group={row['id']}")
    assert code == 200
    assert sorted(a["source"] for a in children) == stormed
    assert all(a["condition"] == "device_offline" and a["group"] == row["id"]
               for a in children)


def test_mains_fault_is_one_cabinet_alarm_masking_its_lamps(city: City) -> None:
    api = ApiClient(city.admin_url, city.token("operator"))
    cabinet = sorted(eq.id for eq in city.inventory.equipment)[-1]  # not stormed

    def alarms() -> dict[str, dict[str, Any]]:
        code, body = api.call("GET", f"/api/v1/alarms?state=all&source={cabinet}")
        assert code == 200
        return {a["condition"]: a for a in body}

    city.control.fault(cabinet, "lamp", True)
    poll(lambda: alarms().get("lamp_fault", {}).get("state") == "unacknowledged", 60,
         what="lamp fault alarm")
    city.control.fault(cabinet, "mains", True)
    poll(lambda: alarms().get("cabinet_mains_fault", {}).get("active"), 60,
         what="mains fault alarm")
    got = poll(lambda: (a := alarms()) and a["lamp_fault"]["state"] == "suppressed" and a, 60,
               what="lamp alarm suppressed by the mains fault")
    assert got["lamp_fault"]["suppressed_by"] == got["cabinet_mains_fault"]["id"]
    code, shown = api.call("GET", f"/api/v1/alarms?source={cabinet}")
    assert code == 200
    assert [a["condition"] for a in shown] == ["cabinet_mains_fault"]
    city.control.fault(cabinet, "mains", False)
    poll(lambda: alarms()["lamp_fault"]["state"] == "unacknowledged", 60,
         what="lamp alarm shown again once the mains is back")
