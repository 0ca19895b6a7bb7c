"""Placement: which node runs an agent, as a chain of feasibility checks, then scoring.

Like Nomad's scheduler: each check asks one question of one node and answers None (fits)
or a reason; every node a check filters is counted under that check, so an agent that
fits nowhere says why, e.g. `0/5 nodes: 3 missing label gpio=true, 2 not enough memory
(64Mi free < 128Mi)`. The checks, in the order they count: the node named, labels,
the label selector (each requirement), devices, one agent of the pipeline per node
(placement.distinctNodes), memory, cpu.

Among the nodes that fit, the best score wins, compared in this order: the sum of the
weights of the agent's `prefers` terms the node matches; with placement.spreadBy, the
fewest agents of the pipeline on nodes with the node's value of that label (nodes
without the label last); fewest agents it is linked with; fewest agents; most free
memory; then a tie-break that is stable per (node, agent).

`place_naive` does exactly that over every node. `place` gives the same answers fast:
a NodeIndex keeps each label value and device as a bitmask of nodes, so the static
checks of an agent are a few integer ANDs (cached per distinct set of constraints);
the nodes left are grouped by prefers score and spread value, best group first, and,
like Nomad's limit iterator, in the first group that has room it scores only the first
SAMPLE nodes that fit, scanning from a point that depends on the agent. Free memory and
cpu are kept as bitmasks too (nodes with at least 2**k free, per k), brought up to date
from the nodes `Usage.add` changed, so that full nodes are skipped without a look.
Prefers, spread and staying away from linked agents are never traded for speed; "fewest
agents" and "most free memory" are, when more than SAMPLE nodes fit, among the sample.
An agent that fits nowhere is explained with the same counts as a full scan: the static
checks from the bitmasks, capacity and distinctNodes from the nodes that pass them.
"""

from __future__ import annotations

import math
import weakref
import zlib
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Any, Iterable, Protocol, Sequence

from oneos import selectors
from oneos.selectors import Requirement, SelectorError
from oneos.quantities import format_memory, parse_cpu, parse_memory

#: How many fitting nodes `place` scores when more fit (Nomad's limit iterator).
SAMPLE = 8


@dataclass
class NodeInfo:
    """What placement needs to know of a live node."""

    id: str
    labels: dict[str, str]
    devices: set[str]
    cpu: float
    memory: int

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "NodeInfo":
        return cls(record["id"], dict(record.get("labels", {})), set(record.get("devices", {})),
                   float(record["capacity"]["cpu"]), int(record["capacity"]["memory"]))


@dataclass
class Demand:
    """What one agent asks of a node."""

    key: str                                            # PIPELINE.AGENT
    labels: dict[str, str] = field(default_factory=dict)
    node: str | None = None
    devices: list[str] = field(default_factory=list)
    memory: int = 0
    cpu: float = 0.0
    neighbors: set[str] = field(default_factory=set)   # agents linked to this one
    selector: str = ""                                  # requires.selector, Kubernetes syntax
    prefers: list[tuple[int, str]] = field(default_factory=list)   # (weight, selector)
    distinct: bool = False          # placement.distinctNodes: no two agents of the pipeline on one node
    spread_by: str | None = None    # placement.spreadBy: a label key
    pipeline: str = ""              # default: the part of `key` before the first '.'

    def __post_init__(self) -> None:
        if not self.pipeline:
            self.pipeline = self.key.partition(".")[0]

    @classmethod
    def from_spec(cls, key: str, spec: dict[str, Any], neighbors: Iterable[str] = (),
                  placement: dict[str, Any] | None = None) -> "Demand":
        """The demand of agent `spec`; `placement` is its pipeline's spec.placement."""
        requires = spec.get("requires", {})
        resources = spec.get("resources", {})
        placement = placement or {}
        return cls(key, dict(requires.get("labels", {})), requires.get("node"), list(requires.get("devices", [])),
                   parse_memory(resources["memory"]) if "memory" in resources else 0,
                   parse_cpu(resources["cpu"]) if "cpu" in resources else 0.0, set(neighbors),
                   selector=requires.get("selector", ""),
                   prefers=[(int(term["weight"]), term["selector"]) for term in spec.get("prefers", [])],
                   distinct=bool(placement.get("distinctNodes", False)), spread_by=placement.get("spreadBy"))


