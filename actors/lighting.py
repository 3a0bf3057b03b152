"""A lighting circuit: one cabinet and the lamps of its circuit.

Besides carrying setpoints to its lamps (:class:`LightingCircuit`), a circuit
follows its dimming schedule on the astronomical clock, takes operators'
overrides that expire by themselves, and meters the energy its lamps burn from
the cabinet's counters.

**Schedule.** A circuit follows the builtin schedule its inventory names
(``attrs.schedule``; the demo's road-lighting circuits follow
``road_lighting``), at its own coordinates. Its dusk and
dawn offsets (``attrs.on_offset_min`` and ``attrs.off_offset_min``, default
10) move the schedule's sunset step that switches the lamps on and its sunrise
step that switches them off. At start and at each transition the circuit
applies the step in force once: what it applied is recorded in
``state["schedule"]`` (``{"step", "since"}``; the equipment view adds the
schedule's name and next step), so a restart across a transition applies the
new step once, and one that did not cross it applies nothing.

**Timed steps.** The cabinet takes the schedule's next step by itself at its
time (its ``step_at``, ``step_on`` and ``step_dim`` registers, to the second
below), as a cabinet's astronomical clock does: the circuit arms it once a step
is applied or taken, whenever its layers change, and disarms it when nothing
would change then (a crisis plan or an override holds the lamps past it). A step so taken is on time
whatever the link, the host or the load at that instant: at its time the
circuit records it (``state["armed"]`` names what the cabinet holds) and
checks :data:`STEP_CHECK_S` later that the lamps hold it, writing what they
lack; a step it could not arm is written at its time. A write to the lamps
cancels the step pending at the cabinet, so a crisis or an operator's setpoint
is never undone by it.

**Layers.** What sets ``on`` and ``dim`` (:class:`actors.schedule.Layers`, in
``state["layers"]``): a crisis plan (commands journaled by the crisis
coordinator, caller ``crisis``; its restores, caller ``crisis:restore``, end
the plan's layer) over an operator's override over the schedule. An
operator's override lasts ``params.for_s`` seconds, or until the schedule's
next step when it gives none (for ever on a circuit without a schedule); an
operator's command during a crisis takes the fields it sets from the plan, as
the crisis coordinator keeps them at deactivation. When a layer ends, what is
then in force is applied.

**Per lamp.** ``set`` with ``params.lamps`` (lamp numbers, from 1) writes the
setpoints to those lamps only, once, as an operator's maintenance action:
nothing is layered, and the circuit's next step or setpoint writes them again.

**Energy.** Each reading of the cabinet carries every lamp's ``energy_wh``
(a u32 counter): the difference from the previous reading is the energy of
the interval, spread over the hours it covers (:func:`counter_delta` tells a
counter that went back to 0 from one that wrapped around 2^32). The circuit
keeps ``state["energy"]["hours"]`` (``{hour_epoch: [wh, lit_s, resets,
wraps]}``, the last :data:`ENERGY_KEEP_H` hours; ``lit_s`` is the part of the
hour between the circuit's dusk and dawn, the baselines' burning time) and
publishes them as one read model per local date, ``energy.{id}.{YYYY-MM-DD}``
(:mod:`runtime.energy`, which sums them), with the circuit's lamps and wattages.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final

from actors.equipment import (
    CRISIS_CALLER,
    CRISIS_RESTORE_CALLER,
    EquipmentEntity,
    Field,
    _lamp_failed,
    block_values,
)
from actors.schedule import At, Layers, Occurrence, Schedule, Timetable, builtin_schedules
from devices.profile import builtin_profile
from runtime.clock import CITY_TZ
from runtime.commands import shown
from runtime.device_port import DevicePort
from runtime.energy import model_name as energy_model_name
from runtime.entity import Checkpoint
from runtime.envelope import Envelope, pack
from runtime.errors import (
    ConfigError,
    DeviceUnavailableError,
    InvalidCommandError,
    ProtocolError,
    RejectedError,
)
from runtime.inventory import Equipment
from runtime.twin import Quality

__all__ = ["DEFAULT_LAMP_W", "ENERGY_KEEP_H",
           "LightingCircuit", "circuit_lamps", "circuit_schedule", "counter_delta",
           "energy_model_name", "failed_lamps", "lamp_holds", "lamp_writes", "lit_seconds"]

#: A lamp's power at 100 % when the inventory does not say (``attrs.lamp_w``).
DEFAULT_LAMP_W: Final = 100.0
#: Default minutes after sunset the lamps go on, and before sunrise they go off.
DEFAULT_OFFSET_MIN: Final = 10
#: Hours of metered energy the circuit keeps in its state (the read models keep the rest).
ENERGY_KEEP_H: Final = 48
#: Seconds (city time) between two publications of the circuit's energy while it changes.
ENERGY_PUBLISH_S: Final = 300.0
#: Counter range of a lamp's ``energy_wh`` (a u32).
COUNTER_RANGE: Final = 1 << 32
#: More than this many Wh between two readings of one lamp is no energy it burnt: a
#: counter set to another value (a forward jump) or one that restarted from 0.
IMPLAUSIBLE_WH: Final = 100_000
#: The longest operator override (``params.for_s``): a week.
MAX_OVERRIDE_S: Final = 7 * 86_400.0
#: How long after a step the cabinet took by itself the circuit checks that the lamps hold
#: it (s of the machine's time: a few polls of the cabinet).
STEP_CHECK_S: Final = 12.0
#: The cabinet's registers of a timed step (profile ``lighting_cabinet``).
STEP_AT: Final = "step_at"
STEP_FIELDS: Final = frozenset({STEP_AT, "step_on", "step_dim"})


def counter_delta(old: int, new: int) -> tuple[int, str]:
    """``(Wh, what)`` one lamp burnt between two readings of its u32 ``energy_wh`` counter.

    ``what`` is ``""`` for an ordinary step; ``"wrap"`` when the counter went
    down but is a short step forward modulo 2^32 (it wrapped around: the Wh are
    the step across the wrap); ``"reset"`` when it went down far (it restarted
    from 0: the Wh are its new value); ``"jump"`` when it went up by more than
    any lamp burns between two readings (it was set to another value: no Wh).
    """
    if new >= old:
        step = new - old
        return (0, "jump") if step > IMPLAUSIBLE_WH else (step, "")
    wrapped = (new - old) % COUNTER_RANGE
    if wrapped <= IMPLAUSIBLE_WH:
        return wrapped, "wrap"
    return (new, "reset") if new <= IMPLAUSIBLE_WH else (0, "jump")


def _offset(eq: Equipment, name: str) -> int:
    value = eq.attrs.get(name, DEFAULT_OFFSET_MIN)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 180:
        raise ConfigError(f"{eq.id}: attrs.{name} must be whole minutes 0..180, got {value!r}")
    return value


def _dusk_dawn(eq: Equipment) -> tuple[At, At]:
    on, off = _offset(eq, "on_offset_min"), _offset(eq, "off_offset_min")
    return At(f"sunset+{on}m", on, "sunset"), At(f"sunrise-{off}m", -off, "sunrise")


def circuit_schedule(eq: Equipment) -> Schedule | None:
    """The schedule circuit ``eq`` follows, its dusk and dawn moved by its offsets (None: none).

    Raises :class:`ConfigError` for an unknown schedule or a bad offset.
    """
    name = eq.attrs.get("schedule")
    if not name:
        return None
    try:
        schedule = builtin_schedules().get(str(name))
    except KeyError:
        raise ConfigError(f"{eq.id}: attrs.schedule names no schedule {name!r}") from None
    if schedule.kind != LightingCircuit.kind:
        raise ConfigError(f"{eq.id}: schedule {name!r} is for {schedule.kind}")
    dusk, dawn = _dusk_dawn(eq)
    steps = []
    for step in schedule.steps:
        if step.at.sun == "sunset" and step.set.get("on") is True:
            step = dataclasses.replace(step, at=dusk)
        elif step.at.sun == "sunrise" and step.set.get("on") is False:
            step = dataclasses.replace(step, at=dawn)
        steps.append(step)
    return dataclasses.replace(schedule, steps=tuple(steps))


def circuit_lamps(eq: Equipment) -> int:
    """How many lamps circuit ``eq`` has (its profile's ``lamp`` block for its attrs)."""
    return builtin_profile(eq.profile).count("lamp", eq.attrs)


def _watts(eq: Equipment, name: str, default: float) -> float:
    value = eq.attrs.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and 0 < value <= 10_000):
        raise ConfigError(f"{eq.id}: attrs.{name} must be watts in (0, 10000], got {value!r}")
    return float(value)


