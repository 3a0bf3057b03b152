"""A host: many entities in one process, their mailboxes, checkpoints and commands.

:class:`HostCore` is the whole host without Ray: it owns the entity slots and
the supervisor that restarts them, routes envelopes (locally, or in batches
through the :class:`~runtime.router.Outbox`), checkpoints dirty entities to
the store in pipelined batches, consumes the command journal for its entities,
and records events. The Ray actor in :mod:`runtime.ray_host` wraps one of these;
tests drive it directly with an in-memory store and transport.

A journaled command is acknowledged in the store only after the checkpoint
that holds its effect: the entity's checkpoint is written first, then the
ack. Dirty entities are checkpointed every ``checkpoint_interval_s``, but a
waiting ack wakes the flush at once (for its own entities only), so an
operator sees ``acked`` milliseconds after the device confirmed, not a
checkpoint period later. Along the way the host stamps the command's path
(``sent_ts`` when it picked the command from the journal, ``device_read_ts``
when the entity read its device while applying it, ``device_write_ts`` and
``device_confirmed_ts`` around the device write) for the benches.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runtime.cell import EntityCell, EntityFactory, EntitySlot
from runtime.clock import Clock, SystemClock
from runtime.commands import TERMINAL, Command, CommandStatus
from runtime.device_port import DeviceManager, DeviceManagerFactory, DevicePort
from runtime.entity import Checkpoint
from runtime.envelope import Envelope, MessageKind, decode_batch, pack, unpack
from runtime.errors import (
    CommandpostError,
    ExpiredError,
    MailboxFullError,
    MalformedMessageError,
    RejectedError,
    RetryableError,
    StoreUnavailableError,
    UnknownEntityError,
)
from runtime.inventory import COORDINATOR, Equipment
from runtime.mailbox import Mailbox
from runtime.metrics import Histogram
from runtime.router import Directory, Outbox, Transport
from runtime.store import StateStore
from supervisors import (
    ChildSpec,
    ExitReason,
    RestartType,
    Supervisor,
    SupervisorEvent,
    SupervisorOptions,
)

log = logging.getLogger("commandpost.host")

_JOURNAL_BATCH = 500  # journal entries read at a time
_FEED_BATCH = 500  # events handed to a coordinator at a time
_FEED_BLOCK_MS = 1000  # how long a coordinator's feed waits on the stream per read
_FEED_TIMEOUT_S = 30.0  # how long a batch may take its coordinator before it goes again
_SUBMIT_CHUNK = 500  # commands an entity journals in one round trip

#: The hash where hosts keep one line per entity (``{"host", "status", "online",
#: "conditions"}``, JSON) for the web's equipment lists; the twins are the checkpoints.
EQUIPMENT_VIEW = "equipment"

HOST_PREFIX = "@"  # envelopes addressed to "@{host_id}" are replies to a host-level request


@dataclass(frozen=True, slots=True)
class HostConfig:
    """Tunables of one host."""

    mailbox_capacity: int = 256
    checkpoint_interval_s: float = 0.25
    event_flush_interval_s: float = 0.2
    read_model_interval_s: float = 0.2
    journal_block_ms: int = 500
    max_event_backlog: int = 50_000
    supervision: SupervisorOptions = SupervisorOptions()
    restart_type: RestartType = RestartType.PERMANENT


def _setpoint_key(cmd: Command, target: Equipment, behaviour: Any = None
                  ) -> tuple[str, str, tuple[str, ...]]:
    """Commands that set the same fields of the same target: the latest one wins.

    A command to a coordinator is an action, not a setpoint (two requests opened,
    two alarms acknowledged): its key is its own id, so none supersedes another.
    A behaviour whose commands address a part of the equipment (a building's
    door) names what they set itself (:meth:`~runtime.entity.Entity.setpoint_key`).
    """
    if target.kind == COORDINATOR:
        return cmd.target, cmd.command_id, ()
    own = getattr(behaviour, "setpoint_key", None)
    if own is not None:
        action, fields = own(cmd.action, cmd.params)
        return cmd.target, action, tuple(fields)
    return cmd.target, cmd.action, tuple(sorted(cmd.params))


@dataclass(frozen=True, slots=True)
class _Ack:
    """A command's final status, waiting for the checkpoint of its entity."""

    command_id: str
    status: CommandStatus
    error: str
    entity_id: str
    stamps: Mapping[str, float]


