"""Sandboxed agents: the user they run as, the limits of their memory and CPU, and what they may reach.

A node started as root runs its agents as an unprivileged user (config `agentUser`, default
`oneos-agent`, created as a system account if absent), so an agent cannot read the node's
token, its key, its logs or another node's files. A node started as another user cannot
switch: its agents run as its own user. Kernel agents (the init manifest's: the broker) are
the cluster's own services and run as the node's user, with its token (supervisor.py).

`resources.memory` and `resources.cpu` of an agent become limits:

- cgroup v2, where the node may make child cgroups with the memory and cpu controllers
  (it is in the root cgroup, or alone in a cgroup delegated to it, as systemd's
  `Delegate=yes` gives): each agent gets `oneos-<node>/<agent>` with `memory.max` and
  `cpu.max` (cpu × 100 ms per 100 ms);
- otherwise rlimits: RLIMIT_AS of memory + ADDRESS_SPACE_HEADROOM (address space that is
  reserved and never used, as thread stacks and glibc's per-thread malloc arenas are, is
  counted by RLIMIT_AS and not by a cgroup), and no CPU limit: RLIMIT_CPU caps the CPU seconds
  a process may use in its whole life, not a rate, so it would kill a long-running agent.

Which one applies is decided once at start and logged; each agent's status says what
limits it got. Everything is applied in the exec chain (oneos/children.py), never by Python
in the forked child.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import pwd
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oneos import children
from oneos.errors import OneOSError
from oneos.paths import PathEscape
from oneos.quantities import format_memory, parse_cpu, parse_memory

log = logging.getLogger("oneos.nodeagent")

DEFAULT_USER = "oneos-agent"
ADDRESS_SPACE_HEADROOM = 256 * 1024 * 1024
CPU_PERIOD_US = 100_000
CGROUP_CONTROLLERS = ("memory", "cpu")


class SandboxError(OneOSError):
    """The node cannot run its agents as it is configured to (no such user, cannot create it)."""


@dataclass(frozen=True)
class AgentUser:
    """The user agents run as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...] = ()


def _useradd(name: str) -> None:
    """Create `name` as a system account with no home and no shell; SandboxError saying what to do."""
    argv = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
    else:
        if done.returncode == 0:
            log.info("created the system user %s for agents", name)
            return
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    raise SandboxError(f"cannot create the user {name} that agents run as ({why}); create it "
                       f"(useradd --system --no-create-home --shell /usr/sbin/nologin {name}) or set "
                       "agentUser in the node's config")


def resolve_user(name: str, *, create: bool = True) -> AgentUser | None:
    """The user agents run as: None when they run as the node's own user (it is not root, or
    `name` is the node's user). Creates the account when the node is root and it is absent."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if not create:
            raise SandboxError(f"agentUser {name!r} is not a user of this machine; create it or change "
                               "agentUser in the node's config") from None
        _useradd(name)
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise SandboxError(f"useradd said it created {name}, but it is not in the user database") from None
    if entry.pw_uid == os.geteuid():
        return None
    groups = tuple(sorted({g.gr_gid for g in grp.getgrall() if name in g.gr_mem} | {entry.pw_gid}))
    return AgentUser(name, entry.pw_uid, entry.pw_gid, groups)


def closed_folder(path: Path, user: AgentUser | None) -> Path | None:
    """The first folder on the way to `path` that `user` may not pass (no x for it); None if it may.
    Reads only the mode bits: enough to tell a user why a program or folder is out of its agents' reach."""
    if user is None:
        return None
    path = Path(os.path.abspath(path))
    for folder in [*reversed(path.parents), path]:
        try:
            st = os.stat(folder)
        except OSError:
            return None    # not there (yet): nothing to say
        if not stat.S_ISDIR(st.st_mode):
            continue
        if st.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif st.st_gid in user.groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return folder
    return None


def address_space_limit(memory: int) -> int:
    """RLIMIT_AS for an agent of `memory` bytes: see ADDRESS_SPACE_HEADROOM."""
    return memory + ADDRESS_SPACE_HEADROOM


def requested(spec: dict[str, Any]) -> tuple[int | None, float | None]:
    """The agent's resources.memory (bytes) and resources.cpu (cores); None (or 0) is no limit."""
    resources = spec.get("resources") or {}
    memory = parse_memory(resources["memory"]) if resources.get("memory") not in (None, "") else None
    cpu = parse_cpu(resources["cpu"]) if resources.get("cpu") not in (None, "") else None
    return memory or None, cpu or None


