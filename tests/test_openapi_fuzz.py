"""The admin API against its own OpenAPI document, property-based (schemathesis).

The app runs behind waitress on a loopback port, on the runtime's own backend over a
real Redis with its read models filled (``tests.admin_rig``). Schemathesis reads
``/api/v1/openapi.json`` and, for each operation, sends the document's examples, its
boundary values valid and not (coverage phase), then cases Hypothesis generates from
the schemas (fuzzing phase), and chains of calls the document's answers link (the
stateful phase). With an admin's token every phase runs, the generated cases all
valid; with an operator's, the generated cases are valid and not (a missing or mangled
token among them). Every answer must be no 5xx, a documented status with a body of its
documented schema, content type and headers; a request that breaks the schema must be
refused (4xx), and one without its token too.

Path parameters and the energy report's instants are drawn half of the time from what
exists (equipment, alarms, interventions, the rig's user ``alice`` and her tokens) or from
edge values, so that the cases reach past the 404 of an unknown id. The users whose tokens
the runs use are the rig's, not the cases': a change aimed at one of them (a name read
from ``GET /users`` in the stateful phase, say) is aimed at ``alice`` instead, so that the
admin's run does not disable, demote or revoke the users of the runs that follow.

The document cannot state what only the runtime knows (a municipality of the inventory,
a point within the metropolis, the actions of an equipment's kind, the desks of the desk
file, the user names taken): a valid case the runtime refuses for such a reason answers a
documented 400, 404 or 422, so that check (``positive_data_acceptance``) is off.
Open311's ``GET requests`` ignores every criterion when given ids, as GeoReport v2 says,
malformed ones too: that operation is not held to refusing them.

``COMMANDPOST_OPENAPI_EXAMPLES`` sets the generated cases per operation and user
(default :data:`DEFAULT_EXAMPLES`; 50 or more for a full run, which also runs the
coverage and stateful phases for the operator), ``COMMANDPOST_OPENAPI_SEED`` the seed
(fixed by default, so that a run is reproduced).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from schemathesis.engine import Status
from schemathesis.engine import events as ev

from admin_web.openapi import OPENAPI_PATH
from tests.admin_rig import SUBJECT, TOKENS, Rig, runtime_admin

DEFAULT_EXAMPLES = 25
FULL_EXAMPLES = 50
EXAMPLES = int(os.environ.get("COMMANDPOST_OPENAPI_EXAMPLES", DEFAULT_EXAMPLES))
SEED = int(os.environ.get("COMMANDPOST_OPENAPI_SEED", "20260101"))
#: Instants for the energy report, around the edges the runtime's calendar has.
INSTANTS = ["0", "-1", "3600", "1e15", "-1e15", "1e308", "253370764799", "253370764800",
            "2026-01-01", "2026-01-02T00:00", "0001-01-01T00:00", "9999-12-31T23:00+14:00"]


@dataclass
class Figures:
    """What one run did: cases by phase and operation, what it found."""

    cases: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def fuzzed(self, label: str) -> int:
        return self.cases["fuzzing", label]

    def summary(self) -> str:
        phases = collections.Counter[str]()
        for (phase, _), n in self.cases.items():
            phases[phase] += n
        operations = {label for _, label in self.cases}
        return (f"{len(operations)} operations, {sum(phases.values())} cases "
                f"({', '.join(f'{p} {n}' for p, n in sorted(phases.items()))}), "
                f"{len(self.failures)} failures, {len(self.errors)} errors")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with runtime_admin(tmp_path_factory.mktemp("redis")) as rig:
        yield rig


def _describe(label: str, check: Any, interaction: Any) -> str:
    info = check.failure_info
    text = f"{label}: {check.name}: {info.failure.title if info else '?'}"
    if info is not None:
        text += f" ({str(info.failure).splitlines()[-1][:200]})"
    if interaction is not None:
        request, response = interaction.request, interaction.response
        body = (request.body or b"")[:200]
        text += f"\n    {request.method} {request.uri} {body!r}"
        if response is not None:
            text += f"\n    -> {response.status_code} {response.content[:200]!r}"
    return text


def _spare_the_rigs_users(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Aim a change of one of the rig's token holders at :data:`SUBJECT` instead."""
    parameters = case.path_parameters
    if (case.method.upper() != "GET" and case.path.startswith("/api/v1/users/")
            and isinstance(parameters, dict) and parameters.get("name") in TOKENS):
        parameters["name"] = SUBJECT


@contextmanager
def sparing_the_rigs_users() -> Iterator[None]:
    """:func:`_spare_the_rigs_users` as schemathesis's ``before_call`` hook, meanwhile."""
    schemathesis.hook("before_call")(_spare_the_rigs_users)
    try:
        yield
    finally:
        schemathesis.hooks.unregister(_spare_the_rigs_users)


