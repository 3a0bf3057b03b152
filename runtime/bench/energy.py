"""``commandpost bench energy``: one night of the metropolis's street lighting, metered.

The demo's lighting circuits that follow a schedule (the ``road_lighting``
ones: 706 at scale 1.0) run as ``make demo`` runs them, with their cabinets
simulated over Modbus TCP, on an accelerated clock (``clock_speed``, default
:data:`SPEED`) through one winter night: the clock starts at noon, the lamps
go off with the step in force (dawn's) and come on at dusk. During the night
the simulator resets one cabinet's energy counters and sets another's just
short of 2^32, so that they wrap.

Figures, over the hours from the earliest dusk to after the latest dawn:

* ``metered_kwh``: what ``GET /api/v1/energy`` (metropolis, that range) says
  the cabinets' counters metered; ``simulated_kwh``: the simulator's own
  integral of lamp power over the same span (its control channel); ``error_pct``
  the first against the second;
* ``analytic_kwh``: each circuit's lamps at their wattage, through the steps
  of its schedule at astral's times for its coordinates (the bench's own sum,
  apart from the runtime); ``analytic_error_pct`` the metered against it, and
  ``lamps_failed`` the lamps the simulator failed that night (they burn nothing);
* ``dimming_baseline_kwh`` / ``legacy_baseline_kwh`` and their savings, as the
  API reports them; ``counter_resets`` / ``counter_wraps``: what the runtime
  detected (one cabinet each was injected);
* ``transition_late_s`` (max, with ``transition_late_p50_s``): per circuit and
  step, from the step's time to the first time the cabinet's lamps took it
  after it (a write to them, or the timed step the cabinet took by itself), in
  the city's time (``transition_late_machine_s``: the max in the machine's
  time); ``writes`` and ``repeats``: lamp writes counted at the simulator (a
  timed step counts one per lamp), and those of a value the lamp held already;
* ``kill``: the host with the most circuits is killed (``SIGKILL``)
  :data:`KILL_LEAD_S` of the machine's time before the 01:00 step: ``host``,
  ``circuits``, ``recovered_s`` (machine time from the kill to its successor
  running), ``step_missed`` (its circuits whose lamps never took the step),
  ``step_late_s`` (their max lateness at that step, city time), ``repeats`` (its
  circuits' repeats); ``repeats_by_circuit``: the ten circuits with the most.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import signal
import time
from typing import Any, Final

from runtime.bench.common import ApiClient, City, Say, find_node, machine, percentile
from runtime.clock import CITY_TZ, Clock
from runtime.errors import ProtocolError, RetryableError

#: The night measured: a working Wednesday in January (long, and no holiday).
NIGHT: Final = datetime.date(2027, 1, 13)
#: The city's clock speed by default: the night (~16 h) in about six minutes.
SPEED: Final = 160.0
#: When the city's clock starts, after the morning's dawn: the lamps go off as the
#: circuits start, and the city has until the earliest dusk to come up (3 min at 160x).
MORNING: Final = datetime.time(9, 0)
#: How long after the latest dawn the measurement ends (s, city time).
TAIL_S: Final = 1800.0
#: How long before the earliest dusk's hour the simulator's integral is read (s, city time).
LEAD_S: Final = 3600.0
#: How long the API is given to show the last hours (s, machine time).
SETTLE_S: Final = 60.0
#: How long before the 01:00 step a lighting host is killed (s, machine time).
KILL_LEAD_S: Final = 1.0
#: How long a killed host is given to be running again (s, machine time).
RECOVER_S: Final = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """One circuit's night: its lamps and wattage, its steps and their times."""

    id: str
    lamps: int
    lamp_w: float
    steps: tuple[tuple[float, str, bool, float], ...]  # (at, step, on, dim) in time order

    def analytic_wh(self, start: float, end: float, level_at_start: tuple[bool, float]
                    ) -> float:
        """Energy of the lamps through the steps, from ``start`` to ``end``."""
        on, dim = level_at_start
        t, total = start, 0.0
        for at, _, step_on, step_dim in self.steps:
            if at > end:
                break
            if at > t:
                total += (dim / 100.0 if on else 0.0) * (at - t)
                t = at
            on, dim = step_on, step_dim
        total += (dim / 100.0 if on else 0.0) * max(0.0, end - t)
        return self.lamps * self.lamp_w * total / 3600.0


