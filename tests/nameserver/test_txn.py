"""`PUT /v1/txn` with KV operations: every verb, ordering, all-or-nothing, results.

References (hashicorp/consul): website/content/api-docs/txn.mdx (verbs; 200 with Results or 409
with Errors [{OpIndex, What}]; Value null in results for verbs other than get/get-tree; no result
for deletes); agent/consul/state/txn.go txnKVS / txnDispatch (ops run in order in one state-store
transaction at one raft index; every failing op is reported; nothing is committed on any error);
agent/txn_endpoint.go (409 on conflict).
"""

from __future__ import annotations

import pytest

from oneos.nameserver.client import NameServer, NameServerError, TxnConflict, kv_op


def _conflict(ns: NameServer, ops) -> TxnConflict:
    with pytest.raises(TxnConflict) as info:
        ns.txn(ops)
    err = info.value
    assert isinstance(err, NameServerError) and err.status == 409
    assert err.errors, "a rolled-back transaction names the failing operation"
    for op_index, what in err.errors:
        assert isinstance(op_index, int)
        assert what
    return err


def test_set_then_get_in_one_transaction(ns: NameServer, prefix: str):
    a, b = prefix + "a", prefix + "b"
    results = ns.txn([kv_op("set", a, b"one", flags=7), kv_op("set", b, b"\x00\xff two"), kv_op("get", a)])
    assert [r.key for r in results] == [a, b, a]
    # Writes carry no value; get does (and sees the earlier op of the same transaction).
    assert results[0].value is None and results[1].value is None
    assert results[2].value == b"one"
    assert results[0].flags == 7 and results[2].flags == 7
    # One transaction, one index.
    assert results[0].modify_index == results[1].modify_index == results[2].modify_index > 0
    assert results[0].create_index == results[0].modify_index
    _, stored = ns.get(a)
    assert (stored.value, stored.flags, stored.modify_index) == (b"one", 7, results[0].modify_index)
    assert ns.get(b)[1].value == b"\x00\xff two"


def test_binary_values_through_txn(ns: NameServer, prefix: str):
    key = prefix + "bin"
    value = bytes(range(256))
    ns.txn([kv_op("set", key, value)])
    assert ns.get(key)[1].value == value
    assert ns.txn([kv_op("get", key)])[0].value == value


def test_set_of_identical_contents_keeps_modify_index(ns: NameServer, prefix: str):
    key = prefix + "same"
    first = ns.txn([kv_op("set", key, b"v")])[0]
    ns.put(prefix + "other", "moves the index on")
    again = ns.txn([kv_op("set", key, b"v")])[0]
    assert again.modify_index == first.modify_index


def test_cas(ns: NameServer, prefix: str):
    key = prefix + "cas"
    created = ns.txn([kv_op("cas", key, b"v1", index=0)])[0]  # index 0: only if absent
    assert created.value is None
    err = _conflict(ns, [kv_op("cas", key, b"again", index=0)])
    assert [i for i, _ in err.errors] == [0]
    updated = ns.txn([kv_op("cas", key, b"v2", index=created.modify_index)])[0]
    assert updated.modify_index > created.modify_index
    err = _conflict(ns, [kv_op("cas", key, b"v3", index=created.modify_index)])  # stale
    assert [i for i, _ in err.errors] == [0]
    assert ns.get(key)[1].value == b"v2"


def test_get_of_missing_key_fails(ns: NameServer, prefix: str):
    err = _conflict(ns, [kv_op("get", prefix + "missing")])
    assert [i for i, _ in err.errors] == [0]


def test_get_tree(ns: NameServer, prefix: str):
    for name in ("t/a", "t/b/c", "u"):
        ns.put(prefix + name, name)
    results = ns.txn([kv_op("get-tree", prefix + "t/")])
    assert [(r.key, r.value) for r in results] == [(prefix + "t/a", b"t/a"), (prefix + "t/b/c", b"t/b/c")]
    assert ns.txn([kv_op("get-tree", prefix + "none/")]) == []


def test_check_index(ns: NameServer, prefix: str):
    key = prefix + "k"
    ns.put(key, "v")
    _, e = ns.get(key)
    results = ns.txn([kv_op("check-index", key, index=e.modify_index), kv_op("set", prefix + "guarded", b"ok")])
    assert results[0].key == key and results[0].value is None
    assert results[0].modify_index == e.modify_index
    assert ns.get(prefix + "guarded")[1].value == b"ok"
    ns.put(key, "v2")
    err = _conflict(ns, [kv_op("set", prefix + "guarded", b"no"), kv_op("check-index", key, index=e.modify_index)])
    assert [i for i, _ in err.errors] == [1]
    assert ns.get(prefix + "guarded")[1].value == b"ok"
    err = _conflict(ns, [kv_op("check-index", prefix + "missing", index=e.modify_index)])
    assert [i for i, _ in err.errors] == [0]


