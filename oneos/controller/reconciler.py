"""Reconciliation: what must run (manifests) against what is placed (assignments).

A pass reads the cluster once, then takes each pipeline through three steps, as Nomad's
scheduler does (`reconcile.go`, then feasibility and ranking, then the plan):

1. `ClusterView.read(ns)`: the pass's one read of the cluster (see oneos.controller.view).
2. `reconcile(view, name, manifest)`: a pure function of the view and one pipeline's desired
   state (None once it is deleted) that says *what* must change, as a `Plan` of plain data:
   agents to place (new, their node lost, their new requirements ruling out their node),
   keep (rewritten in place when only the generation changed), restart (their work changed,
   same node), stop, lost, and status records to forget, each with its reason in words.
3. `Placer.place(plan)`: *where*: the plan's `place` entries go through the scheduler, on a
   NodeIndex and a Usage that belong to the pass, so each placement sees the ones before
   it; what fits nowhere becomes `pending`, with the scheduler's counts and what led to it.
4. `write(plan, view, writes)`: the plan as transactions, each fenced by the leader lock
   (`Writes`): stops, forgotten statuses, rewrites in place, then each placement (with the
   removal of the assignment it replaces and, for a lost node, the Lost status) and each
   Pending status (not rewritten when it already says the same).

A write that fails leaves the pipeline for the next pass; the placements of this pass
that were not written still count in its Usage, which only makes the rest of the pass
more careful.

It is level-triggered, as a Kubernetes controller: each pass starts from a fresh read and
is safe to run any number of times. Nothing is kept in memory between passes, so a newly
elected controller carries on where the last one stopped.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from oneos import state
from oneos.controller.scheduler import STATIC_CHECKS, Demand, NodeIndex, Usage
from oneos.controller.view import ClusterView
from oneos.documents import DocumentError
from oneos.errors import OneOSError
from oneos.identity import SIGNATURE, Identity
from oneos.nameserver.client import NameServer, NameServerError, NameServerUnreachable, TxnConflict, kv_op

log = logging.getLogger("oneos.controller")


class NotLeader(OneOSError):
    """The leader lock is no longer held by this controller: it must stop writing."""


class UntrustedLeader(OneOSError):
    """The leader's key is not a kernel node's registered key: every node would refuse what it signs."""


class Writes:
    """The controller's writes, each one transaction fenced by the leader lock.

    Every transaction first checks that `oneos/leader` is still held by the leader's
    session, so a deposed controller that has not noticed yet (paused, partitioned) cannot
    write: its transaction fails and it stops. Without a session (tests, tools) the check
    is left out.
    """

    def __init__(self, ns: NameServer, leader_session: str | None = None,
                 signer: tuple[str, Identity] | None = None) -> None:
        """`signer`: the leader's node id and identity, which sign each assignment (nodes run nothing
        else); without (tools, tests) assignments are written unsigned, and nodes refuse them."""
        self.ns = ns
        self.leader_session = leader_session
        self.signer = signer

    def _signed_op(self, key: str, schema: str, doc: dict[str, Any]) -> dict[str, Any]:
        """The /v1/txn operation that writes `doc`, signed by the leader when there is one; never with a
        signature it was made from, which no longer covers it."""
        doc = {k: v for k, v in doc.items() if k != SIGNATURE}
        if self.signer is not None:
            node_id, identity = self.signer
            doc = identity.sign(doc, by=node_id)
        return state.set_document_op(key, schema, doc)

    def assignment_op(self, key: str, doc: dict[str, Any]) -> dict[str, Any]:
        """The /v1/txn operation that writes an assignment, signed by the leader."""
        return self._signed_op(key, "assignment", doc)

    def status_op(self, key: str, doc: dict[str, Any]) -> dict[str, Any]:
        """The /v1/txn operation that writes a status (Pending, Lost), signed by the leader as well."""
        return self._signed_op(key, "status", doc)

    def commit(self, *ops: dict[str, Any]) -> None:
        """Run `ops` as one transaction, after the leader check; NotLeader if the lock is lost."""
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


# ------------------------------------------------------------------------ the plan

@dataclass(frozen=True)
class Stop:
    """An assignment no longer wanted: removed, so its node stops the agent."""

    key: str
    node: str
    reason: str


@dataclass(frozen=True)
class Forget:
    """A status record no node will remove: the agent is not wanted and not placed, or its node is gone."""

    key: str
    reason: str


@dataclass(frozen=True)
class Keep:
    """An agent left as it runs; with `assignment`, rewritten in place (only its generation changed)."""

    key: str
    node: str
    reason: str
    assignment: dict[str, Any] | None = None     # without assignedAt, which the write adds


@dataclass(frozen=True)
class Restart:
    """An agent whose work changed, rewritten on the same node, which restarts it."""

    key: str
    node: str
    reason: str
    assignment: dict[str, Any]                   # without assignedAt, which the write adds


@dataclass(frozen=True)
class Lost:
    """An agent whose node is gone: Lost there. `status` is written once it is placed elsewhere."""

    key: str
    node: str
    reason: str
    status: dict[str, Any]                       # without updatedAt, which the write adds


@dataclass(frozen=True)
class Place:
    """An agent to place: not placed yet, its node lost, or its new requirements ruling out its node."""

    key: str
    reason: str
    assignment: dict[str, Any]                   # with its epoch; without assignedAt, which the write adds
    demand: Demand
    previous: str | None = None                  # the node of the assignment it replaces
    unplaced: str = ""                           # what to say before the scheduler's counts if it fits nowhere
    node: str | None = None                      # where: set by the placement step

    def pending_reason(self, counts: str) -> str:
        """Why it is Pending, given the scheduler's `0/N nodes: ...`."""
        return f"{self.unplaced}: {counts}" if self.unplaced else counts


