"""The operator's command path: HTTP API → journal → host → device → ack → API.

Two tiers. The first drives a :class:`HostCore` with an in-memory store and a
scripted device (no Ray, no sockets): acks reach the store at once, always
after the checkpoint holding their effect, with the path's timestamps. The
second runs the city as ``make demo`` runs it (simulators on the real
protocols, Ray hosts, embedded Redis, the admin web) at a small scale, once
for the module, and goes through the real HTTP API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
import ray
import redis

from actors.lighting import LightingCircuit
from actors.registry import factory_for
from actors.vehicle import Vehicle
from admin_web.backend import InvalidCommandError
from runtime.bench.common import City
from runtime.commands import Command, CommandStatus, new_command_id
from runtime.host import HostConfig, HostCore
from runtime.inventory import Equipment
from runtime.router import Directory
from runtime.service import check_command
from runtime.store import MemoryStore, StoreKeys
from tests.conftest import poll as poll_sync
from tests.helpers import make_equipment, poll

pytestmark = pytest.mark.usefixtures("ray_runtime")

log = logging.getLogger(__name__)

# -- tier 1: HostCore, in memory -------------------------------------------------------


class RecordingStore(MemoryStore):
    """A MemoryStore that remembers the order of checkpoint and command writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[str, Any]] = []

    async def save_checkpoints(self, blobs: Mapping[str, bytes]) -> None:
        await super().save_checkpoints(blobs)
        self.writes.append(("checkpoints", set(blobs)))

    async def update_commands(
        self, updates: Sequence[tuple[str, CommandStatus, str]], *,
        stamps: Mapping[str, Mapping[str, float]] | None = None,
    ) -> list[bool]:
        moved = await super().update_commands(updates, stamps=stamps)
        self.writes.append(("commands", {(cid, status) for cid, status, _ in updates}))
        return moved


class SlowPort:
    """A one-lamp cabinet that takes 10 ms to confirm a write."""

    online = True

    def __init__(self) -> None:
        self.writes: list[tuple[dict[str, Any], str]] = []

    def policy(self, field: str) -> str | None:
        return "reapply"

    async def settled(self) -> bool:
        return True

    async def read(self) -> Mapping[str, Any]:
        return {"lamp": [{"on": False, "dim": 0}]}

    async def write(self, fields: Mapping[str, Any], *, command_id: str) -> Mapping[str, Any]:
        await asyncio.sleep(0.01)
        self.writes.append((dict(fields), command_id))
        return dict(fields)


class ScriptedDevices:
    """A DeviceManager with one :class:`SlowPort` per entity."""

    def __init__(self, equipment: Sequence[Equipment], route: Any,
                 options: Mapping[str, Any]) -> None:
        self.ports = {eq.id: SlowPort() for eq in equipment}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def port(self, entity_id: str) -> SlowPort | None:
        return self.ports.get(entity_id)

    def online_count(self) -> int:
        return len(self.ports)

    def status(self) -> dict[str, Any]:
        return {}


def lighting_core(store: MemoryStore, ids: Sequence[str]) -> HostCore:
    # A checkpoint period of a minute: only an ack can make the host write within the test.
    return HostCore(
        "h1", [make_equipment(i, "lighting_circuit") for i in ids], factory_for=factory_for,
        store=store, transport=_NoTransport(), directory=Directory({i: "h1" for i in ids}),
        config=HostConfig(checkpoint_interval_s=60.0, journal_block_ms=20),
        devices=ScriptedDevices)


class _NoTransport:
    async def send_batch(self, host_id: str, blob: bytes) -> Mapping[str, Any]:
        raise AssertionError(f"nothing should leave the host (to {host_id})")


