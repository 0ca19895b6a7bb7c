"""Placement: feasibility checks count what they filter; scoring spreads and keeps linked stages apart."""

from __future__ import annotations

import random

import pytest

from oneos.controller import scheduler
from oneos.controller.scheduler import (CpuFits, Demand, Filtered, MemoryFits, NodeIndex, NodeInfo, NodeNamed, Usage,
                                       place, place_naive)

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
    full = place(Demand("p.n", node="pi-1", memory=128 * 2**20), nodes, Usage())
    assert full.reason == "0/5 nodes: 4 not node pi-1, 1 not enough memory (64Mi free < 128Mi)"


def test_a_node_label_or_device_that_no_node_has_is_named_not_counted():
    nodes = [node("pi-1", {"gpio": "true"}, devices={"gpio/D4"}), node("srv-1", {"gpio": "false"}), node("srv-2")]
    for demand, reason in [(Demand("p.n", node="n9"), "no node n9"),
                           (Demand("p.g", labels={"gpio": "yes"}), "no node has label gpio=yes"),
                           (Demand("p.b", node="n9", labels={"room": "shed", "gpio": "true"}),
                            "no node n9, no node has label room=shed"),
                           (Demand("p.d", devices=("gpio/D4", "gpio/D9")), "no node has device gpio/D9")]:
        assert place(demand, nodes, Usage()).reason == reason
        assert place_naive(demand, nodes, Usage()).reason == reason
    # Nodes that have it but are unsuitable are counted, per reason.
    assert place(Demand("p.m", node="pi-1", labels={"gpio": "false"}), nodes, Usage()).reason == \
        "0/3 nodes: 2 not node pi-1, 1 missing label gpio=false"
    assert place(Demand("p.e", labels={"gpio": "false"}, devices=("gpio/D4",)), nodes, Usage()).reason == \
        "0/3 nodes: 2 missing label gpio=false, 1 missing device gpio/D4"


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


# ------------------------------------------------------------ placement language

ROOMS = [node("gh-1", {"room": "greenhouse"}), node("gh-2", {"room": "greenhouse", "broken": "yes"}),
         node("shed", {"room": "shed"}), node("cellar", {"room": "cellar"}), node("bare")]


def fits(selector):
    """The nodes of ROOMS where an agent with `selector` may go, found by pinning it to each in turn."""
    return [n.id for n in ROOMS if place(Demand("p.x", node=n.id, selector=selector), ROOMS, Usage()).node]


def test_each_selector_operator_filters_nodes():
    assert fits("room=greenhouse") == ["gh-1", "gh-2"]
    assert fits("room!=greenhouse") == ["shed", "cellar", "bare"]
    assert fits("room in (greenhouse,shed)") == ["gh-1", "gh-2", "shed"]
    assert fits("room notin (greenhouse,shed)") == ["cellar", "bare"]
    assert fits("room") == ["gh-1", "gh-2", "shed", "cellar"]
    assert fits("!room") == ["bare"]
    assert fits("room in (greenhouse,shed),!broken") == ["gh-1", "shed"]


def test_selector_reasons_are_grouped_by_requirement_not_by_each_nodes_value():
    result = place(Demand("p.x", selector="room in (greenhouse, shed),!broken"), ROOMS, Usage())
    assert result.node in ("gh-1", "shed")
    pending = place(Demand("p.x", selector="room notin (greenhouse,shed),room!=cellar,room"), ROOMS, Usage())
    assert pending.reason == ("0/5 nodes: 3 has label room in (greenhouse,shed), 1 has label room=cellar, "
                              "1 missing label room")
    pending = place(Demand("p.x", selector="room in (greenhouse,shed),!broken", memory=8 * GI), ROOMS, Usage())
    assert pending.reason == ("0/5 nodes: 2 missing label room in (greenhouse,shed), 2 not enough memory "
                              "(4Gi free < 8Gi), 1 has label broken")