@dataclass(frozen=True)
class Pending:
    """An agent that fits nowhere (from the placement step): Pending with the reason."""

    key: str
    reason: str
    place: Place


@dataclass
class Plan:
    """What one pipeline needs, as data: `reconcile` fills all but `pending`, which placement fills."""

    pipeline: str
    kernel: bool = False            # kernel agents (the init manifest): kernel nodes only
    place: list[Place] = field(default_factory=list)
    keep: list[Keep] = field(default_factory=list)
    restart: list[Restart] = field(default_factory=list)
    stop: list[Stop] = field(default_factory=list)
    lost: list[Lost] = field(default_factory=list)
    forget: list[Forget] = field(default_factory=list)
    pending: list[Pending] = field(default_factory=list)


# ----------------------------------------------------------------- 1. reconcile

def reconcile(view: ClusterView, name: str, manifest: dict[str, Any] | None) -> Plan:
    """What pipeline `name` needs for its assignments to match `manifest` (None: it was deleted).

    Pure: it reads `view` and changes nothing. An Init manifest (see view.init_pipeline) is
    the kernel agents, which only kernel nodes may run.
    """
    kernel = manifest is not None and manifest.get("kind") == "Init"
    if kernel:
        view = view.kernel_only()
    plan = Plan(name, kernel=kernel)
    mine = view.placed(name)
    wanted = state.desired_assignments(manifest) if manifest else {}
    gone = "the pipeline was deleted" if manifest is None else "no longer in the pipeline"

    for key, (node_id, _) in mine.items():
        if key not in wanted:
            plan.stop.append(Stop(key, node_id, gone))
    # An assignment that is not valid runs nothing (its node ignores it): remove it, or, for a wanted
    # agent that has no valid one, place the agent anew in its stead.
    replace: dict[str, str] = {}
    for full_key, why in sorted(view.bad_assignments.items()):
        node_id, key = state.split_assign_key(full_key)
        if state.split_agent_id(key)[0] != name:
            continue
        if key in wanted and key not in mine and key not in replace:
            replace[key] = node_id
        else:
            plan.stop.append(Stop(key, node_id, f"its assignment is invalid ({why})"))
    for key, why in sorted(view.bad_statuses.items()):
        if state.split_agent_id(key)[0] == name and key not in wanted:
            plan.forget.append(Forget(key, f"{gone}, and its status is invalid ({why})"))
    # Statuses no node will remove are ours: those of agents that are not wanted (so not placed
    # after this plan) and either Pending or Lost (no node has them) or on a node that is gone.
    for key, status in view.statuses.items():
        if state.split_agent_id(key)[0] != name or key in wanted:
            continue
        if status["state"] in ("Pending", "Lost"):
            plan.forget.append(Forget(key, f"{gone}, and it was {status['state']}"))
        elif not view.alive(status.get("node", "")):
            plan.forget.append(Forget(key, f"{gone}, and its node {status.get('node', '')} is gone"))
    if manifest is None:
        return plan

    for key, doc in wanted.items():
        current = mine.get(key)
        if current is None and key in replace:
            _place(plan, view, manifest, key, doc, f"its assignment on {replace[key]} is invalid",
                   node=replace[key])
            continue
        if current is None:
            _place(plan, view, manifest, key, doc, "not placed yet")
            continue
        node_id, placed = current
        status = view.statuses.get(key, {})
        done = (status.get("state") in state.FINAL_STATES and status.get("node") == node_id
                and status.get("epoch") == placed["epoch"] and state.same_work(placed, doc))
        alive = view.alive(node_id)
        if alive and not done and not _still_fits(view, node_id, key, placed, doc):
            _place(plan, view, manifest, key, doc, f"its new requirements rule out {node_id}", previous=placed,
                   node=node_id, unplaced=f"its new requirements rule out {node_id}, and it fits nowhere else")
        elif alive or done:
            # A finished agent stays finished, even when its node has gone since.
            rewritten = dict(doc, epoch=placed["epoch"])
            if not state.same_work(placed, doc):
                changed = ", ".join(f for f in state.WORK_FIELDS if placed.get(f) != doc.get(f))
                plan.restart.append(Restart(key, node_id, f"its work changed ({changed})", rewritten))
            elif placed["generation"] != doc["generation"]:
                plan.keep.append(Keep(key, node_id, f"only the generation changed ({placed['generation']} -> "
                                                    f"{doc['generation']})", rewritten))
            elif done:
                plan.keep.append(Keep(key, node_id, f"{status['state']}, with the same work"))
            else:
                plan.keep.append(Keep(key, node_id, "unchanged"))
        else:
            # Its node is gone (its session ended), or no longer trusted: the agent is Lost there and
            # placed anew, with a higher epoch that fences off the copy, should that node come back.
            why = view.gone(node_id)
            reason = f"{why}; placing the agent again"
            plan.lost.append(Lost(key, node_id, reason, _lost_status(key, view, node_id, placed, reason)))
            _place(plan, view, manifest, key, doc, why, previous=placed,
                   node=node_id, unplaced=f"its node {node_id} was lost, and it fits nowhere else")
    return plan


