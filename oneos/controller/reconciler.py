"""Reconciliation: what must run (manifests) against what is placed (assignments).

`reconcile(ns, name)` is level-triggered, as a Kubernetes controller's: it reads the
desired and actual state of one pipeline afresh from the Name Server, acts on the
difference, and is safe to run any number of times. Nothing is kept in memory between
runs, so a newly elected controller carries on where the last one stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from oneos import state
from oneos.controller.scheduler import (DevicesPresent, Demand, LabelsMatch, NodeInfo, NodeNamed, SelectorMatches, Usage,
                                       place)
from oneos.documents import DocumentError
from oneos.errors import OneOSError
from oneos.nameserver.client import NameServer, TxnConflict, kv_op

log = logging.getLogger("oneos.controller")

class NotLeader(OneOSError):
    """The leader lock is no longer held by this controller: it must stop writing."""


class Writes:
    """The controller's writes, each one transaction fenced by the leader lock.

    Every transaction first checks that `oneos/leader` is still held by the leader's
    session, so a deposed controller that has not noticed yet (paused, partitioned) cannot
    write: its transaction fails and it stops. Without a session (tests, tools) the check
    is left out.
    """

    def __init__(self, ns: NameServer, leader_session: str | None = None) -> None:
        self.ns = ns
        self.leader_session = leader_session

    def commit(self, *ops: dict[str, Any]) -> None:
        fence = [kv_op("check-session", state.LEADER, session=self.leader_session)] if self.leader_session else []
        try:
            self.ns.txn(fence + list(ops))
        except TxnConflict as exc:
            if fence and any(index == 0 for index, _ in exc.errors):
                raise NotLeader("this runtime no longer holds the leader lock; stopping the controller") from None
            raise

    def put(self, key: str, schema: str, doc: dict[str, Any]) -> None:
        self.commit(state.set_document_op(key, schema, doc))

    def delete(self, key: str) -> None:
        self.commit(kv_op("delete", key))


@dataclass
class ClusterView:
    """One consistent-enough read of what reconciliation needs, shared by every pipeline in a pass."""

    nodes: list[NodeInfo]
    assignments: dict[str, tuple[str, dict[str, Any]]]     # agent id -> (node, assignment)
    statuses: dict[str, dict[str, Any]]                     # agent id -> status
    usage: Usage
    kernel_ids: frozenset[str] = frozenset()                # live kernel nodes
    device_owners: dict[str, str] = dataclasses.field(default_factory=dict)   # device -> its node

    @classmethod
    def read(cls, ns: NameServer) -> "ClusterView":
        nodes, _ = state.read_nodes(ns)
        infos = [NodeInfo.from_record(n.record) for n in nodes]
        assignments = state.read_assignments(ns)
        usage = Usage()
        for key, (node_id, doc) in assignments.items():
            usage.add(node_id, Demand.from_spec(key, doc["agent"]))
        return cls(infos, assignments, state.read_statuses(ns), usage,
                   frozenset(n.record["id"] for n in nodes if n.record["kernel"]),
                   {name: doc["node"] for name, doc in state.read_devices(ns).items()})

    def alive(self, node_id: str) -> bool:
        return any(n.id == node_id for n in self.nodes)

    def kernel_only(self) -> "ClusterView":
        """The same view (shared state) where only kernel nodes exist: where kernel agents may run."""
        return dataclasses.replace(self, nodes=[n for n in self.nodes if n.id in self.kernel_ids])


def init_as_pipeline(ns: NameServer) -> dict[str, Any] | None:
    """The init manifest as a pipeline of kernel agents (named as the manifest), or None if there is none.

    Its uid is fixed by its name and its generation is the key's ModifyIndex, so rewriting
    the init manifest updates the kernel agents like re-applying a pipeline.
    """
    key = state.read_boot(ns).get("initManifest", state.INIT)
    _, entry = ns.get(key)
    if entry is None:
        return None
    init = state.decode(entry, "init")
    name = init["metadata"]["name"]
    return {"apiVersion": "oneos/v1", "kind": "Init",
            "metadata": {"name": name, "uid": hashlib.sha256(f"init/{name}".encode()).hexdigest()[:32],
                         "generation": max(1, entry.modify_index)},
            "spec": {"agents": init["spec"]["agents"], "links": []}}


def _neighbors(key: str, doc: dict[str, Any]) -> set[str]:
    pipeline, _ = state.split_agent_id(key)
    return {state.agent_id(pipeline, other) for other in doc["inputs"] + doc["outputs"]}


def _epoch_after(key: str, view: ClusterView, lost: dict[str, Any] | None) -> int:
    """The epoch of a new placement: past every earlier placement of this agent (same uid)."""
    latest = lost["epoch"] if lost else 0
    status = view.statuses.get(key)
    if status and (lost is None or status.get("uid") == lost["uid"]):
        latest = max(latest, status.get("epoch", 0))
    return latest + 1


def reconcile(ns: NameServer, name: str, view: ClusterView, writes: Writes | None = None, *,
              init: dict[str, Any] | None = None) -> None:
    """Make the assignments of pipeline `name` match its manifest (or remove them if it is gone).

    With `init` (see init_as_pipeline), the pipeline is the init manifest's kernel agents,
    placed on kernel nodes only.
    """
    writes = writes or Writes(ns)
    if init is not None:
        manifest = init
        view = view.kernel_only()
    else:
        _, entry = ns.get(state.pipeline_key(name))
        manifest = None
        if entry is not None:
            try:
                manifest = state.decode(entry, "pipeline")
            except DocumentError as exc:
                log.error("pipeline %s: stored manifest is invalid, leaving it alone: %s", name, exc)
                return
    prefix = f"{name}."
    mine = {k: v for k, v in view.assignments.items() if k.startswith(prefix)}
    wanted = state.desired_assignments(manifest) if manifest else {}

    for key, (node_id, _) in mine.items():
        if key not in wanted:
            log.info("%s: removing from %s", key, node_id)
            writes.delete(state.assign_key(node_id, key))
            del view.assignments[key]
    # Statuses no node will remove are ours: those of agents that are not placed (Pending,
    # Lost) and no longer wanted, and any whose node is gone.
    for key, status in list(view.statuses.items()):
        if key.startswith(prefix) and key not in view.assignments and key not in wanted and (
                status["state"] in ("Pending", "Lost") or not view.alive(status.get("node", ""))):
            writes.delete(state.status_key(key))
            del view.statuses[key]
    if manifest is None:
        return

    for key, doc in wanted.items():
        current = mine.get(key)
        lost = moved = None
        if current is not None:
            node_id, placed = current
            status = view.statuses.get(key, {})
            done = (status.get("state") in state.FINAL_STATES and status.get("node") == node_id
                    and status.get("epoch") == placed["epoch"] and state.same_work(placed, doc))
            if view.alive(node_id) and not done and not _still_fits(view, node_id, key, placed, doc):
                moved = dict(placed, node=node_id)
            elif view.alive(node_id) or done:
                # A finished agent stays finished, even when its node has gone since.
                if not state.same_work(placed, doc) or placed["generation"] != doc["generation"]:
                    log.info("%s: spec changed, updating it on %s", key, node_id)
                    updated = dict(doc, epoch=placed["epoch"], assignedAt=state.utcnow())
                    writes.put(state.assign_key(node_id, key), "assignment", updated)
                    view.assignments[key] = (node_id, updated)
                continue
            else:
                lost = dict(placed, node=node_id)
        demand = Demand.from_spec(key, doc["agent"], _neighbors(key, doc), manifest["spec"].get("placement"))
        placement = place(demand, view.nodes, view.usage)
        epoch = _epoch_after(key, view, lost or moved)
        ops = []
        if lost is not None:
            # Its node is gone (its session ended): the agent is Lost there and placed anew,
            # with a higher epoch that fences off the copy, should that node come back.
            log.warning("%s: node %s is gone; the agent is lost there, placing it again", key, lost["node"])
        elif moved is not None:
            log.info("%s: its new requirements rule out %s; placing it again", key, moved["node"])
        for previous in (lost, moved):
            if previous is not None:
                ops.append(kv_op("delete", state.assign_key(previous["node"], key)))
                del view.assignments[key]
        if placement.node is None:
            reason = placement.reason
            away = [f"device {d} is on node {view.device_owners[d]}, which is down"
                    for d in doc["agent"].get("requires", {}).get("devices", [])
                    if d in view.device_owners and not view.alive(view.device_owners[d])]
            if away:
                reason = f"{'; '.join(away)}: {reason}"
            elif lost is not None:
                reason = f"its node {lost['node']} was lost, and it fits nowhere else: {reason}"
            elif moved is not None:
                reason = f"its new requirements rule out {moved['node']}, and it fits nowhere else: {reason}"
            _set_pending(writes, view, key, doc, reason, epoch - 1, ops)
            continue
        log.info("%s: placed on %s", key, placement.node)
        assignment = dict(doc, epoch=epoch, assignedAt=state.utcnow())
        ops.append(state.set_document_op(state.assign_key(placement.node, key), "assignment", assignment))
        if lost is not None:
            ops.append(state.set_document_op(state.status_key(key), "status", _lost_status(key, view, lost)))
        writes.commit(*ops)
        view.assignments[key] = (placement.node, assignment)
        view.usage.add(placement.node, demand)


def _still_fits(view: ClusterView, node_id: str, key: str, placed: dict[str, Any], doc: dict[str, Any]) -> bool:
    """Whether a changed spec may stay on its node: its node, labels and devices requirements still hold.

    Resources are not checked again: the agent's own share is already counted there.
    """
    if placed["agent"].get("requires") == doc["agent"].get("requires"):
        return True
    node = next(n for n in view.nodes if n.id == node_id)
    demand = Demand.from_spec(key, doc["agent"])
    return all(check.reason(node, demand, Usage()) is None
               for check in (NodeNamed(), LabelsMatch(), SelectorMatches(), DevicesPresent()))


def _lost_status(key: str, view: ClusterView, lost: dict[str, Any]) -> dict[str, Any]:
    """The agent's status once its node is gone: Lost, with what was known of it there."""
    pipeline, agent = state.split_agent_id(key)
    status = {k: v for k, v in view.statuses.get(key, {}).items() if k in ("incarnation", "restarts", "exitCode")}
    status.update(pipeline=pipeline, agent=agent, uid=lost["uid"], node=lost["node"], state="Lost",
                  generation=lost["generation"], epoch=lost["epoch"], updatedAt=state.utcnow(),
                  reason=f"node {lost['node']} is gone (its session ended); placing the agent again")
    view.statuses[key] = status
    return status


