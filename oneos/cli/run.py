"""`oneosctl run 'PIPELINE'`: a shell pipeline run across the cluster, as bash would run it here.

It compiles the one-liner, applies it as a pipeline served by this client, feeds it this
process's stdin (or the `< file`), copies the last stage's stdout to this stdout (or the
`> file`) byte for byte and every stage's stderr to this stderr (or its `2> file`), waits
for the last stage to end, deletes the pipeline and exits with the last stage's status,
as bash does. Ctrl-C deletes the pipeline too. On a terminal, one progress line shows
placement and start-up until the first output arrives.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO

from oneos import manifests, state
from oneos.bus import client as bus_client
from oneos.bus import topics
from oneos.bus.reader import StreamReader
from oneos.bus.writer import StreamWriter
from oneos.compiler import compile_pipeline
from oneos.nameserver.client import NameServer
from oneos.nameserver.watch import Watch

LOG_DRAIN_S = 5.0


class Progress:
    """One line on a terminal's stderr, rewritten in place; silent elsewhere."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.shown = False

    def show(self, text: str) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K" + text)
            self.stream.flush()
            self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


class _Sink:
    """Where one stream's bytes go: a binary file, written and flushed as they come."""

    def __init__(self, target: BinaryIO, before_first: Any = None) -> None:
        self.target = target
        self.lock = threading.Lock()
        self.before_first = before_first

    def __call__(self, data: bytes) -> None:
        with self.lock:
            if self.before_first is not None:
                self.before_first()
                self.before_first = None
            self.target.write(data)
            self.target.flush()


def _open(path: str, append: bool, cwd: Path) -> BinaryIO:
    return open(cwd / path, "ab" if append else "wb")


