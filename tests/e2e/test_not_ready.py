"""A frozen node shows NotReady, and its agent Unknown, before its session expires; Ready and
Running again once it runs. In real time, once: the decision itself is tested with a given
clock in tests/cli/test_not_ready.py.

Its own cluster (the session TTL is the smallest Consul allows, 10 s): one kernel oneosd, k1,
with one kernel agent (no broker needed).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from oneos import state
from tests.cluster import SESSION_TTL, Cluster
from tests.procs import venv_bin

INIT = ("apiVersion: oneos/v1\nkind: Init\nmetadata: {name: oneos-init}\nspec:\n  agents:\n"
        f"    - {{name: steady, run: [{sys.executable}, -c, 'import time; time.sleep(600)']}}\n")


@pytest.fixture
def k1(builtin_nameserver, tmp_path):
    c = Cluster(builtin_nameserver, tmp_path)
    c.bootstrap(init=INIT)
    try:
        c.start("k1", "--kernel")
        yield c
    finally:
        c.stop()


def node_state(c: Cluster) -> str | None:
    nodes = state.read_nodes(c.ns, now=datetime.now(timezone.utc))[0]
    return next((n.state for n in nodes if n.record["id"] == "k1"), None)


def ctl(c: Cluster, *argv: str) -> subprocess.Popen:
    return subprocess.Popen([venv_bin("oneosctl"), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, ONEOS_NAMESERVER=c.url))


def test_a_frozen_node_is_not_ready_and_its_agent_unknown_until_it_runs_again(k1):
    c = k1
    c.wait_for(lambda: c.statuses("oneos-init").get("steady", {}).get("state") == "Running", 30, "steady to run")
    # NotReady comes a TTL after k1's last renewal, its session ends up to a TTL later.
    renewed = state.parse_time(state.read_heartbeats(c.ns)["k1"]["renewedAt"])
    proc = c.node("k1")
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        c.wait_for(lambda: node_state(c) == "NotReady", SESSION_TTL, "k1 to show NotReady")
        nodes, agents = ctl(c, "get", "nodes"), ctl(c, "get", "agents")
        (nodes_out, nodes_err), (agents_out, _) = nodes.communicate(30), agents.communicate(30)
        # Its session has not expired (that takes up to 2xTTL after the last renewal): k1 is still listed.
        assert (datetime.now(timezone.utc) - renewed).total_seconds() < 2 * SESSION_TTL
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert nodes_out.splitlines()[1].split()[:2] == ["k1", "NotReady"], nodes_out
    assert nodes_err.startswith("oneosctl: node k1 is NotReady: no session renewal for "), nodes_err
    assert agents_out.splitlines()[1].split()[:3] == ["oneos-init/steady", "k1", "Unknown"], agents_out

    c.wait_for(lambda: node_state(c) == "Ready", 20, "k1 to be Ready again")
    c.wait_for(lambda: c.statuses("oneos-init").get("steady", {}).get("state") == "Running", 30,
               "steady Running again")
    assert c.ctl("get", "agents").stdout.splitlines()[1].split()[:3] == ["oneos-init/steady", "k1", "Running"]
