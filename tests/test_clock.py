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
