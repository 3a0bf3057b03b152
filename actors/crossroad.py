"""A crossroad: its traffic controller's signal plan and mode, by schedule, operator or crisis.

**What sets a field.** Three sources may ask for a plan or a mode, and what
wins is data (:data:`actors.schedule.PRECEDENCE`): a crisis plan over an
operator's override over the time-of-day schedule. Each keeps its layer in
the entity's state (:class:`actors.schedule.Layers`, ``state["layers"]``), and
the field's effective value becomes the desired setpoint. The equipment's view
(``GET /api/v1/equipment/ID``) shows the schedule and, under ``control``, the
precedence and, per field, its value and the source it comes from.

* A command whose caller is ``crisis`` (the crisis coordinator's,
  :data:`actors.control.crisis.CALLER`, or ``crisis:…``) sets the crisis layer.
  The coordinator ends a crisis with a ``crisis:restore`` command giving back
  each field's value from before it: the fields leave the crisis layer, and
  what is in force beneath it now (a schedule step that came meanwhile, an
  override) takes over; a field no other source holds takes the value given
  back. A plan that replaces another gives back, in its own ``crisis``
  command, what the first set and it does not: a crisis setpoint equal to the
  field's value from before the crisis releases the field too.
* Any other command is an operator's: an override that expires by itself,
  after ``params.for_s`` seconds, else when the schedule's next step comes
  into force. ``manual``, ``flashing``, ``all_red`` and ``off`` are manual
  modes: an operator must say why (``params.reason``).
* The schedule (``attrs.schedule`` of the inventory, ``signals`` by default;
  an empty name follows none) is followed on the city's clock with a
  :class:`~actors.schedule.Timetable`: at start and at each transition the
  step in force is applied once when it is not the one recorded as applied
  (``state["schedule"]``: ``name``, ``step``, ``since``, ``next``), and a timer
  is armed for the next. A restart across a transition applies the step once;
  one that finds the controller holding it already writes nothing.

**To the controller.** A plan number travels as its table
(:mod:`actors.signal_plan`) downloaded into a slot of the controller's plan
table, then selected in ``plan``; the controller latches it at the end of its
cycle. What the controller holds is compared first, from a reading that shows
every write this incarnation made (else read anew): a table it holds is not
downloaded again, a plan it has selected is not selected again. A plan is
checked against the limits once more before its download, and a table the
controller refuses raises the momentary alarm ``signal_plan_refused``.

**Faults.** The controller's ``fault_bits`` are alarm conditions
(:data:`actors.equipment.CONDITIONS`): ``controller_fault``,
``signal_lamp_fault``, ``signal_conflict`` and ``detector_fault``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from actors.equipment import CRISIS_CALLER, CRISIS_RESTORE_CALLER, EquipmentEntity, Field
from actors.priority import lane as priority_lane
from actors.schedule import Layers, Timetable, builtin_schedules
from actors.signal_plan import builtin_signal_plans
from runtime.commands import check_command_shape, shown
from runtime.device_port import DevicePort
from runtime.entity import Checkpoint, PriorityLane
from runtime.envelope import Envelope
from runtime.errors import (
    DeviceUnavailableError,
    InvalidCommandError,
    ProtocolError,
    RejectedError,
)
from runtime.inventory import Equipment
from runtime.twin import Quality

__all__ = ["CRISIS", "DEFAULT_SCHEDULE", "MANUAL_MODES", "MODES", "Crossroad"]

#: A controller's modes an operator may set.
MODES: Final = ("auto", "flashing", "all_red", "manual", "off")
#: Modes that take the crossroad out of its plans: an operator says why.
MANUAL_MODES: Final = ("manual", "flashing", "all_red", "off")
#: Modes a controller reports on its own way from off back to auto: it holds auto.
STARTING: Final = ("start_flashing", "start_all_red")
#: The crisis coordinator's caller (``crisis``, or ``crisis:…``); the same word names its
#: layer. ``crisis:restore`` releases the layer.
CRISIS: Final = CRISIS_CALLER
OPERATOR: Final = "operator"
SCHEDULE: Final = "schedule"
#: The schedule a crossroad follows when its inventory names none.
DEFAULT_SCHEDULE: Final = "signals"
#: The longest operator override (s).
MAX_OVERRIDE_S: Final = 7 * 86400.0
#: A timer may wake a little before its time on an accelerated clock: a transition that
#: close is taken as come.
_EARLY_S: Final = 1.0


def _held_mode(mode: Any) -> Any:
    """The mode a controller holds as an operator would set it (starting: auto)."""
    return "auto" if mode in STARTING else mode


class Crossroad(EquipmentEntity):
    """A crossroad's traffic controller (see the module doc)."""

    kind = "crossroad"
    SCHEDULE_ATTR = "schedule"
    FIELDS = {
        "plan": Field(int, 1, 32),
        "mode": Field(str, choices=MODES),
    }
    #: What a command may carry besides fields.
    OPTIONS: Final = {
        "reason": Field(str, max_len=200),
        "for_s": Field(float, 1, MAX_OVERRIDE_S),
    }
    READS_BACK = True
    CRISIS_LAYER = True

    # -- bus priority ------------------------------------------------------
    @classmethod
    async def on_priority(cls, view: Mapping[str, Any], msg: Envelope,
                          lane: PriorityLane) -> Any:
        """The pool's requests and clears, served on the host's priority loop
        (:mod:`actors.priority.lane`)."""
        return await priority_lane.serve(view, msg, lane)

    @classmethod
    async def prepare_priority_lane(cls, view: Mapping[str, Any], lane: PriorityLane) -> None:
        """The lane's connection to the controller, opened before the first request."""
        await priority_lane.prepare(view, lane)

    def lane_view(self) -> dict[str, Any]:
        """The reported values, the controller's endpoint and the approaches a bus may
        ask for (``attrs.approaches``; 1..8 when the inventory gives none)."""
        eq = self.ctx.equipment
        numbers = [a.get("number") for a in eq.attrs.get("approaches") or ()
                   if isinstance(a, Mapping)]
        return {**super().lane_view(), "endpoint": eq.endpoint,
                "approaches": [n for n in numbers if isinstance(n, int)]}

    async def on_priority_outcome(self, msg: Envelope) -> None:
        """A grant, refusal or end of a bus's request, recorded as a ``priority`` event."""
        p = dict(msg.payload) if isinstance(msg.payload, Mapping) else {}
        outcome = str(p.pop("outcome", ""))
        counts = self.state.setdefault("priority", {})
        key = outcome if outcome != "refused" else f"refused.{p.get('reason', '')}"
        counts[key] = int(counts.get(key, 0)) + 1
        self.ctx.emit("priority", outcome=outcome, **p)

    # -- checks ------------------------------------------------------------
    @classmethod
    def check_schedule_step(cls, setpoints: Mapping[str, Any]) -> list[tuple[str, str]]:
        """The field table's problems, and a plan number no signal plan has."""
        out = super().check_schedule_step(setpoints)
        bad = {name for name, _ in out}
        return out + cls.check_setpoints({k: v for k, v in setpoints.items() if k not in bad})

    @classmethod
    def check_setpoints(cls, setpoints: Mapping[str, Any]) -> list[tuple[str, str]]:
        """A plan number no signal plan has (:mod:`actors.signal_plan`)."""
        plan = setpoints.get("plan")
        problem = _unknown_plan(plan) if plan is not None else ""
        return [("plan", problem)] if problem else []

    @classmethod
    def validate_command(cls, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """An operator's ``set``: fields, a plan that exists, ``reason`` for a manual mode.

        ``params.reason`` (up to 200 characters) and ``params.for_s`` (how long
        the override holds, 1 s to 7 days) may come with the fields; a manual
        mode without a reason is refused naming ``params.reason``.
        """
        return cls._params(action, params, need_reason=True)

    @classmethod
    def describe_commands(cls, equipment: Equipment) -> list[dict[str, Any]]:
        """``set`` of ``plan`` (a signal plan that exists) and ``mode``, with ``reason``
        (required for a manual mode) and ``for_s``."""
        forms = super().describe_commands(equipment)
        for form in forms:
            params = form["params"]
            params["plan"]["enum"] = list(builtin_signal_plans().numbers())
            params["reason"] = cls.OPTIONS["reason"].describe(
                required_when={"mode": list(MANUAL_MODES)},
                description="why: required for a manual mode")
            params["for_s"] = cls.OPTIONS["for_s"].describe(
                unit="s", description="how long the override holds; until the schedule's "
                                      "next step without it")
        return forms

    @classmethod
    def _params(cls, action: str, params: Mapping[str, Any], *,
                need_reason: bool) -> dict[str, Any]:
        params = check_command_shape(action, params)
        fields = {k: v for k, v in params.items() if k not in cls.OPTIONS}
        clean = super().validate_command(action, fields)
        if "plan" in clean:
            problem = _unknown_plan(clean["plan"])
            if problem:
                raise InvalidCommandError(problem, field="params.plan", code="unknown_plan")
        for name, spec in cls.OPTIONS.items():
            if name in params:
                try:
                    clean[name] = spec.check(name, params[name])
                except RejectedError as exc:
                    raise InvalidCommandError(str(exc), field=f"params.{name}",
                                              code=exc.code) from None
        mode = clean.get("mode")
        if need_reason and mode in MANUAL_MODES and not str(clean.get("reason", "")).strip():
            raise InvalidCommandError(f"mode {shown(mode)} is a manual mode: say why in "
                                      "params.reason", field="params.reason",
                                      code="reason_required")
        return clean

    # -- lifecycle ---------------------------------------------------------
    async def on_start(self, saved: Checkpoint | None) -> None:
        await super().on_start(saved)
        self.state.setdefault("layers", {})
        self.state.setdefault("crisis_before", {})
        self._timetable = self._find_timetable()
        # The step in force is applied as the first message, not while the host starts.
        self.ctx.start_timer("schedule", 0.0, "schedule_due")

    def _find_timetable(self) -> Timetable | None:
        eq = self.ctx.equipment
        name = eq.attrs.get("schedule", DEFAULT_SCHEDULE)
        if not name:
            return None
        try:
            schedule = builtin_schedules().get(str(name))
        except KeyError:
            schedule = None
        if schedule is None or schedule.kind != self.kind:
            self.ctx.emit("schedule_unknown", schedule=str(name))
            return None
        return Timetable(schedule, eq.lat, eq.lon)

    # -- reported values ---------------------------------------------------
    @classmethod
    def reported_fields(cls, reported: Mapping[str, Any]) -> dict[str, Any]:
        out = super().reported_fields(reported)
        if "mode" in out:
            out["mode"] = _held_mode(out["mode"])
        return out

    def pending_setpoints(self) -> dict[str, Any]:
        reported = self.reported_fields({k: v.value for k, v in self.twin.reported.items()})
        return {k: v for k, v in self.twin.desired.items()
                if k in self.FIELDS and reported.get(k) != v}

    def _value(self, name: str) -> Any:
        """A field's effective value now: desired where set, else what the controller holds."""
        if name in self.twin.desired:
            return self.twin.desired[name]
        reported = self.twin.reported.get(name)
        return _held_mode(reported.value) if reported is not None else None

    # -- the schedule and the layers ---------------------------------------
    def _layers(self) -> Layers:
        return Layers(self.state.setdefault("layers", {}))

    async def on_schedule_due(self, msg: Envelope) -> dict[str, Any]:
        """A transition of the schedule or an override's end (also right after start)."""
        now = self.ctx.clock.time()
        at = msg.payload.get("at") if isinstance(msg.payload, Mapping) else None
        t = float(at) if isinstance(at, int | float) and now < at <= now + _EARLY_S else now
        names: set[str] = set()
        cause = "expiry"
        tt = self._timetable
        if tt is not None:
            occ = tt.in_force(t)
            applied = self.state.get("schedule") or {}
            if occ is not None and (applied.get("step"), applied.get("since")) != occ.key:
                layers = self._layers()
                layers.clear(SCHEDULE)
                layers.put(SCHEDULE, dict(occ.step.set),
                           by=f"schedule:{tt.schedule.name}:{occ.step.name}")
                self.state["schedule"] = {"name": tt.schedule.name, "step": occ.step.name,
                                          "since": occ.key[1]}
                names |= set(occ.step.set)
                cause = f"schedule:{tt.schedule.name}:{occ.step.name}:{occ.key[1]}"
                self.ctx.emit("schedule_step", schedule=tt.schedule.name, step=occ.step.name,
                              since=occ.key[1])
            nxt = tt.next_after(t)
            view = self.state.setdefault("schedule", {"name": tt.schedule.name, "step": None,
                                                      "since": None})
            view["next"] = None if nxt is None else {"step": nxt.step.name, "at": nxt.at}
            if nxt is not None:
                self.ctx.start_timer("schedule", max(0.0, nxt.at - now), "schedule_due",
                                     {"at": nxt.at})
        try:
            return await self._enforce(names, cause, t)
        except RejectedError as exc:
            # Kept as desired: a reconnect reconciles it, the next transition tries again.
            self.ctx.emit("setpoint_failed", cause=cause, error=str(exc), code=exc.code)
            return {"error": str(exc)}

    def _next_step_at(self, now: float) -> float | None:
        tt = self._timetable
        nxt = tt.next_after(now) if tt is not None else None
        return None if nxt is None else nxt.at

    def _crisis(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """A crisis setpoint, or the end of one (a field given back its value from before).

        Returns the fields released, with the value given back: what they keep when no
        other source holds them.
        """
        layers = self._layers()
        held = (self.state["layers"].get(CRISIS) or {}).get("set") or {}
        before: dict[str, Any] = self.state.setdefault("crisis_before", {})
        put: dict[str, Any] = {}
        released: list[str] = []
        for name, value in fields.items():
            if name in held and name in before and before[name] == value:
                released.append(name)
                continue
            if name not in held:
                before[name] = self._value(name)
            put[name] = value
        if put:
            self.keep_crisis_base(put, held)
            layers.put(CRISIS, put, by=self.current_caller)
        if released:
            layers.clear(CRISIS, released)
            self.drop_crisis_base(released)
            for name in released:
                before.pop(name, None)
        return {name: fields[name] for name in released}

    # -- the equipment view ------------------------------------------------
    def schedule_view(self) -> dict[str, Any] | None:
        view = self.state.get("schedule")
        following = getattr(self, "_timetable", None) is not None
        return dict(view) if following and isinstance(view, Mapping) else None

    def view_extras(self) -> dict[str, Any]:
        """The schedule, and ``control``: the precedence, each field's value and source (with
        who set it and until when), and every source's layer."""
        return {**super().view_extras(), "control": self.control_view()}

    def control_view(self) -> dict[str, Any]:
        layers = Layers(dict(self.state.get("layers") or {}))
        return layers.control(self.FIELDS, self.twin.desired, self.ctx.clock.time())

    async def _enforce(self, names: Iterable[str], cause: str, now: float,
                       fallback: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Make the effective values desired, and the controller hold ``names`` and what changed.

        A field of ``fallback`` that no source holds any more takes its value from it.
        Raises :class:`RejectedError` when the controller could not be brought to them.
        """
        layers = self._layers()
        layers.expire(now)
        values, sources = layers.effective(now)
        wanted = {**{k: v for k, v in (fallback or {}).items() if k not in values}, **values}
        changed = {k: v for k, v in wanted.items() if self.twin.desired.get(k) != v}
        if changed:
            self.twin.desired.update(changed)
            # Which decision last set each field: a crisis restores only what it set itself.
            self.state["set_by"] = {**(self.state.get("set_by") or {}),
                                    **dict.fromkeys(changed, cause)}
            self.ctx.emit("setpoint", **{f"desired.{k}": v for k, v in changed.items()},
                          **{f"source.{k}": sources.get(k, "") for k in changed})
        expiry = layers.next_expiry()
        if expiry is None:
            self.ctx.cancel_timer("layers")
        else:
            self.ctx.start_timer("layers", max(0.0, expiry - self.ctx.clock.time()),
                                 "schedule_due", {"at": expiry})
        touched = set(names) | set(changed)
        result: dict[str, Any] = {
            "desired": {k: self.twin.desired[k] for k in sorted(touched)
                        if k in self.twin.desired},
            "source": {k: sources.get(k) for k in sorted(touched)}}
        want = {k: self.twin.desired[k] for k in touched if k in self.twin.desired}
        port = self.ctx.device
        if port is None or not want:
            return result
        try:
            writes = await self.device_writes(port, want)
            try:
                confirmed = await self._write(port, writes, cause)
            except DeviceUnavailableError:
                # An unanswered write may have landed: write only what the controller lacks.
                writes = await self.device_writes(port, want)
                confirmed = await self._write(port, writes, cause)
        except DeviceUnavailableError as exc:
            raise RejectedError(f"{self.ctx.id} did not answer: {exc}",
                                code="device_unavailable") from exc
        except ProtocolError as exc:
            raise RejectedError(f"{self.ctx.id}: {exc}", code="protocol_error") from exc
        result["device"] = dict(confirmed)
        return result

    async def _write(self, port: DevicePort, writes: Mapping[str, Any],
                     cause: str) -> Mapping[str, Any]:
        try:
            return await self.write_device(port, writes, cause or f"{self.ctx.id}-{self.version}")
        except RejectedError as exc:
            if any(k.startswith("plan_table.") for k in writes) and \
                    exc.code.startswith("modbus_exception"):
                self.ctx.emit("alarm", alarm="signal_plan_refused", momentary=True,
                              plan=str(writes.get("plan", "")), error=str(exc))
            raise

    # -- commands ----------------------------------------------------------
    async def apply_command(self, action: str, params: dict[str, Any]) -> Any:
        caller = self.current_caller
        source = CRISIS if caller == CRISIS or caller.startswith(f"{CRISIS}:") else OPERATOR
        clean = self._params(action, params, need_reason=source == OPERATOR)
        options = {k: clean.pop(k) for k in list(clean) if k in self.OPTIONS}
        now = self.ctx.clock.time()
        released: dict[str, Any] = {}
        if caller == CRISIS_RESTORE_CALLER:
            # The plan ends: its fields leave the crisis layer, whatever value comes back.
            self._layers().clear(CRISIS, list(clean))
            for name in clean:
                self.state.setdefault("crisis_before", {}).pop(name, None)
            # Where no other source holds a field, it takes back its value from before.
            released = {**clean, **self.drop_crisis_base(clean)}
            self.ctx.emit("crisis_released", field=",".join(sorted(clean)))
        elif source == CRISIS:
            released = self._crisis(clean)
        else:
            for_s = options.get("for_s")
            until = now + float(for_s) if for_s is not None else self._next_step_at(now)
            self._layers().put(OPERATOR, clean, until=until, by=self.current_caller)
            self.state["layers"][OPERATOR]["reason"] = str(options.get("reason", ""))
        result = await self._enforce(clean, self.current_command, now, released)
        return {**result, "held_by": {k: s for k, s in result["source"].items()
                                      if s is not None and s != source}}

    # -- the controller ----------------------------------------------------
    def _current(self, port: DevicePort) -> dict[str, Any] | None:
        """The controller's values from the twin, when its reading shows every write made."""
        got = self.twin.reported.get("plan_table")
        if (not port.online or got is None or self.write_unsure
                or not got.source_ts > self.wrote_ts or got.quality is not Quality.GOOD):
            return None
        return {k: v.value for k, v in self.twin.reported.items()}

    async def _reading(self, port: DevicePort) -> dict[str, Any]:
        got = self._current(port)
        if got is not None:
            return got
        try:
            reading = await port.read()
        except DeviceUnavailableError as exc:
            if port.online:
                raise
            raise self.offline() from exc
        self.write_unsure = False
        return dict(reading)

    async def device_writes(self, port: DevicePort, setpoints: Mapping[str, Any]) -> dict[str, Any]:
        """What the controller lacks of ``setpoints``: a plan's table and selection, the mode."""
        reading = await self._reading(port)
        out: dict[str, Any] = {}
        plan = setpoints.get("plan")
        if plan is not None:
            out.update(plan_writes(int(plan), reading))
        mode = setpoints.get("mode")
        if mode is not None and _held_mode(reading.get("mode")) != mode:
            out["mode"] = mode
        return out


def _unknown_plan(number: Any) -> str:
    """Why ``number`` names no signal plan ("" when it names one)."""
    book = builtin_signal_plans()
    if isinstance(number, int) and not isinstance(number, bool) and book.get(number):
        return ""
    known = ", ".join(map(str, book.numbers()))
    return f"no signal plan {shown(number)} in {book.source} (plans: {known})"


def plan_writes(number: int, reading: Mapping[str, Any]) -> dict[str, Any]:
    """What selects plan ``number`` at a controller reading ``reading``.

    The plan's table, into a slot (``plan_table.N.*``, in register order),
    unless a slot holds it exactly; then ``plan``, unless the controller has it
    selected already and nothing was downloaded. The slot is the one that holds
    the number already, else an empty one, else one holding neither the
    selected nor the running plan. Raises :class:`RejectedError` for a plan
    that is unknown or breaks the limits (checked before every download).
    """
    plan = builtin_signal_plans().get(number)
    if plan is None:
        raise RejectedError(_unknown_plan(number), code="unknown_plan")
    plan.check()
    slots = reading.get("plan_table")
    if not isinstance(slots, list) or not slots:
        raise ProtocolError("the controller's reading has no plan table")
    numbers = [s.get("number") if isinstance(s, Mapping) else None for s in slots]
    out: dict[str, Any] = {}
    held = next((i for i, n in enumerate(numbers) if n == number), None)
    if held is None or not plan.held_by(slots[held]):
        busy = {n for n in (reading.get("plan"), reading.get("plan_running")) if n}
        target = held
        if target is None:
            target = next((i for i, n in enumerate(numbers) if not n), None)
        if target is None:
            target = next((i for i, n in enumerate(numbers) if n not in busy), 0)
        out.update({f"plan_table.{target + 1}.{k}": v for k, v in plan.table().items()})
    if out or reading.get("plan") != number:
        out["plan"] = number
    return out
