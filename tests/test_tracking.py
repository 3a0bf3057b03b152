"""Reads kept until Redis says their keys changed, against a real Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from runtime.embedded import EmbeddedRedis
from runtime.errors import ConfigError
from runtime.tracking import TrackedReads
from tests.conftest import poll


@pytest.fixture()
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"


@pytest.fixture()
def client(shared_redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(shared_redis_url)
    yield r
    r.close()


def _counting(client: redis.Redis, key: str, reads: list[str]) -> object:
    reads.append(key)
    return client.get(key)


def test_a_value_is_read_once_until_its_key_changes(shared_redis_url: str, prefix: str,
                                                    client: redis.Redis) -> None:
    # Written before the tracking starts: Redis reports changes asynchronously, and a
    # report of this write must not race with the reads that follow.
    client.set(f"{prefix}a", b"1")
    tracked = TrackedReads(shared_redis_url, [f"{prefix}a", f"{prefix}b"])
    reads: list[str] = []
    try:
        poll(lambda: tracked.live, 5, what="tracking live")
        for _ in range(3):
            assert tracked.get(f"{prefix}a", lambda: _counting(client, f"{prefix}a",
                                                               reads)) == b"1"
        assert len(reads) == 1
        # Changed by another client: forgotten as soon as Redis says so.
        client.set(f"{prefix}a", b"2")
        poll(lambda: tracked.get(f"{prefix}a", lambda: _counting(
            client, f"{prefix}a", reads)) == b"2", 5, what="the change seen")
        # A key that does not exist is kept as missing until it is created.
        assert tracked.get(f"{prefix}b", lambda: client.get(f"{prefix}b")) is None
        client.set(f"{prefix}b", b"x")
        poll(lambda: tracked.get(f"{prefix}b", lambda: client.get(f"{prefix}b")) == b"x", 5,
             what="the new key seen")
        # Keys outside the prefixes are never kept.
        client.set(f"{prefix}c", b"1")
        tracked.get(f"{prefix}c", lambda: _counting(client, f"{prefix}c", reads))
        tracked.get(f"{prefix}c", lambda: _counting(client, f"{prefix}c", reads))
        assert reads.count(f"{prefix}c") == 2
        # What this process changed itself is dropped at once.
        tracked.drop([f"{prefix}a"])
        tracked.get(f"{prefix}a", lambda: _counting(client, f"{prefix}a", reads))
        assert reads.count(f"{prefix}a") >= 2
    finally:
        tracked.close()
    assert not tracked.live


def test_a_read_that_raced_with_a_change_is_not_kept(shared_redis_url: str, prefix: str,
                                                     client: redis.Redis) -> None:
    tracked = TrackedReads(shared_redis_url, [prefix])
    try:
        poll(lambda: tracked.live, 5, what="tracking live")
        key = f"{prefix}k"
        client.set(key, b"old")

        def read_then_change() -> object:
            value = client.get(key)
            tracked.drop([key])  # what the thread does when the change is reported
            return value

        assert tracked.get(key, read_then_change) == b"old"
        assert tracked.get(key, lambda: b"fresh") == b"fresh"
    finally:
        tracked.close()


def test_whole_drops_everything_on_any_change(shared_redis_url: str, prefix: str,
                                              client: redis.Redis) -> None:
    tracked = TrackedReads(shared_redis_url, [f"{prefix}user:", f"{prefix}token:"],
                           whole=True)
    by_token = f"{prefix}token:abc"
    try:
        poll(lambda: tracked.live, 5, what="tracking live")
        assert tracked.get(by_token, lambda: b"ana") == b"ana"
        assert tracked.get(by_token, lambda: b"other") == b"ana"
        client.set(f"{prefix}user:ana", b"{}")
        poll(lambda: tracked.get(by_token, lambda: b"changed") == b"changed", 5,
             what="everything dropped")
    finally:
        tracked.close()


def test_nothing_is_kept_while_redis_is_away(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path)
    server.start()
    tracked = TrackedReads(server.url, ["k:"])
    try:
        poll(lambda: tracked.live, 5, what="tracking live")
        assert tracked.get("k:1", lambda: b"kept") == b"kept"
        assert tracked.get("k:1", lambda: b"other") == b"kept"
        server.stop()
        poll(lambda: not tracked.live, 15, what="tracking lost")
        assert tracked.get("k:1", lambda: b"read through") == b"read through"
        assert tracked.get("k:1", lambda: b"again") == b"again"
    finally:
        tracked.close()
        server.stop()


def test_overlapping_prefixes_are_refused(shared_redis_url: str) -> None:
    with pytest.raises(ConfigError, match="overlap"):
        TrackedReads(shared_redis_url, ["cp:user", "cp:user:"])
    with pytest.raises(ConfigError, match="prefix"):
        TrackedReads(shared_redis_url, [])


def test_a_redis_that_refuses_tracking_is_read_through(shared_redis_url: str,
                                                       client: redis.Redis) -> None:
    name = f"u{uuid.uuid4().hex[:8]}"
    client.execute_command("ACL", "SETUSER", name, "on", ">a-password-of-its-own", "~*",
                           "+@all", "-client")
    host = shared_redis_url.split("//", 1)[1]
    tracked = TrackedReads(f"redis://{name}:a-password-of-its-own@{host}", ["k:"])
    try:
        assert not poll_for(lambda: tracked.live, 0.5)
        assert tracked.get("k:1", lambda: b"one") == b"one"
        assert tracked.get("k:1", lambda: b"two") == b"two"
    finally:
        tracked.close()
        client.execute_command("ACL", "DELUSER", name)


def poll_for(predicate: Callable[[], bool], seconds: float) -> bool:
    """Whether ``predicate`` held at some point within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False
