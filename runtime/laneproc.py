"""A host's priority lane in a process of its own.

A host actor runs its entities on the default event loop of a Ray worker,
where telemetry, commands, checkpoints and Ray's own threads share one
interpreter. Served on a second loop of that process (the ``priority``
concurrency group), a bus's request still waits for the interpreter whenever
the default loop is busy: a host given 200 vehicles flooded with 20,000
points/s next to its crossroads held a request for tens of milliseconds at
the 99th percentile. So a host whose entities serve a priority lane
(:func:`runtime.entity.has_priority_lane`), in a service that gave it a lane
secret (:mod:`runtime.lanewire`), serves that lane from a child process: a
plain asyncio interpreter with no Ray in it and nothing else to do.

**What the child holds.** The lane server (:class:`~runtime.lanewire.LaneServer`,
the pool's connections), the lane's resources (the policies, its own
controller sessions, the city's clock, the service's rules) and a mirror of
the views its entities publish (:meth:`runtime.entity.EntityContext.publish_view`).
It decides and writes exactly as the in-process lane does: the same
``on_priority`` of each entity's behaviour, imported by its path.

**The control channel** is a socket pair between host and child, frames of a
32-bit length (network order) and a packed map with ``t``:

* host → child: ``init`` (the secret, the address to listen on, each entity's
  behaviour path, the clock and the rules), ``view`` (per entity, the keys
  changed since the last frame and those gone), ``stop``;
* child → host: ``ready`` (where it listens, its pid), ``failed`` (why it cannot
  serve: the host then serves its lane itself), ``post`` (an envelope for an
  entity's mailbox: the outcome events of :mod:`actors.priority.lane`).

**Lifetime.** The child lives as long as the channel: when its host stops,
closes it, or dies (kill -9 included), the child reads the end of the channel
and exits, closing its lane connections, so the pool's waiting requests fail as
retryable and the next ones find the host's successor. A child that dies while
its host lives is started again by the host (:class:`LaneProcess`), at most once
per :data:`RESTART_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from runtime.envelope import Envelope, pack, unpack
from runtime.errors import CommandpostError, RejectedError, UnknownEntityError
from runtime.lanewire import LaneServer

__all__ = ["RESTART_S", "LaneProcess", "behaviour_path", "lane_resources", "serve_blob"]

log = logging.getLogger("commandpost.laneproc")

_LEN: Final = struct.Struct("!I")
#: The largest control frame either side accepts (bytes): an init with every view.
_MAX_FRAME: Final = 64 << 20
#: How long a host waits for its lane process to listen (s).
START_TIMEOUT_S: Final = 20.0
#: A lane process that died is started again at most this often (s).
RESTART_S: Final = 1.0
_MISSING: Final = object()
#: Where the ``runtime`` package lies: the child imports it (and the behaviours) from there.
_ROOT: Final = str(Path(__file__).resolve().parent.parent)

Handler = Callable[[Mapping[str, Any], Envelope, Any], Any]


def lane_resources(clock: Any, grant_all: bool, rules: str | None) -> dict[str, Any]:
    """A lane's resources: the city's ``clock``, which the entities' decisions run on,
    whether the policy grants every request (the latency bench), and the service's own
    rules when it runs its own (checked before it started)."""
    out: dict[str, Any] = {"clock": clock, "priority_grant_all": grant_all}
    if rules:
        from actors.priority.policy import parse_priority_config

        out["priority_config"] = parse_priority_config(rules, "<service priority_rules>")
    return out


async def serve_blob(blob: bytes, resolve: Callable[[str], tuple[Mapping[str, Any], Any]],
                     lane: Any) -> bytes:
    """Serve one packed envelope on its target's lane: ``resolve`` gives the target's
    published view and behaviour (or raises); the answer packed as the pool reads it."""
    try:
        env = Envelope.from_wire(unpack(blob))
        view, behaviour = resolve(env.target)
        handler = getattr(behaviour, "on_priority", None)
        if handler is None:
            raise RejectedError(f"{env.target} has no priority lane", code="no_priority")
        result = await handler(view, env, lane)
        return pack({"ok": True, "result": result})
    except CommandpostError as exc:
        return pack({"ok": False, "error": str(exc),
                     "code": getattr(exc, "code", type(exc).__name__)})


def behaviour_path(behaviour: Any) -> str | None:
    """``"module:Qualname"`` of a class a child process can import, else None."""
    module = getattr(behaviour, "__module__", "")
    name = getattr(behaviour, "__qualname__", "")
    if not isinstance(behaviour, type) or not module or module == "__main__" or "<" in name:
        return None
    found: Any = sys.modules.get(module)
    for part in name.split("."):
        found = getattr(found, part, None)
    return f"{module}:{name}" if found is behaviour else None


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    found: Any = importlib.import_module(module)
    for part in name.split("."):
        found = getattr(found, part)
    return found


def _frame(doc: Mapping[str, Any]) -> bytes:
    body = pack(dict(doc))
    return _LEN.pack(len(body)) + body


async def _read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next control frame, or None at the end of the channel."""
    try:
        (length,) = _LEN.unpack(await reader.readexactly(_LEN.size))
        if length > _MAX_FRAME:
            raise ConnectionError(f"control frame of {length} bytes")
        doc = unpack(await reader.readexactly(length), max_size=_MAX_FRAME)
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        return None
    return doc if isinstance(doc, dict) else None


