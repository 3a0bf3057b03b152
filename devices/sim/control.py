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
    control.pace(288)                                 # crews drive and work 288x faster

Requests and answers are JSON:

================================  =================================================
``GET  /counters[?ids=a,b]``      ``{"ts", "held", "loss_rate", "devices": {id: counters}}``
``POST /hold``                    ``{"on": bool, "protocols"?: [...]}``: no new samples while held
``POST /offline``                 ``{"ids": [...], "on": bool}``
``POST /fault``                   ``{"id", "name", "on": bool}`` (names per kind below)
``POST /storm``                   ``{"ids": [...], "seconds": s}``: silent together, then back
``POST /loss``                    ``{"rate": 0..1}``: MQTT telemetry dropped after it was counted
``POST /pace``                    ``{"speedup": >= 1}``: service-vehicle crews drive and work faster
``GET  /values/{id}``             the values the device holds (what writes changed); a
                                  lighting cabinet adds ``sim`` (its own power integral)
``GET  /priority_log[?id=&since=]``  ``{"records": [...]}``: signal priority writes received
                                  by traffic controllers (one device's, or all), those
                                  received after wall-clock time ``since``, oldest first
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
  when nothing else changed it in between);
* ``priority`` (traffic controllers only): what became of the signal priority
  requests it received (:class:`PriorityCounters`).

A priority record (:meth:`SimControl.priority_log`) is ``{"device", "request_id",
"command" ("request", "checkout" or "cancel"), "approach", "ts", "duplicate"}``:
``ts`` is the wall-clock time (``time.time()``) the controller received the
write, taken as the Modbus request was decoded, before the controller acted on
it; ``duplicate`` marks a request naming an id the controller holds or has
finished with. Each controller keeps its last :data:`PRIORITY_LOG_SIZE` records.

Fault names: ``offline`` (any device), ``fire`` and ``intrusion`` (``bms``,
zone 1), ``door_forced`` (``bms``), ``mains`` and ``door`` (``lighting_cabinet``),
``lamp`` (``lighting_cabinet``: lamp 1 failed), ``counter_reset`` and
``counter_wrap`` (``lighting_cabinet``: energy counters to 0, or just short of 2^32),
``controller`` (``traffic_controller`` fault bits), ``controller`` and ``forced``
(``access_terminal``: a controller fault, a forced passage), ``tamper`` (``camera``: one
tamper event), ``out_of_service`` (``service_vehicle``: the crew reports itself out of
service while on).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
import math
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Protocol, runtime_checkable
from urllib.parse import parse_qs, urlencode, urlsplit

from runtime.errors import ConfigError, DeviceUnavailableError, RejectedError

__all__ = [
    "PRIORITY_LOG_SIZE",
    "ControlServer",
    "ControlTarget",
    "DeviceCounters",
    "PriorityCounters",
    "RemoteTarget",
    "SimControl",
]

log = logging.getLogger("commandpost.sim.control")

_MAX_BODY: Final = 1 << 20
#: Priority records a traffic controller keeps (the oldest go first).
PRIORITY_LOG_SIZE: Final = 4096


@dataclass(slots=True)
class PriorityCounters:
    """What became of the signal priority writes one traffic controller received.

    ``received``: requests (a re-sent id included); ``duplicates``: requests naming
    an id it held (an update) or had finished with (refused); ``checkouts``,
    ``cancels``: those received; ``granted``: requests it began to serve;
    ``refused``: per reason; ``served``, ``expired`` (dropped at their deadline by
    the controller itself), ``cleared`` (by a checkout or cancel) and ``dropped``
    (by the controller: it left ``auto``, or the plan lost the phase).
    """

    received: int = 0
    duplicates: int = 0
    checkouts: int = 0
    cancels: int = 0
    granted: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    served: int = 0
    expired: int = 0
    cleared: int = 0
    dropped: int = 0

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1


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
    refused: int = 0  # write requests the device answered with an exception
    priority: PriorityCounters | None = None  # a traffic controller's

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
        out = asdict(self)
        if out["priority"] is None:
            del out["priority"]
        return out


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

    # A simulator may also offer ``priority_log(device_id, since)`` (traffic controllers),
    # ``set_loss_rate(rate)`` and ``set_pace(speedup)``; the channel asks for them by name.


class _Target(abc.ABC):
    """A simulator as the server drives it: in this process, or another runner's channel."""

    protocol: str = ""
    ids: frozenset[str] = frozenset()

    async def open(self) -> None:
        """Learn which devices this target runs (a local one knows from the start)."""
        return None

    @abc.abstractmethod
    async def counters(self) -> dict[str, dict[str, Any]]: ...

    @abc.abstractmethod
    async def hold(self, on: bool) -> None: ...

    @abc.abstractmethod
    async def set_offline(self, ids: Sequence[str], on: bool) -> None: ...

    @abc.abstractmethod
    async def fault(self, device_id: str, name: str, on: bool) -> None: ...

    @abc.abstractmethod
    async def held_values(self, device_id: str) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def loss(self, rate: float) -> None: ...

    @abc.abstractmethod
    async def pace(self, speedup: float) -> None: ...

    @abc.abstractmethod
    async def priority_log(self, device_id: str | None, since: float) -> list[dict[str, Any]]:
        ...


