"""OPC UA transport: a client session for building entities and a server for the simulator.

This is the only module that imports :mod:`asyncua`; everything it raises comes
from :mod:`runtime.errors`.

Endpoints look like ``opcua://host:port/bld/{id}``: the server listens on
``opc.tcp://host:port/`` and aggregates many buildings (one asyncua server costs
about 1.2 s and 40 MB, so the simulator runs a few of them, not one per
building). The path names the building inside that server. Every
:class:`OpcUaSession` for the same ``host:port`` (and security settings) in one
event loop shares one TCP connection, counted by references.

Reconnection is asyncua's own supervisor (``auto_reconnect``): after a loss it
retries with exponential backoff up to ``reconnect_max_s`` and re-creates the
live subscriptions, so data-change and event callbacks resume by themselves.
A re-creation the connection interrupts again leaves asyncua's subscription
without its monitored items (it forgets them before asking the server); each
connection watches for re-created subscriptions and builds any that came back
empty anew, retrying with the same backoff until the server answers.
While it is reconnecting every request fails with
:class:`~runtime.errors.DeviceUnavailableError` after at most ``timeout_s``.
Only the first :meth:`OpcUaSession.connect` is the caller's job: when the
server is down at that moment it raises and the caller calls it again later.

Node values carry a quality derived from their StatusCode: ``good``,
``uncertain`` or ``bad``. Buildings going offline are modelled by the server as
a bad StatusCode on their nodes, not as a lost connection.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeNotif, Subscription
from asyncua.crypto import security_policies
from asyncua.observer import Observer, SubscriptionEvent
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from asyncua.ua.uatypes import DateTime, Int16, String, UInt32

from devices.profile import FieldSpec, Profile
from runtime.errors import (
    CommandpostError,
    ConfigError,
    DeviceUnavailableError,
    ProtocolError,
    RejectedError,
)

__all__ = [
    "NAMESPACE_URI",
    "EventCallback",
    "NodeRef",
    "OpcUaServer",
    "OpcUaSession",
    "SecurityConfig",
    "SubscriptionHandle",
    "ValueCallback",
    "parse_endpoint",
    "profile_nodes",
    "quality_of",
]

_log = logging.getLogger(__name__)

#: The namespace of every building node; the server guarantees it gets index 2,
#: which is what the profiles' ``ns=2;s=…`` templates assume.
NAMESPACE_URI = "urn:commandpost:bms"
NAMESPACE_INDEX = 2
#: Browse name of the event type every building event is raised with.
EVENT_TYPE_NAME = "BuildingEventType"

SECURITY_MODES = ("None", "Sign", "SignAndEncrypt")
SECURITY_POLICIES = ("Basic256Sha256",)

#: Profile field type -> OPC UA variant type.
VARIANT_TYPES: Mapping[str, ua.VariantType] = {
    "bool": ua.VariantType.Boolean,
    "i32": ua.VariantType.Int32,
    "u32": ua.VariantType.UInt32,
    "float": ua.VariantType.Double,
    "str": ua.VariantType.String,
}

#: StatusCodes meaning "the request was understood and refused".
_REJECT_CODES = frozenset({
    "BadNodeIdUnknown",
    "BadNodeIdInvalid",
    "BadTypeMismatch",
    "BadNotWritable",
    "BadUserAccessDenied",
    "BadOutOfRange",
    "BadWriteNotSupported",
    "BadAttributeIdInvalid",
    "BadIndexRangeInvalid",
})

#: StatusCodes meaning "the server or its link is not there right now".
_UNAVAILABLE_CODES = frozenset({
    "BadCommunicationError",
    "BadConnectionClosed",
    "BadDisconnect",
    "BadNotConnected",
    "BadSecureChannelClosed",
    "BadServerHalted",
    "BadServerNotConnected",
    "BadSessionClosed",
    "BadSessionIdInvalid",
    "BadShutdown",
    "BadTimeout",
    "BadTooManySessions",
})

ValueCallback = Callable[[str, Any, str, float], Awaitable[None] | None]
"""``callback(node_id, value, quality, source_ts)`` for data changes."""

EventCallback = Callable[[str, str, dict[str, Any]], Awaitable[None] | None]
"""``callback(building_id, event_name, fields)`` for building events."""


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """Message security of a connection.

    ``mode`` ``"None"`` is for the demo and tests; production uses ``Sign`` or
    ``SignAndEncrypt`` with the client's certificate and key (PEM or DER paths)
    and, optionally, the server certificate to pin (fetched from the server's
    endpoints when ``None``).
    """

    mode: str = "None"
    policy: str = "Basic256Sha256"
    certificate: str | None = None
    private_key: str | None = None
    server_certificate: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in SECURITY_MODES:
            raise ConfigError(f"opcua security: mode {self.mode!r} not in {SECURITY_MODES}")
        if self.policy not in SECURITY_POLICIES:
            raise ConfigError(f"opcua security: policy {self.policy!r} not in {SECURITY_POLICIES}")
        if self.mode == "None":
            return
        for name in ("certificate", "private_key"):
            path = getattr(self, name)
            if not isinstance(path, str) or not path:
                raise ConfigError(f"opcua security: mode {self.mode} needs a {name} path")
        for name in ("certificate", "private_key", "server_certificate"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ConfigError(f"opcua security: {name} {path!r} is not a readable file")


def parse_endpoint(endpoint: str) -> tuple[str, int, str]:
    """Split ``opcua://host:port/bld/{id}`` into ``(host, port, building_id)``.

    Raises :class:`ConfigError` for any other shape.
    """
    if not isinstance(endpoint, str):
        raise ConfigError(f"opcua endpoint {endpoint!r} is not a string")
    parts = urlsplit(endpoint)
    if parts.scheme != "opcua":
        raise ConfigError(f"opcua endpoint {endpoint!r}: scheme must be opcua://")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"opcua endpoint {endpoint!r}: bad port") from exc
    if not parts.hostname or port is None or not 1 <= port <= 65535:
        raise ConfigError(f"opcua endpoint {endpoint!r}: needs host:port")
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) != 2 or segments[0] != "bld":
        raise ConfigError(f"opcua endpoint {endpoint!r}: path must be /bld/<building id>")
    if parts.query or parts.fragment:
        raise ConfigError(f"opcua endpoint {endpoint!r}: no query or fragment allowed")
    return parts.hostname, port, segments[1]


@dataclass(frozen=True, slots=True)
class NodeRef:
    """One node of a building as the profile describes it.

    ``key`` is ``name`` for a top-level field and ``block.n.name`` (``n`` from 1)
    for a field of a block repeat, e.g. ``door.3.locked``.
    """

    key: str
    node_id: str
    spec: FieldSpec
    block: str | None = None
    index: int | None = None


def profile_nodes(profile: Profile, device: str, attrs: Mapping[str, Any]) -> tuple[NodeRef, ...]:
    """Every node of ``device`` under ``profile``, fields first, then block repeats.

    Raises :class:`ConfigError` when the profile is not an OPC UA one or a field
    has no node template.
    """
    if profile.protocol != "opcua":
        raise ConfigError(f"profile {profile.name!r} is {profile.protocol}, not opcua")

    def node_id(spec: FieldSpec, n: int | None) -> str:
        if not spec.node:
            raise ConfigError(f"profile {profile.name!r}: field {spec.name!r} has no node")
        text = spec.node.replace("{device}", device)
        if n is not None:
            text = text.replace("{n}", str(n))
        return text

    out = [NodeRef(f.name, node_id(f, None), f) for f in profile.fields]
    for block in profile.blocks:
        for n in range(1, profile.count(block.name, attrs) + 1):
            for f in block.fields:
                out.append(NodeRef(f"{block.name}.{n}.{f.name}", node_id(f, n), f, block.name, n))
    return tuple(out)


def quality_of(status: ua.StatusCode | None) -> str:
    """``good``, ``uncertain`` or ``bad`` for an OPC UA StatusCode (``None`` is good)."""
    if status is None or status.is_good():
        return "good"
    if status.is_uncertain():
        return "uncertain"
    return "bad"


def _parse_node_id(text: str) -> ua.NodeId:
    try:
        return ua.NodeId.from_string(text)
    except (ValueError, UaError, TypeError) as exc:
        raise RejectedError(f"malformed node id {text!r}", code="BadNodeIdInvalid") from exc


def _epoch(dv: ua.DataValue) -> float:
    ts = dv.SourceTimestamp or dv.ServerTimestamp
    if ts is None:
        return datetime.now(UTC).timestamp()
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.timestamp()


def _variant_value(dv: ua.DataValue) -> Any:
    return None if dv.Value is None else dv.Value.Value


def _status(code: int) -> ua.StatusCode:
    return ua.StatusCode(UInt32(code))


def _status_name(code: int) -> str:
    return str(_status(code).name)


def _now() -> DateTime:
    return DateTime.fromtimestamp(datetime.now(UTC).timestamp(), UTC)


def _mapped(exc: BaseException, what: str) -> CommandpostError:
    """The error-tree exception for an asyncua/transport failure."""
    if isinstance(exc, CommandpostError):
        return exc
    if isinstance(exc, ConnectionError | OSError | TimeoutError):
        return DeviceUnavailableError(f"{what}: {exc!r}")
    if isinstance(exc, UaStatusCodeError):
        name = _status_name(exc.code)
        if name in _REJECT_CODES:
            return RejectedError(f"{what}: {name}", code=name)
        if name in _UNAVAILABLE_CODES:
            return DeviceUnavailableError(f"{what}: {name}")
        return ProtocolError(f"{what}: {name}")
    return ProtocolError(f"{what}: {exc!r}")


def _coerce(value: Any, type_: str) -> Any:
    """Check ``value`` against a profile type before it goes on the wire."""
    if type_ not in VARIANT_TYPES:
        raise ConfigError(f"opcua: field type {type_!r} not in {tuple(VARIANT_TYPES)}")
    if type_ == "bool":
        ok = isinstance(value, bool)
    elif type_ == "i32":
        ok = isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31
    elif type_ == "u32":
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32
    elif type_ == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise RejectedError(f"value {value!r} is not a valid {type_}", code="bad_value")
    return value


async def _invoke(callback: Callable[..., Awaitable[None] | None], *args: Any) -> None:
    """Run a user callback; its failure is logged, never allowed into asyncua's loops."""
    try:
        result = callback(*args)
        if inspect.isawaitable(result):
            await result
    except asyncio.CancelledError:
        raise
    except Exception:
        _log.exception("opcua callback %r failed", callback)


