"""KV contract: GET/PUT/DELETE and their query flags, with Consul's semantics.

References (hashicorp/consul): website/content/api-docs/kv.mdx; agent/kvs_endpoint.go
(HTTP layer: flags, cas, acquire/release, 413, conflicting flags, 404s); agent/consul/state/kvs.go
(kvsSetTxn, kvsSetCASTxn, kvsDeleteCASTxn, kvsLockTxn, kvsUnlockTxn); agent/consul/kvs_endpoint.go
(KVS.Get / KVS.List / KVS.ListKeys, including the separator cut).
"""

from __future__ import annotations

import uuid

import pytest
import requests

from oneos.nameserver.client import Entry, NameServer, NameServerError

MAX_VALUE = 512 * 1024  # KVMaxValueSize default: 512 KiB


# -- basic PUT / GET / DELETE ---------------------------------------------------


def test_put_get_delete_roundtrip(ns: NameServer, prefix: str):
    key = prefix + "greeting"
    assert ns.put(key, "hello") is True
    idx, entry = ns.get(key)
    assert isinstance(entry, Entry)
    assert entry.key == key
    assert entry.value == b"hello"
    assert entry.flags == 0
    assert entry.lock_index == 0
    assert entry.session is None
    assert entry.create_index == entry.modify_index > 0
    assert idx == entry.modify_index

    assert ns.delete(key) is True
    idx2, gone = ns.get(key)
    assert gone is None
    assert idx2 >= 1


def test_get_missing_key_is_none(ns: NameServer, prefix: str):
    idx, entry = ns.get(prefix + "never-written")
    assert entry is None
    assert idx >= 1  # X-Consul-Index is never 0, even on a 404


def test_get_missing_key_is_http_404_with_index(nameserver_url: str, prefix: str):
    """kvs_endpoint.go KVSGet: setMeta (X-Consul-Index) then 404 with an empty body."""
    resp = requests.get(f"{nameserver_url}/v1/kv/{prefix}never-written", timeout=10)
    assert resp.status_code == 404
    assert resp.content == b""
    assert int(resp.headers["X-Consul-Index"]) >= 1


def test_delete_missing_key_is_true(ns: NameServer, prefix: str):
    assert ns.delete(prefix + "never-written") is True


def test_create_index_stays_and_modify_index_grows(ns: NameServer, prefix: str):
    key = prefix + "k"
    ns.put(key, "v1")
    _, first = ns.get(key)
    ns.put(key, "v2")
    _, second = ns.get(key)
    assert second.value == b"v2"
    assert second.create_index == first.create_index
    assert second.modify_index > first.modify_index


def test_rewriting_identical_contents_does_not_bump_modify_index(ns: NameServer, prefix: str):
    """state/kvs.go kvsSetTxn: `if existing != nil && existing.Equal(entry)` keeps ModifyIndex."""
    key = prefix + "same"
    other = prefix + "other"
    assert ns.put(key, "same", flags=5) is True
    _, before = ns.get(key)
    ns.put(other, "moves the global index on")
    assert ns.put(key, "same", flags=5) is True  # still acknowledged as a success
    idx, after = ns.get(key)
    assert after.modify_index == before.modify_index
    assert idx == before.modify_index
    # ...but changing only the flags is a change.
    assert ns.put(key, "same", flags=6) is True
    _, changed = ns.get(key)
    assert changed.modify_index > before.modify_index
    assert changed.flags == 6


def test_empty_value_is_stored_as_null(nameserver_url: str, ns: NameServer, prefix: str):
    """kvs_endpoint.go KVSPut: an empty body is no value, so the key reads back "Value": null (not "")."""
    key = prefix + "empty"
    assert requests.put(f"{nameserver_url}/v1/kv/{key}", data=b"", timeout=10).json() is True
    resp = requests.get(f"{nameserver_url}/v1/kv/{key}", timeout=10)
    assert resp.status_code == 200
    assert resp.json()[0]["Value"] is None
    assert ns.get_raw(key) == b""
    # The same for a write that takes a lock, and for overwriting a value with nothing.
    sid = ns.session_create()
    try:
        assert requests.put(f"{nameserver_url}/v1/kv/{key}?acquire={sid}", timeout=10).json() is True
        assert requests.get(f"{nameserver_url}/v1/kv/{key}", timeout=10).json()[0]["Value"] is None
    finally:
        ns.session_destroy(sid)
    ns.put(key, "something")
    ns.put(key, b"")
    assert requests.get(f"{nameserver_url}/v1/kv/{key}", timeout=10).json()[0]["Value"] is None


