"""``commandpost run --ray-address`` against a real Ray head that wants a token.

The head is started as the KubeRay manifest starts its own (``ray start`` with the
manifest's start parameters, each port moved to a free one of this machine,
``RAY_AUTH_MODE=token`` and the token in a file), in a directory and a ``HOME`` of its
own, so that no token of this machine's user counts. ``run`` joins it when given the
token the way the deploy files give it (``RAY_AUTH_MODE=token`` and
``RAY_AUTH_TOKEN_PATH``), and is refused, with an error that says why, without the token
or with another one. While it runs, every port the head's processes and the runtime's
driver listen on beyond loopback is one the start parameters pin: the ports the
manifest's NetworkPolicy opens are all a Ray node needs.

Stopped by pid, the whole tree (``ray stop`` would stop every Ray of the machine).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from runtime.demo_inventory import generate_demo
from tests.conftest import poll
from tests.test_deploy import PORT_PARAMS, raycluster

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"
ADMIN_PASSWORD = "token-e2e-Admin-pw-1"
#: Worker ports of the test's head: the manifest pins a range, the test free ports.
WORKER_PORTS = 40


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class TokenHead:
    root: Path
    address: str
    token_file: Path
    proc: subprocess.Popen[bytes]
    #: The ports the start parameters pin (the GCS, the agents, the workers).
    pinned: set[int] = field(default_factory=set)

    def env(self, **extra: str) -> dict[str, str]:
        """This machine's environment without Ray's token settings, and ``extra``."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("RAY_AUTH_") and k not in (
                   "RAY_ADDRESS", "COMMANDPOST_REDIS_URL", "COMMANDPOST_MQTT_URL")}
        env.update(HOME=str(self.root / "home"), COMMANDPOST_ADMIN_PASSWORD=ADMIN_PASSWORD)
        env.update(extra)
        return env


def kill_tree(proc: subprocess.Popen[bytes], root: Path) -> None:
    """SIGTERM ``proc`` and everything under it, SIGKILL what is left after 5 s, and any
    process that names ``root`` (one orphaned between the two)."""
    try:
        top = psutil.Process(proc.pid)
        tree = [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=5)
    strays = [p for p in psutil.process_iter(["cmdline"])
              if any(str(root) in a for a in (p.info["cmdline"] or []))]
    for p in [*alive, *strays]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs([*alive, *strays], timeout=10)
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def head() -> Iterator[TokenHead]:
    root = Path(tempfile.mkdtemp(prefix="cp-raytok-", dir="/tmp"))
    (root / "home").mkdir()
    token_file = root / "ray-token"
    token_file.write_text(secrets.token_hex(32) + "\n", encoding="utf-8")
    token_file.chmod(0o600)
    params = dict(raycluster()["spec"]["headGroupSpec"]["rayStartParams"])
    assert {"min-worker-port", "max-worker-port"} <= set(params)
    del params["min-worker-port"], params["max-worker-port"]
    ports = free_ports(len(PORT_PARAMS) + WORKER_PORTS)
    pinned = dict(zip(PORT_PARAMS, ports, strict=False))
    assert set(params) - {"dashboard-host", "num-cpus"} <= set(pinned), params
    params.update({k: str(v) for k, v in pinned.items()})
    params["num-cpus"] = "1"  # the manifest's head takes no hosts; this one is alone
    workers = ports[len(PORT_PARAMS):]
    args = [str(RAY), "start", "--head", "--block", "--temp-dir", str(root / "t"),
            "--disable-usage-stats", f"--worker-port-list={','.join(map(str, workers))}",
            *(f"--{k}={v}" for k, v in params.items())]
    log = root / "head.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}
    env.update(HOME=str(root / "home"), RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN_PATH=str(token_file))
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        poll(lambda: proc.poll() is not None
             or "Ray runtime started" in log.read_text(errors="replace"),
             60, 0.2, what="the Ray head")
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        yield TokenHead(root, f"127.0.0.1:{pinned['port']}", token_file, proc,
                        set(pinned.values()) | set(workers))
    finally:
        kill_tree(proc, root)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Run:
    proc: subprocess.Popen[str]
    out: list[str]

    def text(self) -> str:
        return "".join(self.out)


def start_run(head: TokenHead, tmp_path: Path, env: dict[str, str]) -> Run:
    city = tmp_path / "city.toml"
    city.write_text(generate_demo(scale=0.01, seed=1), encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "run", "--inventory", str(city),
         "--ray-address", head.address, "--admin", "127.0.0.1:0",
         "--credentials-file", str(tmp_path / "credentials.json")],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = Run(proc, [])
    assert proc.stdout is not None
    stream = proc.stdout
    threading.Thread(target=lambda: run.out.extend(iter(stream.readline, "")),
                     daemon=True).start()
    return run


def listening(procs: list[psutil.Process]) -> set[int]:
    """The TCP ports ``procs`` listen on beyond loopback."""
    ports = set()
    for p in procs:
        try:
            conns = p.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        ports |= {c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN
                  and not c.laddr.ip.startswith("127.") and c.laddr.ip != "::1"}
    return ports


def test_run_with_the_token_joins_the_cluster_on_the_pinned_ports(
        head: TokenHead, tmp_path: Path) -> None:
    run = start_run(head, tmp_path, head.env(RAY_AUTH_MODE="token",
                                             RAY_AUTH_TOKEN_PATH=str(head.token_file)))
    try:
        poll(lambda: run.proc.poll() is not None or "entities on" in run.text(), 120, 0.2,
             what="the service started")
        assert run.proc.poll() is None, run.text()[-3000:]
        ray_side = psutil.Process(head.proc.pid)
        ports = listening([ray_side, *ray_side.children(recursive=True),
                           psutil.Process(run.proc.pid)])
        assert ports, "nothing listens beyond loopback"
        assert ports <= head.pinned, sorted(ports - head.pinned)
    finally:
        if run.proc.poll() is None:
            run.proc.send_signal(signal.SIGTERM)
        rc = run.proc.wait(timeout=90)
    assert rc == 0, run.text()[-3000:]
    assert "stopped in" in run.text()


@pytest.mark.parametrize("token_env,why", [
    ({}, "this process sent no token: set RAY_AUTH_MODE=token"),
    ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-cluster-token-0123456789"},
     "the token in RAY_AUTH_TOKEN is not the cluster's"),
    ({"RAY_AUTH_TOKEN_PATH": "<token file>"}, "RAY_AUTH_MODE is not set"),
])
def test_run_without_the_clusters_token_is_refused_and_says_why(
        head: TokenHead, tmp_path: Path, token_env: dict[str, str], why: str) -> None:
    token_env = {k: str(head.token_file) if v == "<token file>" else v
                 for k, v in token_env.items()}
    # Two connection attempts instead of Ray's 20, a second apart.
    run = start_run(head, tmp_path, head.env(RAY_gcs_server_port_wait_time_s="2",
                                             **token_env))
    rc = run.proc.wait(timeout=90)
    out = run.text()
    assert rc == 1, out[-3000:]
    assert why in out and head.address in out, out[-3000:]
    assert "entities on" not in out
    token = head.token_file.read_text(encoding="utf-8").strip()
    assert token not in out and "not-the-cluster-token" not in out
