"""Modbus TCP: the runtime's client sessions and the simulators' server.

This is the only module that imports pymodbus; its exceptions are mapped into
:mod:`runtime.errors` here:

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
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.exceptions import NoSuchIdException as _NoSuchId
from pymodbus.pdu import ModbusPDU
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


def _check_registers(values: Sequence[int]) -> None:
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 0xFFFF:
            raise ValueError(f"register value {v!r} outside [0, 65535]")


def _frame_problem(data: bytes) -> str | None:
    """Why the complete frames at the start of ``data`` are not well-formed answers, if not.

    pymodbus drops an undecodable answer silently and lets the request time out;
    looking at the bytes tells a broken peer from a silent one.
    """
    pos = 0
    while len(data) - pos >= _MBAP_LEN + 1:
        length = int.from_bytes(data[pos + 4 : pos + 6], "big")
        if data[pos + 2 : pos + 4] != b"\x00\x00":
            return "bad protocol id"
        end = pos + 6 + length
        if length < 2:
            return f"frame length {length}"
        if end > len(data):
            return None  # the rest of the frame has not arrived yet
        pdu = data[pos + _MBAP_LEN : end]
        fc = pdu[0]
        if fc & 0x80:
            ok = len(pdu) == 2
        elif fc == _FC_READ:
            ok = len(pdu) >= 2 and pdu[1] == len(pdu) - 2 and pdu[1] % 2 == 0
        elif fc in (_FC_WRITE_ONE, _FC_WRITE_MANY):
            ok = len(pdu) == 5
        else:
            ok = False
        if not ok:
            return f"malformed frame (function {fc}, {len(pdu)} bytes)"
        pos = end
    return None


class ModbusSession:
    """One Modbus TCP connection to a gateway ``host:port``, shared by every unit behind it.

    Requests are serialised (one outstanding transaction at a time); the
    requests of one call (a read split in three, :meth:`write_many`) go back to
    back, so a reading is never torn by another caller's write and a caller
    waits its turn once per call, not once per request. A lost connection is
    re-opened by the next call. Errors come from :mod:`runtime.errors`.
    """

    def __init__(self, host: str, port: int, *, timeout_s: float = 0.5) -> None:
        if not timeout_s > 0:
            raise ConfigError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.host = host
        self.port = port
        self.timeout_s = float(timeout_s)
        self._client: AsyncModbusTcpClient | None = None
        self._lock = asyncio.Lock()
        self._lost = asyncio.Event()  # set when the current connection goes down
        self._malformed: str | None = None
        self._closed = False
        #: Connections opened so far (a reconnect counts).
        self.connects = 0

    def __repr__(self) -> str:
        return f"ModbusSession({self.host}:{self.port})"

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending and self._malformed is None:
            self._malformed = _frame_problem(data)
        return data

    @property
    def connected(self) -> bool:
        """Whether the TCP connection is open right now."""
        return self._client is not None and self._client.connected

    async def connect(self) -> None:
        """Open the connection if it is not open; :class:`DeviceUnavailableError` if refused."""
        async with self._lock:
            await self._ensure()

    async def _ensure(self) -> AsyncModbusTcpClient:
        if self._closed:
            raise DeviceUnavailableError(f"{self!r} is closed")
        client = self._client
        if client is not None and client.connected:
            return client
        if client is not None:
            client.close()
        # reconnect_delay=0: pymodbus must not reconnect behind our back; the next call does.
        lost = asyncio.Event()
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            timeout=self.timeout_s,
            retries=0,
            reconnect_delay=0,
            trace_packet=self._trace_packet,
            trace_connect=lambda up: None if up else lost.set(),
        )
        self._client, self._lost = client, lost
        try:
            ok = await asyncio.wait_for(client.connect(), self.timeout_s * 2)
        except (TimeoutError, OSError, ModbusException) as exc:
            client.close()
            raise DeviceUnavailableError(f"{self!r}: cannot connect: {exc}") from exc
        if not ok:
            client.close()
            raise DeviceUnavailableError(f"{self!r}: cannot connect")
        self.connects += 1
        return client

    async def _call(
        self,
        what: str,
        unit: int,
        request: Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]],
        *,
        idempotent: bool,
    ) -> ModbusPDU:
        """One request, the session's lock held by the caller."""
        for attempt in (1, 2):
            client = await self._ensure()
            try:
                response = await self._exchange(what, unit, client, request)
            except _ConnectionLost as exc:
                # A connection cut between two calls is only noticed by the next one:
                # a read is safe to send again once.
                if idempotent and attempt == 1:
                    continue
                raise DeviceUnavailableError(
                    f"{self!r} unit {unit}: {what}: connection lost"
                ) from exc
            break
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            raise RejectedError(
                f"{self!r} unit {unit}: {what}: Modbus exception {code}",
                code=f"modbus_exception_{code}",
            )
        return response

    async def _exchange(
        self,
        what: str,
        unit: int,
        client: AsyncModbusTcpClient,
        request: Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]],
    ) -> ModbusPDU:
        self._malformed = None
        lost = self._lost
        answer = asyncio.ensure_future(request(client))
        down = asyncio.ensure_future(lost.wait())
        try:
            # The client has its own timeout; this bounds a stuck send as well.
            await asyncio.wait(
                (answer, down), timeout=self.timeout_s * 2, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            down.cancel()
            if not answer.done():
                answer.cancel()
            await asyncio.gather(answer, down, return_exceptions=True)
        problem = self._malformed
        if problem is not None:
            # The stream is out of step after garbage: start afresh on the next call.
            client.close()
            raise ProtocolError(f"{self!r} unit {unit}: {what}: {problem}")
        if answer.cancelled():
            client.close()
            if lost.is_set():
                raise _ConnectionLost(what)
            raise DeviceUnavailableError(
                f"{self!r} unit {unit}: {what}: no answer within {self.timeout_s:g} s"
            )
        exc = answer.exception()
        if exc is None:
            return answer.result()
        if isinstance(exc, ConnectionException) or lost.is_set():
            client.close()
            raise _ConnectionLost(what) from exc
        if isinstance(exc, ModbusIOException | TimeoutError):
            raise DeviceUnavailableError(
                f"{self!r} unit {unit}: {what}: no answer within {self.timeout_s:g} s"
            ) from exc
        if isinstance(exc, OSError):
            client.close()
            raise DeviceUnavailableError(f"{self!r} unit {unit}: {what}: {exc}") from exc
        if isinstance(exc, ModbusException):
            raise ProtocolError(f"{self!r} unit {unit}: {what}: {exc}") from exc
        raise exc

    async def read(self, unit: int, address: int, count: int) -> list[int]:
        """Read ``count`` holding registers from ``address`` (split into requests of 125)."""
        if count < 1 or address < 0 or address + count > 0x10000:
            raise ValueError(f"bad register range {address}+{count}")
        out: list[int] = []
        pos = address
        async with self._lock:
            while pos < address + count:
                n = min(MAX_READ, address + count - pos)
                start = pos

                def request(
                    client: AsyncModbusTcpClient, start: int = start, n: int = n
                ) -> Awaitable[ModbusPDU]:
                    return client.read_holding_registers(start, count=n, device_id=unit)

                response = await self._call(f"read {start}+{n}", unit, request, idempotent=True)
                regs = list(response.registers)
                if len(regs) != n:
                    raise ProtocolError(
                        f"{self!r} unit {unit}: read {start}+{n}: answer has {len(regs)} "
                        "registers"
                    )
                out.extend(regs)
                pos += n
        return out

    async def write(self, unit: int, address: int, values: list[int]) -> None:
        """Write holding registers from ``address`` (function 0x10, split into requests of 123)."""
        await self.write_many(unit, [(address, values)])

    async def write_many(self, unit: int, writes: Sequence[tuple[int, list[int]]]) -> None:
        """Write several ``(address, registers)`` ranges of ``unit`` back to back, in order.

        A range the device refuses raises, and the ranges after it are not sent.
        """
        for address, values in writes:
            _check_registers(values)
            if not values or address < 0 or address + len(values) > 0x10000:
                raise ValueError(f"bad register range {address}+{len(values)}")
        async with self._lock:
            for address, values in writes:
                await self._write_range(unit, address, values)

    async def _write_range(self, unit: int, address: int, values: list[int]) -> None:
        for pos in range(0, len(values), MAX_WRITE):
            chunk = values[pos : pos + MAX_WRITE]
            start = address + pos

            def request(
                client: AsyncModbusTcpClient, start: int = start, chunk: list[int] = chunk
            ) -> Awaitable[ModbusPDU]:
                return client.write_registers(start, chunk, device_id=unit)

            response = await self._call(
                f"write {start}+{len(chunk)}", unit, request, idempotent=False
            )
            if response.address != start or response.count != len(chunk):
                raise ProtocolError(
                    f"{self!r} unit {unit}: write {start}+{len(chunk)}: answer names "
                    f"{response.address}+{response.count}"
                )

    async def close(self) -> None:
        """Close the connection for good; later calls raise :class:`DeviceUnavailableError`."""
        async with self._lock:
            self._closed = True
            if self._client is not None:
                self._client.close()
                self._client = None


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