def test_check_not_exists(ns: NameServer, prefix: str):
    key = prefix + "k"
    results = ns.txn([kv_op("check-not-exists", key), kv_op("set", key, b"created")])
    assert [r.key for r in results] == [key]  # check-not-exists has no result of its own
    err = _conflict(ns, [kv_op("check-not-exists", key), kv_op("set", key, b"overwritten")])
    assert [i for i, _ in err.errors] == [0]
    assert ns.get(key)[1].value == b"created"


def test_delete_and_delete_tree(ns: NameServer, prefix: str):
    for name in ("x", "d/1", "d/2", "dz"):
        ns.put(prefix + name, name)
    results = ns.txn([kv_op("delete", prefix + "x"), kv_op("delete-tree", prefix + "d/"),
                      kv_op("delete", prefix + "never-existed")])
    assert results == []  # no result entries for verbs that delete
    assert ns.keys(prefix)[1] == [prefix + "dz"]


def test_delete_cas(ns: NameServer, prefix: str):
    key = prefix + "k"
    ns.put(key, "v1")
    _, e1 = ns.get(key)
    ns.put(key, "v2")
    err = _conflict(ns, [kv_op("delete-cas", key, index=e1.modify_index)])
    assert [i for i, _ in err.errors] == [0]
    assert ns.get(key)[1].value == b"v2"
    _, e2 = ns.get(key)
    assert ns.txn([kv_op("delete-cas", key, index=e2.modify_index)]) == []
    assert ns.get(key)[1] is None


def test_lock_unlock_check_session(ns: NameServer, make_session, prefix: str):
    sid = make_session(lock_delay=0)
    other = make_session(lock_delay=0)
    key = prefix + "lock"
    locked = ns.txn([kv_op("lock", key, b"held", session=sid)])[0]
    assert (locked.session, locked.lock_index, locked.value) == (sid, 1, None)
    assert ns.get(key)[1].value == b"held"

    checked = ns.txn([kv_op("check-session", key, session=sid)])
    assert checked[0].session == sid

    # Re-lock by the holder keeps LockIndex and writes the value.
    again = ns.txn([kv_op("lock", key, b"held2", session=sid)])[0]
    assert again.lock_index == 1
    assert ns.get(key)[1].value == b"held2"

    err = _conflict(ns, [kv_op("lock", key, b"steal", session=other)])
    assert [i for i, _ in err.errors] == [0]
    err = _conflict(ns, [kv_op("check-session", key, session=other)])
    assert [i for i, _ in err.errors] == [0]
    err = _conflict(ns, [kv_op("unlock", key, b"x", session=other)])
    assert [i for i, _ in err.errors] == [0]
    assert ns.get(key)[1].session == sid

    unlocked = ns.txn([kv_op("unlock", key, b"free", session=sid)])[0]
    assert unlocked.session is None and unlocked.lock_index == 1
    _, e = ns.get(key)
    assert (e.session, e.value, e.lock_index) == (None, b"free", 1)

    relocked = ns.txn([kv_op("lock", key, b"theirs", session=other)])[0]
    assert (relocked.session, relocked.lock_index) == (other, 2)


def test_lock_with_unknown_session_fails(ns: NameServer, prefix: str):
    import uuid

    err = _conflict(ns, [kv_op("set", prefix + "a", b"1"), kv_op("lock", prefix + "l", b"x", session=str(uuid.uuid4()))])
    assert [i for i, _ in err.errors] == [1]
    assert ns.get(prefix + "a")[1] is None


def test_all_or_nothing(ns: NameServer, prefix: str):
    ns.put(prefix + "a", "old a")
    ns.put(prefix + "c", "old c")
    ns.put(prefix + "stale", "v1")
    _, stale = ns.get(prefix + "stale")
    ns.put(prefix + "stale", "v2")
    before_idx, before = ns.get_tree(prefix)

    err = _conflict(ns, [
        kv_op("set", prefix + "a", b"new a"),
        kv_op("set", prefix + "b", b"new b"),
        kv_op("delete", prefix + "c"),
        kv_op("delete-tree", prefix + "a"),
        kv_op("cas", prefix + "stale", b"v3", index=stale.modify_index),
    ])
    assert [i for i, _ in err.errors] == [4]
    after_idx, after = ns.get_tree(prefix)
    assert after == before  # nothing applied: same values, same indexes
    assert after_idx == before_idx


def test_every_failing_op_is_reported(ns: NameServer, prefix: str):
    ns.put(prefix + "exists", "x")
    err = _conflict(ns, [
        kv_op("check-not-exists", prefix + "exists"),
        kv_op("set", prefix + "fine", b"ok"),
        kv_op("get", prefix + "missing"),
    ])
    assert sorted(i for i, _ in err.errors) == [0, 2]
    assert ns.get(prefix + "fine")[1] is None


def test_read_only_transaction(ns: NameServer, prefix: str):
    ns.put(prefix + "a", "1")
    ns.put(prefix + "b", "2")
    results = ns.txn([kv_op("get", prefix + "a"), kv_op("get-tree", prefix), kv_op("check-not-exists", prefix + "c")])
    assert [(r.key, r.value) for r in results] == [
        (prefix + "a", b"1"), (prefix + "a", b"1"), (prefix + "b", b"2")]