# -- the host's side -------------------------------------------------------------------
class LaneProcess:
    """A host's lane process, started and watched from the host's default loop."""

    def __init__(self, init: Mapping[str, Any], post: Callable[[Envelope], None]) -> None:
        self._init = dict(init)
        self._post = post
        self._sent: dict[str, dict[str, Any]] = {}  # entity -> the view the child holds
        self._pending: dict[str, Mapping[str, Any]] = {}  # entity -> view not yet sent
        self._flush_scheduled = False
        self._child: subprocess.Popen[bytes] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self._stopping = False
        self._started_at = 0.0
        self.endpoint: tuple[str, int] | None = None
        self.pid = 0
        self.restarts = 0
        self._ready: asyncio.Future[tuple[str, int] | None] | None = None

    @property
    def alive(self) -> bool:
        return self.endpoint is not None and not self._stopping

    async def start(self, views: Mapping[str, Mapping[str, Any]]) -> tuple[str, int] | None:
        """Start the child with ``views`` as they stand and wait until it listens: where,
        or None when it cannot serve this host's lane (the reason is logged)."""
        await self.spawn(views)
        return await self.wait_ready()

    async def spawn(self, views: Mapping[str, Mapping[str, Any]]) -> None:
        """Start the child with ``views`` as they stand, without waiting for it: the views
        published from now on follow (:meth:`view`) once this returns. The child takes
        the priority of the thread that starts it."""
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._started_at = time.monotonic()
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_ROOT, env.get("PYTHONPATH", "")) if p)
        try:
            args = [sys.executable, "-m", "runtime.laneproc", str(theirs.fileno())]
            fds = (theirs.fileno(),)
            self._child = subprocess.Popen(args, pass_fds=fds, env=env,  # noqa: ASYNC220
                                           stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        reader, self._writer = await asyncio.open_connection(sock=ours)
        self._sent = {eid: dict(v) for eid, v in views.items()}
        self._writer.write(_frame({**self._init, "t": "init", "views": self._sent}))
        self._reading = loop.create_task(self._read(reader), name="lane-process.read")

    async def wait_ready(self) -> tuple[str, int] | None:
        """Where the child listens once it does; None when it cannot serve or did not
        listen within :data:`START_TIMEOUT_S` (it is stopped then)."""
        assert self._ready is not None, "spawn first"
        try:
            where = await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT_S)
        except TimeoutError:
            log.warning("lane process %s did not listen within %.0fs", self.pid_or_child,
                        START_TIMEOUT_S)
            where = None
        if where is None:
            await self.stop()
        return where

    @property
    def pid_or_child(self) -> int:
        return self.pid or (self._child.pid if self._child is not None else 0)

    def view(self, entity_id: str, view: Mapping[str, Any]) -> None:
        """An entity published ``view``: the child gets what changed, once per loop turn."""
        if entity_id not in self._sent:
            return
        self._pending[entity_id] = view
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        changes: dict[str, list[Any]] = {}
        for eid, view in pending.items():
            held = self._sent[eid]
            changed = {k: v for k, v in view.items() if held.get(k, _MISSING) != v}
            gone = [k for k in held if k not in view]
            if changed or gone:
                held.update(changed)
                for k in gone:
                    del held[k]
                changes[eid] = [changed, gone]
        if changes and self._writer is not None and not self._writer.is_closing():
            self._writer.write(_frame({"t": "view", "changes": changes}))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            doc = await _read_frame(reader)
            if doc is None:
                break
            kind = doc.get("t")
            if kind == "post":
                try:
                    self._post(Envelope.from_wire(doc["env"]))
                except (CommandpostError, KeyError, TypeError, ValueError) as exc:
                    log.warning("lane process posted what cannot be routed: %s", exc)
            elif kind == "ready" and self._ready is not None and not self._ready.done():
                self.pid = int(doc.get("pid") or 0)
                self.endpoint = (str(doc["endpoint"][0]), int(doc["endpoint"][1]))
                self._ready.set_result(self.endpoint)
            elif kind == "failed" and self._ready is not None and not self._ready.done():
                log.warning("lane process cannot serve this host's lane: %s", doc.get("error"))
                self._ready.set_result(None)
        self.endpoint = None
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        if self._writer is not None:
            self._writer.close()
        if self._child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.get_running_loop().run_in_executor(None, self._child.wait, 5.0)
        if not self._stopping:
            asyncio.get_running_loop().create_task(self._restart(), name="lane-process.restart")

    async def _restart(self) -> None:
        code = self._child.returncode if self._child is not None else None
        log.error("lane process %d ended (exit %s): starting it again", self.pid_or_child, code)
        await asyncio.sleep(max(0.0, RESTART_S - (time.monotonic() - self._started_at)))
        if self._stopping:
            return
        self.restarts += 1
        self.pid = 0
        await self.start(self._sent)
        if self._stopping:  # stopped while this one started: it goes too
            await self.stop()

    async def stop(self) -> None:
        """Close the channel (the child exits) and reap the child."""
        self._stopping = True
        self.endpoint = None
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(_frame({"t": "stop"}))
            self._writer.close()
        child = self._child
        if child is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(None, child.wait, 5.0)
            except subprocess.TimeoutExpired:
                child.kill()
                await asyncio.get_running_loop().run_in_executor(None, child.wait)
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading


