"""The controller's janitor, in-process with an injected clock: unreferenced shipped files are
deleted after their grace period and never under an apply that is writing them; deleted
pipelines' topics are deleted through Pulsar's admin API once nothing of them is left.

A real Name Server (the test module's own); the Pulsar admin API is a small in-process HTTP
server that records what it is asked. The same collection runs for real, in the leader,
in tests/e2e/test_bounded_disk.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from oneos import manifests, state
from oneos.bus import topics
from oneos.bus.admin import PulsarAdmin, PulsarAdminError
from oneos.controller.janitor import Janitor, references
from oneos.controller.reconciler import NotLeader, Writes
from oneos.controller.view import ClusterView
from oneos.identity import Identity
from oneos.nameserver.client import NameServer
from tests.conftest import REAL_CONSUL
from tests.pulsar_admin import FakeAdmin
from tests.procs import NameServerProc, free_port

GRACE = 30.0
NOW = "2026-01-02T03:04:05Z"
SCRIPT = b"import sys\nsys.stdout.write(sys.stdin.read().upper())\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if REAL_CONSUL:
        pytest.skip("writes the cluster's own keys: built-in Name Server only")
    proc = NameServerProc(tmp_path_factory.mktemp("janitor") / "ns").start()
    yield proc
    proc.stop()


@pytest.fixture
def ns(server):
    """A bootstrapped Name Server, emptied before each test."""
    client = NameServer(server.url)
    client.delete(state.PREFIX, recurse=True)
    boot = state.new_boot_record(cluster="janitor", pulsar_url="pulsar://127.0.0.1:1", blob_grace=f"{GRACE:g}s")
    state.bootstrap(client, boot, state.default_init(_empty_init(server.data_dir.parent)))
    return client


def _empty_init(folder: Path) -> Path:
    path = folder / "init.yaml"
    path.write_text("apiVersion: oneos/v1\nkind: Init\nmetadata: {name: oneos-init}\nspec: {agents: []}\n")
    return path


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_janitor(ns: NameServer, clock: Clock, session: str | None = None, **kwargs) -> Janitor:
    return Janitor(ns, lambda: Writes(ns, session), clock=clock, **kwargs)


def shipping(tmp_path: Path, name: str = "p", content: bytes = SCRIPT) -> tuple[dict, Path]:
    """A pipeline whose agent ships ./tool.py, and the folder it is applied from."""
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    (folder / "tool.py").write_bytes(content)
    manifest = {"apiVersion": "oneos/v1", "kind": "Pipeline", "metadata": {"name": name},
                "spec": {"agents": [{"name": "tool", "run": ["python3", "tool.py"], "files": ["tool.py"]}]}}
    return manifest, folder


def blob(content: bytes = SCRIPT) -> str:
    return state.blob_key(hashlib.sha256(content).hexdigest())


def test_a_file_no_manifest_ships_is_deleted_once_its_grace_period_has_passed(ns, tmp_path):
    clock = Clock()
    janitor = make_janitor(ns, clock)
    kept, kept_dir = shipping(tmp_path, "kept", b"print('kept')\n")
    gone, gone_dir = shipping(tmp_path, "gone")
    manifests.apply_pipeline(ns, kept, kept_dir)
    manifests.apply_pipeline(ns, gone, gone_dir)
    janitor.sweep()
    assert ns.get_raw(blob()) == SCRIPT, "a file its manifest ships is kept"

    manifests.delete_pipeline(ns, "gone")
    janitor.sweep()                       # first seen unreferenced now
    clock.now += GRACE - 1
    janitor.sweep()
    assert ns.get_raw(blob()) == SCRIPT, "kept during its grace period"
    clock.now += 1
    janitor.sweep()
    assert ns.get_raw(blob()) is None
    assert ns.get_raw(blob(b"print('kept')\n")) == b"print('kept')\n"


def test_a_frame_key_nothing_of_its_pipeline_is_left_of_is_deleted_after_the_grace_period(ns, tmp_path):
    """An apply that made its key and failed before its manifest, or a delete cut short, leaves a frame
    key; the janitor deletes it once its grace has passed, and never the key of a live pipeline."""
    clock = Clock()
    janitor = make_janitor(ns, clock)
    live, live_dir = shipping(tmp_path, "live")
    manifests.apply_pipeline(ns, live, live_dir)
    live_uid = state.decode(ns.get(state.pipeline_key("live"))[1], "pipeline")["metadata"]["uid"]
    state.ensure_pipe_key(ns, "failed", "uid-of-a-failed-apply")      # no manifest was written after it
    orphan = state.pipekey_key("failed", "uid-of-a-failed-apply")
    janitor.sweep()                       # first seen unreferenced now
    clock.now += GRACE - 1
    janitor.sweep()
    assert ns.get_raw(orphan) is not None, "kept during its grace period (an apply may be under way)"
    clock.now += 1
    janitor.sweep()
    assert ns.get_raw(orphan) is None
    assert ns.get_raw(state.pipekey_key("live", live_uid)) is not None


def test_a_frame_key_made_again_during_its_grace_is_kept(ns):
    clock = Clock()
    janitor = make_janitor(ns, clock)
    key = state.pipekey_key("p", "u1")
    state.ensure_pipe_key(ns, "p", "u1")
    janitor.sweep()
    ns.put(key, b"k" * 32)                 # written again (its ModifyIndex moves): its grace starts over
    clock.now += GRACE
    janitor.sweep()
    assert ns.get_raw(key) == b"k" * 32


def test_an_apply_under_way_keeps_its_files(ns, tmp_path):
    """The collection runs between an apply's file writes and its manifest write: nothing is lost."""
    clock = Clock()
    janitor = make_janitor(ns, clock)
    manifest, folder = shipping(tmp_path)
    manifests.apply_pipeline(ns, manifest, folder)
    manifests.delete_pipeline(ns, "p")
    janitor.sweep()
    clock.now += GRACE                     # unreferenced for its whole grace period: due now...

    class Interleaved(NameServer):
        """Runs the collection just before the apply writes its manifest."""
        def put(self, key, value, **kwargs):
            if key == state.pipeline_key("p"):
                janitor.sweep()
            return super().put(key, value, **kwargs)

    manifests.apply_pipeline(Interleaved(ns.url), manifest, folder)
    # ...but the apply shipped it again (its ModifyIndex moved): the compare-and-set failed.
    assert ns.get_raw(blob()) == SCRIPT
    clock.now += GRACE
    janitor.sweep()
    assert ns.get_raw(blob()) == SCRIPT, "its manifest ships it"


