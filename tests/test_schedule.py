"""Schedules as data: parsing with file:line errors, day profiles, the step in force and
the next one across midnight and daylight saving, and the precedence of layers."""

from __future__ import annotations

import datetime

import pytest

from actors.schedule import (
    At,
    Layers,
    Timetable,
    builtin_schedules,
    day_profile,
    parse_schedules,
)
from runtime.clock import CITY_TZ
from runtime.errors import ScheduleError

DIJON = (47.322, 5.041)


def local(*args: int) -> float:
    return datetime.datetime(*args, tzinfo=CITY_TZ).timestamp()  # type: ignore[misc]


def test_day_profiles_follow_the_calendar_and_frances_holidays() -> None:
    assert day_profile(datetime.date(2026, 6, 16)) == "weekday"  # a Tuesday
    assert day_profile(datetime.date(2026, 6, 20)) == "saturday"
    assert day_profile(datetime.date(2026, 6, 21)) == "sunday_holiday"
    assert day_profile(datetime.date(2026, 7, 14)) == "sunday_holiday"  # a Tuesday, Bastille Day
    assert day_profile(datetime.date(2026, 5, 14)) == "sunday_holiday"  # Ascension Thursday


def test_times_of_day_parse_and_refuse() -> None:
    assert At.parse("23:00") == At("23:00", 23 * 60)
    assert At.parse("sunset+10m") == At("sunset+10m", 10, "sunset")
    assert At.parse("sunrise-1h") == At("sunrise-1h", -60, "sunrise")
    for bad in ("24:00", "7:00", "sunset+", "noon", "sunrise+13h"):
        with pytest.raises(ValueError):
            At.parse(bad)


def test_the_road_lighting_follows_the_sun_and_the_night_profile() -> None:
    tt = Timetable(builtin_schedules().get("road_lighting"), *DIJON)
    day = tt.day(datetime.date(2026, 6, 16))
    assert [o.step.name for o in day] == ["night", "before_dawn", "dawn", "dusk", "late_evening"]
    dusk = datetime.datetime.fromtimestamp(day[3].at, CITY_TZ)
    assert (dusk.hour, dusk.minute) == (21, 48)  # astral's sunset in Dijon, + 10 min
    # At noon the dawn step is in force; the next is dusk.
    noon = local(2026, 6, 16, 12)
    assert tt.in_force(noon).step.name == "dawn"  # type: ignore[union-attr]
    assert tt.next_after(noon).step.name == "dusk"  # type: ignore[union-attr]
    # Just after midnight, yesterday's 23:00 step is still in force.
    assert tt.in_force(local(2026, 6, 17, 0, 30)).step.name == "late_evening"  # type: ignore[union-attr]
    view = tt.view(noon)
    assert view["name"] == "road_lighting" and view["step"] == "dawn"
    assert view["next"]["step"] == "dusk" and view["next"]["at"] == day[3].at


def test_a_clock_time_keeps_local_time_across_daylight_saving() -> None:
    tt = Timetable(builtin_schedules().get("road_lighting"), *DIJON)
    for date in (datetime.date(2026, 3, 28), datetime.date(2026, 3, 30)):
        late = next(o for o in tt.day(date) if o.step.name == "late_evening")
        assert datetime.datetime.fromtimestamp(late.at, CITY_TZ).hour == 23


def test_day_profiles_select_their_steps() -> None:
    book = parse_schedules('''
[[schedule]]
name = "signals"
kind = "crossroad"
  [[schedule.step]]
  name = "peak"
  at = "07:00"
  days = ["weekday"]
  set = { plan = 2 }
  [[schedule.step]]
  name = "off_peak"
  at = "09:30"
  days = ["weekday", "saturday"]
  set = { plan = 1 }
  [[schedule.step]]
  name = "quiet"
  at = "08:00"
  days = "sunday_holiday"
  set = { plan = 3 }
''', "signals.toml")
    tt = Timetable(book.get("signals"), *DIJON)
    assert [o.step.name for o in tt.day(datetime.date(2026, 6, 16))] == ["peak", "off_peak"]
    assert [o.step.name for o in tt.day(datetime.date(2026, 6, 20))] == ["off_peak"]
    assert [o.step.name for o in tt.day(datetime.date(2026, 7, 14))] == ["quiet"]
    # Monday 06:00: Sunday's quiet step is still in force.
    assert tt.in_force(local(2026, 6, 22, 6)).step.name == "quiet"  # type: ignore[union-attr]


def test_bad_files_are_refused_with_file_and_line() -> None:
    text = '''[[schedule]]
name = "bad"
kind = "lighting_circuit"
  [[schedule.step]]
  name = "a"
  at = "23:00"
  set = { dim = 70 }
  [[schedule.step]]
  name = "b"
  at = "23:00"
  days = ["weekday"]
  set = { dim = 150 }
  [[schedule.step]]
  name = "c"
  at = "25:00"
  days = ["mondays"]
  set = { colour = "red" }
'''
    with pytest.raises(ScheduleError) as info:
        parse_schedules(text, "bad.toml")
    issues = info.value.issues
    assert any(i.startswith("bad.toml:10:") and "overlaps step 'a'" in i for i in issues), issues
    assert any(i.startswith("bad.toml:12:") and "dim=150" in i for i in issues), issues
    assert any("bad.toml:15:" in i and "25:00" in i for i in issues), issues
    assert any("bad.toml:16:" in i and "mondays" in i for i in issues), issues
    assert any("bad.toml:17:" in i and "colour" in i for i in issues), issues
    with pytest.raises(ScheduleError, match="unknown kind"):
        parse_schedules('[[schedule]]\nname = "x"\nkind = "tram"\n[[schedule.step]]\n'
                        'name = "a"\nat = "01:00"\nset = { a = 1 }\n', "x.toml")
    with pytest.raises(ScheduleError, match=r"x\.toml"):
        parse_schedules("[[schedule]\n", "x.toml")


def test_layers_resolve_by_precedence_and_operator_overrides_expire() -> None:
    state: dict[str, object] = {}
    layers = Layers(state)  # type: ignore[arg-type]
    layers.put("schedule", {"dim": 50, "on": True})
    layers.put("operator", {"dim": 80}, until=1_000.0, by="alice")
    assert layers.effective(999.0) == ({"dim": 80, "on": True},
                                       {"dim": "operator", "on": "schedule"})
    layers.put("crisis", {"dim": 100})
    assert layers.effective(999.0)[0]["dim"] == 100
    layers.clear("crisis")
    assert layers.effective(1_000.0)[0]["dim"] == 50  # the override ran out
    assert layers.next_expiry() == 1_000.0
    assert layers.expire(1_000.0) == ["operator"] and "operator" not in state
    with pytest.raises(ValueError):
        layers.put("mayor", {"dim": 1})
