"""Bounded disk, with real processes: what runs leave behind goes when they are deleted.

200 one-liners (several at a time, as `oneosctl run` runs them, in this process; most of
one stage, to keep the test short) ship small scripts (20 different ones, so 20 blobs,
each shipped again and again while earlier runs that used it are being deleted), write
stderr (agent logs, on the bus and in the nodes' files), pipe between stages and exit
with various statuses. Afterwards, once the controller's janitor has run,
the Name Server's key count and the nodes' data folders are back where they were.

A node's data folder is its ONEOS_HOME without the file this test sends oneosd's own
stderr to (a service manager's journal holds it in production). The broker's db is not in
it: the test's pulsar-lite keeps it in a folder of its own, which grows with every run's
streams (pulsar-lite has no admin API and no retention; see README, "Disk").
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import time
from pathlib import Path

import pytest

from oneos import manifests, state
from oneos.cli.run import Progress, Run
from oneos.nameserver.client import NameServer
from oneos.bus import topics
from tests.conftest import running_cluster
from tests.procs import wait_until
from tests.pulsar_admin import FakeAdmin

RUNS = 200
AT_ONCE = 8
SCRIPTS = 20
GRACE = "2s"
# Small log files, so that rotation shows with little output.
LOG_LIMITS = "logs: {maxFileSize: 16Ki, rotatedFiles: 1, incarnations: 2}\n"
NODES = {"n1": ["--kernel"], "n2": ["--no-kernel"]}    # two: 200 runs cost CPU on every node


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("disk")
    for node_id in NODES:
        (root / f"home-{node_id}").mkdir()
        (root / f"home-{node_id}" / "config.yaml").write_text(LOG_LIMITS)
    with running_cluster(root, NODES, blobGracePeriod=GRACE) as c:
        yield c


def footprint(cluster) -> tuple[int, int]:
    """(files, bytes) in the nodes' data folders (see the module doc)."""
    files = size = 0
    for node in cluster.nodes:
        for folder, _, names in os.walk(node.home):
            for name in names:
                path = Path(folder) / name
                if path == node.log_path:
                    continue
                try:
                    size += path.stat().st_size
                    files += 1
                except FileNotFoundError:
                    pass      # removed while we looked
    return files, size


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def key_count(cluster) -> int:
    return len(cluster.ns.keys("")[1])


