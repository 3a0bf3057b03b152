"""Running entities: the slot an entity lives in, and one incarnation of it.

An :class:`EntitySlot` lives as long as its host owns the entity: it holds the
mailbox (which doubles as the bounded stash while the entity restarts), the
last checkpoint, counters and the crash record. An :class:`EntityCell` is one
incarnation of the entity's behaviour — created by the slot's supervisor for
every (re)start — and implements the supervisor's ``Child`` protocol.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from runtime.clock import Clock
from runtime.commands import Command
from runtime.device_port import DevicePort
from runtime.entity import Checkpoint, Entity, EntityContext
from runtime.envelope import Envelope, MessageKind
from runtime.errors import (
    CommandpostError,
    ExpiredError,
    MalformedMessageError,
    ProtocolError,
    RejectedError,
)
from runtime.inventory import Equipment
from runtime.mailbox import Mailbox
from supervisors.spec import ExitKind, ExitReason

log = logging.getLogger("commandpost.cell")

EntityFactory = Callable[[EntityContext], Entity]


class HostServices(Protocol):
    """What a host provides to the entities it runs."""

    clock: Clock  # the host's machinery: message deadlines
    city_clock: Clock  # the entities' time: their timers, timestamps and events

    def route(self, env: Envelope) -> None: ...

    def emit(self, entity_id: str, event: str, fields: Mapping[str, Any]) -> None: ...

    def mark_dirty(self, slot: EntitySlot) -> None: ...

    def observe(self, metric: str, value: float) -> None: ...

    def message_done(self, slot: EntitySlot, env: Envelope, error: CommandpostError | None) -> None:
        """Called after each handled message (commands are acked from here)."""

    def device_port(self, entity_id: str) -> DevicePort | None:
        """The entity's device session, if the host runs one for it."""

    def view_published(self, entity_id: str, view: Mapping[str, Any]) -> None:
        """An entity published the view its priority lane reads."""

    def publish_read_model(self, name: str, data: bytes) -> None:
        """Write read model ``name`` to the store soon (the latest one wins)."""

    async def submit_commands(self, entity_id: str, commands: Sequence[Command]
                              ) -> list[Command]:
        """Journal commands on behalf of ``entity_id``, once its state is durable."""
        ...

    async def get_commands(self, ids: Sequence[str]) -> dict[str, Command]:
        """Journaled commands by id."""
        ...

    async def priority(self, env: Envelope, timeout: float) -> Any:
        """Serve ``env`` on its target's priority lane, wherever its host runs."""
        ...

    async def hold_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take or renew a lease of the store (see :meth:`StateStore.hold_lease`)."""
        ...

    async def release_lease(self, name: str, owner: str) -> bool: ...

    async def lease_owners(self, names: Sequence[str]) -> dict[str, str]: ...

    def option(self, name: str) -> Any:
        """One of the service's options the host was given (``mqtt_url``…), or None."""


@dataclass(slots=True)
class Crash:
    """One crash of an entity: the message that caused it is never redelivered."""

    ts: float
    message_id: str
    message_type: str
    error: str


@dataclass(slots=True)
class SlotStats:
    handled: int = 0
    refused: int = 0
    malformed: int = 0
    expired: int = 0
    crashes: int = 0


@dataclass(eq=False)
class EntitySlot:
    """The place an entity occupies in its host, across its incarnations."""

    equipment: Equipment
    factory: EntityFactory
    mailbox: Mailbox
    saved: Checkpoint | None = None
    entity: Entity | None = None
    status: str = "starting"
    restarts: int = 0
    dirty: bool = False
    stats: SlotStats = field(default_factory=SlotStats)
    crashes: deque[Crash] = field(default_factory=lambda: deque(maxlen=16))
    view: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def id(self) -> str:
        return self.equipment.id

    def take_checkpoint(self) -> Checkpoint | None:
        """Snapshot the live entity into ``saved`` (what a restart resumes from)."""
        if self.entity is not None:
            self.saved = self.entity.checkpoint()
        self.dirty = False
        return self.saved


