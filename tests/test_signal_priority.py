"""Signal priority in the traffic controller's model: its limits, its queue, its safety.

The model runs on its own clock (``advance``), so these tests need no sockets;
the Modbus path is tested in ``tests/test_modbus.py``. A recording model notes
every stage change at the exact time the controller makes it, so that each
green, amber and all-red can be measured, and the last test drives random
requests, checkouts and cancels through it and checks that no sequence ever
breaks a minimum green, a pedestrian minimum, a clearance, the maximum green,
the extension limit or a deadline.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from devices.sim.traffic import (
    FACTORY_TABLE,
    MAX_GREEN_S,
    MIN_GREEN_S,
    PEDESTRIAN_MIN_GREEN_S,
    PRIORITY_MAX_EXTENSION_S,
    PRIORITY_TABLE_SIZE,
    TrafficModel,
    empty_slot,
    table_problems,
)


class Recording(TrafficModel):
    """A controller that notes ``(time, phase, stage)`` at each stage it enters."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[float, int, str]] = [(0.0, self.phase, self.stage)]

    def _next_stage(self) -> None:
        super()._next_stage()
        self.log.append((self.now, self.phase, self.stage))

    def stages(self) -> list[tuple[int, str, float]]:
        """Each stage completed: its phase, its name and how long it lasted."""
        return [(phase, stage, end - start)
                for (start, phase, stage), (end, _, _) in pairwise(self.log)]


def write(model: TrafficModel, command: str = "request", request_id: int = 1,
          **fields: Any) -> None:
    """A priority request block written whole, as the simulator hands it to the model."""
    regs = {"prio_id": request_id, "prio_command": command,
            "prio_approach": 1 if command == "request" else 0, "prio_type": "extension",
            "prio_eta_s": 10, "prio_deadline_s": 60, "prio_max_extension_s": 10}
    regs.update({f"prio_{k}": v for k, v in fields.items()})
    writes = [("prio_request", 0, name, value) for name, value in regs.items()]
    assert model.check_write(writes) is None
    for w in writes:
        assert model.apply(*w) is None
    model.applied(writes)


def status(model: TrafficModel) -> tuple[int, str, str]:
    return model.prio_status_id, model.prio_status, model.prio_reason


def slot(number: int, greens: list[int], pedestrian: int = 0) -> dict[str, Any]:
    """A plan table slot: one phase per green, amber 3 s, all-red 2 s."""
    out = empty_slot()
    for n, green in enumerate(greens, start=1):
        least = PEDESTRIAN_MIN_GREEN_S if n == pedestrian else MIN_GREEN_S
        out.update({f"min_green_{n}": least, f"green_{n}": green, f"amber_{n}": 3,
                    f"all_red_{n}": 2, f"pedestrian_{n}": n == pedestrian})
    out.update(number=number, cycle=sum(greens) + 5 * len(greens))
    assert table_problems(out) == []
    return out


def test_requests_are_served_one_at_a_time_in_arrival_order() -> None:
    model = Recording()
    for request_id, approach in ((1, 2), (2, 4), (3, 3)):
        write(model, request_id=request_id, approach=approach, eta_s=5, deadline_s=120)
    assert status(model) == (3, "queued", "none")
    assert [r.id for r in model.requests] == [1, 2, 3]
    model.advance(120.0)
    # Phase 2 then phase 4 (the queue's order), phase 3 in the next cycle.
    served = [p for p, stage, _ in model.stages() if stage == "green"]
    assert served[:6] == [1, 2, 3, 4, 5, 1]
    assert model.priority.served == 3 and model.priority.granted == 3 and not model.requests
    assert model.values()["prio_active"] == 0


def test_the_table_holds_eight_requests() -> None:
    model = TrafficModel()
    for n in range(1, PRIORITY_TABLE_SIZE + 1):
        write(model, request_id=n, approach=2)
    assert model.values()["prio_active"] == PRIORITY_TABLE_SIZE
    write(model, request_id=99, approach=2)
    assert status(model) == (99, "refused", "busy")
    assert model.priority.refused == {"busy": 1}