def _set_pending(writes: Writes, view: ClusterView, key: str, doc: dict[str, Any], reason: str, epoch: int,
                 ops: list[dict[str, Any]]) -> None:
    """Pending with the reason (and, with `ops`, whatever else must change with it)."""
    current = view.statuses.get(key)
    if not ops and current and current["state"] == "Pending" and current.get("reason") == reason:
        return
    log.info("%s: pending: %s", key, reason)
    pipeline, agent = state.split_agent_id(key)
    status = {"pipeline": pipeline, "agent": agent, "uid": doc["uid"], "state": "Pending",
              "generation": doc["generation"], "epoch": epoch, "reason": reason, "updatedAt": state.utcnow()}
    for kept in ("incarnation", "restarts", "exitCode"):
        if current and current.get("uid") == doc["uid"] and kept in current:
            status[kept] = current[kept]
    writes.commit(*ops, state.set_document_op(state.status_key(key), "status", status))
    view.statuses[key] = status


def pipeline_names(ns: NameServer, view: ClusterView) -> set[str]:
    """Every pipeline that has a manifest, an assignment or a status: all that may need work."""
    _, keys = ns.keys(state.PIPELINES)
    names = {k[len(state.PIPELINES):] for k in keys}
    names |= {state.split_agent_id(k)[0] for k in view.assignments}
    names |= {state.split_agent_id(k)[0] for k in view.statuses}
    return names


def reconcile_all(ns: NameServer, leader_session: str | None = None) -> None:
    """One pass over every pipeline; an error in one does not stop the others (NotLeader stops all)."""
    view = ClusterView.read(ns)
    writes = Writes(ns, leader_session)
    try:
        init = init_as_pipeline(ns)
    except (DocumentError, state.BootError) as exc:
        log.error("kernel agents: %s", exc)
        init = None
    init_name = init["metadata"]["name"] if init else None
    for name in sorted(pipeline_names(ns, view) | ({init_name} if init_name else set())):
        try:
            reconcile(ns, name, view, writes, init=init if name == init_name else None)
        except (DocumentError, TxnConflict) as exc:
            log.error("pipeline %s: %s", name, exc)