class _Context:
    """The :class:`EntityContext` one incarnation sees."""

    def __init__(self, slot: EntitySlot, host: HostServices) -> None:
        self._slot = slot
        self._host = host
        self._timers: dict[str, asyncio.Task[None]] = {}
        # Who holds this incarnation's leases: no other process or incarnation is it.
        self._lease_owner = f"{slot.id}:{uuid.uuid4().hex[:12]}"

    @property
    def id(self) -> str:
        return self._slot.id

    @property
    def equipment(self) -> Equipment:
        return self._slot.equipment

    @property
    def clock(self) -> Clock:
        return self._host.city_clock

    def _machine_deadline(self, deadline: float) -> float:
        """An entity's deadline (on its city clock) on the host's: a deadline is a transport
        timeout, so its distance from now is kept in the machine's seconds."""
        city, machine = self._host.city_clock, self._host.clock
        if deadline <= 0 or city is machine:
            return deadline
        return machine.time() + (deadline - city.time())

    def send(self, env: Envelope) -> None:
        if env.deadline > 0 and self._host.city_clock is not self._host.clock:
            env = dataclasses.replace(env, deadline=self._machine_deadline(env.deadline))
        self._host.route(env)

    def reply(self, request: Envelope, payload: Any = None, *, type: str = "reply") -> None:
        if request.reply_to:
            self._host.route(request.reply(type, payload, sender=self._slot.id))

    def emit(self, event: str, **fields: Any) -> None:
        self._host.emit(self._slot.id, event, fields)

    def start_timer(
        self, name: str, delay_s: float, type: str, payload: Any = None, *, repeat: bool = False
    ) -> None:
        self.cancel_timer(name)
        self._timers[name] = asyncio.get_running_loop().create_task(
            self._timer(name, delay_s, type, payload, repeat),
            name=f"entity[{self.id}].timer[{name}]",
        )

    async def _timer(
        self, name: str, delay_s: float, type: str, payload: Any, repeat: bool
    ) -> None:
        while True:
            await self._host.city_clock.sleep(delay_s)
            env = Envelope(
                target=self._slot.id, type=type, payload=payload, sender=self._slot.id,
                kind=MessageKind.CONTROL,
            )
            self._slot.mailbox.offer(env)
            if not repeat:
                self._timers.pop(name, None)
                return

    def cancel_timer(self, name: str) -> None:
        task = self._timers.pop(name, None)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        tasks = list(self._timers.values())
        self._timers.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except asyncio.CancelledError:
                if not t.cancelled():
                    raise

    @property
    def device(self) -> DevicePort | None:
        return self._host.device_port(self._slot.id)

    def publish_view(self, view: Mapping[str, Any]) -> None:
        # One reference swap: the priority thread reads either the old or the new view.
        self._slot.view = MappingProxyType(dict(view))
        self._host.view_published(self._slot.id, self._slot.view)

    def observe(self, metric: str, value: float) -> None:
        self._host.observe(metric, value)

    def publish_read_model(self, name: str, data: bytes) -> None:
        self._host.publish_read_model(name, data)

    async def submit(self, commands: Sequence[Command]) -> list[Command]:
        if self._host.city_clock is not self._host.clock:
            # The journal's stamps and deadlines are the machine's (transport).
            now = self._host.clock.time()
            commands = [dataclasses.replace(
                c, created_ts=now if c.created_ts else 0.0,
                deadline_ts=self._machine_deadline(c.deadline_ts)) for c in commands]
        return await self._host.submit_commands(self._slot.id, commands)

    async def priority(self, env: Envelope, timeout: float = 1.0) -> Any:
        return await self._host.priority(env, timeout)

    async def hold_lease(self, name: str, ttl_s: float) -> bool:
        return await self._host.hold_lease(name, self.lease_owner, ttl_s)

    async def release_lease(self, name: str) -> bool:
        return await self._host.release_lease(name, self.lease_owner)

    async def lease_owners(self, names: Sequence[str]) -> dict[str, str]:
        return await self._host.lease_owners(names)

    @property
    def lease_owner(self) -> str:
        return self._lease_owner

    def option(self, name: str) -> Any:
        return self._host.option(name)

    async def commands(self, ids: Sequence[str]) -> dict[str, Command]:
        return await self._host.get_commands(ids)


