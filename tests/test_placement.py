"""Placement of entities onto hosts: shards, dedicated hosts, domains colocated with others."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from runtime.demo_inventory import build_demo
from runtime.envelope import unpack
from runtime.inventory import Inventory, PlacementPolicy
from runtime.placement import CONTROL_HOST, plan, stable_shard


@pytest.fixture(scope="module")
def demo() -> Inventory:
    return build_demo(0.1)


def placed(inv: Inventory, **policy: object) -> Inventory:
    return dataclasses.replace(inv, placement=PlacementPolicy(**policy))  # type: ignore[arg-type]


def test_sharded_entities_go_to_their_domains_hosts(demo: Inventory) -> None:
    p = plan(placed(demo, shards={"lighting": 3}))
    lighting = [h for h in p.hosts if h.domain == "lighting"]
    assert [h.host_id for h in lighting] == ["lighting-0", "lighting-1", "lighting-2"]
    for eq in demo.equipment:
        shards = 3 if eq.domain == "lighting" else 1
        assert p.owner[eq.id] == f"{eq.domain}-{stable_shard(eq.municipality, eq.id, shards)}"
    assert sorted(p.owner) == sorted(eq.id for eq in demo.equipment)


def test_a_colocated_domain_joins_the_hosts_of_the_other(demo: Inventory) -> None:
    inv = placed(demo, shards={"traffic": 2}, colocate={"fleet": "traffic"})
    p = plan(inv)
    by_domain = p.by_domain()
    assert "fleet" not in by_domain
    assert [h.host_id for h in by_domain["traffic"]] == ["traffic-0", "traffic-1"]
    kinds = Counter(demo.by_id(e).kind for h in by_domain["traffic"] for e in h.entity_ids)
    counts = demo.count_by_kind()
    assert kinds == {"crossroad": counts["crossroad"], "vehicle": counts["vehicle"]}
    for eq in demo.equipment:
        if eq.kind == "vehicle":
            # The same stable hash, over the traffic domain's shard count.
            assert p.owner[eq.id] == f"traffic-{stable_shard(eq.municipality, eq.id, 2)}"
    # The other domains are where they were.
    alone = plan(placed(demo, shards={"traffic": 2}))
    assert {e: h for e, h in p.owner.items() if demo.by_id(e).kind != "vehicle"} == \
        {e: h for e, h in alone.owner.items() if demo.by_id(e).kind != "vehicle"}
    assert all(h.mode == "sharded" for h in by_domain["traffic"])


def test_a_dedicated_entity_of_a_colocated_domain_keeps_a_host_of_its_own(
        demo: Inventory) -> None:
    bus = next(eq for eq in demo.equipment if eq.kind == "vehicle")
    equipment = tuple(dataclasses.replace(eq, placement="dedicated") if eq is bus else eq
                      for eq in demo.equipment)
    inv = dataclasses.replace(demo, equipment=equipment,
                              placement=PlacementPolicy(colocate={"fleet": "traffic"}))
    p = plan(inv)
    host = p.host(p.owner[bus.id])
    assert (host.host_id, host.domain, host.mode, host.entity_ids) == (
        f"dedicated-{bus.id}", "fleet", "dedicated", (bus.id,))
    assert [h.host_id for h in p.by_domain()["fleet"]] == [f"dedicated-{bus.id}"]


def test_the_service_ships_the_colocated_plan_to_the_tree(demo: Inventory) -> None:
    """The root builds its supervisors from the hosts of root_config alone: the traffic
    host carries both kinds' records, under the traffic label, in the directory too."""
    from runtime.service import Service, ServiceOptions

    inv = placed(demo, colocate={"fleet": "traffic"})
    svc = Service(inv, ServiceOptions(mqtt_url="mqtt://127.0.0.1:1"))
    cfg = unpack(svc.root_config(), max_size=256 << 20)
    hosts = {h["host_id"]: h for h in cfg["hosts"]}
    assert "fleet-0" not in hosts
    traffic = hosts["traffic-0"]
    assert traffic["domain"] == "traffic" and traffic["mode"] == "sharded"
    assert {r["kind"] for r in traffic["equipment"]} == {"crossroad", "vehicle"}
    vehicles = [eq.id for eq in inv.equipment if eq.kind == "vehicle"]
    assert {r["id"] for r in traffic["equipment"]} >= set(vehicles)
    assert all(cfg["directory"][v] == "traffic-0" for v in vehicles)
    assert "fleet" not in {h["domain"] for h in cfg["hosts"]}
    assert hosts[CONTROL_HOST]["domain"] == "control"