def test_labels_and_an_equality_selector_count_under_the_same_reason():
    nodes = [node("pi", {"gpio": "true"}), node("srv-1"), node("srv-2")]
    result = place(Demand("p.x", labels={"gpio": "true"}, selector="!gpio"), nodes, Usage())
    assert result.reason == "0/3 nodes: 2 missing label gpio=true, 1 has label gpio"
    result = place(Demand("p.x", selector="gpio=true", memory=8 * GI), nodes, Usage())
    assert result.reason == "0/3 nodes: 2 missing label gpio=true, 1 not enough memory (4Gi free < 8Gi)"


def test_an_invalid_stored_selector_leaves_the_agent_pending_with_the_error():
    result = place(Demand("p.x", selector="room in (a"), ROOMS, Usage())
    assert result.node is None
    assert result.reason == "0/5 nodes: 5 invalid selector 'room in (a' (no ')' closes the '(' at column 9)"


def test_memory_shortfalls_of_different_sizes_count_together():
    nodes = [node("a", memory=64 * 2**20), node("b", memory=100 * 2**20), node("c", memory=64 * 2**20)]
    result = place(Demand("p.x", memory=128 * 2**20), nodes, Usage())
    assert result.reason == "0/3 nodes: 3 not enough memory (at most 100Mi free < 128Mi)"
    result = place(Demand("p.x", cpu=8), nodes, Usage())
    assert result.reason == "0/3 nodes: 3 not enough cpu (4 free < 8)"


def test_the_most_common_reason_comes_first_then_alphabetically():
    nodes = [node("a"), node("b", {"gpio": "true"}), node("c", {"gpio": "true"}, devices={"gpio/D4"}, memory=2**20),
             node("d")]
    result = place(Demand("p.x", labels={"gpio": "true"}, devices=["gpio/D4"], memory=GI), nodes, Usage())
    assert result.reason == ("0/4 nodes: 2 missing label gpio=true, 1 missing device gpio/D4, "
                             "1 not enough memory (1Mi free < 1Gi)")


# ------------------------------------------------------------------- prefers

def test_prefers_weights_change_the_choice():
    nodes = [node("edge", {"tier": "edge"}), node("arm", {"arch": "arm64"}), node("plain")]
    edge_more = Demand("p.x", prefers=[(50, "tier=edge"), (10, "arch=arm64")])
    arm_more = Demand("p.x", prefers=[(10, "tier=edge"), (50, "arch=arm64")])
    assert place(edge_more, nodes, Usage()).node == "edge"
    assert place(arm_more, nodes, Usage()).node == "arm"


def test_weights_of_matching_terms_add_up():
    nodes = [node("both", {"tier": "edge", "arch": "arm64"}), node("edge", {"tier": "edge"}),
             node("big", {"big": "yes"})]
    demand = Demand("p.x", prefers=[(30, "tier=edge"), (30, "arch=arm64"), (50, "big")])
    assert place(demand, nodes, Usage()).node == "both"      # 60 > 50 > 30


def test_prefers_outweigh_spreading_but_never_constraints():
    nodes = [node("edge", {"tier": "edge"}, memory=GI), node("core-1"), node("core-2")]
    usage = Usage()
    for i in range(5):
        usage.add("edge", Demand(f"q.busy{i}"))
    assert place(Demand("p.x", prefers=[(1, "tier=edge")]), nodes, usage).node == "edge"
    assert place(Demand("p.x", prefers=[(100, "tier=edge")], memory=2 * GI), nodes, usage).node in ("core-1", "core-2")
    assert place(Demand("p.x", prefers=[(100, "tier=edge")], selector="!tier"), nodes, usage).node != "edge"


# ----------------------------------------------------------- distinct nodes

def test_distinct_nodes_puts_no_two_agents_of_a_pipeline_on_one_node():
    nodes = [node("a"), node("b"), node("c")]
    usage = Usage()
    usage.add("a", Demand("other.x"))          # other pipelines do not count
    placed = []
    for i in range(3):
        demand = Demand(f"p.s{i}", distinct=True)
        placed.append(place(demand, nodes, usage).node)
        usage.add(placed[-1], demand)
    assert sorted(placed) == ["a", "b", "c"]
    fourth = place(Demand("p.s3", distinct=True, memory=GI), nodes, usage)
    assert fourth.node is None
    assert fourth.reason == "0/3 nodes: 3 already running an agent of this pipeline"
    assert place(Demand("p.s3", distinct=False), nodes, usage).node is not None


