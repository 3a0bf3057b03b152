"""``commandpost bench startup``: the runtime's start as a user lives it, with full twins.

The field is already running when the runtime starts — the broker and the
simulators are started before the clock, as a production runtime finds its
devices and broker up. Every entity has a checkpoint in Redis as large as
after an hour of running (see :func:`seed_checkpoint`); the runtime then
starts as ``make demo`` starts it: embedded Redis (loading those checkpoints
from disk), the admin web, Ray, the supervision tree with its warm spare and
the device sessions.

Figures, all from the bench process's creation (its imports count):

* ``startup_s``: until every entity answers a ping through its mailbox with
  its restored state (its version is the seeded one or later);
* ``online_s``: until every device is online;
* ``memory_mb``: PSS summed over the runtime, the broker and the simulators
  once every device is online (``memory_by_role_mb`` gives them apart).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Mapping
from typing import Any

import psutil
import ray

# The runtime's own modules are imported here, not lazily in run(): a user's
# start pays for them, and the clock starts at the process's creation.
import admin_web  # noqa: F401
import runtime.service  # noqa: F401
from actors.equipment import Field
from actors.registry import BEHAVIOURS
from devices.profile import FieldSpec, Profile, builtin_profile
from runtime.bench.common import (
    City,
    CpuMeter,
    Say,
    machine,
    pss_by_role,
    rounded_roles,
)
from runtime.commands import new_command_id
from runtime.embedded import EmbeddedRedis
from runtime.entity import APPLIED_WINDOW, Checkpoint
from runtime.envelope import pack
from runtime.errors import CommandpostError, RetryableError
from runtime.inventory import CONTROL_DOMAIN, Equipment
from runtime.store import RedisStore

#: The version every seeded checkpoint carries: far above what a fresh entity
#: reaches during a start, so an entity at or above it restored its checkpoint.
SEED_VERSION = 1_000_000

#: How long the seeded entities have been running (their sample counters).
SEED_AGE_S = 3600.0

TWIN_FIELDS_MEANS = ("mean per seeded twin of its reported values, each field of each "
                     "block repeat counted once (a lamp's five, a door's two)")


# -- seeding ------------------------------------------------------------------------------
def seeded_desired(fields: Mapping[str, Field], profile: Profile,
                   held: Mapping[str, Any]) -> dict[str, Any]:
    """The setpoints a running entity holds: its writable fields the device holds too.

    A field is seeded when the entity accepts it, the device's profile carries
    it (top level or in a block), and the device holds a value for it that the
    entity's field table accepts; the value is the device's (first repeat of
    a block), so the desired state matches the field and a restart has nothing
    to reconcile.
    """
    names = {f.name for f in profile.fields} | {f.name for b in profile.blocks for f in b.fields}
    out: dict[str, Any] = {}
    for name, spec in fields.items():
        if name not in names:
            continue
        value = held.get(name)
        if value is None:
            value = next((rep[0][name] for rep in held.values()
                          if isinstance(rep, list) and rep and isinstance(rep[0], Mapping)
                          and name in rep[0]), None)
        if value is None:
            continue
        try:
            out[name] = spec.check(name, value)
        except CommandpostError:
            continue
    return out


def _synthetic(spec: FieldSpec, protocol: str, rng: random.Random, *, ts: float, seq: int) -> Any:
    """A value of ``spec``'s type as the runtime stores it when the device holds none."""
    if spec.name == "seq":
        return seq
    if spec.name == "ts":
        return ts
    if spec.choices:
        # Modbus choices are decoded to their names; OPC UA and MQTT carry what the device sends.
        i = rng.randrange(len(spec.choices))
        return spec.choices[i] if protocol == "modbus" or spec.type == "str" else i
    if spec.type == "bool":
        return rng.random() < 0.5
    if spec.type == "str":
        return f"L{rng.randint(1, 99)}"
    low = spec.min if spec.min is not None else 0.0
    high = spec.max if spec.max is not None else 10_000.0
    if spec.type == "float":
        return rng.uniform(low, high)
    raw = rng.randint(int(low), int(high))
    return raw * spec.scale if spec.scale != 1.0 else raw


def _as_reported(spec: FieldSpec, protocol: str, value: Any) -> Any:
    """A device-held value as the runtime stores it (OPC UA choices stay indices)."""
    if protocol == "opcua" and spec.choices and isinstance(value, str) and \
            value in spec.choices:
        return spec.choices.index(value)
    return value


