"""A night of street lighting end to end: the circuits' schedules drive the simulated
cabinets over Modbus TCP on an accelerated clock, and the energy the API reports is the
simulator's own, counter reset and wrap included (``commandpost bench energy``, small)."""

from __future__ import annotations

import datetime
import json

import pytest

from runtime.bench.energy import run

pytestmark = pytest.mark.usefixtures("ray_runtime")

SPEED = 600.0


def test_a_night_of_street_lighting_through_the_simulator() -> None:
    said: list[str] = []
    # From noon: the city has four hours of its time (24 s) to come up before the lamps'
    # energy is first read, an hour before dusk.
    out = run(scale=0.02, clock_speed=SPEED, say=said.append, start_at=datetime.time(12, 0))
    assert out["circuits"] >= 10 and out["lamps"] > 100, json.dumps(out)
    # The metered energy is the simulator's, within 1 %, through a reset and a wrap ...
    assert out["simulated_kwh"] > 0 and out["error_pct"] <= 1.0, json.dumps(out)
    assert out["counter_resets"] >= 1 and out["counter_wraps"] >= 1, json.dumps(out)
    # ... and the schedule's arithmetic within 3 % (ticks of the simulator, failures).
    assert abs(out["analytic_error_pct"]) <= 3.0, json.dumps(out)
    # Five steps a night, each one write per lamp, none of a value the lamp held on the
    # hosts that ran all night. A host restarted just before a step may rewrite lamps
    # that hold it already (the bench counts them under kill.repeats): at most once each.
    assert out["transitions"] == 5 * out["circuits"], json.dumps(out)
    kill = out["kill"]
    assert out["repeats"] == kill["repeats"], json.dumps(out)
    assert kill["repeats"] <= out["lamps"], json.dumps(out)
    assert 1.0 <= out["writes_per_lamp_step"] <= 1.05, json.dumps(out)
    # Each step at its own time: a step taken at the wrong hour (time zone, summer
    # time, the wrong day's sun) is an hour or more off; the cabinets take the steps
    # armed by their circuits by themselves, to the second.
    assert out["transition_late_s"] <= 1200.0, json.dumps(out)
    assert out["transition_late_p50_s"] <= 1.0, json.dumps(out)
    # A host killed just before the 01:00 step: its cabinets took it all the same.
    assert kill["circuits"] >= 1 and kill["recovered_s"] is not None, json.dumps(out)
    assert kill["step_missed"] == 0 and kill["step_late_s"] <= 1.0, json.dumps(out)
    # The API shows the circuit's schedule, and refuses a lamp it lacks before the cabinet.
    assert out["schedule_shown"] is True, json.dumps(out)
    assert (out["bad_lamp_status"], out["bad_lamp_writes"]) == (422, 0), json.dumps(out)
    # Dimming saves against full power all night; LEDs save more against sodium lamps.
    assert 10.0 < out["dimming_saving_pct"] < out["legacy_saving_pct"] < 90.0, json.dumps(out)
