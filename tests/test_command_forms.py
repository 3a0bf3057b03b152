"""Each kind's command forms (``describe_commands``) say what its validation takes.

For one equipment of every kind (a bus and a service vehicle apart), a command built
from the forms alone, each parameter at its bounds, is accepted by the kind's own
``validate_command_for``; a value past a bound, outside a choice or of the wrong type,
and a required parameter left out, are refused naming that parameter.
"""

from __future__ import annotations

import datetime
import functools
from typing import Any

import pytest

from actors.registry import factory_for
from runtime.clock import CITY_TZ
from runtime.demo_inventory import generate_demo
from runtime.entity import Entity
from runtime.errors import InvalidCommandError
from runtime.inventory import Equipment, parse_inventory

#: A city time outside the pedestrian zones' hours (their delivery window): a Tuesday,
#: 08:00 in Dijon.
DELIVERIES = datetime.datetime(2026, 1, 6, 8, tzinfo=CITY_TZ).timestamp()


@functools.cache
def samples() -> dict[str, Equipment]:
    """One equipment of each kind (``vehicle:bus``, ``vehicle:fleet``: with and without
    a radio)."""
    inventory = parse_inventory(generate_demo(scale=0.05, seed=3), "<demo>")
    out: dict[str, Equipment] = {}
    for eq in inventory.equipment:
        key = eq.kind if eq.kind != "vehicle" else (
            "vehicle:bus" if eq.attrs.get("line") else "vehicle:fleet")
        out.setdefault(key, eq)
    return out


def behaviour(eq: Equipment) -> type[Entity]:
    found = factory_for(eq)
    assert isinstance(found, type) and issubclass(found, Entity)
    return found


def sample_value(spec: dict[str, Any], *, high: bool = False) -> Any:
    """A value the spec allows: its lowest (or highest) bound, first (last) choice."""
    kind = spec["type"]
    if "enum" in spec:
        return spec["enum"][-1 if high else 0]
    if kind == "boolean":
        return high
    if kind in ("integer", "number"):
        if high and "max" in spec:
            return spec["max"]
        low = spec.get("min", 0)
        return low + 1 if spec.get("exclusive_min") else low
    if kind == "array":
        return [sample_value(spec["items"], high=high)]
    return "x" * spec["max_length"] if high else "checked by the forms' test"


def build(form: dict[str, Any], *, high: bool = False) -> dict[str, Any]:
    """The params of ``form``: every required one, and one of ``requires_one_of``."""
    params = {name: sample_value(spec, high=high) for name, spec in form["params"].items()
              if spec.get("required")}
    for name in form.get("requires_one_of", [])[:1]:
        params[name] = sample_value(form["params"][name], high=high)
    for name, spec in form["params"].items():
        if any(params.get(other) in values
               for other, values in spec.get("required_when", {}).items()):
            params[name] = sample_value(spec, high=high)
    return params


def cases() -> list[tuple[str, str]]:
    out = []
    for key, eq in samples().items():
        for form in behaviour(eq).describe_commands(eq):
            out.append((key, form["action"]))
    return out


def form_of(key: str, action: str) -> tuple[type[Entity], Equipment, dict[str, Any]]:
    eq = samples()[key]
    kind = behaviour(eq)
    return kind, eq, next(f for f in kind.describe_commands(eq) if f["action"] == action)


def refused(kind: type[Entity], eq: Equipment, action: str, params: dict[str, Any]) -> str:
    with pytest.raises(InvalidCommandError) as caught:
        kind.validate_command_for(eq, action, params, now=DELIVERIES)
    return str(caught.value.field)


def test_every_kind_that_takes_commands_describes_them() -> None:
    described = {key for key, _ in cases()}
    assert described == {"crossroad", "lighting_circuit", "building", "camera",
                         "access_terminal", "vehicle:bus"}
    # A service vehicle without radio takes no crew message: no form.
    fleet = samples()["vehicle:fleet"]
    assert behaviour(fleet).describe_commands(fleet) == []


@pytest.mark.parametrize(("key", "action"), cases())
def test_a_command_built_from_the_form_is_accepted(key: str, action: str) -> None:
    kind, eq, form = form_of(key, action)
    for high in (False, True):
        params = build(form, high=high)
        clean = kind.validate_command_for(eq, action, params, now=DELIVERIES)
        assert set(clean) >= set(params) - {"preset"}, (params, clean)


@pytest.mark.parametrize(("key", "action"), cases())
def test_each_bound_of_the_form_is_one_the_kind_enforces(key: str, action: str) -> None:
    kind, eq, form = form_of(key, action)
    base = build(form)
    for name, spec in form["params"].items():
        if spec["type"] in ("integer", "number") and "enum" not in spec:
            if "max" in spec:
                assert refused(kind, eq, action, {**base, name: spec["max"] + 1}) == \
                    f"params.{name}"
            if "min" in spec:
                below = spec["min"] if spec.get("exclusive_min") else spec["min"] - 1
                assert refused(kind, eq, action, {**base, name: below}) == f"params.{name}"
            if spec["type"] == "integer" and "names" not in spec:
                assert refused(kind, eq, action, {**base, name: 1.5}) == f"params.{name}"
        if "enum" in spec:
            assert refused(kind, eq, action, {**base, name: "not-a-choice" if spec["type"]
                                              == "string" else 10_000}) == f"params.{name}"
        if spec["type"] == "string" and "enum" not in spec:
            too_long = "x" * (spec["max_length"] + 1)
            assert refused(kind, eq, action, {**base, name: too_long}) == f"params.{name}"
        if spec["type"] == "boolean":
            assert refused(kind, eq, action, {**base, name: "yes"}) == f"params.{name}"
        if spec["type"] == "array":
            beyond = [spec["items"]["max"] + 1]
            assert refused(kind, eq, action, {**base, name: beyond}) == f"params.{name}"
        if spec.get("required"):
            rest = {k: v for k, v in base.items() if k != name}
            assert refused(kind, eq, action, rest) == f"params.{name}"
        for other, values in spec.get("required_when", {}).items():
            rest = {k: v for k, v in base.items() if k != name}
            assert refused(kind, eq, action, {**rest, other: values[0]}) == f"params.{name}"


@pytest.mark.parametrize(("key", "action"), cases())
def test_a_parameter_the_form_does_not_name_is_refused(key: str, action: str) -> None:
    kind, eq, form = form_of(key, action)
    field = refused(kind, eq, action, {**build(form), "nonsense": 1})
    assert field == "params.nonsense"


def test_a_set_needs_one_of_its_fields() -> None:
    for key, action in cases():
        kind, eq, form = form_of(key, action)
        if form.get("requires_one_of"):
            assert refused(kind, eq, action, {}) in ("params", "params.reason")
