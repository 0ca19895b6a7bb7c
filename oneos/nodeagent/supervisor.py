"""The node agent's supervisor: runs the agents assigned to this node and reports on them.

It watches `oneos/assign/<node>/` with blocking queries. Each assigned agent gets an
AgentRunner: a thread that prepares the agent's private working directory (with its
shipped files), starts the process from its argv (never through a shell), bridges its
stdin/stdout/stderr to Pulsar (bridge.py), restarts it per its restart policy, and
writes `oneos/status/<pipeline>.<agent>`. An assignment that disappears is stopped, and
its working directory and log files (logfiles.py) are removed.

Fencing: an agent runs in at most one place. Every status write (and so every start) is
a transaction that checks that this node still holds its membership session and that the
assignment is still here, at the index the runner knows. When either check fails, the
controller has written this node off (or moved the agent): the runner stops its process
at once. A write that cannot reach the Name Server is tried again, with backoff, for as
long as the node holds its session (a restart of the Name Server is no reason to kill
anything); only the node's session watchdog fences on an outage: when the node cannot
renew its session for most of a TTL, `suspend()` stops every agent before the cluster
can declare the node dead; `resume()` starts what is
still assigned here once the node is back. The bytes of a written-off copy are fenced
off downstream by the assignment's epoch (see oneos/bus/frames.py).

Trust: a node runs only an assignment signed by a kernel node's registered key (oneos/keys/,
watched and kept at hand; see `Supervisor.distrust`): one that is unsigned, signed by a node
that is not a kernel node, by a key not registered, or altered after it was signed runs
nothing; the node says so in one log line and in the agent's status (Failed, with why; not
over another node's status), and removes that status once the assignment is gone. The
pipeline's frame key comes sealed to this node's key in the assignment (`frameKey`): the
node opens it with its identity, and never reads oneos/pipekeys/. Statuses it writes are
signed by its key; it acts on another's status (a reader finished: close the writer's stream)
or on its own earlier one (finished: not run again) only when the node it names, or a
kernel node, signed it (`status_trusted`): any node's token may write any status.

Names that become paths: an assignment's key (PIPELINE.AGENT) names the agent's working
directory and log files, and its shipped files' names files in that directory. Each goes
through oneos.paths.inside before anything touches the disk: a key that is not an agent id
or would lead out of the node's folders is refused with one log line and nothing is run or
touched; a shipped file name that would is refused with the agent's status Failed.

An agent's environment is built, not inherited: a few variables of this process that
programs expect (PASSED: PATH, HOME, the locale...), the node's settings (`agent_env`: a
simulated GPIO board, the broker's data folder under --dev), the agent's own, and OneOS's
names (ONEOS_NODE...). Never the node's Name Server token or credentials (ONEOS_TOKEN,
CONSUL_HTTP_TOKEN, a client key): agents hold nothing. Kernel agents, the cluster's own
services from the init manifest, get this process's whole environment and the node's token.
The node agent never changes its own environment to pass something on. Agents die with
the node agent, even by SIGKILL (oneos/children.py).

Sandbox (sandbox.py): an agent runs as the node's agent user, in a working directory of mode
0700 that is that user's (its shipped files and device FIFOs too), with HOME there; its
resources.memory and cpu are limits. Kernel agents run as the node's user.
"""

from __future__ import annotations

import logging
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from oneos import children, state
from oneos.bus import frames
from oneos.documents import DocumentError
from oneos.errors import OneOSError
from oneos.identity import Identity, IdentityError, signer
from oneos.nameserver.client import NameServer, NameServerError, NameServerUnreachable, TxnConflict, kv_op
from oneos.nameserver.watch import Watch
from oneos.nodeagent import logfiles
from oneos.nodeagent.devices import DeviceError, DeviceServer
from oneos.nodeagent.restart import RestartPolicy
from oneos.nodeagent.sandbox import Sandbox, open_folder, private_folder
from oneos.paths import PathEscape, inside
from oneos.service import Service, stop_all

if TYPE_CHECKING:
    from oneos.nodeagent.bridge import Bridge

log = logging.getLogger("oneos.nodeagent")

STOP_GRACE_S = 5.0
REFUSED_REPORT_S = 1.0    # at most this often, a running agent's count of refused input frames is written
WRITE_RETRY_S = 0.25       # the first wait before a status write is tried again (the Name Server out of reach)
WRITE_RETRY_MAX_S = 2.0    # ... doubling up to this
#: An agent id, PIPELINE.AGENT, both names as common.schema.json's `name`: what may be swept.
_AGENT_ID = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\.[a-z0-9]([-a-z0-9]*[a-z0-9])?")
#: How the status of an assignment this node refuses to run begins (it is no run of the agent).
REFUSED = "refused: the assignment is not signed by a kernel node's registered key"
#: What an agent that is not a kernel agent gets of the node's own environment: what programs
#: expect to find (the locale: LC_* too; where the machine keeps its CA certificates), nothing
#: that lets it act as the node. A proxy setting may hold a password: not passed.
PASSED = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR",
          "SSL_CERT_FILE", "SSL_CERT_DIR")
