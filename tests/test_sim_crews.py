"""The simulated service-vehicle crews: parked while available, then a job driven, worked, done."""

from __future__ import annotations

import random
from typing import Any

import pytest

from devices.mqtt import decode_payload, encode_payload
from devices.profile import builtin_profile
from devices.sim.mqtt_devices import JOB_WORK_S, ROLE_SPEED_MS, _ServiceVehicle
from runtime.geo import distance_m
from runtime.inventory import Equipment

BASE = (47.30, 5.00)
SITE = (47.31, 5.01)  # ~1.3 km north-east


def crew() -> _ServiceVehicle:
    eq = Equipment(id="sv-1", kind="vehicle", municipality="dijon", lat=BASE[0], lon=BASE[1],
                   endpoint="mqtt://broker", profile="service_vehicle",
                   attrs={"role": "maintenance", "radio": True})
    return _ServiceVehicle(eq, builtin_profile("service_vehicle"), random.Random(1))


def sample(v: _ServiceVehicle, now: float) -> dict[str, Any]:
    out = v.sample(now, random.Random(2))
    # What the runtime's session accepts: the profile's ranges and choices.
    return decode_payload(builtin_profile("service_vehicle"), encode_payload(out))


def test_an_available_crew_stays_parked() -> None:
    v = crew()
    first, later = sample(v, 0.0), sample(v, 3600.0)
    assert first["status"] == later["status"] == "available"
    assert first["job_state"] == "idle" and later["speed"] == 0.0
    assert (first["lat"], first["lon"]) == (later["lat"], later["lon"]) == BASE


@pytest.mark.parametrize("pace", [1.0, 288.0])
def test_a_job_is_driven_to_worked_and_reported_done(pace: float) -> None:
    v = crew()
    v.apply({"job": "int-1", "job_lat": SITE[0], "job_lon": SITE[1]})
    arrive, done = v.take_job(100.0, random.Random(3), pace)
    drive = distance_m(BASE, SITE) / ROLE_SPEED_MS["maintenance"] / pace
    assert arrive - 100.0 == pytest.approx(drive, rel=0.01)
    assert JOB_WORK_S[0] / pace <= done - arrive <= JOB_WORK_S[1] / pace
    halfway = sample(v, 100.0 + drive / 2)
    assert (halfway["status"], halfway["job"], halfway["job_state"]) == ("busy", "int-1",
                                                                          "en_route")
    assert 0 < float(halfway["speed"]) <= 60  # the road speed, whatever the pace
    assert distance_m(BASE, (halfway["lat"], halfway["lon"])) == pytest.approx(
        distance_m(BASE, SITE) / 2, rel=0.02)
    on_site = sample(v, arrive + 1e-6)
    assert (on_site["status"], on_site["job_state"], on_site["speed"]) == ("busy", "on_site", 0)
    assert distance_m(SITE, (on_site["lat"], on_site["lon"])) < 1
    finished = sample(v, done + 1e-6)
    assert (finished["status"], finished["job"], finished["job_state"]) == (
        "available", "int-1", "done")
    # The same job written again (a reconnect) changes nothing.
    assert v.take_job(done + 10, random.Random(4), pace) == []
    assert sample(v, done + 20)["job_state"] == "done"


def test_a_job_taken_back_stops_the_crew_where_it_is() -> None:
    v = crew()
    v.apply({"job": "int-2", "job_lat": SITE[0], "job_lon": SITE[1]})
    arrive, _ = v.take_job(0.0, random.Random(3), 1.0)
    v.apply({"job": ""})
    assert v.take_job(arrive / 2, random.Random(3), 1.0) == []
    stopped = sample(v, arrive)
    assert (stopped["status"], stopped["job"], stopped["job_state"]) == ("available", "", "idle")
    assert 0.3 < distance_m(BASE, (stopped["lat"], stopped["lon"])) / distance_m(
        BASE, SITE) < 0.7


def test_out_of_service_is_reported_as_the_status() -> None:
    v = crew()
    v.out_of_service = True
    assert sample(v, 0.0)["status"] == "out_of_service"
