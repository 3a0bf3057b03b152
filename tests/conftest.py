"""Shared fixtures: one Ray for the session's runtimes, one Redis, a tree per module."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from runtime.demo_inventory import DemoPorts, generate_demo
from runtime.inventory import Inventory, PlacementPolicy, parse_inventory

SCALE = 0.05

log = logging.getLogger("tests")


def poll(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
         what: str = "condition") -> Any:
    """Call ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the condition may not be ready yet
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc})")


def cluster_inventory() -> Inventory:
    inv = parse_inventory(generate_demo(scale=SCALE, seed=3, ports=DemoPorts.free()), "<test>")
    first_xr = next(eq for eq in inv.equipment if eq.kind == "crossroad")
    equipment = tuple(dataclasses.replace(eq, placement="dedicated") if eq is first_xr else eq
                      for eq in inv.equipment)
    shards = dict(inv.placement.shards)
    shards.update({"lighting": 3, "video": 2})
    return dataclasses.replace(inv, equipment=equipment,
                               placement=PlacementPolicy(default="sharded", shards=shards))


class Http:
    """A tiny JSON client for the admin web."""

    def __init__(self, base: str, token: str | None = None) -> None:
        self.base = base
        self.token = token

    def call(self, method: str, path: str, body: Any = None,
             token: str | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        tok = token if token is not None else self.token
        if tok:
            req.add_header("Authorization", f"Bearer {tok}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw or b"null")
            except ValueError:
                return exc.code, raw.decode(errors="replace")


@dataclasses.dataclass
class Cluster:
    svc: Any
    http: Http
    creds: dict[str, dict[str, str]]
    inventory: Inventory

    def tree(self) -> dict[str, Any]:
        status, body = self.http.call("GET", "/api/v1/tree", token=self.creds["viewer"]["token"])
        assert status == 200, body
        return dict(body)

    def hosts(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}

        def walk(n: dict[str, Any]) -> None:
            if "host" in n["kind"]:
                out[n["id"]] = n
            for c in n["children"]:
                walk(c)

        walk(self.tree())
        return out

    def all_running(self) -> bool:
        t = self.tree()
        hosts = self.hosts()
        return t["status"] == "running" and all(h["status"] == "running" for h in hosts.values())

    def health(self) -> str:
        _, body = self.http.call("GET", "/api/v1/health")
        return str(body["status"])


def wire(strategy: Any, n: int, t: float) -> dict[str, Any]:
    """Supervisor options on the wire, restarting at once (no backoff) for tests."""
    from runtime.ray_host import options_to_wire
    from supervisors.spec import Backoff, SupervisorOptions

    return options_to_wire(SupervisorOptions(strategy=strategy, max_restarts=n, max_seconds=t,
                                             backoff=Backoff(initial_s=0.0)))


def start_cluster(inv: Inventory, tree: dict[str, Any], *,
                  devices: bool = False) -> Iterator[Cluster]:
    """A whole runtime (Ray, Redis, broker, tree, admin web with Open311) for one test module.

    With ``devices``, the inventory's field simulators run too (their control channel at
    ``svc.sim_control_url``) and the entities hold device sessions with them.
    """
    from admin_web import (
        AdminServer,
        SwappableBackend,
        UserRegistry,
        create_app,
        create_demo_users,
    )
    from admin_web.open311 import open311_blueprint
    from runtime.service import DEVICES, RuntimeBackend, Service, ServiceOptions
    from supervisors.spec import Backoff, IntensityScope, SupervisorOptions

    svc = Service(inv, ServiceOptions(
        factory="actors.drill:factory_for",
        devices=DEVICES if devices else "", simulate=devices,
        host_supervision=SupervisorOptions(max_restarts=3, max_seconds=30.0,
                                           scope=IntensityScope.CHILD,
                                           backoff=Backoff(initial_s=0.0)),
        tree={"heartbeat_s": 0.5, **tree},
    ))
    users = UserRegistry()
    creds = create_demo_users(users, [m.slug for m in inv.municipalities])
    backend = RuntimeBackend(svc)
    app = create_app(SwappableBackend(backend), users)
    server = AdminServer(app, "127.0.0.1", 0)
    try:
        svc.start_servers()
        # Open311 as the demo mounts it (its store needs the service's Redis).
        app.register_blueprint(open311_blueprint(backend.open311_backend()))
        server.start()
        svc.start_ray()
        svc.start_tree()
        c = Cluster(svc, Http(server.url), creds, inv)
        poll(lambda: c.health() == "ok", 60, what="health ok after start")
        yield c
    finally:
        svc.stop()
        server.stop()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    from supervisors.spec import Strategy

    yield from start_cluster(cluster_inventory(), {"domains": {
        "lighting": wire(Strategy.REST_FOR_ONE, 10, 10.0),
        "video": wire(Strategy.ONE_FOR_ALL, 10, 10.0),
        "access": wire(Strategy.ONE_FOR_ONE, 1, 120.0),
    }})


@pytest.fixture(scope="session")
def shared_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One embedded Redis for the whole session; each test keeps to a namespace of its own."""
    from pathlib import Path

    from runtime.embedded import EmbeddedRedis

    with EmbeddedRedis(Path(tmp_path_factory.mktemp("shared-redis"))) as server:
        yield server.url


@pytest.fixture(scope="session")
def shared_ray() -> Iterator[None]:
    """One local Ray for every runtime of the session (a module takes it through
    :func:`ray_runtime`).

    A :class:`~runtime.service.Service` that finds Ray running uses it and leaves it
    running at its stop, as it does with a cluster it joins; Ray is started here as
    the service starts its own, and stopped at the end of the session.
    """
    from runtime.service import Service, ServiceOptions

    svc = Service(cluster_inventory(), ServiceOptions())
    svc.start_ray()
    try:
        yield
    finally:
        svc.stop()


def kill_leftover_actors() -> None:
    """Kill whatever named actor (root, hosts, spares) is still in the shared Ray: a
    module that failed may have left its runtime's; the next one starts from none."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    for actor in ray.util.list_named_actors(all_namespaces=True):
        try:
            ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]),
                     no_restart=True)
        except ValueError:
            continue  # gone since the listing
        log.warning("killed %s/%s, left running by an earlier module", actor["namespace"],
                    actor["name"])


@pytest.fixture(scope="module")
def ray_runtime(shared_ray: None) -> None:
    """For a module that starts a runtime: the shared Ray, with no actor of another's."""
    kill_leftover_actors()
