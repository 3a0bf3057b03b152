"""Eclipse SUMO, the microscopic traffic simulator: its tools and its TraCI session.

SUMO comes from PyPI as the optional extra ``tsp`` (``eclipse-sumo``, whose
wheel ships the ``sumo``, ``netconvert`` and ``netgenerate`` binaries, and
``traci``, the Python client of SUMO's TraCI protocol). This is the one
module that imports them: :func:`ensure_sumo` installs the extra into the
running interpreter's environment when it is missing (``pip install`` of
:data:`REQUIREMENTS`, saying so first), :func:`binary` finds a tool, and
:class:`TraciSession` runs one simulation under the caller's control, step by
step:

    session = TraciSession(["-n", "net.xml", "-r", "routes.xml"], seed=7)
    session.start()
    session.set_signal("J0", "GGrr")            # the controller's state, every step
    session.step()                              # one step (1 s) of traffic under it
    for vehicle_id, v in session.vehicles().items():
        ...                                     # x, y, speed, angle, edge, stopped
    session.close()

The session subscribes to each vehicle as it departs (position, speed, angle,
road, stop state), so a step costs one TraCI round trip for every vehicle
together; signals are set only when their state changes. SUMO's errors
become :class:`~runtime.errors.ConfigError` (a network or route file it
refuses) or :class:`~runtime.errors.ProtocolError` (the connection).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from runtime.errors import ConfigError, ProtocolError

__all__ = ["REQUIREMENTS", "STEP_S", "TraciSession", "VehicleState", "binary", "ensure_sumo",
           "sumo_home", "sumo_version"]

#: The optional extra ``tsp`` of pyproject.toml, as pip takes it.
REQUIREMENTS: Final = ("eclipse-sumo>=1.28,<2", "traci>=1.28,<2")
#: The simulation's step (s): controllers decide once per step.
STEP_S: Final = 1.0
#: The time a pip install of the extra may take (s).
_INSTALL_TIMEOUT_S: Final = 900.0

# TraCI variable ids (traci.constants), fixed by the protocol.
_VAR_POSITION: Final = 0x42
_VAR_SPEED: Final = 0x40
_VAR_ANGLE: Final = 0x43
_VAR_ROAD_ID: Final = 0x50
_VAR_LANEPOSITION: Final = 0x56
_VAR_STOPSTATE: Final = 0xB5
_SUBSCRIBED: Final = (_VAR_POSITION, _VAR_SPEED, _VAR_ANGLE, _VAR_ROAD_ID, _VAR_LANEPOSITION,
                      _VAR_STOPSTATE)


def _importable() -> bool:
    try:
        importlib.import_module("sumo")
        importlib.import_module("traci")
    except ImportError:
        return False
    return True


def ensure_sumo(say: Callable[[str], None] = print) -> None:
    """Make ``sumo`` and ``traci`` importable: install :data:`REQUIREMENTS` into this
    interpreter's environment when they are not (saying so), else do nothing.

    Raises :class:`ConfigError` when the install fails.
    """
    if _importable():
        return
    say(f"Eclipse SUMO is not installed: installing {' '.join(REQUIREMENTS)} into "
        f"{sys.prefix} (commandpost's extra 'tsp')")
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                               *REQUIREMENTS], capture_output=True, text=True,
                              timeout=_INSTALL_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"could not install Eclipse SUMO: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ConfigError("could not install Eclipse SUMO (pip install "
                          f"{' '.join(REQUIREMENTS)}): {' / '.join(tail)}")
    importlib.invalidate_caches()
    if not _importable():
        raise ConfigError("Eclipse SUMO was installed but cannot be imported")


def sumo_home() -> Path:
    """SUMO's installation (``SUMO_HOME``): the wheel's, else the environment's."""
    try:
        import sumo

        return Path(sumo.SUMO_HOME)
    except ImportError:
        home = os.environ.get("SUMO_HOME")
        if home:
            return Path(home)
    raise ConfigError("Eclipse SUMO is not installed (pip install 'commandpost[tsp]')")


def binary(name: str) -> Path:
    """The path of SUMO's tool ``name`` (``sumo``, ``netconvert``, ``netgenerate``)."""
    path = sumo_home() / "bin" / name
    if not path.exists():
        raise ConfigError(f"SUMO has no tool {name!r} at {path}")
    return path


def tool_env() -> dict[str, str]:
    """The environment SUMO's tools run in (``SUMO_HOME`` set: no warning about it)."""
    return {**os.environ, "SUMO_HOME": str(sumo_home())}


