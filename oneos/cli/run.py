"""`oneosctl run 'PIPELINE'`: a shell pipeline run across the cluster, as bash would run it here.

It compiles the one-liner, applies it as a pipeline served by this client, feeds it this
process's stdin (or the `< file`), copies the last stage's stdout to this stdout (or the
`> file`) byte for byte and every stage's stderr to this stderr (or its `2> file`), waits
for the last stage to end, deletes the pipeline and exits with the last stage's status,
as bash does. On a terminal, one progress line shows placement and start-up until the
first output arrives, and the last stage's stdout is a pseudo-terminal on its node (as in
bash, `grep` and `tr` then write each line as it comes).

It never hangs: Ctrl-C, SIGTERM and SIGHUP delete the pipeline and exit 128+signal as
bash does; a pipeline deleted elsewhere ends the run with one line; a stage that cannot
be placed says why at once, and `--timeout` bounds how long it may stay so. Stopping is
bounded (CLEANUP_S): everything that waits on the broker or the Name Server stops at once,
in parallel, and a signal that lands in a blocking call cuts the call short.

The main thread waits on one queue of events: the statuses of the run's agents and the
pipeline's own key, each followed by a Watch in a thread of its own. A signal raises
Interrupted in the main thread (once; later ones are noted and ignored), so whatever it
is doing stops, and the cleanup runs.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable

from oneos import manifests, state
from oneos.bus import client as bus_client
from oneos.bus import topics
from oneos.bus.reader import StreamReader
from oneos.bus.writer import StreamWriter
from oneos.cli.output import Sink
from oneos.compiler import compile_pipeline
from oneos.documents import DocumentError
from oneos.durations import format_ns
from oneos.errors import OneOSError
from oneos.nameserver.client import NameServer
from oneos.nameserver.watch import Watch

LOG_DRAIN_S = 5.0
CLEANUP_S = 5.0        # at most this long from the end (or a signal) to the exit
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SIGNAL_CHECK_S = 0.25  # the longest the main thread blocks at a time, so that a signal's handler runs


class Interrupted(BaseException):
    """A signal asked the run to stop (raised once, in the main thread, as Ctrl-C's KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class RunStopped(OneOSError):
    """The run cannot go on (its pipeline was deleted elsewhere, a stage stayed Pending): say why, exit 1."""


def _say(line: str) -> None:
    """One line on stderr; a terminal that is gone (SIGHUP) is not an error of the run."""
    try:
        print(f"oneosctl: {line}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def mark_tty(manifest: dict[str, Any]) -> None:
    """The stages whose stdout is this terminal write to a pseudo-terminal on their node (stdout.tty)."""
    for agent in manifest["spec"]["agents"]:
        out = agent.get("stdout")
        if out is not None and "file" not in out and "device" not in out:
            out["tty"] = True


def unplaced(status: dict[str, Any] | None) -> bool:
    """Whether a stage waits for a node: no status yet, or Pending."""
    return not status or status.get("state") == "Pending"


class Patience:
    """`--timeout`: how long a stage may wait for a node.

    Each stage counts from the start of the run, or from when it became Pending again (its
    node was lost); a stage that is placed stops counting. Times are the caller's clock.
    """

    def __init__(self, limit: float, stages: list[str], now: float) -> None:
        self.limit = limit
        self.since: dict[str, float | None] = {stage: now for stage in stages}

    def observe(self, statuses: dict[str, dict[str, Any]], now: float) -> None:
        """Take the stages' statuses (stage -> status) as of `now`."""
        for stage, since in self.since.items():
            if not unplaced(statuses.get(stage)):
                self.since[stage] = None
            elif since is None:
                self.since[stage] = now

    def deadline(self) -> float | None:
        """When the first waiting stage runs out of patience; None while every stage is placed."""
        waiting = [since for since in self.since.values() if since is not None]
        return min(waiting) + self.limit if waiting else None

    def expired(self, now: float) -> list[str]:
        """The stages that have waited `limit` or longer, in order."""
        return [stage for stage, since in self.since.items() if since is not None and now - since >= self.limit]


class Progress:
    """One line on a terminal's stderr, rewritten in place; silent elsewhere."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.shown = False

    def show(self, text: str) -> None:
        if self.enabled:
            self._write("\r\x1b[K" + text)
            self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.shown = False
            self._write("\r\x1b[K")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):   # the terminal is gone (SIGHUP)
            self.enabled = False


def _open(path: str, append: bool, cwd: Path) -> BinaryIO:
    return open(cwd / path, "ab" if append else "wb")


class Run:
    """One `oneosctl run`: the pipeline, its streams, and the wait for its last stage."""

    def __init__(self, ns: NameServer, line: str, *, cwd: Path, stdin_fd: int, stdout: BinaryIO,
                 stderr: BinaryIO, progress: Progress, verbose: bool = False, timeout: float | None = None,
                 tty: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.ns = ns
        self.cwd = cwd
        self.stdin_fd = stdin_fd
        self.stdout = stdout
        self.stderr = stderr
        self.progress = progress
        self.name = f"run-{uuid.uuid4().hex[:10]}"
        self.manifest = compile_pipeline(line, name=self.name, base_dir=cwd, devices=state.read_devices(ns))
        if tty:
            mark_tty(self.manifest)
        self.client = None
        self.readers: list[StreamReader] = []
        self.log_readers: dict[tuple[str, int], StreamReader] = {}
        self.writers: list[StreamWriter] = []
        self.watches: list[Watch] = []
        self.files: list[BinaryIO] = []
        self.applied = False
        self.verbose = verbose
        self.timeout = timeout
        self.clock = clock
        self.placement_told = False
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.signalled: int | None = None
        self.stopping = False          # the cleanup began (or a signal came): signals are only noted
        self.pulsar_log = _pulsar_logger()

    def on_signal(self, signum: int, _frame: Any) -> None:
        """SIGINT, SIGTERM, SIGHUP: stop, once (see the module's doc)."""
        if self.signalled is None:
            self.signalled = signum
            # What the client library says from now on is about the calls this cut short.
            self.pulsar_log.disabled = True
            if not self.stopping:
                self.stopping = True
                raise Interrupted(signum)

    def execute(self) -> int:
        boot = state.read_boot(self.ns)
        self.namespace = boot["pulsar"]["namespace"]
        # Before the apply: a token or a certificate that does not fit leaves nothing behind.
        self.client = bus_client.connect(bus_client.access(boot["pulsar"]), logger=self.pulsar_log)
        # From here on the cleanup deletes the pipeline, even if a signal cuts the apply short.
        self.applied = True
        done = manifests.apply_pipeline(self.ns, self.manifest, self.cwd, attached=True)
        self.uid = done.manifest["metadata"]["uid"]
        self.frame_key = state.read_pipe_key(self.ns, self.name, self.uid)   # its stdin and stdout carry MACs
        agents = done.manifest["spec"]["agents"]
        self._follow(Watch.key(self.ns, state.pipeline_key(self.name), retry=False), self._pipeline_event)
        self._follow(Watch.tree(self.ns, f"{state.STATUS}{self.name}.", retry=False), lambda entries: ("statuses", entries))
        self._serve_stdout(agents)
        self._serve_stdin(agents)
        last = next(a["name"] for a in agents if "stdout" in a)
        status = self._wait(agents, last)
        return status.get("exitCode", 1)

    def _follow(self, watch: Watch, event: Callable[[Any], tuple[str, Any] | None]) -> None:
        """Put what `watch` yields on the event queue, from a thread of its own, until it closes."""
        def follow() -> None:
            try:
                for _, result in watch:
                    found = event(result)
                    if found is not None:
                        self.events.put(found)
            except Exception as exc:  # noqa: BLE001 - the main thread raises it: the run ends with its message
                if not watch.closed:
                    self.events.put(("error", exc))
        self.watches.append(watch)
        threading.Thread(target=follow, name=f"watch {watch.what}", daemon=True).start()

    def _pipeline_event(self, entry: Any) -> tuple[str, Any] | None:
        if entry is None:
            return ("gone", f"pipeline {self.name} was deleted elsewhere; stopping")
        try:
            uid = state.decode(entry, "pipeline")["metadata"].get("uid")
        except OneOSError:
            uid = None
        if uid != self.uid:
            return ("gone", f"pipeline {self.name} was replaced elsewhere; stopping")
        return None

    def _serve_stdout(self, agents: list[dict[str, Any]]) -> None:
        for agent in agents:
            if "stdout" not in agent or "device" in agent["stdout"]:
                continue
            spec = agent["stdout"]
            target = self.stdout
            if "file" in spec:
                target = _open(spec["file"], spec.get("append", False), self.cwd)
                self.files.append(target)
            # This stdout closed (`oneosctl run yes | head -1`): the run ends, as SIGPIPE ends a program.
            on_closed = (lambda: self.events.put(("closed", None))) if target is self.stdout else None
            reader = StreamReader(self.client, [topics.output_topic(self.namespace, self.uid, agent["name"])],
                                  "oneosctl-run", name=f"{self.name}.{agent['name']}.out",
                                  on_data=Sink(target, self.progress.clear), on_closed=on_closed,
                                  key=self.frame_key)
            # Kept before it starts: a signal between the two would leave a reader the cleanup does not stop.
            self.readers.append(reader)
            reader.start()

    def _serve_stdin(self, agents: list[dict[str, Any]]) -> None:
        for agent in agents:
            if "stdin" not in agent or "device" in agent["stdin"]:
                continue
            writer = StreamWriter(self.client, [topics.input_topic(self.namespace, self.uid, agent["name"])], 0,
                                  name=f"{self.name}.{agent['name']}.in", key=self.frame_key)
            self.writers.append(writer)
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
                                  on_data=Sink(target, self.progress.clear))
            self.log_readers[(agent["name"], incarnation)] = reader   # kept first, as in _serve_stdout
            reader.start()

    def _wait(self, agents: list[dict[str, Any]], last: str) -> dict[str, Any]:
        """Until the last stage is done for good and its output has all arrived; its status.

        RunStopped when the pipeline goes away, or when a stage waits for a node past --timeout.
        """
        last_key = state.agent_id(self.name, last)
        told: set[str] = set()
        statuses: dict[str, dict[str, Any]] = {}
        final: dict[str, Any] = {}
        stages = [a["name"] for a in agents]
        patience = Patience(self.timeout, stages, self.clock()) if self.timeout is not None else None
        while True:
            if self.signalled is not None:
                # The handler ran, but its exception was caught on its way (a library call it cut short
                # turned it into an error of its own, which a retry loop took): the run still stops.
                raise Interrupted(self.signalled)
            done = final.get("state") in state.FINAL_STATES
            if done and all(r.finished.is_set() for r in self.readers):
                break
            # The last stage's status can come before the end of its output: look again soon. Never
            # wait without a bound: a signal the kernel hands to another thread (the Pulsar client's)
            # does not wake this one from a lock, and its handler runs only once this thread runs.
            wait = 0.2 if done else SIGNAL_CHECK_S
            deadline = patience.deadline() if patience else None
            if deadline is not None:
                left = max(0.0, deadline - self.clock())
                wait = left if wait is None else min(wait, left)
            try:
                kind, value = self.events.get(timeout=wait)
            except queue.Empty:
                kind, value = "", None
            if kind == "error":
                raise value
            if kind == "gone":
                raise RunStopped(value)
            if kind == "closed":
                raise BrokenPipeError("the reader of this stdout has gone")   # oneosctl exits 141, quietly
            if kind == "statuses":
                statuses = _readable(value)
                self._follow_logs(agents, statuses)
                self._report_progress(agents, statuses, told)
                final = statuses.get(last_key, {})
            if patience is not None:
                now = self.clock()
                by_stage = {stage: statuses.get(state.agent_id(self.name, stage)) for stage in stages}
                patience.observe(by_stage, now)
                late = patience.expired(now)
                if late:
                    raise RunStopped("; ".join(self._still_pending(stage, by_stage.get(stage)) for stage in late))
        self.progress.clear()
        self._drain_logs(statuses)
        for reader in self.readers:
            if reader.error:
                _say(f"output of {self.name} was cut short: {reader.error}")
        return final

    def _still_pending(self, stage: str, status: dict[str, Any] | None) -> str:
        waited = format_ns(int(self.timeout * 1e9))
        why = (status or {}).get("reason") or "no controller has placed it yet (is a node leading? see oneosctl get nodes)"
        return f"stage {stage} still pending after --timeout {waited}: {why}"

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
                if line not in told:
                    # Say at once, once, why nothing happens (a node may still join: the run waits).
                    told.add(line)
                    self.progress.clear()
                    _say(line)
        total = len(agents)
        placed = [statuses.get(state.agent_id(self.name, a["name"]), {}).get("node") for a in agents]
        if self.verbose and not self.placement_told and all(placed):
            self.placement_told = True
            where = ", ".join(f"{a['name']} on {node}" for a, node in zip(agents, placed))
            _say(f"{self.name} placed: {where}")
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
        """Delete the pipeline and let go of everything, all at once, in at most about CLEANUP_S."""
        self.stopping = True
        # What the client library says from here on is about closing what it may have closed already
        # (a producer closed with the client: AlreadyClosed): not news for the user.
        self.pulsar_log.disabled = True
        deadline = time.monotonic() + CLEANUP_S
        self.progress.clear()
        for watch in self.watches:
            watch.close()
        readers = self.readers + list(self.log_readers.values())
        for reader in readers:
            reader.stop(timeout=0)      # only says stop: each ends within its poll, or at the client's close
        work = [_background(w.close, CLEANUP_S, f"close {w.name}") for w in self.writers]
        if self.applied:
            work.append(_background(self._delete, None, "delete"))
        # A reader in a blocking call of the client gets out of it when the client closes.
        readers_deadline = min(deadline, time.monotonic() + 1.0)
        for reader in readers:
            reader.wait(max(0.0, readers_deadline - time.monotonic()))
        if self.client is not None:
            work.append(_background(bus_client.close, self.client, "close the Pulsar client"))
        for thread in work:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() and thread.name == "delete" for thread in work):
            _say(f"the Name Server did not confirm that {self.name} is deleted; check with "
                 f"`oneosctl get pipelines` (delete it with `oneosctl delete pipeline {self.name}`)")
        for f in self.files:
            try:
                f.close()
            except OSError:
                pass

    def _delete(self, _: Any) -> None:
        ns = self.ns.clone()    # not the main thread's client: a signal may have cut a request of it short
        try:
            manifests.delete_pipeline(ns, self.name)
        except Exception as exc:  # noqa: BLE001 - said in one line, not as a thread's traceback
            _say(f"could not delete {self.name}: {exc}; delete it with `oneosctl delete pipeline {self.name}`")
        finally:
            ns.close()


def _pulsar_logger() -> logging.Logger:
    """Where the Pulsar client library's warnings go: stderr, as `oneosctl: pulsar: ...` lines."""
    logger = logging.getLogger("oneos.run.pulsar")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("oneosctl: pulsar: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    logger.disabled = False
    return logger


def _background(work: Callable[[Any], Any], arg: Any, name: str) -> threading.Thread:
    """Start `work(arg)` in a daemon thread: the exit does not wait for it past the cleanup's bound."""
    thread = threading.Thread(target=work, args=(arg,), name=name, daemon=True)
    thread.start()
    return thread


def run(ns: NameServer, line: str, *, verbose: bool = False, timeout: float | None = None) -> int:
    """Run the pipeline; the exit status of its last stage (128+N after signal N, 1 when stopped)."""
    job = Run(ns, line, cwd=Path.cwd(), stdin_fd=sys.stdin.fileno(), stdout=sys.stdout.buffer,
              stderr=sys.stderr.buffer, progress=Progress(sys.stderr), verbose=verbose, timeout=timeout,
              tty=sys.stdout.isatty())
    previous = {sig: signal.signal(sig, job.on_signal) for sig in SIGNALS}
    try:
        try:
            return job.execute()
        except RunStopped as stopped:
            job.stopping = True
            job.progress.clear()
            _say(str(stopped))
            return stopped.exit_code
        except BaseException:
            # A signal may come out of a blocking call as the call's own error (pulsar.Interrupted).
            if job.signalled is None:
                raise
            return 128 + job.signalled
        finally:
            try:
                job.cleanup()
            except Interrupted:
                # The signal came after execute() returned, before the cleanup's first line: a handler
                # raises only until the cleanup begins, and only once, so nothing of it ran, and now runs.
                job.cleanup()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _readable(entries: list[Any]) -> dict[str, dict[str, Any]]:
    """agent id -> status, of the entries that can be read (an unreadable one is rewritten by its node)."""
    statuses = {}
    for entry in entries:
        try:
            statuses[entry.key[len(state.STATUS):]] = state.decode(entry, "status")
        except DocumentError:
            pass
    return statuses
