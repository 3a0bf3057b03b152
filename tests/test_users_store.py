"""The user registry on its two record stores: in memory, and in a real Redis.

Passwords are hashed at a low scrypt cost here (kept in each hash): the checks are the
same, and each test takes milliseconds.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
import redis

from admin_web import auth
from admin_web.auth import Role, UnknownUserError, UserRegistry, password_problem
from runtime.errors import AuthError, ConfigError, ConflictError
from runtime.users import MemoryUserRecords, RedisUserRecords, UserKeys
from tests.conftest import poll


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "SCRYPT_N", 2**8)


@pytest.fixture()
def namespace() -> str:
    return f"u{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["memory", "redis", "redis-tracked"])
def registry(request: pytest.FixtureRequest, namespace: str) -> Iterator[UserRegistry]:
    if request.param == "memory":
        yield UserRegistry(MemoryUserRecords())
        return
    records = RedisUserRecords(request.getfixturevalue("shared_redis_url"), namespace=namespace,
                               track=request.param == "redis-tracked")
    try:
        yield UserRegistry(records)
    finally:
        records.close()


def test_a_user_added_is_found_by_name_password_token_and_session(
        registry: UserRegistry) -> None:
    password, token = registry.add("ana", Role.OPERATOR, municipalities=["dijon"],
                                   desks=["traffic"])
    user = registry.get("ana")
    assert (user.role, user.municipalities, user.desks) == (
        Role.OPERATOR, frozenset({"dijon"}), frozenset({"traffic"}))
    assert user.version == 1 and user.created_ts == user.changed_ts > 0
    assert registry.by_token(token).name == "ana"
    assert registry.check_password("ana", password).name == "ana"
    nonce = registry.session_nonce("ana")
    assert registry.check_session("ana", nonce).name == "ana"
    assert "ana" in registry and len(registry) == 1
    assert [u.name for u in registry.all()] == ["ana"]
    with pytest.raises(ConfigError, match="already exists"):
        registry.add("ana", Role.VIEWER)
    with pytest.raises(UnknownUserError):
        registry.get("bob")


def test_disabling_stops_tokens_sessions_and_logins_at_once(registry: UserRegistry) -> None:
    registry.add("admin", Role.ADMIN)
    password, token = registry.add("ana", Role.OPERATOR)
    nonce = registry.session_nonce("ana")
    registry.set_disabled("ana")
    for attempt in (lambda: registry.by_token(token),
                    lambda: registry.check_session("ana", nonce),
                    lambda: registry.check_password("ana", password),
                    lambda: registry.session_nonce("ana")):
        with pytest.raises(AuthError):
            attempt()
    assert not registry.get("ana").can(Role.VIEWER)
    registry.set_disabled("ana", False)
    assert registry.by_token(token).name == "ana"
    # The sessions opened before the disabling stay ended.
    with pytest.raises(AuthError):
        registry.check_session("ana", nonce)


def test_tokens_are_issued_listed_and_revoked_one_by_one(registry: UserRegistry) -> None:
    _, first = registry.add("ana", Role.VIEWER)
    token_id, second = registry.issue_token("ana", "ci")
    assert {t.label for t in registry.get("ana").tokens} == {"initial", "ci"}
    assert registry.by_token(second).name == "ana"
    assert registry.revoke_token("ana", token_id) == 1
    with pytest.raises(AuthError):
        registry.by_token(second)
    assert registry.by_token(first).name == "ana"
    assert registry.revoke_token("ana", token_id) == 0
    assert registry.revoke_token("ana") == 1
    with pytest.raises(AuthError):
        registry.by_token(first)
    assert registry.get("ana").tokens == ()


def test_a_change_that_changes_nothing_keeps_the_version(registry: UserRegistry) -> None:
    registry.add("admin", Role.ADMIN)
    registry.add("ana", Role.VIEWER, desks=["snow"])
    seen = registry.get("ana")
    assert registry.revoke_token("ana", "0123456789abcdef") == 0
    registry.update("ana", role="viewer", desks=["snow"])
    registry.set_disabled("ana", False)
    assert registry.get("ana") == seen
    assert registry.update("ana", role="operator").version == seen.version + 1


def test_a_token_is_never_shared(registry: UserRegistry) -> None:
    registry.add("ana", Role.VIEWER, token="t" * 30)
    with pytest.raises(ConfigError, match="token already in use"):
        registry.add("bob", Role.VIEWER, token="t" * 30)
    assert "bob" not in registry


def test_a_new_password_ends_the_sessions(registry: UserRegistry) -> None:
    registry.add("ana", Role.VIEWER, password="first-password-1")
    nonce = registry.session_nonce("ana")
    generated = registry.reset_password("ana")
    with pytest.raises(AuthError):
        registry.check_session("ana", nonce)
    with pytest.raises(AuthError):
        registry.check_password("ana", "first-password-1")
    assert registry.check_password("ana", generated).name == "ana"
    registry.end_sessions("ghost")  # unknown names are ignored


def test_changes_keep_each_other_and_a_stale_version_is_refused(
        registry: UserRegistry) -> None:
    registry.add("admin", Role.ADMIN)
    registry.add("ana", Role.VIEWER)
    seen = registry.get("ana").version
    registry.update("ana", desks=["snow"])
    registry.update("ana", role="operator")  # the desks stay
    user = registry.get("ana")
    assert (user.role, user.desks, user.version) == (Role.OPERATOR, frozenset({"snow"}),
                                                     seen + 2)
    with pytest.raises(ConflictError) as refused:
        registry.update("ana", municipalities=["dijon"], expected_version=seen)
    assert refused.value.code == "version_mismatch"
    assert registry.get("ana").municipalities == frozenset()
    registry.update("ana", municipalities=["dijon"], expected_version=seen + 2)
    assert registry.get("ana").municipalities == frozenset({"dijon"})


def test_the_last_enabled_admin_stays_one(registry: UserRegistry) -> None:
    registry.add("root", Role.ADMIN)
    for change in (lambda: registry.set_disabled("root"),
                   lambda: registry.update("root", role="operator")):
        with pytest.raises(ConflictError, match="last enabled admin"):
            change()
    assert registry.has_admin()
    registry.add("second", Role.ADMIN)
    registry.set_disabled("root")
    assert registry.has_admin() and registry.get("root").disabled


def test_bad_names_slugs_and_desks_are_refused(registry: UserRegistry) -> None:
    for bad in ({"name": "a b"}, {"name": "crisis"}, {"municipalities": ["Not A Slug"]},
                {"desks": ["Traffic Desk"]}, {"municipalities": "dijon"}):
        kwargs = {"name": "ana", **bad}
        with pytest.raises(ConfigError):
            registry.add(kwargs.pop("name"), Role.OPERATOR, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="12"):
        registry.add("ana", Role.VIEWER, password="short-pw")
    assert len(registry) == 0


def test_password_problem_refuses_short_and_demo_passwords() -> None:
    assert "12" in str(password_problem("eleven-char"))
    assert "demo" in str(password_problem("Admin-Password"))
    assert "demo" in str(password_problem("a-printed-one-123", known={"a-printed-one-123"}))
    assert password_problem("a-long-enough-one") is None


# -- Redis: shared by processes, kept across restarts, no secret in clear ----------------------


def test_users_in_redis_are_seen_by_every_registry_at_once(
        shared_redis_url: str, namespace: str) -> None:
    first = UserRegistry(RedisUserRecords(shared_redis_url, namespace=namespace))
    second = UserRegistry(RedisUserRecords(shared_redis_url, namespace=namespace))
    first.add("admin", Role.ADMIN)
    _, token = first.add("ana", Role.OPERATOR)
    nonce = second.session_nonce("ana")
    assert second.by_token(token).name == "ana"
    first.set_disabled("ana")
    with pytest.raises(AuthError):
        second.by_token(token)
    with pytest.raises(AuthError):
        second.check_session("ana", nonce)
    # A restart: a new registry on the same store finds the same users.
    restarted = UserRegistry(RedisUserRecords(shared_redis_url, namespace=namespace))
    assert [u.name for u in restarted.all()] == ["admin", "ana"]
    assert restarted.get("ana").disabled
    # Another namespace is another service.
    assert len(UserRegistry(RedisUserRecords(shared_redis_url, namespace=namespace + "x"))) == 0


def test_redis_holds_hashes_only(shared_redis_url: str, namespace: str) -> None:
    users = UserRegistry(RedisUserRecords(shared_redis_url, namespace=namespace))
    password, token = users.add("ana", Role.OPERATOR)
    _, second = users.issue_token("ana")
    raw = redis.Redis.from_url(shared_redis_url)
    keys = raw.keys(f"{namespace}:*")
    assert {k.decode().split(":")[1] for k in keys} == {"users", "user", "user_token"}
    dump = b" ".join(raw.dump(k) or b"" for k in keys) + b" ".join(keys)
    for secret in (password, token, second):
        assert secret.encode() not in dump
    assert len(raw.keys(f"{namespace}:user_token:*")) == 2
    users.revoke_token("ana")
    assert raw.keys(f"{namespace}:user_token:*") == []
    raw.close()


def test_concurrent_changes_by_two_admins_lose_nothing(
        shared_redis_url: str, namespace: str) -> None:
    setup = UserRegistry(RedisUserRecords(shared_redis_url, namespace=namespace))
    setup.add("ana", Role.OPERATOR, with_token=False)
    issued: list[str] = []
    lock = threading.Lock()

    def admin() -> None:
        # Each admin process has its own registry and connections.
        users = UserRegistry(RedisUserRecords(shared_redis_url, namespace=namespace))
        for _ in range(5):
            token_id, _ = users.issue_token("ana")
            with lock:
                issued.append(token_id)

    threads = [threading.Thread(target=admin) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    user = setup.get("ana")
    assert sorted(t.id for t in user.tokens) == sorted(issued) and len(issued) == 20
    assert user.version == 21


def test_a_malformed_record_is_an_error_not_a_user(shared_redis_url: str, namespace: str) -> None:
    raw = redis.Redis.from_url(shared_redis_url)
    raw.set(UserKeys(namespace).user("ana"), b'{"name": "ana", "role": "boss"}')
    users = UserRegistry(RedisUserRecords(shared_redis_url, namespace=namespace))
    with pytest.raises(ConfigError, match="role"):
        users.get("ana")
    with pytest.raises(AuthError):
        users.check_password("ana", "whatever-password")
    raw.close()


def test_a_token_s_user_is_read_in_one_go_and_must_hold_it(
        shared_redis_url: str, namespace: str) -> None:
    records = RedisUserRecords(shared_redis_url, namespace=namespace)
    users = UserRegistry(records)
    raw = redis.Redis.from_url(shared_redis_url)
    try:
        _, token = users.add("ana", Role.OPERATOR)
        digest = auth.hash_token(token)
        found = records.record_of_token(digest)
        assert found is not None and found["name"] == "ana"
        assert records.record_of_token(auth.hash_token("x" * 40)) is None
        assert records.record_of_token("not a digest") is None
        # An index entry whose user is gone names nobody; one naming a user who does not
        # hold the token lets nobody in.
        keys = UserKeys(namespace)
        raw.set(keys.token("e" * 64), b"ghost")
        assert records.record_of_token("e" * 64) is None
        users.add("bob", Role.VIEWER)
        raw.set(keys.token(digest), b"bob")
        with pytest.raises(AuthError):
            users.by_token(token)
    finally:
        raw.close()
        records.close()


def test_a_tracked_registry_sees_another_s_changes_as_redis_tells_it(
        shared_redis_url: str, namespace: str) -> None:
    admin_web = RedisUserRecords(shared_redis_url, namespace=namespace, track=True)
    tracked, other = UserRegistry(admin_web), UserRegistry(
        RedisUserRecords(shared_redis_url, namespace=namespace))
    try:
        poll(lambda: admin_web._tracked is not None and admin_web._tracked.live, 5,
             what="tracking live")
        other.add("admin", Role.ADMIN)
        _, token = other.add("ana", Role.OPERATOR)
        assert tracked.by_token(token).name == "ana"
        assert tracked.by_token(token).name == "ana"  # kept: no round trip
        other.set_disabled("ana")

        def refused() -> bool:
            try:
                tracked.by_token(token)
            except AuthError:
                return True
            return False

        poll(refused, 5, interval=0.005, what="the disabled user's token refused")
        other.set_disabled("ana", False)
        other.update("ana", municipalities=["dijon"])
        poll(lambda: tracked.by_token(token).municipalities == {"dijon"}, 5, interval=0.005,
             what="the change of scope seen")
    finally:
        admin_web.close()
