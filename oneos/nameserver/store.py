"""The state machine of the built-in Name Server: KV, sessions, locks, with Consul's semantics.

One lock guards all state, so every write is linearizable. Each write gets the next
index (as Consul's Raft index) and is computed against the latest state: what is durable
plus the writes still waiting for the disk (`_pending`). Waiting writes are made durable in
batches (group commit): a writer that finds no batch in flight writes to disk, as one synced
write, all that queued, while the next ones queue behind it; when it is done, it hands the next
batch to the first of them. Only then are the writes applied to the state reads see, the
blocking queries watching their keys woken, and their writers answered. When a batch
cannot be made durable, it and every write after it (computed against it) are refused, and
the state and its index stay as they were. Semantics follow Consul's state
store (agent/consul/state/kvs.go, session.go, txn.go); see shared/notes/consul-api.md.
"""

from __future__ import annotations

import base64
import bisect
import collections
import json
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Protocol

from oneos.durations import format_ns, parse_ns
from oneos.nameserver.journal import Journal, JournalWriteError

log = logging.getLogger("oneos.nameserver")

KV_MAX_VALUE_SIZE = 512 * 1024     # Consul's kv_max_value_size default: the largest value a key holds

SERF_CHECK = "serfHealth"
SESSION_TTL_MIN_NS = 10 * 1_000_000_000
SESSION_TTL_MAX_NS = 86_400 * 1_000_000_000
SESSION_TTL_MULTIPLIER = 2          # Consul lets a TTL session live up to 2x its TTL
DEFAULT_LOCK_DELAY_NS = 15 * 1_000_000_000
MAX_LOCK_DELAY_NS = 60 * 1_000_000_000
LOCK_DELAY_THRESHOLD = 1000         # smaller numbers are taken as seconds, as Consul does
TOMBSTONE_TTL_S = 15 * 60           # deleted keys keep prefix indexes monotonic this long
MAX_WAIT_S = 600.0
DEFAULT_WAIT_S = 300.0
DISK_RETRY_S = 1.0                  # after a failed write, session expiry tries the disk again this often


class StoreError(Exception):
    """A request the state store refuses; the HTTP layer answers it with `status`."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class Table(Protocol):
    """State kept beside KV and sessions (the ACL system's, oneos/nameserver/acl.py), made durable through
    the same journal under its own record key `kind`, so that every part of the state has one order."""

    kind: str

    def load(self, raw: Any) -> None:
        """Take the table's part of a snapshot."""

    def replay(self, payload: Any, index: int) -> None:
        """Apply one journal record's payload, written at `index`."""

    def dump(self) -> Any:
        """The table's part of a snapshot (JSON)."""


@dataclass
class KVEntry:
    key: str
    value: bytes | None
    flags: int = 0
    create_index: int = 0
    modify_index: int = 0
    lock_index: int = 0
    session: str = ""

    def api(self, with_value: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "LockIndex": self.lock_index,
            "Key": self.key,
            "Flags": self.flags,
            "Value": (base64.b64encode(self.value).decode("ascii")
                      if with_value and self.value is not None else None),
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }
        if self.session:
            out["Session"] = self.session
        return out

    def same_contents(self, other: "KVEntry") -> bool:
        return (self.value or b"") == (other.value or b"") and self.flags == other.flags and \
            self.session == other.session and self.lock_index == other.lock_index

    def dump(self) -> list[Any]:
        value = None if self.value is None else base64.b64encode(self.value).decode("ascii")
        return [self.key, value, self.flags, self.create_index, self.modify_index, self.lock_index, self.session]

    @classmethod
    def load(cls, raw: list[Any]) -> "KVEntry":
        key, value, flags, create, modify, lock_index, session = raw
        return cls(key, None if value is None else base64.b64decode(value), flags, create, modify,
                   lock_index, session)


@dataclass
class Session:
    id: str
    name: str
    node: str
    lock_delay_ns: int
    behavior: str
    ttl: str
    node_checks: list[str]
    create_index: int
    modify_index: int

    def api(self) -> dict[str, Any]:
        return {
            "ID": self.id, "Name": self.name, "Node": self.node, "LockDelay": self.lock_delay_ns,
            "Behavior": self.behavior, "TTL": self.ttl, "NodeChecks": list(self.node_checks),
            "ServiceChecks": None, "CreateIndex": self.create_index, "ModifyIndex": self.modify_index,
        }

    def dump(self) -> dict[str, Any]:
        return self.api()

    @classmethod
    def load(cls, raw: dict[str, Any]) -> "Session":
        return cls(raw["ID"], raw["Name"], raw["Node"], raw["LockDelay"], raw["Behavior"], raw["TTL"],
                   list(raw.get("NodeChecks") or []), raw["CreateIndex"], raw["ModifyIndex"])


class _SortedKeys:
    """Keys kept sorted so that a prefix is a contiguous range."""

    def __init__(self) -> None:
        self._keys: list[str] = []

    def add(self, key: str) -> None:
        i = bisect.bisect_left(self._keys, key)
        if i == len(self._keys) or self._keys[i] != key:
            self._keys.insert(i, key)

    def remove(self, key: str) -> None:
        i = bisect.bisect_left(self._keys, key)
        if i < len(self._keys) and self._keys[i] == key:
            del self._keys[i]

    def prefixed(self, prefix: str) -> Iterable[str]:
        i = bisect.bisect_left(self._keys, prefix)
        while i < len(self._keys) and self._keys[i].startswith(prefix):
            yield self._keys[i]
            i += 1


@dataclass(eq=False)
class _Watch:
    """A blocking query waiting for a change to one key, a prefix, or the sessions table."""

    key: str | None
    prefix: bool
    cond: threading.Condition

    def matches(self, changed_keys: set[str], sessions_changed: bool) -> bool:
        if self.key is None:
            return sessions_changed
        if self.prefix:
            return any(k.startswith(self.key) for k in changed_keys)
        return self.key in changed_keys


@dataclass
class _Txn:
    """Changes staged by one write; applied all at once, or not at all."""

    index: int
    sets: dict[str, KVEntry] = field(default_factory=dict)
    deletes: set[str] = field(default_factory=set)
    sessions_add: dict[str, Session] = field(default_factory=dict)
    sessions_del: set[str] = field(default_factory=set)
    lock_delays: dict[str, float] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)   # Table.kind -> its payload
    reaps: list[str] = field(default_factory=list)
    # Once submitted: its journal record, and its fate (done; error when refused; `settled` then set).
    record: dict[str, Any] | None = None
    line: bytes = b""
    done: bool = False
    error: str | None = None
    settled: threading.Event = field(default_factory=threading.Event)     # set once, when done
    wake: threading.Event = field(default_factory=threading.Event)        # its writer: done, or lead

    def settle(self, error: str | None = None) -> None:
        """Durable (no error) or refused: its writer, waiting on `settled`, is answered."""
        self.error = error
        self.done = True
        self.settled.set()
        self.wake.set()

    def rollback(self) -> None:
        """Forget everything staged: nothing is committed."""
        self.sets.clear()
        self.deletes.clear()
        self.sessions_add.clear()
        self.sessions_del.clear()
        self.lock_delays.clear()
        self.tables.clear()

    def empty(self) -> bool:
        return not (self.sets or self.deletes or self.sessions_add or self.sessions_del or self.tables)