# ---------------------------------------------------------------- client side


class _Connection:
    """One asyncua client shared by every session of one server endpoint."""

    def __init__(self, key: tuple[str, int, SecurityConfig], timeout_s: float,
                 reconnect_max_s: float) -> None:
        host, port, security = key
        self.key = key
        self.url = f"opc.tcp://{host}:{port}/"
        self.security = security
        self.timeout_s = timeout_s
        self.reconnect_max_s = reconnect_max_s
        self.refs = 0
        self.lock = asyncio.Lock()
        self.client: Client | None = None
        self.event_sub: Subscription | None = None
        self.event_interval_s = 0.5
        self.event_handlers: dict[str, list[EventCallback]] = {}
        self.handles: set[SubscriptionHandle] = set()
        self._repair: asyncio.Task[None] | None = None
        self._repair_again = False

    async def open(self) -> None:
        client = Client(self.url, timeout=self.timeout_s)
        client.uaclient.observer = _Watch(self)
        if self.security.mode != "None":
            assert self.security.certificate is not None
            assert self.security.private_key is not None
            try:
                await client.set_security(
                    security_policies.SecurityPolicyBasic256Sha256,
                    certificate=self.security.certificate,
                    private_key=self.security.private_key,
                    server_certificate=self.security.server_certificate,
                    mode=getattr(ua.MessageSecurityMode, self.security.mode),
                )
            except (OSError, UaError) as exc:
                raise _mapped(exc, f"{self.url}: security setup") from exc
            except ValueError as exc:
                raise ConfigError(f"{self.url}: bad certificate or key: {exc}") from exc
        try:
            await asyncio.wait_for(
                client.connect(auto_reconnect=True, reconnect_max_delay=self.reconnect_max_s,
                               reconnect_request_timeout=self.timeout_s),
                timeout=self.timeout_s * 4,
            )
        except asyncio.CancelledError:
            await _disconnect_quietly(client)
            raise
        except Exception as exc:
            await _disconnect_quietly(client)
            raise _mapped(exc, f"{self.url}: connect") from exc
        self.client = client

    async def close(self) -> None:
        client, self.client = self.client, None
        self.event_sub = None
        self.event_handlers.clear()
        self.handles.clear()
        repair, self._repair = self._repair, None
        if repair is not None:
            repair.cancel()
        if client is not None:
            await _disconnect_quietly(client)

    def schedule_repair(self) -> None:
        """Check the subscriptions soon (asyncua re-created one, or reconnected)."""
        if self.client is None:
            return
        if self._repair is not None and not self._repair.done():
            self._repair_again = True
            return
        self._repair = asyncio.get_running_loop().create_task(
            self._repair_loop(), name=f"opcua-repair {self.url}")

    def _event_sub_lost(self) -> bool:
        sub = self.event_sub
        return sub is not None and _lost(sub, 1)

    async def _repair_loop(self) -> None:
        """Build anew every subscription a re-creation left empty, until none is."""
        delay = min(0.5, self.reconnect_max_s)
        while self.client is not None:
            # The re-creation that reported runs on until its next request: let
            # it put its monitored items back before counting them.
            await asyncio.sleep(0)
            self._repair_again = False
            lost = [h for h in self.handles if h.lost]
            event_lost = self._event_sub_lost()
            if not lost and not event_lost:
                if self._repair_again:
                    continue
                return
            try:
                for handle in lost:
                    await handle.rebuild(self)
                if event_lost and self._event_sub_lost():
                    old, self.event_sub = self.event_sub, None
                    async with self.lock:
                        await asyncio.wait_for(
                            self.ensure_event_subscription(self.event_interval_s),
                            timeout=self.timeout_s * 2)
                    if old is not None:
                        await _delete_quietly(old)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _log.info("opcua %s: subscriptions not rebuilt yet (%s); again in %.1f s",
                          self.url, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max_s)
                continue
            _log.warning("opcua %s: rebuilt %d subscription(s) a reconnection left empty",
                         self.url, len(lost) + int(event_lost))

    async def ensure_event_subscription(self, interval_s: float) -> None:
        if self.event_sub is not None:
            return
        self.event_interval_s = interval_s
        client = self.require()
        sub = await client.create_subscription(interval_s * 1000.0, _EventHandler(self))
        try:
            etype = await client.nodes.base_event_type.get_child(
                f"{NAMESPACE_INDEX}:{EVENT_TYPE_NAME}")
            await sub.subscribe_events(client.nodes.server, etype)
        except BaseException:
            await _delete_quietly(sub)
            raise
        self.event_sub = sub

    def require(self) -> Client:
        if self.client is None:
            raise DeviceUnavailableError(f"{self.url}: not connected")
        return self.client


