"""``commandpost bench demo``: what ``make demo`` runs, in steady state.

The city starts as ``make demo`` starts it (:class:`~runtime.bench.common.City`:
embedded Redis and broker, the field simulators, Ray, the supervision tree
with its warm spare, device sessions, the admin web) and every device comes
online. After a settling time past the start-up burst, CPU is measured over a
window, per role:

* ``runtime_cpu``: this process, Ray's processes, the hosts and the spare,
  Redis and the admin web (in cores);
* ``broker_cpu``: the MQTT broker alone;
* ``simulator_cpu``: the field simulators alone.

``memory_mb`` is the sum of PSS over all of them at the end of the window
(``memory_by_role_mb`` gives the parts).
"""

from __future__ import annotations

import os
import time
from typing import Any

from runtime.bench.common import (
    City,
    CpuMeter,
    Say,
    machine,
    pss_by_role,
    rounded_roles,
)

#: Seconds after every device is online before the window opens (the start-up
#: burst: first polls, reconciliation, the spare being started and warmed).
SETTLE_S = 15.0


def run(*, scale: float = 1.0, say: Say = print, seconds: float = 60.0, broker: str = "auto",
        settle_s: float = SETTLE_S, **_: Any) -> dict[str, Any]:
    """The metropolis in steady state at the profiles' rates: memory and CPU by role."""
    with City(scale=scale, say=say, broker=broker) as city:
        total = len(city.inventory.equipment)
        say(f"{total} entities on {len(city.svc.plan.hosts)} hosts and a spare; "
            f"settling {settle_s:.0f}s, then measuring {seconds:.0f}s")
        time.sleep(settle_s)
        groups = city.process_groups()
        meter = CpuMeter(groups)
        load_before = os.getloadavg()[0]
        meter.start()
        time.sleep(seconds)
        cores = meter.stop()
        load_after = os.getloadavg()[0]
        # Taken again: a process started during the window (a respawned worker) counts too.
        memory = pss_by_role(city.process_groups())
        online = city.online()
        result = {
            "memory_mb": round(memory["total"], 1),
            "memory_by_role_mb": rounded_roles({k: v for k, v in memory.items()
                                                if k != "total"}),
            "runtime_cpu": round(cores["runtime"], 3),
            "broker_cpu": round(cores["broker"], 3),
            "simulator_cpu": round(cores["simulator"], 3),
            "cpu_unit": "cores (CPU seconds per second of the window)",
            "processes": {role: len(pids) for role, pids in groups.items()},
            "entities": total,
            "online": online,
            "window_s": round(meter.window_s, 1),
            "settle_s": settle_s,
            # The machine's 1-minute load around the window: other work skews the figures.
            "load_1m": {"before": round(load_before, 2), "after": round(load_after, 2)},
            "hosts": len(city.svc.plan.hosts),
            "spares": city.svc.options.spares,
            "scale": scale,
            "broker": city.broker_kind,
            "machine": machine(),
            "left_out": list(city.left_out),
        }
    say(f"memory {result['memory_mb']} MB {result['memory_by_role_mb']}; cpu runtime "
        f"{result['runtime_cpu']}, broker {result['broker_cpu']}, simulators "
        f"{result['simulator_cpu']}; {online}/{total} online")
    return result
