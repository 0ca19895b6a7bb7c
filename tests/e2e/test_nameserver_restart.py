"""The Name Server killed and restarted under a running cluster, as a user watching
`oneosctl get nodes` sees it (a module of its own: its wait of 2 x TTL runs beside
test_membership's, in another test process)."""

from __future__ import annotations

import time

from oneos import state
from tests.cluster import LOCK_DELAY, SESSION_TTL, Changes

SLACK = 5.0   # scheduling noise on a shared machine, on top of the bounds Consul promises


def test_restarting_the_name_server_loses_nothing_and_nodes_stay_registered(cluster):
    for name in ("r1", "r2", "r3"):
        cluster.start(name, "--kernel")
    cluster.wait_for(cluster.leader, 15, "a leader")
    cluster.ns.put("oneos/test/kept", b"written before the crash")

    cluster.nameserver.kill9()
    cluster.nameserver.start()

    assert cluster.ns.get("oneos/test/kept")[1].value == b"written before the crash"
    cluster.wait_for(lambda: cluster.node_ids() == {"r1", "r2", "r3"}, 2 * SESSION_TTL, "all nodes listed again")
    # The nodes keep renewing after the restart: listed at every look for more than 2xTTL.
    watch_until = time.monotonic() + 2 * SESSION_TTL + 2
    changes = Changes(cluster.ns, state.NODES)
    while time.monotonic() < watch_until:
        assert cluster.node_ids() == {"r1", "r2", "r3"}
        changes(watch_until - time.monotonic())   # look again at every change of a node record, or each second
    cluster.wait_for(cluster.leader, 2 * SESSION_TTL + LOCK_DELAY + SLACK, "a leader after the restart")
    for node in cluster.nodes:
        assert node.alive(), node.log()
