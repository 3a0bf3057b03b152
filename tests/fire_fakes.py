"""In-memory fakes for the building and camera unit tests: a BMS port and an entity context
on a manual clock, with timers run by the test, a journal and recorded events."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from runtime.clock import Clock, ManualClock
from runtime.commands import Command, CommandStatus
from runtime.device_port import DevicePort
from runtime.entity import Entity
from runtime.envelope import Envelope, MessageKind
from runtime.errors import DeviceUnavailableError, StoreUnavailableError
from runtime.inventory import Equipment


class FakePort:
    """A device that takes every write (or none while ``down``) and records them."""

    def __init__(self, policies: Mapping[str, str] | None = None) -> None:
        self.writes: list[dict[str, Any]] = []
        self.held: dict[str, Any] = {}
        self.down = False
        self._policies = dict(policies or {})

    @property
    def online(self) -> bool:
        return not self.down

    def policy(self, field: str) -> str | None:
        return self._policies.get(field, "alarm")

    async def settled(self) -> bool:
        return not self.down

    async def read(self) -> Mapping[str, Any]:
        if self.down:
            raise DeviceUnavailableError("down")
        return dict(self.held)

    async def write(self, fields: Mapping[str, Any], *, command_id: str) -> Mapping[str, Any]:
        if self.down:
            raise DeviceUnavailableError("no answer")
        self.writes.append(dict(fields))
        self.held.update(fields)
        return dict(fields)


class FakeCtx:
    """An EntityContext on a :class:`ManualClock`: timers wait for :meth:`run_timers`."""

    def __init__(self, equipment: Equipment, device: DevicePort | None,
                 clock: ManualClock | None = None) -> None:
        self._equipment = equipment
        self._device = device
        self._clock = clock or ManualClock()
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.timers: dict[str, tuple[float, str, Any, float | None]] = {}
        self.journal: dict[str, Command] = {}
        self.store_down = False

    @property
    def id(self) -> str:
        return self._equipment.id

    @property
    def equipment(self) -> Equipment:
        return self._equipment

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def device(self) -> DevicePort | None:
        return self._device

    def send(self, env: Envelope) -> None:
        pass

    def reply(self, request: Envelope, payload: Any = None, *, type: str = "reply") -> None:
        pass

    def emit(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    def start_timer(self, name: str, delay_s: float, type: str, payload: Any = None, *,
                    repeat: bool = False) -> None:
        self.timers[name] = (self._clock.monotonic() + delay_s, type, payload,
                             delay_s if repeat else None)

    def cancel_timer(self, name: str) -> None:
        self.timers.pop(name, None)

    def publish_view(self, view: Mapping[str, Any]) -> None:
        pass

    def publish_read_model(self, name: str, data: bytes) -> None:
        pass

    def observe(self, metric: str, value: float) -> None:
        pass

    async def submit(self, commands: Sequence[Command]) -> list[Command]:
        if self.store_down:
            raise StoreUnavailableError("store down")
        out = []
        for c in commands:
            out.append(self.journal.setdefault(c.command_id, c))
        return out

    async def commands(self, ids: Sequence[str]) -> dict[str, Command]:
        return {i: self.journal[i] for i in ids if i in self.journal}

    def settle(self, command_id: str, status: CommandStatus) -> None:
        """The journal's command reaches ``status`` (its target answered)."""
        self.journal[command_id] = dataclasses.replace(self.journal[command_id], status=status)

    async def run_timers(self, entity: Entity) -> int:
        """Deliver every timer due now (repeating ones are kept); how many ran."""
        ran = 0
        now = self._clock.monotonic()
        for name, (due, type_, payload, every) in sorted(self.timers.items(),
                                                          key=lambda kv: kv[1][0]):
            if due > now or name not in self.timers:
                continue
            if every is None:
                del self.timers[name]
            else:
                self.timers[name] = (now + every, type_, payload, every)
            await entity.handle(Envelope(target=self.id, type=type_, payload=payload,
                                         kind=MessageKind.EVENT))
            ran += 1
        return ran

    async def advance(self, entity: Entity, seconds: float) -> None:
        """Move the clock by ``seconds`` and run what falls due."""
        await self._clock.advance(seconds)
        while await self.run_timers(entity):
            pass

    def named(self, event: str) -> list[dict[str, Any]]:
        return [f for e, f in self.events if e == event]