# -- binary values, sizes ---------------------------------------------------------


def test_binary_value_all_256_bytes_roundtrip(ns: NameServer, prefix: str):
    key = prefix + "binary"
    value = bytes(range(256)) * 4
    assert ns.put(key, value) is True
    _, entry = ns.get(key)
    assert entry.value == value
    _, tree = ns.get_tree(prefix)
    assert [e.value for e in tree] == [value]


def test_values_are_base64_in_json(nameserver_url: str, ns: NameServer, prefix: str):
    """kv.mdx: `Value` is a base64-encoded blob of data."""
    import base64

    key = prefix + "b64"
    value = bytes([0, 255, 10, 13, 34, 92]) + "é✓".encode()
    ns.put(key, value)
    body = requests.get(f"{nameserver_url}/v1/kv/{key}", timeout=10).json()
    assert isinstance(body, list) and len(body) == 1
    assert body[0]["Key"] == key
    assert base64.b64decode(body[0]["Value"]) == value
    for field in ("CreateIndex", "ModifyIndex", "LockIndex", "Flags"):
        assert isinstance(body[0][field], int)


def test_value_of_exactly_512_kib_is_accepted(ns: NameServer, prefix: str):
    """kvs_endpoint.go: `if req.ContentLength > KVMaxValueSize` -> 413; equal is fine."""
    key = prefix + "big"
    value = bytes(i % 251 for i in range(MAX_VALUE))
    assert ns.put(key, value) is True
    _, entry = ns.get(key)
    assert entry.value == value


def test_value_over_512_kib_is_413(ns: NameServer, prefix: str):
    key = prefix + "too-big"
    with pytest.raises(NameServerError) as info:
        ns.put(key, b"x" * (MAX_VALUE + 1))
    assert info.value.status == 413
    assert ns.get(key)[1] is None
    # The server is still fine afterwards.
    assert ns.put(key, b"small") is True


# -- flags ------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [0, 42, 2**63, 2**64 - 1])
def test_flags_uint64_roundtrip(ns: NameServer, prefix: str, flags: int):
    key = prefix + "flagged"
    assert ns.put(key, "v", flags=flags) is True
    _, entry = ns.get(key)
    assert entry.flags == flags
    _, tree = ns.get_tree(prefix)
    assert tree[0].flags == flags


def test_plain_put_without_flags_resets_them_to_zero(ns: NameServer, prefix: str):
    """kvs_endpoint.go KVSPut: DirEnt.Flags starts at 0 and is only set from ?flags."""
    key = prefix + "flagged"
    ns.put(key, "v", flags=9)
    ns.put(key, "v2")
    assert ns.get(key)[1].flags == 0


# -- raw, recurse, keys, separator ---------------------------------------------------


def test_raw_returns_the_bare_value(ns: NameServer, prefix: str):
    key = prefix + "raw"
    value = "plain text, accents: héllo ✓\n"
    ns.put(key, value)
    assert ns.get_raw(key) == value.encode("utf-8")
    assert ns.get_raw(prefix + "missing") is None


def test_raw_returns_binary_bytes_unchanged(ns: NameServer, prefix: str):
    key = prefix + "rawbin"
    value = bytes(range(256))
    ns.put(key, value)
    assert ns.get_raw(key) == value


