"""The stdio bridge of one agent process: its stdin, stdout and stderr joined to Pulsar.

- stdin: the link topics of the agents it reads (and, under `oneosctl run`, the pipeline's
  input stream), through a subscription of this incarnation: a restarted process reads its
  input again from the start (replay, see oneos/bus/reader.py); nothing to read: /dev/null.
- stdout: every link topic to the agents that read it; an agent nobody reads (the last
  stage) writes the pipeline's output stream instead (its `output_topic`, read by
  `oneosctl run` and `oneosctl logs PIPELINE`), never its log; through a pipe, or a
  pseudo-terminal when `oneosctl run` writes to one. The stream ends (EOF) only once the
  agent is done for good, so readers do not see an end between two runs of a restarted
  agent, and as on a link a restarted agent's replay is dropped by offset.
- stderr, and lines about the agent from OneOS: the agent's log topic (one per incarnation,
  read by `oneosctl logs PIPELINE/AGENT` and `run`) and a local file next to its working
  directory, size-capped and rotated (logfiles.py). Kernel agents (such as the broker
  itself) do without the bus: their log is the file, their stdout too.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

from oneos import state
from oneos.bus import topics
from oneos.bus.reader import StreamReader
from oneos.bus.writer import StreamWriter
from oneos.nodeagent.logfiles import LogFile, LogLimits

log = logging.getLogger("oneos.nodeagent")

FLUSH_S = 30.0


class Bridge:
    """Created per process start (incarnation); `attach` the process, then `finish` when it exits."""

    def __init__(self, client: Any, namespace: str, key: str, assignment: dict[str, Any], incarnation: int,
                 log_dir: Path, wire: int | None = None, log_limits: LogLimits | None = None,
                 frame_key: bytes | None = None) -> None:
        """`incarnation` counts the agent's starts (it names the log); `wire`, the incarnation its
        frames and subscriptions carry, adds the placement epoch (oneos.bus.frames.incarnation);
        `log_limits`, how much of the local log file is kept; `frame_key`, the pipeline's key, under
        which its stdin and stdout frames carry MACs (its log's do not)."""
        wire = incarnation if wire is None else wire
        pipeline, agent = state.split_agent_id(key)
        uid = assignment["uid"]
        spec = assignment["agent"]
        attached = assignment["attached"]
        self.client = client
        self.key = key
        self.frame_key = frame_key
        self.on_refused: Any = None   # called (on a reader thread) when an input frame fails its MAC
        self.agent = agent
        self.incarnation = incarnation
        self.wire = wire
        self.input_topics = [topics.link_topic(namespace, uid, src, agent) for src in assignment["inputs"]]
        if attached and "stdin" in spec and "device" not in spec["stdin"]:
            self.input_topics.append(topics.input_topic(namespace, uid, agent))
        output_topics = [topics.link_topic(namespace, uid, agent, dst) for dst in assignment["outputs"]]
        # Its stdout is the pipeline's output: kept apart from its log (stderr) even when nobody reads it now.
        self.to_output = client is not None and state.writes_output(spec, assignment["outputs"])
        if self.to_output:
            output_topics.append(topics.output_topic(namespace, uid, agent))
        if client is None:
            # Without the bus (kernel agents, the broker among them): the local log file only.
            if self.input_topics or output_topics:
                raise ValueError(f"{key}: an agent with links needs the message bus")
            self.output = self.log = None
        else:
            self.output = (StreamWriter(client, output_topics, wire, name=key, key=frame_key)
                           if output_topics else None)
            if self.to_output:
                self.output.announce()   # `oneosctl logs PIPELINE` can tell an empty output from none yet
            self.log = StreamWriter(client, [topics.log_topic(namespace, uid, agent, incarnation)], wire,
                                    name=f"{key}.log")
            self.log.announce()   # `oneosctl logs` can tell an empty log from one not written yet
        self._log_file = LogFile(log_dir, key, incarnation, log_limits or LogLimits())
        self.log_path = self._log_file.path
        self._log_lock = threading.Lock()
        self.reader: StreamReader | None = None
        self._threads: list[threading.Thread] = []

    def stdin_mode(self) -> int:
        return subprocess.PIPE if self.input_topics else subprocess.DEVNULL

    def attach(self, proc: subprocess.Popen, stdout: int | None = None) -> None:
        """Start moving bytes for a process that has just started.

        `stdout` is where to read its stdout when that is not a pipe of `proc`: the master side
        of a pseudo-terminal (the bridge owns it; its EIO when the process has closed the
        terminal is the end of the stream, as EOF is for a pipe).
        """
        if self.input_topics:
            fd = os.dup(proc.stdin.fileno())
            proc.stdin.close()
            self.reader = StreamReader(self.client, self.input_topics,
                                       topics.subscription(self.agent, self.wire), name=self.key, fd=fd,
                                       key=self.frame_key, on_refused=self._refused)
            self.reader.start()
        if stdout is None and proc.stdout is not None:
            stdout = os.dup(proc.stdout.fileno())
            proc.stdout.close()
        if stdout is not None:   # else it goes to a device of the node
            if self.output is not None:
                self._threads.append(self.output.pump(stdout, eof=False))
            else:
                self._threads.append(self._copy_to_log(stdout, "stdout"))
        stderr = os.dup(proc.stderr.fileno())
        proc.stderr.close()
        self._threads.append(self._copy_to_log(stderr, "stderr"))

    @property
    def refused(self) -> int:
        """Input frames dropped because their MAC failed (forged, altered, or from another link)."""
        return self.reader.refused if self.reader is not None else 0

    def _refused(self) -> None:
        if self.on_refused is not None:
            self.on_refused()

    def _copy_to_log(self, fd: int, what: str) -> threading.Thread:
        def copy() -> None:
            try:
                while True:
                    data = os.read(fd, 65536)
                    if not data:
                        return
                    self._write_log(data)
            except OSError:
                return
            finally:
                os.close(fd)
        thread = threading.Thread(target=copy, name=f"{self.key} {what}", daemon=True)
        thread.start()
        return thread

    def _write_log(self, data: bytes) -> None:
        with self._log_lock:
            self._log_file.write(data)
            if self.log is None:
                return
            try:
                self.log.write(data)
            except Exception as exc:  # noqa: BLE001 - the local file still has it
                log.debug("%s: log topic: %s", self.key, exc)

    def log_line(self, text: str) -> None:
        """A line about the agent, from OneOS, in its log."""
        self._write_log(text.encode("utf-8", "replace") + b"\n")

    def exited(self, final: bool) -> None:
        """The process ended: send its last output and log bytes; end its stdout stream if `final`."""
        for thread in self._threads:
            thread.join(FLUSH_S)
        if self.output is not None:
            try:
                if final and not self.output.closed:
                    self.output.finish()
                self.output.flush(FLUSH_S)
            finally:
                self.output.close()
        if self.reader is not None:
            self.reader.stop()
            try:
                self.reader.unsubscribe(self.client)
            except Exception as exc:  # noqa: BLE001 - only storage is at stake
                log.debug("%s: unsubscribe: %s", self.key, exc)
        try:
            if self.log is not None:
                self.log.finish()
                self.log.flush(FLUSH_S)
        finally:
            if self.log is not None:
                self.log.close()
            self._log_file.close()

    def readers_gone(self) -> None:
        """Every agent reading this one has ended: close its stdout so it gets SIGPIPE, as in a shell."""
        if self.output is not None and not self.to_output and not self.output.closed:
            log.info("%s: every reader has ended; closing its stdout", self.key)
            self.output.close()

    def stop(self) -> None:
        """Stop moving bytes now (the agent is being stopped)."""
        if self.reader is not None:
            self.reader.stop()
