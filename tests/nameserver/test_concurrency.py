"""Many clients at once: CAS counters lose no update, a lock has one holder at a time.

References (hashicorp/consul): website/content/api-docs/kv.mdx (cas: "the key is only set if the
index matches the ModifyIndex of that key"; acquire: LockIndex increments on each acquisition);
agent/consul/state/kvs.go kvsSetCASTxn / kvsLockTxn run inside one write transaction each.
"""

from __future__ import annotations

import threading
import time

from oneos.nameserver.client import NameServer

THREADS = 8
INCREMENTS = 25


def test_cas_increments_lose_no_update(nameserver_url: str, prefix: str):
    key = prefix + "counter"
    NameServer(nameserver_url).put(key, "0")
    successes = [0] * THREADS
    conflicts = [0] * THREADS
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def worker(n: int) -> None:
        ns = NameServer(nameserver_url)
        try:
            start.wait(30)
            while successes[n] < INCREMENTS:
                _, entry = ns.get(key)
                value = int(entry.value) + 1
                if ns.put(key, str(value), cas=entry.modify_index):
                    successes[n] += 1
                else:
                    conflicts[n] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(THREADS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not errors, f"{len(errors)} workers failed, first: {errors[0]!r}"
    assert not any(t.is_alive() for t in threads), "workers still running"
    _, entry = NameServer(nameserver_url).get(key)
    assert int(entry.value) == sum(successes) == THREADS * INCREMENTS, (
        f"counter {int(entry.value)} after {sum(successes)} successful CAS writes "
        f"({sum(conflicts)} conflicts, {time.monotonic() - t0:.1f}s)")


def test_lock_has_one_holder_at_a_time(nameserver_url: str, prefix: str):
    key = prefix + "mutex"
    threads_n, rounds = 8, 5
    holders = 0
    max_holders = 0
    acquisitions = 0
    guard = threading.Lock()
    errors: list[BaseException] = []
    start = threading.Barrier(threads_n)
    sessions: list[str] = []

    def worker(n: int) -> None:
        nonlocal holders, max_holders, acquisitions
        ns = NameServer(nameserver_url)
        sid = ns.session_create(name=f"contender-{n}", lock_delay=0)
        with guard:
            sessions.append(sid)
        me = f"holder-{n}".encode()
        try:
            start.wait(30)
            done = 0
            deadline = time.monotonic() + 120
            while done < rounds and time.monotonic() < deadline:
                if not ns.put(key, me, acquire=sid):
                    time.sleep(0.002)
                    continue
                with guard:
                    holders += 1
                    acquisitions += 1
                    max_holders = max(max_holders, holders)
                _, entry = ns.get(key)
                assert entry.session == sid and entry.value == me, f"{n} holds the lock but sees {entry}"
                time.sleep(0.005)
                with guard:
                    holders -= 1
                assert ns.put(key, me, release=sid) is True
                done += 1
            assert done == rounds, f"contender {n} got the lock {done} times in 120 s"
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    ns = NameServer(nameserver_url)
    try:
        assert not errors, f"{len(errors)} contenders failed, first: {errors[0]!r}"
        assert max_holders == 1
        assert acquisitions == threads_n * rounds
        _, entry = ns.get(key)
        assert entry.session is None
        # Every successful acquisition of an unheld key increments LockIndex exactly once.
        assert entry.lock_index == threads_n * rounds
    finally:
        for sid in sessions:
            ns.session_destroy(sid)