class _TimedPort:
    """An entity's device port that stamps the device I/O of journaled commands.

    Entities pass the command id they are applying to :meth:`write`; when the
    host is waiting for that command, the time the write began and the time
    the device confirmed it are kept for the command's record, and so is the
    time of a read made while applying it (a circuit reads its lamps first).
    """

    __slots__ = ("_host", "_port", "_slot")

    def __init__(self, port: DevicePort, host: HostCore, slot: EntitySlot) -> None:
        self._port = port
        self._host = host
        self._slot = slot

    @property
    def online(self) -> bool:
        return self._port.online

    def policy(self, field: str) -> str | None:
        return self._port.policy(field)

    async def settled(self) -> bool:
        return await self._port.settled()

    async def read(self) -> Mapping[str, Any]:
        entity = self._slot.entity
        times = self._host._device_times.get(entity.current_command) if entity else None
        if times is not None:
            times.setdefault("device_read_ts", self._host.clock.time())
        return await self._port.read()

    async def write(self, fields: Mapping[str, Any], *, command_id: str) -> Mapping[str, Any]:
        times = self._host._device_times.get(command_id)
        if times is None:
            return await self._port.write(fields, command_id=command_id)
        # A command may write more than once: from the first write to the last confirmation.
        times.setdefault("device_write_ts", self._host.clock.time())
        confirmed = await self._port.write(fields, command_id=command_id)
        times["device_confirmed_ts"] = self._host.clock.time()
        return confirmed


