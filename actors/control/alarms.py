"""The alarms coordinator: the command post's alarm list, kept to ISA-18.2.

It owns one :class:`~actors.alarms.AlarmBook`. The host feeds it the entities'
events through a consumer group (``events`` messages, acknowledged once its
checkpoint is durable, so a restart replays a batch and never loses one):

* ``alarm`` / ``alarm_cleared`` events (``alarm`` = the condition) raise and
  clear conditions; a ``momentary`` one (a forced door, a camera tamper: the
  device reports no end) returns to normal at once and waits for an
  acknowledgement;
* ``device_offline`` carries its communication ``path``, which groups floods;
* ``crisis_masks`` / ``crisis_released`` events of the crisis coordinator mask
  the alarms its own actions cause;
* ``fire_plan_step`` events (of a building's fire plan, or of dispatch for the
  plan's intervention: ``building``) are shown on the fire alarm (its ``steps``);
* a camera's ``motion`` (a ``device_event`` naming the building it ``watches``)
  while that building's ``intrusion`` alarm is active or unacknowledged raises
  a momentary ``intrusion_motion`` of the camera in the intrusion's group: one
  incident with both (``GET /api/v1/alarms?group=ID`` lists them).

Operators act through journaled commands to entity ``alarms``: ``ack``
``{"id", "comment"?}``, ``shelve`` ``{"id", "minutes", "reason"}``,
``unshelve`` ``{"id"}``, ``out_of_service`` / ``return_to_service``
``{"id"}`` (admin). The user and role come from the command's caller
(``user:NAME:ROLE``). Every change is published as read model ``alarms``
(msgpack: ``{"ts", "alarms": [...every alarm, hidden ones included...]}``),
which the web filters and pages; escalation and shelving expiry run on a
one-second timer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from actors.alarms import (
    AlarmArgumentError,
    AlarmBook,
    AlarmEvent,
    AlarmStateError,
    EventKind,
    NotAnAlarmError,
    UnknownAlarmError,
    alarm_id,
)
from runtime.entity import Checkpoint, Entity
from runtime.envelope import Envelope, pack
from runtime.errors import MalformedMessageError, RejectedError

__all__ = ["READ_MODEL", "AlarmsCoordinator", "caller_identity"]

#: The read model's name (``view:alarms`` in the store).
READ_MODEL = "alarms"
_TICK_S = 1.0
_ACTIONS = ("ack", "shelve", "unshelve", "out_of_service", "return_to_service")
#: A building's intrusion, and the alarm a camera's motion there becomes (one incident).
INTRUSION = "intrusion"
INTRUSION_MOTION = "intrusion_motion"


def caller_identity(caller: str) -> tuple[str, str]:
    """``(user, role)`` from a command's caller (``user:NAME:ROLE``; others are ``system``)."""
    parts = caller.split(":")
    if len(parts) >= 3 and parts[0] == "user":
        return parts[1], parts[2]
    return caller or "system", "system"


