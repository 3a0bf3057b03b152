"""The crisis coordinator against a model: random activations (with and without replace),
deactivations and operators' setpoints, decisions arriving before the last one has settled.

The coordinator runs on a scripted context: entities answer ``get_state`` from a fake
device table, journaled commands are applied in journal order, and the device follows at
once. Once everything has settled, every field the plans touch must hold what the model
says (a plan's setpoint while it runs; the pre-crisis value after it, or the operator's
value set during it), each municipality must show its mode, and a deactivation must list
the operators' fields it kept.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from actors.control.crisis import CALLER, RESTORE_CALLER, CrisisCoordinator
from actors.plan import builtin_plans
from actors.registry import BEHAVIOURS
from runtime.clock import ManualClock
from runtime.commands import Command, CommandStatus
from runtime.envelope import Envelope, MessageKind, unpack
from runtime.errors import RejectedError
from runtime.inventory import Equipment, Inventory, Municipality
from runtime.placement import coordinator

MUNIS = ("dijon", "talant")


def _eq(eid: str, kind: str, muni: str, **attrs: Any) -> Equipment:
    return Equipment(id=eid, kind=kind, municipality=muni, lat=47.33, lon=5.02,
                     endpoint="mqtt", profile=kind, attrs=attrs)


INVENTORY = Inventory("model", tuple(Municipality(m, m.title(), 47.33, 5.02, 1) for m in MUNIS), (
    _eq("xr-dijon-0001", "crossroad", "dijon", tags=["priority_route"]),
    _eq("at-dijon-0001", "access_terminal", "dijon", tags=["flood_prone"]),
    _eq("cam-dijon-0001", "camera", "dijon", presets={"flood": 12}),
    _eq("veh-dijon-0001", "vehicle", "dijon", role="gritter"),
    _eq("xr-talant-0001", "crossroad", "talant", tags=["priority_route"]),
    _eq("at-talant-0001", "access_terminal", "talant", tags=["flood_prone"]),
))
INITIAL = {"crossroad": ("plan", 2), "access_terminal": ("bollard", "down"),
           "camera": ("preset", 1), "vehicle": ("message", "")}
OPERATOR_VALUES = {"plan": [3, 5], "bollard": ["up", "down"], "preset": [4, 6],
                   "message": ["a", "b"]}
KIND = {eq.id: eq.kind for eq in INVENTORY.equipment}
MUNI = {eq.id: eq.municipality for eq in INVENTORY.equipment}
FIELDS = [(eid, INITIAL[kind][0]) for eid, kind in KIND.items()]
BOOK = builtin_plans()
CANDIDATES = BOOK.candidates(INVENTORY.equipment)


def _want(mode: str, muni: str) -> dict[tuple[str, str], Any]:
    """What plan ``mode`` sets in ``muni``, by (entity, field)."""
    if mode == "normal":
        return {}
    actions = BOOK.plan(mode).resolve(CANDIDATES, [muni])
    return {(eid, f): v for eid, a in actions.items() for f, v in a.setpoints.items()}


class ScriptedContext:
    """The coordinator's context: a fake journal, store and field, no host."""

    def __init__(self) -> None:
        attrs = CrisisCoordinator.coordinator_attrs(INVENTORY)
        self._equipment = coordinator("crisis", INVENTORY, attrs=attrs)
        self._clock = ManualClock()
        self.outbox: list[Envelope] = []
        self.journal: list[Command] = []
        self.store: dict[str, Command] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.model: bytes = b""

    @property
    def id(self) -> str:
        return "crisis"

    @property
    def equipment(self) -> Equipment:
        return self._equipment

    @property
    def clock(self) -> ManualClock:
        return self._clock

    @property
    def device(self) -> None:
        return None

    def send(self, env: Envelope) -> None:
        self.outbox.append(env)

    def reply(self, request: Envelope, payload: Any = None, *, type: str = "reply") -> None:
        raise AssertionError("the coordinator answers through the host, not by itself")

    def emit(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    def start_timer(self, name: str, delay_s: float, type: str, payload: Any = None, *,
                    repeat: bool = False) -> None:
        return None

    def cancel_timer(self, name: str) -> None:
        return None

    def publish_view(self, view: Mapping[str, Any]) -> None:
        return None

    def publish_read_model(self, name: str, data: bytes) -> None:
        self.model = data

    def observe(self, metric: str, value: float) -> None:
        return None

    async def submit(self, commands: Sequence[Command]) -> list[Command]:
        out = []
        for cmd in commands:
            if cmd.command_id not in self.store:
                self.store[cmd.command_id] = cmd
                self.journal.append(cmd)
            out.append(self.store[cmd.command_id])
        return out

    async def commands(self, ids: Sequence[str]) -> dict[str, Command]:
        return {i: self.store[i] for i in ids if i in self.store}


class CrisisModel(RuleBasedStateMachine):
    """Random decisions and operators' setpoints against the model of the module doc."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.ctx = ScriptedContext()
        self.crisis = CrisisCoordinator(self.ctx)
        self.ids = itertools.count(1)
        # The field: desired, reported and which command set each field, per entity.
        self.desired: dict[str, dict[str, Any]] = {e: {} for e in KIND}
        self.reported = {e: {INITIAL[k][0]: INITIAL[k][1]} for e, k in KIND.items()}
        self.set_by: dict[str, dict[str, str]] = {e: {} for e in KIND}
        # What a layered kind records as a plan takes a field ([value, by]), as the
        # entities do (EquipmentEntity.keep_crisis_base), and puts back at its restore.
        self.crisis_base: dict[str, dict[str, list[Any]]] = {e: {} for e in KIND}
        self.crisis_held: dict[str, set[str]] = {e: set() for e in KIND}
        self.applied = 0
        # The model.
        self.mode = dict.fromkeys(MUNIS, "normal")
        self.held = {(e, f): INITIAL[KIND[e]][1] for e, f in FIELDS}
        self.base: dict[tuple[str, str], Any] = {}
        self.operator: set[tuple[str, str]] = set()
        self.expect_kept: dict[str, tuple[str, set[tuple[str, str]]]] = {}
        # A decision taken before the last one settled: which fields the restore lists as
        # kept then depends on what had acted (the values do not).
        self.unsettled = False
        self.loop.run_until_complete(self.crisis.on_start(None))

    def teardown(self) -> None:
        self.loop.close()

    # -- the scripted world ---------------------------------------------------------
    def _state(self, eid: str) -> dict[str, Any]:
        return {"state": {"set_by": dict(self.set_by[eid]),
                          "crisis_base": {k: list(v) for k, v in self.crisis_base[eid].items()}},
                "twin": {"desired": dict(self.desired[eid]),
                         "reported": {k: {"value": v} for k, v in self.reported[eid].items()}}}

    async def _settle(self) -> None:
        for _ in range(50):
            busy = False
            while self.ctx.outbox:
                env = self.ctx.outbox.pop(0)
                busy = True
                if env.target == "crisis":
                    await self.crisis.handle(env)
                else:
                    assert env.type == "get_state" and env.reply_to == "crisis"
                    self.ctx.outbox.append(Envelope(
                        target="crisis", type="reply", payload=self._state(env.target),
                        sender=env.target, kind=MessageKind.REPLY, correlation_id=env.id))
            while self.applied < len(self.ctx.journal):
                cmd = self.ctx.journal[self.applied]
                self.applied += 1
                busy = True
                clean = BEHAVIOURS[KIND[cmd.target]].validate_command(cmd.action, cmd.params)
                if BEHAVIOURS[KIND[cmd.target]].CRISIS_LAYER:
                    self._layer(cmd, clean)
                self.desired[cmd.target].update(clean)
                self.reported[cmd.target].update(clean)
                self.set_by[cmd.target].update(dict.fromkeys(clean, cmd.command_id))
                self.ctx.store[cmd.command_id] = Command(
                    cmd.command_id, cmd.target, cmd.action, cmd.params, cmd.caller,
                    status=CommandStatus.ACKED)
            await self.crisis.handle(Envelope(target="crisis", type="follow",
                                              kind=MessageKind.CONTROL))
            if not busy:
                return
        raise AssertionError("the coordinator never settled")

    def _layer(self, cmd: Command, clean: dict[str, Any]) -> None:
        """A layered kind's baseline: recorded as a plan takes a field, put back after."""
        base, held = self.crisis_base[cmd.target], self.crisis_held[cmd.target]
        if cmd.caller == CALLER:
            for name in clean:
                if name not in base or name not in held:
                    held.add(name)
                    base[name] = [self.desired[cmd.target].get(
                        name, self.reported[cmd.target].get(name)),
                        self.set_by[cmd.target].get(name, ""), cmd.command_id]
                else:
                    base[name][2] = cmd.command_id
        elif cmd.caller == RESTORE_CALLER:
            held.clear()
            for name in clean:
                got = base.pop(name, None)
                if got is not None and got[0] is not None:
                    clean[name] = got[0]

    async def _decide(self, action: str, params: dict[str, Any]) -> str | None:
        cid = f"c{next(self.ids)}"
        try:
            await self.crisis.handle(Envelope(
                target="crisis", type="command", sender="journal", kind=MessageKind.COMMAND,
                payload={"command_id": cid, "action": action, "params": params,
                         "caller": "user:ana:operator"}))
        except RejectedError:
            return None
        return cid

    # -- the model --------------------------------------------------------------------
    def _end(self, muni: str, keep: set[tuple[str, str]]) -> None:
        for key in _want(self.mode[muni], muni):
            if key in self.operator:
                keep.add(key)
            else:
                self.held[key] = self.base[key]
            self.base.pop(key, None)
            self.operator.discard(key)

    # -- rules --------------------------------------------------------------------------
    @rule(mode=st.sampled_from(["snow", "flood", "tsunami"]),
          munis=st.lists(st.sampled_from(MUNIS), min_size=1, max_size=2, unique=True),
          replace=st.booleans(), settle=st.booleans())
    def activate(self, mode: str, munis: list[str], replace: bool, settle: bool) -> None:
        busy = [m for m in munis if self.mode[m] != "normal"]
        cid = self.loop.run_until_complete(self._decide(
            "activate", {"mode": mode, "municipalities": munis, "replace": replace}))
        refused = mode == "tsunami" or (busy and not replace)
        assert (cid is None) == bool(refused), (mode, munis, replace, self.mode)
        if cid is None:
            return
        for m in munis:
            new = _want(mode, m)
            for key in _want(self.mode[m], m):
                if key in new:
                    continue
                if key not in self.operator:
                    self.held[key] = self.base[key]
                self.base.pop(key, None)
                self.operator.discard(key)
            for key, value in new.items():
                if key not in self.base or key in self.operator:
                    self.base[key] = self.held[key]
                self.held[key] = value
                self.operator.discard(key)
            self.mode[m] = mode
            self.expect_kept.pop(m, None)
        self.unsettled = True
        if settle:
            self.settle()

    @rule(munis=st.lists(st.sampled_from(MUNIS), min_size=1, max_size=2, unique=True),
          settle=st.booleans())
    def deactivate(self, munis: list[str], settle: bool) -> None:
        cid = self.loop.run_until_complete(self._decide("deactivate",
                                                        {"municipalities": munis}))
        assert cid is not None
        for m in munis:
            if self.mode[m] == "normal":
                continue
            keep: set[tuple[str, str]] = set()
            self._end(m, keep)
            self.mode[m] = "normal"
            if self.unsettled:
                self.expect_kept.pop(m, None)
            else:
                self.expect_kept[m] = (cid, keep)
        self.unsettled = True
        if settle:
            self.settle()

    @rule(i=st.integers(0, len(FIELDS) - 1), j=st.integers(0, 1))
    def operator_sets(self, i: int, j: int) -> None:
        self.settle()
        eid, name = FIELDS[i]
        value = OPERATOR_VALUES[name][j]
        self.desired[eid][name] = value
        self.reported[eid][name] = value
        self.set_by[eid][name] = f"op{next(self.ids)}"
        # The operator takes the field from the plan (the lighting circuit's way).
        self.crisis_held[eid].discard(name)
        self.held[(eid, name)] = value
        if (eid, name) in self.base:
            self.operator.add((eid, name))

    @rule()
    def settle(self) -> None:
        self.loop.run_until_complete(self._settle())
        self.unsettled = False
        for (eid, name), value in self.held.items():
            got = self.desired[eid].get(name, self.reported[eid][name])
            assert got == value, (eid, name, got, value, self.mode)
            assert self.reported[eid][name] == value
        rows = unpack(self.ctx.model)["municipalities"]
        for m in MUNIS:
            assert rows.get(m, {}).get("mode", "normal") == self.mode[m]
            if m in rows:
                assert rows[m]["entities"]["pending"] == 0 and rows[m]["entities"]["failed"] == 0
        for m, (cid, keep) in self.expect_kept.items():
            if rows[m]["activation_id"] == cid:
                assert {(k["entity"], k["field"]) for k in rows[m]["kept"]} == keep


TestCrisisModel = CrisisModel.TestCase
TestCrisisModel.settings = settings(
    max_examples=150,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