@dataclass
class Usage:
    """What is already placed on each node. Change it only through `add`, which logs the nodes it changes."""

    agents: dict[str, set[str]] = field(default_factory=dict)     # node -> agent keys
    memory: Counter = field(default_factory=Counter)
    cpu: Counter = field(default_factory=Counter)
    pipelines: dict[str, Counter] = field(default_factory=dict)   # pipeline -> node -> its agents there
    changed: list[str] = field(default_factory=list, repr=False, compare=False)   # nodes, in order of add

    def add(self, node_id: str, demand: Demand) -> None:
        self.changed.append(node_id)
        self.agents.setdefault(node_id, set()).add(demand.key)
        self.memory[node_id] += demand.memory
        self.cpu[node_id] += demand.cpu
        counts = self.pipelines.get(demand.pipeline)
        if counts is None:
            counts = self.pipelines[demand.pipeline] = Counter()
        counts[node_id] += 1


@dataclass(frozen=True)
class Shortfall:
    """A node without enough of a resource: counted per (resource, wanted), whatever is free."""

    resource: str        # "memory" or "cpu"
    wanted: float
    free: float

    def __str__(self) -> str:
        return f"not enough {self.resource} ({_amount(self.resource, self.free)} free < " \
               f"{_amount(self.resource, self.wanted)})"


def _amount(resource: str, value: float) -> str:
    value = max(value, 0)
    return format_memory(int(value)) if resource == "memory" else f"{value:g}"


class Check(Protocol):
    name: str

    def reason(self, node: NodeInfo, demand: Demand, usage: Usage) -> str | Shortfall | None:
        """None when the node passes; else why not, in a few words that do not depend on the node."""


class NodeNamed:
    name = "node"

    def reason(self, node: NodeInfo, demand: Demand, usage: Usage) -> str | None:
        return None if demand.node is None or node.id == demand.node else f"not node {demand.node}"


class LabelsMatch:
    name = "labels"

    def reason(self, node: NodeInfo, demand: Demand, usage: Usage) -> str | None:
        for key, value in sorted(demand.labels.items()):
            if node.labels.get(key) != value:
                return f"missing label {key}={value}"
        return None


def requirements(selector: str) -> tuple[Requirement, ...] | SelectorError:
    """The parsed selector, or its error (manifests are validated, so only a stored oddity gets here)."""
    try:
        return selectors.parse(selector)
    except SelectorError as err:
        return err


def _invalid(selector: str, err: SelectorError) -> str:
    return f"invalid selector {selector!r} ({err.what} at column {err.column})"


class SelectorMatches:
    name = "selector"

    def reason(self, node: NodeInfo, demand: Demand, usage: Usage) -> str | None:
        if not demand.selector:
            return None
        parsed = requirements(demand.selector)
        if isinstance(parsed, SelectorError):
            return _invalid(demand.selector, parsed)
        for requirement in parsed:
            if not requirement.matches(node.labels):
                return requirement.failure()
        return None


class DevicesPresent:
    name = "devices"

    def reason(self, node: NodeInfo, demand: Demand, usage: Usage) -> str | None:
        for device in demand.devices:
            if device not in node.devices:
                return f"missing device {device}"
        return None


DISTINCT = "already running an agent of this pipeline"


class DistinctNodes:
    name = "distinct"

    def reason(self, node: NodeInfo, demand: Demand, usage: Usage) -> str | None:
        if demand.distinct and usage.pipelines.get(demand.pipeline, {}).get(node.id):
            return DISTINCT
        return None


class MemoryFits:
    name = "memory"

    def reason(self, node: NodeInfo, demand: Demand, usage: Usage) -> Shortfall | None:
        free = node.memory - usage.memory.get(node.id, 0)
        if demand.memory > free:
            return Shortfall("memory", demand.memory, free)
        return None


