"""Crossroads end to end: the city as ``make demo`` runs it (crossroads only, the simulated
controllers on Modbus TCP, Ray hosts, Redis, the admin web), on a city clock running 20 times
the machine's from a working day's afternoon, twenty minutes before the evening peak.

Each crossroad applies the step of its schedule in force when it starts and the evening peak
when it comes, once; its controller gets each plan's table and latches the plan at its cycle
boundary. Operators act through the HTTP API: a manual mode needs a reason (422 naming
``params.reason``), a viewer may not act (403), the reason is in the audit trail, an override
shows its source in the equipment's view. A conflict fault at a controller is an alarm.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from actors.schedule import Timetable, builtin_schedules, day_profile
from actors.signal_plan import builtin_signal_plans
from runtime.bench.common import City
from runtime.clock import CITY_TZ
from tests.conftest import poll

log = logging.getLogger(__name__)
pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("ray_runtime")]



def _next_weekday() -> datetime.date:
    """The next working day after today: the city's clock runs ahead of the machine's (a
    command's deadline is set on the city's clock, the journal compares the machine's)."""
    date = datetime.datetime.now(CITY_TZ).date() + datetime.timedelta(days=1)
    while day_profile(date) != "weekday":
        date += datetime.timedelta(days=1)
    return date


DAY = _next_weekday()
#: 16:10 in Dijon on that day: the evening peak (plan 3) comes at 16:30.
START = datetime.datetime(DAY.year, DAY.month, DAY.day, 16, 10, tzinfo=CITY_TZ).timestamp()
PEAK = datetime.datetime(DAY.year, DAY.month, DAY.day, 16, 30, tzinfo=CITY_TZ).timestamp()
SPEED = 40.0


class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def command(self, eid: str, params: Mapping[str, Any]) -> tuple[int, Any]:
        return self.call("POST", f"/api/v1/equipment/{eid}/commands",
                         {"action": "set", "params": dict(params)})

    def final(self, command_id: str) -> dict[str, Any]:
        def done() -> Any:
            status, body = self.call("GET", f"/api/v1/commands/{command_id}")
            return body if status == 200 and body["status"] in (
                "acked", "failed", "expired", "superseded") else None

        return dict(poll(done, 60, interval=0.1, what=f"command {command_id} final"))


@pytest.fixture(scope="module")
def city() -> Iterator[City]:
    with City(scale=0.05, kinds=("crossroad",), say=log.info, online_timeout_s=120,
              clock_speed=SPEED, clock_start=START) as c:
        log.info("city started in %s", c.timings)
        yield c


def crossroads(city: City) -> list[str]:
    return [eq.id for eq in city.inventory.equipment if eq.kind == "crossroad"]


def detail(city: City, eid: str) -> dict[str, Any]:
    status, body = Api(city.admin_url, city.token("operator")).call(
        "GET", f"/api/v1/equipment/{eid}")
    assert status == 200, body
    return dict(body)


def holds(city: City, eid: str, plan: int) -> bool:
    """Whether the controller runs ``plan`` from a slot holding exactly its table."""
    values = city.control.values(eid)
    slot = next((s for s in values["plan_table"] if s["number"] == plan), None)
    signal = builtin_signal_plans().get(plan)
    return (values["plan"] == plan and values["plan_running"] == plan and slot is not None
            and signal is not None and signal.held_by(slot))


def steps_applied(city: City, eid: str) -> list[str]:
    return [e["step"] for e in city.svc.store.recent_events(2000, entity=eid)
            if e.get("event") == "schedule_step"]


def test_each_crossroad_follows_its_schedule_and_the_peak_is_applied_once(city: City) -> None:
    ids = crossroads(city)
    assert ids and city.online() == len(ids)
    eq = city.inventory.by_id(ids[0])
    timetable = Timetable(builtin_schedules().get("signals"), eq.lat, eq.lon)
    first = timetable.in_force(city.city_clock.time())
    assert first is not None
    log.info("city time at start: %s, step in force %s",
             datetime.datetime.fromtimestamp(city.city_clock.time(), CITY_TZ), first.step.name)
    # The evening peak comes (20 city minutes are a minute here), and every controller
    # runs plan 3 from its table once its running cycle has ended.
    poll(lambda: city.city_clock.time() > PEAK, 120, interval=0.5, what="16:30 in the city")
    for eid in ids:
        poll(lambda eid=eid: holds(city, eid, 3), 60, interval=0.2,
             what=f"{eid} running the evening peak plan")
        view = poll(lambda eid=eid: (d := detail(city, eid)).get("schedule", {}).get(
            "step") == "evening_peak" and d, 30, interval=0.2, what=f"{eid} view")
        assert view["schedule"]["since"] == PEAK
        assert view["schedule"]["next"]["step"] == "evening"
        assert view["control"]["precedence"] == ["crisis", "operator", "schedule"]
        assert view["control"]["fields"]["plan"]["value"] == 3
        assert view["control"]["fields"]["plan"]["source"] == "schedule"
        # Applied once each: the step in force at start (the day's, unless the city took
        # past 16:30 to start) and the peak; never the same step twice. The host writes
        # its events to the stream in batches: the view may show the step first.
        applied = poll(lambda eid=eid: (a := steps_applied(city, eid)).count("evening_peak")
                       and a, 10, interval=0.2, what=f"{eid}'s evening_peak event")
        assert applied.count("evening_peak") == 1, applied
        assert len(applied) == len(set(applied)) <= 2, applied
        counters = city.control.counters([eid])["devices"][eid]
        assert counters["refused"] == 0, counters


def test_operators_need_a_reason_for_manual_modes_and_viewers_cannot_act(city: City) -> None:
    eid = crossroads(city)[0]
    operator = Api(city.admin_url, city.token("operator"))
    viewer = Api(city.admin_url, city.token("viewer"))
    admin = Api(city.admin_url, city.token("admin"))
    writes = city.control.counters([eid])["devices"][eid]["writes"]

    status, body = operator.command(eid, {"mode": "flashing"})
    assert status == 422 and body["field"] == "params.reason", body
    status, body = operator.command(eid, {"plan": 8})
    assert status == 422 and body["field"] == "params.plan", body
    status, body = viewer.command(eid, {"mode": "flashing", "reason": "viewers cannot"})
    assert status == 403, body
    time.sleep(0.3)
    assert city.control.counters([eid])["devices"][eid]["writes"] == writes

    reason = "crash on the junction, police directing traffic"
    status, body = operator.command(eid, {"mode": "flashing", "reason": reason})
    assert status == 202, body
    assert operator.final(body["command_id"])["status"] == "acked"
    assert city.control.values(eid)["mode"] == "flashing"
    status, trail = admin.call("GET", "/api/v1/audit?user=operator")
    assert status == 200, trail
    record = next(r for r in trail if r["action"] == "command.submit"
                  and r["target"] == eid and r["outcome"] == "ok")
    assert record["params"]["params"] == {"mode": "flashing", "reason": reason}
    refused = [r for r in trail if r["target"] == eid and r["outcome"] == "refused"]
    assert any(r["code"] == "reason_required" for r in refused), refused

    # Back to auto (no reason needed), then a plan for ten city minutes: the view shows
    # the operator as its source, above the schedule.
    status, body = operator.command(eid, {"mode": "auto"})
    assert status == 202 and operator.final(body["command_id"])["status"] == "acked"
    status, body = operator.command(eid, {"plan": 5, "for_s": 600})
    assert status == 202, body
    assert operator.final(body["command_id"])["status"] == "acked"
    poll(lambda: holds(city, eid, 5), 60, interval=0.2, what="the override's plan running")
    plan = detail(city, eid)["control"]["fields"]["plan"]
    assert plan["source"] == "operator" and plan["by"] == "operator"
    # Ten city minutes are 15 s here: the schedule's plan comes back by itself.
    poll(lambda: holds(city, eid, 3), 90, interval=0.5, what="the override expired")
    assert detail(city, eid)["control"]["fields"]["plan"]["source"] == "schedule"


def test_a_conflict_at_a_controller_is_an_alarm(city: City) -> None:
    eid = crossroads(city)[-1]
    operator = Api(city.admin_url, city.token("operator"))

    def active() -> set[str]:
        status, body = operator.call("GET", f"/api/v1/alarms?source={eid}")
        assert status == 200, body
        return {a["condition"] for a in body if a.get("active")}

    city.control.fault(eid, "conflict", True)
    try:
        poll(lambda: "signal_conflict" in active(), 60, interval=0.2, what="conflict alarm")
        assert city.control.values(eid)["mode"] == "flashing"
    finally:
        city.control.fault(eid, "conflict", False)
    poll(lambda: "signal_conflict" not in active(), 60, interval=0.2, what="alarm cleared")
