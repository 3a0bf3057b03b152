"""The admin web skeleton: auth, roles, JSON errors, redaction, pages, server."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, jsonify
from flask.testing import FlaskClient
from hypothesis import given
from hypothesis import strategies as st

from admin_web import (
    AdminServer,
    Role,
    StaticBackend,
    SwappableBackend,
    UserRegistry,
    create_app,
    create_demo_users,
    ensure_scope,
    hash_password,
    parse_listen,
    redact_url,
    redact_urls,
    require,
    verify_password,
    write_credentials,
)
from runtime.errors import AuthError, ConfigError

TREE: dict[str, Any] = {
    "id": "root",
    "kind": "root_supervisor",
    "status": "running",
    "restarts": 0,
    "pid": 4242,
    "node": "node-a",
    "children": [
        {
            "id": "infra",
            "kind": "supervisor",
            "status": "running",
            "restarts": 1,
            "pid": 4243,
            "node": "node-a",
            "children": [
                {
                    "id": "host-dijon-0",
                    "kind": "entity_host",
                    "status": "running",
                    "restarts": 0,
                    "pid": 4250,
                    "node": "node-a",
                    "entities": 120,
                    "entity_restarts": 3,
                    "children": [],
                }
            ],
        }
    ],
}

REDIS_SECRET = "r3dis-S3cret"
MQTT_SECRET = "mqtt-Pa55word"
SYSTEM: dict[str, Any] = {
    "version": "0.1.0",
    "ray": {"address": "127.0.0.1:6379", "nodes": 1},
    "redis": {"url": f"redis://:{REDIS_SECRET}@127.0.0.1:6390/0", "status": "ok"},
    "mqtt": {"url": f"mqtt://cp:{MQTT_SECRET}@127.0.0.1:1883", "status": "ok"},
    "simulators": [{"kind": "modbus", "endpoint": "tcp://127.0.0.1:5020", "devices": 12}],
}
HEALTH_OK: dict[str, Any] = {"status": "ok", "entities": 120, "online": 118}


TOKENS = {name: f"{name}-token-{name[0] * 20}" for name in ("admin", "operator", "viewer")}


@pytest.fixture(scope="module")
def users() -> UserRegistry:
    registry = UserRegistry()
    registry.add("admin", Role.ADMIN, password="admin-password", token=TOKENS["admin"])
    registry.add(
        "operator",
        Role.OPERATOR,
        municipalities=["dijon"],
        password="operator-password",
        token=TOKENS["operator"],
    )
    registry.add("viewer", Role.VIEWER, password="viewer-password", token=TOKENS["viewer"])
    return registry


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def make_client(users: UserRegistry, backend: Any = None) -> FlaskClient:
    if backend is None:
        backend = StaticBackend(health=HEALTH_OK, tree=TREE, system=SYSTEM)
    return create_app(backend, users, secret_key=b"k" * 32).test_client()


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match is not None, html
    return match.group(1)


# -- health ------------------------------------------------------------------


def test_health_needs_no_auth_and_is_200_when_ok(users: UserRegistry) -> None:
    response = make_client(users).get("/api/v1/health")
    assert response.status_code == 200
    assert response.get_json() == HEALTH_OK


def test_health_is_200_while_starting(users: UserRegistry) -> None:
    response = make_client(users, StaticBackend()).get("/api/v1/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "starting", "entities": 0, "online": 0}


def test_health_is_503_when_degraded_with_the_status_in_the_body(users: UserRegistry) -> None:
    backend = StaticBackend(health={"status": "degraded", "entities": 120, "online": 40})
    response = make_client(users, backend).get("/api/v1/health")
    assert response.status_code == 503
    assert response.get_json()["status"] == "degraded"


def test_swappable_backend_forwards_to_the_backend_swapped_in(users: UserRegistry) -> None:
    backend = SwappableBackend(StaticBackend())
    client = make_client(users, backend)
    assert client.get("/api/v1/health").get_json()["status"] == "starting"
    backend.swap(StaticBackend(health=HEALTH_OK))
    assert client.get("/api/v1/health").get_json()["status"] == "ok"


# -- bearer auth and roles ---------------------------------------------------


def test_tree_without_token_is_401_with_bearer_challenge(users: UserRegistry) -> None:
    response = make_client(users).get("/api/v1/tree")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.is_json and "error" in response.get_json()


def test_tree_with_wrong_token_or_scheme_is_401(users: UserRegistry) -> None:
    client = make_client(users)
    wrong = client.get("/api/v1/tree", headers={"Authorization": "Bearer not-a-real-token"})
    assert wrong.status_code == 401
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    basic = client.get("/api/v1/tree", headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
    assert basic.status_code == 401


def test_tree_for_a_viewer_is_the_backend_tree(users: UserRegistry) -> None:
    response = make_client(users).get("/api/v1/tree", headers=bearer("viewer"))
    assert response.status_code == 200
    assert response.get_json() == TREE
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("name", ["viewer", "operator"])
def test_system_is_403_below_admin(users: UserRegistry, name: str) -> None:
    response = make_client(users).get("/api/v1/system", headers=bearer(name))
    assert response.status_code == 403
    assert response.is_json and "admin" in response.get_json()["error"]


def test_system_for_admin_redacts_every_password(users: UserRegistry) -> None:
    system = dict(SYSTEM, extra={"backup": f"redis://u:{REDIS_SECRET}@10.0.0.2/1"})
    response = make_client(users, StaticBackend(system=system)).get(
        "/api/v1/system", headers=bearer("admin")
    )
    assert response.status_code == 200
    body = response.get_json()
    assert body["redis"]["url"] == "redis://***@127.0.0.1:6390/0"
    assert body["mqtt"]["url"] == "mqtt://***@127.0.0.1:1883"
    assert body["simulators"] == SYSTEM["simulators"]
    assert body["ray"] == SYSTEM["ray"]
    text = response.get_data(as_text=True)
    assert REDIS_SECRET not in text and MQTT_SECRET not in text


# -- JSON errors ---------------------------------------------------------------


def test_unknown_api_path_is_json_404(users: UserRegistry) -> None:
    response = make_client(users).get("/api/v1/no-such-thing", headers=bearer("admin"))
    assert response.status_code == 404
    assert response.is_json
    assert response.get_json() == {"error": "not found"}


def test_wrong_method_on_api_is_json_405_with_allow(users: UserRegistry) -> None:
    response = make_client(users).post("/api/v1/health")
    assert response.status_code == 405
    assert response.is_json and response.get_json() == {"error": "method not allowed"}
    assert "GET" in response.headers["Allow"]


class ExplodingBackend:
    def health(self) -> dict[str, Any]:
        raise RuntimeError("boom: secret internals")

    def tree(self) -> dict[str, Any]:
        raise RuntimeError("boom: secret internals")

    def system(self) -> dict[str, Any]:
        raise RuntimeError("boom: secret internals")


@pytest.mark.parametrize("path", ["/api/v1/health", "/api/v1/tree", "/api/v1/system"])
def test_exploding_backend_is_json_500_without_traceback(
    users: UserRegistry, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="commandpost.admin_web"):
        response = make_client(users, ExplodingBackend()).get(path, headers=bearer("admin"))
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal error"}
    text = response.get_data(as_text=True)
    assert "Traceback" not in text and "boom" not in text
    logged = [r for r in caplog.records if r.name == "commandpost.admin_web" and r.exc_info]
    assert logged and path in logged[0].getMessage()


def test_exploding_backend_on_a_page_is_an_html_500(users: UserRegistry) -> None:
    client = make_client(users, ExplodingBackend())
    login(client, "viewer", "viewer-password")
    response = client.get("/")
    assert response.status_code == 500
    assert response.mimetype == "text/html"
    assert "boom" not in response.get_data(as_text=True)


# -- scopes and audit ----------------------------------------------------------


def scoped_app(users: UserRegistry) -> Flask:
    app = create_app(StaticBackend(), users, secret_key=b"k" * 32)

    @require(Role.OPERATOR)
    def act(municipality: str) -> Any:
        ensure_scope(Role.OPERATOR, municipality)
        return jsonify({"done": municipality}), 202

    app.add_url_rule("/api/v1/test/<municipality>/act", view_func=act, methods=["POST"])
    return app


def test_operator_acts_only_within_his_municipalities(users: UserRegistry) -> None:
    client = scoped_app(users).test_client()
    assert client.post("/api/v1/test/dijon/act", headers=bearer("operator")).status_code == 202
    refused = client.post("/api/v1/test/talant/act", headers=bearer("operator"))
    assert refused.status_code == 403
    assert refused.get_json()["field"] == "municipality"
    assert client.post("/api/v1/test/talant/act", headers=bearer("admin")).status_code == 202
    assert client.post("/api/v1/test/dijon/act", headers=bearer("viewer")).status_code == 403


def test_authenticated_mutations_are_audited(
    users: UserRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    client = scoped_app(users).test_client()
    with caplog.at_level(logging.INFO, logger="commandpost.audit"):
        client.post("/api/v1/test/dijon/act", headers=bearer("operator"))
        client.post("/api/v1/test/talant/act", headers=bearer("operator"))
        client.get("/api/v1/tree", headers=bearer("operator"))
        client.post("/api/v1/test/dijon/act")
    lines = [r.getMessage() for r in caplog.records if r.name == "commandpost.audit"]
    assert lines == [
        "user=operator role=operator method=POST path='/api/v1/test/dijon/act' status=202",
        "user=operator role=operator method=POST path='/api/v1/test/talant/act' status=403",
    ]


# -- pages and sessions --------------------------------------------------------


def login(client: FlaskClient, name: str, password: str) -> Any:
    token = csrf_from(client.get("/login").get_data(as_text=True))
    return client.post(
        "/login", data={"name": name, "password": password, "csrf_token": token, "next": "/"}
    )


def test_overview_requires_login(users: UserRegistry) -> None:
    response = make_client(users).get("/")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")


def test_wrong_password_is_rejected_and_leaves_no_session(users: UserRegistry) -> None:
    client = make_client(users)
    refused = login(client, "viewer", "not-the-password")
    assert refused.status_code == 401
    assert "Wrong name or password" in refused.get_data(as_text=True)
    assert client.get("/").status_code == 302
    assert login(client, "nobody", "viewer-password").status_code == 401


def test_login_without_csrf_token_is_refused(users: UserRegistry) -> None:
    client = make_client(users)
    client.get("/login")
    response = client.post("/login", data={"name": "viewer", "password": "viewer-password"})
    assert response.status_code == 400
    assert client.get("/").status_code == 302


def test_login_lands_on_the_overview_showing_the_tree(users: UserRegistry) -> None:
    client = make_client(users)
    response = login(client, "viewer", "viewer-password")
    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    page = client.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for node_id in ("root", "infra", "host-dijon-0"):
        assert f'id="node-{node_id}" data-node-id="{node_id}"' in html
    assert '<span class="entities">120</span> entities' in html
    assert '<span class="restarts">1</span>' in html  # infra's, as the live tree shows it
    assert 'id="health-status">ok<' in html


def test_login_refuses_an_offsite_next(users: UserRegistry) -> None:
    client = make_client(users)
    token = csrf_from(client.get("/login").get_data(as_text=True))
    response = client.post(
        "/login",
        data={
            "name": "viewer",
            "password": "viewer-password",
            "csrf_token": token,
            "next": "//evil.example/",
        },
    )
    assert response.headers["Location"] == "/"


def test_logout_ends_the_session_and_is_audited(
    users: UserRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(users)
    login(client, "admin", "admin-password")
    html = client.get("/").get_data(as_text=True)
    with caplog.at_level(logging.INFO, logger="commandpost.audit"):
        response = client.post("/logout", data={"csrf_token": csrf_from(html)})
    assert response.status_code == 302
    assert client.get("/").status_code == 302
    assert any(
        "user=admin" in r.getMessage() and "/logout" in r.getMessage() for r in caplog.records
    )


def test_logout_without_csrf_token_keeps_the_session(users: UserRegistry) -> None:
    client = make_client(users)
    login(client, "viewer", "viewer-password")
    assert client.post("/logout").status_code == 400
    assert client.get("/").status_code == 200


def test_the_api_reads_with_the_session_but_changes_nothing_without_its_csrf_header(
        users: UserRegistry) -> None:
    client = make_client(users)
    login(client, "admin", "admin-password")
    assert client.get("/api/v1/tree").status_code == 200
    refused = client.post("/api/v1/crisis", json={"mode": "snow", "municipalities": ["dijon"]})
    assert refused.status_code == 403


# -- users, hashes, credentials ------------------------------------------------


def test_roles_are_ordered_by_privilege() -> None:
    assert Role.VIEWER < Role.OPERATOR < Role.ADMIN
    assert sorted([Role.ADMIN, Role.VIEWER, Role.OPERATOR]) == [
        Role.VIEWER,
        Role.OPERATOR,
        Role.ADMIN,
    ]


def test_can_checks_role_and_municipality(users: UserRegistry) -> None:
    operator = users.get("operator")
    assert users.can(operator, Role.VIEWER)
    assert users.can(operator, Role.OPERATOR, "dijon")
    assert not users.can(operator, Role.OPERATOR, "talant")
    assert not users.can(operator, Role.ADMIN)
    assert users.can(users.get("admin"), Role.OPERATOR, "talant")
    assert not users.can(users.get("viewer"), Role.OPERATOR)


def test_by_token_and_check_password(users: UserRegistry) -> None:
    assert users.by_token(TOKENS["viewer"]).name == "viewer"
    with pytest.raises(AuthError):
        users.by_token(TOKENS["viewer"][:-1])
    with pytest.raises(AuthError):
        users.by_token("")
    assert users.check_password("admin", "admin-password").role is Role.ADMIN
    with pytest.raises(AuthError):
        users.check_password("admin", "viewer-password")
    with pytest.raises(AuthError):
        users.check_password("ghost", "admin-password")


def test_add_refuses_duplicates_and_bad_input() -> None:
    registry = UserRegistry()
    registry.add("alice", "viewer", token="t" * 30)
    with pytest.raises(ConfigError):
        registry.add("alice", Role.ADMIN)
    with pytest.raises(ConfigError):
        registry.add("bob", Role.VIEWER, token="t" * 30)
    with pytest.raises(ConfigError):
        registry.add("carol", "superuser")
    with pytest.raises(ConfigError):
        registry.add("dave", Role.OPERATOR, municipalities=["Not A Slug"])
    with pytest.raises(ConfigError):
        registry.add("erin", Role.VIEWER, password="short")
    for reserved in ("crisis", "Schedule", "dispatch"):  # a command would pass for theirs
        with pytest.raises(ConfigError, match="reserved"):
            registry.add(reserved, Role.OPERATOR)
    assert len(registry) == 1


def test_scrypt_hashes_are_salted_and_never_contain_the_password() -> None:
    password = "correct-horse-battery"
    first, second = hash_password(password), hash_password(password)
    assert first != second
    for encoded in (first, second):
        assert password not in encoded
        assert password.encode().hex() not in encoded
        assert encoded.startswith("scrypt$16384$8$1$")
        assert verify_password(password, encoded)
        assert not verify_password(password + "!", encoded)


def test_stored_user_holds_no_clear_secret() -> None:
    registry = UserRegistry()
    password, token = registry.add("alice", Role.VIEWER)
    user = registry.get("alice")
    assert len(token) >= 43 and len(password) >= 16
    assert password not in user.password_hash and token not in user.token_hash
    assert password not in repr(user) and user.token_hash not in repr(user)


def test_demo_users_and_credentials_file(tmp_path: Path) -> None:
    registry = UserRegistry()
    creds = create_demo_users(registry, ["dijon", "talant"])
    assert set(creds) == {"admin", "operator", "viewer"}
    assert registry.get("operator").municipalities == frozenset({"dijon", "talant"})
    assert registry.get("viewer").role is Role.VIEWER
    path = tmp_path / "credentials.json"
    path.write_text("{}")
    path.chmod(0o644)
    write_credentials(path, creds)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = json.loads(path.read_text())
    assert loaded == creds
    for name, entry in loaded.items():
        assert set(entry) == {"password", "token"}
        assert registry.by_token(entry["token"]).name == name
        assert registry.check_password(name, entry["password"]).name == name
    assert [p.name for p in tmp_path.iterdir()] == ["credentials.json"]


def test_write_credentials_to_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        write_credentials(tmp_path / "missing" / "creds.json", {})


# -- redaction -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:secret@h:1/0", "redis://***@h:1/0"),
        ("mqtt://u:p@h", "mqtt://***@h"),
        ("rediss://user:p%40ss@cache.local:6380/2", "rediss://***@cache.local:6380/2"),
        ("redis://:p@ss/w@h:1/0", "redis://***@h:1/0"),
        ("redis://h:1/0?password=secret&db=1", "redis://h:1/0?password=***&db=1"),
        ("redis://h:1/0", "redis://h:1/0"),
        ("unix:///tmp/redis.sock", "unix:///tmp/redis.sock"),
        ("127.0.0.1:6379", "127.0.0.1:6379"),
        ("", ""),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@given(
    user=st.text(alphabet="abcdefghijklmnop0123456789", max_size=8),
    password=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=6),
)
def test_redact_url_never_leaks_the_password(user: str, password: str) -> None:
    redacted = redact_url(f"redis://{user}:{password}@cache.local:6379/0")
    assert redacted.startswith("redis://***@")
    assert password not in redacted.removeprefix("redis://***@")
    assert redacted.endswith("cache.local:6379/0")


def test_redact_urls_walks_nested_data() -> None:
    data = {"a": [{"url": "mqtt://u:p@h"}, 3, None], "b": ("redis://:s@h",)}
    assert redact_urls(data) == {"a": [{"url": "mqtt://***@h"}, 3, None], "b": ["redis://***@h"]}


# -- server --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("localhost:0", ("localhost", 0)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
        ("[::1]:8080", ("::1", 8080)),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    "text", ["8080", ":8080", "host:", "host:port", "host:70000", "::1:80", "[::1]80", "a b:1"]
)
def test_parse_listen_rejects_bad_input(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_listen(text)


def test_admin_server_serves_http_then_stops(users: UserRegistry) -> None:
    app = create_app(StaticBackend(health=HEALTH_OK, tree=TREE), users)
    before = set(threading.enumerate())
    server = AdminServer(app, host="127.0.0.1", port=0)
    server.start()
    try:
        assert server.port != 0
        assert server.url == f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{server.url}/api/v1/health", timeout=5) as response:
            assert response.status == 200
            assert json.loads(response.read()) == HEALTH_OK
        request = urllib.request.Request(f"{server.url}/api/v1/tree", headers=bearer("viewer"))
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.loads(response.read())["id"] == "root"
    finally:
        server.stop()
    assert not server.running
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not set(threading.enumerate()) - before
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{server.url}/api/v1/health", timeout=2)


def test_admin_server_on_a_taken_port_is_a_config_error(users: UserRegistry) -> None:
    app = create_app(StaticBackend(), users)
    with AdminServer(app, port=0) as first:
        second = AdminServer(app, port=first.port)
        with pytest.raises(ConfigError):
            second.start()
        assert not second.running
    assert not first.running


def test_credentials_file_is_never_wider_than_0600(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_credentials(tmp_path / "c.json", {"admin": {"password": "p", "token": "t"}})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "c.json").stat().st_mode) == 0o600


@pytest.mark.parametrize("who", ["viewer", "admin"])
def test_every_page_of_the_bar_is_served_to_those_who_see_its_link(
        users: UserRegistry, who: str) -> None:
    from admin_web.app import NAV_PAGES

    client = make_client(users)
    login(client, who, f"{who}-password")
    html = client.get("/").get_data(as_text=True)
    for path, label, role in NAV_PAGES:
        shown = f'href="{path}"' in html
        allowed = users.get(who).can(role)
        assert shown == allowed, (who, path)
        answer = client.get(path)
        assert answer.status_code == (200 if allowed else 403), (who, path, label)
    # The supervision page has the live tree, with each node's restarts.
    tree = client.get("/tree").get_data(as_text=True)
    assert 'data-live-tree="2000"' in tree and 'class="restarts"' in tree