def test_recurse_returns_everything_under_the_prefix_sorted(ns: NameServer, prefix: str):
    for name in ("b", "a/x", "a", "a/y/z", "ab", "c"):
        ns.put(prefix + name, name)
    ns.put(prefix.rstrip("/") + "-sibling", "outside")  # shares the prefix minus the slash
    try:
        _, entries = ns.get_tree(prefix + "a")
        # A prefix is a string prefix: "a" matches "a", "a/x", "a/y/z" and "ab".
        assert [e.key for e in entries] == [prefix + n for n in ("a", "a/x", "a/y/z", "ab")]
        assert [e.value for e in entries] == [n.encode() for n in ("a", "a/x", "a/y/z", "ab")]
        _, everything = ns.get_tree(prefix)
        assert [e.key for e in everything] == sorted(prefix + n for n in ("b", "a/x", "a", "a/y/z", "ab", "c"))
    finally:
        ns.delete(prefix.rstrip("/") + "-sibling")


def test_recurse_on_an_empty_prefix_is_empty(ns: NameServer, prefix: str):
    idx, entries = ns.get_tree(prefix + "nothing/")
    assert entries == []
    assert idx >= 1


def test_keys_lists_keys_only(ns: NameServer, prefix: str):
    for name in ("a/b/c", "a/b/d", "a/x", "top"):
        ns.put(prefix + name, "v")
    _, keys = ns.keys(prefix)
    assert keys == [prefix + n for n in ("a/b/c", "a/b/d", "a/x", "top")]


def test_keys_with_separator_cuts_after_the_separator(ns: NameServer, prefix: str):
    """agent/consul/kvs_endpoint.go ListKeys: key[:len(prefix)+sepIdx+len(sep)], de-duplicated."""
    for name in ("a/b/c", "a/b/d", "a/x", "top", "a/b/"):
        ns.put(prefix + name, "v")
    _, keys = ns.keys(prefix + "a/", separator="/")
    assert keys == [prefix + "a/b/", prefix + "a/x"]
    _, top = ns.keys(prefix, separator="/")
    assert top == [prefix + "a/", prefix + "top"]


def test_keys_of_an_empty_prefix_is_empty(ns: NameServer, prefix: str):
    idx, keys = ns.keys(prefix + "nothing/")
    assert keys == []
    assert idx >= 1


def test_query_flags_count_by_presence_not_value(nameserver_url: str, ns: NameServer, prefix: str):
    """kvs_endpoint.go: `if _, ok := params["recurse"]; ok` -- ?recurse=false still recurses."""
    ns.put(prefix + "a", "1")
    ns.put(prefix + "b", "2")
    resp = requests.get(f"{nameserver_url}/v1/kv/{prefix}", params={"recurse": "false"}, timeout=10)
    assert resp.status_code == 200
    assert [e["Key"] for e in resp.json()] == [prefix + "a", prefix + "b"]
    resp = requests.get(f"{nameserver_url}/v1/kv/{prefix}", params={"keys": "false"}, timeout=10)
    assert resp.status_code == 200
    assert resp.json() == [prefix + "a", prefix + "b"]
    resp = requests.get(f"{nameserver_url}/v1/kv/{prefix}a", params={"raw": "false"}, timeout=10)
    assert resp.status_code == 200
    assert resp.content == b"1"


# -- CAS ----------------------------------------------------------------------------


def test_cas_zero_creates_only_if_absent(ns: NameServer, prefix: str):
    key = prefix + "once"
    assert ns.put(key, "first", cas=0) is True
    assert ns.put(key, "second", cas=0) is False
    assert ns.get(key)[1].value == b"first"


def test_cas_with_current_index_writes_and_stale_index_does_not(ns: NameServer, prefix: str):
    key = prefix + "cas"
    ns.put(key, "v1")
    _, e1 = ns.get(key)
    assert ns.put(key, "v2", cas=e1.modify_index) is True
    _, e2 = ns.get(key)
    assert e2.value == b"v2"
    assert e2.modify_index > e1.modify_index
    assert ns.put(key, "v3", cas=e1.modify_index) is False  # stale
    _, e3 = ns.get(key)
    assert e3.value == b"v2"
    assert e3.modify_index == e2.modify_index


def test_cas_nonzero_on_missing_key_is_false(ns: NameServer, prefix: str):
    """state/kvs.go kvsSetCASTxn: `entry.ModifyIndex != 0 && existing == nil` -> false."""
    ns.put(prefix + "x", "x")
    _, other = ns.get(prefix + "x")
    key = prefix + "absent"
    assert ns.put(key, "v", cas=other.modify_index) is False
    assert ns.get(key)[1] is None


