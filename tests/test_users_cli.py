"""``commandpost user …`` against a real Redis, and ``run``'s bootstrap admin."""

from __future__ import annotations

import json
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from admin_web import auth
from admin_web.auth import Role, UserRegistry
from runtime import cli
from runtime.errors import AuthError, CommandpostError
from runtime.users import RedisUserRecords


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "SCRYPT_N", 2**8)


@pytest.fixture()
def store(shared_redis_url: str, monkeypatch: pytest.MonkeyPatch,
          tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``(redis URL, namespace)``, the URL in the environment as in production, and a
    working directory of our own (where a demo's credentials file would be)."""
    namespace = f"c{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv(cli.REDIS_URL_ENV, shared_redis_url)
    monkeypatch.delenv(cli.ADMIN_PASSWORD_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    yield shared_redis_url, namespace


def commandpost(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                *args: str, stdin: str = "") -> tuple[int, str, str]:
    """Run ``commandpost ARGS`` through its console entry point: (exit code, out, err)."""
    import io

    monkeypatch.setattr(sys, "argv", ["commandpost", *args])
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    capsys.readouterr()
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def registry(store: tuple[str, str]) -> UserRegistry:
    return UserRegistry(RedisUserRecords(store[0], namespace=store[1]))


def test_user_add_prints_the_generated_secrets_once(
        store: tuple[str, str], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = commandpost(capsys, monkeypatch, "user", "add", "ana", "--role",
                                 "operator", "--municipality", "dijon", "--desk", "traffic",
                                 "--namespace", store[1])
    assert code == 0, err
    password = re.search(r"^password: (\S+)$", out, re.M)
    token = re.search(r"^token: +(\S+)$", out, re.M)
    assert password and token
    users = registry(store)
    assert users.check_password("ana", password.group(1)).desks == frozenset({"traffic"})
    assert users.by_token(token.group(1)).municipalities == frozenset({"dijon"})
    # Listed without any secret.
    code, out, _ = commandpost(capsys, monkeypatch, "user", "list", "--namespace", store[1])
    assert code == 0 and "ana" in out and "traffic" in out
    assert password.group(1) not in out and token.group(1) not in out


def test_passwd_token_and_disable(store: tuple[str, str], capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    users = registry(store)
    users.add("root", Role.ADMIN)
    _, first = users.add("ana", Role.VIEWER)
    ns = ("--namespace", store[1])
    code, out, err = commandpost(capsys, monkeypatch, "user", "passwd", "ana", "--password-file",
                                 "-", *ns, stdin="a-chosen-password\n")
    assert code == 0, err
    assert "password:" not in out  # chosen, not generated: nothing to show
    assert users.check_password("ana", "a-chosen-password").name == "ana"
    code, out, _ = commandpost(capsys, monkeypatch, "user", "token", "ana", "--label", "ci",
                               "--revoke-all", *ns)
    token = re.search(r"^token: +(\S+)$", out, re.M)
    assert code == 0 and token and "1 token(s) revoked" in out
    with pytest.raises(AuthError):
        users.by_token(first)
    assert users.by_token(token.group(1)).name == "ana"
    code, out, _ = commandpost(capsys, monkeypatch, "user", "disable", "ana", *ns)
    assert code == 0 and users.get("ana").disabled
    with pytest.raises(AuthError):
        users.by_token(token.group(1))
    code, _, _ = commandpost(capsys, monkeypatch, "user", "disable", "ana", "--enable", *ns)
    assert code == 0 and not users.get("ana").disabled


@pytest.mark.parametrize("password,why", [
    ("too-short", "at least 12 characters"),
    ("operator-password", "one of the demo's"),
    ("the-demo-printed-1", "one of the demo's"),  # from the demo's credentials file here
])
def test_user_refuses_short_and_demo_passwords(
        store: tuple[str, str], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, password: str, why: str) -> None:
    (tmp_path / cli.DEFAULT_CREDENTIALS_FILE).write_text(
        json.dumps({"admin": {"password": "the-demo-printed-1", "token": "x" * 40}}))
    secret = tmp_path / "pw"
    secret.write_text(password + "\n")
    for args in (("add", "ana", "--role", "viewer"), ("passwd", "ana")):
        code, out, err = commandpost(capsys, monkeypatch, "user", *args, "--password-file",
                                     str(secret), "--namespace", store[1])
        assert code == 1 and why in err and out == ""
        assert len(err.strip().splitlines()) == 1 and password not in err
    assert len(registry(store)) == 0


def test_user_errors_are_one_line(store: tuple[str, str], capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    ns = ("--namespace", store[1])
    code, _, err = commandpost(capsys, monkeypatch, "user", "disable", "ghost", *ns)
    assert code == 1 and err.strip() == "commandpost: unknown user 'ghost'"
    code, _, err = commandpost(capsys, monkeypatch, "user", "add", "ana", "--role", "operator",
                               "--desk", "bakery", *ns)
    assert code == 2 and "unknown desk bakery" in err
    monkeypatch.delenv(cli.REDIS_URL_ENV)
    code, _, err = commandpost(capsys, monkeypatch, "user", "list")
    assert code == 2 and "--redis" in err


# -- run: a bootstrap admin, never invented users --------------------------------------------


@pytest.fixture()
def city(tmp_path: Path) -> Path:
    from runtime.demo_inventory import generate_demo

    path = tmp_path / "city.toml"
    path.write_text(generate_demo(scale=0.01, seed=1), encoding="utf-8")
    return path


def test_run_without_an_admin_or_a_bootstrap_password_does_not_start(
        store: tuple[str, str], city: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.REDIS_URL_ENV)  # the embedded Redis: new, without any user
    code, out, err = commandpost(capsys, monkeypatch, "run", "--inventory", str(city),
                                 "--admin", "127.0.0.1:0")
    assert code == 1
    assert cli.ADMIN_PASSWORD_ENV in err and "--admin-password-file" in err
    assert "admin web" not in out  # nothing started


@pytest.mark.parametrize("password,why", [("short-pw", "at least 12"),
                                          ("change-me", "12"), ("Admin-Password", "demo")])
def test_run_refuses_a_weak_bootstrap_password(
        store: tuple[str, str], city: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, password: str, why: str) -> None:
    monkeypatch.delenv(cli.REDIS_URL_ENV)
    monkeypatch.setenv(cli.ADMIN_PASSWORD_ENV, password)
    code, out, err = commandpost(capsys, monkeypatch, "run", "--inventory", str(city),
                                 "--admin", "127.0.0.1:0")
    assert code == 1 and why in err and password not in err
    assert "admin web" not in out
    pw_file = tmp_path / "admin.pw"
    pw_file.write_text(password + "\n")
    monkeypatch.delenv(cli.ADMIN_PASSWORD_ENV)
    code, _, err = commandpost(capsys, monkeypatch, "run", "--inventory", str(city),
                               "--admin", "127.0.0.1:0", "--admin-password-file", str(pw_file))
    assert code == 1 and why in err


def test_the_bootstrap_admin_is_added_once_and_only_when_no_admin_exists(
        store: tuple[str, str], tmp_path: Path) -> None:
    users = registry(store)
    creds = tmp_path / "creds.json"
    said = cli.bootstrap_admin(users, "a-bootstrap-password", str(creds))
    assert "bootstrap admin" in said
    token = json.loads(creds.read_text())["admin"]["token"]
    assert users.by_token(token).role is Role.ADMIN
    assert users.check_password("admin", "a-bootstrap-password").name == "admin"
    # With an admin in the store the password is not needed, and nothing is added.
    assert "an admin among them" in cli.bootstrap_admin(users, None, None)
    assert len(users) == 1


def test_bootstrap_password_reads_the_store_of_the_service(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The service's namespace is ``cp``: a Redis of its own, so as to touch no other."""
    from runtime.embedded import EmbeddedRedis

    monkeypatch.delenv(cli.ADMIN_PASSWORD_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with EmbeddedRedis(tmp_path / "redis") as server:
        with pytest.raises(CommandpostError, match="no admin in the store"):
            cli.bootstrap_password(None, server.url)
        monkeypatch.setenv(cli.ADMIN_PASSWORD_ENV, "a-bootstrap-password")
        assert cli.bootstrap_password(None, server.url) == "a-bootstrap-password"
        UserRegistry(RedisUserRecords(server.url)).add("chief", Role.ADMIN)
        assert cli.bootstrap_password(None, server.url) is None
