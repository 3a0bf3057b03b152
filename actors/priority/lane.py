"""A crossroad's priority lane: the pool's requests, decided and written to the controller.

The pool (:mod:`actors.priority.pool`) reaches a crossroad with one message to
its host's lane (:meth:`runtime.entity.EntityContext.priority`): on the lane's
own connection (:mod:`runtime.lanewire`), else one Ray call into the host's
``priority`` concurrency group. Either way :func:`serve` runs on that group's
own event loop, ahead of whatever the host's main loop is doing:

1. the crossroad's :class:`~actors.priority.policy.CrossroadPolicy` (one per
   crossroad, kept in the lane's resources) decides from the request and what
   the crossroad's published view says of its controller (mode, phase);
2. a grant is written at once to the controller's request registers
   (the ``prio_request`` block of the ``traffic_controller`` profile) in one request,
   through a connection of the lane's own to that controller: traffic
   controllers take several masters, the host's polling session lives on the
   other loop, and a gateway's controllers (one port, a unit each) served on
   one connection would queue a burst of check-ins behind each other's writes;
3. the outcome goes back to the pool (with ``lane_ts``: the wall-clock times the
   lane took the request, decided it, and had the write acknowledged, which the
   pool's members break their latency down with), and to the crossroad entity's mailbox
   (:meth:`~runtime.entity.PriorityLane.post`), which records it as a
   ``priority`` event with its reason, off the critical path.

The rules are the shipped file's unless the service runs its own
(``ServiceOptions.priority_rules``, parsed once per host into the lane's
``priority_config``).

A request tells the controller how long to hold it (``prio_deadline_s``):
whatever happens to the runtime afterwards, the controller drops it then by
itself. Nothing here is journaled or replayed: a request lives once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from actors.priority.policy import (
    Clear,
    ControllerView,
    CrossroadPolicy,
    Decision,
    PolicyConfig,
    PriorityRequest,
    builtin_priority_config,
)
from devices.modbus import ModbusSession, parse_endpoint
from devices.profile import Profile, builtin_profile
from runtime.entity import PriorityLane
from runtime.envelope import Envelope, MessageKind
from runtime.errors import DeviceUnavailableError, ProtocolError, RejectedError

__all__ = ["CLEAR", "OUTCOME", "REQUEST", "LaneResources", "prepare", "serve"]

#: The message types the lane serves, and the one it posts to its crossroad.
REQUEST: Final = "priority_request"
CLEAR: Final = "priority_clear"
OUTCOME: Final = "priority_outcome"
_RESOURCE: Final = "crossroad_priority"
#: The controller's request registers, in wire order (one Modbus request).
_REQUEST_FIELDS: Final = ("prio_id", "prio_command", "prio_approach", "prio_type",
                          "prio_eta_s", "prio_deadline_s", "prio_max_extension_s")
_BLOCK: Final = "prio_request"
_U16_MAX: Final = 0xFFFF


@dataclass
class LaneResources:
    """What one host's priority lane keeps between requests (its thread only)."""

    config: PolicyConfig
    profile: Profile
    policies: dict[str, CrossroadPolicy] = field(default_factory=dict)
    sessions: dict[tuple[str, int, int], ModbusSession] = field(default_factory=dict)

    def policy(self, crossroad_id: str, approaches: tuple[int, ...]) -> CrossroadPolicy:
        got = self.policies.get(crossroad_id)
        if got is None:
            got = self.policies[crossroad_id] = CrossroadPolicy(
                crossroad_id, self.config, approaches or range(1, 9))
        return got

    def session(self, host: str, port: int, unit: int, timeout_s: float) -> ModbusSession:
        """The lane's connection to the controller ``unit`` behind ``host:port``."""
        got = self.sessions.get((host, port, unit))
        if got is None:
            got = self.sessions[(host, port, unit)] = ModbusSession(host, port,
                                                                    timeout_s=timeout_s)
        return got


def resources(lane: PriorityLane) -> LaneResources:
    got = lane.resources.get(_RESOURCE)
    if not isinstance(got, LaneResources):
        config = lane.resources.get("priority_config")
        if not isinstance(config, PolicyConfig):
            config = builtin_priority_config()
        if lane.resources.get("priority_grant_all"):
            config = dataclasses.replace(config, grant_all=True)
        got = LaneResources(config, builtin_profile("traffic_controller"))
        lane.resources[_RESOURCE] = got
    return got


def _controller_view(view: Mapping[str, Any]) -> ControllerView:
    mode = str(view.get("mode") or "")
    phase = view.get("phase")
    phase = phase if isinstance(phase, int) and not isinstance(phase, bool) else 0
    status = str(view.get("prio_status") or "")
    # Approach a is served by phase (a - 1) % 4 + 1 (the controller's profile).
    green = (frozenset(a for a in range(1, 9) if (a - 1) % 4 + 1 == phase)
             if phase else frozenset())
    return ControllerView(mode=mode, phase=phase, green=green,
                          acting=status in ("granted", "served"))


def _request(msg: Envelope, now: float) -> PriorityRequest:
    p: Mapping[str, Any] = msg.payload if isinstance(msg.payload, Mapping) else {}
    try:
        return PriorityRequest(
            request_id=p["request_id"], bus_id=p["bus_id"], line=p["line"],
            crossroad_id=msg.target, approach=p["approach"],
            strategy=p.get("strategy", "extension"), eta_s=p["eta_s"],
            lateness_s=p["lateness_s"], arrival_ts=p["arrival_ts"], received_ts=now)
    except KeyError as exc:
        raise RejectedError(f"a priority request needs {exc.args[0]}",
                            code="bad_request") from exc
    except ValueError as exc:
        raise RejectedError(str(exc), code="bad_request") from exc


