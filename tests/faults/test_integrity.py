"""Integrity under faults: numbered lines through three stages on three nodes, while the middle
agent is killed and the broker is restarted. The output must equal the input: nothing lost,
nothing repeated, in order.
"""

from __future__ import annotations

import os
import signal

from tests.faults.numbered import NumberedStream


def test_numbered_lines_survive_a_killed_agent_and_a_broker_restart(three_nodes, tmp_path):
    stream = NumberedStream(tmp_path, lines=100_000, gate_at=60_000)
    stream.apply(three_nodes)
    try:
        statuses = lambda: three_nodes.statuses(stream.name)  # noqa: E731
        stream.wait_for_lines(5_000)
        placed = statuses()
        assert len({s["node"] for s in placed.values()}) == 3, placed

        # Kill the middle agent mid-stream: it restarts (on-failure), reads its input again
        # from the start, and the sink drops by offset what it already has.
        os.kill(placed["relay"]["pid"], signal.SIGKILL)
        three_nodes.wait_for(lambda: statuses()["relay"].get("restarts") == 1
                             and statuses()["relay"]["state"] == "Running", 30, "the relay to run again")
        assert stream.count() < stream.lines

        # Restart the broker (a crash) while the stream is open, then let the rest through.
        three_nodes.broker.kill9()
        three_nodes.broker.start()
        stream.open_gate()

        final = stream.wait_finished(three_nodes, 120)
        assert {a: (s["state"], s.get("exitCode")) for a, s in final.items()} == {
            "source": ("Exited", 0), "relay": ("Exited", 0), "sink": ("Exited", 0)}
        stream.assert_exact()
    finally:
        three_nodes.ctl("delete", "pipeline", stream.name)
        stream.open_gate()
