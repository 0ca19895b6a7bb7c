"""The node's sandbox decisions: which user, which limit mechanism, what limits an agent gets, and
the folders it cannot pass. (tests/security/test_sandbox.py runs agents so confined on a real node.)"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from oneos import children
from oneos.errors import UsageError
from oneos.paths import PathEscape
from oneos.nodeagent import sandbox
from oneos.nodeagent.sandbox import AgentUser, Cgroups, Sandbox, SandboxError

AGENT = AgentUser("oneos-agent", 999, 998, (998,))

MOUNTINFO = """\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
"""


def test_its_own_cgroup_is_found_from_proc():
    assert sandbox.own_cgroup("0::/system.slice/oneosd.service\n", MOUNTINFO) == \
        Path("/sys/fs/cgroup/system.slice/oneosd.service")
    assert sandbox.own_cgroup("0::/\n", MOUNTINFO) == Path("/sys/fs/cgroup")
    # cgroup v1 only (no 0:: line), or no cgroup2 mount: none.
    assert sandbox.own_cgroup("4:memory:/x\n1:cpu:/\n", MOUNTINFO) is None
    assert sandbox.own_cgroup("0::/\n", MOUNTINFO.splitlines()[0]) is None


def fake_cgroup(folder: Path, controllers: str = "cpuset cpu io memory pids") -> Path:
    """A folder with the files of a cgroup v2 folder, for the decisions only (the kernel makes them
    in a real one; tests/test_children.py runs the chain that joins one)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cgroup.controllers").write_text(controllers + "\n")
    (folder / "cgroup.subtree_control").write_text("")
    (folder / "cgroup.procs").write_text("")
    return folder


def unlink_interface_files(folder: Path) -> None:
    """What the kernel does for a real cgroup: its files go with it, rmdir removes it."""
    for name in ("memory.max", "cpu.max"):
        (folder / name).unlink()


def test_cgroups_get_the_memory_and_cpu_controllers_and_each_agent_its_limits(tmp_path):
    base = fake_cgroup(tmp_path / "cg")
    fake_cgroup(base / "oneos-n1")
    cgroups = Cgroups.prepare(base, "n1")
    assert (base / "cgroup.subtree_control").read_text() == "+memory +cpu\n"
    assert (base / "oneos-n1" / "cgroup.subtree_control").read_text() == "+memory +cpu\n"
    folder = cgroups.make("p.a", 64 << 20, 0.5)
    assert (folder / "memory.max").read_text() == f"{64 << 20}\n"
    assert (folder / "cpu.max").read_text() == "50000 100000\n"        # half a core: 50 ms every 100 ms
    unlink_interface_files(folder)
    cgroups.remove("p.a")
    assert not folder.exists()
    unlimited = cgroups.make("p.b", None, 1)
    assert (unlimited / "memory.max").read_text() == "max\n"


def test_a_cgroup_without_the_controllers_is_not_used(tmp_path):
    base = fake_cgroup(tmp_path / "cg", controllers="cpuset pids")
    with pytest.raises(OSError, match="memory, cpu are not available"):
        Cgroups.prepare(base, "n1")


def test_an_agent_gets_an_address_space_limit_with_headroom_without_cgroups():
    box = Sandbox(AGENT)
    confine, limits = box.confinement("p.a", {"resources": {"memory": "64Mi", "cpu": "500m"}}, as_node=False)
    assert confine == children.Confinement(uid=999, gid=998, address_space=(64 + 256) << 20)
    assert limits == {"by": "rlimit", "memory": "64Mi", "addressSpace": "320Mi"}   # cpu: not limited
    # A kernel agent runs as the node's user; its limits apply all the same.
    confine, _ = box.confinement("oneos-init.pulsar", {"resources": {"memory": "1Gi"}}, as_node=True)
    assert (confine.uid, confine.address_space) == (None, (1024 + 256) << 20)
    # No resources: no limit, nothing to say.
    assert box.confinement("p.a", {}, as_node=False) == (children.Confinement(uid=999, gid=998), {})


