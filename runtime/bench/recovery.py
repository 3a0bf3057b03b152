"""``commandpost bench recovery``: kill -9 the largest host with commands in flight.

The city runs as ``make demo`` runs it (:class:`~runtime.bench.common.City`:
simulators, device sessions, warm spare, admin web). The bench kills the
process of the largest host (``lighting-2`` at scale 1.0) ``kills`` times with
``SIGKILL``, spaced so that its domain supervisor's restart intensity is never
exceeded, while lighting dims for that host's circuits are submitted to the
command journal before and during each kill (``RATE`` a second, from a second
before the kill, plus a burst of ``BURST`` whose lamps the host is writing when
the signal lands). Per kill it measures, from the signal:

* ``detect_s``: to the supervisor's ``exit`` event for the host;
* ``answer_s``: to every entity of the host answering a ping through the new
  process with its restored state (versions at least those seen before the kill);
* ``fresh_s``: to every entity of the host online with a device reading sampled
  after the kill (a sample number above the one the simulator had reached).

And it checks, at the simulators (:mod:`devices.sim.control`):

* ``commands_lost``: accepted commands that did not end ``acked``, plus
  circuits whose lamps do not hold the level of their last command (when acked);
* ``actuated_twice``: writes of a value the lamp already held (``repeats``)
  on the host's devices over the whole run. Every command asks for a level the
  circuit does not hold (nor the level of a command that failed, whose write
  may land late), and at most one command per circuit is in flight, so the
  bench itself causes none;
* ``extra_actuations``: value-changing writes beyond one per lamp per acked
  command (a reconcile that reverted a lamp the replayed command then set
  again, or the late writes of a failed command);
* ``in_flight_at_kill``: commands journaled and not finished when the signal
  landed; ``replayed_after_actuation``: those of them whose lamps had changed
  (all or some) already: the replays that must not write again;
* ``state_lost``: entities whose restored desired level is older than the
  last command acked before the kill.

Milestones are polled every ``poll_s`` (0.05 s), which bounds their resolution
(a quicker poll takes a measurable share of the recovering host's loop).
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ray

from runtime.bench.common import City, Say, cpu_seconds, find_node, machine
from runtime.commands import TERMINAL, Command, CommandStatus, new_command_id
from runtime.errors import CommandpostError, ConfigError
from supervisors.tree import TreeConfig

__all__ = ["KillRound", "Recovery", "Sent", "run"]

#: Lighting dims submitted per second to the host's circuits, from ``lead_s`` before each
#: kill to ``tail_s`` after it; and the burst submitted just before the kill, which lands
#: while the host is writing the burst's lamps.
RATE = 10.0
BURST = 8

_RAY_ERRORS = (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError, ValueError, KeyError)


@dataclass
class Sent:
    """One command the bench submitted, and its last status read."""

    command_id: str
    entity_id: str
    dim: int
    submitted: float
    status: str = "queued"
    error: str = ""


@dataclass
class KillRound:
    """The figures of one kill."""

    pid: int
    load1: float = 0.0  # the machine's 1-minute load average at the kill
    detect_s: float | None = None
    answer_s: float | None = None
    fresh_s: float | None = None
    fresh_entity_p50_s: float | None = None  # half the entities were fresh by then
    # Cores the Modbus and OPC UA simulator process used from the kill to fresh: near 1,
    # the one simulator process, not the runtime, set the pace.
    field_sim_cpu: float | None = None
    # When the successor began its start (loading checkpoints), from the signal, and the
    # seconds of each step of that start (``HostCore.start_steps``).
    start_s: float | None = None
    # When the supervision tree showed the successor running (the bench's pings start then).
    running_s: float | None = None
    start_steps: dict[str, float] = field(default_factory=dict)
    commands: int = 0
    not_acked: int = 0
    not_held: int = 0
    repeats: int = 0
    extra_actuations: int = 0
    replayed_after_actuation: int = 0
    in_flight: int = 0  # commands journaled and not finished when the signal landed
    state_lost: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # why commands did not end acked

    def to_json(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 3)

        return {"pid": self.pid, "load1": round(self.load1, 2), "detect_s": r(self.detect_s),
                "answer_s": r(self.answer_s),
                "fresh_s": r(self.fresh_s), "fresh_entity_p50_s": r(self.fresh_entity_p50_s),
                "field_sim_cpu": r(self.field_sim_cpu),
                "start_s": r(self.start_s), "running_s": r(self.running_s),
                "start_steps": dict(self.start_steps),
                "commands": self.commands,
                "not_acked": self.not_acked, "not_held": self.not_held,
                "repeats": self.repeats, "extra_actuations": self.extra_actuations,
                "replayed_after_actuation": self.replayed_after_actuation,
                "in_flight": self.in_flight,
                "state_lost": self.state_lost, "statuses": dict(self.statuses),
                "errors": dict(self.errors)}


class Recovery:
    """Kill rounds against one host of a running :class:`City` (the bench and its tests).

    ``rate`` commands per second are submitted from ``lead_s`` before each kill
    to ``tail_s`` after it, and ``burst`` more just before it, each to a circuit
    with no command in flight, for a dim level that circuit does not hold.
    """

    def __init__(self, city: City, host_id: str, *, rate: float = RATE, burst: int = BURST,
                 lead_s: float = 1.0, tail_s: float = 1.5, timeout_s: float = 60.0,
                 poll_s: float = 0.05, seed: int = 1) -> None:
        self.city = city
        self.svc = city.svc
        self.host_id = host_id
        kinds = {eq.id: eq for eq in city.inventory.equipment}
        self.ids = list(self.svc.plan.host(host_id).entity_ids)
        self.circuits = [e for e in self.ids if kinds[e].kind == "lighting_circuit"]
        if not self.circuits:
            raise ConfigError(f"host {host_id} runs no lighting circuit to command")
        self.points = {e: int(kinds[e].attrs.get("points", 30)) for e in self.circuits}
        self.rate = rate
        self.burst = burst
        self.lead_s = lead_s
        self.tail_s = tail_s
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self._rng = random.Random(seed)
        # What each circuit's lamps hold once its last command is acked.
        self.level = {e: self._held_level(e) for e in self.circuits}
        # The level of each circuit's last acked command (what its restored state must keep).
        self.commanded: dict[str, int] = {}
        # Levels of commands that failed: their writes may still land late (an unanswered
        # write is not an unapplied one), so the bench never asks for them again.
        self.avoid: dict[str, set[int]] = {}
        self.rounds: list[KillRound] = []
        self._last_kill = 0.0
        counters = self.counters()
        self.repeats_at_start = sum(int(c["repeats"]) for c in counters.values())
        options = TreeConfig().domain
        # At most max_restarts kills in any max_seconds window, with a margin.
        self.spacing_s = options.max_seconds / max(1, options.max_restarts) + 0.5

    # -- the field -------------------------------------------------------------
    def counters(self) -> dict[str, dict[str, Any]]:
        """The simulator's counters of every device of the host."""
        devices: dict[str, dict[str, Any]] = self.city.control.counters(self.ids)["devices"]
        return devices

    def lamp_levels(self, entity_id: str) -> list[int]:
        """The dim level each lamp of a circuit holds, at the simulator."""
        held = self.city.control.values(entity_id)
        return [int(lamp["dim"]) for lamp in held.get("lamp", [])]

    def _held_level(self, entity_id: str) -> int | None:
        levels = set(self.lamp_levels(entity_id))
        return levels.pop() if len(levels) == 1 else None

    # -- the host ----------------------------------------------------------------
    def node(self) -> dict[str, Any]:
        """The host's node of the supervision tree."""
        return find_node(self.svc.tree(), self.host_id)

    def _handle(self) -> Any:
        return self.svc.host_handle(self.host_id)

    def wait_ready(self) -> None:
        """The host running with every device online, and the warm spare back (as the
        demo runs: a kill right after another would find the pool still refilling)."""
        spares = min(1, int(self.svc.options.spares))
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            try:
                node = self.node()
                if (node.get("status") == "running"
                        and int(node.get("online", 0)) == len(self.ids)
                        and ray.get(self.svc.root.spares_ready.remote(), timeout=5) >= spares):
                    return
            except (CommandpostError, *_RAY_ERRORS):
                pass
            time.sleep(0.2)
        raise ConfigError(f"host {self.host_id} not running with every device online and "
                          f"its spare ready within {self.timeout_s:.0f}s")

    # -- commands ------------------------------------------------------------------
    def _submit_any(self, free: list[str], sent: dict[str, Sent]) -> Sent | None:
        if not free:
            return None  # every circuit has a command in flight: this tick's command waits
        return self.submit(free.pop(self._rng.randrange(len(free))), sent)

    def submit(self, eid: str, sent: dict[str, Sent]) -> Sent:
        """Journal a dim of circuit ``eid`` to a level it does not hold; recorded in ``sent``."""
        held = self.level[eid]
        exclude = {held} if held is not None else set(self.lamp_levels(eid))
        exclude |= self.avoid.get(eid, set())
        dim = self._rng.choice([d for d in range(0, 101, 5) if d not in exclude])
        cmd = Command(command_id=new_command_id(), target=eid, action="set",
                      params={"dim": float(dim)}, caller="bench:recovery")
        stored, _ = self.svc.store.submit_command(cmd)
        out = sent[stored.command_id] = Sent(stored.command_id, eid, dim, time.time())
        return out

    def refresh(self, sent: dict[str, Sent], free: list[str] | None = None) -> None:
        """Read the status of every command still in flight; finished ones free their circuit."""
        for s in sent.values():
            if s.status in TERMINAL:
                continue
            cmd = self.svc.store.get_command(s.command_id)
            s.status, s.error = str(cmd.status), cmd.error
            if CommandStatus(s.status) in TERMINAL:
                if s.status == CommandStatus.ACKED:
                    self.level[s.entity_id] = s.dim
                    self.commanded[s.entity_id] = s.dim
                else:
                    self.level[s.entity_id] = None  # ask the lamps next time
                    self.avoid.setdefault(s.entity_id, set()).add(s.dim)
                if free is not None:
                    free.append(s.entity_id)

    # -- one kill ----------------------------------------------------------------------
    def kill_round(self) -> KillRound:
        """Commands before and during one kill -9 of the host; milestones and checks."""
        self.wait_ready()
        wait = self._last_kill + self.spacing_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        node = self.node()
        pid = int(node["pid"])
        before = self.counters()
        handle = self._handle()
        versions = ray.get(handle.ping_entities.remote(timeout=5.0), timeout=30)
        min_version = int(versions["min_version"])
        result = KillRound(pid=pid)
        sent: dict[str, Sent] = {}
        free = list(self.circuits)
        period = 1.0 / self.rate if self.rate > 0 else float("inf")
        start = time.monotonic()
        next_submit = start
        next_refresh = start
        t_kill = 0.0
        killed_at = 0.0  # monotonic
        acked_before_kill: dict[str, int] = {}
        seq_at_kill: dict[str, int] = {}
        new_handle: Any = None
        fresh_at: dict[str, float] = {}
        sim_proc = self.svc.sim_proc
        sim_pids = {sim_proc.pid} if sim_proc is not None else set()
        sim_cpu0 = 0.0
        ping: list[Any] = []  # the answer ping in flight
        while True:
            now = time.monotonic()
            submitting = not killed_at or now < killed_at + self.tail_s
            while submitting and next_submit <= now:
                self._submit_any(free, sent)
                next_submit += period
            if now >= next_refresh:
                self.refresh(sent, free)
                next_refresh = now + 0.1
            if not killed_at and now >= start + self.lead_s:
                self._burst(free, sent)
                os.kill(pid, signal.SIGKILL)
                t_kill = time.time()
                killed_at = time.monotonic()
                result.load1 = os.getloadavg()[0]
                sim_cpu0 = cpu_seconds(sim_pids)
                self._last_kill = killed_at
                # The field and the journal as the dead host left them (its successor
                # takes a few hundred milliseconds to act on either).
                at_kill = self.counters()
                self.refresh(sent, free)
                acked_before_kill = dict(self.commanded)
                seq_at_kill = {e: (c.get("last_seq") or -1) for e, c in at_kill.items()}
                result.replayed_after_actuation = self.caught(sent, before, at_kill)
                result.in_flight = sum(1 for x in sent.values()
                                       if CommandStatus(x.status) not in TERMINAL)
            if killed_at:
                if result.detect_s is None:
                    result.detect_s = self._detected(t_kill)
                if new_handle is None:
                    new_handle = self._new_handle(pid)
                    if new_handle is not None:
                        result.running_s = time.time() - t_kill
                if new_handle is not None and result.answer_s is None:
                    result.answer_s = self._answered(new_handle, min_version, t_kill, ping)
                if new_handle is not None and result.fresh_s is None:
                    result.fresh_s = self._fresh(new_handle, seq_at_kill, t_kill, fresh_at)
                    if result.fresh_s is not None:
                        result.fresh_entity_p50_s = statistics.median(fresh_at.values())
                        result.field_sim_cpu = ((cpu_seconds(sim_pids) - sim_cpu0)
                                                / max(1e-3, time.monotonic() - killed_at))
                done = None not in (result.detect_s, result.answer_s, result.fresh_s)
                if (done and not submitting) or now > killed_at + self.timeout_s:
                    break
            time.sleep(self.poll_s)
        if new_handle is not None:
            result.state_lost = self._state_lost(new_handle, acked_before_kill, sent)
            try:
                st = ray.get(new_handle.status.remote(), timeout=10)
                result.start_s = float(st["started_at"]) - t_kill
                result.start_steps = dict(st.get("start") or {})
            except (*_RAY_ERRORS, TypeError):
                pass
        else:
            result.state_lost = len(self.ids)
        self.drain(sent)
        self.check(result, sent, before)
        self.rounds.append(result)
        return result

    def _burst(self, free: list[str], sent: dict[str, Sent]) -> None:
        """Submit ``burst`` commands and return once the host is writing their lamps.

        The kill then lands on commands in flight: journaled, partly actuated, not acked.
        """
        ids = [free[i] for i in self._rng.sample(range(len(free)), min(self.burst, len(free)))]
        if not ids:
            return
        base = self.city.control.counters(ids)["devices"]
        for eid in ids:
            free.remove(eid)
            self.submit(eid, sent)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            now = self.city.control.counters(ids)["devices"]
            if any(int(now[e]["actuations"]) > int(base[e]["actuations"]) for e in ids):
                return

    def caught(self, sent: dict[str, Sent], before: dict[str, dict[str, Any]],
               at_kill: dict[str, dict[str, Any]]) -> int:
        """Commands unfinished at the kill whose circuit had taken some of their writes.

        ``sent`` holds the statuses read after the kill; a circuit's value-changing
        writes since ``before`` beyond one per lamp per command acked are those of
        its unfinished command.
        """
        done: dict[str, int] = {}
        for s in sent.values():
            if s.status == CommandStatus.ACKED:
                done[s.entity_id] = done.get(s.entity_id, 0) + self.points[s.entity_id]
        caught = 0
        for s in sent.values():
            if CommandStatus(s.status) in TERMINAL:
                continue
            eid = s.entity_id
            moved = int(at_kill[eid]["actuations"]) - int(before[eid]["actuations"])
            if moved > done.get(eid, 0):
                caught += 1
        return caught

    def _detected(self, t_kill: float) -> float | None:
        try:
            events = ray.get(self.svc.root.recent_events.remote(), timeout=5)
        except _RAY_ERRORS:
            return None
        for ev in events:
            if (ev.get("entity") == self.host_id and ev.get("event") == "supervisor_exit"
                    and float(ev.get("ts", 0.0)) >= t_kill):
                return float(ev["ts"]) - t_kill
        return None

    def _new_handle(self, old_pid: int) -> Any:
        try:
            node = self.node()
            if node.get("status") != "running" or int(node.get("pid") or 0) in (0, old_pid):
                return None
            return self._handle()
        except (CommandpostError, *_RAY_ERRORS):
            return None

    def _answered(self, handle: Any, min_version: int, t_kill: float,
                  pending: list[Any]) -> float | None:
        """Seconds to every entity answering, or None while the ping is out.

        The ping waits on the entities (one busy with a command answers after it), so it
        is issued once and polled, never awaited: the freshness poll goes on meanwhile.
        Its own timeout is the round's, so it ends when the last entity answers.
        """
        if not pending:
            pending.append(handle.ping_entities.remote(timeout=self.timeout_s))
        ready, _ = ray.wait(pending, timeout=0)
        if not ready:
            return None
        ref = pending.pop()
        try:
            r = ray.get(ref, timeout=5)
        except _RAY_ERRORS:
            return None
        if r["answered"] == len(self.ids) and int(r["min_version"]) >= min_version:
            return time.time() - t_kill
        return None

    def _fresh(self, handle: Any, seq_at_kill: dict[str, int], t_kill: float,
               seen: dict[str, float]) -> float | None:
        """Seconds to every entity fresh, or None; ``seen`` collects each entity's time."""
        try:
            states = ray.get(handle.state_fields.remote(["online", "seq"]), timeout=5)
        except _RAY_ERRORS:
            return None
        now = time.time() - t_kill
        for eid in self.ids:
            st = states.get(eid)
            if (eid not in seen and st and st.get("online")
                    and int(st.get("seq") or -1) > seq_at_kill.get(eid, -1)):
                seen[eid] = now
        return now if len(seen) == len(self.ids) else None

    def _state_lost(self, handle: Any, acked: dict[str, int], sent: dict[str, Sent]) -> int:
        """Entities whose restored desired level is older than what was acked before the kill."""
        try:
            snap = ray.get(handle.snapshot.remote(self.circuits), timeout=30)
        except _RAY_ERRORS:
            return len(self.circuits)
        later: dict[str, set[int]] = {}
        for s in sent.values():
            later.setdefault(s.entity_id, set()).add(s.dim)
        lost = 0
        for eid in self.circuits:
            want = acked.get(eid)
            if want is None:
                continue  # no command of this bench acked yet: nothing to keep
            desired = ((snap.get(eid) or {}).get("twin") or {}).get("desired") or {}
            got = desired.get("dim")
            # In-flight commands may already have moved it on: any of their levels will do.
            if got is None or (round(float(got)) != want
                               and round(float(got)) not in later.get(eid, set())):
                lost += 1
        return lost

    def drain(self, sent: dict[str, Sent]) -> None:
        """Wait until every command in ``sent`` is final (at most ``timeout_s``)."""
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            self.refresh(sent)
            if all(CommandStatus(s.status) in TERMINAL for s in sent.values()):
                return
            time.sleep(0.1)

    def check(self, result: KillRound, sent: dict[str, Sent],
              before: dict[str, dict[str, Any]]) -> None:
        """Fill ``result``'s command and actuation figures, against counters ``before``."""
        result.commands = len(sent)
        for s in sent.values():
            result.statuses[s.status] = result.statuses.get(s.status, 0) + 1
            if s.status != CommandStatus.ACKED:
                why = s.error or "(no error: still " + s.status + ")"
                result.errors[why] = result.errors.get(why, 0) + 1
        result.not_acked = sum(1 for s in sent.values() if s.status != CommandStatus.ACKED)
        last: dict[str, Sent] = {}
        for s in sorted(sent.values(), key=lambda x: x.submitted):
            last[s.entity_id] = s
        for eid, s in last.items():
            # A circuit whose last command failed holds no level the bench can expect
            # (that command is already counted as not acked).
            if s.status == CommandStatus.ACKED and set(self.lamp_levels(eid)) != {s.dim}:
                result.not_held += 1
        after = self.counters()
        result.repeats = sum(int(after[e]["repeats"]) - int(before[e]["repeats"])
                             for e in self.ids)
        actuations = sum(int(after[e]["actuations"]) - int(before[e]["actuations"])
                         for e in self.ids)
        # Each command moves every lamp of its circuit to a new level: one write per lamp.
        expected = sum(self.points[s.entity_id] for s in sent.values()
                       if s.status == CommandStatus.ACKED)
        result.extra_actuations = actuations - expected

    def repeats_total(self) -> int:
        """Repeats on the host's devices since this object was made."""
        return sum(int(c["repeats"]) for c in self.counters().values()) - self.repeats_at_start


