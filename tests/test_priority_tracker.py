"""The bus tracker: check-ins, check-outs and cancels from bus positions, and the bad
input that must not bring spurious ones."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.priority.tracker import BusSample, BusTracker, CancelReason, EventKind, TrackEvent
from runtime.errors import ConfigError
from runtime.transit import INBOUND, OUTBOUND, destination, line_geometry
from tests.transit_fakes import make_inventory, make_line

LINE = make_line()                                           # with a timetable
UNTIMED = dataclasses.replace(make_line("L8", timetable=False), id="L8")
GEOMETRY = line_geometry(LINE)
FIRST, CORNER = LINE.crossings                               # stop lines 575/625, 1175/1225
T0 = 1_700_000_000.0
BUS = "bus-dijon-0001"


def at(s: float, ts: float, *, direction: str | None = OUTBOUND, speed: float = 10.0,
       line: str = "L7", delay: float | None = 30.0, aside: float = 0.0,
       heading: float | None = None) -> dict[str, Any]:
    """A bus position ``s`` metres along the test line (``aside`` metres to its right)."""
    lat, lon = GEOMETRY.point_at(s)
    along = GEOMETRY.heading_at(s, direction or OUTBOUND)
    if aside:
        lat, lon = destination((lat, lon), along + 90.0, aside)
    sample: dict[str, Any] = {"ts": ts, "lat": lat, "lon": lon, "speed": speed,
                              "heading": along if heading is None else heading,
                              "seq": int(ts - T0), "line": line}
    if direction is not None:
        sample["direction"] = direction
    if delay is not None:
        sample["delay_s"] = delay
    return sample


def feed(tracker: BusTracker, samples: Iterable[dict[str, Any]], bus: str = BUS,
         lag: float = 0.1) -> list[TrackEvent]:
    events: list[TrackEvent] = []
    for sample in samples:
        events += tracker.update(bus, sample, float(sample["ts"]) + lag)
    return events


def drive(start: float, end: float, speed: float = 10.0, t0: float = T0,
          **kwargs: Any) -> list[dict[str, Any]]:
    """One position a second, from ``start`` to ``end`` metres along the line."""
    step = speed if end >= start else -speed
    count = int(abs(end - start) // speed) + 1
    return [at(start + i * step, t0 + i, speed=speed, **kwargs) for i in range(count)]


def kinds(events: Iterable[TrackEvent]) -> list[tuple[str, str, str | None]]:
    return [(e.kind.value, e.crossroad, e.reason.value if e.reason else None) for e in events]


def tracker(**options: Any) -> BusTracker:
    return BusTracker({"L7": LINE, "L8": UNTIMED}, **options)


# --------------------------------------------------------------------------- driving


def test_a_bus_checks_in_and_out_once_at_each_crossroad() -> None:
    events = feed(tracker(), drive(0.0, 2000.0))
    assert kinds(events) == [("check_in", "xr-dijon-0001", None),
                             ("check_out", "xr-dijon-0001", None),
                             ("check_in", "xr-dijon-0002", None),
                             ("check_out", "xr-dijon-0002", None)]
    check_in, check_out = events[0], events[1]
    # At 10 m/s the ETA (20 s) reaches further than the detection distance (150 m).
    assert check_in.distance_m is not None and 190.0 <= check_in.distance_m <= 200.0
    assert check_in.eta_s == pytest.approx(check_in.distance_m / 10.0, abs=0.1)
    assert check_in.approach == 3 and check_in.direction == OUTBOUND
    assert check_in.lateness_s == 30.0  # the bus's delay_s against the timetable
    assert check_in.line == "L7" and check_in.request == 1 and check_out.request == 1
    assert check_out.ts - T0 == pytest.approx(58.0)  # the first position past 574.5 m
    assert [e.request for e in events] == [1, 1, 2, 2]


def test_inbound_the_bus_comes_in_on_the_other_approaches() -> None:
    events = feed(tracker(), drive(2000.0, 0.0, direction=INBOUND))
    assert kinds(events) == [("check_in", "xr-dijon-0002", None),
                             ("check_out", "xr-dijon-0002", None),
                             ("check_in", "xr-dijon-0001", None),
                             ("check_out", "xr-dijon-0001", None)]
    assert [e.approach for e in events] == [2, 2, 1, 1]
    assert all(e.direction == INBOUND for e in events)
    assert events[1].ts - T0 == pytest.approx(78.0)  # the first position below 1224 m


def test_a_slow_bus_checks_in_at_the_detection_distance() -> None:
    events = feed(tracker(), drive(300.0, 700.0, speed=2.0))
    check_in = events[0]
    assert check_in.kind == EventKind.CHECK_IN
    assert 148.0 <= (check_in.distance_m or 0.0) <= 150.0
    assert check_in.eta_s == pytest.approx((check_in.distance_m or 0.0) / 2.0, abs=0.1)


def test_dwelling_at_a_stop_before_the_stop_line_cancels_then_checks_in_again() -> None:
    samples = drive(400.0, 550.0)                                # to the stop at 560 m
    t = float(samples[-1]["ts"])
    samples += [at(560.0, t + 1 + i, speed=0.0) for i in range(20)]  # doors open
    samples += drive(565.0, 700.0, t0=t + 21)
    events = feed(tracker(), samples)
    assert kinds(events) == [("check_in", "xr-dijon-0001", None),
                             ("cancel", "xr-dijon-0001", "dwell"),
                             ("check_in", "xr-dijon-0001", None),
                             ("check_out", "xr-dijon-0001", None)]
    assert [e.request for e in events] == [1, 1, 2, 2]
    assert events[1].ts == t + 1  # at once, not at every position of the dwell


def test_standing_in_traffic_away_from_a_stop_is_not_a_dwell() -> None:
    samples = drive(400.0, 520.0)
    t = float(samples[-1]["ts"])
    samples += [at(530.0, t + 1 + i, speed=0.0) for i in range(10)]  # 30 m before the stop
    samples += drive(535.0, 600.0, t0=t + 11)
    assert kinds(feed(tracker(), samples)) == [("check_in", "xr-dijon-0001", None),
                                               ("check_out", "xr-dijon-0001", None)]


def test_leaving_the_line_cancels() -> None:
    samples = drive(400.0, 450.0)
    t = float(samples[-1]["ts"])
    samples += [at(460.0, t + 1, aside=20.0), at(470.0, t + 2, aside=60.0),
                at(480.0, t + 3, aside=80.0), at(490.0, t + 4), at(500.0, t + 5)]
    events = feed(tracker(), samples)
    assert kinds(events) == [("check_in", "xr-dijon-0001", None),
                             ("cancel", "xr-dijon-0001", "off_line"),
                             ("check_in", "xr-dijon-0001", None)]
    assert events[1].ts == t + 2


def test_turning_back_cancels() -> None:
    samples = drive(400.0, 450.0)
    t = float(samples[-1]["ts"])
    # Still reporting outbound, but heading and moving back.
    samples += [at(440.0, t + 1, heading=180.0), at(430.0, t + 2, heading=180.0)]
    events = feed(tracker(), samples)
    assert kinds(events) == [("check_in", "xr-dijon-0001", None),
                             ("cancel", "xr-dijon-0001", "reversed")]
    # A bus that says so turns back too.
    samples = drive(400.0, 450.0) + drive(440.0, 400.0, t0=t + 1, direction=INBOUND)
    events = feed(tracker(), samples)
    assert kinds(events) == [("check_in", "xr-dijon-0001", None),
                             ("cancel", "xr-dijon-0001", "reversed")]


def test_a_direction_that_does_not_fit_brings_no_check_in() -> None:
    # Claims inbound while it heads and drives outbound.
    samples = [dict(s, direction=INBOUND) for s in drive(300.0, 700.0)]
    t = tracker()
    assert feed(t, samples) == []
    # Without a direction, the heading and the move tell it.
    assert kinds(feed(tracker(), drive(300.0, 700.0, direction=None))) == [
        ("check_in", "xr-dijon-0001", None), ("check_out", "xr-dijon-0001", None)]
    # A bus checked in whose position stops fitting its direction is cancelled.
    samples = drive(400.0, 450.0)
    samples.append(at(460.0, float(samples[-1]["ts"]) + 1, heading=90.0))  # sideways
    samples.append(dict(at(470.0, float(samples[-1]["ts"]) + 1), direction=INBOUND))
    assert kinds(feed(tracker(), samples)) == [("check_in", "xr-dijon-0001", None),
                                               ("cancel", "xr-dijon-0001", "direction")]


def test_another_line_cancels() -> None:
    samples = drive(400.0, 450.0)
    samples.append(at(460.0, float(samples[-1]["ts"]) + 1, line="L8"))
    events = feed(tracker(), samples)
    assert kinds(events)[:2] == [("check_in", "xr-dijon-0001", None),
                                 ("cancel", "xr-dijon-0001", "line_changed")]
    assert events[2].line == "L8" and events[2].kind == EventKind.CHECK_IN


# --------------------------------------------------------------------------- time


def test_a_silent_bus_is_cancelled_by_the_timer() -> None:
    t = tracker()
    samples = drive(400.0, 450.0)
    events = feed(t, samples)
    last = float(samples[-1]["ts"])
    assert t.expire(last + 2.0) == []
    (cancel,) = t.expire(last + 3.5)
    assert (cancel.kind, cancel.reason, cancel.ts) == (EventKind.CANCEL, CancelReason.STALE,
                                                       last + 3.5)
    assert cancel.request == events[0].request
    assert t.expire(last + 10.0) == []
    # The bus comes back: a new check-in.
    events = feed(t, [at(470.0, last + 12.0)])
    assert kinds(events) == [("check_in", "xr-dijon-0001", None)] and events[0].request == 2


def test_stale_positions_close_a_check_in_before_the_next_is_made() -> None:
    t = tracker()
    samples = drive(400.0, 450.0)
    feed(t, samples)
    last = float(samples[-1]["ts"])
    events = feed(t, [at(470.0, last + 5.0)])  # the timer did not run
    assert kinds(events) == [("cancel", "xr-dijon-0001", "stale"),
                             ("check_in", "xr-dijon-0001", None)]


def test_old_future_and_repeated_positions_are_ignored() -> None:
    clean = feed(tracker(), drive(0.0, 800.0))
    t = tracker()
    events: list[TrackEvent] = []
    previous: dict[str, Any] | None = None
    for sample in drive(0.0, 800.0):
        now = float(sample["ts"]) + 0.1
        events += t.update(BUS, sample, now)
        events += t.update(BUS, sample, now)                     # duplicate
        if previous is not None:
            events += t.update(BUS, previous, now)               # out of order
        events += t.update(BUS, dict(sample, ts=now - 10.0), now)  # stale
        events += t.update(BUS, dict(sample, ts=now + 30.0), now)  # from the future
        previous = sample
    assert events == clean
    assert t.ignored["out_of_order"] == 2 * 81 - 1
    assert t.ignored["stale"] == 81 and t.ignored["future"] == 81


def test_a_jump_is_ignored_and_two_that_agree_relocate_the_bus() -> None:
    samples = drive(0.0, 800.0)
    far = destination(GEOMETRY.point_at(300.0), 45.0, 3000.0)
    teleported = [dict(s, lat=far[0], lon=far[1]) if i == 45 else s
                  for i, s in enumerate(samples)]
    t = tracker()
    assert feed(t, teleported) == feed(tracker(), samples)
    assert t.ignored["jump"] == 1
    # Checked in at 450 m, then twice at 1700 m: the bus is really there.
    samples = drive(400.0, 450.0)
    last = float(samples[-1]["ts"])
    samples += [at(1700.0, last + 1), at(1710.0, last + 2), at(1720.0, last + 3)]
    t = tracker()
    assert kinds(feed(t, samples)) == [("check_in", "xr-dijon-0001", None),
                                       ("cancel", "xr-dijon-0001", "relocated")]
    assert t.ignored["jump"] == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"ts": T0, "lat": 47.3, "lon": 5.04, "speed": 3.0, "heading": 0.0},  # no line
        {"ts": T0, "lat": float("nan"), "lon": 5.04, "speed": 3.0, "heading": 0.0,
         "line": "L7"},
        {"ts": T0, "lat": "47.3", "lon": 5.04, "speed": 3.0, "heading": 0.0, "line": "L7"},
        {"ts": T0, "lat": 95.0, "lon": 5.04, "speed": 3.0, "heading": 0.0, "line": "L7"},
        {"ts": T0, "lat": 47.3, "lon": 5.04, "speed": -1.0, "heading": 0.0, "line": "L7"},
        {"ts": T0, "lat": 47.3, "lon": 5.04, "speed": 1.0, "heading": 0.0, "line": 7},
        ["not", "a", "map"],
    ],
)
def test_malformed_positions_are_ignored(bad: Any) -> None:
    t = tracker()
    assert t.update(BUS, bad, T0) == []
    assert t.ignored == {"malformed": 1}
    assert t.buses() == ()


def test_an_unknown_line_is_ignored() -> None:
    t = tracker()
    assert feed(t, drive(300.0, 700.0, line="L99")) == []
    assert t.ignored["unknown_line"] == 41 and t.buses() == ()


def test_on_an_accelerated_clock_ages_are_in_machine_seconds() -> None:
    # A position a second of the machine, 60 city seconds apart, received 0.1 s late.
    samples = [at(100.0 + 60 * i * 1.0, T0 + 60 * i, speed=1.0) for i in range(10)]
    t = tracker(clock_speed=60.0)
    events = feed(t, samples, lag=6.0)
    assert kinds(events) == [("check_in", "xr-dijon-0001", None),
                             ("check_out", "xr-dijon-0001", None)]
    assert feed(tracker(), samples, lag=6.0) == []  # every position stale at speed 1
    assert t.expire(float(samples[-1]["ts"]) + 120.0) == []


# --------------------------------------------------------------------------- lateness


def test_lateness_against_the_free_flow_schedule_without_a_timetable() -> None:
    # At the first stop for 10 s, then at 5 m/s: half the line's free-flow speed.
    samples = [at(0.0, T0 + i, speed=0.0, line="L8", delay=None) for i in range(10)]
    samples += [at(5.0 * i, T0 + 9 + i, speed=5.0, line="L8", delay=None)
                for i in range(1, 100)]
    events = feed(tracker(), samples)
    check_in = events[0]
    assert check_in.kind == EventKind.CHECK_IN
    s = 574.5 - (check_in.distance_m or 0.0)
    # Driven s metres in s / 5 seconds where free flow takes s / 10.
    assert check_in.lateness_s == pytest.approx(s / 5.0 - s / 10.0, abs=0.6)
    # A bus first seen in the middle of its trip has no known lateness.
    events = feed(tracker(), [at(5.0 * i, T0 + i, speed=5.0, line="L8", delay=None)
                              for i in range(60, 100)])
    assert events[0].kind == EventKind.CHECK_IN and events[0].lateness_s is None
    # A bus of a timetabled line that does not say its delay is measured the same way.
    events = feed(tracker(), [dict(s, line="L7") for s in samples])
    assert events[0].lateness_s == check_in.lateness_s


def test_the_free_flow_lateness_counts_the_dwell_at_each_stop_passed() -> None:
    # Drive at free-flow speed to the corner, dwelling 20 s at the stop at 560 m.
    samples = [at(0.0, T0, speed=0.0, line="L8", delay=None)]
    samples += [at(10.0 * i, T0 + i, speed=10.0, line="L8", delay=None) for i in range(1, 57)]
    samples += [at(560.0, T0 + 56 + i, speed=0.0, line="L8", delay=None) for i in range(1, 21)]
    samples += [at(560.0 + 10.0 * i, T0 + 76 + i, speed=10.0, line="L8", delay=None)
                for i in range(1, 60)]
    events = feed(tracker(), samples)
    corner = [e for e in events if e.crossroad == "xr-dijon-0002" and e.kind == "check_in"]
    assert len(corner) == 1 and corner[0].lateness_s is not None
    assert abs(corner[0].lateness_s) <= 1.5


# --------------------------------------------------------------------------- the pool's view


def test_drop_checked_in_and_from_inventory() -> None:
    t = BusTracker.from_inventory(make_inventory())
    events = feed(t, drive(400.0, 450.0))
    assert t.checked_in() == {BUS: events[0]}
    (cancel,) = t.drop(BUS, T0 + 10.0)
    assert cancel.reason == CancelReason.DROPPED and cancel.request == events[0].request
    assert t.checked_in() == {} and t.buses() == () and t.drop(BUS, T0 + 11.0) == []


def test_silent_buses_are_forgotten() -> None:
    t = tracker(forget_after_s=60.0)
    feed(t, drive(0.0, 50.0))
    assert t.buses() == (BUS,)
    assert t.expire(T0 + 30.0) == []
    assert t.buses() == (BUS,)
    t.expire(T0 + 200.0)
    assert t.buses() == ()


def test_thresholds_are_checked() -> None:
    for bad in ({"detection_distance_m": -1.0}, {"max_age_s": float("nan")},
                {"clock_speed": 0.0}, {"off_line_m": "30"}):
        with pytest.raises(ConfigError):
            tracker(**bad)


def test_a_bus_sample_reads_the_profile_fields() -> None:
    sample = BusSample.of(at(100.0, T0))
    assert (sample.line, sample.direction, sample.delay_s, sample.seq) == ("L7", OUTBOUND,
                                                                        30.0, 0)
    assert BusSample.of(dict(at(100.0, T0), delay_s=float("inf"))).delay_s is None
    assert BusSample.of(sample) is sample


# --------------------------------------------------------------------------- property

_SAMPLE = st.fixed_dictionaries({
    "op": st.just("sample"),
    "bus": st.sampled_from(["b1", "b2"]),
    "s": st.floats(-200.0, 2300.0),
    "aside": st.sampled_from([0.0, 0.0, 0.0, 8.0, 45.0, 400.0, 6000.0]),
    "dt": st.sampled_from([1.0, 1.0, 1.0, 0.0, -2.0, 4.0, 30.0]),
    "lag": st.sampled_from([0.1, 0.1, 5.0, -4.0]),
    "speed": st.sampled_from([0.0, 0.3, 4.0, 10.0, 25.0]),
    "heading": st.sampled_from([None, None, None, 0.0, 90.0, 180.0, 270.0]),
    "direction": st.sampled_from([OUTBOUND, OUTBOUND, INBOUND, INBOUND, None, "sideways"]),
    "line": st.sampled_from(["L7", "L7", "L8", "L99"]),
    "step": st.floats(-60.0, 60.0),
})
_OTHER = st.one_of(
    st.fixed_dictionaries({"op": st.just("expire"), "dt": st.sampled_from([1.0, 5.0, 700.0])}),
    st.fixed_dictionaries({"op": st.just("drop"), "bus": st.sampled_from(["b1", "b2"])}),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_SAMPLE, _SAMPLE, _SAMPLE, _OTHER), max_size=60))
def test_check_ins_and_their_ends_alternate(ops: list[dict[str, Any]]) -> None:
    t = tracker()
    clock = T0
    position = {"b1": 100.0, "b2": 1900.0}
    events: list[TrackEvent] = []
    for op in ops:
        if op["op"] == "expire":
            clock += op["dt"]
            events += t.expire(clock)
        elif op["op"] == "drop":
            events += t.drop(op["bus"], clock)
        else:
            clock += op["dt"]
            # Mostly a bus that drives on from where it was; sometimes anywhere.
            s = position[op["bus"]] + op["step"] if op["aside"] < 1000 else op["s"]
            position[op["bus"]] = s
            sample = at(min(max(s, 0.0), GEOMETRY.length_m), clock, direction=op["direction"],
                        speed=op["speed"], line=op["line"], aside=op["aside"],
                        heading=op["heading"])
            events += t.update(op["bus"], sample, clock + op["lag"])
    open_: dict[str, TrackEvent] = {}
    for e in events:
        if e.kind == EventKind.CHECK_IN:
            assert e.bus_id not in open_, "a second check-in before the first ended"
            assert e.eta_s is not None and e.eta_s >= 0 and e.distance_m is not None
            open_[e.bus_id] = e
        else:
            begun = open_.pop(e.bus_id, None)
            assert begun is not None, "an end without a check-in"
            assert (e.crossroad, e.approach, e.request, e.direction) == (
                begun.crossroad, begun.approach, begun.request, begun.direction)
            assert (e.reason is None) == (e.kind == EventKind.CHECK_OUT)
    assert t.checked_in() == open_
