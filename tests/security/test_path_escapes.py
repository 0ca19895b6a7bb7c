"""Names that become paths on a node, written straight into the Name Server by whoever can write
it (bypassing `oneosctl apply` and the controller): a real `oneosd` refuses those that would lead
out of its folders, says so in one log line, and touches no file outside its data folder.

Each test puts a canary file outside the node's data folder, lists what is outside before and
after, and proves the node was listening by having it run a harmless assignment afterwards.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from oneos import state
from oneos.nameserver.client import kv_op
from tests.cluster import Cluster
from tests.procs import BrokerProc

UID = "0" * 32
CANARY = b"the canary, untouched\n"


def assignment(agent: dict, *, files: dict[str, str] | None = None, generation: int = 1) -> dict:
    """An agent's assignment, as the controller writes one."""
    return {"pipeline": "evil", "uid": UID, "generation": generation, "epoch": 1, "agent": agent,
            "inputs": [], "outputs": [], "attached": False, "files": files or {}}


def write_raw(cluster, key: str, doc: dict) -> None:
    """Write a key exactly as given: in a transaction's body, where no URL normalisation can touch `..`.
    Signed by a kernel node's registered key: even what the leader signs is checked before it touches a path."""
    cluster.ns.txn([kv_op("set", key, state.encode(cluster.signed("n1", doc)))])


def outside(root: Path, node) -> dict[str, bytes | None]:
    """Every file and folder under `root` but the node's data folder, its log and the Name Server's data."""
    data = node.home / "runtimes" / node.node_id
    skip = {data, node.log_path, root / "ns-data", root / "ns-data.log"}
    found: dict[str, bytes | None] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(folder, d) not in skip]
        for name in dirs:
            if Path(folder, name) != data.parent:   # runtimes/: made with the data folder, maybe after `before`
                found[str(Path(folder, name))] = None
        for name in files:
            path = Path(folder, name)
            if path not in skip:
                found[str(path)] = path.read_bytes() if not path.is_symlink() else b"-> " + os.readlink(path).encode()
    return found


def state_of(cluster, key: str) -> str | None:
    return cluster.statuses("evil").get(key.partition(".")[2], {}).get("state")


@pytest.fixture
def cluster(builtin_nameserver, tmp_path, tmp_path_factory):
    """A cluster with a broker (its data outside the folder the tests watch) and no kernel node."""
    broker = BrokerProc(tmp_path_factory.mktemp("pulsar")).start()
    c = Cluster(builtin_nameserver, tmp_path)
    try:
        c.bootstrap(broker.url)
        state.ensure_pipe_key(c.ns, "evil", UID)   # as apply makes it: the agents written by hand may run
        yield c
    finally:
        c.stop()
        broker.stop()


@pytest.fixture
def node(cluster, tmp_path):
    """One runtime that is not a kernel node: no controller removes what the test writes by hand."""
    (tmp_path / "canary").write_bytes(CANARY)
    return cluster.start("n1", "--no-kernel")


def test_an_assignment_key_that_leads_out_of_the_node_is_refused_and_touches_nothing(cluster, node, tmp_path):
    before = outside(tmp_path, node)
    agent = {"name": "a", "run": ["touch", "ran-here"]}
    keys = [
        "../../../escaped",                        # up and out of agents/, runtimes/n1/ and runtimes/
        str(tmp_path / "absolute"),                # oneos/assign/n1//tmp/...: an absolute path once joined
        "%2e%2e%2f%2e%2e%2f%2e%2e%2fencoded",      # ../../../encoded, were the key ever decoded
        "evil.a/../../../../canary",               # a real agent id, then out again
        "..",
    ]
    for key in keys:
        write_raw(cluster, state.assign_key("n1", key), assignment(agent))
    # Then one that runs: once it has, the node has seen (and refused) every key before it.
    write_raw(cluster, state.assign_key("n1", "evil.ok"), assignment({"name": "ok", "run": ["true"]}))
    cluster.wait_for(lambda: state_of(cluster, "evil.ok") == "Exited", 20, "the harmless agent to run")

    assert outside(tmp_path, node) == before, "the node made, changed or removed files outside its data folder"
    assert (tmp_path / "canary").read_bytes() == CANARY
    refusals = [line for line in node.log().splitlines() if "refusing the assignment" in line]
    for key in keys:
        said = [line for line in refusals if f"oneos/assign/n1/{key}:" in line]
        assert len(said) == 1, f"{key}: {said or node.log()}"
    assert "nothing of it is run" in refusals[0]

    # Said once: another change of the node's assignments does not repeat it; removing them touches nothing.
    for key in keys:
        cluster.ns.txn([kv_op("delete", state.assign_key("n1", key))])
    cluster.ns.delete(state.assign_key("n1", "evil.ok"))
    cluster.wait_for(lambda: state_of(cluster, "evil.ok") is None, 20, "the harmless agent to be removed")
    assert len([line for line in node.log().splitlines() if "refusing the assignment" in line]) == len(keys)
    assert outside(tmp_path, node) == before
    assert (tmp_path / "canary").read_bytes() == CANARY


def test_a_shipped_file_name_that_leads_out_of_the_agents_folder_writes_nothing_outside(cluster, node, tmp_path):
    payload = b"#!/bin/sh\necho overwritten\n"
    digest = hashlib.sha256(payload).hexdigest()
    cluster.ns.put(state.blob_key(digest), payload)
    target = tmp_path / "target"
    target.mkdir()
    (target / "canary").write_bytes(CANARY)
    before = outside(tmp_path, node)

    # A name with '..' (or absolute): the assignment's schema refuses it, so the node ignores the document.
    for n, name in enumerate(["../../../../../canary", str(tmp_path / "canary"), "x/../../../../../../canary"]):
        write_raw(cluster, state.assign_key("n1", f"evil.dots{n}"),
                  assignment({"name": f"dots{n}", "run": ["true"]}, files={name: digest}))

    # A link the agent itself left in its working directory, and then a file shipped through it: the
    # name passes every schema; the node sees where it leads before it writes.
    key = "evil.link"
    write_raw(cluster, state.assign_key("n1", key), assignment({"name": "link", "run": ["ln", "-s", str(target), "out"]}))
    cluster.wait_for(lambda: state_of(cluster, key) == "Exited", 20, "the agent to leave its link")
    write_raw(cluster, state.assign_key("n1", key),
              assignment({"name": "link", "run": ["./out/canary"]}, files={"out/canary": digest}, generation=2))
    cluster.wait_for(lambda: state_of(cluster, key) in ("Failed", "Exited")
                     and cluster.statuses("evil")["link"].get("generation") == 2, 20, "the agent's second start")

    assert (target / "canary").read_bytes() == CANARY, "the node wrote through the agent's link"
    assert (tmp_path / "canary").read_bytes() == CANARY
    status = cluster.statuses("evil")["link"]
    assert status["state"] == "Failed", status
    assert "shipped file 'out/canary' leads out of" in status["reason"], status
    assert "symbolic link" in status["reason"]
    assert outside(tmp_path, node) == before
    log = node.log()
    assert sum("ignoring an invalid assignment" in line and "is not a valid file path" in line
               for line in log.splitlines()) == 3, log
    assert sum("evil.link: not started: shipped file 'out/canary'" in line for line in log.splitlines()) == 1, log
    for n in range(3):
        assert state_of(cluster, f"evil.dots{n}") is None
