"""``commandpost bench command``: the operator's command round trip, as the operator lives it.

With the city running as ``make demo`` runs it (:class:`~runtime.bench.common.City`),
``n`` lighting dims are sent one at a time, each through
``POST /api/v1/equipment/ID/commands`` with an operator's token, then
``GET /api/v1/commands/ID`` is polled every 10 ms until the command is final.
The circuits rotate over every lighting host and municipality, and each dim
differs from the value the circuit holds, so every command moves lamps.

The round trip (POST sent → poll sees ``acked``) is split with the
timestamps the command collects on its way (:mod:`runtime.commands`)::

    journal_to_host   created_ts → sent_ts              journaled, then picked by its host
    host_to_device    sent_ts → the device's first I/O  through the mailbox to the entity
    device_read       device_read_ts → device_write_ts  the circuit reads its lamps first
    device_write      device_write_ts → device_confirmed_ts
    device_to_ack     device_confirmed_ts → updated_ts  checkpoint, then the ack in Redis
    ack_to_api        updated_ts → the poll that saw it

A few warm-up commands (one per lighting host) open the sessions first and
are not counted. Commands that end ``failed``, ``expired`` or
``superseded``, or are not final within ``timeout_s``, count as ``failed``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

from runtime.bench.common import ApiClient, City, Say, latency_summary, machine, percentile
from runtime.errors import RetryableError

POLL_INTERVAL_S = 0.01
STAGES = ("journal_to_host", "host_to_device", "device_read", "device_write", "device_to_ack",
          "ack_to_api")
FINAL = frozenset({"acked", "failed", "expired", "superseded"})


def _targets(city: City) -> list[str]:
    """Lighting circuits interleaved across hosts and municipalities."""
    owner = city.svc.plan.owner
    by_group: dict[tuple[str, str], list[str]] = {}
    for eq in city.inventory.equipment:
        if eq.kind == "lighting_circuit":
            by_group.setdefault((owner[eq.id], eq.municipality), []).append(eq.id)
    groups = [by_group[k] for k in sorted(by_group)]
    out: list[str] = []
    for i in range(max((len(g) for g in groups), default=0)):
        out += [g[i] for g in groups if i < len(g)]
    return out


def _held_dim(city: City, circuit: str) -> int | None:
    """The dim the circuit's lamps hold at the simulator (None when unknown)."""
    try:
        lamps = city.control.values(circuit).get("lamp") or []
    except Exception:  # the control channel is a convenience here, not a requirement
        return None
    dims = {int(lamp["dim"]) for lamp in lamps if isinstance(lamp, dict) and "dim" in lamp}
    return dims.pop() if len(dims) == 1 else None


def _one(api: ApiClient, circuit: str, dim: int, timeout_s: float) -> dict[str, Any]:
    """Send one dim and poll it to its end: the record and when the poll saw it."""
    t0 = time.perf_counter()
    status, body = api.call("POST", f"/api/v1/equipment/{circuit}/commands",
                            {"action": "set", "params": {"dim": dim}})
    if status != 202:
        return {"status": f"http {status}", "error": str(body), "round_trip_s": None}
    path = f"/api/v1/commands/{body['command_id']}"
    deadline = t0 + timeout_s
    record: dict[str, Any] = {}
    while time.perf_counter() < deadline:
        code, record = api.call("GET", path)
        if code == 200 and record.get("status") in FINAL:
            return {**record, "round_trip_s": time.perf_counter() - t0,
                    "seen_ts": time.time()}
        time.sleep(POLL_INTERVAL_S)
    return {**record, "status": "timeout", "stuck_at": record.get("status"),
            "round_trip_s": None}


def _stages(rec: dict[str, Any]) -> dict[str, float]:
    """The stage durations (s) of one acked command; stages it did not stamp are left out."""
    read, write = rec.get("device_read_ts"), rec.get("device_write_ts")
    spans = {
        "journal_to_host": (rec.get("created_ts"), rec.get("sent_ts")),
        "host_to_device": (rec.get("sent_ts"), read or write),
        "device_read": (read, write),
        "device_write": (write, rec.get("device_confirmed_ts")),
        "device_to_ack": (rec.get("device_confirmed_ts"), rec.get("updated_ts")),
        "ack_to_api": (rec.get("updated_ts"), rec.get("seen_ts")),
    }
    return {name: max(0.0, float(b) - float(a)) for name, (a, b) in spans.items() if a and b}


def _ms(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None}
    return {"p50": round(percentile(values, 50) * 1000, 2),
            "p99": round(percentile(values, 99) * 1000, 2)}


def run(*, scale: float = 1.0, say: Say = print, n: int = 200, broker: str = "auto",
        timeout_s: float = 10.0, seed: int = 0, **_: Any) -> dict[str, Any]:
    """Time ``n`` lighting dims through the HTTP API with the city running (module doc)."""
    rng = random.Random(seed)
    with City(scale=scale, say=say, broker=broker) as city:
        targets = _targets(city)
        if not targets:
            raise RetryableError("the inventory has no lighting circuit to dim")
        api = ApiClient(city.admin_url, city.token("operator"))
        held: dict[str, int | None] = {}

        def next_dim(circuit: str) -> int:
            if circuit not in held:
                held[circuit] = _held_dim(city, circuit)
            current = held[circuit]
            dim = rng.randrange(5, 96)
            while dim == current:
                dim = rng.randrange(5, 96)
            held[circuit] = dim
            return dim

        try:
            hosts = {city.svc.plan.owner[t] for t in targets}
            warm = [next(t for t in targets if city.svc.plan.owner[t] == h) for h in sorted(hosts)]
            for circuit in warm:
                _one(api, circuit, next_dim(circuit), timeout_s)
            say(f"warmed {len(warm)} lighting hosts; timing {n} commands over "
                f"{min(n, len(targets))} circuits")
            results = []
            for i in range(n):
                circuit = targets[(i + len(warm)) % len(targets)]
                results.append(_one(api, circuit, next_dim(circuit), timeout_s))
                if (i + 1) % 50 == 0:
                    say(f"{i + 1}/{n} commands")
        finally:
            api.close()
        acked = [r for r in results if r.get("status") == "acked"]
        stages: dict[str, list[float]] = {name: [] for name in STAGES}
        for rec in acked:
            for name, value in _stages(rec).items():
                stages[name].append(value)
        summary = latency_summary(r["round_trip_s"] for r in acked)
        failures: dict[str, int] = {}
        errors: dict[str, int] = {}
        for r in results:
            if r.get("status") == "acked":
                continue
            failures[str(r.get("status"))] = failures.get(str(r.get("status")), 0) + 1
            # Circuit ids vary; the kind of error is what tells where the path broke.
            why = str(r.get("error") or f"not final, still {r.get('stuck_at')}")
            why = why.replace(str(r.get("target", "")), "ID")[:160]
            errors[why] = errors.get(why, 0) + 1
        return {
            "n": n,
            "acked": len(acked),
            "p50_ms": summary["p50"],
            "p99_ms": summary["p99"],
            "max_ms": summary["max"],
            "failed": n - len(acked),
            "failed_by_status": failures,
            "errors": errors,
            "stages_ms": {name: _ms(values) for name, values in stages.items()},
            "poll_interval_ms": POLL_INTERVAL_S * 1000,
            "warmup": len(warm),
            "circuits": min(n, len(targets)),
            "hosts": len(hosts),
            "scale": scale,
            "broker": city.broker_kind,
            "machine": machine(),
            "left_out": list(city.left_out),
        }
