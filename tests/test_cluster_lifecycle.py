"""Host restart types with real processes, and a root that dies and re-adopts its hosts."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
import ray

from runtime.demo_inventory import DemoPorts, generate_demo
from runtime.inventory import parse_inventory
from tests.conftest import Cluster, poll, start_cluster

pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("ray_runtime")]


@pytest.fixture(scope="module")
def life() -> Iterator[Cluster]:
    inv = parse_inventory(generate_demo(scale=0.02, seed=4, ports=DemoPorts.free()), "<lifecycle>")
    yield from start_cluster(inv, {"restart_types": {"buildings": "transient",
                                                     "video": "temporary"}})


def test_transient_host_restarts_after_a_crash_not_after_a_normal_stop(life: Cluster) -> None:
    pid = life.hosts()["buildings-0"]["pid"]
    os.kill(pid, signal.SIGKILL)
    poll(lambda: life.hosts()["buildings-0"]["pid"] != pid
         and life.hosts()["buildings-0"]["status"] == "running", 60, what="transient restarted")
    pid2 = life.hosts()["buildings-0"]["pid"]
    assert ray.get(life.svc.host_handle("buildings-0").stop.remote(), timeout=30) is True
    poll(lambda: life.hosts()["buildings-0"]["status"] == "stopped", 30,
         what="transient host stopped for good after a normal exit")
    assert life.hosts()["buildings-0"]["pid"] == pid2  # not replaced
    assert life.health() == "degraded"


def test_temporary_host_is_never_restarted(life: Cluster) -> None:
    pid = life.hosts()["video-0"]["pid"]
    os.kill(pid, signal.SIGKILL)
    poll(lambda: life.hosts()["video-0"]["status"] == "stopped", 30, what="temporary stopped")
    assert life.hosts()["video-0"]["restarts"] == 0
    assert life.hosts()["traffic-0"]["status"] == "running"


def test_a_restarted_root_re_adopts_living_hosts(life: Cluster) -> None:
    before = life.hosts()
    living = {h: n["pid"] for h, n in before.items() if n["status"] == "running"}
    root_pid = life.tree()["pid"]
    os.kill(root_pid, signal.SIGKILL)
    poll(lambda: life.tree()["pid"] != root_pid, 60, what="a new root")
    poll(lambda: all(life.hosts()[h]["status"] == "running" for h in living), 60,
         what="living hosts adopted")
    after = life.hosts()
    moved = {h: (p, after[h]["pid"]) for h, p in living.items() if after[h]["pid"] != p}
    assert not moved, moved  # adopted, not recreated
    assert life.svc.root_restarts == 1


def test_closing_the_spare_pool_while_a_spare_warms_leaves_no_spare_behind(
        life: Cluster) -> None:
    import asyncio

    from supervisors.tree import SPARE_PREFIX, SparePool

    namespace = "spare-pool-close"

    def spares() -> set[str]:
        return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["namespace"] == namespace and a["name"].startswith(SPARE_PREFIX)}

    async def fill_then_close() -> set[str]:
        pool = SparePool(1, namespace, ["actors.drill"])
        pool.refill()
        await asyncio.sleep(0)  # the fill has started its spare and awaits its warm-up
        started = spares()
        await pool.close()
        return started

    started = asyncio.run(fill_then_close())
    assert len(started) == 1, started
    # The spare was still warming when the pool closed: it is killed, not left detached.
    poll(lambda: not spares(), 30, what="the warming spare gone")
