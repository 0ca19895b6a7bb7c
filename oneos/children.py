"""Child processes that die with their parent: the one way OneOS starts a helper or an agent.

`spawn()` starts a process in a session of its own (a terminal's Ctrl-C reaches only us, and
we stop children in order) that gets a signal when this process dies, even by SIGKILL
(Linux's PR_SET_PDEATHSIG), so nothing outlives the `oneosd` that started it.

libc is loaded here, once, when the module is imported: the child, between fork and exec,
only calls the function already found. Loading a library in a forked child of a threaded
process can deadlock on a lock another thread held at the fork.

Linux sends the signal when the *thread* that started the child ends, not the process:
start a child from a thread that outlives it (the main thread, or the thread that waits
for it, as the supervisor's agent runners do).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from typing import Any, Callable

PR_SET_PDEATHSIG = 1


def _find_prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):   # not Linux: children do not die with us there
        return None


_PRCTL = _find_prctl()


def _die_with(parent: int, sig: int) -> Callable[[], None]:
    """What the child runs before exec: ask for `sig` when the parent dies, and die now if it already has."""
    def preexec() -> None:
        if _PRCTL is None:
            return
        _PRCTL(PR_SET_PDEATHSIG, sig)
        # The parent may have died between fork and prctl: then nobody will send the signal.
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)
    return preexec


def spawn(argv: list[str], *, death_signal: int = signal.SIGKILL, **popen: Any) -> subprocess.Popen:
    """Popen(argv, **popen) in a session of its own, getting `death_signal` when this process dies."""
    return subprocess.Popen(argv, start_new_session=True, preexec_fn=_die_with(os.getpid(), death_signal), **popen)


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send `sig` to a spawned child's process group (its session's), unless the child has ended."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