def test_distinct_nodes_is_counted_with_the_other_checks():
    nodes = [node("pi-1", {"gpio": "true"}), node("pi-2", {"gpio": "true"}, memory=2**20), node("srv")]
    usage = Usage()
    usage.add("pi-1", Demand("p.sensor"))
    result = place(Demand("p.actuator", labels={"gpio": "true"}, memory=GI, distinct=True), nodes, usage)
    assert result.reason == ("0/3 nodes: 1 already running an agent of this pipeline, 1 missing label gpio=true, "
                             "1 not enough memory (1Mi free < 1Gi)")


def test_from_spec_reads_selector_prefers_and_the_pipelines_placement():
    spec = {"name": "s", "run": ["cat"], "requires": {"selector": "room in (a,b)", "labels": {"gpio": "true"}},
            "prefers": [{"weight": 5, "selector": "tier=edge"}], "resources": {"memory": "64Mi", "cpu": "250m"}}
    demand = Demand.from_spec("garden.s", spec, {"garden.t"}, {"distinctNodes": True, "spreadBy": "zone"})
    assert (demand.selector, demand.prefers, demand.distinct, demand.spread_by, demand.pipeline) == \
        ("room in (a,b)", [(5, "tier=edge")], True, "zone", "garden")
    assert (demand.memory, demand.cpu, demand.labels, demand.neighbors) == (64 * 2**20, 0.25, {"gpio": "true"},
                                                                            {"garden.t"})
    plain = Demand.from_spec("garden.s", {"name": "s", "run": ["cat"]})
    assert (plain.selector, plain.prefers, plain.distinct, plain.spread_by) == ("", [], False, None)


# ------------------------------------------------------------------- spread

def test_spread_by_a_label_evens_out_the_pipeline_across_its_values():
    nodes = [node(f"north-{i}", {"zone": "north"}) for i in range(4)] + \
            [node("south-1", {"zone": "south"}), node("east-1", {"zone": "east"})]

    def zones(spread_by):
        usage, found = Usage(), []
        for i in range(6):
            demand = Demand(f"p.s{i}", spread_by=spread_by)
            where = place(demand, nodes, usage).node
            usage.add(where, demand)
            found.append(where.split("-")[0])
        return sorted(found)

    assert zones(None).count("north") == 4            # fewest agents per node: one on each
    assert zones("zone") == ["east", "east", "north", "north", "south", "south"]


def test_spread_counts_only_this_pipeline_and_puts_nodes_without_the_label_last():
    nodes = [node("n", {"zone": "north"}), node("s", {"zone": "south"}), node("x")]
    usage = Usage()
    for i in range(3):
        usage.add("s", Demand(f"other.a{i}"))
    usage.add("n", Demand("p.first"))
    assert place(Demand("p.second", spread_by="zone"), nodes, usage).node == "s"
    usage.add("s", Demand("p.second"))
    assert place(Demand("p.third", spread_by="zone"), nodes, usage).node in ("n", "s")


# -------------------------------------------------------- at scale, and fast

def cluster(count, seed):
    rng = random.Random(seed)
    nodes = []
    for i in range(count):
        labels = {"zone": rng.choice("abc"), "room": rng.choice(["greenhouse", "shed", "cellar"])}
        if rng.random() < 0.3:
            labels["gpio"] = "true"
        if rng.random() < 0.1:
            labels["broken"] = "yes"
        devices = {"gpio/D4"} if rng.random() < 0.2 else set()
        nodes.append(node(f"n{i}", labels, devices, cpu=rng.choice([1, 2]), memory=rng.choice([256, 512]) * 2**20))
    return nodes


