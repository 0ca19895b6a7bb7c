"""Kernel agents: the init manifest's agents run on kernel nodes only, and are kept running
there by the controller, like systemd units, even when their node or the leader dies."""

from __future__ import annotations

import pytest

from tests.cluster import LOCK_DELAY, SESSION_TTL
from tests.conftest import running_cluster

INIT = """\
apiVersion: oneos/v1
kind: Init
metadata: {name: oneos-init}
spec:
  agents:
    - {name: keeper, run: [sleep, "100000"], restart: always}
"""


@pytest.fixture
def kernels(tmp_path):
    """Two kernel nodes k1, k2 and a plain node w1, with the init manifest above."""
    with running_cluster(tmp_path, {"k1": ["--kernel"], "k2": ["--kernel"], "w1": ["--no-kernel"]}, INIT) as c:
        yield c


def keeper(cluster) -> dict:
    return cluster.statuses("oneos-init").get("keeper", {})


def test_a_kernel_agent_runs_on_a_kernel_node_and_moves_when_that_node_dies(kernels, tmp_path):
    first = kernels.wait_for(lambda: keeper(kernels).get("state") == "Running" and keeper(kernels), 30,
                             "keeper running")
    assert first["node"] in ("k1", "k2")
    # The name is the kernel agents': no pipeline may take it.
    clash = tmp_path / "clash.yaml"
    clash.write_text("apiVersion: oneos/v1\nkind: Pipeline\nmetadata: {name: oneos-init}\n"
                     "spec: {agents: [{name: a, run: [\"true\"]}]}\n")
    refused = kernels.ctl("apply", "-f", str(clash))
    assert refused.returncode != 0 and "belongs to the init manifest" in refused.stderr

    # Kill its node (perhaps the leader too): the other kernel node runs it, never w1. Its
    # sessions end at once, as their TTL expiry would (the expiry is timed in test_membership.py).
    kernels.lose(first["node"])
    other = {"k1": "k2", "k2": "k1"}[first["node"]]
    moved = kernels.wait_for(lambda: (k := keeper(kernels)).get("state") == "Running"
                             and k.get("node") != first["node"] and k,
                             2 * SESSION_TTL + LOCK_DELAY + 20, "the keeper to run on the other kernel node")
    assert moved["node"] == other and moved["epoch"] == first["epoch"] + 1
    assert kernels.leader() == other
