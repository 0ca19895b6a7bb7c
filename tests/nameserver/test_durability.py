"""Durability of the built-in Name Server across a crash (SIGKILL) and restart.

Consul keeps KV entries, tombstones and sessions in its Raft log and FSM snapshots
(agent/consul/state/kvs.go Snapshot KVs/Tombstones, session.go Snapshot Sessions), so after a
restart every acknowledged write is there, indexes continue from where they were, and sessions
come back with their locks; a new leader re-arms every session's TTL timer for a full 2 x TTL
(agent/consul/session_ttl.go initializeSessionTimers). The built-in server must behave the same.
"""

from __future__ import annotations

import threading
import time

import pytest

from oneos.nameserver.client import NameServer, NameServerError, NameServerUnreachable, kv_op
from tests.nameserver.helpers import Call

PREFIX = "durable/"


def _restart(server) -> None:
    server.kill9()
    server.start()


def test_acknowledged_writes_survive_kill9(builtin_nameserver):
    ns = NameServer(builtin_nameserver.url)
    value = bytes(range(256))
    assert ns.put(PREFIX + "plain", "hello") is True
    assert ns.put(PREFIX + "binary", value, flags=2**64 - 1) is True
    assert ns.put(PREFIX + "overwritten", "v1") is True
    assert ns.put(PREFIX + "overwritten", "v2") is True
    assert ns.put(PREFIX + "deleted", "x") is True
    assert ns.delete(PREFIX + "deleted") is True
    assert ns.put(PREFIX + "tree/a", "a") and ns.put(PREFIX + "tree/b", "b")
    assert ns.delete(PREFIX + "tree/", recurse=True) is True
    ns.txn([kv_op("set", PREFIX + "txn/1", b"one"), kv_op("set", PREFIX + "txn/2", b"two")])
    _, before = ns.get_tree(PREFIX)

    _restart(builtin_nameserver)

    _, after = ns.get_tree(PREFIX)
    assert after == before  # same keys, values, flags and indexes
    assert {e.key: e.value for e in after} == {
        PREFIX + "plain": b"hello",
        PREFIX + "binary": value,
        PREFIX + "overwritten": b"v2",
        PREFIX + "txn/1": b"one",
        PREFIX + "txn/2": b"two",
    }
    assert ns.get(PREFIX + "binary")[1].flags == 2**64 - 1
    assert ns.get(PREFIX + "deleted")[1] is None


