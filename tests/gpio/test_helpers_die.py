"""A device's `oneos-gpio` helper dies with the node agent that started it, even by `kill -9`:
left behind, it would go on watching (or driving) the pin for nobody."""

from __future__ import annotations

import os
import signal

import pytest

from oneos.gpio.sim import SimBoard
from tests.conftest import running_cluster
from tests.procs import wait_until
from tests.procs import descendants, process_alive as alive

READER = """\
apiVersion: oneos/v1
kind: Pipeline
metadata: {name: reader}
spec:
  agents:
    - {name: cat, run: [cat, /dev/gpio/D4], requires: {devices: [gpio/D4]}}
"""


def helpers_of(pid: int) -> list[int]:
    """The `oneos-gpio watch D4` processes below `pid`."""
    found = []
    for child in descendants(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"oneos-gpio\0watch\0D4" in f.read():
                    found.append(child)
        except OSError:
            continue
    return found


@pytest.fixture
def sensor(tmp_path):
    """A cluster with a node s1 that owns gpio/D4 on a simulated board; whatever s1 started is
    killed at the end too, should the test fail."""
    left: list[int] = []
    with running_cluster(tmp_path / "cluster", {"n1": ["--kernel"]}) as cluster:
        board = tmp_path / "board"
        SimBoard(board).set("D4", 1)
        config = tmp_path / "s1.yaml"
        config.write_text("kernel: false\ndevices:\n  gpio/D4: {pin: D4, direction: in}\n")
        cluster.start("s1", "--config", str(config), env={"ONEOS_GPIO_SIM": str(board)})
        cluster.left = left
        try:
            yield cluster
        finally:
            for pid in left:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


def test_kill9_of_oneosd_leaves_no_gpio_helper_behind(sensor, tmp_path):
    manifest = tmp_path / "reader.yaml"
    manifest.write_text(READER)
    assert sensor.ctl("apply", "-f", str(manifest)).returncode == 0
    status = wait_until(lambda: (s := sensor.statuses("reader").get("cat", {})).get("state") == "Running" and s,
                        60, "the agent reading /dev/gpio/D4 to run")
    node = sensor.node("s1")
    assert status["node"] == "s1"
    helpers = wait_until(lambda: helpers_of(node.pid), 30, "the oneos-gpio helper serving /dev/gpio/D4")
    sensor.left.extend(helpers + [status["pid"]])

    os.kill(node.pid, signal.SIGKILL)       # the node agent only, as a crash: not its process group
    node.popen.wait(10)
    wait_until(lambda: not any(alive(pid) for pid in helpers), 15, f"the oneos-gpio helpers {helpers} to die")
    wait_until(lambda: not alive(status["pid"]), 15, "the agent to die")
