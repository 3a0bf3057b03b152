"""The crisis coordinator: one plan per municipality at a time, and the city put back after.

Operators switch modes through journaled commands to entity ``crisis`` (the
API posts them; the command's id is the decision's id, its *activation id*):

* ``activate`` ``{"mode", "municipalities", "replace"?}`` runs the plan of
  ``mode`` (:mod:`actors.plan`) in those municipalities. A request naming a
  municipality that has a plan already is refused whole (``crisis_conflict``,
  naming them) unless ``replace`` is true: the new plan then takes over with
  the pre-crisis baseline kept, and what the old plan set that the new one
  does not is put back.
* ``deactivate`` ``{"municipalities"}`` ends their plans: each entity gets
  back its pre-crisis effective state, except fields an operator set during
  the crisis, which are kept and listed.

What the coordinator knows of the inventory comes with its record
(:meth:`CrisisCoordinator.coordinator_attrs`, when the service builds it):
the plan file's text and its modes, the municipalities, and one compact row
per piece of equipment some plan step selects
(:class:`~actors.plan.Candidate`). The plans are checked against the
inventory there, so a service whose plans name unknown equipment, roles or
presets does not start.

The pre-crisis state is asked of each entity, through its mailbox
(``get_state`` request and reply), just before its crisis setpoint: the
answer comes after every command the entity took before it, so it is exact,
where a published view could be a fraction of a second old. The baseline of
a field is its effective value (desired where set, else what the device
reports: :meth:`actors.equipment.EquipmentEntity.effective`) and which
command last set it (the entity's ``set_by``). A kind that holds the plan's
setpoints as a layer keeps that baseline itself, recorded as it takes them
(:meth:`~actors.equipment.EquipmentEntity.keep_crisis_base`): it is not asked
first, and its setpoints are journaled at once. At deactivation the entity is
asked again: a field last set by a command that is neither the plan's nor the
one before the crisis was set by an operator during the crisis, and is kept.

The setpoints travel the normal command path: journaled with ids
``crisis-{activation}-{entity}`` (restores carry the deactivation's id and the
caller ``crisis:restore``, and go to a kind that holds a plan's setpoints as a layer,
such as an access terminal, even when the value is in force, to release it), once
the coordinator's checkpoint holding them is durable (``ctx.submit``), so a
restarted coordinator sends them again under the same ids and the store
journals none twice. Their statuses are followed from the store every
:data:`FOLLOW_S` while one is pending. The plan's own alarms (``masks`` of a
step: the raised bollards' reconnect decisions) are masked through
``crisis_masks`` events to the alarms coordinator, and released
(``crisis_released``) when no municipality of the activation runs it any more.

Read model ``crisis`` (msgpack): ``{"ts", "municipalities": {slug: {"mode",
"since", "by", "activation_id", "description", "entities": {"done",
"pending", "failed"}, "kept": [{"entity", "field", "value", "command_id",
"reason"}], "failures": [{"entity", "error"}]}}}``; only municipalities that
ever had a decision are listed (the others are ``normal``). A kept field was
set by an operator during the crisis (``reason`` ``operator``, with the
command that set it), or had no known value before it (``no_baseline``: the
entity did not answer in time, or neither desired nor reported it).

A field without a baseline has nothing to be put back to. A kind that holds
the plan's setpoints as a layer is still told to release it when the plan ends
there: its restore carries the value the field holds (as the entity told it,
else the plan's), which the layers below the crisis's override (an operator's
setting, the schedule's step) and which stays where none holds the field. Such
a field is not listed as kept. Another kind keeps it as it is, listed with
``no_baseline``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Final

from actors.control.alarms import caller_identity
from actors.equipment import CRISIS_CALLER, CRISIS_RESTORE_CALLER
from actors.plan import NORMAL, Candidate, PlanBook, builtin_plans, builtin_text, parse_plans
from actors.registry import BEHAVIOURS
from runtime.commands import TERMINAL, Command, CommandStatus, check_command_shape, shown
from runtime.entity import Checkpoint, Entity
from runtime.envelope import Envelope, MessageKind, pack
from runtime.errors import InvalidCommandError, RejectedError
from runtime.inventory import Inventory

__all__ = ["ASK_TIMEOUT_S", "CALLER", "FOLLOW_S", "READ_MODEL", "RESTORE_CALLER",
           "CrisisCoordinator", "command_id"]

#: The read model's name (``view:crisis`` in the store).
READ_MODEL: Final = "crisis"
#: The caller of every command the coordinator journals: a plan's setpoints, and the
#: restores that put back what an ended plan had set (``crisis:restore``).
CALLER: Final = CRISIS_CALLER
RESTORE_CALLER: Final = CRISIS_RESTORE_CALLER
#: How long an entity may take to tell its state; past it, the plan goes on without it.
ASK_TIMEOUT_S: Final = 5.0
#: How often the statuses of pending setpoints are read from the store.
FOLLOW_S: Final = 0.2
#: A crisis setpoint not sent by then expires (a plan acts now or says it could not).
COMMAND_DEADLINE_S: Final = 300.0
_ACTIONS: Final = ("activate", "deactivate")
_MAX_FAILURES: Final = 50
_OURS_KEPT: Final = 16  # command ids remembered per entity

# An entity's phase: asked its state for the baseline, for the restore; its command
# computed and about to be journaled; its crisis setpoint or its restore journaled.
ASK, CHECK, SEND, APPLY, RESTORE = "ask", "check", "send", "apply", "restore"
PENDING, DONE, FAILED = "pending", "done", "failed"


def command_id(activation_id: str, entity_id: str) -> str:
    """The id of the setpoint a decision sends to one entity (the same on every replay)."""
    return f"crisis-{activation_id}-{entity_id}"


def _outcome(status: CommandStatus) -> str:
    if status is CommandStatus.ACKED:
        return DONE
    return FAILED if status in TERMINAL else PENDING


class CrisisCoordinator(Entity):
    """Runs crisis plans per municipality; commanded through the journal."""

    kind: ClassVar[str] = "coordinator"

    # -- what it needs of the inventory ---------------------------------------------
    @classmethod
    def coordinator_attrs(cls, inventory: Inventory) -> dict[str, Any]:
        """The shipped plans (checked against ``inventory``) and the equipment they select."""
        book = builtin_plans()
        book.check(inventory)
        return {"plans": {"source": book.source, "text": builtin_text()},
                "modes": sorted(book.plans),
                "municipalities": [m.slug for m in inventory.municipalities],
                "equipment": [c.to_row() for c in book.candidates(inventory.equipment)]}

    # -- lifecycle --------------------------------------------------------------------
    async def on_start(self, saved: Checkpoint | None) -> None:
        await super().on_start(saved)
        attrs = self.ctx.equipment.attrs
        plans = attrs.get("plans")
        self.book: PlanBook = (parse_plans(str(plans["text"]), str(plans["source"]))
                               if isinstance(plans, Mapping) else builtin_plans())
        self.candidates = {c.id: c for c in map(Candidate.from_row, attrs.get("equipment", ()))}
        self.municipalities = frozenset(
            str(m) for m in attrs.get("municipalities", ())
        ) or frozenset(c.municipality for c in self.candidates.values())
        for key in ("municipalities", "entities", "asks", "masks"):
            self.state.setdefault(key, {})
        self.state["asks"] = {}  # replies to an earlier incarnation are not awaited
        # Asks and journaling need the host's loops: resume from the mailbox.
        self.ctx.send(Envelope(target=self.ctx.id, type="resume", sender=self.ctx.id,
                               kind=MessageKind.CONTROL))

    @property
    def _munis(self) -> dict[str, dict[str, Any]]:
        munis: dict[str, dict[str, Any]] = self.state["municipalities"]
        return munis

    @property
    def _entities(self) -> dict[str, dict[str, Any]]:
        entities: dict[str, dict[str, Any]] = self.state["entities"]
        return entities

    async def on_resume(self, msg: Envelope) -> None:
        """Pick up where the last checkpoint stood: ask again, journal again (same ids)."""
        self._ask([eid for eid, r in self._entities.items() if r["phase"] in (ASK, CHECK)])
        again = [self._command(eid, r) for eid, r in self._entities.items()
                 if r["phase"] in (APPLY, RESTORE) and r["status"] == PENDING and r["command"]]
        await self._send()
        if again:
            await self._journal(again)
        self._publish()

    # -- operators --------------------------------------------------------------------
    @classmethod
    def validate_command(cls, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """``activate`` ``{"mode", "municipalities", "replace"?}`` or ``deactivate``
        ``{"municipalities"}``, by shape (the coordinator checks modes and names)."""
        clean = check_command_shape(action, params)
        if action not in _ACTIONS:
            raise InvalidCommandError(f"the crisis coordinator accepts no {shown(action)} "
                                      f"command (only {', '.join(_ACTIONS)})", field="action",
                                      code="unknown_action")
        known = ("mode", "municipalities", "replace") if action == "activate" else (
            "municipalities",)
        for name in clean:
            if name not in known:
                raise InvalidCommandError(f"{action} takes no {shown(name)}",
                                          field=f"params.{name}", code="unknown_field")
        munis = clean.get("municipalities")
        if (not isinstance(munis, list) or not munis
                or not all(isinstance(m, str) and m for m in munis)):
            raise InvalidCommandError("municipalities must be a non-empty list of slugs",
                                      field="params.municipalities")
        clean["municipalities"] = list(dict.fromkeys(munis))
        if action == "activate":
            if not isinstance(clean.get("mode"), str) or not clean["mode"]:
                raise InvalidCommandError("mode must be a plan's name", field="params.mode")
            if not isinstance(clean.setdefault("replace", False), bool):
                raise InvalidCommandError("replace must be true or false",
                                          field="params.replace")
        return clean


    async def apply_command(self, action: str, params: dict[str, Any]) -> Any:
        try:
            clean = self.validate_command(action, params)
        except InvalidCommandError as exc:
            raise RejectedError(str(exc), code=exc.code) from None
        decision = self.current_command or f"local-{self.version}"
        unknown = [m for m in clean["municipalities"] if m not in self.municipalities]
        if unknown:
            raise RejectedError(f"unknown municipality {', '.join(unknown)}",
                                code="unknown_municipality")
        user, _ = caller_identity(self.current_caller)
        if action == "activate":
            out = self._activate(decision, clean["mode"], clean["municipalities"],
                                 replace=clean["replace"], user=user)
        else:
            out = self._deactivate(decision, clean["municipalities"], user=user)
        await self._send()
        self._publish()
        return out

    def _activate(self, act: str, mode: str, munis: list[str], *, replace: bool,
                  user: str) -> dict[str, Any]:
        try:
            plan = self.book.plan(mode)
        except KeyError:
            raise RejectedError(f"no crisis plan {mode!r} (plans: "
                                f"{', '.join(sorted(self.book.plans))})",
                                code="unknown_mode") from None
        busy = [m for m in munis if self._munis.get(m, {}).get("mode", NORMAL) != NORMAL]
        if busy and not replace:
            raise RejectedError(f"{', '.join(busy)} already "
                                f"{'has' if len(busy) == 1 else 'have'} a crisis plan: "
                                "deactivate it first, or replace it", code="crisis_conflict")
        now = self.ctx.clock.time()
        targets = plan.resolve(self.candidates.values(), munis)
        touched: set[str] = set()
        for m in munis:
            old = self._munis.get(m, {})
            carried = list(old.get("kept", ())) if old.get("mode", NORMAL) != NORMAL else []
            self._munis[m] = {"mode": mode, "since": now, "by": user, "activation_id": act,
                              "description": plan.description, "kept": carried}
            if old.get("activation_id"):
                touched.add(str(old["activation_id"]))
        wanted = frozenset(munis)
        leaving = [eid for eid, r in self._entities.items()
                   if r["municipality"] in wanted and eid not in targets
                   and r["phase"] in (ASK, APPLY, SEND)]
        for eid in leaving:
            touched.add(self._entities[eid]["activation"])
            self._begin_restore(eid, act)
        asks = list(leaving)
        for eid, action in targets.items():
            r = self._entities.get(eid)
            if r is None:
                r = self._entities[eid] = {
                    "municipality": self.candidates[eid].municipality,
                    "kind": self.candidates[eid].kind, "base": {}, "base_by": {}, "ours": []}
            else:
                touched.add(r["activation"])
            fresh = r.get("phase") in (None, RESTORE) and r.get("status") != PENDING
            self._transition(r, act, ASK, action.setpoints, action.masks)
            behaviour = BEHAVIOURS.get(r["kind"])
            if fresh and behaviour is not None and behaviour.CRISIS_LAYER:
                self._direct(r)
            else:
                asks.append(eid)
        self._ask(asks)
        self._refresh_masks(touched - {act})
        return {"activation_id": act, "mode": mode, "municipalities": munis,
                "entities": len(targets)}

    def _deactivate(self, act: str, munis: list[str], *, user: str) -> dict[str, Any]:
        now = self.ctx.clock.time()
        active = [m for m in munis if self._munis.get(m, {}).get("mode", NORMAL) != NORMAL]
        ended: set[str] = set()
        for m in active:
            ended.add(str(self._munis[m]["activation_id"]))
            self._munis[m] = {"mode": NORMAL, "since": now, "by": user, "activation_id": act,
                              "description": "", "kept": [],
                              "ended": self._munis[m]["activation_id"]}
        wanted = frozenset(active)
        leaving = [eid for eid, r in self._entities.items()
                   if r["municipality"] in wanted and r["phase"] in (ASK, APPLY, SEND)]
        for eid in leaving:
            self._begin_restore(eid, act)
        self._ask(leaving)
        self._refresh_masks(ended)
        return {"activation_id": act, "deactivated": active,
                "not_active": [m for m in munis if m not in wanted]}

    @staticmethod
    def _direct(r: dict[str, Any]) -> None:
        """Send the plan's setpoints to an entity that keeps its own baseline at once.

        A kind that holds the plan as a layer records, as it takes the setpoints, what
        they replace (:meth:`~actors.equipment.EquipmentEntity.keep_crisis_base`): no
        baseline is asked for, and its fields are held without one here (``nobase``).
        """
        want = r["want"]
        r["nobase"] = sorted(set(r.get("nobase", ())) | set(want))
        r["held"] = dict(want)
        r["params"] = dict(want)
        r["next"] = APPLY
        r["phase"] = SEND

    def _begin_restore(self, eid: str, act: str) -> None:
        self._transition(self._entities[eid], act, CHECK, {}, ())

    @staticmethod
    def _transition(r: dict[str, Any], act: str, phase: str, want: Mapping[str, Any],
                    masks: Sequence[str]) -> None:
        """Move an entity to decision ``act``: ask its state, then send what it comes to."""
        # A setpoint of ours not known to be final may still act: the restore follows it.
        unsure = r.get("phase") in (APPLY, RESTORE) and r.get("status") == PENDING
        r.update(activation=act, phase=phase, want=dict(want), masks=list(masks), command="",
                 status=PENDING, error="", params={},
                 unsure=bool(unsure and r.get("command")) or bool(r.get("unsure")))

    # -- asking entities their state --------------------------------------------------
    def _ask(self, eids: Iterable[str]) -> None:
        asks: dict[str, str] = self.state["asks"]
        deadline = self.ctx.clock.time() + ASK_TIMEOUT_S
        sent = False
        for eid in eids:
            env = Envelope(target=eid, type="get_state", sender=self.ctx.id,
                           reply_to=self.ctx.id, kind=MessageKind.CONTROL, deadline=deadline)
            asks[env.id] = eid
            self.ctx.send(env)
            sent = True
        if sent:
            self.ctx.start_timer("asks", ASK_TIMEOUT_S * self.ctx.clock.speed, "asks_due")

    async def on_reply(self, msg: Envelope) -> None:
        """An entity's state (``get_state``), for its baseline or its restore."""
        eid = self.state["asks"].pop(msg.correlation_id, None)
        if eid is None:
            return  # asked by an earlier incarnation, or answered already
        # An answer without a state tells nothing: the entity goes on as one that did not answer.
        self._answered(eid, msg.payload if isinstance(msg.payload, Mapping) else None)
        if not self.state["asks"]:
            await self._all_answered()

    async def on_error(self, msg: Envelope) -> None:
        """An entity could not tell its state (unknown, failed, too late): go on without it."""
        eid = self.state["asks"].pop(msg.correlation_id, None)
        if eid is None:
            return
        self._answered(eid, None)
        if not self.state["asks"]:
            await self._all_answered()

    async def on_asks_due(self, msg: Envelope) -> None:
        """Entities that did not answer in :data:`ASK_TIMEOUT_S`: the plan goes on without."""
        asks, self.state["asks"] = self.state["asks"], {}
        for eid in asks.values():
            self._answered(eid, None)
        await self._all_answered()

    async def _all_answered(self) -> None:
        self.ctx.cancel_timer("asks")
        await self._send()
        self._publish()

    def _answered(self, eid: str, answer: Mapping[str, Any] | None) -> None:
        """Work out an entity's command from its state (None: it did not tell)."""
        r = self._entities.get(eid)
        if r is None or r["phase"] not in (ASK, CHECK):
            return
        state = answer.get("state") if answer is not None else None
        twin = answer.get("twin") if answer is not None else None
        set_by = state.get("set_by") if isinstance(state, Mapping) else None
        if not isinstance(set_by, Mapping):
            set_by = {}
        # What a layered kind recorded as it took the plan's setpoints ([value, by, taken
        # by]), when it has taken the last of them (an older record is stale).
        told = state.get("crisis_base") if isinstance(state, Mapping) else None
        kept_base = {n: v for n, v in told.items()
                     if isinstance(v, list | tuple) and len(v) == 3
                     and v[2] and v[2] == r.get("taken")} if isinstance(told, Mapping) else {}
        behaviour = BEHAVIOURS.get(r["kind"])
        effective = (behaviour.effective(twin)
                     if behaviour is not None and isinstance(twin, Mapping) else {})
        ours = set(r["ours"])
        base, base_by = r["base"], r["base_by"]

        layered = behaviour is not None and behaviour.CRISIS_LAYER

        def operator_set(name: str) -> bool:
            by = set_by.get(name)
            if not by or by in ours:
                return False
            if name in base_by:
                return bool(by != base_by[name])
            got = kept_base.get(name)
            if got is not None:
                return bool(by != got[1])
            # A layered entity that recorded nothing has not taken the plan's setpoint yet:
            # the field is still the one from before it, no operator's.
            return not layered

        want = r["want"]
        # Fields whose value before the crisis nobody knew (the entity had not told it).
        nobase = set(r.get("nobase", ()))
        for name in want:
            # A field the crisis holds, or nobody touched since, keeps its baseline.
            if (name in base or name in nobase) and not operator_set(name):
                continue
            if name in effective:
                base[name], base_by[name] = effective[name], str(set_by.get(name) or "")
                nobase.discard(name)
            else:
                base.pop(name, None)
                base_by.pop(name, None)
                nobase.add(name)
        restore: dict[str, Any] = {}
        unsure = answer is None or bool(r.pop("unsure", False))
        for name in [n for n in base if n not in want]:
            if operator_set(name):
                self._keep(r, eid, name, effective.get(name), str(set_by.get(name)),
                           "operator")
            elif unsure or effective.get(name) != base[name] or layered:
                # A kind that holds the plan's setpoints as a layer is told to release it.
                restore[name] = base[name]
            del base[name]
            base_by.pop(name, None)
        # What the plan holds here: a field without a baseline has no value to go back to.
        held = r.get("held") or {}
        ending = r["phase"] == CHECK
        for name in sorted(nobase - set(want)):
            if operator_set(name):
                self._keep(r, eid, name, effective.get(name), str(set_by.get(name)),
                           "operator")
            elif layered and (name in effective or name in held):
                if not ending:
                    continue  # still the crisis's here: released when it ends
                # Released: the layers below it (an operator's, the schedule) take the field;
                # where none holds it, it stays as it is (the value the restore carries).
                got = kept_base.get(name)
                restore[name] = (got[0] if got is not None and got[0] is not None
                                 else effective.get(name, held.get(name)))
            else:
                self._keep(r, eid, name, effective.get(name), "", "no_baseline")
            nobase.discard(name)
        r["nobase"] = sorted(nobase)
        r["held"] = {} if ending else {**{n: held[n] for n in nobase if n in held}, **want}
        r["params"] = {**restore, **want}
        r["next"] = APPLY if r["phase"] == ASK else RESTORE
        r["phase"] = SEND

    def _keep(self, r: Mapping[str, Any], eid: str, name: str, value: Any, by: str,
              reason: str) -> None:
        """List a field the restore leaves as it is, and why (``operator``, ``no_baseline``)."""
        muni = self._munis.get(r["municipality"])
        if muni is not None:
            muni["kept"].append({"entity": eid, "field": name, "value": value,
                                 "command_id": by, "reason": reason})

    # -- journaling and following -----------------------------------------------------
    def _command(self, eid: str, r: Mapping[str, Any]) -> Command:
        return Command(command_id=r["command"], target=eid, action="set",
                       params=dict(r["params"]),
                       caller=RESTORE_CALLER if r["phase"] == RESTORE else CALLER,
                       created_ts=self.ctx.clock.time(),
                       deadline_ts=self.ctx.clock.time() + COMMAND_DEADLINE_S)

    async def _send(self) -> None:
        """Journal the commands worked out so far (the decision is durable first)."""
        commands: list[Command] = []
        applied: set[str] = set()
        for eid, r in self._entities.items():
            if r["phase"] != SEND:
                continue
            r["phase"] = r.pop("next", APPLY)
            if r["phase"] == APPLY:
                applied.add(r["activation"])
            if not r["params"]:
                r.update(command="", status=DONE)
                continue
            r["command"] = command_id(r["activation"], eid)
            r["ours"] = [*r["ours"], r["command"]][-_OURS_KEPT:]
            if r["phase"] == APPLY:
                r["taken"] = r["command"]  # the plan's last setpoints, as a layered kind notes
            commands.append(self._command(eid, r))
        self._refresh_masks(applied)
        if commands:
            await self._journal(commands)

    async def _journal(self, commands: Sequence[Command]) -> None:
        stored = await self.ctx.submit(commands)
        self._settle({c.command_id: c for c in stored})
        self.ctx.start_timer("follow", FOLLOW_S * self.ctx.clock.speed, "follow", repeat=True)

    async def on_follow(self, msg: Envelope) -> None:
        """Read the statuses of the pending setpoints; stop following once none is."""
        pending = [r["command"] for r in self._entities.values()
                   if r["status"] == PENDING and r["command"] and r["phase"] in (APPLY, RESTORE)]
        if not pending:
            self.ctx.cancel_timer("follow")
            return
        found = await self.ctx.commands(pending)
        missing = {cid: None for cid in pending if cid not in found}
        if self._settle({**found, **missing}):
            self._publish()

    def _settle(self, commands: Mapping[str, Command | None]) -> bool:
        changed = False
        for r in self._entities.values():
            if r["command"] not in commands or r["phase"] not in (APPLY, RESTORE):
                continue
            cmd = commands[r["command"]]
            outcome = _outcome(cmd.status) if cmd is not None else FAILED
            if outcome != r["status"]:
                r["status"] = outcome
                r["error"] = (cmd.error or cmd.status.value) if cmd is not None else (
                    "the command is no longer in the store")
                if outcome == DONE:
                    r["error"] = ""
                changed = True
        return changed

    # -- alarms the plans cause ---------------------------------------------------------
    def _refresh_masks(self, activations: Iterable[str]) -> None:
        """Tell the alarms coordinator what each activation masks now (or that it ended)."""
        masks: dict[str, list[str]] = self.state["masks"]
        for act in activations:
            pairs = sorted(f"{eid}/{cond}" for eid, r in self._entities.items()
                           if r["activation"] == act and r["phase"] in (APPLY, SEND)
                           for cond in r.get("masks", ()))
            if pairs == masks.get(act, []):
                continue
            if pairs:
                masks[act] = pairs
                self.ctx.emit("crisis_masks", activation=act, masks=",".join(pairs))
            else:
                masks.pop(act, None)
                self.ctx.emit("crisis_released", activation=act)

    # -- read model ---------------------------------------------------------------------
    def view(self) -> dict[str, Any]:
        """The read model: per municipality, its mode and its entities' progress."""
        out: dict[str, Any] = {}
        for slug, m in self._munis.items():
            out[slug] = {**m, "entities": {DONE: 0, PENDING: 0, FAILED: 0}, "failures": []}
        for eid, r in self._entities.items():
            muni = self._munis.get(r["municipality"])
            if muni is None or r["activation"] != muni["activation_id"]:
                continue
            row = out[r["municipality"]]
            row["entities"][r["status"] if r["phase"] in (APPLY, RESTORE) else PENDING] += 1
            if r["status"] == FAILED and len(row["failures"]) < _MAX_FAILURES:
                row["failures"].append({"entity": eid, "error": r["error"]})
        return {"ts": self.ctx.clock.time(), "municipalities": out}

    def _publish(self) -> None:
        self.ctx.publish_read_model(READ_MODEL, pack(self.view()))
