"""The simulators' control channel: counters read and faults injected over local HTTP.

The simulator runner serves it on a loopback port (its ready file names the
URL); benches and tests use :class:`SimControl`::

    control = SimControl("http://127.0.0.1:41234")
    before = control.counters()
    control.fault("bld-dijon-0001", "fire")          # a fire in zone 1
    control.offline(["lc-dijon-0001"])                # off the field
    control.storm(["cam-dijon-0001", "cam-dijon-0002"], seconds=10)
    control.loss(0.01)                                # drop 1 % of MQTT telemetry
    control.hold()                                    # stop emitting samples
    control.hold(False)

Requests and answers are JSON:

================================  =================================================
``GET  /counters[?ids=a,b]``      ``{"ts", "held", "loss_rate", "devices": {id: counters}}``
``POST /hold``                    ``{"on": bool, "protocols"?: [...]}``: no new samples while held
``POST /offline``                 ``{"ids": [...], "on": bool}``
``POST /fault``                   ``{"id", "name", "on": bool}`` (names per kind below)
``POST /storm``                   ``{"ids": [...], "seconds": s}``: silent together, then back
``POST /loss``                    ``{"rate": 0..1}``: MQTT telemetry dropped after it was counted
``GET  /values/{id}``             the values the device holds (what writes changed)
================================  =================================================

Per device, ``counters`` are:

* ``protocol``, ``profile``;
* ``emitted``: samples the device emitted, each numbered by its ``seq``
  (consecutive: ``last_seq - first_seq + 1 == emitted`` while nothing wrapped);
  a Modbus device emits one sample per read it answers, an MQTT device one per
  telemetry message it sends, an OPC UA building one per tick;
* ``first_seq``, ``last_seq``: the sequence numbers of the first and last one;
* ``points``: the values those samples carried (``seq`` and ``ts`` are not values);
* ``dropped``: samples counted as emitted, then dropped by the injected loss rate;
* ``late``: samples an MQTT device skipped because its publisher fell behind;
* ``writes``: write requests or command messages received;
* ``actuations``: those of them that changed a value the device holds;
* ``repeats``: writes of a value the device already held (a double actuation
  when nothing else changed it in between).

Fault names: ``offline`` (any device), ``fire`` and ``intrusion`` (``bms``,
zone 1), ``door_forced`` (``bms``), ``mains`` and ``door`` (``lighting_cabinet``),
``lamp`` (``lighting_cabinet``: lamp 1 failed), ``controller`` (``traffic_controller``
fault bits), ``tamper`` (``camera``: one tamper event).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final, Protocol, runtime_checkable
from urllib.parse import parse_qs, urlsplit

from runtime.errors import ConfigError, DeviceUnavailableError, RejectedError

__all__ = [
    "ControlServer",
    "ControlTarget",
    "DeviceCounters",
    "SimControl",
]

log = logging.getLogger("commandpost.sim.control")

_MAX_BODY: Final = 1 << 20


@dataclass(slots=True)
class DeviceCounters:
    """What one simulated device did (see the module docstring)."""

    protocol: str
    profile: str
    emitted: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    points: int = 0
    dropped: int = 0
    late: int = 0
    writes: int = 0
    actuations: int = 0
    repeats: int = 0

    def sample(self, seq: int, points: int) -> None:
        """Count one emitted sample numbered ``seq`` carrying ``points`` values."""
        self.emitted += 1
        if self.first_seq is None:
            self.first_seq = seq
        self.last_seq = seq
        self.points += points

    def write(self, changed: bool) -> None:
        """Count one write of a value: an actuation when it changed what the device held."""
        self.writes += 1
        if changed:
            self.actuations += 1
        else:
            self.repeats += 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class ControlTarget(Protocol):
    """One simulator as the control channel sees it."""

    @property
    def protocol(self) -> str:
        """``modbus``, ``opcua`` or ``mqtt``."""

    def device_counters(self) -> Mapping[str, DeviceCounters]:
        """Counters of every device this simulator runs."""

    def hold(self, on: bool) -> None:
        """Stop (or resume) emitting samples."""

    async def set_offline(self, device_id: str, on: bool) -> None:
        """Take a device off the field (or bring it back)."""

    async def fault(self, device_id: str, name: str, on: bool) -> None:
        """Raise (or clear) a named fault; :class:`RejectedError` when the kind has none."""

    def held_values(self, device_id: str) -> dict[str, Any]:
        """The values a device holds."""


class ControlServer:
    """Serves the control channel for a set of simulators on ``host:port``."""

    def __init__(self, targets: Sequence[ControlTarget], host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self._targets = list(targets)
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._held = False
        self._loss_rate = 0.0
        self._storms: set[asyncio.Task[None]] = set()
        self._routes: dict[tuple[str, str], Callable[[dict[str, Any], dict[str, list[str]]],
                                                     Awaitable[Any]]] = {
            ("GET", "/counters"): self._counters,
            ("POST", "/hold"): self._hold,
            ("POST", "/offline"): self._offline,
            ("POST", "/fault"): self._fault,
            ("POST", "/storm"): self._storm,
            ("POST", "/loss"): self._loss,
        }

    @property
    def url(self) -> str:
        if self._server is None:
            raise ConfigError("the control channel is not started")
        port = self._server.sockets[0].getsockname()[1]
        return f"http://{self._host}:{port}"

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._handle, self._host, self._port)
        except OSError as exc:
            raise ConfigError(f"control channel cannot listen on {self._host}:{self._port}: "
                              f"{exc}") from exc

    async def stop(self) -> None:
        for task in list(self._storms):
            task.cancel()
        for task in list(self._storms):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    # -- routing ----------------------------------------------------------
    def _owner(self, device_id: str) -> ControlTarget:
        for target in self._targets:
            if device_id in target.device_counters():
                return target
        raise KeyError(device_id)

    async def _counters(self, body: dict[str, Any], query: dict[str, list[str]]) -> Any:
        wanted: set[str] | None = None
        if query.get("ids"):
            wanted = {i for chunk in query["ids"] for i in chunk.split(",") if i}
        devices: dict[str, Any] = {}
        for target in self._targets:
            for did, c in target.device_counters().items():
                if wanted is None or did in wanted:
                    devices[did] = c.to_json()
        return {"ts": asyncio.get_running_loop().time(), "held": self._held,
                "loss_rate": self._loss_rate, "devices": devices}

    async def _hold(self, body: dict[str, Any], query: dict[str, list[str]]) -> Any:
        on = bool(body.get("on", True))
        protocols = body.get("protocols")
        if protocols is not None and (not isinstance(protocols, list) or not all(
                p in ("modbus", "opcua", "mqtt") for p in protocols)):
            raise ValueError("'protocols' must be a list of modbus, opcua, mqtt")
        for target in self._targets:
            if protocols is None or target.protocol in protocols:
                target.hold(on)
        self._held = on if protocols is None else self._held
        return {"held": on, "protocols": protocols}

    async def _offline(self, body: dict[str, Any], query: dict[str, list[str]]) -> Any:
        ids = _ids(body)
        on = bool(body.get("on", True))
        for did in ids:
            await self._owner(did).set_offline(did, on)
        return {"offline": on, "devices": len(ids)}

    async def _fault(self, body: dict[str, Any], query: dict[str, list[str]]) -> Any:
        did = body.get("id")
        name = body.get("name")
        if not isinstance(did, str) or not isinstance(name, str):
            raise ValueError("fault needs 'id' and 'name' strings")
        on = bool(body.get("on", True))
        if name == "offline":
            await self._owner(did).set_offline(did, on)
        else:
            await self._owner(did).fault(did, name, on)
        return {"id": did, "fault": name, "on": on}

    async def _storm(self, body: dict[str, Any], query: dict[str, list[str]]) -> Any:
        ids = _ids(body)
        seconds = body.get("seconds")
        if not isinstance(seconds, int | float) or not 0 < seconds <= 3600:
            raise ValueError("storm needs 'seconds' in (0, 3600]")
        owners = [(did, self._owner(did)) for did in ids]
        for did, owner in owners:
            await owner.set_offline(did, True)

        async def end() -> None:
            await asyncio.sleep(float(seconds))
            for did, owner in owners:
                await owner.set_offline(did, False)

        task = asyncio.create_task(end(), name="sim-control.storm")
        self._storms.add(task)
        task.add_done_callback(self._storms.discard)
        return {"devices": len(ids), "seconds": seconds}

    async def _loss(self, body: dict[str, Any], query: dict[str, list[str]]) -> Any:
        rate = body.get("rate")
        if not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
            raise ValueError("loss needs 'rate' in [0, 1]")
        for target in self._targets:
            setter = getattr(target, "set_loss_rate", None)
            if setter is not None:
                setter(float(rate))
        self._loss_rate = float(rate)
        return {"loss_rate": self._loss_rate}

    # -- HTTP ---------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                method, target, body = request
                status, answer = await self._dispatch(method, target, body)
                data = json.dumps(answer).encode("utf-8")
                writer.write(
                    f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                    "\r\n".encode("ascii") + data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _dispatch(self, method: str, target: str, raw: bytes) -> tuple[int, Any]:
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        try:
            body = json.loads(raw) if raw else {}
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            if method == "GET" and parts.path.startswith("/values/"):
                did = parts.path[len("/values/"):]
                return 200, self._owner(did).held_values(did)
            route = self._routes.get((method, parts.path))
            if route is None:
                return 404, {"error": f"no route {method} {parts.path}"}
            return 200, await route(body, query)
        except KeyError as exc:
            return 404, {"error": f"no simulated device {exc.args[0]!r}"}
        except (ValueError, RejectedError, ConfigError) as exc:
            return 422, {"error": str(exc)}


def _ids(body: Mapping[str, Any]) -> list[str]:
    ids = body.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError("'ids' must be a list of device ids")
    return list(ids)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes] | None:
    line = await reader.readline()
    if not line:
        return None
    try:
        method, target, _ = line.decode("ascii").split(" ", 2)
    except ValueError as exc:
        raise ValueError("bad request line") from exc
    length = 0
    while True:
        header = await reader.readline()
        if header in (b"\r\n", b"\n", b""):
            break
        name, _, value = header.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if not 0 <= length <= _MAX_BODY:
        raise ValueError("body too large")
    body = await reader.readexactly(length) if length else b""
    return method, target, body


class SimControl:
    """A client of the control channel (blocking; for benches and tests)."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        if not url.startswith("http://"):
            raise ConfigError(f"the simulators' control URL must be http://…, not {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        data = json.dumps(dict(body)).encode("utf-8") if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("error", "")
            except (ValueError, AttributeError):
                detail = ""
            if exc.code == 404:
                raise KeyError(detail or path) from exc
            raise RejectedError(f"simulator control {path}: {detail or exc}",
                                code="sim_control") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise DeviceUnavailableError(f"simulator control unreachable: {exc}") from exc

    def counters(self, ids: Sequence[str] | None = None) -> dict[str, Any]:
        path = "/counters" + (f"?ids={','.join(ids)}" if ids else "")
        out: dict[str, Any] = self._call("GET", path)
        return out

    def hold(self, on: bool = True, protocols: Sequence[str] | None = None) -> None:
        body: dict[str, Any] = {"on": on}
        if protocols is not None:
            body["protocols"] = list(protocols)
        self._call("POST", "/hold", body)

    def offline(self, ids: Sequence[str], on: bool = True) -> None:
        self._call("POST", "/offline", {"ids": list(ids), "on": on})

    def fault(self, device_id: str, name: str, on: bool = True) -> None:
        self._call("POST", "/fault", {"id": device_id, "name": name, "on": on})

    def storm(self, ids: Sequence[str], seconds: float) -> None:
        self._call("POST", "/storm", {"ids": list(ids), "seconds": seconds})

    def loss(self, rate: float) -> None:
        self._call("POST", "/loss", {"rate": rate})

    def values(self, device_id: str) -> dict[str, Any]:
        out: dict[str, Any] = self._call("GET", f"/values/{device_id}")
        return out
