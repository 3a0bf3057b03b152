"""The bus-priority bench's buses: a process of their own that drives them and says which
publishes checked a bus in.

``python -m runtime.bench.buses SPEC OUT``, with the broker URL (an account allowed to
publish as these buses, :meth:`runtime.bench.common.City.publisher_url`) in
``COMMANDPOST_MQTT_URL``: ``SPEC`` is a JSON file of the passes (per bus, each pass's
fields as :class:`runtime.bench.priority.Pass` has them), ``rounds``, the city's
clock (its spec on the wire, :meth:`runtime.clock.ClockSpec.to_wire`; none for the
machine's) and the bus lines (:func:`runtime.transit.line_to_wire`). Every bus drives
its passes ``rounds`` times, concurrently (samples at :data:`HZ` each, the buses' samples
spread evenly over each period), and ``OUT``
gets the triggers: ``[bus, crossroad, approach, published]`` for each publish that
checked its bus in, ``published`` the wall-clock time (``time.time()``) just before the
publish was written to the broker's socket.

A bus stands for an on-board unit with a processor of its own, so the buses run in a
process with nothing else to do, on a plain QoS 0 connection
(:class:`devices.mqtt_wire.TelemetryPublisher`, whose publish is one socket write):
sharing the bench's interpreter (the service's client threads, its Ray driver), a
sample stamped before a publish call could leave milliseconds later, and that wait
would be counted against the runtime. Each sample goes through a tracker of the bus's
own (the pool's code, :class:`actors.priority.tracker.BusTracker`, on the same lines)
as it is published, so the sample that checks in is known exactly.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = ["HZ", "SPEED_MPS", "drive", "main"]

#: A pass's samples: speed (m/s) and rate (Hz).
SPEED_MPS: Final = 14.0
HZ: Final = 2.0


def _sample(p: Mapping[str, Any], i: int, seq: int, now: float) -> dict[str, Any]:
    lat, lon, heading, _ = p["points"][i]
    return {"ts": now, "lat": lat, "lon": lon, "speed": SPEED_MPS, "heading": heading,
            "seq": seq, "line": p["line"], "direction": p["direction"],
            "delay_s": p["delay_s"]}


async def drive(url: str, passes: Mapping[str, Sequence[Mapping[str, Any]]], rounds: int,
                clock: Any, lines: Mapping[str, Any]) -> list[list[Any]]:
    """Drive every bus through its passes ``rounds`` times; the triggers (module doc)."""
    from actors.priority.tracker import BusTracker, EventKind
    from devices.mqtt import encode_payload, topic
    from devices.mqtt_wire import TelemetryPublisher

    tracker = BusTracker(lines, clock_speed=clock.speed)
    triggers: list[list[Any]] = []
    publisher = TelemetryPublisher(url, f"bench-buses-{os.getpid()}")
    await publisher.connect()

    loop = asyncio.get_running_loop()
    start = loop.time()

    async def bus(bus_id: str, route: Sequence[Mapping[str, Any]], offset: float) -> None:
        # Each sample at its own time from the start: a late turn of the loop delays the
        # samples due meanwhile, not every later one (the buses stay spread out).
        seq = 0
        for _ in range(rounds):
            for p in route:
                name = topic(p["municipality"], "vehicle", bus_id, "telemetry").encode()
                for i in range(len(p["points"])):
                    await asyncio.sleep(max(0.0, start + offset + seq / HZ - loop.time()))
                    seq += 1
                    sample = _sample(p, i, seq, clock.time())
                    payload = encode_payload(sample)
                    events = tracker.update(bus_id, sample, sample["ts"])
                    published = time.time()
                    publisher.publish(name, payload)
                    triggers.extend([bus_id, ev.crossroad, ev.approach, published]
                                    for ev in events if ev.kind is EventKind.CHECK_IN)

    try:
        spread = 1.0 / HZ / max(1, len(passes))
        await asyncio.gather(*(bus(b, route, k * spread)
                               for k, (b, route) in enumerate(passes.items())))
        await publisher.flush()
    finally:
        await publisher.close()
    return triggers


def main(argv: Sequence[str] | None = None) -> int:
    from runtime.clock import clock_from_wire
    from runtime.errors import CommandpostError
    from runtime.transit import line_from_wire

    args = list(sys.argv[1:] if argv is None else argv)
    url = os.environ.get("COMMANDPOST_MQTT_URL", "")
    if len(args) != 2 or not url:
        print("usage: COMMANDPOST_MQTT_URL=... python -m runtime.bench.buses SPEC OUT",
              file=sys.stderr)
        return 2
    try:
        with open(args[0], encoding="utf-8") as f:
            spec = json.load(f)
        lines = {str(d["id"]): line_from_wire(d) for d in spec["lines"]}
        triggers = asyncio.run(drive(url, spec["passes"], int(spec["rounds"]),
                                     clock_from_wire(spec.get("clock")), lines))
    except (OSError, ValueError, KeyError, CommandpostError) as exc:
        print(f"bench buses: {exc}", file=sys.stderr)
        return 1
    with open(args[1], "w", encoding="utf-8") as f:
        json.dump(triggers, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
