"""The flood plan end to end: through the API, the crisis coordinator and the journal to the
simulated devices, and back to what they held before.

The city runs as the benches run it (simulators on their protocols in their own process,
device sessions, hosts, the coordinators), with the kinds the flood plan acts on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from actors.plan import builtin_plans
from runtime.bench.common import ApiClient, City
from runtime.envelope import unpack
from tests.conftest import poll
from tests.helpers import next_local

pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("ray_runtime")]


@pytest.fixture(scope="module")
def city() -> Iterator[City]:
    # Buildings too: the cameras name the buildings they watch. The city's clock starts at
    # 08:00 on a working day, outside the bollards' pedestrian hours (deliveries: down).
    with City(scale=0.05, kinds={"access_terminal", "building", "camera", "crossroad"},
              say=lambda _: None, clock_start=next_local(8)) as c:
        yield c


def _reported(city: City, eid: str, name: str) -> Any:
    blob = city.svc.store.load_checkpoints([eid]).get(eid)
    reported = unpack(blob)["twin"]["reported"] if blob else {}
    return reported.get(name, {}).get("value")


def test_flood_raises_the_bollards_and_normal_lowers_them_again(city: City) -> None:
    inv = city.inventory
    bollard = next(eq for eq in inv.equipment if eq.kind == "access_terminal"
                   and "flood_prone" in eq.attrs.get("tags", ()))
    town = bollard.municipality
    book = builtin_plans()
    targets = book.plan("flood").resolve(book.candidates(inv.equipment), [town])
    cameras = sorted(e for e in targets if inv.by_id(e).kind == "camera")
    assert cameras, "the flood plan turns the town's cameras too"
    poll(lambda: _reported(city, bollard.id, "bollard") == "down", 30, what="bollard down")
    # A camera tells its preset in its heartbeat (every 10 s): the baseline needs it.
    presets = poll(lambda: (p := {c: _reported(city, c, "preset") for c in cameras})
                   and None not in p.values() and p, 30, interval=0.5,
                   what="every camera's preset reported")
    operator = ApiClient(city.admin_url, city.token("operator"))
    admin = ApiClient(city.admin_url, city.token("admin"))

    code, body = operator.call("POST", "/api/v1/crisis", {"mode": "flood",
                                                          "municipalities": [town]})
    assert code == 202, body
    activation = body["activation_id"]

    def row() -> dict[str, Any]:
        code, rows = operator.call("GET", "/api/v1/crisis")
        assert code == 200
        return dict(rows[town])

    done = {"done": len(targets), "pending": 0, "failed": 0}
    poll(lambda: row()["activation_id"] == activation and row()["entities"] == done, 30,
         interval=0.2, what="every flood setpoint acked")
    assert row()["mode"] == "flood" and row()["by"] == "operator"
    # The terminal moves its bollard for a few seconds, then reports it up.
    poll(lambda: _reported(city, bollard.id, "bollard") == "up", 30, interval=0.5,
         what="bollard reported up")
    poll(lambda: all(_reported(city, c, "preset") == 12 for c in cameras), 30, interval=0.5,
         what="cameras on their flood preset")

    code, body = operator.call("POST", "/api/v1/crisis", {"mode": "snow",
                                                          "municipalities": [town]})
    assert code == 409 and town in body["error"]

    code, body = operator.call("POST", "/api/v1/crisis", {"mode": "normal",
                                                          "municipalities": [town]})
    assert code == 202, body
    end = body["activation_id"]
    poll(lambda: row()["activation_id"] == end and row()["entities"]["pending"] == 0, 30,
         interval=0.2, what="every restore final")
    assert row()["mode"] == "normal" and row()["entities"]["failed"] == 0
    assert row()["kept"] == []
    poll(lambda: _reported(city, bollard.id, "bollard") == "down", 30, interval=0.5,
         what="bollard reported down again")
    poll(lambda: {c: _reported(city, c, "preset") for c in cameras} == presets, 30,
         interval=0.5, what="cameras back on their presets")
    code, events = admin.call("GET", "/api/v1/events?entity=crisis&limit=50")
    assert code == 200
    names = [(e["event"], e.get("activation")) for e in events]
    assert ("crisis_masks", activation) in names and ("crisis_released", activation) in names