def test_a_file_written_before_its_manifest_is_kept_for_the_grace_period(ns, tmp_path):
    """A slow apply: its files are written, its manifest only later, within the grace period."""
    clock = Clock()
    janitor = make_janitor(ns, clock)
    ns.put(blob(), SCRIPT, flags=1)        # what apply writes first
    janitor.sweep()
    clock.now += GRACE - 1
    janitor.sweep()
    manifest, folder = shipping(tmp_path)
    manifests.apply_pipeline(ns, manifest, folder)
    clock.now += GRACE
    janitor.sweep()
    assert ns.get_raw(blob()) == SCRIPT


def test_files_named_by_an_assignment_or_an_invalid_manifest_are_kept(ns):
    clock = Clock()
    janitor = make_janitor(ns, clock)
    by_assignment, by_invalid = b"a\n", b"b\n"
    for content in (by_assignment, by_invalid):
        ns.put(blob(content), content)
    digest = hashlib.sha256(by_assignment).hexdigest()
    ns.put(state.assign_key("n1", "old.tool"), json.dumps({"files": {"tool.py": digest}}))
    ns.put(state.pipeline_key("broken"), json.dumps(
        {"metadata": {"name": "broken", "fileDigests": {"x.py": hashlib.sha256(by_invalid).hexdigest()}},
         "spec": "not valid"}))
    janitor.sweep()
    clock.now += 2 * GRACE
    janitor.sweep()
    assert ns.get_raw(blob(by_assignment)) == by_assignment
    assert ns.get_raw(blob(by_invalid)) == by_invalid


def test_a_deposed_leader_deletes_nothing(ns):
    clock = Clock()
    session = ns.session_create(name="not the leader", ttl=30)   # it never took oneos/leader
    janitor = make_janitor(ns, clock, session=session)
    ns.put(blob(), SCRIPT)
    janitor.sweep()
    clock.now += GRACE
    with pytest.raises(NotLeader):
        janitor.sweep()
    assert ns.get_raw(blob()) == SCRIPT
    ns.session_destroy(session)


def test_the_grace_period_and_the_round_interval_come_from_the_boot_record(ns):
    janitor = make_janitor(ns, Clock())
    janitor.sweep()
    assert (janitor.grace(), janitor.interval()) == (GRACE, GRACE / 4)
    boot = state.read_boot(ns)
    del boot["blobGracePeriod"]
    state.put_document(ns, state.BOOT, "boot", boot)
    janitor.sweep()
    assert (janitor.grace(), janitor.interval()) == (60.0, 15.0)


def test_references_are_every_digest_in_a_document():
    d1, d2 = "a" * 64, "b" * 64
    assert references({"metadata": {"fileDigests": {"x": d1}}, "files": {"y": d2}, "n": [d1, 3, None]}) == {d1, d2}
    assert references(None) == set() and references({"a": "A" * 64}) == set()


# ------------------------------------------------------------------------ topics

@pytest.fixture
def admin_ns(ns):
    """The Name Server with a boot record that names a (fake) Pulsar admin API, and that API."""
    fake = FakeAdmin([])
    boot = state.read_boot(ns)
    boot["pulsar"]["adminUrl"] = fake.url
    state.put_document(ns, state.BOOT, "boot", boot)
    yield ns, fake
    fake.close()


def _pipeline_topics(uid: str) -> list[str]:
    ns_ = "public/default"
    return [topics.link_topic(ns_, uid, "a", "b"), topics.output_topic(ns_, uid, "b"),
            topics.input_topic(ns_, uid, "a"), topics.log_topic(ns_, uid, "a", 1), topics.log_topic(ns_, uid, "b", 7)]


