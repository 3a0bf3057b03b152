"""Benchmarks behind ``commandpost bench NAME``: honest figures, one JSON line.

Each function returns the figures; the CLI prints them as the last line.
Timings on a shared 2-core machine are noisy: compare within one run.
"""

from __future__ import annotations

import asyncio
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import ray

from runtime.demo_inventory import generate_demo
from runtime.embedded import EmbeddedRedis
from runtime.entity import Checkpoint
from runtime.envelope import pack
from runtime.inventory import parse_inventory
from runtime.procmem import pss_mb, ray_pids, tree_pids
from runtime.store import RedisStore

Say = Callable[[str], None]

SEED_VERSION = 7


def machine() -> str:
    return f"{platform.node()} {os.cpu_count()} cpu {psutil.virtual_memory().total >> 30} GiB"


def runtime_memory_mb() -> float:
    """PSS of every process of the runtime: this one, its children, all of Ray's."""
    pids = set(tree_pids(os.getpid())) | set(ray_pids())
    return pss_mb(pids)


def _seed_checkpoints(data_dir: Path, ids: list[str], say: Say) -> float:
    t0 = time.monotonic()
    blobs = {
        eid: pack(Checkpoint(state={"seeded": True}, twin={"reported": {}, "desired": {}},
                             version=SEED_VERSION).to_dict())
        for eid in ids
    }

    async def write(url: str) -> None:
        store = RedisStore(url)
        await store.connect()
        try:
            await store.save_checkpoints(blobs)
        finally:
            await store.close()

    with EmbeddedRedis(data_dir / "redis") as redis:
        asyncio.run(write(redis.url))
    say(f"seeded {len(ids)} checkpoints in {time.monotonic() - t0:.2f}s")
    return time.monotonic() - t0


def startup(*, scale: float = 1.0, say: Say = print, **_: Any) -> dict[str, Any]:
    """From nothing running to every entity answering a ping with its saved state."""
    from runtime.service import Service, ServiceOptions

    import_s = time.time() - psutil.Process().create_time()
    inv = parse_inventory(generate_demo(scale=scale), "<demo>")
    ids = [eq.id for eq in inv.equipment]
    with tempfile.TemporaryDirectory(prefix="cp-bench-") as tmp:
        data = Path(tmp)
        _seed_checkpoints(data, ids, say)
        t0 = time.monotonic()
        svc = Service(inv, ServiceOptions(data_dir=data, spares=0))
        try:
            svc.start_servers()
            t_servers = time.monotonic()
            svc.start_ray()
            t_ray = time.monotonic()
            svc.start_tree()
            t_tree = time.monotonic()
            answered, min_version = 0, -1
            for h in svc.plan.hosts:
                r = ray.get(svc.host_handle(h.host_id).ping_entities.remote(), timeout=60)
                answered += r["answered"]
                min_version = r["min_version"] if min_version < 0 else min(min_version,
                                                                           r["min_version"])
            t_ready = time.monotonic()
            mem = runtime_memory_mb()
            say(f"servers {t_servers - t0:.2f}s, ray.init {t_ray - t_servers:.2f}s, "
                f"tree {t_tree - t_ray:.2f}s, pings {t_ready - t_tree:.2f}s; "
                f"{answered}/{len(ids)} answered, min version {min_version}; "
                f"{len(svc.plan.hosts)} hosts; machine {machine()}")
        finally:
            svc.stop()
    return {
        "scale": scale, "entities": len(ids), "answered": answered,
        "state_loaded": min_version >= SEED_VERSION,
        "startup_s": round(import_s + (t_ready - t0), 2), "memory_mb": round(mem, 1),
        "hosts": len(svc.plan.hosts), "import_s": round(import_s, 2),
        "machine": machine(),
    }


def _sum_states(svc: Any) -> dict[str, dict[str, Any]]:
    """Per entity: samples applied, seq gaps (lost), points per sample, protocol."""
    out: dict[str, dict[str, Any]] = {}
    for h in svc.plan.hosts:
        snap = ray.get(svc.host_handle(h.host_id).snapshot.remote(), timeout=60)
        for eid, cp in snap.items():
            if not cp:
                continue
            state = cp.get("state") or {}
            reported = (cp.get("twin") or {}).get("reported") or {}
            points = 0
            for v in reported.values():
                value = v.get("value")
                if isinstance(value, list):
                    points += sum(len(x) if isinstance(x, dict) else 1 for x in value)
                else:
                    points += 1
            out[eid] = {"samples": int(state.get("samples", 0)), "lost": int(state.get("lost", 0)),
                        "points": points}
    return out


def _cpu(pids: set[int]) -> float:
    from runtime.procmem import cpu_seconds

    return cpu_seconds(pids)