def _place(plan: Plan, view: ClusterView, manifest: dict[str, Any], key: str, doc: dict[str, Any], reason: str,
           previous: dict[str, Any] | None = None, node: str | None = None, unplaced: str = "") -> None:
    """Add a Place entry: its epoch past every earlier placement, and what to say if it fits nowhere."""
    away = [f"device {d} is on node {view.device_owners[d]}, which is down"
            for d in doc["agent"].get("requires", {}).get("devices", [])
            if d in view.device_owners and not view.alive(view.device_owners[d])]
    if away:
        unplaced = "; ".join(away)
    epoch = _epoch_after(key, view, previous)
    demand = Demand.from_spec(key, doc["agent"], _neighbors(key, doc), manifest["spec"].get("placement"))
    plan.place.append(Place(key, reason, dict(doc, epoch=epoch), demand, previous=node, unplaced=unplaced))


def _neighbors(key: str, doc: dict[str, Any]) -> set[str]:
    pipeline, _ = state.split_agent_id(key)
    return {state.agent_id(pipeline, other) for other in doc["inputs"] + doc["outputs"]}


def _epoch_after(key: str, view: ClusterView, previous: dict[str, Any] | None) -> int:
    """The epoch of a new placement: past every earlier placement of this agent (same uid)."""
    latest = previous["epoch"] if previous else 0
    status = view.statuses.get(key)
    if status and (previous is None or status.get("uid") == previous["uid"]):
        latest = max(latest, status.get("epoch", 0))
    return latest + 1


_NOTHING_PLACED = Usage()