def test_an_extension_never_goes_beyond_the_maximum_green() -> None:
    model = Recording()
    model.slots[1] = slot(2, [110, 10, 10, 10])
    model.plan, model.latch = 2, True
    model.advance(73.0)  # the factory cycle ends: plan 2 latches, phase 1 green for 110 s
    model.advance(100.0)
    assert model.program.number == 2 and model.phase == 1 and model.stage == "green"
    # The bus is 40 s away: 15 s of extension would make 125 s of green.
    write(model, request_id=5, approach=1, eta_s=40, max_extension_s=15)
    assert status(model) == (5, "granted", "max_green")
    model.advance(60.0)
    assert (1, "green", MAX_GREEN_S) in model.stages()
    assert status(model) == (5, "served", "max_green")


def test_a_plan_without_the_phase_drops_its_request() -> None:
    model = TrafficModel()
    model.slots[1] = slot(2, [10, 10, 10])
    model.advance(60.0)  # phase 5 green: phase 4's is over for this cycle
    write(model, request_id=6, approach=4, eta_s=60, deadline_s=120)
    model.plan, model.latch = 2, True
    model.advance(13.0)  # the boundary: plan 2 has no phase 4
    assert model.program.number == 2
    assert status(model) == (6, "cleared", "no_phase")
    assert model.priority.dropped == 1 and not model.requests
    # Its approach has no phase now: refused.
    write(model, request_id=7, approach=8)
    assert status(model) == (7, "refused", "no_phase")
    # A pedestrian phase is no bus's either.
    model = TrafficModel()
    write(model, request_id=8, approach=1)
    assert status(model) == (8, "granted", "none")
    assert FACTORY_TABLE["pedestrian_5"] is True


def test_manual_holds_no_request() -> None:
    model = TrafficModel()
    write(model, request_id=9, approach=2)
    assert model.apply(None, 0, "mode", "manual") is None
    assert status(model) == (9, "cleared", "mode") and not model.requests
    write(model, request_id=10, approach=2)
    assert status(model) == (10, "refused", "mode")


_REQUEST = st.fixed_dictionaries({
    "command": st.sampled_from(["request", "request", "request", "checkout", "cancel"]),
    "request_id": st.integers(1, 12),
    "approach": st.integers(1, 8),
    "type": st.sampled_from(["extension", "early_green"]),
    "eta_s": st.integers(0, 60),
    "deadline_s": st.integers(1, 200),
    "max_extension_s": st.integers(0, 40),
})


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 25.0), _REQUEST), max_size=30))
def test_no_sequence_of_requests_breaks_the_controllers_limits(
    script: list[tuple[float, dict[str, Any]]],
) -> None:
    model = Recording()
    for delay, request in script:
        model.advance(delay)
        command = request.pop("command")
        if command != "request":
            request["approach"] = 0
        write(model, command, **request)
        assert len(model.requests) <= PRIORITY_TABLE_SIZE
        assert all(r.drop_at > model.now for r in model.requests)
    model.advance(150.0)
    # Every request was let go of by its deadline (120 s at most) without a further write.
    assert not model.requests
    phases = model.program.phases
    stages = model.stages()
    for (phase, stage, lasted), (next_phase, next_stage, _) in pairwise(stages):
        times = phases[phase - 1]
        if stage == "green":
            least = PEDESTRIAN_MIN_GREEN_S if times.pedestrian else MIN_GREEN_S
            assert lasted >= max(times.min_green, least) - 1e-6, (phase, lasted)
            assert lasted <= min(times.green + PRIORITY_MAX_EXTENSION_S, MAX_GREEN_S) + 1e-6
            assert (next_phase, next_stage) == (phase, "amber")
        elif stage == "amber":
            assert abs(lasted - times.amber) < 1e-6, "amber in full"
            assert (next_phase, next_stage) == (phase, "all_red")
        else:
            assert abs(lasted - times.all_red) < 1e-6, "all-red in full"
            assert next_stage == "green"
            assert not phases[next_phase - 1].pedestrian or next_phase == phase % 5 + 1, \
                "a jump goes to a vehicle phase only"