def test_delete_with_cas(ns: NameServer, prefix: str):
    key = prefix + "del"
    ns.put(key, "v1")
    _, e1 = ns.get(key)
    ns.put(key, "v2")
    _, e2 = ns.get(key)
    assert ns.delete(key, cas=e1.modify_index) is False  # stale: nothing deleted
    assert ns.get(key)[1].value == b"v2"
    assert ns.delete(key, cas=0) is False  # kv.mdx: "a 0 index will not delete the key"
    assert ns.get(key)[1] is not None
    assert ns.delete(key, cas=e2.modify_index) is True
    assert ns.get(key)[1] is None


def test_delete_cas_of_missing_key_is_true(ns: NameServer, prefix: str):
    """state/kvs.go kvsDeleteCASTxn: a missing entry returns `entry == nil` (true)."""
    assert ns.delete(prefix + "never-written", cas=12345) is True


def test_delete_recurse_removes_the_prefix_only(ns: NameServer, prefix: str):
    for name in ("dir/a", "dir/b/c", "dir", "dirx", "other"):
        ns.put(prefix + name, name)
    assert ns.delete(prefix + "dir/", recurse=True) is True
    assert ns.keys(prefix)[1] == [prefix + n for n in ("dir", "dirx", "other")]
    # Without a trailing slash the prefix is still a plain string prefix.
    assert ns.delete(prefix + "dir", recurse=True) is True
    assert ns.keys(prefix)[1] == [prefix + "other"]


def test_delete_without_recurse_removes_only_the_key(ns: NameServer, prefix: str):
    ns.put(prefix + "d", "1")
    ns.put(prefix + "d/child", "2")
    assert ns.delete(prefix + "d") is True
    assert ns.keys(prefix)[1] == [prefix + "d/child"]


def test_conflicting_flags_are_400(ns: NameServer, make_session, prefix: str):
    """kvs_endpoint.go conflictingFlags: cas/acquire/release on PUT, recurse/cas on DELETE."""
    sid = make_session()
    key = prefix + "conflict"
    for kwargs in ({"cas": 0, "acquire": sid}, {"cas": 0, "release": sid}, {"acquire": sid, "release": sid}):
        with pytest.raises(NameServerError) as info:
            ns.put(key, "v", **kwargs)
        assert info.value.status == 400, kwargs
    assert ns.get(key)[1] is None
    ns.put(key, "v")
    with pytest.raises(NameServerError) as info:
        ns.delete(key, recurse=True, cas=1)
    assert info.value.status == 400
    assert ns.get(key)[1] is not None


# -- locks: acquire / release ---------------------------------------------------------


def test_acquire_unheld_key_sets_session_and_lock_index(ns: NameServer, make_session, prefix: str):
    sid = make_session(name="holder")
    key = prefix + "lock"
    assert ns.put(key, "mine", acquire=sid) is True  # a key need not exist to be acquired
    _, e = ns.get(key)
    assert e.session == sid
    assert e.lock_index == 1
    assert e.value == b"mine"


def test_reacquire_by_holder_keeps_lock_index_and_writes_value(ns: NameServer, make_session, prefix: str):
    sid = make_session()
    key = prefix + "lock"
    ns.put(key, "v1", acquire=sid)
    _, e1 = ns.get(key)
    assert ns.put(key, "v2", acquire=sid) is True
    _, e2 = ns.get(key)
    assert e2.value == b"v2"
    assert e2.session == sid
    assert e2.lock_index == e1.lock_index == 1
    assert e2.modify_index > e1.modify_index
    assert e2.create_index == e1.create_index


def test_acquire_held_by_another_session_is_false(ns: NameServer, make_session, prefix: str):
    a, b = make_session(), make_session()
    key = prefix + "lock"
    assert ns.put(key, "a", acquire=a) is True
    _, before = ns.get(key)
    assert ns.put(key, "b", acquire=b) is False
    _, after = ns.get(key)
    assert after.session == a
    assert after.value == b"a"
    assert after.modify_index == before.modify_index