def _lost(sub: Subscription, expected: int) -> bool:
    """True when asyncua's ``sub`` holds fewer monitored items than were created.

    asyncua keeps them in ``Subscription._monitored_items`` and exposes no
    count of its own; a failed re-creation leaves that map empty.
    """
    if sub.subscription_id is None:
        return False  # being re-created right now: its RECREATED event follows
    return len(sub._monitored_items) < expected


class _Watch(Observer):
    """asyncua's observer hook of one connection: re-creations and reconnections."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._state: UaClientState | None = None

    def observe_request(self, request: Any) -> AbstractContextManager[None]:
        return nullcontext()  # no timing of each request: only the two hooks below

    def on_state_change(self, state: UaClientState) -> None:
        before, self._state = self._state, state
        if before is UaClientState.RECONNECTING and state is UaClientState.CONNECTED:
            self._conn.schedule_repair()

    def on_subscription_event(self, subscription_id: int | None,
                              event: SubscriptionEvent) -> None:
        if event is SubscriptionEvent.RECREATED:
            self._conn.schedule_repair()


async def _disconnect_quietly(client: Client) -> None:
    try:
        await client.disconnect()
    except asyncio.CancelledError:
        raise
    except Exception:
        # The peer may already be gone; the local teardown has still happened.
        _log.debug("opcua disconnect failed", exc_info=True)


async def _delete_quietly(sub: Subscription) -> None:
    try:
        await sub.delete()
    except asyncio.CancelledError:
        raise
    except Exception:
        _log.debug("opcua subscription delete failed", exc_info=True)


class _EventHandler:
    """Fans events of the shared event subscription out to the buildings' callbacks."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn

    async def event_notification(self, event: Any) -> None:
        building = getattr(event, "BuildingId", None)
        name = getattr(event, "EventName", None)
        raw = getattr(event, "Fields", None)
        if not isinstance(building, str) or not isinstance(name, str):
            _log.warning("opcua event without BuildingId/EventName from %s", self._conn.url)
            return
        try:
            fields = json.loads(raw) if raw else {}
        except ValueError:
            _log.warning("opcua event %s/%s with malformed fields %r", building, name, raw)
            return
        if not isinstance(fields, dict):
            fields = {"value": fields}
        for callback in list(self._conn.event_handlers.get(building, ())):
            await _invoke(callback, building, name, fields)