class CpuFits:
    name = "cpu"

    def reason(self, node: NodeInfo, demand: Demand, usage: Usage) -> Shortfall | None:
        free = node.cpu - usage.cpu.get(node.id, 0)
        if demand.cpu > free + 1e-9:
            return Shortfall("cpu", demand.cpu, free)
        return None


CHECKS: tuple[Check, ...] = (NodeNamed(), LabelsMatch(), SelectorMatches(), DevicesPresent(), DistinctNodes(),
                             MemoryFits(), CpuFits())


@dataclass
class Placement:
    node: str | None          # None: no node fits
    reason: str = ""          # for people, when node is None


class Filtered(Counter):
    """Nodes filtered, by reason. A Shortfall is counted per (resource, wanted), noting the least
    and the most that the nodes it filtered had free, so that counts stay few and meaningful."""

    def __init__(self) -> None:
        super().__init__()
        self.free: dict[tuple[str, float], list[float]] = {}   # (resource, wanted) -> [least, most] free

    def note(self, why: str | Shortfall, count: int = 1) -> None:
        if isinstance(why, Shortfall):
            group = (why.resource, why.wanted)
            span = self.free.get(group)
            if span is None:
                self.free[group] = [why.free, why.free]
            else:
                span[0], span[1] = min(span[0], why.free), max(span[1], why.free)
            self[group] += count
        else:
            self[why] += count

    def texts(self) -> dict[str, int]:
        """Each reason as people read it, with its count."""
        out: dict[str, int] = {}
        for why, count in self.items():
            if isinstance(why, tuple):
                resource, wanted = why
                least, most = (_amount(resource, free) for free in self.free[why])
                text = (f"not enough {resource} ({most if least == most else 'at most ' + most} free < "
                        f"{_amount(resource, wanted)})")
            else:
                text = str(why)
            out[text] = out.get(text, 0) + count
        return out


