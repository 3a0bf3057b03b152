"""Equipment entities: the commands each kind accepts, validated, as twin setpoints.

Every command is an absolute setpoint (``dim = 40``, never ``+10``), so replaying
the journal after a restart can never act twice. A setpoint is validated
against the kind's field table, then recorded as desired state; the device
sessions that carry it to the field are owned by the host (``devices/``).

Two kinds also feed the dispatch coordinator (:mod:`actors.control.dispatch`):
a lighting circuit emits ``lamps_failed`` when lamps fail that had not, and a
service vehicle sends it its position and crew status (``vehicle_state``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from actors.schedule import builtin_schedules
from runtime.commands import check_command_shape, shown
from runtime.datafile import KeyPath
from runtime.device_port import DevicePort
from runtime.entity import Checkpoint, Entity, has_priority_lane
from runtime.envelope import Envelope
from runtime.errors import (
    DeviceUnavailableError,
    InvalidCommandError,
    MalformedMessageError,
    ProtocolError,
    RejectedError,
)
from runtime.inventory import Equipment, Inventory
from runtime.twin import Quality


@dataclass(frozen=True, slots=True)
class Field:
    """A writable field: its type and allowed values or range."""

    type: type
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    max_len: int = 200

    def check(self, name: str, value: Any) -> Any:
        """``value`` as the field holds it (an int of a float field as a float).

        Raises :class:`RejectedError` with ``code="bad_value"`` (wrong type, a
        number that is not finite, a fraction for a whole number, a string too
        long) or ``code="out_of_range"`` (outside ``low..high``, not a choice).
        """
        if self.type is bool:
            if not isinstance(value, bool):
                raise RejectedError(f"{name} must be true or false", code="bad_value")
            return value
        if self.type in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RejectedError(f"{name} must be a number", code="bad_value")
            # NaN compares false with any bound: it would pass the range test below.
            if isinstance(value, float) and not math.isfinite(value):
                raise RejectedError(f"{name} must be a finite number", code="bad_value")
            if self.type is int and isinstance(value, float) and not value.is_integer():
                raise RejectedError(f"{name} must be a whole number", code="bad_value")
            # int and float compare exactly in Python: no float() of a huge int here.
            if (self.low is not None and value < self.low) or (
                self.high is not None and value > self.high
            ):
                raise RejectedError(f"{name}={shown(value)} is outside {self.low}..{self.high}",
                                    code="out_of_range")
            if self.type is int:
                return int(value)
            try:
                return float(value)
            except OverflowError:
                raise RejectedError(f"{name} is too large", code="out_of_range") from None
        if not isinstance(value, str):
            raise RejectedError(f"{name} must be a string", code="bad_value")
        if len(value) > self.max_len:
            raise RejectedError(f"{name} is {len(value)} characters long, more than "
                                f"{self.max_len}", code="bad_value")
        if self.choices and value not in self.choices:
            raise RejectedError(f"{name} must be one of {', '.join(self.choices)}",
                                code="out_of_range")
        return value

    def describe(self, *, required: bool = False, **extra: Any) -> dict[str, Any]:
        """The field as a command form shows it (:meth:`EquipmentEntity.describe_commands`).

        ``{"type": "boolean" | "integer" | "number" | "string", "required", "min"?, "max"?,
        "enum"?, "max_length"?}`` plus ``extra``; bounds are inclusive, a required string
        must not be blank. Other keys a kind may add: ``exclusive_min`` (the bound ``min``
        itself refused), ``unit``, ``description``, ``required_when`` (``{field: [values]}``:
        required when another parameter takes one of those values), ``names`` (a
        parameter that also takes names for numbers: ``{name: number}``), and for an
        ``array``, ``items`` (the spec of each) and ``max_items``.
        """
        out: dict[str, Any] = {"type": _JSON_TYPES[self.type], "required": required}
        if self.type in (int, float):
            if self.low is not None:
                out["min"] = self.low
            if self.high is not None:
                out["max"] = self.high
        elif self.type is str:
            out["max_length"] = self.max_len
            if self.choices:
                out["enum"] = list(self.choices)
        out.update(extra)
        return out


#: The JSON type of each type a :class:`Field` holds.
_JSON_TYPES: Final[Mapping[type, str]] = {bool: "boolean", int: "integer", float: "number",
                                          str: "string"}


def set_form(fields: Mapping[str, Field]) -> dict[str, Any]:
    """The ``set`` action of a kind whose writable fields are ``fields``: each optional, at
    least one of them (``requires_one_of``)."""
    return {"action": "set", "params": {name: spec.describe() for name, spec in fields.items()},
            "requires_one_of": list(fields)}


#: Keys of a sample that number or date it: not data points.
_NOT_DATA = frozenset({"seq", "ts"})


def _count_points(value: Any) -> int:
    """Data points in one reported value: a block (list of dicts) counts each of its values."""
    if isinstance(value, list):
        return sum(len(v) if isinstance(v, Mapping) else 1 for v in value)
    return 1


#: Bit 0 of a lamp's ``fault_bits``: the lamp has failed (the cabinet reports it).
LAMP_FAILED = 0x0001
#: A traffic controller's ``fault_bits`` (``devices/profiles/traffic_controller.toml``): a
#: signal lamp out and the conflict monitor force it to flashing; any other bit but the
#: detector's is a controller fault.
SIGNAL_LAMP_FAULT = 0x0002
SIGNAL_CONFLICT = 0x0004
DETECTOR_FAULT = 0x0008
#: Device events that are alarms by themselves: they have no "cleared" state at the
#: device, so the alarm returns to normal at once and waits for an acknowledgement.
MOMENTARY_EVENTS: Mapping[str, str] = {"door_forced": "forced_door", "tamper": "camera_tamper"}
#: Device events that announce a condition the device also reports as a value (a fire
#: zone's alarm node): the event raises the alarm at once, and the condition is held
#: until the reported value has caught up with it (or :data:`LATCH_S` has passed).
LATCHING_EVENTS: Mapping[str, str] = {"fire": "fire", "intrusion": "intrusion"}
LATCH_S = 10.0
#: A camera's storage fill (percent) from which its recordings are at risk.
CAMERA_STORAGE_FULL_PCT = 90.0


def block_values(reported: Mapping[str, Any], block: str, field: str) -> list[Any]:
    """Every repeat's ``field`` of a reported block, however the device reports it.

    A Modbus cabinet reports a block as one list of records (``lamp``); an OPC UA
    building as one value per node (``fire_zone.2.alarm``).
    """
    whole = reported.get(block)
    if isinstance(whole, list):
        return [r.get(field) for r in whole if isinstance(r, Mapping)]
    prefix, suffix = f"{block}.", f".{field}"
    return [v for k, v in reported.items() if k.startswith(prefix) and k.endswith(suffix)]


#: Bit 1 of an access terminal's ``fault_bits``: a forced passage (its other bits: faults).
FORCED_PASSAGE = 0x0002


def _bits(reported: Mapping[str, Any]) -> int:
    """A device's ``fault_bits`` as reported (0 when it reports none, or not a number)."""
    bits = reported.get("fault_bits")
    return bits if isinstance(bits, int) and not isinstance(bits, bool) else 0


