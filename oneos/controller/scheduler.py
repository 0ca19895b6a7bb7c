"""Placement: which node runs an agent, as a chain of feasibility checks, then scoring.

Like Nomad's scheduler: each check asks one question of one node and answers None (fits)
or a reason; every node a check filters is counted under that check, so an agent that
fits nowhere says why, e.g. `0/5 nodes: 3 missing label gpio=true, 2 not enough memory
(64Mi free < 128Mi)`; when what it asks for is on no node at all (the node it names, a
label or device it requires), the reason says just that: `no node n9`, `no node has label gpio=true`. The checks (CHECKS), in the order they count: the node named,
labels, the label selector (each requirement), devices, one agent of the pipeline per
node (placement.distinctNodes), memory, cpu.

Each check is one object that answers both ways, with its reason words written once: for
one node (`reason`, which the naive scan asks), and for every node of a NodeIndex at once.
A StaticCheck (node, labels, selector, devices) gives an exact mask per requirement; a
CapacityCheck (distinctNodes, memory, cpu) gives a mask that holds every node with room,
the exact per-node test the mask leaves to do, and the counts of a list of nodes it refuses.

Among the nodes that fit, the best score wins, compared in this order: the sum of the
weights of the agent's `prefers` terms the node matches; with placement.spreadBy, the
fewest agents of the pipeline on nodes with the node's value of that label (nodes
without the label last); fewest agents it is linked with; fewest agents; most free
memory; then a tie-break that is stable per (node, agent).

`place_naive` does exactly that over every node. `NodeIndex.place` gives the same answers
fast, from the same checks: the static masks of an agent are a few integer ANDs (cached
per distinct set of constraints); the nodes left are grouped by prefers score and spread
value, best group first, and, like Nomad's limit iterator, in the first group that has
room it scores only the first SAMPLE nodes that pass the exact tests, scanning from a
point that depends on the agent. Free memory and cpu are kept as bitmasks too (nodes
with at least 2**k free, per k), brought up to date from the nodes `Usage.add` changed,
so that full nodes are skipped without a look. Prefers, spread and staying away from
linked agents are never traded for speed; "fewest agents" and "most free memory" are,
when more than SAMPLE nodes fit, among the sample. An agent that fits nowhere is
explained with the same counts as a full scan: the static masks, then each capacity
check over the nodes that pass the checks before it.

A NodeIndex and what it caches belong to whoever builds it: the reconciler builds one per
pass (and one of the kernel nodes), so that each placement of the pass sees the Usage of
the ones before it; `place(demand, list, usage)` indexes the list for that one placement.
"""

from __future__ import annotations

import math
import operator
import weakref
import zlib
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Any, Callable, Hashable, Iterable, Protocol, Sequence

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
        return _not_enough(self.resource, self.wanted, self.free, self.free)


def _amount(resource: str, value: float) -> str:
    value = max(value, 0)
    return format_memory(int(value)) if resource == "memory" else f"{value:g}"


def _not_enough(resource: str, wanted: float, least: float, most: float) -> str:
    """`not enough memory (64Mi free < 128Mi)`; with nodes of different amounts free, `at most` the most."""
    least_text, most_text = _amount(resource, least), _amount(resource, most)
    free = most_text if least_text == most_text else f"at most {most_text}"
    return f"not enough {resource} ({free} free < {_amount(resource, wanted)})"


class Check(Protocol):
    """One feasibility question, asked of one node by the naive scan and of a NodeIndex by `place`.

    `reason` answers for one node: None when it passes, else why not, in words that do not
    depend on the node. Each check is also a StaticCheck or a CapacityCheck, which answer the
    same question for every node of an index at once, with the same words.
    """

    name: str
    static: bool        # True: a StaticCheck (the answer depends on the node and the demand only)

    def reason(self, node: NodeInfo, demand: Demand, usage: Usage) -> str | Shortfall | None:
        """None when the node passes; else why not, in a few words that do not depend on the node."""


