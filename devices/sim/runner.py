"""Run the field simulators of an inventory in one process.

    python -m devices.sim.runner --inventory city.toml --mqtt mqtt://127.0.0.1:1883 \\
        --ready-file /tmp/sims.json

Modbus controllers (traffic, lighting, access terminals) listen on the ports
of their inventory endpoints, building management systems behind a few
aggregating OPC UA servers, and vehicles and cameras publish through the MQTT
broker. The control channel (:mod:`devices.sim.control`) listens on
``--control`` (default: a free loopback port). When every simulator is up,
the ready file receives ``{"control": URL, "simulators": [{"kind",
"endpoint", "devices"}, …]}``; SIGTERM or SIGINT stops them cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, Protocol

from devices.profile import builtin_profile
from runtime.errors import CommandpostError
from runtime.inventory import Equipment, Inventory, load_inventory

log = logging.getLogger("commandpost.sim")


class Simulator(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def _endpoints(equipment: Sequence[Equipment]) -> list[str]:
    out: list[str] = []
    for eq in equipment:
        base = (
            eq.endpoint.rsplit("/", 1)[0]
            if eq.endpoint.startswith(("modbus", "opcua"))
            else eq.endpoint
        )
        if base not in out:
            out.append(base)
    return out


def build(
    inventory: Inventory, mqtt_url: str, *, rate_hz: float | None = None, seed: int = 0
) -> tuple[list[Simulator], list[dict[str, Any]]]:
    """The simulators of ``inventory`` (not started) and their description."""
    import random

    from devices.sim.access import AccessSimulator
    from devices.sim.bms import BmsSimulator
    from devices.sim.lighting import LightingSimulator
    from devices.sim.mqtt_devices import MqttDeviceSimulator
    from devices.sim.traffic import TrafficSimulator

    by_profile: dict[str, list[Equipment]] = {}
    for eq in inventory.equipment:
        by_profile.setdefault(eq.profile, []).append(eq)
    sims: list[Simulator] = []
    info: list[dict[str, Any]] = []
    modbus_kinds = {
        "traffic_controller": TrafficSimulator,
        "lighting_cabinet": LightingSimulator,
        "access_terminal": AccessSimulator,
    }
    for name, cls in modbus_kinds.items():
        eqs = by_profile.get(name, [])
        if eqs:
            sims.append(cls(eqs, builtin_profile(name)))
            info.append({"kind": name, "endpoint": ", ".join(_endpoints(eqs)), "devices": len(eqs)})
    bms = by_profile.get("bms", [])
    if bms:
        sims.append(BmsSimulator(bms, builtin_profile("bms"), rng=random.Random(seed)))
        info.append({"kind": "bms", "endpoint": ", ".join(_endpoints(bms)), "devices": len(bms)})
    mqtt_eqs = [eq for p in ("bus", "service_vehicle", "camera") for eq in by_profile.get(p, [])]
    if mqtt_eqs:
        sims.append(
            MqttDeviceSimulator(mqtt_eqs, url=mqtt_url, rng=random.Random(seed), rate_hz=rate_hz)
        )
        info.append({"kind": "mqtt_devices", "endpoint": mqtt_url, "devices": len(mqtt_eqs)})
    return sims, info


def _write_ready(path: str, info: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(info, f)
    os.replace(tmp, path)


async def run(
    inventory: Inventory,
    mqtt_url: str,
    ready_file: str | None,
    rate_hz: float | None,
    control: tuple[str, int] = ("127.0.0.1", 0),
) -> None:
    from devices.sim.control import ControlServer, ControlTarget

    sims, info = build(inventory, mqtt_url, rate_hz=rate_hz)
    targets: list[ControlTarget] = [s for s in sims if isinstance(s, ControlTarget)]
    channel = ControlServer(targets, *control)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started: list[Simulator] = []
    try:
        for sim in sims:
            await sim.start()
            started.append(sim)
        await channel.start()
        if ready_file:
            _write_ready(ready_file, {"control": channel.url, "simulators": info})
        log.info("simulators ready: %s", info)
        await stop.wait()
    finally:
        await channel.stop()
        for sim in reversed(started):
            with contextlib.suppress(CommandpostError):
                await sim.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devices.sim.runner")
    parser.add_argument("--inventory", required=True)
    parser.add_argument("--mqtt", required=True)
    parser.add_argument("--ready-file")
    parser.add_argument("--rate-hz", type=float, default=None)
    parser.add_argument("--control", default="127.0.0.1:0",
                        help="HOST:PORT of the control channel (port 0: a free one)")
    args = parser.parse_args(argv)
    host, _, port = args.control.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--control {args.control!r} is not HOST:PORT")
    logging.basicConfig(
        level=os.environ.get("COMMANDPOST_LOG", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        inv = load_inventory(args.inventory)
        asyncio.run(run(inv, args.mqtt, args.ready_file, args.rate_hz, (host, int(port))))
    except CommandpostError as exc:
        print(f"simulators: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