def test_with_cgroups_an_agent_joins_its_own(tmp_path):
    base = fake_cgroup(tmp_path / "cg")
    fake_cgroup(base / "oneos-n1")
    box = Sandbox(AGENT, Cgroups.prepare(base, "n1"))
    confine, limits = box.confinement("p.a", {"resources": {"memory": "64Mi", "cpu": 2}}, as_node=False)
    assert confine == children.Confinement(uid=999, gid=998, cgroup=str(base / "oneos-n1" / "p.a"))
    assert limits == {"by": "cgroup", "memory": "64Mi", "cpu": 2}
    unlink_interface_files(base / "oneos-n1" / "p.a")
    box.ended("p.a")
    assert not (base / "oneos-n1" / "p.a").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="as root")
def test_the_agent_user_is_resolved_and_the_nodes_own_user_means_no_switch():
    assert sandbox.resolve_user("root") is None
    with pytest.raises(SandboxError, match="is not a user of this machine"):
        sandbox.resolve_user("oneos-no-such-user", create=False)
    with pytest.raises(SandboxError, match=r"cannot create the user Not A Name .*set agentUser"):
        sandbox.resolve_user("Not A Name")


@pytest.fixture
def open_tmp():
    """A folder in /tmp that other users may pass (pytest's own are closed to them)."""
    folder = Path(tempfile.mkdtemp(prefix="oneos-test-"))
    folder.chmod(0o711)
    yield folder
    shutil.rmtree(folder)


def test_a_folder_closed_to_the_agent_user_is_named(open_tmp):
    tmp_path = open_tmp
    open_ = tmp_path / "open"
    closed = open_ / "closed"
    inner = closed / "inner"
    inner.mkdir(parents=True)
    open_.chmod(0o711)
    closed.chmod(0o700)
    user = AgentUser("someone", 12345, 12345)
    assert sandbox.closed_folder(inner, user) == closed
    assert sandbox.closed_folder(open_, user) is None
    assert sandbox.closed_folder(inner, None) is None            # agents run as the node's user


def test_open_folder_follows_no_link_the_agent_may_have_planted(tmp_path):
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (work / "lib").symlink_to(outside)
    with pytest.raises(PathEscape, match="lib in .* is a symbolic link or not a folder: not followed"):
        sandbox.open_folder(work, ["lib", "deeper"])
    assert list(outside.iterdir()) == []
    owned = []
    fd = sandbox.open_folder(work, ["a", "b"], own=lambda fd: owned.append(os.fstat(fd).st_ino))
    try:
        assert os.fstat(fd).st_ino == (work / "a" / "b").stat().st_ino
    finally:
        os.close(fd)
    assert owned == [(work / "a").stat().st_ino, (work / "a" / "b").stat().st_ino]


def test_private_folders_are_made_with_their_mode_and_set_to_it(tmp_path):
    made = sandbox.private_folder(tmp_path / "home" / "runtimes", 0o711)
    assert made.stat().st_mode & 0o777 == 0o711
    made.chmod(0o755)
    sandbox.private_folder(made, 0o711)
    assert made.stat().st_mode & 0o777 == 0o711


def test_the_agent_user_comes_from_the_config_and_oneos_agent_user_overrides_it(tmp_path, monkeypatch):
    from oneos.nodeagent import config as runtime_config
    monkeypatch.setenv("ONEOS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ONEOS_AGENT_USER", raising=False)
    conf = tmp_path / "node.yaml"
    conf.write_text("id: n1\n")

    def load() -> str:
        return runtime_config.load(runtime_config.Overrides(config_file=conf), interactive=False).agent_user
    assert load() == "oneos-agent"
    conf.write_text("id: n1\nagentUser: pi\n")
    assert load() == "pi"
    monkeypatch.setenv("ONEOS_AGENT_USER", "nobody")
    assert load() == "nobody"
    conf.write_text("id: n1\nagentUser: 'no spaces'\n")
    with pytest.raises(UsageError, match="agentUser"):
        load()
