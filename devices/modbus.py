"""Modbus TCP: the runtime's client sessions and the simulators' server.

This is the only module that imports pymodbus, for the server. The client is a
lean asyncio protocol of its own (MBAP framing, transaction ids, functions 3
and 16): a host polls hundreds of cabinets a second, and a request costs it
tens of microseconds rather than the general client's hundreds. Errors map
into :mod:`runtime.errors`:

* a Modbus exception response -> :class:`RejectedError` with
  ``code="modbus_exception_{n}"`` (``n`` in decimal: 3 = illegal value,
  11 = gateway target failed to respond);
* refused connection, timeout, lost connection -> :class:`DeviceUnavailableError`;
* a frame that cannot be decoded, or an answer of the wrong size -> :class:`ProtocolError`.

Client side, one :class:`ModbusSession` (one TCP connection) serves every unit id
behind a ``host:port`` gateway; :class:`ModbusSessions` shares them by endpoint
with reference counts. Server side, :class:`ModbusServer` answers many unit ids on
one port from its own holding-register store and can inject faults.

Addresses are 0-based PDU addresses everywhere. The server keeps its registers in
its own store (not pymodbus's data blocks, which shift addresses by one and no
longer report writes in 3.16), so no shift exists at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, cast

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException as _NoSuchId
from pymodbus.server import ModbusTcpServer

from runtime.errors import ConfigError, DeviceUnavailableError, ProtocolError, RejectedError

__all__ = [
    "MAX_READ",
    "MAX_WRITE",
    "ModbusServer",
    "ModbusSession",
    "ModbusSessions",
    "ServerCounters",
    "WriteHook",
    "parse_endpoint",
]

_log = logging.getLogger(__name__)

#: Registers per read request (Modbus limit, function 0x03).
MAX_READ: Final = 125
#: Registers per write request (Modbus limit, function 0x10).
MAX_WRITE: Final = 123
_MBAP_LEN: Final = 7
_FC_READ: Final = 3
_FC_WRITE_ONE: Final = 6
_FC_WRITE_MANY: Final = 16
_ENDPOINT_RE: Final = re.compile(r"^modbus://([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]):(\d+)/(\d+)$")


def parse_endpoint(endpoint: str) -> tuple[str, int, int]:
    """``"modbus://host:port/unit"`` -> ``(host, port, unit)``, else :class:`ConfigError`."""
    m = _ENDPOINT_RE.match(endpoint) if isinstance(endpoint, str) else None
    if m is None:
        raise ConfigError(f"bad modbus endpoint {endpoint!r} (expected modbus://host:port/unit)")
    host, port, unit = m.group(1).strip("[]"), int(m.group(2)), int(m.group(3))
    if not 1 <= port <= 65535:
        raise ConfigError(f"bad modbus endpoint {endpoint!r}: port {port} outside [1, 65535]")
    if not 0 <= unit <= 255:
        raise ConfigError(f"bad modbus endpoint {endpoint!r}: unit {unit} outside [0, 255]")
    return host, port, unit


class _ConnectionLost(Exception):
    """The connection went down while a request was out."""


class _Malformed(Exception):
    """The peer sent a frame that is not a well-formed answer (the stream is out of step)."""


_INT: Final = {int}


def _check_registers(values: Sequence[int]) -> None:
    # The common case in C loops (a cabinet's few hundred registers, many times a
    # second); the value to name, if any, found by the loop below.
    if not values or (set(map(type, values)) == _INT and min(values) >= 0
                      and max(values) <= 0xFFFF):
        return
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 0xFFFF:
            raise ValueError(f"register value {v!r} outside [0, 65535]")


#: The largest MBAP length field: unit id plus a PDU of at most 253 bytes.
_MAX_LENGTH: Final = 254


def _pdu_problem(pdu: bytes) -> str | None:
    """Why ``pdu`` is not a well-formed answer to function 3, 6 or 16, if not."""
    fc = pdu[0]
    if fc & 0x80:
        ok = len(pdu) == 2
    elif fc == _FC_READ:
        ok = len(pdu) >= 2 and pdu[1] == len(pdu) - 2 and pdu[1] % 2 == 0
    elif fc in (_FC_WRITE_ONE, _FC_WRITE_MANY):
        ok = len(pdu) == 5
    else:
        ok = False
    return None if ok else f"malformed frame (function {fc}, {len(pdu)} bytes)"


class _Wire(asyncio.Protocol):
    """One TCP connection: frames requests, matches answers by transaction id.

    A frame that is not a well-formed answer fails every request out on the
    connection and closes it (the stream is out of step); an answer to a request
    that has timed out is dropped by its transaction id.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._waiting: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self._tid = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio's: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(_ConnectionLost(str(exc or "closed by the peer")))

    def _fail(self, exc: Exception) -> None:
        waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self._fail(_ConnectionLost("closed"))

    def send(self, unit: int, pdu: bytes) -> asyncio.Future[tuple[int, bytes]]:
        """Send one request; the future gets ``(unit, answer pdu)``."""
        if self.closed or self.transport is None or self.transport.is_closing():
            raise _ConnectionLost("not connected")
        self._tid = self._tid % 0xFFFF + 1
        tid = self._tid
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._waiting[tid] = fut
        self.transport.write(struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu)
        return fut

    def forget(self, fut: asyncio.Future[tuple[int, bytes]]) -> None:
        """Stop waiting for ``fut``'s answer (timed out): a late one is dropped."""
        for tid, f in list(self._waiting.items()):
            if f is fut:
                del self._waiting[tid]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while len(buf) >= _MBAP_LEN + 1:
            tid, proto, length = struct.unpack_from(">HHH", buf, 0)
            if proto != 0:
                return self._broken("bad protocol id")
            if not 2 <= length <= _MAX_LENGTH:
                return self._broken(f"frame length {length}")
            end = 6 + length
            if len(buf) < end:
                return None  # the rest of the frame has not arrived yet
            unit, pdu = buf[6], bytes(buf[_MBAP_LEN:end])
            del buf[:end]
            problem = _pdu_problem(pdu)
            if problem is not None:
                return self._broken(problem)
            fut = self._waiting.pop(tid, None)
            if fut is not None and not fut.done():
                fut.set_result((unit, pdu))
        return None

    def _broken(self, problem: str) -> None:
        self._buf.clear()
        self._fail(_Malformed(problem))
        self.close()