def lit_seconds(eq: Equipment, start: float, end: float) -> float:
    """Seconds of ``[start, end)`` between circuit ``eq``'s dusk and dawn (sunset + its
    on offset to sunrise - its off offset, astral's, at its coordinates)."""
    from astral import Observer

    where = Observer(latitude=eq.lat, longitude=eq.lon)
    dusk, dawn = _dusk_dawn(eq)
    first = datetime.datetime.fromtimestamp(start, CITY_TZ).date() - datetime.timedelta(days=1)
    last = datetime.datetime.fromtimestamp(end, CITY_TZ).date()
    total = 0.0
    day = first
    while day <= last:
        on, off = dusk.on(day, where), dawn.on(day + datetime.timedelta(days=1), where)
        if on is not None and off is not None:
            total += max(0.0, min(end, off.timestamp()) - max(start, on.timestamp()))
        day += datetime.timedelta(days=1)
    return total


class _DayCache(Timetable):
    """A timetable that works out each date's steps once (astral's sun times cost about a
    millisecond a date, and every transition asks for a week of dates)."""

    _KEEP: Final = 16

    def __init__(self, schedule: Schedule, lat: float, lon: float) -> None:
        super().__init__(schedule, lat, lon)
        self._days: dict[datetime.date, list[Occurrence]] = {}

    def day(self, date: datetime.date) -> list[Occurrence]:
        got = self._days.get(date)
        if got is None:
            if len(self._days) >= self._KEEP:
                self._days.clear()
            got = self._days[date] = super().day(date)
        return list(got)


