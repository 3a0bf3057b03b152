"""The admin web's command endpoints: submit a command, follow its status."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from admin_web import Role, StaticBackend, SwappableBackend, UserRegistry, create_app
from admin_web.backend import InvalidCommandError
from runtime.errors import RejectedError, StoreUnavailableError

TOKENS = {name: f"{name}-token-{name[0] * 20}" for name in ("admin", "operator", "op2", "viewer")}
EQUIPMENT = {"lamp-dijon-1": "dijon", "lamp-talant-1": "talant"}
DIM = {"action": "dim", "params": {"level": 50}}


@pytest.fixture(scope="module")
def users() -> UserRegistry:
    registry = UserRegistry()
    registry.add("admin", Role.ADMIN, token=TOKENS["admin"])
    registry.add("operator", Role.OPERATOR, token=TOKENS["operator"])
    registry.add("op2", Role.OPERATOR, municipalities=["talant"], token=TOKENS["op2"])
    registry.add("viewer", Role.VIEWER, token=TOKENS["viewer"])
    return registry


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def make_client(users: UserRegistry, backend: Any = None) -> FlaskClient:
    if backend is None:
        backend = StaticBackend(equipment=EQUIPMENT)
    return create_app(backend, users, secret_key=b"k" * 32).test_client()


def submit(
    client: FlaskClient, body: Any, *, who: str = "operator", entity: str = "lamp-dijon-1"
) -> TestResponse:
    return client.post(f"/api/v1/equipment/{entity}/commands", json=body, headers=bearer(who))


# -- who may submit ------------------------------------------------------------


def test_submit_without_token_is_401(users: UserRegistry) -> None:
    response = make_client(users).post("/api/v1/equipment/lamp-dijon-1/commands", json=DIM)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_viewer_may_not_submit(users: UserRegistry) -> None:
    response = submit(make_client(users), DIM, who="viewer")
    assert response.status_code == 403
    assert "operator" in response.get_json()["error"]


def test_operator_outside_his_municipalities_is_404(users: UserRegistry) -> None:
    client = make_client(users)
    refused = submit(client, DIM, who="op2", entity="lamp-dijon-1")
    # Another municipality's equipment is answered as if it did not exist.
    assert refused.status_code == 404
    assert refused.get_json() == {"error": "unknown equipment"}
    assert submit(client, DIM, who="op2", entity="lamp-talant-1").status_code == 202


def test_admin_submits_anywhere(users: UserRegistry) -> None:
    client = make_client(users)
    assert submit(client, DIM, who="admin", entity="lamp-talant-1").status_code == 202


def test_unknown_equipment_is_404(users: UserRegistry) -> None:
    response = submit(make_client(users), DIM, entity="no-such-lamp")
    assert response.status_code == 404
    assert response.get_json() == {"error": "unknown equipment"}


# -- body validation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"params": {}}, "action"),
        ({"action": 3}, "action"),
        ({"action": ""}, "action"),
        ({"action": "dim", "params": [50]}, "params"),
        ({"action": "dim", "params": None}, "params"),
        ({"action": "dim", "idempotency_key": 7}, "idempotency_key"),
        ({"action": "dim", "idempotency_key": ""}, "idempotency_key"),
        ({"action": "dim", "idempotency_key": "k" * 201}, "idempotency_key"),
        ({"action": "dim", "param": {"level": 50}}, "param"),
    ],
)
def test_bad_command_body_is_422_naming_the_field(
    users: UserRegistry, body: dict[str, Any], field: str
) -> None:
    response = submit(make_client(users), body)
    assert response.status_code == 422
    answer = response.get_json()
    assert answer["field"] == field
    assert answer["error"]


def test_idempotency_key_of_200_characters_is_accepted(users: UserRegistry) -> None:
    response = submit(make_client(users), dict(DIM, idempotency_key="k" * 200))
    assert response.status_code == 202


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        ("{not json", "application/json"),
        ('["dim"]', "application/json"),
        ("action=dim", "application/x-www-form-urlencoded"),
        ("", None),
    ],
)
def test_non_json_body_is_400(users: UserRegistry, data: str, content_type: str | None) -> None:
    headers = bearer("operator")
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = make_client(users).post(
        "/api/v1/equipment/lamp-dijon-1/commands", data=data, headers=headers
    )
    assert response.status_code == 400
    assert response.is_json and response.get_json()["error"]


# -- accepted commands -------------------------------------------------------------


def test_accepted_command_is_202_and_its_status_can_be_read(users: UserRegistry) -> None:
    client = make_client(users)
    response = submit(client, DIM)
    assert response.status_code == 202
    body = response.get_json()
    assert body == {"command_id": body["command_id"], "status": "queued"}
    assert response.headers["Location"] == f"/api/v1/commands/{body['command_id']}"

    status = client.get(f"/api/v1/commands/{body['command_id']}", headers=bearer("viewer"))
    assert status.status_code == 200
    found = status.get_json()
    assert found["command_id"] == body["command_id"]
    assert found["status"] == "queued"
    assert found["action"] == "dim" and found["params"] == {"level": 50}
    assert found["caller"] == "operator" and found["entity_id"] == "lamp-dijon-1"


def test_params_default_to_an_empty_object(users: UserRegistry) -> None:
    client = make_client(users)
    command_id = submit(client, {"action": "reset"}).get_json()["command_id"]
    found = client.get(f"/api/v1/commands/{command_id}", headers=bearer("viewer")).get_json()
    assert found["params"] == {}


def test_command_status_needs_a_token_and_knows_unknown_ids(users: UserRegistry) -> None:
    client = make_client(users)
    assert client.get("/api/v1/commands/nope").status_code == 401
    missing = client.get("/api/v1/commands/nope", headers=bearer("viewer"))
    assert missing.status_code == 404
    assert missing.get_json() == {"error": "unknown command"}


def test_idempotent_repeat_answers_the_same_command(users: UserRegistry) -> None:
    client = make_client(users)
    body = dict(DIM, idempotency_key="dim-evening-1")
    first = submit(client, body)
    again = submit(client, body)
    assert first.status_code == again.status_code == 202
    assert again.get_json()["command_id"] == first.get_json()["command_id"]


def test_idempotency_is_per_key_caller_and_target(users: UserRegistry) -> None:
    client = make_client(users)
    ids = {
        submit(client, dict(DIM, idempotency_key="a")).get_json()["command_id"],
        submit(client, dict(DIM, idempotency_key="b")).get_json()["command_id"],
        submit(client, dict(DIM, idempotency_key="a"), who="admin").get_json()["command_id"],
        submit(client, dict(DIM, idempotency_key="a"), entity="lamp-talant-1").get_json()[
            "command_id"
        ],
    }
    assert len(ids) == 4


def test_commands_without_a_key_are_never_merged(users: UserRegistry) -> None:
    client = make_client(users)
    first = submit(client, DIM).get_json()["command_id"]
    second = submit(client, DIM).get_json()["command_id"]
    assert first != second


def test_a_key_reused_for_another_command_is_422(users: UserRegistry) -> None:
    client = make_client(users)
    assert submit(client, dict(DIM, idempotency_key="k1")).status_code == 202
    other = submit(client, {"action": "dim", "params": {"level": 80}, "idempotency_key": "k1"})
    assert other.status_code == 422
    assert "idempotency key" in other.get_json()["error"]
    assert other.get_json()["field"] == "idempotency_key"


def test_submission_is_audited(users: UserRegistry, caplog: pytest.LogCaptureFixture) -> None:
    client = make_client(users)
    with caplog.at_level(logging.INFO, logger="commandpost.audit"):
        submit(client, DIM)
    lines = [r.getMessage() for r in caplog.records if r.name == "commandpost.audit"]
    assert lines == [
        "user=operator role=operator method=POST "
        "path='/api/v1/equipment/lamp-dijon-1/commands' status=202"
    ]


def test_swappable_backend_forwards_commands(users: UserRegistry) -> None:
    backend = SwappableBackend(StaticBackend())
    client = make_client(users, backend)
    assert submit(client, DIM).status_code == 404
    backend.swap(StaticBackend(equipment=EQUIPMENT))
    command_id = submit(client, DIM).get_json()["command_id"]
    found = client.get(f"/api/v1/commands/{command_id}", headers=bearer("viewer"))
    assert found.get_json()["command_id"] == command_id


# -- backend refusals ------------------------------------------------------------------


class RefusingBackend(StaticBackend):
    """Knows the equipment but raises ``error`` on every submission."""

    def __init__(self, error: Exception) -> None:
        super().__init__(equipment=EQUIPMENT)
        self.error = error

    def submit_command(
        self,
        entity_id: str,
        action: str,
        params: dict[str, Any],
        *,
        caller: str,
        idempotency_key: str | None,
    ) -> dict[str, Any]:
        raise self.error


def test_store_unavailable_is_503_with_retry_after(users: UserRegistry) -> None:
    backend = RefusingBackend(StoreUnavailableError("redis down"))
    response = submit(make_client(users, backend), DIM)
    assert response.status_code == 503
    assert response.get_json() == {"error": "store unavailable, command not accepted"}
    assert response.headers["Retry-After"] == "1"


def test_rejected_command_is_422_with_its_message(users: UserRegistry) -> None:
    backend = RefusingBackend(RejectedError("lamps cannot fly", code="unknown_action"))
    response = submit(make_client(users, backend), {"action": "fly"})
    assert response.status_code == 422
    assert response.get_json()["error"] == "lamps cannot fly"


def test_a_command_the_kind_refuses_is_422_naming_the_field(users: UserRegistry) -> None:
    backend = RefusingBackend(InvalidCommandError("dim=150 is outside 0..100", field="params.dim",
                                                  code="out_of_range"))
    response = submit(make_client(users, backend), {"action": "set", "params": {"dim": 150}})
    assert response.status_code == 422
    assert response.get_json() == {"error": "dim=150 is outside 0..100", "field": "params.dim"}