def test_ack_is_written_at_once_after_its_checkpoint_with_the_path_stamps() -> None:
    async def main() -> None:
        store = RecordingStore()
        core = lighting_core(store, ["lc1", "lc2"])
        await core.start()
        try:
            # lc2 changes without a command: its checkpoint waits for the period.
            await core.request("lc2", "telemetry", {"values": {"mains_ok": True}, "seq": 1})
            t0 = time.time()
            cmd, _ = await store.submit_command(Command(
                new_command_id(), "lc1", "set", {"dim": 40.0}, "op", created_ts=t0))

            async def acked() -> bool:
                return (await store.get_command(cmd.command_id)).status is CommandStatus.ACKED

            await poll(acked, 2.0, what="ack long before the 60 s checkpoint period")
        finally:
            await core.stop()
        done = await store.get_command(cmd.command_id)
        # The circuit reads its lamps before it writes the ones that differ.
        assert t0 <= done.sent_ts <= done.device_read_ts <= done.device_write_ts
        assert done.device_confirmed_ts - done.device_write_ts >= 0.009  # the 10 ms write
        assert done.device_confirmed_ts <= done.updated_ts
        checkpoint_at = next(i for i, (what, ids) in enumerate(store.writes)
                             if what == "checkpoints" and "lc1" in ids)
        ack_at = next(i for i, (what, moves) in enumerate(store.writes)
                      if what == "commands" and (cmd.command_id, CommandStatus.ACKED) in moves)
        assert checkpoint_at < ack_at
        # The ack's flush wrote its own entity only, not lc2 (that one waits for the period).
        assert "lc2" not in store.writes[checkpoint_at][1]
        devices = core.devices
        assert isinstance(devices, ScriptedDevices)
        assert devices.ports["lc1"].writes[-1][1] == cmd.command_id

    asyncio.run(main())


def test_superseded_and_replayed_commands_leave_no_device_times_behind() -> None:
    async def main() -> None:
        store = MemoryStore()
        old, _ = await store.submit_command(
            Command(new_command_id(), "lc1", "set", {"dim": 10.0}, "op"))
        new, _ = await store.submit_command(
            Command(new_command_id(), "lc1", "set", {"dim": 20.0}, "op"))
        core = lighting_core(store, ["lc1"])
        await core.start()
        try:
            async def finished() -> bool:
                found = await store.get_commands([old.command_id, new.command_id])
                return all(c.terminal for c in found.values())

            await poll(finished, 2.0, what="both commands final")
            assert core._device_times == {}
        finally:
            await core.stop()
        assert (await store.get_command(old.command_id)).status is CommandStatus.SUPERSEDED
        acked = await store.get_command(new.command_id)
        assert acked.status is CommandStatus.ACKED and acked.device_write_ts > 0

    asyncio.run(main())


# -- the API's check before journaling ------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "action", "params", "field", "code"),
    [
        (LightingCircuit, "set", {"brightness": 50}, "params.brightness", "unknown_field"),
        (LightingCircuit, "set", {"dim": 150}, "params.dim", "out_of_range"),
        (LightingCircuit, "set", {"dim": -0.5}, "params.dim", "out_of_range"),
        (LightingCircuit, "set", {"dim": math.nan}, "params.dim", "bad_value"),
        (LightingCircuit, "set", {"dim": math.inf}, "params.dim", "bad_value"),
        (LightingCircuit, "set", {"dim": "50"}, "params.dim", "bad_value"),
        (LightingCircuit, "set", {"on": 1}, "params.on", "bad_value"),
        (LightingCircuit, "set", {}, "params", "bad_value"),
        (LightingCircuit, "dim", {"dim": 50}, "action", "unknown_action"),
        (Vehicle, "set", {"message": "x" * 201}, "params.message", "bad_value"),
    ],
)
def test_check_command_refuses_what_the_kind_refuses(
    behaviour: type, action: str, params: dict[str, Any], field: str, code: str
) -> None:
    with pytest.raises(InvalidCommandError) as info:
        check_command(behaviour, action, params)
    assert (info.value.field, info.value.code) == (field, code)


def test_check_command_returns_the_values_the_kind_accepts() -> None:
    assert check_command(LightingCircuit, "set", {"dim": 40, "on": True}) == {
        "dim": 40.0, "on": True}
    assert check_command(Vehicle, "set", {"message": "x" * 200}) == {"message": "x" * 200}


# -- tier 2: the city, through the HTTP API -------------------------------------------------

SCALE = 0.05


