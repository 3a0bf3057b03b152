"""The device sessions of one host: polls, subscriptions, liveness, writes.

A host builds one :class:`HostDevices` for the entities it owns
(``devices.manager:create`` is the factory the runtime is given). It reads the
field through the protocol sessions of this package and hands the results to
the entities as envelopes (see :mod:`runtime.device_port`):

* Modbus devices are polled at their profile's rate, one read covering every
  register (in requests of 125 registers at most); a device is offline after
  ``liveness_misses`` failed polls in a row, and is then retried with
  jittered, capped backoff (a circuit breaker: a dead controller costs one
  attempt per backoff step, not one per period).
  The units behind one gateway endpoint share a few TCP sessions
  (:data:`MODBUS_LANES`), each unit always the same one.
  At a cold start the first polls are spread over a period; a host that
  replaces a dead one (``options["replacing"]``) polls every device at once,
  since its entities' readings went stale with their previous host. A
  reading is handed to the entity before the device is announced online, so
  the entity reconciles against what the device holds now;
* OPC UA buildings are subscribed (data changes and events); a building whose
  nodes turn Bad is offline;
* MQTT devices are subscribed under their topics by one persistent session per
  host; a device is offline when its retained status says so or when it has
  been silent for ``liveness_misses`` telemetry periods.

A port also answers :meth:`~_Port.settled` (wait for the session's first
verdict on the device) and :meth:`~_Port.read` (a reading now, delivered to
the entity like any sample), so that a command never compares against a
twin older than the device.

Health flips are logged once each way. A malformed payload, a Modbus
exception or a bad OPC UA status is counted per entity and logged once per
kind of failure; it never stops a session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from devices import modbus, mqtt, mqtt_wire
from devices.profile import FieldSpec, Profile, builtin_profile
from runtime.broker_accounts import RUNTIME_CLIENT_PREFIX
from runtime.clock import clock_from_wire
from runtime.envelope import Envelope, MessageKind
from runtime.errors import (
    CommandpostError,
    DeviceUnavailableError,
    MalformedMessageError,
    ProtocolError,
    RejectedError,
)
from runtime.inventory import Equipment

if TYPE_CHECKING:
    from devices.opcua import SecurityConfig

log = logging.getLogger("commandpost.devices")

#: TCP sessions per Modbus endpoint (``options["modbus_lanes"]``).
MODBUS_LANES = 4

Deliver = Callable[[Envelope], None]


@dataclass
class DeviceState:
    """What the manager knows of one device."""

    equipment: Equipment
    profile: Profile
    online: bool = False
    last_seen: float = 0.0
    misses: int = 0
    last_seq: int | None = None
    bad: Counter[str] = field(default_factory=Counter)
    logged: set[str] = field(default_factory=set)
    # Set once the session knows whether the device answers (its first flip either way).
    verdict: asyncio.Event = field(default_factory=asyncio.Event)
    # One read of a device at a time, so its samples reach the entity in sequence order.
    reading: asyncio.Lock = field(default_factory=asyncio.Lock)


class _Port:
    """An entity's device port (see :class:`runtime.device_port.DevicePort`)."""

    def __init__(self, manager: HostDevices, state: DeviceState) -> None:
        self._manager = manager
        self._state = state

    @property
    def online(self) -> bool:
        return self._state.online

    def policy(self, field_name: str) -> str | None:
        return _policy(self._state.profile, field_name)

    async def settled(self) -> bool:
        st = self._state
        if not st.verdict.is_set():
            # A device that never answers gets its verdict from liveness; this bounds the wait.
            window = st.profile.poll_interval_s * st.profile.liveness_misses + st.profile.timeout_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(st.verdict.wait(), window)
        return st.online

    async def read(self) -> Mapping[str, Any]:
        return await self._manager.read(self._state)

    async def write(self, fields: Mapping[str, Any], *, command_id: str) -> Mapping[str, Any]:
        return await self._manager.write(self._state, fields, command_id)


def _block_item(name: str) -> tuple[str, int, str] | None:
    """``("lamp", 3, "dim")`` for ``"lamp.3.dim"``; None for any other name."""
    parts = name.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), parts[2]


