"""What `oneosctl apply` says an update changes, and which agents it restarts."""

from __future__ import annotations

import copy

from oneos.diff import diff_pipelines, show

UID = "0" * 32


def pipeline(agents, links=(), *, digests=None, labels=None, generation=1):
    meta = {"name": "p", "uid": UID, "generation": generation, "createdAt": "2024-01-01T00:00:00Z"}
    if labels:
        meta["labels"] = labels
    if digests:
        meta["fileDigests"] = digests
    return {"apiVersion": "oneos/v1", "kind": "Pipeline", "metadata": meta,
            "spec": {"agents": [dict(a) for a in agents], "links": [{"from": a, "to": b} for a, b in links]}}


TICKER = {"name": "ticker", "run": ["seq", "100"]}
UPPER = {"name": "upper", "run": ["tr", "0-9", "a-j"]}
BASE = pipeline([TICKER, UPPER], [("ticker", "upper")])


def changed(mutate):
    new = copy.deepcopy(BASE)
    mutate(new)
    new["metadata"]["generation"] += 1
    return new


def lines(old, new, where=None):
    d = diff_pipelines(old, new)
    return d.change_lines() + d.plan_lines(where)


def test_nothing_changed_is_empty_and_keeps_every_agent():
    d = diff_pipelines(BASE, copy.deepcopy(BASE))
    assert d.empty and d.change_lines() == []
    assert d.plan_lines() == ["keep ticker", "keep upper"]


def test_a_changed_command_restarts_that_agent_only():
    new = changed(lambda m: m["spec"]["agents"][1].update(run=["sed", "-u", "y/0123456789/abcdefghij/"]))
    where = {"ticker": "Running on n1", "upper": "Running on n2"}
    assert lines(BASE, new, where) == [
        "~ agent upper: run [tr, 0-9, a-j] -> [sed, -u, y/0123456789/abcdefghij/]",
        "restart upper (Running on n2): run changed",
        "keep ticker (Running on n1)",
    ]


def test_each_changed_field_is_a_line_and_dicts_are_compared_key_by_key():
    def mutate(m):
        m["spec"]["agents"][0].update(restart="on-failure", env={"LEVEL": "debug"},
                                      requires={"labels": {"gpio": "true"}})
    old = copy.deepcopy(BASE)
    old["spec"]["agents"][0].update(env={"LEVEL": "info", "KEEP": "1"}, requires={"labels": {"gpio": "false"}})
    new = copy.deepcopy(old)
    mutate(new)
    assert lines(old, new) == [
        "~ agent ticker: env.LEVEL info -> debug",
        "~ agent ticker: env.KEEP 1 -> <none>",
        '~ agent ticker: requires.labels.gpio "false" -> "true"',
        "~ agent ticker: restart <none> -> on-failure",
        "restart ticker: env, requires, restart changed",
        "keep upper",
    ]


def test_an_added_agent_and_link_start_it_and_restart_the_other_end():
    new = changed(lambda m: (m["spec"]["agents"].append({"name": "extra", "run": ["cat"]}),
                             m["spec"]["links"].append({"from": "upper", "to": "extra"})))
    assert lines(BASE, new) == [
        "+ agent extra",
        "+ link upper -> extra",
        "restart upper: link upper -> extra added",
        "start extra",
        "keep ticker",
    ]


def test_a_removed_agent_and_link_stop_it_and_restart_the_other_end():
    new = changed(lambda m: (m["spec"]["agents"].pop(), m["spec"]["links"].clear()))
    assert lines(BASE, new, {"upper": "Running on n2", "ticker": "Exited(0) on n1"}) == [
        "- agent upper",
        "- link ticker -> upper",
        "restart ticker (Exited(0) on n1): link ticker -> upper removed",
        "stop upper (Running on n2)",
    ]


def test_a_link_between_existing_agents_restarts_both_ends():
    old = pipeline([TICKER, UPPER])
    new = pipeline([TICKER, UPPER], [("ticker", "upper")], generation=2)
    d = diff_pipelines(old, new)
    assert d.change_lines() == ["+ link ticker -> upper"]
    assert d.restart == {"ticker": ["link ticker -> upper added"], "upper": ["link ticker -> upper added"]}
    assert d.keep == []


def test_a_shipped_file_whose_content_changed_restarts_the_agents_that_ship_it():
    ctl = {"name": "ctl", "run": ["python3", "ctl.py"], "files": ["ctl.py"]}
    old = pipeline([TICKER, ctl], [("ticker", "ctl")], digests={"ctl.py": "a" * 64})
    new = pipeline([TICKER, ctl], [("ticker", "ctl")], digests={"ctl.py": "b" * 64}, generation=2)
    assert lines(old, new) == [
        "~ file ctl.py: content changed (shipped with ctl)",
        "restart ctl: shipped file ctl.py changed",
        "keep ticker",
    ]


def test_a_newly_shipped_file_is_a_change_of_the_agents_files():
    old = pipeline([TICKER, UPPER])
    new = pipeline([TICKER, dict(UPPER, files=["map.txt"])], digests={"map.txt": "c" * 64}, generation=2)
    assert lines(old, new) == ["~ agent upper: files <none> -> [map.txt]", "restart upper: files changed",
                               "keep ticker"]


def test_labels_and_order_change_the_manifest_but_restart_nothing():
    new = pipeline([UPPER, TICKER], [("ticker", "upper")], labels={"team": "ops"}, generation=2)
    d = diff_pipelines(BASE, new)
    assert d.change_lines() == ["~ labels <none> -> {team: ops}",
                                "~ order of agents [ticker, upper] -> [upper, ticker]"]
    assert d.restart == {} and d.keep == ["upper", "ticker"]


def test_a_new_pipeline_lists_what_it_adds_and_starts():
    d = diff_pipelines(None, BASE)
    assert d.created
    assert d.change_lines() + d.plan_lines() == ["+ agent ticker", "+ agent upper", "+ link ticker -> upper",
                                                 "start ticker", "start upper"]


def test_values_are_shown_on_one_line():
    assert show(["python3", "-c", "print('a b')\nprint(1)"]) == '[python3, -c, "print(\'a b\')\\nprint(1)"]'
    assert show({"gpio": "true", "n": 2, "on": True}) == '{gpio: "true", n: 2, on: true}'
    assert show("") == '""'