class Store:
    """All state of the built-in Name Server, durable through a Journal."""

    def __init__(self, journal: Journal | None, node_name: str, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, tables: Iterable[Table] = ()) -> None:
        self.journal = journal
        self._tables = {t.kind: t for t in tables}
        self.node_name = node_name
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        # Index 1 is the store's creation, as a Consul cluster's Raft log begins with its
        # configuration: reads of an empty table report 1 (never 0), and the first write gets 2,
        # so a blocking query at the index a fresh store reported sees that write.
        self.index = 1
        self.kvs_index = 0
        self.sessions_index = 0
        self._kv: dict[str, KVEntry] = {}
        self._kv_keys = _SortedKeys()
        self._tombstones: dict[str, tuple[int, float]] = {}   # key -> (delete index, wall time)
        self._tomb_keys = _SortedKeys()
        self._sessions: dict[str, Session] = {}
        self._lock_delays: dict[str, float] = {}               # key -> wall-clock end of lock-delay
        self._expiry: dict[str, float] = {}                    # session id -> monotonic deadline
        self._watches: set[_Watch] = set()
        self._closed = False
        self._timer_cond = threading.Condition(self._lock)
        # Group commit: writes submitted but not yet durable, in index order (`_queue`: not yet
        # in a batch). The state above holds only durable writes.
        self._pending: collections.deque[_Txn] = collections.deque()
        self._queue: list[_Txn] = []
        self._flushing = False                                 # a batch is being written
        self._idle_cond = threading.Condition(self._lock)      # notified when a batch ends
        self._expiring: set[str] = set()                       # sessions whose expiry is being written
        self._disk_retry_at = 0.0
        self._disk_failing = False
        self._compactor: threading.Thread | None = None
        if journal is not None:
            self._restore()
        self._last_index = self.index                          # of the last write submitted
        self._timer = threading.Thread(target=self._run_timers, name="session-timers", daemon=True)
        self._timer.start()

    # -- durability -------------------------------------------------------

    def _restore(self) -> None:
        snapshot, records = self.journal.load()
        if snapshot:
            self.index = snapshot["index"]
            self.kvs_index = snapshot["kvs_index"]
            self.sessions_index = snapshot["sessions_index"]
            for raw in snapshot["kv"]:
                self._put_entry(KVEntry.load(raw))
            for key, idx, at in snapshot["tombstones"]:
                self._add_tombstone(key, idx, at)
            for raw in snapshot["sessions"]:
                s = Session.load(raw)
                self._sessions[s.id] = s
            self._lock_delays = dict(snapshot["lock_delays"])
            for kind, table in self._tables.items():
                if kind in snapshot:
                    table.load(snapshot[kind])
        for record in records:
            self._replay(record)
        now = self._clock()
        # As a newly elected Consul leader does, every TTL session gets a full timer again.
        for s in self._sessions.values():
            if s.ttl:
                self._expiry[s.id] = now + SESSION_TTL_MULTIPLIER * parse_ns(s.ttl) / 1e9
        wall = self._wall()
        self._lock_delays = {k: t for k, t in self._lock_delays.items() if t > wall}
        self.journal.open_for_append()

    def _replay(self, r: dict[str, Any]) -> None:
        idx = r["i"]
        for raw in r.get("kv", ()):
            e = KVEntry.load(raw)
            self._put_entry(e)
            self._drop_tombstone(e.key)
        for key in r.get("del", ()):
            self._del_entry(key)
            self._add_tombstone(key, idx, r["t"])
        for key in r.get("reap", ()):
            self._drop_tombstone(key)
        for raw in r.get("s+", ()):
            s = Session.load(raw)
            self._sessions[s.id] = s
        for sid in r.get("s-", ()):
            self._sessions.pop(sid, None)
        self._lock_delays.update(r.get("ld", {}))
        for kind, table in self._tables.items():
            if kind in r:
                table.replay(r[kind], idx)
        if r.get("kv") or r.get("del"):
            self.kvs_index = idx
        if r.get("s+") or r.get("s-"):
            self.sessions_index = idx
        self.index = max(self.index, idx)

    def close(self) -> None:
        """Stop: writes already submitted are made durable (or refused) first."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._timer_cond.notify_all()
            for w in self._watches:
                w.cond.notify_all()
        with self._lock:
            while self._flushing or self._queue:     # writes submitted are answered first
                if self._flushing:
                    self._idle_cond.wait()
                else:
                    self._flush()
        for thread in (self._compactor, self._timer):
            if thread is not None and thread is not threading.current_thread():
                thread.join(30)
        if self.journal:
            self.journal.close()

    # -- group commit -----------------------------------------------------

    def _submit(self, txn: _Txn) -> None:
        """Queue a staged write for the journal (under the lock); without one, apply it now."""
        record: dict[str, Any] = {"i": txn.index, "t": self._wall()}
        if txn.sets:
            record["kv"] = [e.dump() for e in txn.sets.values()]
        if txn.deletes:
            record["del"] = sorted(txn.deletes)
        if txn.sessions_add:
            record["s+"] = [s.dump() for s in txn.sessions_add.values()]
        if txn.sessions_del:
            record["s-"] = sorted(txn.sessions_del)
        if txn.lock_delays:
            record["ld"] = txn.lock_delays
        if txn.reaps:
            record["reap"] = txn.reaps
        record.update(txn.tables)
        txn.record = record
        self._last_index = txn.index
        if self.journal is None:
            self._apply(txn)
            return
        txn.line = json.dumps(record, separators=(",", ":")).encode("utf-8") + b"\n"
        self._pending.append(txn)
        self._queue.append(txn)

    def _wait(self, txn: _Txn) -> None:
        """Called without the lock by the writer of `txn`: wait until it is durable, writing its
        batch if no one else is; StoreError 500 if it was refused."""
        while not txn.done:
            txn.wake.clear()
            with self._lock:
                if txn.done:
                    break
                if not self._flushing:       # then `txn` is queued: write it, and all queued with it
                    self._flush()
                    continue
            txn.wake.wait()
        if txn.error is not None:
            raise StoreError(txn.error, 500)

    def _apply(self, txn: _Txn) -> None:
        """A durable write becomes visible: to reads, blocking queries and session timers."""
        self._replay(txn.record)
        txn.settle()
        for sid in txn.sessions_del:
            self._expiry.pop(sid, None)
            self._expiring.discard(sid)
        for s in txn.sessions_add.values():
            if s.ttl:
                self._reset_timer(s)
        changed = set(txn.sets) | txn.deletes
        sessions_changed = bool(txn.sessions_add or txn.sessions_del)
        for w in self._watches:
            if w.matches(changed, sessions_changed):
                w.cond.notify_all()

    def _flush(self) -> None:
        """Write what is queued with one synced write, the lock released meanwhile; then
        apply it (or refuse it), and wake the writer of the next queued write to write the next batch."""
        batch, self._queue = self._queue, []
        self._flushing = True
        error = None
        self._lock.release()
        try:
            self.journal.append_batch(t.line for t in batch)
        except JournalWriteError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a bug must refuse the writes, not leave them waiting
            log.exception("internal error writing the journal")
            error = f"internal error writing the journal: {exc}"
        finally:
            self._lock.acquire()
        try:
            self._resolve(batch, error)
        except Exception:  # noqa: BLE001 - as above
            log.exception("internal error applying a durable batch")
            self._refuse_pending("internal error applying the write; see the Name Server's log")
        finally:
            self._flushing = False
            if self._queue:
                self._queue[0].wake.set()
            self._idle_cond.notify_all()

    def _resolve(self, batch: list[_Txn], error: str | None) -> None:
        if error is not None:
            if not self._disk_failing:
                log.error("%s (writes are refused until the journal can be written again)", error)
            self._disk_failing = True
            self._refuse_pending(error)
            return
        if self._disk_failing:
            log.warning("the journal in %s can be written again: writes are accepted", self.journal.dir)
            self._disk_failing = False
        for txn in batch:
            self._pending.popleft()
            self._apply(txn)
        if self._compactor is None and not self._closed and self.journal.wants_compaction():
            self._start_compaction()

    def _refuse_pending(self, error: str) -> None:
        """Refuse every write not yet durable: each later one was computed against the failed ones."""
        for txn in self._pending:
            txn.settle(error)
        self._pending.clear()
        self._queue.clear()
        self._last_index = self.index
        self._expiring.clear()
        self._disk_retry_at = self._clock() + DISK_RETRY_S
        self._timer_cond.notify_all()

    # -- compaction -------------------------------------------------------

    def _start_compaction(self) -> None:
        """Rotate the log and write the state as of its last record, in a thread of its own.

        Called at the end of a batch, before the next one can start: the state is exactly what the
        rotated log holds. Copying the tables' references takes milliseconds under the lock
        (entries are never changed in place); the rest is done without it."""
        index = self.index
        head = {"index": index, "kvs_index": self.kvs_index, "sessions_index": self.sessions_index,
                "lock_delays": dict(self._lock_delays)}
        # The other tables (ACLs) are small: a copy of each, as of this index, goes in the head.
        head.update({kind: json.loads(json.dumps(table.dump())) for kind, table in self._tables.items()})
        parts = {"kv": (list(self._kv.values()), KVEntry.dump),
                 "tombstones": (list(self._tombstones.items()), lambda kv: [kv[0], kv[1][0], kv[1][1]]),
                 "sessions": (list(self._sessions.values()), Session.dump)}
        self._lock.release()       # still _flushing: no batch is written meanwhile
        try:
            self.journal.rotate(index)
        except (OSError, JournalWriteError) as exc:
            log.warning("cannot start a compaction of %s: %s; tried again later", self.journal.dir, exc)
            self.journal.postpone_compaction()
            return
        finally:
            self._lock.acquire()
        self._compactor = threading.Thread(target=self._compact, args=(index, head, parts),
                                           name="journal-compaction", daemon=True)
        self._compactor.start()

    def _compact(self, index: int, head: dict[str, Any], parts: dict[str, Any]) -> None:
        try:
            self.journal.write_snapshot(index, head, parts, stop=lambda: self._closed)
        except Exception:  # noqa: BLE001 - the logs are kept: nothing is lost, compaction is tried again
            log.exception("internal error compacting the journal")
            self.journal.postpone_compaction()
        finally:
            with self._lock:
                self._compactor = None

    # -- low-level state --------------------------------------------------

    def _put_entry(self, e: KVEntry) -> None:
        if e.key not in self._kv:
            self._kv_keys.add(e.key)
        self._kv[e.key] = e

    def _del_entry(self, key: str) -> None:
        if self._kv.pop(key, None) is not None:
            self._kv_keys.remove(key)

    def _add_tombstone(self, key: str, idx: int, at: float) -> None:
        if key not in self._tombstones:
            self._tomb_keys.add(key)
        self._tombstones[key] = (idx, at)

    def _drop_tombstone(self, key: str) -> None:
        if self._tombstones.pop(key, None) is not None:
            self._tomb_keys.remove(key)

    # -- writes -----------------------------------------------------------

    def _write(self, fn: Callable[[_Txn], Any]) -> Any:
        """Run `fn` against a staged transaction, submit what it staged, and answer once it is durable."""
        while True:
            with self._lock:
                if self._closed:
                    raise StoreError("the Name Server is shutting down", 503)
                txn = _Txn(self._last_index + 1)
                result = fn(txn)
                if not txn.empty():
                    self._submit(txn)
                    if not self._flushing and self.journal is not None:
                        self._flush()       # no batch in flight: write this one now, without a hand-off
                    mine = True
                elif not self._pending:
                    return result
                else:
                    # Nothing to write, but the answer read writes not yet durable (a failed cas, a
                    # txn's gets): it stands once they are, and is computed again if they are refused.
                    txn, mine = self._pending[-1], False
            if mine:
                self._wait(txn)         # raises if it was refused
                return result
            txn.settled.wait()          # its writer writes it
            if txn.error is None:
                return result

    # The latest state, as writes see it: the durable state and the writes waiting for the disk.

    def _latest_get(self, key: str) -> KVEntry | None:
        for t in reversed(self._pending):
            if key in t.sets:
                return t.sets[key]
            if key in t.deletes:
                return None
        return self._kv.get(key)

    def _latest_session(self, sid: str) -> Session | None:
        for t in reversed(self._pending):
            if sid in t.sessions_add:
                return t.sessions_add[sid]
            if sid in t.sessions_del:
                return None
        return self._sessions.get(sid)

    def _latest_lock_delay(self, key: str) -> float:
        for t in reversed(self._pending):
            if key in t.lock_delays:
                return t.lock_delays[key]
        return self._lock_delays.get(key, 0.0)

    def table_write(self, kind: str, change: Callable[[int], tuple[Any, Any]]) -> Any:
        """Write to a Table as one journaled change at the next index: `change(index)` checks against
        the table's current state (under the store's lock) and returns (payload or None, result)."""
        def run(t: _Txn) -> Any:
            payload, result = change(t.index)
            if payload is not None:
                t.tables[kind] = payload
            return result
        return self._write(run)

    # Staged reads: what the current transaction sees, its own writes included.

    def _t_get(self, txn: _Txn, key: str) -> KVEntry | None:
        if key in txn.sets:
            return txn.sets[key]
        if key in txn.deletes:
            return None
        return self._latest_get(key)

    def _t_list(self, txn: _Txn, prefix: str) -> list[KVEntry]:
        keys = set(self._kv_keys.prefixed(prefix))
        for t in [*self._pending, txn]:
            keys.update(k for k in t.sets if k.startswith(prefix))
        return [e for k in sorted(keys) if (e := self._t_get(txn, k)) is not None]

    def _t_set(self, txn: _Txn, entry: KVEntry, update_session: bool) -> KVEntry:
        """Consul's kvsSetTxn: keeps CreateIndex (and the lock holder unless told otherwise)."""
        existing = self._t_get(txn, entry.key)
        entry.create_index = existing.create_index if existing else txn.index
        if not update_session:
            entry.session = existing.session if existing else ""
        if existing is not None and existing.same_contents(entry):
            entry.modify_index = existing.modify_index
            return entry
        entry.modify_index = txn.index
        txn.sets[entry.key] = entry
        txn.deletes.discard(entry.key)
        return entry

    def _t_delete(self, txn: _Txn, key: str) -> None:
        if self._t_get(txn, key) is not None:
            txn.sets.pop(key, None)
            if self._latest_get(key) is not None:
                txn.deletes.add(key)

    def _t_cas(self, txn: _Txn, entry: KVEntry, cas: int) -> bool:
        existing = self._t_get(txn, entry.key)
        if cas == 0 and existing is not None:
            return False
        if cas != 0 and (existing is None or existing.modify_index != cas):
            return False
        self._t_set(txn, entry, False)
        return True

    def _t_lock(self, txn: _Txn, entry: KVEntry) -> bool:
        if not entry.session:
            raise StoreError("missing session")
        if self._latest_session(entry.session) is None and entry.session not in txn.sessions_add:
            raise StoreError(f'invalid session "{entry.session}"')
        existing = self._t_get(txn, entry.key)
        if existing is not None and existing.session == entry.session:
            entry.lock_index = existing.lock_index
        elif existing is not None and existing.session:
            return False
        else:
            # A key whose holder was invalidated stays unlockable until its lock-delay ends.
            until = self._latest_lock_delay(entry.key)
            if until > self._wall():
                return False
            entry.lock_index = (existing.lock_index if existing else 0) + 1
        self._t_set(txn, entry, True)
        return True

    def _t_unlock(self, txn: _Txn, entry: KVEntry) -> bool:
        if not entry.session:
            raise StoreError("missing session")
        existing = self._t_get(txn, entry.key)
        if existing is None or existing.session != entry.session:
            return False
        entry.session = ""
        entry.lock_index = existing.lock_index
        self._t_set(txn, entry, True)
        return True

    # -- KV API -----------------------------------------------------------

    def kv_set(self, key: str, value: bytes | None, flags: int = 0) -> bool:
        def run(t: _Txn) -> bool:
            self._t_set(t, KVEntry(key, value, flags), False)
            return True
        return self._write(run)

    def kv_cas(self, key: str, value: bytes | None, flags: int, cas: int) -> bool:
        return self._write(lambda t: self._t_cas(t, KVEntry(key, value, flags), cas))

    def kv_lock(self, key: str, value: bytes | None, flags: int, session: str) -> bool:
        return self._write(lambda t: self._t_lock(t, KVEntry(key, value, flags, session=session)))

    def kv_unlock(self, key: str, value: bytes | None, flags: int, session: str) -> bool:
        return self._write(lambda t: self._t_unlock(t, KVEntry(key, value, flags, session=session)))

    def kv_delete(self, key: str) -> bool:
        def run(t: _Txn) -> bool:
            self._t_delete(t, key)
            return True
        return self._write(run)

    def kv_delete_cas(self, key: str, cas: int) -> bool:
        def run(t: _Txn) -> bool:
            e = self._t_get(t, key)
            if e is None:
                return True
            if e.modify_index != cas:
                return False
            self._t_delete(t, key)
            return True
        return self._write(run)

    def kv_delete_tree(self, prefix: str) -> bool:
        def run(t: _Txn) -> bool:
            for e in self._t_list(t, prefix):
                self._t_delete(t, e.key)
            return True
        return self._write(run)

    # Reads answer (index, result) as Consul's KVS.Get / KVS.List / KVS.ListKeys do.

    def _table_index(self) -> int:
        return max(self.kvs_index, 1)

    def _get(self, key: str) -> tuple[int, KVEntry | None]:
        e = self._kv.get(key)
        return (e.modify_index, replace(e)) if e else (self._table_index(), None)

    def _list(self, prefix: str) -> tuple[int, list[KVEntry]]:
        entries = [replace(self._kv[k]) for k in self._kv_keys.prefixed(prefix)]
        if prefix:
            lindex = max((e.modify_index for e in entries), default=0)
            lindex = max([lindex] + [self._tombstones[k][0] for k in self._tomb_keys.prefixed(prefix)])
        else:
            lindex = self.kvs_index
        return (lindex or self._table_index()), entries

    def _keys(self, prefix: str, separator: str) -> tuple[int, list[str]]:
        idx, entries = self._list(prefix)
        return idx, collapse_keys([e.key for e in entries], prefix, separator)

    def kv_get(self, key: str, min_index: int = 0, wait: float | None = None) -> tuple[int, KVEntry | None]:
        return self._blocking(key, False, min_index, wait, lambda: self._get(key))

    def kv_list(self, prefix: str, min_index: int = 0, wait: float | None = None) -> tuple[int, list[KVEntry]]:
        return self._blocking(prefix, True, min_index, wait, lambda: self._list(prefix))

    def kv_keys(self, prefix: str, separator: str = "", min_index: int = 0,
                wait: float | None = None) -> tuple[int, list[str]]:
        return self._blocking(prefix, True, min_index, wait, lambda: self._keys(prefix, separator))

    # -- blocking queries -------------------------------------------------

    def _blocking(self, key: str | None, prefix: bool, min_index: int, wait: float | None,
                  query: Callable[[], tuple[int, Any]]) -> tuple[int, Any]:
        """Answer at once without an index; else wait while the answer's index is <= min_index."""
        with self._lock:
            result = query()
            if not min_index or result[0] > min_index:
                return result
            wait = DEFAULT_WAIT_S if wait is None else min(wait, MAX_WAIT_S)
            wait += random.uniform(0, wait / 16)        # Consul's jitter, so waiters do not stampede
            deadline = self._clock() + wait
            watch = _Watch(key, prefix, threading.Condition(self._lock))
            self._watches.add(watch)
            try:
                while not self._closed:
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        break
                    watch.cond.wait(remaining)
                    result = query()
                    if result[0] > min_index:
                        return result
                if self._closed:
                    raise StoreError("the Name Server is shutting down", 503)
                return query()
            finally:
                self._watches.discard(watch)

    # -- sessions ---------------------------------------------------------

    def session_create(self, body: dict[str, Any]) -> str:
        """Create a session from a (case-insensitive) JSON body as Consul's /v1/session/create takes it."""
        fields = {k.lower(): v for k, v in (body or {}).items()}
        node = fields.get("node") or self.node_name
        if node != self.node_name:
            raise StoreError("Missing node registration")
        behavior = fields.get("behavior") or "release"
        if behavior not in ("release", "delete"):
            raise StoreError(f"Invalid Behavior setting '{behavior}'")
        ttl = fields.get("ttl") or ""
        if ttl:
            try:
                ttl_ns = parse_ns(str(ttl))
            except ValueError as exc:
                raise StoreError(f"Session TTL '{str(ttl)[:64]}' invalid: {exc}", 400) from None
            if ttl_ns != 0 and not SESSION_TTL_MIN_NS <= ttl_ns <= SESSION_TTL_MAX_NS:
                raise StoreError(f"Invalid Session TTL '{ttl_ns}', must be between "
                                 f"[{format_ns(SESSION_TTL_MIN_NS)}={format_ns(SESSION_TTL_MAX_NS)}]")
            ttl = "" if ttl_ns == 0 else str(ttl)
        lock_delay = _lock_delay_ns(fields.get("lockdelay", DEFAULT_LOCK_DELAY_NS))
        checks = [SERF_CHECK]
        for name in ("checks", "nodechecks"):
            if name in fields:
                checks = list(fields[name] or [])
        for check in checks:
            if check != SERF_CHECK:
                raise StoreError(f"Missing check '{check}' registration")
        if fields.get("servicechecks"):
            raise StoreError(f"Missing check '{fields['servicechecks'][0]}' registration")
        name = fields.get("name") or ""

        def run(t: _Txn) -> str:
            sid = str(uuid.uuid4())
            t.sessions_add[sid] = Session(sid, str(name), node, lock_delay, behavior, ttl, checks,
                                          t.index, t.index)
            return sid

        return self._write(run)

    def _reset_timer(self, s: Session) -> None:
        self._expiry[s.id] = self._clock() + SESSION_TTL_MULTIPLIER * parse_ns(s.ttl) / 1e9
        self._timer_cond.notify_all()

    def session_renew(self, sid: str) -> Session | None:
        with self._lock:
            s = self._sessions.get(sid)
            if s is None:
                return None
            if s.ttl:
                self._reset_timer(s)
            return replace(s)

    def session_destroy(self, sid: str) -> None:
        self._write(lambda t: self._t_invalidate(t, sid))

    def _t_invalidate(self, txn: _Txn, sid: str) -> None:
        """Consul's deleteSessionTxn: release or delete held keys, and start their lock-delay."""
        s = self._latest_session(sid)
        if s is None or sid in txn.sessions_del:
            return
        txn.sessions_del.add(sid)
        delay_end = self._wall() + s.lock_delay_ns / 1e9
        for key in self._held_by(txn, sid):
            held = self._t_get(txn, key)
            if s.lock_delay_ns > 0:
                txn.lock_delays[key] = delay_end
            if s.behavior == "delete":
                self._t_delete(txn, key)
            else:
                released = replace(held, session="")
                released.modify_index = txn.index
                txn.sets[key] = released

    def _held_by(self, txn: _Txn, sid: str) -> list[str]:
        keys = {k for k, e in self._kv.items() if e.session == sid}
        for t in [*self._pending, txn]:
            keys.update(k for k, e in t.sets.items() if e.session == sid)
        return [k for k in sorted(keys) if (e := self._t_get(txn, k)) is not None and e.session == sid]

    def session_info(self, sid: str, min_index: int = 0, wait: float | None = None) -> tuple[int, list[dict]]:
        def query() -> tuple[int, list[dict]]:
            s = self._sessions.get(sid)
            return max(self.sessions_index, 1), ([s.api()] if s else [])
        return self._blocking(None, False, min_index, wait, query)

    def session_list(self, node: str | None = None, min_index: int = 0,
                     wait: float | None = None) -> tuple[int, list[dict]]:
        def query() -> tuple[int, list[dict]]:
            found = [s.api() for s in sorted(self._sessions.values(), key=lambda s: s.create_index)
                     if node is None or s.node == node]
            return max(self.sessions_index, 1), found
        return self._blocking(None, False, min_index, wait, query)

    def expire_sessions(self) -> None:
        """Invalidate the TTL sessions whose timer has run out by the store's clock.

        The timer thread runs the same pass; a test that moves an injected clock calls this one,
        which also waits for the invalidation to be durable.
        """
        with self._lock:
            txn = self._expire(self._clock())
        if txn is not None:
            self._wait(txn)

    def _expire(self, now: float) -> _Txn | None:
        """Submit the invalidation of expired sessions; their timers go when it is durable,
        and if it is refused they stay due, so expiry resumes when the disk does."""
        expired = [sid for sid, deadline in self._expiry.items()
                   if deadline <= now and sid not in self._expiring]
        if not expired:
            return None
        txn = _Txn(self._last_index + 1)
        for sid in expired:
            if sid not in self._sessions:
                self._expiry.pop(sid, None)
            else:
                self._t_invalidate(txn, sid)
                self._expiring.add(sid)    # until its deletion is durable (or refused)
        if txn.empty():
            return None
        self._submit(txn)
        return txn

    def _run_timers(self) -> None:
        """Invalidate TTL sessions whose timer ran out, and reap old tombstones; any error is logged
        in one line and the pass is tried again (after DISK_RETRY_S when the disk refused it)."""
        next_reap = self._clock() + 60
        while True:
            submitted: list[_Txn] = []
            with self._lock:
                if self._closed:
                    return
                now = self._clock()
                try:
                    if now >= self._disk_retry_at:
                        submitted.append(self._expire(now))
                        if now >= next_reap:
                            submitted.append(self._reap_tombstones())
                            next_reap = now + 60
                except Exception as exc:  # noqa: BLE001 - this thread must outlive any error
                    log.error("session timers: %s; trying again in %.0fs", exc, DISK_RETRY_S)
                    self._disk_retry_at = now + DISK_RETRY_S
                submitted = [t for t in submitted if t is not None]
                if not submitted:
                    due = [d for sid, d in self._expiry.items() if sid not in self._expiring]
                    wake = max(min(due + [next_reap]), self._disk_retry_at)
                    self._timer_cond.wait(max(0.01, wake - self._clock()))
            for txn in submitted:
                try:
                    self._wait(txn)
                except StoreError:
                    pass        # refused: logged once by the store; its sessions stay due

    def _reap_tombstones(self) -> _Txn | None:
        wall = self._wall()
        self._lock_delays = {k: t for k, t in self._lock_delays.items() if t > wall}
        cutoff = wall - TOMBSTONE_TTL_S
        touched = {k for t in self._pending for k in (*t.sets, *t.deletes)}
        old = [k for k, (_, at) in self._tombstones.items() if at < cutoff and k not in touched]
        if not old:
            return None
        # No new index: reaping changes what no read reports.
        txn = _Txn(self._last_index, reaps=old)
        self._submit(txn)
        return txn

    # -- transactions -----------------------------------------------------

    def txn(self, ops: list[dict[str, Any]]) -> tuple[list[dict] | None, list[dict] | None]:
        """Consul's /v1/txn for KV ops: (results, None) when applied, (None, errors) when rolled back."""
        def run(t: _Txn) -> tuple[list[dict] | None, list[dict] | None]:
            results: list[dict] = []
            errors: list[dict] = []
            for i, op in enumerate(ops):
                try:
                    results.extend(self._t_kv_op(t, op))
                except StoreError as exc:
                    errors.append({"OpIndex": i, "What": str(exc)})
            if errors:
                t.rollback()
                return None, errors
            return results, None
        return self._write(run)

    def _t_kv_op(self, t: _Txn, op: dict[str, Any]) -> list[dict]:
        verb = op["verb"]
        key = op["key"]
        entry = KVEntry(key, op["value"], op["flags"], session=op["session"])
        index = op["index"]
        written: KVEntry | None = None
        if verb == "set":
            written = self._t_set(t, entry, False)
        elif verb == "cas":
            if not self._t_cas(t, entry, index):
                raise StoreError(f'failed to set key "{key}", index is stale')
            written = self._t_get(t, key)
        elif verb == "lock":
            if not self._t_lock(t, entry):
                raise StoreError(f'failed to lock key "{key}", lock is already held')
            written = self._t_get(t, key)
        elif verb == "unlock":
            if not self._t_unlock(t, entry):
                raise StoreError(f'failed to unlock key "{key}", lock isn\'t held, or is held by another session')
            written = self._t_get(t, key)
        elif verb == "get":
            found = self._t_get(t, key)
            if found is None:
                raise StoreError(f'key "{key}" doesn\'t exist')
            return [{"KV": found.api()}]
        elif verb == "get-tree":
            return [{"KV": e.api()} for e in self._t_list(t, key)]
        elif verb == "check-index":
            found = self._t_get(t, key)
            if found is None:
                raise StoreError(f'failed to check index, key "{key}" doesn\'t exist')
            if found.modify_index != index:
                raise StoreError(f'failed index check for key "{key}", current modify index '
                                 f'{found.modify_index} != {index}')
            written = found
        elif verb == "check-session":
            found = self._t_get(t, key)
            if found is None:
                raise StoreError(f'failed to check session, key "{key}" doesn\'t exist')
            if found.session != entry.session:
                raise StoreError(f'failed session check for key "{key}", current session '
                                 f'"{found.session}" != "{entry.session}"')
            written = found
        elif verb == "check-not-exists":
            if self._t_get(t, key) is not None:
                raise StoreError(f'key "{key}" exists')
        elif verb == "delete":
            self._t_delete(t, key)
        elif verb == "delete-tree":
            for e in self._t_list(t, key):
                self._t_delete(t, e.key)
        elif verb == "delete-cas":
            found = self._t_get(t, key)
            if found is not None:
                if found.modify_index != index:
                    raise StoreError(f'failed to delete key "{key}", index is stale')
                self._t_delete(t, key)
        else:
            raise StoreError(f'unknown KV verb "{verb}"')
        return [{"KV": written.api(with_value=False)}] if written is not None else []


def collapse_keys(keys: Iterable[str], prefix: str, separator: str) -> list[str]:
    """Consul's ListKeys: sorted keys under `prefix`, each cut after the first `separator` past it, once."""
    out: list[str] = []
    for key in keys:
        if separator:
            cut = key.find(separator, len(prefix))
            if cut != -1:
                key = key[:cut + len(separator)]
        if not out or out[-1] != key:
            out.append(key)
    return out


def _lock_delay_ns(raw: Any) -> int:
    """Consul's FixupLockDelay: a duration string or nanoseconds; under 1000 means seconds."""
    if isinstance(raw, str):
        try:
            ns = parse_ns(raw)
        except ValueError as exc:
            raise StoreError(f"Request decode failed: {exc}", 400) from None
    elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
        ns = int(raw)
    else:
        raise StoreError(f"Request decode failed: LockDelay {raw!r} is not a duration", 400)
    if ns < LOCK_DELAY_THRESHOLD:
        ns *= 1_000_000_000
    return max(0, min(ns, MAX_LOCK_DELAY_NS))
