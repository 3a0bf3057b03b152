"""A lean MQTT load generator: the devices' telemetry at a chosen rate, counted at the source.

    COMMANDPOST_MQTT_URL=mqtt://user:pw@127.0.0.1:1883 \\
        python -m devices.sim.loadgen --devices devices.json

``devices.json`` lists ``{"id", "municipality", "kind", "profile"}`` of MQTT
devices; each message is one device's sample in its profile's shape (taken
from the simulator's model of the device), on its telemetry topic, with its
own ``seq`` (numbered from :data:`SEQ_BASE`, so it never collides with the
simulator's) and ``ts``. The generator is driven by JSON lines on its
standard input and answers on its standard output:

==========================  ===================================================
``{"rate": 8000}``          messages per second in all, spread over the devices
                            round-robin (0 pauses); answers ``{"rate": …}``
``{"report": true}``        ``{"devices": {id: counters}, "cpu_s", "skipped"}``
``{"stop": true}``          disconnect and exit
==========================  ===================================================

It prints ``{"ready": true}`` once connected. Counters per device are those
of :class:`devices.sim.control.DeviceCounters`; ``skipped`` counts messages a
generator that fell more than 200 ms behind did not send (never sent, never
counted as emitted).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, Final

from devices.mqtt import encode_payload, parse_url, topic
from devices.mqtt_wire import connect_packet, publish_packet
from devices.profile import builtin_profile
from devices.sim.control import DeviceCounters
from devices.sim.mqtt_devices import MqttDeviceSimulator
from runtime.errors import CommandpostError, ConfigError, DeviceUnavailableError
from runtime.inventory import Equipment

__all__ = ["MQTT_URL_ENV", "SEQ_BASE", "LoadGenerator"]

#: The variable the broker URL is read from when ``--mqtt`` is not given.
MQTT_URL_ENV: Final = "COMMANDPOST_MQTT_URL"

#: First ``seq`` of the generator's samples: far above what a simulated device reaches.
SEQ_BASE: Final = 1_000_000_000
_TICK_S: Final = 0.002
_MAX_BEHIND_S: Final = 0.2


class _Source:
    __slots__ = ("counters", "id", "points", "sample", "seq", "topic")

    def __init__(self, device_id: str, topic_name: str, sample: dict[str, Any],
                 profile: str) -> None:
        self.id = device_id
        self.topic = topic_name.encode("utf-8")
        self.sample = sample
        self.seq = SEQ_BASE
        self.points = len(sample) - 2  # seq and ts carry no value
        self.counters = DeviceCounters("mqtt", profile)


class LoadGenerator:
    """Publishes the devices' samples at :attr:`rate` messages per second in all.

    It speaks just enough MQTT 3.1.1 (CONNECT, QoS 0 PUBLISH) over one TCP
    connection to cost a few microseconds a message, so that what a bench
    measures is the runtime, not the generator.
    """

    def __init__(self, equipment: Sequence[Equipment], url: str, client_id: str) -> None:
        sim = MqttDeviceSimulator(equipment, url=url, rng=random.Random(1))
        self._sources: list[_Source] = []
        for eq in equipment:
            if eq.id not in sim.devices:
                raise ConfigError(f"{eq.id}: profile {eq.profile!r} is not an MQTT profile")
            self._sources.append(_Source(eq.id, topic(eq.municipality, eq.kind, eq.id,
                                                      "telemetry"), sim.sample(eq.id), eq.profile))
        if not self._sources:
            raise ConfigError("the load generator needs at least one MQTT device")
        self._url = parse_url(url)
        self._tls = self._url.ssl_context()
        self._address = (self._url.host, self._url.port)
        self._client_id = client_id
        self._sock: socket.socket | None = None
        self.rate = 0.0
        self.skipped = 0
        self._next = 0
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._stopping = threading.Event()

    def connect(self, timeout: float = 10.0) -> None:
        """Open the connection; :class:`DeviceUnavailableError` if the broker refuses."""
        try:
            sock = socket.create_connection(self._address, timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self._url.host)
            sock.sendall(connect_packet(self._client_id, username=self._url.username,
                                        password=self._url.password))
            ack = sock.recv(4)
        except OSError as exc:
            raise DeviceUnavailableError(f"loadgen: broker {self._address}: {exc}") from exc
        if len(ack) < 4 or ack[0] != 0x20 or ack[3] != 0:
            sock.close()
            raise DeviceUnavailableError(f"loadgen: broker refused the connection ({ack!r})")
        self._sock = sock

    def close(self) -> None:
        self._stopping.set()
        self._changed.set()
        if self._sock is not None:
            try:
                self._sock.sendall(b"\xe0\x00")  # DISCONNECT
            except OSError:
                pass
            self._sock.close()

    def set_rate(self, rate: float) -> None:
        if not rate >= 0:
            raise ConfigError(f"rate must be >= 0, not {rate!r}")
        self.rate = float(rate)
        self._changed.set()

    def report(self) -> dict[str, Any]:
        t = os.times()
        with self._lock:
            devices = {s.id: s.counters.to_json() for s in self._sources}
        return {"devices": devices, "cpu_s": t.user + t.system, "skipped": self.skipped}

    def run(self) -> None:
        """Publish at :attr:`rate` until :meth:`close` (call from a thread of its own)."""
        while not self._stopping.is_set():
            if self.rate <= 0:
                self._changed.wait()
            self._changed.clear()
            rate = self.rate
            t0 = time.monotonic()
            sent = 0
            while not self._changed.is_set() and rate > 0:
                due = int((time.monotonic() - t0) * rate) - sent
                if due > rate * _MAX_BEHIND_S:
                    # Fell behind (the machine is busy): skip rather than burst.
                    skip = due - int(rate * _TICK_S) - 1
                    self.skipped += skip
                    sent += skip
                    due -= skip
                if due > 0:
                    self._send(due)
                    sent += due
                time.sleep(_TICK_S)

    def _send(self, n: int) -> None:
        sock = self._sock
        if sock is None:
            raise DeviceUnavailableError("loadgen: not connected")
        buf = bytearray()
        sources = self._sources
        count = len(sources)
        with self._lock:
            batch = []
            for _ in range(n):
                src = sources[self._next]
                self._next = (self._next + 1) % count
                src.seq += 1
                sample = src.sample
                sample["seq"] = src.seq
                sample["ts"] = time.time()
                buf += publish_packet(src.topic, encode_payload(sample))
                batch.append(src)
            try:
                sock.sendall(buf)
            except OSError:
                for src in batch:
                    src.counters.sample(src.seq, src.points)
                    src.counters.dropped += 1
                raise
            for src in batch:
                src.counters.sample(src.seq, src.points)


def _serve(gen: LoadGenerator) -> None:
    gen.connect()
    worker = threading.Thread(target=gen.run, name="loadgen.publish", daemon=True)
    worker.start()

    def say(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    say({"ready": True})
    try:
        for line in sys.stdin:  # EOF: our parent closed the pipe (or died): stop
            try:
                cmd = json.loads(line)
            except ValueError:
                say({"error": "not JSON"})
                continue
            if not isinstance(cmd, dict):
                say({"error": "not an object"})
            elif cmd.get("stop"):
                break
            elif "rate" in cmd:
                try:
                    gen.set_rate(float(cmd["rate"]))
                    say({"rate": gen.rate})
                except (ConfigError, TypeError, ValueError) as exc:
                    say({"error": str(exc)})
            elif cmd.get("report"):
                say(gen.report())
            else:
                say({"error": "unknown command"})
    finally:
        gen.close()
        worker.join(timeout=5)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devices.sim.loadgen")
    parser.add_argument("--mqtt", default=os.environ.get(MQTT_URL_ENV),
                        help=f"the broker URL (default: ${MQTT_URL_ENV}, where a URL with a "
                        "password belongs: a command line is readable by every local user)")
    parser.add_argument("--devices", required=True, help="JSON list of MQTT devices")
    parser.add_argument("--client-id", default=f"loadgen-{os.getpid()}")
    parser.add_argument("--background", action="store_true",
                        help="run in Linux's SCHED_IDLE class, as the simulators of the "
                        "families off the bus-priority path may (runtime.niceness): the "
                        "devices it speaks for have processors of their own")
    args = parser.parse_args(argv)
    if not args.mqtt:
        parser.error(f"the broker URL is needed: --mqtt or ${MQTT_URL_ENV}")
    if args.background:
        from runtime.niceness import IDLE, lower_priority

        lower_priority(IDLE)
    try:
        with open(args.devices, encoding="utf-8") as f:
            rows = json.load(f)
        equipment = [Equipment(id=r["id"], kind=r["kind"], municipality=r["municipality"],
                               lat=float(r.get("lat", 47.32)), lon=float(r.get("lon", 5.04)),
                               endpoint="mqtt", profile=r["profile"],
                               attrs=dict(r.get("attrs") or {})) for r in rows]
        for eq in equipment:
            builtin_profile(eq.profile)
        gen = LoadGenerator(equipment, args.mqtt, args.client_id)
        _serve(gen)
    except (CommandpostError, OSError, KeyError, ValueError) as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
