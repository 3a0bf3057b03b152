"""What the benches share: the machine, process groups, percentiles, the running city.

:class:`City` starts what ``make demo`` runs — embedded Redis and broker,
field simulators on the real protocols, Ray, the supervision tree with its
warm spare, device sessions, and the admin web on a free port (its users in
the service's Redis) — and waits until every device is online::

    with City(scale=0.1, say=print) as city:
        token = city.token("operator")
        ...  # city.svc, city.admin_url, city.control (the simulators' channel)

A bench that times the runtime's own start-up starts the field first (the
broker and the simulators, as they run in production before the runtime
does), then the runtime::

    city = City(scale=0.1, data_dir=tmp)
    city.start_field()     # broker and simulators: already running
    city.start_runtime()   # Redis, admin web, Ray, the tree: what is timed
    city.wait_online()

Every bench reports ``left_out``: the parts of ``make demo`` its run did not
have (an empty list when nothing).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import math
import os
import platform
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import psutil

from runtime.clock import Clock
from runtime.errors import ConfigError, ProtocolError, RetryableError
from runtime.inventory import Equipment, PlacementPolicy
from runtime.niceness import Background
from runtime.procmem import cpu_seconds, pss_mb, ray_pids, session_pids, tree_pids

Say = Callable[[str], None]

__all__ = [
    "ROLES",
    "ApiClient",
    "City",
    "CpuMeter",
    "Say",
    "cpu_seconds",
    "find_node",
    "hosts_of",
    "latency_summary",
    "machine",
    "percentile",
    "pss_by_role",
    "pss_mb",
    "pss_of",
    "rounded_roles",
]

#: The process groups a bench reports apart (see :meth:`City.process_groups`).
ROLES = ("runtime", "broker", "simulator")


def machine() -> str:
    """This machine as the JSON of every bench names it."""
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    name = f"{platform.node()}: {os.cpu_count()} cpu, {mem:.0f} GiB, {platform.system()}"
    return f"{name}, {cpu}" if cpu else name


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation between closest ranks.

    Raises :class:`ValueError` on an empty sequence or ``q`` outside 0..100.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0 or math.isnan(q):
        raise ValueError(f"percentile {q!r} is outside 0..100")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    frac = pos - lo
    return ordered[lo] + (ordered[hi] - ordered[lo]) * frac


def latency_summary(values_s: Iterable[float], *, digits: int = 2) -> dict[str, float | None]:
    """``{"p50", "p99", "max"}`` in milliseconds of durations given in seconds."""
    ms = [v * 1000.0 for v in values_s]
    if not ms:
        return {"p50": None, "p99": None, "max": None}
    return {"p50": round(percentile(ms, 50), digits), "p99": round(percentile(ms, 99), digits),
            "max": round(max(ms), digits)}


class City:
    """The metropolis as ``make demo`` runs it, for the benches (see the module doc).

    ``spares`` and ``admin`` can be turned off, and ``kinds`` keeps only the
    equipment of those kinds; what is left out is listed in :attr:`left_out`.
    ``sim_rate_hz`` overrides the MQTT devices' rate; ``clock_speed`` and
    ``clock_start`` set the city's clock (:class:`~runtime.clock.ClockSpec`),
    which :attr:`city_clock` reads once the service exists; ``priority_grant_all``
    makes the bus-priority policy grant every request (the latency bench), and
    ``priority_rules`` (TOML) are the service's own priority rules;
    ``background_nice`` and ``sim_background`` put the hosts and the simulators off the
    bus-priority path in the background, and ``priority_realtime`` and ``sim_realtime``
    the processes on it (and the traffic controllers' simulators) in the real-time class
    (:mod:`runtime.niceness`);
    ``placement`` edits the inventory's placement policy (given the demo's, it
    returns the one to run, such as one with a domain colocated with another).
    """

    def __init__(
        self,
        *,
        scale: float = 1.0,
        say: Say = print,
        broker: str = "auto",
        sim_rate_hz: float | None = None,
        spares: int = 1,
        admin: bool = True,
        devices: bool = True,
        online_timeout_s: float = 180.0,
        data_dir: Path | None = None,
        seed: int = 0,
        kinds: Collection[str] | None = None,
        clock_speed: float = 1.0,
        clock_start: float | None = None,
        priority_grant_all: bool = False,
        priority_rules: str = "",
        background_nice: Background | None = None,
        sim_background: bool = False,
        priority_realtime: int | None = None,
        sim_realtime: bool = False,
        placement: Callable[[PlacementPolicy], PlacementPolicy] | None = None,
    ) -> None:
        from runtime.demo_inventory import DemoPorts, generate_demo
        from runtime.inventory import parse_inventory

        self._background_nice = background_nice
        self._sim_background = sim_background
        self._realtime = (priority_realtime, sim_realtime)
        self.scale = scale
        self.say = say
        # Free ports, not the demo's documented ones: a bench runs beside a demo or a test.
        self.inventory = parse_inventory(
            generate_demo(scale=scale, seed=seed, ports=DemoPorts.free()),
            f"<demo scale {scale}>")
        dropped: list[str] = []
        if kinds is not None:
            # A lighter city (tests): only the equipment of these kinds.
            dropped = sorted({eq.kind for eq in self.inventory.equipment} - set(kinds))
            self.inventory = self.inventory.restricted(kinds)
        if placement is not None:
            self.inventory = dataclasses.replace(
                self.inventory, placement=placement(self.inventory.placement))
        self._broker = broker
        self._sim_rate_hz = sim_rate_hz
        self._spares = spares
        self._admin = admin
        self._devices = devices
        self._online_timeout_s = online_timeout_s
        self._data_dir = data_dir
        self._clock = (clock_speed, clock_start)
        self._grant_all = priority_grant_all
        self._rules = priority_rules
        self.svc: Any = None
        self.field_broker: Any = None  # the broker started by start_field (else the service's)
        self._tmp: Any = None
        self.server: Any = None
        self.app: Any = None  # the admin web's Flask app, once started
        self._followers: list[Callable[[], None]] = []  # what follows changes in Redis
        self.admin_url = ""
        self.creds: dict[str, dict[str, str]] = {}
        self.control: Any = None
        self.left_out: list[str] = [f"{kind} equipment" for kind in dropped]
        #: Seconds each step of :meth:`start_runtime` took (servers, admin, ray, tree).
        self.timings: dict[str, float] = {}
        if spares < 1:
            self.left_out.append("warm spare")
        if not admin:
            self.left_out.append("admin web")
        if not devices:
            self.left_out += ["device sessions", "simulators"]

    @property
    def sim_background(self) -> bool:
        """Whether the simulators off the bus-priority path run in the background."""
        return self._sim_background

    @property
    def city_clock(self) -> Clock:
        """The city's clock, as every process of the service reads it."""
        if self.svc is None:
            raise ConfigError("the city is not started")
        clock: Clock = self.svc.city_clock
        return clock

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> Self:
        """Start everything (as ``make demo`` does) and wait until every device is online."""
        self.start_runtime()
        if self._devices:
            self.wait_online()
        return self

    @property
    def data_dir(self) -> Path:
        """Where Redis, the broker and the simulators keep their files."""
        if self._data_dir is None:
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="cp-bench-")
            self._data_dir = Path(self._tmp.name)
        return self._data_dir

    def start_field(self) -> Self:
        """The broker and the field simulators alone, before the runtime (see the module doc).

        The simulators need a broker to publish to, so the broker counts as
        part of the field here; the runtime started next uses it by URL.
        Without device sessions there is no field and this does nothing.
        """
        if self.svc is not None or not self._devices:
            return self
        from devices.sim.control import SimControl
        from runtime.embedded import EmbeddedBroker

        data = self.data_dir
        self.field_broker = EmbeddedBroker(data / "mqtt", prefer=self._broker)
        self.field_broker.start()
        self.field_broker.start_watchdog()
        self.svc = self._service(mqtt_url=self.field_broker.url)
        self.svc.use_broker(self.field_broker)
        self.svc.start_simulators(data)
        self.control = SimControl(self.svc.sim_control_url)
        return self

    def start_runtime(self) -> Self:
        """Redis, the admin web, Ray and the supervision tree (and the field if not started).

        Returns once every host has started its entities; devices may still be
        connecting (see :meth:`wait_online`).
        """
        if self.svc is None:
            self.svc = self._service()
        t = time.monotonic()
        self.svc.start_servers()
        self.timings["servers"] = time.monotonic() - t
        if self._admin:
            t = time.monotonic()
            self._start_admin()
            self.timings["admin"] = time.monotonic() - t
        t = time.monotonic()
        self.svc.start_ray()
        self.timings["ray"] = time.monotonic() - t
        if self.svc.simulators_starting:
            # Started with the servers, the simulators got ready while Ray started.
            t = time.monotonic()
            self.svc.wait_simulators()
            self.timings["simulators"] = time.monotonic() - t
        if self.server is not None:
            from runtime.service import RuntimeBackend

            backend = RuntimeBackend(self.svc, track=True)
            self._followers.append(backend.close)
            self._backend.swap(backend)
        t = time.monotonic()
        self.svc.start_tree()
        self.timings["tree"] = time.monotonic() - t
        if self._devices and self.control is None:
            from devices.sim.control import SimControl

            self.control = SimControl(self.svc.sim_control_url)
        return self

    def _service(self, mqtt_url: str | None = None) -> Any:
        from runtime.service import DEVICES, Service, ServiceOptions

        # With the field started first, the service finds the simulators running
        # (simulate=False) and the broker at its URL.
        return Service(self.inventory, ServiceOptions(
            devices=DEVICES if self._devices else "", mqtt_url=mqtt_url,
            simulate=self._devices and mqtt_url is None,
            sim_rate_hz=self._sim_rate_hz, spares=self._spares, broker=self._broker,
            data_dir=self._data_dir, clock_speed=self._clock[0], clock_start=self._clock[1],
            priority_grant_all=self._grant_all, priority_rules=self._rules,
            background_nice=self._background_nice, sim_background=self._sim_background,
            priority_realtime=self._realtime[0], sim_realtime=self._realtime[1]))

    def _start_admin(self) -> None:
        from admin_web import (
            AdminServer,
            StaticBackend,
            SwappableBackend,
            UserRegistry,
            create_app,
            create_demo_users,
        )
        from admin_web.open311 import open311_blueprint
        from runtime.embedded import free_port
        from runtime.service import RuntimeBackend
        from runtime.users import RedisUserRecords

        # The users in the service's Redis, as `commandpost run` keeps them.
        records = RedisUserRecords(self.svc.redis_url, namespace=self.svc.options.namespace,
                                   track=True)
        self._followers.append(records.close)
        users = UserRegistry(records)
        self.creds = create_demo_users(users, [m.slug for m in self.inventory.municipalities])
        self._backend = SwappableBackend(StaticBackend())
        app = create_app(self._backend, users)
        # Open311 as the demo mounts it, with an API key of the bench's own.
        runtime_backend = RuntimeBackend(self.svc, track=True)
        self._followers.append(runtime_backend.close)
        app.register_blueprint(open311_blueprint(runtime_backend.open311_backend()))
        self.creds["open311"] = {"api_key": runtime_backend.open311_store().issue_key("bench")}
        self.app = app
        self.server = AdminServer(app, "127.0.0.1", free_port())
        self.server.start()
        self.admin_url = self.server.url

    def stop(self) -> None:
        try:
            if self.svc is not None:
                self.svc.stop()
        finally:
            try:
                if self.server is not None:
                    self.server.stop()
                for stop_following in self._followers:
                    stop_following()
            finally:
                if self.field_broker is not None:
                    self.field_broker.stop()
                if self._tmp is not None:
                    self._tmp.cleanup()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- queries -------------------------------------------------------------
    @property
    def broker_kind(self) -> str:
        b = self._broker_server()
        return str(b.kind) if b is not None else "external"

    def _broker_server(self) -> Any:
        if self.field_broker is not None:
            return self.field_broker
        return self.svc.broker if self.svc is not None else None

    def publisher_url(self, name: str, equipment: Iterable[Equipment]) -> str:
        """A broker URL that publishes as ``equipment`` (a bench's own devices):
        :meth:`runtime.service.Service.publisher_url`."""
        if self.svc is None:
            raise ConfigError("the city is not started")
        return str(self.svc.publisher_url(name, equipment))

    def token(self, user: str = "operator") -> str:
        return self.creds[user]["token"]

    def online(self) -> int:
        return sum(int(h.get("online", 0)) for h in hosts_of(self.svc.tree()))

    def wait_online(self, timeout: float | None = None) -> int:
        total = len(self.inventory.equipment)
        deadline = time.monotonic() + (timeout or self._online_timeout_s)
        online = 0
        while time.monotonic() < deadline:
            online = self.online()
            if online == total:
                break
            time.sleep(0.5)
        self.say(f"{online}/{total} devices online; broker {self.broker_kind}")
        return online

    def process_groups(self) -> dict[str, set[int]]:
        """Pids by role: ``runtime`` (Ray, hosts, Redis, admin, this process),
        ``broker``, ``simulator``; a load generator is counted by its own bench."""
        sim: set[int] = set()
        broker: set[int] = set()
        if self.svc.sim_proc is not None:
            sim |= set(tree_pids(self.svc.sim_proc.pid))
        b = self._broker_server()
        if b is not None and b.pid:
            broker |= set(tree_pids(b.pid))
        everything = set(tree_pids(os.getpid())) | set(ray_session_pids())
        return {"runtime": everything - sim - broker, "broker": broker, "simulator": sim}