def _local_date(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, CITY_TZ).date().isoformat()


class LightingCircuit(EquipmentEntity):
    """A lighting circuit: one cabinet, whose lamps are points of the circuit, not entities.

    ``on`` and ``dim`` are set for the whole circuit and carried to every lamp.
    The cabinet reports each lamp (its ``lamp`` block), never a circuit-wide
    value, so a setpoint is compared with every lamp and written only to the
    lamps that do not hold it (``lamp.3.dim``); when none of them holds it and
    the cabinet has a broadcast register (``broadcast_dim``), one broadcast
    write sets them all, as a DALI broadcast does.

    What the lamps hold is the twin's reading when the cabinet took it after
    this incarnation started and after the circuit's last write ended, none
    of its writes having gone unanswered since (the session serialises polls
    and writes, so such a reading shows every write made so far). Otherwise
    the circuit reads the cabinet first: its twin may predate a write that its
    previous incarnation made (a host killed between the write and the
    checkpoint), and a replayed command must not write a lamp a second time.
    """

    kind = "lighting_circuit"
    SCHEDULE_ATTR = "schedule"
    FIELDS = {"on": Field(bool), "dim": Field(float, 0, 100)}
    READS_BACK = True
    CRISIS_LAYER = True
    #: Command params beside the fields: lamp numbers (``lamps``), an override's length.
    LAMPS_PARAM: Final = "lamps"
    FOR_PARAM: Final = "for_s"
    #: The most lamps one ``set`` may name.
    MAX_LAMPS: Final = 1_000

    async def on_start(self, saved: Checkpoint | None) -> None:
        await super().on_start(saved)
        eq = self.ctx.equipment
        self._lamp_w = _watts(eq, "lamp_w", DEFAULT_LAMP_W)
        self._legacy_w = _watts(eq, "legacy_w", self._lamp_w)
        try:
            schedule = circuit_schedule(eq)
        except ConfigError as exc:
            self.ctx.emit("alarm", alarm="schedule_invalid", severity="minor", error=str(exc))
            schedule = None
        self.timetable: Timetable | None = (_DayCache(schedule, eq.lat, eq.lon)
                                            if schedule is not None else None)
        self.layers = Layers(self.state.setdefault("layers", {}))
        energy = self.state.setdefault("energy", {})
        energy.setdefault("hours", {})
        # Every date it keeps is published again: a restart may have cut a publication.
        self._dirty_dates = {_local_date(float(h)) for h in energy["hours"]}
        self._published_at = -math.inf
        self._lamp_count: int | None = None
        # The step in force is applied as the first message, not in the middle of the start.
        self.ctx.start_timer("schedule", 0.0, "schedule_due")

    # -- schedule and layers -----------------------------------------------------------
    async def on_schedule_due(self, msg: Envelope) -> dict[str, Any]:
        """A transition of the schedule or the end of an override: apply what is in force."""
        return await self.refresh()

    async def refresh(self) -> dict[str, Any]:
        """Drop the layers whose time is up, take the schedule's step in force if it is not
        the one applied, write what that changes, and arm the timers for what comes next."""
        now = self.ctx.clock.time()
        changed = bool(self.layers.expire(now))
        command_id = f"layers-{self.ctx.id}-{round(now, 3)}"
        if self.timetable is not None:
            occurrence = self.timetable.in_force(now)
            recorded = self.state.get("schedule") or {}
            if occurrence is not None and (recorded.get("step"), recorded.get("since")) != (
                    occurrence.key):
                step, since = occurrence.key
                self.layers.put("schedule", occurrence.step.set, by="schedule")
                self.state["schedule"] = {"step": step, "since": since}
                command_id = f"schedule-{self.ctx.id}-{step}-{since}"
                self.ctx.emit("schedule_step", schedule=self.timetable.schedule.name, step=step,
                              since=since)
                changed = True
        result: dict[str, Any] = {}
        if changed:
            effective, _ = self.layers.effective(now)
            taken = (self.state.get("schedule") or {}).get("since")
            if command_id.startswith("schedule-") and self._armed_for(taken, effective):
                result = self._taken_by_cabinet(effective, now)
            else:
                if command_id.startswith("schedule-") and isinstance(taken, int | float):
                    # The cabinet may hold the step already (an arming whose answer was
                    # lost): a reading asked before the step's time is not what it holds.
                    self.wrote_ts = max(self.wrote_ts, float(taken))
                try:
                    result = await self.actuate(effective, command_id)
                except (RejectedError, ProtocolError, DeviceUnavailableError) as exc:
                    # Kept as desired: the cabinet gets it when it is back (reconcile).
                    self.ctx.emit("setpoint_deferred", error=str(exc))
        self.arm(now)
        await self.prearm(now)
        return result

    # -- timed steps ---------------------------------------------------------------------
    def _armed_for(self, since: Any, effective: Mapping[str, Any]) -> bool:
        """Whether the cabinet was armed with the step of time ``since``, to ``effective``."""
        armed = self.state.get("armed") or {}
        return (isinstance(since, int | float) and bool(armed.get(STEP_AT))
                and abs(float(armed[STEP_AT]) - since) <= 1.0
                and _step_values(effective) == (armed.get("step_on"), armed.get("step_dim")))

    def _taken_by_cabinet(self, effective: Mapping[str, Any], now: float) -> dict[str, Any]:
        """The step in force is the one the cabinet took by itself: recorded, and checked
        :data:`STEP_CHECK_S` later."""
        want = dict(effective)
        self.twin.desired.update(want)
        self.ctx.emit("setpoint", taken_by="cabinet", **{f"desired.{k}": v
                                                        for k, v in want.items()})
        # Readings from before the step show the lamps before it.
        self.wrote_ts = max(self.wrote_ts, now)
        self.state["armed"] = {STEP_AT: 0}
        self.ctx.start_timer("step_check", STEP_CHECK_S * self.ctx.clock.speed, "step_check")
        return {"desired": want, "taken_by": "cabinet"}

    async def on_step_check(self, msg: Envelope) -> dict[str, Any]:
        """After a step the cabinet took: write to the lamps what they lack of it, if any."""
        now = self.ctx.clock.time()
        effective, _ = self.layers.effective(now)
        result: dict[str, Any] = {}
        try:
            result = await self.actuate(effective, f"step-check-{self.ctx.id}-{round(now, 3)}")
        except (RejectedError, ProtocolError, DeviceUnavailableError) as exc:
            self.ctx.emit("setpoint_deferred", error=str(exc))
        await self.prearm(now)
        return result

    def _step_due(self, now: float) -> dict[str, Any]:
        """The timed step the cabinet should hold now: the schedule's next step where it
        changes what the lamps hold then (layers and overrides as they will stand), else
        ``{"step_at": 0}``."""
        nxt = self.timetable.next_after(now) if self.timetable is not None else None
        if nxt is None:
            return {STEP_AT: 0}
        current, _ = self.layers.effective(now)
        future = Layers({k: dict(v) for k, v in self.state["layers"].items()})
        future.put("schedule", nxt.step.set, by="schedule")
        future.expire(nxt.at)
        then, _ = future.effective(nxt.at)
        on, dim = _step_values({**current, **then})
        if on is None or dim is None or (on, dim) == _step_values(current):
            return {STEP_AT: 0}
        # To the second below: the cabinet has taken it when the circuit's timer comes.
        return {STEP_AT: math.floor(nxt.at), "step_on": on, "step_dim": dim}

    async def prearm(self, now: float) -> None:
        """Arm the cabinet with the step it should take next (or disarm it), if that changed."""
        port = self.ctx.device
        if port is None or not port.online or port.policy(STEP_AT) is None:
            return
        want = self._step_due(now)
        if want == self.state.get("armed"):
            return
        try:
            await self.write_device(port, want, f"arm-{self.ctx.id}-{want[STEP_AT]}")
        except (RejectedError, ProtocolError, DeviceUnavailableError) as exc:
            # Not known to be armed: the step is written at its time.
            self.state.pop("armed", None)
            self.ctx.emit("step_not_armed", error=str(exc))
            return
        self.state["armed"] = want

    async def reconcile(self) -> None:
        """Back online (or reached for the first time): the schedule and layers brought to
        now, then the lamps as every kind brings them back, then the cabinet armed with the
        next step if it is not known to be.

        The layers first: a cabinet heard of after a step it took by itself (a host
        restarted across it, its timer for the step not come yet) holds the new step, and
        the desired state must be that step, not the one before, when the two are compared.
        """
        await self.refresh()
        await super().reconcile()
        await self.prearm(self.ctx.clock.time())

    async def write_device(self, port: DevicePort, writes: Mapping[str, Any],
                           command_id: str) -> Mapping[str, Any]:
        """As every kind writes; a write to the lamps cancels the cabinet's timed step. Arming
        one leaves the lamps as they were: the last reading of them still holds."""
        lamps = any(name not in STEP_FIELDS for name in writes)
        wrote_ts, unsure = self.wrote_ts, self.write_unsure
        try:
            confirmed = await super().write_device(port, writes, command_id)
        except BaseException:
            if lamps:
                self.state.pop("armed", None)  # cancelled or not: unknown
            else:
                self.wrote_ts, self.write_unsure = wrote_ts, unsure
            raise
        if lamps:
            self.state["armed"] = {STEP_AT: 0}
        else:
            self.wrote_ts = wrote_ts
        return confirmed

    def arm(self, now: float) -> None:
        """Timers for the schedule's next step and the first override to expire; and the
        schedule as the equipment view shows it."""
        if self.timetable is not None:
            nxt = self.timetable.next_after(now)
            # Kept for the equipment view, which every checkpoint renders: the sun's times
            # are worked out once per transition, not once per reading.
            self._next = None if nxt is None else {"step": nxt.step.name, "at": nxt.at}
            if nxt is not None:
                self.ctx.start_timer("schedule", max(0.0, nxt.at - now), "schedule_due")
        expiry = self.layers.next_expiry()
        if expiry is None:
            self.ctx.cancel_timer("override")
        else:
            self.ctx.start_timer("override", max(0.0, expiry - now), "schedule_due")

    def schedule_view(self) -> dict[str, Any] | None:
        """The schedule as the equipment view shows it: the step applied (recorded in
        ``state["schedule"]``) and the next."""
        timetable: Timetable | None = getattr(self, "timetable", None)  # None before start
        if timetable is None:
            return None
        recorded = self.state.get("schedule") or {}
        if "_next" not in vars(self):  # not armed yet: worked out from the timetable
            return timetable.view(self.ctx.clock.time(), {
                k: recorded[k] for k in ("step", "since") if k in recorded} or None)
        return {"name": timetable.schedule.name, "step": recorded.get("step"),
                "since": recorded.get("since"), "next": self._next}

    def view_extras(self) -> dict[str, Any]:
        """The schedule, and ``control``: each field's effective value and the layer that
        sets it (schedule, operator's override, crisis plan), with who and until when."""
        layers: Layers | None = getattr(self, "layers", None)  # None before start
        if layers is None:
            return super().view_extras()
        return {**super().view_extras(),
                "control": layers.control(self.FIELDS, self.twin.desired,
                                          self.ctx.clock.time())}

    async def actuate(self, setpoints: Mapping[str, Any], command_id: str) -> dict[str, Any]:
        """Record ``setpoints`` as desired and write to each lamp what it lacks."""
        want = dict(setpoints)
        if not want:
            return {"desired": {}}
        self.twin.desired.update(want)
        self.ctx.emit("setpoint", **{f"desired.{k}": v for k, v in want.items()})
        port = self.ctx.device
        if port is None:
            return {"desired": want}
        try:
            writes = await self.device_writes(port, want)
            try:
                confirmed = await self.write_device(port, writes, command_id)
            except DeviceUnavailableError:
                writes = await self.device_writes(port, want)
                confirmed = await self.write_device(port, writes, command_id)
        except DeviceUnavailableError as exc:
            raise RejectedError(f"{self.ctx.id} did not answer: {exc}",
                                code="device_unavailable") from exc
        return {"desired": want, "device": dict(confirmed)}

    @classmethod
    def validate_command(cls, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """``set`` as every kind takes it, plus ``lamps`` (lamp numbers from 1, distinct) and
        ``for_s`` (an override's length in seconds, up to :data:`MAX_OVERRIDE_S`)."""
        rest = dict(params) if isinstance(params, Mapping) else params
        extra: dict[str, Any] = {}
        if isinstance(rest, dict) and action == "set":
            if cls.LAMPS_PARAM in rest:
                extra[cls.LAMPS_PARAM] = cls._check_lamps(rest.pop(cls.LAMPS_PARAM))
            if cls.FOR_PARAM in rest:
                extra[cls.FOR_PARAM] = cls._check_for(rest.pop(cls.FOR_PARAM))
            if cls.LAMPS_PARAM in extra and cls.FOR_PARAM in extra:
                raise InvalidCommandError("a lamp's setpoint is written once; for_s is for "
                                          "the circuit's", field="params.for_s")
        return {**super().validate_command(action, rest), **extra}

    @classmethod
    def describe_commands(cls, equipment: Equipment) -> list[dict[str, Any]]:
        """``set`` of ``on`` and ``dim``, for the circuit's lamps (``lamps``: numbers 1 to
        the circuit's count) or the whole circuit for ``for_s`` seconds."""
        forms = super().describe_commands(equipment)
        for form in forms:
            form["params"][cls.LAMPS_PARAM] = {
                "type": "array", "required": False, "max_items": cls.MAX_LAMPS,
                "items": {"type": "integer", "min": 1, "max": circuit_lamps(equipment)},
                "description": "only these lamps (distinct numbers); the whole circuit "
                               "without it"}
            form["params"][cls.FOR_PARAM] = {
                "type": "number", "required": False, "min": 0, "exclusive_min": True,
                "max": MAX_OVERRIDE_S, "unit": "s",
                "description": "how long the circuit's override holds (not with lamps); "
                               "until the schedule's next step without it"}
        return forms

    @classmethod
    def _check_lamps(cls, value: Any) -> list[int]:
        where = f"params.{cls.LAMPS_PARAM}"
        if not isinstance(value, list | tuple) or not value or len(value) > cls.MAX_LAMPS:
            raise InvalidCommandError(f"lamps must be a list of 1-{cls.MAX_LAMPS} lamp numbers",
                                      field=where)
        out: list[int] = []
        for n in value:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise InvalidCommandError(f"lamp {shown(n)} is not a lamp number (1, 2, …)",
                                          field=where, code="bad_value")
            if n in out:
                raise InvalidCommandError(f"lamp {n} is named twice", field=where,
                                          code="bad_value")
            out.append(n)
        return out

    @classmethod
    def _check_for(cls, value: Any) -> float:
        where = f"params.{cls.FOR_PARAM}"
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or not 0 < value <= MAX_OVERRIDE_S):
            raise InvalidCommandError(f"for_s must be seconds in (0, {MAX_OVERRIDE_S:g}]",
                                      field=where, code="out_of_range")
        return float(value)

    @classmethod
    def validate_command_for(cls, equipment: Equipment, action: str, params: Mapping[str, Any],
                             *, now: float) -> dict[str, Any]:
        """:meth:`validate_command`, and the lamps it names held to circuit ``equipment``'s
        (the edge's check before journaling; the entity applies it too)."""
        return cls.validate_for_equipment(equipment, cls.validate_command(action, params))

    @classmethod
    def validate_for_equipment(cls, equipment: Equipment,
                               clean: Mapping[str, Any]) -> dict[str, Any]:
        """A checked ``set`` held to circuit ``equipment``: its lamps exist."""
        lamps = clean.get(cls.LAMPS_PARAM)
        if lamps:
            count = circuit_lamps(equipment)
            beyond = [n for n in lamps if n > count]
            if beyond:
                raise InvalidCommandError(f"{equipment.id} has {count} lamps: no lamp "
                                          f"{beyond[0]}", field=f"params.{cls.LAMPS_PARAM}",
                                          code="out_of_range")
        return dict(clean)

    def source(self) -> str:
        """Which layer the command being applied sets, by its caller."""
        if self.current_caller == CRISIS_RESTORE_CALLER:
            return "restore"
        return "crisis" if self.current_caller == CRISIS_CALLER else "operator"

    async def apply_command(self, action: str, params: dict[str, Any]) -> Any:
        clean = self.validate_for_equipment(self.ctx.equipment,
                                            self.validate_command(action, params))
        lamps = clean.pop(self.LAMPS_PARAM, None)
        for_s = clean.pop(self.FOR_PARAM, None)
        if lamps is not None:
            return await self.set_lamps(lamps, clean)
        now = self.ctx.clock.time()
        source = self.source()
        before: dict[str, Any] = {}
        if source == "restore":
            # The plan is over here: what the layers below it hold comes back, and where
            # none holds a field, the value it had before the plan.
            self.layers.clear("crisis")
            before = self.drop_crisis_base()
        elif source == "crisis":
            self.keep_crisis_base(clean, (self.state["layers"].get("crisis") or {}).get("set")
                                  or {})
            self.layers.put("crisis", clean, by=self.current_caller)
        else:
            until = now + for_s if for_s is not None else None
            if until is None and self.timetable is not None:
                nxt = self.timetable.next_after(now)
                until = nxt.at if nxt is not None else None
            # An operator acting during a crisis takes those fields from the plan (the
            # crisis coordinator keeps them at deactivation).
            self.layers.clear("crisis", clean)
            self.layers.put("operator", clean, until=until, by=self.current_caller)
        effective, _ = self.layers.effective(now)
        want = {**{k: v for k, v in effective.items() if source == "restore"},
                **{k: effective.get(k, before.get(k, v)) for k, v in clean.items()}}
        self.state["set_by"] = {**(self.state.get("set_by") or {}),
                                **dict.fromkeys(clean, self.current_command)}
        result = await self.actuate(want, self.current_command)
        self.arm(now)
        await self.prearm(now)
        return result

    async def set_lamps(self, lamps: Sequence[int], setpoints: Mapping[str, Any]
                        ) -> dict[str, Any]:
        """Write ``setpoints`` to the lamps numbered ``lamps`` that do not hold them."""
        port = self.ctx.device
        if port is None:
            raise RejectedError(f"{self.ctx.id} has no cabinet session", code="device_offline")
        try:
            held = await self.device_lamps(port)
            beyond = [n for n in lamps if n > len(held)]
            if beyond:
                raise RejectedError(f"{self.ctx.id} has {len(held)} lamps: no lamp {beyond[0]}",
                                    code="out_of_range")
            chosen = {n: held[n - 1] for n in lamps}
            writes = {f"lamp.{n}.{name}": want for name, want in setpoints.items()
                      for n, lamp in chosen.items() if not lamp_holds(lamp, name, want)}
            confirmed = await self.write_device(port, writes, self.current_command)
        except DeviceUnavailableError as exc:
            raise RejectedError(f"{self.ctx.id} did not answer: {exc}",
                                code="device_unavailable") from exc
        self.ctx.emit("lamps_set", lamps=",".join(map(str, lamps)),
                      **{f"set.{k}": v for k, v in setpoints.items()})
        return {"lamps": list(lamps), "device": dict(confirmed)}

    # -- energy --------------------------------------------------------------------------
    async def on_telemetry(self, msg: Envelope) -> None:
        await super().on_telemetry(msg)
        p = msg.payload
        lamps = p["values"].get("lamp")
        ts = p.get("ts")
        if isinstance(lamps, list) and isinstance(ts, int | float) and ts > 0:
            self.meter(lamps, float(ts))

    def meter(self, lamps: Sequence[Any], ts: float) -> None:
        """Count the energy since the previous reading into the hours it covers."""
        counters: list[int] = []
        for lamp in lamps:
            value = lamp.get("energy_wh") if isinstance(lamp, Mapping) else None
            if isinstance(value, bool) or not isinstance(value, int):
                return  # a reading without every counter: the next full one takes over
            counters.append(value)
        energy = self.state["energy"]
        last, last_ts = energy.get("counters"), energy.get("ts")
        if last_ts is not None and ts <= float(last_ts):
            return
        energy["counters"], energy["ts"] = counters, ts
        self._lamp_count = len(counters)
        if not isinstance(last, list) or len(last) != len(counters) or last_ts is None:
            return
        wh = 0
        events: Counter[str] = Counter()
        for old, new in zip(last, counters, strict=True):
            step, what = counter_delta(int(old), int(new))
            wh += step
            if what:
                events[what] = 1  # one reset (or wrap) of the cabinet, however many lamps
        if events:
            self.ctx.emit("energy_counters", resets=events["reset"], wraps=events["wrap"],
                          jumps=events["jump"])
        self._spread(float(wh), float(last_ts), ts, events)
        self._publish_energy(ts)

    def _spread(self, wh: float, start: float, end: float, events: Counter[str]) -> None:
        hours: dict[str, list[float]] = self.state["energy"]["hours"]
        t = start
        while t < end:
            hour = math.floor(t / 3600.0) * 3600
            upto = min(end, hour + 3600.0)
            key = str(hour)
            row = hours.get(key)
            if row is None:
                row = hours[key] = [0.0, lit_seconds(self.ctx.equipment, hour, hour + 3600.0),
                                    0, 0]
                self._published_at = -math.inf  # an hour began: publish the one that ended
            row[0] += wh * (upto - t) / (end - start)
            if upto == end:
                row[2] += events["reset"]
                row[3] += events["wrap"]
            self._dirty_dates.add(_local_date(hour))
            t = upto
        oldest = end - ENERGY_KEEP_H * 3600.0
        for key in [k for k in hours if float(k) < oldest]:
            del hours[key]

    def _publish_energy(self, now: float) -> None:
        if not self._dirty_dates or now - self._published_at < ENERGY_PUBLISH_S:
            return
        self._published_at = now
        hours: dict[str, list[float]] = self.state["energy"]["hours"]
        eq = self.ctx.equipment
        for date in sorted(self._dirty_dates):
            rows = {k: v for k, v in hours.items() if _local_date(float(k)) == date}
            if not rows:
                continue
            self.ctx.publish_read_model(energy_model_name(eq.id, date), pack({
                "id": eq.id, "municipality": eq.municipality, "date": date,
                "lamps": self._lamp_count or circuit_lamps(eq), "lamp_w": self._lamp_w,
                "legacy_w": self._legacy_w, "hours": rows}))
        self._dirty_dates.clear()

    def check_conditions(self) -> None:
        """The kind's alarm conditions, then ``lamps_failed`` when lamps fail that had not.

        The ``lamp_fault`` condition holds while any lamp has failed, so its
        alarm says nothing of a second lamp failing; dispatch needs each new
        failure (it joins the circuit's open intervention), and nothing when
        the set only shrinks (a lamp replaced). The event carries every failed
        lamp (``lamps``, numbered from 1), the new ones (``new``) and where the
        cabinet stands (``lat``, ``lon``).
        """
        super().check_conditions()
        reported = {k: v.value for k, v in self.twin.reported.items()}
        failed = failed_lamps(reported)
        before = set(self.state.get("failed_lamps") or ())
        if failed == before:
            return
        self.state["failed_lamps"] = sorted(failed)
        new = failed - before
        if new:
            eq = self.ctx.equipment
            self.ctx.emit("lamps_failed", lamps=",".join(map(str, sorted(failed))),
                          new=",".join(map(str, sorted(new))), count=len(failed),
                          lat=eq.lat, lon=eq.lon)

    @classmethod
    def reported_fields(cls, reported: Mapping[str, Any]) -> dict[str, Any]:
        """``on`` and ``dim`` as most of the circuit's lamps hold them."""
        out: dict[str, Any] = {}
        for name in cls.FIELDS:
            values = [v for v in block_values(reported, "lamp", name) if v is not None]
            if values:
                out[name] = Counter(values).most_common(1)[0][0]
        return out

    def pending_setpoints(self) -> dict[str, Any]:
        desired = {k: v for k, v in self.twin.desired.items() if k in self.FIELDS}
        reported = self.twin.reported.get("lamp")
        lamps = reported.value if reported is not None else None
        if not isinstance(lamps, list):
            return desired  # no reading of the lamps yet: the cabinet is asked in device_writes
        return {k: v for k, v in desired.items()
                if not all(isinstance(lamp, Mapping) and lamp_holds(lamp, k, v)
                           for lamp in lamps)}

    def current_lamps(self) -> list[Mapping[str, Any]] | None:
        """The lamps as the twin's reading shows them, when it shows every write made so far."""
        got = self.twin.reported.get("lamp")
        if (got is None or self.write_unsure or not got.source_ts > self.wrote_ts
                or got.quality is not Quality.GOOD or not isinstance(got.value, list)
                or not all(isinstance(x, Mapping) for x in got.value)):
            return None
        return got.value

    async def device_writes(self, port: DevicePort, setpoints: Mapping[str, Any]) -> dict[str, Any]:
        lamps = await self.device_lamps(port)
        broadcast = frozenset(name for name in setpoints
                              if port.policy(f"{BROADCAST}{name}") is not None)
        return lamp_writes(setpoints, lamps, broadcast=broadcast)

    async def device_lamps(self, port: DevicePort) -> Sequence[Mapping[str, Any]]:
        """What the lamps hold: the twin's reading when it shows every write, else the
        cabinet's own answer (module doc)."""
        lamps = self.current_lamps() if port.online else None
        if lamps is None:
            # The reading is also the verdict on a cabinet not reached yet since the host
            # started: no need to wait for its first poll.
            try:
                reading = await port.read()
            except DeviceUnavailableError as exc:
                if port.online:
                    raise
                raise self.offline() from exc
            got = reading.get("lamp")
            if not isinstance(got, list) or not all(isinstance(x, Mapping) for x in got):
                raise ProtocolError(f"{self.ctx.id}: the cabinet's reading has no lamp block")
            lamps = got
            self.write_unsure = False
        return lamps


