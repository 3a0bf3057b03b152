"""``commandpost bench tsp`` end to end, short: SUMO's corridor run without priority, then
with the whole runtime granting it for real (positions on MQTT through the broker's
per-device accounts, the pool, the crossroads' lanes, Modbus writes to the controllers
that drive SUMO's lights). Six minutes of traffic: what the pool decided is what the
controllers received, and the buses stood less at the signals."""

from __future__ import annotations

import logging

import pytest

from runtime.bench import tsp

log = logging.getLogger(__name__)
pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("ray_runtime")]


def test_the_pool_grants_priority_in_sumo_and_the_buses_stand_less() -> None:
    # Twice the bench's clock speed: the corridor's runtime keeps up with it here (the
    # same grants, no lag) in less time.
    got = tsp.run(seeds=1, sim_hours=0.1, clock_speed=2 * tsp.CLOCK_SPEED, say=log.info)
    requests, controllers = got["requests"], got["controllers"]
    assert got["bus_trips"] >= 2 and got["other_trips"] > 100, got
    assert got["buses"]["published"] > 100 and got["buses"]["unequipped_trips"] == 0, got
    # Counted at both ends: every grant the pool counted reached a controller, once.
    assert requests["granted"] >= 3, requests
    assert controllers["received"] == requests["granted"], (requests, controllers)
    assert controllers.get("duplicates", 0) == 0, controllers
    delay = got["bus_signal_delay_s"]
    assert delay["on"] < delay["off"], delay
    assert got["lag_s"] < 30, got["lag_s"]
