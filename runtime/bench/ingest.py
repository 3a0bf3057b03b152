"""``commandpost bench ingest``: telemetry counted at both ends, and the MQTT capacity.

Nominal load (the default): the city as ``make demo`` runs it, with every
MQTT device at ``rate_hz`` (5 Hz: 3,270 messages/s at scale 1.0) and the
Modbus and OPC UA devices at their profiles' rates. The window is framed by
the simulators' control channel: the sources are held and drained for
``drain_s`` before the first snapshot and after the last, so every sample
numbered in the window has had the time to arrive. Per device, ``emitted``
is what the simulator counted, ``applied`` what the entity applied, and
``lost`` their difference (:mod:`runtime.bench.counting`). A data point is
one value a message carried (``seq`` and ``ts`` are not values). Lag is the
device's timestamp to the value applied in the entity (host histograms).

``--capacity``: the city at its profiles' rates, plus MQTT load from a lean
generator (:mod:`devices.sim.loadgen`, its own process) in steps of
``step_s`` seconds after a warm-up, until a step fails. A step passes when
``lost`` = 0, the generator offered ≥ 98 % of the step's rate and the MQTT lag
p99 ≤ 1 s; ``mqtt_msgs_per_s_city_held`` counts only the passing steps where
the Modbus devices also kept 95 % of their sample rate (a saturated machine
polls less often, which would flatter the figure). The marginal CPU per MQTT
message is (runtime CPU at the step - runtime CPU of the same city with no
extra load) ÷ extra messages offered in the window, and the same for the
hosts that own the MQTT devices alone.
The generator's and the broker's CPU are reported apart. When a step fails
because the generator could not offer it, the generator is run alone against
the broker (runtime stopped) at that rate: only if it cannot offer it there
either is the answer ``generator``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import ray

from runtime.bench.common import City, CpuMeter, Say, hosts_of, machine, pss_of
from runtime.bench.counting import Tally, tally
from runtime.inventory import Equipment
from runtime.metrics import Histogram
from runtime.placement import equipment_to_wire

DRAIN_S = 2.0
#: The load generator's broker account.
LOADGEN_ACCOUNT = "loadgen"
PASS_LAG_P99_S = 1.0
PASS_OFFERED = 0.98
CITY_HELD = 0.95
CAPACITY_STEPS = (2_000, 3_000, 4_000, 5_000, 6_000, 7_000, 8_000, 9_000, 10_000, 12_000,
                  14_000, 16_000, 20_000)


# -- snapshots --------------------------------------------------------------
def entity_counts(city: City) -> dict[str, dict[str, Any]]:
    """``{"samples", "points"}`` of every entity, from every host."""
    svc = city.svc
    refs = [svc.host_handle(h.host_id).state_fields.remote(["samples", "points"])
            for h in svc.plan.hosts]
    out: dict[str, dict[str, Any]] = {}
    for part in ray.get(refs, timeout=60):
        out.update(part)
    return out


def lag_histograms(city: City) -> dict[str, Histogram]:
    """Every host's lag histograms, merged per protocol."""
    svc = city.svc
    refs = [svc.host_handle(h.host_id).status.remote() for h in svc.plan.hosts]
    merged: dict[str, Histogram] = {}
    for status in ray.get(refs, timeout=60):
        for name, d in (status.get("metrics") or {}).items():
            if not name.startswith("telemetry_lag_s."):
                continue
            proto = name.split(".", 1)[1]
            merged.setdefault(proto, Histogram()).merge(Histogram.from_dict(d))
    return merged


def lag_delta(before: dict[str, Histogram], after: dict[str, Histogram]) -> dict[str, Histogram]:
    return {p: h.minus(before[p]) if p in before else h for p, h in after.items()}


def lag_ms(h: Histogram | None) -> dict[str, float | None]:
    if h is None or h.count == 0:
        return {"p50": None, "p99": None, "max": None}
    return {"p50": round(h.quantile(0.5) * 1000, 1), "p99": round(h.quantile(0.99) * 1000, 1),
            "max": round(h.max * 1000, 1)}


