"""Leader election among kernel runtimes: a KV lock on `oneos/leader` held by a session.

The election session has the boot record's lock-delay, so when a leader dies, the lock
is released after its TTL lapses (at most 2×TTL) and nobody takes it during the
lock-delay: a leader that was only slow has time to notice it lost the lock before
another one starts acting.

Three threads change the election's state: its own (contending), the runtime's heartbeat
(`renew()` finds the session gone) and whoever calls `stop()`. The state (`session`,
`leading`) changes under a lock, and on_elected / on_deposed are called in the order of
the changes, one at a time, and never twice in a row the same.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Callable

from oneos import state
from oneos.documents import DocumentError
from oneos.nameserver.client import Entry, NameServer, NameServerError, NameServerUnreachable
from oneos.nameserver.watch import Watch
from oneos.service import Service

log = logging.getLogger("oneos.controller")

RETRY_S = 0.5    # after the lock was free but refused (the previous holder's lock-delay)
ERROR_RETRY_S = 1.0


class Election(Service):
    """Contends for the leader lock in a thread; calls on_elected / on_deposed as leadership changes."""

    def __init__(self, ns: NameServer, node_id: str, ttl: int, lock_delay: int,
                 on_elected: Callable[[], None] = lambda: None, on_deposed: Callable[[], None] = lambda: None) -> None:
        super().__init__(f"election {node_id}")
        self.ns = ns
        self.node_id = node_id
        self.ttl = ttl
        self.lock_delay = lock_delay
        self.on_elected = on_elected
        self.on_deposed = on_deposed
        self._client = ns.clone()   # the contending thread's own: stop() cuts off what it is doing
        self._watch = Watch.key(ns, state.LEADER, wait="10s")
        self._state = threading.Lock()          # guards _session and _leading
        self._transitions = threading.RLock()   # one change (and its callback) at a time, in order
        self._session: str | None = None
        self._leading = False

    @property
    def session(self) -> str | None:
        """The election's session (it holds the lock while `leading`); None when it has none."""
        with self._state:
            return self._session

    @property
    def leading(self) -> bool:
        with self._state:
            return self._leading

    def _doc(self) -> dict:
        return {"node": self.node_id, "host": socket.gethostname(), "pid": os.getpid(),
                "since": state.utcnow()}

    # -- the contending thread ---------------------------------------------

    def _launch(self) -> None:
        self.spawn(self._run, "contend")

    def _interrupt(self) -> None:
        self._watch.close()
        self._client.close()

    def _run(self) -> None:
        for _, entry in self._watch:
            try:
                self._contend(entry)
            except NameServerUnreachable:
                self._again_after(ERROR_RETRY_S)
            except NameServerError as exc:
                # Most often our session was invalidated under us (e.g. it expired): start over.
                if self.stopping.is_set():
                    return
                log.warning("election: %s; retrying", exc)
                self._forget(self.session)
                self._again_after(ERROR_RETRY_S)
            except DocumentError as exc:
                log.warning("election: %s", exc)
                self._again_after(ERROR_RETRY_S)

    def _again_after(self, seconds: float) -> None:
        self.stopping.wait(seconds)
        self._watch.again()

    def _contend(self, entry: Entry | None) -> None:
        """One look at the lock: take it when free, follow who holds it otherwise."""
        session = self.session or self._new_session()
        holder = entry.session if entry else None
        if holder is None:
            if state.put_document(self._client, state.LEADER, "leader", self._doc(), acquire=session):
                self._set_leading(True, session)
            else:
                self._again_after(RETRY_S)   # free but refused: the previous holder's lock-delay runs
        else:
            # Ours (also when the answer to our acquire was lost on the way), or someone else's.
            self._set_leading(holder == session, session)

    def _new_session(self) -> str:
        session = self._client.session_create(name=f"oneos-election {self.node_id}", ttl=self.ttl,
                                              behavior="release", lock_delay=self.lock_delay, checks=[])
        with self._state:
            self._session = session
        return session

    # -- state changes, under the lock, announced in order ---------------------

    def _set_leading(self, leading: bool, session: str) -> None:
        """Lead with `session`, or not, if it is still the election's session (and it is not stopping)."""
        with self._transitions:
            with self._state:
                if self._session != session or self._leading == leading or (leading and self.stopping.is_set()):
                    return
                self._leading = leading
            self._announce(leading)

    def _forget(self, session: str | None) -> None:
        """`session` is gone (expired, destroyed): no longer leading; contending makes a new one."""
        with self._transitions:
            with self._state:
                if session is None or self._session != session:
                    return
                was_leading = self._leading
                self._session, self._leading = None, False
            if was_leading:
                self._announce(False)

    def _announce(self, leading: bool) -> None:
        if leading:
            log.info("elected leader: this runtime now runs the controller")
            self.on_elected()
        else:
            log.info("no longer the leader")
            self.on_deposed()

    # -- from other threads ----------------------------------------------------

    def renew(self) -> None:
        """Keep the election session alive (called by the runtime's heartbeat); depose if it is gone."""
        session = self.session
        if session and self.ns.session_renew(session) is None:
            self._forget(session)

    def _release(self) -> None:
        """Stop leading, then release the lock at once by destroying the session."""
        session = self.session
        self._forget(session)
        if session:
            try:
                self.ns.session_destroy(session)
            except (NameServerUnreachable, NameServerError):
                pass
