"""What the admin web asks of the runtime.

The admin web never imports Ray or the supervisors: it receives an
:class:`AdminBackend` and calls only these few methods on it (reads, plus
command submission), so tests
(and ``commandpost`` while the runtime is still starting) hand it a
:class:`StaticBackend`::

    backend = SwappableBackend(StaticBackend())      # health "starting"
    app = create_app(backend, users)
    ...                                              # runtime comes up
    backend.swap(runtime_backend)
"""

from __future__ import annotations

import copy
import os
import threading
import uuid
from collections.abc import Mapping
from importlib import metadata
from typing import Any, Final, Protocol

from runtime.audit import AuditRecord, action_matches, audit_entry
from runtime.errors import (
    ConfigError,
    ConflictError,
    InvalidCommandError,
    RetryableError,
    UnknownEntityError,
)

__all__ = ["CRISIS_MODES", "HEALTH_STATUSES", "AdminBackend", "InvalidCommandError",
           "StaticBackend", "SwappableBackend", "normal_crisis_row", "package_version"]

HEALTH_STATUSES: Final = frozenset({"ok", "degraded", "starting"})


class AdminBackend(Protocol):
    """The runtime's read model as the admin web sees it.

    Every method returns plain JSON-ready data (dicts, lists, str, int, float,
    bool, None); the shapes are those of CONTRACT.md's HTTP API.
    """

    def health(self) -> dict[str, Any]:
        """``{"status": "ok" | "degraded" | "starting", "entities": int, "online": int}``."""
        ...

    def tree(self) -> dict[str, Any]:
        """The root node of the supervision tree (CONTRACT.md ``/api/v1/tree``)."""
        ...

    def system(self) -> dict[str, Any]:
        """``{"version", "ray": {...}, "redis": {...}, "mqtt": {...}, "simulators": [...]}``."""
        ...

    def equipment_municipality(self, entity_id: str) -> str:
        """The municipality slug of equipment ``entity_id``; raises ``KeyError`` when unknown."""
        ...

    def equipment_kind(self, entity_id: str) -> str:
        """The kind of equipment ``entity_id`` (``crossroad``…); raises ``KeyError`` when
        unknown."""
        ...

    def submit_command(
        self,
        entity_id: str,
        action: str,
        params: dict[str, Any],
        *,
        caller: str,
        idempotency_key: str | None,
    ) -> dict[str, Any]:
        """Journal a command for ``entity_id``: ``{"command_id", "status": "queued", "created"}``.

        A repeat with the same ``(caller, entity_id, idempotency_key)`` returns
        the first command's id with ``created`` False. Returning at all means
        the command is journaled durably. Raises
        :class:`~runtime.errors.StoreUnavailableError` when it could not be
        journaled, :class:`~runtime.errors.UnknownEntityError` for an unknown
        entity and :class:`InvalidCommandError` (a
        :class:`~runtime.errors.RejectedError`) for a command the target
        refuses (unknown action or field, out of range, not finite, too long,
        a key reused for another command); a refused command is not journaled.
        """
        ...

    def command(self, command_id: str) -> dict[str, Any]:
        """``{"command_id", "status", …}`` of one command; raises ``KeyError`` when unknown."""
        ...

    def crisis(self) -> dict[str, dict[str, Any]]:
        """Each municipality's crisis row, by slug, as the crisis coordinator last published it.

        ``{"mode", "since", "by", "activation_id", "entities": {"done", "pending",
        "failed"}, "kept": [...], …}``; a municipality never in a crisis is
        ``normal`` with no activation. The API scopes them.
        """
        ...

    def crisis_request(self, mode: str, municipalities: list[str], *, replace: bool,
                       caller: str) -> dict[str, Any]:
        """Journal a crisis decision: ``mode`` ``normal`` ends the municipalities' plans,
        another mode activates its plan in them.

        ``caller`` is ``user:NAME:ROLE``. Answers ``{"activation_id", "status"}``
        (the activation id is the journaled command's). Raises
        :class:`InvalidCommandError` (``field`` ``mode`` or ``municipalities``)
        for an unknown mode or municipality, and
        :class:`~runtime.errors.ConflictError` naming the municipalities that
        have a plan already, unless ``replace``.
        """
        ...

    def audit(self, record: AuditRecord) -> None:
        """Append ``record`` to the audit trail.

        Raises :class:`~runtime.errors.StoreUnavailableError` when it could not
        be stored (the web then logs it instead).
        """
        ...

    def audit_trail(
        self,
        *,
        user: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Audit entries newest first (:func:`runtime.audit.audit_entry`), and a cursor.

        ``user`` keeps one user's, ``action`` one action or its family
        (:func:`runtime.audit.action_matches`), ``outcome`` the ``ok`` or the
        ``refused`` ones; ``since`` and ``until`` (epoch seconds, the latter
        exclusive) and ``before`` (a cursor: the ``id`` of an entry, exclusive)
        bound the range. The cursor is the next page's ``before``, None after
        the last page.
        """
        ...

    def events(
        self,
        *,
        entity: str | None = None,
        kind: str | None = None,
        event: str | None = None,
        municipalities: frozenset[str] | None = None,
        since: float | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Events newest first (each with its ``event_id``), and a cursor as for the audit.

        ``entity`` keeps one entity's, ``kind`` those of equipment of one kind,
        ``event`` one event name; ``municipalities`` (None: no limit) keeps
        events of equipment in those municipalities only. Equipment events gain
        the equipment's ``kind`` and ``municipality``.
        """
        ...

    def equipment(self, *, kind: str | None = None, municipality: str | None = None,
                  status: str | None = None, online: bool | None = None,
                  in_alarm: bool | None = None, municipalities: frozenset[str] | None = None,
                  limit: int = 500, after: str | None = None,
                  ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of equipment records ordered by id, and the next page's ``after``.

        ``municipalities`` limits the page to those (None: every one).
        """
        ...

    def equipment_detail(self, entity_id: str) -> dict[str, Any]:
        """One equipment's record with recent events, commands and active alarms;
        ``KeyError`` when unknown."""
        ...

    def equipment_actions(self, entity_id: str) -> list[dict[str, Any]]:
        """The commands equipment ``entity_id`` takes, as its kind validates them (its
        behaviour's ``describe_commands``: ``[{"action", "params": {name: spec}}]``),
        whoever asks; ``KeyError`` when unknown."""
        ...

    def city(self) -> dict[str, Any]:
        """The map of the metropolis, whoever asks (the API scopes it).

        ``{"municipalities": [{"slug", "name", "lat", "lon", "polygon"}], "equipment":
        [{"id", "kind", "municipality", "lat", "lon", "online", "status", "in_alarm"}]}``:
        each municipality's area as GeoJSON polygon rings of ``[lon, lat]`` (None when
        unknown) and every equipment where the inventory places it, as it stands. Read
        only: the answer may be shared between callers.
        """
        ...

    def alarms(self) -> list[dict[str, Any]]:
        """Every alarm as the alarms coordinator last published them (hidden ones too).

        Each is a CONTRACT.md alarm record; the API filters and scopes them.
        """
        ...

    def alarm_action(self, action: str, params: dict[str, Any], *, caller: str
                     ) -> dict[str, Any]:
        """Journal an operator's action on an alarm (``ack``, ``shelve``, ``unshelve``,
        ``out_of_service``, ``return_to_service``) for the alarms coordinator.

        ``caller`` is ``user:NAME:ROLE``. Answers ``{"command_id", "status"}``.
        """
        ...

    def interventions(self) -> list[dict[str, Any]]:
        """Every intervention as the dispatch coordinator last published them.

        Each is a CONTRACT.md intervention record (with ``notes``, ``source``,
        ``lamps`` and ``assigned_ts`` besides); the API filters and scopes them.
        """
        ...

    def fleet(self) -> list[dict[str, Any]]:
        """The service vehicles as dispatch last indexed them.

        ``{"id", "municipality", "role", "radio", "lat", "lon", "status",
        "online", "job", "job_state", "ts", "assigned", "excluded_until"}``:
        ``assigned`` is the intervention dispatch gave the vehicle, if any.
        """
        ...

    def energy(self, *, scope: str, ident: str | None, start: float | None,
               end: float | None, step: str, municipalities: frozenset[str] | None
               ) -> dict[str, Any]:
        """Street lighting's metered energy and baselines (:func:`runtime.energy.report`) of
        one circuit, one municipality or the metropolis, within ``municipalities`` (None:
        all); ``start``/``end`` default to the last day of the city's clock. Raises
        ``KeyError`` for a circuit or municipality unknown or out of scope.
        """
        ...

    def priority(self) -> dict[str, Any]:
        """The bus-priority pool as its members last published it: ``{"members": [{"id",
        "pid", "buses", "realtime"}], "requests": {"granted", "refused": {reason: n}}, "latency_ms":
        {"p50", "p99", "histogram": [[upper_ms, n], …]}}`` (CONTRACT.md)."""
        ...

    def request_municipality(self, lat: float, lon: float) -> str | None:
        """The municipality whose area holds ``(lat, lon)``; None outside the metropolis."""
        ...

    def open311_apps(self) -> list[str]:
        """The client applications that hold an Open311 API key, sorted."""
        ...

    def issue_open311_key(self, application: str) -> str:
        """A new Open311 API key for ``application`` (its previous one stops working); the
        plaintext is returned once and stored only as a digest. :class:`RejectedError`
        for a bad name."""
        ...

    def revoke_open311_key(self, application: str) -> bool:
        """Revoke ``application``'s key at once; whether it had one."""
        ...

    def open_request(self, *, category: str, description: str, lat: float, lon: float,
                     caller: str) -> dict[str, Any]:
        """Take a citizen's request (an operator on the phone) and hand it to dispatch.

        It is stored as the Open311 requests of citizens' apps are (same ids;
        its status follows its intervention), then journaled for the dispatch
        coordinator. Answers ``{"request_id", "intervention_id", "municipality"}``.
        Raises :class:`InvalidCommandError` naming the body field (an unknown
        ``category``, a point outside the metropolis) and
        :class:`~runtime.errors.StoreUnavailableError`.
        """
        ...


#: The crisis modes of the contract (``normal`` ends a plan).
CRISIS_MODES: Final = ("normal", "snow", "flood")


def normal_crisis_row() -> dict[str, Any]:
    """The crisis row of a municipality that has had no plan."""
    return {"mode": "normal", "since": None, "by": None, "activation_id": None,
            "entities": {"done": 0, "pending": 0, "failed": 0}, "kept": []}


def package_version() -> str:
    """The installed commandpost version, or ``0+unknown`` outside an install."""
    try:
        return metadata.version("commandpost")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _default_health() -> dict[str, Any]:
    return {"status": "starting", "entities": 0, "online": 0}


def _default_tree() -> dict[str, Any]:
    return {
        "id": "commandpost",
        "kind": "supervisor",
        "status": "starting",
        "restarts": 0,
        "pid": os.getpid(),
        "node": None,
        "children": [],
    }


def _default_system() -> dict[str, Any]:
    return {
        "version": package_version(),
        "ray": {"address": None, "nodes": 0},
        "redis": {"url": None, "status": "starting"},
        "mqtt": {"url": None, "status": "starting"},
        "simulators": [],
    }


class StaticBackend:
    """An :class:`AdminBackend` answering with the dicts given to its constructor.

    Omitted parts default to a runtime that is starting: health ``starting``
    with no entity, a childless root supervisor, no Ray/Redis/broker yet.
    ``equipment`` maps entity ids to their municipality slug (``kinds`` to
    their kind, where given); commands for them are kept in memory and stay
    ``queued``, since nothing sends them.
    The audit trail is kept in memory too (what happens while the runtime
    starts); there are no events. Each call returns a deep copy, so callers
    may not alter the stored data.
    """

    def __init__(
        self,
        health: dict[str, Any] | None = None,
        tree: dict[str, Any] | None = None,
        system: dict[str, Any] | None = None,
        equipment: Mapping[str, str] | None = None,
        alarms: list[dict[str, Any]] | None = None,
        interventions: list[dict[str, Any]] | None = None,
        fleet: list[dict[str, Any]] | None = None,
        crisis: Mapping[str, dict[str, Any]] | None = None,
        kinds: Mapping[str, str] | None = None,
    ) -> None:
        self._kinds = dict(kinds or {})
        self._alarms = copy.deepcopy(alarms) if alarms is not None else []
        self._interventions = copy.deepcopy(interventions) if interventions is not None else []
        self._fleet = copy.deepcopy(fleet) if fleet is not None else []
        self._health = copy.deepcopy(health) if health is not None else _default_health()
        self._tree = copy.deepcopy(tree) if tree is not None else _default_tree()
        self._system = copy.deepcopy(system) if system is not None else _default_system()
        status = self._health.get("status")
        if status not in HEALTH_STATUSES:
            raise ConfigError(f"health status must be one of {sorted(HEALTH_STATUSES)}: {status!r}")
        self._equipment = dict(equipment) if equipment is not None else {}
        for entity_id, municipality in self._equipment.items():
            if not isinstance(entity_id, str) or not isinstance(municipality, str):
                raise ConfigError(f"equipment maps entity ids to municipality slugs: {entity_id!r}")
        # Request threads of the WSGI server submit concurrently.
        self._lock = threading.Lock()
        self._commands: dict[str, dict[str, Any]] = {}
        self._idempotency: dict[tuple[str, str, str], str] = {}
        self._audit: list[dict[str, Any]] = []
        self._audit_seq = 0
        self._crisis = {m: copy.deepcopy(dict(row)) for m, row in (crisis or {}).items()}

    def health(self) -> dict[str, Any]:
        return copy.deepcopy(self._health)

    def tree(self) -> dict[str, Any]:
        return copy.deepcopy(self._tree)

    def system(self) -> dict[str, Any]:
        return copy.deepcopy(self._system)

    def equipment_municipality(self, entity_id: str) -> str:
        return self._equipment[entity_id]

    def equipment_kind(self, entity_id: str) -> str:
        if entity_id not in self._equipment:
            raise KeyError(entity_id)
        return self._kinds.get(entity_id, "")

    def submit_command(
        self,
        entity_id: str,
        action: str,
        params: dict[str, Any],
        *,
        caller: str,
        idempotency_key: str | None,
    ) -> dict[str, Any]:
        if entity_id not in self._equipment:
            raise UnknownEntityError(entity_id)
        params = copy.deepcopy(params)
        with self._lock:
            if idempotency_key is not None:
                known = self._idempotency.get((caller, entity_id, idempotency_key))
                if known is not None:
                    first = self._commands[known]
                    if first["action"] != action or first["params"] != params:
                        raise InvalidCommandError(
                            "idempotency key already used for a different command",
                            field="idempotency_key",
                            code="idempotency_conflict",
                        )
                    return {"command_id": known, "status": "queued", "created": False}
            command_id = uuid.uuid4().hex
            self._commands[command_id] = {
                "command_id": command_id,
                "status": "queued",
                "entity_id": entity_id,
                "action": action,
                "params": params,
                "caller": caller,
            }
            if idempotency_key is not None:
                self._idempotency[(caller, entity_id, idempotency_key)] = command_id
        return {"command_id": command_id, "status": "queued", "created": True}

    def command(self, command_id: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._commands[command_id])

    def crisis(self) -> dict[str, dict[str, Any]]:
        munis = sorted({*self._equipment.values(), *self._crisis})
        return {m: copy.deepcopy(self._crisis.get(m) or normal_crisis_row()) for m in munis}

    def crisis_request(self, mode: str, municipalities: list[str], *, replace: bool,
                       caller: str) -> dict[str, Any]:
        if mode not in CRISIS_MODES:
            raise InvalidCommandError(f"unknown mode {mode!r}", field="mode",
                                      code="unknown_mode")
        rows = self.crisis()
        unknown = [m for m in municipalities if m not in rows]
        if unknown or not municipalities:
            raise InvalidCommandError(f"unknown municipality {', '.join(unknown)}",
                                      field="municipalities", code="unknown_municipality")
        busy = [m for m in municipalities if rows[m]["mode"] != "normal"]
        if mode != "normal" and busy and not replace:
            raise ConflictError(f"{', '.join(busy)} already have a crisis plan", names=busy,
                                code="crisis_conflict")
        command_id = uuid.uuid4().hex
        with self._lock:
            self._commands[command_id] = {
                "command_id": command_id, "status": "queued", "target": "crisis",
                "action": "deactivate" if mode == "normal" else "activate",
                "params": {"mode": mode, "municipalities": list(municipalities),
                           "replace": replace}, "caller": caller}
        return {"activation_id": command_id, "status": "queued"}

    def audit(self, record: AuditRecord) -> None:
        with self._lock:
            self._audit_seq += 1
            entry = {**record.to_fields(), "event_id": f"{int(record.ts * 1000)}-{self._audit_seq}"}
            self._audit.append(audit_entry(entry))

    def audit_trail(
        self,
        *,
        user: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> tuple[list[dict[str, Any]], str | None]:
        with self._lock:
            entries = [e for e in reversed(self._audit)
                       if (user is None or e["user"] == user)
                       and (action is None or action_matches(e["action"], action))
                       and (outcome is None or e["outcome"] == outcome)
                       and (since is None or e["ts"] >= since)
                       and (until is None or e["ts"] < until)]
        if before is not None:
            ids = [e["id"] for e in entries]
            entries = entries[ids.index(before) + 1:] if before in ids else []
        page = copy.deepcopy(entries[:limit])
        return page, page[-1]["id"] if len(entries) > limit else None

    def events(
        self,
        *,
        entity: str | None = None,
        kind: str | None = None,
        event: str | None = None,
        municipalities: frozenset[str] | None = None,
        since: float | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> tuple[list[dict[str, Any]], str | None]:
        # Nothing runs yet, so nothing has happened.
        return [], None

    def equipment(self, *, kind: str | None = None, municipality: str | None = None,
                  status: str | None = None, online: bool | None = None,
                  in_alarm: bool | None = None, municipalities: frozenset[str] | None = None,
                  limit: int = 500, after: str | None = None,
                  ) -> tuple[list[dict[str, Any]], str | None]:
        ids = sorted(e for e, m in self._equipment.items()
                     if (municipality is None or m == municipality)
                     and (municipalities is None or m in municipalities)
                     and (after is None or e > after))
        page = ids[:limit]
        items: list[dict[str, Any]] = [
                 {"id": e, "kind": self._kinds.get(e), "municipality": self._equipment[e],
                  "online": False, "status": "unknown", "host": None, "reported": {},
                  "desired": {}}
                 for e in page]
        return items, (page[-1] if len(ids) > limit and page else None)

    def equipment_detail(self, entity_id: str) -> dict[str, Any]:
        items, _ = self.equipment(after=None)
        for item in items:
            if item["id"] == entity_id:
                return {**item, "events": [], "commands": [], "alarms": []}
        raise KeyError(entity_id)

    def equipment_actions(self, entity_id: str) -> list[dict[str, Any]]:
        if entity_id not in self._equipment:
            raise KeyError(entity_id)
        # No behaviour is loaded before the runtime: no form to offer yet.
        return []

    def city(self) -> dict[str, Any]:
        # Neither geography nor positions before the runtime: names and states only.
        return {"municipalities": [{"slug": m, "name": m, "lat": None, "lon": None,
                                    "polygon": None}
                                   for m in sorted(set(self._equipment.values()))],
                "equipment": [{"id": e, "kind": self._kinds.get(e), "municipality": m,
                               "lat": None, "lon": None, "online": False,
                               "status": "unknown", "in_alarm": False}
                              for e, m in sorted(self._equipment.items())]}

    def alarms(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._alarms)

    def alarm_action(self, action: str, params: dict[str, Any], *, caller: str
                     ) -> dict[str, Any]:
        command_id = uuid.uuid4().hex
        with self._lock:
            self._commands[command_id] = {"command_id": command_id, "status": "queued",
                                          "target": "alarms", "action": action,
                                          "params": copy.deepcopy(params), "caller": caller}
        return {"command_id": command_id, "status": "queued"}

    def interventions(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._interventions)

    def fleet(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._fleet)

    def energy(self, *, scope: str, ident: str | None, start: float | None,
               end: float | None, step: str, municipalities: frozenset[str] | None
               ) -> dict[str, Any]:
        raise RetryableError("the runtime is starting: energy is reported once it runs")

    def priority(self) -> dict[str, Any]:
        return {"members": [], "requests": {"granted": 0, "refused": {}},
                "latency_ms": {"p50": None, "p99": None, "histogram": []}}

    def request_municipality(self, lat: float, lon: float) -> str | None:
        # No geography and no dispatch before the runtime: a request waits for them.
        raise RetryableError("the runtime is starting: requests are taken once it runs")

    def open_request(self, *, category: str, description: str, lat: float, lon: float,
                     caller: str) -> dict[str, Any]:
        raise RetryableError("the runtime is starting: requests are taken once it runs")

    def open311_apps(self) -> list[str]:
        return []

    def issue_open311_key(self, application: str) -> str:
        raise RetryableError("the runtime is starting: keys are issued once it runs")

    def revoke_open311_key(self, application: str) -> bool:
        raise RetryableError("the runtime is starting: keys are revoked once it runs")


class SwappableBackend:
    """An :class:`AdminBackend` forwarding to another one that can be replaced.

    The admin web starts before the runtime (so that health says ``starting``)
    and keeps its app object; the composition root swaps the real backend in
    once the runtime is up, and back to a static one while shutting down.
    """

    def __init__(self, backend: AdminBackend) -> None:
        self._lock = threading.Lock()
        self._backend = backend

    def swap(self, backend: AdminBackend) -> None:
        """Forward every later call to ``backend``."""
        with self._lock:
            self._backend = backend

    @property
    def current(self) -> AdminBackend:
        """The backend calls are forwarded to now."""
        with self._lock:
            return self._backend

    def health(self) -> dict[str, Any]:
        return self.current.health()

    def tree(self) -> dict[str, Any]:
        return self.current.tree()

    def system(self) -> dict[str, Any]:
        return self.current.system()

    def equipment_municipality(self, entity_id: str) -> str:
        return self.current.equipment_municipality(entity_id)

    def equipment_kind(self, entity_id: str) -> str:
        return self.current.equipment_kind(entity_id)

    def submit_command(
        self,
        entity_id: str,
        action: str,
        params: dict[str, Any],
        *,
        caller: str,
        idempotency_key: str | None,
    ) -> dict[str, Any]:
        return self.current.submit_command(
            entity_id, action, params, caller=caller, idempotency_key=idempotency_key
        )

    def command(self, command_id: str) -> dict[str, Any]:
        return self.current.command(command_id)

    def crisis(self) -> dict[str, dict[str, Any]]:
        return self.current.crisis()

    def crisis_request(self, mode: str, municipalities: list[str], *, replace: bool,
                       caller: str) -> dict[str, Any]:
        return self.current.crisis_request(mode, municipalities, replace=replace,
                                           caller=caller)

    def audit(self, record: AuditRecord) -> None:
        self.current.audit(record)

    def audit_trail(
        self,
        *,
        user: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> tuple[list[dict[str, Any]], str | None]:
        return self.current.audit_trail(user=user, action=action, outcome=outcome, since=since,
                                        until=until, before=before, limit=limit)

    def events(
        self,
        *,
        entity: str | None = None,
        kind: str | None = None,
        event: str | None = None,
        municipalities: frozenset[str] | None = None,
        since: float | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> tuple[list[dict[str, Any]], str | None]:
        return self.current.events(entity=entity, kind=kind, event=event,
                                   municipalities=municipalities, since=since, before=before,
                                   limit=limit)

    def equipment(self, *, kind: str | None = None, municipality: str | None = None,
                  status: str | None = None, online: bool | None = None,
                  in_alarm: bool | None = None, municipalities: frozenset[str] | None = None,
                  limit: int = 500, after: str | None = None,
                  ) -> tuple[list[dict[str, Any]], str | None]:
        return self.current.equipment(kind=kind, municipality=municipality, status=status,
                                      online=online, in_alarm=in_alarm,
                                      municipalities=municipalities, limit=limit, after=after)

    def equipment_detail(self, entity_id: str) -> dict[str, Any]:
        return self.current.equipment_detail(entity_id)

    def equipment_actions(self, entity_id: str) -> list[dict[str, Any]]:
        return self.current.equipment_actions(entity_id)

    def city(self) -> dict[str, Any]:
        return self.current.city()

    def alarms(self) -> list[dict[str, Any]]:
        return self.current.alarms()

    def alarm_action(self, action: str, params: dict[str, Any], *, caller: str
                     ) -> dict[str, Any]:
        return self.current.alarm_action(action, params, caller=caller)

    def interventions(self) -> list[dict[str, Any]]:
        return self.current.interventions()

    def fleet(self) -> list[dict[str, Any]]:
        return self.current.fleet()

    def energy(self, *, scope: str, ident: str | None, start: float | None,
               end: float | None, step: str, municipalities: frozenset[str] | None
               ) -> dict[str, Any]:
        return self.current.energy(scope=scope, ident=ident, start=start, end=end, step=step,
                                   municipalities=municipalities)

    def priority(self) -> dict[str, Any]:
        return self.current.priority()

    def request_municipality(self, lat: float, lon: float) -> str | None:
        return self.current.request_municipality(lat, lon)

    def open_request(self, *, category: str, description: str, lat: float, lon: float,
                     caller: str) -> dict[str, Any]:
        return self.current.open_request(category=category, description=description, lat=lat,
                                         lon=lon, caller=caller)

    def open311_apps(self) -> list[str]:
        return self.current.open311_apps()

    def issue_open311_key(self, application: str) -> str:
        return self.current.issue_open311_key(application)

    def revoke_open311_key(self, application: str) -> bool:
        return self.current.revoke_open311_key(application)