def _still_fits(view: ClusterView, node_id: str, key: str, placed: dict[str, Any], doc: dict[str, Any]) -> bool:
    """Whether a changed spec may stay on its node: the scheduler's static checks still pass there.

    Resources are not checked again: the agent's own share is already counted there.
    """
    if placed["agent"].get("requires") == doc["agent"].get("requires"):
        return True
    node, demand = view.node(node_id), Demand.from_spec(key, doc["agent"])
    return all(check.reason(node, demand, _NOTHING_PLACED) is None for check in STATIC_CHECKS)


def _lost_status(key: str, view: ClusterView, node_id: str, placed: dict[str, Any], reason: str) -> dict[str, Any]:
    """The agent's status once its node is gone: Lost, with what was known of it there."""
    pipeline, agent = state.split_agent_id(key)
    status = {k: v for k, v in view.statuses.get(key, {}).items() if k in ("incarnation", "restarts", "exitCode")}
    status.update(pipeline=pipeline, agent=agent, uid=placed["uid"], node=node_id, state="Lost",
                  generation=placed["generation"], epoch=placed["epoch"], reason=reason)
    return status


# -------------------------------------------------------------------- 2. place

class Placer:
    """The placement step of one pass: its Usage and its node indexes (all nodes; kernel nodes), built once.

    Each placement is added to the Usage, so the next one, of any pipeline, sees it.
    """

    def __init__(self, view: ClusterView) -> None:
        self.view = view
        self.usage = view.usage()
        self._indexes: dict[bool, NodeIndex] = {}

    def index(self, kernel: bool) -> NodeIndex:
        """The pass's index of every live node, or (`kernel`) of the live kernel nodes."""
        found = self._indexes.get(kernel)
        if found is None:
            found = self._indexes[kernel] = NodeIndex((self.view.kernel_only() if kernel else self.view).nodes)
        return found

    def place(self, plan: Plan) -> Plan:
        """The plan with a node for each `place` entry that fits somewhere; the others `pending`."""
        if not plan.place:
            return plan
        index = self.index(plan.kernel)
        placed, pending = [], list(plan.pending)
        for entry in plan.place:
            result = index.place(entry.demand, self.usage)
            if result.node is None:
                pending.append(Pending(entry.key, entry.pending_reason(result.reason) + self._uncounted(plan.kernel),
                                       entry))
            else:
                placed.append(dataclasses.replace(entry, node=result.node))
                self.usage.add(result.node, entry.demand)
        return dataclasses.replace(plan, place=placed, pending=pending)

    def _uncounted(self, kernel: bool) -> str:
        """What a Pending reason adds about the live nodes placement did not count: those not trusted, and
        for a kernel agent those that are not kernel nodes (whatever their records claim)."""
        parts = []
        if self.view.untrusted:
            parts.append(f"{_some(sorted(self.view.untrusted))} (not approved, or its record not signed by its "
                         "registered key: `oneosctl get nodes` says why)")
        others = sorted(n.id for n in self.view.nodes if n.id not in self.view.kernel_ids) if kernel else []
        if others:
            parts.append(f"{_some(others)} (not a kernel node: neither its approval nor the boot record says so)")
        return "; not counted: " + "; ".join(parts) if parts else ""


def _some(ids: list[str]) -> str:
    """A few node ids for people: the first three, and how many more."""
    return ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")


# -------------------------------------------------------------------- 3. write