# -- the child's side ------------------------------------------------------------------
class _ChildLane:
    """The :class:`~runtime.entity.PriorityLane` of a lane process: its resources, and
    posts that go back to the host's mailboxes over the channel."""

    def __init__(self, resources: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        self.resources = resources
        self._writer = writer

    def post(self, env: Envelope) -> None:
        if not self._writer.is_closing():
            self._writer.write(_frame({"t": "post", "env": env.to_wire()}))


class _Mirror:
    def __init__(self, behaviours: Mapping[str, Any],
                 views: Mapping[str, Mapping[str, Any]]) -> None:
        self.behaviours = dict(behaviours)
        self.held: dict[str, dict[str, Any]] = {eid: dict(views.get(eid) or {})
                                                for eid in behaviours}
        self.views: dict[str, Mapping[str, Any]] = {
            eid: MappingProxyType(dict(v)) for eid, v in self.held.items()}
        self._tasks: set[asyncio.Task[None]] = set()

    def apply(self, changes: Mapping[str, Any]) -> list[str]:
        """Apply a ``view`` frame; the entities whose first view this was."""
        first = []
        for eid, (changed, gone) in changes.items():
            held = self.held.get(eid)
            if held is None:
                continue
            if not held and changed:
                first.append(eid)
            held.update(changed)
            for k in gone:
                held.pop(k, None)
            self.views[eid] = MappingProxyType(dict(held))
        return first

    def prepare(self, entity_ids: Sequence[str], lane: _ChildLane) -> None:
        """Let each entity's behaviour get the lane ready for it (in the background)."""
        loop = asyncio.get_running_loop()
        for eid in entity_ids:
            prepare = getattr(self.behaviours[eid], "prepare_priority_lane", None)
            if prepare is not None:
                task = loop.create_task(self._prepare(eid, prepare, lane))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _prepare(self, eid: str, prepare: Any, lane: _ChildLane) -> None:
        try:
            await prepare(self.views[eid], lane)
        except Exception:  # a lane not prepared serves all the same
            log.exception("%s: preparing the lane failed", eid)

    def resolve(self, entity_id: str) -> tuple[Mapping[str, Any], Any]:
        behaviour = self.behaviours.get(entity_id)
        if behaviour is None:
            raise UnknownEntityError(entity_id)
        return self.views[entity_id], behaviour


async def _child(fd: int) -> int:
    from runtime.clock import clock_from_wire
    from runtime.gcpolicy import settle
    from runtime.niceness import enter_realtime, restore_priority

    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    init = await _read_frame(reader)
    if init is None or init.get("t") != "init":
        return 2
    # Before any thread starts (they inherit the class): the real-time one if the service
    # asks for it, else at least the normal one back.
    realtime = init.get("realtime")
    if not (isinstance(realtime, int) and enter_realtime(realtime)) and not restore_priority():
        log.warning("lane process %d runs at its host's background priority (started again "
                    "by a host in the background, without the right to raise it)", os.getpid())
    try:
        behaviours = {str(eid): _load(str(path))
                      for eid, path in (init.get("behaviours") or {}).items()}
        resources = lane_resources(clock_from_wire(init.get("clock")),
                                   bool(init.get("grant_all")), init.get("rules") or None)
        mirror = _Mirror(behaviours, init.get("views") or {})
        lane = _ChildLane(resources, writer)
        server = LaneServer(bytes.fromhex(str(init["secret"])),
                            lambda blob: serve_blob(blob, mirror.resolve, lane))
        endpoint = await server.start(str(init.get("address") or "127.0.0.1"))
    except (CommandpostError, ImportError, AttributeError, KeyError, ValueError,
            OSError) as exc:
        writer.write(_frame({"t": "failed", "error": f"{type(exc).__name__}: {exc}"}))
        await writer.drain()
        return 1
    mirror.prepare([eid for eid, held in mirror.held.items() if held], lane)
    settle("lane process")
    writer.write(_frame({"t": "ready", "endpoint": list(endpoint), "pid": os.getpid()}))
    try:
        while True:
            doc = await _read_frame(reader)
            if doc is None or doc.get("t") == "stop":
                break
            if doc.get("t") == "view":
                mirror.prepare(mirror.apply(doc.get("changes") or {}), lane)
    finally:
        server.close()
        writer.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m runtime.laneproc FD``: serve the lane its host sends on ``FD``."""
    args = sys.argv[1:] if argv is None else argv
    # The channel, not a signal, ends the process: a Ctrl-C at the service's terminal
    # reaches its host, which stops it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=os.environ.get("COMMANDPOST_LOG", "INFO"))
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m runtime.laneproc FD (started by its host)", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_child(int(args[0])))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