def ray_session_pids() -> list[int]:
    """The processes of the Ray session this process is connected to (all local Ray
    processes of this user when it is not connected)."""
    import ray

    if not ray.is_initialized():
        return ray_pids()
    try:
        node = ray._private.worker._global_node
        session_dir = str(node.get_session_dir_path()) if node is not None else ""
    except AttributeError:
        session_dir = ""
    return session_pids(session_dir) if session_dir else ray_pids()


def hosts_of(tree: dict[str, Any]) -> list[dict[str, Any]]:
    """Every host node of a supervision tree."""
    out = []
    stack = [tree]
    while stack:
        n = stack.pop()
        if "host" in str(n.get("kind", "")):
            out.append(n)
        stack.extend(n.get("children", []))
    return out


def find_node(tree: dict[str, Any], node_id: str) -> dict[str, Any]:
    """The node ``node_id`` of a supervision tree (:class:`KeyError` if absent)."""
    stack = [tree]
    while stack:
        n = stack.pop()
        if n.get("id") == node_id:
            return n
        stack.extend(n.get("children", []))
    raise KeyError(node_id)


class CpuMeter:
    """CPU seconds of process groups between :meth:`start` and :meth:`stop`, in cores."""

    def __init__(self, groups: dict[str, set[int]]) -> None:
        self.groups = groups
        self._t0 = 0.0
        self._c0: dict[str, float] = {}
        self.cores: dict[str, float] = {}
        self.window_s = 0.0

    def start(self) -> None:
        self._c0 = {k: cpu_seconds(p) for k, p in self.groups.items()}
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        self.window_s = time.monotonic() - self._t0
        self.cores = {k: (cpu_seconds(p) - self._c0[k]) / self.window_s
                      for k, p in self.groups.items()}
        return self.cores


