"""A long-running pipeline that streams numbered lines, for tests that break things while it runs.

    source (numbered lines, paced; waits at a gate) -> relay (cat) -> sink (appends to a file)

The sink writes what it reads to a file as it comes, so a test can watch progress and, at
the end, compare the file with the input: nothing lost, nothing repeated, in order.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import yaml

from oneos import state
from tests.procs import wait_until

# Numbered lines, paced (1000 lines per 0.1 s) so faults land mid-stream; at `gate_at` it
# waits for the gate file, so a test can hold back the rest of the stream until it is ready.
SOURCE = textwrap.dedent("""\
    import os, sys, time
    lines, gate_at, gate = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    for i in range(1, lines + 1):
        sys.stdout.write(f"{i}\\n")
        if i % 1000 == 0:
            sys.stdout.flush()
            time.sleep(0.1)
        if i == gate_at:
            sys.stdout.flush()
            while not os.path.exists(gate):
                time.sleep(0.05)
    """)

SINK = textwrap.dedent("""\
    import sys
    with open(sys.argv[1], "wb", buffering=0) as out:
        while data := sys.stdin.buffer.read1(65536):
            out.write(data)
    """)


class NumberedStream:
    """The pipeline `name`, its gate and output files under `root`; `requires` per agent, if any."""

    def __init__(self, root: Path, *, name: str = "numbered", lines: int = 100_000, gate_at: int | None = None,
                 requires: dict[str, dict[str, Any]] | None = None, relay_restart: str = "on-failure") -> None:
        self.name = name
        self.lines = lines
        self.gate_at = lines if gate_at is None else gate_at
        self.gate = root / f"{name}.gate"
        self.out = root / f"{name}.out"
        self.path = root / f"{name}.yaml"
        requires = requires or {}
        agents = [
            {"name": "source", "run": ["python3", "-c", SOURCE, str(lines), str(self.gate_at), str(self.gate)]},
            {"name": "relay", "run": ["cat"], "restart": relay_restart},
            {"name": "sink", "run": ["python3", "-c", SINK, str(self.out)]},
        ]
        for agent in agents:
            if agent["name"] in requires:
                agent["requires"] = requires[agent["name"]]
        self.manifest = {"apiVersion": "oneos/v1", "kind": "Pipeline", "metadata": {"name": name},
                         "spec": {"agents": agents, "links": [{"from": "source", "to": "relay"},
                                                              {"from": "relay", "to": "sink"}]}}

    def apply(self, cluster) -> None:
        self.path.write_text(yaml.safe_dump(self.manifest, sort_keys=False))
        done = cluster.ctl("apply", "-f", str(self.path))
        assert done.returncode == 0, done.stderr

    def count(self) -> int:
        try:
            return self.out.read_bytes().count(b"\n")
        except FileNotFoundError:
            return 0

    def wait_for_lines(self, at_least: int, timeout: float = 60) -> None:
        wait_until(lambda: self.count() >= at_least, timeout, f"{at_least} lines out of {self.name} "
                                                             f"(so far {self.count()})")

    def wait_finished(self, cluster, timeout: float) -> dict[str, dict]:
        """Until every stage is done for good, and their statuses: each node writes its own, so the
        sink's may come before the relay's."""
        def finished():
            statuses = cluster.statuses(self.name)
            return len(statuses) == len(self.manifest["spec"]["agents"]) and all(
                s["state"] in state.FINAL_STATES for s in statuses.values()) and statuses
        return cluster.wait_for(finished, timeout, f"every stage of {self.name} to finish "
                                                   f"({self.count()} lines when the wait began)")

    def open_gate(self) -> None:
        self.gate.touch()

    def expected(self) -> bytes:
        return "".join(f"{i}\n" for i in range(1, self.lines + 1)).encode()

    def assert_exact(self) -> None:
        """The output is the input: nothing lost, nothing repeated, in order."""
        got, expected = self.out.read_bytes(), self.expected()
        if got != expected:
            first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            context, lines = got[max(0, first - 20):first + 20], got.count(b"\n")
            raise AssertionError(f"{self.name}: {lines} lines out for {self.lines} in; the output "
                                 f"differs from byte {first}: ...{context!r}...")