def write(plan: Plan, view: ClusterView, writes: Writes, now: Callable[[], str] = state.utcnow) -> None:
    """Commit a placed plan: one transaction per change, as `writes` fences them; `now` stamps them."""
    for stop in plan.stop:
        log.info("%s: removing from %s (%s)", stop.key, stop.node, stop.reason)
        writes.delete(state.assign_key(stop.node, stop.key))
    for forget in plan.forget:
        writes.delete(state.status_key(forget.key))
    for change in [*plan.restart, *(keep for keep in plan.keep if keep.assignment is not None)]:
        log.info("%s: updating it on %s: %s", change.key, change.node, change.reason)
        doc = _sealed(change.assignment, change.node, view, view.assignments.get(change.key))
        writes.commit(writes.assignment_op(state.assign_key(change.node, change.key), dict(doc, assignedAt=now())))
    if writes.signer is not None:
        _resign(plan, view, writes, now)
    lost = {entry.key: entry for entry in plan.lost}
    for entry in plan.place:
        assert entry.node is not None, "write() takes a plan that went through Placer.place"
        if entry.key in lost:
            log.warning("%s: %s; the agent is lost there, placing it again", entry.key, entry.reason)
        ops = _replacing(entry)
        doc = _sealed(entry.assignment, entry.node, view)
        ops.append(writes.assignment_op(state.assign_key(entry.node, entry.key), dict(doc, assignedAt=now())))
        if entry.key in lost:
            ops.append(writes.status_op(state.status_key(entry.key), dict(lost[entry.key].status, updatedAt=now())))
        log.info("%s: placed on %s (%s)", entry.key, entry.node, entry.reason)
        writes.commit(*ops)
    for pending in plan.pending:
        ops = _replacing(pending.place)
        current = view.statuses.get(pending.key)
        if not ops and current and current["state"] == "Pending" and current.get("reason") == pending.reason:
            continue        # already says so
        log.info("%s: pending: %s", pending.key, pending.reason)
        writes.commit(*ops, writes.status_op(state.status_key(pending.key),
                                             dict(pending_status(current, pending), updatedAt=now())))


