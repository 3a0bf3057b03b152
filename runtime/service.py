"""The running system, composed: servers, Ray, the supervision tree, the admin backend.

This module is part of the composition root (with :mod:`runtime.cli`): it is
the one place that wires the runtime to the supervisors and the entity
behaviours, for ``commandpost demo``, ``run`` and the benchmarks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import psutil
import ray
from ray.exceptions import AuthenticationError

from runtime import ray_auth
from runtime.audit import AuditRecord, action_matches, audit_entry
from runtime.clock import ClockSpec
from runtime.commands import Command, check_command_shape, new_command_id, shown
from runtime.datafile import KeyPath
from runtime.embedded import EmbeddedBroker, EmbeddedRedis
from runtime.entity import Entity
from runtime.envelope import pack, unpack
from runtime.errors import (
    CommandpostError,
    ConfigError,
    ConflictError,
    InvalidCommandError,
    MalformedMessageError,
    RejectedError,
    RetryableError,
    UnknownEntityError,
)
from runtime.host import EQUIPMENT_VIEW
from runtime.inventory import (
    COORDINATOR,
    PRIORITY_PREFIX,
    Equipment,
    Inventory,
    dump_inventory,
)
from runtime.lifeline import spawn_tied
from runtime.niceness import (
    Background,
    background_nice,
    check_nice,
    check_realtime,
    priority_realtime,
)
from runtime.placement import PlacementPlan, coordinator, equipment_to_wire, plan
from runtime.ray_host import NAMESPACE, load_factory, options_to_wire
from runtime.request_sync import RequestStatusSync
from runtime.store import (
    HTTP_DEADLINE_S,
    MAX_STREAM_ID_PART,
    STREAM_RETENTION_S,
    RetryPolicy,
    SyncStore,
)
from runtime.tracking import TrackedReads
from supervisors.root import RootActor
from supervisors.spec import SupervisorOptions
from supervisors.tree import ROOT_NAME

if TYPE_CHECKING:
    # Loaded when first used: shapely and pyproj are ~45 MB a process does not always need.
    from admin_web.open311 import Open311Backend
    from runtime.geo import Geography
    from runtime.open311 import ServiceRequest, SyncOpen311Store

log = logging.getLogger("commandpost.service")

FACTORY = "actors.registry:factory_for"
WARM_MODULES = ("actors.registry", "devices.manager")
DEVICES = "devices.manager:create"
# How long a command submission rides out a Redis outage before the API answers 503.
SUBMIT_DEADLINE_S = HTTP_DEADLINE_S
#: The read model the alarms coordinator publishes (``actors.control.alarms.READ_MODEL``).
ALARMS_READ_MODEL = "alarms"
#: The dispatch coordinator's id and read models (``actors.control.dispatch``).
DISPATCH = "dispatch"
INTERVENTIONS_READ_MODEL = "interventions"
FLEET_READ_MODEL = "fleet"
#: The Open311 application name of requests taken by operators on the phone.
PHONE_APP = "phone"
#: The read model and the id of the crisis coordinator (``actors.control.crisis``).
CRISIS_READ_MODEL = "crisis"
CRISIS = "crisis"
#: How long the city map's states are kept before they are read again (seconds).
CITY_CACHE_S = 1.0
#: The read models the admin web reads at almost every request: with ``track``,
#: :class:`RuntimeBackend` keeps them until Redis reports they changed.
TRACKED_READ_MODELS = (ALARMS_READ_MODEL, CRISIS_READ_MODEL, INTERVENTIONS_READ_MODEL,
                       FLEET_READ_MODEL)
#: The broker account of the MQTT simulators (and ``…-telemetry``, their second connection).
SIM_ACCOUNT = "sim-mqtt"
#: The mode of a municipality without a crisis plan; asking for it ends the plan.
NORMAL_MODE = "normal"
#: How problems of :attr:`ServiceOptions.priority_rules` name them.
RULES_SOURCE = "<service priority_rules>"


@dataclass
class ServiceOptions:
    """Where the parts are; None means "start an embedded one"."""

    redis_url: str | None = None
    mqtt_url: str | None = None
    ray_address: str | None = None
    namespace: str = "cp"
    ray_namespace: str = NAMESPACE
    data_dir: Path | None = None
    spares: int = 1
    host_supervision: SupervisorOptions = field(
        default_factory=lambda: SupervisorOptions(max_restarts=5, max_seconds=10.0,
                                                  scope=_child_scope()))
    broker: str = "auto"
    tree: dict[str, Any] = field(default_factory=dict)  # tree wire overrides (root, domains…)
    factory: str = FACTORY
    devices: str = ""  # device-manager factory ("devices.manager:create"); "" runs without devices
    simulate: bool = False  # start the field simulators of the inventory (the demo)
    # OPC UA message security for every building session: {"mode": "Sign" |
    # "SignAndEncrypt", "policy", "certificate", "private_key", "server_certificate"}
    opcua_security: dict[str, str] = field(default_factory=dict)
    sim_rate_hz: float | None = None  # telemetry rate override for the MQTT simulators
    # How long the event and audit streams keep an entry: trimmed by age, never by count.
    retention_s: float = STREAM_RETENTION_S
    # The control room's coordinator entities to run (``actors.control.COORDINATORS``).
    coordinators: tuple[str, ...] = ("alarms", "crisis", "dispatch")
    # Members of the bus-priority pool (``priority-1`` …), each in a process of its own;
    # none when the inventory has no bus line.
    priority_members: int = 2
    # The pool's policy grants every request (benches that must not lose a sample).
    priority_grant_all: bool = False
    # Priority rules to run instead of the shipped actors/plans/priority.toml: the text of
    # such a file, checked before the service starts ("": the shipped rules).
    priority_rules: str = ""
    # The priority of the hosts off the bus-priority path (runtime.niceness): a nice value
    # or "idle"; None: ``COMMANDPOST_BACKGROUND_NICE``, else 0 (off).
    background_nice: Background | None = None
    # The simulators of the families off that path run only on a CPU nothing else wants
    # (runtime.niceness; benches that share the machine with the simulated city).
    sim_background: bool = False
    # The real-time priority (SCHED_RR, 1 to 99) of the processes whose whole work is the
    # bus-priority path: the pool's members, the crossroads' lane processes and the
    # embedded broker (runtime.niceness); None: ``COMMANDPOST_PRIORITY_REALTIME``, else 0 (off).
    priority_realtime: int | None = None
    # The traffic controllers' simulators run at that priority too (benches: they stand
    # for controllers with processors of their own).
    sim_realtime: bool = False
    # The city's clock: ``clock_speed`` times the machine's, from ``clock_start`` (epoch
    # seconds; default now). Every process of the service runs on it (runtime.clock).
    clock_speed: float = 1.0
    clock_start: float | None = None


def _child_scope() -> Any:
    from supervisors.spec import IntensityScope

    return IntensityScope.CHILD


class Service:
    """Start, watch and stop the whole runtime."""

    def __init__(self, inventory: Inventory, options: ServiceOptions | None = None) -> None:
        self.inventory = inventory
        self.options = options or ServiceOptions()
        self.clock_spec = ClockSpec.starting_now(self.options.clock_speed,
                                                 self.options.clock_start)
        self.city_clock = self.clock_spec.clock()
        inventory.check_records(self._check_record)
        # A bad value is refused before anything starts.
        self._background_nice = (background_nice() if self.options.background_nice is None
                                 else check_nice(self.options.background_nice))
        self._realtime = (priority_realtime() if self.options.priority_realtime is None
                          else check_realtime(self.options.priority_realtime))
        if self.options.priority_rules:
            from actors.priority.policy import parse_priority_config

            parse_priority_config(self.options.priority_rules, RULES_SOURCE)
        for behaviour in dict.fromkeys(map(self._behaviour, inventory.equipment)):
            if behaviour is not None:
                behaviour.check_inventory(inventory)
        self.coordinators = (*(self._coordinator(c) for c in self.options.coordinators),
                             *self._pool())
        self.plan: PlacementPlan = plan(inventory, self.coordinators)
        self.redis: EmbeddedRedis | None = None
        self.broker: EmbeddedBroker | None = None
        # The embedded broker whose accounts the field gets (publisher_url): ours, or
        # one the caller started (use_broker); None on an external broker.
        self._field_broker: EmbeddedBroker | None = None
        self.redis_url = self.options.redis_url or ""
        self.mqtt_url = self.options.mqtt_url or ""
        self.root: Any = None
        self.store: SyncStore | None = None
        self._probe: SyncStore | None = None
        self._root_blob = b""
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._started_ray = False
        # Ray's head processes when this service started Ray (GCS, raylet and
        # helpers), each with the name of its program.
        self._ray_procs: list[tuple[str, psutil.Process]] = []
        self.root_restarts = 0
        self.start_error = ""
        self.started = threading.Event()
        self.t0 = time.monotonic()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.sim_proc: subprocess.Popen[bytes] | None = None
        self.simulators: list[dict[str, Any]] = []
        self.sim_control_url = ""  # the simulators' control channel (devices.sim.control)
        # Simulators started and not yet known ready: (ready file, log file, deadline).
        self._sim_pending: tuple[Path, Path, float] | None = None
        self._lane_secret = secrets.token_hex(16)
        # Copies interventions' states into their Open311 requests (started with the tree).
        self.request_sync: RequestStatusSync | None = None

    # -- servers ---------------------------------------------------------
    def _coordinator(self, entity_id: str) -> Equipment:
        """A coordinator's record, with what it needs of the inventory in its ``attrs``.

        Raises :class:`ConfigError` when the inventory does not suit it (crisis
        plans naming equipment, roles or presets it lacks, with file and line).
        """
        bare = coordinator(entity_id, self.inventory)
        behaviour = self._behaviour(bare)
        if behaviour is None:
            return bare
        return coordinator(entity_id, self.inventory,
                           attrs=behaviour.coordinator_attrs(self.inventory))

    def _behaviour(self, eq: Equipment) -> type[Entity] | None:
        """The entity class that runs ``eq`` (None: the factory gives no class of ours)."""
        behaviour = load_factory(self.options.factory)(eq)
        if isinstance(behaviour, type) and issubclass(behaviour, Entity):
            return behaviour
        return None

    def _check_record(self, eq: Equipment) -> list[tuple[KeyPath, str]]:
        """What ``eq``'s behaviour finds wrong in its record (a schedule of another kind):
        the service refuses to start with any (:meth:`Inventory.check_records`)."""
        behaviour = self._behaviour(eq)
        return [] if behaviour is None else behaviour.check_record(eq)

    def _pool(self) -> list[Equipment]:
        """The bus-priority pool's members: coordinators placed each on a host of its own."""
        n = self.options.priority_members
        if n <= 0 or not getattr(self.inventory, "bus_lines", None):
            return []
        ids = [f"{PRIORITY_PREFIX}{k}" for k in range(1, n + 1)]
        out = []
        for entity_id in ids:
            bare = self._coordinator(entity_id)
            out.append(coordinator(entity_id, self.inventory, placement="dedicated", attrs={
                **bare.attrs, "members": ids,
                "grant_all": self.options.priority_grant_all,
                "rules": self.options.priority_rules}))
        return out

    def _with_neighbours(self, eq: Equipment) -> Equipment:
        """``eq`` with what its behaviour needs of the rest of the inventory in its ``attrs``
        (:meth:`~runtime.entity.Entity.inventory_attrs`)."""
        if eq.kind == COORDINATOR:
            return eq
        behaviour = self._behaviour(eq)
        if behaviour is None:
            return eq
        extra = behaviour.inventory_attrs(eq, self.inventory)
        return dataclasses.replace(eq, attrs={**eq.attrs, **extra}) if extra else eq

    def start_servers(self) -> None:
        """Embedded Redis and broker unless URLs were given, and the simulators
        when the service simulates its field.

        The simulators start here and get ready while Ray starts: :meth:`start_tree`
        (or :meth:`wait_simulators`) waits for them.
        """
        data = self.options.data_dir
        if data is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="commandpost-")
            data = Path(self._tmp.name)
        if not self.redis_url:
            self.redis = EmbeddedRedis(data / "redis")
            self.redis.start()
            self.redis.start_watchdog()
            self.redis_url = self.redis.url
        if not self.mqtt_url:
            self.broker = EmbeddedBroker(data / "mqtt", prefer=self.options.broker)
            self.broker.start()
            self.broker.start_watchdog()
            self.use_broker(self.broker)
        self.store = SyncStore(self.redis_url, namespace=self.options.namespace,
                               retention_s=self.options.retention_s)
        if self.options.simulate:
            self.start_simulators(data, wait=False)
        # Health probes must see an outage at once, not ride it out with retries.
        self._probe = SyncStore(self.redis_url, namespace=self.options.namespace,
                                retry=RetryPolicy(deadline_s=0.2))

    def use_broker(self, broker: EmbeddedBroker) -> None:
        """Run on an embedded broker started by the caller (who stops it): the runtime
        connects with its account, the field gets accounts of its own (publisher_url).
        It carries the positions to the bus-priority pool: with ``priority_realtime``, it
        runs in the real-time class with the rest of that path (:mod:`runtime.niceness`)."""
        self._field_broker = broker
        self.mqtt_url = broker.url
        if self._realtime:
            broker.set_realtime(self._realtime)

    def publisher_url(self, name: str, equipment: Iterable[Equipment]) -> str:
        """A broker URL that may publish as each of ``equipment`` (simulators, benches).

        On the embedded broker: the URL of an account ``name`` of its own (one
        per connection: the broker takes the account's name as its client id).
        On an external broker, whose accounts its operator provisions: the
        service's own URL.
        """
        broker = self._field_broker
        if broker is None:
            return self.mqtt_url
        return broker.add_simulator(name, equipment)

    def simulator_urls(self) -> tuple[str, str]:
        """The URLs of the MQTT simulators: ``(session, telemetry)`` (see publisher_url)."""
        mqtt = [eq for eq in self.inventory.equipment if eq.endpoint == "mqtt"]
        if not mqtt or self._field_broker is None:
            return self.mqtt_url, self.mqtt_url
        return (self.publisher_url(SIM_ACCOUNT, mqtt),
                self.publisher_url(f"{SIM_ACCOUNT}-telemetry", mqtt))

    def start_simulators(self, data: Path, timeout: float = 90.0, *, wait: bool = True) -> None:
        """The field simulators in a child process, on the real protocols.

        With ``wait``, returns once they serve (their endpoints in
        :attr:`simulators`, their control channel at :attr:`sim_control_url`);
        without, :meth:`wait_simulators` waits for them later.

        Their broker URLs (with their passwords) go through the child's
        environment, not its command line, which every local user can read.
        """
        inv_file = data / "inventory.toml"
        inv_file.write_text(dump_inventory(self.inventory), encoding="utf-8")
        ready = data / "simulators.json"
        ready.unlink(missing_ok=True)
        session_url, telemetry_url = self.simulator_urls()
        env = dict(os.environ)
        env["COMMANDPOST_MQTT_URL"] = session_url
        env["COMMANDPOST_MQTT_TELEMETRY_URL"] = telemetry_url
        argv = [sys.executable, "-m", "devices.sim.runner", "--inventory", str(inv_file),
                "--ready-file", str(ready)]
        if self.options.sim_rate_hz:
            argv += ["--rate-hz", str(self.options.sim_rate_hz)]
        if not self.clock_spec.real:
            argv += ["--clock", json.dumps(self.clock_spec.to_wire())]
        if self.options.sim_background:
            argv.append("--background")
        if self.options.sim_realtime and self._realtime:
            argv += ["--realtime", str(self._realtime)]
        with open(data / "simulators.log", "ab") as log_file:  # the child keeps its own copy
            # Tied to our life: a kill -9 of the runtime must not leave the
            # simulators holding the Modbus and OPC UA ports. A session of its
            # own keeps Ctrl-C and group signals for us: we stop it in order.
            self.sim_proc = spawn_tied(argv, stdin=subprocess.DEVNULL, stdout=log_file,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       env=env)
        self._sim_pending = (ready, data / "simulators.log", time.monotonic() + timeout)
        if wait:
            self.wait_simulators()

    @property
    def simulators_starting(self) -> bool:
        """Whether simulators were started without waiting and are not known ready yet."""
        return self._sim_pending is not None

    def wait_simulators(self) -> None:
        """Wait until the simulators started by :meth:`start_simulators` serve.

        Raises :class:`ConfigError` if they exit first (the tail of their log
        says why), :class:`RetryableError` past the start's timeout.
        """
        pending, self._sim_pending = self._sim_pending, None
        if pending is None or self.sim_proc is None:
            return
        ready, log_path, deadline = pending
        while not ready.exists():
            if self.sim_proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise ConfigError(f"simulators exited with {self.sim_proc.returncode}: {tail}")
            if time.monotonic() > deadline:
                raise RetryableError(f"simulators not ready in time (their log: {log_path})")
            time.sleep(0.05)
        ready_doc = json.loads(ready.read_text(encoding="utf-8"))
        self.simulators = list(ready_doc["simulators"])
        self.sim_control_url = str(ready_doc["control"])

    def stop_simulators(self, timeout: float = 5.0) -> None:
        """SIGTERM the simulators (a clean stop), SIGKILL after ``timeout`` seconds."""
        proc = self.sim_proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("simulators (pid %d) ignored SIGTERM for %.0f s; killing them",
                        proc.pid, timeout)
            proc.kill()
            proc.wait()

    def start_ray(self) -> None:
        """Connect to ``ray_address``, or start a local Ray that :meth:`stop` shuts down."""
        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {
            "namespace": self.options.ray_namespace,
            "include_dashboard": False,
            "logging_level": logging.WARNING,
            "log_to_driver": os.environ.get("COMMANDPOST_RAY_LOGS", "") == "1",
        }
        # Without an address, a Ray of our own: a bare ray.init() would join any
        # cluster that `ray start` left running on this machine.
        kwargs["address"] = self.options.ray_address or "local"
        # At shutdown every Ray process flushes its task events to the GCS and
        # waits up to 5 s by default: when the GCS is already gone (a signal
        # to the whole process group reaches Ray's head too) the driver alone
        # would spend 5 of the 10 s a stop may take. Those events only feed
        # Ray's dashboard, which we do not run.
        os.environ.setdefault("RAY_task_events_shutdown_flush_timeout_ms", "500")
        # Ray starts its workers at nice 15 so that they yield to its own daemons; here the
        # workers are the hosts, the runtime itself: they must not yield to every other
        # process of the machine (the simulators, a broker, a log shipper) either.
        os.environ.setdefault("RAY_worker_niceness", "0")
        # A cluster that wants Ray's token: ray.init reads it from the environment
        # (runtime.ray_auth), provided RAY_AUTH_MODE=token was there when ray was imported.
        address = self.options.ray_address
        token_mode = ray_auth.ray_token_mode()
        problem = ray_auth.token_problem(address, os.environ, token_mode=token_mode)
        if problem is not None:
            raise ConfigError(problem)
        before = {p.pid for p in psutil.Process().children()}
        # Before ray.init: a start interrupted half-way must still be shut down.
        self._started_ray = True
        try:
            ray.init(**kwargs)
        except (ConnectionError, AuthenticationError) as exc:
            raise ray_auth.connection_failure(address, exc, os.environ,
                                              token_mode=token_mode) from exc
        finally:
            if not self.options.ray_address:
                self._ray_procs = _new_ray_children(before)

    def _ray_head_gone(self) -> bool:
        """Whether the GCS or the raylet this service started has exited."""
        return any(name in ("gcs_server", "raylet") and not proc.is_running()
                   for name, proc in self._ray_procs)

    # -- the tree --------------------------------------------------------
    def root_config(self) -> bytes:
        by_id = {eq.id: self._with_neighbours(eq)
                 for eq in (*self.inventory.equipment, *self.coordinators)}
        hosts = [
            {"host_id": h.host_id, "domain": h.domain, "mode": h.mode,
             "equipment": [equipment_to_wire(by_id[e]) for e in h.entity_ids]}
            for h in self.plan.hosts
        ]
        return pack({
            "hosts": hosts, "directory": dict(self.plan.owner), "store_url": self.redis_url,
            "retention_s": self.options.retention_s,
            "namespace": self.options.namespace, "ray_namespace": self.options.ray_namespace,
            "factory": self.options.factory,
            "devices": self.options.devices,
            "clock": self.clock_spec.to_wire(),
            "device_options": {"mqtt_url": self.mqtt_url,
                               "priority_grant_all": self.options.priority_grant_all,
                               "priority_rules": self.options.priority_rules,
                               "opcua_security": dict(self.options.opcua_security),
                               # The pool's requests reach a crossroad's host on a
                               # connection of its lane (runtime.lanewire), for this
                               # service's members only, on loopback: with a Ray of
                               # its own. A cluster's nodes talk on Ray's ports alone
                               # (deploy/kuberay's NetworkPolicy): there, through Ray.
                               "lane_secret": "" if self.options.ray_address
                               else self._lane_secret},
            "host_config": {"supervision": options_to_wire(self.options.host_supervision),
                            "background_nice": self._background_nice,
                            "realtime": self._realtime},
            "tree": {"spares": self.options.spares, "warm_modules": list(WARM_MODULES),
                     **self.options.tree},
        })

    def start_tree(self) -> dict[str, Any]:
        """Create (or find) the root and start every host; blocks until all started
        (the simulators first, when they are still starting)."""
        self.wait_simulators()
        self._root_blob = self.root_config()
        self.root = self._create_root()
        try:
            tree: dict[str, Any] = ray.get(self.root.start.remote())
        except Exception as exc:
            self.start_error = str(exc)
            raise
        self.started.set()
        self.start_request_sync()
        self._watcher = threading.Thread(target=self._watch_root, name="root-watch", daemon=True)
        self._watcher.start()
        return tree

    def _create_root(self) -> Any:
        ns = self.options.ray_namespace
        try:
            old = ray.get_actor(ROOT_NAME, namespace=ns)
            ray.kill(old, no_restart=True)
        except ValueError:
            pass
        return RootActor.options(  # type: ignore[attr-defined]
            name=ROOT_NAME, namespace=ns, lifetime="detached").remote(self._root_blob)

    def _watch_root(self) -> None:
        # The root is detached: if its process dies, a new root re-adopts the hosts.
        while not self._stop.is_set():
            ref = self.root.ping.remote()
            try:
                ray.get(ref, timeout=10)
            except ray.exceptions.RayActorError:
                if self._stop.is_set():
                    return
                log.error("root supervisor died; starting a new one that re-adopts the hosts")
                self.root_restarts += 1
                try:
                    self.root = self._create_root()
                    ray.get(self.root.start.remote())
                except Exception as exc:
                    log.error("root restart failed: %s", exc)
            except ray.exceptions.GetTimeoutError:
                log.warning("root supervisor did not answer a ping within 10 s")
            self._stop.wait(1.0)

    def start_request_sync(self) -> None:
        """Have citizens' Open311 requests follow their interventions (:mod:`runtime.request_sync`).

        Runs in this process, beside the admin web; a runtime without the
        dispatch coordinator has nothing to follow.
        """
        store = self.store
        if store is None or DISPATCH not in self.plan.owner or self.request_sync is not None:
            return
        from runtime.open311 import SyncOpen311Store

        self.request_sync = RequestStatusSync(
            lambda: store.get_blob(f"view:{INTERVENTIONS_READ_MODEL}"),
            SyncOpen311Store(self.redis_url, namespace=self.options.namespace,
                             city_clock=self.city_clock))
        self.request_sync.start()

    # -- queries ---------------------------------------------------------
    def tree(self, timeout: float = 5.0) -> dict[str, Any]:
        if self.root is None:
            raise RetryableError("the supervision tree is not started")
        try:
            out: dict[str, Any] = ray.get(self.root.get_tree.remote(), timeout=timeout)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
            raise RetryableError(f"root supervisor unavailable: {exc}") from exc
        return out

    def host_handle(self, host_id: str) -> Any:
        names = ray.get(self.root.host_actors.remote(), timeout=10)
        return ray.get_actor(names[host_id], namespace=self.options.ray_namespace)

    def redis_ok(self) -> bool:
        if self._probe is None:
            return False
        try:
            self._probe.ping()
        except CommandpostError:
            return False
        return True

    def broker_ok(self) -> bool:
        u = urlparse(self.mqtt_url)
        port = u.port or (8883 if u.scheme == "mqtts" else 1883)
        try:
            with socket.create_connection((u.hostname or "127.0.0.1", port), 0.5):
                return True
        except OSError:
            return False

    # -- shutdown --------------------------------------------------------
    def stop(self, tree_timeout: float = 120.0) -> None:
        """Reverse order: tree (hosts in reverse), root, Ray, simulators, broker, Redis.

        ``tree_timeout`` bounds the orderly shutdown of the tree (hosts
        checkpoint and close their device sessions); past it the root is
        killed and, when this service started Ray, Ray's shutdown takes the
        hosts with it. The time of each step is logged at INFO.
        """
        steps: list[tuple[str, float]] = []
        mark = time.monotonic()

        def step(name: str) -> None:
            nonlocal mark
            now = time.monotonic()
            steps.append((name, now - mark))
            mark = now

        self._stop.set()
        if self.request_sync is not None:
            self.request_sync.stop()
            self.request_sync = None
        if self.root is not None:
            self._shutdown_tree(tree_timeout)
            try:
                ray.kill(self.root, no_restart=True)
            except Exception as exc:
                log.debug("root already gone: %s", exc)
            self.root = None
            step("tree")
        if self._watcher is not None:
            # It pings the root with a 10 s deadline; once stopping, a failed
            # or late ping ends it, and as a daemon thread it cannot hold us.
            self._watcher.join(timeout=1.0)
            step("root watch")
        # The hosts have closed their device sessions: the field may go while
        # Ray shuts down (the simulators take a second or two to stop).
        if self.sim_proc is not None and self.sim_proc.poll() is None:
            self.sim_proc.terminate()
        if self._started_ray:
            if self._ray_head_gone():
                # A signal to our process group reached Ray's head too: nothing
                # is left to stop gracefully, and ray.shutdown() would give each
                # of its processes a second to exit before killing it.
                for _, proc in self._ray_procs:
                    with contextlib.suppress(psutil.Error):
                        proc.kill()
            ray.shutdown()
            # A ray.init interrupted before it recorded its node leaves ray.shutdown
            # nothing to stop: its processes are still ours to end.
            for _, proc in self._ray_procs:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            step("ray")
        self.stop_simulators()
        step("simulators")
        for store in (self.store, self._probe):
            if store is not None:
                store.close()
        if self.broker is not None:
            self.broker.stop()
        if self.redis is not None:
            self.redis.stop()
        step("servers")
        if self._tmp is not None:
            self._tmp.cleanup()
        log.info("stopped in %.2f s (%s)", sum(d for _, d in steps),
                 ", ".join(f"{name} {d:.2f} s" for name, d in steps))


    def _shutdown_tree(self, timeout: float) -> None:
        """The root's ordered shutdown, given up after ``timeout`` or when Ray's head dies."""
        ref = self.root.shutdown.remote()
        deadline = time.monotonic() + timeout
        while True:
            ready, _ = ray.wait([ref], timeout=0.2)
            if ready:
                try:
                    ray.get(ref)
                except Exception as exc:
                    log.warning("tree shutdown incomplete: %s", exc)
                return
            if self._ray_head_gone():
                log.warning("tree shutdown abandoned: Ray's GCS or raylet exited")
                return
            if time.monotonic() >= deadline:
                log.warning("tree shutdown incomplete after %.0f s", timeout)
                return


