"""Simulated field devices, speaking the same protocols and profiles as the real ones.

The Modbus simulators share :class:`ModbusSimulator`: built from the inventory's
equipment of one kind and the kind's profile, it starts one
:class:`~devices.modbus.ModbusServer` per port named by the endpoints (many unit
ids per port), keeps one model per piece of equipment, and after every
:meth:`~ModbusSimulator.tick` writes each model's values into the registers
the profile names. A client's write is decoded with the same profile and handed
to the model, which may refuse it with a Modbus exception code. The wall-clock
time a write request arrived is taken before anything else is done with it and
given, with its decoded values, to :meth:`ModbusSimulator.received` (a traffic
controller logs its priority requests there).

A device numbers its samples: every read that covers its ``seq`` register is
answered as a new sample with the next ``seq`` (unless the simulator is held,
when the same sample is answered again), so a poller can count what it missed.
Each simulator is a :class:`~devices.sim.control.ControlTarget` of the control
channel: per-device counters of samples emitted and writes received, holding,
offline devices and named faults.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from devices.modbus import ModbusServer, parse_endpoint
from devices.profile import BlockSpec, FieldSpec, Profile
from devices.sim.control import DeviceCounters
from runtime.clock import Clock, SystemClock
from runtime.errors import ConfigError, ProtocolError, RejectedError
from runtime.inventory import Equipment

__all__ = [
    "EXC_DEVICE_BUSY",
    "EXC_DEVICE_FAILURE",
    "EXC_ILLEGAL_ADDRESS",
    "EXC_ILLEGAL_VALUE",
    "DeviceModel",
    "ModbusSimulator",
    "SimCounters",
]

_log = logging.getLogger(__name__)

#: Modbus exception codes a model answers with when it refuses a write.
EXC_ILLEGAL_ADDRESS: Final = 2
EXC_ILLEGAL_VALUE: Final = 3
EXC_DEVICE_FAILURE: Final = 4
EXC_DEVICE_BUSY: Final = 6


class DeviceModel(abc.ABC):
    """The behaviour of one simulated device, in the profile's engineering units."""

    @abc.abstractmethod
    def values(self) -> dict[str, Any]:
        """Every profile field but ``seq`` (blocks as lists of dicts), as the device shows them."""

    @abc.abstractmethod
    def apply(self, block: str | None, index: int, name: str, value: Any) -> int | None:
        """A client wrote ``value`` to ``name`` (of repeat ``index`` of ``block``, if any).

        Returns ``None`` when accepted, else the Modbus exception code answered.
        """

    def check_write(self, writes: Sequence[tuple[str | None, int, str, Any]]) -> int | None:
        """The exception code refusing a client's write request as a whole, or ``None``.

        Asked with every value of one request (``(block, index, name, value)``) before
        any is applied, so that a device may judge what they make together (a plan
        table that would be unsafe) and refuse all of them.
        """
        return None

    def applied(self, writes: Sequence[tuple[str | None, int, str, Any]]) -> None:
        """Every value of one client's write request was applied (``(block, index, name,
        value)``): a device that takes a request as one command (a priority request
        written whole) acts on it here."""
        return None

    def fanout(self, block: str | None, index: int, name: str,
               value: Any) -> tuple[int, int] | None:
        """``(changed, unchanged)`` points a write of ``value`` to ``name`` would set, when it
        sets more than its own register (a broadcast to every lamp); ``None`` otherwise.

        Asked before :meth:`apply`, so that the counters count each point a
        broadcast actuates (or writes again), as if each had been written alone.
        """
        return None

    def counts_as_write(self, block: str | None, name: str) -> bool:
        """Whether a write to ``name`` is a write to the device's points, counted as one
        (a setting that actuates nothing by itself, such as a timed step armed, is not)."""
        return True

    @abc.abstractmethod
    def advance(self, dt: float) -> None:
        """Move the model ``dt`` seconds forward."""


@dataclass(slots=True)
class SimCounters:
    """What a simulator has seen: clients' writes and injected faults."""

    writes_seen: int = 0
    writes_refused: int = 0
    faults_injected: int = 0
    ticks: int = 0


M = TypeVar("M", bound=DeviceModel)

#: Devices a tick advances between two chances for the servers to answer.
_TICK_SLICE: Final = 25
#: The encodings a simulator remembers per field before it starts again (a counter's
#: values never repeat; a lamp's dim level or a phase number take a few values).
_MEMO_SIZE: Final = 512


