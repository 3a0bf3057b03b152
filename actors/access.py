"""An access terminal: the retractable bollard that closes a pedestrian zone.

A terminal whose inventory record names a zone (``attrs.zone``) follows that
zone's hours, a schedule of ``actors/schedules/pedestrian_zones.toml`` whose
steps say whether the zone is pedestrian from then on (``pedestrian``) and
may set the bollard::

    [[schedule.step]]
    name = "closed"
    at = "11:00"
    set = { pedestrian = true, bollard = "up" }

**During pedestrian hours the bollard stays up.** Lowering it needs an
exceptional passage granted by an operator: action ``grant_passage``
``{"reason", "for_s", "vehicle"?, "service"?}`` (an operator's or admin's
command, :func:`granting_user`; the submission is audited by the API) lowers the bollard for
``for_s`` seconds, then raises it again. A ``set`` ``{"bollard": "down"}``
during those hours is refused (``pedestrian_hours``): at the API before it is
journaled (:meth:`AccessTerminal.validate_command_for`, from the zone's
schedule and the city's time), and by the entity when it reaches it (the
hours may have begun in between); nothing reaches the device. Outside them
an operator may lower or raise it; an operator's setting holds until the
zone's next step. A terminal without a zone has no hours.

What sets the bollard is kept in layers (:class:`actors.schedule.Layers`),
strongest first (:data:`PRECEDENCE`): a **fire-safety passage** (a grant
whose ``service`` is ``fire_safety``), a **crisis plan** (commands whose
caller is ``crisis``; ``crisis:restore`` releases the layer), an ordinary
**passage**, the **operator**, the **schedule**. A crisis plan can thus hold a
bollard up against an ordinary passage (refused, ``crisis_hold``) and against
an operator, but never against a fire-safety vehicle's passage granted by an
operator. Whatever the layers say, the bollard is never lowered during
pedestrian hours but by a passage.

Schedule steps are followed as :mod:`actors.schedule` says: at start and at
each transition the step in force is applied when it is not the one recorded
(``state.schedule``: ``step`` and ``since``), then a timer is armed for the
next, so a restart neither misses nor repeats a transition. A step, a
passage's end and a command each write the bollard only when the terminal
does not report it where the layers want it.

Fault bits (profile ``access_terminal``): bit 0 a controller fault (alarm
``terminal_fault``), bit 1 a forced passage (alarm ``forced_passage``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Final

from actors.equipment import CRISIS_CALLER, CRISIS_RESTORE_CALLER, EquipmentEntity, Field
from actors.schedule import Layers, Occurrence, Timetable, builtin_schedules
from runtime.commands import check_command_shape, shown
from runtime.device_port import DevicePort
from runtime.entity import Checkpoint
from runtime.envelope import Envelope
from runtime.errors import (
    DeviceUnavailableError,
    InvalidCommandError,
    ProtocolError,
    RejectedError,
)
from runtime.inventory import Equipment

__all__ = ["GRANT_FIELDS", "PRECEDENCE", "AccessTerminal", "zone_timetable"]

#: What may set the bollard, strongest first.
PRECEDENCE: Final = ("fire_passage", "crisis", "passage", "operator", "schedule")
#: The layers that may lower the bollard during pedestrian hours.
PASSAGES: Final = frozenset({"fire_passage", "passage"})
#: The vehicle service whose passage no crisis plan can hold back.
FIRE_SAFETY: Final = "fire_safety"
#: The control room's coordinators, whose commands are never an operator's.
CONTROL_CALLERS: Final = frozenset({"alarms", "crisis", "dispatch"})
#: Roles of the callers who may grant a passage.
GRANTING_ROLES: Final = frozenset({"operator", "admin"})
#: The parameters of ``grant_passage``; ``reason`` and ``for_s`` are required.
GRANT_FIELDS: Final[Mapping[str, Field]] = {
    "reason": Field(str, max_len=200),
    "for_s": Field(float, 1.0, 3600.0),
    "vehicle": Field(str, max_len=64),
    "service": Field(str, choices=("gritter", "sweeper", "waste", "green_areas", FIRE_SAFETY,
                                   "police", "maintenance", "bus", "delivery", "resident")),
}
_ACTIONS: Final = ("set", "grant_passage")
#: How soon a move that the terminal refused or did not answer is tried again (city s).
RETRY_S: Final = 10.0


@functools.lru_cache(maxsize=256)
def _timetable(zone: str, lat: float, lon: float) -> Timetable | None:
    try:
        schedule = builtin_schedules().get(zone)
    except KeyError:
        return None
    return Timetable(schedule, lat, lon) if schedule.kind == "access_terminal" else None


def zone_timetable(equipment: Equipment) -> tuple[str, Timetable | None]:
    """``(zone, timetable)`` of a terminal: ``("", None)`` without a zone, and
    ``(zone, None)`` for a zone no access-terminal schedule is named after."""
    zone = equipment.attrs.get("zone")
    if not isinstance(zone, str) or not zone:
        return "", None
    return zone, _timetable(zone, equipment.lat, equipment.lon)


def _pedestrian(occurrence: Occurrence | None) -> bool:
    return occurrence is not None and occurrence.step.set.get("pedestrian") is True


def pedestrian_at(equipment: Equipment, t: float) -> bool:
    """Whether ``equipment``'s zone is in pedestrian hours at ``t``.

    A zone without a schedule counts as pedestrian at all times: a bollard of a
    misnamed zone is never lowered but by a passage.
    """
    zone, timetable = zone_timetable(equipment)
    if not zone:
        return False
    return True if timetable is None else _pedestrian(timetable.in_force(t))


def granting_user(caller: str) -> str | None:
    """The operator a command's caller names, or None when it is not one.

    ``user:NAME:ROLE`` with an operator's or admin's role; or a bare user name, as
    the API journals an equipment command (its route takes operators and admins
    only), unless it is one of the control room's own callers (the coordinators,
    ``open311:APP``, ``crisis:restore``).
    """
    parts = caller.split(":")
    if parts[0] == "user":
        return parts[1] if len(parts) >= 3 and parts[2] in GRANTING_ROLES else None
    if not caller or len(parts) > 1 or caller in CONTROL_CALLERS:
        return None
    return caller


def _hours_refusal(eid: str, zone: str) -> str:
    return (f"{eid} closes pedestrian zone {zone!r}, in its pedestrian hours: the bollard "
            "stays up; lowering it needs an exceptional passage (grant_passage with a reason)")


class AccessTerminal(EquipmentEntity):
    """A retractable bollard under its pedestrian zone's rules (module docstring)."""

    kind = "access_terminal"
    SCHEDULE_ATTR = "zone"
    FIELDS = {"bollard": Field(str, choices=("up", "down"))}
    CRISIS_LAYER = True

    # -- what it accepts ----------------------------------------------------------------
    @classmethod
    def check_schedule_step(cls, setpoints: Mapping[str, Any]) -> list[tuple[str, str]]:
        """A zone's step says ``pedestrian`` (true or false) and may set ``bollard``; a
        pedestrian step never lowers it."""
        out: list[tuple[str, str]] = []
        pedestrian = setpoints.get("pedestrian")
        if not isinstance(pedestrian, bool):
            out.append(("pedestrian", "a pedestrian zone's step needs pedestrian = true or "
                                      "false"))
        rest = {k: v for k, v in setpoints.items() if k != "pedestrian"}
        out += super().check_schedule_step(rest)
        if pedestrian is True and rest.get("bollard") == "down":
            out.append(("bollard", "a pedestrian step cannot lower the bollard (during "
                                   "pedestrian hours it stays up)"))
        return out

    @classmethod
    def validate_command(cls, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """``set`` ``{"bollard": "up" | "down"}``, or ``grant_passage`` ``{"reason",
        "for_s", "vehicle"?, "service"?}`` with a reason that is not blank."""
        if action != "grant_passage":
            if action != "set":
                check_command_shape(action, params)
                raise InvalidCommandError(
                    f"access_terminal accepts no {shown(action)} command (only "
                    f"{', '.join(_ACTIONS)})", field="action", code="unknown_action")
            return super().validate_command(action, params)
        params = check_command_shape(action, params)
        clean: dict[str, Any] = {}
        for name, value in params.items():
            spec = GRANT_FIELDS.get(name)
            if spec is None:
                raise InvalidCommandError(
                    f"grant_passage takes no {shown(name)} (it takes "
                    f"{', '.join(GRANT_FIELDS)})", field=f"params.{name}", code="unknown_field")
            try:
                clean[name] = spec.check(name, value)
            except RejectedError as exc:
                raise InvalidCommandError(str(exc), field=f"params.{name}",
                                          code=exc.code) from None
        for name in ("reason", "for_s"):
            if name not in clean or (name == "reason" and not clean[name].strip()):
                raise InvalidCommandError(f"an exceptional passage needs a {name}",
                                          field=f"params.{name}", code="bad_value")
        return clean

    @classmethod
    def describe_commands(cls, equipment: Equipment) -> list[dict[str, Any]]:
        """``set`` of the bollard (lowering it is refused during the zone's pedestrian
        hours), and ``grant_passage`` with a required ``reason`` and ``for_s``."""
        forms = super().describe_commands(equipment)
        for form in forms:
            form["params"]["bollard"]["description"] = (
                "down is refused during the zone's pedestrian hours: grant a passage")
        required = {"reason", "for_s"}
        passage = {name: spec.describe(required=name in required)
                   for name, spec in GRANT_FIELDS.items()}
        passage["for_s"]["unit"] = "s"
        return [*forms, {"action": "grant_passage", "params": passage}]

    @classmethod
    def validate_command_for(cls, equipment: Equipment, action: str, params: Mapping[str, Any],
                             *, now: float) -> dict[str, Any]:
        """:meth:`validate_command`, and a lowering refused during the zone's pedestrian
        hours at ``now`` (field ``params.bollard``, code ``pedestrian_hours``)."""
        clean = cls.validate_command(action, params)
        if action == "set" and clean.get("bollard") == "down" and pedestrian_at(equipment, now):
            zone, _ = zone_timetable(equipment)
            raise InvalidCommandError(_hours_refusal(equipment.id, zone),
                                      field="params.bollard", code="pedestrian_hours")
        return clean

    # -- life cycle ---------------------------------------------------------------------
    async def on_start(self, saved: Checkpoint | None) -> None:
        await super().on_start(saved)
        self.state.setdefault("layers", {})
        self.layers = Layers(self.state["layers"], PRECEDENCE)
        self.zone, self.timetable = zone_timetable(self.ctx.equipment)
        if self.zone and self.timetable is None:
            self.ctx.emit("schedule_unknown", zone=self.zone,
                          note="no access-terminal schedule of that name: pedestrian at all "
                               "times")
        if self.timetable is not None:
            # Applied as a message of its own, once the entity has started.
            self.ctx.start_timer("schedule", 0.0, "schedule_due")
        self._arm_passage_end()

    def schedule_view(self) -> dict[str, Any] | None:
        view = self.state.get("schedule_view")
        return dict(view) if isinstance(view, Mapping) else None

    def view_extras(self) -> dict[str, Any]:
        out = super().view_extras()
        out["pedestrian"] = self.pedestrian()
        out["bollard_by"] = self.wanted()[1]
        grant = self.state.get("grant")
        if isinstance(grant, Mapping) and any(s in self.state["layers"] for s in PASSAGES):
            out["passage"] = dict(grant)
        return out

    def pedestrian(self) -> bool:
        """Whether the zone is in pedestrian hours now (by its schedule and the city's time)."""
        return pedestrian_at(self.ctx.equipment, self.ctx.clock.time())

    # -- the schedule -------------------------------------------------------------------
    async def on_schedule_due(self, msg: Envelope) -> None:
        """Apply the zone's step in force if it is not the one applied; arm the next."""
        timetable = self.timetable
        if timetable is None:
            return
        now = self.ctx.clock.time()
        occurrence = timetable.in_force(now)
        applied = self.state.get("schedule") or {}
        if occurrence is not None and (applied.get("step"), applied.get("since")) != \
                occurrence.key:
            step = occurrence.step
            self.state["pedestrian"] = _pedestrian(occurrence)
            bollard = step.set.get("bollard")
            if bollard in ("up", "down"):
                self.layers.put("schedule", {"bollard": bollard}, by=f"schedule:{self.zone}")
            else:
                self.layers.clear("schedule")
            # An operator's setting holds until the zone's next step.
            self.layers.clear("operator")
            name, since = occurrence.key
            self.state["schedule"] = {"step": name, "since": since}
            self.ctx.emit("schedule_step", schedule=timetable.schedule.name, step=name,
                          since=since, pedestrian=self.state["pedestrian"])
            await self._actuate_quietly(f"schedule-{self.ctx.id}-{since:.0f}")
        nxt = timetable.next_after(now)
        if nxt is not None:
            self.ctx.start_timer("schedule", max(0.0, nxt.at - now), "schedule_due")
        self.state["schedule_view"] = timetable.view(now, self.state.get("schedule"))

    # -- passages -----------------------------------------------------------------------
    def _arm_passage_end(self) -> None:
        until = self.layers.next_expiry()
        if until is None:
            self.ctx.cancel_timer("passage")
            return
        self.ctx.start_timer("passage", max(0.0, until - self.ctx.clock.time()), "passage_due")

    async def on_passage_due(self, msg: Envelope) -> None:
        """A passage's time is up: the bollard goes back where the other layers want it."""
        now = self.ctx.clock.time()
        ended = self.layers.expire(now)
        if ended:
            grant = self.state.get("grant") or {}
            self.ctx.emit("passage_ended", layer=",".join(ended),
                          granted_by=str(grant.get("by", "")))
            await self._actuate_quietly(f"passage-end-{self.ctx.id}-{now:.0f}")
        self._arm_passage_end()

    async def _grant(self, clean: Mapping[str, Any], now: float) -> dict[str, Any]:
        user = granting_user(self.current_caller)
        if user is None:
            raise RejectedError(f"an exceptional passage at {self.ctx.id} is granted by an "
                                f"operator, not by {self.current_caller or 'an unknown caller'}",
                                code="forbidden")
        fire = clean.get("service") == FIRE_SAFETY
        crisis = (self.state["layers"].get("crisis") or {}).get("set", {})
        if not fire and crisis.get("bollard") == "up":
            raise RejectedError(f"{self.ctx.id} is held up by a crisis plan: only a "
                                "fire-safety passage lowers it", code="crisis_hold")
        until = now + float(clean["for_s"])
        for layer in PASSAGES:
            self.layers.clear(layer)
        self.layers.put("fire_passage" if fire else "passage", {"bollard": "down"},
                        until=until, by=self.current_caller)
        grant = {"by": user, "reason": clean["reason"], "until": until,
                 "vehicle": clean.get("vehicle", ""), "service": clean.get("service", ""),
                 "command_id": self.current_command}
        self.state["grant"] = grant
        self.ctx.emit("passage_granted", **{k: v for k, v in grant.items() if k != "command_id"})
        self._arm_passage_end()
        return {"passage": grant, **await self._actuate(self.current_command)}

    # -- commands -----------------------------------------------------------------------
    async def apply_command(self, action: str, params: dict[str, Any]) -> Any:
        clean = self.validate_command(action, params)
        now = self.ctx.clock.time()
        self.layers.expire(now)
        if action == "grant_passage":
            return await self._grant(clean, now)
        want = clean["bollard"]
        caller = self.current_caller
        crisis = (self.state["layers"].get("crisis") or {}).get("set", {})
        if caller == CRISIS_RESTORE_CALLER:
            # The plan ends: what the other layers want wins; where none asks anything,
            # the bollard goes back where it stood before the plan (as the terminal
            # recorded it, else the restore's value).
            self.layers.clear("crisis")
            before = self.drop_crisis_base().get("bollard", want)
            self.state["set_by"] = {**(self.state.get("set_by") or {}),
                                    "bollard": self.current_command}
            self.ctx.emit("crisis_released", field="bollard")
            return await self._actuate(self.current_command, baseline=before)
        if want == "down" and self.pedestrian():
            raise RejectedError(_hours_refusal(self.ctx.id, self.zone), code="pedestrian_hours")
        if caller.split(":", 1)[0] == CRISIS_CALLER:
            self.keep_crisis_base(["bollard"], crisis)
            self.layers.put("crisis", {"bollard": want}, by=caller)
        else:
            if want == "down" and crisis.get("bollard") == "up":
                raise RejectedError(f"{self.ctx.id} is held up by a crisis plan: an operator "
                                    "cannot lower it (a fire-safety passage can)",
                                    code="crisis_hold")
            self.layers.put("operator", {"bollard": want}, by=caller)
            if crisis:
                # Under a crisis hold, an operator's raise is not his to keep at the end
                # of the plan: the crisis still owns the field and releases its layer.
                self.ctx.emit("setpoint", **{"desired.bollard": want})
                return await self._actuate(self.current_command)
        self.state["set_by"] = {**(self.state.get("set_by") or {}),
                                "bollard": self.current_command}
        self.ctx.emit("setpoint", **{"desired.bollard": want})
        return await self._actuate(self.current_command)

    # -- to the device ------------------------------------------------------------------
    def wanted(self) -> tuple[str | None, str | None]:
        """``(position, layer)`` the bollard should be in now (None: nothing asks)."""
        values, sources = self.layers.effective(self.ctx.clock.time())
        want, source = values.get("bollard"), sources.get("bollard")
        if want == "down" and source not in PASSAGES and self.pedestrian():
            return "up", "pedestrian_hours"
        return want, source

    async def _actuate(self, command_id: str, *, baseline: str | None = None
                       ) -> dict[str, Any]:
        """Move the bollard where the layers want it (where none asks anything, to
        ``baseline`` if given), if the terminal does not report it there."""
        want, source = self.wanted()
        if want is None and baseline is not None:
            want, source = baseline, "baseline"
            if want == "down" and self.pedestrian():
                want, source = "up", "pedestrian_hours"
        if want is None:
            return {"desired": {}, "by": None}
        self.twin.desired["bollard"] = want
        port = self.ctx.device
        if port is None:
            return {"desired": {"bollard": want}, "by": source}
        try:
            writes = await self.device_writes(port, {"bollard": want})
            confirmed = await self.write_device(port, writes, command_id)
        except DeviceUnavailableError as exc:
            raise RejectedError(f"{self.ctx.id} did not answer: {exc}",
                                code="device_unavailable") from exc
        return {"desired": {"bollard": want}, "by": source, "device": dict(confirmed)}

    async def _actuate_quietly(self, command_id: str) -> None:
        """:meth:`_actuate` for a timer: a device that refuses or is away is an event, and the
        position stays desired: tried again every :data:`RETRY_S` while the terminal is
        online (a bollard still moving refuses a new request), reconciled by the profile's
        policy when it comes back."""
        self.ctx.cancel_timer("retry")
        try:
            await self._actuate(command_id)
        except (RejectedError, ProtocolError, DeviceUnavailableError) as exc:
            self.ctx.emit("actuation_failed", field="bollard",
                          desired=str(self.twin.desired.get("bollard")), error=str(exc))
            port = self.ctx.device
            if port is not None and port.online:
                self.ctx.start_timer("retry", RETRY_S, "actuate_due")

    async def on_actuate_due(self, msg: Envelope) -> None:
        """Try again to move the bollard where the layers want it."""
        await self._actuate_quietly(f"retry-{self.ctx.id}-{self.ctx.clock.time():.0f}")

    async def device_writes(self, port: DevicePort, setpoints: Mapping[str, Any]
                            ) -> dict[str, Any]:
        if not port.online and not await port.settled():
            raise self.offline()
        got = self.twin.reported.get("bollard")
        if got is not None and got.value == setpoints.get("bollard"):
            return {}  # where it should be already: no request
        return self.device_fields(setpoints)

    @classmethod
    def reported_fields(cls, reported: Mapping[str, Any]) -> dict[str, Any]:
        # A moving bollard is neither up nor down: no value until it stops.
        bollard = reported.get("bollard")
        return {"bollard": bollard} if bollard in ("up", "down") else {}

    def device_fields(self, clean: Mapping[str, Any]) -> dict[str, Any]:
        # The terminal takes a raise/lower request and reports the bollard's position.
        out = {k: v for k, v in clean.items() if k != "bollard"}
        if "bollard" in clean:
            out["request"] = "raise" if clean["bollard"] == "up" else "lower"
        return out
