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


# -- the schedules an inventory names ------------------------------------------------

INVENTORY = '''[metropolis]
name = "x"
[[municipality]]
slug = "dijon"
name = "Dijon"
lat = 47.32
lon = 5.04
population = 1
[[equipment]]
id = "lc-dijon-0001"
kind = "lighting_circuit"
municipality = "dijon"
lat = 47.32
lon = 5.04
endpoint = "modbus://127.0.0.1:15030/1"
profile = "lighting_cabinet"
[equipment.attrs]
points = 4
schedule = "SCHEDULE"
[[equipment]]
id = "xr-dijon-0001"
kind = "crossroad"
municipality = "dijon"
lat = 47.32
lon = 5.04
endpoint = "modbus://127.0.0.1:15020/1"
profile = "traffic_controller"
[equipment.attrs]
schedule = "SIGNALS"
[[equipment]]
id = "at-dijon-0001"
kind = "access_terminal"
municipality = "dijon"
lat = 47.32
lon = 5.04
endpoint = "modbus://127.0.0.1:15300/1"
profile = "access_terminal"
[equipment.attrs]
zone = "ZONE"
'''


def inventory_text(schedule: str = "road_lighting", signals: str = "signals",
                   zone: str = "pedestrian_centre") -> str:
    return (INVENTORY.replace("SCHEDULE", schedule).replace("SIGNALS", signals)
            .replace("ZONE", zone))


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.split("\n"), 1) if needle in line)


def test_an_inventory_naming_its_kinds_schedules_passes_the_check() -> None:
    from actors.registry import check_record
    from runtime.demo_inventory import build_demo
    from runtime.inventory import parse_inventory

    inv = parse_inventory(inventory_text(), "city.toml", check=check_record)
    assert [eq.attrs.get("schedule") or eq.attrs.get("zone") for eq in inv.equipment] == [
        "road_lighting", "signals", "pedestrian_centre"]
    build_demo(0.05).check_records(check_record)  # the demo metropolis names its kinds' own


def test_a_schedule_of_another_kind_or_of_no_name_is_refused_at_its_line() -> None:
    from actors.registry import check_record
    from runtime.errors import InventoryError
    from runtime.inventory import parse_inventory

    text = inventory_text(schedule="signals", signals="road_lightning", zone="centre")
    with pytest.raises(InventoryError) as info:
        parse_inventory(text, "city.toml", check=check_record)
    lines = [line_of(text, needle) for needle in ('"signals"', "road_lightning", "zone = ")]
    assert info.value.issues == [
        f"city.toml:{lines[0]}: equipment[0].attrs.schedule: "
        "'signals' is a schedule of crossroad, not of lighting_circuit (the lighting_circuit "
        "schedules: road_lighting)",
        f"city.toml:{lines[1]}: equipment[1].attrs.schedule: no "
        "schedule is named 'road_lightning' (the crossroad schedules: signals)",
        f"city.toml:{lines[2]}: equipment[2].attrs.zone: no schedule is "
        "named 'centre' (the access_terminal schedules: pedestrian_centre)",
    ]
    # Without the behaviours' check, the file alone is valid.
    assert len(parse_inventory(text, "city.toml").equipment) == 3
    text = inventory_text(schedule="road_lightning", signals="SIGNALS").replace('"SIGNALS"', "3")
    with pytest.raises(InventoryError) as info:
        parse_inventory(text, "city.toml", check=check_record)
    assert "did you mean 'road_lighting'?" in info.value.issues[0]
    assert info.value.issues[1].endswith(
        "equipment[1].attrs.schedule: expected the name of a schedule, got 3")


def test_the_service_refuses_to_start_with_a_schedule_of_another_kind() -> None:
    from runtime.errors import InventoryError
    from runtime.inventory import parse_inventory
    from runtime.service import Service

    text = inventory_text(zone="road_lighting")
    inv = parse_inventory(text, "city.toml")
    with pytest.raises(InventoryError) as info:
        Service(inv)
    header = line_of(text, '"at-dijon-0001"') - 1
    assert info.value.issues == [
        f"city.toml:{header}: equipment[2].attrs.zone: "
        "'road_lighting' is a schedule of lighting_circuit, not of access_terminal (the "
        "access_terminal schedules: pedestrian_centre)"]
