"""Blocking queries (`?index=N&wait=D`) on KV reads and session lists.

References (hashicorp/consul): website/content/api-docs/features/blocking.mdx (wait default 5m,
max 10m, jitter up to wait/16; a return is "no guarantee of a change" -- the timeout, or an
idempotent write that does not affect the result); agent/blockingquery/blockingquery.go Query
(index 0 answers at once; otherwise loops until the result's index > the given index or the
timeout, so wake-ups that leave the index unchanged are not returned to the client).

Timing: the tests let a deliberate delay pass before the change they make, then check that the
query returned *after* the change (it blocked) and well before its `wait` ran out (it woke up).
"""

from __future__ import annotations

import time
import uuid

import requests

from oneos.nameserver.client import NameServer
from tests.nameserver.helpers import Call

DELAY = 0.5        # how long the test lets a query block before changing something
PROMPT = 3.0       # a woken query must return within this long after the change (noisy machines)
LONG_WAIT = "15s"  # the wait of queries that are expected to be woken up


def _assert_woken_by(call: Call, changed_at: float, wait_s: float = 15.0) -> None:
    call.result(timeout=wait_s + 10)
    assert call.ended >= changed_at, (
        f"the blocking query returned {changed_at - call.ended:.3f}s before the change: it did not block")
    assert call.ended - changed_at < PROMPT, (
        f"the blocking query returned {call.ended - changed_at:.1f}s after the change: it was not woken up")


def test_no_index_answers_at_once(ns: NameServer, prefix: str):
    ns.put(prefix + "k", "v")
    t0 = time.monotonic()
    ns.get(prefix + "k")
    ns.get_tree(prefix)
    ns.keys(prefix)
    ns.get(prefix + "missing")
    assert time.monotonic() - t0 < 2.0


def test_index_zero_answers_at_once(nameserver_url: str, ns: NameServer, prefix: str):
    """blockingquery.go: `if minQueryIndex == 0` -> a non-blocking query (the client never sends 0)."""
    ns.put(prefix + "k", "v")
    t0 = time.monotonic()
    resp = requests.get(f"{nameserver_url}/v1/kv/{prefix}k", params={"index": "0", "wait": "5s"}, timeout=10)
    assert resp.status_code == 200
    assert time.monotonic() - t0 < 2.0


def test_an_old_index_answers_at_once(ns: NameServer, prefix: str):
    ns.put(prefix + "k", "v1")
    old, _ = ns.get(prefix + "k")
    ns.put(prefix + "k", "v2")
    t0 = time.monotonic()
    idx, entry = ns.get(prefix + "k", index=old, wait="10s")
    assert time.monotonic() - t0 < 2.0
    assert entry.value == b"v2"
    assert idx > old


def test_blocks_until_the_key_is_written(ns: NameServer, prefix: str):
    key = prefix + "k"
    ns.put(key, "v1")
    idx, _ = ns.get(key)
    call = Call(lambda: ns.get(key, index=idx, wait=LONG_WAIT))
    time.sleep(DELAY)
    changed_at = time.monotonic()
    ns.put(key, "v2")
    _assert_woken_by(call, changed_at)
    new_idx, entry = call.value
    assert entry.value == b"v2"
    assert new_idx > idx
    assert new_idx == entry.modify_index


def test_blocks_until_a_missing_key_is_created(ns: NameServer, prefix: str):
    """A missing key's index is the whole KV table's, so other writes may wake it (with a new
    index): like any client, loop until the key shows up and check when that was."""
    key = prefix + "later"
    idx, entry = ns.get(key)
    assert entry is None

    def wait_for_key():
        index = idx
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            index, found = ns.get(key, index=index, wait=LONG_WAIT)
            if found is not None:
                return index, found
        raise AssertionError("the key never showed up")

    call = Call(wait_for_key)
    time.sleep(DELAY)
    changed_at = time.monotonic()
    ns.put(key, "created")
    _assert_woken_by(call, changed_at)
    assert call.value[1].value == b"created"


def test_blocks_until_the_key_is_deleted(ns: NameServer, prefix: str):
    key = prefix + "k"
    ns.put(key, "v1")
    idx, _ = ns.get(key)
    call = Call(lambda: ns.get(key, index=idx, wait=LONG_WAIT))
    time.sleep(DELAY)
    changed_at = time.monotonic()
    ns.delete(key)
    _assert_woken_by(call, changed_at)
    new_idx, entry = call.value
    assert entry is None
    assert new_idx > idx


