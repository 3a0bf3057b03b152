"""Equipment behaviour: reconciliation and commands write only what the device does not hold.

The entity tests run on a fake device port that keeps a cabinet's lamps and
counts writes the way the simulators do (a write of a value the lamp already
holds is a repeat, i.e. a double actuation). The last tests run the real
device manager against the real lighting simulator over Modbus TCP, without Ray.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

import pytest

from actors.camera import Camera
from actors.equipment import EquipmentEntity, Field
from actors.lighting import LightingCircuit, lamp_holds, lamp_writes
from runtime.clock import SystemClock
from runtime.entity import Checkpoint
from runtime.envelope import Envelope, MessageKind
from runtime.errors import DeviceUnavailableError, RejectedError
from runtime.inventory import Equipment
from tests.helpers import FakeContext, make_equipment

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 30.0)

    return asyncio.run(bounded())


class FakeCabinet:
    """A lighting cabinet's lamps behind a device port, counting writes like the simulator."""

    def __init__(self, lamps: int = 4, dim: int = 100, *, reachable: bool = True,
                 broadcast: bool = False) -> None:
        self.broadcast = broadcast
        self.lamps = [{"on": True, "dim": dim, "power_w": 10.0, "energy_wh": 0, "fault_bits": 0}
                      for _ in range(lamps)]
        # As right after a host starts: not read yet, so not online until the first verdict.
        self._online = False
        self.reachable = reachable
        self.settles = 0
        self.reads = 0
        self.writes: list[tuple[str, Any]] = []
        self.repeats = 0

    @property
    def online(self) -> bool:
        return self._online

    def policy(self, field: str) -> str | None:
        names = ("on", "dim", "broadcast_on", "broadcast_dim") if self.broadcast else ("on", "dim")
        return "reapply" if field in names else None

    async def settled(self) -> bool:
        self.settles += 1
        self._online = self.reachable
        return self._online

    async def read(self) -> Mapping[str, Any]:
        if not self.reachable:
            raise DeviceUnavailableError("cabinet unreachable")
        self.reads += 1
        self._online = True  # a reading is a verdict too
        return {"mains_ok": True, "seq": self.reads, "lamp": [dict(x) for x in self.lamps]}

    async def write(self, fields: Mapping[str, Any], *, command_id: str) -> Mapping[str, Any]:
        for key, value in fields.items():
            if self.broadcast and key.startswith("broadcast_"):
                name = key.removeprefix("broadcast_")
                held = round(float(value)) if name == "dim" else value
                for lamp in self.lamps:
                    self.repeats += lamp[name] == held
                    lamp[name] = held
                self.writes.append((key, value))
                continue
            block, n, name = key.split(".")
            assert block == "lamp", f"a circuit writes lamps, not {key}"
            lamp = self.lamps[int(n) - 1]
            held = round(float(value)) if name == "dim" else value
            if lamp[name] == held:
                self.repeats += 1
            lamp[name] = held
            self.writes.append((key, value))
        return dict(fields)

    def reported(self) -> dict[str, Any]:
        """The twin's ``lamp`` entry as a telemetry sample would leave it."""
        return {"value": [dict(x) for x in self.lamps], "quality": "good", "source_ts": 1.0,
                "received_ts": 1.0, "seq": 1}


def lighting_equipment() -> Equipment:
    return make_equipment("lc-dijon-0001", "lighting_circuit", profile="lighting_cabinet",
                          endpoint="modbus://127.0.0.1:15030/1", attrs={"points": 4})


def circuit(cabinet: FakeCabinet, saved: Checkpoint | None) -> tuple[LightingCircuit, FakeContext]:
    ctx = FakeContext(lighting_equipment(), cabinet, SystemClock())
    entity = LightingCircuit(ctx)
    run(entity.on_start(saved))
    return entity, ctx


def checkpoint(desired: dict[str, Any], reported: dict[str, Any] | None = None,
               applied: tuple[str, ...] = ()) -> Checkpoint:
    return Checkpoint(state={"online": True, "seq": 1},
                      twin={"reported": {"lamp": reported} if reported else {},
                            "desired": desired},
                      applied=applied, version=3)


def online(entity: LightingCircuit, cabinet: FakeCabinet) -> None:
    """The session reached the cabinet: the port flips, then the entity hears of it."""
    run(cabinet.settled())
    run(entity.handle(Envelope(target=entity.ctx.id, type="device_status",
                               payload={"online": True}, kind=MessageKind.EVENT)))


