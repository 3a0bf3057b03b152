"""Shared helpers of the tests: deadline polling, equipment builders, local times, and the
fakes an entity runs on in unit tests (:class:`FakeContext` on a manual clock, and
:class:`FakePort`, a device that records what it is written)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NamedTuple

from runtime.clock import CITY_TZ, Clock, ManualClock
from runtime.commands import Command, CommandStatus
from runtime.device_port import DevicePort
from runtime.entity import Entity
from runtime.envelope import Envelope, MessageKind, unpack
from runtime.errors import DeviceUnavailableError, RejectedError, StoreUnavailableError
from runtime.inventory import Equipment


async def poll(
    predicate: Callable[[], bool | Awaitable[bool]],
    limit_s: float = 5.0,
    *,
    interval: float = 0.005,
    what: str = "condition",
) -> None:
    """Wait until ``predicate()`` is true (it may be a coroutine function); fail at the deadline."""
    deadline = time.monotonic() + limit_s
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s} s waiting for {what}")
        await asyncio.sleep(interval)


def make_equipment(eid: str, kind: str = "crossroad", **overrides: Any) -> Equipment:
    """A valid piece of equipment with id ``eid`` (fields other than id/kind are irrelevant)."""
    fields: dict[str, Any] = {
        "id": eid,
        "kind": kind,
        "municipality": "dijon",
        "lat": 47.32,
        "lon": 5.04,
        "endpoint": "modbus://127.0.0.1:15020/1",
        "profile": "traffic_controller",
    }
    fields.update(overrides)
    return Equipment(**fields)


def local(year: int, month: int, day: int, hour: int, minute: int = 0) -> float:
    """Epoch seconds of a local (Europe/Paris) time."""
    return datetime.datetime(year, month, day, hour, minute, tzinfo=CITY_TZ).timestamp()


def manual_clock(at: float) -> ManualClock:
    """A manual clock whose ``time()`` is ``at`` now."""
    return ManualClock(start=0.0, wall_offset=at)


def next_local(hour: int, *, profile: str = "weekday") -> float:
    """Epoch seconds of ``hour``:00 local on the next date (after today) of day ``profile``.

    End-to-end tests start the city's clock there, so that what a schedule keeps in
    force (a pedestrian zone's hours) does not depend on when they run. Ahead of the
    machine's time, not behind it: a command's deadline is set on the city's clock and
    the journal compares it with the machine's.
    """
    from actors.schedule import day_profile

    date = datetime.datetime.now(CITY_TZ).date() + datetime.timedelta(days=1)
    while day_profile(date) != profile:
        date += datetime.timedelta(days=1)
    return local(date.year, date.month, date.day, hour)


def telemetry(eid: str, values: Mapping[str, Any], ts: float, seq: int) -> Envelope:
    """A sample of ``eid``'s device as its session delivers it."""
    return Envelope(target=eid, type="telemetry", sender=eid, kind=MessageKind.TELEMETRY,
                    payload={"values": dict(values), "seq": seq, "ts": ts, "quality": "good"})


def command(eid: str, cid: str, action: str, params: Mapping[str, Any], caller: str
            ) -> Envelope:
    """A command to ``eid`` as the journal delivers it."""
    return Envelope(target=eid, type="command", sender=caller.split(":", 1)[0],
                    payload={"command_id": cid, "action": action, "params": dict(params),
                             "caller": caller})


class FakePort:
    """A device port that takes every write and records it (:attr:`writes`).

    What it was written it holds (:attr:`held`) and reads back. ``down`` makes it
    unreachable; ``refuse`` (a reason) makes it refuse writes; ``readable=False`` is a
    device that only publishes. A field's reconciliation policy is its entry in
    ``policies``, else ``policy_default``.
    """

    def __init__(self, policies: Mapping[str, str] | None = None, *,
                 policy_default: str | None = "alarm", readable: bool = True) -> None:
        self.writes: list[dict[str, Any]] = []
        self.held: dict[str, Any] = {}
        self.down = False
        self.refuse: str | None = None
        self.readable = readable
        self._policies = dict(policies or {})
        self._policy_default = policy_default

    @property
    def online(self) -> bool:
        return not self.down

    def policy(self, field: str) -> str | None:
        return self._policies.get(field, self._policy_default)

    async def settled(self) -> bool:
        return not self.down

    async def read(self) -> Mapping[str, Any]:
        if self.down:
            raise DeviceUnavailableError("down")
        if not self.readable:
            raise RejectedError("this device only publishes", code="not_readable")
        return dict(self.held)

    async def write(self, fields: Mapping[str, Any], *, command_id: str) -> Mapping[str, Any]:
        if self.down:
            raise DeviceUnavailableError("no answer")
        if self.refuse is not None:
            raise RejectedError(self.refuse, code="device_refused")
        self.writes.append(dict(fields))
        self.held.update(fields)
        return dict(fields)


class Timer(NamedTuple):
    """A timer an entity started: due at ``due`` (the clock's ``time()``), every ``every``
    seconds after that when it repeats."""

    due: float
    type: str
    payload: Any
    every: float | None


class FakeContext:
    """An entity context for unit tests, on a :class:`~runtime.clock.ManualClock` unless
    given another clock.

    It records what the entity emits (:attr:`events`), sends, replies and publishes,
    and journals the commands it submits (:attr:`journal`; ``store_down`` refuses
    them). Timers are kept in :attr:`timers` and delivered as the cell delivers them
    (a control message from the entity itself) to :attr:`entity` when the test moves
    the clock: :meth:`advance_to` delivers each at its time, in order.
    """

    def __init__(self, equipment: Equipment, device: DevicePort | None = None,
                 clock: Clock | None = None) -> None:
        self._equipment = equipment
        self._device = device
        self._clock = clock or ManualClock()
        self.entity: Entity | None = None
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.sent: list[Envelope] = []
        self.replies: list[Envelope] = []
        self.view: dict[str, Any] = {}
        self.models: dict[str, Any] = {}
        self.timers: dict[str, Timer] = {}
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

    def _manual(self) -> ManualClock:
        assert isinstance(self._clock, ManualClock), "only a manual clock is moved by the test"
        return self._clock

    @property
    def device(self) -> DevicePort | None:
        return self._device

    def send(self, env: Envelope) -> None:
        self.sent.append(env)

    def reply(self, request: Envelope, payload: Any = None, *, type: str = "reply") -> None:
        self.replies.append(request.reply(type, payload))

    def emit(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    def named(self, event: str) -> list[dict[str, Any]]:
        """The fields of each ``event`` emitted, in order."""
        return [fields for name, fields in self.events if name == event]

    def start_timer(self, name: str, delay_s: float, type: str, payload: Any = None, *,
                    repeat: bool = False) -> None:
        self.timers[name] = Timer(self._clock.time() + delay_s, type, payload,
                                  delay_s if repeat else None)

    def cancel_timer(self, name: str) -> None:
        self.timers.pop(name, None)

    def publish_view(self, view: Mapping[str, Any]) -> None:
        self.view = dict(view)

    def publish_read_model(self, name: str, data: bytes) -> None:
        self.models[name] = unpack(data)

    def observe(self, metric: str, value: float) -> None:
        pass

    async def submit(self, commands: Sequence[Command]) -> list[Command]:
        if self.store_down:
            raise StoreUnavailableError("store down")
        return [self.journal.setdefault(c.command_id, c) for c in commands]

    async def commands(self, ids: Sequence[str]) -> dict[str, Command]:
        return {i: self.journal[i] for i in ids if i in self.journal}

    def settle(self, command_id: str, status: CommandStatus) -> None:
        """The journal's command reaches ``status`` (its target answered)."""
        self.journal[command_id] = dataclasses.replace(self.journal[command_id], status=status)

    async def advance_to(self, t: float) -> None:
        """Move the clock to ``t`` (epoch s), delivering each timer due on the way at its
        time; a repeating timer is armed again for its next time."""
        assert self.entity is not None, "set ctx.entity before moving its clock"
        clock = self._manual()
        while True:
            due = [(timer.due, name) for name, timer in self.timers.items() if timer.due <= t]
            if not due:
                break
            at, name = min(due)
            timer = self.timers.pop(name)
            if timer.every is not None:
                self.timers[name] = timer._replace(due=at + timer.every)
            await clock.advance(max(0.0, at - clock.time()))
            await self.entity.handle(Envelope(target=self.id, type=timer.type,
                                              payload=timer.payload, sender=self.id,
                                              kind=MessageKind.CONTROL))
        await clock.advance(max(0.0, t - clock.time()))

    async def advance(self, seconds: float) -> None:
        """Move the clock by ``seconds`` (:meth:`advance_to`)."""
        await self.advance_to(self._clock.time() + seconds)

    async def run_timers(self) -> None:
        """Deliver the timers due now."""
        await self.advance_to(self._clock.time())


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the ``occurrence``-th line of ``text`` that contains ``needle``."""
    seen = 0
    for number, line in enumerate(text.split("\n"), start=1):
        if needle in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{needle!r} not found {occurrence} time(s)")
