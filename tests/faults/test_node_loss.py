"""Node loss and fencing, with real processes: a node's agents are placed again when its
session ends, their pipes resume exactly, and a node that comes back leaves no second copy.

Nodes die for real (kill -9, SIGSTOP); their sessions are then ended at the Name Server at once,
as the TTL expiry would end them up to 2×TTL later (Cluster.expire, Cluster.lose): the subject
here is what happens after the loss. The expiry itself is timed in tests/e2e/test_membership.py.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.cluster import SESSION_TTL
from tests.conftest import running_cluster
from tests.faults.numbered import NumberedStream
from tests.procs import process_alive, sleep_until, wait_until

WORKER = ["--no-kernel", "--label", "role=worker"]
ON_BASE = {"node": "n1"}
ON_WORKERS = {"labels": {"role": "worker"}}
LOSS_DEADLINE = 2 * SESSION_TTL + 15   # the session expires within 2xTTL; then placement and start-up


@pytest.fixture
def workers(tmp_path):
    """n1 (kernel, the leader) and three workers n2, n3, n4."""
    with running_cluster(tmp_path, {"n1": ["--kernel"], "n2": WORKER, "n3": WORKER, "n4": WORKER}) as c:
        yield c


def agent_pids(cluster, pipeline: str, agent: str) -> list[int]:
    """Live processes of an agent of this cluster, whichever node started them (by their environment).

    By the cluster's Name Server too: other test runs on this machine run pipelines of the same names.
    """
    wanted = [f"ONEOS_PIPELINE={pipeline}".encode(), f"ONEOS_AGENT={agent}".encode(),
              f"ONEOS_NAMESERVER={cluster.url}".encode()]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if all(w in env for w in wanted) and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def running_elsewhere(cluster, pipeline: str, agent: str, lost_node: str):
    status = cluster.statuses(pipeline).get(agent, {})
    return status if status.get("state") == "Running" and status.get("node") != lost_node else None


def test_a_lost_nodes_agent_is_placed_again_and_its_pipes_resume_exactly(workers, tmp_path):
    stream = NumberedStream(tmp_path, lines=50_000, gate_at=30_000,
                            requires={"source": ON_BASE, "sink": ON_BASE, "relay": ON_WORKERS})
    stream.apply(workers)
    stream.wait_for_lines(5_000)
    before = workers.statuses(stream.name)["relay"]
    lost = before["node"]

    workers.node(lost).kill9()   # the node dies, and its agents with it
    wait_until(lambda: not agent_pids(workers, stream.name, "relay"), 10, "the relay to die with its node")
    workers.expire(lost)
    killed = time.monotonic()
    after = workers.wait_for(lambda: running_elsewhere(workers, stream.name, "relay", lost), LOSS_DEADLINE,
                             "the relay to run on another worker")
    assert lost not in workers.node_ids()
    assert after["epoch"] == before["epoch"] + 1, (before, after)
    print(f"relay Running on {after['node']} {time.monotonic() - killed:.1f}s after {lost}'s session ended")

    stream.open_gate()
    assert stream.wait_finished(workers, 60)["sink"]["state"] == "Exited"
    stream.assert_exact()


def test_an_agent_that_fits_nowhere_else_is_pending_with_the_reason_until_its_node_returns(workers, tmp_path):
    manifest = tmp_path / "pinned.yaml"
    manifest.write_text("apiVersion: oneos/v1\nkind: Pipeline\nmetadata: {name: pinned}\nspec:\n  agents:\n"
                        "    - {name: waiter, run: [sleep, '1000'], requires: {node: n2}}\n")
    assert workers.ctl("apply", "-f", str(manifest)).returncode == 0
    workers.wait_for(lambda: workers.statuses("pinned").get("waiter", {}).get("state") == "Running", 30,
                     "Running on n2")

    workers.lose("n2")
    reason = "its node n2 was lost, and it fits nowhere else: no node n2"
    workers.wait_for(lambda: workers.statuses("pinned")["waiter"]["state"] == "Pending", LOSS_DEADLINE, "Pending")
    assert workers.statuses("pinned")["waiter"]["reason"] == reason
    assert f"waiter: Pending: {reason}" in workers.ctl("describe", "pipeline", "pinned").stdout

    workers.start("n2", *WORKER)   # the node comes back (same id): the agent runs there again
    status = workers.wait_for(lambda: running_elsewhere(workers, "pinned", "waiter", "nowhere"), 30, "Running again")
    assert status["node"] == "n2" and len(agent_pids(workers, "pinned", "waiter")) == 1


def test_a_node_written_off_while_paused_leaves_no_second_copy_running(workers, tmp_path):
    stream = NumberedStream(tmp_path, lines=50_000, gate_at=30_000,
                            requires={"source": ON_BASE, "sink": ON_BASE, "relay": ON_WORKERS})
    stream.apply(workers)
    stream.wait_for_lines(5_000)
    before = workers.statuses(stream.name)["relay"]
    paused = workers.node(before["node"])

    # The node's runtime stops answering (SIGSTOP): the cluster writes it off and places the
    # relay elsewhere, while the old copy still exists on the paused node. Its session ends
    # once it has been silent for a TTL, the earliest an expiry may come: by then the node's
    # own self-fencing (0.8×TTL without a renewal) is due, as after any real expiry.
    os.kill(paused.pid, signal.SIGSTOP)
    try:
        sleep_until(time.monotonic() + SESSION_TTL)
        workers.expire(paused.node_id)
        moved = workers.wait_for(lambda: running_elsewhere(workers, stream.name, "relay", paused.node_id),
                                 LOSS_DEADLINE, "the relay to run on another worker")
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    # Back, the runtime finds it was written off: it kills its copy at once and joins again.
    wait_until(lambda: agent_pids(workers, stream.name, "relay") == [moved["pid"]], 10,
               f"the old copy (pid {before['pid']}) to be gone, leaving only {moved['pid']}")
    workers.wait_for(lambda: paused.node_id in workers.node_ids(), 20, f"{paused.node_id} to join again")
    current = workers.statuses(stream.name)["relay"]
    assert (current["node"], current["pid"], current["epoch"]) == (moved["node"], moved["pid"], before["epoch"] + 1)

    stream.open_gate()
    assert stream.wait_finished(workers, 60)["sink"]["state"] == "Exited"
    stream.assert_exact()
    assert agent_pids(workers, stream.name, "relay") == []
