"""Updating a running pipeline on three nodes: dry run first, then only the changed agents restart."""

from __future__ import annotations

import os

from tests.procs import wait_until

PIPELINE = """\
apiVersion: oneos/v1
kind: Pipeline
metadata: {name: upd}
spec:
  agents:
    - name: ticker
      run: [python3, -u, -c, "import time\\nfor i in range(100000):\\n  print(i); time.sleep(0.1)"]
    - name: upper
      run: [tr, "0-9", "a-j"]
  links:
    - {from: ticker, to: upper}
"""
CHANGED = PIPELINE.replace('[tr, "0-9", "a-j"]', '[sed, -u, "y/0123456789/abcdefghij/"]')


def test_a_dry_run_says_what_would_restart_and_an_apply_restarts_only_that(three_nodes, tmp_path):
    manifest = tmp_path / "upd.yaml"
    manifest.write_text(PIPELINE)
    assert three_nodes.ctl("apply", "-f", str(manifest)).stdout == "pipeline/upd created\n"
    try:
        def running():
            return {a: s for a, s in three_nodes.statuses("upd").items() if s["state"] == "Running"}
        three_nodes.wait_for(lambda: len(running()) == 2, 30, "both agents running")
        before = running()

        manifest.write_text(CHANGED)
        dry = three_nodes.ctl("apply", "--dry-run", "-f", str(manifest))
        assert (dry.returncode, dry.stderr) == (0, "")
        assert dry.stdout.splitlines() == [
            "pipeline/upd configured (dry run)",
            "  ~ agent upper: run [tr, 0-9, a-j] -> [sed, -u, y/0123456789/abcdefghij/]",
            f"  restart upper (Running on {before['upper']['node']}): run changed",
            f"  keep ticker (Running on {before['ticker']['node']})",
        ]
        # Nothing changed: the stored generation, and the very same processes.
        assert three_nodes.ctl("get", "pipelines", "upd").stdout.splitlines()[1].split()[:3] == ["upd", "2/2",
                                                                                                  "Running"]
        assert '"generation": 1' in three_nodes.ctl("get", "pipeline", "upd", "-o", "json").stdout
        assert {a: s["pid"] for a, s in running().items()} == {a: s["pid"] for a, s in before.items()}

        assert three_nodes.ctl("apply", "-f", str(manifest)).stdout == "pipeline/upd configured\n"
        three_nodes.wait_for(lambda: running().get("upper", {}).get("generation") == 2, 30,
                             "the changed agent to restart")
        after = running()
        assert after["upper"]["pid"] != before["upper"]["pid"]
        assert after["ticker"]["pid"] == before["ticker"]["pid"]
        assert '"generation": 2' in three_nodes.ctl("get", "pipeline", "upd", "-o", "json").stdout

        assert three_nodes.ctl("apply", "-f", str(manifest)).stdout == "pipeline/upd unchanged\n"
        assert three_nodes.ctl("apply", "--dry-run", "-f", str(manifest)).stdout == "pipeline/upd unchanged (dry run)\n"
        assert {a: s["pid"] for a, s in running().items()} == {a: s["pid"] for a, s in after.items()}
    finally:
        three_nodes.ctl("delete", "pipeline", "upd")
    three_nodes.wait_for(lambda: not three_nodes.statuses("upd"), 30, "the agents to be removed")


def test_an_added_stage_starts_and_restarts_only_the_end_it_is_linked_to(three_nodes, tmp_path):
    manifest = tmp_path / "grow.yaml"
    manifest.write_text(PIPELINE.replace("name: upd", "name: grow"))
    assert three_nodes.ctl("apply", "-f", str(manifest)).returncode == 0
    try:
        def running():
            return {a: s for a, s in three_nodes.statuses("grow").items() if s["state"] == "Running"}
        three_nodes.wait_for(lambda: len(running()) == 2, 30, "both agents running")
        before = running()
        grown = (PIPELINE.replace("name: upd", "name: grow")
                 .replace("  links:\n", "    - name: count\n      run: [cat]\n  links:\n")
                 + "    - {from: upper, to: count}\n")
        manifest.write_text(grown)
        done = three_nodes.ctl("apply", "-v", "-f", str(manifest))
        assert done.stdout.splitlines() == [
            "pipeline/grow configured",
            "  + agent count",
            "  + link upper -> count",
            f"  restart upper (Running on {before['upper']['node']}): link upper -> count added",
            "  start count",
            f"  keep ticker (Running on {before['ticker']['node']})",
        ]
        three_nodes.wait_for(lambda: len(running()) == 3 and running()["upper"]["pid"] != before["upper"]["pid"], 30,
                             "the new stage to start and upper to restart")
        assert running()["ticker"]["pid"] == before["ticker"]["pid"]
    finally:
        three_nodes.ctl("delete", "pipeline", "grow")
    three_nodes.wait_for(lambda: not three_nodes.statuses("grow"), 30, "the agents to be removed")


def test_an_agent_whose_new_requirements_rule_out_its_node_moves(three_nodes, tmp_path):
    manifest = tmp_path / "mover.yaml"
    pinned = ("apiVersion: oneos/v1\nkind: Pipeline\nmetadata: {name: mover}\nspec:\n  agents:\n"
              "    - {name: waiter, run: [sleep, '100000'], requires: {node: NODE}}\n")
    manifest.write_text(pinned.replace("NODE", "n2"))
    assert three_nodes.ctl("apply", "-f", str(manifest)).returncode == 0
    try:
        def waiter():
            return three_nodes.statuses("mover").get("waiter", {})
        before = three_nodes.wait_for(lambda: waiter().get("state") == "Running" and waiter(), 30, "Running on n2")
        assert before["node"] == "n2"
        manifest.write_text(pinned.replace("NODE", "n3"))
        assert three_nodes.ctl("apply", "-f", str(manifest)).stdout == "pipeline/mover configured\n"
        after = three_nodes.wait_for(lambda: (w := waiter()).get("node") == "n3" and w.get("state") == "Running"
                                     and w, 30, "the waiter to move to n3")
        assert after["epoch"] == before["epoch"] + 1
        wait_until(lambda: not os.path.exists(f"/proc/{before['pid']}"), 10, "the copy on n2 to stop")
    finally:
        three_nodes.ctl("delete", "pipeline", "mover")
