"""Run the field simulators of an inventory in one process.

    COMMANDPOST_MQTT_URL=mqtt://sim-mqtt:PW@127.0.0.1:1883 \\
        python -m devices.sim.runner --inventory city.toml --ready-file /tmp/sims.json

Modbus controllers (traffic, lighting, access terminals) listen on the ports
of their inventory endpoints, building management systems behind a few
aggregating OPC UA servers, and vehicles and cameras publish through the MQTT
broker. The control channel (:mod:`devices.sim.control`) listens on
``--control`` (default: a free loopback port). When every simulator is up,
the ready file receives ``{"control": URL, "simulators": [{"kind",
"endpoint", "devices"}, …]}`` (endpoints without their passwords); SIGTERM or
SIGINT stops them cleanly.

The broker URL comes from ``$COMMANDPOST_MQTT_URL`` (or ``--mqtt``, but a
command line is readable by every local user), the URL of the MQTT devices'
telemetry connection from ``$COMMANDPOST_MQTT_TELEMETRY_URL`` (else the same
URL): on a broker that allows one connection per account they are two accounts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, Protocol

from devices.profile import builtin_profile
from runtime.clock import Clock, ClockSpec
from runtime.errors import CommandpostError, ConfigError
from runtime.gcpolicy import settle
from runtime.inventory import Equipment, Inventory, load_inventory
from runtime.niceness import IDLE, check_realtime, enter_realtime, lower_priority

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


#: Families of simulators a runner can run: ``traffic`` is the traffic controllers (Modbus),
#: ``modbus`` the other Modbus devices (lighting cabinets, access terminals).
KINDS = ("modbus", "traffic", "opcua", "mqtt")
#: The families on the bus-priority path: never put in the background (``--background``).
LATENCY_KINDS = frozenset({"traffic"})
#: Families that get a runner process of their own when a runner runs several.
_OWN_PROCESS = ("mqtt", "traffic", "opcua")


#: The variables the broker URLs are read from (the runner passes them on to its children).
MQTT_URL_ENV = "COMMANDPOST_MQTT_URL"
MQTT_TELEMETRY_URL_ENV = "COMMANDPOST_MQTT_TELEMETRY_URL"


def build(
    inventory: Inventory,
    mqtt_url: str,
    *,
    telemetry_url: str | None = None,
    rate_hz: float | None = None,
    seed: int = 0,
    kinds: Sequence[str] = KINDS,
    clock: Clock | None = None,
) -> tuple[list[Simulator], list[dict[str, Any]]]:
    """The simulators of ``inventory`` of the families ``kinds`` (not started), described.

    The MQTT devices publish through ``mqtt_url``, their telemetry through
    ``telemetry_url`` when given (:class:`~devices.sim.mqtt_devices.MqttDeviceSimulator`).
    """
    import random

    from devices.mqtt import parse_url
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
        family = "traffic" if name == "traffic_controller" else "modbus"
        eqs = by_profile.get(name, []) if family in kinds else []
        if eqs:
            sims.append(cls(eqs, builtin_profile(name), clock=clock))
            info.append({"kind": name, "endpoint": ", ".join(_endpoints(eqs)), "devices": len(eqs)})
    bms = by_profile.get("bms", []) if "opcua" in kinds else []
    if bms:
        sims.append(BmsSimulator(bms, builtin_profile("bms"), rng=random.Random(seed),
                                 clock=clock))
        info.append({"kind": "bms", "endpoint": ", ".join(_endpoints(bms)), "devices": len(bms)})
    mqtt_eqs = [eq for p in ("bus", "service_vehicle", "camera") for eq in by_profile.get(p, [])
                if "mqtt" in kinds]
    if mqtt_eqs:
        sims.append(
            MqttDeviceSimulator(mqtt_eqs, url=mqtt_url, rng=random.Random(seed), rate_hz=rate_hz,
                                clock=clock, lines=inventory.bus_lines,
                                telemetry_url=telemetry_url)
        )
        info.append({"kind": "mqtt_devices", "endpoint": parse_url(mqtt_url).redacted,
                     "devices": len(mqtt_eqs)})
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
    kinds: Sequence[str] = KINDS,
    inventory_file: str = "",
    clock: ClockSpec | None = None,
    telemetry_url: str | None = None,
    background: bool = False,
    realtime: int = 0,
) -> None:
    """Run the simulators of ``kinds`` until SIGTERM or SIGINT.

    With ``background``, the processes whose families are all off the bus-priority
    path (every one but the traffic controllers') run only on a CPU nothing else
    wants (:mod:`runtime.niceness`): on a machine shared with the runtime, they
    stand for field devices with processors of their own. With ``realtime`` (1 to 99),
    the process of the traffic controllers runs in the real-time class at that priority,
    for the same reason: the controllers answer the bus-priority path.
    """
    from devices.sim.control import ControlServer, ControlTarget, RemoteTarget

    clock = clock or ClockSpec()

    # The MQTT devices publish thousands of samples a second, the traffic controllers
    # answer the bus-priority lane within milliseconds, and the buildings' OPC UA server
    # costs as much as every Modbus device together: each family gets a process (and a
    # core) of its own, so that none makes another late (a crisis's burst of lighting
    # writes behind the buildings' updates). The children's control channels are served
    # through this one.
    children: list[subprocess.Popen[bytes]] = []
    profiles = {eq.profile for eq in inventory.equipment}
    present = {"mqtt": any(eq.endpoint == "mqtt" for eq in inventory.equipment),
               "traffic": "traffic_controller" in profiles,
               "opcua": any(eq.endpoint.startswith("opcua") for eq in inventory.equipment)}
    split = [k for k in _OWN_PROCESS
             if k in kinds and len(kinds) > 1 and present[k] and bool(inventory_file)]
    local_kinds = [k for k in kinds if k not in split]
    sims, info = build(inventory, mqtt_url, telemetry_url=telemetry_url, rate_hz=rate_hz,
                       kinds=local_kinds, clock=clock.clock())
    targets: list[ControlTarget | RemoteTarget] = [
        s for s in sims if isinstance(s, ControlTarget)]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started: list[Simulator] = []
    channel: ControlServer | None = None
    try:
        for kind in split:
            child, child_doc = await asyncio.to_thread(
                _start_child, kind, inventory_file, (mqtt_url, telemetry_url), rate_hz,
                ready_file or "", clock, background=background, realtime=realtime)
            children.append(child)
            targets.append(RemoteTarget(child_doc["control"], "modbus" if kind == "traffic"
                                        else kind))
            info += child_doc["simulators"]
        # After the children: a thread keeps the policy it was forked with, and one
        # in the background cannot leave it again without privilege.
        if background and local_kinds and not LATENCY_KINDS & set(local_kinds):
            lower_priority(IDLE)
        if realtime and local_kinds and set(local_kinds) <= LATENCY_KINDS:
            enter_realtime(realtime)
        for sim in sims:
            await sim.start()
            started.append(sim)
        channel = ControlServer(targets, *control)
        await channel.start()
        settle("simulators " + ",".join(local_kinds))
        if ready_file:
            _write_ready(ready_file, {"control": channel.url, "simulators": info})
        log.info("simulators ready: %s", info)
        await stop.wait()
    finally:
        if channel is not None:
            await channel.stop()
        for sim in reversed(started):
            with contextlib.suppress(CommandpostError):
                await sim.stop()
        for child in reversed(children):
            await asyncio.to_thread(_stop_child, child)


def _start_child(kind: str, inventory_file: str, urls: tuple[str, str | None],
                 rate_hz: float | None, ready_file: str, clock: ClockSpec,
                 timeout: float = 60.0, *, background: bool = False, realtime: int = 0,
                 ) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """A runner of the family ``kind`` alone, tied to this process's life (blocking).

    The broker URLs ``(mqtt, telemetry)`` go through its environment, not its command line.
    """
    from runtime.lifeline import spawn_tied

    ready = f"{ready_file or os.path.join(os.path.dirname(inventory_file), 'sim')}.{kind}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(ready)
    argv = [sys.executable, "-m", "devices.sim.runner", "--inventory", inventory_file,
            "--ready-file", ready, "--kinds", kind]
    env = dict(os.environ)
    env[MQTT_URL_ENV] = urls[0]
    env.pop(MQTT_TELEMETRY_URL_ENV, None)
    if urls[1]:
        env[MQTT_TELEMETRY_URL_ENV] = urls[1]
    if rate_hz:
        argv += ["--rate-hz", str(rate_hz)]
    if not clock.real:
        argv += ["--clock", json.dumps(clock.to_wire())]
    if background:
        argv.append("--background")
    if realtime:
        argv += ["--realtime", str(realtime)]
    child = spawn_tied(argv, env=env)
    deadline = time.monotonic() + timeout
    while not os.path.exists(ready):
        if child.poll() is not None:
            raise ConfigError(f"the {kind} simulators exited with {child.returncode}")
        if time.monotonic() > deadline:
            _stop_child(child)
            raise ConfigError(f"the {kind} simulators did not start within {timeout:.0f}s")
        time.sleep(0.05)
    with open(ready, encoding="utf-8") as f:
        doc: dict[str, Any] = json.load(f)
    return child, doc


def _stop_child(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM (it announces its devices offline), then SIGKILL after 10 s (blocking)."""
    if child.poll() is None:
        child.terminate()
    try:
        child.wait(10.0)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devices.sim.runner")
    parser.add_argument("--inventory", required=True)
    parser.add_argument("--mqtt", default=os.environ.get(MQTT_URL_ENV),
                        help=f"the broker URL (default: ${MQTT_URL_ENV})")
    parser.add_argument("--ready-file")
    parser.add_argument("--rate-hz", type=float, default=None)
    parser.add_argument("--control", default="127.0.0.1:0",
                        help="HOST:PORT of the control channel (port 0: a free one)")
    parser.add_argument("--clock", default="",
                        help="the city's clock as JSON {speed, origin, start} (default: real)")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help="simulator families to run (comma-separated: modbus,opcua,mqtt)")
    parser.add_argument("--background", action="store_true",
                        help="the families off the bus-priority path run only on a CPU "
                             "nothing else wants (SCHED_IDLE)")
    parser.add_argument("--realtime", type=int, default=0, metavar="PRIORITY",
                        help="the traffic controllers run in the real-time class at this "
                             "priority (SCHED_RR, 1 to 99; default 0: off)")
    args = parser.parse_args(argv)
    if not args.mqtt:
        parser.error(f"the broker URL is needed: ${MQTT_URL_ENV} or --mqtt")
    host, _, port = args.control.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--control {args.control!r} is not HOST:PORT")
    logging.basicConfig(
        level=os.environ.get("COMMANDPOST_LOG", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        inv = load_inventory(args.inventory)
        kinds = [k for k in args.kinds.split(",") if k]
        if not kinds or any(k not in KINDS for k in kinds):
            parser.error(f"--kinds {args.kinds!r}: choose among {', '.join(KINDS)}")
        try:
            spec = ClockSpec.from_wire(json.loads(args.clock) if args.clock else None)
        except ValueError as exc:
            parser.error(f"--clock {args.clock!r}: {exc}")
        asyncio.run(run(inv, args.mqtt, args.ready_file, args.rate_hz, (host, int(port)),
                        kinds, args.inventory, spec,
                        os.environ.get(MQTT_TELEMETRY_URL_ENV) or None, args.background,
                        check_realtime(args.realtime)))
    except CommandpostError as exc:
        print(f"simulators: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