class _Turns:
    """A lock whose urgent waiters go before the others (first come, first served in each)."""

    def __init__(self) -> None:
        self._held = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._normal: deque[asyncio.Future[None]] = deque()

    @contextlib.asynccontextmanager
    async def turn(self, urgent: bool = False) -> AsyncIterator[None]:
        await self._acquire(urgent)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, urgent: bool) -> None:
        if not self._held:
            self._held = True
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._urgent if urgent else self._normal
        queue.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # handed the turn as it was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    queue.remove(fut)
            raise

    def _release(self) -> None:
        for queue in (self._urgent, self._normal):
            while queue:
                fut = queue.popleft()
                if not fut.done():
                    fut.set_result(None)  # the turn passes on: still held
                    return
        self._held = False


class ModbusSession:
    """One Modbus TCP connection to a gateway ``host:port``, shared by every unit behind it.

    Requests are serialised (one outstanding transaction at a time, as most field
    gateways require); the requests of one call (a read split in three,
    :meth:`write_many`) go back to back, so a reading is never torn by another
    caller's write and a caller waits its turn once per call, not once per
    request. A call marked ``urgent`` (an operator's command) takes its turn
    before routine polls waiting for theirs. A lost connection is re-opened by
    the next call. Errors come from :mod:`runtime.errors`.
    """

    def __init__(self, host: str, port: int, *, timeout_s: float = 0.5) -> None:
        if not timeout_s > 0:
            raise ConfigError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.host = host
        self.port = port
        self.timeout_s = float(timeout_s)
        self._wire: _Wire | None = None
        self._turns = _Turns()
        self._closed = False
        #: Connections opened so far (a reconnect counts).
        self.connects = 0

    def __repr__(self) -> str:
        return f"ModbusSession({self.host}:{self.port})"

    @property
    def connected(self) -> bool:
        """Whether the TCP connection is open right now."""
        return self._wire is not None and not self._wire.closed

    async def connect(self) -> None:
        """Open the connection if it is not open; :class:`DeviceUnavailableError` if refused."""
        async with self._turns.turn(urgent=True):
            await self._ensure()

    async def _ensure(self) -> _Wire:
        if self._closed:
            raise DeviceUnavailableError(f"{self!r} is closed")
        wire = self._wire
        if wire is not None and not wire.closed:
            return wire
        loop = asyncio.get_running_loop()
        try:
            _, opened = await asyncio.wait_for(
                loop.create_connection(_Wire, self.host, self.port), self.timeout_s * 2)
        except (TimeoutError, OSError) as exc:
            raise DeviceUnavailableError(f"{self!r}: cannot connect: {exc}") from exc
        self._wire = opened
        self.connects += 1
        return opened

    async def _call(self, what: str, unit: int, pdu: bytes, *, idempotent: bool) -> bytes:
        """One request, the caller holding the session's turn: the answer's PDU."""
        for attempt in (1, 2):
            wire = await self._ensure()
            try:
                return await self._exchange(what, unit, wire, pdu)
            except _ConnectionLost as exc:
                # A connection cut between two calls is only noticed by the next one:
                # a read is safe to send again once.
                if idempotent and attempt == 1:
                    continue
                raise DeviceUnavailableError(
                    f"{self!r} unit {unit}: {what}: connection lost") from exc
        raise AssertionError("unreachable")

    async def _exchange(self, what: str, unit: int, wire: _Wire, pdu: bytes) -> bytes:
        try:
            answer = wire.send(unit, pdu)
        except OSError as exc:
            wire.close()
            raise _ConnectionLost(str(exc)) from exc
        expired = False

        def expire() -> None:
            nonlocal expired
            if not answer.done():
                expired = True
                answer.cancel()

        timer = asyncio.get_running_loop().call_later(self.timeout_s, expire)
        try:
            got_unit, got = await answer
        except asyncio.CancelledError:
            wire.forget(answer)
            if expired:
                raise DeviceUnavailableError(
                    f"{self!r} unit {unit}: {what}: no answer within {self.timeout_s:g} s"
                ) from None
            raise
        except _Malformed as exc:
            raise ProtocolError(f"{self!r} unit {unit}: {what}: {exc}") from None
        finally:
            timer.cancel()
        if got[0] & 0x80:
            if got[0] & 0x7F != pdu[0]:
                wire.close()
                raise ProtocolError(f"{self!r} unit {unit}: {what}: exception answer to "
                                    f"function {got[0] & 0x7F}")
            code = got[1]
            raise RejectedError(f"{self!r} unit {unit}: {what}: Modbus exception {code}",
                                code=f"modbus_exception_{code}")
        if got[0] != pdu[0] or got_unit != unit:
            wire.close()
            raise ProtocolError(f"{self!r} unit {unit}: {what}: answer of function {got[0]} "
                                f"from unit {got_unit}")
        return got

    async def read(self, unit: int, address: int, count: int, *, urgent: bool = False
                   ) -> list[int]:
        """Read ``count`` holding registers from ``address`` (split into requests of 125)."""
        if count < 1 or address < 0 or address + count > 0x10000:
            raise ValueError(f"bad register range {address}+{count}")
        out: list[int] = []
        pos = address
        async with self._turns.turn(urgent):
            while pos < address + count:
                n = min(MAX_READ, address + count - pos)
                pdu = struct.pack(">BHH", _FC_READ, pos, n)
                got = await self._call(f"read {pos}+{n}", unit, pdu, idempotent=True)
                if got[1] != 2 * n:
                    raise ProtocolError(
                        f"{self!r} unit {unit}: read {pos}+{n}: answer has {got[1] // 2} "
                        "registers")
                out.extend(struct.unpack_from(f">{n}H", got, 2))
                pos += n
        return out

    async def write(self, unit: int, address: int, values: list[int], *,
                    urgent: bool = False) -> None:
        """Write holding registers from ``address`` (function 0x10, split into requests of 123)."""
        await self.write_many(unit, [(address, values)], urgent=urgent)

    async def write_many(self, unit: int, writes: Sequence[tuple[int, list[int]]], *,
                         urgent: bool = False) -> None:
        """Write several ``(address, registers)`` ranges of ``unit`` back to back, in order.

        A range the device refuses raises, and the ranges after it are not sent.
        """
        for address, values in writes:
            _check_registers(values)
            if not values or address < 0 or address + len(values) > 0x10000:
                raise ValueError(f"bad register range {address}+{len(values)}")
        async with self._turns.turn(urgent):
            for address, values in writes:
                await self._write_range(unit, address, values)

    async def _write_range(self, unit: int, address: int, values: list[int]) -> None:
        for pos in range(0, len(values), MAX_WRITE):
            chunk = values[pos : pos + MAX_WRITE]
            start = address + pos
            pdu = struct.pack(f">BHHB{len(chunk)}H", _FC_WRITE_MANY, start, len(chunk),
                              2 * len(chunk), *chunk)
            what = f"write {start}+{len(chunk)}"
            got = await self._call(what, unit, pdu, idempotent=False)
            got_start, got_count = struct.unpack_from(">HH", got, 1)
            if got_start != start or got_count != len(chunk):
                raise ProtocolError(
                    f"{self!r} unit {unit}: {what}: answer names {got_start}+{got_count}")

    async def close(self) -> None:
        """Close the connection for good; later calls raise :class:`DeviceUnavailableError`."""
        self._closed = True
        if self._wire is not None:
            self._wire.close()
            self._wire = None