def demands(count, seed, node_count):
    rng = random.Random(seed)
    found = []
    for i in range(count):
        pipeline = f"p{i // 4}"
        kw = {"memory": rng.choice([0, 64, 128, 256]) * 2**20, "cpu": rng.choice([0, 0.25, 0.5])}
        roll = rng.random()
        if roll < 0.2:
            kw["labels"] = {"gpio": "true"}
        elif roll < 0.5:
            kw["selector"] = rng.choice(["room in (greenhouse,shed),!broken", "zone!=a", "gpio", "!gpio",
                                         "room notin (cellar)", "zone=b,room=shed,gpio=true"])
        elif roll < 0.6:
            kw["devices"] = ["gpio/D4"]
        elif roll < 0.65:
            kw["node"] = f"n{rng.randrange(node_count + 2)}"
        if rng.random() < 0.3:
            kw["prefers"] = [(rng.randint(1, 100), rng.choice(["zone=a", "room=shed", "!gpio"]))]
        kw["distinct"] = pipeline.endswith(("1", "5"))
        kw["spread_by"] = "zone" if pipeline.endswith(("2", "7")) else None
        found.append(Demand(f"{pipeline}.s{i % 4}", neighbors={f"{pipeline}.s{(i % 4) + 1}"}, **kw))
    return found


@pytest.mark.parametrize("seed", range(6))
def test_place_chooses_as_the_full_scan_does_when_it_samples_every_node(seed, monkeypatch):
    monkeypatch.setattr(scheduler, "SAMPLE", 10**6)
    nodes = cluster(40, seed)
    index = NodeIndex(nodes)                 # one per pass, as the reconciler keeps it
    fast_usage, slow_usage = Usage(), Usage()
    for demand in demands(150, seed, 40):
        fast, slow = place(demand, index, fast_usage), place_naive(demand, nodes, slow_usage)
        assert fast == slow, demand
        if fast.node:
            fast_usage.add(fast.node, demand)
            slow_usage.add(slow.node, demand)


@pytest.mark.parametrize("seed", range(3))
def test_two_indexes_of_one_pass_share_its_usage(seed, monkeypatch):
    """As a pass places pipelines on every node and kernel agents on the kernel nodes, with one Usage."""
    monkeypatch.setattr(scheduler, "SAMPLE", 10**6)
    nodes = cluster(40, seed)
    kernel = nodes[::3]
    indexes = {False: NodeIndex(nodes), True: NodeIndex(kernel)}
    fast_usage, slow_usage = Usage(), Usage()
    for i, demand in enumerate(demands(200, seed, 40)):
        on_kernel = i % 4 == 0
        fast = place(demand, indexes[on_kernel], fast_usage)
        slow = place_naive(demand, kernel if on_kernel else nodes, slow_usage)
        assert fast == slow, demand
        if fast.node:
            fast_usage.add(fast.node, demand)
            slow_usage.add(slow.node, demand)


@pytest.mark.parametrize("seed", range(3))
def test_with_sampling_the_reasons_and_everything_but_load_balance_match_the_full_scan(seed):
    nodes = cluster(300, seed)
    index = NodeIndex(nodes)
    usage = Usage()
    pending = 0
    for demand in demands(600, seed, 300):
        fast, slow = place(demand, index, usage), place_naive(demand, nodes, usage)
        assert (fast.node is None, fast.reason) == (slow.node is None, slow.reason)
        if fast.node is None:
            pending += 1
            continue
        chosen = next(n for n in nodes if n.id == fast.node)
        best = next(n for n in nodes if n.id == slow.node)
        assert all(check.reason(chosen, demand, usage) is None for check in scheduler.CHECKS)
        spread = scheduler.spread_counts(demand, {n.id: n.labels for n in nodes}, usage)
        # Prefers, spread and staying away from linked agents are never traded for speed.
        assert scheduler.score(chosen, demand, usage, spread)[:3] == scheduler.score(best, demand, usage, spread)[:3]
        usage.add(fast.node, demand)
    assert 0 < pending < 600


def test_placement_at_scale_is_deterministic_and_spreads():
    nodes = cluster(500, 7)
    runs = []
    for _ in range(2):
        index = NodeIndex(list(nodes))
        usage = Usage()
        placed = []
        for demand in demands(2000, 7, 500):
            result = place(demand, index, usage)
            placed.append((result.node, result.reason))
            if result.node:
                usage.add(result.node, demand)
        runs.append(placed)
    assert runs[0] == runs[1]
    used = {node_id for node_id, _ in runs[0] if node_id}
    assert len(used) > 400