class HostCore:
    """Entities of one host, supervised, persisted and reachable."""

    def __init__(
        self,
        host_id: str,
        equipment: Sequence[Equipment],
        *,
        factory_for: Callable[[Equipment], EntityFactory],
        store: StateStore,
        transport: Transport,
        directory: Directory,
        clock: Clock | None = None,
        city_clock: Clock | None = None,
        config: HostConfig = HostConfig(),
        generation: int = 0,
        devices: DeviceManagerFactory | None = None,
        device_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.host_id = host_id
        self.generation = generation
        # The host's machinery (checkpoints, the command path's stamps, supervision) runs on
        # ``clock``; its entities (timers, timestamps, events) on the city's, by default the same.
        self.clock: Clock = clock or SystemClock()
        self.city_clock: Clock = city_clock or self.clock
        self.config = config
        self.store = store
        self.directory = directory
        self.transport = transport
        self.outbox = Outbox(transport)
        # The Ray actor's priority method, when this host serves one (a call to an entity of
        # this very host takes it without a Ray hop).
        self.priority_lane: Callable[[bytes], Awaitable[bytes]] | None = None
        # Told of every view an entity publishes (a lane process mirrors them).
        self.view_listener: Callable[[str, Mapping[str, Any]], None] | None = None
        self.slots: dict[str, EntitySlot] = {
            eq.id: EntitySlot(eq, factory_for(eq), Mailbox(config.mailbox_capacity))
            for eq in equipment
        }
        self.supervisor: Supervisor | None = None
        self._pending: dict[str, asyncio.Future[Envelope]] = {}
        self._dirty: set[str] = set()
        self._ack_waiting: list[_Ack] = []
        # Set when an ack waits (flush its entities now) or the checkpoint period ended.
        self._flush_wanted = asyncio.Event()
        self._full_flush_due = False
        # Journaled commands handed to a mailbox and not finished yet: their device times.
        self._device_times: dict[str, dict[str, float]] = {}
        self._events: deque[dict[str, Any]] = deque()
        self._dropped_events = 0
        # Read models the entities published and the store has not taken yet.
        self._read_models: dict[str, bytes] = {}
        self._read_models_wanted = asyncio.Event()
        # Each entity's line of the equipment view as last written (only changes are).
        self._summaries: dict[str, str] = {}
        # Entities whose checkpoint must be durable before their caller goes on.
        self._durable_waiting: list[tuple[str, asyncio.Future[None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight_commands: OrderedDict[str, str] = OrderedDict()  # stream id -> command id
        self._done_commands: set[str] = set()
        self._cursor = "0"
        self._retry_commands: list[Envelope] = []
        self._escalations: list[tuple[str, str]] = []
        self.counters: dict[str, int] = {
            "unknown_target": 0,
            "malformed_batches": 0,
            "malformed_envelopes": 0,
            "refused_full": 0,
            "delivered": 0,
        }
        self.metrics: dict[str, Histogram] = {}  # what entities observe (ctx.observe)
        self.started_at = 0.0
        # Seconds from the start of :meth:`start` to each of its steps (``status()["start"]``).
        self.start_steps: dict[str, float] = {}
        self.last_tick = time.monotonic()
        self.ready = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._device_factory = devices
        self._device_options = dict(device_options or {})
        self.devices: DeviceManager | None = None

    # -- lifecycle -------------------------------------------------------
    async def start(self) -> None:
        """Load every checkpoint in bulk, start the entities in order, then the loops."""
        self.loop = asyncio.get_running_loop()
        self.started_at = time.time()
        t0 = time.monotonic()

        def step(name: str) -> None:
            self.start_steps[name] = round(time.monotonic() - t0, 4)

        ids = list(self.slots)
        blobs = await self.store.load_checkpoints(ids)
        step("checkpoints_loaded")
        for eid, blob in blobs.items():
            try:
                self.slots[eid].saved = Checkpoint.from_dict(unpack(blob))
            except (MalformedMessageError, TypeError, ValueError) as exc:
                log.error("checkpoint of %s is unreadable (%s): starting it fresh", eid, exc)
                self.emit(eid, "checkpoint_unreadable", {"error": str(exc)})
        for slot in self.slots.values():
            if slot.saved is not None:
                for cid in slot.saved.applied:
                    slot.mailbox.remember(cid)
        self._cursor = await self.store.get_cursor(self._cursor_name)
        children = [
            (
                ChildSpec(eid, restart=self.config.restart_type, shutdown_timeout_s=2.0),
                self._cell_factory(slot),
            )
            for eid, slot in self.slots.items()
        ]
        self.supervisor = Supervisor(
            f"{self.host_id}/entities",
            self.config.supervision,
            children,
            clock=self.clock,
            on_event=self._on_supervisor_event,
            on_escalate=self._on_escalate,
        )
        await self.supervisor.start()
        step("entities_started")
        if self._device_factory is not None:
            self.devices = self._device_factory(
                [s.equipment for s in self.slots.values()], self.route, self._device_options)
        # Commands a previous incarnation left unacknowledged reach their entities before any
        # device reports: an entity takes up a command cut short by its host's death before
        # its reconnect compares desired state with the device (and reverts what it set).
        try:
            while await self._journal_pass(block_ms=0) >= _JOURNAL_BATCH:
                pass
        except StoreUnavailableError as exc:
            log.warning("host %s: journal not caught up before its devices: %s",
                        self.host_id, exc)
        step("journal_caught_up")
        if self.devices is not None:
            await self.devices.start()
        step("devices_started")
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._checkpoint_loop(), name=f"host[{self.host_id}].checkpoints"),
            loop.create_task(self._checkpoint_ticker(),
                             name=f"host[{self.host_id}].checkpoint_ticker"),
            loop.create_task(self._event_loop(), name=f"host[{self.host_id}].events"),
            loop.create_task(self._journal_loop(), name=f"host[{self.host_id}].journal"),
            loop.create_task(self._tick_loop(), name=f"host[{self.host_id}].tick"),
            loop.create_task(self._read_model_loop(), name=f"host[{self.host_id}].read_models"),
        ]
        self._tasks += [
            loop.create_task(self._feed_loop(slot), name=f"host[{self.host_id}].feed[{eid}]")
            for eid, slot in self.slots.items() if getattr(slot.factory, "EVENT_FEED", False)
        ]
        self.ready = True
        self.emit(self.host_id, "host_started", {"entities": len(self.slots),
                                                   "generation": self.generation})

    async def stop(self) -> None:
        """Stop entities in reverse order, flush their checkpoints, stop the loops."""
        self.ready = False
        if self.devices is not None:
            await self.devices.stop()
        if self.supervisor is not None:
            await self.supervisor.shutdown()
        await self.outbox.drain(timeout=2.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise
        self._tasks = []
        try:
            await self._flush_checkpoints(all_slots=True)
            await self._flush_events()
        except StoreUnavailableError as exc:
            log.error("host %s stopped without its last checkpoints: %s", self.host_id, exc)
        await self.outbox.close()

    def _cell_factory(self, slot: EntitySlot) -> Callable[[ChildSpec], EntityCell]:
        def make(spec: ChildSpec) -> EntityCell:
            return EntityCell(slot, self)

        return make

    def _on_supervisor_event(self, ev: SupervisorEvent) -> None:
        if ev.action == "restart":
            slot = self.slots.get(ev.child)
            if slot is not None:
                slot.restarts = ev.restarts
        if ev.action in ("restart", "give_up", "escalate", "failed"):
            self.emit(ev.child or self.host_id, f"supervisor_{ev.action}",
                      {"supervisor": ev.supervisor, "reason": ev.reason, "restarts": ev.restarts})
        if ev.action == "exit" and self.config.restart_type is RestartType.TEMPORARY:
            slot = self.slots.get(ev.child)
            if slot is not None and slot.entity is None:
                slot.status = "stopped"
        if ev.action == "failed":
            slot = self.slots.get(ev.child)
            if slot is not None:
                slot.status = "failed"

    def _on_escalate(self, who: str, reason: ExitReason) -> None:
        self._escalations.append((who, reason.detail))
        log.error("host %s: %s escalated (%s)", self.host_id, who, reason.detail)

    @property
    def gave_up(self) -> bool:
        return self.supervisor is not None and self.supervisor.gave_up

    # -- HostServices (called by cells) -----------------------------------
    def route(self, env: Envelope) -> None:
        """Deliver ``env`` locally, to a host-level waiter, or to the owning host."""
        target = env.target
        if target.startswith(HOST_PREFIX):
            host_id = target[len(HOST_PREFIX):]
            if host_id == self.host_id:
                fut = self._pending.pop(env.correlation_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(env)
            else:
                self.outbox.put(host_id, env)
            return
        slot = self.slots.get(target)
        if slot is not None:
            self._offer(slot, env)
            return
        owner = self.directory.host_of(target)
        if owner is None or owner == self.host_id:
            self._unknown(env)
            return
        self.outbox.put(owner, env)

    def _offer(self, slot: EntitySlot, env: Envelope) -> None:
        if slot.status in ("failed", "stopped") and env.kind is not MessageKind.REPLY:
            # Nobody will read this mailbox until an operator restarts the entity.
            exc = RejectedError(f"entity {slot.id} is {slot.status}", code=f"entity_{slot.status}")
            self._error_reply(env, exc, exc.code)
            if env.kind is MessageKind.COMMAND and env.sender == "journal":
                self.message_done(slot, env, exc)
            return
        try:
            if slot.mailbox.offer(env):
                self.counters["delivered"] += 1
        except MailboxFullError as exc:
            self.counters["refused_full"] += 1
            if env.kind is MessageKind.COMMAND and env.sender == "journal":
                # A journaled command is never refused for good: it waits its turn.
                self._retry_commands.append(env)
            else:
                self._error_reply(env, exc, "mailbox_full")

    def _unknown(self, env: Envelope) -> None:
        self.counters["unknown_target"] += 1
        log.debug("no entity %s (message %s from %s)", env.target, env.type, env.sender)
        self._error_reply(env, UnknownEntityError(env.target), "unknown_entity")

    def _error_reply(self, env: Envelope, exc: CommandpostError, code: str) -> None:
        if env.reply_to and env.kind is not MessageKind.REPLY:
            self.route(env.reply("error", {"error": str(exc), "code": code}, sender=self.host_id))

    def emit(self, entity_id: str, event: str, fields: Mapping[str, Any]) -> None:
        if len(self._events) >= self.config.max_event_backlog:
            self._events.popleft()
            self._dropped_events += 1
        row: dict[str, Any] = {"ts": self.city_clock.time(), "entity": entity_id, "event": event,
                               "host": self.host_id}
        slot = self.slots.get(entity_id)
        if slot is not None:
            # Every event carries where it happened: scoping and the coordinators need it.
            row["municipality"] = slot.equipment.municipality
            row["kind"] = slot.equipment.kind
        for k, v in fields.items():
            row[k] = v if isinstance(v, (str, int, float, bool)) else str(v)
        self._events.append(row)

    def observe(self, metric: str, value: float) -> None:
        h = self.metrics.get(metric)
        if h is None:
            h = self.metrics[metric] = Histogram()
        h.observe(value)

    def view_published(self, entity_id: str, view: Mapping[str, Any]) -> None:
        """An entity published its lane view (:meth:`EntityContext.publish_view`)."""
        if self.view_listener is not None:
            self.view_listener(entity_id, view)

    async def priority(self, env: Envelope, timeout: float) -> Any:
        """Serve ``env`` on its target's priority lane: this host's own, or one Ray call to
        the target's host (:meth:`runtime.router.Transport.priority`)."""
        host_id = self.directory.host_of(env.target)
        if host_id is None:
            raise UnknownEntityError(env.target)
        if self.priority_lane is not None and host_id == self.host_id:
            answer = await asyncio.wait_for(self.priority_lane(pack(env.to_wire())), timeout)
        else:
            answer = await asyncio.wait_for(
                self.transport.priority(host_id, pack(env.to_wire())), timeout)
        doc = unpack(answer)
        if not isinstance(doc, dict) or not doc.get("ok"):
            error = doc.get("error", "refused") if isinstance(doc, dict) else "refused"
            code = doc.get("code", "refused") if isinstance(doc, dict) else "refused"
            if code == "RetryableError":
                raise RetryableError(str(error))
            raise RejectedError(str(error), code=str(code))
        return doc.get("result")

    async def hold_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        return await self.store.hold_lease(name, owner, int(ttl_s * 1000))

    async def release_lease(self, name: str, owner: str) -> bool:
        return await self.store.release_lease(name, owner)

    async def lease_owners(self, names: Sequence[str]) -> dict[str, str]:
        return await self.store.lease_owners(names)

    def option(self, name: str) -> Any:
        return self._device_options.get(name)

    def mark_dirty(self, slot: EntitySlot) -> None:
        slot.dirty = True
        self._dirty.add(slot.id)

    def device_port(self, entity_id: str) -> DevicePort | None:
        port = self.devices.port(entity_id) if self.devices is not None else None
        slot = self.slots.get(entity_id)
        return _TimedPort(port, self, slot) if port is not None and slot is not None else port

    def online_count(self) -> int:
        return self.devices.online_count() if self.devices is not None else 0

    def message_done(self, slot: EntitySlot, env: Envelope, error: CommandpostError | None) -> None:
        if env.kind is not MessageKind.COMMAND or env.sender != "journal":
            return
        if error is None:
            status, text = CommandStatus.ACKED, ""
        elif isinstance(error, ExpiredError):
            status, text = CommandStatus.EXPIRED, str(error)
        else:
            status, text = CommandStatus.FAILED, str(error)
        stamps = self._device_times.pop(env.id, None) or {}
        # The ack waits for the checkpoint that holds the command's effect.
        self.mark_dirty(slot)
        self._queue_ack(_Ack(env.id, status, text, slot.id, stamps))

    def _queue_ack(self, ack: _Ack) -> None:
        self._ack_waiting.append(ack)
        self._flush_wanted.set()

    # -- inbound ---------------------------------------------------------
    def deliver_batch(self, blob: bytes) -> dict[str, int]:
        """Deliver a batch from another host; malformed rows are counted, not fatal."""
        try:
            envelopes, bad = decode_batch(blob)
        except MalformedMessageError as exc:
            self.counters["malformed_batches"] += 1
            log.warning("host %s dropped a malformed batch: %s", self.host_id, exc)
            return {"accepted": 0, "malformed": 1}
        self.counters["malformed_envelopes"] += bad
        for env in envelopes:
            self.route(env)
        return {"accepted": len(envelopes), "malformed": bad}

    async def request(
        self, target: str, type: str, payload: Any = None, *, timeout: float = 5.0,
        kind: MessageKind = MessageKind.CONTROL,
    ) -> Any:
        """Send ``type`` to an entity and wait for its answer (raises its error)."""
        env = Envelope(target=target, type=type, payload=payload, sender=self.host_id,
                       reply_to=HOST_PREFIX + self.host_id, kind=kind,
                       deadline=time.time() + timeout)
        fut: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        self._pending[env.id] = fut
        try:
            self.route(env)
            answer = await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(env.id, None)
        if answer.type == "error":
            p = answer.payload if isinstance(answer.payload, dict) else {}
            raise RejectedError(str(p.get("error", "error")), code=str(p.get("code", "error")))
        return answer.payload

    async def ping_entities(self, ids: Iterable[str] | None = None,
                            timeout: float = 10.0) -> dict[str, Any]:
        """Ping entities through their mailboxes; answers with who answered."""
        targets = list(ids) if ids is not None else list(self.slots)

        async def one(eid: str) -> tuple[str, Any]:
            try:
                return eid, await self.request(eid, "ping", timeout=timeout)
            except (CommandpostError, TimeoutError) as exc:
                return eid, {"error": str(exc) or type(exc).__name__}

        results = await asyncio.gather(*(one(e) for e in targets))
        answered = {e: r for e, r in results if "error" not in r}
        versions = [int(r.get("version", 0)) for r in answered.values()]
        return {"answered": len(answered), "asked": len(targets),
                "failed": [e for e, r in results if "error" in r],
                "min_version": min(versions, default=0), "max_version": max(versions, default=0)}

    def snapshot(self, ids: Iterable[str] | None = None) -> dict[str, Any]:
        """Current checkpointable state of entities (live incarnation, else last saved)."""
        out: dict[str, Any] = {}
        for eid in ids if ids is not None else self.slots:
            slot = self.slots[eid]
            cp = slot.entity.checkpoint() if slot.entity is not None else slot.saved
            out[eid] = cp.to_dict() if cp is not None else None
        return out

    # -- background loops ------------------------------------------------
    async def _tick_loop(self) -> None:
        while True:
            self.last_tick = time.monotonic()
            await asyncio.sleep(0.1)

    async def _checkpoint_ticker(self) -> None:
        while True:
            await self.clock.sleep(self.config.checkpoint_interval_s)
            self._full_flush_due = True
            self._flush_wanted.set()

    async def _checkpoint_loop(self) -> None:
        # One loop does every flush, so two checkpoints of an entity never race.
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted.clear()
            full, self._full_flush_due = self._full_flush_due, False
            if not full and not self._ack_waiting and not self._durable_waiting:
                continue
            try:
                await self._flush_checkpoints(acks_only=not full)
            except StoreUnavailableError as exc:
                # The acks are queued again; the next ack or period retries them.
                log.debug("checkpoints wait for the store: %s", exc)

    async def _flush_checkpoints(self, *, all_slots: bool = False,
                                 acks_only: bool = False) -> None:
        """Checkpoint dirty entities (every one, or only those whose acks wait), then acks."""
        acks, self._ack_waiting = self._ack_waiting, []
        durable, self._durable_waiting = self._durable_waiting, []
        if all_slots:
            ids = list(self.slots)
        elif acks_only:
            ids = list(dict.fromkeys(a.entity_id for a in acks if a.entity_id in self.slots))
        else:
            ids = list(self._dirty)
        ids += [eid for eid, _ in durable if eid not in ids and eid in self.slots]
        blobs: dict[str, bytes] = {}
        summaries: dict[str, str] = {}
        for eid in ids:
            slot = self.slots[eid]
            cp = slot.take_checkpoint()
            if cp is not None:
                blobs[eid] = pack(cp.to_dict())
            summary = self._summary(slot, cp)
            if summary != self._summaries.get(eid):
                summaries[eid] = summary
        self._dirty.difference_update(ids)
        try:
            if blobs:
                await self.store.save_checkpoints(blobs)
            if summaries:
                await self.store.hset_many(EQUIPMENT_VIEW, summaries)
                self._summaries.update(summaries)
            if acks:
                await self.store.update_commands(
                    [(a.command_id, a.status, a.error) for a in acks],
                    stamps={a.command_id: a.stamps for a in acks if a.stamps})
                for a in acks:
                    self._done_commands.add(a.command_id)
                await self._advance_cursor()
        except StoreUnavailableError:
            self._dirty.update(blobs)
            self._ack_waiting = acks + self._ack_waiting
            self._durable_waiting = durable + self._durable_waiting
            raise
        for _, fut in durable:
            if not fut.done():
                fut.set_result(None)

    def _summary(self, slot: EntitySlot, cp: Checkpoint | None) -> str:
        """The entity's line of the equipment view (:data:`EQUIPMENT_VIEW`), as JSON."""
        state = cp.state if cp is not None else {}
        return json.dumps({"host": self.host_id, "status": slot.status,
                           "online": bool(state.get("online")),
                           "conditions": list(state.get("conditions") or ())},
                          separators=(",", ":"))

    async def durable(self, entity_id: str) -> None:
        """Return once ``entity_id``'s state as it stands now is checkpointed in the store."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._durable_waiting.append((entity_id, fut))
        self._flush_wanted.set()
        await fut

    def publish_read_model(self, name: str, data: bytes) -> None:
        self._read_models[name] = data
        self._read_models_wanted.set()

    async def submit_commands(self, entity_id: str, commands: Sequence[Command]
                              ) -> list[Command]:
        """Journal ``commands`` for an entity (a coordinator), once its state is durable.

        Write-ahead: the checkpoint that records the decision is in the store
        before any command of it is, so a restarted entity knows what it may
        have sent. Commands go out a chunk at a time, one round trip each; an id
        journaled already is returned as stored, not journaled twice.
        """
        await self.durable(entity_id)
        out: list[Command] = []
        for start in range(0, len(commands), _SUBMIT_CHUNK):
            stored = await self.store.submit_commands(commands[start:start + _SUBMIT_CHUNK])
            out += [cmd for cmd, _ in stored]
        return out

    async def get_commands(self, ids: Sequence[str]) -> dict[str, Command]:
        """Journaled commands by id (those the store still holds)."""
        return await self.store.get_commands(list(ids))

    async def _read_model_loop(self) -> None:
        while True:
            await self._read_models_wanted.wait()
            self._read_models_wanted.clear()
            models, self._read_models = self._read_models, {}
            try:
                for name, data in models.items():
                    await self.store.put_blob(f"view:{name}", data)
            except StoreUnavailableError as exc:
                log.debug("read models wait for the store: %s", exc)
                for name, data in models.items():
                    self._read_models.setdefault(name, data)
                await asyncio.sleep(0.5)
                self._read_models_wanted.set()
                continue
            # At most a few writes a second, whatever the rate of changes.
            await asyncio.sleep(self.config.read_model_interval_s)

    async def _feed_loop(self, slot: EntitySlot) -> None:
        """Hand the event stream to a coordinator, through its consumer group.

        A batch is acknowledged to the group only once the coordinator has handled it
        and its checkpoint is durable: a coordinator that dies in between sees the
        batch again (its handling is idempotent), and no event is ever skipped.
        """
        eid = slot.equipment.id
        rows: list[tuple[str, dict[str, Any]]] = []
        while True:
            try:
                if not rows:
                    rows = await self.store.read_event_group(
                        eid, count=_FEED_BATCH, block_ms=_FEED_BLOCK_MS)
                    if not rows:
                        continue
                await self.request(eid, "events", {"events": [e for _, e in rows]},
                                   timeout=_FEED_TIMEOUT_S)
                await self.durable(eid)
                await self.store.ack_event_group(eid, [i for i, _ in rows])
                rows = []
            except StoreUnavailableError as exc:
                log.debug("feed of %s waits for the store: %s", eid, exc)
                await asyncio.sleep(0.5)
            except (CommandpostError, TimeoutError) as exc:
                # The coordinator refused or is restarting: the same batch goes again.
                log.warning("feed of %s: %s; the batch goes again", eid, exc)
                await asyncio.sleep(0.5)

    async def _event_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.event_flush_interval_s)
            try:
                await self._flush_events()
            except StoreUnavailableError as exc:
                log.debug("events wait for the store: %s", exc)

    async def _flush_events(self) -> None:
        if not self._events:
            return
        batch = list(self._events)
        await self.store.append_events(batch)
        for _ in range(len(batch)):
            self._events.popleft()

    @property
    def _cursor_name(self) -> str:
        return f"host:{self.host_id}"

    async def _journal_loop(self) -> None:
        delay = 0.05
        while True:
            try:
                await self._journal_pass()
                delay = 0.05
            except StoreUnavailableError as exc:
                log.debug("journal waits for the store: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _journal_pass(self, block_ms: int | None = None) -> int:
        """Deliver this host's commands among the next journal entries; returns how many
        entries were read (waiting up to ``block_ms``, by default the configured time)."""
        retry, self._retry_commands = self._retry_commands, []
        for env in retry:
            self._offer(self.slots[env.target], env)
        after = next(reversed(self._inflight_commands), None) or self._cursor
        if block_ms is None:
            block_ms = 50 if self._retry_commands else self.config.journal_block_ms
        entries = await self.store.read_journal(after, count=_JOURNAL_BATCH, block_ms=block_ms)
        if not entries:
            await self._advance_cursor()
            return 0
        picked = self.clock.time()
        for sid, _cid, _target in entries:
            self._inflight_commands[sid] = _cid
        mine = [(sid, cid, t) for sid, cid, t in entries if t in self.slots]
        others = {cid for sid, cid, t in entries if t not in self.slots}
        self._done_commands.update(others)
        if mine:
            commands = await self.store.get_commands([cid for _, cid, _ in mine])
            now = time.time()
            latest: dict[tuple[str, str, tuple[str, ...]], str] = {}
            for _, cid, target in mine:
                cmd = commands.get(cid)
                # A command past its deadline is never sent, so it must not supersede one that is.
                if (cmd is not None and cmd.status not in TERMINAL
                        and not (cmd.deadline_ts and now > cmd.deadline_ts)):
                    latest[_setpoint_key(cmd, self.slots[target].equipment,
                                               self.slots[target].factory)] = cid
            updates: list[tuple[str, CommandStatus, str]] = []
            stamps: dict[str, dict[str, float]] = {}
            deliver: list[Envelope] = []
            for _, cid, target in mine:
                cmd = commands.get(cid)
                if cmd is None or cmd.status in TERMINAL:
                    self._done_commands.add(cid)
                    continue
                if cmd.deadline_ts and now > cmd.deadline_ts:
                    updates.append((cid, CommandStatus.EXPIRED, "deadline passed before sending"))
                    self._done_commands.add(cid)
                    continue
                if latest.get(_setpoint_key(cmd, self.slots[target].equipment,
                                               self.slots[target].factory)) != cid:
                    updates.append((cid, CommandStatus.SUPERSEDED, "a newer setpoint replaced it"))
                    self._done_commands.add(cid)
                    continue
                if cmd.status is CommandStatus.QUEUED:
                    updates.append((cid, CommandStatus.SENT, ""))
                    stamps[cid] = {"sent_ts": picked}
                deliver.append(Envelope(
                    id=cid, target=target, type="command", sender="journal",
                    kind=MessageKind.COMMAND, deadline=cmd.deadline_ts,
                    payload={"command_id": cid, "action": cmd.action, "params": dict(cmd.params),
                             "caller": cmd.caller},
                ))
            if updates:
                await self.store.update_commands(updates, stamps=stamps)
            for env in deliver:
                slot = self.slots[env.target]
                if slot.mailbox.seen(env.id):
                    # Applied before a restart (its id is in the checkpoint): ack again.
                    self._queue_ack(_Ack(env.id, CommandStatus.ACKED, "", slot.id, {}))
                    continue
                self._device_times.setdefault(env.id, {})
                self._offer(slot, env)
        await self._advance_cursor()
        return len(entries)

    async def _advance_cursor(self) -> None:
        moved = None
        while self._inflight_commands:
            sid, cid = next(iter(self._inflight_commands.items()))
            if cid not in self._done_commands:
                break
            self._inflight_commands.popitem(last=False)
            self._done_commands.discard(cid)
            moved = sid
        if moved is not None and moved != self._cursor:
            self._cursor = moved
            await self.store.set_cursor(self._cursor_name, moved)

    # -- status ----------------------------------------------------------
    def lag_s(self) -> float:
        """How long since the main loop last ran its ticker (a hung host grows this)."""
        return max(0.0, time.monotonic() - self.last_tick)

    def status(self) -> dict[str, Any]:
        statuses: dict[str, int] = {}
        restarts = 0
        for slot in self.slots.values():
            statuses[slot.status] = statuses.get(slot.status, 0) + 1
            restarts += slot.stats.crashes
        return {
            "host_id": self.host_id,
            "generation": self.generation,
            "started_at": self.started_at,
            "start": dict(self.start_steps),
            "pid": os.getpid(),
            "entities": len(self.slots),
            "entity_status": statuses,
            "entity_restarts": restarts,
            "ready": self.ready,
            "gave_up": self.gave_up,
            "outbox": {"calls": self.outbox.stats.calls, "envelopes": self.outbox.stats.envelopes,
                       "calls_to": dict(self.outbox.calls_to)},
            "counters": dict(self.counters),
            "dropped_events": self._dropped_events,
            "online": self.online_count(),
            "devices": self.devices.status() if self.devices is not None else {},
            "escalations": list(self._escalations[-20:]),
            "metrics": {name: h.to_dict() for name, h in self.metrics.items()},
        }

    def state_fields(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``keys`` of every live entity's state (cheap: no twin, no checkpoint encoding)."""
        out: dict[str, dict[str, Any]] = {}
        for eid, slot in self.slots.items():
            state = slot.entity.state if slot.entity is not None else None
            if state is not None:
                out[eid] = {k: state.get(k) for k in keys}
        return out

    def entity_info(self, entity_id: str) -> dict[str, Any]:
        slot = self.slots.get(entity_id)
        if slot is None:
            raise UnknownEntityError(entity_id)
        cp = slot.entity.checkpoint() if slot.entity is not None else slot.saved
        return {
            "id": entity_id,
            "status": slot.status,
            "restarts": slot.stats.crashes,
            "mailbox": len(slot.mailbox),
            "stats": {"handled": slot.stats.handled, "refused": slot.stats.refused,
                      "malformed": slot.stats.malformed, "expired": slot.stats.expired,
                      "conflated": slot.mailbox.stats.conflated,
                      "duplicates": slot.mailbox.stats.duplicates},
            "crashes": [{"ts": c.ts, "message_id": c.message_id, "type": c.message_type,
                         "error": c.error} for c in slot.crashes],
            "checkpoint": cp.to_dict() if cp is not None else None,
        }
