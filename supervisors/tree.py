"""The supervision tree over Ray: root → domain supervisors → host processes.

The same :class:`~supervisors.core.Supervisor` that restarts entities inside a
host restarts hosts here; only the child differs. A :class:`HostChild` is one
incarnation of a host: a detached, named Ray actor that it either adopts (a
restarted root finds it alive), takes from the warm-spare pool, or creates.
Its death is noticed by a pending ``sentinel`` call (fails ~10 ms after the
process dies) and its hangs by a heartbeat ``ping`` with a deadline; both are
served in the host's ``control`` concurrency group.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError

from runtime.envelope import pack, unpack
from runtime.errors import RetryableError
from runtime.ray_host import REGISTRY_BLOB, HostActor, host_options
from runtime.store import RedisStore
from supervisors.core import Supervisor
from supervisors.spec import (
    ExitKind,
    ExitReason,
    RestartType,
    Strategy,
    SupervisorEvent,
    SupervisorOptions,
)

log = logging.getLogger("commandpost.tree")

ROOT_NAME = "commandpost-root"
SPARE_PREFIX = "cp-spare-"
HOST_PREFIX = "cp-host-"


@dataclass(frozen=True, slots=True)
class TreeConfig:
    """How the tree is shaped and how patient each level is."""

    root: SupervisorOptions = SupervisorOptions(max_restarts=3, max_seconds=30.0)
    domain: SupervisorOptions = SupervisorOptions(max_restarts=5, max_seconds=10.0)
    heartbeat_s: float = 1.0
    heartbeat_timeout_s: float = 3.0
    heartbeat_misses: int = 3
    hung_lag_s: float = 15.0
    start_timeout_s: float = 120.0
    spares: int = 1
    # After a replacement the pool refills once the new host has every device online (or
    # after this long): a spare warming up would take the cores from the recovery.
    spare_refill_grace_s: float = 10.0
    warm_modules: tuple[str, ...] = ()
    domains: Mapping[str, SupervisorOptions] = field(default_factory=dict)  # per-domain overrides
    # Restart type of hosts, by host id or by domain (a host id wins); default permanent.
    restart_types: Mapping[str, RestartType] = field(default_factory=dict)

    def restart_type(self, host_id: str, domain: str) -> RestartType:
        return self.restart_types.get(host_id, self.restart_types.get(domain,
                                                                      RestartType.PERMANENT))


@dataclass
class HostInfo:
    """What the tree knows of a host, for ``/api/v1/tree``."""

    host_id: str
    domain: str
    mode: str
    actor: str = ""
    pid: int = 0
    node: str = ""
    entities: int = 0
    entity_restarts: int = 0
    failed_entities: int = 0
    online: int = 0
    generation: int = 0
    status: str = "starting"
    restarts: int = 0
    last_seen: float = 0.0
    starts: int = 0  # incarnations this tree started or adopted


class Registry:
    """Host id → current actor name, persisted so a restarted root can re-adopt."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.entries: dict[str, dict[str, Any]] = {}

    async def load(self) -> None:
        blob = await self.store.get_blob(REGISTRY_BLOB)
        self.entries = dict(unpack(blob)) if blob else {}

    async def set(self, host_id: str, actor: str, generation: int) -> None:
        self.entries[host_id] = {"actor": actor, "generation": generation}
        await self.store.put_blob(REGISTRY_BLOB, pack(self.entries))


