"""The admin web against hostile clients: bodies, redirects, sessions, logins, the audit trail."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

import admin_web.auth as auth
from admin_web import AdminServer, Role, StaticBackend, UserRegistry, create_app
from admin_web.strict_json import MAX_DEPTH
from admin_web.throttle import LoginThrottle
from runtime.errors import ConfigError

TOKENS = {name: f"{name}-token-{name[0] * 20}" for name in ("admin", "operator", "viewer")}
PASSWORDS = {name: f"{name}-password" for name in TOKENS}
EQUIPMENT = {"lamp-dijon-1": "dijon", "lamp-talant-1": "talant"}
ALARMS: list[dict[str, Any]] = [
    {"id": "al-1", "source": "lamp-dijon-1", "condition": "lamp_failure", "priority": "high",
     "state": "unacknowledged", "active": True, "municipality": "dijon", "raised_ts": 1.0},
]


def new_users() -> UserRegistry:
    """The three users, their passwords hashed at a low scrypt cost (kept in each hash),
    so that the many logins here take milliseconds; the checks are the same."""
    registry = UserRegistry()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(auth, "SCRYPT_N", 2**8)
        registry.add("admin", Role.ADMIN, password=PASSWORDS["admin"], token=TOKENS["admin"])
        registry.add("operator", Role.OPERATOR, municipalities=["dijon"],
                     password=PASSWORDS["operator"], token=TOKENS["operator"])
        registry.add("viewer", Role.VIEWER, password=PASSWORDS["viewer"],
                     token=TOKENS["viewer"])
    return registry


@pytest.fixture(scope="module")
def users() -> UserRegistry:
    return new_users()


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def make_app(users: UserRegistry, **kwargs: Any) -> Flask:
    backend = StaticBackend(equipment=EQUIPMENT, alarms=ALARMS)
    return create_app(backend, users, secret_key=b"k" * 32, **kwargs)


# -- request bodies: bounded by the server itself -------------------------------------------


@pytest.fixture()
def server(users: UserRegistry) -> Iterator[AdminServer]:
    with AdminServer(make_app(users), port=0) as running:
        yield running


def _exchange(server: AdminServer, head: str, body: bytes = b"", timeout: float = 5.0) -> bytes:
    """Send ``head`` and ``body`` on a fresh connection; what came back before it closed."""
    with socket.create_connection((server.host, server.port), timeout=timeout) as sock:
        try:
            sock.sendall(head.encode("ascii") + b"\r\n" + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the whole body was sent
        received = b""
        try:
            while b"\r\n\r\n" not in received:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            pytest.fail(f"no answer within {timeout} s; got {received!r}")
        return received


def _post_head(server: AdminServer, extra: str) -> str:
    return (f"POST /api/v1/crisis HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n"
            f"Authorization: Bearer {TOKENS['admin']}\r\nContent-Type: application/json\r\n"
            f"{extra}")


def test_a_declared_body_past_the_limit_is_413_before_it_is_sent(
        server: AdminServer) -> None:
    # Only the headers go out: a server that waited for the 10 MiB would never answer.
    head = _post_head(server, f"Content-Length: {10 * 1024 * 1024}\r\n")
    answer = _exchange(server, head, b"{")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_chunked_body_past_the_limit_is_413(server: AdminServer) -> None:
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b" " * 64 * 1024)
    body = b"1\r\n{\r\n" + chunk * (server.max_body_bytes // (64 * 1024) + 1)
    answer = _exchange(server, _post_head(server, "Transfer-Encoding: chunked\r\n"), body)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_body_within_the_limit_reaches_the_app(server: AdminServer) -> None:
    assert server.max_body_bytes == 1024 * 1024
    body = b"{}" + b" " * (server.max_body_bytes - 2)
    answer = _exchange(server, _post_head(server, f"Content-Length: {len(body)}\r\n"), body)
    assert answer.startswith(b"HTTP/1.1 422"), answer[:200]  # the app's word on "{}"


# -- the page after a login: only a path of this site -------------------------------------

OFFSITE_NEXT = [
    "//evil.example", "//evil.example/", "///evil.example", "/\t/evil.example",
    "/\n/evil.example", "/\r\n/evil.example", "\t//evil.example", " //evil.example",
    "/ /evil.example", "/\x00/evil.example", "/\x0b/evil.example", "/\x7f/evil.example",
    "/\u200b/evil.example", "/\u3000/evil.example", "/\u2028/evil.example",
    "/\\evil.example", "\\\\evil.example", "/\\/evil.example", "https://evil.example",
    "http:/evil.example", "https:evil.example", "javascript:alert(1)", "evil.example",
    "//user@evil.example", "", "/" + "a" * 5000,
]
LOCAL_NEXT = ["/", "/equipment?kind=camera", "/a/b%2F%2Fc", "/.//x", "/login?next=/x"]


def csrf_from(html: str) -> str:
    import re

    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match is not None, html
    return match.group(1)


def _login(client: Any, name: str = "viewer", password: str | None = None,
           next_path: str = "/") -> Any:
    token = csrf_from(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"name": name, "password": password or PASSWORDS[name],
                                       "csrf_token": token, "next": next_path})


@pytest.mark.parametrize("target", OFFSITE_NEXT)
def test_login_sends_an_offsite_next_to_the_overview(users: UserRegistry, target: str) -> None:
    client = make_app(users).test_client()
    response = _login(client, next_path=target)
    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    # Already logged in, the form goes straight on: to the overview too.
    again = client.get("/login", query_string={"next": target})
    assert again.status_code == 302
    assert again.headers["Location"] == "/"
    # Nor is it carried in the form, for the next attempt.
    form = make_app(users).test_client().get("/login", query_string={"next": target})
    assert 'name="next" value="/"' in form.get_data(as_text=True)


@pytest.mark.parametrize("target", LOCAL_NEXT)
def test_login_goes_on_to_a_local_next(users: UserRegistry, target: str) -> None:
    response = _login(make_app(users).test_client(), next_path=target)
    assert response.status_code == 302
    assert response.headers["Location"] == target


# -- bodies that are not JSON of the expected shape: 400 or 422, never 500 -----------------

BAD_BODIES: dict[str, bytes] = {
    "deep array": b"[" * 100_000 + b"]" * 100_000,
    "deep object": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "deep params": b'{"action":"set","params":{"dim":' + b"[" * 900 + b"]" * 900 + b"}}",
    "33 deep": b'{"action":"set","params":{"dim":' + b"[" * 31 + b"]" * 31 + b"}}",
    "escaped lone surrogate": b'{"action":"\\ud800","mode":"\\ud800","comment":"\\ud800",'
                              b'"application":"\\ud800","category":"\\ud800"}',
    "lone surrogate in a name": b'{"\\udc00":1}',
    "lone surrogate in params": b'{"action":"set","params":{"dim":"\\udfff"}}',
    "raw encoded surrogate": b'{"action":"\xed\xa0\x80"}',
    "not UTF-8": b'{"action":"\xff"}',
    "duplicate name": b'{"mode":"snow","mode":"normal","municipalities":["dijon"],'
                      b'"action":"set","action":"set","comment":"a","comment":"b",'
                      b'"application":"a","application":"b"}',
    "NaN": b'{"minutes": NaN, "params": {"dim": NaN}}',
    "overflowing number": b'{"minutes": 1e999, "action": "set", "params": {"dim": 1e999}}',
    "huge integer": b'{"minutes": ' + b"9" * 5000 + b"}",
    "truncated": b'{"action": "set", "params": {',
    "empty": b"",
    "array": b'["set"]',
    "string": b'"set"',
    "nul": b"\x00",
}
# Each route with a body of its shape but for one string, a lone surrogate.
BODY_ROUTES: list[tuple[str, str, bytes]] = [
    ("/api/v1/equipment/lamp-dijon-1/commands", "operator",
     b'{"action":"set","params":{"dim":40},"idempotency_key":"\\ud800"}'),
    ("/api/v1/alarms/al-1/ack", "operator", b'{"comment":"seen \\ud800"}'),
    ("/api/v1/alarms/al-1/shelve", "operator", b'{"minutes":5,"reason":"\\udbff"}'),
    ("/api/v1/alarms/al-1/unshelve", "operator", b'{"\\ud800":1}'),
    ("/api/v1/alarms/al-1/out-of-service", "admin", b'{"reason":"\\ud800"}'),
    ("/api/v1/crisis", "operator", b'{"mode":"snow","municipalities":["dijon\\udc00"]}'),
    ("/api/v1/requests", "operator",
     b'{"category":"streetlight","description":"\\ud800","lat":47.32,"lon":5.04}'),
    ("/api/v1/open311/keys", "admin", b'{"application":"app-\\ud800"}'),
]


@pytest.mark.parametrize("route,who,surrogate", BODY_ROUTES, ids=[r[0] for r in BODY_ROUTES])
def test_a_body_that_is_not_json_of_the_shape_is_400_or_422(
        users: UserRegistry, route: str, who: str, surrogate: bytes) -> None:
    client = make_app(users).test_client()
    for name, body in {**BAD_BODIES, "surrogate in a good body": surrogate}.items():
        if name == "empty" and not route.endswith(("/commands", "/shelve", "/crisis",
                                                    "/requests", "/keys")):
            continue  # an action that takes no parameter, or optional ones, needs no body
        response = client.post(route, data=body, content_type="application/json",
                               headers=bearer(who))
        assert response.status_code in (400, 422), (name, response.status_code,
                                                    response.get_data()[:200])
        assert response.is_json and "error" in response.get_json(), name


def test_the_parser_takes_json_within_its_limits(users: UserRegistry) -> None:
    provider = make_app(users).json
    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert provider.loads(nested) == provider.loads(nested.encode())
    assert provider.loads('{"a": "\\ud83d\\ude00", "b": [1.5, -2, null]}') == {
        "a": "\U0001f600", "b": [1.5, -2, None]}
    for text in ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), '"\\ud800"', '{"a":1,"a":1}',
                 "-Infinity"):
        with pytest.raises(ValueError):
            provider.loads(text)


def test_a_deep_body_on_the_server_is_400(server: AdminServer) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    answer = _exchange(server, _post_head(server, f"Content-Length: {len(body)}\r\n"), body)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


# -- sessions end on the server: logout, new password ---------------------------------------

COOKIE = "commandpost_session"


def _logged_in(app: Flask, name: str = "viewer") -> tuple[Any, str]:
    client = app.test_client()
    assert _login(client, name).status_code == 302
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    assert client.get("/").status_code == 200
    return client, cookie.value


def _with_cookie(app: Flask, value: str) -> Any:
    client = app.test_client()
    client.set_cookie(COOKIE, value)
    return client


def test_a_session_cookie_stops_working_at_logout() -> None:
    app = make_app(new_users())
    client, stolen = _logged_in(app)
    assert _with_cookie(app, stolen).get("/").status_code == 200  # a copy works, for now
    html = client.get("/").get_data(as_text=True)
    assert client.post("/logout", data={"csrf_token": csrf_from(html)}).status_code == 302
    replayed = _with_cookie(app, stolen).get("/")
    assert replayed.status_code == 302
    assert replayed.headers["Location"].startswith("/login")
    # Logging in again opens a new session; the old cookie stays dead.
    _logged_in(app)
    assert _with_cookie(app, stolen).get("/").status_code == 302


def test_logout_ends_every_session_of_the_user_and_no_one_else() -> None:
    app = make_app(new_users())
    laptop, _ = _logged_in(app, "admin")
    phone, _ = _logged_in(app, "admin")
    other, _ = _logged_in(app, "viewer")
    html = laptop.get("/").get_data(as_text=True)
    laptop.post("/logout", data={"csrf_token": csrf_from(html)})
    assert phone.get("/").status_code == 302
    assert other.get("/").status_code == 200


def test_a_new_password_ends_the_sessions() -> None:
    registry = new_users()
    app = make_app(registry)
    client, stolen = _logged_in(app, "operator")
    registry.set_password("operator", "a-new-password")
    assert client.get("/").status_code == 302
    assert _with_cookie(app, stolen).get("/").status_code == 302
    assert _login(app.test_client(), "operator").status_code == 401  # the old password
    assert _login(app.test_client(), "operator", "a-new-password").status_code == 302


def test_a_cookie_without_the_nonce_is_no_session(users: UserRegistry) -> None:
    # A cookie signed with the app's key but from before nonces (or forged fields) is refused.
    app = make_app(users)
    client = app.test_client()
    with client.session_transaction() as session:
        session["user"] = "admin"
    assert client.get("/").status_code == 302
    with client.session_transaction() as session:
        session.update({"user": "admin", "nonce": "guessed"})
    assert client.get("/").status_code == 302


def _cookie_header(response: Any) -> str:
    header = next(v for v in response.headers.getlist("Set-Cookie") if v.startswith(COOKIE))
    return str(header)


def test_the_session_cookie_is_httponly_lax_and_secure_when_it_should_be(
        users: UserRegistry) -> None:
    plain = _cookie_header(_login(make_app(users).test_client()))
    assert "HttpOnly" in plain and "SameSite=Lax" in plain and "Secure" not in plain
    configured = _cookie_header(_login(make_app(users, secure_cookies=True).test_client()))
    assert "HttpOnly" in configured and "SameSite=Lax" in configured and "Secure" in configured
    over_tls = make_app(users).test_client()
    form = over_tls.get("/login", base_url="https://localhost").get_data(as_text=True)
    response = over_tls.post("/login", base_url="https://localhost", data={
        "name": "viewer", "password": PASSWORDS["viewer"], "csrf_token": csrf_from(form)})
    assert response.status_code == 302
    assert "Secure" in _cookie_header(response)


# -- login throttling: failures over a sliding window, password checks bounded ---------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The password checks run (each one a scrypt), by the password checked."""
    seen: list[str] = []
    real = auth.verify_password

    def counting(password: str, encoded: str) -> bool:
        seen.append(password)
        return real(password, encoded)

    monkeypatch.setattr(auth, "verify_password", counting)
    return seen


