"""Process priority: background work yields the CPU to the latency-critical path.

Two cores may run the whole metropolis: every host, the simulators, the
broker and the store. The bus-priority path (the pool's members, the hosts
whose crossroads serve a priority lane, the traffic controllers) is woken by
a position and must run at once. Linux's scheduler lets a woken task of
higher weight preempt one of lower weight, so the hosts with no entity on
that path may run at a higher nice value (``ServiceOptions.background_nice``,
else ``COMMANDPOST_BACKGROUND_NICE``; 0, the default, leaves them as they
are; up to 19): they take what the critical path leaves, and are not
delayed at all while it is idle. It is off by default because it cuts both
ways: any other process of the machine at the normal priority (a build, a
test run) then takes the hosts' turn as well. The simulators keep the normal
priority: they stand for field devices, whose own processors no runtime
slows down. Raising a nice value needs no privilege; nothing here lowers one.

Linux keeps a nice value per thread: :func:`lower_priority` sets every
thread of the process, those already running included (a Ray worker's gRPC
and event-loop threads start before its actor is given its entities), and
threads started later inherit it.
"""

from __future__ import annotations

import logging
import os
from typing import Final

from runtime.errors import ConfigError

__all__ = ["BACKGROUND_NICE", "ENV", "background_nice", "check_nice", "lower_priority"]

log = logging.getLogger("commandpost.niceness")

#: The nice value of the hosts with no entity on the bus-priority path, unless configured.
BACKGROUND_NICE: Final = 0
ENV: Final = "COMMANDPOST_BACKGROUND_NICE"
_MAX_NICE: Final = 19


def background_nice() -> int:
    """The background nice value: ``COMMANDPOST_BACKGROUND_NICE``, else :data:`BACKGROUND_NICE`.

    Raises :class:`ConfigError` for a value that is not a whole number from 0 to 19.
    """
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return BACKGROUND_NICE
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{ENV} must be a whole number from 0 to {_MAX_NICE}: {raw!r}") from None
    if not 0 <= value <= _MAX_NICE:
        raise ConfigError(f"{ENV} must be from 0 to {_MAX_NICE}: {value}")
    return value


def check_nice(value: int) -> int:
    """``value`` if it is a nice value this module sets (0 to 19), else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_NICE:
        raise ConfigError(f"background nice value must be from 0 to {_MAX_NICE}: {value!r}")
    return value


def lower_priority(nice: int) -> int:
    """Raise every thread of this process to nice value ``nice`` (those above it keep
    theirs); the number of threads changed. Linux only: elsewhere the process's value."""
    if nice <= 0:
        return 0
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
    except FileNotFoundError:
        threads = [0]
    changed = 0
    for tid in threads:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
                changed += 1
        except (ProcessLookupError, PermissionError) as exc:
            log.debug("thread %d keeps its priority: %s", tid, exc)
    return changed
