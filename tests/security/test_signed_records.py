"""Signed records (issue 12, item 3), against a Name Server without ACLs, where anyone may write
anything: a node runs only assignments a kernel node's registered key signed, and the controller
places only on nodes whose record their own registered key signed, so neither a forged command
nor a rogue node gets anywhere. Real `oneosd` processes; the Name Server written by hand as an
attacker would.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import pytest

from oneos import state
from oneos.identity import Identity, IdentityError
from tests.cluster import SESSION_TTL, Cluster
from tests.conftest import running_cluster
from tests.procs import BrokerProc, process_alive

UID = "5" * 32
REFUSED = "refused: the assignment is not signed by a kernel node's registered key: "


def assignment(name: str, argv: list[str]) -> dict:
    """An assignment of pipeline `job`, as the controller writes one (unsigned)."""
    return {"pipeline": "job", "uid": UID, "generation": 1, "epoch": 1, "agent": {"name": name, "run": argv},
            "inputs": [], "outputs": [], "attached": False, "files": {}}


def touch(path: Path) -> list[str]:
    """An argv that leaves `path` behind if it ever runs."""
    return [sys.executable, "-c", "import sys; open(sys.argv[1], 'w').close()", str(path)]


@pytest.fixture
def cluster(builtin_nameserver, tmp_path, tmp_path_factory):
    """A broker, a Name Server without ACLs and no kernel node: the test signs what it writes as the leader
    would (Cluster.leader_key), and no controller removes what it writes by hand."""
    broker = BrokerProc(tmp_path_factory.mktemp("pulsar")).start()
    c = Cluster(builtin_nameserver, tmp_path)
    try:
        c.bootstrap(broker.url)
        state.ensure_pipe_key(c.ns, "job", UID)
        yield c
    finally:
        c.stop()
        broker.stop()


def test_a_forged_assignment_runs_nothing_and_its_status_says_why(cluster, tmp_path):
    node = cluster.start("w1", "--no-kernel")
    cluster.register("w2", tmp_path / "home-w2", kernel=False)   # enrolled, but not a kernel node
    worker = Identity.load_or_create(tmp_path / "home-w2" / "runtimes" / "w2" / "node.key")
    stranger = Identity.generate()                                 # registered nowhere
    ran = tmp_path / "ran"
    ran.mkdir()

    altered = cluster.signed("w1", assignment("altered", touch(ran / "harmless")))
    altered["agent"]["run"] = touch(ran / "altered")               # after the leader signed it
    forged = {
        "unsigned": (assignment("unsigned", touch(ran / "unsigned")), "it is not signed"),
        "by-worker": (worker.sign(assignment("by-worker", touch(ran / "by-worker")), by="w2"),
                      "it is signed by w2, which is not a kernel node"),
        "unregistered": (stranger.sign(assignment("unregistered", touch(ran / "unregistered")), by="ghost"),
                         "it is signed by ghost, whose key is not registered"),
        "impostor": (stranger.sign(assignment("impostor", touch(ran / "impostor")), by="test-leader"),
                     "its signature by test-leader does not verify against test-leader's registered key "
                     "(altered, or forged)"),
        "altered": (altered, "its signature by test-leader does not verify against test-leader's registered key "
                             "(altered, or forged)"),
    }
    for name, (doc, _) in forged.items():
        state.put_document(cluster.ns, state.assign_key("w1", f"job.{name}"), "assignment", doc)
    cluster.wait_for(lambda: all(s["state"] == "Failed" for s in cluster.statuses("job").values())
                     and len(cluster.statuses("job")) == len(forged), 20, "the node to refuse each one")
    # Then a genuine one: once it has run, the node has seen every assignment before it.
    genuine = cluster.signed("w1", assignment("genuine", touch(ran / "genuine")))
    state.put_document(cluster.ns, state.assign_key("w1", "job.genuine"), "assignment", genuine)
    cluster.wait_for(lambda: cluster.statuses("job").get("genuine", {}).get("state") == "Exited", 20,
                     "the genuine assignment to run")

    assert sorted(os.listdir(ran)) == ["genuine"], "a forged assignment ran"
    statuses = cluster.statuses("job")
    for name, (_, why) in forged.items():
        assert statuses[name]["state"] == "Failed" and statuses[name]["node"] == "w1"
        assert statuses[name]["reason"] == REFUSED + why, statuses[name]
        assert "pid" not in statuses[name] and "incarnation" not in statuses[name]
    log = node.log().splitlines()
    for name, (_, why) in forged.items():
        said = [line for line in log if f"job.{name}: refusing to run it" in line]
        assert len(said) == 1 and said[0].endswith(REFUSED + why), said
    assert not any("job." + name in line and "starting" in line for line in log for name in forged)

    # Gone from the Name Server: so goes what the node said of them; the genuine agent's status stays.
    for name in forged:
        cluster.ns.delete(state.assign_key("w1", f"job.{name}"))
    cluster.wait_for(lambda: set(cluster.statuses("job")) == {"genuine"}, 20, "the refusals to be removed")


def test_a_running_agent_whose_assignment_is_replaced_by_a_forged_one_is_stopped(cluster, tmp_path):
    node = cluster.start("w1", "--no-kernel")
    key = state.assign_key("w1", "job.long")
    state.put_document(cluster.ns, key, "assignment", cluster.signed("w1", assignment("long", ["sleep", "600"])))
    running = cluster.wait_for(lambda: (s := cluster.statuses("job").get("long", {})).get("state") == "Running"
                               and s, 20, "the agent to run")
    # The same assignment with another command, keeping the leader's signature: the node stops the agent
    # it ran, and runs nothing in its stead.
    forged = copy.deepcopy(json.loads(cluster.ns.get(key)[1].value))
    forged["agent"]["run"] = touch(tmp_path / "forged")
    state.put_document(cluster.ns, key, "assignment", forged)
    refused = cluster.wait_for(lambda: (s := cluster.statuses("job").get("long", {})).get("state") == "Failed"
                               and s, 20, "the node to refuse the forged assignment")
    assert refused["reason"].startswith(REFUSED + "its signature by test-leader does not verify")
    assert not (tmp_path / "forged").exists()
    assert not process_alive(running["pid"]), "the agent of the replaced assignment still runs"
    assert sum("job.long: refusing to run it" in line for line in node.log().splitlines()) == 1


INIT = """\
apiVersion: oneos/v1
kind: Init
metadata: {name: oneos-init}
spec:
  agents:
    - {name: k-a, run: [sleep, "100000"]}
    - {name: k-b, run: [sleep, "100000"]}
    - {name: k-c, run: [sleep, "100000"]}
