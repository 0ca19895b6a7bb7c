"""Integrity under faults: numbered lines through three stages on three nodes, while the middle
agent is killed and the broker is restarted. The output must equal the input: nothing lost,
nothing repeated, in order.
"""

from __future__ import annotations

import os
import signal
import textwrap

from tests.procs import wait_until

LINES = 100_000
GATE_AT = 60_000   # the source waits here until the test has done its damage
NL = b"\n"

# Numbered lines, paced (about 10 s in all) so the faults land mid-stream; at GATE_AT it waits
# for the gate file, so the last part of the stream is sent after the broker has come back.
SOURCE = textwrap.dedent(f"""\
    import os, sys, time
    gate = sys.argv[1]
    for i in range(1, {LINES} + 1):
        sys.stdout.write(f"{{i}}\\n")
        if i % 1000 == 0:
            sys.stdout.flush()
            time.sleep(0.1)
        if i == {GATE_AT}:
            sys.stdout.flush()
            while not os.path.exists(gate):
                time.sleep(0.05)
    """)

# Writes what it reads to a file as it comes, so the test can watch progress.
SINK = textwrap.dedent("""\
    import sys
    with open(sys.argv[1], "wb", buffering=0) as out:
        while data := sys.stdin.buffer.read1(65536):
            out.write(data)
    """)


def manifest(gate: str, out: str) -> str:
    def q(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return textwrap.dedent(f"""\
        apiVersion: oneos/v1
        kind: Pipeline
        metadata: {{name: numbered}}
        spec:
          agents:
            - name: source
              run: [python3, -c, {q(SOURCE)}, {q(gate)}]
            - name: relay
              run: [cat]
              restart: on-failure
            - name: sink
              run: [python3, -c, {q(SINK)}, {q(out)}]
          links:
            - {{from: source, to: relay}}
            - {{from: relay, to: sink}}
        """)


def count_lines(path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_numbered_lines_survive_a_killed_agent_and_a_broker_restart(three_nodes, tmp_path):
    gate, out = tmp_path / "gate", tmp_path / "out.txt"
    (tmp_path / "numbered.yaml").write_text(manifest(str(gate), str(out)))
    assert three_nodes.ctl("apply", "-f", str(tmp_path / "numbered.yaml")).returncode == 0
    try:
        statuses = lambda: three_nodes.statuses("numbered")  # noqa: E731
        wait_until(lambda: count_lines(out) >= 5_000, 60, "the first lines to come out")
        placed = statuses()
        assert len({s["node"] for s in placed.values()}) == 3, placed

        # Kill the middle agent mid-stream: it restarts (on-failure), reads its input again
        # from the start, and the sink drops by offset what it already has.
        os.kill(placed["relay"]["pid"], signal.SIGKILL)
        wait_until(lambda: statuses()["relay"].get("restarts") == 1 and statuses()["relay"]["state"] == "Running",
                   30, "the relay to run again")
        assert count_lines(out) < LINES

        # Restart the broker (a crash) while the stream is open, then let the rest through.
        three_nodes.broker.kill9()
        three_nodes.broker.start()
        gate.touch()

        wait_until(lambda: statuses()["sink"]["state"] in ("Exited", "Failed"), 120,
                   f"the sink to finish ({count_lines(out)} lines so far)")
        final = statuses()
        assert {a: (s["state"], s.get("exitCode")) for a, s in final.items()} == {
            "source": ("Exited", 0), "relay": ("Exited", 0), "sink": ("Exited", 0)}
        expected = "".join(f"{i}\n" for i in range(1, LINES + 1)).encode()
        got = out.read_bytes()
        first_diff = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        assert got == expected, f"{got.count(NL)} lines of {LINES}; they differ from byte {first_diff}"
    finally:
        three_nodes.ctl("delete", "pipeline", "numbered")
        gate.touch()