def _plans(city: City, start: float, end: float) -> list[Plan]:
    from actors.lighting import DEFAULT_LAMP_W, circuit_lamps, circuit_schedule
    from actors.schedule import Timetable

    out = []
    for eq in city.inventory.equipment:
        schedule = circuit_schedule(eq)
        if schedule is None:
            continue
        table = Timetable(schedule, eq.lat, eq.lon)
        steps: list[tuple[float, str, bool, float]] = []
        t = start
        while (nxt := table.next_after(t)) is not None and nxt.at < end:
            steps.append((nxt.at, nxt.step.name, bool(nxt.step.set.get("on", True)),
                          float(nxt.step.set.get("dim", steps[-1][3] if steps else 100.0))))
            t = nxt.at
        out.append(Plan(eq.id, circuit_lamps(eq), float(eq.attrs.get("lamp_w", DEFAULT_LAMP_W)),
                        tuple(steps)))
    return out


def _wait_city(clock: Clock, at: float, say: Say, what: str) -> None:
    wait = (at - clock.time()) / clock.speed
    if wait > 0:
        say(f"waiting {wait:.0f} s for {what} "
            f"({datetime.datetime.fromtimestamp(at, CITY_TZ):%H:%M} in the city)")
        time.sleep(wait)


def _burnt(city: City, ids: list[str]) -> dict[str, dict[str, Any]]:
    return {i: city.control.values(i)["sim"] for i in ids}


def _edge_checks(city: City, circuit: str) -> dict[str, Any]:
    """What the API shows of a circuit's schedule, and a lamp it lacks refused at the edge
    (``schedule_shown``, ``bad_lamp_status``, ``bad_lamp_writes``: writes it reached the
    cabinet with, 0 when refused before journaling)."""
    api = ApiClient(city.admin_url, city.token("admin"))
    try:
        status, body = api.call("GET", f"/api/v1/equipment/{circuit}")
        view = body.get("schedule") if status == 200 and isinstance(body, dict) else None
        before = city.control.counters([circuit])["devices"][circuit]["writes"]
        status_bad, _ = api.call("POST", f"/api/v1/equipment/{circuit}/commands",
                                 {"action": "set", "params": {"lamps": [999], "dim": 10}})
        after = city.control.counters([circuit])["devices"][circuit]["writes"]
    finally:
        api.close()
    return {"schedule_shown": isinstance(view, dict) and view.get("name") == "road_lighting"
            and isinstance(view.get("next"), dict),
            "bad_lamp_status": status_bad, "bad_lamp_writes": after - before}


def _kill_before(city: City, clock: Clock, at: float, say: Say) -> dict[str, Any]:
    """Kill the host with the most circuits :data:`KILL_LEAD_S` before city time ``at``;
    returns it, its circuits, and the machine time until its successor ran."""
    target = max(city.svc.plan.hosts, key=lambda h: len(h.entity_ids))
    _wait_city(clock, at - KILL_LEAD_S * clock.speed, say, f"the kill of {target.host_id}")
    pid = int(find_node(city.svc.tree(), target.host_id)["pid"])
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    recovered: float | None = None
    while time.monotonic() < killed + RECOVER_S:
        try:
            node = find_node(city.svc.tree(), target.host_id)
            if node.get("status") == "running" and int(node.get("pid") or 0) not in (0, pid):
                recovered = round(time.monotonic() - killed, 3)
                break
        except Exception:  # the tree between two incarnations
            pass
        time.sleep(0.05)
    say(f"killed {target.host_id} (pid {pid}) {KILL_LEAD_S:g} s before the step; running "
        f"again after {recovered} s")
    return {"host": target.host_id, "circuits": list(target.entity_ids),
            "recovered_s": recovered}


