"""The service starts its simulators with its servers and waits for them before the tree:
they get ready while Ray starts (:meth:`runtime.service.Service.start_servers`)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from devices.modbus import parse_endpoint
from devices.sim.control import SimControl
from runtime.demo_inventory import DemoPorts, generate_demo
from runtime.errors import ConfigError
from runtime.inventory import Inventory, parse_inventory
from runtime.service import DEVICES, Service, ServiceOptions


def _inventory() -> Inventory:
    inv = parse_inventory(generate_demo(scale=0.02, seed=5, ports=DemoPorts.free()), "<sims>")
    return inv.restricted(("lighting_circuit", "building"))


@pytest.fixture
def service() -> Iterator[Service]:
    svc = Service(_inventory(), ServiceOptions(devices=DEVICES, simulate=True, spares=0))
    try:
        yield svc
    finally:
        svc.stop()


def test_servers_return_before_the_simulators_are_ready_and_the_wait_finds_them(
        service: Service) -> None:
    service.start_servers()
    assert service.simulators_starting
    service.wait_simulators()
    assert not service.simulators_starting
    kinds = {sim["kind"] for sim in service.simulators}
    assert {"lighting_cabinet", "bms"} <= kinds, service.simulators
    counters = SimControl(service.sim_control_url).counters()
    assert counters["devices"], counters
    # Waiting again is a no-op that keeps what was found.
    service.wait_simulators()
    assert service.simulators and service.sim_control_url


def test_simulators_that_cannot_serve_fail_the_wait_with_their_reason(
        service: Service) -> None:
    cabinet = next(eq for eq in service.inventory.equipment if eq.kind == "lighting_circuit")
    host, port, _ = parse_endpoint(cabinet.endpoint)
    with socket.socket() as taken:
        taken.bind((host, port))
        taken.listen()
        service.start_servers()
        with pytest.raises(ConfigError, match="simulators exited") as err:
            service.wait_simulators()
    assert str(port) in str(err.value) or "in use" in str(err.value), err.value
