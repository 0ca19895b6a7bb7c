"""Placement: feasibility checks count what they filter; scoring spreads and keeps linked stages apart."""

from __future__ import annotations

from oneos.controller.scheduler import Demand, NodeInfo, Usage, place

GI = 2**30


def node(node_id, labels=None, devices=(), cpu=4, memory=4 * GI):
    return NodeInfo(node_id, dict(labels or {}), set(devices), cpu, memory)


def test_an_agent_with_no_constraints_goes_to_the_least_loaded_node():
    usage = Usage()
    usage.add("a", Demand("p.x"))
    usage.add("a", Demand("p.y"))
    usage.add("b", Demand("p.z"))
    assert place(Demand("p.new"), [node("a"), node("b"), node("c")], usage).node == "c"


def test_linked_agents_are_kept_apart_when_they_can_be():
    nodes = [node("a"), node("b"), node("c")]
    usage = Usage()
    chain = ["p.s1", "p.s2", "p.s3", "p.s4", "p.s5"]
    placed = {}
    for i, key in enumerate(chain):
        neighbors = {chain[j] for j in (i - 1, i + 1) if 0 <= j < len(chain)}
        demand = Demand(key, neighbors=neighbors)
        placed[key] = place(demand, nodes, usage).node
        usage.add(placed[key], demand)
    for left, right in zip(chain, chain[1:]):
        assert placed[left] != placed[right], placed
    assert set(placed[k] for k in chain[:3]) == {"a", "b", "c"}


def test_labels_devices_node_and_capacity_filter_and_the_reason_counts_them():
    nodes = [node("pi-1", {"gpio": "true"}, memory=64 * 2**20),
             node("pi-2", {"gpio": "true"}, devices={"gpio/D4"}, memory=64 * 2**20),
             node("srv-1"), node("srv-2"), node("srv-3")]
    demand = Demand("p.sensor", labels={"gpio": "true"}, memory=128 * 2**20)
    result = place(demand, nodes, Usage())
    assert result.node is None
    assert result.reason == "0/5 nodes: 3 missing label gpio=true, 2 not enough memory (64Mi free < 128Mi)"

    assert place(Demand("p.d", devices=["gpio/D4"]), nodes, Usage()).node == "pi-2"
    assert place(Demand("p.n", node="srv-2"), nodes, Usage()).node == "srv-2"
    missing = place(Demand("p.n", node="gone"), nodes, Usage())
    assert missing.node is None and missing.reason == "0/5 nodes: 5 not node gone"


def test_capacity_already_used_counts():
    nodes = [node("a", cpu=1)]
    usage = Usage()
    usage.add("a", Demand("p.x", cpu=0.75))
    result = place(Demand("p.y", cpu=0.5), nodes, usage)
    assert result.node is None and result.reason == "0/1 nodes: 1 not enough cpu (0.25 free < 0.5)"
    assert place(Demand("p.z", cpu=0.25), nodes, usage).node == "a"


def test_no_nodes_at_all_is_explained():
    assert place(Demand("p.x"), [], Usage()).reason == "0/0 nodes: no node has joined the cluster"


def test_placement_is_deterministic():
    nodes = [node(f"n{i}") for i in range(5)]
    first = [place(Demand(f"p.a{i}"), nodes, Usage()).node for i in range(20)]
    again = [place(Demand(f"p.a{i}"), nodes, Usage()).node for i in range(20)]
    assert first == again
    assert len(set(first)) > 1      # ties are broken per agent, not always towards the same node
