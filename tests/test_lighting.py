"""Lighting circuits on an injected clock: a whole night of the road-lighting schedule in
seconds, operators' overrides that expire, crisis layers, restarts across a transition,
lamps set one by one, and energy metered from counters that reset and wrap."""

from __future__ import annotations

import asyncio
import datetime
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import pytest

from actors.lighting import (
    COUNTER_RANGE,
    STEP_CHECK_S,
    STEP_FIELDS,
    LightingCircuit,
    circuit_schedule,
    counter_delta,
    energy_model_name,
    lit_seconds,
)
from actors.schedule import Timetable
from runtime.clock import CITY_TZ, Clock, ManualClock
from runtime.entity import Checkpoint
from runtime.envelope import Envelope, MessageKind
from runtime.errors import DeviceUnavailableError, InvalidCommandError, RejectedError
from runtime.inventory import Equipment
from tests.helpers import FakeContext, make_equipment
from tests.test_equipment import FakeCabinet

T = TypeVar("T")

#: Noon, local time, on a November Monday in Dijon: the night to come is a long one.
NOON: float = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=CITY_TZ).timestamp()


class TimedCabinet(FakeCabinet):
    """A fake cabinet that stamps each write with the city's time; with ``timed``, one that
    takes an armed step by itself at its time, as the simulator's (a write to the lamps
    cancels it; with ``stuck`` its clock never takes one)."""

    def __init__(self, clock: Clock, lamps: int = 4, *, timed: bool = False) -> None:
        super().__init__(lamps)
        self.clock = clock
        self.stamps: list[float] = []
        self.timed = timed
        self.stuck = False
        self.step: dict[str, Any] = {"step_at": 0, "step_on": True, "step_dim": 100}
        self.arms: list[dict[str, Any]] = []
        self.taken: list[float] = []
        # Arms whose answer is lost on the way back: taken by the cabinet, reported failed.
        self.lost_answers = 0

    def policy(self, field: str) -> str | None:
        if self.timed and field in STEP_FIELDS:
            return "never"
        return super().policy(field)

    def _catch_up(self) -> None:
        at = self.step["step_at"]
        if at and at <= self.clock.time() and not self.stuck:
            for lamp in self.lamps:
                lamp["on"], lamp["dim"] = bool(self.step["step_on"]), int(self.step["step_dim"])
            self.taken.append(float(at))
            self.step["step_at"] = 0

    async def read(self) -> Mapping[str, Any]:
        self._catch_up()
        return await super().read()

    async def write(self, fields: Mapping[str, Any], *, command_id: str) -> Mapping[str, Any]:
        self._catch_up()
        steps = {k: v for k, v in fields.items() if k in STEP_FIELDS}
        lamps = {k: v for k, v in fields.items() if k not in STEP_FIELDS}
        if steps:
            assert self.timed, f"a step armed at a cabinet without timed steps: {steps}"
            self.step.update(steps)
            self.arms.append(steps)
            if self.lost_answers and not lamps:
                self.lost_answers -= 1
                raise DeviceUnavailableError("the cabinet's answer was lost")
        if lamps:
            self.step["step_at"] = 0
            self.stamps += [self.clock.time()] * len(lamps)
            await super().write(lamps, command_id=command_id)
        return dict(fields)

    def levels(self) -> set[tuple[bool, int]]:
        self._catch_up()
        return {(bool(lamp["on"]), int(lamp["dim"])) for lamp in self.lamps}


def road_circuit(**attrs: Any) -> Equipment:
    return make_equipment("lc-dijon-0001", "lighting_circuit", profile="lighting_cabinet",
                          endpoint="modbus://127.0.0.1:15030/1",
                          attrs={"points": 4, "schedule": "road_lighting", **attrs})


def night_of(eq: Equipment) -> dict[str, float]:
    """When each step of the circuit's schedule happens in the night after :data:`NOON`."""
    schedule = circuit_schedule(eq)
    assert schedule is not None
    table = Timetable(schedule, eq.lat, eq.lon)
    out: dict[str, float] = {}
    t = NOON
    while len(out) < len(schedule.steps):
        nxt = table.next_after(t)
        assert nxt is not None
        out[nxt.step.name] = nxt.at
        t = nxt.at
    return out