def _sealed(doc: dict[str, Any], node_id: str, view: ClusterView,
            placed: tuple[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The assignment with its pipeline's frame key sealed to the node's registered box key (`frameKey`), so
    that only the nodes its agents run on can read it. The key sealed for this node and uid before (`placed`)
    is kept: a sealed value differs each time, and rewriting the same assignment must not change it.
    Kernel agents do without the bus, so without a key; without a frame key or a box key in the view,
    the assignment goes without (the node then says the key is missing)."""
    if doc.get("kernel"):
        return doc
    box = view.keys.get(node_id, {}).get("boxKey")
    if placed is not None and placed[0] == node_id and placed[1].get("uid") == doc["uid"] \
            and "frameKey" in placed[1] and placed[1].get("frameKeyFor") == box:
        return dict(doc, frameKey=placed[1]["frameKey"], frameKeyFor=box)
    key = view.pipe_keys.get((doc["pipeline"], doc["uid"]))
    sealed = state.seal_frame_key(key, box, doc["pipeline"], doc["uid"]) if key and box else None
    return dict(doc, frameKey=sealed, frameKeyFor=box) if sealed else doc


def _resign(plan: Plan, view: ClusterView, writes: Writes, now: Callable[[], str]) -> None:
    """Rewrite, signed, each kept assignment whose signature no longer counts (unsigned, altered, by a node
    no longer a kernel node, or revoked: its node refuses it), or that has no frame key where one can be
    sealed now. The work is the same: the node does not restart the agent."""
    kernels = state.kernel_keys(view.keys, view.boot)
    for keep in plan.keep:
        if keep.assignment is not None or keep.key not in view.assignments:
            continue
        node_id, placed = view.assignments[keep.key]
        why = state.signed_by(placed, view.keys, kernels)
        doc = _sealed({k: v for k, v in placed.items() if k not in (SIGNATURE, "assignedAt", "frameKey", "frameKeyFor")},
                      node_id, view, view.assignments[keep.key])
        if why is None and doc.get("frameKeyFor") != placed.get("frameKeyFor"):
            why = ("it has no frame key" if "frameKey" not in placed
                   else "its frame key is sealed to a key the node no longer has (it was enrolled again)")
        if why is None:
            continue
        log.info("%s: signing it again on %s: %s", keep.key, node_id, why)
        writes.commit(writes.assignment_op(state.assign_key(node_id, keep.key), dict(doc, assignedAt=now())))


def _replacing(entry: Place) -> list[dict[str, Any]]:
    """The removal of the assignment a placement replaces, if any."""
    if entry.previous is None:
        return []
    return [kv_op("delete", state.assign_key(entry.previous, entry.key))]


def pending_status(current: dict[str, Any] | None, pending: Pending) -> dict[str, Any]:
    """The Pending status to write (without updatedAt), keeping what `current` knew of the same agent."""
    pipeline, agent = state.split_agent_id(pending.key)
    doc = pending.place.assignment
    status = {"pipeline": pipeline, "agent": agent, "uid": doc["uid"], "state": "Pending",
              "generation": doc["generation"], "epoch": doc["epoch"] - 1, "reason": pending.reason}
    for kept in ("incarnation", "restarts", "exitCode"):
        if current and current.get("uid") == doc["uid"] and kept in current:
            status[kept] = current[kept]
    return status


# --------------------------------------------------------------------- the pass

def run_pass(view: ClusterView, writes: Writes, now: Callable[[], str] = state.utcnow) -> None:
    """Reconcile, place and write every pipeline of `view`; an error in one does not stop the others
    (NotLeader, or the Name Server out of reach, stops all).

    A pipeline whose stored manifest cannot be used is marked Invalid with the reason (see
    `mark_invalid`) and its agents are left as they are."""
    if view.init_error:
        log.error("kernel agents: %s; they are left as they run", view.init_error)
    placer = Placer(view)
    for name in sorted(view.pipeline_names()):
        try:
            manifest = view.desired(name)
            if manifest is None and name in view.invalid:
                mark_invalid(view, name, writes, now)
                continue
            if manifest is None and view.init_error and _kernel(view, name):
                continue    # the init manifest (or the boot record) cannot be read: not a reason to stop them
            write(placer.place(reconcile(view, name, manifest)), view, writes, now)
        except (DocumentError, TxnConflict) as exc:     # TxnConflict first: it is a NameServerError
            log.error("pipeline %s: %s", name, exc)
        except (NotLeader, NameServerUnreachable, NameServerError):
            raise
        except Exception:  # noqa: BLE001 - one pipeline that trips a bug must not stop the others
            log.exception("pipeline %s: reconciling it failed; the others go on", name)
    for name in sorted(set(view.marks) - set(view.invalid)):
        # Applied again (valid now) or deleted: the mark goes.
        log.info("pipeline %s: its stored manifest is %s", name, "valid again" if name in view.manifests else "gone")
        writes.delete(state.invalid_key(name))


def _kernel(view: ClusterView, name: str) -> bool:
    """Whether the pipeline's agents are kernel agents (the init manifest's)."""
    return any(doc.get("kernel") for _, doc in view.placed(name).values())


def invalid_reason(view: ClusterView, name: str) -> str:
    """What the Invalid mark of a pipeline says: why its manifest cannot be used, and what is done meanwhile."""
    placed = len(view.placed(name))
    agents = ("nothing of it runs" if not placed else "its placed agent is left as it is" if placed == 1
              else f"its {placed} placed agents are left as they are")
    return f"{view.invalid[name]}; {agents}"


def mark_invalid(view: ClusterView, name: str, writes: Writes, now: Callable[[], str] = state.utcnow) -> None:
    """Record at oneos/invalid/<name> why the pipeline's stored manifest cannot be used (once per reason:
    a pass that finds the same reason writes nothing)."""
    reason = invalid_reason(view, name)
    mark = view.marks.get(name)
    if mark is not None and mark.get("reason") == reason:
        return
    log.error("pipeline %s: Invalid: %s; apply it again or delete it", name, reason)
    writes.put(state.invalid_key(name), "invalid", {"pipeline": name, "reason": reason,
                                                     "since": mark["since"] if mark else now()})


def reconcile_all(ns: NameServer, leader_session: str | None = None,
                  signer: tuple[str, Identity] | None = None) -> ClusterView:
    """One pass over every pipeline: read the cluster once, then reconcile, place and write each (assignments
    signed by `signer`); the view the pass worked from."""
    view = ClusterView.read(ns)
    if signer is not None and signer[0] not in state.kernel_keys(view.keys, view.boot):
        # Writing would only do harm: nodes refuse what it signs, and the assignments it kept would be
        # signed again, refused, and their agents stopped. What runs is left as it runs.
        raise UntrustedLeader(f"this runtime ({signer[0]}) leads, but {state.key_key(signer[0])} does not "
                              "register it as a kernel node: nodes would refuse every assignment it signs, so it "
                              "writes none; approve it as a kernel node, or run it with --no-kernel")
    run_pass(view, Writes(ns, leader_session, signer))
    return view