def command(entity: LightingCircuit, cid: str, **params: Any) -> Any:
    return run(entity.handle(Envelope(
        id=cid, target=entity.ctx.id, type="command", sender="journal", kind=MessageKind.COMMAND,
        payload={"command_id": cid, "action": "set", "params": params})))


# -- what a lamp holds -------------------------------------------------------------


def test_lamp_holds_compares_as_the_cabinet_stores() -> None:
    lamp = {"on": True, "dim": 40}
    assert lamp_holds(lamp, "dim", 40.0) and lamp_holds(lamp, "dim", 40.4)
    assert not lamp_holds(lamp, "dim", 41.0) and not lamp_holds({"on": True}, "dim", 40.0)
    assert not lamp_holds({"dim": True}, "dim", 1.0)  # a bool is not a level
    assert lamp_holds(lamp, "on", True) and not lamp_holds(lamp, "on", False)


def test_lamp_writes_names_only_the_lamps_that_differ() -> None:
    lamps = [{"on": True, "dim": 40}, {"on": False, "dim": 70}, {"on": True, "dim": 40}]
    assert lamp_writes({"dim": 40.0}, lamps) == {"lamp.2.dim": 40.0}
    assert lamp_writes({"dim": 40.0, "on": True}, lamps) == {"lamp.2.on": True,
                                                             "lamp.2.dim": 40.0}
    assert lamp_writes({"dim": 40.0}, lamps[:1]) == {}


def test_lamp_writes_broadcast_only_what_no_lamp_holds() -> None:
    lamps = [{"on": True, "dim": 40}, {"on": True, "dim": 70}]
    # No lamp holds 100: one broadcast; lamp 1 holds 40: lamp 2 alone.
    assert lamp_writes({"dim": 100.0}, lamps, broadcast={"dim", "on"}) == {"broadcast_dim": 100.0}
    assert lamp_writes({"dim": 40.0, "on": False}, lamps, broadcast={"dim", "on"}) == {
        "lamp.2.dim": 40.0, "broadcast_on": False}
    # A cabinet without the broadcast register, or of one lamp: lamp by lamp.
    assert lamp_writes({"dim": 100.0}, lamps) == {"lamp.1.dim": 100.0, "lamp.2.dim": 100.0}
    assert lamp_writes({"dim": 100.0}, lamps[:1], broadcast={"dim"}) == {"lamp.1.dim": 100.0}


# -- reconcile -------------------------------------------------------------------


def test_restart_of_a_commanded_circuit_writes_nothing_the_lamps_hold() -> None:
    cabinet = FakeCabinet(dim=40)
    entity, ctx = circuit(cabinet, checkpoint({"dim": 40.0, "on": True}, cabinet.reported()))
    assert entity.pending_setpoints() == {}
    online(entity, cabinet)
    assert cabinet.writes == [] and cabinet.repeats == 0
    assert cabinet.reads == 0  # nothing pending: the cabinet is not even asked
    assert not [e for e in ctx.events if e[1].get("alarm") == "reconcile_failed"]


def test_reconcile_rewrites_only_the_lamps_that_differ() -> None:
    cabinet = FakeCabinet(dim=40)
    cabinet.lamps[2]["dim"] = 70  # one lamp lost its level while the host was away
    entity, _ = circuit(cabinet, checkpoint({"dim": 40.0}, cabinet.reported()))
    assert entity.pending_setpoints() == {"dim": 40.0}
    online(entity, cabinet)
    assert cabinet.writes == [("lamp.3.dim", 40.0)]
    assert cabinet.repeats == 0
    assert {lamp["dim"] for lamp in cabinet.lamps} == {40}


def test_reconcile_asks_the_cabinet_when_the_twin_is_older_than_the_lamps() -> None:
    # The checkpoint's reading predates a write the previous incarnation made:
    # the twin says 70, the lamps already hold 40. Nothing may be written again.
    cabinet = FakeCabinet(dim=70)
    stale = cabinet.reported()
    for lamp in cabinet.lamps:
        lamp["dim"] = 40
    entity, _ = circuit(cabinet, checkpoint({"dim": 40.0}, stale))
    assert entity.pending_setpoints() == {"dim": 40.0}
    online(entity, cabinet)
    assert cabinet.reads == 1
    assert cabinet.writes == [] and cabinet.repeats == 0


