"""``commandpost bench alarm``: from a device raising an alarm to the operator seeing it.

The city runs as ``make demo`` runs it (:class:`~runtime.bench.common.City`).
Each round picks a building or a camera in turn and asks the simulators,
through their control channel (:mod:`devices.sim.control`), for a fire in
zone 1 (a building's management system over OPC UA) or a tamper (a camera,
over MQTT). From the moment the request returns, the bench polls
``GET /api/v1/alarms?source=ID&state=all`` every ``poll_s`` until the alarm
shows a new activation (its ``activations`` count went up): that is the
latency, the whole path a real alarm takes — device, session, entity, event
stream, alarms coordinator, read model, API. The round then clears the fire
at the source and acknowledges the alarm, so the next round of the same
device raises it anew.

Figures: ``n`` rounds, ``p50_ms``, ``p99_ms``, ``max_ms`` and per kind.
"""

from __future__ import annotations

import time
from typing import Any

from runtime.bench.common import ApiClient, City, Say, latency_summary, machine
from runtime.errors import ConfigError

__all__ = ["run"]

_KINDS = {"building": "fire", "camera": "tamper"}


def _activations(api: ApiClient, source: str, condition: str) -> tuple[int, dict[str, Any]]:
    code, body = api.call("GET", f"/api/v1/alarms?state=all&source={source}")
    if code != 200:
        raise ConfigError(f"GET /api/v1/alarms answered {code}: {body}")
    for a in body:
        if a.get("condition") == condition:
            return int(a.get("activations") or 0), a
    return 0, {}


def run(*, scale: float = 1.0, say: Say = print, broker: str = "auto", rounds: int = 200,
        poll_s: float = 0.01, timeout_s: float = 20.0, **_: Any) -> dict[str, Any]:
    """The figures of this bench (see the module docstring)."""
    with City(scale=scale, say=say, broker=broker) as city:
        api = ApiClient(city.admin_url, city.token("admin"))
        pools = {kind: [eq.id for eq in city.inventory.equipment if eq.kind == kind]
                 for kind in _KINDS}
        if not all(pools.values()):
            raise ConfigError("the inventory needs buildings and cameras")
        say(f"{rounds} alarms alternating fires and tampers; {machine()}")
        latencies: dict[str, list[float]] = {k: [] for k in _KINDS}
        missed = 0
        for n in range(rounds):
            kind = "building" if n % 2 == 0 else "camera"
            pool = pools[kind]
            source = pool[(n // 2) % len(pool)]
            condition = {"building": "fire", "camera": "camera_tamper"}[kind]
            before, _ = _activations(api, source, condition)
            city.control.fault(source, _KINDS[kind], True)
            t0 = time.perf_counter()
            seen: dict[str, Any] = {}
            while time.perf_counter() - t0 < timeout_s:
                count, seen = _activations(api, source, condition)
                if count > before:
                    latencies[kind].append(time.perf_counter() - t0)
                    break
                time.sleep(poll_s)
            else:
                missed += 1
                say(f"round {n}: no {condition} alarm of {source} within {timeout_s:.0f}s")
            if kind == "building":
                city.control.fault(source, "fire", False)
            if seen.get("id"):
                api.call("POST", f"/api/v1/alarms/{seen['id']}/ack", {"comment": "bench"})
            if (n + 1) % 50 == 0:
                got = [x for v in latencies.values() for x in v]
                say(f"{n + 1} rounds; p50 so far {latency_summary(got)['p50']} ms")
        everything = [x for v in latencies.values() for x in v]
        summary = latency_summary(everything)
        return {
            "n": len(everything),
            "p50_ms": summary["p50"],
            "p99_ms": summary["p99"],
            "max_ms": summary["max"],
            "missed": missed,
            "by_kind": {k: latency_summary(v) for k, v in latencies.items()},
            "scale": scale,
            "machine": machine(),
            "broker": city.broker_kind,
            "left_out": list(city.left_out),
        }
