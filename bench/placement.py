"""Benchmark of the scheduler: placements per second, at the function level, beside a naive full scan.

    .venv/bin/python bench/placement.py [--agents 10000] [--nodes 1000] [--seed 1] [--naive 300]

It makes `nodes` simulated nodes (zones, rooms, arch, gpio, devices, 1-8 cpus, 512Mi-8Gi) and
`agents` agents in pipelines of 3-12 linked stages with mixed constraints: label equality,
selectors (in, notin, !=, exists, !exists), devices, memory and cpu, some pinned to a node
(a few to nodes that do not exist), prefers terms, pipelines with distinctNodes or spreadBy.
Then it times `place()` for every agent in turn, adding each placement to the Usage as the
reconciler does, on a NodeIndex built once for the run as a reconciliation pass builds one
(its building is timed too), best of --repeat runs from scratch. As a baseline measured in the same run,
it times `place_naive()` (every node through every check, every fitting node scored) on the
first `naive` agents, so the figure reads as a ratio (the naive scan costs the same per
agent however full the cluster is). Target: >= 10,000 placements/s for 10,000 agents on 1,000 nodes.
It prints, never asserts; `run()` returns the figures for other benchmarks (bench/control.py).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from oneos.controller.scheduler import Demand, NodeIndex, NodeInfo, Usage, place, place_naive  # noqa: E402

MI, GI = 2**20, 2**30
ZONES = [f"zone-{i}" for i in range(5)]
ROOMS = [f"room-{i}" for i in range(20)]


def make_nodes(count: int, rng: random.Random) -> list[NodeInfo]:
    nodes = []
    for i in range(count):
        pi = rng.random() < 0.6
        labels = {"zone": rng.choice(ZONES), "room": rng.choice(ROOMS), "arch": "arm64" if pi else "amd64",
                  "kubernetes.io/hostname": f"node-{i}"}
        devices = set()
        if pi and rng.random() < 0.4:
            labels["gpio"] = "true"
            devices |= {f"gpio/D{n}" for n in range(4, 8)}
        if rng.random() < 0.1:
            devices.add("i2c/1")
        if rng.random() < 0.03:
            devices.add("camera/0")
        if rng.random() < 0.02:
            labels["broken"] = "true"
        if rng.random() < 0.3:
            labels["tier"] = "edge"
        cpu = rng.choice([1, 2, 4]) if pi else rng.choice([4, 8])
        memory = rng.choice([512 * MI, 1 * GI, 2 * GI]) if pi else rng.choice([4 * GI, 8 * GI])
        nodes.append(NodeInfo(f"node-{i}", labels, devices, float(cpu), memory))
    return nodes


def _constraints(rng: random.Random, node_count: int) -> dict:
    """Keyword arguments of one Demand: a mix of what manifests ask."""
    roll = rng.random()
    kw: dict = {}
    if roll < 0.25:
        pass                                                    # no constraint
    elif roll < 0.40:
        kw["labels"] = rng.choice([{"arch": "arm64"}, {"zone": rng.choice(ZONES)}, {"gpio": "true"},
                                   {"arch": "amd64", "tier": "edge"}])
    elif roll < 0.60:
        kw["selector"] = rng.choice([
            f"zone in ({rng.choice(ZONES)},{rng.choice(ZONES)}),!broken", "arch!=amd64", "gpio",
            f"room notin ({rng.choice(ROOMS)},{rng.choice(ROOMS)},{rng.choice(ROOMS)})", "tier=edge,!broken",
            f"zone={rng.choice(ZONES)},room in ({rng.choice(ROOMS)},{rng.choice(ROOMS)})"])
    elif roll < 0.72:
        kw["devices"] = [rng.choice(["gpio/D4", "gpio/D7", "i2c/1", "camera/0"])]
    elif roll < 0.77:
        known = rng.random() < 0.9
        kw["node"] = f"node-{rng.randrange(node_count)}" if known else f"gone-{rng.randrange(100)}"
    elif roll < 0.79:
        kw["labels"] = {"gpu": "true"}                          # no node has it: Pending
    if rng.random() < 0.2:
        term = rng.choice(["tier=edge", "arch=arm64", f"zone={rng.choice(ZONES)}"])
        kw["prefers"] = [(rng.choice([10, 50, 100]), term)]
        if rng.random() < 0.3:
            kw["prefers"].append((rng.randint(1, 100), "!broken"))
    kw["memory"] = rng.choice([32, 64, 128, 256, 512]) * MI
    kw["cpu"] = rng.choice([0.05, 0.1, 0.25, 0.5])
    return kw


def make_demands(count: int, node_count: int, rng: random.Random) -> list[Demand]:
    demands: list[Demand] = []
    p = 0
    while len(demands) < count:
        size = min(rng.randint(3, 12), count - len(demands))
        name = f"p{p}"
        p += 1
        roll = rng.random()
        placement = {"distinct": roll < 0.15, "spread_by": "zone" if 0.15 <= roll < 0.3 else None}
        keys = [f"{name}.s{i}" for i in range(size)]
        for i, key in enumerate(keys):
            neighbors = {keys[j] for j in (i - 1, i + 1) if 0 <= j < size}
            demands.append(Demand(key, neighbors=neighbors, **placement, **_constraints(rng, node_count)))
    return demands


def _place_all(demands: list[Demand], nodes: list[NodeInfo], naive: bool = False) -> tuple[float, float, int, Usage]:
    """(wall seconds, cpu seconds, pending, usage) of placing every demand in turn, as one reconciliation
    pass does: one NodeIndex built for the pass (timed too), or with `naive` the full scan."""
    usage = Usage()
    pending = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    where = nodes if naive else NodeIndex(nodes)
    placer = place_naive if naive else place
    for demand in demands:
        result = placer(demand, where, usage)
        if result.node is None:
            pending += 1
        else:
            usage.add(result.node, demand)
    return time.perf_counter() - started, time.process_time() - cpu_started, pending, usage


def run(agents: int = 10_000, nodes: int = 1_000, seed: int = 1, naive: int = 300, repeat: int = 3) -> dict:
    """Place `agents` on `nodes` with `place` (and the first `naive` with `place_naive`); the figures.

    The `place` run is repeated `repeat` times from scratch and the fastest counts (as timeit
    does: other processes on the machine only ever slow a run down); every run places alike.
    """
    rng = random.Random(seed)
    node_list = make_nodes(nodes, rng)
    demands = make_demands(agents, nodes, rng)
    runs = [_place_all(demands, node_list) for _ in range(max(repeat, 1))]
    elapsed, cpu, pending, usage = min(runs, key=lambda r: r[0])
    naive_count = min(naive, agents)
    naive_elapsed, _, naive_pending, _ = _place_all(demands[:naive_count], node_list, naive=True) \
        if naive_count else (0.0, 0.0, 0, None)
    per_node = [len(usage.agents.get(n.id, ())) for n in node_list]
    memory_used = sum(usage.memory.values()) / max(sum(n.memory for n in node_list), 1)
    return {
        "agents": agents,
        "nodes": nodes,
        "seed": seed,
        "placements_per_s": agents / elapsed if elapsed else float("inf"),
        "seconds": elapsed,
        "cpu_placements_per_s": agents / cpu if cpu else float("inf"),
        "runs_placements_per_s": [agents / r[0] if r[0] else float("inf") for r in runs],
        "pending": pending,
        "naive_agents": naive_count,
        "naive_placements_per_s": naive_count / naive_elapsed if naive_elapsed else None,
        "naive_pending": naive_pending,
        "agents_per_node_max": max(per_node, default=0),
        "agents_per_node_mean": sum(per_node) / max(len(per_node), 1),
        "memory_used": memory_used,
    }


def _table(result: dict) -> str:
    fast, slow = result["placements_per_s"], result["naive_placements_per_s"]
    rows = [
        ("place() (index, bitmasks, sample)", f"{result['agents']:,}", f"{fast:,.0f}", f"{result['pending']:,}",
         "1.00"),
    ]
    if slow:
        rows.append(("place_naive() (every node x every check)", f"{result['naive_agents']:,}", f"{slow:,.0f}",
                     f"{result['naive_pending']:,}", f"{slow / fast:.3f}"))
    head = ("placer", "agents", "placements/s", "pending", "vs place()")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: tuple) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [f"{result['agents']:,} agents on {result['nodes']:,} simulated nodes, mixed constraints "
           f"(seed {result['seed']})", line(head), line(tuple("-" * w for w in widths))] + [line(r) for r in rows]
    runs = ", ".join(f"{r:,.0f}" for r in result["runs_placements_per_s"])
    out.append(f"place(): best of {len(result['runs_placements_per_s'])} runs ({runs}/s wall clock; "
               f"{result['cpu_placements_per_s']:,.0f}/s of CPU time in the best)")
    if slow:
        target = ""
        if result["agents"] >= 10_000 and result["nodes"] >= 1_000:
            target = f"; target >= 10,000 placements/s: {'met' if fast >= 10_000 else 'NOT met'}"
        out.append(f"place() is {fast / slow:,.0f}x the naive full scan{target} ({result['seconds']:.2f} s for all)")
    out.append(f"agents per node: mean {result['agents_per_node_mean']:.1f}, max {result['agents_per_node_max']}; "
               f"memory used {result['memory_used']:.0%} of the cluster's")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--naive", type=int, default=300, help="agents placed by the naive scan (default 300)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of place(), the fastest counts (default 3)")
    args = parser.parse_args(argv)
    print(_table(run(args.agents, args.nodes, args.seed, args.naive, args.repeat)))


if __name__ == "__main__":
    main()
