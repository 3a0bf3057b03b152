"""Entity actors: the behaviour of one piece of equipment.

An entity is plain async Python. It owns its state and twin, receives one
message at a time from its mailbox, and talks to the world only through its
:class:`EntityContext` (send, reply, timers, events, clock). It never knows
whether it runs packed with hundreds of others in a host or alone in a
dedicated Ray actor, and it can be unit-tested with no Ray and no sockets::

    class Counter(Entity):
        kind = "counter"

        async def on_start(self, saved):
            self.state = dict(saved.get("state", {})) if saved else {"n": 0}

        async def on_increment(self, msg):
            self.state["n"] += msg.payload["by"]
            return {"n": self.state["n"]}

Messages are dispatched to ``on_<type>`` coroutines. A handler that raises a
:class:`~runtime.errors.RejectedError` or :class:`~runtime.errors.ProtocolError`
refuses that message (the sender gets the error) and the entity carries on; any
other exception is a crash: the entity is restarted from its last checkpoint by
its supervisor, and the message is recorded with the crash, never redelivered.

The priority lane runs on another thread (a Ray concurrency group of its own),
so its handler is a class method that sees only an immutable *view* the entity
publishes, and hands work back to the entity with :meth:`PriorityLane.post`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from runtime.clock import Clock
from runtime.commands import Command, check_command_shape, shown
from runtime.datafile import KeyPath
from runtime.device_port import DevicePort
from runtime.envelope import Envelope, MessageKind
from runtime.errors import MalformedMessageError, RejectedError
from runtime.inventory import Equipment, Inventory
from runtime.twin import Twin

log = logging.getLogger("commandpost.entity")

Handler = Callable[[Envelope], Awaitable[Any]]


class EntityContext(Protocol):
    """What an entity may do to the world around it."""

    @property
    def id(self) -> str: ...

    @property
    def equipment(self) -> Equipment: ...

    @property
    def clock(self) -> Clock: ...

    def send(self, env: Envelope) -> None:
        """Send an envelope to another entity (batched between hosts)."""

    def reply(self, request: Envelope, payload: Any = None, *, type: str = "reply") -> None:
        """Answer ``request`` (no-op when it expects no answer)."""

    def emit(self, event: str, **fields: Any) -> None:
        """Record an event (alarm, state change) in the event stream."""

    def start_timer(
        self, name: str, delay_s: float, type: str, payload: Any = None, *, repeat: bool = False
    ) -> None:
        """Post ``type`` to this entity after ``delay_s`` (every ``delay_s`` when repeat)."""

    def cancel_timer(self, name: str) -> None: ...

    def publish_view(self, view: Mapping[str, Any]) -> None:
        """Publish the immutable view that the priority lane reads."""

    def publish_read_model(self, name: str, data: bytes) -> None:
        """Publish a read model (``name``, encoded) for the web; the latest one wins.

        The host writes it to the store shortly after (a few per second at most),
        so a coordinator may publish on every change.
        """

    def observe(self, metric: str, value: float) -> None:
        """Record one value of a host-wide histogram (``telemetry_lag_s``, …)."""

    async def submit(self, commands: Sequence[Command]) -> list[Command]:
        """Journal ``commands`` for their targets, the way an operator's are journaled.

        The entity's state as it stands is made durable first, so that a
        restart finds what the entity had decided before anything acted on it.
        A command whose id is journaled already is not journaled again (the
        stored one is returned): ids derived from a decision make a replay
        harmless. Raises :class:`~runtime.errors.StoreUnavailableError`.
        """
        ...

    async def commands(self, ids: Sequence[str]) -> dict[str, Command]:
        """The journaled commands of these ids as they stand (those the store still holds)."""
        ...

    async def priority(self, env: Envelope, timeout: float = 1.0) -> Any:
        """Serve ``env`` on its target's priority lane (:meth:`Entity.on_priority`) at once:
        one call to the target's host, never batched, never queued behind its mailbox.
        Returns the lane's answer; raises its :class:`~runtime.errors.RejectedError`, or
        :class:`~runtime.errors.RetryableError` when the host cannot be reached now."""
        ...

    async def hold_lease(self, name: str, ttl_s: float) -> bool:
        """Take lease ``name`` of the store, or renew it, for ``ttl_s`` (machine seconds).

        False while another holds it. A lease this entity stops renewing (its
        process killed) lapses by itself: at most one holder at any time.
        """
        ...

    async def release_lease(self, name: str) -> bool:
        """Give lease ``name`` up if this entity holds it."""
        ...

    async def lease_owners(self, names: Sequence[str]) -> dict[str, str]:
        """Who holds each of these leases (lapsed and free ones left out)."""
        ...

    @property
    def lease_owner(self) -> str:
        """This entity's name as a lease holder (unique to this incarnation)."""
        ...

    def option(self, name: str) -> Any:
        """An option of the service given to the host (``mqtt_url``), or None."""

    @property
    def device(self) -> DevicePort | None:
        """The entity's device session, or None when it runs without one."""