def test_a_changed_node_list_is_seen():
    nodes = [node("a", {"gpio": "true"}), node("b")]
    assert place(Demand("p.x", labels={"gpio": "true"}), nodes, Usage()).node == "a"
    nodes[0] = node("a")                              # the same list, a node replaced in it
    assert place(Demand("p.x", labels={"gpio": "true"}), nodes, Usage()).node is None
    nodes.append(node("c", {"gpio": "true"}))
    assert place(Demand("p.x", labels={"gpio": "true"}), nodes, Usage()).node == "c"


def test_a_new_list_of_equal_or_different_nodes_is_seen():
    def gpio():
        return place(Demand("p.x", labels={"gpio": "true"}), [node("a", {"gpio": "true"}), node("b")], Usage()).node

    assert gpio() == "a"
    assert gpio() == "a"                              # equal nodes, read afresh
    assert place(Demand("p.x", labels={"gpio": "true"}), [node("a"), node("b")], Usage()).node is None


def test_a_node_index_can_be_passed_instead_of_the_list():
    index = NodeIndex(ROOMS)
    assert place(Demand("p.x", selector="!room"), index, Usage()).node == "bare"


# --------------------------------------------------- one definition per check

@pytest.mark.parametrize("seed", range(3))
def test_each_static_check_masks_the_nodes_its_reason_refuses_in_the_same_words(seed):
    nodes = cluster(60, seed) + [node("bare")]
    index = NodeIndex(nodes)
    for demand in demands(300, seed, 60) + [Demand("p.x", selector="room in (a")]:
        for check in scheduler.STATIC_CHECKS:
            refused, remaining = {}, index.all
            for why, mask in check.masks(index, demand):       # counted in order, as the chain counts
                for p, n in enumerate(nodes):
                    if remaining & index.bit(p) and not mask & index.bit(p):
                        refused[n.id] = why
                remaining &= mask
            reasons = {n.id: check.reason(n, demand, Usage()) for n in nodes}
            assert refused == {node_id: why for node_id, why in reasons.items() if why is not None}, (check, demand)


@pytest.mark.parametrize("seed", range(3))
def test_each_capacity_check_rooms_tests_and_explains_as_its_reason_does(seed):
    nodes = cluster(60, seed)
    index = NodeIndex(nodes)
    usage = Usage()
    capacity_checks = [check for check in scheduler.CHECKS if not check.static]
    for demand in demands(400, seed, 60):
        index.sync(usage)
        for check in capacity_checks:
            reasons = {n.id: check.reason(n, demand, usage) for n in nodes}
            passing = {node_id for node_id, why in reasons.items() if why is None}
            mask, test = check.room(index, demand, usage)
            in_room = [p for p in range(len(nodes)) if mask & index.bit(p)]
            assert passing <= {nodes[p].id for p in in_room}, check
            if test is not None:
                capacity, used, slack, wanted = test
                in_room = [p for p in in_room if capacity[p] - used.get(nodes[p].id, 0) + slack >= wanted]
            assert {nodes[p].id for p in in_room} == passing, check
            explained, counted = Filtered(), Filtered()
            left = check.explain(index, list(range(len(nodes))), demand, usage, explained)
            for why in reasons.values():
                if why is not None:
                    counted.note(why)
            assert {nodes[p].id for p in left} == passing and explained.texts() == counted.texts(), check
        result = place(demand, index, usage)
        if result.node:
            usage.add(result.node, demand)


def test_an_index_counts_the_static_checks_first_so_it_refuses_a_chain_that_does_not():
    with pytest.raises(ValueError, match="static checks before the capacity checks"):
        NodeIndex([node("a")], (MemoryFits(), NodeNamed()))
    index = NodeIndex([node("a", cpu=1), node("b")], (NodeNamed(), CpuFits()))       # memory left out
    assert index.place(Demand("p.x", memory=64 * GI, cpu=2), Usage()).node == "b"
    assert index.place(Demand("p.x", cpu=8), Usage()).reason == "0/2 nodes: 2 not enough cpu (at most 4 free < 8)"