class _Local(_Target):
    def __init__(self, sim: ControlTarget) -> None:
        self.sim = sim
        self.protocol = sim.protocol
        self.ids = frozenset(sim.device_counters())

    async def counters(self) -> dict[str, dict[str, Any]]:
        return {did: c.to_json() for did, c in self.sim.device_counters().items()}

    async def hold(self, on: bool) -> None:
        self.sim.hold(on)

    async def set_offline(self, ids: Sequence[str], on: bool) -> None:
        for did in ids:
            await self.sim.set_offline(did, on)

    async def fault(self, device_id: str, name: str, on: bool) -> None:
        await self.sim.fault(device_id, name, on)

    async def held_values(self, device_id: str) -> dict[str, Any]:
        return self.sim.held_values(device_id)

    async def loss(self, rate: float) -> None:
        setter = getattr(self.sim, "set_loss_rate", None)
        if setter is not None:
            setter(rate)

    async def pace(self, speedup: float) -> None:
        setter = getattr(self.sim, "set_pace", None)
        if setter is not None:
            setter(speedup)

    async def priority_log(self, device_id: str | None, since: float) -> list[dict[str, Any]]:
        query = getattr(self.sim, "priority_log", None)
        if query is None:
            return []
        out: list[dict[str, Any]] = query(device_id, since)
        return out


