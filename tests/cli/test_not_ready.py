"""NotReady, decided from a node's heartbeat with the clock given by the test: a node is NotReady
once its last session renewal is older than its TTL, and the agents it reported running are
Unknown in the tables. tests/e2e/test_not_ready.py checks it once in real time (SIGSTOP)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from oneos import state
from oneos.cli.oneosctl import agent_state, as_seen, pipeline_phase

T0 = datetime(2026, 1, 2, 3, 4, 5, 250_000, tzinfo=timezone.utc)
BEAT = state.new_heartbeat("n2", 10, when=T0)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_node_is_not_ready_once_its_last_renewal_is_older_than_its_ttl():
    assert BEAT == {"node": "n2", "renewedAt": "2026-01-02T03:04:05.250Z", "ttl": 10}
    assert state.overdue(BEAT, at(0)) is None
    assert state.overdue(BEAT, at(5)) is None         # renewals come every TTL/2
    assert state.overdue(BEAT, at(10)) is None        # at the TTL, not yet
    assert state.overdue(BEAT, at(10.5)) == 10.5
    assert state.overdue(None, at(1000)) is None      # no heartbeat (an older node): as it says itself


def test_get_nodes_shows_not_ready_with_the_reason():
    record = {"id": "n2", "state": "Ready"}
    ready = state.NodeView(record, False, BEAT, state.overdue(BEAT, at(4)))
    late = state.NodeView(record, False, BEAT, state.overdue(BEAT, at(12.4)))
    assert (ready.state, late.state) == ("Ready", "NotReady")
    assert late.not_ready_reason() == "node n2 is NotReady: no session renewal for 12s (session TTL 10s)"


def test_the_agents_a_not_ready_node_reported_running_are_unknown():
    not_ready = {"n2": "node n2 is NotReady: no session renewal for 12s (session TTL 10s)"}
    running = {"pipeline": "p", "agent": "a", "state": "Running", "node": "n2", "pid": 7, "updatedAt": "x"}
    seen = as_seen(running, not_ready)
    assert agent_state(seen) == "Unknown" and seen["node"] == "n2"
    assert seen["reason"] == ("node n2 is NotReady: no session renewal for 12s (session TTL 10s); "
                              "it last reported Running")
    # What it finished stays known; another node's agents are as they say.
    exited = dict(running, state="Exited", exitCode=0)
    assert agent_state(as_seen(exited, not_ready)) == "Exited(0)"
    assert agent_state(as_seen(dict(running, node="n1"), not_ready)) == "Running"

    doc = {"metadata": {"name": "p"}, "spec": {"agents": [{"name": "a"}, {"name": "b"}]}}
    statuses = {"p.a": seen, "p.b": dict(running, agent="b", node="n1")}
    assert pipeline_phase(doc, statuses) == "Unknown"
