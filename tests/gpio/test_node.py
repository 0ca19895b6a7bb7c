"""A node with a simulated board: it says gpio=true, and its agents' oneos-gpio uses that board."""

from __future__ import annotations

from oneos.gpio.sim import SimBoard
from tests.conftest import running_cluster


def test_a_node_configured_with_a_simulated_board_runs_gpio_stages_on_it(tmp_path):
    conf = tmp_path / "node.yaml"
    conf.write_text("gpio: {simulate: board}\nlabels: {room: greenhouse}\n")   # relative to the config file
    board = SimBoard(tmp_path / "board")
    board.set("D4", 1)
    with running_cluster(tmp_path / "cluster", {"pi": ["--kernel", "--config", str(conf)]}) as cluster:
        labels = {n["id"]: n["labels"] for n in cluster.get_nodes()}["pi"]
        assert labels["gpio"] == "true" and labels["room"] == "greenhouse" and "board" in labels
        row = next(line for line in cluster.ctl("get", "nodes").stdout.splitlines() if line.startswith("pi "))
        assert "gpio=true" in row

        code, out, err = cluster.run("oneos-gpio read D4", timeout=90)
        assert (code, out) == (0, b"1\n"), err

        code, out, err = cluster.run("oneos-gpio write D7", input=b"0\non\n", timeout=90)
        assert (code, out) == (0, b""), err
        assert (board.get("D7"), board.direction("D7")) == (1, "out")
