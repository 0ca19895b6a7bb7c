"""Children that die with their parent, without loading anything in the forked child."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from oneos import children
from tests.procs import wait_until
from tests.procs import process_alive as alive

PARENT = textwrap.dedent("""\
    import signal, sys, threading
    from oneos import children
    sig = getattr(signal, sys.argv[1])
    # Started from the main thread, which lives until the process dies.
    child = children.spawn(["sleep", "600"], death_signal=sig)
    print(child.pid, flush=True)
    threading.Event().wait()
    """)



@pytest.fixture
def parent():
    """A Python process that spawns `sleep 600` with children.spawn; killed (with its child) at the end."""
    started: list[tuple[subprocess.Popen, int]] = []

    def start(death_signal: str) -> tuple[subprocess.Popen, int]:
        proc = subprocess.Popen([sys.executable, "-c", PARENT, death_signal], stdout=subprocess.PIPE, text=True)
        child = int(proc.stdout.readline())
        started.append((proc, child))
        return proc, child

    yield start
    for proc, child in started:
        proc.kill()
        proc.wait()
        if alive(child):
            os.kill(child, signal.SIGKILL)


@pytest.mark.skipif(children._PRCTL is None, reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("death_signal", ["SIGKILL", "SIGTERM"])
def test_a_child_dies_when_its_parent_is_killed_with_sigkill(parent, death_signal):
    proc, child = parent(death_signal)
    assert alive(child)
    proc.kill()
    proc.wait()
    wait_until(lambda: not alive(child), 10, "the child to die with its parent")


def test_the_child_loads_no_library(monkeypatch):
    # Loading a library after fork in a threaded process can deadlock: the child only calls
    # what the parent found when it imported the module. Were the child to load one, the
    # failure below would be raised from the child (an exception in preexec_fn).
    def refuse(*args, **kwargs):
        raise AssertionError("a library was loaded in the forked child")

    monkeypatch.setattr(ctypes, "CDLL", refuse)
    child = children.spawn([sys.executable, "-c", "print('ran')"], stdout=subprocess.PIPE)
    out, _ = child.communicate(timeout=60)
    assert (child.returncode, out) == (0, b"ran\n")


def test_a_child_has_a_session_of_its_own():
    child = children.spawn([sys.executable, "-c", "import os; print(os.getsid(0))"], stdout=subprocess.PIPE)
    out, _ = child.communicate(timeout=60)
    assert int(out) == child.pid != os.getsid(0)


def test_signal_group_reaches_the_child_and_ignores_one_that_ended():
    child = children.spawn(["sleep", "600"])
    children.signal_group(child, signal.SIGTERM)
    assert child.wait(60) == -signal.SIGTERM
    children.signal_group(child, signal.SIGTERM)   # gone: nothing to do, no error