class EntityCell:
    """One incarnation of an entity; a ``Child`` for :class:`supervisors.Supervisor`."""

    def __init__(self, slot: EntitySlot, host: HostServices) -> None:
        self.slot = slot
        self.host = host
        self._ctx = _Context(slot, host)
        self._task: asyncio.Task[ExitReason] | None = None
        self._stopping = False

    async def start(self) -> None:
        slot = self.slot
        slot.status = "starting"
        entity = slot.factory(self._ctx)
        await entity.on_start(slot.saved)
        slot.entity = entity
        slot.status = "running"
        self._task = asyncio.get_running_loop().create_task(
            self._run(entity), name=f"entity[{slot.id}].loop"
        )

    async def wait(self) -> ExitReason:
        if self._task is None:
            return ExitReason(ExitKind.SHUTDOWN, "never started")
        try:
            return await asyncio.shield(self._task)
        except asyncio.CancelledError:
            if self._task.cancelled():
                return ExitReason(ExitKind.SHUTDOWN, "stopped")
            raise

    async def stop(self) -> None:
        self._stopping = True
        await self._cancel()
        entity = self.slot.entity
        if entity is not None:
            try:
                await entity.on_stop()
            finally:
                self.slot.take_checkpoint()
                self.slot.entity = None
                self.slot.status = "stopped"

    async def kill(self) -> None:
        self._stopping = True
        await self._cancel()
        self.slot.entity = None
        self.slot.status = "stopped"

    async def _cancel(self) -> None:
        await self._ctx.close()
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise

    async def _run(self, entity: Entity) -> ExitReason:
        slot, host = self.slot, self.host
        while True:
            env = await slot.mailbox.get()
            if env.expired(host.clock.time()):
                slot.stats.expired += 1
                err: CommandpostError = ExpiredError(f"{env.type} to {slot.id} expired")
                self._answer_error(env, err)
                host.message_done(slot, env, err)
                continue
            try:
                result = await entity.handle(env)
            except MalformedMessageError as exc:
                slot.stats.malformed += 1
                self._answer_error(env, exc)
                host.message_done(slot, env, exc)
                continue
            except (RejectedError, ProtocolError) as exc:
                slot.stats.refused += 1
                self._answer_error(env, exc)
                host.message_done(slot, env, exc)
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an entity bug: crash this incarnation, not the host
                return self._crashed(env, exc)
            slot.stats.handled += 1
            if env.kind is not MessageKind.CONTROL or env.type not in ("ping", "get_state"):
                host.mark_dirty(slot)
            if env.reply_to and env.kind is not MessageKind.REPLY:
                self._ctx.reply(env, result)
            host.message_done(slot, env, None)

    def _crashed(self, env: Envelope, exc: BaseException) -> ExitReason:
        slot = self.slot
        detail = f"{type(exc).__name__}: {exc}"
        slot.stats.crashes += 1
        slot.crashes.append(Crash(time.time(), env.id, env.type, detail))
        slot.entity = None
        slot.status = "restarting"
        log.warning("entity %s crashed on %s %s: %s", slot.id, env.type, env.id, detail,
                    exc_info=exc)
        self.host.emit(slot.id, "entity_crash",
                       {"message_id": env.id, "message_type": env.type, "error": detail})
        err = RejectedError(f"{slot.id} crashed handling {env.type}: {detail}", code="crashed")
        self._answer_error(env, err)
        self.host.message_done(slot, env, err)
        return ExitReason(ExitKind.ERROR, detail)

    def _answer_error(self, env: Envelope, exc: CommandpostError) -> None:
        if env.kind is MessageKind.REPLY or not env.reply_to:
            return
        code = getattr(exc, "code", type(exc).__name__)
        self.host.route(env.reply("error", {"error": str(exc), "code": code}, sender=self.slot.id))
