"""A real cluster for tests: the built-in Name Server, a boot record, and `oneosd` processes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from oneos.nameserver.client import NameServer
from tests.procs import NameServerProc, OneosdProc, free_port, run_cli, venv_bin, wait_until

SESSION_TTL = 10          # the smallest TTL Consul accepts
LOCK_DELAY = 3
EMPTY_INIT = "apiVersion: oneos/v1\nkind: Init\nmetadata: {name: oneos-init}\nspec: {agents: []}\n"


class Cluster:
    """A Name Server with a boot record, and the runtimes a test starts (all stopped at the end)."""

    def __init__(self, nameserver: NameServerProc, root: Path) -> None:
        self.nameserver = nameserver
        self.root = root
        self.url = nameserver.url
        self.ns = NameServer(self.url)
        self.nodes: list[OneosdProc] = []

    def bootstrap(self, pulsar_url: str | None = None, init: str = EMPTY_INIT) -> None:
        """Write the boot record; without a broker, its Pulsar URL names a port nothing listens on.

        The init manifest has no kernel agents by default: the test owns the broker (it kills
        and restarts it), so a kernel agent must not start one of its own.
        """
        pulsar_url = pulsar_url or f"pulsar://127.0.0.1:{free_port()}"
        init_path = self.root / "init.yaml"
        init_path.write_text(init)
        done = self.ctl("bootstrap", "--cluster", "e2e", "--pulsar-url", pulsar_url, "--init", str(init_path),
                        "--session-ttl", f"{SESSION_TTL}s", "--lock-delay", f"{LOCK_DELAY}s")
        assert done.returncode == 0, done.stderr

    def ctl(self, *argv: str, env: dict[str, str] | None = None):
        return run_cli(["oneosctl", *argv], env={"ONEOS_NAMESERVER": self.url, **(env or {})})

    def start(self, node_id: str | None, *extra: str, home: Path | None = None, wait: bool = True,
              env: dict[str, str] | None = None) -> OneosdProc:
        # Nodes have no GPIO unless a test gives them a board, whatever this machine has.
        bare = {"ONEOS_GPIO_SIM": "", "ONEOS_HW_ROOT": str(self.root / "no-hardware")}
        proc = OneosdProc(node_id, home or self.root / f"home-{node_id}", self.url, list(extra),
                          env={**bare, **(env or {})})
        self.nodes.append(proc)
        proc.start()
        if wait:
            wait_until(lambda: self._joined(proc), 20, f"runtime {node_id} to join (log: {proc.log_path})")
        return proc

    def node(self, node_id: str) -> OneosdProc:
        """The latest runtime started with this id."""
        return [p for p in self.nodes if p.node_id == node_id][-1]

    def _joined(self, proc: OneosdProc) -> bool:
        if not proc.alive():
            raise AssertionError(f"oneosd {proc.node_id} exited with {proc.popen.returncode}:\n{proc.log()}")
        return proc.node_id in self.node_ids()

    def run(self, line: str, *, input: bytes | None = None, cwd: Path | None = None, timeout: float = 120):
        """`oneosctl run LINE` as a user types it: stdout as bytes, stderr as text."""
        done = subprocess.run([venv_bin("oneosctl"), "run", line], input=input or b"", capture_output=True,
                              env=dict(os.environ, ONEOS_NAMESERVER=self.url), cwd=cwd or self.root,
                              timeout=timeout)
        return done.returncode, done.stdout, done.stderr.decode(errors="replace")

    def statuses(self, pipeline: str) -> dict[str, dict]:
        """agent -> status, as `oneosctl get agents -o json` shows them."""
        done = self.ctl("get", "agents", "-o", "json")
        assert done.returncode == 0, done.stderr
        return {s["agent"]: s for s in json.loads(done.stdout)["items"] if s["pipeline"] == pipeline}

    def statuses_all(self) -> list[dict]:
        done = self.ctl("get", "agents", "-o", "json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["items"]

    def ctl_bytes(self, *argv: str) -> bytes:
        """oneosctl's stdout as bytes (for logs, which may be binary)."""
        return subprocess.run([venv_bin("oneosctl"), *argv], capture_output=True, timeout=60,
                              env=dict(os.environ, ONEOS_NAMESERVER=self.url)).stdout

    def get_nodes(self) -> list[dict]:
        """What `oneosctl get nodes -o json` shows."""
        done = self.ctl("get", "nodes", "-o", "json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["items"]

    def node_ids(self) -> set[str]:
        return {n["id"] for n in self.get_nodes()}

    def leader(self) -> str | None:
        leaders = [n["id"] for n in self.get_nodes() if n["leader"]]
        assert len(leaders) <= 1, f"more than one leader: {leaders}"
        return leaders[0] if leaders else None

    def stop(self) -> None:
        for proc in self.nodes:
            proc.stop()