@dataclass(frozen=True, slots=True)
class _Block:
    """Where a block's repeats lie."""

    name: str
    base: int
    stride: int

    def __init__(self, block: BlockSpec) -> None:
        if block.base is None or block.stride is None:
            raise ConfigError(f"block {block.name!r} has no register layout")
        object.__setattr__(self, "name", block.name)
        object.__setattr__(self, "base", block.base)
        object.__setattr__(self, "stride", block.stride)


class _Codec:
    """One field's register encoding, remembered per value: a cabinet's registers are
    written again for every read after a tick, and most of its values (dim levels,
    flags, a stage) are the same as the time before."""

    __slots__ = ("memo", "name", "offset", "spec")

    def __init__(self, spec: FieldSpec) -> None:
        if spec.address is None:
            raise ConfigError(f"field {spec.name!r} has no register address")
        self.spec = spec
        self.name = spec.name
        self.offset = spec.address  # in the profile, or in one repeat of its block
        self.memo: dict[tuple[type, Any], list[int]] = {}

    def encode(self, value: Any) -> list[int]:
        """``spec.encode(value)``, which raises as it does."""
        # The type is part of the key: True == 1 and 1 == 1.0, which a field encodes
        # (or refuses) differently.
        key = (value.__class__, value)
        raw = self.memo.get(key)
        if raw is None:
            raw = self.spec.encode(value)
            if len(self.memo) >= _MEMO_SIZE:
                self.memo.clear()
            self.memo[key] = raw
        return raw


@dataclass(slots=True)
class _Device(Generic[M]):
    equipment: Equipment
    server: ModbusServer
    unit: int
    model: M
    span: tuple[int, int]
    counters: DeviceCounters
    points: int
    seq: int = 0
    stale: bool = False  # the model moved since its registers were written


