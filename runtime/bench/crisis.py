"""``commandpost bench crisis``: the snow plan over the whole metropolis, on and then off.

The city runs as ``make demo`` runs it (:class:`~runtime.bench.common.City`).
Before the crisis, the road-lighting circuits are dimmed to
:data:`NIGHT_DIM` percent through the journal (what the night schedule
does), so that the plan has lamps to bring to full power and a baseline to
put back. Then, through the API as an operator:

1. ``POST /api/v1/crisis {"mode": "snow", "municipalities": [all 23]}``:
   ``activate_p100_s`` runs from the request to the last crisis setpoint
   confirmed by its device (the command's ``device_confirmed_ts``; its final
   status time when it needed no write), ``acked`` and ``failed`` count the
   plan's commands;
2. an operator dims :data:`OPERATOR_CHANGES` of the circuits during the
   crisis: deactivation must keep them, and list them;
3. ``POST /api/v1/crisis {"mode": "normal", …}``: ``restore_p100_s`` runs
   from the request to the last restore confirmed by its device;
4. once the devices have reported again, ``restored_exact`` counts the
   entities whose device-reported values (each lamp of a circuit, a
   crossroad's plan, a gritter's crew message) are those from before the
   crisis, the fields an operator set during it excepted (``kept``);
   ``mismatches`` shows the first that are not.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

from actors.control.crisis import command_id
from actors.plan import builtin_plans
from runtime.bench.common import ApiClient, City, Say, machine
from runtime.commands import Command, CommandStatus, new_command_id
from runtime.envelope import unpack
from runtime.errors import ConfigError, MalformedMessageError

__all__ = ["NIGHT_DIM", "OPERATOR_CHANGES", "run"]

#: The dim level of the road lighting before the crisis (the night schedule's).
NIGHT_DIM: Final = 40.0
#: Circuits an operator dims during the crisis (to :data:`OPERATOR_DIM`): kept at the end.
OPERATOR_CHANGES: Final = 2
OPERATOR_DIM: Final = 70.0
_POLL_S: Final = 0.05


def _final(store: Any, ids: Sequence[str], timeout_s: float) -> dict[str, Command]:
    """The commands once every one of them is final (or at the timeout, as they stand)."""
    deadline = time.monotonic() + timeout_s
    out: dict[str, Command] = {}
    while True:
        for cid in ids:
            if cid in out and out[cid].terminal:
                continue
            try:
                out[cid] = store.get_command(cid)
            except KeyError:
                continue
        if all(cid in out and out[cid].terminal for cid in ids):
            return out
        if time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _rows(store: Any) -> dict[str, Any]:
    blob = store.get_blob("view:crisis")
    if blob is None:
        return {}
    doc = unpack(blob, max_size=64 << 20)
    rows = doc.get("municipalities") if isinstance(doc, dict) else None
    return rows if isinstance(rows, dict) else {}


def _settled(store: Any, activation: str, munis: Sequence[str], timeout_s: float,
             ) -> dict[str, Any]:
    """The read model once each municipality shows ``activation`` with nothing pending."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = _rows(store)
        if all(rows.get(m, {}).get("activation_id") == activation
               and rows[m]["entities"]["pending"] == 0 for m in munis):
            return rows
        if time.monotonic() > deadline:
            return rows
        time.sleep(_POLL_S)


def _device_values(kind: str, reported: Mapping[str, Any], fields: Sequence[str]
                   ) -> dict[str, Any]:
    """What the device reports of the plan's ``fields`` (a circuit: each of its lamps)."""
    if kind == "lighting_circuit":
        lamps = reported.get("lamp") or []
        return {f: [lamp.get(f) for lamp in lamps if isinstance(lamp, Mapping)] for f in fields}
    return {f: reported.get(f) for f in fields}


def _reported(store: Any, kinds: Mapping[str, str], fields: Mapping[str, Sequence[str]]
              ) -> dict[str, dict[str, Any]]:
    blobs = store.load_checkpoints(list(kinds))
    out: dict[str, dict[str, Any]] = {}
    for eid, kind in kinds.items():
        try:
            cp = unpack(blobs[eid]) if eid in blobs else {}
        except MalformedMessageError:
            cp = {}
        twin = cp.get("twin") or {}
        reported = {k: v.get("value") for k, v in (twin.get("reported") or {}).items()}
        out[eid] = _device_values(kind, reported, fields[eid])
    return out


