"""Trust in the controller's pass, on plain data: only nodes whose record their registered key signed
are placed on, kernel membership comes from the approvals and the boot record, and what the leader
writes is signed, with each pipeline's frame key sealed to the node that runs its agent."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from oneos import state
from oneos.controller.controller import Controller
from oneos.controller.reconciler import Placer, Writes, reconcile, run_pass, write
from oneos.controller.view import ClusterView, init_pipeline, trusted_nodes
from oneos.identity import Identity, IdentityError, verify
from oneos.nameserver.client import NameServer
from tests.controller.test_reconciler import NOW, UID, Recorder, agent, assigned, node, pipeline, status

GI = 2**30
IDS = {name: Identity.generate() for name in ("k1", "n1", "n2", "rogue")}
PIPE_KEY = b"p" * 32


def key_record(node_id: str, kernel: bool = False, identity: Identity | None = None) -> dict:
    identity = identity or IDS[node_id]
    return state.new_key_record(node_id, identity.signing_key, identity.box_key, kernel=kernel, approved_by="test")


def record(node_id: str, *, kernel: bool = False, labels: dict | None = None, by: Identity | None = None) -> dict:
    """A node record as the node writes it: signed by its own key (or `by`)."""
    doc = {"id": node_id, "host": "h", "address": "127.0.0.1", "pid": 1, "kernel": kernel, "state": "Ready",
           "labels": dict(labels or {}), "devices": {}, "capacity": {"cpu": 2, "memory": 4 * GI},
           "arch": "x86_64", "os": "linux", "versions": {"oneos": "0", "python": "3.11"}, "startedAt": NOW}
    return (by or IDS[node_id]).sign(doc, by=node_id)


KEYS = {"k1": key_record("k1", kernel=True), "n1": key_record("n1"), "n2": key_record("n2")}


def trusted_view(records, assignments=(), statuses=(), keys=KEYS, boot=None, **fields) -> ClusterView:
    """What ClusterView.read makes of these records and keys."""
    nodes, untrusted = trusted_nodes(records, keys)
    kernels = state.kernel_keys(keys, boot)
    return ClusterView(nodes, dict(assignments), dict(statuses), frozenset(n.id for n in nodes if n.id in kernels),
                       keys=keys, untrusted=untrusted, boot=boot,
                       pipe_keys={("p", UID): PIPE_KEY}, **fields)


def signed_writes(recorder: Recorder) -> Writes:
    return Writes(recorder, signer=("k1", IDS["k1"]))


def assignments_in(txns) -> dict[str, tuple[str, dict]]:
    """agent id -> (node, assignment) for each assignment the transactions set."""
    found = {}
    for txn in txns:
        for verb, key, doc in txn:
            if verb == "set" and key.startswith(state.ASSIGN):
                node_id, agent_key = state.split_assign_key(key)
                found[agent_key] = (node_id, doc)
    return found


# ------------------------------------------------------------------------------ who is a member

def test_only_records_signed_by_their_nodes_registered_key_are_members():
    forged = dict(record("n2"), labels={"gpio": "true"})              # altered after it was signed
    nodes, untrusted = trusted_nodes([record("n1"), record("rogue", kernel=True, labels={"gpio": "true"}),
                                      forged, record("k1", by=IDS["n1"])], KEYS)
    assert [n.id for n in nodes] == ["n1"]
    assert untrusted == {
        "rogue": "node rogue is not approved (no key registered at oneos/keys/rogue): nothing is placed on it; "
                 "approve it with `oneosctl node approve rogue` if it is yours",
        "n2": "the record of node n2 cannot be trusted: its signature by n2 does not verify against n2's "
              "registered key (altered, or forged); nothing is placed on it",
        "k1": "the record of node k1 cannot be trusted: its signature by k1 does not verify against k1's "
              "registered key (altered, or forged); nothing is placed on it"}
    unsigned = {k: v for k, v in record("n1").items() if k != "signature"}
    assert trusted_nodes([unsigned], KEYS)[1] == {
        "n1": "the record of node n1 cannot be trusted: it is not signed; nothing is placed on it"}
    by_other = IDS["n2"].sign(unsigned, by="n2")
    assert trusted_nodes([by_other], KEYS)[1] == {
        "n1": "the record of node n1 cannot be trusted: it is signed by n2, not by the node itself; "
              "nothing is placed on it"}


def test_the_labels_an_approval_gave_are_the_nodes_whatever_its_record_says():
    keys = dict(KEYS, n1=dict(key_record("n1"), labels={"zone": "lab", "gpio": "true"}))
    nodes, _ = trusted_nodes([record("n1", labels={"zone": "home", "arch": "arm"}), record("n2")], keys)
    assert {n.id: n.labels for n in nodes} == {"n1": {"zone": "lab", "gpio": "true", "arch": "arm"}, "n2": {}}


def test_kernel_membership_comes_from_the_approval_or_the_boot_record_never_the_record():
    records = [record("k1"), record("n1", kernel=True), record("n2")]
    assert trusted_view(records).kernel_ids == {"k1"}                       # n1's claim counts for nothing
    assert trusted_view(records, boot={"kernelNodes": ["n2", "rogue"]}).kernel_ids == {"k1", "n2"}
    # A kernel agent fits only on k1; with k1 gone, n1's claim does not make it a place for one.
    init = init_pipeline({"metadata": {"name": "oneos-init"}, "spec": {"agents": [agent("broker")]}}, 1)
    cluster = trusted_view([record("n1", kernel=True)])
    plan = Placer(cluster).place(reconcile(cluster, "oneos-init", init))
    assert plan.place == [] and [p.reason for p in plan.pending] == [
        "0/0 nodes: no node has joined the cluster; not counted: n1 (not a kernel node: neither its approval "
        "nor the boot record says so)"]


def test_an_untrusted_nodes_agents_are_lost_and_placed_elsewhere_and_pending_says_why():
    manifest = pipeline(agent("a"), agent("g", requires={"labels": {"gpio": "true"}}))
    key, placed = assigned(manifest, "a", "n2")
    # n2's record no longer verifies (its key was replaced, say): what ran there is placed again.
    keys = dict(KEYS, n2=key_record("n2", identity=IDS["rogue"]))
    cluster = trusted_view([record("n1"), record("n2"), record("rogue", labels={"gpio": "true"})],
                           [(key, placed)], [status(manifest, "a", "n2")], keys=keys)
    plan = Placer(cluster).place(reconcile(cluster, "p", manifest))
    why = cluster.untrusted["n2"]
    assert [(lost.key, lost.reason) for lost in plan.lost] == [("p.a", f"{why}; placing the agent again")]
    assert [(e.key, e.node, e.reason) for e in plan.place] == [("p.a", "n1", why)]
    # The agent that wants gpio fits nowhere: the rogue node that claims it is not counted, and it says so.
    assert [(p.key, p.reason) for p in plan.pending] == [(
        "p.g", "no node has label gpio=true; not counted: n2, rogue (not approved, or its record not signed "
               "by its registered key: `oneosctl get nodes` says why)")]


# ------------------------------------------------------------------------------- what is written

def test_assignments_are_signed_by_the_leader_with_the_frame_key_sealed_to_their_node():
    manifest = pipeline(agent("a"), agent("b"), links=[("a", "b")])
    cluster = trusted_view([record("n1"), record("n2")])
    recorder = Recorder()
    write(Placer(cluster).place(reconcile(cluster, "p", manifest)), cluster, signed_writes(recorder), now=lambda: NOW)
    written = assignments_in(recorder.txns)
    assert {n for n, _ in written.values()} == {"n1", "n2"}
    context = state.frame_key_context("p", UID)
    for node_id, doc in written.values():
        assert doc["signature"]["by"] == "k1" and verify(doc, IDS["k1"].signing_key)
        assert IDS[node_id].open(doc["frameKey"], context) == PIPE_KEY
        with pytest.raises(IdentityError):
            IDS["n2" if node_id == "n1" else "n1"].open(doc["frameKey"], context)
    # Without a signer (tools, tests) nothing is signed: nodes refuse such assignments.
    recorder = Recorder()
    write(Placer(cluster).place(reconcile(cluster, "p", manifest)), cluster, Writes(recorder), now=lambda: NOW)
    assert all("signature" not in doc for _, doc in assignments_in(recorder.txns).values())


def test_a_rewrite_in_place_keeps_the_sealed_key_and_a_move_seals_it_anew():
    old = pipeline(agent("a"), agent("b"))
    recorder = Recorder()
    cluster = trusted_view([record("n1"), record("n2")])
    write(Placer(cluster).place(reconcile(cluster, "p", old)), cluster, signed_writes(recorder), now=lambda: NOW)
    first = assignments_in(recorder.txns)

    # A new generation (same work) and a changed argv (a restart, same node, same uid): the same sealed key.
    new = pipeline(agent("a"), agent("b", "tr", "a", "b"), generation=2)
    cluster = dataclasses.replace(cluster, assignments=first)
    recorder = Recorder()
    write(Placer(cluster).place(reconcile(cluster, "p", new)), cluster, signed_writes(recorder), now=lambda: NOW)
    again = assignments_in(recorder.txns)
    assert set(again) == {"p.a", "p.b"}
    for key in again:
        assert again[key][0] == first[key][0] and again[key][1]["frameKey"] == first[key][1]["frameKey"]
        assert not state.same_work(again[key][1], first[key][1]) or key == "p.a"

    # Its node gone: placed on the other one, with the key sealed to that one.
    lost_node = again["p.a"][0]
    other = "n2" if lost_node == "n1" else "n1"
    cluster = trusted_view([record(other)], {**first, **again}.items())
    recorder = Recorder()
    write(Placer(cluster).place(reconcile(cluster, "p", new)), cluster, signed_writes(recorder), now=lambda: NOW)
    moved = assignments_in(recorder.txns)["p.a"]
    assert moved[0] == other and IDS[other].open(moved[1]["frameKey"], state.frame_key_context("p", UID)) == PIPE_KEY


def test_a_node_enrolled_again_with_a_new_key_gets_its_frame_key_sealed_anew_without_a_restart():
    manifest = pipeline(agent("a"))
    recorder = Recorder()
    cluster = trusted_view([record("n1")])
    write(Placer(cluster).place(reconcile(cluster, "p", manifest)), cluster, signed_writes(recorder), now=lambda: NOW)
    first = assignments_in(recorder.txns)
    assert first["p.a"][1]["frameKeyFor"] == IDS["n1"].box_key

    # The same pass again: nothing to write (the sealed key is kept as it is).
    cluster = dataclasses.replace(cluster, assignments=first)
    recorder = Recorder()
    write(Placer(cluster).place(reconcile(cluster, "p", manifest)), cluster, signed_writes(recorder), now=lambda: NOW)
    assert assignments_in(recorder.txns) == {}

    # n1 enrolled again (a new home): its record signed by the new key, which is registered now.
    new_key = Identity.generate()
    keys = dict(KEYS, n1=key_record("n1", identity=new_key))
    cluster = trusted_view([record("n1", by=new_key)], first.items(), keys=keys)
    recorder = Recorder()
    write(Placer(cluster).place(reconcile(cluster, "p", manifest)), cluster, signed_writes(recorder), now=lambda: NOW)
    node_id, doc = assignments_in(recorder.txns)["p.a"]
    assert node_id == "n1" and state.same_work(doc, first["p.a"][1])          # no restart
    assert new_key.open(doc["frameKey"], state.frame_key_context("p", UID)) == PIPE_KEY
    assert doc["frameKeyFor"] == new_key.box_key


def test_a_kept_assignment_whose_signature_no_longer_counts_is_signed_again():
    manifest = pipeline(agent("a"), agent("b"), agent("c"))
    good = IDS["k1"].sign(dict(assigned(manifest, "a", "n1")[1][1], frameKey="x" * 124, frameKeyFor=IDS["n1"].box_key), by="k1")
    unsigned = dict(assigned(manifest, "b", "n1")[1][1], frameKey="y" * 124, frameKeyFor=IDS["n1"].box_key)
    by_worker = IDS["n1"].sign(dict(assigned(manifest, "c", "n1")[1][1], frameKey="z" * 124, frameKeyFor=IDS["n1"].box_key), by="n1")
    cluster = trusted_view([record("n1")], {"p.a": ("n1", good), "p.b": ("n1", unsigned), "p.c": ("n1", by_worker)})
    recorder = Recorder()
    write(Placer(cluster).place(reconcile(cluster, "p", manifest)), cluster, signed_writes(recorder), now=lambda: NOW)
    rewritten = assignments_in(recorder.txns)
    assert set(rewritten) == {"p.b", "p.c"}
    for key, kept in (("p.b", "y" * 124), ("p.c", "z" * 124)):
        node_id, doc = rewritten[key]
        assert node_id == "n1" and verify(doc, IDS["k1"].signing_key) and doc["frameKey"] == kept
        assert state.same_work(doc, cluster.assignments[key][1])
    # A controller that does not sign leaves them be (and writes nothing).
    recorder = Recorder()
    run_pass(dataclasses.replace(cluster, manifests={"p": manifest}), Writes(recorder), now=lambda: NOW)
    assert recorder.txns == []


def test_an_untrusted_node_is_said_once_not_at_every_pass(caplog):
    controller = Controller(NameServer("http://127.0.0.1:9"))
    caplog.set_level(logging.INFO, "oneos.controller")
    untrusted = trusted_view([record("rogue")]).untrusted
    for _ in range(3):
        controller._tell_untrusted(untrusted)
    assert [r.getMessage() for r in caplog.records] == [untrusted["rogue"]]
    controller._tell_untrusted({})
    assert caplog.records[-1].getMessage() == "node rogue is trusted again, or gone"


def test_a_leader_whose_key_is_not_a_kernel_nodes_writes_nothing(builtin_nameserver, tmp_path, caplog):
    """A runtime run as a kernel node but approved as a plain one may win the election: every node would
    refuse what it signs (and the agents it re-signed would stop), so it writes nothing, and says so once."""
    from oneos.controller.reconciler import UntrustedLeader, reconcile_all
    from tests.cluster import EMPTY_INIT

    ns = NameServer(builtin_nameserver.url)
    (tmp_path / "init.yaml").write_text(EMPTY_INIT)
    state.bootstrap(ns, state.new_boot_record(cluster="t", pulsar_url="pulsar://127.0.0.1:6650"),
                    state.default_init(tmp_path / "init.yaml"))
    for node_id in ("n1", "k1"):
        state.put_document(ns, state.key_key(node_id), "key", KEYS[node_id])
        state.put_document(ns, state.node_key(node_id), "node", record(node_id))
    state.put_document(ns, state.pipeline_key("p"), "pipeline", pipeline(agent("a")))
    with pytest.raises(UntrustedLeader, match=r"this runtime \(n1\) leads, but oneos/keys/n1 does not register it "
                                              "as a kernel node: .* approve it as a kernel node, or run it with"):
        reconcile_all(ns, signer=("n1", IDS["n1"]))
    assert state.read_assignments(ns) == {} and state.read_statuses(ns) == {}

    controller = Controller(ns, signer=("n1", IDS["n1"]))
    caplog.set_level(logging.INFO, "oneos.controller")
    for _ in range(3):
        controller._reconcile()
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        str(pytest.raises(UntrustedLeader, reconcile_all, ns, signer=("n1", IDS["n1"])).value)]
    # As k1 (a kernel node's key), the same pass places the agent, signed.
    reconcile_all(ns, signer=("k1", IDS["k1"]))
    [(node_id, doc)] = state.read_assignments(ns).values()
    assert verify(doc, IDS["k1"].signing_key)


# ------------------------------------------------------------------------------ statuses

def test_a_status_counts_only_signed_by_the_node_it_names_or_a_kernel_node():
    """Any node's token may write any status: one node saying another's agent has finished must count
    for nothing, or it could stop a rerun or end a stream."""
    kernels = state.kernel_keys(KEYS, None)
    _, doc = status(pipeline(agent("a")), "a", "n1", "Exited", exitCode=0)
    assert state.status_distrust(IDS["n1"].sign(doc, by="n1"), KEYS, kernels) is None
    assert state.status_distrust(IDS["k1"].sign(doc, by="k1"), KEYS, kernels) is None     # the leader's Lost
    assert state.status_distrust(doc, KEYS, kernels) == "it is not signed"
    assert state.status_distrust(IDS["n2"].sign(doc, by="n2"), KEYS, kernels) == (
        "it is signed by n2, neither the node it names nor a kernel node")
    assert state.status_distrust(IDS["n2"].sign(doc, by="n1"), KEYS, kernels) == (
        "its signature by n1 does not verify against n1's registered key (altered, or forged)")
    assert state.status_distrust(dict(IDS["n1"].sign(doc, by="n1"), state="Failed"), KEYS, kernels) is not None


def test_the_controller_takes_no_notice_of_a_forged_status(builtin_nameserver):
    ns = NameServer(builtin_nameserver.url)
    ns.delete(state.PREFIX, recurse=True)
    for node_id in ("k1", "n1", "n2"):
        state.put_document(ns, state.key_key(node_id), "key", KEYS[node_id])
    manifest = pipeline(agent("a"), agent("b"))
    key_a, doc_a = status(manifest, "a", "n1", "Running")
    key_b, doc_b = status(manifest, "b", "n1", "Exited", exitCode=0)
    state.put_document(ns, state.status_key(key_a), "status", IDS["n1"].sign(doc_a, by="n1"))
    state.put_document(ns, state.status_key(key_b), "status", IDS["n2"].sign(doc_b, by="n2"))   # n2 forging n1's
    view = ClusterView.read(ns)
    assert list(view.statuses) == [key_a]
    assert view.bad_statuses == {key_b: "it cannot be trusted: it is signed by n2, neither the node it names "
                                        "nor a kernel node"}