class StaticCheck(Check, Protocol):
    """A check of the node's own facts (id, labels, devices): exact masks, cached per constraint set."""

    def key(self, demand: Demand) -> Hashable:
        """What of the demand the check reads: demands with equal keys get equal masks."""

    def masks(self, index: "NodeIndex", demand: Demand) -> list[tuple[str, int]]:
        """(reason, the mask of the nodes that pass) per requirement, in the order `reason` tries them."""


class CapacityCheck(Check, Protocol):
    """A check of what is already placed (Usage): a mask of the nodes that may pass, then an exact test."""

    def room(self, index: "NodeIndex", demand: Demand, usage: Usage) -> "tuple[int, Room | None]":
        """A mask holding every node that passes, and the exact test it leaves to do (None: the mask is exact)."""

    def explain(self, index: "NodeIndex", positions: list[int], demand: Demand, usage: Usage,
                filtered: "Filtered") -> list[int]:
        """Count in `filtered` the nodes of `positions` that fail, as `reason` words it; the ones that pass."""


#: A per-node test, as data for the index's scan (a function call per node would cost more than
#: the test): (capacity, used, slack, wanted): the node at position p passes when
#: `capacity[p] - used.get(its id, 0) + slack >= wanted`.
Room = tuple[list[float], Counter, float, float]


class NodeNamed:
    """`requires.node`: this node and no other."""

    name, static = "node", True

    @staticmethod
    def _why(demand: Demand) -> str:
        return f"not node {demand.node}"

    def reason(self, node: NodeInfo, demand: Demand, usage: Usage) -> str | None:
        return None if demand.node is None or node.id == demand.node else self._why(demand)

    def key(self, demand: Demand) -> Hashable:
        return demand.node

    def masks(self, index: "NodeIndex", demand: Demand) -> list[tuple[str, int]]:
        if demand.node is None:
            return []
        where = index.position.get(demand.node)
        return [(self._why(demand), 0 if where is None else index.bit(where))]


class LabelsMatch:
    """`requires.labels`: each label there with this value."""

    name, static = "labels", True

    @staticmethod
    def _why(key: str, value: str) -> str:
        return f"missing label {key}={value}"

    def reason(self, node: NodeInfo, demand: Demand, usage: Usage) -> str | None:
        for key, value in sorted(demand.labels.items()):
            if node.labels.get(key) != value:
                return self._why(key, value)
        return None

    def key(self, demand: Demand) -> Hashable:
        return tuple(sorted(demand.labels.items())) if demand.labels else ()

    def masks(self, index: "NodeIndex", demand: Demand) -> list[tuple[str, int]]:
        return [(self._why(key, value), index.values.get(key, {}).get(value, 0))
                for key, value in sorted(demand.labels.items())]


def requirements(selector: str) -> tuple[Requirement, ...] | SelectorError:
    """The parsed selector, or its error (manifests are validated, so only a stored oddity gets here)."""
    try:
        return selectors.parse(selector)
    except SelectorError as err:
        return err


def _invalid(selector: str, err: SelectorError) -> str:
    return f"invalid selector {selector!r} ({err.what} at column {err.column})"


class SelectorMatches:
    """`requires.selector`: each requirement of the Kubernetes label selector, counted on its own."""

    name, static = "selector", True

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

    def key(self, demand: Demand) -> Hashable:
        return demand.selector

    def masks(self, index: "NodeIndex", demand: Demand) -> list[tuple[str, int]]:
        return index.selector_masks(demand.selector) if demand.selector else []


class DevicesPresent:
    """`requires.devices`: each device on the node."""

    name, static = "devices", True

    @staticmethod
    def _why(device: str) -> str:
        return f"missing device {device}"

    def reason(self, node: NodeInfo, demand: Demand, usage: Usage) -> str | None:
        for device in demand.devices:
            if device not in node.devices:
                return self._why(device)
        return None

    def key(self, demand: Demand) -> Hashable:
        return tuple(demand.devices)

    def masks(self, index: "NodeIndex", demand: Demand) -> list[tuple[str, int]]:
        return [(self._why(device), index.devices.get(device, 0)) for device in demand.devices]