def _attempt(app: Flask, name: str, password: str, address: str = "10.0.0.1") -> Any:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return _login(client, name, password)


def test_five_failures_for_a_name_then_429_without_checking(
        users: UserRegistry, checks: list[str]) -> None:
    clock = FakeClock()
    app = make_app(users, login_throttle=LoginThrottle(clock=clock))
    for n in range(5):
        assert _attempt(app, "operator", f"guess-{n}").status_code == 401
        clock.now += 10
    assert len(checks) == 5
    # Right or wrong, from this address or another: refused, the password not checked.
    for password, address in ((PASSWORDS["operator"], "10.0.0.1"), ("guess-6", "10.9.9.9")):
        refused = _attempt(app, "operator", password, address)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) == 300 - 50
        assert "Too many failed logins" in refused.get_data(as_text=True)
    assert len(checks) == 5
    # Other names are not held back by it.
    assert _attempt(app, "viewer", PASSWORDS["viewer"]).status_code == 302


def test_the_window_slides_and_never_locks_for_good(
        users: UserRegistry, checks: list[str]) -> None:
    clock = FakeClock()
    app = make_app(users, login_throttle=LoginThrottle(clock=clock))
    for n in range(5):
        _attempt(app, "operator", f"guess-{n}")
        clock.now += 60
    # Failures at 1000, 1060, ..., 1240; now 1300: the first one has just left the window.
    assert _attempt(app, "operator", "guess-5").status_code == 401
    assert _attempt(app, "operator", "guess-6").status_code == 429
    # Refused attempts are not failures: they do not push the end further.
    for _ in range(10):
        assert _attempt(app, "operator", "again").status_code == 429
    clock.now += 60  # the failure at 1060 leaves
    assert _attempt(app, "operator", PASSWORDS["operator"]).status_code == 302


