"""Session timing in the state store itself, with an injected clock: TTL expiry, renewals,
invalidation behaviours and lock-delay, without waiting for real time to pass.

The same semantics over HTTP in real time are checked once each in test_sessions.py
(test_ttl_expiry, test_lock_delay_after_invalidation); the references are listed there.
"""

from __future__ import annotations

import pytest

from oneos.nameserver.journal import Journal
from oneos.nameserver.store import Store

TTL = 10


class FakeClock:
    """A monotonic and a wall clock that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.wall = 1_800_000_000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock):
    """A store without a journal on the fake clock; closed afterwards (its timer thread stops)."""
    s = Store(None, "test-node", clock=clock.monotonic, wall=clock.time)
    yield s
    s.close()


def at(store: Store, clock: FakeClock, seconds: float) -> None:
    """Move the clock forward and run the store's timer pass, as its timer thread would then."""
    clock.advance(seconds)
    store.expire_sessions()


def alive(store: Store, sid: str) -> bool:
    return bool(store.session_info(sid)[1])


def session(store: Store, **body) -> str:
    return store.session_create({"TTL": f"{TTL}s", "LockDelay": "0s", **body})


def test_a_ttl_session_lives_past_its_ttl_and_ends_at_twice_the_ttl(store, clock):
    sid = session(store)
    at(store, clock, TTL + 0.5)
    assert alive(store, sid), "ended before its TTL ran out twice"
    at(store, clock, TTL - 1)                    # 2 x TTL - 0.5 s
    assert alive(store, sid)
    at(store, clock, 0.5)                        # 2 x TTL
    assert not alive(store, sid)
    assert store.session_renew(sid) is None


def test_a_renewal_restarts_the_full_timer(store, clock):
    sid = session(store)
    at(store, clock, 7)
    assert store.session_renew(sid) is not None
    at(store, clock, 2 * TTL - 1)                # 2 x TTL after creation, 2 x TTL - 1 s after the renewal
    assert alive(store, sid)
    at(store, clock, 1)
    assert not alive(store, sid)


def test_a_session_without_ttl_never_expires(store, clock):
    sid = store.session_create({"LockDelay": "0s"})
    at(store, clock, 10 * 86_400)
    assert alive(store, sid)


def test_expiry_releases_or_deletes_held_keys_per_behaviour(store, clock):
    rel = session(store, Behavior="release")
    dele = session(store, Behavior="delete")
    assert store.kv_lock("rel", b"value survives", 0, rel)
    assert store.kv_lock("del", b"goes away", 0, dele)
    store.kv_set("plain", b"untouched")
    _, before = store.kv_get("rel")
    _, plain_before = store.kv_get("plain")

    at(store, clock, 2 * TTL)
    _, released = store.kv_get("rel")
    assert (released.value, released.session, released.lock_index) == (b"value survives", "", 1)
    assert released.modify_index > before.modify_index
    assert released.create_index == before.create_index
    assert store.kv_get("del")[1] is None
    assert store.kv_get("plain")[1].modify_index == plain_before.modify_index


def test_expiry_starts_the_lock_delay_of_the_expired_session(store, clock):
    expiring = session(store, LockDelay="3s")
    other = store.session_create({"LockDelay": "0s"})
    assert store.kv_lock("k", b"held", 0, expiring)
    at(store, clock, 2 * TTL)
    assert not alive(store, expiring)

    assert not store.kv_lock("k", b"taken", 0, other), "locked inside the lock-delay"
    assert store.kv_set("k", b"plain writes are not delayed")
    at(store, clock, 2.9)
    assert not store.kv_lock("k", b"taken", 0, other)
    at(store, clock, 0.2)
    assert store.kv_lock("k", b"taken", 0, other)
    assert store.kv_get("k")[1].session == other


@pytest.mark.parametrize("behavior", ["release", "delete"])
def test_destroy_starts_the_lock_delay_whatever_the_behaviour(store, clock, behavior):
    holder = store.session_create({"Behavior": behavior, "LockDelay": "2s"})
    other = store.session_create({"LockDelay": "0s"})
    assert store.kv_lock("k", b"held", 0, holder)
    store.session_destroy(holder)
    assert (store.kv_get("k")[1] is None) == (behavior == "delete")
    assert not store.kv_lock("k", b"mine", 0, other)
    clock.advance(1.9)
    assert not store.kv_lock("k", b"mine", 0, other)
    clock.advance(0.2)
    assert store.kv_lock("k", b"mine", 0, other)


def test_an_explicit_release_starts_no_lock_delay(store, clock):
    a = store.session_create({"LockDelay": "15s"})
    b = store.session_create({"LockDelay": "15s"})
    assert store.kv_lock("k", b"a", 0, a)
    assert store.kv_unlock("k", b"a", 0, a)
    assert store.kv_lock("k", b"b", 0, b)


def test_a_session_without_held_keys_leaves_no_lock_delay_behind(store, clock):
    """The lock-delay guards the keys the session held, not every key it ever touched."""
    holder = session(store, LockDelay="5s")
    other = store.session_create({"LockDelay": "0s"})
    assert store.kv_lock("k", b"held", 0, holder)
    assert store.kv_unlock("k", b"held", 0, holder)
    at(store, clock, 2 * TTL)
    assert store.kv_lock("k", b"mine", 0, other)


def test_a_restored_store_gives_every_ttl_session_a_full_timer_and_keeps_lock_delays(tmp_path, clock):
    """As a newly elected Consul leader does (session_ttl.go initializeSessionTimers)."""
    first = Store(Journal(tmp_path / "data"), "test-node", clock=clock.monotonic, wall=clock.time)
    try:
        sid = first.session_create({"TTL": f"{TTL}s", "LockDelay": "0s"})
        gone = first.session_create({"TTL": f"{TTL}s", "LockDelay": "60s"})
        assert first.kv_lock("guarded", b"held", 0, gone)
        first.session_destroy(gone)
        clock.advance(2 * TTL - 1)               # one second before it would have ended
    finally:
        first.close()

    again = Store(Journal(tmp_path / "data"), "test-node", clock=clock.monotonic, wall=clock.time)
    try:
        at(again, clock, 2 * TTL - 1)
        assert alive(again, sid), "a restored session kept its old deadline"
        assert not again.kv_lock("guarded", b"mine", 0, sid), "the lock-delay was lost in the restart"
        at(again, clock, 1)
        assert not alive(again, sid)
        clock.advance(60 - 2 * (2 * TTL - 1) - 1)   # 60 s after the holder was destroyed
        other = again.session_create({"LockDelay": "0s"})
        assert again.kv_lock("guarded", b"mine", 0, other)
    finally:
        again.close()
