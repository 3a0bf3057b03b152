"""Placement of entities onto hosts.

``sharded`` entities are packed into a few hosts per domain; the shard of an
entity is a stable hash of its municipality and id, so adding equipment never
moves the others and a placement computed anywhere is the same. ``dedicated``
entities get a host of their own. A domain colocated with another
(:attr:`~runtime.inventory.PlacementPolicy.colocate`) has no sharded hosts:
its entities join the other domain's, by the same hash over that domain's
shard count. Host ids are stable names (``lighting-1``,
``dedicated-xr-dijon-0001``): the supervision tree and the directory speak them,
whatever Ray actor currently serves them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runtime.inventory import CONTROL_DOMAIN, COORDINATOR, DOMAIN_OF_KIND, Equipment, Inventory

DOMAINS: tuple[str, ...] = (*dict.fromkeys(DOMAIN_OF_KIND.values()), CONTROL_DOMAIN)
#: The host of the coordinators, unless a coordinator is placed ``dedicated``.
CONTROL_HOST = f"{CONTROL_DOMAIN}-0"


def coordinator(entity_id: str, inventory: Inventory, *, placement: str | None = None,
                attrs: Mapping[str, Any] | None = None) -> Equipment:
    """The record of a coordinator entity (``alarms``, ``crisis``, ``dispatch``).

    It spans the metropolis: it sits at the centroid of the municipalities, and
    has no device (its endpoint names it as the control room's own). ``attrs``
    carry what it needs of the inventory
    (:meth:`runtime.entity.Entity.coordinator_attrs`).
    """
    munis = inventory.municipalities
    return Equipment(
        id=entity_id, kind=COORDINATOR, municipality="metropolis",
        lat=sum(m.lat for m in munis) / len(munis), lon=sum(m.lon for m in munis) / len(munis),
        endpoint=f"control:{entity_id}", profile=COORDINATOR, placement=placement,
        attrs=attrs or {})


def stable_shard(municipality: str, entity_id: str, shards: int) -> int:
    """The shard of an entity: stable across processes, runs and Python versions."""
    digest = hashlib.blake2b(f"{municipality}/{entity_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


@dataclass(frozen=True, slots=True)
class HostPlan:
    """One host to run: its stable id, domain, mode and the entities it owns."""

    host_id: str
    domain: str
    mode: str  # "sharded" | "dedicated"
    entity_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PlacementPlan:
    hosts: tuple[HostPlan, ...]
    owner: Mapping[str, str]  # entity id -> host id

    def host(self, host_id: str) -> HostPlan:
        for h in self.hosts:
            if h.host_id == host_id:
                return h
        raise KeyError(host_id)

    def by_domain(self) -> dict[str, list[HostPlan]]:
        out: dict[str, list[HostPlan]] = {}
        for h in self.hosts:
            out.setdefault(h.domain, []).append(h)
        return out


def plan(inventory: Inventory, coordinators: Sequence[Equipment] = ()) -> PlacementPlan:
    """Assign every entity of ``inventory``, and the ``coordinators``, to a host.

    The coordinators share one host of the ``control`` domain (:data:`CONTROL_HOST`),
    unless one is placed ``dedicated``. A sharded entity of a domain colocated with
    another (``[placement.colocate]``) goes to that domain's hosts, which keep its
    label: a host's ``domain`` is the supervisor it runs under.
    """
    members: dict[str, list[str]] = {}
    domain_of: dict[str, tuple[str, str]] = {}
    for eq in (*inventory.equipment, *coordinators):
        mode = (eq.placement or "sharded") if eq.kind == COORDINATOR \
            else inventory.placement.mode_for(eq)
        domain = eq.domain
        if mode == "dedicated":
            host_id = f"dedicated-{eq.id}"
        elif eq.kind == COORDINATOR:
            host_id = CONTROL_HOST
        else:
            domain = inventory.placement.host_domain(domain)
            shards = inventory.placement.shards_for(domain)
            host_id = f"{domain}-{stable_shard(eq.municipality, eq.id, shards)}"
        members.setdefault(host_id, []).append(eq.id)
        domain_of[host_id] = (domain, mode)
    hosts = []
    for domain in DOMAINS:
        for host_id in sorted(h for h, (d, _) in domain_of.items() if d == domain):
            hosts.append(HostPlan(host_id, domain, domain_of[host_id][1], tuple(members[host_id])))
    owner = {eid: h.host_id for h in hosts for eid in h.entity_ids}
    return PlacementPlan(tuple(hosts), owner)


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _thaw(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_thaw(v) for v in value]
    return value


def equipment_to_wire(eq: Equipment) -> dict[str, Any]:
    """A msgpack-friendly dict of ``eq`` (for shipping an assignment to a host)."""
    return {
        "id": eq.id, "kind": eq.kind, "municipality": eq.municipality, "lat": eq.lat,
        "lon": eq.lon, "endpoint": eq.endpoint, "profile": eq.profile,
        "placement": eq.placement, "attrs": _thaw(eq.attrs),
    }


def equipment_from_wire(d: Mapping[str, Any]) -> Equipment:
    return Equipment(
        id=d["id"], kind=d["kind"], municipality=d["municipality"], lat=d["lat"], lon=d["lon"],
        endpoint=d["endpoint"], profile=d["profile"], placement=d.get("placement"),
        attrs=d.get("attrs") or {},
    )