def test_a_success_clears_the_names_failures(users: UserRegistry) -> None:
    app = make_app(users, login_throttle=LoginThrottle(clock=FakeClock()))
    for n in range(4):
        assert _attempt(app, "viewer", f"guess-{n}").status_code == 401
    assert _attempt(app, "viewer", PASSWORDS["viewer"]).status_code == 302
    for n in range(4):
        assert _attempt(app, "viewer", f"guess-{n}").status_code == 401


def test_twenty_failures_from_an_address_then_429(checks: list[str]) -> None:
    registry = new_users()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(auth, "SCRYPT_N", 2**8)
        for n in range(4):
            registry.add(f"user{n}", Role.VIEWER, password=f"the-password-{n}")
    app = make_app(registry, login_throttle=LoginThrottle(clock=FakeClock()))
    names = ["admin", "operator", "viewer", "user0", "user1", "user2", "user3"]
    for n in range(20):
        assert _attempt(app, names[n % len(names)], "wrong-password").status_code == 401
    # A name with no failure of its own, the right password: the address is held back.
    refused = _attempt(app, "user3", "the-password-3")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) == 300
    assert len(checks) == 20
    # Elsewhere, the same name logs in.
    assert _attempt(app, "user3", "the-password-3", "10.0.0.2").status_code == 302
    # An IPv6 client counts by its /64.
    app = make_app(registry, login_throttle=LoginThrottle(clock=FakeClock()))
    for n in range(20):
        _attempt(app, names[n % len(names)], "wrong-password", f"2001:db8::{n + 1:x}")
    assert _attempt(app, "user3", "the-password-3", "2001:db8::ffff").status_code == 429
    assert _attempt(app, "user3", "the-password-3", "2001:db8:0:1::1").status_code == 302