class _DataHandler:
    def __init__(self, names: Mapping[ua.NodeId, str], callback: ValueCallback) -> None:
        self._names = names
        self._callback = callback

    async def datachange_notification(self, node: Node, val: Any, data: DataChangeNotif) -> None:
        dv = data.monitored_item.Value
        name = self._names.get(node.nodeid, node.nodeid.to_string())
        await _invoke(self._callback, name, val, quality_of(dv.StatusCode), _epoch(dv))

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        _log.info("opcua subscription status change: %s", status.Status)


#: event loop -> {(host, port, security): connection}; asyncua clients are loop-bound.
_REGISTRY: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, int, SecurityConfig], _Connection]
] = weakref.WeakKeyDictionary()


async def _data_subscription(client: Client, node_ids: Sequence[ua.NodeId],
                             handler: _DataHandler, interval_ms: float, queue_size: int,
                             call: Callable[[str, Awaitable[Any]], Awaitable[Any]],
                             ) -> tuple[Subscription, list[int | ua.StatusCode]]:
    """A subscription delivering ``node_ids`` to ``handler``, and each node's result
    (a monitored item id, or the StatusCode the server refused it with)."""
    sub: Subscription = await call("create subscription",
                                   client.create_subscription(interval_ms, handler))
    try:
        results: list[int | ua.StatusCode] = await call(
            "subscribe", sub.subscribe_data_change([client.get_node(i) for i in node_ids],
                                                   queuesize=queue_size))
    except BaseException:
        await _delete_quietly(sub)
        raise
    return sub, results