"""

PIPELINE = """\
apiVersion: oneos/v1
kind: Pipeline
metadata: {name: work}
spec:
  agents:
    - {name: a, run: [sleep, "100000"]}
    - {name: b, run: [sleep, "100000"]}
    - {name: c, run: [sleep, "100000"]}
    - {name: g, run: [sleep, "100000"], requires: {labels: {gpio: "true"}}}
"""


@pytest.fixture
def open_cluster(tmp_path):
    """A Name Server without ACLs, pulsar-lite, and one enrolled kernel node k1 (the leader) whose init
    manifest has three kernel agents."""
    with running_cluster(tmp_path, {"k1": ["--kernel"]}, INIT) as c:
        yield c


def forged_record(node_id: str, identity: Identity) -> dict:
    """A node record written by hand, claiming to be a kernel node with GPIO and room to spare."""
    return identity.sign({"id": node_id, "host": "pi", "address": "10.0.0.9", "pid": 4242, "kernel": True,
                          "state": "Ready", "labels": {"gpio": "true"}, "devices": {},
                          "capacity": {"cpu": 64, "memory": 1 << 40}, "arch": "aarch64", "os": "linux",
                          "versions": {"oneos": "0.1.0", "python": "3.11.2"}, "startedAt": "2026-11-22T00:00:00Z"},
                         by=node_id)


def test_a_rogue_node_claiming_kernel_and_gpio_is_not_placed_on(open_cluster, tmp_path):
    c = open_cluster
    # A real oneosd that was never approved, asking to be a kernel node with GPIO: it waits for approval.
    stranger = c.start("stranger", "--kernel", "--label", "gpio=true", register=False, wait=False)
    c.wait_for(lambda: "waiting for approval" in stranger.log(), 30, "the stranger to wait for approval")
    # Records written straight into the Name Server (no ACLs), each held by a session, claiming the same:
    # `rogue` has no registered key; `ghost`'s id was approved, but with another machine's key, so the
    # record's signature (by a key of the forger's) does not verify.
    c.register("ghost", tmp_path / "home-ghost", kernel=True)
    session = c.ns.session_create(ttl=SESSION_TTL, behavior="delete", lock_delay=0, checks=[])
    for node_id in ("rogue", "ghost"):
        assert state.put_document(c.ns, state.node_key(node_id), "node", forged_record(node_id, Identity.generate()),
                                  acquire=session)
    try:
        manifest = tmp_path / "work.yaml"
        manifest.write_text(PIPELINE)
        assert c.ctl("apply", "-f", str(manifest)).returncode == 0
        pending = ("no node has label gpio=true; not counted: ghost, rogue (not approved, or its record not "
                   "signed by its registered key: `oneosctl get nodes` says why)")
        c.wait_for(lambda: all(c.statuses("work").get(a, {}).get("state") == "Running" for a in "abc")
                   and c.statuses("work").get("g", {}).get("reason") == pending
                   and all(s.get("state") == "Running" for s in c.statuses("oneos-init").values())
                   and len(c.statuses("oneos-init")) == 3, 30, "the agents to run, and g to be Pending")

        # Everything on k1, though the others claim more room and the same rights; nothing for them.
        where = {s["node"] for s in c.statuses_all() if "node" in s}
        assert where == {"k1"}, c.statuses_all()
        assert {node for node, _ in state.read_assignments(c.ns).values()} == {"k1"}
        for node_id in ("rogue", "ghost", "stranger"):
            assert c.ns.keys(state.ASSIGN + node_id + "/")[1] == []

        shown = c.ctl("get", "nodes")
        rows = {line.split()[0]: line.split() for line in shown.stdout.splitlines()[1:]}
        assert rows["rogue"][1:4] == ["NotApproved", "no", "no"], shown.stdout
        assert rows["ghost"][1:4] == ["SignatureInvalid", "no", "no"], shown.stdout
        assert rows["k1"][1:4] == ["Ready", "yes", "yes"], shown.stdout
        assert rows["stranger"][1:3] == ["Pending", "approval"], shown.stdout
        assert "node rogue has no registered key" in shown.stderr
        assert ("the record of node ghost cannot be trusted: its signature by ghost does not verify against "
                "ghost's registered key") in shown.stderr
        # The leader says so once per node, not at every pass.
        leader_log = c.node("k1").log()
        assert leader_log.count("node rogue is not approved") == 1, leader_log
        assert leader_log.count("the record of node ghost cannot be trusted") == 1, leader_log
        assert stranger.alive()
    finally:
        c.ns.session_destroy(session)


SPREAD = """\
apiVersion: oneos/v1
kind: Pipeline
metadata: {name: spread}
spec:
  placement: {distinctNodes: true}
  agents:
    - {name: a, run: [sleep, "100000"]}
    - {name: b, run: [cat]}
    - {name: c, run: [cat]}
  links:
    - {from: a, to: b}
    - {from: b, to: c}
