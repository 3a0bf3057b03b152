"""The ingest bench's counting against the real city: nothing lost, then 1 % injected loss.

The city is started as ``make demo`` runs it (simulators on real protocols,
embedded Redis and broker, Ray, warm spare, admin web) at a small scale, with
its MQTT devices at 20 Hz. With no loss injected every protocol counts
emitted = applied; with 1 % of MQTT telemetry dropped after it was counted as
emitted, ``lost`` comes out at about 1 % and the capacity step fails.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runtime.bench.common import City
from runtime.bench.ingest import measure_capacity, measure_nominal

pytestmark = pytest.mark.usefixtures("ray_runtime")

RATE_HZ = 20.0


@pytest.fixture(scope="module")
def city() -> Iterator[City]:
    with City(scale=0.05, say=lambda s: None, sim_rate_hz=RATE_HZ) as c:
        assert c.online() == len(c.inventory.equipment)
        yield c


def test_every_sample_emitted_is_applied(city: City) -> None:
    r = measure_nominal(city, seconds=5.0, rate_hz=RATE_HZ, say=lambda s: None)
    for proto in ("mqtt", "modbus", "opcua"):
        p = r["by_protocol"][proto]
        assert p["emitted"] > 0, proto
        assert p["lost"] == 0 and p["applied"] == p["emitted"], (proto, p)
        assert p["numbering_errors"] == 0, (proto, p)
        assert p["points"] == p["points_emitted"], (proto, p)
    assert r["lost"] == 0
    assert r["lag_ms"]["p99"] is not None
    # The configured MQTT rate is what the simulator offered (short window: 5 %).
    assert r["offered_msgs_per_s"] >= 0.95 * r["configured_msgs_per_s"]


def test_one_percent_loss_is_counted_and_fails_the_capacity_step(city: City) -> None:
    r = measure_nominal(city, seconds=10.0, rate_hz=RATE_HZ, loss=0.01, say=lambda s: None)
    mqtt = r["by_protocol"]["mqtt"]
    assert 0.005 * mqtt["emitted"] <= mqtt["lost"] <= 0.015 * mqtt["emitted"], mqtt
    # Every sample lost is one the simulator dropped on purpose: the runtime lost none.
    assert mqtt["lost"] == mqtt["dropped"]
    assert r["by_protocol"]["modbus"]["lost"] == 0
    cap = measure_capacity(city, step_s=5.0, warmup_s=1.0, steps=(300,), loss=0.01,
                           say=lambda s: None)
    [step] = cap["capacity"]["steps"]
    assert step["lost"] > 0 and step["passed"] is False
    assert cap["capacity"]["mqtt_msgs_per_s"] == 0
