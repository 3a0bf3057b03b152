"""The priority path's stage breakdown: the lane's timestamps and the member's summary."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from actors.priority import lane as priority_lane
from actors.priority.lane import REQUEST, LaneResources
from actors.priority.pool import STAGES, _Stages, merge_members
from runtime.envelope import Envelope, MessageKind


class _Session:
    def __init__(self) -> None:
        self.writes: list[tuple[int, list[tuple[int, list[int]]]]] = []

    async def write_many(self, unit: int, writes: list[tuple[int, list[int]]], *,
                         urgent: bool = False) -> None:
        self.writes.append((unit, writes))


class _Lane:
    def __init__(self) -> None:
        self.resources: dict[str, Any] = {"priority_grant_all": True}
        self.posted: list[Envelope] = []

    def post(self, env: Envelope) -> None:
        self.posted.append(env)


def test_a_granted_request_answers_with_the_lane_times_in_order(monkeypatch: Any) -> None:
    session = _Session()
    monkeypatch.setattr(LaneResources, "session", lambda self, host, port, unit, t: session)
    lane = _Lane()
    view = {"endpoint": "modbus://127.0.0.1:1502/3", "approaches": [1, 2, 3, 4], "mode": "auto",
            "phase": 1}
    now = time.time()
    msg = Envelope(target="xr-1", type=REQUEST, sender="priority-1", kind=MessageKind.COMMAND,
                   payload={"request_id": 7, "bus_id": "bus-1", "line": "L1", "approach": 1,
                            "eta_s": 10.0, "lateness_s": 120.0, "arrival_ts": now})
    before = time.time()
    answer = asyncio.run(priority_lane.serve(view, msg, lane))
    after = time.time()
    assert answer["granted"] is True
    entered, decided, written = answer["lane_ts"]
    assert before <= entered <= decided <= written <= after
    assert answer["written_ts"] == written
    assert len(session.writes) == 1


def test_stages_are_the_differences_of_consecutive_stamps() -> None:
    stages = _Stages(keep=3)
    for k in range(5):
        stages.add([float(k), k + 0.001, k + 0.003, k + 0.006, k + 0.010, k + 0.015,
                    k + 0.021, k + 0.028])
    summary = stages.summary()
    assert list(summary) == list(STAGES)
    for i, name in enumerate(STAGES):
        assert abs(summary[name]["p50"] - (i + 1)) < 1e-6  # type: ignore[operator]
        assert len(stages.recent[name]) == 3


def test_an_empty_stage_summary_has_no_figures_and_members_carry_theirs() -> None:
    empty = _Stages().summary()
    assert all(v == {"p50": None, "p99": None} for v in empty.values())
    merged = merge_members([{"id": "priority-1", "stages_ms": {"call": {"p50": 1.0}}}, {}])
    assert merged["members"][0]["stages_ms"] == {"call": {"p50": 1.0}}
    assert merged["members"][1]["stages_ms"] == {}
    # A member that says no scheduling class (an older one) is in the normal class.
    assert [m["realtime"] for m in merged["members"]] == [0, 0]