PASSED_PREFIXES = ("LC_",)
#: How to reach a Name Server that speaks TLS (where it is, which CA to trust): no secret.
#: CONSUL_HTTP_TOKEN(_FILE), CONSUL_HTTP_AUTH, CONSUL_CLIENT_CERT/KEY are credentials: never passed.
PASSED_TLS = ("CONSUL_HTTP_ADDR", "CONSUL_HTTP_SSL", "CONSUL_CACERT", "CONSUL_CAPATH", "CONSUL_TLS_SERVER_NAME",
              "CONSUL_HTTP_SSL_VERIFY")


#: Of the node's own environment, what even a kernel agent does not get: the join token it enrolled with.
NOT_FOR_KERNEL_AGENTS = ("ONEOS_JOIN_TOKEN", "ONEOS_JOIN_TOKEN_FILE")


def _start_error(program: str, exc: OSError) -> tuple[int, str]:
    """Why a program could not start, with bash's status: 127 not found, 126 not executable."""
    if isinstance(exc, FileNotFoundError):
        return 127, f"{program}: command not found"
    if isinstance(exc, PermissionError):
        return 126, f"{program}: permission denied"
    return 126, f"{program}: {exc.strerror}"


def open_pty() -> tuple[int, int]:
    """A pseudo-terminal in raw mode, (master, slave): what is written to the slave is read
    from the master unchanged (no \\n -> \\r\\n, no echo, no signal characters), as from a pipe."""
    master, slave = pty.openpty()
    try:
        tty.setraw(slave)
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    return master, slave


def exit_status(returncode: int) -> int:
    """A Popen return code as bash reports it: 128+N after signal N."""
    return 128 - returncode if returncode < 0 else returncode


