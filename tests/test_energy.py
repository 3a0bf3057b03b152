"""Energy reports: the circuits' metered hours summed per hour and per night, with both
baselines and savings; the API route's checks and scoping."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from admin_web import Role, StaticBackend, UserRegistry, create_app
from runtime import energy
from runtime.clock import CITY_TZ

EVENING = datetime.datetime(2026, 11, 23, 22, 0, tzinfo=CITY_TZ).timestamp()


def model(circuit: str, hours: dict[float, list[float]], lamps: int = 10) -> dict[str, Any]:
    return {"id": circuit, "municipality": "dijon", "lamps": lamps, "lamp_w": 70.0,
            "legacy_w": 150.0, "hours": {str(int(h)): row for h, row in hours.items()}}


def test_hours_and_nights_sum_the_circuits_with_both_baselines() -> None:
    a = model("lc-a", {EVENING: [490.0, 3600, 0, 0], EVENING + 3600: [350.0, 3600, 1, 0]})
    b = model("lc-b", {EVENING: [700.0, 3600, 0, 1]})
    hourly = energy.report([a, b], EVENING, EVENING + 7200, "hour")
    assert (hourly["circuits"], hourly["lamps"]) == (2, 20)
    first, second = hourly["steps"]
    assert first["metered_wh"] == 1190.0
    assert first["dimming_baseline_wh"] == 1400.0  # 20 lamps x 70 W x 1 h
    assert first["legacy_baseline_wh"] == 3000.0   # 20 lamps x 150 W x 1 h
    assert first["dimming_saving_pct"] == 15.0
    assert first["legacy_saving_pct"] == pytest.approx(60.33, abs=0.01)
    assert (second["metered_wh"], second["counter_resets"]) == (350.0, 1)
    nightly = energy.report([a, b], EVENING - 86_400, EVENING + 86_400, "night")
    (night,) = nightly["steps"]
    assert night["night"] == "2026-11-23"
    assert night["metered_wh"] == 1540.0 and night["counter_wraps"] == 1
    assert nightly["total"]["metered_wh"] == 1540.0
    # An hour outside the range is not counted.
    assert energy.report([a], EVENING + 3600, EVENING + 7200, "hour")["total"][
        "metered_wh"] == 350.0


def test_a_night_runs_noon_to_noon_and_is_named_by_its_first_date() -> None:
    after_midnight = datetime.datetime(2026, 11, 24, 3, 0, tzinfo=CITY_TZ).timestamp()
    assert energy.night_of(after_midnight).isoformat() == "2026-11-23"
    assert energy.night_of(EVENING).isoformat() == "2026-11-23"
    assert energy.dates_between(EVENING, after_midnight) == ["2026-11-23", "2026-11-24"]


def test_daylight_has_no_saving_rather_than_a_division_by_zero() -> None:
    noon = EVENING - 10 * 3600
    out = energy.report([model("lc-a", {noon: [0.0, 0, 0, 0]})], noon, noon + 3600, "hour")
    assert out["steps"][0]["dimming_saving_pct"] is None


class EnergyBackend(StaticBackend):
    def __init__(self) -> None:
        super().__init__(health={"status": "ok", "entities": 1, "online": 1})
        self.asked: list[dict[str, Any]] = []

    def energy(self, *, scope: str, ident: str | None, start: float | None,
               end: float | None, step: str, municipalities: frozenset[str] | None
               ) -> dict[str, Any]:
        self.asked.append({"scope": scope, "id": ident, "start": start, "end": end,
                           "step": step, "municipalities": municipalities})
        if ident == "nowhere":
            raise KeyError(ident)
        return {"scope": scope, "id": ident,
                **energy.report([model("lc-a", {EVENING: [490.0, 3600, 0, 0]})],
                                start or 0.0, end or 1e10, step)}


def test_the_api_checks_its_arguments_and_scopes_the_user() -> None:
    users = UserRegistry()
    users.add("viewer", Role.VIEWER, municipalities=["talant"], password="viewer-password",
              token="viewer-token-" + "v" * 20)
    backend = EnergyBackend()
    client = create_app(backend, users, secret_key=b"k" * 32).test_client()
    auth = {"Authorization": "Bearer viewer-token-" + "v" * 20}
    assert client.get("/api/v1/energy").status_code == 401
    ok = client.get(f"/api/v1/energy?scope=metropolis&from={EVENING - 3600}"
                    f"&to=2026-11-24T08:00&step=night", headers=auth)
    assert ok.status_code == 200, ok.get_json()
    assert ok.get_json()["steps"][0]["metered_wh"] == 490.0
    asked = backend.asked[-1]
    assert asked["municipalities"] == frozenset({"talant"})
    assert asked["end"] == datetime.datetime(2026, 11, 24, 8, tzinfo=CITY_TZ).timestamp()
    for query, field in [("scope=planet", "scope"), ("scope=circuit", "id"),
                         ("step=week", "step"), ("from=yesterday&to=1", "from"),
                         ("from=10&to=5", "to"), ("from=10", "to"),
                         (f"from=0&to={100 * 86_400}", "to")]:
        bad = client.get(f"/api/v1/energy?{query}", headers=auth)
        assert (bad.status_code, bad.get_json()["field"]) == (422, field), query
    assert client.get("/api/v1/energy?scope=municipality&id=nowhere",
                      headers=auth).status_code == 404