# -- cgroup v2 ------------------------------------------------------------------------------------

def own_cgroup(proc_cgroup: str, mountinfo: str) -> Path | None:
    """This process's cgroup v2 folder, from /proc/self/cgroup and /proc/self/mountinfo; None without one."""
    path = next((line[3:] for line in proc_cgroup.splitlines() if line.startswith("0::")), None)
    if path is None:
        return None
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line:
            continue
        fstype = line.split(" - ", 1)[1].split()[0]
        if fstype == "cgroup2":
            root, mount = fields[3], fields[4]
            relative = os.path.relpath(path, root) if root != "/" else path.lstrip("/")
            if relative.startswith(".."):
                continue
            return Path(mount) / relative if relative not in ("", ".") else Path(mount)
    return None


class Cgroups:
    """Each agent's cgroup, under `base`/oneos-<node>: made with the memory and cpu controllers."""

    def __init__(self, base: Path, node_id: str) -> None:
        self.base = base
        self.root = base / f"oneos-{re.sub(r'[^A-Za-z0-9_.-]', '_', node_id)}"

    @classmethod
    def prepare(cls, base: Path, node_id: str) -> "Cgroups":
        """Enable the controllers for the node's agents under `base`; OSError when the node may not.
        A cgroup that holds processes may not enable controllers for children (cgroup v2's rule):
        when this node is alone in it (a delegated systemd unit), it first moves into a leaf of its own."""
        missing = [c for c in CGROUP_CONTROLLERS if c not in (base / "cgroup.controllers").read_text().split()]
        if missing:
            raise OSError(errno.ENOTSUP, f"the controllers {', '.join(missing)} are not available in {base}")
        cgroups = cls(base, node_id)
        try:
            cgroups._enable(base)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            procs = (base / "cgroup.procs").read_text().split()
            if procs != [str(os.getpid())]:
                raise OSError(errno.EBUSY, f"{base} holds other processes than this node") from None
            leaf = base / "oneosd"
            leaf.mkdir(exist_ok=True)
            (leaf / "cgroup.procs").write_text(f"{os.getpid()}\n")
            cgroups._enable(base)
        cgroups.root.mkdir(exist_ok=True)
        cgroups._enable(cgroups.root)
        return cgroups

    @staticmethod
    def _enable(folder: Path) -> None:
        present = (folder / "cgroup.subtree_control").read_text().split()
        wanted = [c for c in CGROUP_CONTROLLERS if c not in present]
        if wanted:
            (folder / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted) + "\n")

    def make(self, key: str, memory: int | None, cpu: float | None) -> Path:
        """The agent's cgroup with its limits ("max": none); made anew for each start."""
        folder = self.root / key
        self.remove(key)
        folder.mkdir()
        (folder / "memory.max").write_text(f"{memory if memory else 'max'}\n")
        quota = "max" if not cpu else str(max(1000, round(cpu * CPU_PERIOD_US)))
        (folder / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}\n")
        return folder

    def remove(self, key: str) -> None:
        """Remove the agent's cgroup (empty once its processes ended); an error is only logged."""
        try:
            (self.root / key).rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("%s: cannot remove its cgroup %s: %s", key, self.root / key, exc.strerror)


# -- the node's sandbox ---------------------------------------------------------------------------