def test_unrelated_writes_do_not_wake_a_single_key_query(ns: NameServer, prefix: str):
    """Only changes to the key's own result end the query early; sibling keys, keys that share
    its name as a prefix, and its children are other results (blockingquery.go loops while the
    index is unchanged)."""
    key = prefix + "k"
    ns.put(key, "v")
    idx, _ = ns.get(key)
    call = Call(lambda: ns.get(key, index=idx, wait="2s"))
    time.sleep(DELAY)
    for i in range(3):
        ns.put(prefix + "k2", str(i))
        ns.put(key + "/child", str(i))
        ns.put(prefix + "other", str(i))
        ns.delete(prefix + "other")
    call.result(timeout=15)
    assert call.elapsed >= 1.9, f"returned after {call.elapsed:.2f}s of a 2s wait"
    res_idx, entry = call.value
    assert res_idx == idx
    assert entry.value == b"v"


def test_wait_is_honoured_and_returns_the_same_index(ns: NameServer, prefix: str):
    key = prefix + "k"
    ns.put(key, "v")
    idx, _ = ns.get(key)
    t0 = time.monotonic()
    res_idx, entry = ns.get(key, index=idx, wait="1s")
    elapsed = time.monotonic() - t0
    # wait plus up to wait/16 of jitter, plus slack for a shared machine.
    assert 0.95 <= elapsed <= 1.0 + 1.0 / 16 + 1.5, f"wait=1s returned after {elapsed:.2f}s"
    assert res_idx == idx
    assert entry.value == b"v"


def test_wait_is_honoured_on_a_prefix(ns: NameServer, prefix: str):
    ns.put(prefix + "a", "1")
    idx, _ = ns.get_tree(prefix)
    t0 = time.monotonic()
    res_idx, entries = ns.get_tree(prefix, index=idx, wait="2s")
    elapsed = time.monotonic() - t0
    assert 1.9 <= elapsed <= 2.0 + 2.0 / 16 + 1.5, f"wait=2s returned after {elapsed:.2f}s"
    assert res_idx == idx
    assert [e.value for e in entries] == [b"1"]


def test_prefix_query_wakes_on_a_write_under_the_prefix(ns: NameServer, prefix: str):
    ns.put(prefix + "a", "1")
    ns.put(prefix + "b", "2")
    idx, _ = ns.get_tree(prefix)
    call = Call(lambda: ns.get_tree(prefix, index=idx, wait=LONG_WAIT))
    time.sleep(DELAY)
    changed_at = time.monotonic()
    ns.put(prefix + "a", "1-changed")  # not the newest key
    _assert_woken_by(call, changed_at)
    new_idx, entries = call.value
    assert new_idx > idx
    assert {e.key: e.value for e in entries} == {prefix + "a": b"1-changed", prefix + "b": b"2"}


def test_prefix_query_wakes_on_a_create_under_the_prefix(ns: NameServer, prefix: str):
    ns.put(prefix + "a", "1")
    idx, _ = ns.keys(prefix)
    call = Call(lambda: ns.keys(prefix, index=idx, wait=LONG_WAIT))
    time.sleep(DELAY)
    changed_at = time.monotonic()
    ns.put(prefix + "deep/new", "2")
    _assert_woken_by(call, changed_at)
    new_idx, keys = call.value
    assert new_idx > idx
    assert keys == [prefix + "a", prefix + "deep/new"]


def test_prefix_query_wakes_on_a_delete_under_the_prefix(ns: NameServer, prefix: str):
    ns.put(prefix + "a", "1")
    ns.put(prefix + "b", "2")  # the newest key: deleting it must still move the index on
    idx, _ = ns.get_tree(prefix)
    call = Call(lambda: ns.get_tree(prefix, index=idx, wait=LONG_WAIT))
    time.sleep(DELAY)
    changed_at = time.monotonic()
    ns.delete(prefix + "b")
    _assert_woken_by(call, changed_at)
    new_idx, entries = call.value
    assert new_idx > idx
    assert [e.key for e in entries] == [prefix + "a"]


