"""The admin web against hostile clients: bodies, redirects, sessions, logins, the audit trail."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

import admin_web.auth as auth
from admin_web import AdminServer, Role, StaticBackend, UserRegistry, create_app

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
