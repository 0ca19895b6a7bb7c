"""The state store on a disk that fails: a refused write is answered with an error and never
appears, not to reads, not to blocking queries, not after a restart; the store recovers when
the disk does; session expiry survives the failure; a torn log tail replays to its last good
record; writes waiting for the disk are computed against each other (group commit).

In-process, with the journal's `os` replaced by one whose writes, fsyncs and truncations fail
on demand (a full disk writes part of a batch, then says ENOSPC). Real processes, a real
RLIMIT_FSIZE and kill -9 are in tests/faults/test_nameserver_disk.py.
"""

from __future__ import annotations

import errno
import logging
import os
import threading

import pytest

from oneos.nameserver import journal as journal_module
from oneos.nameserver.journal import Journal
from oneos.nameserver.store import Store, StoreError
from tests.nameserver.helpers import Call
from tests.nameserver.test_session_timers import FakeClock
from tests.procs import wait_until


class FaultyOS:
    """The journal module's `os`: the real one, but for the faults the test turns on."""

    def __init__(self) -> None:
        self.space: int | None = None          # bytes the disk still takes; None: unlimited
        self.fsync_error: int | None = None
        self.truncate_error: int | None = None
        self.replace_error: int | None = None
        self.dsync_fds: set[int] = set()        # opened with O_DSYNC: each write syncs, and may fail as fsync does

    def __getattr__(self, name: str):
        return getattr(os, name)

    @staticmethod
    def _fail(code: int):
        return OSError(code, os.strerror(code))

    def open(self, path, flags: int, *args) -> int:
        fd = os.open(path, flags, *args)
        if flags & getattr(os, "O_DSYNC", 0):
            self.dsync_fds.add(fd)
        else:
            self.dsync_fds.discard(fd)
        return fd

    def write(self, fd: int, data) -> int:
        if self.fsync_error and fd in self.dsync_fds:
            os.write(fd, data)                  # in the page cache, not on the disk: the sync failed
            raise self._fail(self.fsync_error)
        if self.space is None:
            return os.write(fd, data)
        if self.space == 0:
            raise self._fail(errno.ENOSPC)
        n = os.write(fd, bytes(data[:self.space]))    # a short write, as a filling disk makes
        self.space -= n
        return n

    def fsync(self, fd: int) -> None:
        if self.fsync_error:
            raise self._fail(self.fsync_error)
        os.fsync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        if self.truncate_error:
            raise self._fail(self.truncate_error)
        os.ftruncate(fd, length)

    def replace(self, src, dst) -> None:
        if self.replace_error:
            raise self._fail(self.replace_error)
        os.replace(src, dst)


@pytest.fixture
def disk(monkeypatch) -> FaultyOS:
    faulty = FaultyOS()
    monkeypatch.setattr(journal_module, "os", faulty)
    return faulty


class Stores:
    """Opens the store on one data directory, again after a 'crash' (nothing is flushed on close:
    the log is written with os.write, so a closed store's files are what kill -9 would leave)."""

    def __init__(self, data_dir, clock: FakeClock | None = None) -> None:
        self.data_dir = data_dir
        self.clock = clock
        self.current: Store | None = None

    def open(self) -> Store:
        self.close()
        kwargs = {"clock": self.clock.monotonic, "wall": self.clock.time} if self.clock else {}
        self.current = Store(Journal(self.data_dir), "test-node", **kwargs)
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None


@pytest.fixture
def stores(tmp_path):
    s = Stores(tmp_path / "data")
    yield s
    s.close()


def check(store: Store, acked: dict[str, bytes], refused: list[str]) -> None:
    """Count acknowledged writes lost and refused writes revived (both must be 0), and say so."""
    lost = [k for k, v in acked.items() if (e := store.kv_get(k)[1]) is None or e.value != v]
    revived = [k for k in refused if store.kv_get(k)[1] is not None]
    print(f"acknowledged writes: {len(acked)}, lost: {len(lost)}; refused writes: {len(refused)}, "
          f"revived: {len(revived)}")
    assert not lost, f"acknowledged writes lost: {lost[:5]}"
    assert not revived, f"refused writes revived: {revived[:5]}"