def _polled_since(store: Any, since: Mapping[str, float], timeout_s: float) -> None:
    """Wait until each entity of ``since`` has a reading its device took after the time
    given for it (a poll of each cabinet since the night dimming was acked)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        blobs = store.load_checkpoints(list(since))
        late = 0
        for eid, ts in since.items():
            try:
                twin = (unpack(blobs[eid]) if eid in blobs else {}).get("twin") or {}
            except MalformedMessageError:
                twin = {}
            stamps = [float(v.get("source_ts") or 0.0)
                      for v in (twin.get("reported") or {}).values() if isinstance(v, Mapping)]
            late += not stamps or max(stamps) <= ts
        if not late:
            return
        time.sleep(0.5)


def _stamp(cmd: Command) -> float:
    return cmd.device_confirmed_ts or cmd.updated_ts


#: The command path's stamps, in path order (:mod:`runtime.commands`), as the bench names them.
_STAGES: Final = (("journaled", "created_ts"), ("sent", "sent_ts"), ("read", "device_read_ts"),
                  ("write", "device_write_ts"), ("confirmed", "device_confirmed_ts"))


def _stages(commands: Sequence[Command], t0: float) -> dict[str, list[float]]:
    """``{stage: [p50, p100]}``: seconds from ``t0`` at which the commands reached each stage
    (those that went through it: a circuit whose lamps held the level writes nothing)."""
    out: dict[str, list[float]] = {}
    for name, attr in _STAGES:
        at = sorted(getattr(c, attr) - t0 for c in commands if getattr(c, attr))
        if at:
            out[name] = [round(at[len(at) // 2], 3), round(at[-1], 3)]
    return out


def _journal_all(store: Any, commands: Sequence[Command], timeout_s: float
                 ) -> dict[str, float]:
    """Journal ``commands`` and wait for them: ``{target: ack time}`` of those acked."""
    for cmd in commands:
        store.submit_command(cmd)
    done = _final(store, [c.command_id for c in commands], timeout_s)
    return {c.target: c.updated_ts for c in done.values() if c.status is CommandStatus.ACKED}


def run(*, scale: float = 1.0, say: Say = print, broker: str = "auto",
        timeout_s: float = 120.0, settle_s: float = 30.0, **_: Any) -> dict[str, Any]:
    """The figures of this bench (see the module docstring)."""
    with City(scale=scale, say=say, broker=broker) as city:
        store = city.svc.store
        inv = city.inventory
        api = ApiClient(city.admin_url, city.token("operator"))
        munis = [m.slug for m in inv.municipalities]
        book = builtin_plans()
        targets = book.plan("snow").resolve(book.candidates(inv.equipment), munis)
        if not targets:
            raise ConfigError("the snow plan selects no equipment in this inventory")
        kinds = {eid: inv.by_id(eid).kind for eid in targets}
        fields = {eid: sorted(a.setpoints) for eid, a in targets.items()}
        circuits = sorted(e for e, k in kinds.items() if k == "lighting_circuit")

        night = [Command(command_id=new_command_id(), target=e, action="set",
                         params={"dim": NIGHT_DIM}, caller="schedule:night")
                 for e in circuits]
        acks = _journal_all(store, night, timeout_s)
        say(f"{len(targets)} entities in the snow plan ({len(circuits)} circuits, "
            f"{len(acks)} dimmed to {NIGHT_DIM:g} % first); {machine()}")
        _polled_since(store, acks, timeout_s)
        before = _reported(store, kinds, fields)

        t0 = time.time()
        code, body = api.call("POST", "/api/v1/crisis", {"mode": "snow",
                                                         "municipalities": munis})
        if code != 202:
            raise ConfigError(f"POST /api/v1/crisis answered {code}: {body}")
        activation = str(body["activation_id"])
        # The read model says when nothing is pending (cheap to poll); the stamps say when.
        _settled(store, activation, munis, timeout_s)
        applied = _final(store, [command_id(activation, e) for e in targets], 5.0)
        acked = [c for c in applied.values() if c.status is CommandStatus.ACKED]
        failed = [c for c in applied.values() if c.terminal and c.status is not
                  CommandStatus.ACKED]
        activate_s = max((_stamp(c) - t0 for c in acked), default=None)
        activate_stages = _stages(acked, t0)
        say(f"snow: {len(acked)} acked, {len(failed)} failed, "
            f"{len(targets) - len(acked) - len(failed)} pending; last acked at "
            f"{activate_s if activate_s is None else round(activate_s, 3)} s")

        changed = circuits[:OPERATOR_CHANGES]
        for eid in changed:
            code, body = api.call("POST", f"/api/v1/equipment/{eid}/commands",
                                  {"action": "set", "params": {"dim": OPERATOR_DIM}})
            if code != 202:
                raise ConfigError(f"an operator's command to {eid} answered {code}: {body}")
            _final(store, [body["command_id"]], timeout_s)

        t1 = time.time()
        code, body = api.call("POST", "/api/v1/crisis", {"mode": "normal",
                                                         "municipalities": munis})
        if code != 202:
            raise ConfigError(f"POST /api/v1/crisis (normal) answered {code}: {body}")
        end = str(body["activation_id"])
        rows = _settled(store, end, munis, timeout_s)
        restores = _final(store, [command_id(end, e) for e in targets], 1.0)
        restored_acked = [c for c in restores.values() if c.status is CommandStatus.ACKED]
        restore_s = max((_stamp(c) - t1 for c in restored_acked), default=None)
        restore_stages = _stages(restored_acked, t1)
        kept = [k for m in munis for k in rows.get(m, {}).get("kept", ())]
        say(f"normal: {len(restored_acked)} restores acked of {len(restores)}; last at "
            f"{restore_s if restore_s is None else round(restore_s, 3)} s; kept {len(kept)}")

        skip = {(k["entity"], k["field"]) for k in kept}
        deadline = time.monotonic() + settle_s
        while True:
            after = _reported(store, kinds, fields)
            mismatches = [{"entity": e, "field": f, "before": before[e][f],
                           "after": after[e].get(f)}
                          for e in targets for f in fields[e]
                          if (e, f) not in skip and after[e].get(f) != before[e][f]]
            if not mismatches or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        wrong = {m["entity"] for m in mismatches}
        return {
            "entities": len(targets),
            "activate_p100_s": None if activate_s is None else round(activate_s, 3),
            "restore_p100_s": None if restore_s is None else round(restore_s, 3),
            "restored_exact": len(targets) - len(wrong),
            "acked": len(acked),
            "failed": len(failed),
            "pending": len(targets) - len(acked) - len(failed),
            "restores": len(restores),
            "restores_acked": len(restored_acked),
            "activate_stages_s": activate_stages,
            "restore_stages_s": restore_stages,
            "kept": kept,
            "operator_changed": changed,
            "mismatches": mismatches[:20],
            "by_kind": {k: sum(1 for x in kinds.values() if x == k)
                        for k in sorted(set(kinds.values()))},
            "scale": scale,
            "machine": machine(),
            "broker": city.broker_kind,
            "left_out": list(city.left_out),
        }
