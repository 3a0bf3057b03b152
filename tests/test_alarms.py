"""The alarm book: ISA-18.2 transitions, shelving, suppression, floods, escalation, checkpoints.

Pure logic with a manual clock: no Ray, no Redis, no sockets. The last part is
a Hypothesis state machine that checks the book against a small model of the
alarm lifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from actors.alarms import (
    CONTRACT_FIELDS,
    FLOOD_SUMMARY,
    HIDDEN_STATES,
    MIXED_MUNICIPALITY,
    AlarmArgumentError,
    AlarmBook,
    AlarmEvent,
    AlarmForbiddenError,
    AlarmState,
    AlarmStateError,
    ConditionTable,
    EventKind,
    NotAnAlarmError,
    Priority,
    UnknownAlarmError,
    alarm_id,
    builtin_conditions,
    parse_conditions,
    summary_id,
)
from runtime.clock import ManualClock
from runtime.errors import ConfigError, MalformedMessageError, RejectedError, UnknownEntityError

UNACK = AlarmState.UNACKNOWLEDGED
ACK = AlarmState.ACKNOWLEDGED
RTN = AlarmState.RTN_UNACKNOWLEDGED
NORMAL = AlarmState.NORMAL
T0 = 1_700_000_000.0


def book_at(clock: ManualClock | None = None, **kw: Any) -> tuple[AlarmBook, ManualClock]:
    clock = clock or ManualClock()
    return AlarmBook(clock, **kw), clock


def advance(clock: ManualClock, seconds: float) -> None:
    asyncio.run(clock.advance(seconds))


def state(book: AlarmBook, aid: str) -> str:
    return str(book.get(aid)["state"])


def raise_fire(book: AlarmBook, ts: float = T0, source: str = "bld-1") -> list[AlarmEvent]:
    return book.raise_(source, "fire", municipality="dijon", kind="building", ts=ts)


def transitions(events: list[AlarmEvent]) -> list[tuple[str, str, str]]:
    return [(e.alarm_id, e.previous.value, e.state.value)
            for e in events if e.kind is EventKind.TRANSITION]


# -- the data --------------------------------------------------------------------------


def test_builtin_conditions_name_every_condition_with_a_priority() -> None:
    table = builtin_conditions()
    for name in ("device_offline", "reconcile_required", "reconcile_failed", "fire", "intrusion",
                 "forced_door", "camera_tamper", "lamp_fault", "cabinet_mains_fault",
                 "cabinet_door_open", "earth_fault", "controller_fault", FLOOD_SUMMARY):
        assert name in table.conditions, name
    assert table.spec("fire").priority is Priority.CRITICAL
    assert table.spec("no_such_condition").priority is Priority.MEDIUM
    assert "motion" in table.events
    assert table.flood_threshold == 3 and table.flood_window_s == 30.0
    assert {p for p in Priority} == set(table.escalate_after_s)


def test_the_data_file_ships_as_package_data() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "alarm_conditions.toml" in pyproject["tool"]["setuptools"]["package-data"]["actors"]


def test_a_bad_conditions_file_reports_every_issue_with_its_line() -> None:
    text = textwrap.dedent("""\
        [book]
        flood_threshold = 0

        [priority.critical]
        escalate_after_s = 60
        [priority.high]
        escalate_after_s = -1
        [priority.medium]
        escalate_after_s = 60

        [condition.fire]
        priority = "urgent"

        [condition.lamp_fault]
        priority = "low"
        message = "lamp {lamp} broken"

        [[suppression]]
        name = "x"
        by = ["cabinet_fault"]
        masks = ["lamp_fault"]
        """)
    with pytest.raises(ConfigError) as info:
        parse_conditions(text, "c.toml")
    lines = str(info.value).splitlines()
    assert lines == [
        "c.toml:2: book.flood_threshold: expected an integer >= 2, got 0",
        "c.toml:4: priority.low: required table missing",  # where the levels begin
        "c.toml:7: priority.high.escalate_after_s: expected a number > 0, got -1",
        "c.toml:12: condition.fire.priority: expected one of critical, high, medium, low, "
        "got \"urgent\"",
        "c.toml:16: condition.lamp_fault.message: unknown placeholder {lamp} (expected one of "
        "source, condition, municipality, kind, path, priority, count)",
        "c.toml:20: suppression[0].by: 'cabinet_fault' is not a condition of this file",
    ]


def test_a_syntax_error_names_its_line() -> None:
    with pytest.raises(ConfigError, match=r"^c.toml:2: syntax: "):
        parse_conditions("[book]\nhistory = = 3\n", "c.toml")


# -- ISA-18.2 transitions ----------------------------------------------------------------


def test_activation_then_ack_then_clear() -> None:
    book, _ = book_at()
    events = raise_fire(book, T0)
    assert transitions(events) == [("bld-1.fire", "normal", "unacknowledged")]
    assert events[0].active and events[0].action == "raise" and events[0].user is None
    assert raise_fire(book, T0 + 1) == []  # an active alarm raised again: idempotent
    record = book.get("bld-1.fire")
    assert record["raised_ts"] == T0 and record["active"] and record["priority"] == "critical"
    assert record["message"] == "Fire alarm in building bld-1 (dijon)"

    events = book.ack("bld-1.fire", "alice", "crew sent", ts=T0 + 5)
    assert transitions(events) == [("bld-1.fire", "unacknowledged", "acknowledged")]
    assert events[0].user == "alice" and events[0].note == "crew sent"
    record = book.get("bld-1.fire")
    assert (record["acked_by"], record["acked_ts"]) == ("alice", T0 + 5)

    # Re-activation while acknowledged and active does nothing.
    assert raise_fire(book, T0 + 6) == []
    assert state(book, "bld-1.fire") == "acknowledged"
    assert book.ack("bld-1.fire", "bob", ts=T0 + 7) == []  # already acknowledged: no-op

    assert transitions(book.clear("bld-1", "fire", ts=T0 + 10)) == [
        ("bld-1.fire", "acknowledged", "normal")
    ]
    assert book.ack("bld-1.fire", "bob", ts=T0 + 11) == []  # nothing to acknowledge
    history = book.get("bld-1.fire")["history"]
    assert [(h["ts"], h["action"], h["user"], h["to"]) for h in history] == [
        (T0, "raise", None, "unacknowledged"),
        (T0 + 5, "ack", "alice", "acknowledged"),
        (T0 + 10, "clear", None, "normal"),
    ]


def test_return_to_normal_unacknowledged_then_ack_or_reactivation() -> None:
    book, _ = book_at()
    raise_fire(book, T0)
    assert transitions(book.clear("bld-1", "fire", ts=T0 + 1)) == [
        ("bld-1.fire", "unacknowledged", "rtn_unacknowledged")
    ]
    assert not book.get("bld-1.fire")["active"]
    # rtn_unacknowledged -> unacknowledged when active again
    assert transitions(raise_fire(book, T0 + 2)) == [
        ("bld-1.fire", "rtn_unacknowledged", "unacknowledged")
    ]
    book.clear("bld-1", "fire", ts=T0 + 3)
    # rtn_unacknowledged -> normal by ack
    assert transitions(book.ack("bld-1.fire", "alice", ts=T0 + 4)) == [
        ("bld-1.fire", "rtn_unacknowledged", "normal")
    ]
    assert book.get("bld-1.fire")["activations"] == 2


def test_an_alarm_back_to_normal_for_a_day_is_forgotten_the_others_stay() -> None:
    from actors.alarms import NORMAL_KEPT_S, UnknownAlarmError

    book, _ = book_at()
    raise_fire(book, T0)
    book.ack("bld-1.fire", "alice", ts=T0 + 1)
    book.clear("bld-1", "fire", ts=T0 + 2)
    raise_fire(book, T0, source="bld-2")
    book.clear("bld-2", "fire", ts=T0 + 2)  # back to normal, never acknowledged
    raise_fire(book, T0, source="bld-3")  # still active
    book.tick(T0 + 2 + NORMAL_KEPT_S - 1)
    assert len(book) == 3
    book.tick(T0 + 2 + NORMAL_KEPT_S)
    with pytest.raises(UnknownAlarmError):
        book.get("bld-1.fire")
    assert state(book, "bld-2.fire") == "rtn_unacknowledged"
    assert book.get("bld-3.fire")["active"] and len(book) == 2
    # The same condition raised again is a fresh alarm.
    assert transitions(raise_fire(book, T0 + 2 * NORMAL_KEPT_S)) == [
        ("bld-1.fire", "normal", "unacknowledged")]
    # A checkpoint of the pruned book restores what it kept.
    again = AlarmBook.from_dict(book.to_dict(), book_at()[1])
    assert len(again) == 3


def test_clearing_what_was_never_raised_is_no_error() -> None:
    book, _ = book_at()
    assert book.clear("bld-1", "fire", ts=T0) == []
    assert len(book) == 0


def test_motion_is_an_event_never_an_alarm() -> None:
    book, _ = book_at()
    with pytest.raises(NotAnAlarmError) as info:
        book.raise_("cam-1", "motion", municipality="dijon", kind="camera", ts=T0)
    assert info.value.code == "not_an_alarm" and isinstance(info.value, RejectedError)
    with pytest.raises(NotAnAlarmError) as reserved:
        book.raise_("cam-1", FLOOD_SUMMARY, municipality="dijon", kind="camera", ts=T0)
    assert reserved.value.code == "reserved_condition"
    assert len(book) == 0


def test_an_unknown_condition_gets_the_default_priority() -> None:
    book, _ = book_at()
    book.raise_("xr-1", "phase_conflict", municipality="dijon", kind="crossroad", ts=T0)
    record = book.get("xr-1.phase_conflict")
    assert record["priority"] == "medium"
    assert record["message"] == "phase_conflict on crossroad xr-1"


def test_bad_arguments_are_refused_with_a_code_and_a_field() -> None:
    book, _ = book_at()
    raise_fire(book)
    with pytest.raises(UnknownAlarmError) as unknown:
        book.ack("nope.fire", "alice")
    assert isinstance(unknown.value, UnknownEntityError) and unknown.value.code == "unknown_alarm"
    for minutes in (0, -5, 7 * 24 * 60 + 1, math.nan, math.inf, True, "10"):
        with pytest.raises(AlarmArgumentError) as bad:
            book.shelve("bld-1.fire", "alice", minutes, "noisy")  # type: ignore[arg-type]
        assert (bad.value.code, bad.value.field) == ("out_of_range", "minutes")
    for reason in ("", "   ", None):
        with pytest.raises(AlarmArgumentError) as bad:
            book.shelve("bld-1.fire", "alice", 10, reason)  # type: ignore[arg-type]
        assert (bad.value.code, bad.value.field) == ("bad_value", "reason")
    with pytest.raises(AlarmArgumentError, match="condition"):
        book.raise_("x", "Bad Name", municipality="dijon", kind="building")
    with pytest.raises(AlarmArgumentError) as bad:
        book.alarms(state="burning")
    assert bad.value.field == "state"
    assert state(book, "bld-1.fire") == "unacknowledged"


def test_every_list_item_has_exactly_the_contract_fields() -> None:
    book, _ = book_at()
    raise_fire(book)
    book.raise_("lc-1", "lamp_fault", municipality="talant", kind="lighting_circuit", ts=T0 + 1)
    items = book.alarms()
    assert [i["id"] for i in items] == ["bld-1.fire", "lc-1.lamp_fault"]  # most urgent first
    for item in items:
        assert set(CONTRACT_FIELDS) <= set(item)
        assert item["count"] == 1 and item["group"] is None
        msgpack.packb(item)
    assert [i["id"] for i in book.alarms(municipality="talant")] == ["lc-1.lamp_fault"]
    assert [i["id"] for i in book.alarms(priority="critical")] == ["bld-1.fire"]
    assert [i["id"] for i in book.alarms(source="lc-1")] == ["lc-1.lamp_fault"]
    book.ack("bld-1.fire", "alice", ts=T0 + 2)
    assert [i["id"] for i in book.alarms(state="acknowledged")] == ["bld-1.fire"]
    book.clear("bld-1", "fire", ts=T0 + 3)
    assert [i["id"] for i in book.alarms()] == ["lc-1.lamp_fault"]  # normal is off the list
    assert [i["id"] for i in book.alarms(state="normal")] == ["bld-1.fire"]
    assert {i["id"] for i in book.alarms(include_hidden=True)} == {"bld-1.fire",
                                                                   "lc-1.lamp_fault"}
    assert book.active_sources() == {"lc-1"}


# -- shelving ------------------------------------------------------------------------------


def test_a_shelved_alarm_is_hidden_and_shows_again_at_expiry_if_still_active() -> None:
    book, clock = book_at()
    book.raise_("lc-1", "lamp_fault", municipality="dijon", kind="lighting_circuit")
    book.ack("lc-1.lamp_fault", "alice")
    start = clock.time()
    events = book.shelve("lc-1.lamp_fault", "alice", 10, "lamp crew already on site")
    assert transitions(events) == [("lc-1.lamp_fault", "acknowledged", "shelved")]
    record = book.get("lc-1.lamp_fault")
    assert record["shelved_until"] == start + 600 and record["shelve_reason"].startswith("lamp")
    assert book.alarms() == [] and book.active_sources() == frozenset()
    assert [a["id"] for a in book.alarms(include_hidden=True)] == ["lc-1.lamp_fault"]
    assert [a["id"] for a in book.alarms(state="shelved")] == ["lc-1.lamp_fault"]
    with pytest.raises(AlarmStateError) as hidden:
        book.ack("lc-1.lamp_fault", "bob")
    assert hidden.value.code == "hidden"

    advance(clock, 599)
    assert book.tick() == []
    advance(clock, 1)  # due exactly now
    events = book.tick()
    assert transitions(events) == [("lc-1.lamp_fault", "shelved", "unacknowledged")]
    assert events[0].ts == start + 600 and events[0].action == "shelve_expired"
    record = book.get("lc-1.lamp_fault")
    assert record["shelved_until"] is None and record["acked_by"] is None
    assert book.active_sources() == {"lc-1"}


def test_a_shelved_alarm_that_cleared_comes_back_normal() -> None:
    book, clock = book_at()
    raise_fire(book, clock.time())
    book.shelve("bld-1.fire", "alice", 1, "drill in progress")
    book.clear("bld-1", "fire")
    assert state(book, "bld-1.fire") == "shelved" and not book.get("bld-1.fire")["active"]
    advance(clock, 60)
    assert transitions(book.tick()) == [("bld-1.fire", "shelved", "normal")]


def test_unshelve_by_hand_and_reshelve() -> None:
    book, _ = book_at()
    raise_fire(book, T0)
    book.shelve("bld-1.fire", "alice", 5, "drill", ts=T0 + 1)
    events = book.shelve("bld-1.fire", "alice", 30, "drill extended", ts=T0 + 2)
    assert [e.kind for e in events] == [EventKind.UPDATED]
    assert book.get("bld-1.fire")["shelved_until"] == T0 + 2 + 1800
    assert transitions(book.unshelve("bld-1.fire", "bob", ts=T0 + 3)) == [
        ("bld-1.fire", "shelved", "unacknowledged")
    ]
    assert book.unshelve("bld-1.fire", "bob", ts=T0 + 4) == []
    book.clear("bld-1", "fire", ts=T0 + 5)
    book.ack("bld-1.fire", "bob", ts=T0 + 6)
    with pytest.raises(AlarmStateError) as normal:
        book.shelve("bld-1.fire", "alice", 5, "nothing to shelve", ts=T0 + 7)
    assert normal.value.code == "normal"


# -- out of service -------------------------------------------------------------------------


def test_out_of_service_is_for_admins_and_tracks_the_condition_unseen() -> None:
    book, _ = book_at()
    book.raise_("lc-1", "earth_fault", municipality="dijon", kind="lighting_circuit", ts=T0)
    aid = "lc-1.earth_fault"
    with pytest.raises(AlarmForbiddenError) as forbidden:
        book.out_of_service(aid, "olga", "operator", ts=T0 + 1)
    assert forbidden.value.code == "forbidden" and isinstance(forbidden.value, RejectedError)
    book.shelve(aid, "olga", 60, "sensor replaced tomorrow", ts=T0 + 1)
    events = book.out_of_service(aid, "ada", "admin", ts=T0 + 2)
    assert transitions(events) == [(aid, "shelved", "out_of_service")]
    assert book.get(aid)["shelved_until"] is None  # out of service ends the shelve
    assert book.out_of_service(aid, "ada", "admin", ts=T0 + 3) == []

    events = book.clear("lc-1", "earth_fault", ts=T0 + 4)
    assert transitions(events) == [(aid, "out_of_service", "out_of_service")]
    assert not events[0].active
    book.raise_("lc-1", "earth_fault", municipality="dijon", kind="lighting_circuit", ts=T0 + 5)
    book.clear("lc-1", "earth_fault", ts=T0 + 6)
    assert [h["action"] for h in book.get(aid)["history"]][-3:] == ["clear", "raise", "clear"]
    with pytest.raises(AlarmStateError):
        book.shelve(aid, "olga", 5, "x", ts=T0 + 7)
    with pytest.raises(AlarmForbiddenError):
        book.return_to_service(aid, "olga", "viewer", ts=T0 + 8)
    assert transitions(book.return_to_service(aid, "ada", "admin", ts=T0 + 9)) == [
        (aid, "out_of_service", "normal")
    ]
    assert book.return_to_service(aid, "ada", "admin", ts=T0 + 10) == []

    book.out_of_service(aid, "ada", "admin", ts=T0 + 11)
    book.raise_("lc-1", "earth_fault", municipality="dijon", kind="lighting_circuit", ts=T0 + 12)
    assert transitions(book.return_to_service(aid, "ada", "admin", ts=T0 + 13)) == [
        (aid, "out_of_service", "unacknowledged")
    ]


# -- suppression by design ------------------------------------------------------------------


def cabinet(book: AlarmBook, condition: str, ts: float, source: str = "lc-1") -> None:
    book.raise_(source, condition, municipality="dijon", kind="lighting_circuit", ts=ts)


@pytest.mark.parametrize("fault", ["cabinet_mains_fault", "cabinet_door_open"])
def test_a_cabinet_fault_masks_its_lamp_faults(fault: str) -> None:
    book, _ = book_at()
    cabinet(book, "lamp_fault", T0)
    cabinet(book, "lamp_fault", T0, source="lc-2")
    book.ack("lc-1.lamp_fault", "alice", ts=T0 + 1)
    events = book.raise_("lc-1", fault, municipality="dijon", kind="lighting_circuit",
                         ts=T0 + 2)
    assert transitions(events) == [
        (f"lc-1.{fault}", "normal", "unacknowledged"),
        ("lc-1.lamp_fault", "acknowledged", "suppressed"),
    ]
    record = book.get("lc-1.lamp_fault")
    assert record["suppressed_by"] == f"lc-1.{fault}"
    assert state(book, "lc-2.lamp_fault") == "unacknowledged"  # another cabinet: untouched
    assert {a["id"] for a in book.alarms()} == {f"lc-1.{fault}", "lc-2.lamp_fault"}

    events = book.clear("lc-1", fault, ts=T0 + 3)
    # Shown again, and annunciated again since its condition is still active.
    assert (("lc-1.lamp_fault", "suppressed", "unacknowledged") in transitions(events))
    assert book.get("lc-1.lamp_fault")["suppressed_by"] is None


def test_a_lamp_fault_raised_under_a_cabinet_fault_is_suppressed_at_once() -> None:
    book, _ = book_at()
    cabinet(book, "cabinet_mains_fault", T0)
    events = book.raise_("lc-1", "lamp_fault", municipality="dijon", kind="lighting_circuit",
                         ts=T0 + 1)
    assert transitions(events) == [("lc-1.lamp_fault", "normal", "suppressed")]
    book.clear("lc-1", "lamp_fault", ts=T0 + 2)
    events = book.clear("lc-1", "cabinet_mains_fault", ts=T0 + 3)
    assert ("lc-1.lamp_fault", "suppressed", "normal") in transitions(events)


def test_an_offline_device_masks_its_own_value_alarms_only() -> None:
    book, _ = book_at()
    for condition in ("earth_fault", "lamp_fault"):
        cabinet(book, condition, T0)
    book.raise_("xr-1", "controller_fault", municipality="dijon", kind="crossroad", ts=T0)
    book.raise_("xr-1", "device_offline", municipality="dijon", kind="crossroad", ts=T0 + 1)
    assert state(book, "xr-1.controller_fault") == "suppressed"
    assert book.get("xr-1.controller_fault")["suppressed_by"] == "xr-1.device_offline"
    assert state(book, "xr-1.device_offline") == "unacknowledged"
    assert state(book, "lc-1.earth_fault") == "unacknowledged"
    book.raise_("lc-1", "device_offline", municipality="dijon", kind="lighting_circuit",
                ts=T0 + 2)
    assert {state(book, f"lc-1.{c}") for c in ("earth_fault", "lamp_fault")} == {"suppressed"}
    book.clear("xr-1", "controller_fault", ts=T0 + 3)
    events = book.clear("xr-1", "device_offline", ts=T0 + 4)
    assert ("xr-1.controller_fault", "suppressed", "normal") in transitions(events)
    events = book.clear("lc-1", "device_offline", ts=T0 + 5)
    assert {(a, f, t) for a, f, t in transitions(events) if a != "lc-1.device_offline"} == {
        ("lc-1.earth_fault", "suppressed", "unacknowledged"),
        ("lc-1.lamp_fault", "suppressed", "unacknowledged"),
    }


def test_an_offline_camera_masks_its_tamper_alarm() -> None:
    book, _ = book_at()
    book.raise_("cam-1", "camera_tamper", municipality="dijon", kind="camera", ts=T0)
    book.raise_("cam-1", "device_offline", municipality="dijon", kind="camera", ts=T0 + 1)
    record = book.get("cam-1.camera_tamper")
    assert (record["state"], record["suppressed_by"]) == ("suppressed", "cam-1.device_offline")
    assert book.active_sources() == {"cam-1"}  # through its shown device_offline
    book.clear("cam-1", "camera_tamper", ts=T0 + 2)
    book.clear("cam-1", "device_offline", ts=T0 + 3)
    assert state(book, "cam-1.camera_tamper") == "normal"


def test_a_crisis_plan_masks_the_alarms_its_own_actions_cause() -> None:
    book, _ = book_at()
    book.raise_("acc-1", "reconcile_required", municipality="dijon", kind="access_terminal",
                ts=T0)
    masked = {("acc-1", "reconcile_required"), ("lc-9", "cabinet_door_open")}
    events = book.crisis_masks("ACT-7", masked, ts=T0 + 1)
    assert transitions(events) == [("acc-1.reconcile_required", "unacknowledged", "suppressed")]
    assert book.get("acc-1.reconcile_required")["suppressed_by"] == "crisis:ACT-7"
    # An alarm raised later by the plan's actions is masked too.
    events = book.raise_("lc-9", "cabinet_door_open", municipality="dijon",
                         kind="lighting_circuit", ts=T0 + 2)
    assert transitions(events) == [("lc-9.cabinet_door_open", "normal", "suppressed")]
    book.clear("acc-1", "reconcile_required", ts=T0 + 3)
    events = book.clear_crisis_masks("ACT-7", ts=T0 + 4)
    assert sorted(transitions(events)) == [
        ("acc-1.reconcile_required", "suppressed", "normal"),
        ("lc-9.cabinet_door_open", "suppressed", "unacknowledged"),
    ]
    assert book.clear_crisis_masks("ACT-7", ts=T0 + 5) == []
    with pytest.raises(AlarmArgumentError):
        book.crisis_masks("ACT-8", [("only-a-source",)])  # type: ignore[list-item]


# -- flood control ------------------------------------------------------------------------


def offline(book: AlarmBook, source: str, path: str, ts: float,
            municipality: str = "dijon") -> list[AlarmEvent]:
    return book.raise_(source, "device_offline", municipality=municipality, kind="camera",
                       path=path, ts=ts)


def test_three_hundred_devices_behind_one_path_make_one_summary() -> None:
    book, _ = book_at()
    path = "net:10.0.0.1"
    sid = summary_id(path)
    offline(book, "cam-other", "broker:mqtt://broker.local:1883", T0)
    for i in range(300):
        offline(book, f"cam-{i:03d}", path, T0 + i * 0.1,
                municipality="dijon" if i % 2 else "talant")
    listed = book.alarms()
    assert [a["id"] for a in listed] == [sid, "cam-other.device_offline"]
    summary = listed[0]
    assert summary["condition"] == FLOOD_SUMMARY and summary["source"] == path
    assert summary["count"] == 300 and summary["state"] == "unacknowledged"
    assert summary["message"] == "300 devices offline behind net:10.0.0.1"
    assert summary["municipality"] == MIXED_MUNICIPALITY
    assert summary["municipalities"] == ["dijon", "talant"]
    assert [a["id"] for a in book.alarms(municipality="talant")] == [sid]
    children = book.alarms(group=sid)
    assert len(children) == 300 and {c["group"] for c in children} == {sid}
    assert book.get("cam-other.device_offline")["group"] is None
    assert len(book.active_sources()) == 301  # the devices are offline, grouped or not

    # Acknowledging the summary acknowledges its children.
    book.ack(sid, "alice", ts=T0 + 40)
    assert {c["state"] for c in book.alarms(group=sid)} == {"acknowledged"}
    assert state(book, sid) == "acknowledged"

    for i in range(299):
        book.clear(f"cam-{i:03d}", "device_offline", ts=T0 + 50)
    assert state(book, sid) == "acknowledged" and book.get(sid)["active"]
    events = book.clear("cam-299", "device_offline", ts=T0 + 51)
    assert (sid, "acknowledged", "normal") in transitions(events)
    assert sum(e.kind is EventKind.UNGROUPED for e in events) == 300
    assert book.get(sid)["count"] == 0 and book.alarms(group=sid) == []
    assert book.get("cam-000.device_offline")["group"] is None


def test_grouping_waits_for_the_threshold() -> None:
    book, _ = book_at()
    path = "net:10.0.0.2"
    offline(book, "cam-a", path, T0)
    offline(book, "cam-b", path, T0 + 10)
    assert {a["id"] for a in book.alarms()} == {"cam-a.device_offline", "cam-b.device_offline"}
    events = offline(book, "cam-c", path, T0 + 20)
    sid = summary_id(path)
    assert [e.alarm_id for e in events if e.kind is EventKind.GROUPED] == [
        "cam-a.device_offline", "cam-b.device_offline", "cam-c.device_offline"
    ]
    assert (sid, "normal", "unacknowledged") in transitions(events)
    assert [a["id"] for a in book.alarms()] == [sid]
    # A later one within the window of the previous joins at once and counts.
    offline(book, "cam-d", path, T0 + 45)
    assert book.get(sid)["count"] == 4


def test_offline_devices_farther_apart_than_the_window_stay_ordinary() -> None:
    book, _ = book_at()
    path = "net:10.0.0.3"
    for i in range(5):
        offline(book, f"cam-{i}", path, T0 + i * 31)
    assert len(book.alarms()) == 5 and all(a["group"] is None for a in book.alarms())
    # A single one is an ordinary alarm with count 1.
    assert book.get("cam-0.device_offline")["count"] == 1


def test_a_cleared_device_does_not_count_toward_the_threshold() -> None:
    book, _ = book_at()
    path = "net:10.0.0.4"
    offline(book, "cam-a", path, T0)
    book.clear("cam-a", "device_offline", ts=T0 + 1)
    offline(book, "cam-b", path, T0 + 2)
    offline(book, "cam-c", path, T0 + 3)
    assert all(a["group"] is None for a in book.alarms())
    offline(book, "cam-d", path, T0 + 4)
    assert book.get(summary_id(path))["count"] == 3


def test_a_new_child_annunciates_an_acknowledged_summary_again() -> None:
    book, _ = book_at(flood_threshold=2, flood_window_s=5.0)
    assert book.flood_threshold == 2 and book.flood_window_s == 5.0
    path = "broker:mqtt://broker.local:1883"
    sid = summary_id(path)
    offline(book, "cam-a", path, T0)
    offline(book, "cam-b", path, T0 + 1)
    book.ack(sid, "alice", ts=T0 + 2)
    events = offline(book, "cam-c", path, T0 + 3)
    assert (sid, "acknowledged", "unacknowledged") in transitions(events)
    assert book.get(sid)["count"] == 3
    # A child going offline again after it came back annunciates it too.
    book.ack(sid, "alice", ts=T0 + 4)
    book.clear("cam-a", "device_offline", ts=T0 + 5)
    events = offline(book, "cam-a", path, T0 + 60)
    assert (sid, "acknowledged", "unacknowledged") in transitions(events)
    assert book.get("cam-a.device_offline")["group"] == sid


CHILD_OPS = st.lists(
    st.tuples(
        st.sampled_from(["raise", "clear", "ack", "shelve", "unshelve", "oos", "rts", "mask",
                         "unmask", "tick", "ack_summary"]),
        st.integers(0, 3),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(ops=CHILD_OPS)
def test_a_summary_is_active_exactly_while_a_shown_child_is(ops: list[tuple[str, int]]) -> None:
    book, _ = book_at()
    path = "net:10.0.0.7"
    sid = summary_id(path)
    for i in range(4):
        offline(book, f"cam-{i}", path, T0)
    now = T0
    for op, i in ops:
        now += 7
        cid = f"cam-{i}.device_offline"
        with contextlib.suppress(AlarmStateError):
            if op == "raise":
                offline(book, f"cam-{i}", path, now)
            elif op == "clear":
                book.clear(f"cam-{i}", "device_offline", ts=now)
            elif op == "ack":
                book.ack(cid, "alice", ts=now)
            elif op == "shelve":
                book.shelve(cid, "alice", 0.25, "noisy", ts=now)
            elif op == "unshelve":
                book.unshelve(cid, "alice", ts=now)
            elif op == "oos":
                book.out_of_service(cid, "ada", "admin", ts=now)
            elif op == "rts":
                book.return_to_service(cid, "ada", "admin", ts=now)
            elif op == "mask":
                book.crisis_masks(f"ACT-{i}", [(f"cam-{i}", "device_offline")], ts=now)
            elif op == "unmask":
                book.clear_crisis_masks(f"ACT-{i}", ts=now)
            elif op == "tick":
                book.tick(now)
            else:
                book.ack(sid, "bob", ts=now)
        summary = book.get(sid)
        children = book.alarms(group=sid)
        shown_active = [c for c in children
                        if c["active"] and c["state"] not in {s.value for s in HIDDEN_STATES}]
        assert summary["active"] == bool(shown_active)
        assert summary["count"] == len(children)
        if summary["state"] == "normal":
            assert children == []
        restored = AlarmBook.from_dict(book.to_dict(), ManualClock())
        assert restored.get(sid)["active"] == summary["active"]
        assert restored.to_dict() == book.to_dict()


def test_a_child_offline_device_still_masks_its_own_values() -> None:
    book, _ = book_at()
    path = "net:10.0.0.5"
    book.raise_("cam-0", "camera_tamper", municipality="dijon", kind="camera", ts=T0)
    for i in range(3):
        offline(book, f"cam-{i}", path, T0 + i)
    assert state(book, "cam-0.camera_tamper") == "suppressed"
    assert book.get("cam-0.device_offline")["group"] == summary_id(path)


# -- escalation --------------------------------------------------------------------------


def test_an_unacknowledged_alarm_climbs_every_level_then_escalates() -> None:
    book, clock = book_at()
    table = builtin_conditions()
    start = clock.time()
    book.raise_("lc-1", "lamp_fault", municipality="dijon", kind="lighting_circuit")
    expected: list[tuple[float, EventKind, str]] = []
    due = start
    for level in (Priority.LOW, Priority.MEDIUM, Priority.HIGH):
        due += table.delay("lamp_fault", level)
        expected.append((due, EventKind.PRIORITY, level.raised().value))
    due += table.delay("lamp_fault", Priority.CRITICAL)
    expected.append((due, EventKind.ESCALATED, "critical"))

    seen: list[tuple[float, EventKind, str]] = []
    for _ in range(int(due - start) // 60 + 2):
        advance(clock, 60)
        seen += [(e.ts, e.kind, e.priority.value) for e in book.tick()]
    assert seen == expected
    record = book.get("lc-1.lamp_fault")
    assert record["priority"] == "critical" and record["escalated"]
    assert state(book, "lc-1.lamp_fault") == "unacknowledged"
    advance(clock, 3600)
    assert book.tick() == []  # escalated once

    # Acknowledged, it keeps its raised priority until it is normal again.
    book.ack("lc-1.lamp_fault", "alice")
    assert book.get("lc-1.lamp_fault")["priority"] == "critical"
    book.clear("lc-1", "lamp_fault")
    record = book.get("lc-1.lamp_fault")
    assert (record["priority"], record["escalated"]) == ("low", False)


def test_a_late_tick_escalates_as_if_it_had_run_on_time() -> None:
    book, _ = book_at()
    raise_fire(book, T0)  # critical, its own 60 s
    events = book.tick(T0 + 59)
    assert events == []
    events = book.tick(T0 + 10_000)
    assert [(e.kind, e.ts, e.action) for e in events] == [
        (EventKind.ESCALATED, T0 + 60, "escalate")
    ]


def test_acknowledging_stops_escalation() -> None:
    book, _ = book_at()
    book.raise_("bld-1", "intrusion", municipality="dijon", kind="building", ts=T0)
    book.ack("bld-1.intrusion", "alice", ts=T0 + 100)
    assert book.tick(T0 + 100_000) == []
    assert book.get("bld-1.intrusion")["priority"] == "high"


def test_a_grouped_child_does_not_escalate_its_summary_does() -> None:
    book, _ = book_at()
    path = "net:10.0.0.6"
    for i in range(3):
        offline(book, f"cam-{i}", path, T0)
    events = book.tick(T0 + 100_000)
    assert {e.alarm_id for e in events} == {summary_id(path)}
    assert events[-1].kind is EventKind.ESCALATED


# -- checkpoint ------------------------------------------------------------------------


def busy_book() -> tuple[AlarmBook, ManualClock]:
    book, clock = book_at()
    now = clock.time()
    raise_fire(book, now)
    book.raise_("lc-1", "lamp_fault", municipality="dijon", kind="lighting_circuit", ts=now)
    book.raise_("lc-1", "cabinet_mains_fault", municipality="dijon", kind="lighting_circuit",
                ts=now + 1)
    book.raise_("bld-2", "intrusion", municipality="talant", kind="building", ts=now)
    book.shelve("bld-2.intrusion", "alice", 10, "known works", ts=now + 2)
    book.raise_("xr-1", "controller_fault", municipality="dijon", kind="crossroad", ts=now)
    book.out_of_service("xr-1.controller_fault", "ada", "admin", ts=now + 3)
    book.crisis_masks("ACT-1", [("acc-1", "reconcile_required")], ts=now + 4)
    for i in range(4):
        offline(book, f"cam-{i}", "net:10.0.0.9", now + i)
    offline(book, "cam-x", "net:10.0.0.10", now + 5)
    book.tick(now + 100)  # the fire escalates
    return book, clock


def test_the_checkpoint_round_trips_through_msgpack() -> None:
    book, clock = busy_book()
    saved = book.to_dict()
    wire = msgpack.unpackb(msgpack.packb(saved))
    restored = AlarmBook.from_dict(wire, clock)
    assert restored.to_dict() == saved
    assert restored.alarms(include_hidden=True) == book.alarms(include_hidden=True)
    assert restored.get("bld-1.fire") == book.get("bld-1.fire")
    assert restored.active_sources() == book.active_sources()

    # Both go on the same way: the shelve expires, the open burst still groups.
    later = clock.time() + 700
    assert [e.to_dict() for e in restored.tick(later)] == [e.to_dict() for e in book.tick(later)]
    a = offline(restored, "cam-y", "net:10.0.0.10", clock.time() + 710)
    b = offline(book, "cam-y", "net:10.0.0.10", clock.time() + 710)
    assert [e.to_dict() for e in a] == [e.to_dict() for e in b]
    assert restored.to_dict() == book.to_dict()
    assert book.get("lc-1.lamp_fault")["state"] == "suppressed"
    restored.clear("lc-1", "cabinet_mains_fault", ts=later + 20)
    assert state(restored, "lc-1.lamp_fault") == "unacknowledged"


def test_a_malformed_checkpoint_is_refused() -> None:
    _, clock = book_at()
    with pytest.raises(MalformedMessageError, match="version"):
        AlarmBook.from_dict({"version": 99}, clock)
    with pytest.raises(MalformedMessageError):
        AlarmBook.from_dict({"version": 1, "alarms": [{"id": "x"}], "crisis": {},
                             "bursts": {}}, clock)


def test_events_are_plain_values() -> None:
    book, _ = busy_book()
    for event in book.shelve("bld-1.fire", "alice", 5, "drill"):
        assert msgpack.unpackb(msgpack.packb(event.to_dict()))["kind"] == "transition"


# -- the lifecycle against a model ------------------------------------------------------

MODEL_TABLE = textwrap.dedent("""\
    [book]
    history = 5

    [priority.critical]
    escalate_after_s = 40
    [priority.high]
    escalate_after_s = 30
    [priority.medium]
    escalate_after_s = 20
    [priority.low]
    escalate_after_s = 10

    [condition.fire]
    priority = "critical"
    escalate_after_s = 15
    [condition.intrusion]
    priority = "high"
    escalate_after_s = 25
    [condition.lamp_fault]
    priority = "low"
    [condition.device_offline]
    priority = "medium"

    [[suppression]]
    name = "offline"
    by = ["device_offline"]
    masks = ["*"]
    """)
# (source, condition, kind, base priority); x1's device_offline masks its controller_fault.
PAIRS = [
    ("b1", "fire", "building", "critical"),
    ("b1", "intrusion", "building", "high"),
    ("l1", "lamp_fault", "lighting_circuit", "low"),
    ("x1", "controller_fault", "crossroad", "medium"),
    ("x1", "device_offline", "crossroad", "medium"),
]
LEVELS = ["low", "medium", "high", "critical"]
MODEL_DELAYS = {"critical": 40.0, "high": 30.0, "medium": 20.0, "low": 10.0}
OWN_DELAYS = {"fire": 15.0, "intrusion": 25.0}


@dataclass
class ModelAlarm:
    """One alarm as ISA-18.2 says it should be: the four base states and three overlays."""

    condition: str
    base_priority: str
    exists: bool = False
    active: bool = False
    base: str = "normal"
    acked_by: str | None = None
    shelved_until: float | None = None
    oos: bool = False
    suppressed: bool = False
    priority: str = ""
    escalated: bool = False
    timer: float | None = None

    def shown(self) -> str:
        if self.oos:
            return "out_of_service"
        if self.shelved_until is not None:
            return "shelved"
        if self.suppressed:
            return "suppressed"
        return self.base

    def hidden(self) -> bool:
        return self.oos or self.shelved_until is not None or self.suppressed

    def delay(self) -> float:
        if self.priority == self.base_priority and self.condition in OWN_DELAYS:
            return OWN_DELAYS[self.condition]
        return MODEL_DELAYS[self.priority]


class AlarmLifecycle(RuleBasedStateMachine):
    """Random raise/clear/ack/shelve/unshelve/out-of-service/tick against the model."""

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.book = AlarmBook(ManualClock(), parse_conditions(MODEL_TABLE, "model.toml"))
        self.model = {
            alarm_id(s, c): ModelAlarm(c, p, priority=p) for s, c, _, p in PAIRS
        }

    # -- the model's bookkeeping around every step

    def _step(self, change: Any) -> None:
        before = {aid: m.shown() for aid, m in self.model.items()}
        change()
        offline = self.model["x1.device_offline"].active
        dependant = self.model["x1.controller_fault"]
        was_hidden = dependant.hidden()
        dependant.suppressed = offline
        if was_hidden and not dependant.hidden():
            self._reveal(dependant)
        for aid, m in self.model.items():
            self._timers(m, before[aid], self.now)

    @staticmethod
    def _reveal(m: ModelAlarm) -> None:
        m.base = "unacknowledged" if m.active else "normal"
        if m.active:
            m.acked_by = None

    @staticmethod
    def _timers(m: ModelAlarm, before: str, at: float) -> None:
        after = m.shown()
        if after == "unacknowledged":
            if before != "unacknowledged":
                m.timer, m.escalated = at, False
        else:
            m.timer = None
        if after == "normal":
            m.priority, m.escalated = m.base_priority, False

    # -- rules

    @rule(i=st.integers(0, len(PAIRS) - 1))
    def raise_(self, i: int) -> None:
        source, condition, kind, _ = PAIRS[i]
        m = self.model[alarm_id(source, condition)]

        def change() -> None:
            m.exists = True
            if not m.active:
                m.active = True
                if m.base in ("normal", "rtn_unacknowledged"):
                    m.base, m.acked_by = "unacknowledged", None

        self._step(change)
        self.book.raise_(source, condition, municipality="dijon", kind=kind, ts=self.now)

    @rule(i=st.integers(0, len(PAIRS) - 1))
    def clear(self, i: int) -> None:
        source, condition, _, _ = PAIRS[i]
        m = self.model[alarm_id(source, condition)]

        def change() -> None:
            if m.active:
                m.active = False
                m.base = {"unacknowledged": "rtn_unacknowledged",
                          "acknowledged": "normal"}.get(m.base, m.base)

        self._step(change)
        self.book.clear(source, condition, ts=self.now)

    def _refused(self, aid: str, call: Any) -> bool:
        m = self.model[aid]
        if not m.exists:
            with pytest.raises(UnknownAlarmError):
                call()
            return True
        return False

    @rule(i=st.integers(0, len(PAIRS) - 1), user=st.sampled_from(["alice", "bob"]))
    def ack(self, i: int, user: str) -> None:
        aid = alarm_id(PAIRS[i][0], PAIRS[i][1])
        m = self.model[aid]

        def call() -> Any:
            return self.book.ack(aid, user, ts=self.now)

        if self._refused(aid, call):
            return
        if m.hidden():
            with pytest.raises(AlarmStateError):
                call()
            return

        def change() -> None:
            if m.base == "unacknowledged":
                m.base, m.acked_by = "acknowledged", user
            elif m.base == "rtn_unacknowledged":
                m.base, m.acked_by = "normal", user

        self._step(change)
        call()

    @rule(i=st.integers(0, len(PAIRS) - 1), minutes=st.sampled_from([0.5, 1, 2, 5]))
    def shelve(self, i: int, minutes: float) -> None:
        aid = alarm_id(PAIRS[i][0], PAIRS[i][1])
        m = self.model[aid]

        def call() -> Any:
            return self.book.shelve(aid, "alice", minutes, "nuisance", ts=self.now)

        if self._refused(aid, call):
            return
        if m.shown() in ("normal", "suppressed", "out_of_service"):
            with pytest.raises(AlarmStateError):
                call()
            return

        def change() -> None:
            m.shelved_until = self.now + minutes * 60

        self._step(change)
        call()

    @rule(i=st.integers(0, len(PAIRS) - 1))
    def unshelve(self, i: int) -> None:
        aid = alarm_id(PAIRS[i][0], PAIRS[i][1])
        m = self.model[aid]

        def call() -> Any:
            return self.book.unshelve(aid, "bob", ts=self.now)

        if self._refused(aid, call):
            return

        def change() -> None:
            if m.shelved_until is not None:
                m.shelved_until = None
                if not m.hidden():
                    self._reveal(m)

        self._step(change)
        call()

    @rule(i=st.integers(0, len(PAIRS) - 1), role=st.sampled_from(["admin", "admin", "operator"]))
    def out_of_service(self, i: int, role: str) -> None:
        aid = alarm_id(PAIRS[i][0], PAIRS[i][1])
        m = self.model[aid]

        def call() -> Any:
            return self.book.out_of_service(aid, "ada", role, ts=self.now)

        if role != "admin":
            with pytest.raises(AlarmForbiddenError):
                call()
            return
        if self._refused(aid, call):
            return

        def change() -> None:
            m.oos, m.shelved_until = True, None

        self._step(change)
        call()

    @rule(i=st.integers(0, len(PAIRS) - 1))
    def return_to_service(self, i: int) -> None:
        aid = alarm_id(PAIRS[i][0], PAIRS[i][1])
        m = self.model[aid]

        def call() -> Any:
            return self.book.return_to_service(aid, "ada", "admin", ts=self.now)

        if self._refused(aid, call):
            return

        def change() -> None:
            if m.oos:
                m.oos = False
                if not m.hidden():
                    self._reveal(m)

        self._step(change)
        call()

    # Steps that land exactly on shelve expiries (30, 60, 120 s) and escalation deadlines.
    @rule(dt=st.sampled_from([1, 5, 10, 15, 25, 30, 60, 120, 400]))
    def tick(self, dt: int) -> None:
        self.now += dt
        for m in self.model.values():
            if m.shelved_until is not None and m.shelved_until <= self.now:
                before = m.shown()
                due = m.shelved_until
                m.shelved_until = None
                if not m.hidden():
                    self._reveal(m)
                self._timers(m, before, due)
        for m in self.model.values():
            while m.timer is not None and not m.escalated and m.shown() == "unacknowledged":
                due = m.timer + m.delay()
                if due > self.now:
                    break
                if m.priority == "critical":
                    m.escalated = True
                    break
                m.priority = LEVELS[LEVELS.index(m.priority) + 1]
                m.timer = due
        self.book.tick(self.now)

    # -- what must hold after every step

    @invariant()
    def book_matches_model(self) -> None:
        for aid, m in self.model.items():
            if not m.exists:
                with pytest.raises(UnknownAlarmError):
                    self.book.get(aid)
                continue
            got = self.book.get(aid)
            want = {
                "state": m.shown(),
                "active": m.active,
                "priority": m.priority,
                "escalated": m.escalated,
                "acked_by": m.acked_by,
                "shelved_until": m.shelved_until,
            }
            assert {key: got[key] for key in want} == want, aid

    @invariant()
    def the_default_list_is_what_an_operator_must_see(self) -> None:
        shown = {aid for aid, m in self.model.items()
                 if m.exists and not m.hidden() and m.base != "normal"}
        assert {a["id"] for a in self.book.alarms()} == shown

    @precondition(lambda self: len(self.book) > 0)
    @invariant()
    def the_checkpoint_round_trips(self) -> None:
        saved = self.book.to_dict()
        restored = AlarmBook.from_dict(msgpack.unpackb(msgpack.packb(saved)), ManualClock(),
                                       self.book.conditions)
        assert restored.to_dict() == saved


TestAlarmLifecycle = AlarmLifecycle.TestCase
TestAlarmLifecycle.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_the_model_table_is_what_the_model_assumes() -> None:
    table: ConditionTable = parse_conditions(MODEL_TABLE, "model.toml")
    assert {p.value: d for p, d in table.escalate_after_s.items()} == MODEL_DELAYS
    assert table.delay("fire", Priority.CRITICAL) == OWN_DELAYS["fire"]
    assert table.spec("controller_fault").priority is Priority.MEDIUM
