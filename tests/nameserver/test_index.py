"""X-Consul-Index: what every KV read reports, and that it never goes backwards.

References (hashicorp/consul): website/content/api-docs/kv.mdx (ModifyIndex / X-Consul-Index);
agent/consul/kvs_endpoint.go (Get: the entry's ModifyIndex, else the table index, never 0;
List/ListKeys: the prefix's highest index); agent/consul/state/kvs.go kvsListTxn (the graveyard's
tombstones count, "to prevent the index from sliding backwards").
"""

from __future__ import annotations

import requests

from oneos.nameserver.client import NameServer


def _header_index(resp: requests.Response) -> int:
    assert "X-Consul-Index" in resp.headers, f"no X-Consul-Index on {resp.request.method} {resp.url}"
    return int(resp.headers["X-Consul-Index"])


def test_every_read_has_a_nonzero_index(nameserver_url: str, ns: NameServer, prefix: str):
    ns.put(prefix + "a", "1")
    urls = [
        (f"/v1/kv/{prefix}a", {}, 200),
        (f"/v1/kv/{prefix}missing", {}, 404),
        (f"/v1/kv/{prefix}", {"recurse": ""}, 200),
        (f"/v1/kv/{prefix}nothing/", {"recurse": ""}, 404),
        (f"/v1/kv/{prefix}", {"keys": ""}, 200),
        (f"/v1/kv/{prefix}nothing/", {"keys": ""}, 404),
        (f"/v1/kv/{prefix}nothing/", {"keys": "", "separator": "/"}, 404),
    ]
    for path, params, status in urls:
        resp = requests.get(nameserver_url + path, params=params, timeout=10)
        assert resp.status_code == status, (path, params, resp.status_code)
        assert _header_index(resp) >= 1, (path, params)


def test_single_key_index_is_its_modify_index(ns: NameServer, prefix: str):
    ns.put(prefix + "a", "1")
    ns.put(prefix + "b", "2")  # a later write elsewhere does not show in a's index
    idx, entry = ns.get(prefix + "a")
    assert idx == entry.modify_index
    _, b = ns.get(prefix + "b")
    assert b.modify_index > idx


def test_missing_key_index_is_the_kv_table_index(ns: NameServer, prefix: str):
    """kvs_endpoint.go Get: with no entry, reply.Index is the KV table's index (kvsMaxIndex)."""
    ns.put(prefix + "elsewhere", "x")
    _, written = ns.get(prefix + "elsewhere")
    idx, entry = ns.get(prefix + "missing")
    assert entry is None
    assert idx >= written.modify_index


def test_recurse_index_is_the_highest_modify_index_under_the_prefix(ns: NameServer, prefix: str):
    for name in ("a", "b", "c"):
        ns.put(prefix + name, name)
    ns.put(prefix + "a", "rewritten")  # now a holds the highest index
    idx, entries = ns.get_tree(prefix)
    assert idx == max(e.modify_index for e in entries)
    assert idx == next(e.modify_index for e in entries if e.key == prefix + "a")
    kidx, _ = ns.keys(prefix)
    assert kidx == idx
    # A write outside the prefix does not move it.
    ns.put(prefix.rstrip("/") + "-outside", "x")
    try:
        assert ns.get_tree(prefix)[0] == idx
        assert ns.keys(prefix)[0] == idx
    finally:
        ns.delete(prefix.rstrip("/") + "-outside")


def test_recurse_index_never_goes_backwards_on_delete(ns: NameServer, prefix: str):
    """Deleting the key with the highest index leaves a tombstone at the delete's index."""
    ns.put(prefix + "a", "1")
    ns.put(prefix + "b", "2")
    before, _ = ns.get_tree(prefix)
    assert ns.delete(prefix + "b") is True
    after, entries = ns.get_tree(prefix)
    assert [e.key for e in entries] == [prefix + "a"]
    assert after > before  # the delete is a change under the prefix
    assert after > entries[0].modify_index  # from the tombstone, not from the remaining key
    kafter, _ = ns.keys(prefix)
    assert kafter == after
    # Deleting a key that is not the newest also moves the prefix's index on.
    ns.put(prefix + "c", "3")
    mid, _ = ns.get_tree(prefix)
    ns.delete(prefix + "a")
    last, entries = ns.get_tree(prefix)
    assert [e.key for e in entries] == [prefix + "c"]
    assert last > mid


def test_index_of_an_emptied_prefix_does_not_go_backwards(ns: NameServer, prefix: str):
    ns.put(prefix + "only", "1")
    before, _ = ns.get_tree(prefix)
    ns.delete(prefix, recurse=True)
    after, entries = ns.get_tree(prefix)
    assert entries == []
    assert after > before


def test_writes_get_increasing_indexes(ns: NameServer, prefix: str):
    seen = []
    for i in range(20):
        ns.put(prefix + f"k{i % 3}", str(i))
        seen.append(ns.get(prefix + f"k{i % 3}")[0])
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)
