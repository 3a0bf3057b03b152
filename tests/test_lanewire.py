"""The priority lane's connection (:mod:`runtime.lanewire`): requests answered by id,
concurrently; a client without the secret refused; a lost connection fails what waits."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from runtime.envelope import pack, unpack
from runtime.lanewire import LaneClient, LaneServer

T = TypeVar("T")
SECRET = b"0123456789abcdef"


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(scenario(), 20)

    return asyncio.run(bounded())


async def echo_after(blob: bytes) -> bytes:
    doc = unpack(blob)
    await asyncio.sleep(float(doc["delay"]))
    if doc.get("boom"):
        raise ValueError("boom")
    return pack({"ok": True, "result": doc["n"]})


def test_requests_are_answered_by_id_in_the_order_they_finish() -> None:
    async def scenario() -> tuple[list[int], list[int]]:
        server = LaneServer(SECRET, echo_after)
        host, port = await server.start("127.0.0.1")
        client = await LaneClient.connect(host, port, SECRET, 5.0)
        finished: list[int] = []

        async def one(n: int, delay: float) -> int:
            out = unpack(await client.call(pack({"n": n, "delay": delay})))
            finished.append(out["result"])
            return int(out["result"])

        answers = await asyncio.gather(one(1, 0.3), one(2, 0.0), one(3, 0.1))
        await client.close()
        server.close()
        return list(answers), finished

    answers, finished = run(scenario)
    assert answers == [1, 2, 3]  # each call gets its own answer
    assert finished == [2, 3, 1]  # none waited behind a slower one


def test_a_failing_request_is_answered_as_an_error_and_the_connection_serves_on() -> None:
    async def scenario() -> tuple[dict[str, object], dict[str, object]]:
        server = LaneServer(SECRET, echo_after)
        host, port = await server.start("127.0.0.1")
        client = await LaneClient.connect(host, port, SECRET, 5.0)
        failed = unpack(await client.call(pack({"n": 1, "delay": 0, "boom": True})))
        served = unpack(await client.call(pack({"n": 2, "delay": 0})))
        await client.close()
        server.close()
        return failed, served

    failed, served = run(scenario)
    assert failed["ok"] is False and failed["code"] == "lane_error" and "boom" in failed["error"]
    assert served == {"ok": True, "result": 2}


def test_a_client_without_the_secret_is_refused_and_nothing_is_served() -> None:
    served: list[bytes] = []

    async def record(blob: bytes) -> bytes:
        served.append(blob)
        return pack({"ok": True})

    async def scenario() -> None:
        server = LaneServer(SECRET, record)
        host, port = await server.start("127.0.0.1")
        with pytest.raises(ConnectionError):
            await LaneClient.connect(host, port, b"not the secret", 5.0)
        # Nor does a request sent without the greeting reach the lane.
        reader, writer = await asyncio.open_connection(host, port)
        body = pack({"n": 1})
        writer.write(struct.pack("!II", len(body), 7) + body)
        assert await reader.read() == b""  # closed unanswered
        writer.close()
        server.close()

    run(scenario)
    assert served == []


def test_a_lost_connection_fails_the_waiting_requests_and_the_client_says_closed() -> None:
    async def scenario() -> LaneClient:
        server = LaneServer(SECRET, echo_after)
        host, port = await server.start("127.0.0.1")
        client = await LaneClient.connect(host, port, SECRET, 5.0)
        waiting = asyncio.ensure_future(client.call(pack({"n": 1, "delay": 5.0})))
        await asyncio.sleep(0.1)
        server.close()  # the host's process gone, as far as the client can tell
        with pytest.raises(ConnectionError):
            await waiting
        with pytest.raises(ConnectionError):
            await client.call(pack({"n": 2, "delay": 0}))
        return client

    assert run(scenario).closed


def test_a_lane_server_needs_a_secret() -> None:
    with pytest.raises(ValueError):
        LaneServer(b"", echo_after)


def test_a_service_on_its_own_ray_gives_its_hosts_a_lane_secret_and_a_cluster_does_not() -> None:
    from runtime.service import Service, ServiceOptions
    from tests.conftest import cluster_inventory

    def secret(**options: str) -> str:
        doc = unpack(Service(cluster_inventory(), ServiceOptions(**options)).root_config())
        return str(doc["device_options"]["lane_secret"])

    own, other = secret(), secret()
    assert len(own) == 32 and own != other  # one per start of a service
    # A cluster's nodes talk on Ray's ports alone: the requests go through Ray there.
    assert secret(ray_address="10.0.0.1:6379") == ""
