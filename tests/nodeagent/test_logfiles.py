"""An agent's local log files, in-process: capped and rotated as logrotate does, only the last
few starts kept, removed with the agent, and the limits read from the node's config.

The files of real agents (written by their bridge, removed with their pipeline) are checked
with real processes in tests/e2e/test_bounded_disk.py; here, what a node that starts again
finds of agents whose pipelines were deleted while it was down.
"""

from __future__ import annotations

import pytest

from oneos import state
from oneos.errors import UsageError
from oneos.nameserver.client import NameServer
from oneos.nodeagent import config as runtime_config
from oneos.nodeagent import logfiles
from oneos.nodeagent.logfiles import LogFile, LogLimits
from oneos.nodeagent.supervisor import Supervisor
from oneos.paths import PathEscape
from tests.procs import wait_until

SMALL = LogLimits(max_file_bytes=4096, rotated=2, incarnations=3)


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_full_file_is_rotated_and_the_newest_bytes_are_kept_in_order(tmp_path):
    log = LogFile(tmp_path, "p.a", 1, SMALL)
    written = b"".join(b"line %06d\n" % i for i in range(5000))     # 60 KB, in writes of odd sizes
    for start in range(0, len(written), 777):
        log.write(written[start:start + 777])
    log.close()
    assert names(tmp_path) == ["p.a.1.log", "p.a.1.log.1", "p.a.1.log.2"]
    sizes = {name: (tmp_path / name).stat().st_size for name in names(tmp_path)}
    assert sizes["p.a.1.log.1"] == sizes["p.a.1.log.2"] == 4096 and 0 < sizes["p.a.1.log"] <= 4096
    kept = b"".join((tmp_path / n).read_bytes() for n in ("p.a.1.log.2", "p.a.1.log.1", "p.a.1.log"))
    assert written.endswith(kept), "the rotated files and the current one are the log's last bytes, in order"


def test_a_write_larger_than_a_file_is_split_and_without_rotated_files_one_file_remains(tmp_path):
    log = LogFile(tmp_path, "p.a", 1, LogLimits(max_file_bytes=4096, rotated=0))
    log.write(b"x" * 10000)
    log.write(b"tail\n")
    log.close()
    assert names(tmp_path) == ["p.a.1.log"]
    assert (tmp_path / "p.a.1.log").read_bytes() == b"x" * (10000 - 8192) + b"tail\n"


def test_an_incarnation_that_appends_again_counts_what_is_there(tmp_path):
    (tmp_path / "p.a.1.log").write_bytes(b"y" * 4000)
    log = LogFile(tmp_path, "p.a", 1, SMALL)
    log.write(b"z" * 200)
    log.close()
    assert (tmp_path / "p.a.1.log.1").read_bytes() == b"y" * 4000 + b"z" * 96
    assert (tmp_path / "p.a.1.log").read_bytes() == b"z" * 104


def test_only_the_last_starts_keep_their_files_and_other_agents_are_untouched(tmp_path):
    for incarnation in range(1, 6):
        log = LogFile(tmp_path, "p.a", incarnation, SMALL)
        log.write(b"x" * 5000)                  # each start leaves a rotated file too
        log.close()
    for other in ("p.ab.1.log", "p.a-b.1.log", "q.a.1.log", "p.a.1.log.txt"):
        (tmp_path / other).write_text("someone else's\n")
    LogFile(tmp_path, "p.a", 6, SMALL).close()
    assert names(tmp_path) == ["p.a-b.1.log", "p.a.1.log.txt", "p.a.4.log", "p.a.4.log.1", "p.a.5.log",
                               "p.a.5.log.1", "p.a.6.log", "p.ab.1.log", "q.a.1.log"]
    logfiles.remove(tmp_path, "p.a")
    assert names(tmp_path) == ["p.a-b.1.log", "p.a.1.log.txt", "p.ab.1.log", "q.a.1.log"]
    assert logfiles.remove_all_but(tmp_path, {"q.a"}) == ["p.a-b", "p.ab"]
    assert names(tmp_path) == ["p.a.1.log.txt", "q.a.1.log"]


def test_an_agent_id_that_would_leave_the_folder_is_refused(tmp_path):
    for key in ("../p.a", "", ".hidden", "a/b"):
        with pytest.raises(PathEscape, match="cannot name a log file"):
            LogFile(tmp_path / "logs", key, 1, SMALL)
    assert not (tmp_path / "p.a.1.log").exists()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "p.b.1.log").symlink_to(tmp_path / "elsewhere.log")
    with pytest.raises(PathEscape, match="through a symbolic link"):
        LogFile(tmp_path / "logs", "p.b", 1, SMALL)
    assert not (tmp_path / "elsewhere.log").exists()


def test_the_limits_come_from_the_nodes_config(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEOS_HOME", str(tmp_path))
    config = tmp_path / "node.yaml"

    def load():
        return runtime_config.load(runtime_config.Overrides(id="n1", config_file=config), interactive=False)

    config.write_text("logs: {maxFileSize: 64Ki, rotatedFiles: 1, incarnations: 2}\n")
    assert load().logs == LogLimits(max_file_bytes=65536, rotated=1, incarnations=2)
    config.write_text("kernel: false\n")
    assert load().logs == LogLimits() and LogLimits().per_agent() == 12 << 20
    config.write_text("logs: {maxFileSize: 1Ki}\n")
    with pytest.raises(UsageError) as small:
        load()
    assert str(small.value) == (f"{config}: logs.maxFileSize '1Ki' is below 4096 bytes; use at least 4Ki; "
                                "fix the config file")
    config.write_text("logs: {incarnations: 0}\n")
    with pytest.raises(UsageError, match=f"^{config}.*incarnations"):
        load()


def test_a_node_that_starts_removes_the_files_of_agents_no_longer_assigned_to_it(builtin_nameserver, tmp_path):
    ns = NameServer(builtin_nameserver.url)
    manifest = {"apiVersion": "oneos/v1", "kind": "Pipeline", "metadata": {"name": "kept", "uid": "1" * 32,
                                                                          "generation": 1},
                "spec": {"agents": [{"name": "a", "run": ["sleep", "60"]}]}}
    state.put_document(ns, state.assign_key("n9", "kept.a"), "assignment",
                       dict(state.desired_assignments(manifest)["kept.a"], epoch=1))
    workdir = tmp_path / "agents"
    for key in ("kept.a", "gone.a", "gone.b"):
        (workdir / key).mkdir(parents=True)
        (workdir / key / "tool.py").write_text("print()\n")
    (workdir / "logs").mkdir()
    for name in ("kept.a.1.log", "gone.a.1.log", "gone.a.2.log.1", "gone.c.3.log", "README"):
        (workdir / "logs" / name).write_text("old\n")
    (workdir / "Not-An-Agent").mkdir()
    sup = Supervisor(ns, "n9", {"pulsar": {"namespace": "public/default"}}, workdir, bus_factory=lambda: None)
    sup.suspend("this test starts no agent")      # its assignments are kept, and nothing runs
    sup.start()
    try:
        wait_until(lambda: not (workdir / "gone.a").exists() and names(workdir / "logs") == ["README", "kept.a.1.log"],
                   20, "the files of the agents no longer assigned here to be removed")
        assert names(workdir) == ["Not-An-Agent", "kept.a", "logs"]
    finally:
        sup.stop()