DISTINCT = "already running an agent of this pipeline"


class DistinctNodes:
    """`placement.distinctNodes`: no node already running an agent of the pipeline. Its mask is exact."""

    name, static = "distinct", False

    def reason(self, node: NodeInfo, demand: Demand, usage: Usage) -> str | None:
        if demand.distinct and usage.pipelines.get(demand.pipeline, {}).get(node.id):
            return DISTINCT
        return None

    def room(self, index: "NodeIndex", demand: Demand, usage: Usage) -> "tuple[int, Room | None]":
        room = index.all
        if demand.distinct:
            for node_id, count in usage.pipelines.get(demand.pipeline, {}).items():
                p = index.position.get(node_id)
                if count and p is not None:
                    room &= ~index.bit(p)
        return room, None

    def explain(self, index: "NodeIndex", positions: list[int], demand: Demand, usage: Usage,
                filtered: "Filtered") -> list[int]:
        taken = usage.pipelines.get(demand.pipeline) if demand.distinct else None
        if not taken:
            return positions
        ids = index.ids
        left = [p for p in positions if not taken.get(ids[p])]
        if len(left) < len(positions):
            filtered.note(DISTINCT, len(positions) - len(left))
        return left


class ResourceFits:
    """`resources.memory` (bytes) or `resources.cpu` (cores): that much still free on the node.

    `slack` forgives the rounding of float sums (cpu: 0.1 + 0.2 > 0.3). The index's mask is of
    the nodes with at least the power of two at or below the amount wanted free, so unless the
    amount is that power of two (64Mi, 0.5), the exact test follows.
    `resource` names the field of NodeInfo (capacity), Usage (used) and Demand (wanted).
    """

    static = False

    def __init__(self, resource: str, slack: float = 0.0) -> None:
        self.name = resource
        self.slack = slack
        self.amount = operator.attrgetter(resource)      # of a NodeInfo (capacity), Usage (used), Demand (wanted)

    def reason(self, node: NodeInfo, demand: Demand, usage: Usage) -> Shortfall | None:
        amount = self.amount
        free, wanted = amount(node) - amount(usage).get(node.id, 0), amount(demand)
        return None if wanted <= free + self.slack else Shortfall(self.name, wanted, free)

    def room(self, index: "NodeIndex", demand: Demand, usage: Usage) -> "tuple[int, Room | None]":
        wanted, used = self.amount(demand), self.amount(usage)
        if wanted <= 0:
            return index.all, (index.capacity[self.name], used, self.slack, wanted)    # only the exact test
        fraction, exponent = math.frexp(wanted)          # wanted = fraction * 2**exponent, 0.5 <= fraction < 1
        mask = index.room(self, exponent - 1, used)
        if fraction == 0.5:
            return mask, None       # a power of two: the mask's own threshold, so the mask is exact
        return mask, (index.capacity[self.name], used, self.slack, wanted)

    def explain(self, index: "NodeIndex", positions: list[int], demand: Demand, usage: Usage,
                filtered: "Filtered") -> list[int]:
        capacity, used, ids, slack = index.capacity[self.name], self.amount(usage), index.ids, self.slack
        wanted = self.amount(demand)
        frees = [capacity[p] - used.get(ids[p], 0) for p in positions]
        # `reason`'s test on every node at once (without the addition when there is no slack: the
        # pending explanation scans every node that passed the static checks).
        short = [free for free in frees if wanted > free + slack] if slack else [free for free in frees if wanted > free]
        if not short:
            return positions
        filtered.note_shortfalls(self.name, wanted, short)
        if len(short) == len(positions):
            return []
        return [p for p, free in zip(positions, frees) if wanted <= free + slack]


