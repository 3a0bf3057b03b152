"""A host's lane process (:mod:`runtime.laneproc`): it serves the lane with the views its
host publishes, posts outcomes back, ends with its host's channel, is started again when
it dies alone, and says so when it cannot serve."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import psutil

from runtime.envelope import Envelope, MessageKind, pack, unpack
from runtime.laneproc import LaneProcess, behaviour_path
from runtime.lanewire import LaneClient

T = TypeVar("T")
SECRET = b"0123456789abcdef"


class PhaseLane:
    """A lane that answers with the phase its view shows and posts a note back."""

    @classmethod
    async def on_priority(cls, view: Mapping[str, Any], msg: Envelope, lane: Any) -> Any:
        lane.post(Envelope(target=msg.target, type="note", sender="priority",
                           payload={"n": msg.payload["n"]}, kind=MessageKind.EVENT))
        return {"phase": view.get("phase"), "n": msg.payload["n"], "pid": os.getpid(),
                "grant_all": bool(lane.resources.get("priority_grant_all"))}


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(scenario(), 60)

    return asyncio.run(bounded())


def init(behaviours: Mapping[str, str]) -> dict[str, Any]:
    return {"secret": SECRET.hex(), "address": "127.0.0.1", "behaviours": dict(behaviours),
            "clock": None, "grant_all": True, "rules": ""}


async def ask(client: LaneClient, target: str, n: int) -> dict[str, Any]:
    answer = unpack(await client.call(pack(Envelope(
        target=target, type="priority_request", payload={"n": n}, sender="priority-1",
        kind=MessageKind.COMMAND).to_wire())))
    assert isinstance(answer, dict)
    return answer


async def until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


def test_the_lane_is_served_in_a_child_with_the_views_its_host_publishes() -> None:
    path = behaviour_path(PhaseLane)
    assert path == f"{__name__}:PhaseLane"

    async def scenario() -> None:
        posted: list[Envelope] = []
        process = LaneProcess(init({"xr-1": path, "xr-2": path}), posted.append)
        where = await process.start({"xr-1": {"phase": 1}, "xr-2": {}})
        assert where is not None and where[0] == "127.0.0.1"
        assert process.pid != os.getpid() and psutil.Process(process.pid).ppid() == os.getpid()
        client = await LaneClient.connect(*where, SECRET, 5.0)
        first = await ask(client, "xr-1", 1)
        assert first["ok"] and first["result"]["phase"] == 1
        assert first["result"]["pid"] == process.pid and first["result"]["grant_all"]
        # A published view reaches the child: changed keys, and keys gone.
        process.view("xr-1", {"phase": 3})
        deadline = time.monotonic() + 10
        while (await ask(client, "xr-1", 2))["result"]["phase"] != 3:
            assert time.monotonic() < deadline, "the view never reached the child"
        process.view("xr-1", {})
        deadline = time.monotonic() + 10
        while (await ask(client, "xr-1", 3))["result"]["phase"] is not None:
            assert time.monotonic() < deadline, "a key gone never left the child's view"
        # An entity the host does not serve here is refused, not a crash.
        unknown = await ask(client, "xr-9", 4)
        assert not unknown["ok"] and "xr-9" in unknown["error"]
        # The outcomes come back to the host's mailboxes.
        await until(lambda: len(posted) >= 3, "the posts reached the host")
        assert all(e.target == "xr-1" and e.type == "note" for e in posted)
        await client.close()
        await process.stop()
        await until(lambda: not psutil.pid_exists(process.pid)
                    or psutil.Process(process.pid).status() == psutil.STATUS_ZOMBIE,
                    "the child ended with its channel")

    run(scenario)


def test_a_child_that_dies_alone_is_started_again_and_its_clients_fail_over() -> None:
    path = behaviour_path(PhaseLane)
    assert path is not None

    async def scenario() -> None:
        process = LaneProcess(init({"xr-1": path}), lambda env: None)
        where = await process.start({"xr-1": {"phase": 2}})
        assert where is not None
        client = await LaneClient.connect(*where, SECRET, 5.0)
        assert (await ask(client, "xr-1", 1))["ok"]
        old = process.pid
        os.kill(old, signal.SIGKILL)
        await until(lambda: client.closed, "the lost child closed its connections")
        await until(lambda: process.endpoint is not None and process.pid not in (0, old),
                    "the child was started again")
        assert process.restarts == 1
        again = await LaneClient.connect(*process.endpoint, SECRET, 5.0)  # type: ignore[misc]
        answer = await ask(again, "xr-1", 2)
        assert answer["ok"] and answer["result"]["phase"] == 2  # the views it held, again
        await again.close()
        await process.stop()

    run(scenario)


def test_a_child_whose_host_dies_ends_with_the_channel() -> None:
    """The host's end of the channel closed without a word (its process killed)."""
    path = behaviour_path(PhaseLane)
    assert path is not None

    async def scenario() -> None:
        process = LaneProcess(init({"xr-1": path}), lambda env: None)
        assert await process.start({"xr-1": {}}) is not None
        child = psutil.Process(process.pid)
        process._stopping = True  # no restart: the host is gone
        assert process._writer is not None
        process._writer.transport.abort()
        await until(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE,
                    "the child ended when its host's end closed")
        await process.stop()

    run(scenario)


def test_a_behaviour_the_child_cannot_import_is_said_and_nothing_listens() -> None:
    async def scenario() -> None:
        process = LaneProcess(init({"xr-1": "tests.no_such_module:Lane"}), lambda env: None)
        assert await process.start({"xr-1": {}}) is None
        assert process.endpoint is None and not process.alive
        await process.stop()

    run(scenario)
    # A class the child could not find by its path is not offered to it.
    local = type("Local", (), {"__module__": "__main__"})
    assert behaviour_path(local) is None
    assert behaviour_path(lambda: None) is None