def test_writes_acknowledged_during_a_burst_survive_kill9(builtin_nameserver):
    """Every write the server said `true` to is on disk when it is killed mid-burst."""
    ns = NameServer(builtin_nameserver.url)
    acked: list[tuple[str, bytes]] = []
    stop = threading.Event()

    def writer(n: int) -> None:
        i = 0
        while not stop.is_set():
            key, value = f"{PREFIX}burst/{n}/{i:05d}", f"value {n} {i}".encode()
            try:
                if ns.put(key, value):
                    acked.append((key, value))
            except (NameServerUnreachable, NameServerError):
                return
            i += 1

    threads = [threading.Thread(target=writer, args=(n,), daemon=True) for n in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    builtin_nameserver.kill9()
    stop.set()
    for t in threads:
        t.join(15)
    assert len(acked) >= 50, f"only {len(acked)} writes acknowledged before the kill"
    builtin_nameserver.start()

    _, entries = ns.get_tree(PREFIX + "burst/")
    stored = {e.key: e.value for e in entries}
    missing = [key for key, value in acked if stored.get(key) != value]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged writes lost, e.g. {missing[:3]}"


def test_indexes_never_go_backwards_across_a_restart(builtin_nameserver):
    ns = NameServer(builtin_nameserver.url)
    for i in range(5):
        ns.put(PREFIX + f"k{i}", str(i))
    ns.put(PREFIX + "last", "x")
    ns.delete(PREFIX + "last")  # the prefix's index now comes from a tombstone
    tree_idx, entries = ns.get_tree(PREFIX)
    missing_idx, _ = ns.get(PREFIX + "never")
    highest = max([tree_idx, missing_idx] + [e.modify_index for e in entries])

    _restart(builtin_nameserver)

    assert ns.get_tree(PREFIX)[0] >= tree_idx, "the prefix index went backwards (tombstone lost?)"
    assert ns.get(PREFIX + "never")[0] >= missing_idx
    assert ns.put(PREFIX + "new", "after restart") is True
    _, new = ns.get(PREFIX + "new")
    assert new.create_index > highest
    assert new.modify_index > highest
    # And again, with nothing written in between.
    _restart(builtin_nameserver)
    assert ns.put(PREFIX + "newer", "after second restart") is True
    assert ns.get(PREFIX + "newer")[1].modify_index > new.modify_index


def test_blocking_query_in_flight_fails_cleanly_when_the_server_dies(builtin_nameserver):
    """A query blocked when the server dies ends with NameServerUnreachable (not a hang);
    the same client works again once the server is back."""
    ns = NameServer(builtin_nameserver.url)
    ns.put(PREFIX + "watched", "v1")
    idx, _ = ns.get(PREFIX + "watched")
    call = Call(lambda: ns.get(PREFIX + "watched", index=idx, wait="60s"))
    time.sleep(0.5)  # let the query block
    assert not call.done()
    killed_at = time.monotonic()
    builtin_nameserver.kill9()
    with pytest.raises(NameServerUnreachable):
        call.result(timeout=20)
    assert call.ended - killed_at < 10
    with pytest.raises(NameServerUnreachable):
        ns.get(PREFIX + "watched")

    builtin_nameserver.start()
    idx2, entry = ns.get(PREFIX + "watched")
    assert entry.value == b"v1"
    assert idx2 >= idx
    assert ns.put(PREFIX + "watched", "v2") is True
    assert ns.get(PREFIX + "watched")[1].value == b"v2"


def test_sessions_and_locks_are_restored(builtin_nameserver):
    ns = NameServer(builtin_nameserver.url)
    sid = ns.session_create(name="survivor", ttl=10, behavior="release", lock_delay=0)
    eph = ns.session_create(name="ephemeral", ttl=30, behavior="delete", lock_delay=0)
    assert ns.put(PREFIX + "leader", "me", acquire=sid) is True
    assert ns.put(PREFIX + "nodes/n1", "registered", acquire=eph) is True
    _, held = ns.get(PREFIX + "leader")
    _, info_before = ns.session_info(sid)

    _restart(builtin_nameserver)

    _, info = ns.session_info(sid)
    assert info is not None, "session lost across the restart"
    for field in ("ID", "Name", "Behavior", "TTL", "LockDelay", "CreateIndex"):
        assert info[field] == info_before[field], field
    assert ns.session_renew(sid) is not None
    _, e = ns.get(PREFIX + "leader")
    assert e.session == sid
    assert (e.lock_index, e.modify_index, e.value) == (held.lock_index, held.modify_index, b"me")
    assert ns.get(PREFIX + "nodes/n1")[1].session == eph
    # The restored sessions still hold their locks...
    other = ns.session_create(lock_delay=0)
    assert ns.put(PREFIX + "leader", "usurper", acquire=other) is False
    # ...and still invalidate per their behaviour.
    assert ns.session_destroy(eph) is True
    assert ns.get(PREFIX + "nodes/n1")[1] is None
    assert ns.session_destroy(sid) is True
    _, e = ns.get(PREFIX + "leader")
    assert e.session is None and e.value == b"me"
    assert ns.put(PREFIX + "leader", "usurper", acquire=other) is True
    ns.session_destroy(other)


def test_destroyed_sessions_stay_destroyed(builtin_nameserver):
    ns = NameServer(builtin_nameserver.url)
    sid = ns.session_create(lock_delay=0)
    ns.put(PREFIX + "lock", "v", acquire=sid)
    ns.session_destroy(sid)
    _restart(builtin_nameserver)
    assert ns.session_info(sid)[1] is None
    assert ns.session_renew(sid) is None
    assert ns.get(PREFIX + "lock")[1].session is None
    assert sid not in {s["ID"] for s in ns.session_list()[1]}


def test_graceful_stop_and_start(builtin_nameserver):
    ns = NameServer(builtin_nameserver.url)
    ns.put(PREFIX + "k", "v")
    builtin_nameserver.stop()
    builtin_nameserver.start()
    assert ns.get(PREFIX + "k")[1].value == b"v"