def test_too_many_checks_at_once_are_refused_quickly(
        users: UserRegistry, checks: list[str]) -> None:
    throttle = LoginThrottle(max_concurrent=2, slot_wait_s=0.05)
    app = make_app(users, login_throttle=throttle)
    with throttle.slot() as first, throttle.slot() as second:
        assert first and second
        started = time.monotonic()
        refused = _attempt(app, "viewer", PASSWORDS["viewer"])
        assert time.monotonic() - started < 1.0
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert checks == []
    assert _attempt(app, "viewer", PASSWORDS["viewer"]).status_code == 302


def test_the_throttles_tables_are_bounded() -> None:
    throttle = LoginThrottle(max_tracked=100, clock=FakeClock())
    for n in range(1000):
        throttle.failed(f"name-{n}", f"10.1.{n // 256}.{n % 256}")
    assert throttle.tracked() == (100, 100)
    assert throttle.retry_after("name-999", None) is None  # one failure: not held back


# -- the audit trail: every change asked for, stored whatever the logging levels ------------


@pytest.fixture()
def quiet_logs() -> Iterator[None]:
    """Logging as the CLI sets it by default: WARNING at the root, nothing below."""
    root, audit_logger = logging.getLogger(), logging.getLogger("commandpost.audit")
    levels = root.level, audit_logger.level
    root.setLevel(logging.WARNING)
    audit_logger.setLevel(logging.NOTSET)
    try:
        yield
    finally:
        root.setLevel(levels[0])
        audit_logger.setLevel(levels[1])


