"""Runtimes join, leave, die and lead, as a user watching `oneosctl get nodes` sees it."""

from __future__ import annotations

import json
import shutil
import socket
import time

from oneos import state
from oneos.nodeagent.hardware import detect_labels
from tests.cluster import LOCK_DELAY, SESSION_TTL

SLACK = 5.0   # scheduling noise on a shared machine, on top of the bounds Consul promises


def test_three_runtimes_are_listed_with_one_leader(cluster):
    cluster.start("node-a", "--kernel", "--label", "room=lab")
    cluster.start("node-b", "--kernel")
    cluster.start("node-c", "--no-kernel")
    cluster.wait_for(cluster.leader, 15, "a leader to be elected")

    nodes = {n["id"]: n for n in cluster.get_nodes()}
    assert set(nodes) == {"node-a", "node-b", "node-c"}
    assert [n["kernel"] for n in (nodes["node-a"], nodes["node-b"], nodes["node-c"])] == [True, True, False]
    assert nodes["node-a"]["labels"] == {**detect_labels(), "room": "lab"}   # detected, then configured
    assert cluster.leader() in ("node-a", "node-b")   # only kernel runtimes contend
    for n in nodes.values():
        assert n["host"] == socket.gethostname()
        assert n["state"] == "Ready"
        assert n["capacity"]["cpu"] >= 1 and n["capacity"]["memory"] > 0

    # What the tests read in-process is what `oneosctl get nodes -o json` prints.
    assert json.loads(cluster.ctl("get", "nodes", "-o", "json").stdout)["items"] == cluster.get_nodes()
    table = cluster.ctl("get", "nodes")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATE", "LEADER", "KERNEL", "LABELS", "AGE"]
    row = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(row) == {"node-a", "node-b", "node-c"}
    shown = lambda labels: ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<none>"   # noqa: E731
    assert row["node-a"][1:5] == ["Ready", "yes" if cluster.leader() == "node-a" else "no", "yes",
                                  shown({**detect_labels(), "room": "lab"})]
    assert row["node-c"][3:5] == ["no", shown(detect_labels())]


def test_sigterm_makes_a_node_leave_at_once(cluster):
    cluster.start("stays")
    leaving = cluster.start("leaves")
    started = time.monotonic()
    assert leaving.terminate() == 0
    cluster.wait_for(lambda: cluster.node_ids() == {"stays"}, 3, "the stopped node to disappear")
    # Well under the session TTL: the node left, it did not time out.
    assert time.monotonic() - started < SESSION_TTL / 2


def test_kill9_node_disappears_within_two_ttl_and_another_kernel_node_leads(cluster):
    cluster.start("k1", "--kernel")
    cluster.wait_for(lambda: cluster.leader() == "k1", 15, "k1 to lead")
    cluster.start("k2", "--kernel")
    cluster.start("worker")
    victim = cluster.nodes[0]

    victim.kill9()
    killed = time.monotonic()
    # Until its session lapses the dead node is still listed: liveness is the TTL.
    assert "k1" in cluster.node_ids()
    cluster.wait_for(lambda: "k1" not in cluster.node_ids(), 2 * SESSION_TTL + SLACK, "the killed node to disappear")
    gone_after = time.monotonic() - killed
    cluster.wait_for(lambda: cluster.leader() == "k2", 2 * SESSION_TTL + LOCK_DELAY + SLACK, "k2 to take the lead")
    led_after = time.monotonic() - killed
    assert gone_after <= 2 * SESSION_TTL + SLACK
    assert led_after <= 2 * SESSION_TTL + LOCK_DELAY + SLACK
    assert cluster.node_ids() == {"k2", "worker"}


def test_a_second_runtime_with_a_live_id_refuses_to_start(cluster, tmp_path):
    first = cluster.start("twin")
    # The same key on another machine (a cloned disk): it is enrolled, but the id is taken.
    clone = tmp_path / "other-home" / "runtimes" / "twin"
    clone.mkdir(parents=True)
    shutil.copy2(cluster.node("twin").home / "runtimes" / "twin" / "node.key", clone / "node.key")
    second = cluster.start("twin", home=tmp_path / "other-home", wait=False)
    second.popen.wait(20)
    assert second.popen.returncode != 0
    last = second.log().strip().splitlines()[-1]
    assert "runtime id 'twin' is already running on host" in last
    assert socket.gethostname() in last and f"pid {first.pid}" in last
    assert first.alive() and cluster.node_ids() == {"twin"}


def test_an_id_alive_on_another_host_is_refused_naming_that_host(cluster):
    session = cluster.ns.session_create(ttl=SESSION_TTL, behavior="delete", lock_delay=0, checks=[])
    record = {"id": "ghost", "host": "greenhouse-pi", "address": "10.0.0.7", "pid": 4242, "kernel": False,
              "state": "Ready", "labels": {}, "devices": {}, "capacity": {"cpu": 4, "memory": 1 << 30},
              "arch": "aarch64", "os": "linux", "versions": {"oneos": "0.1.0", "python": "3.11.2"},
              "startedAt": "2026-11-22T00:00:00Z"}
    assert state.put_document(cluster.ns, state.node_key("ghost"), "node", record, acquire=session)
    proc = cluster.start("ghost", wait=False)
    proc.popen.wait(20)
    assert proc.popen.returncode != 0
    assert "already running on host greenhouse-pi (pid 4242)" in proc.log().strip().splitlines()[-1]
    cluster.ns.session_destroy(session)


def test_a_runtime_restarted_after_a_crash_takes_its_id_back_at_once(cluster):
    crashed = cluster.start("phoenix")
    crashed.kill9()
    again = cluster.start("phoenix", home=crashed.home)
    assert again.alive()
    assert [n["pid"] for n in cluster.get_nodes() if n["id"] == "phoenix"] == [again.pid]


def test_a_node_whose_session_was_lost_registers_again(cluster):
    proc = cluster.start("resilient")
    _, entry = cluster.ns.get(state.node_key("resilient"))
    # As if the session had expired during a partition: its node record goes with it.
    cluster.ns.session_destroy(entry.session)
    assert "resilient" not in cluster.node_ids()
    cluster.wait_for(lambda: "resilient" in cluster.node_ids(), SESSION_TTL, "the node to register again")
    _, again = cluster.ns.get(state.node_key("resilient"))
    assert again.session and again.session != entry.session
    assert proc.alive()