def explain(total: int, filtered: Counter) -> str:
    """`0/5 nodes: 3 missing label gpio=true, 2 not enough memory (...)`, most common first."""
    if total == 0:
        return "0/0 nodes: no node has joined the cluster"
    counts = filtered.texts() if isinstance(filtered, Filtered) else {str(k): v for k, v in filtered.items()}
    parts = [f"{count} {why}" for why, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return f"0/{total} nodes: " + ", ".join(parts)


def preference(labels: dict[str, str], demand: Demand) -> int:
    """The sum of the weights of the demand's prefers terms that `labels` match."""
    total = 0
    for weight, selector in demand.prefers:
        parsed = requirements(selector)
        if not isinstance(parsed, SelectorError) and selectors.matches(parsed, labels):
            total += weight
    return total


def spread_counts(demand: Demand, labels_of: dict[str, dict[str, str]], usage: Usage) -> Counter:
    """Agents of the demand's pipeline per value of its spreadBy label, over the nodes in `labels_of`."""
    counts: Counter = Counter()
    for node_id, count in usage.pipelines.get(demand.pipeline, {}).items():
        labels = labels_of.get(node_id)
        if labels is not None:
            counts[labels.get(demand.spread_by)] += count
    return counts


def score(node: NodeInfo, demand: Demand, usage: Usage, spread: Counter | None = None) -> tuple:
    """Higher is better: prefers, spread, away from linked agents, fewest agents, most free memory."""
    placed = usage.agents.get(node.id, set())
    if demand.spread_by:
        value = node.labels.get(demand.spread_by)
        spreading = (value is not None, -(spread or {}).get(value, 0) if value is not None else 0)
    else:
        spreading = (True, 0)
    return (preference(node.labels, demand), spreading, -len(placed & demand.neighbors), -len(placed),
            node.memory - usage.memory.get(node.id, 0))


def place(demand: Demand, nodes: "Sequence[NodeInfo] | NodeIndex", usage: Usage,
          checks: tuple[Check, ...] | None = None) -> Placement:
    """The best node for `demand`, or why there is none (see the module's docstring).

    `nodes` is a list of NodeInfo (its index is kept while the same list of the same nodes
    comes back) or a NodeIndex. Give `checks` to place with another chain, the slow way.
    """
    if checks is not None and checks != CHECKS:
        return place_naive(demand, nodes.nodes if isinstance(nodes, NodeIndex) else nodes, usage, checks)
    index = nodes if isinstance(nodes, NodeIndex) else NodeIndex.of(nodes)
    return index.place(demand, usage)


def place_naive(demand: Demand, nodes: Sequence[NodeInfo], usage: Usage,
                checks: tuple[Check, ...] = CHECKS) -> Placement:
    """`place` by asking every check of every node, and scoring every node that fits."""
    feasible = []
    filtered = Filtered()
    for node in nodes:
        for check in checks:
            why = check.reason(node, demand, usage)
            if why is not None:
                filtered.note(why)
                break
        else:
            feasible.append(node)
    if not feasible:
        return Placement(None, explain(len(nodes), filtered))
    spread = spread_counts(demand, {n.id: n.labels for n in nodes}, usage) if demand.spread_by else None
    best = max(feasible, key=lambda n: (score(n, demand, usage, spread), _stable(n.id, demand.key)))
    return Placement(best.id)


def _stable(node_id: str, key: str) -> int:
    """A tie-break that differs per agent (so ties spread) but never changes between runs."""
    return zlib.crc32(f"{node_id}/{key}".encode())


# ------------------------------------------------------------------ fast placement

_NO_AGENTS: frozenset[str] = frozenset()


@dataclass
class _Plan:
    """What one set of static constraints (all but capacity and the pipeline's own agents) makes of the nodes."""

    checks: list[tuple[str, int]]     # (reason, mask of the nodes that pass), in counting order
    fits: int                         # mask of the nodes that pass them all
    # The fitting nodes by prefers score, best first; each group as (spreadBy value, mask) buckets.
    groups: list[list[tuple[str | None, int]]]


class NodeIndex:
    """Placement's view of a list of nodes: per-node arrays, and label values and devices as bitmasks.

    Node i is bit n-1-i of a mask, so that `format(mask, "0{n}b")[i]` is "1" when node i is in
    it, and `str.find` walks a mask's nodes in C. Treat indexed NodeInfo objects as read-only.
    """

    _last: "NodeIndex | None" = None
    PLANS = 8192          # constraint sets remembered
    MEMBERS = 4096        # masks remembered as strings

    def __init__(self, nodes: Iterable[NodeInfo]) -> None:
        self.nodes = list(nodes)
        self._source: object = None       # the list `of` was last given
        n = len(self.nodes)
        self.ids = [x.id for x in self.nodes]
        self.position = {node_id: i for i, node_id in enumerate(self.ids)}
        self.memory = [x.memory for x in self.nodes]
        self.cpu = [x.cpu for x in self.nodes]
        self.labels = [x.labels for x in self.nodes]
        self.labels_of = {x.id: x.labels for x in self.nodes}
        self._stable_prefix = [zlib.crc32(f"{node_id}/".encode()) for node_id in self.ids]
        self.all = (1 << n) - 1
        self._format = f"0{n}b"
        self.values: dict[str, dict[str, int]] = {}   # label key -> value -> mask
        self.keys: dict[str, int] = {}                # label key -> mask of the nodes that have it
        self.devices: dict[str, int] = {}             # device -> mask
        for i, x in enumerate(self.nodes):
            bit = 1 << (n - 1 - i)
            for key, value in x.labels.items():
                by_value = self.values.setdefault(key, {})
                by_value[value] = by_value.get(value, 0) | bit
                self.keys[key] = self.keys.get(key, 0) | bit
            for device in x.devices:
                self.devices[device] = self.devices.get(device, 0) | bit
        self._plans: dict[tuple, _Plan] = {}
        self._members: dict[int, str] = {}
        # Nodes with at least 2**c bytes (or cpus) free, per class c, for the Usage last seen, of
        # which the first `_applied` changes are reflected. Usage only grows, so bits only clear.
        self._usage: weakref.ref | None = None
        self._applied = 0
        self._roomy: dict[str, dict[int, int]] = {"memory": {}, "cpu": {}}
        self._levels: dict[str, list[tuple[float, int]]] = {"memory": [], "cpu": []}

    @classmethod
    def of(cls, nodes: Sequence[NodeInfo]) -> "NodeIndex":
        """The index of `nodes`, reused while the list holds the same nodes, or equal ones."""
        last = cls._last
        if last is not None and len(nodes) == len(last.nodes):
            given = nodes if isinstance(nodes, list) else list(nodes)
            if given == last.nodes:             # element by element, `is` first: fast for the same nodes
                if given is not last._source:
                    last._source, last.nodes = given, list(given)   # compare by identity from now on
                return last
        index = NodeIndex._last = cls(nodes)
        index._source = nodes
        return index

    def bit(self, position: int) -> int:
        return 1 << (len(self.nodes) - 1 - position)

    def member(self, mask: int) -> str:
        """`mask` as a string of '0' and '1', one character per node, in node order."""
        found = self._members.get(mask)
        if found is None:
            if len(self._members) >= self.MEMBERS:
                self._members.clear()
            found = self._members[mask] = format(mask, self._format)
        return found

    # ----------------------------------------------------------- static checks

    def mask(self, requirement: Requirement) -> int:
        """The nodes whose labels meet `requirement`."""
        op, key = requirement.op, requirement.key
        if op in ("exists", "!"):
            found = self.keys.get(key, 0)
        else:
            by_value = self.values.get(key, {})
            found = 0
            for value in requirement.values:
                found |= by_value.get(value, 0)
        return self.all & ~found if op in ("!=", "notin", "!") else found

    def _selector_checks(self, selector: str) -> list[tuple[str, int]]:
        parsed = requirements(selector)
        if isinstance(parsed, SelectorError):
            return [(_invalid(selector, parsed), 0)]
        return [(r.failure(), self.mask(r)) for r in parsed]

    def plan(self, demand: Demand) -> _Plan:
        signature = (demand.node, tuple(sorted(demand.labels.items())) if demand.labels else (), demand.selector,
                     tuple(demand.devices), tuple(demand.prefers), demand.spread_by)
        plan = self._plans.get(signature)
        if plan is None:
            if len(self._plans) >= self.PLANS:
                self._plans.clear()
            plan = self._plans[signature] = self._make_plan(demand)
        return plan

    def _make_plan(self, demand: Demand) -> _Plan:
        checks: list[tuple[str, int]] = []
        if demand.node is not None:
            where = self.position.get(demand.node)
            checks.append((f"not node {demand.node}", 0 if where is None else self.bit(where)))
        for key, value in sorted(demand.labels.items()):
            checks.append((f"missing label {key}={value}", self.values.get(key, {}).get(value, 0)))
        if demand.selector:
            checks += self._selector_checks(demand.selector)
        for device in demand.devices:
            checks.append((f"missing device {device}", self.devices.get(device, 0)))
        fits = self.all
        for _, mask in checks:
            fits &= mask
        by_score = {0: fits} if fits else {}
        for weight, selector in demand.prefers:
            term = self.all
            for _, mask in self._selector_checks(selector):
                term &= mask
            scored: dict[int, int] = {}
            for score_, mask in by_score.items():
                for gained, part in ((weight, mask & term), (0, mask & ~term)):
                    if part:
                        scored[score_ + gained] = scored.get(score_ + gained, 0) | part
            by_score = scored
        groups = []
        for _, mask in sorted(by_score.items(), reverse=True):
            if demand.spread_by:
                buckets: list[tuple[str | None, int]] = []
                for value, value_mask in sorted(self.values.get(demand.spread_by, {}).items()):
                    if mask & value_mask:
                        buckets.append((value, mask & value_mask))
                missing = mask & ~self.keys.get(demand.spread_by, 0)
                if missing:
                    buckets.append((None, missing))
                groups.append(buckets)
            else:
                groups.append([(None, mask)])
        return _Plan(checks, fits, groups)

    # ------------------------------------------------------- capacity, as masks

    def _sync(self, usage: Usage) -> None:
        """Bring the capacity masks up to date with `usage`."""
        if self._usage is None or self._usage() is not usage:
            self._usage, self._applied = weakref.ref(usage), 0
            self._roomy, self._levels = {"memory": {}, "cpu": {}}, {"memory": [], "cpu": []}
            return
        changed = usage.changed
        if self._applied == len(changed):
            return
        fresh = changed[self._applied:]
        self._applied = len(changed)
        roomy, levels, position, n = self._roomy, self._levels, self.position, len(self.ids)
        if not (levels["memory"] or levels["cpu"]):
            return
        for node_id in set(fresh):
            p = position.get(node_id)
            if p is None:
                continue
            bit = 1 << (n - 1 - p)
            for resource, free in (("memory", self.memory[p] - usage.memory.get(node_id, 0)),
                                   ("cpu", self.cpu[p] - usage.cpu.get(node_id, 0) + 1e-9)):
                masks = roomy[resource]
                for threshold, c in levels[resource]:      # highest first
                    if free >= threshold:
                        break
                    mask = masks[c]
                    if mask & bit:
                        masks[c] = mask & ~bit

    def room(self, resource: str, wanted: float, usage: Usage) -> int:
        """A mask of nodes that holds every node with `wanted` of `resource` free (and maybe a few without).

        Call `_sync(usage)` first."""
        if wanted <= 0:
            return self.all
        c = math.frexp(wanted)[1] - 1          # 2**c <= wanted < 2**(c+1)
        masks = self._roomy[resource]
        mask = masks.get(c)
        if mask is None:
            used = usage.memory if resource == "memory" else usage.cpu
            capacity = self.memory if resource == "memory" else self.cpu
            slack = 0 if resource == "memory" else 1e-9
            threshold, n, mask = math.ldexp(1.0, c), len(self.ids), 0
            for p, node_id in enumerate(self.ids):
                if capacity[p] - used.get(node_id, 0) + slack >= threshold:
                    mask |= 1 << (n - 1 - p)
            masks[c] = mask
            self._levels[resource] = sorted(((math.ldexp(1.0, k), k) for k in masks), reverse=True)
        return mask

    # ----------------------------------------------------------------- placing

    def place(self, demand: Demand, usage: Usage) -> Placement:
        """The best node for `demand` given `usage` (see the module's docstring)."""
        plan = self.plan(demand)
        if plan.fits:
            self._sync(usage)
            room = plan.fits & self.room("memory", demand.memory, usage) & self.room("cpu", demand.cpu, usage)
            if demand.distinct and room:
                for node_id in usage.pipelines.get(demand.pipeline, ()):
                    p = self.position.get(node_id)
                    if p is not None:
                        room &= ~self.bit(p)
            if room:
                seed = zlib.crc32(demand.key.encode())
                neighbors = demand.neighbors
                sample = SAMPLE if len(neighbors) < SAMPLE else len(neighbors) + 1
                spread = spread_counts(demand, self.labels_of, usage) if demand.spread_by else None
                for group in plan.groups:
                    for tier in self._tiers(group, spread):
                        found = self._sample(tier, room, demand, usage, seed, sample)
                        if found:
                            return Placement(self.ids[self._best(found, demand, usage)])
        return Placement(None, explain(len(self.nodes), self._filtered(plan, demand, usage)))

    @staticmethod
    def _tiers(group: list[tuple[str | None, int]], spread: Counter | None) -> list[list[int]]:
        """The group's bucket masks in tiers of equal spread count, fewest first; nodes without the label last."""
        if spread is None:
            return [[mask for _, mask in group]]
        ranked: dict[tuple[bool, int], list[int]] = {}
        for value, mask in group:
            rank = (True, 0) if value is None else (False, spread.get(value, 0))
            ranked.setdefault(rank, []).append(mask)
        return [ranked[rank] for rank in sorted(ranked)]

    def _sample(self, tier: list[int], room: int, demand: Demand, usage: Usage, seed: int, sample: int) -> list[int]:
        """Up to `sample` nodes of `tier` that have room, scanning from a node that depends on the agent."""
        ids, memory, cpu = self.ids, self.memory, self.cpu
        used_memory, used_cpu = usage.memory, usage.cpu
        wanted_memory, wanted_cpu = demand.memory, demand.cpu - 1e-9
        n = len(ids)
        start = seed % n
        after = (1 << (n - start)) - 1      # the bits of nodes start..n-1
        found: list[int] = []
        first = seed % len(tier)
        for mask in chain(islice(tier, first, None), islice(tier, first)):
            mask &= room
            if not mask:
                continue
            # Nodes start..n-1, then 0..start-1: each part's highest bit is its first node, at top - bit_length.
            for bits, top in ((mask & after, n), (mask >> (n - start), start)):
                while bits:
                    length = bits.bit_length()
                    bits ^= 1 << (length - 1)
                    p = top - length
                    node_id = ids[p]
                    if memory[p] - used_memory.get(node_id, 0) >= wanted_memory \
                            and cpu[p] - used_cpu.get(node_id, 0) >= wanted_cpu:
                        found.append(p)
                        if len(found) >= sample:
                            return found
        return found

    def _best(self, found: list[int], demand: Demand, usage: Usage) -> int:
        """The best of `found`: away from linked agents, fewest agents, most free memory, then `_stable`."""
        if len(found) == 1:
            return found[0]
        ids, memory, used_memory, agents = self.ids, self.memory, usage.memory, usage.agents
        neighbors = demand.neighbors
        best: tuple = ()
        ties: list[int] = []
        for p in found:
            node_id = ids[p]
            placed = agents.get(node_id, _NO_AGENTS)
            linked = 0 if not neighbors or neighbors.isdisjoint(placed) else -len(neighbors & placed)
            rank = (linked, -len(placed), memory[p] - used_memory.get(node_id, 0))
            if rank > best:
                best, ties = rank, [p]
            elif rank == best:
                ties.append(p)
        if len(ties) == 1:
            return ties[0]
        key, prefix = demand.key.encode(), self._stable_prefix
        return max(ties, key=lambda p: zlib.crc32(key, prefix[p]))     # == _stable(ids[p], demand.key)

    def _filtered(self, plan: _Plan, demand: Demand, usage: Usage) -> Filtered:
        """Why each node does not fit, counted as the check chain counts it."""
        filtered = Filtered()
        remaining = self.all
        for why, mask in plan.checks:
            failed = remaining & ~mask
            if failed:
                filtered.note(why, failed.bit_count())
                remaining &= mask
        if not remaining:
            return filtered
        ids, memory, cpu, used_memory, used_cpu = self.ids, self.memory, self.cpu, usage.memory, usage.cpu
        wanted_memory, wanted_cpu = demand.memory, demand.cpu
        member = self.member(remaining)
        positions = []
        p = member.find("1")
        while p >= 0:
            positions.append(p)
            p = member.find("1", p + 1)
        taken = usage.pipelines.get(demand.pipeline) if demand.distinct else None
        distinct = 0
        if taken:
            left = [p for p in positions if not taken.get(ids[p])]
            distinct, positions = len(positions) - len(left), left
        frees = [memory[p] - used_memory.get(ids[p], 0) for p in positions]
        short = {"memory": [free for free in frees if wanted_memory > free]}     # what the nodes filtered had free
        roomy = [p for p, free in zip(positions, frees) if wanted_memory <= free] if short["memory"] else positions
        short["cpu"] = [free for free in (cpu[p] - used_cpu.get(ids[p], 0) for p in roomy) if wanted_cpu > free + 1e-9]
        if distinct:
            filtered.note(DISTINCT, distinct)
        for resource, frees in short.items():
            if frees:
                wanted = wanted_memory if resource == "memory" else wanted_cpu
                filtered.note(Shortfall(resource, wanted, min(frees)), len(frees))
                filtered.note(Shortfall(resource, wanted, max(frees)), 0)
        return filtered