def _trail(client: Any, **query: str) -> list[dict[str, Any]]:
    response = client.get("/api/v1/audit", query_string={"limit": "1000", **query},
                          headers=bearer("admin"))
    assert response.status_code == 200, response.get_json()
    return list(response.get_json())


def _post(client: Any, path: str, who: str, body: Any = None) -> int:
    return int(client.post(path, json=body, headers=bearer(who)).status_code)


def test_every_change_asked_for_leaves_a_complete_record(
        users: UserRegistry, quiet_logs: None) -> None:
    app = make_app(users, login_throttle=LoginThrottle(max_name_failures=1))
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "10.1.2.3"
    lamp = "/api/v1/equipment/lamp-dijon-1/commands"
    steps: list[tuple[int, int, str, str, str, str]] = [
        # (status expected, status got, who, action, outcome, code)
        (202, _post(client, lamp, "operator", {"action": "set", "params": {"dim": 40}}),
         "operator", "command.submit", "ok", ""),
        (404, _post(client, "/api/v1/equipment/lamp-talant-1/commands", "operator",
                    {"action": "set", "params": {"dim": 40}}),
         "operator", "command.submit", "refused", "404"),
        (202, _post(client, "/api/v1/alarms/al-1/ack", "operator", {"comment": "seen"}),
         "operator", "alarm.ack", "ok", ""),
        (422, _post(client, "/api/v1/alarms/al-1/shelve", "operator", {"minutes": 0}),
         "operator", "alarm.shelve", "refused", "422"),
        (202, _post(client, "/api/v1/crisis", "operator",
                    {"mode": "snow", "municipalities": ["dijon"]}),
         "operator", "crisis.activate", "ok", ""),
        (422, _post(client, "/api/v1/crisis", "operator",
                    {"mode": "snow", "municipalities": "dijon"}),
         "operator", "http.post", "refused", "422"),
        (403, _post(client, "/api/v1/alarms/al-1/out-of-service", "operator"),
         "operator", "http.post", "refused", "403"),
        (403, _post(client, "/api/v1/open311/keys", "viewer", {"application": "x"}),
         "viewer", "http.post", "refused", "403"),
        (503, _post(client, "/api/v1/open311/keys", "admin", {"application": "ondijon"}),
         "admin", "open311.key_issue", "refused", "503"),
        (503, int(client.delete("/api/v1/open311/keys/ondijon",
                                headers=bearer("admin")).status_code),
         "admin", "open311.key_revoke", "refused", "503"),
        (503, _post(client, "/api/v1/requests", "operator",
                    {"category": "pothole", "description": "a hole", "lat": 47.32,
                     "lon": 5.04}),
         "operator", "request.create", "refused", "503"),
        (401, int(client.post(lamp, json={"action": "set"},
                              headers={"Authorization": "Bearer " + "x" * 30}).status_code),
         "", "login.token", "refused", "invalid_token"),
    ]
    for expected, got, *_ in steps:
        assert got == expected, steps
    pages = app.test_client()
    pages.environ_base["REMOTE_ADDR"] = "10.1.2.3"
    assert _login(pages, "viewer", "wrong-password").status_code == 401
    assert _login(pages, "viewer").status_code == 429  # throttled after one failure here
    assert _login(pages, "admin").status_code == 302
    html = pages.get("/").get_data(as_text=True)
    assert pages.post("/logout", data={"csrf_token": csrf_from(html)}).status_code == 302
    steps += [(0, 0, "viewer", "login", "refused", "bad_credentials"),
              (0, 0, "viewer", "login", "refused", "throttled"),
              (0, 0, "admin", "login", "ok", ""), (0, 0, "admin", "logout", "ok", "")]

    trail = list(reversed(_trail(client)))  # oldest first
    assert [(e["user"], e["action"], e["outcome"], e["code"]) for e in trail] == [
        (who, action, outcome, code) for _, _, who, action, outcome, code in steps]
    roles = {"admin": "admin", "operator": "operator", "viewer": "viewer", "": ""}
    for entry in trail:
        assert entry["source"] == "10.1.2.3"
        assert entry["role"] == (roles[entry["user"]] if entry["action"] != "login"
                                 or entry["outcome"] == "ok" else "")
        assert 0 < entry["ts"] <= time.time()
        assert entry["id"]
    by_action = {e["action"]: e for e in reversed(trail)}  # the first of each
    assert by_action["command.submit"]["target"] == "lamp-dijon-1"
    assert by_action["command.submit"]["params"] == {"action": "set", "params": {"dim": 40}}
    assert by_action["alarm.ack"]["params"] == {"comment": "seen"}
    assert by_action["crisis.activate"]["params"]["municipalities"] == ["dijon"]
    refused_role = trail[6]
    assert refused_role["target"] == "/api/v1/alarms/al-1/out-of-service"
    assert refused_role["params"]["endpoint"] == "api.alarm_out_of_service"
    assert "admin" in refused_role["detail"]
    assert trail[5]["params"]["body"] == {"mode": "snow", "municipalities": "dijon"}
    assert trail[5]["detail"].startswith("municipalities must be")


