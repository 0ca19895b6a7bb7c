"""The controller's pass on plain data: `reconcile` decides what, `Placer` where, `write` commits.

Every transition the end-to-end tests reach with real processes (a node lost, requirements
changed, a kernel agent moved, a device's owner down, finished agents left alone) is driven
here on a ClusterView built by hand, with the transactions recorded instead of sent.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import uuid

import pytest

from oneos import state
from oneos.controller.reconciler import (Forget, Keep, Lost, NotLeader, Placer, Restart, Stop, Writes, reconcile,
                                         reconcile_all, run_pass, write)
from oneos.controller.scheduler import NodeInfo
from oneos.controller.view import ClusterView, init_pipeline
from oneos.identity import Identity, IdentityError, verify
from oneos.nameserver.client import NameServer, TxnConflict, kv_op
from tests.cluster import EMPTY_INIT

UID = "0123456789abcdef" * 2
GI = 2**30
NOW = "2026-01-02T03:04:05Z"


def node(node_id, labels=None, devices=(), memory=4 * GI, cpu=4):
    return NodeInfo(node_id, dict(labels or {}), set(devices), float(cpu), memory)


def agent(name, *run, **fields):
    return {"name": name, "run": list(run) or ["cat"], **fields}


def pipeline(*agents, links=(), name="p", generation=1, uid=UID, placement=None):
    spec = {"agents": list(agents), "links": [{"from": a, "to": b} for a, b in links]}
    if placement:
        spec["placement"] = placement
    return {"apiVersion": "oneos/v1", "kind": "Pipeline",
            "metadata": {"name": name, "uid": uid, "generation": generation, "createdAt": NOW}, "spec": spec}


def assigned(manifest, name, node_id, epoch=1):
    """The assignment entry of a ClusterView: agent id -> (node, assignment)."""
    key = state.agent_id(manifest["metadata"]["name"], name)
    return key, (node_id, dict(state.desired_assignments(manifest)[key], epoch=epoch, assignedAt=NOW))


def status(manifest, name, node_id, state_="Running", epoch=1, **fields):
    meta = manifest["metadata"]
    doc = {"pipeline": meta["name"], "agent": name, "uid": meta["uid"], "state": state_, "generation": meta["generation"],
           "epoch": epoch, "updatedAt": NOW, **fields}
    if node_id is not None:
        doc["node"] = node_id
    return state.agent_id(meta["name"], name), doc


def view(nodes, assignments=(), statuses=(), **fields):
    return ClusterView(list(nodes), dict(assignments), dict(statuses), **fields)


def planned(cluster, manifest, name="p"):
    """The plan of one pipeline, placed: what the pass would write."""
    return Placer(cluster).place(reconcile(cluster, name, manifest))


class Recorder:
    """In place of the Name Server: takes transactions and keeps them as [(verb, key, document)]."""

    url = "recorder"

    def __init__(self) -> None:
        self.txns: list[list[tuple[str, str, dict | None]]] = []

    def txn(self, ops):
        self.txns.append([(op["KV"]["Verb"], op["KV"]["Key"],
                           json.loads(base64.b64decode(op["KV"]["Value"])) if "Value" in op["KV"] else None)
                          for op in ops])
        return []


def written(plan, cluster):
    recorder = Recorder()
    write(plan, cluster, Writes(recorder), now=lambda: NOW)
    return recorder.txns


def after(cluster, txns):
    """The view the next pass reads once `txns` are committed (nodes unchanged)."""
    assignments, statuses = dict(cluster.assignments), dict(cluster.statuses)
    for txn in txns:
        for verb, key, doc in txn:
            if key.startswith(state.ASSIGN):
                node_id, _, agent_key = key[len(state.ASSIGN):].partition("/")
                if verb == "delete":
                    assert assignments.pop(agent_key)[0] == node_id
                else:
                    assignments[agent_key] = (node_id, doc)
            elif key.startswith(state.STATUS):
                if verb == "delete":
                    statuses.pop(key[len(state.STATUS):])
                else:
                    statuses[key[len(state.STATUS):]] = doc
    return ClusterView(cluster.nodes, assignments, statuses, cluster.kernel_ids, cluster.device_owners)


# ------------------------------------------------------------------ new, changed, unchanged

def test_a_new_pipeline_is_placed_with_linked_agents_apart():
    manifest = pipeline(agent("a"), agent("b"), agent("c"), links=[("a", "b"), ("b", "c")])
    cluster = view([node("n1"), node("n2"), node("n3")])
    plan = reconcile(cluster, "p", manifest)
    assert [(e.key, e.reason, e.assignment["epoch"], e.node) for e in plan.place] == [
        ("p.a", "not placed yet", 1, None), ("p.b", "not placed yet", 1, None), ("p.c", "not placed yet", 1, None)]
    assert plan.keep == plan.restart == plan.stop == plan.lost == plan.forget == plan.pending == []

    plan = Placer(cluster).place(plan)
    where = {e.key: e.node for e in plan.place}
    assert where["p.a"] != where["p.b"] != where["p.c"] and not plan.pending
    txns = written(plan, cluster)
    assert txns == [[("set", state.assign_key(where[k], k),
                      dict(state.desired_assignments(manifest)[k], epoch=1, assignedAt=NOW))] for k in where]
    # Written, it is kept: the next pass writes nothing.
    again = planned(after(cluster, txns), manifest)
    assert [(k.key, k.reason) for k in again.keep] == [("p.a", "unchanged"), ("p.b", "unchanged"), ("p.c", "unchanged")]
    assert written(again, after(cluster, txns)) == []


def test_a_changed_spec_restarts_the_agent_on_its_node():
    old = pipeline(agent("a", "tr", "a-z", "A-Z"))
    new = pipeline(agent("a", "sed", "s/x/y/"), generation=2)
    cluster = view([node("n1"), node("n2")], [assigned(old, "a", "n2", epoch=3)], [status(old, "a", "n2", epoch=3)])
    plan = planned(cluster, new)
    assert plan.restart == [Restart("p.a", "n2", "its work changed (agent)",
                                    dict(state.desired_assignments(new)["p.a"], epoch=3))]
    assert plan.place == plan.keep == plan.lost == []
    assert written(plan, cluster) == [[("set", "oneos/assign/n2/p.a",
                                        dict(state.desired_assignments(new)["p.a"], epoch=3, assignedAt=NOW))]]


def test_a_new_generation_alone_keeps_the_agent_and_rewrites_its_assignment():
    old = pipeline(agent("a"), agent("b", "tr", "a", "b"))
    new = pipeline(agent("a"), agent("b", "tr", "a", "c"), generation=2)
    cluster = view([node("n1")], [assigned(old, "a", "n1"), assigned(old, "b", "n1")])
    plan = planned(cluster, new)
    rewritten = dict(state.desired_assignments(new)["p.a"], epoch=1)
    assert plan.keep == [Keep("p.a", "n1", "only the generation changed (1 -> 2)", rewritten)]
    assert [r.key for r in plan.restart] == ["p.b"]
    assert written(plan, cluster)[1:] == [[("set", "oneos/assign/n1/p.a", dict(rewritten, assignedAt=NOW))]]


def test_a_link_added_restarts_both_of_its_ends():
    old = pipeline(agent("a"), agent("b"))
    new = pipeline(agent("a"), agent("b"), links=[("a", "b")], generation=2)
    cluster = view([node("n1")], [assigned(old, "a", "n1"), assigned(old, "b", "n1")])
    plan = planned(cluster, new)
    assert [(r.key, r.reason) for r in plan.restart] == [("p.a", "its work changed (outputs)"),
                                                         ("p.b", "its work changed (inputs)")]


def test_requirements_that_still_hold_restart_it_in_place():
    old = pipeline(agent("a"))
    new = pipeline(agent("a", requires={"labels": {"gpio": "true"}}), generation=2)
    cluster = view([node("n1", {"gpio": "true"}), node("n2", {"gpio": "true"})], [assigned(old, "a", "n1")])
    plan = planned(cluster, new)
    assert [(r.key, r.node) for r in plan.restart] == [("p.a", "n1")] and plan.place == []


def test_requirements_that_rule_out_its_node_place_it_elsewhere_with_a_higher_epoch():
    old = pipeline(agent("a"))
    new = pipeline(agent("a", requires={"labels": {"gpio": "true"}}), generation=2)
    cluster = view([node("n1"), node("n2", {"gpio": "true"})], [assigned(old, "a", "n1", epoch=4)],
                   [status(old, "a", "n1", epoch=4)])
    plan = planned(cluster, new)
    assert [(e.key, e.reason, e.previous, e.node, e.assignment["epoch"]) for e in plan.place] == [
        ("p.a", "its new requirements rule out n1", "n1", "n2", 5)]
    assert plan.restart == plan.lost == []
    assert written(plan, cluster) == [[("delete", "oneos/assign/n1/p.a", None),
                                       ("set", "oneos/assign/n2/p.a",
                                        dict(state.desired_assignments(new)["p.a"], epoch=5, assignedAt=NOW))]]


def test_requirements_that_rule_out_every_node_leave_it_pending_with_the_reason():
    old = pipeline(agent("a"))
    new = pipeline(agent("a", requires={"labels": {"gpio": "true"}}), generation=2)
    cluster = view([node("n1"), node("n2")], [assigned(old, "a", "n1")], [status(old, "a", "n1", restarts=2)])
    plan = planned(cluster, new)
    assert plan.place == [] and [(p.key, p.reason) for p in plan.pending] == [
        ("p.a", "its new requirements rule out n1, and it fits nowhere else: no node has label gpio=true")]
    txns = written(plan, cluster)
    assert txns == [[("delete", "oneos/assign/n1/p.a", None),
                     ("set", "oneos/status/p.a", {"pipeline": "p", "agent": "a", "uid": UID, "state": "Pending",
                                                  "generation": 2, "epoch": 1, "restarts": 2, "updatedAt": NOW,
                                                  "reason": plan.pending[0].reason})]]


# -------------------------------------------------------------------------- node lost

def test_a_lost_node_makes_its_agent_lost_there_and_places_it_elsewhere_with_a_higher_epoch():
    manifest = pipeline(agent("a"), agent("b"), links=[("a", "b")])
    cluster = view([node("n1"), node("n3")], [assigned(manifest, "a", "n2", epoch=2), assigned(manifest, "b", "n1")],
                   [status(manifest, "a", "n2", epoch=2, restarts=1, incarnation=3), status(manifest, "b", "n1")])
    plan = planned(cluster, manifest)
    reason = "node n2 is gone (its session ended); placing the agent again"
    lost = {"pipeline": "p", "agent": "a", "uid": UID, "node": "n2", "state": "Lost", "generation": 1, "epoch": 2,
            "restarts": 1, "incarnation": 3, "reason": reason}
    assert plan.lost == [Lost("p.a", "n2", reason, lost)]
    assert [(e.key, e.previous, e.node, e.assignment["epoch"]) for e in plan.place] == [("p.a", "n2", "n3", 3)]
    assert [k.key for k in plan.keep] == ["p.b"]
    # One transaction: the old assignment goes, the new one and the Lost status come, all or nothing.
    assert written(plan, cluster) == [[
        ("delete", "oneos/assign/n2/p.a", None),
        ("set", "oneos/assign/n3/p.a", dict(state.desired_assignments(manifest)["p.a"], epoch=3, assignedAt=NOW)),
        ("set", "oneos/status/p.a", dict(lost, updatedAt=NOW))]]


def test_a_lost_node_whose_agent_fits_nowhere_else_leaves_it_pending_and_says_so_once():
    manifest = pipeline(agent("a", requires={"node": "n2"}))
    cluster = view([node("n1"), node("n3")], [assigned(manifest, "a", "n2")],
                   [status(manifest, "a", "n2", restarts=4)])
    plan = planned(cluster, manifest)
    assert [p.key for p in plan.lost] == ["p.a"] and plan.place == []
    assert [p.reason for p in plan.pending] == ["its node n2 was lost, and it fits nowhere else: no node n2"]
    txns = written(plan, cluster)
    assert [[(verb, key) for verb, key, _ in txn] for txn in txns] == [
        [("delete", "oneos/assign/n2/p.a"), ("set", "oneos/status/p.a")]]
    assert txns[0][1][2]["state"] == "Pending" and txns[0][1][2]["restarts"] == 4      # no Lost status without a place
    # Later passes: Pending for the scheduler's reason, written once, then left as it is.
    later = after(cluster, txns)
    txns = written(planned(later, manifest), later)
    assert [doc["reason"] for _, _, doc in txns[0]] == ["no node n2"]
    later = after(later, txns)
    assert written(planned(later, manifest), later) == []


def test_an_agent_whose_node_comes_back_is_placed_there_again():
    manifest = pipeline(agent("a", requires={"node": "n2"}))
    _, pending = status(manifest, "a", None, "Pending", epoch=1, reason="no node n2")
    cluster = view([node("n1"), node("n2")], [], [("p.a", pending)])
    plan = planned(cluster, manifest)
    assert [(e.node, e.assignment["epoch"]) for e in plan.place] == [("n2", 2)] and plan.pending == []


# ---------------------------------------------------------------------- kernel agents

INIT = {"apiVersion": "oneos/v1", "kind": "Init", "metadata": {"name": "oneos-init"},
        "spec": {"agents": [agent("broker", "oneos-broker")]}}


def test_a_kernel_agent_on_a_lost_kernel_node_moves_to_another_kernel_node_only():
    init = init_pipeline(INIT, modify_index=7)
    assert init["metadata"]["generation"] == 7 and init["kind"] == "Init"
    workers = [node(f"w{i}", memory=64 * GI, cpu=64) for i in range(3)]      # roomier than k2
    cluster = view([node("k2", memory=GI)] + workers, [assigned(init, "broker", "k1")],
                   [status(init, "broker", "k1")], kernel_ids=frozenset({"k2"}), init=init)
    assert cluster.desired("oneos-init") is init and "oneos-init" in cluster.pipeline_names()
    plan = planned(cluster, init, "oneos-init")
    assert plan.kernel and [(e.key, e.previous, e.node) for e in plan.place] == [("oneos-init.broker", "k1", "k2")]
    assert plan.place[0].assignment["kernel"] is True
    assert [lost.node for lost in plan.lost] == ["k1"]

    # With no kernel node left, it waits: never on a worker.
    alone = view(workers, [assigned(init, "broker", "k1")], kernel_ids=frozenset(), init=init)
    plan = planned(alone, init, "oneos-init")
    assert plan.place == [] and [p.reason for p in plan.pending] == [
        "its node k1 was lost, and it fits nowhere else: 0/0 nodes: no node has joined the cluster; not counted: "
        "w0, w1, w2 (not a kernel node: neither its approval nor the boot record says so)"]


def test_a_kernel_agent_on_a_node_that_is_no_longer_kernel_is_moved():
    init = init_pipeline(INIT, modify_index=1)
    cluster = view([node("k1"), node("k2")], [assigned(init, "broker", "k1")], kernel_ids=frozenset({"k2"}))
    assert [(e.previous, e.node) for e in planned(cluster, init, "oneos-init").place] == [("k1", "k2")]


def test_kernel_agents_are_left_running_while_the_init_manifest_cannot_be_read(caplog):
    init = init_pipeline(INIT, modify_index=1)
    cluster = view([node("k1")], [assigned(init, "broker", "k1")], [status(init, "broker", "k1")],
                   kernel_ids=frozenset({"k1"}), init_error="oneos/init: not valid JSON")
    recorder = Recorder()
    with caplog.at_level(logging.ERROR, "oneos.controller"):
        run_pass(cluster, Writes(recorder))
    assert recorder.txns == []     # not stopped as if deleted
    assert "kernel agents: oneos/init: not valid JSON; they are left as they run" in caplog.text


# ----------------------------------------------------------------------------- devices

def test_an_agent_whose_device_owner_is_down_is_pending_with_the_device_then_placed_back():
    manifest = pipeline(agent("sensor", "oneos-gpio", "watch", "D4", requires={"devices": ["gpio/D4"]}))
    down = view([node("c1")], [assigned(manifest, "sensor", "s1")], [status(manifest, "sensor", "s1")],
                device_owners={"gpio/D4": "s1"})
    plan = planned(down, manifest)
    assert [p.reason for p in plan.pending] == [
        "device gpio/D4 is on node s1, which is down: no node has device gpio/D4"]
    later = after(down, written(plan, down))
    assert later.assignments == {} and later.statuses["p.sensor"]["state"] == "Pending"
    assert [p.reason for p in planned(later, manifest).pending] == [
        "device gpio/D4 is on node s1, which is down: no node has device gpio/D4"]

    back = ClusterView([node("c1"), node("s1", devices={"gpio/D4"})], later.assignments, later.statuses,
                       device_owners={"gpio/D4": "s1"})
    plan = planned(back, manifest)
    assert [(e.node, e.assignment["epoch"]) for e in plan.place] == [("s1", 2)] and plan.pending == []


# -------------------------------------------------------------------- finished agents

def test_finished_agents_with_the_same_work_are_left_alone_even_when_their_node_is_gone():
    manifest = pipeline(agent("a"), agent("b"), agent("c"))
    cluster = view([node("n1")], [assigned(manifest, "a", "n1"), assigned(manifest, "b", "n2"),
                                  assigned(manifest, "c", "n2", epoch=2)],
                   [status(manifest, "a", "n1", "Exited", exitCode=0), status(manifest, "b", "n2", "Failed"),
                    status(manifest, "c", "n2", "Exited", epoch=1)])     # c: an earlier placement's status
    plan = planned(cluster, manifest)
    assert [(k.key, k.reason) for k in plan.keep] == [("p.a", "Exited, with the same work"),
                                                      ("p.b", "Failed, with the same work")]
    assert [lost.key for lost in plan.lost] == ["p.c"] and [e.key for e in plan.place] == ["p.c"]
    assert [txn[0][1] for txn in written(plan, cluster)] == ["oneos/assign/n2/p.c"]


def test_a_finished_agent_whose_work_changed_runs_again():
    old = pipeline(agent("a", "true"))
    new = pipeline(agent("a", "false"), generation=2)
    cluster = view([node("n1")], [assigned(old, "a", "n1")], [status(old, "a", "n1", "Exited", exitCode=0)])
    assert [r.key for r in planned(cluster, new).restart] == ["p.a"]


# -------------------------------------------------------------------- stop and forget

def test_a_deleted_pipeline_is_stopped_and_the_statuses_no_node_removes_are_forgotten():
    manifest = pipeline(agent("a"), agent("b"), agent("c"), agent("d"))
    cluster = view([node("n1")], [assigned(manifest, "a", "n1"), assigned(manifest, "b", "n2"),
                                  assigned(pipeline(agent("x"), name="other"), "x", "n1")],
                   [status(manifest, "a", "n1"), status(manifest, "b", "n2"),
                    status(manifest, "c", None, "Pending", reason="0/1 nodes: 1 missing label gpio=true"),
                    status(manifest, "d", "n2", "Lost")])
    plan = planned(cluster, None)
    assert plan.stop == [Stop("p.a", "n1", "the pipeline was deleted"), Stop("p.b", "n2", "the pipeline was deleted")]
    # a's status is its node's to remove, once it has stopped the agent.
    assert plan.forget == [Forget("p.b", "the pipeline was deleted, and its node n2 is gone"),
                           Forget("p.c", "the pipeline was deleted, and it was Pending"),
                           Forget("p.d", "the pipeline was deleted, and it was Lost")]
    assert plan.place == plan.keep == plan.pending == []
    assert written(plan, cluster) == [[("delete", key, None)] for key in (
        "oneos/assign/n1/p.a", "oneos/assign/n2/p.b", "oneos/status/p.b", "oneos/status/p.c", "oneos/status/p.d")]


def test_an_agent_removed_from_its_pipeline_is_stopped():
    old = pipeline(agent("a"), agent("b"))
    cluster = view([node("n1")], [assigned(old, "a", "n1"), assigned(old, "b", "n1")])
    plan = planned(cluster, pipeline(agent("a"), generation=2))
    assert plan.stop == [Stop("p.b", "n1", "no longer in the pipeline")]


# -------------------------------------------------------------------------- the pass

def test_a_pass_places_each_pipeline_on_what_the_earlier_ones_left_and_marks_an_invalid_one(caplog):
    first, second = (pipeline(agent("a", resources={"memory": "3Gi"}), name=n) for n in ("first", "second"))
    bad = pipeline(agent("a"), name="bad")
    why = "oneos/manifests/Pipeline/bad: 'spec' is a required property"
    cluster = view([node("n1")], [assigned(bad, "a", "n1")], [status(bad, "a", "n1")],
                   manifests={"first": first, "second": second}, invalid={"bad": why})
    recorder = Recorder()
    with caplog.at_level(logging.ERROR, "oneos.controller"):
        run_pass(cluster, Writes(recorder), now=lambda: NOW)
    keys = [key for txn in recorder.txns for _, key, _ in txn]
    assert keys == ["oneos/invalid/bad", "oneos/assign/n1/first.a", "oneos/status/second.a"]
    mark = recorder.txns[0][0][2]
    assert mark == {"pipeline": "bad", "reason": f"{why}; its placed agent is left as it is", "since": NOW}
    assert recorder.txns[2][0][2]["reason"] == "0/1 nodes: 1 not enough memory (1Gi free < 3Gi)"
    assert f"pipeline bad: Invalid: {why}" in caplog.text

    # The next pass finds the mark saying the same: it writes nothing for it, and says nothing.
    caplog.clear()
    again = Recorder()
    with caplog.at_level(logging.ERROR, "oneos.controller"):
        run_pass(dataclasses.replace(cluster, manifests={}, marks={"bad": mark}), Writes(again))
    assert again.txns == [] and caplog.text == ""


def test_the_invalid_mark_goes_once_the_pipeline_is_applied_again_or_deleted():
    mark = {"pipeline": "p", "reason": "...", "since": NOW}
    for manifests in ({"p": pipeline(agent("a"))}, {}):
        recorder = Recorder()
        run_pass(view([node("n1")], manifests=manifests, marks={"p": mark, "q": None}), Writes(recorder))
        assert [txn for txn in recorder.txns if txn[0][1].startswith(state.INVALID)] == [
            [("delete", "oneos/invalid/p", None)], [("delete", "oneos/invalid/q", None)]]


class Conflicting(Recorder):
    """A Recorder whose transactions touching the `clash` pipeline are rolled back."""

    def txn(self, ops):
        if any(".clash." in op["KV"]["Key"] or "/clash." in op["KV"]["Key"] for op in ops):
            raise TxnConflict([(0, "someone else wrote it")])
        return super().txn(ops)


def test_a_pipeline_that_trips_a_bug_or_a_conflict_does_not_stop_the_others(caplog):
    broken = pipeline(agent("a"), name="broken")
    del broken["metadata"]["uid"]          # only decode_pipeline keeps such a manifest out of a real view
    cluster = view([node("n1")], manifests={"broken": broken, "clash": pipeline(agent("a"), name="clash"),
                                            "fine": pipeline(agent("a"), name="fine")})
    recorder = Conflicting()
    with caplog.at_level(logging.ERROR, "oneos.controller"):
        run_pass(cluster, Writes(recorder))
    assert [key for txn in recorder.txns for _, key, _ in txn] == ["oneos/assign/n1/fine.a"]
    assert "pipeline broken: reconciling it failed; the others go on" in caplog.text
    assert "pipeline clash: transaction rolled back: op 0: someone else wrote it" in caplog.text


def test_an_invalid_assignment_is_removed_or_replaced_and_an_invalid_status_of_no_agent_forgotten():
    manifest = pipeline(agent("a"), agent("b"))
    cluster = view([node("n1"), node("n2")], [assigned(manifest, "b", "n2")], [status(manifest, "b", "n2")],
                   bad_assignments={"oneos/assign/n1/p.a": "not valid JSON", "oneos/assign/n1/p.b": "x",
                                    "oneos/assign/n1/p.gone": "y"},
                   bad_statuses={"p.gone": "not valid JSON", "p.a": "z"})
    assert "p" in cluster.pipeline_names()
    plan = planned(cluster, manifest)
    assert plan.stop == [Stop("p.b", "n1", "its assignment is invalid (x)"),
                         Stop("p.gone", "n1", "its assignment is invalid (y)")]
    assert plan.forget == [Forget("p.gone", "no longer in the pipeline, and its status is invalid (not valid JSON)")]
    # a has no valid assignment: placed anew, in the same transaction that removes the invalid one.
    assert [(e.key, e.reason) for e in plan.place] == [("p.a", "its assignment on n1 is invalid")]
    txns = written(plan, cluster)
    assert [(verb, key) for verb, key, _ in txns[-1]] == [("delete", "oneos/assign/n1/p.a"),
                                                         ("set", f"oneos/assign/{plan.place[0].node}/p.a")]


def test_reconcile_is_pure():
    manifest = pipeline(agent("a"), agent("b", requires={"labels": {"x": "y"}}))
    cluster = view([node("n1")], [assigned(manifest, "a", "n2")], [status(manifest, "a", "n2")])
    before = json.dumps([cluster.assignments, cluster.statuses], sort_keys=True)
    assert reconcile(cluster, "p", manifest) == reconcile(cluster, "p", manifest)
    assert json.dumps([cluster.assignments, cluster.statuses], sort_keys=True) == before


# ------------------------------------------------- with the Name Server: fence and one read

def test_writes_are_fenced_by_the_leader_lock(ns: NameServer, prefix: str):
    session = ns.session_create(ttl=30, lock_delay=0, checks=[])
    key = prefix + "doc"
    try:
        assert ns.txn([kv_op("lock", state.LEADER, "{}", session=session)]) is not None
        writes = Writes(ns, session)
        writes.commit(kv_op("set", key, "1"))
        assert ns.get(key)[1].value == b"1"
        ns.txn([kv_op("unlock", state.LEADER, "{}", session=session)])
        with pytest.raises(NotLeader):
            writes.commit(kv_op("set", key, "2"))
        assert ns.get(key)[1].value == b"1"
        Writes(ns).commit(kv_op("set", key, "3"))       # without a session (tools, tests): not fenced
        assert ns.get(key)[1].value == b"3"
    finally:
        ns.session_destroy(session)
        ns.delete(state.LEADER)


class Counting:
    """A NameServer that notes the name of each call."""

    def __init__(self, ns: NameServer) -> None:
        self._ns, self.calls = ns, []

    def __getattr__(self, name):
        found = getattr(self._ns, name)
        if not callable(found):
            return found

        def call(*args, **kwargs):
            self.calls.append(name)
            return found(*args, **kwargs)
        return call


def test_a_pass_reads_the_cluster_once_then_only_writes(builtin_nameserver, tmp_path):
    ns = NameServer(builtin_nameserver.url)
    (tmp_path / "init.yaml").write_text(EMPTY_INIT)
    boot = state.new_boot_record(cluster="t", pulsar_url="pulsar://127.0.0.1:6650", kernel_nodes=["n1"])
    state.bootstrap(ns, boot, state.default_init(tmp_path / "init.yaml"))
    ids = {node_id: Identity.generate() for node_id in ("n1", "n2")}
    for node_id, identity in ids.items():
        state.put_document(ns, state.key_key(node_id), "key", state.new_key_record(
            node_id, identity.signing_key, identity.box_key, kernel=False, approved_by="test"))
        state.put_document(ns, state.node_key(node_id), "node", identity.sign({
            "id": node_id, "host": "h", "address": "127.0.0.1", "pid": 1, "kernel": node_id == "n1",
            "state": "Ready", "labels": {}, "devices": {}, "capacity": {"cpu": 2, "memory": 4 * GI},
            "arch": "x86_64", "os": "linux", "versions": {"oneos": "0", "python": "3.11"}, "startedAt": NOW},
            by=node_id))
    manifest = pipeline(agent("a"), agent("b"), links=[("a", "b")], uid=uuid.uuid4().hex)
    state.put_document(ns, state.pipeline_key("p"), "pipeline", manifest)
    state.ensure_pipe_key(ns, "p", manifest["metadata"]["uid"])
    ns.put(state.pipeline_key("bad"), b'{"kind": "Pipeline"}')

    by_hand = dict(manifest, metadata={"name": "old", "generation": 1})            # as an older version wrote it
    ns.put(state.pipeline_key("old"), state.encode(by_hand))
    ns.put(state.pipeline_key("other"), state.encode(manifest))                    # named p, stored as other
    ns.put(state.assign_key("n2", "p.x"), b"{")
    ns.put(state.status_key("p.y"), b'{"state": "Running"}')
    ns.put(state.invalid_key("gone"), b"?")

    cluster = ClusterView.read(ns)
    assert set(cluster.manifests) == {"p"}
    assert cluster.invalid == {
        "bad": "oneos/manifests/Pipeline/bad: 'apiVersion' is a required property (and 2 more)",
        "old": "oneos/manifests/Pipeline/old: metadata.uid, metadata.createdAt missing: OneOS sets them when a "
               "pipeline is applied (was it written by hand, or by an older version?)",
        "other": "oneos/manifests/Pipeline/other: metadata.name is 'p', not 'other' as its key"}
    assert set(cluster.bad_assignments) == {"oneos/assign/n2/p.x"} and set(cluster.bad_statuses) == {"p.y"}
    assert cluster.marks == {"gone": None}
    assert cluster.kernel_ids == {"n1"} and cluster.init_error is None and cluster.init["kind"] == "Init"

    counting = Counting(ns)
    reconcile_all(counting, signer=("n1", ids["n1"]))
    first_write = counting.calls.index("txn")
    assert set(counting.calls[first_write:]) == {"txn"}, counting.calls
    placed = state.read_assignments(ns)
    assert set(placed) == {"p.a", "p.b"}
    # Each signed by the leader, with the pipeline's frame key sealed to its node alone.
    key = state.read_pipe_key(ns, "p", manifest["metadata"]["uid"])
    for node_id, doc in placed.values():
        assert doc["signature"]["by"] == "n1" and verify(doc, ids["n1"].signing_key)
        context = state.frame_key_context("p", manifest["metadata"]["uid"])
        assert ids[node_id].open(doc["frameKey"], context) == key
        other = ids["n2" if node_id == "n1" else "n1"]
        with pytest.raises(IdentityError):
            other.open(doc["frameKey"], context)
    assert ns.get(state.status_key("p.y"))[1] is None and ns.get(state.assign_key("n2", "p.x"))[1] is None
    assert sorted(ns.keys(state.INVALID)[1]) == ["oneos/invalid/bad", "oneos/invalid/old", "oneos/invalid/other"]