def run_tool(name: str, args: Sequence[str], *, timeout_s: float = 300.0) -> None:
    """Run SUMO's tool ``name``; :class:`ConfigError` with its last words if it fails."""
    try:
        done = subprocess.run([str(binary(name)), *args], capture_output=True, text=True,
                              env=tool_env(), timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"{name}: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise ConfigError(f"{name} failed: {' / '.join(tail)}")


def sumo_version() -> str:
    """SUMO's version, as its binary says it (``"1.28.0"``)."""
    done = subprocess.run([str(binary("sumo")), "--version"], capture_output=True, text=True,
                          env=tool_env(), timeout=30, check=False)
    first = (done.stdout or "").splitlines()[:1]
    return first[0].rsplit(" ", 1)[-1] if first else "unknown"


@dataclass(frozen=True, slots=True)
class VehicleState:
    """A vehicle after a step: its position (the network's x, y in m), speed (m/s),
    angle (degrees clockwise from the network's north), edge and position on its lane,
    and whether it stands at a scheduled stop."""

    x: float
    y: float
    speed: float
    angle: float
    edge: str
    lane_pos: float
    stopped: bool


class TraciSession:
    """One SUMO simulation driven step by step over TraCI (see the module doc).

    ``args`` are SUMO's own (network, routes, outputs); the session adds the
    step length (:data:`STEP_S`), the seed and ``--time-to-teleport -1`` (no
    vehicle ever jumps a jam). Not thread-safe: one owner calls it.
    """

    def __init__(self, args: Sequence[str], *, seed: int, label: str = "commandpost") -> None:
        self.args = [*args, "--step-length", str(STEP_S), "--seed", str(seed),
                     "--time-to-teleport", "-1", "--no-step-log", "true",
                     "--no-warnings", "true", "--duration-log.disable", "true"]
        self.label = f"{label}-{os.getpid()}-{id(self)}"
        self._traci: Any = None
        self._signals: dict[str, str] = {}
        self._vehicles: dict[str, VehicleState] = {}

    def start(self) -> None:
        """Start SUMO (its own process) and connect."""
        ensure_sumo()
        import traci

        try:
            # traci says on stdout that it retries while SUMO opens its port: not ours to print.
            with contextlib.redirect_stdout(io.StringIO()):
                traci.start([str(binary("sumo")), *self.args], label=self.label)
        except traci.exceptions.TraCIException as exc:
            raise ConfigError(f"SUMO refused to start: {exc}") from exc
        except traci.exceptions.FatalTraCIError as exc:
            raise ConfigError(f"SUMO could not start: {exc}") from exc
        self._traci = traci.getConnection(self.label)

    @property
    def conn(self) -> Any:
        if self._traci is None:
            raise ProtocolError("the SUMO session is not started")
        return self._traci

    def time(self) -> float:
        """The simulation's time (s)."""
        return float(self.conn.simulation.getTime())

    def pending(self) -> int:
        """Vehicles still running or still to depart."""
        return int(self.conn.simulation.getMinExpectedNumber())

    def signal_ids(self) -> tuple[str, ...]:
        """The traffic lights of the network."""
        return tuple(self.conn.trafficlight.getIDList())

    def signal_position(self, tls_id: str) -> tuple[int, float]:
        """The light's running program now: its phase index and the seconds spent in it."""
        conn = self.conn
        phase = int(conn.trafficlight.getPhase(tls_id))
        left = float(conn.trafficlight.getNextSwitch(tls_id)) - self.time()
        duration = float(conn.trafficlight.getPhaseDuration(tls_id))
        return phase, max(0.0, duration - left)

    def set_signal(self, tls_id: str, state: str) -> None:
        """Show ``state`` (one character per link) at ``tls_id`` from this step on."""
        if self._signals.get(tls_id) == state:
            return
        import traci

        try:
            self.conn.trafficlight.setRedYellowGreenState(tls_id, state)
        except traci.exceptions.TraCIException as exc:
            raise ProtocolError(f"SUMO refused state {state!r} at {tls_id}: {exc}") from exc
        self._signals[tls_id] = state

    def step(self) -> None:
        """One step of the simulation; then every vehicle's state is fresh."""
        import traci

        conn = self.conn
        try:
            conn.simulationStep()
            for vid in conn.simulation.getDepartedIDList():
                conn.vehicle.subscribe(vid, _SUBSCRIBED)
            results: Mapping[str, Mapping[int, Any]] = conn.vehicle.getAllSubscriptionResults()
        except traci.exceptions.FatalTraCIError as exc:
            raise ProtocolError(f"SUMO stopped: {exc}") from exc
        vehicles: dict[str, VehicleState] = {}
        for vid, r in results.items():
            if _VAR_POSITION not in r:
                continue
            x, y = r[_VAR_POSITION]
            vehicles[vid] = VehicleState(
                float(x), float(y), float(r[_VAR_SPEED]), float(r[_VAR_ANGLE]),
                str(r[_VAR_ROAD_ID]), float(r[_VAR_LANEPOSITION]),
                bool(int(r[_VAR_STOPSTATE]) & 1))
        self._vehicles = vehicles

    def vehicles(self) -> Mapping[str, VehicleState]:
        """Every vehicle running after the last step, by id."""
        return self._vehicles

    def arrived(self) -> tuple[str, ...]:
        """The vehicles that arrived during the last step."""
        return tuple(self.conn.simulation.getArrivedIDList())

    def close(self) -> None:
        """End the simulation (SUMO writes its outputs and exits)."""
        conn, self._traci = self._traci, None
        if conn is None:
            return
        import traci

        try:
            conn.close()
        except (traci.exceptions.FatalTraCIError, OSError):
            pass
