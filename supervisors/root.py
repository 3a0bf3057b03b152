"""The root of the supervision tree, as a detached, named Ray actor.

The root owns one supervisor per domain, each owning that domain's hosts. It
is created by the composition root (``commandpost run``/``demo``) with the
placement plan; if it dies, its creator starts a new one under the same name,
which re-adopts the hosts still alive (by the registry in Redis) instead of
creating duplicates.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Awaitable
from typing import Any

import ray

from runtime.envelope import pack, unpack
from runtime.ray_host import NAMESPACE, options_from_wire
from runtime.store import STREAM_RETENTION_S, RedisStore
from supervisors.core import Supervisor
from supervisors.spec import ChildSpec, ExitReason, RestartType, SupervisorEvent
from supervisors.tree import (
    HostChild,
    HostInfo,
    Registry,
    SparePool,
    SupervisorChild,
    TreeConfig,
    TreeContext,
    node,
)

log = logging.getLogger("commandpost.root")

#: Each step of the root's shutdown after the hosts' stops is given up after this (s).
SHUTDOWN_STEP_S = 5.0
#: A shutdown still running after this long (s) logs what the root's tasks wait on.
SLOW_SHUTDOWN_S = 20.0


async def _bounded(what: str, aw: Awaitable[Any]) -> None:
    """Await ``aw`` for at most :data:`SHUTDOWN_STEP_S`; past it, log and go on."""
    try:
        await asyncio.wait_for(aw, SHUTDOWN_STEP_S)
    except TimeoutError:
        log.warning("shutdown: %s took over %.0f s; given up", what, SHUTDOWN_STEP_S)


async def _report_slow_shutdown(after_s: float) -> None:
    await asyncio.sleep(after_s)
    me = asyncio.current_task()
    stacks = []
    for task in asyncio.all_tasks():
        if task is me:
            continue
        frames = task.get_stack(limit=8)
        where = " <- ".join(f"{f.f_code.co_name} ({os.path.basename(f.f_code.co_filename)}:"
                            f"{f.f_lineno})" for f in reversed(frames))
        stacks.append(f"  {task.get_name()}: {where or 'not started'}")
    log.warning("shutdown still running after %.0f s; the root's tasks:\n%s", after_s,
                "\n".join(sorted(stacks)))


def tree_config_from_wire(d: dict[str, Any]) -> TreeConfig:
    base = TreeConfig()
    return TreeConfig(
        root=options_from_wire(d["root"]) if "root" in d else base.root,
        domain=options_from_wire(d["domain"]) if "domain" in d else base.domain,
        heartbeat_s=float(d.get("heartbeat_s", base.heartbeat_s)),
        heartbeat_timeout_s=float(d.get("heartbeat_timeout_s", base.heartbeat_timeout_s)),
        heartbeat_misses=int(d.get("heartbeat_misses", base.heartbeat_misses)),
        hung_lag_s=float(d.get("hung_lag_s", base.hung_lag_s)),
        spares=int(d.get("spares", base.spares)),
        spare_refill_grace_s=float(d.get("spare_refill_grace_s", base.spare_refill_grace_s)),
        domains={k: options_from_wire(v) for k, v in (d.get("domains") or {}).items()},
        restart_types={k: RestartType(v) for k, v in (d.get("restart_types") or {}).items()},
        warm_modules=tuple(d.get("warm_modules", ())),
    )


@ray.remote(  # type: ignore[call-overload]
    num_cpus=0, max_restarts=0, concurrency_groups={"control": 16})
class RootActor:
    """Root supervisor process: domains → hosts."""

    def __init__(self, blob: bytes) -> None:
        logging.basicConfig(level=os.environ.get("COMMANDPOST_LOG", "INFO"))
        self.cfg: dict[str, Any] = unpack(blob, max_size=256 << 20)
        self.tree_config = tree_config_from_wire(self.cfg.get("tree") or {})
        self.namespace: str = self.cfg.get("ray_namespace", NAMESPACE)
        self.hosts: dict[str, dict[str, Any]] = {h["host_id"]: h for h in self.cfg["hosts"]}
        self.root: Supervisor | None = None
        self.domains: dict[str, SupervisorChild] = {}
        self.ctx: TreeContext | None = None
        self.store: RedisStore | None = None
        self.events: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.recent: deque[dict[str, Any]] = deque(maxlen=200)
        self.started = False
        self.failed = False
        self._flusher: asyncio.Task[None] | None = None
        self.pid = os.getpid()

    def _assignment(self, host_id: str, generation: int, replacing: bool = False) -> bytes:
        h = self.hosts[host_id]
        return pack({
            "host_id": host_id, "generation": generation, "equipment": h["equipment"],
            "store_url": self.cfg["store_url"], "namespace": self.cfg["namespace"],
            "retention_s": self.cfg.get("retention_s", STREAM_RETENTION_S),
            "ray_namespace": self.namespace, "factory": self.cfg["factory"],
            "config": self.cfg.get("host_config") or {}, "directory": self.cfg["directory"],
            "devices": self.cfg.get("devices", ""),
            "clock": self.cfg.get("clock"),
            "device_options": {**(self.cfg.get("device_options") or {}), "host_id": host_id,
                               "replacing": replacing, "clock": self.cfg.get("clock")},
        })

    def _on_event(self, ev: SupervisorEvent) -> None:
        row = {"ts": ev.ts, "event": f"supervisor_{ev.action}", "supervisor": ev.supervisor,
               "entity": ev.child, "reason": ev.reason, "restarts": ev.restarts}
        self.events.append(row)
        self.recent.append(row)
        if self.ctx is not None and ev.child in self.ctx.infos and ev.action == "restart":
            self.ctx.infos[ev.child].restarts = ev.restarts

    def _on_root_escalate(self, who: str, reason: ExitReason) -> None:
        self.failed = True
        log.critical("supervision tree gave up (%s): %s", who, reason.detail)

    async def _flush_events(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if not self.events or self.store is None:
                continue
            batch = list(self.events)
            try:
                await self.store.append_events(batch)
            except Exception as exc:  # the store reports and retries on its own
                log.debug("supervisor events wait for the store: %s", exc)
                continue
            for _ in batch:
                self.events.popleft()

    async def start(self) -> dict[str, Any]:
        """Start (or re-adopt) every host, domain by domain, in plan order."""
        self.store = RedisStore(self.cfg["store_url"], namespace=self.cfg["namespace"],
                                retention_s=self.cfg.get("retention_s", STREAM_RETENTION_S))
        await self.store.connect()
        registry = Registry(self.store)
        await registry.load()
        spares = SparePool(self.tree_config.spares, self.namespace,
                           self.tree_config.warm_modules)
        spares.adopt_existing({str(e["actor"]) for e in registry.entries.values()})
        infos = {
            hid: HostInfo(hid, h["domain"], h["mode"], entities=len(h["equipment"]),
                          generation=int(registry.entries.get(hid, {}).get("generation", 0)))
            for hid, h in self.hosts.items()
        }
        self.ctx = TreeContext(
            config=self.tree_config, store=self.store, registry=registry, spares=spares,
            namespace=self.namespace, assignment=self._assignment, infos=infos,
            adoptable={h: str(e["actor"]) for h, e in registry.entries.items()
                       if h in self.hosts},
        )
        self._flusher = asyncio.get_running_loop().create_task(self._flush_events(),
                                                               name="root.events")
        by_domain: dict[str, list[str]] = {}
        for hid, h in self.hosts.items():
            by_domain.setdefault(h["domain"], []).append(hid)

        ctx = self.ctx

        def host_factory(spec: ChildSpec) -> HostChild:
            return HostChild(spec.id, ctx)

        def domain_factory(spec: ChildSpec) -> SupervisorChild:
            domain = spec.id
            children = [(ChildSpec(hid, self.tree_config.restart_type(hid, domain),
                                   shutdown_timeout_s=15.0), host_factory)
                        for hid in by_domain[domain]]
            options = self.tree_config.domains.get(domain, self.tree_config.domain)
            child = SupervisorChild(lambda: Supervisor(
                domain, options, children, on_event=self._on_event))
            self.domains[domain] = child
            return child

        self.root = Supervisor(
            "root", self.tree_config.root,
            [(ChildSpec(d, RestartType.PERMANENT, shutdown_timeout_s=60.0), domain_factory)
             for d in by_domain],
            on_event=self._on_event, on_escalate=self._on_root_escalate,
        )
        # The processes of the hosts to create are spawned together, then assigned in
        # order; spares start after the hosts: a cold start should not wait for them.
        spares.prestart(sum(1 for hid in self.hosts if hid not in self.ctx.adoptable))
        await self.root.start()
        spares.refill()
        self.started = True
        return self.tree()

    @ray.method(concurrency_group="control")
    async def ping(self) -> dict[str, Any]:
        return {"pid": self.pid, "started": self.started, "failed": self.failed}

    def tree(self) -> dict[str, Any]:
        """The tree as ``/api/v1/tree`` shows it."""
        node_id = ray.get_runtime_context().get_node_id()
        if self.root is None or self.ctx is None:
            return node("root", "root supervisor", "starting", 0, [], pid=self.pid, node=node_id)
        infos = self.ctx.infos
        rs = self.root.status()
        domains = []
        for child in rs.children:
            sup_child = self.domains.get(child.id)
            hosts = []
            if sup_child is not None and sup_child.supervisor is not None:
                ds = sup_child.supervisor.status()
                for hc in ds.children:
                    i = infos[hc.id]
                    hosts.append(node(
                        hc.id, f"{i.mode} host", str(hc.status), hc.restarts, [],
                        pid=i.pid or None, node=i.node or None, domain=i.domain,
                        actor=i.actor, generation=i.generation, entities=i.entities,
                        entity_restarts=i.entity_restarts, failed_entities=i.failed_entities,
                        online=i.online, last_exit=hc.last_exit or None,
                    ))
            domains.append(node(child.id, "domain supervisor", str(child.status),
                                child.restarts, hosts, pid=self.pid, node=node_id,
                                last_exit=child.last_exit or None))
        status = "failed" if self.failed else str(rs.status)
        if not self.started and status == "running":
            status = "starting"
        return node("root", "root supervisor", status, rs.restarts, domains,
                    pid=self.pid, node=node_id)

    async def get_tree(self) -> dict[str, Any]:
        return self.tree()

    async def host_actors(self) -> dict[str, str]:
        """Host id → the name of the Ray actor serving it now."""
        assert self.ctx is not None
        return {h: i.actor for h, i in self.ctx.infos.items()}

    async def spares_ready(self) -> int:
        """Warm spares waiting to replace a host."""
        return self.ctx.spares.ready if self.ctx is not None else 0

    async def recent_events(self) -> list[dict[str, Any]]:
        return list(self.recent)

    async def shutdown(self) -> bool:
        """Reverse-order shutdown of the whole tree, spares included.

        The hosts' stops are bounded by their shutdown timeouts; what follows
        them (spares, the last events, the store) by :data:`SHUTDOWN_STEP_S`
        each. A shutdown still running after :data:`SLOW_SHUTDOWN_S` logs what
        each of the root's tasks waits on.
        """
        loop = asyncio.get_running_loop()
        watch = loop.create_task(_report_slow_shutdown(SLOW_SHUTDOWN_S), name="root.slow-stop")
        try:
            if self.root is not None:
                await self.root.shutdown()
            if self.ctx is not None:
                await _bounded("closing the spares", self.ctx.spares.close())
            if self._flusher is not None:
                self._flusher.cancel()
                await _bounded("ending the event flusher", asyncio.wait({self._flusher}))
            if self.store is not None:
                if self.events:
                    try:
                        await _bounded("recording the last events",
                                       self.store.append_events(list(self.events)))
                    except Exception as exc:
                        log.warning("last supervisor events not recorded: %s", exc)
                await _bounded("closing the store", self.store.close())
        finally:
            watch.cancel()
        self.started = False
        return True