def seeded_reported(eq: Equipment, profile: Profile, held: Mapping[str, Any], *,
                    now: float, seq: int, rng: random.Random) -> dict[str, dict[str, Any]]:
    """Every reported entry of ``eq``'s twin, shaped as :class:`runtime.twin.Twin` stores it.

    Modbus and MQTT devices report a block as one entry whose value is the list
    of its repeats; OPC UA reports each node apart (``door.3.locked``, from 1).
    Values are the device's where it holds one, else of the field's type.
    """
    source_ts = now - rng.uniform(0.0, profile.poll_interval_s)
    received_ts = source_ts + rng.uniform(0.0005, 0.005)
    protocol = profile.protocol

    def value(spec: FieldSpec, key: str, repeat: Mapping[str, Any] | None) -> Any:
        got = repeat.get(spec.name) if repeat is not None else held.get(key)
        if got is None:
            return _synthetic(spec, protocol, rng, ts=source_ts, seq=seq)
        return _as_reported(spec, protocol, got)

    values: dict[str, Any] = {f.name: value(f, f.name, None) for f in profile.fields}
    for block in profile.blocks:
        count = profile.count(block.name, eq.attrs)
        if protocol == "opcua":
            for n in range(1, count + 1):
                for f in block.fields:
                    key = f"{block.name}.{n}.{f.name}"
                    values[key] = value(f, key, None)
        else:
            repeats = held.get(block.name)
            rows = repeats if isinstance(repeats, list) else []
            values[block.name] = [
                {f.name: value(f, f.name, rows[i] if i < len(rows) and
                               isinstance(rows[i], Mapping) else {})
                 for f in block.fields}
                for i in range(count)
            ]
    return {k: {"value": v, "quality": "good", "source_ts": source_ts,
                "received_ts": received_ts, "seq": seq} for k, v in values.items()}


def seed_checkpoint(eq: Equipment, held: Mapping[str, Any], *, now: float,
                    rng: random.Random) -> Checkpoint:
    """The checkpoint of ``eq`` after :data:`SEED_AGE_S` of running.

    Its twin has every field and block repeat of the device's profile, its
    setpoints (:func:`seeded_desired`), the state keys a running equipment
    entity keeps (samples, lost, seq, online), a full window of applied
    command ids (the most a checkpoint holds), and :data:`SEED_VERSION`.
    """
    profile = builtin_profile(eq.profile)
    samples = int(SEED_AGE_S / profile.poll_interval_s)
    seq = samples + rng.randint(0, 50)
    desired = seeded_desired(BEHAVIOURS[eq.kind].FIELDS, profile, held)
    reported = seeded_reported(eq, profile, held, now=now, seq=seq, rng=rng)
    return Checkpoint(
        state={"samples": samples, "lost": 0, "seq": seq, "online": True},
        twin={"reported": reported, "desired": desired},
        applied=tuple(new_command_id() for _ in range(APPLIED_WINDOW)),
        version=SEED_VERSION,
    )


def twin_values(reported: Mapping[str, Mapping[str, Any]]) -> int:
    """Reported values in a twin: each field of each block repeat counts once."""
    n = 0
    for entry in reported.values():
        v = entry.get("value")
        if isinstance(v, list):
            n += sum(len(r) if isinstance(r, Mapping) else 1 for r in v)
        else:
            n += 1
    return n


def seed_city(city: City, *, seed: int = 0) -> dict[str, Any]:
    """Write a checkpoint for every entity of ``city`` into the Redis it will start on.

    The devices' held values come from the simulators when they run
    (:meth:`City.start_field`). Returns what was seeded: entities, values,
    bytes.
    """
    rng = random.Random(seed)
    now = time.time()
    blobs: dict[str, bytes] = {}
    values = 0
    for eq in city.inventory.equipment:
        held: Mapping[str, Any] = {}
        if city.control is not None:
            try:
                held = city.control.values(eq.id)
            except KeyError:
                held = {}
        cp = seed_checkpoint(eq, held, now=now, rng=rng)
        values += twin_values(cp.twin["reported"])
        blobs[eq.id] = pack(cp.to_dict())

    async def write(url: str) -> None:
        store = RedisStore(url)
        await store.connect()
        try:
            await store.save_checkpoints(blobs)
        finally:
            await store.close()

    with EmbeddedRedis(city.data_dir / "redis") as redis:
        asyncio.run(write(redis.url))
    n = len(blobs)
    size = sum(len(b) for b in blobs.values())
    return {"entities": n, "values": values, "bytes": size,
            "values_mean": values / n if n else 0.0, "bytes_mean": size / n if n else 0.0}


# -- the bench ----------------------------------------------------------------------------
def _answers(handles: list[Any], timeout: float) -> tuple[int, int]:
    """(entities that answered, lowest version among them), every host asked at once."""
    answered, low = 0, -1
    for r in ray.get([h.ping_entities.remote(timeout=timeout) for h in handles],
                     timeout=timeout + 30):
        answered += int(r["answered"])
        if r["answered"]:
            low = int(r["min_version"]) if low < 0 else min(low, int(r["min_version"]))
    return answered, low


def _online(handles: list[Any]) -> int:
    """Devices online, asked of the hosts themselves (the tree learns it a heartbeat later)."""
    return sum(int(r.get("online", 0))
               for r in ray.get([h.ping.remote() for h in handles], timeout=30))