def _seconds(value: float) -> int:
    return max(0, min(_U16_MAX, round(value)))


async def _write(res: LaneResources, view: Mapping[str, Any], values: Mapping[str, Any]
                 ) -> None:
    endpoint = view.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise RejectedError("the crossroad has published no controller yet", code="no_view")
    host, port, unit = parse_endpoint(endpoint)
    session = res.session(host, port, unit, res.profile.timeout_s)
    start, regs = res.profile.encode_block(_BLOCK, 0, {n: values[n] for n in _REQUEST_FIELDS})
    await session.write_many(unit, [(start, regs)], urgent=True)


async def prepare(view: Mapping[str, Any], lane: PriorityLane) -> None:
    """Open the lane's connection to the controller the view names, so that the first
    request does not wait for it (a controller not reachable yet is connected to by the
    first request, as before)."""
    endpoint = view.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        return
    res = resources(lane)
    host, port, unit = parse_endpoint(endpoint)
    with contextlib.suppress(DeviceUnavailableError):
        await res.session(host, port, unit, res.profile.timeout_s).connect()


def _clear_values(clear_id: int, command: str) -> dict[str, Any]:
    return {"prio_id": clear_id, "prio_command": command, "prio_approach": 0,
            "prio_type": "extension", "prio_eta_s": 0, "prio_deadline_s": 0,
            "prio_max_extension_s": 0}


def _outcome(lane: PriorityLane, crossroad: str, payload: dict[str, Any]) -> None:
    lane.post(Envelope(target=crossroad, type=OUTCOME, payload=payload, sender="priority",
                       kind=MessageKind.EVENT))


async def serve(view: Mapping[str, Any], msg: Envelope, lane: PriorityLane) -> dict[str, Any]:
    """Serve one of the pool's messages for the crossroad ``msg.target`` (see the module)."""
    entered = time.time()
    res = resources(lane)
    now = _now(lane)
    approaches = tuple(int(a) for a in view.get("approaches") or ())
    policy = res.policy(msg.target, approaches)
    for expired in policy.expire(now):
        _outcome(lane, msg.target, _ended(expired))
    if msg.type == REQUEST:
        request = _request(msg, now)
        decision = policy.decide(request, now, _controller_view(view))
        decided = time.time()
        if decision.grant:
            if decision.preempted is not None:
                await _send_clear(res, view, decision.preempted, "cancel")
            try:
                await _write(res, view, {
                    "prio_id": request.request_id, "prio_command": "request",
                    "prio_approach": request.approach,
                    "prio_type": decision.strategy or request.strategy,
                    "prio_eta_s": _seconds(request.eta_s),
                    "prio_deadline_s": _seconds(decision.deadline_s),
                    "prio_max_extension_s": _seconds(decision.max_extension_s)})
            except (DeviceUnavailableError, ProtocolError) as exc:
                policy.cancel(request.request_id, now, "controller_unreachable")
                _outcome(lane, msg.target, _decided(request, Decision(False, "unreachable")))
                raise RejectedError(f"{msg.target}: {exc}", code="unreachable") from exc
        written = time.time()
        _outcome(lane, msg.target, _decided(request, decision))
        return {"request_id": request.request_id, "granted": decision.grant,
                "reason": decision.reason, "strategy": decision.strategy,
                "written_ts": written if decision.grant else None,
                "lane_ts": [entered, decided, written]}
    if msg.type == CLEAR:
        p = msg.payload if isinstance(msg.payload, Mapping) else {}
        request_id, reason = p.get("request_id"), str(p.get("reason") or "checked_out")
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            raise RejectedError(f"request_id {request_id!r} is not a number", code="bad_request")
        ended = (policy.check_out(request_id, now) if reason == "checked_out"
                 else policy.cancel(request_id, now, reason))
        if ended is not None:
            await _send_clear(res, view, request_id,
                              "checkout" if reason == "checked_out" else "cancel")
            _outcome(lane, msg.target, _ended(ended))
        return {"request_id": request_id, "cleared": ended is not None}
    raise RejectedError(f"the priority lane serves {REQUEST} and {CLEAR}, not {msg.type!r}",
                        code="unknown_message")


async def _send_clear(res: LaneResources, view: Mapping[str, Any], request_id: int,
                      command: str) -> None:
    try:
        await _write(res, view, _clear_values(request_id, command))
    except (DeviceUnavailableError, ProtocolError):
        pass  # the controller drops it at its deadline by itself


def _now(lane: PriorityLane) -> float:
    clock = lane.resources.get("clock")
    value = clock.time() if clock is not None and hasattr(clock, "time") else time.time()
    return float(value)


def _decided(request: PriorityRequest, decision: Decision) -> dict[str, Any]:
    return {"request_id": request.request_id, "bus_id": request.bus_id, "line": request.line,
            "approach": request.approach, "lateness_s": request.lateness_s,
            "outcome": "granted" if decision.grant else "refused", "reason": decision.reason,
            "strategy": decision.strategy, "preempted": decision.preempted}


def _ended(clear: Clear) -> dict[str, Any]:
    return {"request_id": clear.request_id, "bus_id": clear.bus_id,
            "approach": clear.approach, "outcome": clear.ending, "reason": clear.detail}