"""


def test_each_node_gets_the_frame_key_sealed_to_its_own_key_alone(tmp_path):
    """Issue 12, item 4: the per-pipeline frame key is one only the assigned nodes can read: the leader seals
    it into each assignment for that node's registered key; the nodes run the pipe with it."""
    with running_cluster(tmp_path, {"k1": ["--kernel"], "w1": ["--no-kernel"], "w2": ["--no-kernel"]}) as c:
        manifest = tmp_path / "spread.yaml"
        manifest.write_text(SPREAD)
        assert c.ctl("apply", "-f", str(manifest)).returncode == 0
        c.wait_for(lambda: [s.get("state") for s in c.statuses("spread").values()] == ["Running"] * 3, 30,
                   "the three agents to run")
        uid = state.read_pipelines(c.ns)[0]["spread"]["metadata"]["uid"]
        key = state.read_pipe_key(c.ns, "spread", uid)
        identities = {n: Identity.load_or_create(c.node(n).home / "runtimes" / n / "node.key")
                      for n in ("k1", "w1", "w2")}
        placed = {k: v for k, v in state.read_assignments(c.ns).items() if k.startswith("spread.")}
        assert sorted(node for node, _ in placed.values()) == ["k1", "w1", "w2"]
        context = state.frame_key_context("spread", uid)
        for node_id, doc in placed.values():
            assert doc["signature"]["by"] == "k1"
            assert identities[node_id].open(doc["frameKey"], context) == key
            for other in set(identities) - {node_id}:
                with pytest.raises(IdentityError):
                    identities[other].open(doc["frameKey"], context)
        # No refused frame: every node opened the same key.
        assert all(s.get("refusedFrames", 0) == 0 for s in c.statuses("spread").values())


def test_a_node_whose_key_is_removed_is_no_longer_placed_on_and_its_agents_move(tmp_path):
    """Without its registration a node's record counts for nothing: what ran there is Lost and placed on
    a node that is trusted, and the node stops it (its assignment is gone)."""
    with running_cluster(tmp_path, {"k1": ["--kernel"], "w1": ["--no-kernel"]}) as c:
        manifest = tmp_path / "one.yaml"
        manifest.write_text("apiVersion: oneos/v1\nkind: Pipeline\nmetadata: {name: one}\nspec:\n"
                            "  agents: [{name: a, run: [sleep, '100000'], requires: {labels: {zone: x}}}]\n")
        c.start("w2", "--no-kernel", "--label", "zone=x")
        assert c.ctl("apply", "-f", str(manifest)).returncode == 0
        first = c.wait_for(lambda: (s := c.statuses("one").get("a", {})).get("state") == "Running" and s, 30,
                           "the agent to run on w2")
        assert first["node"] == "w2"
        c.start("w3", "--no-kernel", "--label", "zone=x")
        c.ns.delete(state.key_key("w2"))          # as a revocation does, without ending its session
        moved = c.wait_for(lambda: (s := c.statuses("one").get("a", {})).get("state") == "Running"
                           and s.get("node") == "w3" and s, 30, "the agent to run on w3")
        assert moved["epoch"] == first["epoch"] + 1
        assert not process_alive(first["pid"]), "the agent still runs on the node no longer trusted"
        assert "w2" in c.node_ids()              # the node is still there: only not trusted
        log = c.node("k1").log()
        assert "one.a: node w2 is not approved (no key registered at oneos/keys/w2)" in log, log