def _p50(values: Sequence[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return round(statistics.median(got), 3) if got else None


def run(*, scale: float = 1.0, kills: int = 5, say: Say = print, broker: str = "auto",
        **_: Any) -> dict[str, Any]:
    """The figures of this bench (see the module docstring)."""
    if kills < 1:
        raise ConfigError("recovery needs at least one kill")
    with City(scale=scale, say=say, broker=broker) as city:
        target = max(city.svc.plan.hosts, key=lambda h: len(h.entity_ids))
        bench = Recovery(city, target.host_id)
        say(f"target {target.host_id}: {len(bench.ids)} entities; kills at least "
            f"{bench.spacing_s:.1f}s apart; {machine()}")
        for k in range(kills):
            r = bench.kill_round()
            j = r.to_json()
            say(f"kill {k + 1}: pid {r.pid} (load {j['load1']}) detect {j['detect_s']}s answer "
                f"{j['answer_s']}s fresh {j['fresh_s']}s (half the entities "
                f"{j['fresh_entity_p50_s']}s); {r.commands} commands {r.statuses}, not held "
                f"{r.not_held}, repeats {r.repeats}, extra actuations {r.extra_actuations}, "
                f"in flight at the kill {r.in_flight} (after actuation "
                f"{r.replayed_after_actuation}), "
                f"state lost {r.state_lost}")
        actuated_twice = bench.repeats_total()
        rounds = bench.rounds
        fresh = [r.fresh_s for r in rounds]
        return {
            "kills": len(rounds),
            "host": target.host_id,
            "entities_per_kill": len(bench.ids),
            "detect_p50_s": _p50([r.detect_s for r in rounds]),
            "answer_p50_s": _p50([r.answer_s for r in rounds]),
            "fresh_p50_s": _p50(fresh),
            "fresh_max_s": (None if None in fresh or not fresh
                            else round(max(v for v in fresh if v is not None), 3)),
            "state_lost": sum(r.state_lost for r in rounds),
            "commands": sum(r.commands for r in rounds),
            "commands_lost": sum(r.not_acked + r.not_held for r in rounds),
            "actuated_twice": actuated_twice,
            "extra_actuations": sum(r.extra_actuations for r in rounds),
            "replayed_after_actuation": sum(r.replayed_after_actuation for r in rounds),
            "in_flight_at_kill": sum(r.in_flight for r in rounds),
            "commands_per_s": bench.rate,
            "burst": bench.burst,
            "per_kill": [r.to_json() for r in rounds],
            "scale": scale,
            "machine": machine(),
            "broker": city.broker_kind,
            "left_out": list(city.left_out),
        }