def _lamp_failed(bits: Any) -> bool:
    return isinstance(bits, int) and not isinstance(bits, bool) and bool(bits & LAMP_FAILED)


#: Per kind, each alarm condition and when the reported values say it holds.
CONDITIONS: Mapping[str, Mapping[str, Callable[[Mapping[str, Any]], bool]]] = {
    "lighting_circuit": {
        "cabinet_mains_fault": lambda r: r.get("mains_ok") is False,
        "cabinet_door_open": lambda r: r.get("door_open") is True,
        "earth_fault": lambda r: r.get("earth_fault") is True,
        "lamp_fault": lambda r: any(_lamp_failed(b) for b in block_values(r, "lamp",
                                                                             "fault_bits")),
    },
    "building": {
        "fire": lambda r: any(v is True for v in block_values(r, "fire_zone", "alarm")),
        "intrusion": lambda r: any(v is True for v in block_values(r, "intrusion_zone",
                                                                   "alarm")),
    },
    "crossroad": {
        "controller_fault": lambda r: bool(
            _bits(r) & ~(SIGNAL_LAMP_FAULT | SIGNAL_CONFLICT | DETECTOR_FAULT)),
        "signal_lamp_fault": lambda r: bool(_bits(r) & SIGNAL_LAMP_FAULT),
        "signal_conflict": lambda r: bool(_bits(r) & SIGNAL_CONFLICT),
        "detector_fault": lambda r: bool(_bits(r) & DETECTOR_FAULT),
    },
    "access_terminal": {
        "terminal_fault": lambda r: _bits(r) & ~FORCED_PASSAGE != 0,
        "forced_passage": lambda r: _bits(r) & FORCED_PASSAGE != 0,
    },
    "camera": {
        "camera_fault": lambda r: r.get("health") == "failed",
        "camera_storage_full": lambda r: (isinstance(r.get("storage_pct"), int | float)
                                          and r["storage_pct"] >= CAMERA_STORAGE_FULL_PCT),
    },
}