def failed_lamps(reported: Mapping[str, Any]) -> set[int]:
    """Numbers (from 1) of the lamps whose ``fault_bits`` say they failed.

    As :func:`block_values`, whether the cabinet reports its lamps as one list
    or one value per node (``lamp.3.fault_bits``).
    """
    whole = reported.get("lamp")
    if isinstance(whole, list):
        return {n for n, lamp in enumerate(whole, start=1)
                if isinstance(lamp, Mapping) and _lamp_failed(lamp.get("fault_bits"))}
    out: set[int] = set()
    for key, value in reported.items():
        parts = key.split(".")
        if (len(parts) == 3 and parts[0] == "lamp" and parts[2] == "fault_bits"
                and parts[1].isdigit() and _lamp_failed(value)):
            out.add(int(parts[1]))
    return out


def lamp_holds(lamp: Mapping[str, Any], name: str, want: Any) -> bool:
    """Whether one reported lamp holds the circuit setpoint ``name = want``."""
    got = lamp.get(name)
    if name == "dim":
        # The cabinet dims in whole percents (a u16 register): a write of 40.4 leaves 40.
        return (isinstance(got, int | float) and not isinstance(got, bool)
                and round(float(want)) == round(float(got)))
    return bool(got == want)


def _step_values(values: Mapping[str, Any]) -> tuple[bool | None, int | None]:
    """``(on, dim)`` of a circuit's setpoints as a cabinet's timed step holds them."""
    on, dim = values.get("on"), values.get("dim")
    return (None if on is None else bool(on),
            None if not isinstance(dim, int | float) else round(dim))


#: Prefix of a cabinet's registers that set one field of every lamp at once.
BROADCAST: Final = "broadcast_"


def lamp_writes(setpoints: Mapping[str, Any], lamps: Sequence[Mapping[str, Any]], *,
                broadcast: Collection[str] = ()) -> dict[str, Any]:
    """``{"lamp.3.dim": 40.0, …}``: each lamp (numbered from 1) and setpoint it does not hold.

    A setpoint named in ``broadcast`` that no lamp holds (of two lamps or more)
    is one write to the cabinet's broadcast register instead
    (``{"broadcast_dim": 40.0}``): it sets exactly the lamps that need it.
    """
    out: dict[str, Any] = {}
    for name, want in setpoints.items():
        lacking = [n for n, lamp in enumerate(lamps, start=1) if not lamp_holds(lamp, name, want)]
        if name in broadcast and len(lamps) > 1 and len(lacking) == len(lamps):
            out[f"{BROADCAST}{name}"] = want
        else:
            out.update((f"lamp.{n}.{name}", want) for n in lacking)
    return out
