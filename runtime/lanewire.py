"""A host's priority lane over a connection of its own: the pool's requests without Ray.

A bus's check-in crosses one process boundary, from a pool member to the host
of the crossroad (:mod:`actors.priority.lane`). As a Ray actor call that
boundary costs a round trip of ~2.4 ms at the median and ~5 ms at the 99th
percentile on a 2-core machine with nothing else running (gRPC and the core
worker's threads, each handing the interpreter over); a message on a TCP
connection between the same two processes costs ~0.3 ms and ~1 ms. So a host
serves its lane on a socket too: :class:`LaneServer` runs on the host's
``priority`` event loop, and a member keeps one :class:`LaneClient` per host
it sends to. Ray still finds the host (its actor answers where its lane
listens) and supervises it; the socket only carries the requests. The lane
listens on loopback: a service that runs its own Ray (one machine) gives its
hosts a lane secret; in a cluster, whose nodes talk on Ray's ports alone, the
requests go through Ray.

The wire: frames of a header (body length, request id: two unsigned 32-bit
integers, network order) and a body. A client's first frame (id 0) carries the
service's lane secret, which every host of the service is given: a connection
that does not present it is closed unanswered. Then each request frame (id > 0,
body: a packed envelope) gets one answer frame with the same id (body: the
lane's packed answer), in the order the lane finishes them. A connection lost
fails every request waiting on it; the caller tries again through Ray's
directory (the host may have been replaced).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Final

from runtime.envelope import pack

__all__ = ["MAX_FRAME", "LaneClient", "LaneServer"]

log = logging.getLogger("commandpost.lanewire")

_HEADER: Final = struct.Struct("!II")
_HELLO: Final = 0
#: The largest body either side accepts (bytes): a priority envelope is a few hundred.
MAX_FRAME: Final = 1 << 20
_MAX_ID: Final = 0xFFFFFFFF


class LaneServer:
    """Serves ``serve`` (packed envelope in, packed answer out) to clients that know
    ``secret``; runs on the event loop that calls :meth:`start`."""

    def __init__(self, secret: bytes, serve: Callable[[bytes], Awaitable[bytes]]) -> None:
        if not secret:
            raise ValueError("a lane server needs a secret")
        self._secret = secret
        self._serve = serve
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str) -> tuple[str, int]:
        """Listen on ``host`` (a free port); returns where."""
        self._server = await asyncio.start_server(self._client, host, 0)
        addr = self._server.sockets[0].getsockname()
        return str(addr[0]), int(addr[1])

    def close(self) -> None:
        """Stop listening and close every connection (on the server's loop)."""
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        for t in list(self._tasks):
            t.cancel()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            length, rid = _HEADER.unpack(await reader.readexactly(_HEADER.size))
            secret = await reader.readexactly(length) if rid == _HELLO and length <= 256 else b""
            if not hmac.compare_digest(secret, self._secret):
                log.warning("lane connection from %s refused: no lane secret",
                            writer.get_extra_info("peername"))
                return
            writer.write(_HEADER.pack(0, _HELLO))
            while True:
                length, rid = _HEADER.unpack(await reader.readexactly(_HEADER.size))
                if length > MAX_FRAME or rid == _HELLO:
                    log.warning("lane connection closed: a frame of %d bytes, id %d",
                                length, rid)
                    return
                body = await reader.readexactly(length)
                task = asyncio.get_running_loop().create_task(self._answer(writer, rid, body))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, rid: int, body: bytes) -> None:
        try:
            out = await self._serve(body)
        except Exception as exc:  # the lane answers; a request never takes the server down
            log.exception("lane request failed")
            out = pack({"ok": False, "error": f"the lane failed: {exc}", "code": "lane_error"})
        if not writer.is_closing():
            writer.write(_HEADER.pack(len(out), rid) + out)


class LaneClient:
    """One connection to a host's :class:`LaneServer`, shared by concurrent requests
    of the event loop that connected it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._next = 1
        self._closed = False
        self._reading = asyncio.get_running_loop().create_task(self._read(reader),
                                                               name="lane-client.read")

    @classmethod
    async def connect(cls, host: str, port: int, secret: bytes, timeout: float) -> LaneClient:
        """Connect and present ``secret``; :class:`ConnectionError` if refused,
        :class:`OSError` or :class:`TimeoutError` if the host cannot be reached."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        try:
            writer.write(_HEADER.pack(len(secret), _HELLO) + secret)
            _, rid = _HEADER.unpack(await asyncio.wait_for(
                reader.readexactly(_HEADER.size), timeout))
        except (asyncio.IncompleteReadError, TimeoutError, OSError) as exc:
            writer.close()
            raise ConnectionError(f"lane at {host}:{port} refused the connection") from exc
        if rid != _HELLO:
            writer.close()
            raise ConnectionError(f"lane at {host}:{port} answered out of turn")
        return cls(reader, writer)

    @property
    def closed(self) -> bool:
        return self._closed

    async def call(self, blob: bytes) -> bytes:
        """One request; its answer, or :class:`ConnectionError` when the connection is lost
        first (cancelling the wait leaves the connection usable)."""
        if self._closed:
            raise ConnectionError("lane connection closed")
        rid = self._next
        self._next = self._next % _MAX_ID + 1
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            self._writer.write(_HEADER.pack(len(blob), rid) + blob)
            return await fut
        finally:
            self._pending.pop(rid, None)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                length, rid = _HEADER.unpack(await reader.readexactly(_HEADER.size))
                if length > MAX_FRAME:
                    break
                body = await reader.readexactly(length)
                fut = self._pending.get(rid)
                if fut is not None and not fut.done():
                    fut.set_result(body)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._fail()

    def _fail(self) -> None:
        self._closed = True
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("lane connection closed"))
        self._writer.close()

    async def close(self) -> None:
        self._reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reading
