"""The bus-priority latency bench: its flood phase's placement and flooded vehicles, and
how a sample's time is matched and split into legs."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import pytest

from runtime.bench.priority import (
    FLOOD_DEVICES,
    LEGS,
    MISS_S,
    Trigger,
    colocated,
    flooded,
    legs,
    matched,
    passes_for,
)
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


def test_each_sample_is_matched_to_its_receipt_and_split_into_legs_by_request_id() -> None:
    triggers = [Trigger("bus-1", "xr-1", 1, 100.000), Trigger("bus-2", "xr-2", 3, 100.010),
                Trigger("bus-3", "xr-3", 1, 100.020)]
    receipts = [
        {"device": "xr-1", "approach": 1, "command": "request", "request_id": 11,
         "ts": 100.004},
        {"device": "xr-1", "approach": 1, "command": "checkout", "request_id": 11,
         "ts": 100.500},
        {"device": "xr-2", "approach": 3, "command": "request", "request_id": 12,
         "ts": 100.013},
        # bus-3's request came too late: a miss.
        {"device": "xr-3", "approach": 1, "command": "request", "request_id": 13,
         "ts": 100.020 + MISS_S + 0.1},
    ]
    found = matched(triggers, receipts, {})
    assert [r["request_id"] if r else None for _, r in found] == [11, 12, None]
    assert math.isclose(found[0][0], 0.004) and math.isinf(found[2][0])
    timelines = [[[11, 100.001, 100.0015, 100.002, 100.0025, 100.0035]],
                 [[12, 100.011, 100.0115, 100.012, 100.0122, 100.0125], [99, 0, 0, 0, 0, 0]]]
    out = legs(found, [t.published for t in triggers], timelines)
    assert out["joined"] == 2
    assert set(out) == {*LEGS, "joined"}
    assert math.isclose(out["broker"]["p50"], 1.0, abs_tol=1e-3)  # both 1 ms
    assert 0.2 <= out["policy"]["p50"] <= out["policy"]["p99"] <= 0.5  # 0.5 and 0.2 ms
    assert 0.8 <= out["field"]["p50"] <= out["field"]["p99"] <= 1.5  # 1.5 and 0.8 ms
    # A leg's time is the gap between its two stamps: together they make the latency.
    for (latency, record), at in zip(found[:2], [t.published for t in triggers][:2],
                                     strict=True):
        assert record is not None
        assert math.isclose(latency, float(record["ts"]) - at)