def _process_groups(svc: Any) -> tuple[set[int], set[int]]:
    """(runtime pids, simulator pids): the simulators and the broker on one side."""
    sim: set[int] = set()
    if svc.sim_proc is not None:
        sim |= set(tree_pids(svc.sim_proc.pid))
    if svc.broker is not None:
        sim |= set(tree_pids(svc.broker.pid))
    everything = set(tree_pids(os.getpid())) | set(ray_pids())
    return everything - sim, sim


def _field_service(scale: float, rate_hz: float | None, say: Say, broker: str = "auto") -> Any:
    from runtime.service import DEVICES, Service, ServiceOptions

    inv = parse_inventory(generate_demo(scale=scale), "<demo>")
    svc = Service(inv, ServiceOptions(devices=DEVICES, simulate=True, sim_rate_hz=rate_hz,
                                      spares=0, broker=broker))
    svc.start_servers()
    svc.start_ray()
    svc.start_tree()
    total = len(inv.equipment)
    deadline = time.monotonic() + 180
    online = 0
    while time.monotonic() < deadline:
        online = sum(int(h.get("online", 0)) for h in _hosts_of(svc.tree()))
        if online == total:
            break
        time.sleep(1.0)
    say(f"{online}/{total} devices online; broker {svc.broker.kind if svc.broker else '?'}")
    return svc


def _hosts_of(tree: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    stack = [tree]
    while stack:
        n = stack.pop()
        if "host" in str(n.get("kind", "")):
            out.append(n)
        stack.extend(n.get("children", []))
    return out


def demo(*, scale: float = 1.0, say: Say = print, seconds: float = 60.0, broker: str = "auto",
         **_: Any) -> dict[str, Any]:
    """The metropolis in steady state at nominal rates: memory and CPU."""
    svc = _field_service(scale, None, say, broker)
    try:
        time.sleep(10.0)  # past the start-up burst
        runtime, sims = _process_groups(svc)
        r0, s0, t0 = _cpu(runtime), _cpu(sims), time.monotonic()
        time.sleep(seconds)
        dt = time.monotonic() - t0
        runtime_cpu = (_cpu(runtime) - r0) / dt
        simulator_cpu = (_cpu(sims) - s0) / dt
        memory = pss_mb(runtime | sims)
        online = sum(int(h.get("online", 0)) for h in _hosts_of(svc.tree()))
        broker = svc.broker.kind if svc.broker else "external"
    finally:
        svc.stop()
    return {"memory_mb": round(memory, 1), "runtime_cpu": round(runtime_cpu, 2),
            "simulator_cpu": round(simulator_cpu, 2), "entities": len(svc.inventory.equipment),
            "online": online, "window_s": round(dt, 1), "broker": broker, "machine": machine()}


def ingest(*, scale: float = 1.0, say: Say = print, seconds: float = 60.0,
           rate_hz: float = 5.0, broker: str = "auto", **_: Any) -> dict[str, Any]:
    """Telemetry through the real broker and the real Modbus polls, counted by seq."""
    svc = _field_service(scale, rate_hz, say, broker)
    try:
        time.sleep(10.0)
        before = _sum_states(svc)
        runtime, sims = _process_groups(svc)
        r0, s0, t0 = _cpu(runtime), _cpu(sims), time.monotonic()
        time.sleep(seconds)
        after = _sum_states(svc)
        dt = time.monotonic() - t0
        runtime_cpu = (_cpu(runtime) - r0) / dt
        simulator_cpu = (_cpu(sims) - s0) / dt
        broker = svc.broker.kind if svc.broker else "external"
    finally:
        svc.stop()
    kinds = {eq.id: eq.endpoint.split(":", 1)[0] for eq in svc.inventory.equipment}
    applied_points = 0
    applied = lost = 0
    by_protocol: dict[str, int] = {}
    for eid, a in after.items():
        b = before.get(eid, {"samples": 0, "lost": 0})
        n = a["samples"] - b["samples"]
        applied += n
        applied_points += n * a["points"]
        proto = kinds.get(eid, "?")
        by_protocol[proto] = by_protocol.get(proto, 0) + n * a["points"]
        if proto == "mqtt":  # MQTT devices publish every sample; Modbus polls sample
            lost += a["lost"] - b["lost"]
    say(f"points by protocol: {by_protocol}")
    # published: samples the devices produced in the window (applied + sequence gaps).
    return {"points_per_s": round(applied_points / dt), "published": applied + lost,
            "applied": applied, "lost": lost, "broker": broker,
            "runtime_cpu": round(runtime_cpu, 2), "simulator_cpu": round(simulator_cpu, 2),
            "window_s": round(dt, 1), "mqtt_rate_hz": rate_hz, "machine": machine()}
