"""``commandpost bench tsp``'s own parts that need neither SUMO nor Ray: its priority rules,
the service that runs them, its figures and its options."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.priority.policy import builtin_priority_config, parse_priority_config
from runtime.bench.tsp import _Files, _pooled, priority_rules
from runtime.cli import BENCHES
from runtime.errors import ConfigError, PlanError
from runtime.service import Service, ServiceOptions
from runtime.sumo.delay import Summary
from runtime.sumo.network import parse_network, parse_routes, scenario_of
from tests import sumo_fixtures


def test_rules_are_the_shipped_ones_with_the_lines_unconditional() -> None:
    shipped = builtin_priority_config()
    rules = parse_priority_config(priority_rules(["C1", "L1"]), "<bench>")
    assert rules.rules("C1").min_lateness_s == 0
    assert rules.rules("L1") == shipped.rules("L1")  # declared by the file: as it says
    assert rules.rules("other") == shipped.default
    assert (rules.lockout_s, rules.max_grants, rules.request_deadline_s) == \
        (shipped.lockout_s, shipped.max_grants, shipped.request_deadline_s)
    assert not rules.grant_all


def test_service_runs_its_own_rules(tmp_path: Path) -> None:
    net, routes = sumo_fixtures.write(tmp_path)
    inventory = scenario_of(parse_network(net), parse_routes([routes])).inventory(
        port=15555, buses={"X": 1})
    text = priority_rules(["X"])
    svc = Service(inventory, ServiceOptions(coordinators=(), priority_rules=text))
    members = [c for c in svc.coordinators if c.id.startswith("priority-")]
    assert members and all(m.attrs["rules"] == text for m in members)
    with pytest.raises(PlanError, match="lockout_s"):
        Service(inventory, ServiceOptions(coordinators=(),
                                          priority_rules="[crossroad]\nlockout_s = -1\n"))


def test_pooled_means_weigh_each_trip() -> None:
    one = Summary(1, 10, 40.0, 400.0, 20.0, 100.0, 0)
    two = Summary(3, 30, 20.0, 300.0, 30.0, 120.0, 2)
    pooled = _pooled([one, two])
    assert (pooled.bus_trips, pooled.other_trips, pooled.unfinished) == (4, 40, 2)
    assert pooled.bus_delay_s == pytest.approx(25.0)
    assert pooled.bus_travel_s == pytest.approx(325.0)
    assert pooled.other_delay_s == pytest.approx(27.5)
    assert _pooled([Summary(0, 0, None, None, None, None)]).bus_delay_s is None


def test_options_that_do_not_go_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--routes needs --net"):
        _Files(tmp_path, net=None, routes="a.rou.xml", additional=None, hours=1, scale=1)
    with pytest.raises(ConfigError, match="--net needs --routes"):
        _Files(tmp_path, net="a.net.xml", routes=None, additional=None, hours=1, scale=1)
    with pytest.raises(ConfigError, match="--scale"):
        _Files(tmp_path, net="a.net.xml", routes="a.rou.xml", additional=None, hours=1,
               scale=2)
    files = _Files(tmp_path, net="a.net.xml", routes="a.rou.xml,b.rou.xml",
                   additional="s.add.xml", hours=1, scale=1)
    args = files.sumo_args(3, tmp_path / "trips.xml")
    assert args[:6] == ["-n", "a.net.xml", "-r", "a.rou.xml,b.rou.xml", "-a", "s.add.xml"]
    assert files.routes(1) == files.routes(2)  # the routes given, for every seed


def test_bench_is_registered() -> None:
    assert BENCHES["tsp"][0] == "tsp"
