"""The control plane fails while a pipeline streams: the leader is killed (mid-placement too),
the Name Server is killed and restarted. The data keeps flowing exactly, and the system
converges again: a new leader carries on from what the Name Server holds.

The killed leader's sessions are ended at once, as their TTL expiry would end them
(Cluster.lose); the lock-delay after that runs in real time.
"""

from __future__ import annotations

import textwrap

import pytest

from tests.cluster import LOCK_DELAY, SESSION_TTL
from tests.conftest import running_cluster
from tests.faults.numbered import NumberedStream

WORKER = ["--no-kernel", "--label", "role=worker"]
ON_W1, ON_W2 = {"node": "w1"}, {"node": "w2"}
FAILOVER = 2 * SESSION_TTL + LOCK_DELAY + 15


@pytest.fixture
def control(tmp_path):
    """Two kernel nodes k1, k2 (one leads) and two workers w1, w2 that run the pipelines."""
    with running_cluster(tmp_path, {"k1": ["--kernel"], "k2": ["--kernel"], "w1": WORKER, "w2": WORKER}) as c:
        yield c


def all_running(cluster, pipeline: str, count: int) -> bool:
    statuses = cluster.statuses(pipeline)
    return len(statuses) == count and all(s["state"] == "Running" for s in statuses.values())


def wide_pipeline(path, name: str, stages: int) -> None:
    agents = "".join(f"    - {{name: s{i}, run: [sleep, '100000'], requires: {{labels: {{role: worker}}}}}}\n"
                     for i in range(stages))
    path.write_text(f"apiVersion: oneos/v1\nkind: Pipeline\nmetadata: {{name: {name}}}\nspec:\n  agents:\n{agents}")


def test_killing_the_leader_mid_stream_and_mid_placement(control, tmp_path):
    stream = NumberedStream(tmp_path, lines=50_000, gate_at=30_000,
                            requires={"source": ON_W1, "relay": ON_W2, "sink": ON_W1})
    stream.apply(control)
    stream.wait_for_lines(5_000)
    leader = control.leader()

    # A pipeline of many stages is applied, and the leader dies while it places them.
    wide_pipeline(tmp_path / "wide.yaml", "wide", 12)
    assert control.ctl("apply", "-f", str(tmp_path / "wide.yaml")).returncode == 0
    control.lose(leader)
    new_leader = control.wait_for(lambda: (n := control.leader()) not in (None, leader) and n, FAILOVER,
                                  "a new leader")
    assert new_leader in ("k1", "k2")
    control.wait_for(lambda: all_running(control, "wide", 12), 30, "every stage of the wide pipeline to run")

    # The stream never depended on the leader: it finishes exactly.
    stream.open_gate()
    assert stream.wait_finished(control, 60)["sink"]["state"] == "Exited"
    stream.assert_exact()
    assert {s["restarts"] for s in control.statuses(stream.name).values()} == {0}


def test_a_name_server_crash_and_restart_mid_stream(control, tmp_path):
    stream = NumberedStream(tmp_path, lines=50_000, gate_at=30_000,
                            requires={"source": ON_W1, "relay": ON_W2, "sink": ON_W1})
    stream.apply(control)
    stream.wait_for_lines(5_000)
    pids = {a: s["pid"] for a, s in control.statuses(stream.name).items()}

    control.nameserver.kill9()
    control.nameserver.start()   # same port, same data: sessions are restored
    stream.open_gate()
    assert stream.wait_finished(control, 90)["sink"]["state"] == "Exited"
    stream.assert_exact()
    # Nothing was restarted, every node is still a member, and the cluster takes new work.
    assert {a: s.get("pid") for a, s in control.statuses(stream.name).items() if s["state"] == "Running"} == {}
    assert control.node_ids() == {"k1", "k2", "w1", "w2"}
    assert all(s["restarts"] == 0 for s in control.statuses(stream.name).values()), pids
    (tmp_path / "after.yaml").write_text(textwrap.dedent("""\
        apiVersion: oneos/v1
        kind: Pipeline
        metadata: {name: after}
        spec: {agents: [{name: waiter, run: [sleep, "100000"]}]}
        """))
    assert control.ctl("apply", "-f", str(tmp_path / "after.yaml")).returncode == 0
    control.wait_for(lambda: all_running(control, "after", 1), 30, "a pipeline applied after the restart to run")