@dataclass
class Sandbox:
    """How this node confines its agents: the user (None: the node's own) and the limit mechanism."""

    user: AgentUser | None
    cgroups: Cgroups | None = None

    @property
    def mechanism(self) -> str:
        return "cgroup" if self.cgroups is not None else "rlimit"

    @classmethod
    def prepare(cls, agent_user: str, node_id: str, *, use_cgroups: bool = True) -> "Sandbox":
        """Resolve (or create) the agent user and find the limit mechanism; says both once in the log."""
        user = resolve_user(agent_user)
        if user is not None and children.SETPRIV is None:
            raise SandboxError(f"cannot run agents as {user.name}: setpriv (util-linux) is missing; install "
                               "util-linux, or set agentUser to root to run agents unsandboxed")
        cgroups, why = None, "no cgroup v2"
        if use_cgroups:
            cgroups, why = cls._cgroups(node_id)
        sandbox = cls(user, cgroups)
        if user is not None:
            who = f"as {user.name} (uid {user.uid})"
        else:
            who = f"as this node's user (uid {os.geteuid()})"
            if os.geteuid() != 0:
                who += ": only a node run as root can run them as another user"
        if cgroups is not None:
            how = f"resources.memory and cpu are limited by cgroup v2 under {cgroups.root}"
        elif children.PRLIMIT is None:
            how = f"resources.memory and cpu are not limited ({why}, and prlimit of util-linux is missing)"
        else:
            how = (f"resources.memory is limited by RLIMIT_AS (memory + {format_memory(ADDRESS_SPACE_HEADROOM)}), "
                   f"resources.cpu is not limited ({why})")
        log.info("agents run %s; %s", who, how)
        return sandbox

    @staticmethod
    def _cgroups(node_id: str) -> tuple[Cgroups | None, str]:
        try:
            base = own_cgroup(Path("/proc/self/cgroup").read_text(), Path("/proc/self/mountinfo").read_text())
        except OSError:
            base = None
        if base is None:
            return None, "no cgroup v2"
        try:
            return Cgroups.prepare(base, node_id), ""
        except OSError as exc:
            return None, f"no cgroup v2 for agents at {base}: {exc.strerror or exc}"

    def confinement(self, key: str, spec: dict[str, Any], *, as_node: bool) -> tuple[children.Confinement, dict]:
        """How to start the agent `key`: its Confinement, and the limits it got (for its status).
        `as_node`: a kernel agent, which runs as the node's user (limits apply all the same)."""
        memory, cpu = requested(spec)
        user = None if as_node else self.user
        applied: dict[str, Any] = {}
        cgroup = None
        if self.cgroups is not None and (memory or cpu):
            cgroup = str(self.cgroups.make(key, memory, cpu))
            applied = {"by": "cgroup", **({"memory": format_memory(memory)} if memory else {}),
                       **({"cpu": cpu} if cpu else {})}
        elif memory and children.PRLIMIT is not None:
            applied = {"by": "rlimit", "memory": format_memory(memory),
                       "addressSpace": format_memory(address_space_limit(memory))}
        confine = children.Confinement(uid=user.uid if user else None, gid=user.gid if user else None,
                                       address_space=address_space_limit(memory) if applied.get("by") == "rlimit"
                                       else None, cgroup=cgroup)
        return confine, applied

    def ended(self, key: str) -> None:
        """After an agent's process ended: its cgroup goes."""
        if self.cgroups is not None:
            self.cgroups.remove(key)

    def own(self, fd: int) -> None:
        """Give the file open at `fd` to the agent user; nothing when agents run as the node's user.
        By descriptor, never by path: the agent may have swapped a folder on the way for a link."""
        if self.user is not None:
            os.fchown(fd, self.user.uid, self.user.gid)

    def warn_unreachable(self, what: str, path: Path) -> None:
        """Say once, at start, when the agent user cannot reach `path` (a folder on the way is closed to it)."""
        closed = closed_folder(path, self.user)
        if closed is not None:
            assert self.user is not None
            log.warning("agents run as %s, who cannot reach %s %s: the folder %s is closed to them; make it "
                        "reachable (chmod o+x %s), or set agentUser to run agents as another user",
                        self.user.name, what, path, closed, closed)


def open_folder(root: Path, parts: tuple[str, ...] | list[str], own: Any = None) -> int:
    """A descriptor of root/parts..., each folder made if missing (and given away by `own(fd)`), none
    of them followed if it is a symbolic link (ELOOP, ENOTDIR): the folders below `root` are the
    agent's, which may have replaced one by a link to the node's files. Close it when done."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for n, part in enumerate(parts):
            made = False
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
                made = True
            except FileExistsError:
                pass
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise PathEscape(f"{'/'.join(parts[:n + 1])} in {root} is a symbolic link or not a folder: "
                                 "not followed") from None
            os.close(fd)
            fd = child
            if made and own is not None:
                own(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def private_folder(path: Path, mode: int = 0o700) -> Path:
    """Make `path` (and missing parents) with `mode`; an existing one of this user's is set to `mode`."""
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    st = path.stat()
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)
    return path


def python_home() -> Path:
    """Where this Python's standard library is: agents run OneOS's commands with it."""
    return Path(os.path.realpath(sys.executable))