class MemoryFits(ResourceFits):
    def __init__(self) -> None:
        super().__init__("memory")


class CpuFits(ResourceFits):
    def __init__(self) -> None:
        super().__init__("cpu", slack=1e-9)

#: The chain, in the order nodes are counted: the static checks first (a NodeIndex needs them first).
CHECKS: tuple[Check, ...] = (NodeNamed(), LabelsMatch(), SelectorMatches(), DevicesPresent(), DistinctNodes(),
                             MemoryFits(), CpuFits())
#: The checks of the node's own facts: what an agent's node must still meet when its requirements change.
STATIC_CHECKS: tuple[Check, ...] = tuple(check for check in CHECKS if check.static)


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

    def note_shortfalls(self, resource: str, wanted: float, frees: list[float]) -> None:
        """As `note(Shortfall(resource, wanted, free))` for each of `frees`, at once."""
        self.note(Shortfall(resource, wanted, min(frees)), len(frees))
        self.note(Shortfall(resource, wanted, max(frees)), 0)

    def texts(self) -> dict[str, int]:
        """Each reason as people read it, with its count."""
        out: dict[str, int] = {}
        for why, count in self.items():
            if isinstance(why, tuple):
                resource, wanted = why
                text = _not_enough(resource, wanted, *self.free[why])
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


def nowhere(demand: Demand, has_node: Callable[[str], bool], has_label: Callable[[str, str], bool],
            has_device: Callable[[str], bool]) -> str:
    """What the demand names that no node has: `no node n9`, `no node has label gpio=true`,
    `no node has device gpio/D9`; "" if none.

    Counting the nodes that fail such a check (`0/3 nodes: 3 not node n9`) would hide the one
    thing to know: nothing fits until a node with it joins.
    """
    parts = []
    if demand.node is not None and not has_node(demand.node):
        parts.append(f"no node {demand.node}")
    parts += [f"no node has label {key}={value}" for key, value in sorted(demand.labels.items())
              if not has_label(key, value)]
    parts += [f"no node has device {device}" for device in demand.devices if not has_device(device)]
    return ", ".join(parts)


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


def place(demand: Demand, nodes: "Sequence[NodeInfo] | NodeIndex", usage: Usage) -> Placement:
    """The best node for `demand`, or why there is none (see the module's docstring).

    `nodes` is a NodeIndex, or a list of NodeInfo to index for this one placement: whoever
    places many agents on the same nodes (a reconciliation pass) builds the index once.
    """
    index = nodes if isinstance(nodes, NodeIndex) else NodeIndex(nodes)
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
        absent = nowhere(demand, {n.id for n in nodes}.__contains__,
                         lambda key, value: any(n.labels.get(key) == value for n in nodes),
                         lambda device: any(device in n.devices for n in nodes))
        return Placement(None, absent if absent and nodes else explain(len(nodes), filtered))
    spread = spread_counts(demand, {n.id: n.labels for n in nodes}, usage) if demand.spread_by else None
    best = max(feasible, key=lambda n: (score(n, demand, usage, spread), _stable(n.id, demand.key)))
    return Placement(best.id)


def _stable(node_id: str, key: str) -> int:
    """A tie-break that differs per agent (so ties spread) but never changes between runs."""
    return zlib.crc32(f"{node_id}/{key}".encode())


# ------------------------------------------------------------------ fast placement

_NO_AGENTS: frozenset[str] = frozenset()


@dataclass
class _Constraints:
    """What one set of static constraints (all but capacity and the pipeline's own agents) makes of the nodes."""

    checks: list[tuple[str, int]]     # (reason, mask of the nodes that pass), in counting order
    fits: int                         # mask of the nodes that pass them all
    # The fitting nodes by prefers score, best first; each group as (spreadBy value, mask) buckets.
    groups: list[list[tuple[str | None, int]]]