class ModbusSessions:
    """Shares one :class:`ModbusSession` per ``(host, port)`` among its users.

    One registry per event loop (a host actor owns one); :meth:`acquire` and
    :meth:`release` count users, and the last release closes the connection.
    """

    def __init__(self, *, timeout_s: float = 0.5) -> None:
        self.timeout_s = timeout_s
        self._sessions: dict[tuple[str, int], tuple[ModbusSession, int]] = {}

    def acquire(self, host: str, port: int, *, timeout_s: float | None = None) -> ModbusSession:
        """The session to ``host:port`` (created on first use; the first caller's timeout wins)."""
        key = (host, port)
        found = self._sessions.get(key)
        if found is None:
            session = ModbusSession(host, port, timeout_s=timeout_s or self.timeout_s)
            self._sessions[key] = (session, 1)
            return session
        self._sessions[key] = (found[0], found[1] + 1)
        return found[0]

    async def release(self, session: ModbusSession) -> None:
        """One user fewer; the last one closes the session."""
        key = (session.host, session.port)
        found = self._sessions.get(key)
        if found is None or found[0] is not session:
            return
        if found[1] > 1:
            self._sessions[key] = (session, found[1] - 1)
            return
        del self._sessions[key]
        await session.close()

    def __len__(self) -> int:
        return len(self._sessions)

    async def close(self) -> None:
        """Close every session."""
        sessions = [s for s, _ in self._sessions.values()]
        self._sessions.clear()
        for session in sessions:
            await session.close()