def test_reconcile_failure_is_an_alarm_not_a_crash() -> None:
    cabinet = FakeCabinet(dim=100)
    entity, ctx = circuit(cabinet, checkpoint({"dim": 40.0}, cabinet.reported()))
    run(cabinet.settled())
    cabinet.reachable = False  # announced online, then cut before the reconcile reads it
    run(entity.handle(Envelope(target=entity.ctx.id, type="device_status",
                               payload={"online": True}, kind=MessageKind.EVENT)))
    assert [f["alarm"] for e, f in ctx.events if e == "alarm"] == ["reconcile_failed"]
    assert cabinet.writes == []


class CommandRegisters:
    """A device with a setpoint (``level``, reconcile "reapply") and a command register
    (``request``, reconcile "never"), as the traffic controller's priority request."""

    POLICY = {"level": "reapply", "request": "never"}

    def __init__(self, *, lost_answers: int = 0) -> None:
        self.held = {"level": 0, "request": 0}
        self.written: list[dict[str, Any]] = []
        self.lost_answers = lost_answers
        self._online = False

    @property
    def online(self) -> bool:
        return self._online

    def policy(self, field: str) -> str | None:
        return self.POLICY.get(field)

    async def settled(self) -> bool:
        self._online = True
        return True

    async def read(self) -> Mapping[str, Any]:
        return dict(self.held)

    async def write(self, fields: Mapping[str, Any], *, command_id: str) -> Mapping[str, Any]:
        self.written.append(dict(fields))
        self.held.update(fields)
        if self.lost_answers:
            self.lost_answers -= 1
            raise DeviceUnavailableError("no answer within 0.5 s")
        return dict(fields)


class WithCommand(EquipmentEntity):
    kind = "with_command"
    FIELDS = {"level": Field(int, 0, 10), "request": Field(int, 0, 100)}


class WithCommandReadingBack(WithCommand):
    READS_BACK = True


def command_entity(device: CommandRegisters, saved: Checkpoint | None,
                   behaviour: type[WithCommand] = WithCommand) -> tuple[WithCommand, FakeContext]:
    # Any kind's record: the behaviour under test is the class's own.
    ctx = FakeContext(make_equipment("wc-1", "crossroad", profile="traffic_controller",
                                     endpoint="modbus://127.0.0.1:15020/1"), device,
                      SystemClock())
    entity = behaviour(ctx)
    run(entity.on_start(saved))
    return entity, ctx


def test_a_command_register_is_written_but_never_kept_as_desired() -> None:
    device = CommandRegisters()
    entity, _ = command_entity(device, None)
    run(entity.handle(Envelope(target="wc-1", type="command", kind=MessageKind.COMMAND,
                               payload={"command_id": "c1", "action": "set",
                                        "params": {"level": 3, "request": 7}})))
    assert device.written == [{"level": 3, "request": 7}]
    assert entity.twin.desired == {"level": 3}
    # The device restarts holding nothing: a reconnect brings the setpoint back, never
    # the command.
    device.held = {"level": 0, "request": 0}
    entity.twin.report_many({"level": 0, "request": 0})
    run(device.settled())
    run(entity.reconcile())
    assert device.written[1:] == [{"level": 3}]


def test_a_restart_never_sends_a_command_register_again() -> None:
    # A checkpoint that holds a command as desired (written before its policy said "never"):
    # the reconcile after the restart drops it, without writing it and without an alarm.
    device = CommandRegisters()
    saved = Checkpoint(state={"online": False, "seq": 1},
                       twin={"reported": {}, "desired": {"level": 4, "request": 9}}, version=2)
    entity, ctx = command_entity(device, saved)
    run(device.settled())
    run(entity.handle(Envelope(target="wc-1", type="device_status", payload={"online": True},
                               kind=MessageKind.EVENT)))
    assert device.written == [{"level": 4}]
    assert entity.twin.desired == {"level": 4}
    assert not [f for e, f in ctx.events if e == "alarm"]
    # A second reconnect, once a reading shows the level held: nothing left to do.
    entity.twin.report_many(dict(device.held))
    run(entity.reconcile())
    assert device.written == [{"level": 4}]


def test_an_unanswered_command_register_is_not_sent_twice() -> None:
    device = CommandRegisters(lost_answers=1)
    entity, _ = command_entity(device, None, WithCommandReadingBack)
    with pytest.raises(RejectedError) as info:
        run(entity.handle(Envelope(target="wc-1", type="command", kind=MessageKind.COMMAND,
                                   payload={"command_id": "c1", "action": "set",
                                            "params": {"request": 7}})))
    assert info.value.code == "device_unavailable"
    assert device.written == [{"request": 7}]
    assert "request" not in entity.twin.desired


