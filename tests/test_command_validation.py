"""Commands are validated before they are journaled, by one definition per kind.

Three tiers: the limits of every command (:func:`check_command_shape`) and
each kind's field table (``validate_command``, ``Field.check``) as units; the
device profiles' writable ranges against those tables; then the admin API
through the real :class:`RuntimeBackend` on a real Redis (no Ray: nothing
consumes the journal here, so a refusal must leave it as it was).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from actors.access import AccessTerminal
from actors.building import Building
from actors.camera import Camera
from actors.crossroad import Crossroad
from actors.equipment import EquipmentEntity, Field
from actors.lighting import LightingCircuit, lamp_writes
from actors.registry import BEHAVIOURS
from actors.signal_plan import table_fields
from actors.vehicle import Vehicle
from admin_web import Role, StaticBackend, UserRegistry, create_app
from devices.mqtt import check_field
from devices.profile import BlockSpec, FieldSpec, Profile, builtin_profile
from runtime.commands import (
    MAX_ACTION_LENGTH,
    MAX_PARAM_NAME_LENGTH,
    MAX_PARAMS,
    MAX_PARAMS_BYTES,
    check_command_shape,
)
from runtime.demo_inventory import generate_demo
from runtime.embedded import EmbeddedRedis
from runtime.errors import InvalidCommandError, MalformedMessageError, RejectedError
from runtime.inventory import Inventory, parse_inventory
from runtime.service import RuntimeBackend, Service, ServiceOptions, check_command
from runtime.store import StoreKeys

# -- the limits of every command ----------------------------------------------------------


def refused(action: Any, params: Any) -> InvalidCommandError:
    with pytest.raises(InvalidCommandError) as info:
        check_command_shape(action, params)
    return info.value


def test_the_limits_themselves_are_accepted() -> None:
    params = {f"p{i:02d}": i for i in range(MAX_PARAMS)}
    assert check_command_shape("a" * MAX_ACTION_LENGTH, params) == params
    name = "n" * MAX_PARAM_NAME_LENGTH
    assert check_command_shape("set", {name: 1}) == {name: 1}
    # A str of n bytes encodes as n + 3 (str16 header), the map as 1 + the name's 2.
    text = "x" * (MAX_PARAMS_BYTES - 6)
    assert check_command_shape("set", {"m": text}) == {"m": text}
    assert refused("set", {"m": text + "x"}).code == "too_large"


@pytest.mark.parametrize(
    ("action", "params", "field", "code"),
    [
        ("", {}, "action", "bad_value"),
        (7, {}, "action", "bad_value"),
        ("a" * (MAX_ACTION_LENGTH + 1), {}, "action", "too_long"),
        ("x" * 100_000, {"dim": 1}, "action", "too_long"),
        ("set", [1], "params", "bad_value"),
        ("set", None, "params", "bad_value"),
        ("set", {f"k{i}": i for i in range(MAX_PARAMS + 1)}, "params", "too_many_params"),
        ("set", {"": 1}, "params", "bad_name"),
        ("set", {"n" * (MAX_PARAM_NAME_LENGTH + 1): 1}, "params", "bad_name"),
        ("set", {"m": "x" * 100_000}, "params", "too_large"),
        ("set", {"m": ["x" * 64] * 100}, "params", "too_large"),
        ("set", {"m": [[[[]]]] * 2000}, "params", "too_large"),
        ("set", {"m": {"a": {"b": [1.0, math.nan]}}}, "params.m", "bad_value"),
        ("set", {"dim": math.inf}, "params.dim", "bad_value"),
        ("set", {"dim": -math.inf}, "params.dim", "bad_value"),
        ("set", {"blob": object()}, "params.blob", "bad_value"),
        ("set", {"big": 10**30}, "params.big", "bad_value"),
    ],
)
def test_what_breaks_the_limits_is_refused_naming_the_field(
    action: Any, params: Any, field: str, code: str
) -> None:
    error = refused(action, params)
    assert (error.field, error.code) == (field, code)
    assert len(str(error)) < 200  # a refusal never echoes what it refused


def test_a_huge_request_is_refused_without_being_walked() -> None:
    many = {f"k{i}": i for i in range(60_000)}
    deep = {"m": [list(range(1000)) for _ in range(1000)]}  # a million values, 4 names
    for params in (many, deep):
        start = time.perf_counter()
        for _ in range(100):
            refused("set", params)
        per_call = (time.perf_counter() - start) / 100
        # Walking a million values takes a third of a second; the limit bounds the walk
        # to about 4,096 of them (a millisecond or two), whatever was sent.
        assert per_call < 0.01, per_call


# -- one field --------------------------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("spec", [Field(float, 0, 100), Field(int, 1, 32), Field(float)])
def test_a_field_refuses_numbers_that_are_not_finite(spec: Field, value: float) -> None:
    with pytest.raises(RejectedError) as info:
        spec.check("x", value)
    assert info.value.code == "bad_value"


@pytest.mark.parametrize(
    ("spec", "value", "code"),
    [
        (Field(float, 0, 100), 10**400, "out_of_range"),
        (Field(float), 10**400, "out_of_range"),
        (Field(int, 1, 32), -(10**400), "out_of_range"),
        (Field(int, 1, 32), 2.5, "bad_value"),
        (Field(int, 1, 32), True, "bad_value"),
        (Field(float, 0, 100), "50", "bad_value"),
        (Field(bool), 1, "bad_value"),
        (Field(str, max_len=5), "x" * 6, "bad_value"),
        (Field(str, choices=("up", "down")), "sideways", "out_of_range"),
        (Field(str, choices=("up", "down")), "u" * 100_000, "bad_value"),
    ],
)
def test_a_field_refuses_what_it_cannot_hold(spec: Field, value: Any, code: str) -> None:
    with pytest.raises(RejectedError) as info:
        spec.check("x", value)
    assert info.value.code == code
    assert len(str(info.value)) < 200


def test_a_field_converts_what_it_accepts() -> None:
    assert Field(float, 0, 100).check("dim", 40) == 40.0
    assert Field(int, 1, 32).check("plan", 4.0) == 4
    assert Field(str, choices=("up", "down")).check("bollard", "up") == "up"


# -- what each kind accepts -----------------------------------------------------------------

CASES: list[tuple[type[EquipmentEntity], dict[str, Any], str, str]] = [
    (Crossroad, {"plan": 0}, "params.plan", "out_of_range"),
    (Crossroad, {"plan": 33}, "params.plan", "out_of_range"),
    (Crossroad, {"mode": "disco"}, "params.mode", "out_of_range"),
    (LightingCircuit, {"dim": 150}, "params.dim", "out_of_range"),
    (LightingCircuit, {"dim": math.nan}, "params.dim", "bad_value"),
    (LightingCircuit, {"brightness": 5}, "params.brightness", "unknown_field"),
    (LightingCircuit, {"on": True, "dim": -1}, "params.dim", "out_of_range"),
    (Building, {"mode": "party"}, "params.mode", "out_of_range"),
    (Camera, {"preset": 256}, "params.preset", "out_of_range"),
    (Camera, {"recording": "yes"}, "params.recording", "bad_value"),
    (Vehicle, {"message": "x" * 201}, "params.message", "bad_value"),
    (AccessTerminal, {"bollard": "moving"}, "params.bollard", "out_of_range"),
    (AccessTerminal, {"request": "raise"}, "params.request", "unknown_field"),
]


@pytest.mark.parametrize(("behaviour", "params", "field", "code"), CASES)
def test_each_kind_refuses_what_its_fields_refuse(
    behaviour: type[EquipmentEntity], params: dict[str, Any], field: str, code: str
) -> None:
    with pytest.raises(InvalidCommandError) as info:
        behaviour.validate_command("set", params)
    assert (info.value.field, info.value.code) == (field, code)
    # The composition root asks the same table.
    with pytest.raises(InvalidCommandError):
        check_command(behaviour, "set", params)


@pytest.mark.parametrize("behaviour", list(BEHAVIOURS.values()))
def test_each_kind_accepts_only_set(behaviour: type[EquipmentEntity]) -> None:
    for action in ("dim", "SET", "x" * 100_000):
        with pytest.raises(InvalidCommandError) as info:
            behaviour.validate_command(action, {})
        assert info.value.field == "action"
    with pytest.raises(InvalidCommandError) as info:
        behaviour.validate_command("set", {})
    assert info.value.field == "params"


def test_check_command_holds_any_other_behaviour_to_the_limits() -> None:
    assert check_command(object(), "ack", {"alarm": "a-1"}) == {"alarm": "a-1"}
    with pytest.raises(InvalidCommandError):
        check_command(object(), "ack", {"n": math.nan})


# -- the device profiles agree with the field tables ------------------------------------

#: Integer registers holding a float field: the device keeps whole units.
ROUNDED = {("lighting_circuit", "dim"): "the cabinet dims in whole percents (lamp_holds)"}
#: Profile choices no operator setpoint produces, by (profile, field).
DEVICE_ONLY_CHOICES = {
    ("access_terminal", "request"): {"none"},  # the terminal's own reset
    ("traffic_controller", "mode"): {"start_flashing", "start_all_red"},  # its way from off
}
#: Writable profile fields that are not an operator's setpoint, with the reason.
NOT_SETPOINTS = {
    **{("traffic_controller", f"prio_request.{f}"): "a signal priority request, written "
       "whole by the bus-priority lane (reconcile never)"
       for f in ("prio_id", "prio_command", "prio_approach", "prio_type", "prio_eta_s",
                 "prio_deadline_s", "prio_max_extension_s")},
    **{("traffic_controller", f"plan_table.{f}"): "a signal plan's table, downloaded from "
       "actors/signal_plans.toml when its plan is selected" for f in table_fields()},
    ("bms", "door.locked"): "a door unlock is an action with a reason, not a plain setpoint",
    **{("lighting_cabinet", f): "the schedule's next step, armed by the circuit for the "
       "cabinet to take at its time (reconcile never)" for f in ("step_at", "step_on",
                                                                 "step_dim")},
    **{("service_vehicle", f): "a job is written by the dispatch coordinator"
       for f in ("job", "job_lat", "job_lon")},
}
_NUMBER_TYPES = {int: {"u16", "i16", "u32", "i32"}, float: {"float"}}


def kinds_and_profiles() -> list[tuple[str, str]]:
    inv = parse_inventory(generate_demo(scale=0.05, seed=1), "<demo>")
    return sorted({(eq.kind, eq.profile) for eq in inv.equipment})


def device_writes(behaviour: type[EquipmentEntity], name: str, value: Any) -> dict[str, Any]:
    """What the kind writes to its device for ``name = value``.

    A circuit writes one lamp of two (the other holds the value) and then, when
    neither holds it, its cabinet's broadcast register.
    """
    if issubclass(behaviour, LightingCircuit):
        holds = {name: value}
        return {**lamp_writes({name: value}, [{}, holds], broadcast={name}),
                **lamp_writes({name: value}, [{}, {}], broadcast={name})}
    # device_fields maps names only; it reads nothing of the entity.
    return behaviour.device_fields(object.__new__(behaviour), {name: value})


def profile_field(profile: Profile, key: str) -> tuple[str, FieldSpec]:
    """``(name, spec)`` of a written key: ``mode`` or a block repeat's ``lamp.3.dim``."""
    for spec in profile.fields:
        if spec.name == key:
            return key, spec
    block_name, _, rest = key.partition(".")
    block: BlockSpec | None = next((b for b in profile.blocks if b.name == block_name), None)
    field_name = rest.split(".", 1)[-1]
    assert block is not None and any(f.name == field_name for f in block.fields), (
        f"profile {profile.name} has no field {key!r}")
    return f"{block_name}.{field_name}", block.field(field_name)