class Api:
    """The admin API as an operator's script calls it (status, body and headers)."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.token = token

    def call(self, method: str, path: str, body: Any = None, *,
             raw: bytes | None = None) -> tuple[int, Any, Mapping[str, str]]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                return resp.status, json.loads(resp.read() or b"null"), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null"), dict(exc.headers)

    def dim(self, circuit: str, value: Any) -> tuple[int, Any, Mapping[str, str]]:
        return self.call("POST", f"/api/v1/equipment/{circuit}/commands",
                         {"action": "set", "params": {"dim": value}})

    def command(self, command_id: str) -> dict[str, Any]:
        status, body, _ = self.call("GET", f"/api/v1/commands/{command_id}")
        assert status == 200, body
        return dict(body)

    def wait_final(self, command_ids: Sequence[str], timeout: float = 60.0) -> dict[str, Any]:
        final: dict[str, dict[str, Any]] = {}

        def all_final() -> bool:
            for cid in command_ids:
                if cid not in final:
                    rec = self.command(cid)
                    if rec["status"] in ("acked", "failed", "expired", "superseded"):
                        final[cid] = rec
            return len(final) == len(command_ids)

        poll_sync(all_final, timeout, interval=0.05, what=f"{len(command_ids)} commands final")
        return final


@pytest.fixture(scope="module")
def city() -> Iterator[City]:
    with City(scale=SCALE, say=log.info, online_timeout_s=120) as c:
        yield c


@pytest.fixture(scope="module")
def api(city: City) -> Api:
    return Api(city.admin_url, city.token("operator"))


def circuits(city: City) -> list[str]:
    """Lighting circuits, alternating over municipalities."""
    by_town: dict[str, list[str]] = {}
    for eq in city.inventory.equipment:
        if eq.kind == "lighting_circuit":
            by_town.setdefault(eq.municipality, []).append(eq.id)
    out: list[str] = []
    for i in range(max(len(v) for v in by_town.values())):
        out += [v[i] for v in by_town.values() if i < len(v)]
    return out


def lamp_dims(city: City, circuit: str) -> set[int]:
    """The dim every lamp of the circuit holds, at the simulator."""
    return {int(lamp["dim"]) for lamp in city.control.values(circuit)["lamp"]}


def desired(city: City, eid: str) -> Any:
    host = city.svc.host_handle(city.svc.plan.owner[eid])
    info = ray.get(host.entity.remote(eid), timeout=10)
    return info["checkpoint"]["twin"]["desired"].get("dim")


def journal_size(city: City) -> tuple[int, int]:
    """(journal entries, command records) in Redis."""
    keys = StoreKeys(city.svc.options.namespace)
    client = redis.Redis.from_url(city.svc.redis_url)
    try:
        records = sum(1 for _ in client.scan_iter(match=keys.command_prefix + "*", count=1000))
        return int(client.xlen(keys.journal)), records
    finally:
        client.close()


def test_every_device_is_online(city: City) -> None:
    assert city.online() == len(city.inventory.equipment)


def test_a_dim_through_the_api_is_acked_and_held_by_the_lamps(city: City, api: Api) -> None:
    targets = circuits(city)[:3]
    sent: dict[str, str] = {}
    for n, circuit in enumerate(targets):
        value = 17 + n
        assert value not in lamp_dims(city, circuit)
        status, body, headers = api.dim(circuit, value)
        assert status == 202, body
        assert body == {"command_id": body["command_id"], "status": "queued"}
        assert headers["Location"].endswith(f"/api/v1/commands/{body['command_id']}")
        sent[circuit] = body["command_id"]
    final = api.wait_final(list(sent.values()))
    for n, (circuit, cid) in enumerate(sent.items()):
        rec = final[cid]
        assert rec["status"] == "acked", rec
        assert rec["target"] == circuit and rec["params"] == {"dim": 17.0 + n}
        # Every stage of the path is stamped, in order; the read only when the circuit
        # read its cabinet (its twin's reading did not show its last write yet).
        assert 0 < rec["created_ts"] <= rec["sent_ts"] <= rec["device_write_ts"] \
            <= rec["device_confirmed_ts"] <= rec["updated_ts"]
        read_ts = rec["device_read_ts"]
        assert read_ts == 0 or rec["sent_ts"] <= read_ts <= rec["device_write_ts"]
        assert lamp_dims(city, circuit) == {17 + n}
        assert desired(city, circuit) == 17.0 + n


def test_an_idempotent_repeat_answers_the_first_command(city: City, api: Api) -> None:
    circuit = circuits(city)[3]
    body = {"action": "set", "params": {"dim": 31}, "idempotency_key": "evening-31"}
    path = f"/api/v1/equipment/{circuit}/commands"
    first = api.call("POST", path, body)
    again = api.call("POST", path, body)
    assert first[0] == again[0] == 202
    assert again[1]["command_id"] == first[1]["command_id"]
    other = api.call("POST", path, {**body, "params": {"dim": 32}})
    assert other[0] == 422 and other[1]["field"] == "idempotency_key"
    assert api.wait_final([first[1]["command_id"]])[first[1]["command_id"]]["status"] == "acked"


@pytest.mark.parametrize(
    ("kind", "raw", "status", "field"),
    [
        ("lighting_circuit", b'{"action": "set", "params": {"brightness": 50}}', 422,
         "params.brightness"),
        ("lighting_circuit", b'{"action": "set", "params": {"dim": 101}}', 422, "params.dim"),
        ("lighting_circuit", b'{"action": "set", "params": {"dim": 150}}', 422, "params.dim"),
        # NaN and Infinity are not JSON: the body itself is refused.
        ("lighting_circuit", b'{"action": "set", "params": {"dim": NaN}}', 400, None),
        ("lighting_circuit", b'{"action": "set", "params": {"dim": Infinity}}', 400, None),
        ("lighting_circuit", b'{"action": "set", "params": {"dim": -Infinity}}', 400, None),
        ("lighting_circuit", b'{"action": "fly", "params": {"dim": 5}}', 422, "action"),
        ("lighting_circuit", json.dumps({"action": "x" * 100_000, "params": {"dim": 5}}).encode(),
         422, "action"),
        ("lighting_circuit", json.dumps({"action": "set", "params": {
            f"k{i}": i for i in range(60_000)}}).encode(), 422, "params"),
        ("vehicle", json.dumps({"action": "set", "params": {"message": "x" * 201}}).encode(),
         422, "params.message"),
        ("crossroad", b'{"action": "set", "params": {"plan": 33}}', 422, "params.plan"),
        ("access_terminal", b'{"action": "set", "params": {"bollard": "moving"}}', 422,
         "params.bollard"),
    ],
)
def test_a_command_the_kind_refuses_is_refused_not_journaled_and_never_sent(
    city: City, api: Api, kind: str, raw: bytes, status: int, field: str | None
) -> None:
    target = next(eq.id for eq in city.inventory.equipment if eq.kind == kind)
    before = journal_size(city)
    writes = city.control.counters([target])["devices"][target]["writes"]
    answer, body, _ = api.call("POST", f"/api/v1/equipment/{target}/commands", raw=raw)
    assert answer == status, body
    assert body.get("field") == field and body["error"]
    assert journal_size(city) == before
    # Counted at the simulator, a period later: nothing reached the device.
    time.sleep(0.3)
    assert city.control.counters([target])["devices"][target]["writes"] == writes


def test_redis_killed_503_then_202_and_every_202_acked(city: City, api: Api) -> None:
    spare = circuits(city)[4:]
    accepted: dict[str, tuple[str, int]] = {}  # command id -> (circuit, dim)

    def send(value: int) -> tuple[int, Any, Mapping[str, str]]:
        circuit = spare.pop(0)
        answer = api.dim(circuit, value)
        if answer[0] == 202:
            accepted[answer[1]["command_id"]] = (circuit, value)
        return answer

    for _ in range(3):  # in flight when Redis dies
        assert send(41)[0] == 202
    server = city.svc.redis
    old_pid = server.pid
    server.kill()  # SIGKILL; its watchdog brings it back on the same port after ~1 s
    refused: list[tuple[int, Any, Mapping[str, str]]] = []
    deadline = time.monotonic() + 10
    while not refused and time.monotonic() < deadline:
        answer = send(42)
        if answer[0] == 503:
            refused.append(answer)
    assert refused, "no submission was refused while Redis was down"
    _, body, headers = refused[0]
    # Refused where Redis was first needed: the user behind the token, or the journal.
    assert body in ({"error": "store unavailable, command not accepted"},
                    {"error": "store unavailable, request not accepted"}), body
    assert headers["Retry-After"] == "1"

    def back() -> bool:
        client = redis.Redis.from_url(city.svc.redis_url, socket_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()

    poll_sync(back, 30, interval=0.02, what="Redis restarted by its watchdog")
    assert server.pid != old_pid
    for _ in range(3):  # right after it returns
        answer = send(43)
        assert answer[0] == 202, answer
    final = api.wait_final(list(accepted))
    assert {cid: rec["status"] for cid, rec in final.items()} == {
        cid: "acked" for cid in accepted}
    for circuit, value in accepted.values():
        assert lamp_dims(city, circuit) == {value}