def test_release_by_holder_clears_session_keeps_lock_index(ns: NameServer, make_session, prefix: str):
    sid = make_session()
    key = prefix + "lock"
    ns.put(key, "held", acquire=sid)
    _, held = ns.get(key)
    assert ns.put(key, "released", release=sid) is True
    _, e = ns.get(key)
    assert e.session is None
    assert e.lock_index == held.lock_index == 1
    assert e.value == b"released"  # the body of a release is written
    assert e.modify_index > held.modify_index


def test_release_with_empty_body_stores_null_value(ns: NameServer, make_session, prefix: str):
    """kvs_endpoint.go KVSPut copies the (empty) body into DirEnt.Value on release too."""
    sid = make_session()
    key = prefix + "lock"
    ns.put(key, "held", acquire=sid)
    assert ns.put(key, None, release=sid) is True
    _, e = ns.get(key)
    assert e.session is None
    assert not e.value


def test_release_by_non_holder_is_false(ns: NameServer, make_session, prefix: str):
    a, b = make_session(), make_session()
    key = prefix + "lock"
    ns.put(key, "a", acquire=a)
    assert ns.put(key, "b", release=b) is False
    _, e = ns.get(key)
    assert e.session == a
    assert e.value == b"a"
    # Releasing an unlocked key, or a missing one, is false too (kvsUnlockTxn).
    ns.put(key, "a", release=a)
    assert ns.put(key, "again", release=a) is False
    assert ns.get(key)[1].value == b"a"
    assert ns.put(prefix + "missing", "x", release=a) is False
    assert ns.get(prefix + "missing")[1] is None


def test_each_new_acquisition_increments_lock_index(ns: NameServer, make_session, prefix: str):
    a, b = make_session(), make_session()
    key = prefix + "lock"
    ns.put(key, "plain")  # exists, never locked: LockIndex 0
    assert ns.get(key)[1].lock_index == 0
    assert ns.put(key, "a", acquire=a) is True
    assert ns.get(key)[1].lock_index == 1
    ns.put(key, "a", release=a)
    assert ns.put(key, "b", acquire=b) is True  # explicit release has no lock-delay
    _, e = ns.get(key)
    assert (e.lock_index, e.session) == (2, b)
    ns.put(key, "b", release=b)
    assert ns.put(key, "a", acquire=a) is True
    assert ns.get(key)[1].lock_index == 3


def test_plain_put_ignores_locks(ns: NameServer, make_session, prefix: str):
    """kv.mdx: an update without acquire proceeds normally even if another session has locked the key."""
    sid = make_session()
    key = prefix + "lock"
    ns.put(key, "held", acquire=sid)
    assert ns.put(key, "overwritten") is True
    _, e = ns.get(key)
    assert e.value == b"overwritten"
    assert e.session == sid  # kvsSetTxn keeps the existing session
    # (LockIndex is not carried over by kvsSetTxn: Consul stores the request's 0. Not pinned here.)
    # cas writes ignore the lock too, and so does delete.
    assert ns.put(key, "cas", cas=e.modify_index) is True
    assert ns.get(key)[1].session == sid
    assert ns.delete(key) is True
    assert ns.get(key)[1] is None


def test_acquire_with_unknown_session_is_500(ns: NameServer, prefix: str):
    """state/kvs.go kvsLockTxn returns an error ("invalid session"), which the HTTP layer sends as 500."""
    key = prefix + "lock"
    with pytest.raises(NameServerError) as info:
        ns.put(key, "v", acquire=str(uuid.uuid4()))
    assert info.value.status == 500
    assert ns.get(key)[1] is None


def test_acquire_with_destroyed_session_fails(ns: NameServer, make_session, prefix: str):
    sid = make_session(lock_delay=0)
    assert ns.session_destroy(sid) is True
    with pytest.raises(NameServerError) as info:
        ns.put(prefix + "lock", "v", acquire=sid)
    assert info.value.status == 500


def test_status_leader_is_host_port(ns: NameServer):
    leader = ns.leader()
    assert isinstance(leader, str) and leader
    host, sep, port = leader.rpartition(":")
    assert sep and host and port.isdigit()