def _joined(profile: Profile, fields: Mapping[str, Any],
            writes: Sequence[tuple[int, list[int]]],
            owners: Sequence[tuple[str, int] | None]) -> list[tuple[int, list[int]]]:
    """The register ranges to write, in order; a block repeat written whole is one range.

    When a write names every field of one repeat (``plan_table.2.*``, or the
    fields' bare names for every repeat: ``prio_id``, ``prio_command``, …), its
    ranges are joined where each starts at the end of the one before: the
    device gets the repeat in one request and judges it as a whole (a plan
    table slot half written could be refused, or run; a priority request is
    one command). Other ranges go one request each, as the device counts them.
    """
    whole: set[tuple[str, int]] = set()
    for block in profile.blocks:
        for n in {o[1] for o in owners if o is not None and o[0] == block.name}:
            if all(f"{block.name}.{n}.{f.name}" in fields or f.name in fields
                   for f in block.fields):
                whole.add((block.name, n))
    out: list[tuple[int, list[int]]] = []
    last: tuple[str, int] | None = None
    for (address, regs), owner in zip(writes, owners, strict=True):
        if (owner is not None and owner in whole and owner == last
                and out[-1][0] + len(out[-1][1]) == address):
            out[-1] = (out[-1][0], [*out[-1][1], *regs])
        else:
            out.append((address, list(regs)))
        last = owner
    return out


def _policy(profile: Profile, name: str) -> str | None:
    """The reconcile policy of writable ``name`` (a block's ``lamp.3.dim`` as its ``dim``)."""
    item = _block_item(name)
    if item is not None and any(b.name == item[0] for b in profile.blocks):
        specs: tuple[FieldSpec, ...] = profile.block(item[0]).fields
        name = item[2]
    else:
        specs = (*profile.fields, *(f for b in profile.blocks for f in b.fields))
    for spec in specs:
        if spec.name == name and spec.writable:
            return spec.reconcile
    return None


