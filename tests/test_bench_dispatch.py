"""The dispatch bench's own pieces: its distance code, the day's profile, the nearest check."""

from __future__ import annotations

import random
from typing import Any

import pytest

from runtime.bench.dispatch import HOURLY_PROFILE, Watch, check_nearest, day_times, haversine_m
from runtime.clock import SystemClock
from runtime.geo import distance_m

SITE = (47.3220, 5.0415)


def test_the_bench_distance_agrees_with_the_runtime_within_half_a_percent() -> None:
    for b in ((47.30, 5.00), (47.35, 5.10), (47.3221, 5.0416), (47.25, 4.95)):
        assert haversine_m(SITE, b) == pytest.approx(distance_m(SITE, b), rel=0.005)


def test_the_day_follows_the_hourly_profile() -> None:
    times = day_times(20_000, random.Random(1))
    assert times == sorted(times) and 0 <= times[0] and times[-1] < 86_400
    night = sum(1 for t in times if t < 6 * 3600) / len(times)
    morning = sum(1 for t in times if 9 * 3600 <= t < 11 * 3600) / len(times)
    total = sum(HOURLY_PROFILE)
    assert night == pytest.approx(sum(HOURLY_PROFILE[:6]) / total, abs=0.01)
    assert morning == pytest.approx(sum(HOURLY_PROFILE[9:11]) / total, abs=0.01)


def vehicle(vid: str, lat: float, lon: float, **over: Any) -> dict[str, Any]:
    return {"id": vid, "role": "maintenance", "status": "available", "online": True,
            "assigned": None, "excluded_until": None, "lat": lat, "lon": lon, **over}


def assignment(vid: str, at: float, **over: Any) -> dict[str, Any]:
    return {"id": "int-1", "vehicle": vid, "assigned_ts": at, "lat": SITE[0], "lon": SITE[1],
            "state": "assigned", "updated_ts": at, **over}


def test_the_nearest_check() -> None:
    watch = Watch(SystemClock(), fleets=[(100.0, [vehicle("near", 47.3230, 5.0415),
                                   vehicle("far", 47.3500, 5.0415),
                                   vehicle("busy", 47.3221, 5.0415, status="busy")])])
    roles = ("maintenance",)
    ok = assignment("near", 100.5)
    assert check_nearest(ok, roles, watch, [ok]) == "match"
    wrong = assignment("far", 100.5)
    assert check_nearest(wrong, roles, watch, [wrong]) == "mismatch"
    # "near" went to another request just before: "far" was the nearest left.
    other = {**assignment("near", 100.2), "id": "int-0"}
    assert check_nearest(wrong, roles, watch, [wrong, other]) == "match"
    # A vehicle freed since the fleet was read: the API could not show it free.
    freed = {**assignment("busy", 90.0), "id": "int-9", "state": "done", "updated_ts": 100.1}
    late = assignment("busy", 100.5)
    assert check_nearest(late, roles, watch, [late, freed]) == "unverified"
    # No fleet read before the assignment: nothing to check against.
    assert check_nearest(assignment("near", 50.0), roles, watch, []) == "unverified"
