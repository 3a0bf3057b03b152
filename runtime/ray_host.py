"""The host as a Ray actor: one OS process running many entities.

Three concurrency groups, three event loops:

* default — entities, their mailboxes, the journal, checkpoints, batches in;
* ``control`` — ``ping`` and ``sentinel`` for the supervisor's death watch and
  heartbeat, so a busy default loop never makes a healthy host look dead;
* ``priority`` — the latency-critical lane (bus priority): served on its own
  loop, reading the entity's published view and handing work back to the
  default loop thread-safely.

Hosts run with ``max_restarts=0``: their supervisor, not Ray, replaces them.

A host whose entities have a priority lane lowers the interpreter's thread
switch interval (:data:`LANE_SWITCH_S`, or ``COMMANDPOST_LANE_SWITCH_S``): the
lane's thread waits at most that long for the interpreter while the default
loop is busy, instead of Python's 5 ms. It costs nothing while the lane is idle.
A host with no entity on the bus-priority path runs at the background nice
value (:mod:`runtime.niceness`).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from runtime.cell import EntityFactory
from runtime.clock import clock_from_wire
from runtime.device_port import DeviceManagerFactory
from runtime.entity import has_priority_lane, is_latency_critical
from runtime.envelope import Envelope, MessageKind, pack, unpack
from runtime.errors import (
    ConfigError,
    RejectedError,
    RetryableError,
    UnknownEntityError,
)
from runtime.gcpolicy import settle
from runtime.host import HostConfig, HostCore
from runtime.inventory import Equipment
from runtime.laneproc import (
    START_TIMEOUT_S,
    LaneProcess,
    behaviour_path,
    lane_resources,
    serve_blob,
)
from runtime.lanewire import LaneClient, LaneServer
from runtime.niceness import check_nice, check_realtime, enter_realtime, lower_priority
from runtime.placement import equipment_from_wire
from runtime.router import Directory
from runtime.store import STREAM_RETENTION_S, RedisStore
from supervisors.spec import Backoff, IntensityScope, RestartType, Strategy, SupervisorOptions

log = logging.getLogger("commandpost.ray_host")

#: The thread switch interval of a host with priority lanes (s).
LANE_SWITCH_S = 0.0005
#: How long a member waits for a host's lane connection before going through Ray (s).
_LANE_CONNECT_S = 1.0
#: How often a lane's endpoint is looked at while its process starts (s).
_LANE_POLL_S = 0.02

NAMESPACE = "commandpost"
REGISTRY_BLOB = "hosts"  # store blob: host id -> {"actor": name, "generation": n}


def load_factory(path: str) -> Callable[[Equipment], EntityFactory]:
    """Resolve ``"package.module:function"`` to the entity factory chooser."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
        chooser: Callable[[Equipment], EntityFactory] = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load entity factory {path!r}: {exc}") from exc
    return chooser


def load_device_factory(path: str) -> DeviceManagerFactory:
    """Resolve ``"package.module:function"`` to the device-manager factory."""
    module_name, _, attr = path.partition(":")
    try:
        factory: DeviceManagerFactory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load device manager {path!r}: {exc}") from exc
    return factory


def options_from_wire(d: Mapping[str, Any]) -> SupervisorOptions:
    b = d.get("backoff") or {}
    return SupervisorOptions(
        strategy=Strategy(d.get("strategy", "one_for_one")),
        max_restarts=int(d.get("max_restarts", 5)),
        max_seconds=float(d.get("max_seconds", 10.0)),
        scope=IntensityScope(d.get("scope", "child")),
        backoff=Backoff(
            initial_s=float(b.get("initial_s", 0.0)),
            factor=float(b.get("factor", 2.0)),
            max_s=float(b.get("max_s", 2.0)),
            jitter=float(b.get("jitter", 0.2)),
        ),
    )


def options_to_wire(o: SupervisorOptions) -> dict[str, Any]:
    return {
        "strategy": str(o.strategy), "max_restarts": o.max_restarts,
        "max_seconds": o.max_seconds, "scope": str(o.scope),
        "backoff": {"initial_s": o.backoff.initial_s, "factor": o.backoff.factor,
                    "max_s": o.backoff.max_s, "jitter": o.backoff.jitter},
    }


