"""`oneosctl run`'s own logic, in-process: --timeout's clock, what a terminal marks, the option's checks.

What a user sees of the same behaviours on a real cluster is in tests/e2e/test_run.py.
"""

from __future__ import annotations

import io
import logging
import queue
import signal
import sys
import threading
import time

import pytest

from oneos.cli import oneosctl
from oneos.cli import run as run_module
from oneos.cli.run import Patience, mark_tty
from oneos.compiler import compile_pipeline
from oneos.documents import DocumentError, check
from tests.procs import wait_until


def test_every_stage_counts_from_the_start_until_it_is_placed():
    patience = Patience(5.0, ["a", "b"], now=100.0)
    patience.observe({}, 101.0)                       # nothing placed yet: no status at all
    assert patience.deadline() == 105.0
    assert patience.expired(104.9) == []
    assert patience.expired(105.0) == ["a", "b"]

    patience.observe({"a": {"state": "Starting"}, "b": {"state": "Pending", "reason": "no node n9"}}, 102.0)
    assert patience.deadline() == 105.0 and patience.expired(105.0) == ["b"]
    patience.observe({"a": {"state": "Running"}, "b": {"state": "Running"}}, 103.0)
    assert patience.deadline() is None and patience.expired(1e9) == []


def test_a_stage_pending_again_counts_from_then():
    patience = Patience(5.0, ["a"], now=0.0)
    patience.observe({"a": {"state": "Running"}}, 1.0)
    patience.observe({"a": {"state": "Pending", "reason": "its node n2 was lost, and it fits nowhere else"}}, 60.0)
    assert patience.deadline() == 65.0
    assert patience.expired(64.0) == [] and patience.expired(65.0) == ["a"]
    patience.observe({"a": {"state": "Pending"}}, 62.0)   # still the same spell: it keeps its start
    assert patience.deadline() == 65.0
    patience.observe({"a": {"state": "Exited"}}, 63.0)    # done: placed, whatever came next
    assert patience.deadline() is None


def test_only_the_stage_writing_to_the_terminal_gets_one():
    manifest = compile_pipeline("seq 3 | cat", name="run-t")
    mark_tty(manifest)
    assert [a.get("stdout") for a in manifest["spec"]["agents"]] == [None, {"tty": True}]
    check("pipeline", manifest, "run-t")

    to_file = compile_pipeline("seq 3 | cat > out.txt", name="run-f")
    mark_tty(to_file)
    assert to_file["spec"]["agents"][-1]["stdout"] == {"file": "out.txt"}


def test_a_terminal_and_a_file_cannot_go_together():
    manifest = compile_pipeline("seq 3 > out.txt", name="run-x")
    manifest["spec"]["agents"][0]["stdout"]["tty"] = True
    with pytest.raises(DocumentError, match=r"stdout: tty and file cannot go together; keep one"):
        check("pipeline", manifest, "run-x")


@pytest.mark.parametrize("given", ["0", "-5s", "5", "soon"])
def test_timeout_must_be_a_positive_duration(given, capsys):
    assert oneosctl.main(["--nameserver", "http://127.0.0.1:9", "run", f"--timeout={given}", "seq 3"]) == 2
    assert f"argument --timeout: '{given}' is not a positive duration such as 30s, 2m or 1m30s" \
        in capsys.readouterr().err


def test_timeout_reads_go_durations():
    args = oneosctl.build_parser().parse_args(["run", "--timeout", "1m30s", "seq 3"])
    assert args.timeout == 90.0


class EndsAsASignalComes(run_module.Run):
    """A run whose SIGTERM comes after execute() returned, as the cleanup is called: CPython runs a
    Python signal handler at the next function's first instruction, so before any of the cleanup."""

    made: list[EndsAsASignalComes] = []

    def __init__(self, *_: object, **__: object) -> None:
        self.signalled = None
        self.stopping = False
        self.pulsar_log = logging.getLogger("test_run.EndsAsASignalComes")
        self.progress = run_module.Progress(io.StringIO())
        self.cleaned = 0
        self.made.append(self)

    def execute(self) -> int:
        return 0

    def cleanup(self) -> None:
        if self.signalled is None:
            self.on_signal(signal.SIGTERM, None)
        self.cleaned += 1
        self.stopping = True


def test_a_signal_between_the_end_and_the_cleanup_still_cleans_up(monkeypatch, tmp_path):
    monkeypatch.setattr(run_module, "Run", EndsAsASignalComes)
    with open(tmp_path / "stdin", "w+") as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        # The run was over: its status, as after a signal that comes during the cleanup.
        assert run_module.run(None, "seq 3") == 0
    job, = EndsAsASignalComes.made
    assert job.signalled == signal.SIGTERM and job.cleaned == 1


class Waiting(run_module.Run):
    """A run in its wait for the last stage, with nothing coming: only a signal ends it."""

    def __init__(self) -> None:
        self.name, self.timeout, self.clock = "run-x", None, time.monotonic
        self.events, self.readers = queue.Queue(), []
        self.signalled, self.stopping = None, False
        self.pulsar_log = logging.getLogger("test_run.Waiting")
        self.progress = run_module.Progress(io.StringIO())


def in_wait(frame) -> bool:
    """Whether a thread at `frame` waits on a lock (threading's Condition.wait) inside Run._wait."""
    if frame.f_code.co_name != "wait":
        return False
    while frame is not None and frame.f_code.co_name != "_wait":
        frame = frame.f_back
    return frame is not None


def test_a_signal_another_thread_takes_still_ends_the_wait():
    """The kernel may hand SIGTERM to any thread (the Pulsar client's), and CPython runs the handler only
    in the main thread, when it runs: a main thread blocked on a lock without a bound never would."""
    job = Waiting()
    main = threading.main_thread().ident
    ended = threading.Event()
    stuck: list[bool] = []

    def other_thread() -> None:
        # Once the main thread waits on the queue's lock, the signal goes to this thread, not to it.
        wait_until(lambda: in_wait(sys._current_frames()[main]), 10, "the run to wait")
        signal.pthread_kill(threading.get_ident(), signal.SIGHUP)
        if not ended.wait(10):
            stuck.append(True)
            job.events.put(("", None))      # wakes the main thread: the handler runs then, at last

    previous = signal.signal(signal.SIGHUP, job.on_signal)
    helper = threading.Thread(target=other_thread)
    try:
        helper.start()
        with pytest.raises(run_module.Interrupted):
            job._wait([{"name": "a"}], "a")
        ended.set()
    finally:
        helper.join()
        signal.signal(signal.SIGHUP, previous)
    assert job.signalled == signal.SIGHUP
    assert not stuck, "the wait went on after the signal until something else woke the main thread"


def test_a_signal_whose_exception_a_library_swallowed_still_ends_the_wait():
    """The handler raises in whatever the main thread runs: in a Pulsar call made to subscribe, the client
    turns it into an error of its own, which the reader's retry takes. The signal is noted all the same."""
    job = Waiting()
    job.signalled, job.stopping = signal.SIGTERM, True       # what the handler leaves, its exception gone
    ended = threading.Event()

    def failsafe() -> None:
        if not ended.wait(10):
            job.events.put(("error", AssertionError("the wait went on after a signal was noted")))

    helper = threading.Thread(target=failsafe)
    helper.start()
    try:
        with pytest.raises(run_module.Interrupted):
            job._wait([{"name": "a"}], "a")
    finally:
        ended.set()
        helper.join()