def pss_of(groups: dict[str, set[int]]) -> float:
    """PSS in MB of every process of every group."""
    pids: set[int] = set()
    for p in groups.values():
        pids |= p
    return pss_mb(pids)


def pss_by_role(groups: dict[str, set[int]]) -> dict[str, float]:
    """PSS in MB of each process group, and their sum under ``"total"``.

    A pid in two groups is counted in the first only, so the parts add up
    to the total.
    """
    out: dict[str, float] = {}
    seen: set[int] = set()
    for role, pids in groups.items():
        mine = set(pids) - seen
        seen |= mine
        out[role] = pss_mb(mine)
    out["total"] = sum(out.values())
    return out


def rounded_roles(values: dict[str, float], digits: int = 1) -> dict[str, float]:
    """``values`` rounded for the JSON (figures by role: MB, cores)."""
    return {k: round(v, digits) for k, v in values.items()}


class ApiClient:
    """A keep-alive JSON client for the admin API (one connection, reopened on error)."""

    def __init__(self, base_url: str, token: str) -> None:
        parts = urlsplit(base_url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._headers = {"Authorization": f"Bearer {token}",
                         "Content-Type": "application/json"}
        self._conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=10)
            try:
                self._conn.request(method, path, body=data, headers=self._headers)
                resp = self._conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if attempt == 2:
                    raise RetryableError(f"admin API {method} {path}: {exc}") from exc
                continue
            try:
                return resp.status, json.loads(raw or b"null")
            except ValueError as exc:
                raise ProtocolError(f"admin API {method} {path} answered non-JSON") from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
