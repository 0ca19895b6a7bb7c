"""Device registration in the Name Server: the owner is recorded, and a name is one node's only."""

from __future__ import annotations

import uuid

import pytest

from oneos import state
from oneos.nodeagent.devices import DeviceError, register


@pytest.fixture
def name(ns):
    device = f"gpio/t{uuid.uuid4().hex[:8]}"
    yield device
    ns.delete(state.device_key(device))


def test_a_node_registers_its_devices_and_may_do_it_again(ns, name):
    register(ns, "node-a", {name: {"pin": "D4", "direction": "in"}})
    register(ns, "node-a", {name: {"pin": "D4", "direction": "in"}})   # a restart: unchanged
    doc = state.read_devices(ns)[name]
    assert (doc["node"], doc["settings"]) == ("node-a", {"pin": "D4", "direction": "in"})


def test_another_node_cannot_take_a_registered_name(ns, name):
    register(ns, "node-a", {name: {"pin": "D4"}})
    with pytest.raises(DeviceError, match=f"device {name} is registered to node node-a; .* rename it"):
        register(ns, "node-b", {name: {"pin": "D17"}})
    assert state.read_devices(ns)[name]["node"] == "node-a"


@pytest.mark.parametrize("props, message", [
    ({}, "a gpio device needs its pin"),
    ({"pin": "D4", "direction": "sideways"}, "'sideways' is not in or out"),
])
def test_a_gpio_device_needs_a_pin_and_a_direction(ns, name, props, message):
    with pytest.raises(DeviceError, match=message):
        register(ns, "node-a", {name: props})