class NodeIndex:
    """Placement's view of a list of nodes: per-node arrays, and label values and devices as bitmasks.

    Built for one set of nodes and kept by whoever places on them (a reconciliation pass), with
    what it learns: the masks of each constraint set, and the room masks of one Usage at a time.
    Node i is bit n-1-i of a mask, so that `format(mask, "0{n}b")[i]` is "1" when node i is in
    it, and `str.find` walks a mask's nodes in C. Treat indexed NodeInfo objects as read-only.
    """

    CONSTRAINTS = 8192    # constraint sets remembered
    MEMBERS = 4096        # masks remembered as strings

    def __init__(self, nodes: Iterable[NodeInfo], checks: tuple[Check, ...] = CHECKS) -> None:
        """Index `nodes` for the chain `checks`: each a StaticCheck or CapacityCheck, the static ones first."""
        self.nodes = list(nodes)
        self.static: list[StaticCheck] = [c for c in checks if c.static]     # type: ignore[misc]
        self._keys = [check.key for check in self.static]
        self.dynamic: list[CapacityCheck] = [c for c in checks if not c.static]    # type: ignore[misc]
        if list(checks) != self.static + self.dynamic:
            raise ValueError("a NodeIndex counts the static checks before the capacity checks: "
                             "put them first in the chain")
        n = len(self.nodes)
        self.ids = [x.id for x in self.nodes]
        self.position = {node_id: i for i, node_id in enumerate(self.ids)}
        self.memory = [x.memory for x in self.nodes]
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
        self._constraints: dict[tuple, _Constraints] = {}
        self._members: dict[int, str] = {}
        #: Each node's capacity, by position, per resource (NodeInfo's fields).
        self.capacity: dict[str, list[float]] = {"memory": self.memory, "cpu": [x.cpu for x in self.nodes]}
        # Nodes with at least 2**c of a resource free, per class c, for the Usage last seen, of
        # which the first `_applied` changes are reflected. Usage only grows, so bits only clear.
        self._usage: weakref.ref | None = None
        self._applied = 0
        self._roomy: dict[str, dict[int, int]] = {}                   # resource -> class -> mask
        # Per resource with masks: (capacity, used, slack, classes as (2**c, c) highest first, its masks).
        self._levels: dict[str, tuple[list[float], Counter, float, list[tuple[float, int]], dict[int, int]]] = {}

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

    def selector_masks(self, selector: str) -> list[tuple[str, int]]:
        """(why a node fails it, the mask of the nodes that meet it) per requirement of `selector`."""
        parsed = requirements(selector)
        if isinstance(parsed, SelectorError):
            return [(_invalid(selector, parsed), 0)]
        return [(r.failure(), self.mask(r)) for r in parsed]

    def constraints(self, demand: Demand) -> _Constraints:
        """What the demand's static checks, prefers and spreadBy make of the nodes (cached)."""
        signature = (tuple([key(demand) for key in self._keys]), tuple(demand.prefers), demand.spread_by)
        found = self._constraints.get(signature)
        if found is None:
            if len(self._constraints) >= self.CONSTRAINTS:
                self._constraints.clear()
            found = self._constraints[signature] = self._make_constraints(demand)
        return found

    def _make_constraints(self, demand: Demand) -> _Constraints:
        checks = [found for check in self.static for found in check.masks(self, demand)]
        fits = self.all
        for _, mask in checks:
            fits &= mask
        by_score = {0: fits} if fits else {}
        for weight, selector in demand.prefers:
            term = self.all
            for _, mask in self.selector_masks(selector):
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
        return _Constraints(checks, fits, groups)

    # ------------------------------------------------------- capacity, as masks

    def sync(self, usage: Usage) -> None:
        """Bring the room masks up to date with `usage` (a new Usage starts them afresh); before `room`."""
        if self._usage is None or self._usage() is not usage:
            self._usage, self._applied = weakref.ref(usage), len(usage.changed)
            self._roomy, self._levels = {}, {}
            return
        changed = usage.changed
        if self._applied == len(changed):
            return
        fresh = changed[self._applied:]
        self._applied = len(changed)
        if not self._levels:
            return
        position, n, resources = self.position, len(self.ids), self._levels.values()
        for node_id in set(fresh):
            p = position.get(node_id)
            if p is None:
                continue
            bit = 1 << (n - 1 - p)
            for capacity, used, slack, levels, masks in resources:
                free = capacity[p] - used.get(node_id, 0) + slack
                for threshold, c in levels:      # highest first
                    if free >= threshold:
                        break
                    mask = masks[c]
                    if mask & bit:
                        masks[c] = mask & ~bit

    def room(self, resource: "ResourceFits", c: int, used: Counter) -> int:
        """The nodes with at least 2**c of `resource` free (`capacity - used + slack`); `used` is the
        resource's use by node in the Usage last given to `sync`. Call `sync(usage)` first."""
        masks = self._roomy.get(resource.name)
        if masks is None:
            masks = self._roomy[resource.name] = {}
        mask = masks.get(c)
        if mask is None:
            capacity, slack = self.capacity[resource.name], resource.slack
            threshold, n, mask = math.ldexp(1.0, c), len(self.ids), 0
            for p, node_id in enumerate(self.ids):
                if capacity[p] - used.get(node_id, 0) + slack >= threshold:
                    mask |= 1 << (n - 1 - p)
            masks[c] = mask
            levels = sorted(((math.ldexp(1.0, k), k) for k in masks), reverse=True)
            self._levels[resource.name] = (capacity, used, slack, levels, masks)
        return mask

    # ----------------------------------------------------------------- placing

    def place(self, demand: Demand, usage: Usage) -> Placement:
        """The best node for `demand` given `usage` (see the module's docstring)."""
        constraints = self.constraints(demand)
        if constraints.fits:
            self.sync(usage)
            room = constraints.fits
            tests = []
            for check in self.dynamic:
                mask, test = check.room(self, demand, usage)
                room &= mask
                if not room:
                    break
                if test is not None:
                    tests.append(test)
            if room:
                seed = zlib.crc32(demand.key.encode())
                neighbors = demand.neighbors
                sample = SAMPLE if len(neighbors) < SAMPLE else len(neighbors) + 1
                spread = spread_counts(demand, self.labels_of, usage) if demand.spread_by else None
                for group in constraints.groups:
                    for tier in self._tiers(group, spread):
                        found = self._sample(tier, room, tests, seed, sample)
                        if found:
                            return Placement(self.ids[self._best(found, demand, usage)])
        absent = nowhere(demand, self.position.__contains__,
                         lambda key, value: value in self.values.get(key, {}),
                         lambda device: bool(self.devices.get(device)))
        if absent and self.nodes:
            return Placement(None, absent)
        return Placement(None, explain(len(self.nodes), self._filtered(constraints, demand, usage)))

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

    def _sample(self, tier: list[int], room: int, tests: list[Room], seed: int, sample: int) -> list[int]:
        """Up to `sample` nodes of `tier` in `room` that pass `tests`, scanning from a node that depends on the agent."""
        ids = self.ids
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
                    for capacity, used, slack, wanted in tests:
                        if capacity[p] - used.get(node_id, 0) + slack < wanted:
                            break
                    else:
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

    def _filtered(self, constraints: _Constraints, demand: Demand, usage: Usage) -> Filtered:
        """Why each node does not fit, counted as the naive scan counts it: static masks, then each capacity check."""
        filtered = Filtered()
        remaining = self.all
        for why, mask in constraints.checks:
            failed = remaining & ~mask
            if failed:
                filtered.note(why, failed.bit_count())
                remaining &= mask
        if not remaining:
            return filtered
        member = self.member(remaining)
        positions = []
        p = member.find("1")
        while p >= 0:
            positions.append(p)
            p = member.find("1", p + 1)
        for check in self.dynamic:
            positions = check.explain(self, positions, demand, usage, filtered)
            if not positions:
                break
        return filtered
