"""Fakes for the vehicle and access-terminal unit tests: a context whose timers run on a
:class:`~runtime.clock.ManualClock`, and device ports that record every write."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from runtime.clock import CITY_TZ, Clock, ManualClock
from runtime.device_port import DevicePort
from runtime.entity import Entity
from runtime.envelope import Envelope, MessageKind
from runtime.errors import RejectedError
from runtime.inventory import Equipment


def local(year: int, month: int, day: int, hour: int, minute: int = 0) -> float:
    """Epoch seconds of a local (Europe/Paris) time."""
    return datetime.datetime(year, month, day, hour, minute, tzinfo=CITY_TZ).timestamp()


def manual_clock(at: float) -> ManualClock:
    """A manual clock whose ``time()`` is ``at`` now."""
    return ManualClock(start=0.0, wall_offset=at)


class TimerCtx:
    """An EntityContext on a manual clock: timers are kept and delivered by :meth:`advance`."""

    def __init__(self, equipment: Equipment, device: DevicePort | None,
                 clock: ManualClock) -> None:
        self._equipment = equipment
        self._device = device
        self._clock = clock
        self.entity: Entity | None = None
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.sent: list[Envelope] = []
        self.timers: dict[str, tuple[float, str, Any]] = {}

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
        self.sent.append(env)

    def reply(self, request: Envelope, payload: Any = None, *, type: str = "reply") -> None:
        pass

    def emit(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    def start_timer(self, name: str, delay_s: float, type: str, payload: Any = None, *,
                    repeat: bool = False) -> None:
        self.timers[name] = (self._clock.time() + delay_s, type, payload)

    def cancel_timer(self, name: str) -> None:
        self.timers.pop(name, None)

    def publish_view(self, view: Mapping[str, Any]) -> None:
        pass

    def observe(self, metric: str, value: float) -> None:
        pass

    def named(self, event: str) -> list[dict[str, Any]]:
        return [fields for name, fields in self.events if name == event]

    async def advance_to(self, t: float) -> None:
        """Move the clock to ``t``, delivering each timer due on the way at its time."""
        assert self.entity is not None
        while True:
            due = [(at, name) for name, (at, _, _) in self.timers.items() if at <= t]
            if not due:
                break
            at, name = min(due)
            _, type_, payload = self.timers.pop(name)
            await self._clock.advance(max(0.0, at - self._clock.time()))
            await self.entity.handle(Envelope(target=self.id, type=type_, payload=payload,
                                              sender=self.id, kind=MessageKind.CONTROL))
        await self._clock.advance(max(0.0, t - self._clock.time()))


class RecordingPort:
    """A device port that is online, records writes, and may refuse them."""

    def __init__(self, policies: Mapping[str, str] | None = None) -> None:
        self.writes: list[dict[str, Any]] = []
        self.refuse: str | None = None
        self._policies = dict(policies or {})

    @property
    def online(self) -> bool:
        return True

    def policy(self, field: str) -> str | None:
        return self._policies.get(field)

    async def settled(self) -> bool:
        return True

    async def read(self) -> Mapping[str, Any]:
        raise RejectedError("this device only publishes", code="not_readable")

    async def write(self, fields: Mapping[str, Any], *, command_id: str) -> Mapping[str, Any]:
        if self.refuse is not None:
            raise RejectedError(self.refuse, code="device_refused")
        self.writes.append(dict(fields))
        return dict(fields)


def telemetry(eid: str, values: Mapping[str, Any], ts: float, seq: int) -> Envelope:
    return Envelope(target=eid, type="telemetry", sender=eid, kind=MessageKind.TELEMETRY,
                    payload={"values": dict(values), "seq": seq, "ts": ts, "quality": "good"})


def command(eid: str, cid: str, action: str, params: Mapping[str, Any], caller: str
            ) -> Envelope:
    return Envelope(target=eid, type="command", sender=caller.split(":", 1)[0],
                    payload={"command_id": cid, "action": action, "params": dict(params),
                             "caller": caller})


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
