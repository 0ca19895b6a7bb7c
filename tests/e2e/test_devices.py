"""Devices on a cluster of simulated boards: stages that use a device run on its owner,
`/dev/gpio/NAME` is a file there, and a stage whose device owner is down waits for it.

    n1  kernel, compute (no GPIO)
    s1  simulated board A, device gpio/D4 (pin D4, input): the sensor
    a1  simulated board B, device gpio/D7 (pin D7, output): the actuator
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

from oneos.gpio.sim import SimBoard
from tests.cluster import SESSION_TTL
from tests.conftest import running_cluster
from tests.procs import ANY_EXIT, cli, venv_bin, wait_until

CONTROLLER = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "controller.py"


def device_node(cluster, node_id: str, board: Path, devices: str) -> None:
    config = cluster.root / f"{node_id}.yaml"
    config.write_text(f"kernel: false\ndevices:\n{textwrap.indent(devices, '  ')}")
    cluster.start(node_id, "--config", str(config), env={"ONEOS_GPIO_SIM": str(board)})


SENSOR = "gpio/D4: {pin: D4, direction: in}\n"
ACTUATOR = "gpio/D7: {pin: D7, direction: out}\n"


@contextlib.contextmanager
def boards_cluster(root: Path):
    """n1, and s1 and a1 with the simulated boards A and B (board_a, board_b), all stopped at the end."""
    with running_cluster(root, {"n1": ["--kernel"]}) as c:
        c.board_a, c.board_b = SimBoard(root / "board-a"), SimBoard(root / "board-b")
        device_node(c, "s1", root / "board-a", SENSOR)
        device_node(c, "a1", root / "board-b", ACTUATOR)
        yield c


@pytest.fixture(scope="module")
def boards(tmp_path_factory):
    """The cluster of the tests that kill nothing: shared by the module, as a user's cluster is."""
    with boards_cluster(tmp_path_factory.mktemp("boards")) as c:
        yield c


@pytest.fixture
def own_boards(tmp_path):
    """A cluster of the test's own, for a test that kills a node."""
    with boards_cluster(tmp_path) as c:
        yield c


def start_run(cluster, line: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([venv_bin("oneosctl"), "run", "-v", line], cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
                            env=dict(os.environ, ONEOS_NAMESERVER=cluster.url))


def placed(proc: subprocess.Popen) -> dict[str, str]:
    """stage -> node, from the line `oneosctl run -v` prints once every stage is placed."""
    for raw in proc.stderr:
        line = raw.decode(errors="replace")
        if " placed: " in line:
            return dict(part.split(" on ") for part in line.split(" placed: ", 1)[1].strip().split(", "))
    raise AssertionError(f"oneosctl run ended without placing: {proc.wait()}")


def read_line(proc: subprocess.Popen, timeout: float = 30) -> str:
    """The next line of the run's stdout, or fail at the deadline (never block the test forever)."""
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        assert ready, f"no line from oneosctl run within {timeout}s (so far {line!r})"
        byte = os.read(proc.stdout.fileno(), 1)
        assert byte, f"oneosctl run's output ended (so far {line!r})"
        line += byte
    return line.decode()


def toggle_and_follow(cluster, values: list[int]) -> None:
    """Set D4 on board A to each value; D7 on board B must follow each one."""
    for value in values:
        cluster.board_a.set("D4", value)
        wait_until(lambda: cluster.board_b.get("D7") == value, 20, f"D7 to follow D4={value}")


def test_the_sensor_controller_actuator_pipeline_runs_where_the_pins_are(boards, tmp_path):
    shutil.copy(CONTROLLER, tmp_path / "controller.py")
    boards.board_b.set("D7", 0)   # low before the run, whatever ran on the shared boards before
    nodes = boards.get_nodes()
    assert {n["id"]: n["labels"].get("gpio") for n in nodes} == {"n1": None, "s1": "true", "a1": "true"}
    run = start_run(boards, "oneos-gpio watch D4 | python3 controller.py | oneos-gpio write D7", tmp_path)
    try:
        where = placed(run)
        assert (where["oneos-gpio"], where["oneos-gpio-2"]) == ("s1", "a1")
        toggle_and_follow(boards, [1, 0, 1, 0])
        run.send_signal(signal.SIGINT)
        assert run.wait(30) == 130
    finally:
        if run.poll() is None:
            run.kill()


def test_dev_paths_name_devices_and_other_dev_paths_stay_the_nodes(boards, tmp_path):
    boards.board_a.set("D4", 0)   # low before the watch, whatever ran on the shared boards before
    run = start_run(boards, "cat /dev/gpio/D4 | sed -u 3q", tmp_path)
    try:
        assert placed(run)["cat"] == "s1"
        # The watch behind /dev/gpio/D4 prints the level now, then each change.
        lines = [read_line(run)]
        for value in (1, 0):
            boards.board_a.set("D4", value)
            lines.append(read_line(run))
        assert lines == ["0\n", "1\n", "0\n"]
        assert run.wait(30) == 0
    finally:
        if run.poll() is None:
            run.kill()

    done = cli("oneosctl", "run", "-v", "echo 1 > /dev/gpio/D7", env={"ONEOS_NAMESERVER": boards.url},
               ok_code=ANY_EXIT)
    assert done.returncode == 0 and " echo on a1" in done.stderr, done.stderr
    assert boards.board_b.get("D7") == 1
    done = cli("oneosctl", "run", "cat /dev/null | wc -c", env={"ONEOS_NAMESERVER": boards.url}, ok_code=ANY_EXIT)
    assert (done.returncode, done.stdout.strip()) == (0, "0")


def test_a_stage_whose_device_owner_is_down_waits_for_it(own_boards, tmp_path):
    manifest = tmp_path / "sensor.yaml"
    manifest.write_text(textwrap.dedent("""\
        apiVersion: oneos/v1
        kind: Pipeline
        metadata: {name: sensor}
        spec:
          agents:
            - {name: watch, run: [oneos-gpio, watch, D4], requires: {devices: [gpio/D4]}}
        """))
    assert own_boards.ctl("apply", "-f", str(manifest)).returncode == 0
    watch = lambda: own_boards.statuses("sensor").get("watch", {})  # noqa: E731
    own_boards.wait_for(lambda: watch().get("state") == "Running", 30, "the watch to run")
    assert watch()["node"] == "s1"

    own_boards.lose("s1")   # its sessions end at once, as their TTL expiry would
    reason = "device gpio/D4 is on node s1, which is down: no node has device gpio/D4"
    own_boards.wait_for(lambda: watch().get("state") == "Pending", 2 * SESSION_TTL + 15,
                        "the watch to wait for s1")
    assert watch()["reason"] == reason
    assert f"watch: Pending: {reason}" in own_boards.ctl("describe", "pipeline", "sensor").stdout

    device_node(own_boards, "s1", tmp_path / "board-a", SENSOR)   # the owner comes back
    own_boards.wait_for(lambda: watch().get("state") == "Running" and watch().get("node") == "s1", 30,
                        "Running on s1")
