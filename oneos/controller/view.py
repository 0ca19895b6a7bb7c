"""The cluster as one reconciliation pass sees it: read once from the Name Server, then only read.

`ClusterView.read(ns)` is the pass's only read: live nodes, assignments, statuses, devices,
the boot record, every Pipeline manifest (and why a stored one is invalid, with the records
the controller keeps of that), the init manifest as the pipeline of kernel agents, the
registered keys and the pipelines' frame keys. A node counts as live only when its record
verifies against its registered key (an unregistered node, or a record not signed by its
key, is kept aside in `untrusted`, with why: nothing is placed there, and what was placed
there is placed again, as for a node that is gone); it is a kernel node only when its
approval or the boot record says so, never because its record claims it. An
assignment or status that is not valid is kept aside by its key, with why, so that the pass
can clean it up instead of tripping over it. Everything after it (reconcile, place, write)
works from this object, so a pass decides from one picture of the cluster, and tests build
the picture directly.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

from oneos import state
from oneos.controller.scheduler import Demand, NodeInfo, Usage
from oneos.documents import DocumentError
from oneos.nameserver.client import NameServer


@dataclass(frozen=True)
class ClusterView:
    """What reconciliation needs of the cluster, read once per pass. Treat it as read-only."""

    nodes: list[NodeInfo]                                                   # live nodes
    assignments: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # agent id -> (node, it)
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)       # agent id -> status
    kernel_ids: frozenset[str] = frozenset()                                # live kernel nodes
    device_owners: dict[str, str] = field(default_factory=dict)             # device -> its node
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)      # pipeline -> its valid manifest
    invalid: dict[str, str] = field(default_factory=dict)                   # pipeline -> why its manifest is not
    marks: dict[str, dict[str, Any] | None] = field(default_factory=dict)   # pipeline -> its oneos/invalid/ record
    bad_assignments: dict[str, str] = field(default_factory=dict)           # key -> why the assignment is not valid
    bad_statuses: dict[str, str] = field(default_factory=dict)              # agent id -> why its status is not valid
    init: dict[str, Any] | None = None        # the init manifest as a pipeline (see init_pipeline), if any
    init_error: str | None = None             # why there is no `init`, when it is not just absent
    boot: dict[str, Any] | None = None
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)           # node id -> its registered keys
    pipe_keys: dict[tuple[str, str], bytes] = field(default_factory=dict)   # (pipeline, uid) -> its frame key
    untrusted: dict[str, str] = field(default_factory=dict)   # node id -> why its live record is not trusted

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {n.id: n for n in self.nodes})

    @classmethod
    def read(cls, ns: NameServer) -> "ClusterView":
        """Read everything a pass needs, once (a few GETs; nothing is written)."""
        records, _ = state.read_nodes(ns)
        keys = state.read_keys(ns)
        manifests, invalid = state.read_pipelines(ns)
        _, docs, broken = state.read_documents(ns, state.INVALID, "invalid")
        # A mark that is not valid is kept as None: the pass rewrites or removes it.
        marks = {key[len(state.INVALID):]: docs.get(key) for key in (*docs, *broken)}
        boot = init = init_error = None
        try:
            boot = state.read_boot(ns)
            _, entry = ns.get(boot.get("initManifest", state.INIT))
            if entry is not None:
                init = init_pipeline(state.decode(entry, "init"), entry.modify_index)
        except (DocumentError, state.BootError) as exc:
            init_error = str(exc)
        assignments, bad_assignments = state.read_assignments_and_problems(ns)
        statuses, bad_statuses = state.read_statuses_and_problems(ns)
        nodes, untrusted = trusted_nodes([n.record for n in records], keys)
        kernels = state.kernel_keys(keys, boot)
        for key, status in list(statuses.items()):
            why = state.status_distrust(status, keys, kernels)
            if why is not None:
                del statuses[key]
                bad_statuses[key] = f"it cannot be trusted: {why}"
        return cls(nodes, assignments, statuses, frozenset(n.id for n in nodes if n.id in kernels),
                   {name: doc["node"] for name, doc in state.read_devices(ns).items()},
                   manifests, invalid, marks, bad_assignments, bad_statuses, init, init_error, boot,
                   keys, read_pipe_keys(ns), untrusted)

    def alive(self, node_id: str) -> bool:
        """Whether the node is live and trusted (in this view: see kernel_only)."""
        return node_id in self._by_id    # type: ignore[attr-defined]

    def gone(self, node_id: str) -> str:
        """Why a node that is not alive in this view is not: untrusted (with why), or gone."""
        if node_id in self.untrusted:
            return self.untrusted[node_id]
        return f"node {node_id} is gone (its session ended)"

    def node(self, node_id: str) -> NodeInfo:
        return self._by_id[node_id]      # type: ignore[attr-defined]

    def kernel_only(self) -> "ClusterView":
        """The same view where only kernel nodes exist: where kernel agents may run."""
        others = {n.id: f"node {n.id} is not a kernel node (neither its approval nor the boot record says so)"
                  for n in self.nodes if n.id not in self.kernel_ids}
        return dataclasses.replace(self, nodes=[n for n in self.nodes if n.id in self.kernel_ids],
                                   untrusted={**self.untrusted, **others})

    def desired(self, name: str) -> dict[str, Any] | None:
        """What pipeline `name` should be: the init manifest's kernel agents under its name, else its
        valid manifest; None when it has none (deleted, or invalid: see `invalid`)."""
        if self.init is not None and self.init["metadata"]["name"] == name:
            return self.init
        return self.manifests.get(name)

    def placed(self, name: str) -> dict[str, tuple[str, dict[str, Any]]]:
        """The valid assignments of pipeline `name`: agent id -> (node id, assignment)."""
        return {k: v for k, v in self.assignments.items() if state.split_agent_id(k)[0] == name}

    def pipeline_names(self) -> set[str]:
        """Every pipeline that has a manifest, an assignment or a status: all that may need work."""
        names = set(self.manifests) | set(self.invalid)
        names |= {state.split_agent_id(k)[0] for k in self.assignments}
        names |= {state.split_agent_id(k)[0] for k in self.statuses}
        names |= {state.split_agent_id(k)[0] for k in self.bad_statuses}
        names |= {state.split_agent_id(state.split_assign_key(k)[1])[0] for k in self.bad_assignments}
        if self.init is not None:
            names.add(self.init["metadata"]["name"])
        return names

    def usage(self) -> Usage:
        """What the assignments already take of each node, as placement counts it (a new Usage each call)."""
        usage = Usage()
        for key, (node_id, doc) in self.assignments.items():
            usage.add(node_id, Demand.from_spec(key, doc["agent"]))
        return usage


def trusted_nodes(records: list[dict[str, Any]], keys: dict[str, dict[str, Any]]
                  ) -> tuple[list[NodeInfo], dict[str, str]]:
    """The live nodes placement may use (their records verify against their registered keys), and
    node id -> why, for each of the others. The labels its approval gave a node (a join token's, or
    `oneosctl node approve --label`) are its labels, whatever its record says of the same keys."""
    nodes, untrusted = [], {}
    for record in records:
        distrust = state.node_distrust(record, keys)
        if distrust is None:
            approved = keys[record["id"]].get("labels", {})
            nodes.append(NodeInfo.from_record(dict(record, labels=state.trusted_labels(record, keys))
                                              if approved else record))
        else:
            untrusted[record["id"]] = distrust[1]
    return nodes, untrusted


def read_pipe_keys(ns: NameServer) -> dict[tuple[str, str], bytes]:
    """(pipeline, uid) -> its frame key, for every well-formed one (32 bytes)."""
    _, entries = ns.get_tree(state.PIPEKEYS)
    found = {}
    for entry in entries:
        pipeline, _, uid = entry.key[len(state.PIPEKEYS):].partition("/")
        if entry.value is not None and len(entry.value) == 32:
            found[(pipeline, uid)] = entry.value
    return found


def init_pipeline(init: dict[str, Any], modify_index: int) -> dict[str, Any]:
    """The init manifest as a pipeline of kernel agents (named as the manifest).

    Its uid is fixed by its name and its generation is the key's ModifyIndex, so rewriting
    the init manifest updates the kernel agents like re-applying a pipeline.
    """
    name = init["metadata"]["name"]
    return {"apiVersion": "oneos/v1", "kind": "Init",
            "metadata": {"name": name, "uid": hashlib.sha256(f"init/{name}".encode()).hexdigest()[:32],
                         "generation": max(1, modify_index)},
            "spec": {"agents": init["spec"]["agents"], "links": []}}