class _Snapshot:
    def __init__(self, city: City, extra: dict[str, Any] | None = None) -> None:
        self.source = city.control.counters()["devices"]
        self.sink = entity_counts(city)
        self.lag = lag_histograms(city)
        self.extra = extra or {}


def _held_snapshot(city: City, protocols: list[str] | None = None,
                   generator: GeneratorProcess | None = None) -> _Snapshot:
    """Hold the sources, let what they sent arrive, snapshot both ends."""
    city.control.hold(True, protocols)
    if generator is not None:
        generator.rate(0)
    time.sleep(DRAIN_S)
    return _Snapshot(city, generator.report() if generator is not None else None)


def _summary(t: Tally, window_s: float) -> dict[str, Any]:
    by = {p: {"emitted": x.emitted, "applied": x.applied, "lost": x.lost,
              "points": x.points, "points_emitted": x.points_emitted,
              "duplicates": x.duplicates, "dropped": x.dropped, "skipped_late": x.late,
              "numbering_errors": x.numbering_errors, "devices": x.devices,
              "lossy_devices": sorted(x.lossy_devices)[:10]}
          for p, x in sorted(t.by_protocol.items())}
    return {"by_protocol": by, "emitted": t.total("emitted"), "applied": t.total("applied"),
            "lost": t.total("lost"), "skipped_late": t.total("late"),
            "points_per_s": round(t.total("points") / window_s) if window_s else 0}


# -- nominal load -------------------------------------------------------------
def nominal(*, scale: float = 1.0, say: Say = print, seconds: float = 60.0,
            rate_hz: float = 5.0, broker: str = "auto", warmup_s: float = 10.0,
            loss: float = 0.0, **_: Any) -> dict[str, Any]:
    """Every protocol at nominal load, counted at both ends (see the module docstring)."""
    with City(scale=scale, say=say, broker=broker, sim_rate_hz=rate_hz) as city:
        time.sleep(warmup_s)  # past the start-up burst
        return measure_nominal(city, seconds=seconds, rate_hz=rate_hz, loss=loss, say=say)


def measure_nominal(city: City, *, seconds: float, rate_hz: float, loss: float = 0.0,
                    say: Say = print) -> dict[str, Any]:
    """One held-and-drained window of a running city (its MQTT devices at ``rate_hz``)."""
    n_mqtt = sum(1 for eq in city.inventory.equipment if eq.endpoint == "mqtt")
    city.control.loss(loss)
    before = _held_snapshot(city)
    meter = CpuMeter(city.process_groups())
    city.control.hold(False)
    meter.start()
    time.sleep(seconds)
    city.control.hold(True)
    cores = meter.stop()
    window = meter.window_s
    after = _held_snapshot(city)
    city.control.hold(False)
    city.control.loss(0.0)
    memory = pss_of(city.process_groups())
    t = tally(before.source, after.source, before.sink, after.sink)
    lag = lag_delta(before.lag, after.lag)
    all_lag = Histogram()
    for h in lag.values():
        all_lag.merge(h)
    mqtt = t.by_protocol.get("mqtt")
    offered = mqtt.emitted / window if mqtt else 0.0
    applied_msgs = mqtt.applied / window if mqtt else 0.0
    out: dict[str, Any] = {
        "scale": city.scale, "window_s": round(window, 1),
        "configured_msgs_per_s": round(n_mqtt * rate_hz, 1),
        "offered_msgs_per_s": round(offered, 1),
        "applied_msgs_per_s": round(applied_msgs, 1),
        **_summary(t, window),
        "lag_ms": lag_ms(all_lag),
        "lag_ms_by_protocol": {p: lag_ms(h) for p, h in sorted(lag.items())},
        "runtime_cpu": round(cores["runtime"], 2),
        "runtime_cpu_us_per_msg": (round(cores["runtime"] * window / t.total("applied") * 1e6, 1)
                                   if t.total("applied") else None),
        "broker_cpu": round(cores["broker"], 2),
        "simulator_cpu": round(cores["simulator"], 2),
        "memory_mb": round(memory, 1),
        "mqtt_rate_hz": rate_hz, "loss_injected": loss,
        "broker": city.broker_kind, "machine": machine(), "left_out": list(city.left_out),
    }
    say(f"ingest: {json.dumps(out['by_protocol'])}")
    return out


