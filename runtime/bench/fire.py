"""``commandpost bench fire``: a fire raised at the BMS simulator, to its plan carried out.

The city runs as ``make demo`` runs it (:class:`~runtime.bench.common.City`),
its crews working fast (the simulators' pace) so that a fire-safety vehicle is
free again for the next round. Each round takes a building that cameras watch
and that has evacuation doors, locks those doors through the API (an
operator's ``lock`` with a reason) and waits until the BMS holds them locked,
then raises a fire in zone 1 through the simulators' control channel. From
the moment that request returns, it polls until the building's fire plan has
done all of:

* the evacuation doors unlocked **at the BMS**, read back over OPC UA (a
  client session of its own on the building's server);
* every watching camera's preset command ``acked`` (``GET /api/v1/equipment/ID``,
  its recent commands: the plan's ids start with ``fire-{building}-``);
* an intervention ``int-fire-{building}-…`` with a vehicle assigned
  (``GET /api/v1/interventions``).

The round's latency is when the last of these was seen. The round then
clears the fire at the source, acknowledges the alarm and resets the plan
(``fire_reset``, an operator's decision).

Figures: ``n`` rounds, ``p50_s``, ``p99_s`` (and ``max_s``, ``missed`` with
``missed_why``: each missed round and why, per step).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any, Final

from actors.fire_plan import builtin_fire_plan
from devices.opcua import OpcUaSession, profile_nodes
from devices.profile import builtin_profile
from runtime.bench.common import ApiClient, City, Say, machine, percentile
from runtime.errors import ConfigError, DeviceUnavailableError, ProtocolError, RejectedError
from runtime.inventory import Equipment

__all__ = ["FireRound", "candidates", "fire_round", "run", "seconds_summary"]

_REASON = "bench fire: doors back to their normal state"


def seconds_summary(values: list[float]) -> dict[str, float | None]:
    """``{"p50", "p99", "max"}`` of durations in seconds, in seconds."""
    if not values:
        return {"p50": None, "p99": None, "max": None}
    return {"p50": round(percentile(values, 50), 3), "p99": round(percentile(values, 99), 3),
            "max": round(max(values), 3)}


def candidates(city: City) -> list[Equipment]:
    """Buildings with doors for the plan's tag and at least one camera watching them."""
    plan = builtin_fire_plan()
    doors = plan.step("unlock_doors")
    tag = doors.target if doors is not None else ""
    watched = {str(eq.attrs.get("watches")) for eq in city.inventory.equipment
               if eq.kind == "camera" and eq.attrs.get("watches")}
    return [eq for eq in city.inventory.equipment
            if eq.kind == "building" and eq.id in watched
            and (eq.attrs.get("doors") or {}).get(tag)]

#: How long the bench's own OPC UA reader waits for the building's server (s).
_READER_TIMEOUT_S: Final = 10.0


