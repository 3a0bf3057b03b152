"""A building: its BMS (fire, intrusion, doors, badges) and its fire plan.

Alarms come from the BMS as for every kind (:data:`actors.equipment.CONDITIONS`,
latching ``fire`` and ``intrusion`` events, momentary ``door_forced``); a
``badge`` is an event, and an alarm (``badge_refused``, momentary) only when
the BMS says it refused the badge (``granted = false``).

Commands (journaled, checked at the edge by :meth:`Building.validate_command_for`):

* ``set`` ``{"mode"}``: ``occupied``, ``unoccupied`` or ``lockdown``;
* ``lock`` / ``unlock`` ``{"door", "reason"}``: one door by its number (from
  1, as many as the BMS profile has), written to the BMS node
  ``door.N.locked``; the reason is required and recorded (event ``door_command``);
* ``fire_confirm`` ``{"reason"}``: an operator confirms a fire that the plan
  waits to confirm (its ``confirm_s``), which then acts at once;
* ``fire_reset`` ``{"reason"}``: an operator ends the plan's hold on the doors.

The **fire plan** (:mod:`actors.fire_plan`, data) runs when the ``fire``
condition is raised, once per incident: after its confirmation step, if it has
one, it unlocks the building's doors tagged for it (``attrs.doors``), journals
a preset for every camera that watches the building (``attrs.watched_by``,
which the service derives from the cameras' ``watches``; ids derived from the
plan, so a replay never acts twice) and follows them to their end, and emits
``fire_dispatch`` for the dispatch coordinator, which opens an intervention
for the plan's vehicle role. Each step is an event ``fire_plan_step``
(``alarm = "fire"``, ``step``, ``state``, ``detail``), which the alarms
coordinator shows on the fire alarm. Nothing the plan did is undone by itself:
the doors stay unlocked after the fire alarm clears, and while the plan holds
them a lockdown (or a BMS that locks them) has them unlocked again at once. An
operator's ``lock`` of a held door, or ``fire_reset``, is what ends the hold.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Final

from actors.equipment import EquipmentEntity, Field
from actors.fire_plan import FirePlan, builtin_fire_plan
from devices.profile import builtin_profile
from runtime.commands import Command, check_command_shape, shown
from runtime.entity import Checkpoint
from runtime.envelope import Envelope
from runtime.errors import (
    ConfigError,
    DeviceUnavailableError,
    InvalidCommandError,
    ProtocolError,
    RejectedError,
    StoreUnavailableError,
)
from runtime.inventory import Equipment, Inventory

__all__ = ["FIRE_CALLER", "Building", "fire_plan_id"]

#: The caller of the commands a fire plan journals.
FIRE_CALLER: Final = "plan:fire"
_DOOR_ACTIONS: Final = ("lock", "unlock")
_PLAN_ACTIONS: Final = ("fire_confirm", "fire_reset")
_MAX_REASON: Final = 200
#: The most doors a building's BMS may have (the profile's count is checked at the edge).
MAX_DOORS: Final = 64
#: How often a plan step that could not act (BMS or store out of reach) tries again.
RETRY_S: Final = 2.0
#: How often the plan reads its camera commands' statuses until they end.
FOLLOW_S: Final = 0.1
_COMMAND_DEADLINE_S: Final = 30.0
_TERMINAL: Final = frozenset({"acked", "failed", "expired", "superseded"})
#: Phases of the fire plan of one incident.
CONFIRMING, ACTING, HELD, RESET, DROPPED = "confirming", "acting", "held", "reset", "dropped"
_LIVE: Final = frozenset({CONFIRMING, ACTING, HELD})


def fire_plan_id(building: str, ts: float) -> str:
    """The id of the fire plan run raised at ``ts``: derived, so a replay finds it."""
    return f"fire-{building}-{int(ts * 1000)}"


@functools.cache
def _door_count(profile: str) -> int:
    try:
        return builtin_profile(profile).block("door").count
    except (ConfigError, KeyError):
        return 0


def _reason(params: Mapping[str, Any]) -> str:
    reason = params.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidCommandError("a reason is required (params.reason)", field="params.reason",
                                  code="reason_required")
    if len(reason) > _MAX_REASON:
        raise InvalidCommandError(f"reason is {len(reason)} characters long, more than "
                                  f"{_MAX_REASON}", field="params.reason")
    return reason.strip()


class Building(EquipmentEntity):
    """A building's BMS, its door commands and its fire plan (module doc)."""

    kind = "building"
    FIELDS = {"mode": Field(str, choices=("occupied", "unoccupied", "lockdown"))}

    async def on_start(self, saved: Checkpoint | None) -> None:
        await super().on_start(saved)
        #: The plan this building runs on fire.
        self.fire_plan: FirePlan = builtin_fire_plan()
        fire = self.state.get("fire")
        if isinstance(fire, Mapping) and fire.get("phase") in _LIVE:
            # What the previous incarnation had not finished: carried on from where it stood.
            if fire.get("phase") == CONFIRMING:
                left = float(fire.get("confirm_until") or 0.0) - self.ctx.clock.time()
                self.ctx.start_timer("fire_confirm", max(0.0, left), "fire_confirm_due")
            elif fire.get("phase") == ACTING:
                self.ctx.start_timer("fire_retry", 0.0, "fire_retry")
            status = fire.get("camera_status") or {}
            if fire.get("cameras") and "-" not in fire["cameras"] and (
                    len(status) < len(fire["cameras"])
                    or not all(v in _TERMINAL for v in status.values())):
                self.ctx.start_timer("fire_follow", FOLLOW_S, "fire_follow", repeat=True)

    @classmethod
    def check_inventory(cls, inventory: Inventory) -> None:
        """The fire plan, read and checked against ``inventory`` (door tags, presets and a
        role it has): :class:`PlanError` with the plan's file and line."""
        super().check_inventory(inventory)
        builtin_fire_plan().check(inventory)

    @classmethod
    def inventory_attrs(cls, equipment: Equipment, inventory: Inventory) -> dict[str, Any]:
        """``watched_by``: the cameras of ``inventory`` that watch this building."""
        return {"watched_by": sorted(eq.id for eq in inventory.equipment
                                     if eq.kind == "camera"
                                     and eq.attrs.get("watches") == equipment.id)}

    # -- commands ----------------------------------------------------------------------
    @classmethod
    def validate_command(cls, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """``set`` by the field table; door and plan actions need a ``reason``.

        ``lock``/``unlock`` take ``door``, a whole number from 1 (at most
        :data:`MAX_DOORS`; :meth:`validate_command_for` holds it to the profile's).
        """
        if action not in (*_DOOR_ACTIONS, *_PLAN_ACTIONS):
            try:
                return super().validate_command(action, params)
            except InvalidCommandError as exc:
                if exc.field == "action":
                    raise InvalidCommandError(
                        f"building accepts no {shown(action)} command (only set, "
                        f"{', '.join((*_DOOR_ACTIONS, *_PLAN_ACTIONS))})",
                        field="action", code="unknown_action") from None
                raise
        params = check_command_shape(action, params)
        unknown = sorted(set(params) - {"door", "reason"} if action in _DOOR_ACTIONS
                         else set(params) - {"reason"})
        if unknown:
            raise InvalidCommandError(f"{action} takes no {shown(unknown[0])}",
                                      field=f"params.{unknown[0]}", code="unknown_field")
        clean: dict[str, Any] = {"reason": _reason(params)}
        if action in _DOOR_ACTIONS:
            try:
                clean["door"] = Field(int, 1, MAX_DOORS).check("door", params.get("door"))
            except RejectedError as exc:
                raise InvalidCommandError(str(exc), field="params.door", code=exc.code) from None
        return clean

    @classmethod
    def describe_commands(cls, equipment: Equipment) -> list[dict[str, Any]]:
        """``set`` of the mode; ``lock``/``unlock`` of one of the building's doors and
        ``fire_confirm``/``fire_reset``, each with a required ``reason``."""
        reason = Field(str, max_len=_MAX_REASON).describe(required=True, description="why")
        door = Field(int, 1, _door_count(equipment.profile) or MAX_DOORS).describe(
            required=True)
        return [*super().describe_commands(equipment),
                *({"action": a, "params": {"door": door, "reason": reason}}
                  for a in _DOOR_ACTIONS),
                *({"action": a, "params": {"reason": reason}} for a in _PLAN_ACTIONS)]

    @classmethod
    def setpoint_key(cls, action: str, params: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
        """A door command sets its door (a lock and an unlock of one door: the latest wins;
        two doors: both stand); a plan action is superseded only by its own repeat."""
        if action in _DOOR_ACTIONS:
            return "door", (str(params.get("door")),)
        if action in _PLAN_ACTIONS:
            return action, (str(params.get("reason")),)
        return super().setpoint_key(action, params)

    @classmethod
    def validate_command_for(cls, equipment: Equipment, action: str,
                             params: Mapping[str, Any], *, now: float) -> dict[str, Any]:
        """As :meth:`validate_command`, with the door held to the building's profile."""
        clean = cls.validate_command(action, params)
        count = _door_count(equipment.profile)
        if action in _DOOR_ACTIONS and count and clean["door"] > count:
            raise InvalidCommandError(f"{equipment.id} has doors 1..{count}, not "
                                      f"{clean['door']}", field="params.door",
                                      code="out_of_range")
        return clean

    async def apply_command(self, action: str, params: dict[str, Any]) -> Any:
        if action not in (*_DOOR_ACTIONS, *_PLAN_ACTIONS):
            result = await super().apply_command(action, params)
            if params.get("mode") == "lockdown" and self._held_doors():
                # A lockdown locks every door at the BMS: a fire unlock wins over it.
                await self._unlock_held()
            return result
        try:
            clean = self.validate_command_for(self.ctx.equipment, action, params,
                                              now=self.ctx.clock.time())
        except InvalidCommandError as exc:
            raise RejectedError(str(exc), code=exc.code) from None
        if action in _DOOR_ACTIONS:
            return await self._door(clean["door"], action == "lock", clean["reason"])
        if action == "fire_confirm":
            return await self._confirm(clean["reason"])
        return self._reset(clean["reason"])

    async def _door(self, door: int, locked: bool, reason: str) -> dict[str, Any]:
        key = f"door.{door}.locked"
        self.twin.desired[key] = locked
        self.ctx.emit("door_command", door=door, locked=locked, reason=reason,
                      by=self.current_caller)
        fire = self._fire()
        if locked and fire is not None and door in self._held_doors():
            # An operator's decision: this door leaves the plan's hold.
            fire["held"] = [d for d in fire["held"] if d != door]
            self._step("doors", "operator", f"door {door} locked again by {self.current_caller}: "
                                            f"{reason}")
        port = self.ctx.device
        if port is None:
            return {"desired": {key: locked}}
        try:
            writes = await self.device_writes(port, {key: locked})
            confirmed = await self.write_device(port, writes, self.current_command)
        except DeviceUnavailableError as exc:
            raise RejectedError(f"{self.ctx.id} did not answer: {exc}",
                                code="device_unavailable") from exc
        return {"desired": {key: locked}, "device": dict(confirmed)}

    # -- from the device ---------------------------------------------------------------
    def check_conditions(self) -> None:
        """The kind's conditions; a new ``fire`` starts the plan, a held door found locked
        (a lockdown at the BMS) is unlocked again."""
        before = set(self.state.get("conditions") or ())
        super().check_conditions()
        self._after_conditions(before)
        held = self._held_doors()
        if held and not self.state.get("fire_writing"):
            for d in held:
                got = self.twin.reported.get(f"door.{d}.locked")
                # Only a reading taken after the unlock was written says the BMS relocked it.
                if got is not None and got.value is True and got.source_ts > self.wrote_ts:
                    self.ctx.start_timer("fire_retry", 0.0, "fire_retry")
                    break

    async def on_device_event(self, msg: Envelope) -> None:
        before = set(self.state.get("conditions") or ())
        await super().on_device_event(msg)
        p = msg.payload if isinstance(msg.payload, Mapping) else {}
        fields = p.get("fields") if isinstance(p.get("fields"), Mapping) else {}
        if p.get("event") == "badge" and (fields or {}).get("granted") is False:
            self.ctx.emit("alarm", alarm="badge_refused", momentary=True,
                          door=(fields or {}).get("door", ""),
                          badge=str((fields or {}).get("badge", "")))
        self._after_conditions(before)

    def _after_conditions(self, before: set[str]) -> None:
        if "fire" in (self.state.get("conditions") or ()) and "fire" not in before:
            self.ctx.start_timer("fire_start", 0.0, "fire_raised")

    # -- the fire plan -------------------------------------------------------------------
    def _fire(self) -> dict[str, Any] | None:
        fire = self.state.get("fire")
        return fire if isinstance(fire, dict) and fire.get("phase") in _LIVE else None

    def _held_doors(self) -> list[int]:
        fire = self._fire()
        return list(fire.get("held") or ()) if fire is not None else []

    def _step(self, step: str, state: str, detail: str = "") -> None:
        fire = self.state.get("fire") or {}
        steps = fire.setdefault("steps", {})
        steps[step] = {"state": state, "detail": detail, "ts": self.ctx.clock.time()}
        self.ctx.emit("fire_plan_step", alarm="fire", plan=fire.get("plan", ""), step=step,
                      state=state, detail=detail)

    async def on_fire_raised(self, msg: Envelope) -> dict[str, Any]:
        """The fire condition was raised: the plan starts (once per incident)."""
        if self._fire() is not None:
            return {"plan": self.state["fire"]["plan"], "running": True}
        now = self.ctx.clock.time()
        plan = self.fire_plan
        fire: dict[str, Any] = {
            "plan": fire_plan_id(self.ctx.id, now), "raised_ts": now, "phase": CONFIRMING,
            "confirm_until": now + plan.confirm_s, "steps": {}, "held": [],
            "doors": [], "doors_done": False, "cameras": {}, "dispatched": False,
            "first_action_ts": None,
        }
        self.state["fire"] = fire
        if plan.confirm_s > 0:
            self._step("confirm", "waiting", f"acts in {plan.confirm_s:g} s unless an operator "
                                             "confirms first")
            self.ctx.start_timer("fire_confirm", plan.confirm_s, "fire_confirm_due")
            return {"plan": fire["plan"], "phase": CONFIRMING}
        await self._act()
        return {"plan": fire["plan"], "phase": fire["phase"]}

    async def on_fire_confirm_due(self, msg: Envelope) -> None:
        """The confirmation time is up: act if the fire still holds, else drop the plan."""
        fire = self._fire()
        if fire is None or fire["phase"] != CONFIRMING:
            return
        if "fire" in (self.state.get("conditions") or ()):
            self._step("confirm", "timeout", "not confirmed in time: the fire still holds")
            await self._act()
        else:
            fire["phase"] = DROPPED
            self._step("confirm", "dropped", "the fire alarm cleared before confirmation")

    async def _confirm(self, reason: str) -> dict[str, Any]:
        fire = self._fire()
        if fire is None or fire["phase"] != CONFIRMING:
            raise RejectedError(f"{self.ctx.id} has no fire plan waiting for confirmation",
                                code="nothing_to_confirm")
        self.ctx.cancel_timer("fire_confirm")
        self._step("confirm", "confirmed", f"by {self.current_caller}: {reason}")
        await self._act()
        return {"plan": fire["plan"], "phase": fire["phase"]}

    def _reset(self, reason: str) -> dict[str, Any]:
        fire = self._fire()
        if fire is None:
            raise RejectedError(f"{self.ctx.id} has no fire plan to reset", code="no_fire_plan")
        self.ctx.cancel_timer("fire_confirm")
        self.ctx.cancel_timer("fire_follow")
        fire["phase"] = RESET
        fire["held"] = []
        self._step("reset", "done", f"by {self.current_caller}: {reason}")
        return {"plan": fire["plan"], "phase": RESET}

    async def _act(self) -> None:
        """Carry out every step of the plan (those that cannot act now try again)."""
        fire = self.state["fire"]
        fire["phase"] = ACTING
        fire["first_action_ts"] = self.ctx.clock.time()
        eq = self.ctx.equipment
        doors = self.fire_plan.step("unlock_doors")
        if doors is not None:
            tagged = (eq.attrs.get("doors") or {}).get(doors.target) or ()
            fire["doors"] = sorted(int(d) for d in tagged)
            fire["held"] = list(fire["doors"])
        await self.on_fire_retry(None)

    async def on_fire_retry(self, msg: Envelope | None) -> None:
        """Do what the plan has not done yet: doors, camera commands, the dispatch event."""
        fire = self._fire()
        if fire is None or fire["phase"] == CONFIRMING:
            return
        again = False
        if fire["held"]:
            again |= not await self._unlock_held()
        elif fire["doors"] is not None and not fire["doors_done"] and not fire["doors"]:
            fire["doors_done"] = True
            if self.fire_plan.step("unlock_doors") is not None:
                self._step("doors", "done", "no door of this building has the plan's tag")
        cameras = self.fire_plan.step("camera_preset")
        if cameras is not None and not fire["cameras"]:
            again |= not await self._cameras(cameras.target)
        role = self.fire_plan.step("intervention")
        if role is not None and not fire["dispatched"]:
            eq = self.ctx.equipment
            self.ctx.emit("fire_dispatch", plan=fire["plan"], role=role.target, lat=eq.lat,
                          lon=eq.lon, building=self.ctx.id)
            fire["dispatched"] = True
            self._step("intervention", "requested", f"a {role.target} crew asked of dispatch")
        if fire["phase"] == ACTING and not again:
            fire["phase"] = HELD
        if again:
            self.ctx.start_timer("fire_retry", RETRY_S, "fire_retry")

    async def _unlock_held(self) -> bool:
        """Write the held doors unlocked where the BMS does not hold them so; whether it did."""
        fire = self._fire()
        if fire is None:
            return True
        held = list(fire["held"])
        port = self.ctx.device
        for d in held:
            self.twin.desired[f"door.{d}.locked"] = False
        if port is None or not held:
            return True
        writes = {f"door.{d}.locked": False for d in held}
        self.state["fire_writing"] = True
        try:
            await self.write_device(port, writes, f"{fire['plan']}/doors")
        except (DeviceUnavailableError, RejectedError, ProtocolError) as exc:
            self._step("doors", "retrying", f"BMS did not take the unlock: {exc}")
            return False
        finally:
            self.state["fire_writing"] = False
        if not fire["doors_done"]:
            fire["doors_done"] = True
            self._step("doors", "done", "unlocked: door " + ", ".join(map(str, held)))
        return True

    async def _cameras(self, preset: str) -> bool:
        """Journal the preset of every watching camera; whether the journal took them."""
        fire = self.state["fire"]
        watchers = [str(c) for c in self.ctx.equipment.attrs.get("watched_by") or ()]
        if not watchers:
            fire["cameras"] = {"-": "none"}
            self._step("cameras", "done", "no camera watches this building")
            return True
        now = self.ctx.clock.time()
        commands = [Command(command_id=f"{fire['plan']}/camera/{cam}", target=cam, action="set",
                            params={"preset": preset}, caller=f"{FIRE_CALLER}:{self.ctx.id}",
                            created_ts=now, deadline_ts=now + _COMMAND_DEADLINE_S)
                    for cam in watchers]
        try:
            await self.ctx.submit(commands)
        except StoreUnavailableError as exc:
            self._step("cameras", "retrying", f"the journal is out of reach: {exc}")
            return False
        fire["cameras"] = {c.target: c.command_id for c in commands}
        fire["camera_status"] = {}
        self._step("cameras", "sent", f"preset {preset!r} to {', '.join(watchers)}")
        self.ctx.start_timer("fire_follow", FOLLOW_S, "fire_follow", repeat=True)
        return True

    async def on_fire_follow(self, msg: Envelope) -> None:
        """Read the camera commands' statuses; the step ends when every one has."""
        fire = self._fire()
        if fire is None:
            self.ctx.cancel_timer("fire_follow")
            return
        ids = {cid: cam for cam, cid in fire["cameras"].items()}
        try:
            found = await self.ctx.commands(list(ids))
        except StoreUnavailableError:
            return
        status = {ids[cid]: str(c.status) for cid, c in found.items() if cid in ids}
        fire["camera_status"] = status
        if len(status) < len(ids) or not all(s in _TERMINAL for s in status.values()):
            return
        self.ctx.cancel_timer("fire_follow")
        acked = sorted(cam for cam, s in status.items() if s == "acked")
        failed = sorted(cam for cam, s in status.items() if s != "acked")
        detail = f"at preset: {', '.join(acked) or 'none'}"
        if failed:
            detail += f"; not moved: {', '.join(failed)}"
        self._step("cameras", "done" if not failed else "partial", detail)