class AgentRunner(Service):
    """One assigned agent: its process, restarts, bridge and status, in a thread of its own."""

    def __init__(self, sup: "Supervisor", key: str, assignment: dict[str, Any], index: int) -> None:
        super().__init__(f"agent {key}")
        self.sup = sup
        self.key = key
        self.assignment = assignment
        self.index = index           # the assignment's ModifyIndex: status writes check it is unchanged
        self.epoch = assignment["epoch"]
        self.fenced = False          # this node may no longer run the agent
        self.spec = assignment["agent"]
        self.workdir = inside(sup.workdir, key, what="assignment key")   # the supervisor checked it
        self.proc: subprocess.Popen | None = None
        self.bridge = None
        self.frame_key: bytes | None = None   # its pipeline's key: the MACs of its stdin and stdout frames
        self.status: dict[str, Any] = {}
        self._thread: threading.Thread | None = None

    # -- lifecycle: stop() sends SIGTERM to the process group, SIGKILL after a grace period ----

    def _launch(self) -> None:
        self._thread = self.spawn(self._run, "run")

    def _interrupt(self) -> None:
        self._signal(signal.SIGTERM)
        if self.bridge:
            self.bridge.stop()

    def join(self) -> None:
        """Wait until the runner has ended; a process still running STOP_GRACE_S after SIGTERM gets SIGKILL."""
        thread = self._thread
        if self.stopping.is_set() and thread is not None and thread is not threading.current_thread():
            thread.join(STOP_GRACE_S)
            if thread.is_alive():
                self._signal(signal.SIGKILL)
        super().join()

    def _signal(self, sig: int) -> None:
        if self.proc is not None:
            children.signal_group(self.proc, sig)

    def same_work(self, assignment: dict[str, Any]) -> bool:
        return state.same_work(self.assignment, assignment) and self.epoch == assignment.get("epoch")

    def _run(self) -> None:
        try:
            self._supervise()
        except (NameServerUnreachable, NameServerError) as exc:
            log.error("%s: %s", self.key, exc)
        except Exception:  # noqa: BLE001 - reported, never silently lost
            log.exception("%s: supervision failed", self.key)

    def _supervise(self) -> None:
        previous = self._previous_status()
        same = previous.get("uid") == self.assignment["uid"]
        if (same and previous.get("state") in state.FINAL_STATES and previous.get("node") == self.sup.node_id
                and previous.get("epoch") == self.epoch and previous.get("generation") == self.assignment["generation"]
                and not previous.get("reason", "").startswith(REFUSED)):
            log.info("%s: already %s here (exit status %s); not running it again", self.key,
                     previous["state"], previous.get("exitCode"))
            self.status = previous
            return
        incarnation = previous.get("incarnation", 0) if same else 0
        restarts = previous.get("restarts", 0) if same else 0
        try:
            if not self.kernel:
                self.frame_key = self._open_frame_key()
            self._prepare_workdir()
        except (OneOSError, OSError) as exc:
            why = str(exc) if isinstance(exc, OneOSError) else f"cannot prepare its working directory: {exc}"
            log.error("%s: not started: %s", self.key, why)
            self._report("Failed", reason=f"not started: {why}", finishedAt=state.utcnow(), pid=None)
            return
        policy = RestartPolicy(self.spec)
        while not self.stopping.is_set():
            incarnation += 1
            policy.started(time.monotonic())
            self._report("Starting", incarnation=incarnation, restarts=restarts, startedAt=state.utcnow())
            if self.stopping.is_set():
                return   # fenced: this node may no longer run it
            code, error, decision = self._run_once(incarnation, restarts, policy)
            if self.stopping.is_set():
                return
            if error is not None:
                # Could not even start it (e.g. command not found): as bash, 127/126; not retried.
                self._report("Failed", exitCode=code, reason=error, finishedAt=state.utcnow(), pid=None)
                return
            if not decision.restart:
                final = "Failed" if decision.reason else "Exited"
                self._report(final, exitCode=code, reason=decision.reason or None, finishedAt=state.utcnow(),
                             pid=None)
                return
            restarts += 1
            self._report("Restarting", exitCode=code, restarts=restarts, pid=None,
                         reason=f"exited with status {code}; starting again in {decision.delay:g}s")
            if self.stopping.wait(decision.delay):
                return

    def _run_once(self, incarnation: int, restarts: int, policy: RestartPolicy) -> tuple[int, str | None, Any]:
        """Start the process, bridge it, wait for it to end: (exit status, start error, restart decision)."""
        bridge = self._bridge(incarnation)
        if bridge is None:
            return 0, None, None   # stopped while waiting for the bus
        self.bridge = bridge
        argv = list(self.spec["run"])
        env = self._environment(incarnation)
        started = time.monotonic()
        served = DeviceServer(self.workdir, self.sup.devices, env,
                              owner=None if self.kernel else self.sup.sandbox.own)
        terminal: int | None = None      # the master side of the process's stdout, when it is a pseudo-terminal
        try:
            required = self.spec.get("requires", {}).get("devices", [])
            argv = served.argv(argv, required)
            stdin_device = self.spec.get("stdin", {}).get("device")
            stdout_device = self.spec.get("stdout", {}).get("device")
            if stdout_device:
                stdout = served.stdout(stdout_device)
            elif self.spec.get("stdout", {}).get("tty"):
                # As on the terminal of `oneosctl run`: the process sees a terminal and writes each line.
                terminal, stdout = open_pty()
            else:
                stdout = subprocess.PIPE
            try:
                confine, limits = self.sup.sandbox.confinement(self.key, self.spec, as_node=self.kernel)
                self.proc = children.spawn(argv, cwd=self.workdir, env=env, confine=confine,
                                           stdin=served.stdin(stdin_device) if stdin_device else bridge.stdin_mode(),
                                           stdout=stdout, stderr=subprocess.PIPE)
            finally:
                if terminal is not None:
                    os.close(stdout)   # the child's end: once the child's copies close, reading gives EIO
            if self.stopping.is_set():
                self._signal(signal.SIGTERM)   # stopped while it was starting: cancel() saw no process
        except (OSError, DeviceError, PathEscape) as exc:
            if terminal is not None:
                os.close(terminal)
            served.close()
            self.sup.sandbox.ended(self.key)
            code, message = _start_error(argv[0], exc) if isinstance(exc, OSError) else (126, str(exc))
            bridge.log_line(f"oneos: {message}")
            bridge.exited(final=True)
            return code, message, None
        served.after_start()
        # Its bytes flow before its status says Running: that write may wait out a Name Server outage.
        bridge.attach(self.proc, stdout=terminal)
        self._report("Running", pid=self.proc.pid, incarnation=incarnation, restarts=restarts, limits=limits or None)
        code = exit_status(self._wait(bridge))
        served.close()
        self.sup.sandbox.ended(self.key)
        decision = policy.after_exit(code, time.monotonic() - started, time.monotonic())
        # The stream ends (EOF) only when the agent ended by itself for good: a process stopped
        # by OneOS (unassigned, changed, fenced) leaves its stream open for whoever runs next.
        bridge.exited(final=not decision.restart and not self.stopping.is_set())
        return code, None, decision

    def _open_frame_key(self) -> bytes:
        """Its pipeline's frame key, which the controller sealed to this node's key in the assignment: only
        the nodes its agents run on can read it. OneOSError saying why when it cannot be had."""
        pipeline, uid = self.assignment["pipeline"], self.assignment["uid"]
        sealed = self.assignment.get("frameKey")
        if sealed is None:
            raise DocumentError(f"its assignment carries no frame key for this node (is the pipeline's key "
                                f"{state.pipekey_key(pipeline, uid)} missing?); apply the pipeline again")
        if self.sup.identity is None:
            raise OneOSError("this node has no key to open its pipeline's frame key with")
        try:
            key = self.sup.identity.open(sealed, state.frame_key_context(pipeline, uid))
        except IdentityError as exc:
            raise OneOSError(f"its pipeline's frame key cannot be opened: {exc}; the controller seals it again "
                             "when the agent is placed again") from None
        if len(key) != 32:
            raise OneOSError(f"its pipeline's frame key has {len(key)} bytes, not 32; apply the pipeline again")
        return key

    def _wait(self, bridge: "Bridge") -> int:
        """Wait for the process to end; meanwhile put the count of refused input frames (failed MACs)
        into its status, at most once a second, from this thread like every other status write."""
        if bridge.reader is None:
            return self.proc.wait()
        base = self.status.get("refusedFrames", 0)
        wake, ended = threading.Event(), threading.Event()
        bridge.on_refused = wake.set

        def wait() -> None:
            self.proc.wait()
            ended.set()
            wake.set()
        waiter = threading.Thread(target=wait, name=f"{self.key} wait", daemon=True)
        waiter.start()
        reported = base
        while True:
            wake.wait()
            wake.clear()
            if ended.is_set():
                break
            total = base + bridge.refused
            if total != reported and not self.stopping.is_set():
                self._report("Running", refusedFrames=total)
                reported = total
            ended.wait(REFUSED_REPORT_S)
        waiter.join()
        bridge.on_refused = None
        if base + bridge.refused:
            self.status["refusedFrames"] = base + bridge.refused   # written with the next state
        return self.proc.returncode

    @property
    def kernel(self) -> bool:
        """A kernel agent: marked so by its assignment, on a kernel node. On any other node the mark
        is ignored (the controller places kernel agents on kernel nodes only): written there by
        someone else, it would otherwise hand that agent the node's environment and token."""
        return bool(self.assignment.get("kernel")) and self.sup.kernel_node

    def _environment(self, incarnation: int) -> dict[str, str]:
        """The agent's environment: what it may have of this process's (all of it for a kernel agent,
        see PASSED), the node's settings, the agent's own, then OneOS's names."""
        if self.kernel:
            # All but what lets a runtime in: a kernel agent acts as this node, it enrolls no one.
            env = {name: value for name, value in os.environ.items() if name not in NOT_FOR_KERNEL_AGENTS}
        else:
            env = {name: value for name, value in os.environ.items()
                   if name in PASSED or name in PASSED_TLS or name.startswith(PASSED_PREFIXES)}
        env.update(self.sup.agent_env)
        # OneOS's own commands (oneos-broker, oneos-gpio) are found next to this Python.
        bindir = os.path.dirname(sys.executable)
        if bindir not in env.get("PATH", "").split(os.pathsep):
            env["PATH"] = os.pathsep.join(p for p in (bindir, env.get("PATH", "")) if p)
        user = None if self.kernel else self.sup.sandbox.user
        if user is not None:
            # The node's HOME is not the agent user's (nor open to it): its working directory is its home.
            env.update(HOME=str(self.workdir), USER=user.name, LOGNAME=user.name)
        env.update(self.spec.get("env", {}))
        env.update({"ONEOS_NODE": self.sup.node_id, "ONEOS_PIPELINE": self.assignment["pipeline"],
                    "ONEOS_AGENT": self.spec["name"], "ONEOS_INCARNATION": str(incarnation),
                    "ONEOS_NAMESERVER": self.sup.ns.url})
        if self.kernel:
            # Kernel agents are the cluster's own services: they keep their data in the node's folder
            # (the broker), and act with the node's Name Server token.
            env["ONEOS_DATA_DIR"] = str(self.sup.workdir.parent)
            if self.sup.ns.token:
                env["ONEOS_TOKEN"] = self.sup.ns.token
        return env

    def _bridge(self, incarnation: int) -> "Bridge | None":
        """The stdio bridge of this start; while the message bus is unreachable, keep trying (None: stopped)."""
        from oneos.nodeagent.bridge import Bridge   # with it the Pulsar client library: only once an agent runs
        wire = frames.incarnation(self.epoch, incarnation)
        if self.kernel:
            # Kernel agents (the broker itself among them) do without the bus: local log only.
            return Bridge(None, self.sup.namespace, self.key, self.assignment, incarnation, self.sup.log_dir,
                          wire=wire, log_limits=self.sup.log_limits)
        delay, told = 0.5, False
        while not self.stopping.is_set():
            try:
                return Bridge(self.sup.bus(), self.sup.namespace, self.key, self.assignment, incarnation,
                              self.sup.log_dir, wire=wire, log_limits=self.sup.log_limits,
                              frame_key=self.frame_key)
            except Exception as exc:  # noqa: BLE001 - pulsar raises its own exception types
                if not told:
                    log.warning("%s: waiting for the message bus before starting it: %s", self.key, exc)
                    self._report("Starting", reason=f"waiting for the message bus: {exc}")
                    told = True
                self.stopping.wait(delay)
                delay = min(delay * 2, 5.0)
        return None

    # -- files and status -------------------------------------------------

    def _prepare_workdir(self) -> None:
        """The working directory with the shipped files in it; every name is checked before any is written
        (PathEscape), and a file is written beside its place and renamed over it (never through a link)."""
        targets = {name: inside(self.workdir, name, what="shipped file") for name in self.assignment["files"]}
        own = None if self.kernel else self.sup.sandbox.own
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, 0o700)
            if own is not None:
                own(fd)
        finally:
            os.close(fd)
        for name, digest in self.assignment["files"].items():
            target = targets[name]
            data = self.sup.ns.get_raw(state.blob_key(digest))
            if data is None:
                raise DocumentError(f"shipped file {name} (blob {digest[:12]}) is missing from the "
                                    "Name Server; apply the pipeline again")
            # Through descriptors, following no link: the folder is the agent's (see sandbox.open_folder).
            folder = open_folder(self.workdir, target.relative_to(self.workdir).parent.parts, own)
            try:
                tmp = f".{target.name}.oneos-tmp"
                try:
                    os.unlink(tmp, dir_fd=folder)
                except FileNotFoundError:
                    pass
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755, dir_fd=folder)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    os.fchmod(f.fileno(), 0o755)
                    if own is not None:
                        own(f.fileno())
                os.replace(tmp, target.name, src_dir_fd=folder, dst_dir_fd=folder)
            finally:
                os.close(folder)

    def _previous_status(self) -> dict[str, Any]:
        _, entry = self.sup.ns.get(state.status_key(self.key))
        if entry is None:
            return {}
        try:
            previous = state.decode(entry, "status")
        except DocumentError:
            return {}
        # One another node forged (say, Exited, to keep the agent from running) counts for nothing.
        return previous if self.sup.status_trusted(previous) else {}

    def _report(self, new_state: str, **fields: Any) -> None:
        pipeline, agent = state.split_agent_id(self.key)
        status = dict(self.status)
        status.update(pipeline=pipeline, agent=agent, uid=self.assignment["uid"], node=self.sup.node_id,
                      generation=self.assignment["generation"], epoch=self.epoch, state=new_state,
                      updatedAt=state.utcnow())
        if new_state in ("Starting", "Running"):
            status.pop("reason", None)
            status.pop("finishedAt", None)
        for name, value in fields.items():
            if value is None:
                status.pop(name, None)
            else:
                status[name] = value
        self.status = status
        if self.stopping.is_set():
            return
        if not self._write_status(status):
            self.fence("this node no longer holds the agent's assignment (it was moved, or the node was written off)")

    def _write_status(self, status: dict[str, Any]) -> bool:
        """Write the status, fenced (see the module doc); False when this node may no longer run the agent.

        While the Name Server is out of reach (down, restarting, no leader) it keeps trying, with
        backoff, for as long as the node holds its membership session; the process runs on meanwhile.
        Only the node's session watchdog fences on an outage (Supervisor.suspend, when the node has not
        renewed for most of a TTL), and stop() ends the wait. A start waits here for its Starting status:
        nothing starts that the Name Server has not seen is still assigned here.
        """
        op = state.set_document_op(state.status_key(self.key), "status", self.sup.signed(status))
        assign_key = state.assign_key(self.sup.node_id, self.key)
        delay, since = WRITE_RETRY_S, None
        while True:
            session = self.sup.lease()
            if session is None:
                return False
            try:
                try:
                    self.sup.ns.txn([kv_op("check-session", state.node_key(self.sup.node_id), session=session),
                                     kv_op("check-index", assign_key, index=self.index), op])
                except TxnConflict as conflict:
                    if any(index == 0 for index, _ in conflict.errors):
                        return False       # the session no longer holds the node record: written off
                    # The assignment may only have been rewritten (a new generation, same work): look.
                    _, entry = self.sup.ns.get(assign_key)
                    try:
                        current = state.decode(entry, "assignment") if entry else None
                    except DocumentError:
                        current = None
                    if current is None or not self.same_work(current):
                        return False
                    self.index = entry.modify_index
                    continue
                if since is not None:
                    log.info("%s: status written (%s), after %.0fs without the Name Server", self.key,
                             status["state"], time.monotonic() - since)
                return True
            except (NameServerUnreachable, NameServerError) as exc:
                if isinstance(exc, NameServerError) and not exc.status >= 500:
                    raise
                if since is None:
                    since = time.monotonic()
                    log.warning("%s: status %s not written (%s); retrying while this node holds its session",
                                self.key, status["state"], exc)
            if self.stopping.wait(delay):
                return True
            delay = min(delay * 2, WRITE_RETRY_MAX_S)

    def repair_status(self) -> None:
        """Write the status again as it is: the stored one was found unreadable (written by hand?)."""
        if self.status and not self.stopping.is_set():
            log.warning("%s: its stored status cannot be read; writing it again", self.key)
            if not self._write_status(dict(self.status)):
                self.fence("this node no longer holds the agent's assignment (it was moved, or the node was "
                           "written off)")

    def fence(self, why: str) -> None:
        """Kill the process now (no grace period): it may run elsewhere already."""
        if not self.fenced:
            log.warning("%s: killing it: %s", self.key, why)
        self.fenced = True
        self._signal(signal.SIGKILL)
        self.cancel()

    def remove(self) -> None:
        """After stop(): forget the agent here: its working directory, its log files, and its
        status, unless another node has taken it."""
        self.sup.remove_files(self.key)
        _, entry = self.sup.ns.get(state.status_key(self.key))
        if entry is None:
            return
        try:
            status = state.decode(entry, "status")
        except DocumentError:
            status = {}
        if status.get("node") == self.sup.node_id and status.get("epoch") == self.epoch and status["state"] != "Lost":
            self.sup.ns.delete(state.status_key(self.key), cas=entry.modify_index)