def test_secrets_never_reach_the_trail(users: UserRegistry) -> None:
    client = make_app(users).test_client()
    leaks = ("hunter2-pw", "r3d1s-pw", "k3y-value")
    assert _post(client, "/api/v1/equipment/lamp-dijon-1/commands", "operator",
                 {"action": "configure", "params": {"password": leaks[0],
                                                    "url": f"redis://:{leaks[1]}@cache:6379"}}
                 ) == 202
    assert _post(client, "/api/v1/open311/keys", "operator",
                 {"application": "x", "api_key": leaks[2]}) == 403
    assert _login(client, "viewer", "wrong-" + leaks[0]).status_code == 401
    trail = _trail(client)
    assert len(trail) == 3
    text = json.dumps(trail)
    assert not any(leak in text for leak in leaks)
    command = next(e for e in trail if e["action"] == "command.submit")
    assert command["params"]["params"] == {"password": "***", "url": "redis://***@cache:6379"}
    refused = next(e for e in trail if e["action"] == "http.post")
    assert refused["params"]["body"] == {"application": "x", "api_key": "***"}


def test_requests_that_change_nothing_or_carry_no_credential_leave_no_record(
        users: UserRegistry) -> None:
    client = make_app(users).test_client()
    client.get("/api/v1/equipment", headers=bearer("operator"))
    client.get("/api/v1/alarms", headers=bearer("viewer"))
    client.post("/api/v1/crisis", json={"mode": "snow", "municipalities": ["dijon"]})
    client.post("/logout")
    assert _trail(client) == []


