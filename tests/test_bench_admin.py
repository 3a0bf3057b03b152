"""The admin bench: its seats, its routes, both ends' counts, and a short run of the whole.

The short run starts a small city (heavy: run it under ``flock /tmp/cp-heavy.lock``).
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from admin_web.desks import builtin_desks
from runtime.bench.admin import (
    ROUTES,
    TARGET_P95_MS,
    AccessCounter,
    plan_seats,
    route_of,
    run,
    summarize,
)
from runtime.demo_inventory import DemoPorts, generate_demo
from runtime.inventory import parse_inventory

pytestmark = pytest.mark.usefixtures("ray_runtime")


def test_each_seat_commands_equipment_of_its_desks_within_its_municipalities() -> None:
    inv = parse_inventory(generate_demo(scale=0.05, seed=1, ports=DemoPorts.free()), "<t>")
    seats = plan_seats(inv, 50, random.Random(3))
    book = builtin_desks()
    assert len({s.name for s in seats}) == 50
    assert sum(1 for s in seats if not s.municipalities) == 10
    for seat in seats:
        assert seat.targets, seat
        assert set(seat.desks) <= set(book.desks)
        for target in seat.targets:
            eq = inv.by_id(target["id"])
            assert eq.kind in seat.commands and eq.kind in seat.reads
            assert not seat.municipalities or eq.municipality in seat.municipalities
            assert any("set" in book.desks[d].commands.get(eq.kind, ()) for d in seat.desks)
    # Only the desks that read the video view see (and turn) cameras.
    for seat in seats:
        reads_video = any("video" in book.desks[d].views for d in seat.desks)
        assert ("camera" in seat.reads) == reads_video


def test_routes_are_told_apart_by_method_and_path() -> None:
    assert route_of("GET", "/api/v1/equipment") == "equipment_list"
    assert route_of("GET", "/api/v1/equipment/lc-dijon-0001") == "equipment_detail"
    assert route_of("POST", "/api/v1/equipment/lc-dijon-0001/commands") == "commands"
    assert route_of("GET", "/api/v1/equipment/lc-dijon-0001/commands") is None
    for route in ("alarms", "tree", "crisis", "interventions"):
        assert route_of("GET", f"/api/v1/{route}") == route
    assert route_of("POST", "/api/v1/crisis") is None


def test_the_server_counts_only_the_operators_requests() -> None:
    answered: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        answered.append(environ["PATH_INFO"])
        return [b"{}"]

    counter = AccessCounter(app, {"seat-01"})
    for seat, method, path in (("seat-01", "GET", "/api/v1/tree"),
                               ("seat-01", "POST", "/api/v1/equipment/x/commands"),
                               ("seat-01", "GET", "/api/v1/health"),
                               ("seat-02", "GET", "/api/v1/tree"),
                               (None, "GET", "/api/v1/tree")):
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path}
        if seat is not None:
            environ["HTTP_X_BENCH_SEAT"] = seat
        counter(environ, lambda *a: None)
    assert len(answered) == 5
    assert counter.counts == {"tree": 1, "commands": 1, "other": 1}


def test_figures_count_every_answer_that_is_not_2xx_as_an_error() -> None:
    fast = {"sent": 10, "window_ms": [10.0] * 8, "errors": {}}
    routes = {route: fast for route in ROUTES}
    figures = summarize(routes, 4.0)
    assert figures["requests"] == 8 * len(ROUTES) and figures["met"]
    assert figures["p95_ms"] == 10.0 and figures["requests_per_s"] == 8 * len(ROUTES) / 4
    failing = {**routes, "commands": {"sent": 10, "window_ms": [10.0] * 6,
                                      "errors": {"503": 1, "0": 1}}}
    figures = summarize(failing, 4.0)
    assert not figures["met"] and figures["errors"] == 2
    assert figures["routes"]["commands"]["errors"] == 2
    assert figures["routes"]["commands"]["requests"] == 8
    slow = {**routes, "tree": {"sent": 10, "window_ms": [TARGET_P95_MS + 1] * 8, "errors": {}}}
    assert not summarize(slow, 4.0)["met"]


@pytest.mark.timeout(180)
def test_a_short_run_counts_every_request_at_both_ends() -> None:
    # No simulators nor spare: the API journals the commands all the same, and the city
    # starts in half the time.
    result = run(scale=0.02, operators=4, seconds=3.0, warmup_s=1.0, think_s=0.2,
                 devices=False, spares=0, say=lambda _: None)
    assert result["operators"] == 4
    # Each operator logged in through the form and worked through his session.
    assert result["logins"] == {"ok": 4, "failed": 0}
    assert set(result["routes"]) == set(ROUTES)
    assert result["requests"] > 0
    assert result["requests"] == sum(r["requests"] for r in result["routes"].values())
    for figures in result["routes"].values():
        assert {"p50_ms", "p95_ms", "p99_ms", "errors"} <= set(figures)
    assert result["errors"] == 0, result["routes"]
    assert result["p95_ms"] is not None and result["p95_ms"] > 0
    counted = result["counted"]
    assert counted["client_sent"] >= result["requests"]
    assert counted["client_sent"] == counted["server_received"]
    assert all(c["client"] == c["server"] for c in counted["by_route"].values())
    assert counted["commands_sent"] == counted["commands_audited"]
    assert {"machine", "broker", "scale", "server_cpu", "redis_cpu"} <= set(result)
    assert {"warm spare", "device sessions"} <= set(result["left_out"])
