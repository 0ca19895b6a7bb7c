"""A Name Server blip does not stop a node's agents: their status writes wait it out.

A real `oneosd` runs two kernel agents (they need no broker): one that just runs, and one
that exits when the test tells it to and is restarted (restart: always). The Name Server is
killed and started again on the same port and data folder, well within the session TTL;
meanwhile the second agent exits, so its node has status to write while nothing answers.
Only the session watchdog may fence on an outage (tests/nodeagent/test_lease.py times it):
here no agent is killed by its node, and the statuses catch up once the Name Server is back.
"""

from __future__ import annotations

import sys
import time

import pytest

from oneos import state
from tests.cluster import Cluster
from tests.procs import process_alive, sleep_until, wait_until

SESSION_TTL = 30            # long enough that the outage below stays far from the watchdog's 0.8×TTL
OUTAGE_S = 4.0              # longer than the three 1 s retries after which a node used to kill the agent
# Exits once its trigger file appears (removing it), so that each run waits for the next trigger.
BLINK = "while [ ! -e \"$1\" ]; do sleep 0.05; done; rm -f \"$1\"; exit 3"


def init(trigger) -> str:
    return ("apiVersion: oneos/v1\nkind: Init\nmetadata: {name: oneos-init}\nspec:\n  agents:\n"
            f"    - {{name: steady, run: [{sys.executable}, -c, 'import time; time.sleep(600)']}}\n"
            f"    - {{name: blinker, run: [sh, -c, '{BLINK}', sh, '{trigger}'], restart: always,\n"
            "       restartSec: 100ms, startLimitBurst: 100}\n")


@pytest.fixture
def node(builtin_nameserver, tmp_path):
    """One kernel oneosd, k1, on a Name Server of the test's own (session TTL 30 s)."""
    c = Cluster(builtin_nameserver, tmp_path)
    (tmp_path / "init.yaml").write_text(init(tmp_path / "trigger"))
    boot = state.new_boot_record(cluster="blip", pulsar_url="pulsar://127.0.0.1:1", kernel_nodes=["k1"],
                                 session_ttl=f"{SESSION_TTL}s", lock_delay="0s")
    state.bootstrap(c.ns, boot, state.default_init(tmp_path / "init.yaml"))
    try:
        c.start("k1", "--kernel")
        yield c
    finally:
        c.stop()


def running(c: Cluster, agent: str, incarnation: int = 1) -> dict | None:
    st = c.statuses("oneos-init").get(agent)
    return st if st and st["state"] == "Running" and st["incarnation"] == incarnation else None


def test_status_writes_wait_out_a_name_server_restart_and_no_agent_is_killed(node, tmp_path):
    steady = node.wait_for(lambda: running(node, "steady"), 30, "steady to run")
    first = node.wait_for(lambda: running(node, "blinker"), 30, "blinker to run")

    node.nameserver.kill9()
    try:
        (tmp_path / "trigger").touch()        # blinker exits now: Restarting, Starting, Running to write
        wait_until(lambda: not process_alive(first["pid"]), 10, "blinker's first run to exit")
        sleep_until(time.monotonic() + OUTAGE_S)
    finally:
        node.nameserver.start()

    # The statuses catch up: blinker ran again, once, after waiting for the Name Server.
    again = node.wait_for(lambda: running(node, "blinker", 2), 30, "blinker's second run to be Running")
    assert again["restarts"] == 1 and again["exitCode"] == 3 and process_alive(again["pid"])
    # Nothing was killed: steady is the same process, and the node never fenced an agent.
    assert process_alive(steady["pid"]) and node.statuses("oneos-init")["steady"]["pid"] == steady["pid"]
    k1 = node.node("k1")
    assert k1.alive() and "killing it" not in k1.log() and "stopping every agent" not in k1.log(), k1.log()
    assert "status Restarting not written" in k1.log()