N1 = Identity.generate()


def _put_status(ns: NameServer, pipeline: str, uid: str) -> None:
    """Agent b's status, as node n1 (enrolled) writes it: signed, or the controller takes no notice of it."""
    state.put_document(ns, state.key_key("n1"), "key",
                       state.new_key_record("n1", N1.signing_key, N1.box_key, kernel=False, approved_by="test"))
    status = {"pipeline": pipeline, "agent": "b", "uid": uid, "node": "n1", "state": "Exited", "exitCode": 0,
              "generation": 1, "epoch": 1, "updatedAt": NOW}
    state.put_document(ns, state.status_key(f"{pipeline}.b"), "status", N1.sign(status, by="n1"))


def test_a_deleted_pipelines_topics_are_deleted_once_its_agents_are_gone(admin_ns, tmp_path, caplog):
    ns, fake = admin_ns
    clock = Clock()
    janitor = make_janitor(ns, clock)
    for name in ("gone", "live"):
        manifest, folder = shipping(tmp_path, name)
        manifests.apply_pipeline(ns, manifest, folder)
    uid = manifests.read_pipeline(ns, "gone")["metadata"]["uid"]
    live_uid = manifests.read_pipeline(ns, "live")["metadata"]["uid"]
    others = ["persistent://public/default/not-oneos", "persistent://public/default/oneos.x.link.a.b"]
    fake.topics |= set(_pipeline_topics(uid) + _pipeline_topics(live_uid) + others)
    janitor.observe(ClusterView.read(ns))          # a pass sees both pipelines

    manifests.delete_pipeline(ns, "gone")
    _put_status(ns, "gone", uid)
    janitor.observe(ClusterView.read(ns))          # a pass sees it deleted; its agent still reports
    janitor.sweep()
    assert fake.deleted == [], "its node has not removed its agent yet"

    ns.delete(state.status_key("gone.b"))           # as its node does once the agent has stopped
    janitor.sweep()
    assert sorted(name for name, _ in fake.deleted) == sorted(_pipeline_topics(uid))
    assert {query for _, query in fake.deleted} == {"force=true"}
    assert fake.topics == set(_pipeline_topics(live_uid) + others)
    fake.deleted.clear()
    janitor.sweep()
    assert fake.deleted == [], "owed once"


def test_a_run_seen_only_without_its_manifest_loses_its_topics_too(admin_ns):
    """A pass that only saw the run's agents after its manifest was deleted still owes its topics."""
    ns, fake = admin_ns
    janitor = make_janitor(ns, Clock())
    uid = "5" * 32
    fake.topics |= set(_pipeline_topics(uid))
    _put_status(ns, "run-1", uid)
    janitor.observe(ClusterView.read(ns))
    ns.delete(state.status_key("run-1.b"))
    janitor.sweep()
    assert fake.topics == set()


def test_an_admin_api_that_fails_is_said_once_and_tried_again(admin_ns, caplog):
    ns, fake = admin_ns
    janitor = make_janitor(ns, Clock())
    uid = "6" * 32
    fake.topics |= set(_pipeline_topics(uid))
    _put_status(ns, "run-2", uid)
    janitor.observe(ClusterView.read(ns))
    ns.delete(state.status_key("run-2.b"))
    fake.down = True
    with caplog.at_level(logging.WARNING, logger="oneos.controller"):
        janitor.sweep()
        janitor.sweep()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "HTTP 503" in warnings[0] and fake.url in warnings[0], warnings
    fake.down = False
    janitor.sweep()
    assert fake.topics == set()


def test_without_an_admin_url_nothing_is_owed(ns):
    janitor = make_janitor(ns, Clock())
    _put_status(ns, "run-3", "7" * 32)
    janitor.observe(ClusterView.read(ns))
    assert janitor.owed == set()


def test_an_unreachable_admin_api_is_one_line_that_names_it():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PulsarAdminError) as raised:
        PulsarAdmin(url, timeout=2).topics("public/default")
    assert str(raised.value) == (f"the Pulsar admin API at {url} is unreachable (ConnectionError); "
                                 "check pulsar.adminUrl in the boot record")


def test_a_pipeline_whose_manifest_turned_invalid_keeps_its_topics(admin_ns, tmp_path):
    """Its agents are left running (the pass leaves it alone): it is not taken for deleted."""
    ns, fake = admin_ns
    janitor = make_janitor(ns, Clock())
    manifest, folder = shipping(tmp_path, "broken")
    manifests.apply_pipeline(ns, manifest, folder)
    uid = manifests.read_pipeline(ns, "broken")["metadata"]["uid"]
    fake.topics |= set(_pipeline_topics(uid))
    janitor.observe(ClusterView.read(ns))
    ns.put(state.pipeline_key("broken"), json.dumps({"metadata": {"name": "broken", "uid": uid}}))
    _put_status(ns, "broken", uid)
    janitor.observe(ClusterView.read(ns))
    janitor.sweep()
    assert janitor.owed == set() and fake.deleted == []