class ModbusSimulator(abc.ABC, Generic[M]):
    """Simulated Modbus devices of one kind behind their endpoints' ports.

    ``tick_hz`` is the rate of the background ticker :meth:`start` runs on
    ``clock`` (pass ``autotick=False`` to drive :meth:`tick` by hand). ``seq``
    of a device numbers the samples it answered: each read covering the ``seq``
    register is a new sample, unless :meth:`hold` is on.
    """

    kind: str = ""

    def __init__(
        self,
        equipment: Sequence[Equipment],
        profile: Profile,
        *,
        clock: Clock | None = None,
        tick_hz: float = 10.0,
        autotick: bool = True,
    ) -> None:
        if profile.protocol != "modbus":
            raise ConfigError(f"profile {profile.name!r} is {profile.protocol}, not modbus")
        if not tick_hz > 0:
            raise ConfigError(f"tick_hz must be > 0, got {tick_hz!r}")
        self.profile = profile
        self.clock: Clock = clock or SystemClock()
        self.tick_hz = float(tick_hz)
        self.autotick = autotick
        self.counters = SimCounters()
        self.servers: dict[int, ModbusServer] = {}
        self._devices: dict[str, _Device[M]] = {}
        self._by_unit: dict[tuple[int, int], _Device[M]] = {}
        self._task: asyncio.Task[None] | None = None
        self._held = False
        seq_spec = next((f for f in profile.fields if f.name == "seq"), None)
        if seq_spec is None or seq_spec.address is None:
            raise ConfigError(f"profile {profile.name!r} has no seq register")
        self._seq_spec = seq_spec
        self._field_codecs = [_Codec(spec) for spec in profile.fields]
        self._block_codecs: list[tuple[_Block, list[_Codec]]] = [
            (_Block(block), [_Codec(spec) for spec in block.fields]) for block in profile.blocks]
        sizes: dict[tuple[int, int], int] = {}
        for eq in equipment:
            if self.kind and eq.kind != self.kind:
                raise ConfigError(f"{type(self).__name__}: {eq.id} is a {eq.kind}, not {self.kind}")
            host, port, unit = parse_endpoint(eq.endpoint)
            if (port, unit) in sizes:
                raise ConfigError(f"{eq.id}: unit {unit} on port {port} is used twice")
            span = profile.register_span(eq.attrs)
            sizes[(port, unit)] = span[0] + span[1]
            server = self.servers.get(port)
            if server is None:
                server = ModbusServer(port, (), host=host, on_write=self._hook(port),
                                      on_read=self._read_hook(port))
                self.servers[port] = server
            server.add_unit(unit, span[0] + span[1])
            points = sum(1 for f in profile.fields if f.name != "seq") + sum(
                len(b.fields) * profile.count(b.name, eq.attrs) for b in profile.blocks)
            device = _Device(eq, server, unit, self.make_model(eq), span,
                             DeviceCounters("modbus", profile.name), points)
            self._devices[eq.id] = device
            self._by_unit[(port, unit)] = device
        for device in self._devices.values():
            self._publish(device)

    @abc.abstractmethod
    def make_model(self, equipment: Equipment) -> M:
        """The model of one piece of equipment."""

    # -- lifecycle

    async def start(self) -> None:
        """Listen on every port, then tick in the background (unless ``autotick`` is off)."""
        try:
            for server in self.servers.values():
                await server.start()
        except BaseException:
            await self.stop()
            raise
        if self.autotick and self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{type(self).__name__} ticker")

    async def stop(self) -> None:
        """Stop ticking and close every server."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # gather hands the ticker's CancelledError back as a value, yet still
            # raises if stop() itself is cancelled.
            await asyncio.gather(task, return_exceptions=True)
        for server in self.servers.values():
            await server.stop()

    async def _run(self) -> None:
        period = 1.0 / self.tick_hz
        last = self.clock.monotonic()
        while True:
            # One tick per period of the machine's time, advancing the models by the
            # city's time elapsed (``speed`` times more on an accelerated clock).
            await self.clock.sleep(period * self.clock.speed)
            now = self.clock.monotonic()
            try:
                await self.tick(now - last)
            except Exception:
                _log.exception("%s: tick failed", type(self).__name__)
            last = now

    async def tick(self, dt: float) -> None:
        """Advance every model by ``dt`` seconds; registers follow at the next read.

        A thousand cabinets take a good part of a second to advance: the tick
        yields to the servers every :data:`_TICK_SLICE` devices so that no client
        waits for it, and the registers of a device are written when it is read
        (or written to), not for every tick in between.
        """
        if dt < 0:
            raise ValueError(f"dt must be >= 0, got {dt!r}")
        self.counters.ticks += 1
        for n, device in enumerate(self._devices.values(), 1):
            device.model.advance(dt)
            device.stale = True
            if n % _TICK_SLICE == 0:
                await asyncio.sleep(0)

    # -- access

    @property
    def ids(self) -> tuple[str, ...]:
        """Equipment ids simulated, in inventory order."""
        return tuple(self._devices)

    def model(self, equipment_id: str) -> M:
        """The model of ``equipment_id`` (:class:`KeyError` if not simulated here)."""
        return self._devices[equipment_id].model

    def location(self, equipment_id: str) -> tuple[ModbusServer, int]:
        """The server and unit id answering for ``equipment_id``."""
        device = self._devices[equipment_id]
        return device.server, device.unit

    def seq(self, equipment_id: str) -> int:
        """The device's current sample sequence number."""
        return self._devices[equipment_id].seq

    def registers(self, equipment_id: str) -> list[int]:
        """The device's registers over its profile span."""
        device = self._devices[equipment_id]
        if device.stale:
            self._publish(device)
        return device.server.get(device.unit, *device.span)

    # -- fault injection, by equipment id

    def offline(self, equipment_id: str, on: bool = True, *, silent: bool = False) -> None:
        """Take a device off the bus (exception 11, or no answer with ``silent``)."""
        server, unit = self.location(equipment_id)
        server.offline(unit, on, silent=silent)
        self.counters.faults_injected += on

    def exception(self, equipment_id: str, code: int | None) -> None:
        """Answer every request to the device with Modbus exception ``code``."""
        server, unit = self.location(equipment_id)
        server.exception(unit, code)
        self.counters.faults_injected += code is not None

    def slow(self, equipment_id: str, seconds: float) -> None:
        """Delay the device's answers."""
        server, unit = self.location(equipment_id)
        server.slow(unit, seconds)
        self.counters.faults_injected += seconds > 0

    def malformed(self, equipment_id: str, on: bool = True) -> None:
        """Send the device's answers truncated."""
        server, unit = self.location(equipment_id)
        server.malformed(unit, on)
        self.counters.faults_injected += on

    # -- the control channel (devices.sim.control.ControlTarget)

    @property
    def protocol(self) -> str:
        return "modbus"

    def device_counters(self) -> Mapping[str, DeviceCounters]:
        """Per device: samples emitted, values carried, writes received."""
        return {did: d.counters for did, d in self._devices.items()}

    def hold(self, on: bool) -> None:
        """While held, reads answer the last sample again instead of a new one."""
        self._held = on

    async def set_offline(self, device_id: str, on: bool) -> None:
        """Take a device off the bus (answered with exception 11) or bring it back."""
        self.offline(device_id, on)

    async def fault(self, device_id: str, name: str, on: bool) -> None:
        """Raise or clear a named fault (see :meth:`fault_names`)."""
        self._device_checked(device_id)
        if name not in self.fault_names():
            raise RejectedError(
                f"{self.profile.name} has no fault {name!r} "
                f"(known: {', '.join(self.fault_names()) or 'none'})", code="unknown_fault")
        self.apply_fault(device_id, name, on)
        self.counters.faults_injected += on
        self._publish(self._devices[device_id])

    def fault_names(self) -> tuple[str, ...]:
        """Faults :meth:`fault` knows for this kind (besides ``offline``)."""
        return ()

    def apply_fault(self, equipment_id: str, name: str, on: bool) -> None:
        """Change the model for a fault named in :meth:`fault_names`."""
        raise RejectedError(f"{self.profile.name} has no fault {name!r}", code="unknown_fault")

    def held_values(self, device_id: str) -> dict[str, Any]:
        """The values the device holds, as the profile names them."""
        return self._device_checked(device_id).model.values()

    def _device_checked(self, device_id: str) -> _Device[M]:
        try:
            return self._devices[device_id]
        except KeyError:
            raise KeyError(device_id) from None

    def drop_connections(self) -> int:
        """Cut every client connection of every port; returns how many."""
        self.counters.faults_injected += 1
        return sum(server.drop_connections() for server in self.servers.values())

    # -- registers

    def _publish(self, device: _Device[M]) -> None:
        device.stale = False
        values = device.model.values()
        first, count = device.span
        regs = device.server.get(device.unit, first, count)
        # A few hundred registers for a cabinet, after every tick it is read: the loops
        # look each value's encoding up inline, and encode only what they have not seen.
        for codec in self._field_codecs:
            value = device.seq if codec.name == "seq" else values[codec.name]
            raw = codec.memo.get((value.__class__, value)) or self._encode(device, codec, value)
            at = codec.offset - first
            regs[at : at + len(raw)] = raw
        for block, codecs in self._block_codecs:
            items: Sequence[Mapping[str, Any]] = values.get(block.name, ())
            base = block.base - first
            for item in items[: self.profile.count(block.name, device.equipment.attrs)]:
                for codec in codecs:
                    value = item[codec.name]
                    raw = (codec.memo.get((value.__class__, value))
                           or self._encode(device, codec, value))
                    at = base + codec.offset
                    regs[at : at + len(raw)] = raw
                base += block.stride
        device.server.set(device.unit, first, regs)

    @staticmethod
    def _encode(device: _Device[M], codec: _Codec, value: Any) -> list[int]:
        try:
            return codec.encode(value)
        except RejectedError as exc:
            raise ConfigError(
                f"{device.equipment.id}: model value {value!r} for {codec.name}: {exc}"
            ) from exc

    def _read_hook(self, port: int) -> Any:
        seq_at = self._seq_spec.address
        assert seq_at is not None
        seq_end = seq_at + self._seq_spec.width

        def on_read(unit: int, address: int, count: int) -> None:
            device = self._by_unit.get((port, unit))
            if device is None:
                return
            self.before_access(device)
            if device.stale:
                self._publish(device)
            if self._held:
                return
            if address > seq_at or address + count < seq_end:
                return  # a partial read that does not carry the sample number
            device.seq = (device.seq + 1) & 0xFFFF_FFFF
            raw = self._seq_spec.encode(device.seq)
            device.server.set(unit, seq_at, raw)
            device.counters.sample(device.seq, device.points)

        return on_read

    def _hook(self, port: int) -> Any:
        def on_write(unit: int, address: int, values: list[int]) -> int | None:
            # When the request arrived, before anything is done with it (benches measure
            # the latency up to here).
            arrived = time.time()
            device = self._by_unit.get((port, unit))
            if device is None:
                return EXC_ILLEGAL_ADDRESS
            self.counters.writes_seen += 1
            refused = self._write(device, address, values, arrived)
            if refused is not None:
                self.counters.writes_refused += 1
                device.counters.refused += 1
            return refused

        return on_write

    def _block_address(self, block: str, index: int, spec: FieldSpec) -> int:
        b = next(b for b in self.profile.blocks if b.name == block)
        assert b.base is not None and b.stride is not None and spec.address is not None
        return b.base + index * b.stride + spec.address

    def _targets(
        self, device: _Device[M], address: int, values: list[int]
    ) -> list[tuple[str | None, int, FieldSpec, list[int]]] | int:
        """The fields a write covers, or the exception code refusing it."""
        end = address + len(values)
        covered = 0
        out: list[tuple[str | None, int, FieldSpec, list[int]]] = []

        def visit(block: str | None, index: int, spec: FieldSpec, at: int) -> int | None:
            nonlocal covered
            low, high = max(at, address), min(at + spec.width, end)
            if low >= high:
                return None
            if low != at or high != at + spec.width:
                return EXC_ILLEGAL_VALUE  # half of a two-register value
            if not spec.writable:
                return EXC_ILLEGAL_ADDRESS
            covered += spec.width
            out.append((block, index, spec, values[at - address : at - address + spec.width]))
            return None

        for spec in self.profile.fields:
            assert spec.address is not None
            if (code := visit(None, 0, spec, spec.address)) is not None:
                return code
        for block in self.profile.blocks:
            assert block.base is not None and block.stride is not None
            for i in range(self.profile.count(block.name, device.equipment.attrs)):
                at = block.base + i * block.stride
                if at > end:
                    break
                for spec in block.fields:
                    assert spec.address is not None
                    if (code := visit(block.name, i, spec, at + spec.address)) is not None:
                        return code
        if covered != len(values):
            return EXC_ILLEGAL_ADDRESS
        return out

    def received(self, equipment_id: str, writes: Sequence[tuple[str | None, int, str, Any]],
                 at: float) -> None:
        """A client's write request to ``equipment_id`` arrived at wall-clock time ``at``
        (``time.time()``) and was decoded into ``writes`` (``(block, index, name, value)``),
        before the model judges it. Nothing by default."""

    def before_access(self, device: _Device[M]) -> None:
        """A client reads or writes ``device``: bring its model up to now if it must be
        (a step due between two ticks). Nothing by default."""

    def _write(self, device: _Device[M], address: int, values: list[int],
               arrived: float) -> int | None:
        self.before_access(device)
        if device.stale:
            self._publish(device)  # compare the write with what the device holds now
        targets = self._targets(device, address, values)
        if isinstance(targets, int):
            return targets
        decoded: list[tuple[str | None, int, str, Any]] = []
        changed = False
        fanned = (0, 0)
        for block, index, spec, regs in targets:
            assert spec.address is not None
            at = spec.address if block is None else self._block_address(block, index, spec)
            changed = changed or device.server.get(device.unit, at, spec.width) != regs
            if spec.type == "bool" and regs[0] not in (0, 1):
                return EXC_ILLEGAL_VALUE
            try:
                value = spec.decode(regs)
            except ProtocolError:
                return EXC_ILLEGAL_VALUE
            if not isinstance(value, str | bool) and (
                (spec.min is not None and value < spec.min)
                or (spec.max is not None and value > spec.max)
            ):
                return EXC_ILLEGAL_VALUE
            decoded.append((block, index, spec.name, value))
        self.received(device.equipment.id, decoded, arrived)
        refused = device.model.check_write(decoded)
        if refused is not None:
            return refused
        for block, index, name, value in decoded:
            fan = device.model.fanout(block, index, name, value)
            if fan is not None:
                fanned = (fanned[0] + fan[0], fanned[1] + fan[1])
        for block, index, name, value in decoded:
            refused = device.model.apply(block, index, name, value)
            if refused is not None:
                return refused
        device.model.applied(decoded)
        counted = any(device.model.counts_as_write(block, name) for block, _, name, _ in decoded)
        if fanned == (0, 0) and counted:
            device.counters.write(changed)
        for n, points_changed in ((fanned[0], True), (fanned[1], False)):
            for _ in range(n):
                device.counters.write(points_changed)
        # Derived registers (a status the write changed) are visible to the next read, and
        # so is a written register the device holds otherwise (a mode it goes to by steps):
        # the server stores the written values after this hook, the next read publishes.
        device.stale = True
        return None
