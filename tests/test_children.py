"""Children that die with their parent, without loading anything in the forked child."""

from __future__ import annotations

import os
import shlex
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


@pytest.mark.skipif(children.SETPRIV is None, reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("death_signal", ["SIGKILL", "SIGTERM"])
def test_a_child_dies_when_its_parent_is_killed_with_sigkill(parent, death_signal):
    proc, child = parent(death_signal)
    assert alive(child)
    proc.kill()
    proc.wait()
    wait_until(lambda: not alive(child), 10, "the child to die with its parent")


def test_no_python_runs_in_the_forked_child(monkeypatch):
    # Python between fork and exec (preexec_fn) can deadlock or crash the child of a threaded
    # process: what the child runs before its program is setpriv, a program of its own.
    seen: list[dict] = []
    real = subprocess.Popen

    def popen(argv, **kwargs):
        seen.append(kwargs)
        return real(argv, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)
    child = children.spawn([sys.executable, "-c", "print('ran')"], stdout=subprocess.PIPE)
    out, _ = child.communicate(timeout=60)
    assert (child.returncode, out) == (0, b"ran\n")
    assert seen and seen[0].get("preexec_fn") is None


def test_the_program_sees_its_own_name_and_arguments(tmp_path):
    child = children.spawn(["sh", "-c", 'printf "%s|" "$0" "$@"', "zero", "a b", ""], stdout=subprocess.PIPE)
    out, _ = child.communicate(timeout=60)
    assert out == b"zero|a b||"
    # A program named with a slash is found relative to the child's working folder.
    script = tmp_path / "hello"
    script.write_text("#!/bin/sh\necho hello from $(basename $(pwd))\n")
    script.chmod(0o755)
    child = children.spawn(["./hello"], cwd=tmp_path, stdout=subprocess.PIPE)
    assert child.communicate(timeout=60)[0] == f"hello from {tmp_path.name}\n".encode()


def test_a_program_that_cannot_run_raises_as_popen_does(tmp_path):
    with pytest.raises(FileNotFoundError):
        children.spawn(["no-such-program-oneos"])
    with pytest.raises(FileNotFoundError):
        children.spawn(["sleep"], env={"PATH": str(tmp_path)})   # looked up in the child's PATH
    plain = tmp_path / "plain"
    plain.write_text("not a program\n")
    with pytest.raises(PermissionError):
        children.spawn([str(plain)])
    with pytest.raises(FileNotFoundError):
        children.spawn([str(tmp_path)])   # a folder is not a program


def test_a_child_has_a_session_of_its_own():
    child = children.spawn([sys.executable, "-c", "import os; print(os.getsid(0))"], stdout=subprocess.PIPE)
    out, _ = child.communicate(timeout=60)
    assert int(out) == child.pid != os.getsid(0)


def test_signal_group_reaches_the_child_and_ignores_one_that_ended():
    child = children.spawn(["sleep", "600"])
    children.signal_group(child, signal.SIGTERM)
    assert child.wait(60) == -signal.SIGTERM
    children.signal_group(child, signal.SIGTERM)   # gone: nothing to do, no error


# -- confinement: the user, the address space and the cgroup, set in the exec chain ---------------

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0 or children.SETPRIV is None,
                             reason="only root can run a child as another user")


def test_the_chain_switches_user_then_asks_for_the_death_signal_then_limits_then_checks():
    confine = children.Confinement(uid=999, gid=998, address_space=300 << 20, cgroup="/sys/fs/cgroup/oneos-n1/p.a")
    argv = children.chain(["prog", "arg"], signal.SIGKILL, confine, parent=4242)
    if children.SETPRIV is None:
        pytest.skip("no setpriv here")
    check = '[ "$PPID" = 4242 ] && exec "$0" "$@"; kill -s KILL $$; exit 126'
    assert argv == [
        # as the node's user, before anything else: into the agent's cgroup
        "/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', "/sys/fs/cgroup/oneos-n1/p.a/cgroup.procs",
        # the agent's user; setpriv sets the death signal after the switch, which clears it
        children.SETPRIV, "--reuid", "999", "--regid", "998", "--init-groups", "--pdeathsig", "SIGKILL", "--",
        children.PRLIMIT, f"--as={300 << 20}:{300 << 20}", "--",
        # and only then the check that the parent is still there, and the program
        "/bin/sh", "-c", check, "prog", "arg"]
    # Without a confinement the chain is what it always was.
    assert children.chain(["prog"], signal.SIGTERM, None, parent=7) == [
        children.SETPRIV, "--pdeathsig", "SIGTERM", "--", "/bin/sh", "-c",
        '[ "$PPID" = 7 ] && exec "$0" "$@"; kill -s TERM $$; exit 126', "prog"]


@as_root
def test_a_confined_child_runs_as_its_user_with_its_address_space_limit(tmp_path):
    child = children.spawn(["sh", "-c", "id -u; id -g; ulimit -v"], stdout=subprocess.PIPE,
                           confine=children.Confinement(uid=NOBODY, gid=NOBODY, address_space=64 << 20))
    out, _ = child.communicate(timeout=60)
    assert out.decode().split() == [str(NOBODY), str(NOBODY), str(64 << 10)]   # ulimit -v counts KiB


@as_root
def test_a_confined_child_joins_its_cgroup_before_its_program_runs(tmp_path):
    """A folder standing in for the cgroup: the chain's first shell writes its pid to cgroup.procs,
    as the node's user, and the program that runs later (as another user) is that same process."""
    (tmp_path / "cgroup.procs").write_text("")
    child = children.spawn(["sh", "-c", "echo $$"], stdout=subprocess.PIPE,
                           confine=children.Confinement(uid=NOBODY, gid=NOBODY, cgroup=str(tmp_path)))
    out, _ = child.communicate(timeout=60)
    assert int(out) == child.pid == int((tmp_path / "cgroup.procs").read_text())


@as_root
def test_a_child_run_as_another_user_still_dies_with_its_parent():
    """Linux clears the death signal when a process's user changes: setpriv asks for it after."""
    script = PARENT.replace('children.spawn(["sleep", "600"], death_signal=sig)',
                            f'children.spawn(["sleep", "600"], death_signal=sig, '
                            f'confine=children.Confinement(uid={NOBODY}, gid={NOBODY}))')
    proc = subprocess.Popen([sys.executable, "-c", script, "SIGKILL"], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    try:
        wait_until(lambda: os.stat(f"/proc/{child}").st_uid == NOBODY, 10, "the child to run as nobody")
        proc.kill()
        proc.wait()
        wait_until(lambda: not alive(child), 10, "the child to die with its parent")
    finally:
        proc.kill()
        proc.wait()
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_command_line_is_one_line_that_pastes_back_into_a_shell():
    argv = ["python3", "-c", "import sys\nprint(sys.argv)", "it's", "a b"]
    line = children.command_line(argv)
    assert "\n" not in line
    assert line == "python3 -c 'import sys\\nprint(sys.argv)' 'it'\"'\"'s' 'a b'"
    assert shlex.split(line.replace("\\n", "\n")) == argv
