"""The supervision vocabulary, as data.

Restart types, strategies, intensity and backoff are small frozen values that
validate on construction, so a supervision tree can be read from a
configuration file and checked before anything starts. Every enum is a
``StrEnum`` whose values are the strings used on the wire and in the HTTP API;
the dataclasses accept those strings and turn them into members.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass, field
from typing import TypeVar

from runtime.errors import ConfigError

_E = TypeVar("_E", bound=enum.Enum)


class RestartType(enum.StrEnum):
    """When a child that ended is started again."""

    PERMANENT = "permanent"  # always
    TRANSIENT = "transient"  # only after an abnormal exit (error or killed)
    TEMPORARY = "temporary"  # never


class Strategy(enum.StrEnum):
    """Which children are restarted when one of them has to be."""

    ONE_FOR_ONE = "one_for_one"  # that child only
    ONE_FOR_ALL = "one_for_all"  # every child
    REST_FOR_ONE = "rest_for_one"  # that child and those started after it


class IntensityScope(enum.StrEnum):
    """What the restart-intensity window counts."""

    # OTP: at most N restarts of any children in T s, then the supervisor gives up
    # and escalates to its parent.
    SUPERVISOR = "supervisor"
    # Each child has its own N-in-T window; a child that exceeds it ends `failed` and
    # the supervisor keeps running, so that one bad entity among hundreds on a host
    # cannot take its neighbours down with it.
    CHILD = "child"


class ExitKind(enum.StrEnum):
    """Why an incarnation of a child ended."""

    NORMAL = "normal"  # it finished its work
    SHUTDOWN = "shutdown"  # it was asked to stop and did
    ERROR = "error"  # it crashed, or could not start
    KILLED = "killed"  # it was killed, or died without a word


class ChildStatus(enum.StrEnum):
    """Where a child (or a supervisor) stands; these strings are part of the HTTP API."""

    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"
    FAILED = "failed"


class EventAction(enum.StrEnum):
    """What a :class:`SupervisorEvent` reports."""

    START = "start"  # a child's first incarnation is running
    RESTART = "restart"  # a new incarnation of a child is running
    EXIT = "exit"  # an incarnation ended on its own, or could not start
    STOP = "stop"  # the supervisor stopped an incarnation (strategy, removal, shutdown)
    GIVE_UP = "give_up"  # supervisor-wide intensity exceeded: every child is stopped
    ESCALATE = "escalate"  # a give-up or a failed child is reported to the parent
    FAILED = "failed"  # one child exceeded its own intensity and stays down


def _coerce(enum_type: type[_E], value: object, name: str) -> _E:
    try:
        return enum_type(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in enum_type)
        raise ConfigError(f"{name} must be one of {allowed}, not {value!r}") from None


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, not {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Jittered, capped exponential delay before a restart.

    Attempt ``n`` (0 for a child's first restart in a row) waits
    ``min(max_s, initial_s * factor ** n)``, spread by ``±jitter`` of itself.
    ``initial_s = 0`` restarts at once every time (OTP's behaviour, and what
    entity cells want); ``max_s`` caps the delay before jitter, so that many
    children held at the cap still spread out instead of restarting in lockstep.
    """

    initial_s: float = 0.0
    factor: float = 2.0
    max_s: float = 5.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        initial = _number(self.initial_s, "backoff.initial_s")
        factor = _number(self.factor, "backoff.factor")
        cap = _number(self.max_s, "backoff.max_s")
        jitter = _number(self.jitter, "backoff.jitter")
        if initial < 0:
            raise ConfigError(f"backoff.initial_s must be >= 0, not {initial}")
        if factor < 1:
            raise ConfigError(f"backoff.factor must be >= 1, not {factor}")
        if cap < initial:
            raise ConfigError(f"backoff.max_s ({cap}) must be >= backoff.initial_s ({initial})")
        if not 0 <= jitter <= 1:
            raise ConfigError(f"backoff.jitter must be within [0, 1], not {jitter}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before restart number ``attempt`` (0-based) of a child in a row."""
        if attempt < 0:
            raise ConfigError(f"backoff attempt must be >= 0, not {attempt}")
        if self.initial_s == 0:
            return 0.0
        try:
            base = min(self.max_s, self.initial_s * self.factor**attempt)
        except OverflowError:
            base = self.max_s
        if self.jitter == 0:
            return base
        return max(0.0, base * (1.0 + rng.uniform(-self.jitter, self.jitter)))


@dataclass(frozen=True, slots=True)
class SupervisorOptions:
    """How a supervisor restarts its children and when it gives up.

    At most ``max_restarts`` restarts within ``max_seconds`` (per supervisor or
    per child, see :class:`IntensityScope`); ``max_restarts = 0`` means the
    first crash already exceeds it.
    """

    strategy: Strategy = Strategy.ONE_FOR_ONE
    max_restarts: int = 3
    max_seconds: float = 5.0
    scope: IntensityScope = IntensityScope.SUPERVISOR
    backoff: Backoff = field(default_factory=Backoff)

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategy", _coerce(Strategy, self.strategy, "strategy"))
        object.__setattr__(self, "scope", _coerce(IntensityScope, self.scope, "scope"))
        if isinstance(self.max_restarts, bool) or not isinstance(self.max_restarts, int):
            raise ConfigError(f"max_restarts must be an integer, not {self.max_restarts!r}")
        if self.max_restarts < 0:
            raise ConfigError(f"max_restarts must be >= 0, not {self.max_restarts}")
        if _number(self.max_seconds, "max_seconds") <= 0:
            raise ConfigError(f"max_seconds must be > 0, not {self.max_seconds}")
        if not isinstance(self.backoff, Backoff):
            raise ConfigError(f"backoff must be a Backoff, not {self.backoff!r}")


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One supervised child: its stable id, restart type and shutdown budget."""

    id: str
    restart: RestartType = RestartType.PERMANENT
    shutdown_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip():
            raise ConfigError(f"child id must be a non-empty string, not {self.id!r}")
        object.__setattr__(self, "restart", _coerce(RestartType, self.restart, "restart"))
        if _number(self.shutdown_timeout_s, "shutdown_timeout_s") <= 0:
            raise ConfigError(
                f"shutdown_timeout_s of {self.id!r} must be > 0, not {self.shutdown_timeout_s}"
            )


@dataclass(frozen=True, slots=True)
class ExitReason:
    """How one incarnation ended; ``str()`` gives ``kind`` or ``kind: detail``."""

    kind: ExitKind
    detail: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _coerce(ExitKind, self.kind, "exit kind"))

    @property
    def abnormal(self) -> bool:
        """True for a crash or a kill: what a transient child is restarted after."""
        return self.kind in (ExitKind.ERROR, ExitKind.KILLED)

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}" if self.detail else str(self.kind)


@dataclass(frozen=True, slots=True)
class SupervisorEvent:
    """One decision or observation of a supervisor, for operators and parents.

    ``child`` is the child concerned (for ``give_up``, the one whose exit made
    the supervisor give up); ``restarts`` is that child's restart count, or for
    ``give_up`` the supervisor's.
    """

    ts: float
    supervisor: str
    action: EventAction
    child: str
    reason: str = ""
    restarts: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", _coerce(EventAction, self.action, "event action"))
        if self.restarts < 0:
            raise ConfigError(f"restarts must be >= 0, not {self.restarts}")


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """A child as :meth:`Supervisor.status` shows it.

    ``restarts`` counts incarnations after the first; ``last_exit`` is the
    ``str()`` of the last :class:`ExitReason`, empty while it never ended.
    """

    id: str
    status: ChildStatus
    restarts: int = 0
    last_exit: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", _coerce(ChildStatus, self.status, "status"))
        if self.restarts < 0:
            raise ConfigError(f"restarts must be >= 0, not {self.restarts}")


@dataclass(frozen=True, slots=True)
class SupervisorStatus:
    """A supervisor and its children, in spec order.

    ``status`` is the supervisor's own: ``starting`` until :meth:`start`
    returns, ``running``, then ``failed`` after a give-up or ``stopped`` after a
    shutdown. ``restarts`` counts its restart decisions (one per crash, however
    many children the strategy restarted with it).
    """

    id: str
    status: ChildStatus
    restarts: int
    children: tuple[ChildInfo, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", _coerce(ChildStatus, self.status, "status"))

    def child(self, child_id: str) -> ChildInfo:
        """The entry of ``child_id``; raises ``KeyError`` when there is none."""
        for info in self.children:
            if info.id == child_id:
                return info
        raise KeyError(child_id)
