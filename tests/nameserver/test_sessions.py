"""Sessions: create / renew / destroy / info / list, TTLs, invalidation behaviours, lock-delay.

References (hashicorp/consul): website/content/api-docs/session.mdx (fields, TTL 10s..86400s,
"may not be reaped for up to double this TTL", destroy of an unknown session is still 200,
info of an unknown session is `[]`, renew of an unknown session is 404 in agent/session_endpoint.go);
agent/session_endpoint.go FixupLockDelay (a number under 1000 means seconds) and the
case-insensitive body decode; agent/consul/session_endpoint.go Apply (TTL bounds, Behavior);
agent/consul/session_ttl.go (timers run for ttl * SessionTTLMultiplier = 2); agent/consul/state/
session.go deleteSessionTxn (release clears Session via kvsSetTxn, so ModifyIndex moves; delete
removes the keys; either way the lock-delay starts); agent/consul/kvs_endpoint.go kvsPreApply
(a lock inside a lock-delay is refused with false).
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import requests

from oneos.nameserver.client import NameServer
from tests.nameserver.helpers import Call
from tests.procs import sleep_until, wait_until

SECOND_NS = 1_000_000_000


def _create_raw(url: str, body: dict) -> requests.Response:
    return requests.put(f"{url}/v1/session/create", data=json.dumps(body), timeout=10)


@pytest.fixture
def raw_sessions(nameserver_url: str):
    """Session ids created with raw HTTP; destroyed afterwards."""
    created: list[str] = []
    yield created
    for sid in created:
        try:
            requests.put(f"{nameserver_url}/v1/session/destroy/{sid}", timeout=10)
        except requests.RequestException:
            pass


# -- create / info / list / renew / destroy ----------------------------------------------


def test_create_and_info(ns: NameServer, make_session):
    sid = make_session(name="worker-1", ttl=30, behavior="delete", lock_delay=3)
    idx, info = ns.session_info(sid)
    assert idx >= 1
    assert info["ID"] == sid
    assert info["Name"] == "worker-1"
    assert info["Behavior"] == "delete"
    assert info["TTL"] == "30s"
    assert info["LockDelay"] == 3 * SECOND_NS
    assert isinstance(info["Node"], str) and info["Node"]
    assert info["CreateIndex"] >= 1
    uuid.UUID(sid)  # session ids are UUIDs


def test_defaults_release_and_15s_lock_delay(ns: NameServer, make_session):
    sid = make_session()
    _, info = ns.session_info(sid)
    assert info["Behavior"] == "release"
    assert info["LockDelay"] == 15 * SECOND_NS
    assert not info.get("TTL")


def test_info_of_unknown_session_is_none(ns: NameServer, nameserver_url: str):
    unknown = str(uuid.uuid4())
    idx, info = ns.session_info(unknown)
    assert info is None
    assert idx >= 1
    # session.mdx: "If the session does not exist, an empty JSON list [] is returned" (a 200).
    resp = requests.get(f"{nameserver_url}/v1/session/info/{unknown}", timeout=10)
    assert resp.status_code == 200
    assert resp.json() == []
    assert int(resp.headers["X-Consul-Index"]) >= 1


def test_list_shows_live_sessions_only(ns: NameServer, make_session):
    a = make_session(name="list-a")
    b = make_session(name="list-b")
    idx, sessions = ns.session_list()
    ids = {s["ID"] for s in sessions}
    assert {a, b} <= ids
    assert idx >= 1
    assert ns.session_destroy(a) is True
    idx2, sessions = ns.session_list()
    ids = {s["ID"] for s in sessions}
    assert a not in ids and b in ids
    assert idx2 > idx


def test_renew_returns_the_session(ns: NameServer, make_session):
    sid = make_session(name="renewed", ttl=10)
    renewed = ns.session_renew(sid)
    assert renewed is not None
    assert renewed["ID"] == sid
    assert renewed["Name"] == "renewed"
    assert renewed["TTL"]  # Consul may hand back a longer TTL under load


def test_renew_of_unknown_session_is_404(ns: NameServer, nameserver_url: str):
    unknown = str(uuid.uuid4())
    assert ns.session_renew(unknown) is None
    resp = requests.put(f"{nameserver_url}/v1/session/renew/{unknown}", timeout=10)
    assert resp.status_code == 404


def test_destroy(ns: NameServer, make_session):
    sid = make_session()
    assert ns.session_destroy(sid) is True
    assert ns.session_info(sid)[1] is None
    assert ns.session_renew(sid) is None
    # Idempotent: destroying it again, or an unknown id, is still true.
    assert ns.session_destroy(sid) is True
    assert ns.session_destroy(str(uuid.uuid4())) is True


# -- create body: TTL bounds, field-name case, lock-delay forms ------------------------------


@pytest.mark.parametrize("ttl", ["9s", "86401s", "1s", "25h"])
def test_ttl_outside_10s_to_86400s_is_rejected(nameserver_url: str, raw_sessions, ttl: str):
    # The client refuses such TTLs itself (py-consul asserts 10 <= ttl <= 86400), hence raw HTTP.
    resp = _create_raw(nameserver_url, {"TTL": ttl})
    if resp.ok:
        raw_sessions.append(resp.json()["ID"])
    assert not resp.ok, f"TTL {ttl} was accepted"
    assert resp.status_code >= 400


@pytest.mark.parametrize("ttl", ["10s", "86400s", "24h", "1m"])
def test_ttl_bounds_are_inclusive(ns: NameServer, nameserver_url: str, raw_sessions, ttl: str):
    resp = _create_raw(nameserver_url, {"TTL": ttl})
    assert resp.status_code == 200, resp.text
    sid = resp.json()["ID"]
    raw_sessions.append(sid)
    _, info = ns.session_info(sid)
    assert info["TTL"] == ttl


@pytest.mark.parametrize("body", [
    {"ttl": "10s", "name": "lower", "behavior": "delete", "lockdelay": "3s"},
    {"TTL": "10s", "Name": "lower", "Behavior": "delete", "LockDelay": "3s"},
])
def test_field_names_in_any_case(ns: NameServer, nameserver_url: str, raw_sessions, body: dict):
    resp = _create_raw(nameserver_url, body)
    assert resp.status_code == 200, resp.text
    sid = resp.json()["ID"]
    raw_sessions.append(sid)
    _, info = ns.session_info(sid)
    assert info["TTL"] == "10s"
    assert info["Name"] == "lower"
    assert info["Behavior"] == "delete"
    assert info["LockDelay"] == 3 * SECOND_NS


@pytest.mark.parametrize("lock_delay, expected_ns", [
    (7, 7 * SECOND_NS),                  # a bare number under 1000 means seconds
    (2_500_000_000, 2_500_000_000),      # a larger one is nanoseconds
    ("500ms", 500_000_000),
    ("1m", 60 * SECOND_NS),
])
def test_lock_delay_forms(ns: NameServer, nameserver_url: str, raw_sessions, lock_delay, expected_ns: int):
    resp = _create_raw(nameserver_url, {"LockDelay": lock_delay})
    assert resp.status_code == 200, resp.text
    sid = resp.json()["ID"]
    raw_sessions.append(sid)
    assert ns.session_info(sid)[1]["LockDelay"] == expected_ns


def test_invalid_behavior_is_rejected(nameserver_url: str, raw_sessions):
    resp = _create_raw(nameserver_url, {"Behavior": "explode"})
    if resp.ok:
        raw_sessions.append(resp.json()["ID"])
    assert resp.status_code >= 400


# -- invalidation --------------------------------------------------------------------------


def test_destroy_with_release_unlocks_held_keys(ns: NameServer, make_session, prefix: str):
    sid = make_session(behavior="release", lock_delay=0)
    keys = [prefix + "one", prefix + "two"]
    for key in keys:
        assert ns.put(key, "held " + key, acquire=sid) is True
    before = {key: ns.get(key)[1] for key in keys}
    ns.put(prefix + "unlocked", "not mine")
    _, untouched_before = ns.get(prefix + "unlocked")

    assert ns.session_destroy(sid) is True
    for key in keys:
        _, e = ns.get(key)
        assert e is not None, "release behaviour must keep the key"
        assert e.session is None
        assert e.value == ("held " + key).encode()
        assert e.lock_index == before[key].lock_index == 1
        assert e.modify_index > before[key].modify_index
        assert e.create_index == before[key].create_index
    assert ns.get(prefix + "unlocked")[1].modify_index == untouched_before.modify_index


def test_destroy_with_delete_removes_held_keys(ns: NameServer, make_session, prefix: str):
    sid = make_session(behavior="delete", lock_delay=0)
    keys = [prefix + "one", prefix + "dir/two"]
    for key in keys:
        assert ns.put(key, "ephemeral", acquire=sid) is True
    ns.put(prefix + "stays", "x")
    assert ns.session_destroy(sid) is True
    for key in keys:
        assert ns.get(key)[1] is None
    assert ns.keys(prefix)[1] == [prefix + "stays"]


def test_destroy_wakes_a_blocking_query_on_the_lock(ns: NameServer, make_session, prefix: str):
    """The leader-election pattern: watchers block on the lock key and see the holder go."""
    sid = make_session(lock_delay=0)
    key = prefix + "leader"
    ns.put(key, "me", acquire=sid)
    idx, _ = ns.get(key)
    call = Call(lambda: ns.get(key, index=idx, wait="15s"))
    time.sleep(0.5)
    destroyed_at = time.monotonic()
    ns.session_destroy(sid)
    new_idx, entry = call.result(timeout=25)
    assert destroyed_at <= call.ended < destroyed_at + 3.0
    assert new_idx > idx
    assert entry.session is None


# -- lock-delay -----------------------------------------------------------------------------


def test_lock_delay_after_invalidation(ns: NameServer, make_session, prefix: str):
    """After its holder is invalidated, a key cannot be locked for the holder's lock-delay (2 s
    here); plain writes are not affected. Behaviour delete gets the same delay."""
    rel = make_session(behavior="release", lock_delay=2)
    dele = make_session(behavior="delete", lock_delay=2)
    other = make_session(lock_delay=0)
    k_rel, k_del = prefix + "released", prefix + "deleted"
    assert ns.put(k_rel, "held", acquire=rel) is True
    assert ns.put(k_del, "held", acquire=dele) is True

    t0 = time.monotonic()
    ns.session_destroy(rel)
    ns.session_destroy(dele)
    assert ns.put(k_rel, "mine now", acquire=other) is False
    assert ns.put(k_del, "mine now", acquire=other) is False
    _, e = ns.get(k_rel)
    assert e.session is None and e.value == b"held"
    assert ns.get(k_del)[1] is None
    assert ns.put(k_rel + "-plain", "plain writes are fine") is True
    assert ns.put(k_rel, "plain write to the delayed key") is True

    wait_until(lambda: ns.put(k_rel, "mine now", acquire=other), 15, "the lock-delay to end", interval=0.05)
    elapsed = time.monotonic() - t0
    assert 1.8 <= elapsed <= 2.0 + 6.0, f"re-acquired {elapsed:.2f}s after the holder was destroyed"
    assert ns.put(k_del, "mine now", acquire=other) is True  # the same delay has passed for it
    _, e = ns.get(k_rel)
    assert (e.session, e.value) == (other, b"mine now")
    assert e.lock_index >= 1  # (the plain PUT above reset it: Consul's kvsSetTxn does not carry LockIndex over)


def test_explicit_release_has_no_lock_delay(ns: NameServer, make_session, prefix: str):
    a = make_session(lock_delay=15)
    b = make_session(lock_delay=15)
    key = prefix + "lock"
    assert ns.put(key, "a", acquire=a) is True
    assert ns.put(key, "a", release=a) is True
    assert ns.put(key, "b", acquire=b) is True


# -- TTL expiry (slow: about 2 x TTL = 20 s) --------------------------------------------------


def test_ttl_expiry(ns: NameServer, make_session, prefix: str):
    """TTL=10s: still valid after 11 s (the timer runs 2 x TTL), gone by 2 x TTL plus slack;
    its locks are released or deleted per behaviour, then guarded by its lock-delay; a renewed
    session lives on."""
    rel = make_session(ttl=10, behavior="release", lock_delay=3)
    dele = make_session(ttl=10, behavior="delete", lock_delay=0)
    kept = make_session(ttl=10, lock_delay=0)
    created = time.monotonic()
    k_rel, k_del, k_kept = prefix + "rel", prefix + "del", prefix + "kept"
    assert ns.put(k_rel, "value survives", acquire=rel) is True
    assert ns.put(k_del, "goes away", acquire=dele) is True
    assert ns.put(k_kept, "still held", acquire=kept) is True
    _, rel_before = ns.get(k_rel)

    sleep_until(created + 7)
    assert ns.session_renew(kept) is not None
    sleep_until(created + 11)  # past the TTL, well inside 2 x TTL
    assert ns.session_info(rel)[1] is not None, "expired before 2 x TTL"
    assert ns.session_info(dele)[1] is not None, "expired before 2 x TTL"
    assert ns.get(k_rel)[1].session == rel
    sleep_until(created + 14)
    assert ns.session_renew(kept) is not None

    def expired():
        return ns.session_info(rel)[1] is None and ns.session_info(dele)[1] is None

    wait_until(expired, max(1.0, created + 20 + 8 - time.monotonic()), "TTL sessions to expire by 2 x TTL",
               interval=0.2)
    detected = time.monotonic()
    _, e = ns.get(k_rel)
    assert e is not None and e.value == b"value survives"
    assert e.session is None
    assert e.modify_index > rel_before.modify_index
    assert e.lock_index == 1
    assert ns.get(k_del)[1] is None
    assert ns.session_renew(rel) is None
    # Renewed at +14 s: still alive now (about +20 s).
    assert ns.session_info(kept)[1] is not None
    assert ns.get(k_kept)[1].session == kept
    # Expiry is an invalidation like destroy: rel's 3 s lock-delay now guards k_rel.
    assert ns.put(k_rel, "taken", acquire=kept) is False
    wait_until(lambda: ns.put(k_rel, "taken", acquire=kept), 15, "the lock-delay after expiry to end")
    waited = time.monotonic() - detected
    assert 2.5 <= waited <= 3.0 + 6.0, f"re-acquired {waited:.2f}s after the expiry was seen"