# -- commands ----------------------------------------------------------------------


def test_replayed_command_already_actuated_is_acked_without_writing() -> None:
    # Host killed after the lamps took c2 and before its checkpoint and ack: the restored
    # twin knows c1 only, the journal hands c2 over again.
    cabinet = FakeCabinet(dim=70)
    saved = checkpoint({"dim": 70.0}, cabinet.reported(), applied=("c1",))
    for lamp in cabinet.lamps:
        lamp["dim"] = 40
    entity, _ = circuit(cabinet, saved)
    result = command(entity, "c2", dim=40.0)
    assert result["result"] == {"desired": {"dim": 40.0}, "device": {}}
    assert cabinet.writes == [] and cabinet.repeats == 0
    assert entity.twin.desired["dim"] == 40.0 and entity.already_applied("c2")


def test_half_actuated_command_writes_the_remaining_lamps_once() -> None:
    cabinet = FakeCabinet(dim=70)
    saved = checkpoint({"dim": 70.0}, cabinet.reported())
    cabinet.lamps[0]["dim"] = cabinet.lamps[1]["dim"] = 40  # killed after two lamps
    entity, _ = circuit(cabinet, saved)
    command(entity, "c2", dim=40.0)
    assert cabinet.writes == [("lamp.3.dim", 40.0), ("lamp.4.dim", 40.0)]
    assert cabinet.repeats == 0


def test_a_command_no_lamp_holds_is_one_broadcast_and_a_half_done_one_is_not() -> None:
    cabinet = FakeCabinet(dim=70, broadcast=True)
    entity, _ = circuit(cabinet, checkpoint({"dim": 70.0}, cabinet.reported()))
    command(entity, "c1", dim=40.0)
    assert cabinet.writes == [("broadcast_dim", 40.0)] and cabinet.repeats == 0
    assert {lamp["dim"] for lamp in cabinet.lamps} == {40}
    cabinet.writes.clear()
    cabinet.lamps[0]["dim"] = 100  # killed after one lamp of the next command
    command(entity, "c2", dim=100.0)
    assert cabinet.writes == [(f"lamp.{n}.dim", 100.0) for n in (2, 3, 4)]
    assert cabinet.repeats == 0


def poll(entity: LightingCircuit, cabinet: FakeCabinet, seq: int) -> None:
    """A poll of the cabinet taken now reaches the entity as telemetry."""
    run(entity.handle(Envelope(
        target=entity.ctx.id, type="telemetry", kind=MessageKind.TELEMETRY,
        payload={"values": {"lamp": [dict(x) for x in cabinet.lamps]}, "seq": seq,
                 "ts": time.time()})))


def test_a_reading_taken_after_the_last_write_spares_the_read() -> None:
    cabinet = FakeCabinet(dim=70, broadcast=True)
    entity, _ = circuit(cabinet, checkpoint({"dim": 70.0}, cabinet.reported()))
    online(entity, cabinet)
    # The checkpoint's reading predates this incarnation: the first command reads.
    command(entity, "c1", dim=40.0)
    assert cabinet.reads == 1 and cabinet.writes == [("broadcast_dim", 40.0)]
    # A poll after that write shows it: the next command decides from the twin.
    poll(entity, cabinet, seq=2)
    command(entity, "c2", dim=60.0)
    assert cabinet.reads == 1 and cabinet.writes[-1] == ("broadcast_dim", 60.0)
    # No poll since the last write: the twin may not show it, so the cabinet is read.
    command(entity, "c3", dim=50.0)
    assert cabinet.reads == 2 and cabinet.repeats == 0


def test_a_reading_before_an_unanswered_write_is_not_trusted() -> None:
    cabinet = LateCabinet(lands=True, broadcast=True)
    entity, _ = circuit(cabinet, checkpoint({"dim": 70.0}, cabinet.reported()))
    online(entity, cabinet)
    poll(entity, cabinet, seq=2)
    command(entity, "c1", dim=40.0)  # unanswered, landed: read back, nothing more written
    assert cabinet.writes == [("broadcast_dim", 40.0)] and cabinet.reads == 1
    assert cabinet.repeats == 0