def one_liner(i: int) -> tuple[str, int, bytes, bytes]:
    """Run i: (line, exit status, stdout, what its stderr contains)."""
    if i % 2 == 0:
        k = (i // 2) % SCRIPTS
        return f"./s{k}.sh run-{i}", 0, f"run-{i}\n".encode(), f"script {k}\n".encode()
    if i % 4 == 1:
        return f"ls /nonexistent-{i}", 2, b"", f"/nonexistent-{i}".encode()
    return f"seq 1 {i} | wc -l", 0, f"{i}\n".encode(), b""


def run_one(url: str, cwd: Path, i: int) -> tuple[int, tuple, tuple]:
    line, *expected = one_liner(i)
    out, err = io.BytesIO(), io.BytesIO()
    with open(os.devnull, "rb") as devnull:
        job = Run(NameServer(url), line, cwd=cwd, stdin_fd=devnull.fileno(), stdout=out, stderr=err,
                  progress=Progress(io.StringIO()))
        try:
            code = job.execute()
        finally:
            job.cleanup()
    return i, (code, out.getvalue(), expected[2] in err.getvalue()), (expected[0], expected[1], True)


def test_two_hundred_runs_leave_the_name_server_and_the_nodes_data_folders_as_they_were(cluster, tmp_path):
    for k in range(SCRIPTS):
        script = tmp_path / f"s{k}.sh"
        script.write_text(f'#!/bin/sh\necho "script {k}" >&2\necho "$1"\n')
        script.chmod(0o755)
    keys_before, (files_before, bytes_before) = key_count(cluster), footprint(cluster)
    broker_before = folder_size(cluster.broker.data_dir)

    started = time.monotonic()
    peak_keys, peak_files, peak_bytes = keys_before, files_before, bytes_before
    wrong = []
    with concurrent.futures.ThreadPoolExecutor(AT_ONCE) as pool:
        pending = {pool.submit(run_one, cluster.url, tmp_path, i) for i in range(RUNS)}
        while pending:
            done, pending = concurrent.futures.wait(pending, timeout=0.5)
            for future in done:
                i, got, expected = future.result()
                if got != expected:
                    wrong.append((one_liner(i)[0], got, expected))
            files, size = footprint(cluster)
            peak_keys, peak_files, peak_bytes = (max(peak_keys, key_count(cluster)), max(peak_files, files),
                                                 max(peak_bytes, size))
    ran = time.monotonic() - started
    assert not wrong, f"{len(wrong)} runs printed or exited other than bash would, such as {wrong[:3]}"

    def settled():
        now = key_count(cluster), *footprint(cluster)
        return now if now[0] <= keys_before and now[1] <= files_before and now[2] <= bytes_before else None

    keys_after, files_after, bytes_after = cluster.wait_for(
        settled, 60, f"the key count back to {keys_before} and the data folders to {files_before} files")
    print(f"\n{RUNS} runs, {AT_ONCE} at a time: {ran:.1f}s; settled {time.monotonic() - started - ran:.1f}s later. "
          f"Name Server keys {keys_before} -> peak {peak_keys} -> {keys_after}; nodes' data folders "
          f"{files_before} files/{bytes_before} B -> peak {peak_files}/{peak_bytes} B -> {files_after}/{bytes_after} B; "
          f"pulsar-lite's db (not bounded) {broker_before} B -> {folder_size(cluster.broker.data_dir)} B")
    assert peak_keys > keys_before + SCRIPTS // 2, "the runs' keys were seen while they ran"
    assert not cluster.ns.keys(state.BLOBS)[1], "every shipped file was deleted"


CHATTY = ("import sys, time\n"
          "sys.stderr.write('x' * 100000 + '\\n')\n"
          "sys.stderr.flush()\n"
          "time.sleep(600)\n")


def log_files(cluster, key: str) -> dict[str, int]:
    """name -> size of the agent's log files, on every node."""
    found = {}
    for node in cluster.nodes:
        logs = node.home / "runtimes" / node.node_id / "agents" / "logs"
        for path in logs.glob(f"{key}.*"):
            try:
                found[path.name] = path.stat().st_size
            except FileNotFoundError:
                pass
    return found


def test_an_agents_log_file_is_capped_and_rotated_and_goes_with_its_pipeline(cluster, tmp_path):
    manifest = {"apiVersion": "oneos/v1", "kind": "Pipeline", "metadata": {"name": "chatty"},
                "spec": {"agents": [{"name": "talk", "run": ["python3", "-c", CHATTY], "restart": "no"}]}}
    manifests.apply_pipeline(cluster.ns, manifest, tmp_path)
    # 100001 bytes of stderr in files of 16 KiB, one rotated file kept: the last 16384 + 1697 bytes.
    expected = {"chatty.talk.1.log.1": 16384, "chatty.talk.1.log": 100001 - 6 * 16384}
    cluster.wait_for(lambda: log_files(cluster, "chatty.talk") == expected, 30,
                     f"the agent's log files to be {expected}")
    # The log topic (`oneosctl logs`) keeps everything; its last bytes may still be on their way.
    wait_until(lambda: cluster.ctl_bytes("logs", "chatty/talk") == b"x" * 100000 + b"\n", 30,
               "`oneosctl logs` to print all 100001 bytes", interval=0.5)

    manifests.delete_pipeline(cluster.ns, "chatty")
    cluster.wait_for(lambda: not log_files(cluster, "chatty.talk") and not state.read_statuses(cluster.ns, "chatty"),
                     30, "the agent's log files and status to be removed")
    assert not any((node.home / "runtimes" / node.node_id / "agents" / "chatty.talk").exists()
                   for node in cluster.nodes)


def test_the_leader_deletes_a_finished_runs_topics_through_the_pulsar_admin_api(cluster, tmp_path):
    """pulsar-lite has no admin API: a stand-in answers for it, told which topics the run made."""
    admin = FakeAdmin([])
    boot = state.read_boot(cluster.ns)
    state.put_document(cluster.ns, state.BOOT, "boot", dict(boot, pulsar=dict(boot["pulsar"], adminUrl=admin.url)))
    try:
        out = io.BytesIO()
        with open(os.devnull, "rb") as devnull:
            job = Run(NameServer(cluster.url), "seq 1 3 | wc -l", cwd=tmp_path, stdin_fd=devnull.fileno(),
                      stdout=out, stderr=io.BytesIO(), progress=Progress(io.StringIO()))
            try:
                assert (job.execute(), out.getvalue()) == (0, b"3\n")
                namespace = boot["pulsar"]["namespace"]
                made = {topics.link_topic(namespace, job.uid, "seq", "wc"), topics.output_topic(namespace, job.uid, "wc"),
                        topics.input_topic(namespace, job.uid, "seq"), topics.log_topic(namespace, job.uid, "seq", 1),
                        topics.log_topic(namespace, job.uid, "wc", 1)}
                admin.topics |= made | {"persistent://public/default/someone-elses"}
            finally:
                job.cleanup()      # deletes the pipeline
        cluster.wait_for(lambda: admin.topics == {"persistent://public/default/someone-elses"}, 30,
                         "the leader to delete the run's topics")
        assert sorted(admin.deleted) == sorted((topic, "force=true") for topic in made)
    finally:
        state.put_document(cluster.ns, state.BOOT, "boot", boot)
        admin.close()