class RayTransport:
    """Batches to other hosts as one Ray call each, resolving hosts by registry; priority
    envelopes on the target host's lane connection (:mod:`runtime.lanewire`) when the
    service gave its hosts a lane secret, else as one Ray call too."""

    def __init__(self, store: RedisStore, namespace: str = NAMESPACE,
                 lane_secret: bytes = b"") -> None:
        self._store = store
        self._namespace = namespace
        self._handles: dict[str, Any] = {}
        self._names: dict[str, str] = {}
        self._lane_secret = lane_secret
        self._lanes: dict[str, LaneClient] = {}
        self._lanes_refused: dict[str, Any] = {}  # host id -> the handle whose lane failed
        self._lane_locks: dict[str, asyncio.Lock] = {}

    async def _refresh(self) -> None:
        blob = await self._store.get_blob(REGISTRY_BLOB)
        if blob:
            reg = unpack(blob)
            self._names = {h: str(v["actor"]) for h, v in reg.items()}
        self._handles.clear()

    async def handle(self, host_id: str) -> Any:
        h = self._handles.get(host_id)
        if h is not None:
            return h
        if host_id not in self._names:
            await self._refresh()
        name = self._names.get(host_id)
        if name is None:
            raise RetryableError(f"host {host_id} is not registered")
        try:
            h = ray.get_actor(name, namespace=self._namespace)
        except ValueError as exc:
            await self._refresh()
            raise RetryableError(f"host {host_id} ({name}) is not reachable") from exc
        self._handles[host_id] = h
        return h

    async def _lost(self, host_id: str, what: str) -> RetryableError:
        """The error for a host gone mid-call: its handle forgotten, the registry read
        again (the host may have been replaced)."""
        self._handles.pop(host_id, None)
        await self._refresh()
        return RetryableError(f"host {host_id} {what}")

    async def _lane(self, host_id: str) -> LaneClient | None:
        """The connection to ``host_id``'s lane, made on first use; None when the host
        serves no lane connection (the call goes through Ray)."""
        got = self._lanes.get(host_id)
        if got is not None and not got.closed:
            return got
        lock = self._lane_locks.setdefault(host_id, asyncio.Lock())
        async with lock:
            got = self._lanes.get(host_id)
            if got is not None and not got.closed:
                return got
            handle = await self.handle(host_id)
            if self._lanes_refused.get(host_id) is handle:
                return None  # this incarnation's lane is not usable from here
            try:
                endpoint = await handle.lane_endpoint.remote()
            except RayActorError as exc:
                raise await self._lost(host_id, "died before its lane answered") from exc
            if not endpoint:
                return None  # not serving yet (or stopped): through Ray, asked again next time
            where = (str(endpoint[0]), int(endpoint[1]))
            try:
                client = await LaneClient.connect(*where, self._lane_secret, _LANE_CONNECT_S)
            except (OSError, TimeoutError) as exc:
                # A host of another start of the service (adopted, with its secret), or a
                # network between: through Ray while this incarnation of the host lives.
                self._lanes_refused[host_id] = handle
                log.warning("lane of %s at %s:%d not usable (%s): through Ray", host_id,
                            *where, exc)
                return None
            self._lanes[host_id] = client
            return client

    async def priority(self, host_id: str, blob: bytes) -> bytes:
        if self._lane_secret:
            lane = await self._lane(host_id)
            if lane is not None:
                try:
                    return await lane.call(blob)
                except ConnectionError as exc:
                    self._lanes.pop(host_id, None)
                    raise await self._lost(host_id, "closed its lane during a priority call") \
                        from exc
        handle = await self.handle(host_id)
        try:
            answer: bytes = await handle.priority.remote(blob)
        except RayActorError as exc:
            raise await self._lost(host_id, "died during a priority call") from exc
        return answer

    async def send_batch(self, host_id: str, blob: bytes) -> Mapping[str, Any]:
        handle = await self.handle(host_id)
        try:
            result: Mapping[str, Any] = await handle.deliver.remote(blob)
        except RayActorError as exc:
            raise await self._lost(host_id, "died during delivery") from exc
        return result


class _Lane:
    """The priority lane's resources and its hand-off to the default loop (a host that
    serves its lane itself, without a lane process)."""

    def __init__(self, core: HostCore) -> None:
        rules = core.option("priority_rules")
        self.resources: dict[str, Any] = lane_resources(
            core.city_clock, bool(core.option("priority_grant_all")),
            str(rules) if rules else None)
        self._core = core

    def post(self, env: Envelope) -> None:
        loop = self._core.loop
        if loop is None:
            raise RetryableError("host is not started")
        loop.call_soon_threadsafe(self._core.route, env)


