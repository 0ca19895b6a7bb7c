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

A `Confinement` confines an agent in the same chain, still without Python in the child: it
joins its cgroup first (a shell writes its pid to `cgroup.procs` while it may), then setpriv
switches to the agent's user (`--reuid --regid --init-groups`) and asks for the death signal
afterwards (Linux forgets it when the user changes; setpriv does the prctl after the switch),
then util-linux's `prlimit` sets its address-space limit, and the checking shell runs the
program. The check after setpriv is what makes the chain safe: if the parent died at any
point before, the child's parent is no longer the one that forked it.
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

# None where there is no setpriv (not Linux): children do not die with us there.
SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None
PRLIMIT = shutil.which("prlimit") if sys.platform.startswith("linux") else None


@dataclass(frozen=True)
class Confinement:
    """What confines a child: the user it runs as, its address-space limit, the cgroup it joins."""

    uid: int | None = None             # run as this user, with its primary group and its groups
    gid: int | None = None
    address_space: int | None = None   # RLIMIT_AS in bytes, soft and hard
    cgroup: str | None = None          # a cgroup v2 folder: the child is in it before its program starts

    def prefix(self) -> list[str]:
        """The part of the chain before setpriv's: joining the cgroup (as the parent's user)."""
        if self.cgroup is None:
            return []
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', os.path.join(self.cgroup, "cgroup.procs")]

    def setpriv_options(self) -> list[str]:
        if self.uid is None:
            return []
        return ["--reuid", str(self.uid), "--regid", str(self.gid if self.gid is not None else self.uid),
                "--init-groups"]

    def limits(self) -> list[str]:
        """prlimit and its options, before the program; nothing when there is no limit to set."""
        if self.address_space is None:
            return []
        if PRLIMIT is None:
            raise OSError(errno.ENOSYS, "prlimit (util-linux) is missing: cannot limit the agent's memory")
        return [PRLIMIT, f"--as={self.address_space}:{self.address_space}", "--"]


def command_line(argv: list[str]) -> str:
    """An argv as one line a person can read and paste into a shell (a newline in an argument as \\n)."""
    return shlex.join(argv).replace("\n", "\\n")


def chain(argv: list[str], death_signal: int = signal.SIGKILL, confine: Confinement | None = None,
          parent: int | None = None) -> list[str]:
    """The argv that runs `argv` as spawn() does: confined by `confine`, dying with `parent` (default: us)."""
    confine = confine or Confinement()
    if SETPRIV is None:
        if confine.uid is not None or confine.cgroup is not None:
            raise OSError(errno.ENOSYS, "setpriv (util-linux) is missing: cannot run the agent as another user")
        return [*confine.limits(), *argv]
    name = signal.Signals(death_signal).name
    parent = os.getpid() if parent is None else parent
    check = f'[ "$PPID" = {parent} ] && exec "$0" "$@"; kill -s {name.removeprefix("SIG")} $$; exit 126'
    return [*confine.prefix(), SETPRIV, *confine.setpriv_options(), "--pdeathsig", name, "--",
            *confine.limits(), "/bin/sh", "-c", check, *argv]


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


def spawn(argv: list[str], *, death_signal: int = signal.SIGKILL, confine: Confinement | None = None,
          **popen: Any) -> subprocess.Popen:
    """Popen(argv, **popen) in a session of its own, getting `death_signal` when this process dies,
    confined by `confine` (its user, memory, cgroup)."""
    _check_runnable(argv[0], popen.get("env"), popen.get("cwd"))
    return subprocess.Popen(chain(argv, death_signal, confine), start_new_session=True, **popen)


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send `sig` to a spawned child's process group (its session's), unless the child has ended."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
