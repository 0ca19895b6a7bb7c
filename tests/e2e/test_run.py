"""`oneosctl run` never hangs, and on a terminal it streams line by line, as bash does.

Each test drives the command as a user does, on a real three-node cluster: it deletes the
run's pipeline from elsewhere, bounds a Pending wait with --timeout, stops it with SIGTERM
and SIGHUP, signals it while it waits for an unresponsive broker, and runs it on a
pseudo-terminal (pexpect) to see a filter's first line before the producer ends.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import socket
import subprocess
import threading
import time
import tty

import pexpect
import pytest

from oneos import manifests, state
from tests.cluster import Cluster
from tests.procs import venv_bin, wait_until

TERMINAL_WAIT = 30     # seconds pexpect waits for what a terminal shows before the test fails


def env(cluster: Cluster) -> dict[str, str]:
    return dict(os.environ, ONEOS_NAMESERVER=cluster.url)


@pytest.fixture
def runs(three_nodes):
    """Start `oneosctl run ARGS...` in the background (stdout and stderr piped); killed at the end if still there."""
    started: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        # PYTHONFAULTHANDLER: should one not stop, SIGABRT (see `stopped`) makes it say where each thread was.
        proc = subprocess.Popen([venv_bin("oneosctl"), "run", *args], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=dict(env(three_nodes), PYTHONFAULTHANDLER="1"))
        started.append(proc)
        return proc

    yield start
    killed = False
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            killed = True
        proc.communicate()
    if killed:   # a run killed mid-way leaves its pipeline: not the next test's to find
        for name in runs_in_cluster(three_nodes):
            three_nodes.ctl("delete", "pipeline", name)


def stopped(proc: subprocess.Popen, timeout: float = 30) -> tuple[bytes, bytes]:
    """proc.communicate(), but a run that has not ended within `timeout` fails the test with its
    threads' stacks (faulthandler, on SIGABRT) instead of a bare timeout."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        out, err = proc.communicate(timeout=30)
        raise AssertionError(f"oneosctl run did not end within {timeout:g}s; stdout {out[-2000:]!r}; "
                             f"where it was:\n{err.decode(errors='replace')}") from None


@pytest.fixture
def terminals(three_nodes):
    """Start `oneosctl run ARGS...` on a pseudo-terminal of its own (pexpect); closed at the end."""
    started: list[pexpect.spawn] = []

    def start(*args: str) -> pexpect.spawn:
        child = pexpect.spawn(venv_bin("oneosctl"), ["run", *args], env=env(three_nodes), echo=False,
                              timeout=TERMINAL_WAIT)
        started.append(child)
        return child

    yield start
    for child in started:
        child.close(force=True)


def runs_in_cluster(cluster: Cluster) -> list[str]:
    return [doc["metadata"]["name"] for doc in manifests.list_pipelines(cluster.ns)[0]
            if doc["metadata"]["name"].startswith("run-")]


def run_with(cluster: Cluster, agent: str, states: tuple[str, ...] = ("Running",)) -> str | None:
    """The name of the run whose stage `agent` is in one of `states` (not that of a run already deleted)."""
    live = set(runs_in_cluster(cluster))
    return next((s["pipeline"] for s in cluster.statuses_all()
                 if s["pipeline"] in live and s["agent"] == agent and s["state"] in states), None)


def test_a_run_whose_pipeline_is_deleted_elsewhere_stops_with_one_line(three_nodes, runs):
    proc = runs("sleep 300 | cat")
    name = three_nodes.wait_for(lambda: run_with(three_nodes, "sleep"), 30, "the run to start")
    assert three_nodes.ctl("delete", "pipeline", name).returncode == 0
    out, err = stopped(proc)
    assert (proc.returncode, out, err.decode()) == (1, b"", f"oneosctl: pipeline {name} was deleted elsewhere; "
                                                            "stopping\n")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_delete_the_run_as_ctrl_c_does(three_nodes, runs, sig):
    proc = runs("sleep 300 | cat")
    name = three_nodes.wait_for(lambda: run_with(three_nodes, "sleep"), 30, "the run to start")
    proc.send_signal(sig)
    out, err = stopped(proc)
    assert (proc.returncode, out, err) == (128 + sig, b"", b"")     # as bash: 143 after SIGTERM, 129 after SIGHUP
    # Deleted before it exited (that the controller then stops the agents: test_pipelines' Ctrl-C test).
    assert three_nodes.ns.get(state.pipeline_key(name))[1] is None


def test_a_reader_that_goes_away_ends_the_run_as_sigpipe_ends_a_program(three_nodes, runs):
    proc = runs("yes")              # as `oneosctl run yes | head -n 1`
    assert proc.stdout.readline() == b"y\n"
    proc.stdout.close()
    assert proc.wait(30) == 141 and proc.stderr.read() == b""
    assert runs_in_cluster(three_nodes) == []


