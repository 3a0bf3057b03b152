"""Shared helpers of the runtime tests: deadline polling and equipment builders."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from runtime.inventory import Equipment


async def poll(
    predicate: Callable[[], bool | Awaitable[bool]],
    limit_s: float = 5.0,
    *,
    interval: float = 0.005,
    what: str = "condition",
) -> None:
    """Wait until ``predicate()`` is true (it may be a coroutine function); fail at the deadline."""
    deadline = time.monotonic() + limit_s
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s} s waiting for {what}")
        await asyncio.sleep(interval)


def make_equipment(eid: str, kind: str = "crossroad", **overrides: Any) -> Equipment:
    """A valid piece of equipment with id ``eid`` (fields other than id/kind are irrelevant)."""
    fields: dict[str, Any] = {
        "id": eid,
        "kind": kind,
        "municipality": "dijon",
        "lat": 47.32,
        "lon": 5.04,
        "endpoint": "modbus://127.0.0.1:15020/1",
        "profile": "traffic_controller",
    }
    fields.update(overrides)
    return Equipment(**fields)