@ray.remote(  # type: ignore[call-overload]
    num_cpus=0,
    max_restarts=0,
    max_task_retries=0,
    concurrency_groups={"control": 64, "priority": 16},
)
class HostActor:
    """A Ray process hosting entities; created blank, then given an assignment."""

    def __init__(self) -> None:
        logging.basicConfig(level=os.environ.get("COMMANDPOST_LOG", "INFO"))
        self.core: HostCore | None = None
        self.store: RedisStore | None = None
        self.lane: _Lane | None = None
        # The lane's connection server (runtime.lanewire), started on the priority loop
        # when a member first asks where it listens.
        self._lane_secret = b""
        self._lane_server: LaneServer | None = None
        self._lane_endpoint: tuple[str, int] | None = None
        self._lane_loop: asyncio.AbstractEventLoop | None = None
        self._lane_lock: asyncio.Lock | None = None
        # The lane process (runtime.laneproc) and the priority loop's connection to it.
        self._lane_child: LaneProcess | None = None  # started
        self._lane_process: LaneProcess | None = None  # listening
        self._lane_process_started = threading.Event()
        self._lane_process_clients: dict[asyncio.AbstractEventLoop, LaneClient] = {}
        self._stopped = threading.Event()
        self._assigned = threading.Event()
        self.pid = os.getpid()
        self.created = time.time()

    async def warm(self, modules: list[str]) -> int:
        """Import entity code ahead of an assignment (a warm spare pays it up front)."""
        for m in modules:
            importlib.import_module(m)
        return self.pid

    async def assign(self, blob: bytes) -> dict[str, Any]:
        """Become host ``host_id``: load checkpoints, start entities and loops."""
        if self.core is not None:
            raise RejectedError("host already has an assignment", code="assigned")
        a = unpack(blob, max_size=256 << 20)
        self.store = RedisStore(a["store_url"], namespace=a["namespace"],
                                retention_s=a.get("retention_s", STREAM_RETENTION_S))
        await self.store.connect()
        chooser = load_factory(a["factory"])
        equipment = [equipment_from_wire(d) for d in a["equipment"]]
        cfg = a.get("config") or {}
        options = a.get("device_options") or {}
        self._lane_secret = bytes.fromhex(str(options.get("lane_secret") or ""))
        config = HostConfig(
            mailbox_capacity=int(cfg.get("mailbox_capacity", 256)),
            checkpoint_interval_s=float(cfg.get("checkpoint_interval_s", 0.25)),
            supervision=options_from_wire(cfg.get("supervision") or {}),
            restart_type=RestartType(cfg.get("restart_type", "permanent")),
        )
        core = HostCore(
            a["host_id"], equipment, factory_for=chooser, store=self.store,
            transport=RayTransport(self.store, a.get("ray_namespace", NAMESPACE),
                                   lane_secret=self._lane_secret),
            directory=Directory(a.get("directory") or {}), config=config,
            generation=int(a.get("generation", 0)),
            devices=load_device_factory(a["devices"]) if a.get("devices") else None,
            device_options=a.get("device_options") or {},
            city_clock=clock_from_wire(a.get("clock")),
        )
        self.core = core
        self.lane = _Lane(core)
        core.priority_lane = self._serve_priority
        realtime = check_realtime(int(cfg.get("realtime") or 0))
        # Started before the host may lower its priority: the child keeps the normal one.
        apart = await self._spawn_lane_process(core, a.get("clock"), realtime)
        factories = [slot.factory for slot in core.slots.values()]
        if not apart and any(has_priority_lane(f) for f in factories):
            sys.setswitchinterval(float(os.environ.get("COMMANDPOST_LANE_SWITCH_S",
                                                       LANE_SWITCH_S)))
        # A lane served from its own process takes its latency there: the host itself is
        # then on the critical path only for what says so (the pool's members).
        if not any(is_latency_critical(f, lane_apart=apart) for f in factories):
            lower_priority(check_nice(cfg.get("background_nice") or 0))
        elif all(getattr(f, "LATENCY_CRITICAL", False) for f in factories):
            # Nothing but the critical path here (a pool member): the real-time class, if
            # the service asks for it. A host that serves a lane itself carries telemetry too.
            enter_realtime(realtime)
        await core.start()
        settle(f"host {core.host_id}")
        self._assigned.set()
        return core.status()

    async def _spawn_lane_process(self, core: HostCore, clock: Any, realtime: int) -> bool:
        """Serve this host's priority lane from a process of its own (runtime.laneproc)
        when the service gave a lane secret and every lane's behaviour can be imported
        there: whether one was started. Until it listens, and if it cannot serve, the
        lane is served here."""
        behaviours = {eid: behaviour_path(slot.factory) for eid, slot in core.slots.items()
                      if has_priority_lane(slot.factory)}
        if not self._lane_secret or not behaviours or None in behaviours.values():
            self._lane_process_started.set()
            return False
        rules = core.option("priority_rules")
        process = LaneProcess({
            "secret": self._lane_secret.hex(), "address": "127.0.0.1",
            "behaviours": behaviours, "clock": clock,
            "grant_all": bool(core.option("priority_grant_all")),
            "rules": str(rules) if rules else "",
            "realtime": realtime}, core.route)
        try:
            await process.spawn({eid: {} for eid in behaviours})
        except OSError as exc:
            log.warning("%s: no lane process (%s): the lane is served here", core.host_id, exc)
            self._lane_process_started.set()
            return False
        self._lane_child = process
        core.view_listener = process.view

        async def ready() -> None:
            try:
                if await process.wait_ready() is not None:
                    self._lane_process = process
                else:
                    core.view_listener = None
                    log.warning("%s: the lane process cannot serve: the lane is served here",
                                core.host_id)
            finally:
                self._lane_process_started.set()

        asyncio.get_running_loop().create_task(ready(), name=f"{core.host_id}.lane-process")
        return True

    # -- control group ---------------------------------------------------
    @ray.method(concurrency_group="control")
    async def ping(self) -> dict[str, Any]:
        """Liveness for the supervisor: pid, main-loop lag, whether entities gave up."""
        core = self.core
        return {
            "pid": self.pid,
            "node": ray.get_runtime_context().get_node_id(),
            "host_id": core.host_id if core else "",
            "ready": bool(core and core.ready),
            "lag_s": core.lag_s() if core else 0.0,
            "gave_up": bool(core and core.gave_up),
            "entities": len(core.slots) if core else 0,
            "entity_restarts": sum(s.stats.crashes for s in core.slots.values()) if core else 0,
            "failed": sum(1 for s in core.slots.values() if s.status == "failed") if core else 0,
            "online": core.online_count() if core else 0,
        }

    @ray.method(concurrency_group="control")
    async def sentinel(self) -> str:
        """Never answers while the host lives: its failure is the death notice."""
        # A threading.Event: stop() runs on the default loop, this on the control loop.
        while not self._stopped.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        return "stopped"

    # -- default group ---------------------------------------------------
    async def deliver(self, blob: bytes) -> dict[str, int]:
        if self.core is None:
            raise RetryableError("host has no assignment yet")
        return self.core.deliver_batch(blob)

    async def send(self, blobs: list[bytes]) -> int:
        """Route envelopes as if an entity of this host sent them (tests, tools)."""
        if self.core is None:
            raise RetryableError("host has no assignment yet")
        n = 0
        for b in blobs:
            self.core.route(Envelope.from_wire(unpack(b)))
            n += 1
        return n

    async def request(self, target: str, type: str, payload: Any = None,
                      timeout: float = 5.0) -> Any:
        if self.core is None:
            raise RetryableError("host has no assignment yet")
        return await self.core.request(target, type, payload, timeout=timeout)

    async def ping_entities(self, timeout: float = 10.0) -> dict[str, Any]:
        if self.core is None:
            raise RetryableError("host has no assignment yet")
        return await self.core.ping_entities(timeout=timeout)

    async def status(self) -> dict[str, Any]:
        if self.core is None:
            return {"host_id": "", "pid": self.pid, "entities": 0, "ready": False}
        return self.core.status()

    async def snapshot(self, ids: list[str] | None = None) -> dict[str, Any]:
        if self.core is None:
            raise RetryableError("host has no assignment yet")
        return self.core.snapshot(ids)

    async def state_fields(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        if self.core is None:
            raise RetryableError("host has no assignment yet")
        return self.core.state_fields(keys)

    async def entity(self, entity_id: str) -> dict[str, Any]:
        if self.core is None:
            raise UnknownEntityError(entity_id)
        return self.core.entity_info(entity_id)

    async def drain(self) -> dict[str, Any]:
        """Ship buffered batches and flush checkpoints (used before measuring)."""
        if self.core is None:
            return {}
        await self.core.outbox.drain()
        return self.core.status()

    async def restart_entity(self, entity_id: str) -> None:
        if self.core is None or self.core.supervisor is None:
            raise UnknownEntityError(entity_id)
        await self.core.supervisor.restart_child(entity_id)

    async def stop(self) -> bool:
        """Graceful stop: entities in reverse order, last checkpoints, then idle."""
        if self._lane_child is not None:
            await self._lane_child.stop()
        if self._lane_server is not None and self._lane_loop is not None:
            self._lane_loop.call_soon_threadsafe(self._lane_server.close)
        if self.core is not None:
            await self.core.stop()
        if self.store is not None:
            await self.store.close()
        self._stopped.set()
        return True

    # -- priority group --------------------------------------------------
    @ray.method(concurrency_group="priority")
    async def lane_endpoint(self) -> list[Any] | None:
        """Where this host serves its lane connection (``[address, port]``), listening
        from the first ask on; None without an assignment or a lane secret."""
        if self.core is None or self.lane is None or not self._lane_secret \
                or self._stopped.is_set():
            return None
        process = await self._lane_process_ready()
        if process is not None:
            return list(process.endpoint) if process.endpoint else None
        if self._lane_lock is None:
            self._lane_lock = asyncio.Lock()
        async with self._lane_lock:
            if self._lane_endpoint is None:
                server = LaneServer(self._lane_secret, self._serve_priority)
                # Given a secret by a service on a Ray of its own: one machine.
                self._lane_endpoint = await server.start("127.0.0.1")
                self._lane_server = server
                self._lane_loop = asyncio.get_running_loop()
        return list(self._lane_endpoint)

    @ray.method(concurrency_group="priority")
    async def priority(self, blob: bytes) -> bytes:
        """Serve a latency-critical envelope at once, ahead of the default loop's work."""
        return await self._serve_priority(blob)

    async def _lane_process_ready(self) -> LaneProcess | None:
        """The lane process, once it listens; None when this host serves its lane itself."""
        deadline = time.monotonic() + START_TIMEOUT_S
        # A threading.Event: the process is started on the default loop, this is the
        # priority loop.
        while not self._lane_process_started.is_set() \
                and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_LANE_POLL_S)
        process = self._lane_process
        while process is not None and process.endpoint is None \
                and not self._stopped.is_set() \
                and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_LANE_POLL_S)  # being started again
        return process

    async def _serve_priority(self, blob: bytes) -> bytes:
        process = self._lane_process
        if process is not None:
            return await self._forward(process, blob)
        if self.core is None or self.lane is None:
            return _retryable("host has no assignment yet")
        return await serve_blob(blob, self._resolve, self.lane)

    def _resolve(self, target: str) -> tuple[Mapping[str, Any], Any]:
        slot = self.core.slots.get(target) if self.core is not None else None
        if slot is None:
            raise UnknownEntityError(target)
        entity = slot.entity
        return slot.view, type(entity) if entity is not None else slot.factory

    async def _forward(self, process: LaneProcess, blob: bytes) -> bytes:
        """A request that came through Ray (or from an entity of this host), served by the
        lane process like those on its own connections."""
        loop = asyncio.get_running_loop()
        client = self._lane_process_clients.get(loop)
        try:
            if client is None or client.closed:
                where = process.endpoint
                if where is None:
                    return _retryable("the lane process is starting again")
                client = await LaneClient.connect(*where, self._lane_secret, _LANE_CONNECT_S)
                self._lane_process_clients[loop] = client
            return await client.call(blob)
        except (ConnectionError, OSError, TimeoutError) as exc:
            self._lane_process_clients.pop(loop, None)
            return _retryable(f"the lane process is unreachable: {exc}")


def _retryable(error: str) -> bytes:
    return pack({"ok": False, "error": error, "code": "RetryableError"})


def host_options(name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
    """Ray options of a host actor: detached and named, so it outlives its creator."""
    return {"name": name, "namespace": namespace, "lifetime": "detached"}


def call(ref: Any, timeout: float) -> Any:
    """``ray.get`` with a deadline, mapping Ray's failures into the error tree."""
    try:
        return ray.get(ref, timeout=timeout)
    except GetTimeoutError as exc:
        raise RetryableError(f"no answer within {timeout:.1f}s") from exc
    except RayActorError as exc:
        raise RetryableError(f"actor died: {exc}") from exc


__all__ = ["NAMESPACE", "HostActor", "MessageKind", "RayTransport", "call", "host_options"]