class LateCabinet(FakeCabinet):
    """A cabinet whose answer to the first write is lost: the write ``lands`` or not."""

    def __init__(self, *, lands: bool, broadcast: bool = False) -> None:
        super().__init__(dim=70, broadcast=broadcast)
        self.lands = lands
        self.timeouts = 0

    async def write(self, fields: Mapping[str, Any], *, command_id: str) -> Mapping[str, Any]:
        if self.timeouts == 0:
            self.timeouts += 1
            if self.lands:
                await super().write(fields, command_id=command_id)
            raise DeviceUnavailableError("write 17+1: no answer within 0.5 s")
        return await super().write(fields, command_id=command_id)


@pytest.mark.parametrize("broadcast", [False, True])
@pytest.mark.parametrize("lands", [True, False])
def test_unanswered_write_is_checked_then_completed_once(lands: bool, broadcast: bool) -> None:
    cabinet = LateCabinet(lands=lands, broadcast=broadcast)
    entity, _ = circuit(cabinet, checkpoint({"dim": 70.0}, cabinet.reported()))
    result = command(entity, "c3", dim=40.0)
    assert {lamp["dim"] for lamp in cabinet.lamps} == {40}
    assert cabinet.repeats == 0, "no lamp is written twice with the same level"
    # Each lamp once (or one broadcast), whether or not the first try landed.
    assert len(cabinet.writes) == (1 if broadcast else 4)
    assert result is not None


def test_command_writes_every_lamp_whatever_a_stale_twin_says() -> None:
    # The twin claims the lamps hold 40, the cabinet says 70: the cabinet wins.
    cabinet = FakeCabinet(dim=40)
    saved = checkpoint({"dim": 40.0}, cabinet.reported())
    for lamp in cabinet.lamps:
        lamp["dim"] = 70
    entity, _ = circuit(cabinet, saved)
    command(entity, "c3", dim=40.0)
    assert [k for k, _ in cabinet.writes] == [f"lamp.{n}.dim" for n in range(1, 5)]
    assert cabinet.repeats == 0


def test_command_reads_a_cabinet_not_reached_yet_instead_of_refusing() -> None:
    # Just after a host starts, the device is not online yet only because it was not read
    # yet: the circuit's own reading is the verdict (no wait for the first poll).
    cabinet = FakeCabinet(dim=70)
    entity, _ = circuit(cabinet, checkpoint({"dim": 70.0}, cabinet.reported()))
    command(entity, "c4", dim=25.0)
    assert {lamp["dim"] for lamp in cabinet.lamps} == {25}
    assert cabinet.settles == 0 and cabinet.reads == 1


def test_command_to_an_offline_cabinet_is_refused_and_kept_as_desired() -> None:
    cabinet = FakeCabinet(dim=70, reachable=False)
    entity, _ = circuit(cabinet, checkpoint({"dim": 70.0}, cabinet.reported()))
    with pytest.raises(RejectedError) as info:
        command(entity, "c5", dim=25.0)
    assert info.value.code == "device_offline"
    assert entity.twin.desired["dim"] == 25.0 and cabinet.writes == []


def test_other_kinds_still_write_every_setpoint() -> None:
    class Port:
        online = True
        written: list[Mapping[str, Any]] = []

        def policy(self, field: str) -> str | None:
            return "reapply"

        async def settled(self) -> bool:
            return True

        async def read(self) -> Mapping[str, Any]:
            raise AssertionError("a camera command does not read first")

        async def write(self, fields: Mapping[str, Any], *,
                        command_id: str) -> Mapping[str, Any]:
            self.written.append(dict(fields))
            return fields

    port = Port()
    entity = Camera(FakeContext(make_equipment("cam-dijon-0001", "camera", profile="camera",
                                           endpoint="mqtt"), port, SystemClock()))
    run(entity.on_start(None))
    run(entity.handle(Envelope(target="cam-dijon-0001", type="command", kind=MessageKind.COMMAND,
                               payload={"command_id": "c6", "action": "set",
                                        "params": {"preset": 3}})))
    assert port.written == [{"preset": 3}]


# -- the device manager against the real lighting simulator --------------------------


def _first_spread_draw(host_id: str) -> float:
    return random.Random(host_id).uniform(0, 2.0)


