"""The runtime for real: Ray host processes, Redis, the broker, the admin web.

One tree serves the whole module (conftest ``cluster``); each test waits for
the tree to be healthy before it starts, so kills in one test don't leak.
"""

from __future__ import annotations

import os
import random
import signal
import time
from typing import Any

import pytest
import ray

from runtime.commands import Command, CommandStatus, new_command_id
from runtime.envelope import Envelope, MessageKind, pack
from tests.conftest import Cluster, poll

pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("ray_runtime")]


@pytest.fixture
def c(cluster: Cluster) -> Cluster:
    poll(cluster.all_running, 60, what="every host running")
    poll(lambda: cluster.health() == "ok", 60, what="health ok")
    return cluster


def submit(c: Cluster, target: str, params: dict[str, Any]) -> str:
    cmd = Command(command_id=new_command_id(), target=target, action="set", params=params,
                  caller="test")
    stored, _ = c.svc.store.submit_command(cmd)
    return str(stored.command_id)


def status_of(c: Cluster, cid: str) -> str:
    return str(c.svc.store.get_command(cid).status)


def wait_acked(c: Cluster, cids: list[str], timeout: float = 60.0) -> None:
    poll(lambda: all(status_of(c, cid) == "acked" for cid in cids), timeout,
         what=f"{len(cids)} commands acked")


def host_entities(c: Cluster, host_id: str) -> list[str]:
    return [e for e, h in c.svc.plan.owner.items() if h == host_id]


def snapshot(c: Cluster, host_id: str) -> dict[str, Any]:
    return dict(ray.get(c.svc.host_handle(host_id).snapshot.remote(), timeout=30))


def test_tree_and_health(c: Cluster) -> None:
    tree = c.tree()
    assert tree["id"] == "root" and tree["status"] == "running"
    hosts = c.hosts()
    assert set(hosts) == {h.host_id for h in c.svc.plan.hosts}
    # Every equipment, and the control room's coordinators on their own host.
    assert sum(h["entities"] for h in hosts.values()) == (
        len(c.inventory.equipment) + len(c.svc.coordinators))
    assert all(isinstance(h["pid"], int) and h["pid"] > 0 for h in hosts.values())
    kinds = {h["kind"] for h in hosts.values()}
    assert {"sharded host", "dedicated host"} <= kinds
    _, health = c.http.call("GET", "/api/v1/health")
    assert health == {**health, "status": "ok", "entities": len(c.svc.plan.owner)}
    status, _ = c.http.call("GET", "/api/v1/tree", token="")
    assert status == 401


def test_kill9_host_rehydrates_checkpointed_state(c: Cluster) -> None:
    """rest_for_one in lighting: lighting-1 dies, lighting-1 and lighting-2 restart."""
    target = "lighting-1"
    ids = host_entities(c, target)
    rng = random.Random(5)
    expected = {e: float(rng.randint(0, 100)) for e in ids}
    cids = [submit(c, e, {"dim": v}) for e, v in expected.items()]
    wait_acked(c, cids)
    before = c.hosts()
    os.kill(before[target]["pid"], signal.SIGKILL)

    def recovered() -> bool:
        h = c.hosts()[target]
        if h["status"] != "running" or h["pid"] == before[target]["pid"]:
            return False
        r = ray.get(c.svc.host_handle(target).ping_entities.remote(timeout=2.0), timeout=10)
        return bool(r["answered"] == len(ids))

    poll(recovered, 60, what="lighting-1 replaced and every entity answering")
    snap = snapshot(c, target)
    assert {e: snap[e]["twin"]["desired"].get("dim") for e in ids} == expected
    # rest_for_one: the host after it is restarted too, the one before it is untouched.
    poll(lambda: c.hosts()["lighting-2"]["pid"] != before["lighting-2"]["pid"]
         and c.hosts()["lighting-2"]["status"] == "running", 60, what="lighting-2 restarted")
    after = c.hosts()
    assert after["lighting-0"]["pid"] == before["lighting-0"]["pid"]
    assert after[target]["restarts"] >= 1


def test_one_for_all_restarts_every_host_of_the_domain(c: Cluster) -> None:
    before = c.hosts()
    os.kill(before["video-0"]["pid"], signal.SIGKILL)

    def both_replaced() -> bool:  # one_for_all
        h = c.hosts()
        return all(h[x]["status"] == "running" and h[x]["pid"] != before[x]["pid"]
                   for x in ("video-0", "video-1"))

    poll(both_replaced, 60, what="both video hosts replaced")
    assert c.hosts()["traffic-0"]["pid"] == before["traffic-0"]["pid"]


def test_intensity_exceeded_escalates_to_root(c: Cluster) -> None:
    """access allows 1 restart per 120 s: the second death escalates; root restarts it."""
    access = next(h.host_id for h in c.svc.plan.hosts if h.domain == "access")
    t0 = time.time()
    pid = c.hosts()[access]["pid"]
    os.kill(pid, signal.SIGKILL)
    poll(lambda: c.hosts()[access]["pid"] not in (pid, None)
         and c.hosts()[access]["status"] == "running", 60, what="first replacement")
    pid2 = c.hosts()[access]["pid"]
    os.kill(pid2, signal.SIGKILL)
    poll(lambda: c.hosts()[access]["pid"] not in (pid, pid2, None)
         and c.hosts()[access]["status"] == "running", 60, what="domain restarted by root")

    def events() -> list[dict[str, Any]]:
        return [e for e in c.svc.store.recent_events(500) if e.get("ts", 0) >= t0]

    def seen() -> bool:
        actions = {(e.get("event"), e.get("entity")) for e in events()}
        wanted = {("supervisor_give_up", access), ("supervisor_escalate", "access"),
                  ("supervisor_restart", "access")}
        return bool(actions & wanted)

    poll(seen, 30, what="give-up / escalation events in the Redis stream")
    tree = c.tree()
    domain = next(d for d in tree["children"] if d["id"] == "access")
    assert domain["restarts"] >= 1


