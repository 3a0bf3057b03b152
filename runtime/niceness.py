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

Lowering the others is not enough on a loaded machine: a woken task of the
normal class still waits for the running ones' turns to end (measured on
two cores with three busy processes beside a controller's Modbus server:
a write's round trip p99 5.1 to 6.0 ms, against 0.8 to 0.9 ms with the server and
its client in the real-time class). The processes whose whole work is the
critical path — the pool's members, the crossroads' lane processes, the
embedded broker that carries the positions to the pool, and in a bench the
traffic controllers' simulators — may therefore run in Linux's
real-time class (``SCHED_RR`` at a priority from 1 to 99;
``ServiceOptions.priority_realtime``, else ``COMMANDPOST_PRIORITY_REALTIME``,
0 for off, the default): a position, a request or a write then runs as
soon as it arrives, ahead of every host. They are event-driven and spend a
few percent of a CPU; Linux keeps 5 % of each period for the normal class
whatever the real-time one asks (``kernel.sched_rt_runtime_us``), and
``SCHED_RR`` shares a CPU among equals. Hosts that carry telemetry never get
it. Linux grants it to root (``CAP_SYS_NICE``) or within ``RLIMIT_RTPRIO``;
refused, the process says so once and keeps the normal class.

The broker is on the path too, and it is the one that a flood of telemetry
keeps busy: with the members and lanes real-time but the broker in the
normal class, the bus-priority bench's flood (the city plus 4,000 messages/s)
measured p99 24.6 ms from a position's publish to the controller's receipt, 23.5
of them between the publish and the member (stalls of 30 to 40 ms in which
positions waited in the broker for a turn of the CPU); with the broker
real-time too, 1.9 and 1.5 ms (it spent 8 % of a CPU). The embedded broker
(:class:`runtime.embedded.EmbeddedBroker`) joins the class with the path, on
every restart; an external broker is its operator's to place there
(``chrt --rr -p 10 PID``, systemd's ``CPUSchedulingPolicy=rr``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Final, Literal, TypeAlias

from runtime.errors import ConfigError

__all__ = ["BACKGROUND_NICE", "ENV", "IDLE", "REALTIME_ENV", "Background", "background_nice",
           "check_nice", "check_realtime", "enter_realtime", "lower_priority",
           "priority_realtime", "realtime_of", "restore_priority"]

log = logging.getLogger("commandpost.niceness")

#: The nice value of the hosts with no entity on the bus-priority path, unless configured.
BACKGROUND_NICE: Final = 0
ENV: Final = "COMMANDPOST_BACKGROUND_NICE"
#: The background that runs only on a CPU nothing else wants (``SCHED_IDLE``).
IDLE: Final = "idle"
_MAX_NICE: Final = 19
#: The real-time priority of the critical path's processes, unless configured (0: off).
REALTIME_ENV: Final = "COMMANDPOST_PRIORITY_REALTIME"
_MAX_RT: Final = 99

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


def priority_realtime() -> int:
    """The real-time priority of the critical path: ``COMMANDPOST_PRIORITY_REALTIME``, else 0
    (off). Raises :class:`ConfigError` for a value that is not a whole number from 0 to 99."""
    raw = os.environ.get(REALTIME_ENV, "").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{REALTIME_ENV} must be a whole number from 0 (off) to {_MAX_RT}: "
                          f"{raw!r}") from None
    return _checked_realtime(value, REALTIME_ENV)


def check_realtime(value: int) -> int:
    """``value`` if it is a real-time priority this module sets (0 for off, 1 to 99), else
    :class:`ConfigError`."""
    return _checked_realtime(value, "real-time priority")


def _checked_realtime(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_RT:
        raise ConfigError(f"{what} must be a whole number from 0 (off) to {_MAX_RT}: {value!r}")
    return value


def enter_realtime(priority: int, pid: int = 0) -> bool:
    """Put every thread of the process ``pid`` (0: this one; else a child it started,
    the embedded broker) in the real-time class (``SCHED_RR`` at ``priority``), those
    already running included; threads started later inherit it. Whether it is there now:
    ``priority`` 0 asks nothing (False); refused by the system, it says so, and the
    process keeps its class."""
    if not check_realtime(priority):
        return False
    policy = getattr(os, "SCHED_RR", None)
    if policy is None:
        log.warning("no real-time class on this system: the critical path keeps the normal one")
        return False
    try:
        os.sched_setscheduler(pid, policy, os.sched_param(priority))
    except PermissionError:
        log.warning(
            "the real-time class (priority %d) is refused to %s: it needs CAP_SYS_NICE or "
            "an RLIMIT_RTPRIO of at least %d (ulimit -r); the bus-priority path keeps the "
            "normal class", priority, f"process {pid}" if pid else "this process", priority)
        return False
    except ProcessLookupError:
        return False
    _each_thread(lambda tid: _set_realtime(tid, policy, priority), pid)
    return True


def realtime_of(pid: int) -> int:
    """The real-time priority of the process ``pid``'s main thread (0: not real-time)."""
    try:
        if os.sched_getscheduler(pid) not in (getattr(os, "SCHED_RR", -1),
                                              getattr(os, "SCHED_FIFO", -1)):
            return 0
        return int(os.sched_getparam(pid).sched_priority)
    except (ProcessLookupError, PermissionError):
        return 0


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


def _set_realtime(tid: int, policy: int, priority: int) -> bool:
    if os.sched_getscheduler(tid) == policy and os.sched_getparam(tid).sched_priority == priority:
        return False
    os.sched_setscheduler(tid, policy, os.sched_param(priority))
    return True


def _each_thread(change: Callable[[int], bool], pid: int = 0) -> int:
    try:
        threads = [int(t) for t in os.listdir(f"/proc/{pid or 'self'}/task")]
    except FileNotFoundError:
        threads = [pid]
    changed = 0
    for tid in threads:
        try:
            changed += change(tid)
        except (ProcessLookupError, PermissionError) as exc:
            log.debug("thread %d keeps its priority: %s", tid, exc)
    return changed
