"""Transit signal priority's rules: every refusal reason, the strategy choice, conflicts
settled by lateness then check-in, lockout timing on an injected clock, the benches'
grant_all mode, the rules file refused with file and line, request ids that never repeat
across restarts, and a state machine holding the server's invariants over random
requests, check-outs, cancellations and time."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from actors.priority.policy import (
    ENDINGS,
    GRANTED,
    MAX_REQUEST_ID,
    REFUSALS,
    STRATEGIES,
    TICK_S,
    ControllerView,
    CrossroadPolicy,
    Decision,
    LineRules,
    PolicyConfig,
    PriorityRequest,
    RequestIdAllocator,
    builtin_priority_config,
    eligible,
    load_priority_config,
    parse_priority_config,
)
from runtime.errors import PlanError

XR = "xr-dijon-0001"
#: Approach 1 (and 5, opposite) green; the controller has not taken up any request yet.
GREEN_1 = ControllerView("auto", phase=1, green=frozenset({1, 5}))
CONFIG = PolicyConfig(
    lockout_s=30, request_deadline_s=60, eta_window_s=60,
    default=LineRules(min_lateness_s=60, max_extension_s=15, early_green=True),
    lines={"L1": LineRules(min_lateness_s=0, max_extension_s=15, early_green=True),
           "B12": LineRules(min_lateness_s=60, max_extension_s=15, early_green=False)})


def req(rid: int, *, bus: str = "bus-0001", line: str = "B10", approach: int = 1,
        strategy: str = "extension", eta: float = 8.0, late: float = 120.0,
        arrival: float = 0.0, crossroad: str = XR) -> PriorityRequest:
    return PriorityRequest(rid, bus, line, crossroad, approach, strategy, eta_s=eta,
                           lateness_s=late, arrival_ts=arrival, received_ts=arrival)


def policy(config: PolicyConfig = CONFIG, **changes: Any) -> CrossroadPolicy:
    return CrossroadPolicy(XR, dataclasses.replace(config, **changes) if changes else config)


# -- the shipped rules ------------------------------------------------------------------------


def test_the_shipped_rules_hold_together() -> None:
    config = builtin_priority_config()
    assert config.source == "actors/plans/priority.toml"
    assert config.grant_all is False  # never in service
    assert config.eta_window_s <= config.request_deadline_s
    assert config.lockout_s > 0 and config.lockout_scope == "crossroad"
    # The Lianes are unconditional, the other lines wait for a minute's lateness.
    assert {name: r.min_lateness_s for name, r in config.lines.items()} == {
        f"L{n}": 0.0 for n in range(1, 7)}
    assert config.rules("B10") is config.default and config.default.min_lateness_s == 60
    assert eligible("L3", -40.0, config) is None
    assert eligible("B10", 59.0, config) == "not_late"
    # A line's table only changes what it names: the rest comes from [default].
    assert config.rules("L6").max_extension_s == 20 and config.rules("L1").max_extension_s == 15


# -- granting and the strategy ------------------------------------------------------------------


def test_a_late_bus_on_a_green_approach_gets_an_extension_the_controller_holds() -> None:
    xr = policy()
    decision = xr.decide(req(7, eta=8, late=95), 100.0, GREEN_1)
    assert decision == Decision(True, GRANTED, "extension", 15.0, 60.0, None)
    assert xr.active is not None and xr.active.request_id == 7
    snap = xr.snapshot()
    assert snap["active"] == {"request_id": 7, "bus": "bus-0001", "line": "B10", "approach": 1,
                              "strategy": "extension", "granted_ts": 100.0, "expires_ts": 160.0}
    assert snap["granted"] == 1 and sum(snap["refused"].values()) == 0


@pytest.mark.parametrize(("view", "eta", "proposed", "line", "want"), [
    # green now, at the stop line within the line's max extension: hold the green
    (GREEN_1, 15.0, "early_green", "B10", "extension"),
    # green now but too far: the green would have to be held too long; bring the next forward
    (GREEN_1, 15.5, "extension", "B10", "early_green"),
    # red now: early green
    (ControllerView("auto", phase=2, green=frozenset({2, 6})), 5.0, "extension", "B10",
     "early_green"),
    # no phase in green (all-red between phases): nothing counts as green
    (ControllerView("auto", phase=0, green=frozenset({1})), 5.0, "extension", "B10",
     "early_green"),
    # the view cannot tell which approaches are green: the generator's proposal stands
    (ControllerView("auto", phase=1), 40.0, "extension", "B10", "extension"),
    (ControllerView("auto", phase=1), 4.0, "early_green", "B10", "early_green"),
    # a line without early greens still gets its extensions
    (GREEN_1, 4.0, "extension", "B12", "extension"),
])
def test_the_strategy_is_an_extension_on_green_within_reach_else_an_early_green(
        view: ControllerView, eta: float, proposed: str, line: str, want: str) -> None:
    decision = policy().decide(req(1, eta=eta, strategy=proposed, line=line), 0.0, view)
    assert decision.grant and decision.strategy == want, decision


# -- each refusal -------------------------------------------------------------------------------


def refused(xr: CrossroadPolicy, request: PriorityRequest, now: float,
            view: ControllerView = GREEN_1) -> str:
    decision = xr.decide(request, now, view)
    assert not decision.grant and decision.strategy is None and decision.preempted is None
    return decision.reason


def test_duplicate_a_resent_id_or_a_bus_already_served() -> None:
    xr = policy()
    assert xr.decide(req(1), 0.0, GREEN_1).grant
    assert refused(xr, req(1), 0.5) == "duplicate"  # re-sent: the grant stands
    assert xr.active is not None and xr.active.request_id == 1
    assert refused(xr, req(2, approach=3), 1.0) == "duplicate"  # same bus, new id
    # A refused id stays refused: a bus tries again with a new one.
    assert refused(xr, req(3, bus="bus-0002", late=10), 2.0) == "not_late"
    assert refused(xr, req(3, bus="bus-0002", late=100), 3.0) == "duplicate"
    assert xr.refused["duplicate"] == 3


def test_unknown_approach() -> None:
    xr = CrossroadPolicy(XR, CONFIG, approaches=(1, 2, 3, 4))
    for approach in (0, 5, 9, -1):
        assert refused(xr, req(10 + approach, approach=approach), 0.0) == "unknown_approach"
    with pytest.raises(ValueError, match="approaches"):
        CrossroadPolicy(XR, CONFIG, approaches=(0, 1))
    with pytest.raises(ValueError, match="not xr-dijon-0001"):
        xr.decide(req(1, crossroad="xr-dijon-0002"), 0.0, GREEN_1)


def test_not_late_is_conditional_priority_per_line() -> None:
    xr = policy()
    assert refused(xr, req(1, late=59.9), 0.0) == "not_late"
    assert refused(xr, req(2, late=-30), 0.0) == "not_late"  # early
    assert xr.decide(req(3, late=-30, line="L1"), 0.0, GREEN_1).grant  # unconditional line
    assert policy().decide(req(4, late=60), 0.0, GREEN_1).grant  # exactly the threshold


def test_eta_beyond_window() -> None:
    xr = policy()
    assert refused(xr, req(1, eta=60.5), 0.0) == "eta_beyond_window"
    assert xr.decide(req(2, eta=60.0, bus="bus-0002"), 0.0, GREEN_1).grant


@pytest.mark.parametrize("mode", ["manual", "flashing", "all_red", "off", "start_flashing"])
def test_mode_no_priority_unless_the_controller_runs_auto(mode: str) -> None:
    assert refused(policy(), req(1), 0.0, ControllerView(mode, phase=0)) == "mode"


def test_no_strategy_when_the_bus_needs_an_early_green_its_line_may_not_have() -> None:
    xr = policy()
    red = ControllerView("auto", phase=2, green=frozenset({2}))
    assert refused(xr, req(1, line="B12"), 0.0, red) == "no_strategy"
    assert refused(xr, req(2, line="B12", eta=40), 0.0, GREEN_1) == "no_strategy"
    assert refused(xr, req(3, line="B12", strategy="early_green"), 0.0,
                   ControllerView("auto", phase=1)) == "no_strategy"


def test_max_active_one_grant_at_a_time_per_approach() -> None:
    xr = policy()
    assert xr.decide(req(1, late=70), 0.0, GREEN_1).grant
    # Another bus on the same approach, even later: the green asked for serves it too.
    assert refused(xr, req(2, bus="bus-0002", late=300), 1.0) == "max_active"
    assert xr.active is not None and xr.active.request_id == 1


def test_max_grants_within_the_window() -> None:
    xr = policy(max_grants=2, window_s=100, lockout_s=0)
    for rid, at in ((1, 0.0), (2, 10.0)):
        assert xr.decide(req(rid, bus=f"bus-{rid}"), at, GREEN_1).grant
        assert xr.check_out(rid, at + 5) is not None
    assert refused(xr, req(3, bus="bus-3"), 20.0) == "max_grants"
    assert refused(xr, req(4, bus="bus-4"), 99.9) == "max_grants"  # the grant at 0 still counts
    assert xr.decide(req(5, bus="bus-5"), 100.0, GREEN_1).grant  # a window later it no longer does


def test_every_refusal_reason_is_counted_and_reported() -> None:
    xr = CrossroadPolicy(XR, dataclasses.replace(CONFIG, max_grants=2, window_s=1000),
                         approaches=range(1, 5))
    red = ControllerView("auto", phase=2, green=frozenset({2}))
    assert xr.decide(req(1, late=70, arrival=0), 0.0, GREEN_1).grant
    cases = [
        (req(1), GREEN_1, "duplicate"),
        (req(2, bus="b2", approach=7), GREEN_1, "unknown_approach"),
        (req(3, bus="b3", late=1), GREEN_1, "not_late"),
        (req(4, bus="b4", eta=61), GREEN_1, "eta_beyond_window"),
        (req(5, bus="b5"), ControllerView("flashing"), "mode"),
        (req(6, bus="b6", line="B12"), red, "no_strategy"),
        (req(7, bus="b7", approach=1), GREEN_1, "max_active"),
        (req(8, bus="b8", approach=2, late=65), red, "conflict_lost"),
    ]
    for request, view, reason in cases:
        assert refused(xr, request, 1.0, view) == reason, request
    # The lockout and the window need the first grant gone, and a second one.
    assert xr.check_out(1, 2.0) is not None
    assert refused(xr, req(9, bus="b9"), 3.0) == "lockout"
    assert xr.decide(req(10, bus="b10"), 40.0, GREEN_1).grant
    assert xr.check_out(10, 41.0) is not None
    assert refused(xr, req(11, bus="b11"), 80.0) == "max_grants"
    snap = xr.snapshot()
    assert list(snap["refused"]) == list(REFUSALS)
    assert all(n == 1 for n in snap["refused"].values()), snap["refused"]
    assert snap["granted"] == 2 and snap["ended"] == dict.fromkeys(ENDINGS, 0) | {
        "checked_out": 2}
    assert snap["lockout_until"] == {"crossroad": 71.0}
    assert json.loads(json.dumps(snap)) == snap
    assert policy().snapshot()["refused"] == dict.fromkeys(REFUSALS, 0)


# -- conflicts ----------------------------------------------------------------------------------


def test_a_conflict_goes_to_the_later_bus_then_to_the_earlier_check_in() -> None:
    # The granted request has not been taken up by the controller (acting False): the later
    # bus on another approach displaces it.
    xr = policy()
    assert xr.decide(req(1, bus="a", approach=1, late=70, arrival=10), 10.0, GREEN_1).grant
    decision = xr.decide(req(2, bus="b", approach=3, late=100, arrival=11), 11.0, GREEN_1)
    assert decision.grant and decision.preempted == 1 and decision.strategy == "early_green"
    assert xr.ended["preempted"] == 1 and xr.active is not None and xr.active.request_id == 2
    # No lockout from a displacement.
    assert xr.snapshot()["lockout_until"] == {}
    # Equal lateness: the earlier check-in wins; equal both: the grant keeps its place.
    xr = policy()
    assert xr.decide(req(1, bus="a", late=70, arrival=10), 12.0, GREEN_1).grant
    assert xr.decide(req(2, bus="b", approach=2, late=70, arrival=9), 12.0, GREEN_1).preempted == 1
    xr = policy()
    assert xr.decide(req(1, bus="a", late=70, arrival=10), 12.0, GREEN_1).grant
    assert refused(xr, req(2, bus="b", approach=2, late=70, arrival=10), 12.0) == "conflict_lost"
    assert refused(xr, req(3, bus="c", approach=2, late=69, arrival=0), 12.0) == "conflict_lost"


def test_a_grant_the_controller_acts_on_or_that_displaced_another_is_never_displaced() -> None:
    xr = policy()
    assert xr.decide(req(1, bus="a", approach=1, late=70), 0.0, GREEN_1).grant
    acting = dataclasses.replace(GREEN_1, acting=True)
    assert refused(xr, req(2, bus="b", approach=3, late=900), 1.0, acting) == "conflict_lost"
    # Displacement happens at most once: b displaces a, then neither a (back, later still)
    # nor c can take it from b, so service does not flap.
    xr = policy()
    assert xr.decide(req(1, bus="a", approach=1, late=70), 0.0, GREEN_1).grant
    assert xr.decide(req(2, bus="b", approach=3, late=100), 1.0, GREEN_1).preempted == 1
    assert refused(xr, req(3, bus="a", approach=1, late=500), 2.0) == "conflict_lost"
    assert refused(xr, req(4, bus="c", approach=2, late=900), 2.0) == "conflict_lost"
    assert xr.active is not None and xr.active.request_id == 2


# -- ending and lockout -------------------------------------------------------------------------


def test_lockout_runs_from_check_out_on_the_injected_clock() -> None:
    xr = policy()
    assert xr.decide(req(1, bus="a"), 0.0, GREEN_1).grant
    clear = xr.check_out(1, 10.0)
    assert clear is not None and (clear.request_id, clear.bus_id, clear.approach,
                                  clear.ending, clear.at) == (1, "a", 1, "checked_out", 10.0)
    assert xr.check_out(1, 10.5) is None  # once
    assert xr.lockout_until(1) == xr.lockout_until(4) == 40.0
    assert refused(xr, req(2, bus="b", approach=3), 10.0) == "lockout"
    assert refused(xr, req(3, bus="c", approach=1), 39.99) == "lockout"
    assert xr.decide(req(4, bus="d", approach=3), 40.0, GREEN_1).grant


def test_an_approach_lockout_leaves_the_other_approaches_free() -> None:
    xr = policy(lockout_scope="approach")
    assert xr.decide(req(1, bus="a", approach=1), 0.0, GREEN_1).grant
    assert xr.check_out(1, 10.0) is not None
    assert refused(xr, req(2, bus="b", approach=1), 20.0) == "lockout"
    assert xr.decide(req(3, bus="c", approach=3), 20.0, GREEN_1).grant
    assert xr.snapshot()["lockout_until"] == {"1": 40.0}


def test_a_cancelled_grant_is_cleared_and_locks_out_too() -> None:
    xr = policy()
    assert xr.decide(req(1, bus="a"), 0.0, GREEN_1).grant
    assert xr.cancel(99, 5.0, "off_route") is None  # not the grant
    clear = xr.cancel(1, 5.0, "off_route")
    assert clear is not None and (clear.ending, clear.detail, clear.at) == (
        "cancelled", "off_route", 5.0)
    assert xr.active is None and xr.cancel(1, 6.0, "again") is None
    assert refused(xr, req(2, bus="b"), 34.0) == "lockout"
    # A refused request has nothing to clear.
    assert xr.check_out(2, 35.0) is None and xr.cancel(2, 35.0, "x") is None


def test_a_grant_expires_at_its_deadline_and_locks_out_from_then() -> None:
    xr = policy()
    assert xr.decide(req(1, bus="a"), 0.0, GREEN_1).grant
    assert xr.expire(59.9) == [] and xr.active is not None
    (clear,) = xr.expire(75.0)  # called late: it ended at its deadline all the same
    assert (clear.request_id, clear.ending, clear.at) == (1, "expired", 60.0)
    assert xr.expire(76.0) == [] and xr.check_out(1, 76.0) is None
    assert xr.lockout_until(1) == 90.0
    # Expiry also happens on the way into decide: a stale grant does not block a newcomer.
    xr = policy()
    assert xr.decide(req(1, bus="a"), 0.0, GREEN_1).grant
    assert refused(xr, req(2, bus="b", approach=3), 70.0) == "lockout"
    assert xr.decide(req(3, bus="c", approach=3), 90.0, GREEN_1).grant
    assert xr.ended["expired"] == 1 and xr.granted == 2


# -- the benches' mode ------------------------------------------------------------------------


def test_grant_all_grants_every_well_formed_request() -> None:
    xr = CrossroadPolicy(XR, dataclasses.replace(CONFIG, grant_all=True, max_grants=1),
                         approaches=range(1, 5))
    views = [GREEN_1, ControllerView("flashing"), ControllerView("auto", 2, frozenset({2}))]
    previous = None
    for i in range(40):
        request = req(i + 1, bus=f"bus-{i % 3}", approach=1 + i % 4, late=-100 + 10 * i,
                      eta=5.0 * i, line=("B12", "B10", "L1")[i % 3], arrival=float(i))
        decision = xr.decide(request, float(i), views[i % 3])
        assert decision.grant and decision.reason == GRANTED, (i, decision)
        assert decision.preempted == previous  # the newer replaces the crossroad's grant
        previous = request.request_id
        if i % 5 == 4:
            assert xr.check_out(request.request_id, i + 0.5) is not None
            previous = None
    # Still refused: what cannot be sent at all.
    assert refused(xr, req(1), 50.0) == "duplicate"
    assert refused(xr, req(100, approach=6), 50.0) == "unknown_approach"
    assert xr.granted == 40 and xr.granted == sum(xr.ended.values()) + (xr.active is not None)
    assert eligible("B10", -600, dataclasses.replace(CONFIG, grant_all=True)) is None


# -- the pool's check ---------------------------------------------------------------------------


def test_eligible_is_the_pool_side_of_conditional_priority() -> None:
    assert eligible("B10", 60.0, CONFIG) is None
    assert eligible("B10", 59.0, CONFIG) == "not_late"
    assert eligible("B10", math.nan, CONFIG) == "not_late"
    assert eligible("L1", -300.0, CONFIG) is None
    assert eligible("L1", math.nan, CONFIG) is None


# -- malformed values ---------------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "words"), [
    ({"request_id": 0}, "request_id: 0 is not in 1..4294967295"),
    ({"request_id": MAX_REQUEST_ID + 1}, "request_id"),
    ({"request_id": True}, "request_id"),
    ({"bus_id": ""}, "bus_id: expected a non-empty string"),
    ({"approach": 1.5}, "approach: expected a whole number"),
    ({"strategy": "preempt"}, "strategy: 'preempt' is not one of extension, early_green"),
    ({"eta_s": -1.0}, "eta_s: -1.0 is negative"),
    ({"lateness_s": math.nan}, "lateness_s: expected a finite number"),
    ({"arrival_ts": "now"}, "arrival_ts: expected a finite number"),
])
def test_a_malformed_request_is_refused_with_a_clear_error(changes: dict[str, Any],
                                                           words: str) -> None:
    fields = dataclasses.asdict(req(1)) | changes
    with pytest.raises(ValueError, match="priority request") as info:
        PriorityRequest(**fields)
    assert words in str(info.value)
    assert PriorityRequest(**(dataclasses.asdict(req(1)) | {"request_id": MAX_REQUEST_ID}))


def test_a_config_breaking_a_limit_in_code_is_refused() -> None:
    with pytest.raises(ValueError, match=r"lockout_scope: 'street'.*lockout_s: -1 s"):
        PolicyConfig(lockout_s=-1, lockout_scope="street")
    with pytest.raises(ValueError, match="eta_window_s 90 s is longer than request_deadline_s"):
        PolicyConfig(eta_window_s=90, request_deadline_s=30)
    with pytest.raises(ValueError, match=r"max_extension_s: 61 s is outside 0\.\.60 s"):
        LineRules(max_extension_s=61)
    with pytest.raises(ValueError, match="lines: 'no space'"):
        PolicyConfig(lines={"no space": LineRules()})
    with pytest.raises(ValueError, match="expected a number"):
        LineRules(min_lateness_s="60")  # type: ignore[arg-type]


# -- the file ------------------------------------------------------------------------------------

BAD_FILE = '''\
grant_all = "yes"

[crossroad]
lockout_s = -5
lockout_scope = "street"
max_grants = 2.5
window_s = 0
request_deadline_s = 30
eta_window_s = 45

[default]
min_lateness = 60
max_extension_s = 120
early_green = "yes"

[line.L1]
lockout_s = 10

[line."bad name"]
min_lateness_s = 0
'''


def test_a_rules_file_breaking_a_limit_is_refused_with_file_and_line() -> None:
    with pytest.raises(PlanError) as info:
        parse_priority_config(BAD_FILE, "priority.toml")
    issues = info.value.issues

    def at(line: int, *words: str) -> bool:
        return any(i.startswith(f"priority.toml:{line}: ") and all(w in i for w in words)
                   for i in issues)

    assert at(1, "grant_all: expected true or false, got string"), issues
    assert at(4, "crossroad.lockout_s: -5 s is outside 0..3600 s"), issues
    assert at(5, "crossroad.lockout_scope", '"street" is not one of crossroad, approach'), issues
    assert at(6, "crossroad.max_grants: expected a whole number, got float 2.5"), issues
    assert at(7, "crossroad.window_s: 0 s is outside 1..3600 s"), issues
    assert at(9, "crossroad.eta_window_s", "longer than request_deadline_s 30 s"), issues
    assert at(12, "default.min_lateness", "did you mean 'min_lateness_s'?"), issues
    assert at(13, "default.max_extension_s: 120 s is outside 0..60 s"), issues
    assert at(14, "default.early_green: expected true or false"), issues
    assert at(17, "line.L1.lockout_s", "a crossroad's rule", "[crossroad]"), issues
    assert at(19, 'line."bad name"', "does not match"), issues
    assert len(issues) == 11, issues
    assert issues == sorted(issues, key=lambda i: int(i.split(":")[1]))
    with pytest.raises(PlanError, match=r"^x\.toml:2: syntax"):
        parse_priority_config("[crossroad]\nlockout_s = \n", "x.toml")
    with pytest.raises(PlanError, match=r"^x\.toml:1: line: expected a table, got integer"):
        parse_priority_config("line = 5\n", "x.toml")
    with pytest.raises(PlanError, match=r"^x\.toml:2: line\.L1: expected a table"):
        parse_priority_config("[line]\nL1 = 3\n", "x.toml")
    with pytest.raises(PlanError, match=r"^x\.toml:1: bench: unknown key 'bench'"):
        parse_priority_config("bench = true\n", "x.toml")


def test_a_rules_file_loads_lines_over_its_default(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('grant_all = true\n[crossroad]\nlockout_scope = "approach"\nmax_grants = 3\n'
                    '[default]\nearly_green = false\nmin_lateness_s = 30\n'
                    '[line.B10]\nmin_lateness_s = 0\n', encoding="utf-8")
    config = load_priority_config(path)
    assert config.grant_all and config.lockout_scope == "approach" and config.max_grants == 3
    assert config.lockout_s == PolicyConfig().lockout_s  # not in the file: the default
    assert config.rules("B10") == LineRules(0.0, 15.0, False)
    assert config.rules("B11") == LineRules(30.0, 15.0, False) and config.source == str(path)
    assert parse_priority_config("", "empty.toml") == dataclasses.replace(
        PolicyConfig(), source="empty.toml")
    with pytest.raises(PlanError, match=r"missing\.toml:0: file: cannot read"):
        load_priority_config(tmp_path / "missing.toml")
    (tmp_path / "latin1.toml").write_bytes(b"# \xe9\n")
    with pytest.raises(PlanError, match=r"latin1\.toml:1: file: not valid UTF-8 \(byte 2\)"):
        load_priority_config(tmp_path / "latin1.toml")


# -- request ids ----------------------------------------------------------------------------------

DAY = 1_767_225_600.0  # 2026-01-01 00:00 UTC
TICKS_A_DAY = int(86400 / TICK_S)


@settings(max_examples=100, deadline=None)
@given(member=st.integers(0, 15),
       created=st.lists(st.integers(0, TICKS_A_DAY - 1), min_size=2, max_size=4, unique=True),
       data=st.data())
def test_request_ids_never_repeat_across_restarts_within_a_day(
        member: int, created: list[int], data: st.DataObject) -> None:
    # Each allocator is the member restarted: it hands out ids until the next is created.
    starts = sorted(DAY + t * TICK_S + data.draw(st.floats(0, TICK_S * 0.999)) for t in created)
    ends = [*starts[1:], starts[-1] + 300.0]
    seen: set[int] = set()
    for start, end in zip(starts, ends, strict=True):
        ids = RequestIdAllocator(member, start)
        times = sorted(data.draw(st.lists(st.floats(start, end, exclude_max=True), max_size=60)))
        for now in times:
            ident = ids.allocate(now)
            assert 0 < ident <= MAX_REQUEST_ID
            assert ident not in seen
            seen.add(ident)


@settings(max_examples=100, deadline=None)
@given(created=st.tuples(st.floats(DAY, DAY + 86399), st.floats(DAY, DAY + 86399)),
       steps=st.lists(st.tuples(st.booleans(), st.floats(0, 5)), max_size=80))
def test_two_members_ids_never_meet(created: tuple[float, float],
                                    steps: list[tuple[bool, float]]) -> None:
    members = (RequestIdAllocator(3, created[0]), RequestIdAllocator(4, created[1]))
    now = max(created)
    seen: set[int] = set()
    for which, dt in steps:
        now += dt
        ident = members[which].allocate(now)
        assert ident not in seen
        seen.add(ident)


def test_request_ids_skip_zero_and_run_ahead_only_past_a_ticks_share() -> None:
    # Member 0 in the tick that wraps to 0 (the one after its creation's): 0 is skipped.
    start = (2 ** 21) * TICK_S * 1000 - TICK_S
    assert RequestIdAllocator(0, start).allocate(start) == 1
    ids = RequestIdAllocator(1, start)
    burst = [ids.allocate(start) for _ in range(128)]
    assert ids.ahead_s(start) == TICK_S  # the creation's tick + 1, as always
    burst.append(ids.allocate(start))  # the 129th within the tick takes the next one
    assert len(set(burst)) == 129 and ids.ahead_s(start) == 2 * TICK_S
    assert ids.ahead_s(start + 10) == 0.0
    with pytest.raises(ValueError, match="member 16"):
        RequestIdAllocator(16, start)
    with pytest.raises(ValueError, match="finite"):
        RequestIdAllocator(1, math.inf)


# -- the server against its invariants --------------------------------------------------------

MACHINE_CONFIG = PolicyConfig(
    lockout_s=20, max_grants=2, window_s=200, request_deadline_s=30, eta_window_s=30,
    default=LineRules(min_lateness_s=60, max_extension_s=15, early_green=True),
    lines={"L1": LineRules(0, 10, True), "B12": LineRules(60, 15, False)})
MACHINE_APPROACHES = (1, 2, 3, 4)


class PolicyMachine(RuleBasedStateMachine):
    """Random requests, check-outs, cancellations, expiries and time steps; the model keeps
    what was granted and how it ended, and checks the server's invariants after each step."""

    config = MACHINE_CONFIG

    def __init__(self) -> None:
        super().__init__()
        self.xr = CrossroadPolicy(XR, self.config, approaches=MACHINE_APPROACHES)
        self.now = 1_000.0
        self.next_id = 1
        self.sent: list[int] = []
        self.live: dict[int, tuple[int, float]] = {}  # granted, not ended: approach, deadline
        self.granted: list[int] = []
        self.endings: dict[int, str] = {}
        self.ends: list[tuple[float, int]] = []  # (when, approach) of ends that lock out
        self.grant_times: list[float] = []
        self.decisions = 0
        self.displacers: set[int] = set()

    def _lapse(self) -> None:
        """The model's expiry: what the server drops on its way into any call at now."""
        for rid, (_, deadline) in list(self.live.items()):
            if self.now >= deadline:
                self._ended(rid, "expired", deadline)

    def _ended(self, rid: int, ending: str, at: float) -> None:
        approach, _ = self.live.pop(rid)
        assert rid not in self.endings, "a grant ended twice"
        self.endings[rid] = ending
        if ending != "preempted":
            self.ends.append((at, approach))

    def _locked(self, approach: int) -> bool:
        scope = self.config.lockout_scope
        return any(at <= self.now < at + self.config.lockout_s for at, a in self.ends
                   if scope == "crossroad" or a == approach)

    # Mostly requests that pass the request's own checks, so that grants, conflicts,
    # lockouts and the window are reached often.
    @rule(bus=st.integers(0, 5), approach=st.integers(0, 5),
          late=st.floats(60, 300) | st.floats(-60, 300), eta=st.floats(0, 30) | st.floats(0, 45),
          strategy=st.sampled_from(["extension", "early_green"]),
          line=st.sampled_from(["B10", "L1", "B12"]),
          mode=st.sampled_from(["auto"] * 5 + ["flashing"]),
          green=st.none() | st.frozensets(st.integers(1, 4), max_size=2),
          phase=st.integers(0, 2), acting=st.booleans(), resend=st.integers(0, 9))
    def request(self, bus: int, approach: int, late: float, eta: float, strategy: str,
                line: str, mode: str, green: frozenset[int] | None, phase: int, acting: bool,
                resend: int) -> None:
        if resend == 0 and self.sent:
            rid = self.sent[len(self.sent) // 2]
        else:
            rid, self.next_id = self.next_id, self.next_id + 1
        request = PriorityRequest(rid, f"bus-{bus}", line, XR, approach, strategy, eta_s=eta,
                                  lateness_s=late, arrival_ts=self.now, received_ts=self.now)
        self._lapse()
        before = next(iter(self.live), None)
        decision = self.xr.decide(request, self.now, ControllerView(mode, phase, green, acting))
        self.decisions += 1
        fresh = rid not in self.sent
        self.sent.append(rid)
        assert decision.reason in (GRANTED, *REFUSALS)
        assert decision.grant == (decision.reason == GRANTED)
        if not fresh:
            assert decision.reason == "duplicate"
        if self.config.grant_all and fresh and approach in MACHINE_APPROACHES:
            assert decision.grant, decision
        if not decision.grant:
            assert decision.preempted is None
            return
        assert decision.preempted == before
        assert decision.strategy in STRATEGIES
        assert decision.deadline_s == self.config.request_deadline_s
        if not self.config.grant_all:
            # Never flapping: a grant the controller acts on, or that displaced another,
            # keeps its place.
            assert before is None or not (acting or before in self.displacers)
            assert not self._locked(approach), "granted inside the lockout"
            window = [t for t in self.grant_times if t > self.now - self.config.window_s]
            assert self.config.max_grants == 0 or len(window) < self.config.max_grants, (
                "more grants than the window allows")
            assert before is None or self.live[before][0] != approach
        if before is not None:
            self._ended(before, "preempted", self.now)
            self.displacers.add(rid)
        self.live[rid] = (approach, self.now + self.config.request_deadline_s)
        self.granted.append(rid)
        self.grant_times.append(self.now)

    @rule(which=st.integers(0, 1000), cancel=st.booleans(), granted=st.booleans())
    def end(self, which: int, cancel: bool, granted: bool) -> None:
        """A check-out or a cancellation: of the grant held, or of any request sent."""
        self._lapse()
        if granted and self.live:
            rid = next(iter(self.live))
        else:
            rid = self.sent[which % len(self.sent)] if self.sent else 12345
        clear = (self.xr.cancel(rid, self.now, "test") if cancel
                 else self.xr.check_out(rid, self.now))
        if rid in self.live:
            ending = "cancelled" if cancel else "checked_out"
            assert clear is not None and (clear.request_id, clear.ending, clear.at) == (
                rid, ending, self.now)
            self._ended(rid, ending, self.now)
        else:
            assert clear is None

    @rule(dt=st.floats(0, 40))
    def wait(self, dt: float) -> None:
        self.now += dt

    @rule()
    def expire(self) -> None:
        due = {rid: deadline for rid, (_, deadline) in self.live.items() if self.now >= deadline}
        self._lapse()
        assert {(c.request_id, c.at, c.ending) for c in self.xr.expire(self.now)} == {
            (rid, at, "expired") for rid, at in due.items()}

    @invariant()
    def holds(self) -> None:
        xr = self.xr
        assert len(self.live) <= 1, "more than one grant at a crossroad"
        # Both expire lazily, on the way into a call: they agree on the grant held.
        active = xr.active.request_id if xr.active else None
        assert active == next(iter(self.live), None)
        snap = xr.snapshot()
        assert snap["granted"] == len(self.granted) == xr.granted
        assert xr.granted == (active is not None) + sum(snap["ended"].values())
        assert self.decisions == xr.granted + sum(snap["refused"].values())
        assert set(xr.refused) <= set(REFUSALS) and set(xr.ended) <= set(ENDINGS)

    @rule()
    def drain(self) -> None:
        """Every grant ends: by check-out, cancellation, displacement, or at its deadline."""
        self.now += self.config.request_deadline_s
        self._lapse()
        self.xr.expire(self.now)
        assert self.xr.active is None and not self.live
        assert set(self.endings) == set(self.granted)
        assert dict(self.xr.ended) == {e: n for e in ENDINGS
                                       if (n := list(self.endings.values()).count(e))}


class ApproachLockoutMachine(PolicyMachine):
    config = dataclasses.replace(MACHINE_CONFIG, lockout_scope="approach", max_grants=0)


class GrantAllMachine(PolicyMachine):
    config = dataclasses.replace(MACHINE_CONFIG, grant_all=True)


_MACHINE_SETTINGS = settings(max_examples=50, stateful_step_count=40, deadline=None)
TestPolicyMachine = PolicyMachine.TestCase
TestPolicyMachine.settings = _MACHINE_SETTINGS
TestApproachLockoutMachine = ApproachLockoutMachine.TestCase
TestApproachLockoutMachine.settings = _MACHINE_SETTINGS
TestGrantAllMachine = GrantAllMachine.TestCase
TestGrantAllMachine.settings = _MACHINE_SETTINGS
