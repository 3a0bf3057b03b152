"""Process priority: background work yields the CPU to the latency-critical path.

Two cores may run the whole metropolis: every host, the simulators, the
broker and the store. The bus-priority path (the pool's members, the
crossroads' lane processes of :mod:`runtime.laneproc` — or their hosts, when
those serve the lane themselves —, the traffic controllers) is woken by a
position and must run at once. Linux's scheduler lets a woken task of
higher weight preempt one of lower weight, so the hosts with no entity on
that path may run in the background (``ServiceOptions.background_nice``,
else ``COMMANDPOST_BACKGROUND_NICE``):

* a nice value from 1 to 19: they take a smaller share of the CPU while the
  critical path is busy;
* ``idle`` (Linux's ``SCHED_IDLE`` policy): they run only on a CPU that
  nothing else wants, and any other task woken preempts them at once;
* 0, the default, leaves them as they are.

It is off by default because it cuts both ways: any other process of the
machine at the normal priority (a build, a test run, a log shipper) then
takes the hosts' turn as well, and with ``idle`` it can hold them back
entirely. The store, the broker and Ray's own daemons are never lowered:
the pool's leases and the crossroads' calls go through them.

Simulators stand for field devices, whose own processors no runtime slows
down; on a machine that runs the runtime and the simulated city together
(a bench), the simulators of the families off the priority path may run in
the background too (``ServiceOptions.sim_background``): they then stand
for processors of their own that take nothing from the runtime, rather
than for a load that competes with it.

Lowering needs no privilege. Only a process the critical path starts of its own,
a host's lane process (:mod:`runtime.laneproc`), asks for the normal priority
back (:func:`restore_priority`): started again by a host that is in the
background by then, it inherited the host's; Linux grants it to root or within
``RLIMIT_NICE``, and the process says when it is refused.
Linux keeps a nice value and a policy per thread: :func:`lower_priority`
sets every thread of the process, those already running included (a Ray
worker's gRPC and event-loop threads start before its actor is given its
entities), and threads started later inherit it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Final, Literal, TypeAlias

from runtime.errors import ConfigError

__all__ = ["BACKGROUND_NICE", "ENV", "IDLE", "Background", "background_nice", "check_nice",
           "lower_priority", "restore_priority"]

log = logging.getLogger("commandpost.niceness")

#: The nice value of the hosts with no entity on the bus-priority path, unless configured.
BACKGROUND_NICE: Final = 0
ENV: Final = "COMMANDPOST_BACKGROUND_NICE"
#: The background that runs only on a CPU nothing else wants (``SCHED_IDLE``).
IDLE: Final = "idle"
_MAX_NICE: Final = 19

#: A background priority: a nice value (0 to 19) or :data:`IDLE`.
Background: TypeAlias = int | Literal["idle"]


def background_nice() -> Background:
    """The background priority: ``COMMANDPOST_BACKGROUND_NICE``, else :data:`BACKGROUND_NICE`.

    Raises :class:`ConfigError` for a value that is neither a whole number from 0 to 19
    nor ``idle``.
    """
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return BACKGROUND_NICE
    if raw.lower() == IDLE:
        return IDLE
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(
            f"{ENV} must be a whole number from 0 to {_MAX_NICE} or {IDLE!r}: {raw!r}") from None
    if not 0 <= value <= _MAX_NICE:
        raise ConfigError(f"{ENV} must be from 0 to {_MAX_NICE} or {IDLE!r}: {value}")
    return value


def check_nice(value: Background) -> Background:
    """``value`` if it is a background priority this module sets (0 to 19, or ``idle``),
    else :class:`ConfigError`."""
    if value == IDLE and isinstance(value, str):
        return IDLE
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_NICE:
        raise ConfigError(
            f"background priority must be a nice value from 0 to {_MAX_NICE} or {IDLE!r}: "
            f"{value!r}")
    return value


def lower_priority(background: Background) -> int:
    """Put every thread of this process in the background ``background``: a nice value
    (those above it keep theirs), or :data:`IDLE`; the number of threads changed. Linux
    only: elsewhere the process's nice value, and ``idle`` is nice 19."""
    if background == IDLE and isinstance(background, str):
        policy = getattr(os, "SCHED_IDLE", None)
        if policy is None:
            return lower_priority(_MAX_NICE)
        return _each_thread(lambda tid: _set_policy(tid, policy))
    nice = int(background)
    if nice <= 0:
        return 0
    return _each_thread(lambda tid: _set_nice(tid, nice))


def restore_priority() -> bool:
    """Put the calling thread back at the normal priority (``SCHED_OTHER``, nice 0) if it
    is below it; whether it is at the normal priority now. Call it before starting
    threads (they inherit it)."""
    ok = True
    idle = getattr(os, "SCHED_IDLE", None)
    if idle is not None and os.sched_getscheduler(0) == idle:
        try:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        except PermissionError:
            ok = False
    if os.getpriority(os.PRIO_PROCESS, 0) > 0:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
        except PermissionError:
            ok = False
    return ok


def _set_nice(tid: int, nice: int) -> bool:
    if os.getpriority(os.PRIO_PROCESS, tid) >= nice:
        return False
    os.setpriority(os.PRIO_PROCESS, tid, nice)
    return True


def _set_policy(tid: int, policy: int) -> bool:
    if os.sched_getscheduler(tid) == policy:
        return False
    os.sched_setscheduler(tid, policy, os.sched_param(0))
    return True


def _each_thread(change: Callable[[int], bool]) -> int:
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
    except FileNotFoundError:
        threads = [0]
    changed = 0
    for tid in threads:
        try:
            changed += change(tid)
        except (ProcessLookupError, PermissionError) as exc:
            log.debug("thread %d keeps its priority: %s", tid, exc)
    return changed