def test_a_write_the_full_disk_cuts_short_is_refused_and_never_appears(stores, disk):
    store = stores.open()
    acked = {}
    for i in range(3):
        assert store.kv_set(f"k{i}", b"v%d" % i)
        acked[f"k{i}"] = b"v%d" % i
    index, _ = store.kv_list("")
    disk.space = 10                           # the next batch is cut after 10 bytes

    with pytest.raises(StoreError) as refused:
        store.kv_set("refused", b"x" * 100)
    assert refused.value.status == 500
    message = str(refused.value)
    assert "No space left on device (ENOSPC)" in message and "free space" in message
    assert "\n" not in message
    assert store.kv_get("refused")[1] is None
    assert store.kv_list("")[0] == index, "the index moved for a refused write"
    with pytest.raises(StoreError):            # still full
        store.session_create({})

    disk.space = None                          # space is back: no restart needed
    assert store.kv_set("after", b"ok")
    acked["after"] = b"ok"
    assert store.kv_get("after")[1].modify_index == index + 1
    check(store, acked, ["refused"])

    store = stores.open()                      # and nothing of the refused write on disk
    check(store, acked, ["refused"])
    assert store.kv_list("")[0] == index + 1


def test_a_batch_whose_fsync_fails_is_cut_off_the_log(stores, disk, caplog):
    store = stores.open()
    assert store.kv_set("before", b"1")
    disk.fsync_error = errno.EIO
    with pytest.raises(StoreError, match=r"Input/output error \(EIO\)"):
        store.kv_set("refused", b"2")
    disk.fsync_error = None
    assert store.kv_set("after", b"3")
    store = stores.open()
    check(store, {"before": b"1", "after": b"3"}, ["refused"])
    assert "dropped" not in caplog.text       # cut when refused, not found torn at start


def test_while_the_failed_batch_cannot_be_cut_every_write_is_refused(stores, disk):
    store = stores.open()
    assert store.kv_set("before", b"1")
    disk.fsync_error = errno.EIO
    disk.truncate_error = errno.EIO
    refused = []
    for i in range(3):
        with pytest.raises(StoreError):
            store.kv_set(f"refused{i}", b"x")
        refused.append(f"refused{i}")
        disk.fsync_error = None               # writes work again, but the log still holds a refused one
    disk.truncate_error = None
    assert store.kv_set("after", b"2")
    check(store, {"before": b"1", "after": b"2"}, refused)
    store = stores.open()
    check(store, {"before": b"1", "after": b"2"}, refused)


def test_a_blocking_query_never_sees_a_refused_write(stores, disk):
    store = stores.open()
    store.kv_set("watched", b"v1")
    index, _ = store.kv_get("watched")
    query = Call(lambda: store.kv_get("watched", min_index=index, wait=30))
    disk.space = 0
    with pytest.raises(StoreError):
        store.kv_set("watched", b"refused")
    disk.space = None
    store.kv_set("watched", b"v2")
    new_index, entry = query.result(timeout=10)
    assert entry.value == b"v2" and new_index == index + 1


def test_writes_waiting_for_the_disk_see_each_other_and_fall_together(stores):
    """Group commit: a write is computed against the writes still waiting for the disk (a cas
    sees them), reads see none of them, and when their batch fails every one after it falls."""
    store = stores.open()
    store.kv_set("counter", b"0")
    real_append = store.journal.append_batch
    entered, release = threading.Event(), threading.Event()
    fail = {"now": True}

    def held_append(lines):
        lines = list(lines)
        entered.set()
        release.wait(30)
        if fail["now"]:
            fail["now"] = False
            raise journal_module.JournalWriteError("cannot write the journal: injected failure")
        real_append(lines)

    store.journal.append_batch = held_append
    first = Call(lambda: store.kv_set("a", b"1"))
    entered.wait(10)                                        # `a`'s writer is writing its batch
    index, counter = store.kv_get("counter")
    second = Call(lambda: store.kv_cas("counter", b"1", 0, counter.modify_index))
    wait_until(lambda: len(store._pending) == 2, 10, "the cas to wait for the disk too")
    # Computed against the waiting cas, this one is stale; it stands only if the cas is durable.
    third = Call(lambda: store.kv_cas("counter", b"x", 0, counter.modify_index))
    assert store.kv_get("a")[1] is None, "a read saw a write not yet durable"
    assert store.kv_get("counter")[1].value == b"0"
    release.set()
    for call in (first, second):
        with pytest.raises(StoreError, match="injected failure"):
            call.result(timeout=10)
    # Both fell: the stale cas was computed again against what is durable, and won.
    assert third.result(timeout=10) is True
    assert store.kv_get("counter")[1].value == b"x"
    assert store.kv_get("a")[1] is None
    assert store.kv_get("counter")[1].modify_index == index + 1