def test_prefix_query_wakes_on_a_recursive_delete(ns: NameServer, prefix: str):
    ns.put(prefix + "dir/a", "1")
    ns.put(prefix + "dir/b", "2")
    idx, _ = ns.keys(prefix + "dir/")
    call = Call(lambda: ns.keys(prefix + "dir/", index=idx, wait=LONG_WAIT))
    time.sleep(DELAY)
    changed_at = time.monotonic()
    ns.delete(prefix + "dir/", recurse=True)
    _assert_woken_by(call, changed_at)
    new_idx, keys = call.value
    assert keys == []
    assert new_idx > idx


def test_prefix_query_ignores_writes_outside_the_prefix(ns: NameServer, prefix: str):
    ns.put(prefix + "in/a", "1")
    idx, _ = ns.get_tree(prefix + "in/")
    call = Call(lambda: ns.get_tree(prefix + "in/", index=idx, wait="2s"))
    time.sleep(DELAY)
    for i in range(3):
        ns.put(prefix + "out/a", str(i))
        ns.put(prefix + "in", str(i))     # shares the name, but is not under "in/"
        ns.put(prefix + "inx/a", str(i))
    call.result(timeout=15)
    assert call.elapsed >= 1.9, f"returned after {call.elapsed:.2f}s of a 2s wait"
    res_idx, entries = call.value
    assert res_idx == idx
    assert [e.key for e in entries] == [prefix + "in/a"]


def test_many_blocked_queries_all_wake(ns: NameServer, prefix: str):
    key = prefix + "k"
    ns.put(key, "v1")
    idx, _ = ns.get(key)
    calls = [Call(lambda: ns.get(key, index=idx, wait=LONG_WAIT)) for _ in range(8)]
    calls += [Call(lambda: ns.get_tree(prefix, index=idx, wait=LONG_WAIT)) for _ in range(4)]
    time.sleep(DELAY)
    changed_at = time.monotonic()
    ns.put(key, "v2")
    for call in calls:
        _assert_woken_by(call, changed_at)
    assert all(c.value[0] > idx for c in calls)


def test_session_list_blocks_until_a_session_is_created(ns: NameServer, make_session):
    name = f"blocking-list-{uuid.uuid4().hex[:8]}"
    idx, _ = ns.session_list()

    def wait_for_session():
        index = idx
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            index, sessions = ns.session_list(index=index, wait=LONG_WAIT)
            if any(s.get("Name") == name for s in sessions):
                return index, sessions
        raise AssertionError("the session never showed up")

    call = Call(wait_for_session)
    time.sleep(DELAY)
    changed_at = time.monotonic()
    make_session(name=name)
    _assert_woken_by(call, changed_at)
    assert call.value[0] > idx


def test_a_fresh_store_wakes_on_its_first_write(builtin_nameserver):
    """On an empty store every read reports an index (never 0), and the first write gets a
    higher one: a query blocked at the index it was given answers with that write, at once.
    (py-consul's test_kv_subscribe and its asyncio test_session do just this on a new Consul.)"""
    ns = NameServer(builtin_nameserver.url)
    key_idx, entry = ns.get("first/key")
    tree_idx, entries = ns.get_tree("first/")
    keys_idx, keys = ns.keys("first/")
    sessions_idx, sessions = ns.session_list()
    assert (entry, entries, keys, sessions) == (None, [], [], [])
    assert min(key_idx, tree_idx, keys_idx, sessions_idx) >= 1
    kv_calls = [Call(lambda: ns.get("first/key", index=key_idx, wait=LONG_WAIT)),
                Call(lambda: ns.get_tree("first/", index=tree_idx, wait=LONG_WAIT)),
                Call(lambda: ns.keys("first/", index=keys_idx, wait=LONG_WAIT))]
    session_call = Call(lambda: ns.session_list(index=sessions_idx, wait=LONG_WAIT))
    time.sleep(DELAY)

    changed_at = time.monotonic()
    ns.put("first/key", "the first write")
    for call in kv_calls:
        _assert_woken_by(call, changed_at)
    (_, entry), (_, entries), (_, keys) = (c.value for c in kv_calls)
    assert entry.value == b"the first write"
    assert [e.value for e in entries] == [b"the first write"]
    assert keys == ["first/key"]

    changed_at = time.monotonic()
    sid = ns.session_create(name="the first session")
    _assert_woken_by(session_call, changed_at)
    assert [s["ID"] for s in session_call.value[1]] == [sid]
    ns.session_destroy(sid)