def test_manager_reads_at_once_when_replacing_and_writes_single_lamps() -> None:
    from devices.manager import HostDevices
    from devices.sim.lighting import LightingSimulator
    from runtime.embedded import free_port

    port = free_port()
    eq = make_equipment("lc-dijon-0001", "lighting_circuit", profile="lighting_cabinet",
                        endpoint=f"modbus://127.0.0.1:{port}/1", attrs={"points": 4})
    # A host id whose cold-start spread waits well over a second before the first poll.
    cold = next(h for h in (f"lighting-{i}" for i in range(100)) if _first_spread_draw(h) > 1.2)

    async def first_reading(replacing: bool) -> tuple[float, list[Envelope], HostDevices]:
        got: list[Envelope] = []
        reading = asyncio.Event()

        def deliver(env: Envelope) -> None:
            got.append(env)
            if env.type == "telemetry":
                reading.set()

        devices = HostDevices([eq], deliver, {"host_id": cold, "replacing": replacing})
        t0 = time.monotonic()
        await devices.start()
        await asyncio.wait_for(reading.wait(), 10.0)
        return time.monotonic() - t0, got, devices

    async def body() -> None:
        sim = LightingSimulator([eq], autotick=False, failure_rate_per_h=0.0)
        await sim.start()
        try:
            waited, got, devices = await first_reading(replacing=True)
            try:
                assert waited < 0.5, f"a replacing host read after {waited:.2f}s"
                # The reading reaches the entity before the device is announced online.
                kinds = [e.type for e in got]
                assert kinds[:2] == ["telemetry", "device_status"], kinds
                lamp_port = devices.port(eq.id)
                assert lamp_port is not None and await lamp_port.settled()
                before = sim.device_counters()[eq.id].repeats
                await lamp_port.write({"lamp.2.dim": 40.0}, command_id="c1")
                assert [x["dim"] for x in sim.held_values(eq.id)["lamp"]] == [100, 40, 100, 100]
                reading = await lamp_port.read()
                assert [x["dim"] for x in reading["lamp"]] == [100, 40, 100, 100]
                # The on-demand read reached the entity as a sample, in sequence order.
                seqs = [e.payload["seq"] for e in got if e.type == "telemetry"]
                assert seqs == sorted(seqs) and seqs[-1] == reading["seq"]
                for bad in ("lamp.9.dim", "lamp.2.power_w", "pole.1.dim"):
                    with pytest.raises(RejectedError):
                        await lamp_port.write({"lamp.1.dim": 10.0, bad: 40.0}, command_id="c2")
                # Refused before anything was sent: lamp 1 was not written either.
                assert sim.held_values(eq.id)["lamp"][0]["dim"] == 100
                assert sim.device_counters()[eq.id].repeats == before
                # A broadcast sets every lamp; the simulator counts each lamp it moved.
                counted = sim.device_counters()[eq.id]
                moved, repeats = counted.actuations, counted.repeats
                await lamp_port.write({"broadcast_dim": 40.0}, command_id="c3")
                assert [x["dim"] for x in sim.held_values(eq.id)["lamp"]] == [40] * 4
                counted = sim.device_counters()[eq.id]
                assert (counted.actuations - moved, counted.repeats - repeats) == (3, 1)
            finally:
                await devices.stop()
            waited, _, devices = await first_reading(replacing=False)
            await devices.stop()
            assert waited > 1.0, f"a cold start read after {waited:.2f}s: polls not spread"
        finally:
            await sim.stop()

    run(body())


def test_a_reading_is_never_torn_by_a_circuits_writes() -> None:
    from devices.modbus import ModbusSession
    from devices.profile import builtin_profile
    from devices.sim.lighting import LightingSimulator
    from runtime.embedded import free_port

    port = free_port()
    eq = make_equipment("lc-dijon-0001", "lighting_circuit", profile="lighting_cabinet",
                        endpoint=f"modbus://127.0.0.1:{port}/1", attrs={"points": 30})
    profile = builtin_profile("lighting_cabinet")
    first, count = profile.register_span(eq.attrs)

    async def body() -> None:
        sim = LightingSimulator([eq], autotick=False, failure_rate_per_h=0.0)
        await sim.start()
        session = ModbusSession("127.0.0.1", port, timeout_s=2.0)
        try:
            for level in (40, 60, 20, 80, 50):
                writes = [profile.encode_block_field("lamp", i, "dim", level) for i in range(30)]
                # The read (three requests) and the 30 writes are issued together.
                _, regs = await asyncio.gather(session.write_many(1, writes),
                                               session.read(1, first, count))
                levels = {lamp["dim"] for lamp in profile.decode_registers(first, regs,
                                                                           eq.attrs)["lamp"]}
                assert len(levels) == 1, f"a torn reading: {sorted(levels)}"
                assert {x["dim"] for x in sim.held_values(eq.id)["lamp"]} == {level}
        finally:
            await session.close()
            await sim.stop()

    run(body())