#: The caller of a crisis coordinator's setpoint (``crisis``), and of one that puts back what
#: an ended plan had set (``crisis:restore``): a kind that keeps what a crisis sets as a
#: layer of its own (:class:`actors.schedule.Layers`) releases the layer on the latter.
CRISIS_CALLER = "crisis"
CRISIS_RESTORE_CALLER = "crisis:restore"


class EquipmentEntity(Entity):
    """Common behaviour of equipment.

    * ``set`` validates absolute setpoints against the kind's field table,
      records them as desired state and writes them to the device;
    * ``telemetry`` updates the reported twin, counting samples by the
      device's sequence number (gaps are counted as lost samples), the data
      points they carried (``seq`` and ``ts`` are not data), and the lag from
      the device's timestamp to the value applied (``telemetry_lag_s.{protocol}``);
    * ``device_status`` flips the entity online/offline; on reconnect the
      desired state is reconciled by each field's policy in the profile:
      ``reapply`` writes it again, ``alarm`` raises an alarm for an operator,
      ``never`` (a transient command register) is neither written nor
      alarmed, and is never kept as desired: a restart or a reconnect must
      not send a stale command again.
    """

    FIELDS: ClassVar[Mapping[str, Field]] = {}
    #: Whether the kind holds a crisis plan's setpoints as a layer (released by a
    #: ``crisis:restore`` command): the crisis coordinator then sends the restore even
    #: when the value it puts back is already in force.
    CRISIS_LAYER: ClassVar[bool] = False
    #: Whether :meth:`device_writes` reads the device and returns only what it lacks: a
    #: write that got no answer is then checked and completed once, not failed.
    READS_BACK: ClassVar[bool] = False
    #: The attribute of an inventory record that names the schedule the equipment follows
    #: (a schedule of its kind, :mod:`actors.schedule`); "" for a kind without schedules.
    SCHEDULE_ATTR: ClassVar[str] = ""

    async def on_start(self, saved: Checkpoint | None) -> None:
        await super().on_start(saved)
        self.state.setdefault("samples", 0)
        self.state.setdefault("lost", 0)
        self.state.setdefault("points", 0)
        self._protocol = self.ctx.equipment.endpoint.split(":", 1)[0] or "none"
        # Only a kind with a priority lane reads the published view: others skip the copy.
        self._has_lane = has_priority_lane(type(self))
        self.state.setdefault("seq", -1)
        self.state.setdefault("conditions", [])
        self._conditions = CONDITIONS.get(self.kind, {})
        # Readings older than this incarnation may predate a write of the previous one.
        self.wrote_ts = self.ctx.clock.time()
        self.write_unsure = False
        port = self.ctx.device
        self.state["online"] = bool(port is not None and port.online)

    # -- the equipment view ----------------------------------------------
    def schedule_view(self) -> dict[str, Any] | None:
        """``{"name", "step", "since", "next": {"step", "at"}}`` of the schedule the entity
        follows (:meth:`actors.schedule.Timetable.view`); None when it follows none."""
        return None

    # -- a crisis plan's layer: what it took over --------------------------------
    def keep_crisis_base(self, names: Iterable[str], held: Iterable[str] = ()) -> None:
        """Record, before a crisis layer takes ``names``, each one's effective value, the
        command that set it and the plan's command that takes it (``state["crisis_base"]``:
        ``{name: [value, by, taken_by]}``); ``held``: those the layer holds already, which
        keep what they had from before it took them (and note the new ``taken_by``).

        A kind that holds a plan's setpoints as a layer (:attr:`CRISIS_LAYER`) keeps its
        own baseline, so the crisis coordinator journals the plan's setpoints without
        first asking for it: the restore puts back, where no other layer holds a field,
        the value recorded here, and the coordinator reads ``by`` (in the entity's state)
        to tell an operator's command during the crisis from the one before it. A field an
        operator took from the plan keeps its record (and its ``by``) until a plan takes
        it again.
        """
        base: dict[str, Any] = self.state.setdefault("crisis_base", {})
        keep = set(held)
        taking = self.current_command
        missing: list[str] = []
        for name in names:
            got = base.get(name)
            if name in keep and isinstance(got, list) and len(got) == 3:
                got[2] = taking
            else:
                missing.append(name)
        if not missing:
            return
        effective = type(self).effective(self.twin.to_dict())
        set_by = self.state.get("set_by") or {}
        for name in missing:
            base[name] = [effective.get(name), str(set_by.get(name) or ""), taking]

    def drop_crisis_base(self, names: Iterable[str] | None = None) -> dict[str, Any]:
        """Forget the baseline of ``names`` (None: all), the crisis layer having given them
        up; returns the values of those that had one known."""
        base: dict[str, Any] = self.state.get("crisis_base") or {}
        out: dict[str, Any] = {}
        for name in list(base) if names is None else list(names):
            got = base.pop(name, None)
            if isinstance(got, list) and got and got[0] is not None:
                out[name] = got[0]
        return out

    def lane_view(self) -> dict[str, Any]:
        """The immutable view the priority lane reads: the reported values by default."""
        return {k: v.value for k, v in self.twin.reported.items()}

    def view_extras(self) -> dict[str, Any]:
        """What the kind adds to its equipment view (``GET /api/v1/equipment/ID``).

        Kept in the checkpoint's state under ``view``, which the API reads:
        ``schedule`` when :meth:`schedule_view` gives one; kinds add their own.
        """
        schedule = self.schedule_view()
        return {} if schedule is None else {"schedule": schedule}

    def checkpoint(self) -> Checkpoint:
        cp = super().checkpoint()
        extras = self.view_extras()
        if not extras:
            return cp
        return dataclasses.replace(cp, state={**cp.state, "view": extras})

    # -- from the device -------------------------------------------------
    async def on_telemetry(self, msg: Envelope) -> None:
        p = msg.payload
        if not isinstance(p, Mapping) or not isinstance(p.get("values"), Mapping):
            raise MalformedMessageError("telemetry needs a values map")
        seq = p.get("seq")
        now = self.ctx.clock.time()
        quality = Quality(p.get("quality", "good"))
        source_ts = float(p.get("ts") or 0.0)
        values = p["values"]
        self.twin.report_many(values, quality=quality, source_ts=source_ts, received_ts=now,
                              seq=int(seq) if isinstance(seq, int) else 0)
        if self._conditions:
            self.check_conditions()
        if p.get("initial"):
            # A value as it stood when the session (re)subscribed: not a new sample.
            if isinstance(seq, int) and not isinstance(seq, bool):
                self.state["seq"] = seq
            if self._has_lane:
                self.ctx.publish_view(self.lane_view())
            return
        points = 0
        for name, value in values.items():
            if name not in _NOT_DATA:
                points += _count_points(value)
        self.state["points"] = int(self.state.get("points", 0)) + points
        if source_ts > 0:
            self.ctx.observe(f"telemetry_lag_s.{self._protocol}", now - source_ts)
        if isinstance(seq, int) and not isinstance(seq, bool):
            last = int(self.state.get("seq", -1))
            if last >= 0 and seq > last + 1:
                self.state["lost"] = int(self.state.get("lost", 0)) + seq - last - 1
            if seq != last:
                self.state["samples"] = int(self.state.get("samples", 0)) + 1
            self.state["seq"] = seq
        if self._has_lane:
            self.ctx.publish_view(self.lane_view())

    def check_conditions(self) -> None:
        """Raise or clear the kind's alarm conditions from what the device reports."""
        reported = {k: v.value for k, v in self.twin.reported.items()}
        held = set(self.state.get("conditions") or ())
        now = {name for name, test in self._conditions.items() if test(reported)}
        latched: dict[str, float] = dict(self.state.get("latched") or {})
        for name, since in list(latched.items()):
            if name in now or self.ctx.clock.time() - since > LATCH_S:
                del latched[name]  # the value caught up, or never came
            else:
                now.add(name)
        self.state["latched"] = latched
        if now == held:
            return
        for name in sorted(now - held):
            self.ctx.emit("alarm", alarm=name)
        for name in sorted(held - now):
            self.ctx.emit("alarm_cleared", alarm=name)
        self.state["conditions"] = sorted(now)

    def comm_path(self) -> str:
        """The communication path the device is reached by (flood grouping of outages).

        Modbus and OPC UA devices behind one network host share it; MQTT devices
        share their broker.
        """
        endpoint = self.ctx.equipment.endpoint
        scheme, _, rest = endpoint.partition("://")
        if scheme in ("modbus", "opc.tcp", "opcua"):
            host = rest.split("/", 1)[0].rsplit(":", 1)[0]
            return f"net:{host}"
        return f"broker:{scheme or endpoint}"

    async def on_device_status(self, msg: Envelope) -> None:
        p = msg.payload if isinstance(msg.payload, Mapping) else {}
        online = bool(p.get("online"))
        was = bool(self.state.get("online"))
        self.state["online"] = online
        if online == was:
            return
        if not online:
            self.twin.degrade(Quality.BAD)
            self.ctx.emit("alarm", alarm="device_offline", severity="major",
                          reason=str(p.get("reason", "")), path=self.comm_path())
            return
        self.ctx.emit("alarm_cleared", alarm="device_offline")
        await self.reconcile()

    async def on_device_event(self, msg: Envelope) -> None:
        p = msg.payload if isinstance(msg.payload, Mapping) else {}
        event = str(p.get("event", ""))
        if not event:
            raise MalformedMessageError("device event without a name")
        fields = p.get("fields") if isinstance(p.get("fields"), Mapping) else {}
        self.ctx.emit("device_event", device_event=event,
                      **{f"field.{k}": v for k, v in (fields or {}).items()})
        condition = MOMENTARY_EVENTS.get(event)
        if condition is not None:
            self.ctx.emit("alarm", alarm=condition, momentary=True)
        condition = LATCHING_EVENTS.get(event)
        if condition is not None and condition in self._conditions:
            latched = dict(self.state.get("latched") or {})
            latched[condition] = self.ctx.clock.time()
            self.state["latched"] = latched
            held = set(self.state.get("conditions") or ())
            if condition not in held:
                self.ctx.emit("alarm", alarm=condition)
                self.state["conditions"] = sorted(held | {condition})

    async def reconcile(self) -> None:
        """Bring the device back to the desired state, field by field, by policy.

        Only setpoints the device does not hold are written
        (:meth:`pending_setpoints`, then :meth:`device_writes`): a restart or a
        reconnect never writes a value the device already has.
        """
        port = self.ctx.device
        pending = self.pending_setpoints()
        if port is None or not pending:
            return
        for name in [k for k in pending if port.policy(k) == "never"]:
            # A command register (a checkpoint from before its policy was known may hold
            # one): dropped, never sent again.
            del pending[name]
            self.twin.desired.pop(name, None)
        reapply = {k: v for k, v in pending.items() if port.policy(k) == "reapply"}
        for name in sorted(set(pending) - set(reapply)):
            self.ctx.emit("alarm", alarm="reconcile_required", severity="minor", field=name,
                          desired=str(pending[name]))
        if reapply:
            try:
                writes = await self.device_writes(port, reapply)
                await self.write_device(port, writes, f"reconcile-{self.ctx.id}-{self.version}")
            except (RejectedError, ProtocolError, DeviceUnavailableError) as exc:
                self.ctx.emit("alarm", alarm="reconcile_failed", severity="minor",
                              error=str(exc))

    async def write_device(self, port: DevicePort, writes: Mapping[str, Any],
                           command_id: str) -> Mapping[str, Any]:
        """Write ``writes`` (nothing when empty); returns what the device confirmed.

        Marks when the entity's last write ended (:attr:`wrote_ts`, on its clock),
        and whether it went unanswered (:attr:`write_unsure`: it may land later).
        """
        if not writes:
            return {}
        try:
            confirmed = await port.write(writes, command_id=command_id)
        except BaseException:
            self.write_unsure = True
            raise
        finally:
            self.wrote_ts = self.ctx.clock.time()
        return confirmed

    def pending_setpoints(self) -> dict[str, Any]:
        """Desired fields the device does not report holding (by name, by default)."""
        return self.twin.pending()

    async def device_writes(self, port: DevicePort, setpoints: Mapping[str, Any]) -> dict[str, Any]:
        """What to write so that the device holds ``setpoints`` (empty: it holds them).

        By default every setpoint is written, under the names :meth:`device_fields`
        gives; a kind whose device reports what it holds may write only the difference.
        Raises the :meth:`offline` refusal when the device does not answer.
        """
        # Right after a host starts, a device is "not online" only because its session has
        # not reached it yet: wait for that verdict rather than refuse a command it can take.
        if not port.online and not await port.settled():
            raise self.offline()
        return self.device_fields(setpoints)

    def offline(self) -> RejectedError:
        """The refusal of a setpoint while the device is offline (it stays desired)."""
        return RejectedError(f"{self.ctx.id} is offline: the setpoint is kept as desired and "
                             "reconciled on reconnect", code="device_offline")

    def device_fields(self, clean: Mapping[str, Any]) -> dict[str, Any]:
        """The device registers or keys that carry these setpoints (identity by default)."""
        return dict(clean)

    # -- commands --------------------------------------------------------
    @classmethod
    def effective(cls, twin: Mapping[str, Any]) -> dict[str, Any]:
        """Each writable field's effective value in a twin as :meth:`Twin.to_dict` gives it.

        The desired value where one is set, else what the device reports (a
        field known neither way is left out): what a crisis plan records
        before it sets the field, and puts back when it ends.
        """
        desired = twin.get("desired") or {}
        out = {k: desired[k] for k in cls.FIELDS if k in desired}
        reported = {k: v.get("value") for k, v in (twin.get("reported") or {}).items()
                    if isinstance(v, Mapping)}
        for name, value in cls.reported_fields(reported).items():
            if name in cls.FIELDS and name not in out:
                try:
                    out[name] = cls.FIELDS[name].check(name, value)
                except RejectedError:
                    continue  # a reading the field could not be set to: no baseline
        return out

    @classmethod
    def reported_fields(cls, reported: Mapping[str, Any]) -> dict[str, Any]:
        """The writable fields' values as the device reports them (by name, by default)."""
        return {k: reported[k] for k in cls.FIELDS if k in reported}

    @classmethod
    def check_inventory(cls, inventory: Inventory) -> None:
        """A kind that follows schedules reads them (:class:`ScheduleError` for a broken
        file)."""
        if cls.SCHEDULE_ATTR:
            builtin_schedules()

    @classmethod
    def check_record(cls, equipment: Equipment) -> list[tuple[KeyPath, str]]:
        """A schedule the record names (``attrs[SCHEDULE_ATTR]``) must be one of the
        shipped schedules, and one of this kind's."""
        name = equipment.attrs.get(cls.SCHEDULE_ATTR) if cls.SCHEDULE_ATTR else None
        if not name:
            return []
        where: KeyPath = ("attrs", cls.SCHEDULE_ATTR)
        if not isinstance(name, str):
            return [(where, f"expected the name of a schedule, got {shown(name)}")]
        refusal = builtin_schedules().refusal(name, cls.kind)
        return [] if refusal is None else [(where, refusal)]

    @classmethod
    def check_schedule_step(cls, setpoints: Mapping[str, Any]) -> list[tuple[str, str]]:
        """The problems of a schedule step's ``set`` for this kind, as ``(field, message)``:
        by default, each field by the kind's field table (:mod:`actors.schedule`)."""
        out: list[tuple[str, str]] = []
        for name, value in setpoints.items():
            spec = cls.FIELDS.get(name)
            if spec is None:
                out.append((name, f"{cls.kind} has no field {name!r} (fields: "
                                  f"{', '.join(sorted(cls.FIELDS)) or 'none'})"))
                continue
            try:
                spec.check(name, value)
            except RejectedError as exc:
                out.append((name, str(exc)))
        return out

    @classmethod
    def check_setpoints(cls, setpoints: Mapping[str, Any]) -> list[tuple[str, str]]:
        """What the kind refuses of valid field values beyond its field table, wherever they
        come from (a crisis plan's step, a schedule's), as ``(field, message)``: nothing by
        default (a crossroad: a plan number no signal plan has)."""
        return []

    @classmethod
    def describe_commands(cls, equipment: Equipment) -> list[dict[str, Any]]:
        """``set`` with the kind's :attr:`FIELDS` (none for a kind without one): what
        :meth:`validate_command` takes. A kind with more overrides both together."""
        return [set_form(cls.FIELDS)] if cls.FIELDS else []

    @classmethod
    def validate_command(cls, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` of ``set`` checked against the kind's :attr:`FIELDS`, as held.

        The one definition of what a kind accepts: the entity applies it to
        every command, and the admin backend to a submission before journaling
        it. Beyond the limits of every command
        (:func:`~runtime.commands.check_command_shape`), an action other than
        ``set``, an empty ``set``, an unknown field and a value its
        :class:`Field` refuses raise :class:`InvalidCommandError` naming the
        request field (``action``, ``params``, ``params.dim``).
        """
        params = check_command_shape(action, params)
        if action != "set":
            raise InvalidCommandError(f"{cls.kind} accepts no {shown(action)} command "
                                      "(only 'set')", field="action", code="unknown_action")
        if not params:
            raise InvalidCommandError("set needs at least one field", field="params")
        clean: dict[str, Any] = {}
        for name, value in params.items():
            where = f"params.{name}"
            spec = cls.FIELDS.get(name)
            if spec is None:
                raise InvalidCommandError(
                    f"{cls.kind} has no writable field {shown(name)} "
                    f"(writable: {', '.join(sorted(cls.FIELDS))})",
                    field=where, code="unknown_field")
            try:
                clean[name] = spec.check(name, value)
            except RejectedError as exc:
                raise InvalidCommandError(str(exc), field=where, code=exc.code) from None
        return clean

    async def apply_command(self, action: str, params: dict[str, Any]) -> Any:
        clean = self.validate_command(action, params)
        port = self.ctx.device
        # A command register (reconcile "never") is written, never kept as desired.
        kept = {k: v for k, v in clean.items() if port is None or port.policy(k) != "never"}
        self.twin.desired.update(kept)
        # Which command last set each field: a crisis plan restores only what it set itself.
        self.state["set_by"] = {**(self.state.get("set_by") or {}),
                                **dict.fromkeys(kept, self.current_command)}
        self.ctx.emit("setpoint", **{f"desired.{k}": v for k, v in clean.items()})
        if port is None:
            return {"desired": clean}
        try:
            writes = await self.device_writes(port, clean)
            try:
                confirmed = await self.write_device(port, writes, self.current_command)
            except DeviceUnavailableError:
                # A command register is never sent twice: whether it landed is unknown.
                if not self.READS_BACK or len(kept) != len(clean):
                    raise
                # An unanswered write may have landed: ask the device what it holds now
                # and write, once more, only what it still lacks (never a value twice).
                writes = await self.device_writes(port, clean)
                confirmed = await self.write_device(port, writes, self.current_command)
        except DeviceUnavailableError as exc:
            raise RejectedError(f"{self.ctx.id} did not answer: {exc}",
                                code="device_unavailable") from exc
        return {"desired": clean, "device": dict(confirmed)}
