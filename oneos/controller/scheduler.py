"""Placement: which node runs an agent, as a chain of feasibility checks, then scoring.

Like Nomad's scheduler: each check asks one question of one node and answers None (fits)
or a reason; every node a check filters is counted under that check, so an agent that
fits nowhere says why, e.g. `0/5 nodes: 3 missing label gpio=true, 2 not enough memory
(64Mi free < 128Mi)`. Among the nodes that fit, the one with the best score wins:
fewest agents (spread), and not next to an agent it is linked with.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

from oneos.quantities import format_memory, parse_cpu, parse_memory


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

    key: str
    labels: dict[str, str] = field(default_factory=dict)
    node: str | None = None
    devices: list[str] = field(default_factory=list)
    memory: int = 0
    cpu: float = 0.0
    neighbors: set[str] = field(default_factory=set)   # agents linked to this one

    @classmethod
    def from_spec(cls, key: str, spec: dict[str, Any], neighbors: Iterable[str] = ()) -> "Demand":
        requires = spec.get("requires", {})
        resources = spec.get("resources", {})
        return cls(key, dict(requires.get("labels", {})), requires.get("node"), list(requires.get("devices", [])),
                   parse_memory(resources["memory"]) if "memory" in resources else 0,
                   parse_cpu(resources["cpu"]) if "cpu" in resources else 0.0, set(neighbors))


@dataclass
class Usage:
    """What is already placed on each node."""

    agents: dict[str, set[str]] = field(default_factory=dict)     # node -> agent keys
    memory: Counter = field(default_factory=Counter)
    cpu: Counter = field(default_factory=Counter)

    def add(self, node_id: str, demand: Demand) -> None:
        self.agents.setdefault(node_id, set()).add(demand.key)
        self.memory[node_id] += demand.memory
        self.cpu[node_id] += demand.cpu


class Check(Protocol):
    name: str

    def reason(self, node: NodeInfo, demand: Demand, usage: Usage) -> str | None:
        """None when the node passes; else why not, in a few words."""


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


class DevicesPresent:
    name = "devices"

    def reason(self, node: NodeInfo, demand: Demand, usage: Usage) -> str | None:
        for device in demand.devices:
            if device not in node.devices:
                return f"missing device {device}"
        return None


class MemoryFits:
    name = "memory"

    def reason(self, node: NodeInfo, demand: Demand, usage: Usage) -> str | None:
        free = node.memory - usage.memory[node.id]
        if demand.memory > free:
            return f"not enough memory ({format_memory(max(free, 0))} free < {format_memory(demand.memory)})"
        return None


class CpuFits:
    name = "cpu"

    def reason(self, node: NodeInfo, demand: Demand, usage: Usage) -> str | None:
        free = node.cpu - usage.cpu[node.id]
        if demand.cpu > free + 1e-9:
            return f"not enough cpu ({max(free, 0):g} free < {demand.cpu:g})"
        return None


CHECKS: tuple[Check, ...] = (NodeNamed(), LabelsMatch(), DevicesPresent(), MemoryFits(), CpuFits())


@dataclass
class Placement:
    node: str | None          # None: no node fits
    reason: str = ""          # for people, when node is None


def explain(total: int, filtered: Counter) -> str:
    """`0/5 nodes: 3 missing label gpio=true, 2 not enough memory (...)`, most common first."""
    if total == 0:
        return "0/0 nodes: no node has joined the cluster"
    parts = [f"{count} {why}" for why, count in sorted(filtered.items(), key=lambda kv: (-kv[1], kv[0]))]
    return f"0/{total} nodes: " + ", ".join(parts)


def score(node: NodeInfo, demand: Demand, usage: Usage) -> tuple:
    placed = usage.agents.get(node.id, set())
    # Higher is better: away from linked agents, then fewest agents, then most free memory.
    return (-len(placed & demand.neighbors), -len(placed), node.memory - usage.memory[node.id])


def place(demand: Demand, nodes: list[NodeInfo], usage: Usage, checks: tuple[Check, ...] = CHECKS) -> Placement:
    """The best node for `demand`, or why there is none."""
    feasible = []
    filtered: Counter = Counter()
    for node in nodes:
        for check in checks:
            why = check.reason(node, demand, usage)
            if why is not None:
                filtered[why] += 1
                break
        else:
            feasible.append(node)
    if not feasible:
        return Placement(None, explain(len(nodes), filtered))
    best = max(feasible, key=lambda n: (score(n, demand, usage), _stable(n.id, demand.key)))
    return Placement(best.id)


def _stable(node_id: str, key: str) -> int:
    """A tie-break that differs per agent (so ties spread) but never changes between runs."""
    return zlib.crc32(f"{node_id}/{key}".encode())