class HostDevices:
    """Every device session of one host."""

    def __init__(self, equipment: Sequence[Equipment], deliver: Deliver,
                 options: Mapping[str, Any]) -> None:
        self._deliver = deliver
        self._options = dict(options)
        self._rng = random.Random(str(options.get("host_id", "")))
        self._replacing = bool(options.get("replacing"))
        # Samples and events are stamped on the city's clock; polls keep the machine's pace.
        self._clock = clock_from_wire(options.get("clock"))
        self.devices: dict[str, DeviceState] = {}
        for eq in equipment:
            try:
                profile = builtin_profile(eq.profile)
            except CommandpostError as exc:
                log.error("%s: no device session (%s)", eq.id, exc)
                continue
            self.devices[eq.id] = DeviceState(eq, profile)
        self._tasks: list[asyncio.Task[None]] = []
        self._modbus: dict[str, tuple[Any, int]] = {}  # entity id -> (session, unit)
        # A few TCP sessions per controller endpoint, the unit ids behind it spread over
        # them by number (a device always uses the same one, so its requests stay in
        # order): a gateway of hundreds of cabinets on one session allows one request in
        # flight for all of them, and a host replacing a dead one reads them all at once.
        lanes = int(options.get("modbus_lanes", MODBUS_LANES))
        self._modbus_lanes = [modbus.ModbusSessions() for _ in range(max(1, lanes))]
        self._opcua: dict[str, Any] = {}
        self._mqtt: Any = None
        self._mqtt_telemetry: mqtt_wire.TelemetrySubscriber | None = None
        self._acks: dict[str, asyncio.Future[Mapping[str, Any]]] = {}
        # OPC UA message security from the service's options (None in the demo).
        sec = options.get("opcua_security") or {}
        self._opcua_security: SecurityConfig | None = None
        if sec:
            from devices.opcua import SecurityConfig

            self._opcua_security = SecurityConfig(**sec)
        self._by_topic: dict[str, str] = {}

    # -- lifecycle -------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        by_protocol: dict[str, list[DeviceState]] = {}
        for st in self.devices.values():
            by_protocol.setdefault(st.profile.protocol, []).append(st)
        for st in by_protocol.get("modbus", []):
            self._tasks.append(loop.create_task(self._poll_modbus(st),
                                                name=f"devices[{st.equipment.id}].poll"))
        for st in by_protocol.get("opcua", []):
            self._tasks.append(loop.create_task(self._watch_opcua(st),
                                                name=f"devices[{st.equipment.id}].opcua"))
        mqtt_devices = by_protocol.get("mqtt", [])
        if mqtt_devices:
            await self._start_mqtt(mqtt_devices)
            self._tasks.append(loop.create_task(self._mqtt_liveness(mqtt_devices),
                                                name="devices.mqtt.liveness"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        if self._mqtt_telemetry is not None:
            await self._mqtt_telemetry.stop()
        if self._mqtt is not None:
            await self._mqtt.stop()
        for sessions in self._modbus_lanes:
            with contextlib.suppress(CommandpostError):
                await sessions.close()
        for session in self._opcua.values():
            with contextlib.suppress(CommandpostError):
                await session.close()

    def port(self, entity_id: str) -> _Port | None:
        st = self.devices.get(entity_id)
        return _Port(self, st) if st is not None else None

    def online_count(self) -> int:
        return sum(1 for st in self.devices.values() if st.online)

    def status(self) -> dict[str, Any]:
        bad: Counter[str] = Counter()
        for st in self.devices.values():
            bad.update(st.bad)
        return {"devices": len(self.devices), "online": self.online_count(),
                "bad_input": dict(bad)}

    # -- shared ----------------------------------------------------------
    def _flip(self, st: DeviceState, online: bool, reason: str) -> None:
        st.verdict.set()
        if st.online == online:
            return
        st.online = online
        if online:
            log.info("%s back online", st.equipment.id)
        else:
            log.warning("%s offline: %s", st.equipment.id, reason)
        self._deliver(Envelope(target=st.equipment.id, type="device_status",
                               payload={"online": online, "reason": reason},
                               sender="devices", kind=MessageKind.EVENT))

    def _bad(self, st: DeviceState, kind: str, exc: BaseException) -> None:
        st.bad[kind] += 1
        if kind not in st.logged:
            st.logged.add(kind)
            log.warning("%s: %s (%s); counted, further ones not logged", st.equipment.id,
                        kind, exc)

    def _telemetry(self, st: DeviceState, values: Mapping[str, Any], seq: Any, ts: float,
                   quality: str = "good", *, initial: bool = False) -> None:
        st.last_seen = time.monotonic()
        payload: dict[str, Any] = {"values": dict(values), "seq": seq, "ts": ts,
                                   "quality": quality}
        if initial:
            payload["initial"] = True
        self._deliver(Envelope(target=st.equipment.id, type="telemetry", payload=payload,
                               sender=st.equipment.id, kind=MessageKind.TELEMETRY))

    def _backoff(self, attempt: int, base: float) -> float:
        step = min(10.0, base * float(2 ** min(attempt, 6)))
        return step * self._rng.uniform(0.8, 1.2)

    async def read(self, st: DeviceState) -> Mapping[str, Any]:
        """Read the device now; the sample also reaches the entity as telemetry.

        Only polled (Modbus) devices can be read on demand: the others raise
        :class:`RejectedError` with ``code="not_readable"``.
        """
        if st.profile.protocol != "modbus":
            raise RejectedError(f"{st.profile.name} devices publish; they cannot be read on "
                                "demand", code="not_readable")
        values = await self._read_modbus(st, urgent=True)
        st.misses = 0
        self._flip(st, True, "answering")
        return values

    async def write(self, st: DeviceState, fields: Mapping[str, Any],
                    command_id: str) -> Mapping[str, Any]:
        protocol = st.profile.protocol
        if protocol == "modbus":
            return await self._write_modbus(st, fields)
        if protocol == "opcua":
            return await self._write_opcua(st, fields)
        return await self._write_mqtt(st, fields, command_id)

    # -- Modbus ----------------------------------------------------------
    def _modbus_session(self, st: DeviceState) -> tuple[Any, int]:
        got = self._modbus.get(st.equipment.id)
        if got is None:
            host, port, unit = modbus.parse_endpoint(st.equipment.endpoint)
            lane = self._modbus_lanes[unit % len(self._modbus_lanes)]
            got = (lane.acquire(host, port, timeout_s=st.profile.timeout_s), unit)
            self._modbus[st.equipment.id] = got
        return got

    async def _read_modbus(self, st: DeviceState, *, urgent: bool = False) -> dict[str, Any]:
        """One sample of the device, handed to its entity (when its ``seq`` is new).

        Polls of one device never overlap. An ``urgent`` read (an entity's, for a command)
        does not wait for a poll queued behind other devices' polls: it takes its turn on
        the session ahead of them; the session serialises both, so samples still reach
        the entity in the order the device gave them.
        """
        if urgent:
            return await self._sample(st, urgent=True)
        async with st.reading:
            return await self._sample(st, urgent=False)

    async def _sample(self, st: DeviceState, *, urgent: bool) -> dict[str, Any]:
        attrs = st.equipment.attrs
        start, count = st.profile.register_span(attrs)
        session, unit = self._modbus_session(st)
        # The sample is stamped with the time it was asked for: the device's answer shows
        # it as it stood at some instant since, never before. A loop slow to take the
        # answer must not make an old state look newer than a write made meanwhile.
        asked = self._clock.time()
        regs = await session.read(unit, start, count, urgent=urgent)
        values = st.profile.decode_registers(start, regs, attrs)
        seq = values.get("seq")
        if seq != st.last_seq:
            st.last_seq = seq if isinstance(seq, int) else None
            self._telemetry(st, values, seq, asked)
        return values

    async def _poll_modbus(self, st: DeviceState) -> None:
        period = st.profile.poll_interval_s
        if not self._replacing:
            # A cold start of the whole city: spread the first polls over a period.
            await asyncio.sleep(self._rng.uniform(0, period))
        spread = self._replacing  # polled at once: take a random phase after the first poll
        failures = 0
        while True:
            t0 = time.monotonic()
            try:
                await self._read_modbus(st)
            except DeviceUnavailableError as exc:
                failures += 1
                st.misses += 1
                if st.misses >= st.profile.liveness_misses:
                    self._flip(st, False, str(exc))
                # Backoff is for a device known to be offline; one not reached yet since the
                # host started is asked again a period later (liveness counts periods).
                wait = self._backoff(failures, period) if st.verdict.is_set() and not st.online \
                    else period
                await asyncio.sleep(wait)
                continue
            except (ProtocolError, RejectedError) as exc:
                kind = getattr(exc, "code", type(exc).__name__)
                self._bad(st, f"modbus:{kind}", exc)
                st.misses += 1
                if st.misses >= st.profile.liveness_misses:
                    self._flip(st, False, str(exc))
                await asyncio.sleep(period)
                continue
            failures = 0
            st.misses = 0
            self._flip(st, True, "answering")
            if spread:
                spread = False
                await asyncio.sleep(self._rng.uniform(0, period))
                continue
            await asyncio.sleep(max(0.0, period - (time.monotonic() - t0)))

    async def _write_modbus(self, st: DeviceState, fields: Mapping[str, Any]) -> Mapping[str, Any]:
        session, unit = self._modbus_session(st)
        profile = st.profile
        top = {f.name for f in profile.fields}
        # Every value is encoded (and checked) before the first is sent; then they go in
        # one turn on the session, not one turn per register range.
        writes: list[tuple[int, list[int]]] = []
        # Which repeat each range writes (None: a top field, or every repeat).
        owners: list[tuple[str, int] | None] = []
        for name, value in fields.items():
            if name in top:
                writes.append(profile.encode_field(name, value))
                owners.append(None)
                continue
            item = _block_item(name)
            if item is not None:
                # One repeat of a block (``lamp.3.dim``, numbered from 1 as OPC UA names them).
                block_name, n, field_name = item
                try:
                    repeats = profile.count(block_name, st.equipment.attrs)
                except KeyError:
                    repeats = 0  # no such block
                if not 1 <= n <= repeats:
                    raise RejectedError(f"{profile.name} has no {block_name} {n}",
                                        code="unknown_field")
                writes.append(profile.encode_block_field(block_name, n - 1, field_name, value))
                owners.append((block_name, n))
                continue
            block = next((b for b in profile.blocks if any(f.name == name for f in b.fields)),
                         None)
            if block is None:
                raise RejectedError(f"{profile.name} has no field {name!r}", code="unknown_field")
            for i in range(profile.count(block.name, st.equipment.attrs)):
                writes.append(profile.encode_block_field(block.name, i, name, value))
                owners.append((block.name, i + 1))
        await session.write_many(unit, _joined(profile, fields, writes, owners), urgent=True)
        return dict(fields)

    # -- OPC UA ----------------------------------------------------------
    async def _watch_opcua(self, st: DeviceState) -> None:
        # OPC UA's library is imported by the hosts that hold an OPC UA device only.
        from devices import opcua

        eq, profile = st.equipment, st.profile
        refs = opcua.profile_nodes(profile, eq.id, eq.attrs)
        by_node = {r.node_id: r for r in refs}
        values: dict[str, Any] = {}
        attempt = 0

        def on_value(node_id: str, value: Any, quality: str, ts: float) -> None:
            ref = by_node.get(node_id)
            if ref is None:
                return
            if quality == "bad":
                self._flip(st, False, "nodes report Bad quality")
                return
            values[ref.key] = value
            self._flip(st, True, "nodes Good")
            # A subscription first delivers each node's current value, stamped when it
            # last changed: the twin takes it, but it is no new sample of the device.
            initial = node_id not in delivered
            delivered.add(node_id)
            # One change, one small sample: the entity updates just that field.
            self._telemetry(st, {ref.key: value}, values.get("seq"), ts, quality,
                            initial=initial)

        def on_event(building: str, event: str, fields: Mapping[str, Any]) -> None:
            if building != eq.id:
                return
            self._deliver(Envelope(target=eq.id, type="device_event",
                                   payload={"event": event, "ts": self._clock.time(),
                                            "fields": dict(fields)},
                                   sender=eq.id, kind=MessageKind.EVENT))

        while True:
            session = opcua.OpcUaSession(eq.endpoint, timeout_s=profile.timeout_s,
                                         security=self._opcua_security)
            delivered: set[str] = set()
            try:
                await session.connect()
                self._opcua[eq.id] = session
                await session.subscribe([r.node_id for r in refs], on_value,
                                        profile.poll_interval_s)
                await session.subscribe_events(on_event)
                attempt = 0
                # Heartbeat: a read per period notices a dead server or connection.
                heartbeat = [refs[0].node_id]
                while True:
                    await asyncio.sleep(profile.poll_interval_s)
                    await session.read(heartbeat)
            except DeviceUnavailableError as exc:
                self._flip(st, False, str(exc))
            except (ProtocolError, RejectedError) as exc:
                self._bad(st, f"opcua:{getattr(exc, 'code', type(exc).__name__)}", exc)
            finally:
                self._opcua.pop(eq.id, None)
                with contextlib.suppress(CommandpostError):
                    await session.close()
            attempt += 1
            await asyncio.sleep(self._backoff(attempt, profile.poll_interval_s))

    async def _write_opcua(self, st: DeviceState, fields: Mapping[str, Any]) -> Mapping[str, Any]:
        session = self._opcua.get(st.equipment.id)
        if session is None:
            raise DeviceUnavailableError(f"{st.equipment.id}: no OPC UA session")
        from devices import opcua

        refs = {r.key: r for r in opcua.profile_nodes(st.profile, st.equipment.id,
                                                      st.equipment.attrs)}
        for name, value in fields.items():
            targets = [refs[name]] if name in refs else [
                r for r in refs.values() if r.block and r.spec.name == name]
            if not targets or not all(r.spec.writable for r in targets):
                raise RejectedError(f"{st.profile.name} has no writable {name!r}",
                                    code="unknown_field")
            for ref in targets:
                raw = value
                if ref.spec.choices and isinstance(value, str):
                    raw = ref.spec.choices.index(value)
                await session.write(ref.node_id, raw, ref.spec.type)
        return dict(fields)

    # -- MQTT ------------------------------------------------------------
    async def _start_mqtt(self, states: list[DeviceState]) -> None:
        url = str(self._options.get("mqtt_url") or "")
        if not url:
            log.error("no MQTT URL: %d MQTT devices have no session", len(states))
            return
        # The runtime's client ids share a prefix no field account may take (broker_accounts).
        client_id = RUNTIME_CLIENT_PREFIX + str(self._options.get("host_id", "host"))
        session = mqtt.MqttSession(url, client_id=client_id, clean_session=False)
        session.on_message(self._on_mqtt)
        self._mqtt = session
        # Telemetry (QoS 0, thousands a second) comes on a lean connection of its own;
        # status, events and acks on the persistent session.
        telemetry = mqtt_wire.TelemetrySubscriber(url, f"{client_id}-telemetry",
                                                  self._on_telemetry)
        self._mqtt_telemetry = telemetry
        filters: list[str] = []
        for st in states:
            eq = st.equipment
            base = mqtt.topic(eq.municipality, eq.kind, eq.id, "telemetry").rsplit("/", 1)[0]
            self._by_topic[base] = eq.id
            telemetry.add_filters([base + "/telemetry"])
            filters += [f"{base}/{leaf}" for leaf in ("status", "event", "ack")]
        await session.start()
        await telemetry.start()
        await asyncio.gather(*(session.subscribe(f, qos=1) for f in filters))

    def _on_telemetry(self, topic: str, payload: bytes) -> None:
        st = self.devices.get(self._by_topic.get(topic[:-10], ""))  # less "/telemetry"
        if st is None:
            return
        try:
            data = mqtt.decode_payload(st.profile, payload)
        except (MalformedMessageError, ProtocolError) as exc:
            self._bad(st, f"mqtt:telemetry:{type(exc).__name__}", exc)
            return
        self._flip(st, True, "publishing")
        self._telemetry(st, data, data.get("seq"), float(data.get("ts") or self._clock.time()))

    def _on_mqtt(self, topic: str, payload: bytes) -> None:
        base, _, leaf = topic.rpartition("/")
        eid = self._by_topic.get(base)
        st = self.devices.get(eid) if eid else None
        if st is None:
            return
        try:
            if leaf == "telemetry":
                # Telemetry has its own connection; a session subscribed to it before
                # (persistent sessions remember) must not apply it twice.
                return
            if leaf == "status":
                is_online = mqtt.decode_status(payload)
                st.last_seen = time.monotonic()
                self._flip(st, is_online, "status online" if is_online else "status offline")
            elif leaf == "event":
                data = mqtt.decode_event(st.profile, payload)
                self._deliver(Envelope(target=st.equipment.id, type="device_event",
                                       payload={"event": data.get("event"),
                                                "ts": data.get("ts"),
                                                "fields": {k: v for k, v in data.items()
                                                           if k not in ("event", "ts")}},
                                       sender=st.equipment.id, kind=MessageKind.EVENT))
            elif leaf == "ack":
                ack = mqtt.decode_ack(payload)
                fut = self._acks.pop(str(ack.get("command_id")), None)
                if fut is not None and not fut.done():
                    fut.set_result(ack)
        except (MalformedMessageError, ProtocolError) as exc:
            self._bad(st, f"mqtt:{leaf}:{type(exc).__name__}", exc)

    async def _mqtt_liveness(self, states: list[DeviceState]) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for st in states:
                limit = st.profile.poll_interval_s * st.profile.liveness_misses
                if st.online and now - st.last_seen > limit:
                    self._flip(st, False, f"silent for {now - st.last_seen:.0f}s")

    async def _write_mqtt(self, st: DeviceState, fields: Mapping[str, Any],
                          command_id: str) -> Mapping[str, Any]:
        if self._mqtt is None:
            raise DeviceUnavailableError("no MQTT session")
        eq = st.equipment
        for name in fields:
            if _policy(st.profile, name) is None:
                raise RejectedError(f"{st.profile.name} has no writable {name!r}",
                                    code="unknown_field")
        fut: asyncio.Future[Mapping[str, Any]] = asyncio.get_running_loop().create_future()
        self._acks[command_id] = fut
        try:
            await self._mqtt.publish(
                mqtt.topic(eq.municipality, eq.kind, eq.id, "cmd"),
                mqtt.encode_payload({"command_id": command_id, "action": "set",
                                     "params": dict(fields)}), qos=1)
            ack = await asyncio.wait_for(fut, max(2.0, st.profile.timeout_s * 4))
        except TimeoutError as exc:
            raise DeviceUnavailableError(f"{eq.id} did not acknowledge {command_id}") from exc
        finally:
            self._acks.pop(command_id, None)
        if not ack.get("ok"):
            raise RejectedError(f"{eq.id} refused: {ack.get('error', 'refused')}",
                                code="device_refused")
        return dict(fields)


def create(equipment: Sequence[Equipment], deliver: Deliver,
           options: Mapping[str, Any]) -> HostDevices:
    """The device-manager factory hosts are given (``devices.manager:create``)."""
    return HostDevices(equipment, deliver, options)