def _new_ray_children(before: set[int]) -> list[tuple[str, psutil.Process]]:
    """Our children not in ``before`` that run from Ray's package (its head), with names."""
    ray_dirs = {str(Path(ray.__file__).parent), str(Path(ray.__file__).resolve().parent)}
    found: list[tuple[str, psutil.Process]] = []
    for child in psutil.Process().children():
        if child.pid in before:
            continue
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        # The binary (gcs_server, raylet) or the script (monitor.py, …) after the interpreter.
        program = next((arg for arg in cmdline[:3] if arg.startswith(tuple(ray_dirs))), None)
        if program is not None:
            found.append((Path(program).name, child))
    return found


def _id_key(stream_id: str) -> tuple[int, int]:
    """A stream id (``ms-seq``) as a pair that sorts as Redis orders them."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


class RuntimeBackend:
    """The admin web's view of a :class:`Service` (health, tree, system).

    With ``track`` (the service's store started), the read models of
    :data:`TRACKED_READ_MODELS` are kept, decoded, until Redis reports that a
    coordinator published them again (:class:`runtime.tracking.TrackedReads`):
    most requests then read none from Redis. What they return is shared
    between requests: read only. :meth:`close` stops following them.
    """

    def __init__(self, service: Service, simulators: list[dict[str, Any]] | None = None, *,
                 track: bool = False) -> None:
        self.service = service
        self.simulators = simulators or []
        self._cache: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()
        self._geography: Geography | None = None
        self._open311: SyncOpen311Store | None = None
        self._city: tuple[float, dict[str, Any]] | None = None
        self._decoded: dict[str, tuple[bytes, Any]] = {}
        self._tracked: TrackedReads | None = None
        if track:
            store = self._store()
            self._tracked = TrackedReads(
                service.redis_url, [store.keys.blob(f"view:{m}") for m in TRACKED_READ_MODELS],
                name="read models")

    def close(self) -> None:
        """Stop following the read models (reads go to Redis each time afterwards)."""
        if self._tracked is not None:
            self._tracked.close()

    def _model(self, name: str, max_size: int) -> Any:
        """The read model ``name`` decoded, or None when it was never published. A model
        read again unchanged (kept by tracking) is not decoded again."""
        store = self._store()
        blob_name = f"view:{name}"
        if self._tracked is None:
            blob = store.get_blob(blob_name)
        else:
            blob = self._tracked.get(store.keys.blob(blob_name),
                                     lambda: store.get_blob(blob_name))
        if blob is None:
            return None
        with self._lock:
            seen = self._decoded.get(name)
        if seen is not None and seen[0] is blob:
            return seen[1]
        doc = unpack(blob, max_size=max_size)
        with self._lock:
            self._decoded[name] = (blob, doc)
        return doc

    def tree(self) -> dict[str, Any]:
        return self.service.tree()

    def equipment_municipality(self, entity_id: str) -> str:
        return self.service.inventory.by_id(entity_id).municipality

    def equipment_kind(self, entity_id: str) -> str:
        return self.service.inventory.by_id(entity_id).kind

    def submit_command(self, entity_id: str, action: str, params: dict[str, Any], *,
                       caller: str, idempotency_key: str | None) -> dict[str, Any]:
        """Check the command against its kind's field table, then journal it durably.

        A command the kind would refuse raises :class:`InvalidCommandError`
        and is not journaled; Redis out of reach for :data:`SUBMIT_DEADLINE_S`
        raises :class:`~runtime.errors.StoreUnavailableError` (a 503).
        """
        store = self.service.store
        if store is None:
            raise RetryableError("the store is not started")
        try:
            equipment = self.service.inventory.by_id(entity_id)
        except KeyError:
            raise UnknownEntityError(entity_id) from None
        behaviour = load_factory(self.service.options.factory)(equipment)
        clean = check_command(behaviour, action, params, equipment=equipment,
                              now=self.service.city_clock.time())
        try:
            cmd = Command(command_id=new_command_id(), target=entity_id, action=action,
                          params=clean, caller=caller, idempotency_key=idempotency_key or "",
                          created_ts=time.time())
        except RejectedError as exc:
            raise InvalidCommandError(str(exc), field="params", code=exc.code) from None
        stored, created = store.submit_command(cmd, deadline_s=SUBMIT_DEADLINE_S)
        if not created and (stored.action, dict(stored.params)) != (action, clean):
            raise InvalidCommandError("idempotency key already used for a different command",
                                      field="idempotency_key", code="idempotency_conflict")
        return {"command_id": stored.command_id, "status": str(stored.status),
                "created": created}

    def command(self, command_id: str) -> dict[str, Any]:
        """The command as journaled, with its path's timestamps (``runtime.commands``)."""
        store = self.service.store
        if store is None:
            raise RetryableError("the store is not started")
        return store.get_command(command_id).to_json()

    def _store(self) -> SyncStore:
        store = self.service.store
        if store is None:
            raise RetryableError("the store is not started")
        return store

    def audit(self, record: AuditRecord) -> None:
        """Append ``record`` to the audit stream (within :data:`SUBMIT_DEADLINE_S`)."""
        self._store().append_audit(record.to_fields(), deadline_s=SUBMIT_DEADLINE_S)

    def audit_trail(self, *, user: str | None = None, action: str | None = None,
                    outcome: str | None = None, since: float | None = None,
                    until: float | None = None, before: str | None = None, limit: int = 100,
                    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of the audit stream, newest first (``AdminBackend.audit_trail``).

        User and outcome are matched in Redis's reply before decoding; an action's family
        after. ``until`` bounds the range by stream id, as ``since`` does: it is the
        ``before`` of the entries written from then on, unless ``before`` is older.
        """
        match = {k: v for k, v in (("user", user), ("outcome", outcome)) if v is not None}
        if until is not None:
            bound = f"{min(math.ceil(until * 1000.0), MAX_STREAM_ID_PART)}-0"
            if before is None or _id_key(bound) < _id_key(before):
                before = bound

        def keep(row: dict[str, Any]) -> bool:
            return action is None or action_matches(row.get("action"), action)

        rows, cursor = self._store().page("audit", limit=limit, before=before, since=since,
                                          match=match, keep=keep)
        return [audit_entry(row) for row in rows], cursor

    def events(self, *, entity: str | None = None, kind: str | None = None,
               event: str | None = None, municipalities: frozenset[str] | None = None,
               since: float | None = None, before: str | None = None, limit: int = 100,
               ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of the event stream, newest first (``AdminBackend.events``).

        An equipment's kind and municipality come from the inventory, whatever
        the event says; other entities' (coordinators, hosts) from the event,
        if it names them. Entity and event name are matched in Redis's reply
        before decoding.
        """
        inventory = self.service.inventory
        match = {k: v for k, v in (("entity", entity), ("event", event)) if v is not None}

        def keep(row: dict[str, Any]) -> bool:
            try:
                eq = inventory.by_id(str(row.get("entity", "")))
            except KeyError:
                town, what = row.get("municipality"), row.get("kind")
            else:
                town, what = eq.municipality, eq.kind
                row["municipality"], row["kind"] = town, what
            return (kind is None or what == kind) and (
                municipalities is None or town in municipalities)

        return self._store().page("events", limit=limit, before=before, since=since,
                                  match=match, keep=keep)

    def equipment(self, *, kind: str | None = None, municipality: str | None = None,
                  status: str | None = None, online: bool | None = None,
                  in_alarm: bool | None = None, municipalities: frozenset[str] | None = None,
                  limit: int = 500, after: str | None = None,
                  ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of equipment, ordered by id, and the id to continue ``after`` (or None).

        The inventory says what exists (kind, municipality); the hosts' equipment view
        (:data:`runtime.host.EQUIPMENT_VIEW`) says where each runs and how it stands;
        the page's twins are their checkpoints; ``in_alarm`` comes from the alarms'
        read model. Without a filter on how they stand, the page's lines and twins are
        read in one round trip; with one, every candidate's line, then the page's twins.
        """
        store = self._store()
        inventory = self.service.inventory
        candidates = sorted(
            (eq for eq in inventory.equipment
             if (kind is None or eq.kind == kind)
             and (municipality is None or eq.municipality == municipality)
             and (municipalities is None or eq.municipality in municipalities)
             and (after is None or eq.id > after)),
            key=lambda eq: eq.id)
        # Every record says whether it is in alarm, filtered on it or not.
        alarmed = self._alarmed() if candidates else set()
        if status is None and online is None and in_alarm is None:
            first = candidates[:limit]
            lines, twins = store.lines_and_checkpoints(EQUIPMENT_VIEW, [eq.id for eq in first])
            out = [_equipment_record(eq, _summary_line(lines.get(eq.id)), twins.get(eq.id),
                                     eq.id in alarmed, self.geography) for eq in first]
            return out, (first[-1].id if len(candidates) > limit and first else None)
        summaries = store.hmget(EQUIPMENT_VIEW, [eq.id for eq in candidates])
        page: list[tuple[Equipment, dict[str, Any]]] = []
        more = False
        for eq in candidates:
            line = _summary_line(summaries.get(eq.id))
            if status is not None and line["status"] != status:
                continue
            if online is not None and bool(line["online"]) != online:
                continue
            if in_alarm is not None and (eq.id in alarmed) != in_alarm:
                continue
            if len(page) == limit:
                more = True
                break
            page.append((eq, line))
        twins = store.load_checkpoints([eq.id for eq, _ in page])
        out = [_equipment_record(eq, line, twins.get(eq.id), eq.id in alarmed, self.geography)
               for eq, line in page]
        return out, (page[-1][0].id if more and page else None)

    def equipment_detail(self, entity_id: str) -> dict[str, Any]:
        """One equipment's record with its recent events, commands and active alarms
        (two round trips to the store: :meth:`SyncStore.equipment_page`)."""
        store = self._store()
        eq = self.service.inventory.by_id(entity_id)
        # The alarms come with the page's reads, unless they are kept here.
        tracked = self._tracked is not None and self._tracked.live
        page = store.equipment_page(
            entity_id, view=EQUIPMENT_VIEW,
            blob=None if tracked else f"view:{ALARMS_READ_MODEL}", events=20, commands=10)
        every = self.alarms() if tracked else _alarms_of(
            unpack(page.blob, max_size=256 << 20) if page.blob is not None else None)
        alarms = [a for a in every if a.get("source") == entity_id
                  and a.get("state") not in ("normal", "out_of_service")]
        record = _equipment_record(eq, _summary_line(page.line), page.checkpoint,
                                   any(a.get("active") for a in alarms), self.geography)
        record["events"] = page.events
        record["commands"] = [
            {k: v for k, v in c.to_json().items() if k in (
                "command_id", "status", "action", "params", "caller", "created_ts",
                "updated_ts", "error")}
            for c in page.commands]
        record["alarms"] = alarms
        return record

    def equipment_actions(self, entity_id: str) -> list[dict[str, Any]]:
        """The commands ``entity_id`` takes, as its behaviour describes what it validates
        (:meth:`~runtime.entity.Entity.describe_commands`); ``KeyError`` when unknown."""
        eq = self.service.inventory.by_id(entity_id)
        behaviour = load_factory(self.service.options.factory)(eq)
        if isinstance(behaviour, type) and issubclass(behaviour, Entity):
            return behaviour.describe_commands(eq)
        return []

    def city(self) -> dict[str, Any]:
        """``AdminBackend.city``: the municipalities' areas (:class:`~runtime.geo.Geography`)
        and every equipment at its inventory position with its line of the equipment view
        and whether it is in alarm. Two reads of small records, kept :data:`CITY_CACHE_S`
        seconds: however many pages show the map, it costs those reads once a second."""
        with self._lock:
            if self._city is not None and time.monotonic() - self._city[0] < CITY_CACHE_S:
                return self._city[1]
        inventory = self.service.inventory
        polygons = {f["id"]: f["geometry"]["coordinates"] for f in self.geography().polygons()}
        summaries = self._store().hgetall(EQUIPMENT_VIEW)
        alarmed = self._alarmed()
        equipment = []
        for eq in inventory.equipment:
            line = _summary_line(summaries.get(eq.id))
            equipment.append({"id": eq.id, "kind": eq.kind, "municipality": eq.municipality,
                              "lat": eq.lat, "lon": eq.lon, "online": bool(line["online"]),
                              "status": line["status"], "in_alarm": eq.id in alarmed})
        out = {"municipalities": [{"slug": m.slug, "name": m.name, "lat": m.lat, "lon": m.lon,
                                   "polygon": polygons.get(m.slug)}
                                  for m in inventory.municipalities],
               "equipment": equipment}
        with self._lock:
            self._city = (time.monotonic(), out)
        return out

    def _alarmed(self) -> set[str]:
        return {str(a.get("source")) for a in self.alarms()
                if a.get("active") and a.get("state") not in ("out_of_service", "suppressed")}

    def alarms(self) -> list[dict[str, Any]]:
        """Every alarm, from the read model the alarms coordinator publishes."""
        return _alarms_of(self._model(ALARMS_READ_MODEL, 256 << 20))

    def alarm_action(self, action: str, params: dict[str, Any], *, caller: str
                     ) -> dict[str, Any]:
        """Journal an operator's alarm action for the alarms coordinator."""
        store = self.service.store
        if store is None:
            raise RetryableError("the store is not started")
        if "alarms" not in self.service.plan.owner:
            raise RejectedError("this runtime runs no alarms coordinator", code="no_alarms")
        cmd = Command(command_id=new_command_id(), target="alarms", action=action,
                      params=dict(params), caller=caller, created_ts=time.time())
        stored, _ = store.submit_command(cmd, deadline_s=SUBMIT_DEADLINE_S)
        return {"command_id": stored.command_id, "status": str(stored.status)}

    def crisis(self) -> dict[str, dict[str, Any]]:
        """Every municipality's crisis row (``AdminBackend.crisis``), from the read model the
        crisis coordinator publishes; a municipality it never listed is ``normal``."""
        doc = self._model(CRISIS_READ_MODEL, 64 << 20)
        rows = doc.get("municipalities") if isinstance(doc, dict) else None
        rows = rows if isinstance(rows, dict) else {}
        out: dict[str, dict[str, Any]] = {}
        for muni in self.service.inventory.municipalities:
            row = rows.get(muni.slug)
            out[muni.slug] = dict(row) if isinstance(row, dict) else _normal_row()
        return out

    def crisis_request(self, mode: str, municipalities: list[str], *, replace: bool,
                       caller: str) -> dict[str, Any]:
        """Journal a crisis decision for the crisis coordinator (``AdminBackend.crisis_request``).

        The conflict is decided here from the read model, and again by the
        coordinator when the decision reaches it (it is the authority: two
        requests may pass here at once).
        """
        record = next((c for c in self.service.coordinators if c.id == CRISIS), None)
        if record is None:
            raise RejectedError("this runtime runs no crisis coordinator", code="no_crisis")
        modes = [NORMAL_MODE, *record.attrs.get("modes", ())]
        if mode not in modes:
            raise InvalidCommandError(f"unknown mode {shown(mode)} (modes: {', '.join(modes)})",
                                      field="mode", code="unknown_mode")
        munis = list(dict.fromkeys(municipalities))
        known = {m.slug for m in self.service.inventory.municipalities}
        unknown = [m for m in munis if m not in known]
        if unknown or not munis:
            raise InvalidCommandError(
                f"unknown municipality {', '.join(map(shown, unknown))}" if unknown
                else "name at least one municipality", field="municipalities",
                code="unknown_municipality")
        params: dict[str, Any] = {"municipalities": munis}
        if mode == NORMAL_MODE:
            action = "deactivate"
        else:
            if not replace:
                rows = self.crisis()
                busy = [m for m in munis if rows[m].get("mode", NORMAL_MODE) != NORMAL_MODE]
                if busy:
                    raise ConflictError(f"{', '.join(busy)} already "
                                        f"{'has' if len(busy) == 1 else 'have'} a crisis plan "
                                        "(replace it, or switch to normal first)",
                                        names=busy, code="crisis_conflict")
            action = "activate"
            params.update(mode=mode, replace=bool(replace))
        clean = check_command(load_factory(self.service.options.factory)(record), action, params)
        cmd = Command(command_id=new_command_id(), target=CRISIS, action=action, params=clean,
                      caller=caller, created_ts=time.time())
        stored, _ = self._store().submit_command(cmd, deadline_s=SUBMIT_DEADLINE_S)
        return {"activation_id": stored.command_id, "status": str(stored.status)}

    # -- street-lighting energy (the circuits' read models) -----------------------
    def priority(self) -> dict[str, Any]:
        """``AdminBackend.priority``: the members' read models, merged (their histograms
        added, the percentiles those of the merged histogram's recent samples)."""
        from actors.priority.pool import merge_members

        members = [c.id for c in self.service.coordinators if c.id.startswith(PRIORITY_PREFIX)]
        names = [f"view:priority-member-{k}" for k in range(1, len(members) + 1)]
        blobs = self._store().get_blobs(names)
        docs = []
        for name in names:
            blob = blobs.get(name)
            if blob is None:
                continue
            try:
                doc = unpack(blob)
            except MalformedMessageError:
                continue
            if isinstance(doc, dict):
                docs.append(doc)
        return merge_members(docs)

    def energy(self, *, scope: str, ident: str | None, start: float | None,
               end: float | None, step: str, municipalities: frozenset[str] | None
               ) -> dict[str, Any]:
        """``AdminBackend.energy``: the circuits in scope, their read models of the dates
        the range covers in one pipelined read, summed (:func:`runtime.energy.report`)."""
        from runtime import energy

        inventory = self.service.inventory
        circuits = [eq for eq in inventory.equipment if eq.kind == "lighting_circuit"
                    and (municipalities is None or eq.municipality in municipalities)]
        if scope == "circuit":
            circuits = [eq for eq in circuits if eq.id == ident]
            if not circuits:
                raise KeyError(ident)
        elif scope == "municipality":
            known = {m.slug for m in inventory.municipalities}
            if ident not in known or (municipalities is not None
                                      and ident not in municipalities):
                raise KeyError(ident)
            circuits = [eq for eq in circuits if eq.municipality == ident]
        now = self.service.city_clock.time()
        end = now if end is None else end
        start = end - 86_400.0 if start is None else start
        names = [f"view:{energy.model_name(eq.id, date)}" for eq in circuits
                 for date in energy.dates_between(start, end)]
        blobs = self._store().get_blobs(names)
        models = []
        for blob in blobs.values():
            try:
                doc = unpack(blob, max_size=16 << 20)
            except MalformedMessageError:
                continue
            if isinstance(doc, dict):
                models.append(doc)
        out = energy.report(models, start, end, step)
        return {"scope": scope, "id": ident, **out}

    # -- citizen requests and interventions (the dispatch coordinator) ----------
    def _read_model_list(self, name: str, key: str) -> list[dict[str, Any]]:
        doc = self._model(name, 256 << 20)
        items = doc.get(key) if isinstance(doc, dict) else None
        return [x for x in items or () if isinstance(x, dict)]

    def interventions(self) -> list[dict[str, Any]]:
        """Every intervention, from the read model the dispatch coordinator publishes."""
        return self._read_model_list(INTERVENTIONS_READ_MODEL, "interventions")

    def fleet(self) -> list[dict[str, Any]]:
        """The service vehicles as the dispatch coordinator indexes them."""
        return self._read_model_list(FLEET_READ_MODEL, "vehicles")

    def geography(self) -> Geography:
        """The inventory's municipalities as areas (built once: shapely, ~0.1 s)."""
        with self._lock:
            if self._geography is None:
                from runtime.geo import Geography

                self._geography = Geography(self.service.inventory.municipalities)
            return self._geography

    def open311_store(self) -> SyncOpen311Store:
        """The Open311 request store, on the service's Redis and namespace."""
        with self._lock:
            if self._open311 is None:
                from runtime.open311 import SyncOpen311Store

                if not self.service.redis_url:
                    raise RetryableError("the store is not started")
                self._open311 = SyncOpen311Store(self.service.redis_url,
                                                 namespace=self.service.options.namespace,
                                                 city_clock=self.service.city_clock)
            return self._open311

    def open311_backend(self) -> Open311Backend:
        """What the Open311 routes run on: this store and geography, requests handed to
        dispatch (:meth:`hand_to_dispatch`)."""
        from admin_web.open311 import Open311Backend

        def hand_off(record: ServiceRequest) -> None:
            self.hand_to_dispatch(record)

        return Open311Backend(store=self.open311_store(), geography=self.geography(),
                              on_request=hand_off)

    def request_municipality(self, lat: float, lon: float) -> str | None:
        """The municipality holding ``(lat, lon)`` (None outside, or not a position)."""
        try:
            return self.geography().municipality_at(lat, lon)
        except RejectedError:
            return None

    def open_request(self, *, category: str, description: str, lat: float, lon: float,
                     caller: str) -> dict[str, Any]:
        """Store a request taken on the phone as an Open311 request, then hand it to dispatch."""
        from runtime.open311 import Open311Error, default_catalogue, validate_request

        form = {"service_code": category, "lat": repr(lat), "long": repr(lon),
                "description": description}
        try:
            new = validate_request(form, default_catalogue(), self.geography())
        except Open311Error as exc:
            where = "category" if "service_code" in exc.description else "lat"
            raise InvalidCommandError(exc.description.replace("service_code", "category"),
                                      field=where) from None
        record = self.open311_store().create(new, app=PHONE_APP)
        self.hand_to_dispatch(record, caller=caller)
        return {"request_id": record.service_request_id,
                "intervention_id": f"int-{record.service_request_id}",
                "municipality": record.municipality}

    def open311_apps(self) -> list[str]:
        return self.open311_store().apps()

    def issue_open311_key(self, application: str) -> str:
        return self.open311_store().issue_key(application)

    def revoke_open311_key(self, application: str) -> bool:
        return self.open311_store().revoke(application)

    def hand_to_dispatch(self, record: ServiceRequest, *, caller: str | None = None
                         ) -> dict[str, Any]:
        """Journal ``open`` for the dispatch coordinator: the request becomes an intervention.

        The command's idempotency key is the request's id, so a hand-off
        retried (or repeated) journals one command; the coordinator derives the
        intervention's id from the request's, so a replayed journal makes one
        intervention. Raises :class:`~runtime.errors.RetryableError` when this
        runtime runs no dispatch coordinator or its store is not started.
        """
        store = self._store()
        if DISPATCH not in self.service.plan.owner:
            raise RetryableError("this runtime runs no dispatch coordinator")
        dispatch = next(c for c in self.service.coordinators if c.id == DISPATCH)
        behaviour = load_factory(self.service.options.factory)(dispatch)
        params = check_command(behaviour, "open", {
            "request_id": record.service_request_id, "category": record.service_code,
            "description": (record.description or "")[:500], "lat": record.lat,
            "lon": record.long, "municipality": record.municipality})
        cmd = Command(command_id=new_command_id(), target=DISPATCH, action="open",
                      params=params, caller=caller or f"open311:{record.app or 'unknown'}",
                      idempotency_key=f"request-{record.service_request_id}",
                      created_ts=time.time())
        stored, _ = store.submit_command(cmd, deadline_s=SUBMIT_DEADLINE_S)
        return {"command_id": stored.command_id, "status": str(stored.status)}

    def health(self) -> dict[str, Any]:
        with self._lock:
            if self._cache is not None and time.monotonic() - self._cache[0] < 0.2:
                return dict(self._cache[1])
        total = len(self.service.plan.owner)  # equipment and coordinators
        if not self.service.started.is_set():
            out = {"status": "starting", "entities": total, "online": 0}
        else:
            redis_ok = self.service.redis_ok()
            broker_ok = self.service.broker_ok()
            try:
                tree = self.service.tree(timeout=3.0)
                statuses = _statuses(tree)
                running = sum(h.get("entities", 0) - h.get("failed_entities", 0)
                              for h in _hosts(tree) if h["status"] == "running")
                online = sum(int(h.get("online", 0)) for h in _hosts(tree))
            except RetryableError:
                statuses, running, online = {"failed"}, 0, 0
            if statuses <= {"running"} and running == total and redis_ok and broker_ok:
                status = "ok"
            else:
                # After start-up, anything short of everything running is degraded:
                # a host restarting or stopped, entities failed, Redis or the broker away.
                status = "degraded"
            out = {"status": status, "entities": total, "online": online,
                   "redis": "ok" if redis_ok else "unreachable",
                   "mqtt": "ok" if broker_ok else "unreachable"}
        with self._lock:
            self._cache = (time.monotonic(), out)
        return dict(out)

    def system(self) -> dict[str, Any]:
        from importlib import metadata

        try:
            version = metadata.version("commandpost")
        except metadata.PackageNotFoundError:
            version = "0+unknown"
        try:
            nodes = len([n for n in ray.nodes() if n.get("Alive")])  # type: ignore[no-untyped-call]
            address = ray.get_runtime_context().gcs_address
        except Exception:
            nodes, address = 0, ""
        s = self.service
        return {
            "version": version,
            "ray": {"address": address, "nodes": nodes},
            "redis": {"url": s.redis_url, "status": "ok" if s.redis_ok() else "unreachable",
                      "pid": s.redis.pid if s.redis else None},
            "mqtt": {"url": s.mqtt_url, "status": "ok" if s.broker_ok() else "unreachable",
                     "broker": s.broker.kind if s.broker else "external"},
            "simulators": self.simulators or s.simulators,
        }


def _normal_row() -> dict[str, Any]:
    """The crisis row of a municipality that never had a plan."""
    return {"mode": NORMAL_MODE, "since": None, "by": None, "activation_id": None,
            "entities": {"done": 0, "pending": 0, "failed": 0}, "kept": []}


def check_command(behaviour: Any, action: str, params: Mapping[str, Any], *,
                  equipment: Equipment | None = None, now: float | None = None
                  ) -> dict[str, Any]:
    """``params`` as the behaviour ``behaviour`` would take them, before journaling.

    The composition root's link between the admin backend and the behaviours:
    an entity class answers with its own
    :meth:`~runtime.entity.Entity.validate_command` (equipment: the kind's
    field table in ``actors/``), so the API refuses exactly what the entity
    would; given the ``equipment``'s record and the city's time ``now``, with
    :meth:`~runtime.entity.Entity.validate_command_for`, which also refuses
    what depends on them. Anything else is held to the limits of every
    command. A refusal raises :class:`InvalidCommandError` naming the request
    field.
    """
    if isinstance(behaviour, type) and issubclass(behaviour, Entity):
        if equipment is not None and now is not None:
            return behaviour.validate_command_for(equipment, action, params, now=now)
        return behaviour.validate_command(action, params)
    return check_command_shape(action, params)


def _walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    out = [node]
    for c in node.get("children", []):
        out.extend(_walk(c))
    return out


def _statuses(tree: dict[str, Any]) -> set[str]:
    return {str(n["status"]) for n in _walk(tree)}


def _hosts(tree: dict[str, Any]) -> list[dict[str, Any]]:
    return [n for n in _walk(tree) if "host" in str(n.get("kind", ""))]


def _alarms_of(doc: Any) -> list[dict[str, Any]]:
    """The alarms of the alarms' read model (none when it was never published)."""
    alarms = doc.get("alarms") if isinstance(doc, dict) else None
    return [a for a in alarms or () if isinstance(a, dict)]


def _summary_line(raw: str | None) -> dict[str, Any]:
    """A host's line of the equipment view (an entity no host has reported yet: unknown)."""
    if raw:
        try:
            line = json.loads(raw)
        except ValueError:
            line = None
        if isinstance(line, dict):
            return line
    return {"host": None, "status": "unknown", "online": False, "conditions": []}


def _equipment_record(eq: Equipment, line: Mapping[str, Any], checkpoint: bytes | None,
                      in_alarm: bool, geography: Callable[[], Geography] | None = None
                      ) -> dict[str, Any]:
    """The API's view of one equipment (CONTRACT.md ``GET /api/v1/equipment``).

    What the kind adds to its view (its checkpoint's ``state.view``, e.g. the
    ``schedule`` it follows, a vehicle's ``position``) joins the record; a
    vehicle's usable position is placed in its municipality by point in polygon
    (``municipality_in``, from ``geography``), beside its ``home_municipality``.
    """
    twin: Mapping[str, Any] = {}
    extras: Mapping[str, Any] = {}
    if checkpoint is not None:
        try:
            cp = unpack(checkpoint, max_size=64 << 20)
            twin = cp.get("twin") or {} if isinstance(cp, dict) else {}
            state = cp.get("state") if isinstance(cp, dict) else None
            view = state.get("view") if isinstance(state, dict) else None
            extras = view if isinstance(view, dict) else {}
        except MalformedMessageError:
            twin = {}
    reported = {
        name: {k: r.get(k) for k in ("value", "quality", "source_ts", "received_ts")}
        for name, r in (twin.get("reported") or {}).items() if isinstance(r, Mapping)
    }
    record = {"id": eq.id, "kind": eq.kind, "municipality": eq.municipality,
              "lat": eq.lat, "lon": eq.lon,
              "online": bool(line.get("online")), "status": line.get("status"),
              "host": line.get("host"), "in_alarm": in_alarm,
              "conditions": list(line.get("conditions") or ()),
              "reported": reported, "desired": dict(twin.get("desired") or {})}
    record.update((k, v) for k, v in extras.items() if k not in record)
    position = extras.get("position")
    if eq.kind == "vehicle" and geography is not None:
        record["home_municipality"] = eq.municipality
        record["municipality_in"] = _municipality_in(position, geography)
    return record


def _municipality_in(position: Any, geography: Callable[[], Geography]) -> str | None:
    """The municipality a vehicle's usable (not stale) position lies in; None when unknown."""
    if not isinstance(position, Mapping) or position.get("stale"):
        return None
    try:
        return geography().municipality_at(position["lat"], position["lon"])
    except (KeyError, RejectedError):
        return None