class AlarmsCoordinator(Entity):
    """Keeps the alarm book; fed by the event stream, commanded through the journal."""

    kind: ClassVar[str] = "coordinator"
    #: The host hands this entity the event stream through its consumer group.
    EVENT_FEED: ClassVar[bool] = True

    async def on_start(self, saved: Checkpoint | None) -> None:
        await super().on_start(saved)
        saved_book = self.state.get("book")
        try:
            self.book = (AlarmBook.from_dict(saved_book, self.ctx.clock)
                         if isinstance(saved_book, Mapping) else AlarmBook(self.ctx.clock))
        except MalformedMessageError:
            self.book = AlarmBook(self.ctx.clock)
            self.ctx.emit("alarm_book_reset", reason="unreadable checkpoint")
        # One tick a second of the machine's time, however fast the city's clock runs.
        self.ctx.start_timer("tick", _TICK_S * self.ctx.clock.speed, "tick", repeat=True)
        self._publish()

    def checkpoint(self) -> Checkpoint:
        self.state["book"] = self.book.to_dict()
        return super().checkpoint()

    # -- the event stream -----------------------------------------------------------
    async def on_events(self, msg: Envelope) -> dict[str, int]:
        p = msg.payload
        if not isinstance(p, Mapping) or not isinstance(p.get("events"), list):
            raise MalformedMessageError("events needs a list of events")
        changed = 0
        for ev in p["events"]:
            if isinstance(ev, Mapping):
                changed += len(self._apply(ev))
        if changed:
            self._publish()
        return {"events": len(p["events"]), "changes": changed}

    def _apply(self, ev: Mapping[str, Any]) -> list[AlarmEvent]:
        name = ev.get("event")
        source = str(ev.get("entity") or "")
        ts = ev.get("ts")
        when = float(ts) if isinstance(ts, int | float) and not isinstance(ts, bool) else None
        if name in ("alarm", "alarm_cleared"):
            condition = str(ev.get("alarm") or "")
            if not source or not condition:
                return []
            if name == "alarm_cleared":
                return self.book.clear(source, condition, ts=when)
            path = ev.get("path")
            message = ev.get("message")
            try:
                out = self.book.raise_(
                    source, condition, municipality=str(ev.get("municipality") or "unknown"),
                    kind=str(ev.get("kind") or "unknown"),
                    path=str(path) if isinstance(path, str) and path else None,
                    message=str(message) if isinstance(message, str) and message else None,
                    ts=when)
            except (NotAnAlarmError, AlarmArgumentError):
                return []  # not an alarm (motion), or a malformed record: nothing to keep
            if ev.get("momentary") is True:
                out += self.book.clear(source, condition, ts=when)
            return out
        if name == "crisis_masks":
            activation = str(ev.get("activation") or "")
            pairs = ev.get("masks")
            if activation and isinstance(pairs, str):
                masks = {tuple(x.split("/", 1)) for x in pairs.split(",") if "/" in x}
                return self.book.crisis_masks(activation, {(a, b) for a, b in masks}, ts=when)
            return []
        if name == "fire_plan_step":
            # A building's fire plan (or dispatch, for the plan's intervention) reports a step.
            building = str(ev.get("building") or source)
            try:
                return self.book.note_step(building, str(ev.get("alarm") or "fire"),
                                           str(ev.get("step") or ""), str(ev.get("state") or ""),
                                           str(ev.get("detail") or ""), ts=when)
            except AlarmArgumentError:
                return []
        if name == "device_event" and ev.get("device_event") == "motion":
            return self._motion(ev, source, when)
        if name == "crisis_released":
            activation = str(ev.get("activation") or "")
            return self.book.clear_crisis_masks(activation, ts=when) if activation else []
        return []

    def _motion(self, ev: Mapping[str, Any], source: str, when: float | None
                ) -> list[AlarmEvent]:
        """Motion seen by a camera whose building is in intrusion joins that alarm."""
        watched = ev.get("watches")
        if not source or not isinstance(watched, str) or not watched:
            return []
        parent = alarm_id(watched, INTRUSION)
        try:
            return self.book.join_incident(
                parent, source, INTRUSION_MOTION,
                municipality=str(ev.get("municipality") or "unknown"),
                kind=str(ev.get("kind") or "camera"), ts=when)
        except (UnknownAlarmError, AlarmStateError, AlarmArgumentError):
            return []  # no intrusion there now: motion stays an event

    # -- time -----------------------------------------------------------------------
    async def on_tick(self, msg: Envelope) -> None:
        events = self.book.tick()
        for e in events:
            if e.kind is EventKind.ESCALATED:
                self.ctx.emit("alarm_escalated", alarm_id=e.alarm_id, source=e.source,
                              condition=e.condition, priority=e.priority.value)
        if events:
            self._publish()

    # -- operators --------------------------------------------------------------------
    async def apply_command(self, action: str, params: dict[str, Any]) -> Any:
        if action not in _ACTIONS:
            raise RejectedError(f"the alarms coordinator accepts no {action!r} command "
                                f"(only {', '.join(_ACTIONS)})", code="unknown_action")
        alarm_id = params.get("id")
        if not isinstance(alarm_id, str) or not alarm_id:
            raise RejectedError("an alarm command needs the alarm's id", code="bad_value")
        user, role = caller_identity(self.current_caller)
        if action == "ack":
            comment = params.get("comment")
            events = self.book.ack(alarm_id, user, str(comment) if comment else None)
        elif action == "shelve":
            events = self.book.shelve(alarm_id, user, params.get("minutes"),  # type: ignore[arg-type]
                                      str(params.get("reason") or ""))
        elif action == "unshelve":
            events = self.book.unshelve(alarm_id, user)
        elif action == "out_of_service":
            events = self.book.out_of_service(alarm_id, user, role)
        else:
            events = self.book.return_to_service(alarm_id, user, role)
        for e in events:
            self.ctx.emit("alarm_action", alarm_id=e.alarm_id, action=e.action,
                          user=e.user or "", state=e.state.value, previous=e.previous.value)
        self._publish()
        return self.book.get(alarm_id)


    # -- read model -------------------------------------------------------------------
    def _publish(self) -> None:
        alarms = self.book.alarms(include_hidden=True)
        self.ctx.publish_read_model(READ_MODEL, pack({"ts": self.ctx.clock.time(),
                                                      "alarms": alarms}))