def test_entity_crash_is_restarted_inside_its_host(c: Cluster) -> None:
    host = "lighting-0"
    eid = host_entities(c, host)[0]
    handle = c.svc.host_handle(host)
    pid = c.hosts()[host]["pid"]
    cid = submit(c, eid, {"dim": 33.0})
    wait_acked(c, [cid])
    with pytest.raises(Exception, match="crashed"):
        ray.get(handle.request.remote(eid, "drill_crash"), timeout=10)
    info = poll(lambda: (lambda i: i if i["status"] == "running" else None)(
        ray.get(handle.entity.remote(eid), timeout=10)), 10, what="entity running again")
    assert info["restarts"] >= 1 and info["crashes"][-1]["type"] == "drill_crash"
    assert info["checkpoint"]["twin"]["desired"]["dim"] == 33.0
    assert c.hosts()[host]["pid"] == pid  # the host process was not touched
    answer = ray.get(handle.request.remote(eid, "ping"), timeout=10)
    assert answer["id"] == eid


def test_thousand_messages_between_hosts_cost_few_ray_calls(c: Cluster) -> None:
    a, b = c.svc.host_handle("lighting-0"), c.svc.host_handle("traffic-0")
    targets = host_entities(c, "traffic-0")
    before_a = ray.get(a.status.remote())
    before_b = ray.get(b.status.remote())
    blobs = [pack(Envelope(target=targets[i % len(targets)], type="ping", sender="test",
                           kind=MessageKind.CONTROL).to_wire()) for i in range(1000)]
    ray.get(a.send.remote(blobs), timeout=30)
    ray.get(a.drain.remote(), timeout=30)

    def delivered() -> int:
        return int(ray.get(b.status.remote())["counters"]["delivered"]
                   - before_b["counters"]["delivered"])

    poll(lambda: delivered() >= 1000, 30, what="1000 envelopes delivered")
    after_a = ray.get(a.status.remote())
    calls = after_a["outbox"]["calls_to"].get("traffic-0", 0) - \
        before_a["outbox"]["calls_to"].get("traffic-0", 0)
    assert 1 <= calls <= 10, calls


def test_same_behaviour_dedicated_and_sharded(c: Cluster) -> None:
    dedicated = next(h for h in c.svc.plan.hosts if h.mode == "dedicated")
    xr_dedicated = dedicated.entity_ids[0]
    xr_sharded = host_entities(c, "traffic-0")[0]
    cids = [submit(c, xr_dedicated, {"plan": 7}), submit(c, xr_sharded, {"plan": 7})]
    wait_acked(c, cids)
    bad = [submit(c, xr_dedicated, {"plan": 99}), submit(c, xr_sharded, {"plan": 99})]
    poll(lambda: all(status_of(c, x) == "failed" for x in bad), 30, what="refusals")
    errors = {c.svc.store.get_command(x).error for x in bad}
    assert len(errors) == 1 and "outside" in errors.pop()
    for host, eid in ((dedicated.host_id, xr_dedicated), ("traffic-0", xr_sharded)):
        assert snapshot(c, host)[eid]["twin"]["desired"]["plan"] == 7


def test_bad_input_is_counted_and_answered(c: Cluster) -> None:
    handle = c.svc.host_handle("fleet-0")
    with pytest.raises(Exception, match="unknown"):
        ray.get(handle.request.remote("no-such-entity", "ping"), timeout=10)
    st = ray.get(handle.status.remote())
    assert st["counters"]["unknown_target"] >= 1
    result = ray.get(handle.deliver.remote(b"\xc1 not msgpack"), timeout=10)
    assert result["malformed"] == 1
    eid = host_entities(c, "fleet-0")[0]
    assert ray.get(handle.request.remote(eid, "ping"), timeout=10)["id"] == eid


def test_redis_outage_degrades_health_and_loses_no_command(c: Cluster) -> None:
    ids = host_entities(c, "lighting-0")[:10]
    accepted = [submit(c, e, {"dim": 11.0}) for e in ids]
    redis_pid = c.svc.redis.pid
    os.kill(redis_pid, signal.SIGKILL)
    poll(lambda: c.health() == "degraded", 30, interval=0.02, what="health degraded")
    poll(lambda: c.health() == "ok", 60, what="health ok again")
    assert c.svc.redis.pid != redis_pid
    later = [submit(c, e, {"dim": 12.0}) for e in ids]
    wait_acked(c, accepted[:0] + later)
    for cid in accepted:
        assert status_of(c, cid) in (str(CommandStatus.ACKED), str(CommandStatus.SUPERSEDED))
    snap = snapshot(c, "lighting-0")
    assert all(snap[e]["twin"]["desired"]["dim"] == 12.0 for e in ids)
