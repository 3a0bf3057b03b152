"""Simulated building management systems behind a few aggregating OPC UA servers.

Buildings are grouped by the ``host:port`` of their endpoint
(``opcua://127.0.0.1:4840/bld/{id}``): one :class:`~devices.opcua.OpcUaServer`
per port holds every building of that port (the demo puts 60 per port, so 180
buildings cost three servers, not 180).

Every :meth:`BmsSimulator.tick` (1 Hz when running by itself) integrates each
online building's energy, increments its ``seq`` and, with a seeded random
generator, raises occasional fire, intrusion, forced-door and badge events,
which also show in the zone and door nodes. Writes from clients to ``mode``
and ``door.N.locked`` are applied and recorded; ``lockdown`` locks every door.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from devices.opcua import NodeRef, OpcUaServer, parse_endpoint
from devices.profile import Profile
from devices.sim.control import DeviceCounters
from runtime.clock import Clock, SystemClock
from runtime.errors import ConfigError, RejectedError
from runtime.inventory import Equipment

__all__ = ["BmsCommand", "BmsCounters", "BmsSimulator"]

_HOURS_PER_YEAR = 8766.0
#: Default events per building per hour, by event name: a real city's rates (a
#: building sees a fire alarm or two a year, a few intrusions and forced doors), so
#: that a quiet demo shows a quiet alarm list. Tests and benches raise events
#: through the control channel, or pass higher ``event_rates``.
DEFAULT_EVENT_RATES: Mapping[str, float] = {
    "fire": 2 / _HOURS_PER_YEAR,
    "intrusion": 4 / _HOURS_PER_YEAR,
    "door_forced": 6 / _HOURS_PER_YEAR,
    "badge": 6.0,
}

#: How long a zone alarm stays raised, and a door stays open, after its event.
ALARM_HOLD_S = 30.0
DOOR_OPEN_S = 5.0


@dataclass(frozen=True, slots=True)
class BmsCommand:
    """A client write the simulator received (``key`` as in :class:`NodeRef`)."""

    ts: float
    building_id: str
    key: str
    value: Any
    applied: bool


@dataclass(slots=True)
class BmsCounters:
    """What the simulator did since it started."""

    ticks: int = 0
    samples: int = 0
    events: dict[str, int] = field(default_factory=dict)
    commands: int = 0
    commands_refused: int = 0
    offline_changes: int = 0


@dataclass(slots=True)
class _Building:
    id: str
    server: OpcUaServer
    nodes: dict[str, str]  # key -> node id
    power_w: float
    seq: int = 0
    energy_wh: float = 0.0
    mode: int = 0
    offline: bool = False
    timers: dict[str, float] = field(default_factory=dict)  # key -> monotonic time to clear
    values: dict[str, Any] = field(default_factory=dict)  # key -> value last set or written
    counters: DeviceCounters = field(default_factory=lambda: DeviceCounters("opcua", "bms"))


class BmsSimulator:
    """Every building of ``equipment`` (profile ``profile``) on its aggregating server.

    ``event_rate`` multiplies :data:`DEFAULT_EVENT_RATES` (0 disables random
    events; ``event_rates`` overrides them per name, in events per building-hour).
    """

    def __init__(
        self,
        equipment: Sequence[Equipment],
        profile: Profile,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        event_rate: float = 1.0,
        event_rates: Mapping[str, float] | None = None,
    ) -> None:
        if profile.protocol != "opcua":
            raise ConfigError(f"BmsSimulator needs an opcua profile, not {profile.name!r}")
        if event_rate < 0:
            raise ConfigError(f"event_rate {event_rate!r} < 0")
        rates = dict(DEFAULT_EVENT_RATES)
        rates.update(event_rates or {})
        unknown = sorted(set(rates) - set(profile.events))
        if event_rates and unknown:
            raise ConfigError(f"event rates for events not in profile: {unknown}")
        self._rates = {name: rates.get(name, 0.0) * event_rate / 3600.0 for name in profile.events}
        self.profile = profile
        self.clock: Clock = clock or SystemClock()
        self.rng = rng or random.Random(0)
        self.counters = BmsCounters(events={name: 0 for name in profile.events})
        self.commands: list[BmsCommand] = []
        self._servers: dict[tuple[str, int], OpcUaServer] = {}
        self._buildings: dict[str, _Building] = {}
        self._by_node: dict[str, tuple[str, str]] = {}  # node id -> (building, key)
        self._equipment = [eq for eq in equipment if eq.profile == profile.name]
        self._task: asyncio.Task[None] | None = None
        self._held = False
        for eq in self._equipment:
            host, port, building_id = parse_endpoint(eq.endpoint)
            if building_id != eq.id:
                raise ConfigError(f"equipment {eq.id!r}: endpoint names building {building_id!r}")
            if (host, port) not in self._servers:
                self._servers[(host, port)] = OpcUaServer(
                    port, host=host, name=f"commandpost-bms-{port}", on_write=self._on_write
                )

    @property
    def servers(self) -> tuple[OpcUaServer, ...]:
        """The aggregating servers, one per ``host:port``."""
        return tuple(self._servers.values())

    def building_ids(self) -> tuple[str, ...]:
        """Ids of the simulated buildings."""
        return tuple(self._buildings)

    def node_id(self, building_id: str, key: str) -> str:
        """The node id of ``key`` (``mode``, ``door.2.locked``…) of a building."""
        return self._building(building_id).nodes[key]

    def server_of(self, building_id: str) -> OpcUaServer:
        """The server holding a building."""
        return self._building(building_id).server

    def value(self, building_id: str, key: str) -> Any:
        """The current value of a building's node."""
        b = self._building(building_id)
        return b.server.get(b.nodes[key])

    async def start(self, *, autorun: bool = True) -> None:
        """Start every server, create the buildings and (``autorun``) tick at 1 Hz."""
        await asyncio.gather(*(s.start() for s in self._servers.values()))
        for eq in self._equipment:
            host, port, building_id = parse_endpoint(eq.endpoint)
            server = self._servers[(host, port)]
            refs: tuple[NodeRef, ...] = await server.add_building(
                building_id, self.profile, eq.attrs
            )
            nodes = {r.key: r.node_id for r in refs}
            b = _Building(building_id, server, nodes, power_w=self.rng.uniform(20e3, 400e3))
            self._buildings[building_id] = b
            for key, node_id in nodes.items():
                self._by_node[node_id] = (building_id, key)
            await server.set(nodes["online"], True)
            b.values = {key: server.get(node_id) for key, node_id in nodes.items()}
        if autorun and self._task is None:
            self._task = asyncio.create_task(self._run(), name="bms-simulator")

    async def stop(self) -> None:
        """Stop ticking and stop every server."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise
        await asyncio.gather(*(s.stop() for s in self._servers.values()))

    async def _run(self) -> None:
        last = self.clock.monotonic()
        while True:
            await self.clock.sleep(self.clock.speed)  # a sample a second of the machine's time
            now = self.clock.monotonic()
            await self.tick(now - last)
            last = now

    async def tick(self, dt: float = 1.0) -> None:
        """Advance every online building by ``dt`` seconds: one sample each (none while held)."""
        self.counters.ticks += 1
        now = self.clock.monotonic()
        for b in self._buildings.values():
            if b.offline or not b.server.running or self._held:
                continue
            points_before = b.counters.points
            for key, due in list(b.timers.items()):
                if due <= now:
                    del b.timers[key]
                    await self._set(b, key, False)
            b.energy_wh += b.power_w * dt / 3600.0
            b.seq = (b.seq + 1) % 2**32
            await self._set(b, "energy_wh", round(b.energy_wh, 3))
            await self._set(b, "seq", b.seq)
            self.counters.samples += 1
            # The changes of this tick (counted as they were set) are this sample's points.
            carried = b.counters.points - points_before
            b.counters.points = points_before
            b.counters.sample(b.seq, carried)
            for name, rate in self._rates.items():
                if rate > 0 and self.rng.random() < rate * dt:
                    await self.raise_event(b.id, name)

    async def raise_event(self, building_id: str, name: str, **fields: Any) -> None:
        """Raise event ``name`` now, with its effect on the zone and door nodes."""
        b = self._building(building_id)
        if name not in self.profile.events:
            raise ConfigError(f"event {name!r} not in profile {self.profile.name!r}")
        now = self.clock.monotonic()
        payload: dict[str, Any] = {"ts": self.clock.time(), "seq": b.seq}
        block = {"fire": "fire_zone", "intrusion": "intrusion_zone"}.get(name)
        if block is not None:
            zone = int(fields.get("zone", self.rng.randint(1, self._count(b, block))))
            await self._set(b, f"{block}.{zone}.alarm", True)
            b.timers[f"{block}.{zone}.alarm"] = now + ALARM_HOLD_S
            payload["zone"] = zone
        elif name in ("door_forced", "badge"):
            door = int(fields.get("door", self.rng.randint(1, self._count(b, "door"))))
            await self._set(b, f"door.{door}.open", True)
            b.timers[f"door.{door}.open"] = now + DOOR_OPEN_S
            payload["door"] = door
            if name == "badge":
                payload["badge"] = str(fields.get("badge", f"B{self.rng.randint(1, 9999):04d}"))
                payload["granted"] = bool(fields.get("granted", True))
        payload.update(fields)
        self.counters.events[name] = self.counters.events.get(name, 0) + 1
        await b.server.emit_event(building_id, name, payload)

    async def set_offline(self, building_id: str, offline: bool) -> None:
        """Take a building offline (its nodes turn Bad, it stops sampling) or back."""
        b = self._building(building_id)
        if b.offline == offline:
            return
        b.offline = offline
        self.counters.offline_changes += 1
        await b.server.set_quality(building_id, offline)

    # -- the control channel (devices.sim.control.ControlTarget)

    @property
    def protocol(self) -> str:
        return "opcua"

    def device_counters(self) -> Mapping[str, DeviceCounters]:
        """Per building: samples (ticks) emitted, values changed, writes received."""
        return {bid: b.counters for bid, b in self._buildings.items()}

    def hold(self, on: bool) -> None:
        """While held, buildings emit no new samples (their nodes keep their values)."""
        self._held = on

    async def fault(self, device_id: str, name: str, on: bool) -> None:
        """``fire``, ``intrusion`` (zone 1), ``door_forced`` (door 1) or ``badge_refused`` (a
        badge refused at door 1): raised, or cleared."""
        b = self._buildings.get(device_id)
        if b is None:
            raise KeyError(device_id)
        keys = {"fire": "fire_zone.1.alarm", "intrusion": "intrusion_zone.1.alarm",
                "door_forced": "door.1.open", "badge_refused": "door.1.open"}
        if name not in keys:
            raise RejectedError(f"bms has no fault {name!r} (known: {', '.join(keys)})",
                                code="unknown_fault")
        if on and name == "badge_refused":
            await self.raise_event(device_id, "badge", door=1, granted=False)
        elif on:
            await self.raise_event(device_id, name, **({"door": 1} if name == "door_forced"
                                                        else {"zone": 1}))
        else:
            b.timers.pop(keys[name], None)
            await self._set(b, keys[name], False)

    def held_values(self, device_id: str) -> dict[str, Any]:
        """The building's node values by key (``mode`` by name)."""
        b = self._buildings.get(device_id)
        if b is None:
            raise KeyError(device_id)
        out = {key: b.server.get(node) for key, node in b.nodes.items()}
        choices = self.profile.field("mode").choices
        if isinstance(out.get("mode"), int) and 0 <= out["mode"] < len(choices):
            out["mode"] = choices[out["mode"]]
        return out

    async def _on_write(self, node_id: str, value: Any) -> None:
        where = self._by_node.get(node_id)
        if where is None:
            return
        building_id, key = where
        b = self._buildings[building_id]
        b.counters.write(b.values.get(key) != value)
        b.values[key] = value
        applied = True
        if key == "mode":
            choices = self.profile.field("mode").choices
            if isinstance(value, int) and 0 <= value < len(choices):
                b.mode = value
                if choices[value] == "lockdown":
                    for door in range(1, self._count(b, "door") + 1):
                        await self._set(b, f"door.{door}.locked", True)
            else:
                # A real BMS ignores an unknown mode: put the old one back.
                applied = False
                await self._set(b, "mode", b.mode)
        elif not (key.startswith("door.") and key.endswith(".locked")):
            applied = False
        self.counters.commands += 1
        if not applied:
            self.counters.commands_refused += 1
        self.commands.append(BmsCommand(self.clock.time(), building_id, key, value, applied))

    def _count(self, b: _Building, block: str) -> int:
        return sum(
            1
            for k in b.nodes
            if k.startswith(f"{block}.")
            and k.endswith(f".{self.profile.block(block).fields[0].name}")
        )

    async def _set(self, b: _Building, key: str, value: Any) -> None:
        if key != "seq" and b.values.get(key) != value:
            b.counters.points += 1
        b.values[key] = value
        await b.server.set(b.nodes[key], value)

    def _building(self, building_id: str) -> _Building:
        b = self._buildings.get(building_id)
        if b is None:
            raise ConfigError(f"unknown building {building_id!r}")
        return b