class SubscriptionHandle:
    """A live data-change subscription; :meth:`unsubscribe` ends it."""

    def __init__(self, session: OpcUaSession, sub: Subscription, *, node_ids: Sequence[ua.NodeId],
                 handler: _DataHandler, interval_ms: float, queue_size: int) -> None:
        self._session = session
        self._sub: Subscription | None = sub
        self._node_ids = tuple(node_ids)
        self._handler = handler
        self._interval_ms = interval_ms
        self._queue_size = queue_size
        self._conn: _Connection | None = None

    @property
    def active(self) -> bool:
        """True until :meth:`unsubscribe` (or the session's close) ran."""
        return self._sub is not None

    @property
    def lost(self) -> bool:
        """True when a reconnection left the server-side subscription without its items."""
        sub = self._sub
        return sub is not None and _lost(sub, len(self._node_ids))

    def attach(self, conn: _Connection) -> None:
        self._conn = conn
        conn.handles.add(self)

    async def rebuild(self, conn: _Connection) -> None:
        """Create the subscription anew on ``conn`` and drop the empty one."""
        sub, results = await _data_subscription(
            conn.require(), self._node_ids, self._handler, self._interval_ms, self._queue_size,
            lambda _, aw: asyncio.wait_for(aw, conn.timeout_s))
        refused = [(i, r) for i, r in zip(self._node_ids, results, strict=True)
                   if isinstance(r, ua.StatusCode)]
        if refused:
            _log.warning("opcua %s: after reconnecting, the server refuses %s",
                         conn.url, ", ".join(f"{i.to_string()} ({r.name})" for i, r in refused))
            self._node_ids = tuple(i for i, r in zip(self._node_ids, results, strict=True)
                                   if not isinstance(r, ua.StatusCode))
        old, self._sub = self._sub, sub
        if old is None:  # unsubscribed while this ran
            self._sub = None
            await _delete_quietly(sub)
            return
        await _delete_quietly(old)

    async def unsubscribe(self) -> None:
        """Delete the subscription on the server (locally only if the server is gone)."""
        sub, self._sub = self._sub, None
        if sub is not None:
            self._session._handles.discard(self)
            if self._conn is not None:
                self._conn.handles.discard(self)
            await _delete_quietly(sub)