class Night:
    """A circuit, its fake cabinet and a manual clock, started at :data:`NOON`."""

    def __init__(self, eq: Equipment | None = None, lamps: int = 4, *,
                 timed: bool = False) -> None:
        self.clock = ManualClock(start=0.0, wall_offset=NOON)
        self.eq = eq or road_circuit()
        self.cabinet = TimedCabinet(self.clock, lamps, timed=timed)
        self.ctx: FakeContext | None = None
        self.entity: LightingCircuit | None = None

    async def start(self, saved: Checkpoint | None = None) -> LightingCircuit:
        self.ctx = FakeContext(self.eq, self.cabinet, self.clock)
        self.entity = LightingCircuit(self.ctx)
        self.ctx.entity = self.entity
        await self.entity.on_start(saved)
        await self.ctx.run_timers()
        return self.entity

    def stop(self) -> Checkpoint:
        """The host goes: its timers with it. A circuit journals no command."""
        assert self.ctx is not None and self.entity is not None
        assert self.ctx.journal == {}
        self.ctx.timers.clear()
        return self.entity.checkpoint()

    async def until(self, t: float) -> None:
        assert self.ctx is not None
        await self.ctx.advance_to(t)

    async def command(self, cid: str, caller: str = "user:ana:operator", **params: Any) -> Any:
        assert self.ctx is not None and self.entity is not None
        return await self.entity.handle(Envelope(
                id=cid, target=self.eq.id, type="command", sender="journal",
                kind=MessageKind.COMMAND,
                payload={"command_id": cid, "action": "set", "params": params,
                         "caller": caller}))