def run(*, scale: float = 1.0, say: Say = print, broker: str = "auto",
        online_timeout_s: float = 180.0, seed: int = 0, **_: Any) -> dict[str, Any]:
    """From process creation to every entity restored and every device online."""
    imports_s = time.time() - psutil.Process().create_time()
    city = City(scale=scale, say=say, broker=broker, seed=seed,
                online_timeout_s=online_timeout_s)
    total = len(city.inventory.equipment)
    try:
        t_field = time.monotonic()
        city.start_field()
        field_s = time.monotonic() - t_field
        seeded = seed_city(city, seed=seed)
        say(f"field up in {field_s:.1f}s; seeded {seeded['entities']} checkpoints, "
            f"{seeded['values_mean']:.0f} values and {seeded['bytes_mean'] / 1024:.1f} KiB "
            f"each ({seeded['bytes'] / 2**20:.1f} MiB) in "
            f"{time.monotonic() - t_field - field_s:.1f}s; the clock starts")
        load_before = os.getloadavg()[0]
        # The field's own CPU while the runtime starts: a saturated simulator delays online_s.
        field_groups = city.process_groups()
        field_cpu = CpuMeter({k: field_groups[k] for k in ("broker", "simulator")})
        field_cpu.start()
        t0 = time.monotonic()
        city.start_runtime()
        t_tree = time.monotonic()
        svc = city.svc
        # Equipment carries the seeded state; the control room's coordinators start from
        # their own checkpoints and are asked to answer, apart.
        handles = [svc.host_handle(h.host_id) for h in svc.plan.hosts
                   if h.domain != CONTROL_DOMAIN]
        control = [svc.host_handle(h.host_id) for h in svc.plan.hosts
                   if h.domain == CONTROL_DOMAIN]
        answered, low = _answers(handles, timeout=30.0)
        t_answer = time.monotonic()
        coordinators_up = _answers(control, timeout=30.0)[0] if control else 0
        deadline = t0 + online_timeout_s
        online = _online(handles)
        while online < total and time.monotonic() < deadline:
            time.sleep(0.05)
            online = _online(handles)
        t_online = time.monotonic()
        field_cores = field_cpu.stop()
        load_after = os.getloadavg()[0]
        # The spare is started once the tree is up; its memory counts when it is warm.
        spare_deadline = time.monotonic() + 60.0
        while (ray.get(svc.root.spares_ready.remote(), timeout=30) < svc.options.spares
               and time.monotonic() < spare_deadline):
            time.sleep(0.1)
        memory = pss_by_role(city.process_groups())
        hosts, spares = len(svc.plan.hosts), svc.options.spares
        broker_kind = city.broker_kind
        say(f"imports {imports_s:.2f}s, runtime start {t_tree - t0:.2f}s "
            f"({', '.join(f'{k} {v:.2f}s' for k, v in city.timings.items())}), "
            f"pings {t_answer - t_tree:.2f}s, online +{t_online - t_answer:.2f}s; "
            f"{answered}/{total} answered (lowest version {low}), {online}/{total} online")
    except (ray.exceptions.RayError, TimeoutError) as exc:
        raise RetryableError(f"the runtime did not start: {exc}") from exc
    finally:
        city.stop()
    return {
        "startup_s": round(imports_s + (t_answer - t0), 2),
        "online_s": round(imports_s + (t_online - t0), 2) if online == total else None,
        "memory_mb": round(memory["total"], 1),
        "memory_by_role_mb": rounded_roles({k: v for k, v in memory.items() if k != "total"}),
        "memory_includes": "PSS of the runtime (this process, Ray, hosts and spare, Redis, "
                           "admin web), the broker and the simulators",
        "entities": total,
        "answered": answered,
        "coordinators_answered": coordinators_up,
        "online": online,
        "state_loaded": answered == total and low >= SEED_VERSION,
        "twin_fields": round(seeded["values_mean"], 1),
        "twin_fields_means": TWIN_FIELDS_MEANS,
        "twin_fields_total": seeded["values"],
        "checkpoint_kb_mean": round(seeded["bytes_mean"] / 1024, 2),
        "phases_s": {"imports": round(imports_s, 2),
                     **{k: round(v, 2) for k, v in city.timings.items()},
                     "answers": round(t_answer - t_tree, 2),
                     "online": round(t_online - t_answer, 2)},
        "before_clock": ["broker", "simulators", "checkpoint seeding"],
        "field_cpu_during_start": rounded_roles(field_cores, 2),
        # The machine's 1-minute load when the clock started and when all were online.
        "load_1m": {"before": round(load_before, 2), "after": round(load_after, 2)},
        "hosts": hosts,
        "spares": spares,
        "scale": scale,
        "broker": broker_kind,
        "machine": machine(),
        "left_out": list(city.left_out),
    }
