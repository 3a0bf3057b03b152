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

import math
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from runtime.commands import check_command_shape, shown
from runtime.device_port import DevicePort
from runtime.entity import Checkpoint, Entity
from runtime.envelope import Envelope, MessageKind
from runtime.errors import (
    DeviceUnavailableError,
    InvalidCommandError,
    MalformedMessageError,
    ProtocolError,
    RejectedError,
)
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


#: Keys of a sample that number or date it: not data points.
_NOT_DATA = frozenset({"seq", "ts"})


def _count_points(value: Any) -> int:
    """Data points in one reported value: a block (list of dicts) counts each of its values."""
    if isinstance(value, list):
        return sum(len(v) if isinstance(v, Mapping) else 1 for v in value)
    return 1


#: Bit 0 of a lamp's ``fault_bits``: the lamp has failed (the cabinet reports it).
LAMP_FAILED = 0x0001
#: Device events that are alarms by themselves: they have no "cleared" state at the
#: device, so the alarm returns to normal at once and waits for an acknowledgement.
MOMENTARY_EVENTS: Mapping[str, str] = {"door_forced": "forced_door", "tamper": "camera_tamper"}
#: Device events that announce a condition the device also reports as a value (a fire
#: zone's alarm node): the event raises the alarm at once, and the condition is held
#: until the reported value has caught up with it (or :data:`LATCH_S` has passed).
LATCHING_EVENTS: Mapping[str, str] = {"fire": "fire", "intrusion": "intrusion"}
LATCH_S = 10.0


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
        "controller_fault": lambda r: bool(r.get("fault_bits")),
    },
    "access_terminal": {
        "controller_fault": lambda r: bool(r.get("fault_bits")),
    },
    "camera": {
        "camera_fault": lambda r: r.get("health") == "failed",
    },
}


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
      ``reapply`` writes it again, ``alarm`` raises an alarm for an operator.
    """

    FIELDS: ClassVar[Mapping[str, Field]] = {}
    #: Whether :meth:`device_writes` reads the device and returns only what it lacks: a
    #: write that got no answer is then checked and completed once, not failed.
    READS_BACK: ClassVar[bool] = False

    async def on_start(self, saved: Checkpoint | None) -> None:
        await super().on_start(saved)
        self.state.setdefault("samples", 0)
        self.state.setdefault("lost", 0)
        self.state.setdefault("points", 0)
        self._protocol = self.ctx.equipment.endpoint.split(":", 1)[0] or "none"
        # Only a kind with a priority lane reads the published view: others skip the copy.
        self._has_lane = type(self).on_priority is not Entity.on_priority
        self.state.setdefault("seq", -1)
        self.state.setdefault("conditions", [])
        self._conditions = CONDITIONS.get(self.kind, {})
        # Readings older than this incarnation may predate a write of the previous one.
        self.wrote_ts = self.ctx.clock.time()
        self.write_unsure = False
        port = self.ctx.device
        self.state["online"] = bool(port is not None and port.online)

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
                self.ctx.publish_view({k: v.value for k, v in self.twin.reported.items()})
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
            self.ctx.publish_view({k: v.value for k, v in self.twin.reported.items()})

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
        self.twin.desired.update(clean)
        # Which command last set each field: a crisis plan restores only what it set itself.
        self.state["set_by"] = {**(self.state.get("set_by") or {}),
                                **dict.fromkeys(clean, self.current_command)}
        self.ctx.emit("setpoint", **{f"desired.{k}": v for k, v in clean.items()})
        port = self.ctx.device
        if port is None:
            return {"desired": clean}
        try:
            writes = await self.device_writes(port, clean)
            try:
                confirmed = await self.write_device(port, writes, self.current_command)
            except DeviceUnavailableError:
                if not self.READS_BACK:
                    raise
                # An unanswered write may have landed: ask the device what it holds now
                # and write, once more, only what it still lacks (never a value twice).
                writes = await self.device_writes(port, clean)
                confirmed = await self.write_device(port, writes, self.current_command)
        except DeviceUnavailableError as exc:
            raise RejectedError(f"{self.ctx.id} did not answer: {exc}",
                                code="device_unavailable") from exc
        return {"desired": clean, "device": dict(confirmed)}


class Crossroad(EquipmentEntity):
    kind = "crossroad"
    FIELDS = {
        "plan": Field(int, 1, 32),
        "mode": Field(str, choices=("auto", "manual", "flashing", "off")),
    }


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
    FIELDS = {"on": Field(bool), "dim": Field(float, 0, 100)}
    READS_BACK = True

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
        broadcast = frozenset(name for name in setpoints
                              if port.policy(f"{BROADCAST}{name}") is not None)
        return lamp_writes(setpoints, lamps, broadcast=broadcast)


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


class Building(EquipmentEntity):
    kind = "building"
    FIELDS = {"mode": Field(str, choices=("occupied", "unoccupied", "lockdown"))}


class Camera(EquipmentEntity):
    kind = "camera"
    FIELDS = {"preset": Field(int, 0, 255), "recording": Field(bool)}


#: The entity id of the dispatch coordinator, to which service vehicles report.
DISPATCH = "dispatch"
#: A service vehicle reports to dispatch at once when its status, job or session
#: changes, otherwise at most this often while it moves, ...
VEHICLE_REPORT_S = 5.0
#: ... and at least this often when nothing changes (a restarted dispatch relearns it).
VEHICLE_KEEPALIVE_S = 60.0
#: Moves shorter than this (GNSS jitter of a parked vehicle) are not worth a report.
_VEHICLE_MOVED_M = 10.0
_M_PER_DEG = 111_320.0
#: What dispatch may set on a service vehicle's telematics unit (action ``job``).
JOB_FIELDS: Mapping[str, Field] = {
    "job": Field(str, max_len=64),
    "job_lat": Field(float, -90, 90),
    "job_lon": Field(float, -180, 180),
}


class Vehicle(EquipmentEntity):
    """A bus or a geo-tracked service vehicle; operators set its crew ``message``.

    A service vehicle (one with a ``role``) is part of the dispatch fleet:

    * it sends entity ``dispatch`` a ``vehicle_state`` message (telemetry kind:
      a full mailbox keeps the latest) with its position, ``status``
      (``available``, ``busy``, ``out_of_service``), crew progress on its
      ``job`` (``job_state``: ``en_route``, ``on_site``, ``done``), whether
      its device is online, its ``role`` and ``radio``: at once when any of
      these but the position changes, at most every :data:`VEHICLE_REPORT_S`
      while it moves, at least every :data:`VEHICLE_KEEPALIVE_S`;
    * it takes action ``job`` ``{"job", "job_lat", "job_lon"}`` from dispatch
      alone (never from the journal: operators go through the dispatch
      coordinator), written to its telematics unit as desired state, so that
      a vehicle that reconnects gets its job again.
    """

    kind = "vehicle"
    FIELDS = {"message": Field(str, max_len=200)}

    async def on_start(self, saved: Checkpoint | None) -> None:
        await super().on_start(saved)
        attrs = self.ctx.equipment.attrs
        self._fleet = isinstance(attrs.get("role"), str) and not attrs.get("line")
        self._sender = ""
        self._reported: tuple[Any, ...] = ()
        self._reported_at = -math.inf
        self._reported_pos: tuple[float, float] | None = None

    async def on_command(self, msg: Envelope) -> dict[str, Any]:
        self._sender = msg.sender
        try:
            return await super().on_command(msg)
        finally:
            self._sender = ""

    async def apply_command(self, action: str, params: dict[str, Any]) -> Any:
        if action != "job":
            return await super().apply_command(action, params)
        if self._sender != DISPATCH or not self._fleet:
            raise RejectedError(f"{self.ctx.id} takes jobs from dispatch only",
                                code="unknown_action")
        clean: dict[str, Any] = {}
        for name, spec in JOB_FIELDS.items():
            if name not in params:
                raise RejectedError(f"a job needs {name}", code="bad_value")
            clean[name] = spec.check(name, params[name])
        self.twin.desired.update(clean)
        port = self.ctx.device
        if port is None:
            return {"desired": clean}
        try:
            writes = await self.device_writes(port, clean)
            confirmed = await port.write(writes, command_id=self.current_command)
        except DeviceUnavailableError as exc:
            raise RejectedError(f"{self.ctx.id} did not answer: {exc}",
                                code="device_unavailable") from exc
        return {"desired": clean, "device": dict(confirmed)}

    async def on_telemetry(self, msg: Envelope) -> None:
        await super().on_telemetry(msg)
        if self._fleet:
            self._report_to_dispatch()

    async def on_device_status(self, msg: Envelope) -> None:
        await super().on_device_status(msg)
        if self._fleet:
            self._report_to_dispatch()

    def _report_to_dispatch(self) -> None:
        reported = {k: v.value for k, v in self.twin.reported.items()}
        lat, lon = reported.get("lat"), reported.get("lon")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lat, lon)):
            return  # no position yet: nothing dispatch could use
        assert isinstance(lat, int | float) and isinstance(lon, int | float)
        status = reported.get("status")
        online = bool(self.state.get("online"))
        key = (status, reported.get("job"), reported.get("job_state"), online)
        now = self.ctx.clock.time()
        since = now - self._reported_at
        if key == self._reported:
            if since < VEHICLE_REPORT_S:
                return
            last = self._reported_pos
            moved = last is None or _moved_m(last, (float(lat), float(lon))) >= _VEHICLE_MOVED_M
            if not moved and since < VEHICLE_KEEPALIVE_S:
                return
        self._reported, self._reported_at = key, now
        self._reported_pos = (float(lat), float(lon))
        attrs = self.ctx.equipment.attrs
        self.ctx.send(Envelope(
            target=DISPATCH, type="vehicle_state", sender=self.ctx.id,
            kind=MessageKind.TELEMETRY,
            payload={"ts": now, "municipality": self.ctx.equipment.municipality,
                     "role": str(attrs.get("role")), "radio": attrs.get("radio") is True,
                     "lat": float(lat), "lon": float(lon),
                     "status": status if isinstance(status, str) else "",
                     "job": str(reported.get("job") or ""),
                     "job_state": str(reported.get("job_state") or ""), "online": online}))


def _moved_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """A short distance in metres (flat-earth: only compared with a few metres)."""
    dy = (b[0] - a[0]) * _M_PER_DEG
    dx = (b[1] - a[1]) * _M_PER_DEG * math.cos(math.radians(a[0]))
    return math.hypot(dx, dy)


class AccessTerminal(EquipmentEntity):
    kind = "access_terminal"
    FIELDS = {"bollard": Field(str, choices=("up", "down"))}

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
