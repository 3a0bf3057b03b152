"""The admin web on the runtime's own backend and a real Redis, with its read models filled.

No Ray and no broker: what hosts and coordinators would have published (the hosts'
equipment view and checkpoints, the alarms, crisis, dispatch, fleet, bus-priority and
energy read models, some events) is written to Redis as they write it, so that every
route answers from real data; the supervision tree, which the root supervisor (a Ray
actor) would give, is a tree of the same shape. Open311 is mounted as the composition
root mounts it, and the users are kept in that Redis as ``commandpost run`` keeps them:
the four whose tokens the tests use (:data:`TOKENS`), and :data:`SUBJECT`, an operator the
users' routes may change at will::

    with runtime_admin(tmp_path) as rig:
        rig.client.get("/api/v1/alarms", headers=rig.auth("operator"))
        with rig.served() as base_url: ...           # the same app behind waitress
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from actors.control.crisis import READ_MODEL as CRISIS_READ_MODEL
from actors.control.dispatch import FLEET_READ_MODEL
from actors.control.dispatch import READ_MODEL as INTERVENTIONS_READ_MODEL
from admin_web import AdminServer, Role, UserRegistry, auth, create_app
from admin_web.open311 import open311_blueprint
from runtime import energy
from runtime.demo_inventory import generate_demo
from runtime.embedded import EmbeddedRedis
from runtime.envelope import pack
from runtime.host import EQUIPMENT_VIEW
from runtime.inventory import Inventory, parse_inventory
from runtime.service import ALARMS_READ_MODEL, RuntimeBackend, Service, ServiceOptions
from runtime.store import RedisStore, StoreKeys
from runtime.users import RedisUserRecords
from supervisors.tree import node

#: One token per user; ``scoped`` is an operator limited to the first municipality.
TOKENS: Final = {name: f"{name}-token-{name[0] * 24}"
                 for name in ("admin", "operator", "scoped", "viewer")}
#: The municipality of ``scoped``, whose equipment the document's examples name.
HOME: Final = "dijon"
#: The user the document's examples name: an operator of :data:`HOME` at the traffic desk.
SUBJECT: Final = "alice"
#: A cheaper scrypt cost than the runtime's, so that adding users and setting passwords
#: stays quick (each hash keeps its cost, and is checked with it).
TEST_SCRYPT_N: Final = 2**8


@dataclass
class Rig:
    """The app, its client, and what was published for it to read."""

    app: Flask
    client: FlaskClient
    service: Service
    inventory: Inventory
    towns: list[str]
    """``[HOME, another municipality]``: ``scoped`` may act in the first only."""
    open311_key: str
    users: UserRegistry
    alarm_ids: list[str] = field(default_factory=list)
    intervention_ids: list[str] = field(default_factory=list)

    def auth(self, who: str) -> dict[str, str]:
        """The ``Authorization`` header of user ``who``."""
        return {"Authorization": f"Bearer {TOKENS[who]}"}

    def equipment_of(self, town: str) -> list[str]:
        """The ids of the equipment of municipality ``town``."""
        return [eq.id for eq in self.inventory.equipment if eq.municipality == town]

    @contextmanager
    def served(self) -> Iterator[str]:
        """The app behind waitress on a free loopback port: its base URL."""
        server = AdminServer(self.app, "127.0.0.1", 0)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


def _tree(inventory: Inventory) -> dict[str, Any]:
    """A supervision tree as the root supervisor reports it: domains, then their hosts."""
    domains = sorted({eq.domain for eq in inventory.equipment})
    return node("commandpost", "supervisor", "running", 0, [
        node(f"{domain}-sup", "supervisor", "running", 0, [
            node(f"{domain}-0", "host", "running", 1, [], pid=4000 + n, node="node-1",
                 entities=sum(1 for eq in inventory.equipment if eq.domain == domain),
                 entity_restarts=0)])
        for n, domain in enumerate(domains)], pid=3999, node="node-1")


def _alarm(eid: str, town: str, condition: str, priority: str, state: str, raised: float,
           **extra: Any) -> dict[str, Any]:
    record = {"id": f"{eid}.{condition}", "source": eid, "condition": condition,
              "priority": priority, "state": state, "active": state != "normal",
              "municipality": town, "raised_ts": raised, "acked_by": None, "acked_ts": None,
              "shelved_until": None, "suppressed_by": None, "group": None, "count": 1,
              "message": f"{condition} on {eid}", "kind": "crossroad", "path": None,
              "escalated": False, "cleared_ts": None, "shelved_by": None,
              "shelve_reason": None, "out_of_service_by": None, "activations": 1,
              "municipalities": [town], "steps": []}
    record.update(extra)
    return record


def _publish(svc: Service, inventory: Inventory, towns: list[str], now: float) -> dict[str, Any]:
    """Write what hosts and coordinators would have; answer the ids written."""
    keys = StoreKeys(svc.options.namespace)
    r = redis.Redis.from_url(svc.redis_url)
    try:
        lines = {}
        for n, eq in enumerate(inventory.equipment):
            online = n % 5 != 0
            lines[eq.id] = json.dumps({"host": f"{eq.domain}-0", "status": "running",
                                       "online": online, "conditions": []})
            r.set(keys.checkpoint(eq.id), pack({
                "state": {"online": online}, "applied": [], "version": 1,
                "twin": {"reported": {"seq": {"value": n, "quality": "good", "source_ts": 1.0,
                                              "received_ts": 2.0, "seq": n}},
                         "desired": {"dim": 40} if n % 3 == 0 else {}}}))
        r.hset(keys.hash(EQUIPMENT_VIEW), mapping=lines)
        a = [eq for eq in inventory.equipment if eq.municipality == towns[0]]
        b = [eq for eq in inventory.equipment if eq.municipality == towns[1]]
        circuit = next(eq for eq in a if eq.kind == "lighting_circuit")
        alarms = [
            _alarm(a[0].id, towns[0], "fire", "critical", "unacknowledged", now - 50),
            _alarm(circuit.id, towns[0], "lamp_failure", "medium", "acknowledged", now - 40,
                   acked_by="operator", acked_ts=now - 30, kind="lighting_circuit"),
            _alarm(b[0].id, towns[1], "door_forced", "high", "unacknowledged", now - 20),
            _alarm(b[1].id, towns[1], "device_offline", "low", "shelved", now - 10,
                   shelved_until=now + 3600, shelved_by="operator", shelve_reason="crew"),
            _alarm("path:lighting", towns[0], "flood_summary", "high", "unacknowledged",
                   now - 5, count=2, municipalities=towns[:2], kind="path",
                   path="lighting"),
        ]
        alarms[-1]["id"] = "path:lighting.flood"
        r.set(keys.blob(f"view:{ALARMS_READ_MODEL}"), pack({"ts": now, "alarms": alarms}))
        interventions = [
            {"id": f"int-r{n}", "request_id": f"r{n}", "category": "pothole",
             "description": "a hole", "municipality": town, "state": state,
             "vehicle": "veh-1" if state != "new" else None, "lat": 47.32, "lon": 5.04,
             "created_ts": now - 100 + n, "updated_ts": now - 50 + n, "notes": "on its way",
             "source": "request", "lamps": [], "assigned_ts": None}
            for n, (town, state) in enumerate([(towns[0], "new"), (towns[0], "en_route"),
                                               (towns[1], "assigned"), (towns[1], "done")])]
        interventions.append({
            "id": f"int-{circuit.id}-1000", "request_id": None, "category": "lighting_fault",
            "description": f"Lamps 3, 7 failed on lighting circuit {circuit.id}.",
            "municipality": towns[0], "state": "on_site", "vehicle": "veh-0",
            "lat": circuit.lat, "lon": circuit.lon, "created_ts": now - 300,
            "updated_ts": now - 200, "notes": "Opened from the lighting cabinet's lamp failures.",
            "source": "fault", "lamps": [3, 7], "assigned_ts": now - 250})
        r.set(keys.blob(f"view:{INTERVENTIONS_READ_MODEL}"),
              pack({"ts": now, "interventions": interventions}))
        vehicles = [
            {"id": f"veh-{n}", "municipality": town, "role": role, "radio": True,
             "lat": 47.32, "lon": 5.04, "status": status, "online": True, "job": "",
             "job_state": "", "stale": False, "ts": now, "assigned": None,
             "excluded_until": None}
            for n, (town, role, status) in enumerate([
                (towns[0], "gritter", "available"), (towns[1], "police", "busy")])]
        r.set(keys.blob(f"view:{FLEET_READ_MODEL}"), pack({"ts": now, "vehicles": vehicles}))
        r.set(keys.blob(f"view:{CRISIS_READ_MODEL}"), pack({"ts": now, "municipalities": {
            towns[1]: {"mode": "snow", "since": now - 600, "by": "user:admin:admin",
                       "activation_id": "act-1", "description": "snow plan",
                       "entities": {"done": 3, "pending": 1, "failed": 0},
                       "kept": [{"entity": b[0].id, "field": "dim", "value": 80,
                                 "command_id": "c-1", "reason": "operator"}],
                       "failures": []}}}))
        r.set(keys.blob("view:priority-member-1"), pack({
            "id": "priority-1", "pid": 4242, "buses": 3, "granted": 7,
            "refused": {"late": 2}, "latency_ms": {"histogram": [[5, 3], [10, 4]],
                                                   "recent": [4.0, 6.5, 8.0]}}))
        hour = float(int(now // 3600) * 3600 - 7200)
        for date in energy.dates_between(hour, hour + 3600):
            r.set(keys.blob(f"view:{energy.model_name(circuit.id, date)}"), pack({
                "id": circuit.id, "lamps": 12, "lamp_w": 40.0, "legacy_w": 150.0,
                "hours": {str(hour): [300.0, 3600.0, 0, 0]}}))
    finally:
        r.close()
    events = [{"ts": now - 30 + n, "entity": eq.id, "event": "setpoint", "n": n}
              for n, eq in enumerate(a[:3] + b[:3])]
    events.append({"ts": now, "entity": "host-lighting-0", "event": "host_started"})

    async def append() -> None:
        store = RedisStore(svc.redis_url, namespace=svc.options.namespace)
        await store.connect()
        try:
            await store.append_events(events)
        finally:
            await store.close()

    asyncio.run(append())
    return {"alarms": [a["id"] for a in alarms],
            "interventions": [i["id"] for i in interventions]}


@contextmanager
def runtime_admin(data: Path, *, scale: float = 0.05, seed: int = 3) -> Iterator[Rig]:
    """The admin web (with Open311) on a :class:`RuntimeBackend` over a real Redis."""
    inventory = parse_inventory(generate_demo(scale=scale, seed=seed), "<demo>")
    towns = [HOME, min(eq.municipality for eq in inventory.equipment
                       if eq.municipality != HOME)]
    server = EmbeddedRedis(data)
    server.start()
    try:
        svc = Service(inventory, ServiceOptions(
            redis_url=server.url, mqtt_url="mqtt://127.0.0.1:1",
            namespace=f"o{uuid.uuid4().hex[:8]}"))
        svc.start_servers()
        tree = _tree(inventory)
        svc.tree = lambda timeout=5.0: tree  # type: ignore[method-assign]
        records = RedisUserRecords(server.url, namespace=svc.options.namespace)
        try:
            published = _publish(svc, inventory, towns, time.time())
            users = UserRegistry(records)
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(auth, "SCRYPT_N", TEST_SCRYPT_N)
                users.add("admin", Role.ADMIN, token=TOKENS["admin"])
                users.add("operator", Role.OPERATOR, token=TOKENS["operator"])
                users.add("scoped", Role.OPERATOR, municipalities=[towns[0]],
                          token=TOKENS["scoped"])
                users.add("viewer", Role.VIEWER, token=TOKENS["viewer"])
                users.add(SUBJECT, Role.OPERATOR, municipalities=[towns[0]],
                          desks=["traffic"])
                backend = RuntimeBackend(svc)
                app = create_app(backend, users, secret_key=b"k" * 32)
                app.register_blueprint(open311_blueprint(backend.open311_backend()))
                key = backend.open311_store().issue_key("citizen-app")
                yield Rig(app, app.test_client(), svc, inventory, towns, key, users,
                          published["alarms"], published["interventions"])
        finally:
            records.close()
            svc.stop()
    finally:
        server.stop()