class PriorityLane(Protocol):
    """The latency-critical lane of a host, running on its own event loop."""

    resources: dict[str, Any]

    def post(self, env: Envelope) -> None:
        """Hand an envelope to an entity's mailbox on the host's main loop (thread-safe)."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What survives a restart of an entity or of its host."""

    state: Mapping[str, Any]
    twin: Mapping[str, Any]
    applied: tuple[str, ...] = ()  # recent command ids already actuated
    version: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": dict(self.state),
            "twin": dict(self.twin),
            "applied": list(self.applied),
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Checkpoint:
        return cls(
            state=dict(d.get("state") or {}),
            twin=dict(d.get("twin") or {}),
            applied=tuple(d.get("applied") or ()),
            version=int(d.get("version", 0)),
        )


APPLIED_WINDOW = 64


class Entity:
    """Base class of every entity behaviour."""

    kind: ClassVar[str] = ""

    def __init__(self, ctx: EntityContext) -> None:
        self.ctx = ctx
        self.state: dict[str, Any] = {}
        self.twin = Twin()
        self.applied: list[str] = []
        self.version = 0
        self.current_command = ""  # the command id being applied, for device idempotency
        self.current_caller = ""  # who journaled it (``user:NAME:ROLE`` from the web)

    # -- lifecycle -------------------------------------------------------
    async def on_start(self, saved: Checkpoint | None) -> None:
        """Start from the last checkpoint (None on the very first start)."""
        if saved is not None:
            self.state = dict(saved.state)
            self.twin = Twin.from_dict(dict(saved.twin))
            self.applied = list(saved.applied)
            self.version = saved.version

    async def on_stop(self) -> None:
        """Release what the entity holds; its state is checkpointed after this."""

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(
            state=dict(self.state),
            twin=self.twin.to_dict(),
            applied=tuple(self.applied[-APPLIED_WINDOW:]),
            version=self.version,
        )

    # -- messages --------------------------------------------------------
    async def handle(self, msg: Envelope) -> Any:
        """Dispatch ``msg`` to ``on_<type>``; an unknown type is refused."""
        handler = getattr(self, "on_" + msg.type, None) if msg.type.isidentifier() else None
        if handler is None or msg.type in _RESERVED:
            raise RejectedError(
                f"{self.kind or 'entity'} {self.ctx.id} has no handler for {msg.type!r}",
                code="unknown_message",
            )
        result: Any = await handler(msg)
        if msg.type not in READ_ONLY:
            self.version += 1
        return result

    async def on_ping(self, msg: Envelope) -> dict[str, Any]:
        """Liveness through the mailbox: answers with the entity's version."""
        return {"id": self.ctx.id, "version": self.version}

    async def on_get_state(self, msg: Envelope) -> dict[str, Any]:
        """The entity's checkpointable state and twin, for tests and the admin."""
        return self.checkpoint().to_dict()

    # -- commands --------------------------------------------------------
    async def on_command(self, msg: Envelope) -> dict[str, Any]:
        """A journaled command: ``{"command_id", "action", "params", "caller"?}``.

        A command id already applied (a replay of the journal after a restart)
        is acknowledged again without acting twice.
        """
        payload = msg.payload
        if not isinstance(payload, Mapping) or not isinstance(payload.get("action"), str):
            raise MalformedMessageError("a command needs an action")
        command_id = str(payload.get("command_id") or msg.id)
        if self.already_applied(command_id):
            return {"command_id": command_id, "duplicate": True}
        params = payload.get("params") or {}
        if not isinstance(params, Mapping):
            raise MalformedMessageError("command params must be a mapping")
        self.current_command = command_id
        self.current_caller = str(payload.get("caller") or msg.sender or "")
        try:
            result = await self.apply_command(payload["action"], dict(params))
        finally:
            self.current_command = self.current_caller = ""
        self.mark_applied(command_id)
        return {"command_id": command_id, "result": result}

    async def apply_command(self, action: str, params: dict[str, Any]) -> Any:
        """Carry out one command; subclasses validate and actuate."""
        raise RejectedError(f"{self.kind or 'entity'} accepts no {shown(action)} command",
                            code="unknown_action")

    @classmethod
    def validate_command(cls, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` as this behaviour takes them for ``action``, checked before journaling.

        The admin backend calls it on every submission, so that a command the
        behaviour would refuse is answered at once and never journaled; it
        raises :class:`~runtime.errors.InvalidCommandError` naming the request
        field. This default checks only the limits of every command
        (:func:`~runtime.commands.check_command_shape`); a behaviour with a
        vocabulary of its own overrides it and applies it in
        :meth:`apply_command` too, so that one definition serves both.
        """
        return check_command_shape(action, params)

    @classmethod
    def validate_command_for(cls, equipment: Equipment, action: str, params: Mapping[str, Any],
                             *, now: float) -> dict[str, Any]:
        """:meth:`validate_command`, and what depends on ``equipment``'s record or the time.

        The admin backend calls this one, with the equipment's inventory record and
        the city's time ``now``, so that a refusal the behaviour can decide without
        the entity's state (a crew message to a vehicle without radio, a bollard
        lowered during its zone's pedestrian hours) is answered before journaling.
        The entity decides again when the command reaches it. By default, exactly
        :meth:`validate_command`.
        """
        return cls.validate_command(action, params)

    @classmethod
    def describe_commands(cls, equipment: Equipment) -> list[dict[str, Any]]:
        """The commands an operator may send to ``equipment``, as :meth:`validate_command_for`
        takes them, for the admin web's forms: ``[{"action", "params": {name: {"type",
        "required", "min"?, "max"?, "enum"?, …}}, …}]`` (the vocabulary of
        :meth:`actors.equipment.Field.describe`). None by default: a behaviour without a
        vocabulary of its own offers no form."""
        return []

    @classmethod
    def setpoint_key(cls, action: str, params: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
        """What a command sets, for "latest setpoint wins": two queued commands with the same
        key, the older one is superseded. By default the action and its fields' names."""
        return action, tuple(sorted(params))

    @classmethod
    def inventory_attrs(cls, equipment: Equipment, inventory: Inventory) -> dict[str, Any]:
        """What an entity needs of the rest of the inventory, merged into its ``attrs``.

        The service calls it when it ships an assignment to a host, so that an
        entity knows its neighbours (a building, the cameras that watch it)
        wherever it runs. Nothing by default.
        """
        return {}

    @classmethod
    def check_record(cls, equipment: Equipment) -> list[tuple[KeyPath, str]]:
        """What this behaviour finds wrong in ``equipment``'s inventory record, as ``(path
        under the record, message)`` pairs, such as ``(("attrs", "schedule"), "…")``.

        ``commandpost inventory check`` reports each with the file and line of the value
        (:func:`runtime.inventory.load_inventory`'s ``check``), and the service refuses
        to start with any (:meth:`runtime.inventory.Inventory.check_records`). Nothing by
        default.
        """
        return []

    @classmethod
    def check_inventory(cls, inventory: Inventory) -> None:
        """Refuse to run on ``inventory`` when this behaviour's own data (a plan it carries
        out, the schedules it follows) is broken or does not suit it.

        The service calls it once for each behaviour its equipment runs, before it
        starts anything, so that a broken file stops it with its file and line instead
        of failing an entity later (a building at its first fire). Raises
        :class:`~runtime.errors.ConfigError`; nothing by default.
        """

    @classmethod
    def coordinator_attrs(cls, inventory: Inventory) -> dict[str, Any]:
        """What a coordinator needs of the inventory, for its record's ``attrs``.

        The service calls it when it builds a coordinator's record
        (:func:`runtime.placement.coordinator`), so the coordinator gets what
        it needs with its assignment, wherever its host runs. Nothing by
        default; raises :class:`~runtime.errors.ConfigError` when the
        inventory does not suit the coordinator.
        """
        return {}

    def already_applied(self, command_id: str) -> bool:
        return command_id in self.applied

    def mark_applied(self, command_id: str) -> None:
        self.applied.append(command_id)
        del self.applied[:-APPLIED_WINDOW]

    # -- priority lane ---------------------------------------------------
    @classmethod
    async def on_priority(
        cls, view: Mapping[str, Any], msg: Envelope, lane: PriorityLane
    ) -> Any:
        """Serve a latency-critical request on the priority loop.

        Runs on another thread: it may read ``view`` (immutable, published by
        the entity) and use ``lane.resources``; it must not touch the entity.
        """
        raise RejectedError(f"{cls.kind or 'entity'} has no priority lane", code="no_priority")

    @classmethod
    async def prepare_priority_lane(cls, view: Mapping[str, Any], lane: PriorityLane) -> None:
        """Get the lane ready to serve this entity at once (open what its requests will
        use), called by a lane process when the entity's first view reaches it. Nothing
        by default."""


_RESERVED = frozenset({"start", "stop", "priority"})
def is_latency_critical(behaviour: Any, *, lane_apart: bool = False) -> bool:
    """Whether an entity class (or factory) is on the bus-priority path: it serves a
    priority lane (:func:`has_priority_lane`), unless its host serves the lanes from a
    process of its own (``lane_apart``, :mod:`runtime.laneproc`), or says so
    (``LATENCY_CRITICAL``). Its host keeps the normal process priority
    (:mod:`runtime.niceness`)."""
    return (has_priority_lane(behaviour) and not lane_apart) \
        or bool(getattr(behaviour, "LATENCY_CRITICAL", False))


def has_priority_lane(behaviour: Any) -> bool:
    """Whether an entity class (or factory) serves a priority lane of its own: it overrides
    :meth:`Entity.on_priority` (a classmethod, compared by its function)."""
    got = getattr(behaviour, "on_priority", None)
    return got is not None and getattr(got, "__func__", got) is not _BASE_ON_PRIORITY


READ_ONLY = frozenset({"ping", "get_state"})  # messages that observe without changing state


def is_command(env: Envelope) -> bool:
    return env.kind is MessageKind.COMMAND


_BASE_ON_PRIORITY = Entity.on_priority.__func__  # type: ignore[attr-defined]
