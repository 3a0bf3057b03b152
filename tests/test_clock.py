"""The city's clock: one spec, the same time in every process, at its speed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest

from runtime.clock import (
    CITY_TZ,
    ClockSpec,
    ManualClock,
    ScaledClock,
    SystemClock,
    clock_from_wire,
)
from runtime.errors import ConfigError


def test_the_default_spec_is_the_machines_clock() -> None:
    assert isinstance(ClockSpec().clock(), SystemClock)
    assert isinstance(clock_from_wire(None), SystemClock)
    assert ClockSpec.starting_now().real
    assert SystemClock.speed == ManualClock.speed == 1.0


def test_a_scaled_clock_runs_at_its_speed_from_its_start() -> None:
    start = 1_781_560_800.0  # 2026-06-16 00:00 in Paris (CEST)
    spec = ClockSpec.starting_now(speed=100.0, start=start)
    clock = spec.clock()
    assert isinstance(clock, ScaledClock) and clock.speed == 100.0
    t0, m0, r0 = clock.time(), clock.monotonic(), time.monotonic()
    assert abs(t0 - start) < 100.0 * 0.5  # half a second of the machine's at most
    time.sleep(0.2)
    elapsed = time.monotonic() - r0
    assert clock.time() - t0 == pytest.approx(elapsed * 100.0, abs=100.0 * 0.05)
    assert clock.monotonic() - m0 == pytest.approx(elapsed * 100.0, abs=100.0 * 0.05)


def test_a_scaled_sleep_takes_its_share_of_the_machines_time() -> None:
    clock = ClockSpec.starting_now(speed=50.0).clock()

    async def nap() -> float:
        t = time.monotonic()
        await clock.sleep(10.0)  # 10 s of the city: 0.2 s of the machine
        return time.monotonic() - t

    took = asyncio.run(nap())
    assert 0.18 <= took < 1.0


def test_another_process_on_the_spec_reads_the_same_time() -> None:
    spec = ClockSpec.starting_now(speed=200.0, start=1_700_000_000.0)
    code = ("import json, sys; from runtime.clock import clock_from_wire; "
            "print(clock_from_wire(json.loads(sys.argv[1])).time())")
    before = spec.clock().time()
    out = subprocess.run([sys.executable, "-c", code, json.dumps(spec.to_wire())],
                         capture_output=True, text=True, check=True, timeout=60)
    after = spec.clock().time()
    assert before <= float(out.stdout) <= after


@pytest.mark.parametrize("wire", [
    {"speed": 0, "origin": 1.0, "start": 1.0},
    {"speed": float("nan"), "origin": 1.0, "start": 1.0},
    {"speed": 1e9, "origin": 1.0, "start": 1.0},
    {"speed": 2.0, "origin": float("inf"), "start": 1.0},
    {"speed": 2.0},
    {"speed": "fast", "origin": 1.0, "start": 1.0},
])
def test_bad_specs_are_refused(wire: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ClockSpec.from_wire(wire)


def test_the_city_keeps_paris_time_with_daylight_saving() -> None:
    import datetime

    winter = datetime.datetime(2026, 1, 15, 12, tzinfo=CITY_TZ)
    summer = datetime.datetime(2026, 7, 15, 12, tzinfo=CITY_TZ)
    assert winter.utcoffset() == datetime.timedelta(hours=1)
    assert summer.utcoffset() == datetime.timedelta(hours=2)


class _Host:
    """What a cell needs of its host: a machine clock, a city clock, a router, a journal."""

    def __init__(self) -> None:
        self.clock = SystemClock()
        self.city_clock = ClockSpec.starting_now(speed=100.0, start=1_781_560_800.0).clock()
        self.routed: list[object] = []
        self.journaled: list[object] = []

    def route(self, env: object) -> None:
        self.routed.append(env)

    async def submit_commands(self, entity_id: str, commands: list[object]) -> list[object]:
        self.journaled += commands
        return commands


def test_an_entitys_deadlines_become_the_machines_keeping_their_distance() -> None:
    from runtime.cell import EntitySlot, _Context
    from runtime.commands import Command
    from runtime.envelope import Envelope
    from runtime.mailbox import Mailbox
    from tests.helpers import make_equipment

    host = _Host()
    slot = EntitySlot(make_equipment("veh-0"), lambda ctx: None,  # type: ignore[arg-type, return-value]
                      Mailbox(8))
    ctx = _Context(slot, host)  # type: ignore[arg-type]
    city_now = ctx.clock.time()
    ctx.send(Envelope(target="veh-1", type="command", deadline=city_now + 30.0))
    ctx.send(Envelope(target="veh-2", type="command"))
    sent, plain = host.routed
    assert sent.deadline == pytest.approx(time.time() + 30.0, abs=1.0)  # type: ignore[attr-defined]
    assert plain.deadline == 0.0  # type: ignore[attr-defined]
    asyncio.run(ctx.submit([Command(command_id="c1", target="veh-1", action="job", params={},
                                    caller="dispatch", created_ts=city_now,
                                    deadline_ts=city_now + 30.0)]))
    (cmd,) = host.journaled
    assert cmd.created_ts == pytest.approx(time.time(), abs=1.0)  # type: ignore[attr-defined]
    assert cmd.deadline_ts == pytest.approx(time.time() + 30.0, abs=1.0)  # type: ignore[attr-defined]
