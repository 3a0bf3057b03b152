"""Garbage collection in the long-running processes: the start-up heap is frozen.

A host holds hundreds of entities, their twins, profiles and sessions; the
lighting simulator tens of thousands of lamps. Nearly all of it is built at
start-up and lives as long as the process. CPython's cyclic collector
nevertheless walks every one of those objects in each full (generation 2)
collection, holding the GIL: measured on the session VM with the city at
scale 1.0, such a pause lasted 100 to 460 ms in a host and 1.3 s in the
lighting simulator, and every thread of the process waited through it — a
priority lane's controller write, a cabinet's answer to a crisis setpoint.

:func:`settle` runs once a process has built what it keeps: a collection
of the young generations (the latest garbage of start-up; a full one would
cost another such pause, in every host at once), then :func:`gc.freeze`,
which moves every surviving object to the permanent generation that no
later collection visits. What the process allocates afterwards is collected
as before, so a reference cycle made at run time is still reclaimed; a
frozen object that becomes garbage is freed by its reference count, as most
are, or stays.

``COMMANDPOST_GC_FREEZE=0`` leaves the collector as CPython has it (to
measure the difference).
"""

from __future__ import annotations

import gc
import logging
import os
import time
from typing import Final

__all__ = ["ENV", "settle"]

log = logging.getLogger("commandpost.gc")

ENV: Final = "COMMANDPOST_GC_FREEZE"


def settle(what: str = "process") -> int:
    """Collect the young generations and freeze what survived (see the module doc);
    the number of objects now frozen (0 when ``COMMANDPOST_GC_FREEZE=0``)."""
    if os.environ.get(ENV, "1").strip() == "0":
        return 0
    started = time.perf_counter()
    gc.collect(1)
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("%s: %d objects frozen in %.0f ms", what, frozen,
              (time.perf_counter() - started) * 1000)
    return frozen