class FireRound:
    """One fire at one building, and the times its plan's steps were seen done."""

    def __init__(self, city: City, api: ApiClient, building: Equipment, *,
                 poll_s: float = 0.02, timeout_s: float = 20.0) -> None:
        self.city = city
        self.api = api
        self.building = building
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        tag = builtin_fire_plan().step("unlock_doors")
        self.doors = [int(d) for d in (building.attrs.get("doors") or {}).get(
            tag.target if tag else "", ())]
        self.cameras = sorted(eq.id for eq in city.inventory.equipment
                              if eq.kind == "camera" and eq.attrs.get("watches") == building.id)
        profile = builtin_profile(building.profile)
        nodes = {r.key: r.node_id for r in profile_nodes(profile, building.id, building.attrs)}
        self.nodes = [nodes[f"door.{d}.locked"] for d in self.doors]
        self.seen: dict[str, float] = {}
        #: Why the round missed (empty when it did not).
        self.problem = ""

    def _command(self, action: str, params: dict[str, Any]) -> str:
        code, body = self.api.call("POST", f"/api/v1/equipment/{self.building.id}/commands",
                                   {"action": action, "params": params})
        if code != 202:
            raise ConfigError(f"{action} on {self.building.id} answered {code}: {body}")
        return str(body["command_id"])

    def _statuses(self, ids: list[str]) -> str:
        out = []
        for cid in ids:
            _, body = self.api.call("GET", f"/api/v1/commands/{cid}")
            out.append(f"{body.get('status')} {body.get('error') or ''}".strip())
        return "; ".join(out)

    async def _doors(self, session: OpcUaSession) -> list[Any]:
        got = await session.read(self.nodes)
        return [got[n][0] for n in self.nodes]

    async def _wait_doors(self, session: OpcUaSession, locked: bool, ids: list[str]) -> bool:
        deadline = time.monotonic() + self.timeout_s
        while (held := await self._doors(session)) != [locked] * len(self.nodes):
            if time.monotonic() > deadline:
                self.problem = (f"{self.building.id}: doors {held} not locked within "
                                f"{self.timeout_s:.0f}s (commands: {self._statuses(ids)})")
                return False
            await asyncio.sleep(self.poll_s)
        return True

    def _cameras_acked(self) -> bool:
        prefix = f"fire-{self.building.id}-"
        for cam in self.cameras:
            if cam in self.seen:
                continue
            code, body = self.api.call("GET", f"/api/v1/equipment/{cam}")
            if code == 200 and any(str(c.get("command_id", "")).startswith(prefix)
                                   and c.get("status") == "acked"
                                   for c in body.get("commands") or ()):
                self.seen[cam] = time.perf_counter()
        return all(cam in self.seen for cam in self.cameras)

    def _assigned(self) -> bool:
        code, body = self.api.call(
            "GET", f"/api/v1/interventions?municipality={self.building.municipality}")
        prefix = f"int-fire-{self.building.id}-"
        return code == 200 and any(str(i.get("id", "")).startswith(prefix) and i.get("vehicle")
                                   and i.get("state") in ("assigned", "en_route", "on_site", "done")
                                   for i in body)

    async def run(self) -> dict[str, float] | None:
        """Prepare, raise the fire and time its plan; seconds per step, None when it missed."""
        # The bench's own reader, not the runtime under test: it waits for the server as
        # long as a loaded machine may need (a session set up and activated).
        session = OpcUaSession(self.building.endpoint, timeout_s=_READER_TIMEOUT_S)
        await session.connect()
        try:
            ids = [self._command("lock", {"door": d, "reason": "bench fire: ready for the next "
                                                               "fire"})
                   for d in self.doors]
            if not await self._wait_doors(session, True, ids):
                return None
            self.seen = {}
            done: dict[str, float] = {}
            checks: dict[str, Callable[[], Any]] = {
                "doors": lambda: self._doors(session),
                "cameras": self._cameras_acked,
                "intervention": self._assigned,
            }
            t0 = time.perf_counter()
            await asyncio.to_thread(self.city.control.fault, self.building.id, "fire", True)
            while len(done) < len(checks) and time.perf_counter() - t0 < self.timeout_s:
                for name, check in checks.items():
                    if name in done:
                        continue
                    if name == "doors":
                        ok = await check() == [False] * len(self.nodes)
                    else:
                        ok = bool(check())
                    if ok:
                        done[name] = time.perf_counter() - t0
                await asyncio.sleep(self.poll_s)
            if len(done) < len(checks):
                self.problem = (f"{self.building.id}: only {sorted(done)} within "
                                f"{self.timeout_s:.0f}s")
                return None
            return done
        finally:
            await session.close()

    def clean_up(self) -> None:
        """Clear the fire at the source, acknowledge its alarm, reset the plan."""
        self.city.control.fault(self.building.id, "fire", False)
        alarm = f"{self.building.id}.fire"
        self.api.call("POST", f"/api/v1/alarms/{alarm}/ack", {"comment": "bench"})
        self._command("fire_reset", {"reason": _REASON})


def fire_round(city: City, api: ApiClient, building: Equipment, *, say: Say | None = None,
               **kw: Any) -> dict[str, float] | None:
    """One round at ``building`` (see :class:`FireRound`); its plan is reset after it.

    None when the round missed (``say`` is told why): a BMS the bench cannot read back
    is a miss too, the doors not shown unlocked."""
    r = FireRound(city, api, building, **kw)
    try:
        got = asyncio.run(r.run())
        if got is None and say is not None:
            say(r.problem)
        return got
    except (DeviceUnavailableError, RejectedError, ProtocolError) as exc:
        if say is not None:
            say(f"{building.id}: the BMS cannot be read: {exc}")
        return None
    finally:
        r.clean_up()


def _missed(say: Say, why: list[str], round_no: int, text: str) -> None:
    why.append(f"round {round_no}: {text}")
    say(f"round {round_no} missed: {text}")


def run(*, scale: float = 1.0, say: Say = print, broker: str = "auto", n: int = 50,
        poll_s: float = 0.02, timeout_s: float = 20.0, **_: Any) -> dict[str, Any]:
    """The figures of this bench (see the module docstring)."""
    with City(scale=scale, say=say, broker=broker) as city:
        pool = candidates(city)
        if not pool:
            raise ConfigError("the inventory needs buildings with evacuation doors that cameras "
                              "watch")
        if not any(eq.attrs.get("role") == "fire_safety" for eq in city.inventory.equipment):
            raise ConfigError("the inventory has no fire_safety vehicle")
        city.control.pace(1000.0)  # crews done at once: a vehicle is free for the next fire
        api = ApiClient(city.admin_url, city.token("operator"))
        say(f"{n} fires over {len(pool)} buildings; {machine()}")
        totals: list[float] = []
        by_step: dict[str, list[float]] = {}
        missed = 0
        why: list[str] = []
        for i in range(n):
            building = pool[i % len(pool)]
            got = fire_round(city, api, building, poll_s=poll_s, timeout_s=timeout_s,
                             say=functools.partial(_missed, say, why, i))
            if got is None:
                missed += 1
                continue
            totals.append(max(got.values()))
            for step, s in got.items():
                by_step.setdefault(step, []).append(s)
            if (i + 1) % 10 == 0:
                say(f"{i + 1} rounds; p50 so far {seconds_summary(totals)['p50']} s")
        summary = seconds_summary(totals)
        return {
            "n": len(totals),
            "p50_s": summary["p50"],
            "p99_s": summary["p99"],
            "max_s": summary["max"],
            "missed": missed,
            "missed_why": why,
            "by_step": {k: seconds_summary(v) for k, v in by_step.items()},
            "scale": scale,
            "machine": machine(),
            "broker": city.broker_kind,
            "left_out": list(city.left_out),
        }