class SparePool:
    """Host processes started ahead of need, so a replacement costs no process start."""

    def __init__(self, size: int, namespace: str, warm_modules: Sequence[str]) -> None:
        self.size = size
        self.namespace = namespace
        self.warm_modules = list(warm_modules)
        self._ready: list[tuple[str, Any]] = []
        self._filling: asyncio.Task[None] | None = None
        # Closed until the tree has started: spares warmed during a cold start would
        # take the cores from the hosts being started.
        self._open = False

    def adopt_existing(self, assigned: Collection[str] = ()) -> None:
        """Take over spares a previous root left running (not those serving a host now)."""
        for entry in ray.util.list_named_actors(all_namespaces=True):
            name = entry.get("name", "") if isinstance(entry, dict) else str(entry)
            ns = entry.get("namespace", "") if isinstance(entry, dict) else self.namespace
            if ns == self.namespace and name.startswith(SPARE_PREFIX) and name not in assigned:
                try:
                    self._ready.append((name, ray.get_actor(name, namespace=self.namespace)))
                except ValueError:
                    continue

    async def _make(self) -> tuple[str, Any]:
        name = SPARE_PREFIX + uuid.uuid4().hex[:10]
        handle = HostActor.options(**host_options(name, self.namespace)).remote()  # type: ignore[attr-defined]
        try:
            await handle.warm.remote(self.warm_modules)
        except BaseException:
            # Detached: a spare not handed to the pool (the pool closed while it warmed,
            # or it failed) would outlive the tree.
            ray.kill(handle, no_restart=True)
            raise
        return name, handle

    def prestart(self, count: int) -> None:
        """Have ``count`` blank host processes on the way at once, for a cold start.

        Ray spawns them, and they import the entity and device code, while the
        first hosts load their entities: an ordered start of N hosts then waits
        for N assignments (a few ms each), not also for N process starts and
        imports one after another. The warm-up is not awaited: should the
        assignment run first, it imports the code itself and the warm-up finds
        it imported. One left over (a host was adopted after all) serves as a
        spare.
        """
        for _ in range(count - len(self._ready)):
            name = SPARE_PREFIX + uuid.uuid4().hex[:10]
            handle = HostActor.options(**host_options(name, self.namespace)).remote()  # type: ignore[attr-defined]
            handle.warm.remote(self.warm_modules)
            self._ready.append((name, handle))

    def refill(self) -> None:
        """Open the pool (after the tree's start) and top it up in the background."""
        self._open = True
        if self.size <= 0 or (self._filling is not None and not self._filling.done()):
            return
        self._filling = asyncio.get_running_loop().create_task(self._fill(), name="spares.fill")

    async def _fill(self) -> None:
        while len(self._ready) < self.size:
            try:
                self._ready.append(await self._make())
            except RayActorError as exc:
                log.warning("spare host failed to start: %s", exc)
                await asyncio.sleep(1.0)

    async def take(self) -> tuple[str, Any] | None:
        """A spare if one is ready; the taker calls :meth:`top_up` when it can spare the cores."""
        return self._ready.pop(0) if self._ready else None

    @property
    def ready(self) -> int:
        """Spares warmed and waiting."""
        return len(self._ready)

    def top_up(self) -> None:
        """Refill in the background, unless the pool waits for the tree's start to end."""
        if self._open:
            self.refill()

    async def close(self) -> None:
        if self._filling is not None:
            self._filling.cancel()
            try:
                await self._filling
            except asyncio.CancelledError:
                if not self._filling.cancelled():
                    raise
        for _, handle in self._ready:
            ray.kill(handle, no_restart=True)
        self._ready.clear()


@dataclass
class TreeContext:
    """What every host incarnation needs from its tree."""

    config: TreeConfig
    store: RedisStore
    registry: Registry
    spares: SparePool
    namespace: str
    # host id, generation, replacing (an incarnation of it ran before) -> assignment blob
    assignment: Callable[[str, int, bool], bytes]
    infos: dict[str, HostInfo] = field(default_factory=dict)
    adoptable: dict[str, str] = field(default_factory=dict)  # host id -> actor name