class Run:
    """One `oneosctl run`: the pipeline, its streams, and the wait for its last stage."""

    def __init__(self, ns: NameServer, line: str, *, cwd: Path, stdin_fd: int, stdout: BinaryIO,
                 stderr: BinaryIO, progress: Progress, verbose: bool = False) -> None:
        self.ns = ns
        self.cwd = cwd
        self.stdin_fd = stdin_fd
        self.stdout = stdout
        self.stderr = stderr
        self.progress = progress
        self.name = f"run-{uuid.uuid4().hex[:10]}"
        self.manifest = compile_pipeline(line, name=self.name, base_dir=cwd, devices=state.read_devices(ns))
        self.client = None
        self.readers: list[StreamReader] = []
        self.log_readers: dict[tuple[str, int], StreamReader] = {}
        self.files: list[BinaryIO] = []
        self.applied = False
        self.verbose = verbose
        self.placement_told = False

    def execute(self) -> int:
        boot = state.read_boot(self.ns)
        self.namespace = boot["pulsar"]["namespace"]
        done = manifests.apply_pipeline(self.ns, self.manifest, self.cwd, attached=True)
        self.applied = True
        self.uid = done.manifest["metadata"]["uid"]
        agents = done.manifest["spec"]["agents"]
        self.client = bus_client.connect(boot["pulsar"]["url"])
        self._serve_stdout(agents)
        self._serve_stdin(agents)
        last = next(a["name"] for a in agents if "stdout" in a)
        status = self._wait(agents, last)
        return status.get("exitCode", 1)

    def _serve_stdout(self, agents: list[dict[str, Any]]) -> None:
        for agent in agents:
            if "stdout" not in agent or "device" in agent["stdout"]:
                continue
            spec = agent["stdout"]
            target = self.stdout
            if "file" in spec:
                target = _open(spec["file"], spec.get("append", False), self.cwd)
                self.files.append(target)
            reader = StreamReader(self.client, [topics.output_topic(self.namespace, self.uid, agent["name"])],
                                  "oneosctl-run", name=f"{self.name}.{agent['name']}.out",
                                  on_data=_Sink(target, self.progress.clear))
            self.readers.append(reader.start())

    def _serve_stdin(self, agents: list[dict[str, Any]]) -> None:
        for agent in agents:
            if "stdin" not in agent or "device" in agent["stdin"]:
                continue
            writer = StreamWriter(self.client, [topics.input_topic(self.namespace, self.uid, agent["name"])], 0,
                                  name=f"{self.name}.{agent['name']}.in")
            spec = agent["stdin"]
            fd = os.open(self.cwd / spec["file"], os.O_RDONLY) if "file" in spec else os.dup(self.stdin_fd)
            writer.pump(fd)

    def _follow_logs(self, agents: list[dict[str, Any]], statuses: dict[str, dict[str, Any]]) -> None:
        """Read each incarnation's log as it appears: to stderr, or to the stage's `2> file`."""
        for agent in agents:
            status = statuses.get(state.agent_id(self.name, agent["name"]), {})
            incarnation = status.get("incarnation")
            if not incarnation or (agent["name"], incarnation) in self.log_readers:
                continue
            target = self.stderr
            if "stderr" in agent:
                spec = agent["stderr"]
                target = _open(spec["file"], spec.get("append", False), self.cwd)
                self.files.append(target)
            topic = topics.log_topic(self.namespace, self.uid, agent["name"], incarnation)
            reader = StreamReader(self.client, [topic], "oneosctl-run", name=f"{self.name}.{agent['name']}.log",
                                  on_data=_Sink(target, self.progress.clear))
            self.log_readers[(agent["name"], incarnation)] = reader.start()

    def _wait(self, agents: list[dict[str, Any]], last: str) -> dict[str, Any]:
        """Until the last stage is done for good and its output has all arrived; its status."""
        last_key = state.agent_id(self.name, last)
        told: set[str] = set()
        statuses: dict[str, dict[str, Any]] = {}
        final: dict[str, Any] = {}
        # An error of the Name Server ends the run with its message, as any other command's.
        with Watch.tree(self.ns, f"{state.STATUS}{self.name}.", wait="5s", retry=False) as watch:
            for _, entries in watch:
                statuses = {entry.key[len(state.STATUS):]: state.decode(entry, "status") for entry in entries}
                self._follow_logs(agents, statuses)
                self._report_progress(agents, statuses, told)
                final = statuses.get(last_key, {})
                if final.get("state") in state.FINAL_STATES and all(r.finished.wait(0) for r in self.readers):
                    break
                if final.get("state") in state.FINAL_STATES:
                    # The status came first; the end of its output stream is on its way: look again soon.
                    for reader in self.readers:
                        reader.wait(0.2)
                    watch.again()
        self.progress.clear()
        self._drain_logs(statuses)
        for reader in self.readers:
            if reader.error:
                print(f"oneosctl: output of {self.name} was cut short: {reader.error}", file=sys.stderr)
        return final

    def _report_progress(self, agents: list[dict[str, Any]], statuses: dict[str, dict[str, Any]],
                         told: set[str]) -> None:
        counts = {"running": 0, "pending": 0}
        for agent in agents:
            st = statuses.get(state.agent_id(self.name, agent["name"]), {})
            if st.get("state") in ("Running", "Exited"):
                counts["running"] += 1
            if st.get("state") == "Pending":
                counts["pending"] += 1
                line = f"stage {agent['name']} is pending: {st.get('reason', '')}"
                if not self.progress.enabled and line not in told:
                    # Not on a terminal: say once why nothing happens, then wait as bash would.
                    told.add(line)
                    print(f"oneosctl: {line}", file=sys.stderr, flush=True)
        total = len(agents)
        placed = [statuses.get(state.agent_id(self.name, a["name"]), {}).get("node") for a in agents]
        if self.verbose and not self.placement_told and all(placed):
            self.placement_told = True
            where = ", ".join(f"{a['name']} on {node}" for a, node in zip(agents, placed))
            print(f"oneosctl: {self.name} placed: {where}", file=sys.stderr, flush=True)
        if counts["pending"]:
            self.progress.show(f"{self.name}: {counts['pending']}/{total} stages pending (see oneosctl "
                               f"describe pipeline {self.name})")
        elif counts["running"] < total:
            self.progress.show(f"{self.name}: placing and starting stages {counts['running']}/{total}...")

    def _drain_logs(self, statuses: dict[str, dict[str, Any]]) -> None:
        """Let every finished stage's log reach its end, briefly: stderr is not worth waiting long for."""
        deadline = time.monotonic() + LOG_DRAIN_S
        for (agent, _), reader in self.log_readers.items():
            st = statuses.get(state.agent_id(self.name, agent), {})
            if st.get("state") in state.FINAL_STATES:
                reader.wait(max(0.0, deadline - time.monotonic()))

    def cleanup(self) -> None:
        for reader in self.readers + list(self.log_readers.values()):
            reader.stop(timeout=2)
        if self.applied:
            manifests.delete_pipeline(self.ns, self.name)
        if self.client is not None:
            bus_client.close(self.client)
        for f in self.files:
            f.close()


def run(ns: NameServer, line: str, *, verbose: bool = False) -> int:
    """Run the pipeline; the exit status of its last stage (130 after Ctrl-C)."""
    job = Run(ns, line, cwd=Path.cwd(), stdin_fd=sys.stdin.fileno(), stdout=sys.stdout.buffer,
              stderr=sys.stderr.buffer, progress=Progress(sys.stderr), verbose=verbose)
    try:
        return job.execute()
    except KeyboardInterrupt:
        job.progress.clear()
        return 130
    finally:
        job.cleanup()