class RemoteTarget(_Target):
    """The simulators behind another runner's control channel (a child process)."""

    def __init__(self, url: str, protocol: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ConfigError(f"a remote control channel is http://HOST:PORT, not {url!r}")
        self._address = (parts.hostname, parts.port)
        self.protocol = protocol

    async def open(self) -> None:
        self.ids = frozenset(await self.counters())

    async def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        data = json.dumps(dict(body)).encode("utf-8") if body is not None else b""
        try:
            reader, writer = await asyncio.open_connection(*self._address)
        except OSError as exc:
            raise DeviceUnavailableError(f"simulator control {self._address}: {exc}") from exc
        try:
            writer.write(f"{method} {path} HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n"
                         f"Content-Length: {len(data)}\r\n\r\n".encode("ascii") + data)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            answer = json.loads(await reader.readexactly(length)) if length else None
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            raise DeviceUnavailableError(f"simulator control {self._address}: {exc}") from exc
        finally:
            writer.close()
        status = int(status_line.split()[1]) if status_line else 0
        if status == 404:
            raise KeyError((answer or {}).get("error", path))
        if status != 200:
            raise RejectedError(str((answer or {}).get("error", status)), code="sim_control")
        return answer

    async def counters(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = (await self._call("GET", "/counters"))["devices"]
        return out

    async def hold(self, on: bool) -> None:
        await self._call("POST", "/hold", {"on": on})

    async def set_offline(self, ids: Sequence[str], on: bool) -> None:
        await self._call("POST", "/offline", {"ids": list(ids), "on": on})

    async def fault(self, device_id: str, name: str, on: bool) -> None:
        await self._call("POST", "/fault", {"id": device_id, "name": name, "on": on})

    async def held_values(self, device_id: str) -> dict[str, Any]:
        out: dict[str, Any] = await self._call("GET", f"/values/{device_id}")
        return out

    async def loss(self, rate: float) -> None:
        await self._call("POST", "/loss", {"rate": rate})

    async def pace(self, speedup: float) -> None:
        await self._call("POST", "/pace", {"speedup": speedup})

    async def priority_log(self, device_id: str | None, since: float) -> list[dict[str, Any]]:
        answer = await self._call("GET", _priority_path(device_id, since))
        out: list[dict[str, Any]] = answer["records"]
        return out


def _priority_path(device_id: str | None, since: float) -> str:
    query = {"since": repr(float(since))}
    if device_id is not None:
        query["id"] = device_id
    return "/priority_log?" + urlencode(query)


class ControlServer:
    """Serves the control channel for a set of simulators on ``host:port``.

    ``targets`` are simulators of this process (:class:`ControlTarget`) or
    :class:`RemoteTarget` channels of runners started as children; a request
    reaches whichever runs the device it names.
    """

    def __init__(self, targets: Sequence[ControlTarget | RemoteTarget],
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self._targets: list[_Target] = [
            t if isinstance(t, RemoteTarget) else _Local(t) for t in targets]
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
            ("POST", "/pace"): self._pace,
            ("GET", "/priority_log"): self._priority_log,
        }

    @property
    def url(self) -> str:
        if self._server is None:
            raise ConfigError("the control channel is not started")
        port = self._server.sockets[0].getsockname()[1]
        return f"http://{self._host}:{port}"

    async def start(self) -> None:
        for target in self._targets:
            await target.open()
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
    def _owner(self, device_id: str) -> _Target:
        for target in self._targets:
            if device_id in target.ids:
                return target
        raise KeyError(device_id)

    def _by_owner(self, ids: Sequence[str]) -> list[tuple[_Target, list[str]]]:
        groups: dict[int, tuple[_Target, list[str]]] = {}
        for did in ids:
            owner = self._owner(did)
            groups.setdefault(id(owner), (owner, []))[1].append(did)
        return list(groups.values())

    async def _counters(self, body: dict[str, Any], query: dict[str, list[str]]) -> Any:
        wanted: set[str] | None = None
        if query.get("ids"):
            wanted = {i for chunk in query["ids"] for i in chunk.split(",") if i}
        devices: dict[str, Any] = {}
        for target in self._targets:
            if wanted is not None and not wanted & target.ids:
                continue
            for did, c in (await target.counters()).items():
                if wanted is None or did in wanted:
                    devices[did] = c
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
                await target.hold(on)
        self._held = on if protocols is None else self._held
        return {"held": on, "protocols": protocols}

    async def _offline(self, body: dict[str, Any], query: dict[str, list[str]]) -> Any:
        ids = _ids(body)
        on = bool(body.get("on", True))
        for owner, group in self._by_owner(ids):
            await owner.set_offline(group, on)
        return {"offline": on, "devices": len(ids)}

    async def _fault(self, body: dict[str, Any], query: dict[str, list[str]]) -> Any:
        did = body.get("id")
        name = body.get("name")
        if not isinstance(did, str) or not isinstance(name, str):
            raise ValueError("fault needs 'id' and 'name' strings")
        on = bool(body.get("on", True))
        if name == "offline":
            await self._owner(did).set_offline([did], on)
        else:
            await self._owner(did).fault(did, name, on)
        return {"id": did, "fault": name, "on": on}

    async def _storm(self, body: dict[str, Any], query: dict[str, list[str]]) -> Any:
        ids = _ids(body)
        seconds = body.get("seconds")
        if not isinstance(seconds, int | float) or not 0 < seconds <= 3600:
            raise ValueError("storm needs 'seconds' in (0, 3600]")
        groups = self._by_owner(ids)
        for owner, group in groups:
            await owner.set_offline(group, True)

        async def end() -> None:
            await asyncio.sleep(float(seconds))
            for owner, group in groups:
                await owner.set_offline(group, False)

        task = asyncio.create_task(end(), name="sim-control.storm")
        self._storms.add(task)
        task.add_done_callback(self._storms.discard)
        return {"devices": len(ids), "seconds": seconds}

    async def _loss(self, body: dict[str, Any], query: dict[str, list[str]]) -> Any:
        rate = body.get("rate")
        if not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
            raise ValueError("loss needs 'rate' in [0, 1]")
        for target in self._targets:
            await target.loss(float(rate))
        self._loss_rate = float(rate)
        return {"loss_rate": self._loss_rate}

    async def _pace(self, body: dict[str, Any], query: dict[str, list[str]]) -> Any:
        speedup = body.get("speedup")
        if (isinstance(speedup, bool) or not isinstance(speedup, int | float)
                or not 1.0 <= speedup <= 100_000.0):
            raise ValueError("pace needs 'speedup' in [1, 100000]")
        for target in self._targets:
            await target.pace(float(speedup))
        return {"speedup": float(speedup)}

    async def _priority_log(self, body: dict[str, Any], query: dict[str, list[str]]) -> Any:
        since = float(query.get("since", ["0"])[-1])
        if not math.isfinite(since):
            raise ValueError("'since' must be a finite time")
        device_id = query["id"][-1] if query.get("id") else None
        if device_id is not None:
            return {"records": await self._owner(device_id).priority_log(device_id, since)}
        records: list[dict[str, Any]] = []
        for target in self._targets:
            records.extend(await target.priority_log(None, since))
        records.sort(key=lambda r: float(r.get("ts", 0.0)))
        return {"records": records}

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
                return 200, await self._owner(did).held_values(did)
            route = self._routes.get((method, parts.path))
            if route is None:
                return 404, {"error": f"no route {method} {parts.path}"}
            return 200, await route(body, query)
        except KeyError as exc:
            return 404, {"error": f"no simulated device {exc.args[0]!r}"}
        except (ValueError, RejectedError, ConfigError) as exc:
            return 422, {"error": str(exc)}
        except DeviceUnavailableError as exc:
            return 503, {"error": str(exc)}


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

    def pace(self, speedup: float) -> None:
        self._call("POST", "/pace", {"speedup": speedup})

    def values(self, device_id: str) -> dict[str, Any]:
        out: dict[str, Any] = self._call("GET", f"/values/{device_id}")
        return out

    def priority_log(self, device_id: str | None = None,
                     since: float = 0.0) -> list[dict[str, Any]]:
        """Signal priority writes traffic controllers received after wall-clock ``since``
        (one controller's, or every one's), oldest first (see the module docstring)."""
        out: list[dict[str, Any]] = self._call("GET", _priority_path(device_id, since))["records"]
        return out