# --------------------------------------------------------------------------- server

#: ``on_write(unit, address, values)`` -> ``None`` to accept (values are stored) or a
#: Modbus exception code to refuse the write.
WriteHook = Callable[[int, int, list[int]], int | None]
#: ``on_read(unit, address, count)``: called before a read of ``unit`` is answered, so the
#: owner can update what the answer carries (a sample counter, for instance).
ReadHook = Callable[[int, int, int], None]


@dataclass(slots=True)
class ServerCounters:
    """What a :class:`ModbusServer` has seen and done."""

    reads: int = 0
    writes: int = 0
    writes_refused: int = 0
    exceptions_injected: int = 0
    silent_drops: int = 0
    malformed_sent: int = 0
    connections_dropped: int = 0


@dataclass(slots=True)
class _Unit:
    regs: list[int]
    offline: bool = False
    silent: bool = False
    exception: int | None = None
    slow_s: float = 0.0
    malformed: bool = False


class _Store(ModbusServerContext):
    """The server's datastore: pymodbus calls it with PDU addresses, unshifted."""

    def __init__(self, server: ModbusServer) -> None:
        # Not calling the base initialiser: it builds pymodbus data blocks we do not use.
        self._server = server
        self.old_simulator = True
        self.simdevices = []

    def device_ids(self) -> list[int]:
        return sorted(self._server._units)

    async def _unit(self, device_id: int) -> _Unit | ExcCodes:
        server = self._server
        unit = server._units.get(device_id)
        if unit is None:
            return ExcCodes.GATEWAY_PATH_UNAVIABLE
        if unit.slow_s > 0:
            await asyncio.sleep(unit.slow_s)
        if unit.offline:
            if unit.silent:
                server.counters.silent_drops += 1
                # pymodbus answers nothing for an unknown id when ignore_missing_devices is set.
                raise _NoSuchId(f"unit {device_id} is offline")
            server.counters.exceptions_injected += 1
            return ExcCodes.GATEWAY_NO_RESPONSE
        if unit.exception is not None:
            server.counters.exceptions_injected += 1
            return ExcCodes(unit.exception)
        return unit

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        unit = await self._unit(device_id)
        if isinstance(unit, ExcCodes):
            return unit
        if address < 0 or count < 1 or address + count > len(unit.regs):
            return ExcCodes.ILLEGAL_ADDRESS
        if func_code == _FC_READ:
            self._server.counters.reads += 1
            hook = self._server.on_read
            if hook is not None:
                hook(device_id, address, count)
        return list(unit.regs[address : address + count])

    async def async_setValues(
        self,
        device_id: int,
        func_code: int,
        address: int,
        values: Sequence[int] | Sequence[bool],
    ) -> ExcCodes | None:
        unit = await self._unit(device_id)
        if isinstance(unit, ExcCodes):
            return unit
        regs = [int(v) for v in values]
        if address < 0 or address + len(regs) > len(unit.regs):
            return ExcCodes.ILLEGAL_ADDRESS
        hook = self._server.on_write
        if hook is not None:
            refused = hook(device_id, address, regs)
            if refused is not None:
                self._server.counters.writes_refused += 1
                return ExcCodes(refused)
        unit.regs[address : address + len(regs)] = regs
        self._server.counters.writes += 1
        return None