def run(*, scale: float = 1.0, say: Say = print, broker: str = "auto",
        clock_speed: float | None = None, start_at: datetime.time = MORNING,
        **_: Any) -> dict[str, Any]:
    """Meter one night of the scheduled street lighting and compare (module doc); the
    city's clock starts at ``start_at`` (local time, the night's day)."""
    speed = clock_speed or SPEED
    morning = datetime.datetime.combine(NIGHT, start_at, tzinfo=CITY_TZ).timestamp()
    city = City(scale=scale, say=say, broker=broker, clock_speed=speed,
                clock_start=morning, kinds=("lighting_circuit",))
    from actors.lighting import circuit_schedule

    scheduled = tuple(eq for eq in city.inventory.equipment if circuit_schedule(eq) is not None)
    if not scheduled:
        raise RetryableError("the inventory has no scheduled lighting circuit")
    unscheduled = len(city.inventory.equipment) - len(scheduled)
    city.inventory = dataclasses.replace(city.inventory, equipment=scheduled)
    if unscheduled:
        city.left_out.append(f"{unscheduled} lighting circuits without a schedule")
    plans = _plans(city, morning, morning + 86_400.0)
    dusk = min(p.steps[0][0] for p in plans if p.steps[0][1] == "dusk")
    dawn = max(at for p in plans for at, name, _, _ in p.steps if name == "dawn")
    start = math.floor(dusk / 3600.0) * 3600.0
    end = math.ceil((dawn + TAIL_S) / 3600.0) * 3600.0
    ids = [p.id for p in plans]
    t0 = time.monotonic()
    with city:
        clock = city.city_clock
        say(f"{len(ids)} circuits online in {time.monotonic() - t0:.0f} s; the city at "
            f"{datetime.datetime.fromtimestamp(clock.time(), CITY_TZ):%H:%M}, "
            f"{speed:g}x")
        # The simulator's integral is read while every lamp is off, well before dusk.
        if clock.time() > start - LEAD_S:
            raise RetryableError(f"the city took too long to start: past "
                                 f"{datetime.datetime.fromtimestamp(start, CITY_TZ):%H:%M} "
                                 f"already at {speed:g}x (lower --clock-speed)")
        _wait_city(clock, start - LEAD_S, say, "the lamps off before dusk")
        burnt0 = _burnt(city, ids)
        counters0 = city.control.counters(ids)["devices"]
        wrap_id, reset_id = ids[0], ids[min(1, len(ids) - 1)]
        _wait_city(clock, dusk + 1800.0, say, "the counter wrap")
        city.control.fault(wrap_id, "counter_wrap")
        _wait_city(clock, datetime.datetime.combine(
            NIGHT, datetime.time(23, 30), tzinfo=CITY_TZ).timestamp(), say, "the counter reset")
        city.control.fault(reset_id, "counter_reset")
        night_steps = [at for p in plans for at, name, _, _ in p.steps if name == "night"]
        kill_at = min(night_steps) if night_steps else None
        killed = _kill_before(city, clock, kill_at, say) if kill_at is not None else None
        _wait_city(clock, end, say, "the end of the night")
        api = ApiClient(city.admin_url, city.token("viewer"))
        query = f"/api/v1/energy?scope=metropolis&from={start}&to={end}&step=night"
        report: dict[str, Any] = {}
        deadline = time.monotonic() + SETTLE_S
        try:
            # The circuits publish their hours every few minutes of the city's time.
            while True:
                status, body = api.call("GET", query)
                if status != 200:
                    raise ProtocolError(f"GET {query}: {status} {body}")
                if body == report or time.monotonic() > deadline:
                    report = body
                    break
                report = body
                time.sleep(max(1.0, 600.0 / speed))
        finally:
            api.close()
        checks = _edge_checks(city, ids[0])
        burnt1 = _burnt(city, ids)
        counters1 = city.control.counters(ids)["devices"]
        broker_kind = city.broker_kind
    total = report["total"]
    metered = total["metered_wh"] / 1000.0
    simulated = sum(burnt1[i]["burnt_wh"] - burnt0[i]["burnt_wh"] for i in ids) / 1000.0
    failed = sum(burnt1[i]["failed"] for i in ids)
    analytic = sum(p.analytic_wh(start, end, (False, 100.0)) for p in plans) / 1000.0
    late: list[float] = []
    kill_late: list[float] = []
    kill_missed = 0
    victims = set(killed["circuits"]) if killed is not None else set()
    for p in plans:
        stamps = [*burnt1[p.id]["write_ts"], *burnt1[p.id].get("step_ts", ())]
        bounds = [s[0] for s in p.steps] + [math.inf]
        for step, upto in zip(p.steps, bounds[1:], strict=True):
            at = step[0]
            if not start <= at < end:
                continue
            # A cabinet's timed step is armed to the second below the step's time.
            after = [w for w in stamps if at - 1.0 <= w < upto]
            if after:
                late.append(max(0.0, min(after) - at))
            if p.id in victims and step[1] == "night":
                if after:
                    kill_late.append(max(0.0, min(after) - at))
                else:
                    kill_missed += 1
    writes = sum(counters1[i]["writes"] - counters0[i]["writes"] for i in ids)
    repeated = {i: counters1[i]["repeats"] - counters0[i]["repeats"] for i in ids}
    repeats = sum(repeated.values())
    repeaters = sorted((i for i in ids if repeated[i]), key=lambda i: -repeated[i])
    lamps = sum(p.lamps for p in plans)
    return {
        "bench": "energy", "machine": machine(), "scale": scale, "clock_speed": speed,
        "circuits": len(ids), "lamps": lamps, "night": NIGHT.isoformat(),
        "from": start, "to": end,
        "metered_kwh": round(metered, 2), "simulated_kwh": round(simulated, 2),
        "analytic_kwh": round(analytic, 2),
        "error_pct": round(100.0 * abs(metered - simulated) / simulated, 3) if simulated else None,
        "analytic_error_pct": (round(100.0 * (metered - analytic) / analytic, 3)
                               if analytic else None),
        "lamps_failed": failed,
        "dimming_baseline_kwh": round(total["dimming_baseline_wh"] / 1000.0, 2),
        "dimming_saving_pct": total["dimming_saving_pct"],
        "legacy_baseline_kwh": round(total["legacy_baseline_wh"] / 1000.0, 2),
        "legacy_saving_pct": total["legacy_saving_pct"],
        "counter_resets": total["counter_resets"], "counter_wraps": total["counter_wraps"],
        "counter_faults_injected": {"reset": reset_id, "wrap": wrap_id},
        "kill": None if killed is None else {
            "host": killed["host"], "circuits": len(victims),
            "recovered_s": killed["recovered_s"], "step_missed": kill_missed,
            "repeats": sum(repeated[i] for i in victims if i in repeated),
            "step_late_s": round(max(kill_late), 3) if kill_late else None},
        "transitions": len(late),
        "transition_late_s": round(max(late), 3) if late else None,
        "transition_late_p50_s": round(percentile(late, 50), 3) if late else None,
        "transition_late_machine_s": round(max(late) / speed, 3) if late else None,
        "repeats_by_circuit": {i: repeated[i] for i in repeaters[:10]},
        "writes": writes, "writes_per_lamp_step": (round(writes / (lamps * 5), 3)
                                                   if lamps else None),
        "repeats": repeats,
        **checks,
        "broker": broker_kind, "left_out": city.left_out,
    }
