"""What the benches share: the machine, process groups, percentiles, the running city.

:class:`City` starts what ``make demo`` runs — embedded Redis and broker,
field simulators on the real protocols, Ray, the supervision tree with its
warm spare, device sessions, and the admin web on a free port — and waits
until every device is online::

    with City(scale=0.1, say=print) as city:
        token = city.token("operator")
        ...  # city.svc, city.admin_url, city.control (the simulators' channel)

Every bench reports ``left_out``: the parts of ``make demo`` its run did not
have (an empty list when nothing).
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psutil

from runtime.procmem import cpu_seconds, pss_mb, ray_pids, tree_pids

Say = Callable[[str], None]

__all__ = [
    "City",
    "Say",
    "cpu_seconds",
    "latency_summary",
    "machine",
    "percentile",
    "pss_mb",
]


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

    ``spares`` and ``admin`` can be turned off; what is turned off is listed
    in :attr:`left_out`. ``sim_rate_hz`` overrides the MQTT devices' rate.
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
    ) -> None:
        from runtime.demo_inventory import DemoPorts, generate_demo
        from runtime.inventory import parse_inventory

        self.scale = scale
        self.say = say
        # Free ports, not the demo's documented ones: a bench runs beside a demo or a test.
        self.inventory = parse_inventory(
            generate_demo(scale=scale, seed=seed, ports=DemoPorts.free()),
            f"<demo scale {scale}>")
        self._broker = broker
        self._sim_rate_hz = sim_rate_hz
        self._spares = spares
        self._admin = admin
        self._devices = devices
        self._online_timeout_s = online_timeout_s
        self._data_dir = data_dir
        self.svc: Any = None
        self.server: Any = None
        self.admin_url = ""
        self.creds: dict[str, dict[str, str]] = {}
        self.control: Any = None
        self.left_out: list[str] = []
        if spares < 1:
            self.left_out.append("warm spare")
        if not admin:
            self.left_out.append("admin web")
        if not devices:
            self.left_out += ["device sessions", "simulators"]

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> Self:
        from runtime.service import DEVICES, Service, ServiceOptions

        self.svc = Service(self.inventory, ServiceOptions(
            devices=DEVICES if self._devices else "", simulate=self._devices,
            sim_rate_hz=self._sim_rate_hz, spares=self._spares, broker=self._broker,
            data_dir=self._data_dir))
        self.svc.start_servers()
        if self._admin:
            self._start_admin()
        self.svc.start_ray()
        if self.server is not None:
            from runtime.service import RuntimeBackend

            self._backend.swap(RuntimeBackend(self.svc))
        self.svc.start_tree()
        if self._devices:
            from devices.sim.control import SimControl

            self.control = SimControl(self.svc.sim_control_url)
            self.wait_online()
        return self

    def _start_admin(self) -> None:
        from admin_web import (
            AdminServer,
            StaticBackend,
            SwappableBackend,
            UserRegistry,
            create_app,
            create_demo_users,
        )
        from runtime.embedded import free_port

        users = UserRegistry()
        self.creds = create_demo_users(users, [m.slug for m in self.inventory.municipalities])
        self._backend = SwappableBackend(StaticBackend())
        self.server = AdminServer(create_app(self._backend, users), "127.0.0.1", free_port())
        self.server.start()
        self.admin_url = self.server.url

    def stop(self) -> None:
        try:
            if self.svc is not None:
                self.svc.stop()
        finally:
            if self.server is not None:
                self.server.stop()

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
        b = self.svc.broker if self.svc is not None else None
        return str(b.kind) if b is not None else "external"

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
        if self.svc.broker is not None and self.svc.broker.pid:
            broker |= set(tree_pids(self.svc.broker.pid))
        everything = set(tree_pids(os.getpid())) | set(ray_pids())
        return {"runtime": everything - sim - broker, "broker": broker, "simulator": sim}


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