class ModbusServer:
    """A Modbus TCP server on ``host:port`` answering many unit ids from holding registers.

    Each unit has ``size`` registers at PDU addresses ``0..size-1``. The owner
    updates them with :meth:`set`; clients' writes go through ``on_write`` (which
    may refuse them with a Modbus exception code) and are then stored.
    Faults are injected per unit: :meth:`offline`, :meth:`exception`,
    :meth:`slow`, :meth:`malformed`; :meth:`drop_connections` cuts every client.
    """

    def __init__(
        self,
        port: int,
        units: Iterable[int],
        *,
        size: int = 1024,
        host: str = "127.0.0.1",
        on_write: WriteHook | None = None,
        on_read: ReadHook | None = None,
    ) -> None:
        if not 1 <= size <= 0x10000:
            raise ConfigError(f"register block size {size} outside [1, 65536]")
        self.host = host
        self.port = port
        self.size = size
        self.on_write = on_write
        self.on_read = on_read
        self.counters = ServerCounters()
        self._units: dict[int, _Unit] = {}
        for unit in units:
            self.add_unit(unit)
        self._server: ModbusTcpServer | None = None

    def add_unit(self, unit: int, size: int | None = None) -> None:
        """Serve ``unit`` (0..255) with ``size`` registers, all zero."""
        if not 0 <= unit <= 255:
            raise ConfigError(f"unit id {unit} outside [0, 255]")
        if unit in self._units:
            raise ConfigError(f"unit {unit} is already served on port {self.port}")
        self._units[unit] = _Unit(regs=[0] * (size or self.size))

    @property
    def units(self) -> tuple[int, ...]:
        """The unit ids served."""
        return tuple(sorted(self._units))

    def _get_unit(self, unit: int) -> _Unit:
        try:
            return self._units[unit]
        except KeyError:
            raise ConfigError(f"unit {unit} is not served on port {self.port}") from None

    async def start(self) -> None:
        """Listen on ``host:port``; :class:`ConfigError` if the port cannot be bound."""
        if self._server is not None:
            return
        server = ModbusTcpServer(
            _Store(self),
            address=(self.host, self.port),
            ignore_missing_devices=True,
            trace_packet=self._trace_packet,
        )
        try:
            await server.serve_forever(background=True)
        except (RuntimeError, OSError) as exc:
            await server.shutdown()  # type: ignore[no-untyped-call]
            raise ConfigError(f"modbus server cannot listen on {self.host}:{self.port}") from exc
        self._server = server

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]

    @property
    def running(self) -> bool:
        """Whether the server is listening."""
        return self._server is not None

    def get(self, unit: int, address: int, count: int) -> list[int]:
        """Registers ``address..address+count-1`` of ``unit``."""
        regs = self._get_unit(unit).regs
        if address < 0 or count < 0 or address + count > len(regs):
            raise ValueError(f"register range {address}+{count} outside unit {unit}")
        return regs[address : address + count]

    def set(self, unit: int, address: int, values: Sequence[int]) -> None:
        """Store ``values`` from ``address`` in ``unit`` (the device's own update)."""
        _check_registers(values)
        regs = self._get_unit(unit).regs
        if address < 0 or address + len(values) > len(regs):
            raise ValueError(f"register range {address}+{len(values)} outside unit {unit}")
        regs[address : address + len(values)] = list(values)

    # -- fault injection

    def offline(self, unit: int, on: bool = True, *, silent: bool = False) -> None:
        """Take ``unit`` off the bus: answered by exception 11 (gateway target failed)
        or, with ``silent``, not answered at all."""
        state = self._get_unit(unit)
        state.offline, state.silent = on, silent and on

    def exception(self, unit: int, code: int | None) -> None:
        """Answer every request to ``unit`` with Modbus exception ``code`` (``None`` stops)."""
        if code is not None:
            try:
                ExcCodes(code)
            except ValueError:
                raise ConfigError(f"{code} is not a Modbus exception code") from None
        self._get_unit(unit).exception = code

    def slow(self, unit: int, seconds: float) -> None:
        """Delay every answer of ``unit`` by ``seconds`` (0 stops)."""
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        self._get_unit(unit).slow_s = float(seconds)

    def malformed(self, unit: int, on: bool = True) -> None:
        """Send ``unit``'s answers truncated: read answers lose their last register and keep
        a byte count that claims it; other answers lose their last byte."""
        self._get_unit(unit).malformed = on

    def drop_connections(self) -> int:
        """Close every client connection now; returns how many there were."""
        if self._server is None:
            return 0
        handlers = list(self._server.active_connections.values())
        for handler in handlers:
            handler.close()
        self.counters.connections_dropped += len(handlers)
        return len(handlers)

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending or len(data) < _MBAP_LEN + 2:
            return data
        unit = self._units.get(data[6])
        if unit is None or not unit.malformed:
            return data
        self.counters.malformed_sent += 1
        # Cut two bytes off the PDU but keep the MBAP length consistent, so the
        # frame is delimited correctly and only its content is wrong.
        pdu = data[_MBAP_LEN:-2] if data[_MBAP_LEN] == _FC_READ else data[_MBAP_LEN:-1]
        header = data[:4] + (len(pdu) + 1).to_bytes(2, "big") + data[6:7]
        return header + pdu