class OpcUaSession:
    """A building's view of its (shared) OPC UA server connection.

    ``endpoint`` is ``opcua://host:port/bld/{id}``; ``timeout_s`` bounds every
    request. Node ids are full strings (``ns=2;s=bld-x.mode``), usually from
    :func:`profile_nodes`.
    """

    def __init__(self, endpoint: str, *, security: SecurityConfig | None = None,
                 timeout_s: float, reconnect_max_s: float = 10.0) -> None:
        self.host, self.port, self.building_id = parse_endpoint(endpoint)
        self.endpoint = endpoint
        if security is not None and not isinstance(security, SecurityConfig):
            raise ConfigError("opcua security must be a SecurityConfig")
        self.security = security or SecurityConfig()
        if not isinstance(timeout_s, int | float) or not 0 < timeout_s <= 60:
            raise ConfigError(f"opcua timeout_s {timeout_s!r} outside (0, 60]")
        if not isinstance(reconnect_max_s, int | float) or not 0 < reconnect_max_s <= 600:
            raise ConfigError(f"opcua reconnect_max_s {reconnect_max_s!r} outside (0, 600]")
        self.timeout_s = float(timeout_s)
        self.reconnect_max_s = float(reconnect_max_s)
        self._conn: _Connection | None = None
        self._handles: set[SubscriptionHandle] = set()
        self._event_callbacks: list[EventCallback] = []

    @property
    def connected(self) -> bool:
        """True between a successful :meth:`connect` and :meth:`close`."""
        return self._conn is not None

    async def connect(self) -> None:
        """Join (or open) the shared connection of this server endpoint.

        Raises :class:`DeviceUnavailableError` when the server cannot be reached;
        the caller retries later. Idempotent.
        """
        if self._conn is not None:
            return
        loop = asyncio.get_running_loop()
        conns = _REGISTRY.setdefault(loop, {})
        key = (self.host, self.port, self.security)
        conn = conns.get(key)
        if conn is None:
            conn = _Connection(key, self.timeout_s, self.reconnect_max_s)
            conns[key] = conn
        async with conn.lock:
            if conn.client is None:
                await conn.open()
            conn.refs += 1
        self._conn = conn

    async def close(self) -> None:
        """Drop this session's subscriptions; the last session closes the connection."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        for handle in list(self._handles):
            await handle.unsubscribe()
        callbacks = conn.event_handlers.get(self.building_id, [])
        for cb in self._event_callbacks:
            if cb in callbacks:
                callbacks.remove(cb)
        if not callbacks:
            conn.event_handlers.pop(self.building_id, None)
        self._event_callbacks.clear()
        async with conn.lock:
            conn.refs -= 1
            if conn.refs > 0:
                return
            conns = _REGISTRY.get(asyncio.get_running_loop(), {})
            if conns.get(conn.key) is conn:
                del conns[conn.key]
            await conn.close()

    def _client(self) -> Client:
        if self._conn is None:
            raise DeviceUnavailableError(f"{self.endpoint}: session not connected")
        return self._conn.require()

    async def _call(self, what: str, aw: Awaitable[Any]) -> Any:
        try:
            return await asyncio.wait_for(aw, timeout=self.timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise _mapped(exc, f"{self.endpoint}: {what}") from exc

    async def read(self, node_ids: Sequence[str]) -> dict[str, tuple[Any, str, float]]:
        """Read values: ``{node_id: (value, quality, source_ts)}``.

        A bad StatusCode on a node is data (quality ``bad``, value ``None``);
        an unknown node is a configuration mismatch and raises
        :class:`RejectedError` with code ``BadNodeIdUnknown``.
        """
        client = self._client()
        ids = [_parse_node_id(n) for n in node_ids]
        if not ids:
            return {}
        dvs: list[ua.DataValue] = await self._call(
            "read", client.read_attributes([client.get_node(i) for i in ids]))
        if len(dvs) != len(ids):
            raise ProtocolError(f"{self.endpoint}: read returned {len(dvs)} of {len(ids)} values")
        out: dict[str, tuple[Any, str, float]] = {}
        for text, dv in zip(node_ids, dvs, strict=True):
            status = dv.StatusCode
            if status is not None and status.name in _REJECT_CODES:
                raise RejectedError(f"{self.endpoint}: read {text}: {status.name}",
                                    code=status.name)
            quality = quality_of(status)
            out[text] = (_variant_value(dv) if quality != "bad" else None, quality, _epoch(dv))
        return out

    async def write(self, node_id: str, value: Any, type: str) -> None:
        """Write one value of profile type ``type`` (bool, i32, u32, float, str).

        A refused write raises :class:`RejectedError` with the StatusCode name
        (``BadNodeIdUnknown``, ``BadTypeMismatch``, ``BadUserAccessDenied``…);
        a value not of ``type`` raises it with code ``bad_value``.
        """
        client = self._client()
        nid = _parse_node_id(node_id)
        value = _coerce(value, type)
        dv = ua.DataValue(ua.Variant(value, VARIANT_TYPES[type]))
        await self._call(f"write {node_id}", client.get_node(nid).write_value(dv))

    async def subscribe(self, node_ids: Sequence[str], callback: ValueCallback,
                        publishing_interval_s: float,
                        queue_size: int = 16) -> SubscriptionHandle:
        """Deliver data changes of ``node_ids`` to ``callback(node_id, value, quality, ts)``.

        The current value of each node arrives first. Each monitored item keeps
        up to ``queue_size`` changes between two publishes, so a node that
        changes faster than the publishing interval delivers every change (a
        numbered sample counter included) instead of only the last one. Raises
        :class:`RejectedError` when the server refuses one of the nodes.
        """
        client = self._client()
        if not 0 < publishing_interval_s <= 3600:
            raise ConfigError(f"publishing interval {publishing_interval_s!r} outside (0, 3600]")
        ids = [_parse_node_id(n) for n in node_ids]
        names = dict(zip(ids, node_ids, strict=True))
        handler = _DataHandler(names, callback)
        sub, results = await _data_subscription(client, ids, handler,
                                                publishing_interval_s * 1000.0, queue_size,
                                                self._call)
        for text, result in zip(node_ids, results, strict=True):
            if isinstance(result, ua.StatusCode):
                await _delete_quietly(sub)
                raise RejectedError(f"{self.endpoint}: subscribe {text}: {result.name}",
                                    code=result.name)
        handle = SubscriptionHandle(self, sub, node_ids=ids, handler=handler,
                                    interval_ms=publishing_interval_s * 1000.0,
                                    queue_size=queue_size)
        self._handles.add(handle)
        if self._conn is not None:
            handle.attach(self._conn)
        return handle

    async def subscribe_events(self, callback: EventCallback,
                               publishing_interval_s: float = 0.5) -> None:
        """Deliver this building's events to ``callback(building_id, event_name, fields)``.

        One event subscription per connection serves every building behind it;
        the callback stays registered until :meth:`close`.
        """
        if self._conn is None:
            raise DeviceUnavailableError(f"{self.endpoint}: session not connected")
        conn = self._conn
        async with conn.lock:
            await self._call("subscribe events",
                             conn.ensure_event_subscription(publishing_interval_s))
        conn.event_handlers.setdefault(self.building_id, []).append(callback)
        self._event_callbacks.append(callback)


# ---------------------------------------------------------------- server side


WriteCallback = Callable[[str, Any], Awaitable[None] | None]


@dataclass(slots=True)
class _Building:
    profile: Profile
    attrs: Mapping[str, Any]
    nodes: dict[str, NodeRef]             # node id -> ref
    bad: bool = False
    values: dict[str, Any] = field(default_factory=dict)


def _answer_unknown_nodes(server: Server) -> None:
    """Make writes to missing nodes fail with BadNodeIdUnknown.

    asyncua checks the access level of a node before looking it up, so an
    anonymous write to a missing node comes back as BadUserAccessDenied; a
    real BMS server says BadNodeIdUnknown, which is what clients must handle.
    """
    service = server.iserver.attribute_service
    aspace = server.iserver.aspace
    original = service.write

    async def write(params: ua.WriteParameters, user: Any = None) -> list[ua.StatusCode]:
        results = await (original(params) if user is None else original(params, user=user))
        unknown = _status(StatusCodes.BadNodeIdUnknown)
        return [unknown if aspace.get(wv.NodeId) is None else res
                for wv, res in zip(params.NodesToWrite, results, strict=True)]

    setattr(service, "write", write)  # noqa: B010  (an instance override, not a monkeypatch of the class)


class OpcUaServer:
    """An aggregating OPC UA server holding the nodes of many buildings.

    Buildings live under ``Objects/<building id>`` with string node ids in
    namespace 2 taken from the profile. Client writes of writable nodes are
    reported to ``on_write(node_id, value)`` after they are applied. The
    server can be stopped and started again: the buildings and their last
    values are re-created on the new listener.
    """

    def __init__(self, port: int, *, name: str, host: str = "127.0.0.1",
                 on_write: WriteCallback | None = None) -> None:
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"opcua server port {port!r} outside 1..65535")
        if not name:
            raise ConfigError("opcua server needs a name")
        self.port = port
        self.host = host
        self.name = name
        self.on_write = on_write
        self._server: Server | None = None
        self._buildings: dict[str, _Building] = {}
        self._owner: dict[str, str] = {}   # node id -> building id
        self._event_gen: Any = None

    @property
    def url(self) -> str:
        """``opc.tcp://host:port/``."""
        return f"opc.tcp://{self.host}:{self.port}/"

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._server is not None

    def buildings(self) -> tuple[str, ...]:
        """Ids of the buildings this server holds."""
        return tuple(self._buildings)

    async def start(self) -> None:
        """Listen on ``host:port`` (raises :class:`DeviceUnavailableError` if it cannot)."""
        if self._server is not None:
            return
        server = Server()
        try:
            await server.init()
            server.set_endpoint(self.url)
            server.set_server_name(self.name)
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
            idx = await server.register_namespace(NAMESPACE_URI)
            if idx != NAMESPACE_INDEX:
                raise ConfigError(f"opcua namespace got index {idx}, profiles assume 2")
            etype = await server.create_custom_event_type(
                NAMESPACE_INDEX, EVENT_TYPE_NAME, ObjectIds.BaseEventType,
                [("BuildingId", ua.VariantType.String), ("EventName", ua.VariantType.String),
                 ("Fields", ua.VariantType.String)])
            self._event_gen = await server.get_event_generator(etype, ObjectIds.Server)
            server.subscribe_server_callback(CallbackType.PostWrite, self._post_write)
            _answer_unknown_nodes(server)
            self._server = server
            for building_id, b in self._buildings.items():
                await self._create_nodes(building_id, b)
            await server.start()
        except CommandpostError:
            self._server = None
            raise
        except OSError as exc:
            self._server = None
            raise DeviceUnavailableError(f"{self.url}: cannot listen: {exc}") from exc

    async def stop(self) -> None:
        """Stop listening; clients see the connection drop. Buildings are kept."""
        server, self._server = self._server, None
        self._event_gen = None
        if server is None:
            return
        # A client reconnecting while the listener closes gets a connection that
        # asyncua never closes, and wait_closed() then waits for it forever:
        # keep closing whatever transports are open until stop() returns.
        stopping = asyncio.ensure_future(server.stop())
        try:
            while True:
                done, _ = await asyncio.wait({stopping}, timeout=0.25)
                if done:
                    break
                for transport in list(server.iserver.asyncio_transports):
                    transport.close()
        except asyncio.CancelledError:
            stopping.cancel()
            raise
        stopping.result()

    def _require(self) -> Server:
        if self._server is None:
            raise DeviceUnavailableError(f"{self.url}: server not running")
        return self._server

    async def add_building(self, building_id: str, profile: Profile,
                           attrs: Mapping[str, Any]) -> tuple[NodeRef, ...]:
        """Create ``Objects/<building_id>`` and every node of ``profile`` with default values."""
        if building_id in self._buildings:
            raise ConfigError(f"building {building_id!r} already on {self.url}")
        refs = profile_nodes(profile, building_id, attrs)
        for ref in refs:
            if ref.spec.type not in VARIANT_TYPES:
                raise ConfigError(f"profile {profile.name!r}: {ref.key} type {ref.spec.type!r} "
                                  f"is not an opcua type")
            if ref.node_id in self._owner:
                raise ConfigError(f"node {ref.node_id!r} defined twice")
        b = _Building(profile, attrs, {r.node_id: r for r in refs})
        b.values = {r.node_id: ua.get_default_value(VARIANT_TYPES[r.spec.type]) for r in refs}
        self._buildings[building_id] = b
        for r in refs:
            self._owner[r.node_id] = building_id
        if self._server is not None:
            await self._create_nodes(building_id, b)
        return refs

    async def _create_nodes(self, building_id: str, b: _Building) -> None:
        server = self._require()
        folder = await server.nodes.objects.add_object(
            ua.NodeId(String(building_id), Int16(NAMESPACE_INDEX)),
            f"{NAMESPACE_INDEX}:{building_id}")
        for node_id, ref in b.nodes.items():
            var = await folder.add_variable(
                ua.NodeId.from_string(node_id), f"{NAMESPACE_INDEX}:{ref.key}",
                b.values[node_id], varianttype=VARIANT_TYPES[ref.spec.type])
            if ref.spec.writable:
                await var.set_writable()
        if b.bad:
            await self._write_quality(b, True)

    async def set(self, node_id: str, value: Any) -> None:
        """Set a node's value (source timestamp now); ignored on the wire while Bad."""
        b = self._building_of(node_id)
        ref = b.nodes[node_id]
        value = _coerce(value, ref.spec.type)
        b.values[node_id] = value
        if self._server is None or b.bad:
            return
        await self._write(node_id, ua.DataValue(
            ua.Variant(value, VARIANT_TYPES[ref.spec.type]),
            SourceTimestamp=_now(), ServerTimestamp=_now()))

    def get(self, node_id: str) -> Any:
        """The node's current (last set or written) value."""
        return self._building_of(node_id).values[node_id]

    async def set_quality(self, building_id: str, bad: bool) -> None:
        """Take a building offline (every node Bad) or back online (values restored)."""
        b = self._buildings.get(building_id)
        if b is None:
            raise ConfigError(f"unknown building {building_id!r} on {self.url}")
        if b.bad == bad:
            return
        b.bad = bad
        if self._server is not None:
            await self._write_quality(b, bad)

    async def _write_quality(self, b: _Building, bad: bool) -> None:
        now = _now()
        for node_id, ref in b.nodes.items():
            if bad:
                dv = ua.DataValue(StatusCode=_status(StatusCodes.BadCommunicationError),
                                  SourceTimestamp=now, ServerTimestamp=now)
            else:
                dv = ua.DataValue(ua.Variant(b.values[node_id], VARIANT_TYPES[ref.spec.type]),
                                  SourceTimestamp=now, ServerTimestamp=now)
            await self._write(node_id, dv)

    async def _write(self, node_id: str, dv: ua.DataValue) -> None:
        server = self._require()
        try:
            await server.write_attribute_value(ua.NodeId.from_string(node_id), dv)
        except UaError as exc:
            raise _mapped(exc, f"{self.url}: set {node_id}") from exc

    def _building_of(self, node_id: str) -> _Building:
        owner = self._owner.get(node_id)
        if owner is None:
            raise RejectedError(f"unknown node {node_id!r} on {self.url}", code="BadNodeIdUnknown")
        return self._buildings[owner]

    async def emit_event(self, building_id: str, event_name: str,
                         fields: Mapping[str, Any]) -> None:
        """Raise a building event (fields must be JSON-serialisable)."""
        b = self._buildings.get(building_id)
        if b is None:
            raise ConfigError(f"unknown building {building_id!r} on {self.url}")
        if b.profile.events and event_name not in b.profile.events:
            raise ConfigError(f"event {event_name!r} not in profile {b.profile.name!r}")
        self._require()
        gen = self._event_gen
        gen.event.BuildingId = building_id
        gen.event.EventName = event_name
        gen.event.Fields = json.dumps(dict(fields), separators=(",", ":"))
        gen.event.Severity = 800 if event_name in ("fire", "intrusion", "door_forced") else 100
        await gen.trigger(message=f"{building_id}: {event_name}")

    async def _post_write(self, event: ServerItemCallback, _dispatcher: Any) -> None:
        # Only client writes go through the session's Write service; our own
        # set() uses write_attribute_value and does not come back here.
        params: ua.WriteParameters = event.request_params
        results: list[ua.StatusCode] = event.response_params
        for wv, status in zip(params.NodesToWrite, results, strict=False):
            if wv.AttributeId != AttributeIds.Value or not status.is_good():
                continue
            node_id = wv.NodeId.to_string()
            owner = self._owner.get(node_id)
            if owner is None:
                continue
            value = _variant_value(wv.Value)
            self._buildings[owner].values[node_id] = value
            if self.on_write is not None:
                await _invoke(self.on_write, node_id, value)
