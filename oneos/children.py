"""Child processes that die with their parent: the one way OneOS starts a helper or an agent.

`spawn()` starts a process in a session of its own (a terminal's Ctrl-C reaches only us, and
we stop children in order) that gets a signal when this process dies, even by SIGKILL
(Linux's PR_SET_PDEATHSIG), so nothing outlives the `oneosd` that started it.

No Python runs between fork and exec: in a threaded process (every node agent is one) the
forked child holds copies of locks other threads held at the fork, and running Python there
(subprocess's preexec_fn) can deadlock or crash it before exec. So the death signal is asked
for by util-linux's `setpriv --pdeathsig`, which execs `/bin/sh` with a fixed script that
checks the parent is still the one that forked it (it may have died before the prctl: then
nobody would send the signal) and execs the program. The program's words are the script's
positional parameters: the shell passes them on as they are and parses none of them.

Whether the program can be run is checked here first (as bash looks it up, in the child's
PATH and working folder), so a missing program raises FileNotFoundError and one that cannot
be executed PermissionError, as a plain Popen would.

Linux sends the signal when the *thread* that started the child ends, not the process:
start a child from a thread that outlives it (the main thread, or the thread that waits
for it, as the supervisor's agent runners do).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from typing import Any

# None where there is no setpriv (not Linux): children do not die with us there.
SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


def _check_runnable(program: str, env: dict[str, str] | None, cwd: str | None) -> None:
    """Raise what exec would: FileNotFoundError if `program` is not found, PermissionError if it cannot run."""
    if os.sep in program:
        candidates = [os.path.join(cwd or ".", program)]
    else:
        path = (env if env is not None else os.environ).get("PATH", os.defpath)
        candidates = [os.path.join(cwd or ".", folder or ".", program) for folder in path.split(os.pathsep)]
    found = [c for c in candidates if os.path.exists(c) and not os.path.isdir(c)]
    if not found:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    if not any(os.access(c, os.X_OK) for c in found):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)


def spawn(argv: list[str], *, death_signal: int = signal.SIGKILL, **popen: Any) -> subprocess.Popen:
    """Popen(argv, **popen) in a session of its own, getting `death_signal` when this process dies."""
    _check_runnable(argv[0], popen.get("env"), popen.get("cwd"))
    if SETPRIV is not None:
        name = signal.Signals(death_signal).name
        check = f'[ "$PPID" = {os.getpid()} ] && exec "$0" "$@"; kill -s {name.removeprefix("SIG")} $$; exit 126'
        argv = [SETPRIV, "--pdeathsig", name, "--", "/bin/sh", "-c", check, *argv]
    return subprocess.Popen(argv, start_new_session=True, **popen)


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send `sig` to a spawned child's process group (its session's), unless the child has ended."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
