"""Reconciliation: what must run (manifests) against what is placed (assignments).

`reconcile(ns, name)` is level-triggered, as a Kubernetes controller's: it reads the
desired and actual state of one pipeline afresh from the Name Server, acts on the
difference, and is safe to run any number of times. Nothing is kept in memory between
runs, so a newly elected controller carries on where the last one stopped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from oneos import state
from oneos.controller.scheduler import Demand, NodeInfo, Usage, place
from oneos.documents import DocumentError
from oneos.nameserver.client import NameServer

log = logging.getLogger("oneos.controller")


@dataclass
class ClusterView:
    """One consistent-enough read of what reconciliation needs, shared by every pipeline in a pass."""

    nodes: list[NodeInfo]
    assignments: dict[str, tuple[str, dict[str, Any]]]     # agent id -> (node, assignment)
    statuses: dict[str, dict[str, Any]]                     # agent id -> status
    usage: Usage

    @classmethod
    def read(cls, ns: NameServer) -> "ClusterView":
        nodes, _ = state.read_nodes(ns)
        infos = [NodeInfo.from_record(n.record) for n in nodes]
        assignments = state.read_assignments(ns)
        usage = Usage()
        for key, (node_id, doc) in assignments.items():
            usage.add(node_id, Demand.from_spec(key, doc["agent"]))
        return cls(infos, assignments, state.read_statuses(ns), usage)

    def alive(self, node_id: str) -> bool:
        return any(n.id == node_id for n in self.nodes)


def desired_assignments(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """agent id -> the assignment each agent of the manifest should have (without placement)."""
    meta, spec = manifest["metadata"], manifest["spec"]
    links = spec.get("links", [])
    digests = meta.get("fileDigests", {})
    wanted = {}
    for agent in spec["agents"]:
        name = agent["name"]
        wanted[state.agent_id(meta["name"], name)] = {
            "pipeline": meta["name"],
            "uid": meta["uid"],
            "generation": meta["generation"],
            "agent": agent,
            "inputs": [link["from"] for link in links if link["to"] == name],
            "outputs": [link["to"] for link in links if link["from"] == name],
            "attached": bool(spec.get("attached", False)),
            "files": {f: digests[f] for f in agent.get("files", []) if f in digests},
        }
    return wanted


def _same_work(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two assignments run the same thing (the generation alone does not matter)."""
    fields = ("uid", "agent", "inputs", "outputs", "attached", "files")
    return all(a.get(f) == b.get(f) for f in fields)


def _neighbors(key: str, doc: dict[str, Any]) -> set[str]:
    pipeline, _ = state.split_agent_id(key)
    return {state.agent_id(pipeline, other) for other in doc["inputs"] + doc["outputs"]}


def reconcile(ns: NameServer, name: str, view: ClusterView) -> None:
    """Make the assignments of pipeline `name` match its manifest (or remove them if it is gone)."""
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
    wanted = desired_assignments(manifest) if manifest else {}

    for key, (node_id, _) in mine.items():
        if key not in wanted:
            log.info("%s: removing from %s", key, node_id)
            ns.delete(state.assign_key(node_id, key))
            del view.assignments[key]
    if manifest is None:
        # Statuses of agents that never ran (Pending) are ours to remove; nodes remove the others.
        for key, status in view.statuses.items():
            if key.startswith(prefix) and key not in view.assignments and status["state"] == "Pending":
                ns.delete(state.status_key(key))
        return

    for key, doc in wanted.items():
        current = mine.get(key)
        if current is not None:
            node_id, placed = current
            if view.alive(node_id):
                if not _same_work(placed, doc):
                    log.info("%s: spec changed, updating it on %s", key, node_id)
                    state.put_document(ns, state.assign_key(node_id, key), "assignment",
                                       dict(doc, assignedAt=state.utcnow()))
                    view.assignments[key] = (node_id, doc)
                continue
            log.warning("%s: node %s is gone, placing it again", key, node_id)
            ns.delete(state.assign_key(node_id, key))
            del view.assignments[key]
        demand = Demand.from_spec(key, doc["agent"], _neighbors(key, doc))
        placement = place(demand, view.nodes, view.usage)
        if placement.node is None:
            _set_pending(ns, view, key, doc, placement.reason)
            continue
        log.info("%s: placed on %s", key, placement.node)
        state.put_document(ns, state.assign_key(placement.node, key), "assignment",
                           dict(doc, assignedAt=state.utcnow()))
        view.assignments[key] = (placement.node, doc)
        view.usage.add(placement.node, demand)


def _set_pending(ns: NameServer, view: ClusterView, key: str, doc: dict[str, Any], reason: str) -> None:
    current = view.statuses.get(key)
    if current and current["state"] == "Pending" and current.get("reason") == reason:
        return
    log.info("%s: pending: %s", key, reason)
    pipeline, agent = state.split_agent_id(key)
    status = {"pipeline": pipeline, "agent": agent, "uid": doc["uid"], "state": "Pending",
              "generation": doc["generation"], "reason": reason, "updatedAt": state.utcnow()}
    state.put_document(ns, state.status_key(key), "status", status)
    view.statuses[key] = status


def pipeline_names(ns: NameServer, view: ClusterView) -> set[str]:
    """Every pipeline that has a manifest, an assignment or a status: all that may need work."""
    _, keys = ns.keys(state.PIPELINES)
    names = {k[len(state.PIPELINES):] for k in keys}
    names |= {state.split_agent_id(k)[0] for k in view.assignments}
    names |= {state.split_agent_id(k)[0] for k in view.statuses}
    return names


def reconcile_all(ns: NameServer) -> None:
    """One pass over every pipeline; an error in one does not stop the others."""
    view = ClusterView.read(ns)
    for name in sorted(pipeline_names(ns, view)):
        try:
            reconcile(ns, name, view)
        except DocumentError as exc:
            log.error("pipeline %s: %s", name, exc)