def test_concurrent_cas_increments_through_group_commit_lose_none(stores):
    store = stores.open()
    store.kv_set("n", b"0")
    per_thread, threads = 40, 8

    def bump() -> None:
        done = 0
        while done < per_thread:
            _, e = store.kv_get("n")
            if store.kv_cas("n", b"%d" % (int(e.value) + 1), 0, e.modify_index):
                done += 1

    workers = [threading.Thread(target=bump) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert store.kv_get("n")[1].value == b"%d" % (per_thread * threads)
    store = stores.open()
    assert store.kv_get("n")[1].value == b"%d" % (per_thread * threads)


def test_session_expiry_survives_a_full_disk_and_resumes_when_it_has_room(tmp_path, disk):
    clock = FakeClock()
    stores = Stores(tmp_path / "data", clock)
    try:
        store = stores.open()
        sid = store.session_create({"TTL": "10s", "LockDelay": "0s"})
        assert store.kv_lock("held", b"v", 0, sid)
        disk.space = 0
        clock.advance(25)                                   # past 2 x TTL
        with pytest.raises(StoreError, match="ENOSPC"):
            store.expire_sessions()
        assert store.session_info(sid)[1], "the session expired though its end could not be written"
        disk.space = None
        clock.advance(2)                                    # past the timer thread's retry
        with store._timer_cond:
            store._timer_cond.notify_all()                  # as a real clock's passing would wake it
        wait_until(lambda: not store.session_info(sid)[1], 10, "the timer thread to expire the session")
        assert store.kv_get("held")[1].session == ""
        store = stores.open()
        assert not store.session_info(sid)[1]
    finally:
        stores.close()


def test_a_torn_log_tail_replays_to_the_last_good_record(stores, caplog):
    store = stores.open()
    acked = {f"k{i}": b"v%d" % i for i in range(20)}
    for k, v in acked.items():
        store.kv_set(k, v)
    index, _ = store.kv_list("")
    stores.close()
    log_path = stores.data_dir / "log.jsonl"
    data = log_path.read_bytes()
    last = data[data.rfind(b"\n", 0, len(data) - 1) + 1:]
    # A crash in the middle of a record, then garbage, then what looks like a later record.
    log_path.write_bytes(data + last[:len(last) // 2] + b"\x00\x00garbage\n" + last.replace(b"k19", b"zz"))

    with caplog.at_level(logging.WARNING, logger="oneos.nameserver"):
        store = stores.open()
    check(store, acked, ["zz"])
    assert store.kv_list("")[0] == index
    assert "dropped its last" in caplog.text and "never acknowledged" in caplog.text
    assert list(stores.data_dir.glob("log.jsonl.dropped-*")), "the dropped bytes were not kept aside"
    store.kv_set("after", b"x")
    acked["after"] = b"x"
    caplog.clear()
    store = stores.open()
    check(store, acked, ["zz"])
    assert "dropped" not in caplog.text


def test_compaction_keeps_every_write_and_removes_the_rotated_log(tmp_path):
    store = Store(Journal(tmp_path / "data", compact_bytes=20_000), "test-node")
    try:
        acked = {}
        for i in range(600):
            store.kv_set(f"c/{i:04d}", b"v" * 50)
            acked[f"c/{i:04d}"] = b"v" * 50
        wait_until(lambda: store._compactor is None, 10, "the compaction to end")
        assert (tmp_path / "data" / "snapshot.json").exists()
        assert not list((tmp_path / "data").glob("log-*.jsonl"))
    finally:
        store.close()
    store = Store(Journal(tmp_path / "data"), "test-node")
    try:
        check(store, acked, [])
    finally:
        store.close()


def test_a_compaction_the_disk_refuses_loses_nothing_and_writes_go_on(tmp_path, disk, caplog):
    disk.replace_error = errno.ENOSPC               # the new snapshot cannot be put in place
    store = Store(Journal(tmp_path / "data", compact_bytes=5_000), "test-node")
    acked = {}
    try:
        for i in range(200):
            assert store.kv_set(f"c/{i:04d}", b"v" * 50)
            acked[f"c/{i:04d}"] = b"v" * 50
        wait_until(lambda: store._compactor is None, 10, "the compaction to give up")
        assert "compaction of" in caplog.text and "No space left on device (ENOSPC)" in caplog.text
        assert list((tmp_path / "data").glob("log-*.jsonl")), "the rotated log was removed"
        assert not (tmp_path / "data" / "snapshot.json").exists()
    finally:
        store.close()
    store = Store(Journal(tmp_path / "data"), "test-node")
    try:
        check(store, acked, [])
    finally:
        store.close()