def test_a_body_too_large_is_recorded_as_a_413(users: UserRegistry) -> None:
    client = make_app(users).test_client()
    body = b"{" + b" " * (2 * 1024 * 1024) + b"}"
    response = client.post("/api/v1/equipment/lamp-dijon-1/commands", data=body,
                           content_type="application/json", headers=bearer("operator"))
    assert response.status_code == 413
    [entry] = _trail(client)
    assert (entry["action"], entry["outcome"], entry["code"]) == ("command.submit", "refused",
                                                                 "413")


# -- behind a reverse proxy: its forwarded address, and only when told to trust it ----------


def test_forwarded_headers_count_only_from_trusted_proxies(users: UserRegistry) -> None:
    forwarded = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    for proxies, source in ((0, "127.0.0.1"), (1, "203.0.113.9")):
        app = make_app(users, trusted_proxies=proxies,
                       login_throttle=LoginThrottle(max_address_failures=1))
        client = app.test_client()
        token = csrf_from(client.get("/login").get_data(as_text=True))
        form = {"name": "viewer", "password": "wrong-password", "csrf_token": token}
        assert client.post("/login", data=form, headers=forwarded).status_code == 401
        [entry] = _trail(client)
        assert entry["source"] == source
        # The address held back is the client's, not the proxy's (shared by everyone).
        elsewhere = {**forwarded, "X-Forwarded-For": "198.51.100.7"}
        form["password"] = PASSWORDS["viewer"]
        answer = client.post("/login", data=form, headers=elsewhere)
        assert answer.status_code == (429 if proxies == 0 else 302)
        if proxies:
            assert "Secure" in _cookie_header(answer)  # the proxy said https
    with pytest.raises(ConfigError):
        make_app(users, trusted_proxies=-1)


# -- the pages read and act through the API with their session ------------------------------

DIM = {"action": "dim", "params": {"level": 40}}


def _page_csrf(client: Any) -> str:
    html = client.get("/").get_data(as_text=True)
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
    assert match is not None, html[:500]
    return match[1]


def test_the_login_session_reads_the_api() -> None:
    app = make_app(new_users())
    client, _ = _logged_in(app)
    answer = client.get("/api/v1/tree")
    assert answer.status_code == 200 and answer.is_json
    assert app.test_client().get("/api/v1/tree").status_code == 401  # no cookie, no token


def test_a_change_through_the_session_needs_the_pages_csrf_header() -> None:
    app = make_app(new_users())
    client, stolen = _logged_in(app, "operator")
    path = "/api/v1/equipment/lamp-dijon-1/commands"
    # Another site's form or script: the cookie rides along, the header does not.
    forged = client.post(path, json=DIM)
    assert forged.status_code == 403 and forged.get_json()["field"] == "X-CSRF-Token"
    wrong = client.post(path, json=DIM, headers={"X-CSRF-Token": "guessed"})
    assert wrong.status_code == 403
    token = _page_csrf(client)
    accepted = client.post(path, json=DIM, headers={"X-CSRF-Token": token})
    assert accepted.status_code == 202, accepted.get_data(as_text=True)
    # The session's scope holds as the token's does: another municipality's is unknown.
    other = client.post("/api/v1/equipment/lamp-talant-1/commands", json=DIM,
                        headers={"X-CSRF-Token": token})
    assert other.status_code == 404
    # After a logout the same cookie and header are nobody's.
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    replayed = _with_cookie(app, stolen).post(path, json=DIM, headers={"X-CSRF-Token": token})
    assert replayed.status_code == 401


def test_a_bearer_token_needs_no_csrf_header_and_is_the_only_credential_looked_at() -> None:
    app = make_app(new_users())
    client, _ = _logged_in(app, "operator")
    path = "/api/v1/equipment/lamp-dijon-1/commands"
    assert client.post(path, json=DIM, headers=bearer("operator")).status_code == 202
    # A wrong token is refused even beside a good session.
    assert client.get("/api/v1/tree", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_a_read_answers_304_to_its_own_etag_until_it_changes(users: UserRegistry) -> None:
    client = make_app(users).test_client()
    first = client.get("/api/v1/audit", headers=bearer("admin"))
    etag = first.headers["ETag"]
    again = client.get("/api/v1/audit", headers={**bearer("admin"), "If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""
    # An acknowledgement is one more record in the trail: the read has changed.
    assert client.post("/api/v1/alarms/al-1/ack", json={},
                       headers=bearer("operator")).status_code == 202
    changed = client.get("/api/v1/audit", headers={**bearer("admin"), "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    assert "alarm.ack" in {r.get("action") for r in changed.get_json()}