class HostChild:
    """One incarnation of a host process (a ``Child`` of a domain supervisor)."""

    def __init__(self, host_id: str, ctx: TreeContext) -> None:
        self.host_id = host_id
        self.ctx = ctx
        self.info = ctx.infos[host_id]
        self.handle: Any = None
        self.name = ""
        self._exit: asyncio.Future[ExitReason] | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self._refill_at = 0.0  # monotonic deadline of a spare refill owed after a replacement

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._exit = loop.create_future()
        self.info.status = "starting"
        adopted = await self._adopt()
        if not adopted:
            generation = self.info.generation + 1
            spare = await self.ctx.spares.take()
            if spare is not None:
                self.name, self.handle = spare
            else:
                self.name = f"{HOST_PREFIX}{self.host_id}-{uuid.uuid4().hex[:6]}"
                self.handle = HostActor.options(  # type: ignore[attr-defined]
                    **host_options(self.name, self.ctx.namespace)).remote()
            # A host that ran before is replaced while the rest of the city runs: its
            # devices were read moments ago, so the new incarnation reads them at once.
            replacing = self.info.starts > 0
            try:
                await asyncio.wait_for(
                    self.handle.assign.remote(
                        self.ctx.assignment(self.host_id, generation, replacing)),
                    self.ctx.config.start_timeout_s,
                )
            except (RayActorError, TimeoutError) as exc:
                ray.kill(self.handle, no_restart=True)
                raise RetryableError(f"host {self.host_id} failed to start: {exc}") from exc
            self.info.generation = generation
            await self.ctx.registry.set(self.host_id, self.name, generation)
            # The pool gave (or lacked) a process: it refills once this host has recovered.
            self._refill_at = time.monotonic() + self.ctx.config.spare_refill_grace_s
        self.info.actor = self.name
        self.info.starts += 1
        await self._observe()
        self.info.status = "running"
        self._watchers = [
            loop.create_task(self._sentinel(), name=f"host[{self.host_id}].sentinel"),
            loop.create_task(self._heartbeat(), name=f"host[{self.host_id}].heartbeat"),
        ]

    async def _adopt(self) -> bool:
        name = self.ctx.adoptable.pop(self.host_id, "")
        if not name:
            return False
        try:
            handle = ray.get_actor(name, namespace=self.ctx.namespace)
            state: dict[str, Any] = await asyncio.wait_for(handle.ping.remote(), 5.0)
        except (ValueError, RayActorError, TimeoutError):
            return False
        if state.get("host_id") != self.host_id or not state.get("ready"):
            ray.kill(handle, no_restart=True)
            return False
        self.handle, self.name = handle, name
        log.info("adopted living host %s (%s, pid %s)", self.host_id, name, state.get("pid"))
        return True

    async def _observe(self) -> dict[str, Any]:
        state: dict[str, Any] = await asyncio.wait_for(
            self.handle.ping.remote(), self.ctx.config.heartbeat_timeout_s)
        i = self.info
        i.pid, i.node = int(state["pid"]), str(state["node"])
        i.entities, i.entity_restarts = int(state["entities"]), int(state["entity_restarts"])
        i.failed_entities = int(state.get("failed", 0))
        i.online = int(state.get("online", 0))
        i.last_seen = time.time()
        return state

    def _finish(self, reason: ExitReason) -> None:
        if self._exit is not None and not self._exit.done():
            self._exit.set_result(reason)

    async def _sentinel(self) -> None:
        try:
            await self.handle.sentinel.remote()
            self._finish(ExitReason(ExitKind.NORMAL, "host stopped"))
        except RayActorError as exc:
            self._finish(ExitReason(ExitKind.KILLED, f"host process died: {type(exc).__name__}"))

    async def _heartbeat(self) -> None:
        misses = 0
        cfg = self.ctx.config
        while True:
            await asyncio.sleep(cfg.heartbeat_s)
            try:
                state = await self._observe()
            except TimeoutError:
                misses += 1
                if misses >= cfg.heartbeat_misses:
                    self._finish(ExitReason(ExitKind.ERROR, f"no heartbeat for {misses} pings"))
                    return
                continue
            except RayActorError:
                return  # the sentinel reports the death
            misses = 0
            if self._refill_at and (int(state.get("online", 0)) >= int(state.get("entities", 0))
                                    or time.monotonic() >= self._refill_at):
                self._refill_at = 0.0
                self.ctx.spares.top_up()
            if state.get("lag_s", 0.0) > cfg.hung_lag_s:
                self._finish(ExitReason(ExitKind.ERROR, f"main loop hung {state['lag_s']:.1f}s"))
                return
            if state.get("gave_up"):
                self._finish(ExitReason(ExitKind.ERROR, "its entity supervisor gave up"))
                return

    async def wait(self) -> ExitReason:
        assert self._exit is not None, "wait() before start()"
        reason = await asyncio.shield(self._exit)
        self.info.status = "restarting" if reason.abnormal else "stopped"
        await self._stop_watchers()
        if reason.abnormal and self.handle is not None:
            # A hung or given-up host is replaced, never left half alive beside its successor.
            ray.kill(self.handle, no_restart=True)
        return reason

    async def _stop_watchers(self) -> None:
        current = asyncio.current_task()
        for t in self._watchers:
            if t is not current:
                t.cancel()
        for t in self._watchers:
            if t is current:
                continue
            try:
                await t
            except asyncio.CancelledError:
                if not t.cancelled():
                    raise
        self._watchers = []

    async def stop(self) -> None:
        if self.handle is None:
            return
        try:
            await asyncio.wait_for(self.handle.stop.remote(), 10.0)
        except (RayActorError, TimeoutError):
            pass
        self._finish(ExitReason(ExitKind.SHUTDOWN, "stopped"))
        ray.kill(self.handle, no_restart=True)
        self.info.status = "stopped"

    async def kill(self) -> None:
        if self.handle is not None:
            ray.kill(self.handle, no_restart=True)
        self._finish(ExitReason(ExitKind.KILLED, "killed by its supervisor"))
        self.info.status = "stopped"


class SupervisorChild:
    """A supervisor used as the child of another (one model at every level)."""

    def __init__(self, make: Callable[[], Supervisor]) -> None:
        self._make = make
        self.supervisor: Supervisor | None = None

    async def start(self) -> None:
        self.supervisor = self._make()
        await self.supervisor.start()

    async def wait(self) -> ExitReason:
        assert self.supervisor is not None
        return await self.supervisor.wait()

    async def stop(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.shutdown()

    async def kill(self) -> None:
        await self.stop()


def node(id: str, kind: str, status: str, restarts: int, children: list[dict[str, Any]],
         **extra: Any) -> dict[str, Any]:
    return {"id": id, "kind": kind, "status": status, "restarts": restarts,
            "pid": extra.pop("pid", None), "node": extra.pop("node", None),
            "children": children, **extra}


__all__ = [
    "ROOT_NAME", "HostChild", "HostInfo", "Registry", "RestartType", "SparePool", "Strategy",
    "SupervisorChild", "SupervisorEvent", "TreeConfig", "TreeContext", "node",
]