def run(test: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(test(), 30.0)

    return asyncio.run(bounded())


# -- the schedule through a night ---------------------------------------------------------

def test_a_night_of_road_lighting_writes_each_step_once_at_its_time() -> None:
    async def body() -> None:
        night = Night()
        times = night_of(night.eq)
        assert list(times) == ["dusk", "late_evening", "night", "before_dawn", "dawn"]
        entity = await night.start()
        # At noon the step in force is the morning's dawn: the lamps go off, once each.
        assert night.cabinet.levels() == {(False, 100)}
        assert len(night.cabinet.writes) == 4
        assert entity.state["schedule"]["step"] == "dawn"
        expected = {"dusk": (True, 100), "late_evening": (True, 70), "night": (True, 50),
                    "before_dawn": (True, 100), "dawn": (False, 100)}
        for step, level in expected.items():
            before = len(night.cabinet.writes)
            await night.until(times[step] - 1.0)
            assert len(night.cabinet.writes) == before, f"nothing written before {step}"
            await night.until(times[step] + 1.0)
            assert night.cabinet.levels() == {level}, step
            # One write per lamp that needs it: dusk switches on (dim already 100), the
            # dimming steps change dim, dawn switches off.
            assert len(night.cabinet.writes) == before + 4, step
            late = [s - times[step] for s in night.cabinet.stamps[before:]]
            assert all(0 <= d < 1.0 for d in late), (step, late)
            view = entity.schedule_view()
            assert view is not None
            assert (view["name"], view["step"], view["since"]) == (
                "road_lighting", step, round(times[step], 3))
            assert view["next"]["at"] > times[step]
        assert night.cabinet.repeats == 0
        # The times are astral's for Dijon: dusk in the evening, dawn the next morning.
        dusk = datetime.datetime.fromtimestamp(times["dusk"], CITY_TZ)
        dawn = datetime.datetime.fromtimestamp(times["dawn"], CITY_TZ)
        assert 16 <= dusk.hour <= 17 and 7 <= dawn.hour <= 8 and dawn.day == dusk.day + 1
        night.stop()

    run(body)


def test_offsets_from_the_inventory_move_dusk_and_dawn() -> None:
    base = night_of(road_circuit())
    moved = night_of(road_circuit(on_offset_min=25, off_offset_min=0))
    assert moved["dusk"] - base["dusk"] == pytest.approx(15 * 60)
    assert moved["dawn"] - base["dawn"] == pytest.approx(10 * 60)
    assert moved["late_evening"] == base["late_evening"]


def test_a_circuit_without_schedule_is_not_driven() -> None:
    async def body() -> None:
        night = Night(make_equipment("lc-dijon-0002", "lighting_circuit",
                                     profile="lighting_cabinet",
                                     endpoint="modbus://127.0.0.1:15030/2", attrs={"points": 4}))
        entity = await night.start()
        await night.until(NOON + 86_400)
        assert night.cabinet.writes == [] and "schedule" not in entity.state
        assert entity.schedule_view() is None
        night.stop()

    run(body)


def test_a_restart_across_a_transition_applies_it_once() -> None:
    async def body() -> None:
        night = Night()
        times = night_of(night.eq)
        await night.start()
        await night.until(times["late_evening"] - 60)
        saved = night.stop()  # the host dies a minute before 23:00 ...
        await night.until(times["late_evening"] + 300)  # ... and is back five minutes later
        before = len(night.cabinet.writes)
        entity = await night.start(saved)
        assert night.cabinet.levels() == {(True, 70)}
        assert len(night.cabinet.writes) == before + 4
        assert entity.state["schedule"]["step"] == "late_evening"
        # Another restart within the same step applies nothing again.
        saved = night.stop()
        await night.until(times["late_evening"] + 600)
        await night.start(saved)
        assert len(night.cabinet.writes) == before + 4 and night.cabinet.repeats == 0
        # ... and the next transition still comes.
        await night.until(times["night"] + 1)
        assert night.cabinet.levels() == {(True, 50)}
        night.stop()

    run(body)


# -- timed steps: the cabinet takes the schedule's steps by itself ------------------------

EXPECTED = {"dusk": (True, 100), "late_evening": (True, 70), "night": (True, 50),
            "before_dawn": (True, 100), "dawn": (False, 100)}


def test_a_timed_cabinet_takes_each_step_at_its_time_and_no_lamp_is_written() -> None:
    async def body() -> None:
        night = Night(timed=True)
        times = night_of(night.eq)
        entity = await night.start()
        assert night.cabinet.levels() == {(False, 100)} and len(night.cabinet.writes) == 4
        # The first step armed as soon as the step in force is applied.
        assert night.cabinet.arms == [{"step_at": math.floor(times["dusk"]), "step_on": True,
                                       "step_dim": 100}]
        steps = list(EXPECTED)
        for n, step in enumerate(steps):
            await night.until(times[step] - 1.0)
            assert night.cabinet.levels() != {EXPECTED[step]} or n == 0
            await night.until(times[step] + STEP_CHECK_S + 1.0)
            assert night.cabinet.levels() == {EXPECTED[step]}, step
            # Taken by the cabinet at its time (to the second the register holds) ...
            assert 0 <= times[step] - night.cabinet.taken[-1] < 1.0, step
            # ... and neither written at its time nor at the check after it.
            assert len(night.cabinet.writes) == 4, step
            assert entity.state["schedule"]["step"] == step
            if n + 1 < len(steps):
                nxt = steps[n + 1]
                assert night.cabinet.arms[-1] == {
                    "step_at": math.floor(times[nxt]), "step_on": EXPECTED[nxt][0],
                    "step_dim": EXPECTED[nxt][1]}, step
        assert len(night.cabinet.taken) == 5 and night.cabinet.repeats == 0
        night.stop()

    run(body)


def test_a_host_down_across_a_step_the_cabinet_took_writes_nothing_again() -> None:
    async def body() -> None:
        night = Night(timed=True)
        times = night_of(night.eq)
        await night.start()
        await night.until(times["late_evening"] - 60)
        saved = night.stop()  # the host dies a minute before 23:00 ...
        await night.until(times["late_evening"] + 300)  # ... and is back five minutes later
        assert night.cabinet.levels() == {(True, 70)}  # the cabinet took it on time
        entity = await night.start(saved)
        await night.until(night.clock.time() + STEP_CHECK_S + 1.0)
        assert len(night.cabinet.writes) == 4 and night.cabinet.repeats == 0
        assert entity.state["schedule"]["step"] == "late_evening"
        assert night.cabinet.step["step_at"] == math.floor(times["night"])
        await night.until(times["night"] + 1)
        assert night.cabinet.levels() == {(True, 50)} and len(night.cabinet.writes) == 4
        night.stop()

    run(body)


def test_a_cabinet_back_online_after_a_step_it_took_is_not_set_back_to_the_step_before(
) -> None:
    # The host restarts just before 23:00; the circuit hears of its cabinet (a reading asked
    # after 23:00, then the session's verdict) before its own timer for the step comes. The
    # lamps hold the new step: neither the step before nor the new one is written again.
    async def body() -> None:
        night = Night(timed=True)
        times = night_of(night.eq)
        await night.start()
        await night.until(times["late_evening"] - 2)
        saved = night.stop()
        writes = len(night.cabinet.writes)
        assert night.ctx is not None
        await night.ctx.advance_to(times["late_evening"] + 0.5)
        # The new incarnation starts, its session not through yet, its first timer not
        # delivered yet.
        night.cabinet._online = False
        night.ctx = FakeContext(night.eq, night.cabinet, night.clock)
        entity = LightingCircuit(night.ctx)
        night.ctx.entity = entity
        await entity.on_start(saved)
        reading = await night.cabinet.read()  # the cabinet took its step at 23:00
        assert night.cabinet.levels() == {(True, 70)}
        await entity.handle(Envelope(
            target=night.eq.id, type="telemetry", kind=MessageKind.EVENT,
            payload={"seq": 1, "ts": night.clock.time(), "values": dict(reading)}))
        await entity.handle(Envelope(target=night.eq.id, type="device_status",
                                     payload={"online": True}, kind=MessageKind.EVENT))
        await night.ctx.run_timers()
        await night.until(night.clock.time() + STEP_CHECK_S + 1.0)
        assert night.cabinet.levels() == {(True, 70)}
        assert len(night.cabinet.writes) == writes and night.cabinet.repeats == 0
        assert entity.state["schedule"]["step"] == "late_evening"
        assert night.cabinet.step["step_at"] == math.floor(times["night"])
        night.stop()

    run(body)


def test_a_step_the_cabinet_took_though_its_arming_seemed_to_fail_is_not_written_again(
) -> None:
    # The arming of 23:00 reaches the cabinet but its answers are lost: the circuit does not
    # know the cabinet holds the step. At 23:00 its last reading (from before the step) shows
    # the lamps at 100 %; the cabinet has taken the step meanwhile. The circuit asks the
    # cabinet again rather than write 70 % to lamps that hold it.
    async def body() -> None:
        night = Night(timed=True)
        times = night_of(night.eq)
        entity = await night.start()
        # Armed at dusk, and again at the check after it: both answers lost.
        night.cabinet.lost_answers = 2
        await night.until(times["dusk"] + STEP_CHECK_S + 1.0)
        assert night.cabinet.lost_answers == 0
        assert night.cabinet.arms[-1]["step_at"] == math.floor(times["late_evening"])
        assert "armed" not in entity.state  # as far as the circuit knows, not armed
        await night.until(times["late_evening"] - 60)
        reading = await night.cabinet.read()
        await entity.handle(Envelope(
            target=night.eq.id, type="telemetry", kind=MessageKind.EVENT,
            payload={"seq": 99, "ts": night.clock.time(), "values": dict(reading)}))
        writes = len(night.cabinet.writes)
        await night.until(times["late_evening"] + STEP_CHECK_S + 1.0)
        assert night.cabinet.levels() == {(True, 70)}
        assert night.cabinet.taken[-1] == math.floor(times["late_evening"])
        assert len(night.cabinet.writes) == writes and night.cabinet.repeats == 0
        assert entity.state["schedule"]["step"] == "late_evening"
        night.stop()

    run(body)


def test_a_crisis_cancels_the_timed_step_and_its_restore_arms_the_next() -> None:
    async def body() -> None:
        night = Night(timed=True)
        times = night_of(night.eq)
        entity = await night.start()
        await night.until(times["late_evening"] + 60)
        await night.command("crisis-a-lc", caller="crisis", on=True, dim=100)
        # The lamps written: the cabinet's step gave way, and none is armed under the plan.
        assert night.cabinet.step["step_at"] == 0 and entity.state["armed"] == {"step_at": 0}
        await night.until(times["night"] + 60)
        assert night.cabinet.levels() == {(True, 100)}
        await night.command("crisis-b-lc", caller="crisis:restore", dim=70)
        assert night.cabinet.levels() == {(True, 50)}
        assert night.cabinet.step["step_at"] == math.floor(times["before_dawn"])
        # An override past the next step holds the lamps: nothing is armed for it.
        await night.command("op-1", dim=40, for_s=6 * 3600.0)
        assert night.cabinet.step["step_at"] == 0
        await night.until(times["before_dawn"] + 60)
        assert night.cabinet.levels() == {(True, 40)}
        night.stop()

    run(body)


def test_a_step_the_cabinet_did_not_take_is_written_at_the_check() -> None:
    async def body() -> None:
        night = Night(timed=True)
        times = night_of(night.eq)
        await night.start()
        night.cabinet.stuck = True  # armed, but its clock never takes it
        await night.until(times["dusk"] + 1.0)
        assert night.cabinet.levels() == {(False, 100)}
        await night.until(times["dusk"] + STEP_CHECK_S + 1.0)
        assert night.cabinet.levels() == {(True, 100)}
        assert len(night.cabinet.writes) == 8 and night.cabinet.repeats == 0
        night.stop()

    run(body)


# -- overrides and crisis -------------------------------------------------------------

def test_an_operator_override_expires_by_itself() -> None:
    async def body() -> None:
        night = Night()
        times = night_of(night.eq)
        entity = await night.start()
        await night.until(times["late_evening"] + 1800)
        await night.command("c1", dim=30, for_s=600)
        assert night.cabinet.levels() == {(True, 30)}
        layer = entity.state["layers"]["operator"]
        assert layer["until"] == pytest.approx(night.clock.time() + 600)
        await night.until(night.clock.time() + 599)
        assert night.cabinet.levels() == {(True, 30)}
        await night.until(night.clock.time() + 2)
        # Expired: the schedule's step in force (70 %) is back, and the layer is gone.
        assert night.cabinet.levels() == {(True, 70)}
        assert "operator" not in entity.state["layers"]
        # Without a length, an override lasts until the schedule's next step.
        await night.command("c2", dim=20)
        await night.until(times["night"] - 1)
        assert night.cabinet.levels() == {(True, 20)}
        await night.until(times["night"] + 1)
        assert night.cabinet.levels() == {(True, 50)}
        assert night.cabinet.repeats == 0
        night.stop()

    run(body)


def test_a_crisis_holds_over_the_schedule_until_its_restore() -> None:
    async def body() -> None:
        night = Night()
        times = night_of(night.eq)
        entity = await night.start()
        await night.until(times["late_evening"] + 60)
        await night.command("crisis-a-lc", caller="crisis", on=True, dim=100)
        assert night.cabinet.levels() == {(True, 100)}
        # The schedule's next step, beneath the plan, does not win over it ...
        await night.until(times["night"] + 60)
        assert night.cabinet.levels() == {(True, 100)}
        assert entity.state["schedule"]["step"] == "night"
        # ... and the restore brings back what is in force now, not what was before.
        await night.command("crisis-b-lc", caller="crisis:restore", dim=70)
        assert night.cabinet.levels() == {(True, 50)}
        assert "crisis" not in entity.state["layers"]
        night.stop()

    run(body)


def test_an_operator_during_a_crisis_takes_the_field_from_the_plan() -> None:
    async def body() -> None:
        night = Night()
        times = night_of(night.eq)
        entity = await night.start()
        await night.until(times["late_evening"] + 60)
        await night.command("crisis-a-lc", caller="crisis", on=True, dim=100)
        await night.command("op-1", dim=40, for_s=3600)
        assert night.cabinet.levels() == {(True, 40)}
        assert entity.state["layers"]["crisis"]["set"] == {"on": True}
        night.stop()

    run(body)


# -- lamps one by one -------------------------------------------------------------------

def test_set_writes_only_the_named_lamps_and_refuses_one_the_circuit_lacks() -> None:
    async def body() -> None:
        night = Night()
        await night.start()
        before = len(night.cabinet.writes)
        await night.command("l1", lamps=[2, 4], on=True, dim=30)
        assert night.cabinet.writes[before:] == [("lamp.2.on", True), ("lamp.4.on", True),
                                                 ("lamp.2.dim", 30.0), ("lamp.4.dim", 30.0)]
        assert [lamp["on"] for lamp in night.cabinet.lamps] == [False, True, False, True]
        with pytest.raises(RejectedError):
            await night.command("l2", lamps=[5], dim=30)
        night.stop()

    run(body)


@pytest.mark.parametrize(("params", "field"), [
    ({"lamps": [9], "dim": 10}, "params.lamps"),
    ({"lamps": [0], "dim": 10}, "params.lamps"),
    ({"lamps": "1", "dim": 10}, "params.lamps"),
    ({"lamps": [1, 1], "dim": 10}, "params.lamps"),
    ({"lamps": [1], "dim": 10, "for_s": 60}, "params.for_s"),
    ({"dim": 10, "for_s": -5}, "params.for_s"),
    ({"dim": 10, "for_s": float("nan")}, "params.for_s"),
    ({"lamps": [1]}, "params"),
    ({"dim": 120}, "params.dim"),
])
def test_bad_lamp_commands_are_refused_at_the_edge(params: dict[str, Any], field: str) -> None:
    eq = road_circuit()
    with pytest.raises(InvalidCommandError) as err:
        LightingCircuit.validate_for_equipment(
            eq, LightingCircuit.validate_command("set", params))
    assert err.value.field == field


def test_good_lamp_and_override_commands_pass_the_edge() -> None:
    eq = road_circuit()
    clean = LightingCircuit.validate_for_equipment(
        eq, LightingCircuit.validate_command("set", {"lamps": [1, 4], "dim": 10}))
    assert clean == {"lamps": [1, 4], "dim": 10.0}
    assert LightingCircuit.validate_command("set", {"dim": 10, "for_s": 60}) == {
        "dim": 10.0, "for_s": 60.0}


# -- energy -------------------------------------------------------------------------------

def test_counter_delta_tells_steps_resets_wraps_and_jumps() -> None:
    assert counter_delta(1000, 1040) == (40, "")
    assert counter_delta(5000, 3) == (3, "reset")
    assert counter_delta(COUNTER_RANGE - 20, 15) == (35, "wrap")
    assert counter_delta(40, COUNTER_RANGE - 50) == (0, "jump")
    assert counter_delta(7, 7) == (0, "")


def telemetry(ts: float, counters: list[int], seq: int) -> Envelope:
    lamps = [{"on": True, "dim": 100, "power_w": 70.0, "energy_wh": c, "fault_bits": 0}
             for c in counters]
    return Envelope(target="lc-dijon-0001", type="telemetry", kind=MessageKind.EVENT,
                    payload={"seq": seq, "ts": ts, "values": {"seq": seq, "lamp": lamps}})


def test_energy_is_metered_per_hour_across_resets_and_wraps() -> None:
    async def body() -> None:
        night = Night(road_circuit(lamp_w=70, legacy_w=150), lamps=2)
        entity = await night.start()
        hour = 3600.0 * (int(NOON // 3600) + 6)  # 18:00 local, lamps lit
        top = COUNTER_RANGE - 30
        readings = [
            (hour - 900, [1000, top - 100]),
            (hour - 300, [1010, top - 60]),   # 10 + 40 Wh, in the hour before
            (hour + 300, [2, top - 20]),      # lamp 1 reset (2 Wh), lamp 2 +40 Wh: spread 50/50
            (hour + 900, [12, 10]),           # lamp 1 +10, lamp 2 wrapped: +60
        ]
        for seq, (ts, counters) in enumerate(readings, 1):
            await night.until(ts)
            await entity.handle(telemetry(ts, counters, seq))
        hours = entity.state["energy"]["hours"]
        before, after = hours[str(int(hour - 3600))], hours[str(int(hour))]
        assert before[0] == pytest.approx(50 + 21)
        assert after[0] == pytest.approx(21 + 70)
        assert (before[2], after[2], after[3]) == (0, 1, 1)  # the reset, the wrap
        # The hour from 18:00 is all between dusk and dawn in November.
        assert after[1] == pytest.approx(3600.0)
        assert after[1] == pytest.approx(lit_seconds(night.eq, hour, hour + 3600))
        date = datetime.datetime.fromtimestamp(hour, CITY_TZ).date()
        model = night.ctx.models[energy_model_name(night.eq.id, date)]  # type: ignore[union-attr]
        assert (model["lamps"], model["lamp_w"], model["legacy_w"]) == (2, 70.0, 150.0)
        assert model["hours"][str(int(hour - 3600))][0] == pytest.approx(71)
        events = [f for e, f in night.ctx.events if e == "energy_counters"]  # type: ignore[union-attr]
        assert events == [{"resets": 1, "wraps": 0, "jumps": 0},
                          {"resets": 0, "wraps": 1, "jumps": 0}]
        night.stop()

    run(body)


def test_lit_seconds_cover_dusk_to_dawn() -> None:
    eq = road_circuit()
    times = night_of(eq)
    assert lit_seconds(eq, NOON, NOON + 86_400) == pytest.approx(times["dawn"] - times["dusk"])
    assert lit_seconds(eq, NOON, times["dusk"]) == 0.0


# -- the simulator's side ---------------------------------------------------------------

def simulated_cabinet(eid: str, port: int, points: int) -> tuple[Equipment, Any]:
    """A cabinet of ``points`` 70-W lamps and its simulator, ticked by hand, lamps that
    never fail."""
    from devices.sim.lighting import LightingSimulator

    eq = make_equipment(eid, "lighting_circuit", profile="lighting_cabinet",
                        endpoint=f"modbus://127.0.0.1:{port}/1",
                        attrs={"points": points, "lamp_w": 70})
    return eq, LightingSimulator([eq], autotick=False, failure_rate_per_h=0.0)


def test_the_simulator_integrates_power_and_resets_or_wraps_counters_on_demand() -> None:
    from devices.sim.lighting import WRAP_HEADROOM_WH

    async def body() -> None:
        eq, sim = simulated_cabinet("lc-dijon-0001", 15030, 2)
        await sim.tick(3600.0)
        values = sim.held_values(eq.id)
        assert [lamp["energy_wh"] for lamp in values["lamp"]] == [70, 70]
        assert values["sim"]["burnt_wh"] == pytest.approx(140.0)
        await sim.fault(eq.id, "counter_wrap", True)
        hours = WRAP_HEADROOM_WH // 70 + 1
        await sim.tick(3600.0 * hours)
        # Short of the top, then more than that: past 2^32, the counter starts again.
        assert [lamp["energy_wh"] for lamp in sim.held_values(eq.id)["lamp"]] == [
            70 * hours - WRAP_HEADROOM_WH] * 2
        await sim.fault(eq.id, "counter_reset", True)
        values = sim.held_values(eq.id)
        assert [lamp["energy_wh"] for lamp in values["lamp"]] == [0, 0]
        assert values["sim"]["burnt_wh"] == pytest.approx(140.0 * (hours + 1))
        assert (values["sim"]["counter_resets"], values["sim"]["counter_wraps"]) == (1, 1)

    run(body)


def test_the_equipment_view_shows_the_schedule_the_circuit_recorded() -> None:
    from runtime.envelope import pack
    from runtime.service import _equipment_record

    async def body() -> dict[str, Any]:
        night = Night()
        times = night_of(night.eq)
        entity = await night.start()
        await night.until(times["night"] + 5)
        cp = night.stop()
        assert entity.state["schedule"]["step"] == "night"
        return _equipment_record(night.eq, {"status": "running", "online": True},
                                 pack(cp.to_dict()), False)

    record = run(body)
    schedule = record["schedule"]
    assert (schedule["name"], schedule["step"]) == ("road_lighting", "night")
    assert schedule["next"]["step"] == "before_dawn" and schedule["next"]["at"] > schedule["since"]
    assert "schedule" not in _equipment_record(road_circuit(), {}, None, False)


def test_the_cabinet_s_registers_are_its_values_encoded_after_ticks_writes_and_faults() -> None:
    async def body() -> None:
        eq, sim = simulated_cabinet("lc-dijon-0002", 15031, 6)
        profile = sim.profile
        dim = next(s for s in profile.fields if s.name == "broadcast_dim")
        on = next(s for s in profile.fields if s.name == "broadcast_on")
        server, unit = sim.location(eq.id)
        assert server.on_write is not None
        first = profile.register_span(eq.attrs)[0]

        def expected() -> list[int]:
            # Every field encoded from scratch, from what the model holds now.
            values = sim.held_values(eq.id)
            regs = list(sim.registers(eq.id))
            for spec in profile.fields:
                if spec.name != "seq":
                    assert spec.address is not None
                    at = spec.address - first
                    regs[at:at + spec.width] = spec.encode(values[spec.name])
            for block in profile.blocks:
                assert block.base is not None and block.stride is not None
                for i, item in enumerate(values[block.name]):
                    for spec in block.fields:
                        assert spec.address is not None
                        at = block.base + i * block.stride + spec.address - first
                        regs[at:at + spec.width] = spec.encode(item[spec.name])
            return regs

        assert dim.address is not None and on.address is not None
        for step, level in enumerate((40, 40, 100, 0, 40)):
            assert server.on_write(unit, dim.address, [level]) is None
            assert server.on_write(unit, on.address, [step % 2]) is None
            await sim.tick(600.0)
            if step == 2:
                await sim.fault(eq.id, "counter_reset", True)
            assert sim.registers(eq.id) == expected(), step

    run(body)


def test_a_simulator_remembers_encodings_by_type_and_value_and_refuses_as_the_field_does(
) -> None:
    from devices.modbus import _check_registers
    from devices.profile import builtin_profile
    from devices.sim import _MEMO_SIZE, _Codec

    profile = builtin_profile("lighting_cabinet")
    dim = _Codec(next(s for s in profile.fields if s.name == "broadcast_dim"))
    flag = _Codec(next(s for s in profile.fields if s.name == "broadcast_on"))
    assert dim.encode(1) == [1] and flag.encode(True) == [1]
    # 1 was seen, True never was for a number: refused as the field refuses it.
    with pytest.raises(RejectedError):
        dim.encode(True)
    with pytest.raises(RejectedError):
        dim.encode(101)
    counter = _Codec(next(s for b in profile.blocks for s in b.fields if s.name == "energy_wh"))
    for wh in range(3 * _MEMO_SIZE):
        assert counter.encode(wh) == [wh >> 16, wh & 0xFFFF]
    assert len(counter.memo) <= _MEMO_SIZE
    _check_registers([0, 65535, 7])
    _check_registers([])
    for bad in ([True], [65536], [-1], [1.0], [0, 3, None]):
        with pytest.raises(ValueError, match="outside"):
            _check_registers(bad)  # type: ignore[arg-type]