# -- capacity -----------------------------------------------------------------
class GeneratorProcess:
    """The load generator process (:mod:`devices.sim.loadgen`), driven over its standard
    input: it publishes as ``equipment`` (every MQTT device of the city unless given),
    through a broker account of its own (:meth:`City.publisher_url`)."""

    def __init__(self, city: City, workdir: Path,
                 equipment: Sequence[Equipment] | None = None) -> None:
        chosen = (equipment if equipment is not None
                  else [eq for eq in city.inventory.equipment if eq.endpoint == "mqtt"])
        rows = [equipment_to_wire(eq) for eq in chosen]
        path = workdir / "loadgen-devices.json"
        path.write_text(json.dumps(rows), encoding="utf-8")
        self.devices = len(rows)
        # The URL carries the account's password: the environment, not the command line.
        env = dict(os.environ, COMMANDPOST_MQTT_URL=city.publisher_url(LOADGEN_ACCOUNT, chosen))
        # In the background with the simulators off the priority path, when they are.
        background = ["--background"] if city.sim_background else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devices.sim.loadgen", "--devices", str(path),
             *background],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        ready = self._read()
        if not ready.get("ready"):
            raise RuntimeError(f"load generator did not start: {ready}")
        self.pid = self.proc.pid

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator exited with {self.proc.wait(5)}")
        out: dict[str, Any] = json.loads(line)
        return out

    def _ask(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def rate(self, rate: float) -> None:
        self._ask({"rate": rate})

    def report(self) -> dict[str, Any]:
        return self._ask({"report": True})

    def stop(self) -> None:
        try:
            self._ask({"stop": True})
        except (OSError, RuntimeError, ValueError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _cpu_s(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


def capacity_steps(*, scale: float = 1.0, say: Say = print, broker: str = "auto",
                   step_s: float = 20.0, warmup_s: float = 5.0,
                   steps: tuple[int, ...] = CAPACITY_STEPS, **_: Any) -> dict[str, Any]:
    """Step extra MQTT load up until a step fails (see the module docstring)."""
    with City(scale=scale, say=say, broker=broker) as city:
        time.sleep(10.0)  # past the start-up burst
        out = measure_capacity(city, say=say, step_s=step_s, warmup_s=warmup_s, steps=steps)
    failed = next((r for r in out["capacity"]["steps"] if not r["passed"]), None)
    if failed is not None:
        out["capacity"]["limited_by"] = _limit(failed, say, broker)
    return out


def measure_capacity(city: City, *, say: Say = print, step_s: float = 20.0,
                     warmup_s: float = 5.0, steps: tuple[int, ...] = CAPACITY_STEPS,
                     loss: float = 0.0) -> dict[str, Any]:
    """The capacity steps on a running city; ``limited_by`` is left to the caller."""
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cp-capacity-") as tmp:
        gen = GeneratorProcess(city, Path(tmp))
        try:
            groups = city.process_groups()
            groups["runtime"] -= {gen.pid}
            # The hosts that own the MQTT devices: their share of the cost, apart.
            mqtt = {eq.id for eq in city.inventory.equipment if eq.endpoint == "mqtt"}
            owners = {h.host_id for h in city.svc.plan.hosts if mqtt.intersection(h.entity_ids)}
            groups["mqtt_hosts"] = {int(n["pid"]) for n in hosts_of(city.svc.tree())
                                    if n.get("id") in owners and n.get("pid")}
            city.control.loss(loss)
            # The same city with no extra load: the baseline of the marginal cost.
            base = _step(city, gen, groups, 0, step_s, warmup_s)
            say(f"baseline: runtime {base['runtime_cpu']:.2f} cores, "
                f"{base['applied_msgs_per_s']:.0f} MQTT msgs/s applied")
            for rate in steps:
                r = _step(city, gen, groups, rate, step_s, warmup_s)
                # The extra messages are the generator's, offered in the CPU window.
                extra = r["offered"]
                r["marginal_us_per_msg"] = (
                    round((r["runtime_cpu"] - base["runtime_cpu"]) / extra * 1e6, 1)
                    if extra > 0 else None)
                r["marginal_us_per_msg_mqtt_hosts"] = (
                    round((r["mqtt_hosts_cpu"] - base["mqtt_hosts_cpu"]) / extra * 1e6, 1)
                    if extra > 0 else None)
                results.append(r)
                # The rest of the city must keep its pace: a saturated machine polls
                # its Modbus devices less often, which would flatter the step.
                r["city_rates_held"] = (r["modbus_samples_per_s"]
                                        >= CITY_HELD * base["modbus_samples_per_s"])
                say(f"step {rate}/s: offered {r['offered']:.0f}, applied {r['applied']}, "
                    f"lost {r['lost']}, lag p99 {r['lag_p99_ms']} ms, runtime "
                    f"{r['runtime_cpu']:.2f} cores, marginal {r['marginal_us_per_msg']} µs, "
                    f"{'pass' if r['passed'] else 'FAIL'}")
                if not r["passed"]:
                    break
        finally:
            gen.stop()
            city.control.loss(0.0)
    passing = [r for r in results if r["passed"]]
    best = passing[-1] if passing else None
    held = [r for r in passing if r["city_rates_held"]]
    best_held = held[-1] if held else None
    return {
        "scale": city.scale,
        "capacity": {
            "mqtt_msgs_per_s": round(best["applied_msgs_per_s"]) if best else 0,
            "generator_msgs_per_s": best["rate"] if best else 0,
            "points_per_s": best["points_per_s"] if best else 0,
            "lag_p99_ms": best["lag_p99_ms"] if best else None,
            "marginal_us_per_msg": best["marginal_us_per_msg"] if best else None,
            "limited_by": "none",
            # The same, counting only steps where the Modbus devices kept 95 % of their
            # sample rate: what the runtime takes without slowing the rest of the city.
            "mqtt_msgs_per_s_city_held": (round(best_held["applied_msgs_per_s"])
                                          if best_held else 0),
            "marginal_us_per_msg_mqtt_hosts": (best["marginal_us_per_msg_mqtt_hosts"]
                                               if best else None),
            "baseline": base,
            "steps": results,
        },
        "broker": city.broker_kind, "machine": machine(), "left_out": list(city.left_out),
    }


def _step(city: City, gen: GeneratorProcess, groups: dict[str, set[int]], rate: int,
          step_s: float, warmup_s: float) -> dict[str, Any]:
    before = _held_snapshot(city, None, gen)
    city.control.hold(False)
    gen.rate(rate)
    time.sleep(warmup_s)
    lag0 = lag_histograms(city)
    meter = CpuMeter(groups)
    g0 = _cpu_s(gen.pid)
    meter.start()
    r0 = gen.report()
    time.sleep(step_s)
    r1 = gen.report()
    cores = meter.stop()
    window = meter.window_s
    gen_cpu = (_cpu_s(gen.pid) - g0) / window
    after = _held_snapshot(city, None, gen)
    city.control.hold(False)
    t = tally(before.source, after.source, before.sink, after.sink,
              extra_sources=[(before.extra.get("devices", {}), after.extra.get("devices", {}))])
    lag = lag_delta(lag0, after.lag).get("mqtt")
    gen_in_window = (sum(d["emitted"] for d in r1["devices"].values())
                     - sum(d["emitted"] for d in r0["devices"].values()))
    offered_gen = gen_in_window / window
    mqtt = t.by_protocol.get("mqtt")
    lag_p99 = lag.quantile(0.99) if lag is not None and lag.count else None
    applied_msgs = (mqtt.applied if mqtt else 0)
    # The whole step (warm-up and drain included) is what was emitted and applied.
    span = window + warmup_s
    passed = (t.total("lost") == 0 and (rate == 0 or offered_gen >= PASS_OFFERED * rate)
              and lag_p99 is not None and lag_p99 <= PASS_LAG_P99_S)
    return {
        "rate": rate, "offered": round(offered_gen, 1),
        "applied": applied_msgs, "applied_msgs_per_s": round(applied_msgs / span, 1),
        "lost": t.total("lost"), "duplicates": t.total("duplicates"),
        "lost_by_protocol": {p: x.lost for p, x in sorted(t.by_protocol.items())},
        "generator_skipped": int(after.extra.get("skipped", 0)) - int(
            before.extra.get("skipped", 0)),
        "points_per_s": round(t.total("points") / span),
        "lag_p99_ms": round(lag_p99 * 1000, 1) if lag_p99 is not None else None,
        "runtime_cpu": round(cores["runtime"], 3), "broker_cpu": round(cores["broker"], 3),
        "simulator_cpu": round(cores["simulator"], 3), "generator_cpu": round(gen_cpu, 3),
        "mqtt_hosts_cpu": round(cores.get("mqtt_hosts", 0.0), 3),
        # Everything on the machine this bench started: 2.0 means both cores are busy.
        "machine_cpu": round(cores["runtime"] + cores["broker"] + cores["simulator"]
                             + gen_cpu, 3),
        # Modbus samples applied: a saturated machine polls less, which flatters the margin.
        "modbus_samples_per_s": round(
            (t.by_protocol["modbus"].applied if "modbus" in t.by_protocol else 0) / span, 1),
        "passed": passed,
    }


def _limit(failed: dict[str, Any], say: Say, broker: str) -> str:
    """What stopped the failed step: the generator only if it cannot offer the rate alone."""
    rate = failed["rate"]
    if failed["offered"] >= PASS_OFFERED * rate:
        return "broker" if failed["broker_cpu"] >= 0.9 else "runtime"
    alone = generator_alone(rate, broker=broker)
    say(f"generator alone at {rate}/s (runtime stopped): offered {alone:.0f}/s")
    if alone >= PASS_OFFERED * rate:
        return "runtime"  # it can offer it when the runtime is not competing for the cores
    return "generator"


def generator_alone(rate: int, *, broker: str = "auto", seconds: float = 10.0) -> float:
    """Messages/s the generator offers at ``rate`` with no runtime, counted by the generator."""
    from runtime.demo_inventory import build_demo
    from runtime.embedded import EmbeddedBroker

    inv = build_demo(1.0)
    with tempfile.TemporaryDirectory(prefix="cp-genalone-") as tmp:
        b = EmbeddedBroker(Path(tmp) / "mqtt", prefer=broker)
        b.start()
        try:
            fake = _FakeCity(inv, b)
            gen = GeneratorProcess(fake, Path(tmp))  # type: ignore[arg-type]
            try:
                gen.rate(rate)
                time.sleep(2.0)
                r0 = gen.report()
                t0 = time.monotonic()
                time.sleep(seconds)
                r1 = gen.report()
                dt = time.monotonic() - t0
            finally:
                gen.stop()
        finally:
            b.stop()
    sent = (sum(int(d["emitted"]) for d in r1["devices"].values())
            - sum(int(d["emitted"]) for d in r0["devices"].values()))
    return sent / dt


class _FakeCity:
    """What :class:`GeneratorProcess` reads of a city: its inventory and a broker account."""

    def __init__(self, inventory: Any, broker: Any) -> None:
        self.inventory = inventory
        self._broker = broker

    def publisher_url(self, name: str, equipment: Sequence[Equipment]) -> str:
        return str(self._broker.add_simulator(name, equipment))


def run(*, capacity: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Nominal load; with ``capacity`` the capacity steps too (see the module docstring)."""
    out = nominal(**kwargs)
    if capacity:
        steps = capacity_steps(**kwargs)
        out["capacity"] = steps["capacity"]
        out["left_out"] = sorted(set(out["left_out"]) | set(steps["left_out"]))
    return out