def test_a_stage_for_a_node_that_no_node_is_says_so_at_once_then_waits(three_nodes, terminals):
    """On a terminal too; and a run that waits ends as soon as its pipeline is deleted elsewhere."""
    child = terminals("seq 3 | cat @ n9")
    child.expect_exact("oneosctl: stage cat is pending: no node n9\r\n")
    assert child.isalive()          # a node n9 may still join: it waits
    name = runs_in_cluster(three_nodes)[0]
    assert three_nodes.ctl("delete", "pipeline", name).returncode == 0
    child.expect_exact(f"oneosctl: pipeline {name} was deleted elsewhere; stopping")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1


def test_timeout_ends_a_pending_wait_says_which_stage_and_why_and_deletes_it(three_nodes):
    done = subprocess.run([venv_bin("oneosctl"), "run", "--timeout", "2s", "seq 3 | sort @ gpio=true"],
                          stdin=subprocess.DEVNULL, capture_output=True, env=env(three_nodes), timeout=60)
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 1 and done.stdout == b"", lines
    # The reason comes at once, then the timeout says it again; had the controller not written the
    # Pending status within 2s (a machine this busy), the timeout says that the stage was never placed.
    assert lines[-1] in ("oneosctl: stage sort still pending after --timeout 2s: no node has label gpio=true",
                         "oneosctl: stage sort still pending after --timeout 2s: no controller has placed it yet "
                         "(is a node leading? see oneosctl get nodes)"), lines
    assert lines[:-1] in ([], ["oneosctl: stage sort is pending: no node has label gpio=true"]), lines
    assert runs_in_cluster(three_nodes) == []


def test_a_terminal_gets_each_line_of_a_filter_as_it_comes(three_nodes, terminals):
    """`... | tr a-z A-Z` on a terminal: tr's stdout is a terminal too, so it writes each line at once.

    The producer prints a line, then waits for a line typed at the terminal: without a terminal
    on its node, tr would keep HELLO in its buffer until the producer ends, and it never would.
    """
    producer = "python3 -c 'import sys; print(\"hello\", flush=True); sys.stdin.readline(); print(\"bye\")'"
    child = terminals(f"{producer} | tr a-z A-Z")
    child.expect_exact("HELLO\r\n")
    child.sendline("go")
    child.expect_exact("BYE\r\n")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_a_terminal_gets_the_bytes_a_pipe_gets(three_nodes):
    """The node's pseudo-terminal is raw: no \\n -> \\r\\n, and everything written before the exit arrives."""
    line = "seq 1 20000 | tr 0 '\\r'"
    expected = subprocess.run(["bash", "-c", line], capture_output=True, check=True).stdout
    master, slave = pty.openpty()
    tty.setraw(slave)      # this end too: what arrives is shown unchanged
    proc = None
    try:
        proc = subprocess.Popen([venv_bin("oneosctl"), "run", line], stdin=subprocess.DEVNULL, stdout=slave,
                                stderr=subprocess.PIPE, env=env(three_nodes))
        os.close(slave)
        slave = -1
        shown = bytearray()
        while True:
            if not select.select([master], [], [], TERMINAL_WAIT)[0]:
                raise AssertionError(f"nothing on the terminal for {TERMINAL_WAIT}s; {len(shown)} bytes so far")
            try:
                data = os.read(master, 65536)
            except OSError:   # EIO: oneosctl exited and the terminal is drained
                break
            if not data:
                break
            shown += data
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    assert bytes(shown) == expected


# ---------------------------------------------------------------- a broker that does not answer

class SilentBroker:
    """A TCP port that accepts connections and never answers: every call of a Pulsar client waits."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"pulsar://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent_cluster(builtin_nameserver, tmp_path):
    """A Name Server whose boot record names a broker that never answers (no nodes needed)."""
    broker = SilentBroker()
    c = Cluster(builtin_nameserver, tmp_path)
    try:
        c.bootstrap(broker.url)
        yield c, broker
    finally:
        c.stop()
        broker.close()


def test_a_signal_while_waiting_for_the_broker_still_deletes_the_run_and_exits(silent_cluster):
    cluster, broker = silent_cluster
    proc = subprocess.Popen([venv_bin("oneosctl"), "run", "seq 3 | cat"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(cluster))
    try:
        # The run applied its pipeline and now waits in a call of the Pulsar client.
        wait_until(lambda: runs_in_cluster(cluster) and broker.accepted, 30, "the run to call the broker")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, out, err) == (143, b"", b""), err
    assert runs_in_cluster(cluster) == []
    print(f"exited {took:.2f}s after SIGTERM")