class Supervisor(Service):
    """Keeps the set of running agents equal to this node's assignments."""

    def __init__(self, ns: NameServer, node_id: str, boot: dict[str, Any], workdir: Path,
                 bus_factory: Callable[[], Any], lease: Callable[[], str | None] = lambda: None,
                 devices: dict[str, dict[str, Any]] | None = None, agent_env: Mapping[str, str] | None = None,
                 log_limits: logfiles.LogLimits | None = None, kernel_node: bool = False,
                 sandbox: Sandbox | None = None, identity: Identity | None = None) -> None:
        """`lease` gives the membership session that holds this node's record (None: not a member now);
        `devices` are the node's, from its config (see devices.py); `agent_env`, what the node adds
        to its agents' environment; `log_limits`, how much of each agent's log file is kept;
        `kernel_node`, whether this is a kernel node (only there is an agent run as a kernel agent);
        `sandbox`, how agents are confined (default: as this process's user, memory by rlimit);
        `identity`, the node's keys (its pipelines' frame keys are sealed to them)."""
        super().__init__("supervisor")
        self.kernel_node = kernel_node
        self.sandbox = sandbox or Sandbox(None)
        self.identity = identity
        self.boot = boot
        self._keys: dict[str, dict[str, Any]] = {}   # node id -> registered keys, as the watch of keys/ says
        self._entries: dict[str, Any] = {}            # this node's assignments, as last seen
        self._distrusted: dict[str, int] = {}         # assignments refused for their signature: the version said
        self._refusals: set[str] = set()              # ... and those whose status says so
        self.ns = ns
        self.devices = devices or {}
        self.agent_env = dict(agent_env or {})
        self.node_id = node_id
        self.lease = lease
        self._suspended: str | None = None   # why every agent is stopped, while the node is cut off
        self._sync_lock = threading.RLock()
        self.namespace = boot["pulsar"]["namespace"]
        self.workdir = workdir
        self.log_dir = workdir / "logs"
        self.log_limits = log_limits or logfiles.LogLimits()
        self._bus_factory = bus_factory
        self._bus = None
        self._bus_lock = threading.Lock()
        self.runners: dict[str, AgentRunner] = {}
        self._refused: set[str] = set()       # assignment keys refused (said once each)
        self._invalid: dict[str, int] = {}     # invalid assignments said, by key: the version said
        self._prefix = f"{state.ASSIGN}{node_id}/"
        self._assignments = Watch.tree(ns, self._prefix)
        self._statuses = Watch.tree(ns, state.STATUS)
        self._key_watch = Watch.tree(ns, state.KEYS)

    def bus(self) -> Any:
        """The node's one Pulsar client, opened on first use."""
        with self._bus_lock:
            if self._bus is None:
                self._bus = self._bus_factory()
            return self._bus

    def _launch(self) -> None:
        # Agents pass through (x) to their own directories, which are theirs (0700); they list nothing.
        private_folder(self.workdir, 0o711)
        private_folder(self.log_dir, 0o700)
        self.spawn(self._follow_assignments, "assignments")
        self.spawn(self._follow_readers, "readers")
        self.spawn(self._follow_keys, "keys")

    def _interrupt(self) -> None:
        self._assignments.close()
        self._statuses.close()
        self._key_watch.close()

    def _release(self) -> None:
        """Stop every agent (on oneosd shutdown), the kernel agents last: the broker among them
        carries the other agents' last bytes and the end of their logs."""
        with self._sync_lock:
            runners, self.runners = list(self.runners.values()), {}
        stop_all(r for r in runners if not r.kernel)
        stop_all(r for r in runners if r.kernel)
        with self._bus_lock:
            bus, self._bus = self._bus, None
        if bus is not None:
            try:
                bus.close()
            except Exception:  # noqa: BLE001 - closing on the way out
                pass

    def _follow_assignments(self) -> None:
        first = True
        for _, entries in self._assignments:
            assigned = {e.key[len(self._prefix):]: e for e in entries}
            self._sync(assigned)
            if first:
                # What agents that left while this node was down left behind (their pipeline
                # was deleted meanwhile): their working directories and log files.
                first = False
                self._sweep(set(assigned))

    def _follow_keys(self) -> None:
        """Keep the registered keys at hand (assignments are checked against them), and check this node's
        assignments again when they change: one refused may be trusted now, one running may no longer be."""
        for _, entries in self._key_watch:
            keys = {}
            for entry in entries:
                try:
                    doc = state.decode(entry, "key")
                except DocumentError:
                    continue
                if entry.key == state.key_key(doc["id"]):
                    keys[doc["id"]] = doc
            with self._sync_lock:
                self._keys = keys
                if self._suspended is None and not self.stopping.is_set():
                    self._sync_locked(self._entries)

    def _signer_known(self, doc: dict[str, Any]) -> None:
        """Look up, once, the registered key of a signer the watch of keys/ does not know (yet)
        (NameServerUnreachable, NameServerError when it cannot be)."""
        by = signer(doc)
        if by is not None and by not in self._keys:
            found = state.read_key(self.ns, by)
            if found is not None:
                self._keys = {**self._keys, by: found}

    def distrust(self, doc: dict[str, Any]) -> str | None:
        """Why this node may not run an assignment (None: it may): only what a kernel node's registered key
        signed counts, so that a forged assignment in the Name Server runs nothing. A signer the watch of
        keys/ does not know (yet) is looked up once (NameServerUnreachable when it cannot be)."""
        self._signer_known(doc)
        why = state.signed_by(doc, self._keys, state.kernel_keys(self._keys, self.boot))
        return None if why is None else f"{REFUSED}: {why}"

    def status_trusted(self, doc: dict[str, Any]) -> bool:
        """Whether a status was signed by the node it names, or by a kernel node (state.status_distrust):
        any node may write any status, so only such a one may end a stream or stop a rerun here."""
        try:
            self._signer_known(doc)
        except (NameServerUnreachable, NameServerError):
            pass          # judged by the keys known: a signer not among them is not trusted
        return state.status_distrust(doc, self._keys, state.kernel_keys(self._keys, self.boot)) is None

    def _refuse(self, key: str, doc: dict[str, Any], index: int, why: str) -> None:
        """Run nothing of an assignment that is not trusted; say so once per version, in the log and in the
        agent's status (Failed, with why), unless that status is another node's."""
        if self._distrusted.get(key) == index:
            return
        self._distrusted[key] = index
        log.error("%s: refusing to run it: %s", key, why)
        pipeline, agent = state.split_agent_id(key)
        status = {"pipeline": pipeline, "agent": agent, "uid": doc["uid"], "node": self.node_id, "state": "Failed",
                  "generation": doc["generation"], "epoch": doc["epoch"], "reason": why, "updatedAt": state.utcnow()}
        try:
            entry = self._own_status(key, any_reason=True)
            if entry is not False:
                state.put_document(self.ns, state.status_key(key), "status", self.signed(status),
                                   cas=entry.modify_index if entry else 0)
                self._refusals.add(key)
        except (NameServerUnreachable, NameServerError) as exc:
            log.warning("%s: the status saying it is refused was not written: %s", key, exc)

    def signed(self, status: dict[str, Any]) -> dict[str, Any]:
        """A status as this node writes it: signed by its key (the controller acts on no other), when it has one."""
        return self.identity.sign(status, by=self.node_id) if self.identity is not None else status

    def _own_status(self, key: str, any_reason: bool = False) -> Any:
        """The agent's status entry when it is this node's (and, unless `any_reason`, says it is refused);
        None when there is none; False when it is someone else's (or not a refusal)."""
        _, entry = self.ns.get(state.status_key(key))
        if entry is None:
            return None
        try:
            current = state.decode(entry, "status")
        except DocumentError:
            return entry if any_reason else False
        if current.get("node") != self.node_id:
            return False
        if not any_reason and not current.get("reason", "").startswith(REFUSED):
            return False
        return entry

    def _forget_refusal(self, key: str) -> None:
        """The refused assignment is gone: so goes the status that said it was refused (if still so)."""
        self._refusals.discard(key)
        try:
            entry = self._own_status(key)
            if entry:
                self.ns.delete(state.status_key(key), cas=entry.modify_index)
        except (NameServerUnreachable, NameServerError) as exc:
            log.warning("%s: its status (refused) was not removed: %s", key, exc)

    def refused(self, key: str) -> str | None:
        """Why an assignment key cannot name an agent's files on this node (None: it can)."""
        if not _AGENT_ID.fullmatch(key):
            return f"{key!r} is not an agent id (PIPELINE.AGENT, lowercase names)"
        try:
            inside(self.workdir, key, what="assignment key")
            logfiles.log_path(self.log_dir, key, 1)
        except PathEscape as exc:
            return str(exc)
        return None

    def remove_files(self, key: str) -> None:
        """Remove an agent's working directory and log files (it has left this node)."""
        why = self.refused(key)
        if why is not None:
            log.error("not removing the files of %s: %s", key, why)
            return
        shutil.rmtree(self.workdir / key, ignore_errors=True)
        logfiles.remove(self.log_dir, key)

    def _sweep(self, assigned: set[str]) -> None:
        """Remove the files of every agent not assigned here (left by an earlier run of this node)."""
        try:
            names = {entry.name for entry in os.scandir(self.workdir) if entry.is_dir()} - {"logs"}
        except FileNotFoundError:
            names = set()
        with self._sync_lock:    # no runner starts meanwhile
            keep = assigned | set(self.runners)
            stale = {name for name in names | logfiles.agent_ids(self.log_dir)
                     if name not in keep and _AGENT_ID.fullmatch(name)}
            for key in sorted(stale):
                self.remove_files(key)
        if stale:
            log.info("removed the files of %d agent(s) no longer on this node", len(stale))

    def suspend(self, why: str) -> None:
        """Stop every agent now and start none until `resume()`: this node may be written off."""
        with self._sync_lock:
            if self._suspended is None:
                log.warning("stopping every agent on this node: %s", why)
            self._suspended = why
            runners, self.runners = list(self.runners.values()), {}
            for runner in runners:
                runner.fence(why)
        stop_all(runners)

    def resume(self) -> None:
        """The node is a member again: run what is (still) assigned to it."""
        if self._suspended is None:
            return
        _, entries = self.ns.get_tree(self._prefix)
        with self._sync_lock:
            if self._suspended is None:
                return
            log.info("this node is a member again; starting what is still assigned to it")
            self._suspended = None
            self._sync_locked({e.key[len(self._prefix):]: e for e in entries})

    def _sync(self, entries: dict[str, Any]) -> None:
        with self._sync_lock:
            if self._suspended is None:
                self._sync_locked(entries)

    def _sync_locked(self, entries: dict[str, Any]) -> None:
        wanted: dict[str, tuple[dict[str, Any], int]] = {}
        distrusted: dict[str, tuple[dict[str, Any], int, str]] = {}
        self._entries = entries
        self._refused &= set(entries)
        self._invalid = {k: v for k, v in self._invalid.items() if k in entries}
        for key, entry in entries.items():
            why = self.refused(key)
            if why is not None:
                # Nothing of it runs, and no file is made or removed for it; no status either (its
                # key would be as wrong). Said once, not at every change of the node's assignments.
                if key not in self._refused:
                    log.error("refusing the assignment %s: %s; nothing of it is run", entry.key, why)
                    self._refused.add(key)
                continue
            try:
                doc = state.decode(entry, "assignment")
            except DocumentError as exc:
                if self._invalid.get(key) != entry.modify_index:    # once per version, not at every change
                    log.error("ignoring an invalid assignment: %s", exc)
                    self._invalid[key] = entry.modify_index
                continue
            try:
                why = self.distrust(doc)
            except (NameServerUnreachable, NameServerError) as exc:
                # Its signer cannot be looked up now: nothing of it runs yet; the watch of keys/ checks
                # again once the Name Server answers.
                log.warning("%s: cannot check its signature yet: %s", key, exc)
                continue
            if why is None:
                wanted[key] = (doc, entry.modify_index)
            else:
                distrusted[key] = (doc, entry.modify_index, why)
        self._distrusted = {k: v for k, v in self._distrusted.items() if k in distrusted}
        for key in [k for k in self.runners
                    if k not in wanted or self.runners[k].fenced or not self.runners[k].same_work(wanted[k][0])]:
            runner = self.runners.pop(key)
            if not runner.fenced:
                log.info("%s: stopping (%s)", key, "unassigned" if key not in wanted else "spec changed")
            runner.stop()
            if key not in wanted:
                runner.remove()
        for key, (doc, index, why) in distrusted.items():
            self._refuse(key, doc, index, why)
        for key in sorted(self._refusals - set(distrusted) - set(wanted)):
            self._forget_refusal(key)
        self._refusals &= set(distrusted) | set(wanted)
        for key, (doc, index) in wanted.items():
            if key in self.runners:
                runner = self.runners[key]
                runner.index = index   # same work; the assignment was rewritten
                if doc.get("frameKey") != runner.assignment.get("frameKey"):
                    # Sealed anew (this node was enrolled again with a new key): its next start opens this one.
                    runner.assignment = dict(runner.assignment, frameKey=doc.get("frameKey"))
            elif not self.stopping.is_set():
                log.info("%s: starting %s", key, children.command_line(doc["agent"]["run"]))
                runner = AgentRunner(self, key, doc, index)
                self.runners[key] = runner
                runner.start()

    def _follow_readers(self) -> None:
        """Close a writer's stream when every agent reading it has ended: SIGPIPE, as in a shell pipe."""
        for _, entries in self._statuses:
            final = set()
            for entry in entries:
                try:
                    doc = state.decode(entry, "status")
                except DocumentError:
                    runner = self.runners.get(entry.key[len(state.STATUS):])
                    if runner is not None:
                        runner.repair_status()    # one of ours, overwritten by hand
                    continue
                if doc["state"] in state.FINAL_STATES and self.status_trusted(doc):
                    final.add(entry.key[len(state.STATUS):])
            for key, runner in list(self.runners.items()):
                pipeline, _ = state.split_agent_id(key)
                readers = [state.agent_id(pipeline, r) for r in runner.assignment["outputs"]]
                if readers and all(r in final for r in readers) and runner.bridge:
                    runner.bridge.readers_gone()
