"""The bus-priority latency bench's flood phase: its placement and its flooded vehicles."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from runtime.bench.priority import FLOOD_DEVICES, colocated, flooded, passes_for
from runtime.demo_inventory import build_demo
from runtime.inventory import Inventory
from runtime.placement import plan


@pytest.fixture(scope="module")
def demo() -> Inventory:
    return build_demo(0.2)


def test_the_flood_puts_the_crossroads_and_every_vehicle_on_one_host(demo: Inventory) -> None:
    policy = colocated(demo.placement)
    assert policy.colocate == {"fleet": "traffic"}
    assert policy.shards_for("traffic") == 1 and "fleet" not in policy.shards
    # The other domains keep the demo's shards.
    assert policy.shards_for("lighting") == demo.placement.shards_for("lighting")
    p = plan(dataclasses.replace(demo, placement=policy))
    owners = {p.owner[eq.id] for eq in demo.equipment if eq.kind in ("crossroad", "vehicle")}
    assert owners == {"traffic-0"}
    host = p.host("traffic-0")
    kinds = Counter(demo.by_id(e).kind for e in host.entity_ids)
    counts = demo.count_by_kind()
    assert kinds == {"crossroad": counts["crossroad"], "vehicle": counts["vehicle"]}
    assert host.domain == "traffic" and "fleet" not in p.by_domain()


def test_the_generator_floods_vehicles_but_not_the_bench_s_buses(demo: Inventory) -> None:
    buses = [eq.id for eq in demo.equipment if eq.profile == "bus"]
    passes = passes_for(demo, buses, through=False)
    assert passes
    chosen = flooded(demo, passes)
    ids = [eq.id for eq in chosen]
    assert not set(ids) & set(passes)
    assert len(ids) == len(set(ids))
    assert all(eq.kind == "vehicle" and eq.endpoint == "mqtt" for eq in chosen)
    assert {eq.profile for eq in chosen} == {"bus", "service_vehicle"}
    vehicles = sum(1 for eq in demo.equipment if eq.kind == "vehicle")
    assert len(ids) == min(FLOOD_DEVICES, vehicles - len(passes))
    # Fewer wanted than there are: spread over the whole list, both kinds kept.
    few = flooded(demo, passes, want=10)
    assert len({eq.id for eq in few}) == 10
    assert {eq.profile for eq in few} == {"bus", "service_vehicle"}