def run(rig: Rig, base_url: str, who: str, *, mode: str, coverage: bool,
        stateful: bool) -> Figures:
    """One schemathesis run with ``who``'s token, generating ``mode`` cases; its figures."""
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        # How long generating takes depends on the machine's load, not on the API.
        "suppress-health-check": ["too_slow"],
        "generation": {"max-examples": EXAMPLES, "database": "none"},
        "auth": {"openapi": {"bearerAuth": {"bearer": TOKENS[who]}}},
        "checks": {"positive_data_acceptance": {"enabled": False}},
        "phases": {
            # Boundary values valid and not; generated cases in ``mode``.
            "coverage": {"enabled": coverage, "generation": {"mode": "all"}},
            "fuzzing": {"generation": {"mode": mode}},
            "stateful": {"enabled": stateful},
        },
        "dictionaries": {
            "entities": {"values": [eq.id for eq in rig.inventory.equipment[::5]]},
            "alarms": {"values": rig.alarm_ids},
            "interventions": {"values": rig.intervention_ids},
            "instants": {"values": INSTANTS},
            "users": {"values": [SUBJECT]},
            "tokens": {"values": [t.id for t in rig.users.get(SUBJECT).tokens]},
        },
        "operations": [{
            # GeoReport v2: given ids, every other criterion is ignored, well-formed or not.
            "include-path": "/open311/v2/requests.{fmt}", "include-method": "GET",
            "checks": {"negative_data_rejection": {"enabled": False}},
        }],
        "parameters": {
            "entity_id": {"dictionary": "entities", "probability": 0.5},
            "alarm_id": {"dictionary": "alarms", "probability": 0.5},
            "intervention_id": {"dictionary": "interventions", "probability": 0.5},
            "from": {"dictionary": "instants", "probability": 0.5},
            "to": {"dictionary": "instants", "probability": 0.5},
            "name": {"dictionary": "users", "probability": 0.5},
            "token_id": {"dictionary": "tokens", "probability": 0.5},
        },
    })
    config.projects.default.base_url = base_url
    schema = schemathesis.openapi.from_url(base_url + OPENAPI_PATH, config=config)
    figures = Figures()
    with sparing_the_rigs_users():
        for event in schemathesis.engine.from_schema(schema).execute():
            if isinstance(event, ev.ScenarioFinished):
                recorder = event.recorder
                figures.cases[event.phase.value, recorder.label] += len(recorder.cases)
                for case_id, checks in recorder.checks.items():
                    figures.failures.extend(
                        _describe(recorder.label, check, recorder.interactions.get(case_id))
                        for check in checks if check.status == Status.FAILURE)
            elif isinstance(event, ev.NonFatalError):
                figures.errors.append(f"{event.label}: {event.info.message}"[:500])
            elif isinstance(event, ev.FatalError):
                figures.errors.append(f"fatal: {event.exception!r}"[:500])
    return figures


@pytest.mark.parametrize("who", ["admin", "operator"])
def test_the_api_keeps_to_its_document(rig: Rig, who: str) -> None:
    full = EXAMPLES >= FULL_EXAMPLES
    with rig.served() as base_url:
        # The admin's run reaches everything with valid cases (invalid ones come from the
        # boundaries of the coverage phase); the operator's mixes valid and invalid ones.
        figures = run(rig, base_url, who, mode="positive" if who == "admin" else "all",
                      coverage=who == "admin" or full, stateful=who == "admin" or full)
    print(f"{who}: {figures.summary()}")
    found = "\n".join(sorted(set(figures.failures))[:30] + figures.errors[:10])
    assert not figures.failures and not figures.errors, f"{figures.summary()}\n{found}"
    operations = {label for phase, label in figures.cases if phase == "fuzzing"}
    assert len(operations) >= 30, sorted(operations)
    # Each operation that takes something to vary ran its share of generated cases.
    doc = rig.client.get(OPENAPI_PATH).get_json()
    fixed = {f"{method.upper()} {path}" for path, item in doc["paths"].items()
             for method, op in item.items()
             if not op.get("parameters") and "requestBody" not in op}
    assert "GET /api/v1/health" in fixed
    # A short run (the default) may draw fewer distinct cases for an operation whose
    # inputs are tightly bound; a full run holds each to its count.
    least = EXAMPLES if full else EXAMPLES * 3 // 5
    short = {label: figures.fuzzed(label) for label in operations
             if figures.fuzzed(label) < least and label not in fixed}
    assert not short, short
    # The runs' own users came through as they were.
    for name in TOKENS:
        assert rig.client.get("/api/v1/desks", headers=rig.auth(name)).status_code == 200
        assert not rig.users.get(name).disabled
