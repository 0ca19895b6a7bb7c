"""`oneos-nameserver` on a disk that fills up, and killed (-9) in the middle of compactions.

Real processes over HTTP. The disk is filled with RLIMIT_FSIZE set on the running server
(prlimit): its journal writes then fail with EFBIG, as on a full disk they fail with ENOSPC
(Python ignores SIGXFSZ), and space returns when the limit is lifted, without a restart.
Each test counts the acknowledged writes lost and the refused writes revived (both must be 0)
and prints them. The fine-grained faults (fsync errors, torn tails, group commit) are checked
in-process in tests/nameserver/test_journal_faults.py.
"""

from __future__ import annotations

import resource
import threading
from pathlib import Path

import pytest
import requests

from oneos.nameserver.client import NameServer, NameServerError, kv_op
from tests.procs import NameServerProc, wait_until


@pytest.fixture
def server(tmp_path):
    servers: list[NameServerProc] = []

    def start(*extra: str) -> NameServerProc:
        s = NameServerProc(tmp_path / "ns-data", extra=list(extra)).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


class Ledger:
    """What the server answered: acknowledged (key -> value) and refused writes. A write whose
    answer was lost to the kill is neither: it may or may not be there."""

    def __init__(self) -> None:
        self.acked: dict[str, bytes] = {}
        self.refused: list[str] = []
        self.lock = threading.Lock()

    def put(self, session: requests.Session, url: str, key: str, value: bytes) -> int | None:
        try:
            r = session.put(f"{url}/v1/kv/{key}", data=value, timeout=10)
        except requests.RequestException:
            return None
        with self.lock:
            if r.status_code == 200 and r.json() is True:
                self.acked[key] = value
            elif r.status_code == 500:
                self.refused.append(key)
        return r.status_code

    def check(self, ns: NameServer, what: str) -> None:
        _, entries = ns.get_tree("")
        stored = {e.key: e.value for e in entries}
        lost = [k for k, v in self.acked.items() if stored.get(k) != v]
        revived = [k for k in self.refused if k in stored]
        print(f"{what}: acknowledged writes {len(self.acked)}, lost {len(lost)}; "
              f"refused writes {len(self.refused)}, revived {len(revived)}")
        assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:3]}"
        assert not revived, f"{len(revived)} refused writes revived, e.g. {revived[:3]}"


def test_disk_full_is_a_500_then_the_server_recovers_when_space_returns(server):
    ns_proc = server()
    ns = NameServer(ns_proc.url)
    ledger, http = Ledger(), requests.Session()
    for i in range(20):
        assert ledger.put(http, ns_proc.url, f"before/{i}", b"v" * 100) == 200
    log_size = (ns_proc.data_dir / "log.jsonl").stat().st_size
    _, hard = resource.prlimit(ns_proc.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(ns_proc.pid, resource.RLIMIT_FSIZE, (log_size + 1000, hard))   # the disk fills

    statuses = [ledger.put(http, ns_proc.url, f"full/{i}", b"x" * 300) for i in range(10)]
    assert 500 in statuses and set(statuses) <= {200, 500}, statuses
    r = http.put(f"{ns_proc.url}/v1/kv/full/message", data=b"x" * 2000)
    assert r.status_code == 500
    assert "cannot write the journal" in r.text and "File too large (EFBIG)" in r.text, r.text
    assert "free space" in r.text and r.text.count("\n") == 1, r.text
    with pytest.raises(NameServerError, match="EFBIG"):
        ns.put("full/client", "x" * 2000)
    ledger.refused += ["full/message", "full/client"]
    assert ns.get("full/message")[1] is None
    ledger.check(ns, "disk full")

    resource.prlimit(ns_proc.pid, resource.RLIMIT_FSIZE, (hard, hard))               # space returns
    for i in range(10):
        assert ledger.put(http, ns_proc.url, f"after/{i}", b"y" * 300) == 200
    assert "can be written again" in ns_proc.log()
    ledger.check(ns, "space back, no restart")

    ns_proc.kill9()
    ns_proc.start()
    ledger.check(ns, "after kill -9 and restart")
    assert "dropped" not in ns_proc.log(), "a refused write was left in the log"


def compacting(data_dir: Path) -> bool:
    return any(data_dir.glob("log-*.jsonl"))


def tmp_size(data_dir: Path) -> int:
    try:
        return (data_dir / "snapshot.json.tmp").stat().st_size
    except FileNotFoundError:
        return -1


# When, in a compaction, the server is killed: what its data directory shows, in turn, once the
# round's writers have been acknowledged a few times (so that a compaction of their writes is hit).
MOMENTS = {
    "the log was just rotated": [lambda d: not compacting(d), compacting],
    "the snapshot is being written": [lambda d: tmp_size(d) < 0, lambda d: tmp_size(d) >= 0],
    "the snapshot is half written": [lambda d: tmp_size(d) < 0, lambda d: tmp_size(d) > 1_000_000],
    "the compaction just ended": [lambda d: not compacting(d), compacting, lambda d: not compacting(d)],
}


def test_kill9_at_any_moment_of_a_compaction_loses_no_acknowledged_write(server):
    # A store of 20,000 keys (its snapshot ~4 MB), and a log compacted every 300 kB of writes.
    ns_proc = server("--compact-bytes", "300000")
    ns = NameServer(ns_proc.url)
    ledger = Ledger()
    for start in range(0, 20_000, 128):
        ops = [kv_op("set", f"base/{i:05d}", b"b" * 150) for i in range(start, min(start + 128, 20_000))]
        ns.txn(ops)
        ledger.acked.update({op["KV"]["Key"]: b"b" * 150 for op in ops})
    data = ns_proc.data_dir

    for round_, (moment, steps) in enumerate(MOMENTS.items()):
        stop = threading.Event()

        def write(n: int) -> None:
            http, i = requests.Session(), 0
            while not stop.is_set():
                if ledger.put(http, ns_proc.url, f"r{round_}/w{n}/{i:06d}", b"w" * 1500) is None:
                    return
                i += 1

        writers = [threading.Thread(target=write, args=(n,), daemon=True) for n in range(4)]
        for w in writers:
            w.start()
        try:
            before = len(ledger.acked)
            wait_until(lambda: len(ledger.acked) > before + 50, 30, "writes to be acknowledged")
            for reached in steps:
                wait_until(lambda: reached(data), 30, f"a compaction to reach: {moment}", interval=0.001)
            ns_proc.kill9()
            still = "still so" if steps[-1](data) else "over by then"
        finally:
            stop.set()
            for w in writers:
                w.join(15)
        ns_proc.start()
        ledger.check(ns, f"kill -9 when {moment} ({still} at the kill)")
    assert len(ledger.acked) > 20_000 + 100