def samples(spec: Field) -> list[Any]:
    if spec.type is bool:
        return [True, False]
    if spec.choices:
        return list(spec.choices)
    if spec.type is str:
        return ["", "x" * spec.max_len]
    assert spec.low is not None and spec.high is not None
    return [spec.type(spec.low), spec.type((spec.low + spec.high) // 2), spec.type(spec.high)]


def device_accepts(profile: Profile, spec: FieldSpec, value: Any) -> bool:
    """Whether the device layer writes ``value`` to ``spec`` (as ``devices.manager`` does)."""
    try:
        if profile.protocol == "modbus":
            spec.encode(value)
        elif spec.choices and isinstance(value, str):
            # An enumerated node or key takes a choice by name (its index on the wire).
            return value in spec.choices
        else:
            check_field(spec, value)
    except (RejectedError, MalformedMessageError):
        return False
    return True


@pytest.mark.parametrize(("kind", "profile_name"), kinds_and_profiles())
def test_profiles_writable_ranges_agree_with_the_kinds_fields(
    kind: str, profile_name: str
) -> None:
    behaviour = BEHAVIOURS[kind]
    profile = builtin_profile(profile_name)
    covered: set[str] = set()
    for name, spec in behaviour.FIELDS.items():
        images: dict[str, tuple[FieldSpec, set[Any]]] = {}
        for value in samples(spec):
            for key, raw in device_writes(behaviour, name, spec.check(name, value)).items():
                where, pspec = profile_field(profile, key)
                assert pspec.writable, f"{kind}.{name} writes {profile_name}.{where}: read-only"
                assert device_accepts(profile, pspec, raw), f"{profile_name}.{where}: {raw!r}"
                images.setdefault(where, (pspec, set()))[1].add(raw)
        for where, (pspec, written) in images.items():
            covered.add(where)
            if spec.type is bool:
                assert pspec.type == "bool", (kind, name, pspec.type)
            elif spec.choices:
                extra = DEVICE_ONLY_CHOICES.get((profile_name, where), set())
                assert set(pspec.choices) == written | extra, (kind, name, pspec.choices)
            elif spec.type is str:
                # A profile string has no length of its own: the payload bounds it.
                assert pspec.type == "str" and not pspec.choices
                assert spec.max_len * 4 < profile.max_payload_bytes
            else:
                types = _NUMBER_TYPES[spec.type] | (
                    _NUMBER_TYPES[int] if (kind, name) in ROUNDED else set())
                assert pspec.type in types, (kind, name, pspec.type)
                # The same range both ways: each contains the other.
                assert (pspec.min, pspec.max) == (spec.low, spec.high), (kind, name)
                for outside in (spec.low - 1, spec.high + 1):  # type: ignore[operator]
                    assert not device_accepts(profile, pspec, outside)
                    with pytest.raises(RejectedError):
                        spec.check(name, outside)
    writable = {f.name for f in profile.fields if f.writable} | {
        f"{b.name}.{f.name}" for b in profile.blocks for f in b.fields if f.writable}
    left = {w for w in writable - covered if (profile_name, w) not in NOT_SETPOINTS}
    assert not left, f"{profile_name} has writable fields no {kind} setpoint reaches: {left}"


# -- the admin API on the real backend and a real Redis -------------------------------------

TOKENS = {name: f"{name}-token-{name[0] * 20}" for name in ("admin", "operator", "op2")}


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedRedis(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def inventory() -> Inventory:
    return parse_inventory(generate_demo(scale=0.05, seed=2), "<demo>")


@pytest.fixture(scope="module")
def service(redis_url: str, inventory: Inventory) -> Iterator[Service]:
    # The runtime's own backend and store; no Ray, no broker: nothing reads the journal.
    svc = Service(inventory, ServiceOptions(redis_url=redis_url, mqtt_url="mqtt://127.0.0.1:1",
                                            namespace=f"v{uuid.uuid4().hex[:8]}"))
    svc.start_servers()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def client(service: Service, inventory: Inventory) -> FlaskClient:
    users = UserRegistry()
    towns = sorted({eq.municipality for eq in inventory.equipment})
    users.add("admin", Role.ADMIN, token=TOKENS["admin"])
    users.add("operator", Role.OPERATOR, token=TOKENS["operator"])
    users.add("op2", Role.OPERATOR, municipalities=[towns[0]], token=TOKENS["op2"])
    return create_app(RuntimeBackend(service), users, secret_key=b"k" * 32).test_client()


def journal(service: Service) -> tuple[int, int]:
    """(journal entries, command records) in Redis."""
    keys = StoreKeys(service.options.namespace)
    client = redis.Redis.from_url(service.redis_url)
    try:
        records = sum(1 for _ in client.scan_iter(match=keys.command_prefix + "*", count=1000))
        return int(client.xlen(keys.journal)), records
    finally:
        client.close()


def target(inventory: Inventory, kind: str) -> str:
    return next(eq.id for eq in inventory.equipment if eq.kind == kind)


def post(client: FlaskClient, entity: str, raw: bytes, who: str = "operator") -> Any:
    return client.post(f"/api/v1/equipment/{entity}/commands", data=raw,
                       headers={"Authorization": f"Bearer {TOKENS[who]}",
                                "Content-Type": "application/json"})


def body(action: Any = "set", **params: Any) -> bytes:
    return json.dumps({"action": action, "params": params}).encode()


BAD = [
    ("lighting_circuit", body(dim=150), 422, "params.dim"),
    ("lighting_circuit", body(dim=-0.5), 422, "params.dim"),
    ("lighting_circuit", body(dim="50"), 422, "params.dim"),
    ("lighting_circuit", body(brightness=50), 422, "params.brightness"),
    ("lighting_circuit", body("fly", dim=5), 422, "action"),
    ("lighting_circuit", body("x" * 100_000, dim=5), 422, "action"),
    ("lighting_circuit", json.dumps({"action": "set", "params": {
        f"k{i}": i for i in range(60_000)}}).encode(), 422, "params"),
    ("lighting_circuit", body(dim=5, note="x" * 5000), 422, "params"),
    ("lighting_circuit", body(), 422, "params"),
    ("lighting_circuit", b'{"action": "set", "params": {"dim": NaN}}', 400, None),
    ("lighting_circuit", b'{"action": "set", "params": {"dim": Infinity}}', 400, None),
    ("lighting_circuit", b'{"action": "set", "params": {"dim": -Infinity}}', 400, None),
    ("lighting_circuit", b'{"action": "set", "params": {"dim": 1e999}}', 422, "params.dim"),
    ("lighting_circuit", b'{"action": "set", "params": {"dim": ' + b"9" * 500 + b"}}", 422,
     "params.dim"),
    ("lighting_circuit", b'{"action": "set", "params": {"dim": ' + b"[" * 100_000 + b"}}",
     400, None),
    ("crossroad", body(plan=33), 422, "params.plan"),
    ("crossroad", body(plan=2.5), 422, "params.plan"),
    ("crossroad", body(mode="disco"), 422, "params.mode"),
    ("building", body(mode="party"), 422, "params.mode"),
    ("camera", body(preset=-1), 422, "params.preset"),
    ("vehicle", body(message="x" * 201), 422, "params.message"),
    ("access_terminal", body(bollard="moving"), 422, "params.bollard"),
]


@pytest.mark.parametrize(("kind", "raw", "status", "field"), BAD)
def test_a_command_the_kind_refuses_is_answered_at_once_and_not_journaled(
    client: FlaskClient, service: Service, inventory: Inventory,
    kind: str, raw: bytes, status: int, field: str | None,
) -> None:
    before = journal(service)
    start = time.perf_counter()
    response = post(client, target(inventory, kind), raw)
    took = time.perf_counter() - start
    assert response.status_code == status, response.get_json()
    answer = response.get_json()
    assert answer["error"] and len(answer["error"]) < 300
    assert answer.get("field") == field
    assert journal(service) == before
    # Parsing a megabyte of JSON is the only work that grows with the body.
    assert took < 0.5, took


def test_an_accepted_command_is_journaled_with_the_values_as_held(
    client: FlaskClient, service: Service, inventory: Inventory
) -> None:
    before = journal(service)
    response = post(client, target(inventory, "lighting_circuit"), body(dim=40, on=True))
    assert response.status_code == 202, response.get_json()
    assert journal(service) == (before[0] + 1, before[1] + 1)
    command_id = response.get_json()["command_id"]
    found = client.get(f"/api/v1/commands/{command_id}",
                       headers={"Authorization": f"Bearer {TOKENS['operator']}"}).get_json()
    assert found["params"] == {"dim": 40.0, "on": True}
    assert found["status"] == "queued"


def test_scope_is_checked_before_the_body(
    client: FlaskClient, service: Service, inventory: Inventory
) -> None:
    town = sorted({eq.municipality for eq in inventory.equipment})[0]
    other = next(eq.id for eq in inventory.equipment if eq.municipality != town)
    before = journal(service)
    assert post(client, other, body("x" * 100_000), who="op2").status_code == 404
    assert post(client, "no-such-equipment", body(dim=5)).status_code == 404
    assert journal(service) == before


def test_every_kind_of_the_inventory_has_a_field_table(inventory: Inventory) -> None:
    kinds = {eq.kind for eq in inventory.equipment}
    tables: Mapping[str, type[EquipmentEntity]] = BEHAVIOURS
    assert kinds <= set(tables)
    assert all(tables[k].FIELDS for k in kinds)


def test_the_admin_web_reads_and_writes_only_json() -> None:
    app = create_app(StaticBackend(), UserRegistry())
    with app.app_context():
        for text in ("NaN", "[Infinity]", '{"a": -Infinity}', "[" * 100_000):
            with pytest.raises(ValueError):
                app.json.loads(text)
        assert app.json.loads('{"a": [1.5, null]}') == {"a": [1.5, None]}
        written = app.json.dumps({"a": math.nan, "b": [1.0, math.inf], "c": "x"})
        assert json.loads(written) == {"a": None, "b": [1.0, None], "c": "x"}
