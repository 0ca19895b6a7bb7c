"""Leader election among kernel runtimes: a KV lock on `oneos/leader` held by a session.

The election session has the boot record's lock-delay, so when a leader dies, the lock
is released after its TTL lapses (at most 2×TTL) and nobody takes it during the
lock-delay: a leader that was only slow has time to notice it lost the lock before
another one starts acting.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Callable

from oneos import state
from oneos.documents import DocumentError
from oneos.nameserver.client import NameServer, NameServerError, NameServerUnreachable

log = logging.getLogger("oneos.controller")

RETRY_S = 0.5


class Election:
    """Contends for the leader lock in a thread; calls on_elected / on_deposed as leadership changes."""

    def __init__(self, ns: NameServer, node_id: str, ttl: int, lock_delay: int,
                 on_elected: Callable[[], None] = lambda: None, on_deposed: Callable[[], None] = lambda: None) -> None:
        self.ns = ns
        self.node_id = node_id
        self.ttl = ttl
        self.lock_delay = lock_delay
        self.on_elected = on_elected
        self.on_deposed = on_deposed
        self.session: str | None = None
        self.leading = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="election", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _doc(self) -> dict:
        return {"node": self.node_id, "host": socket.gethostname(), "pid": os.getpid(),
                "since": state.utcnow()}

    def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            try:
                if self.session is None:
                    self.session = self.ns.session_create(name=f"oneos-election {self.node_id}", ttl=self.ttl,
                                                          behavior="release", lock_delay=self.lock_delay,
                                                          checks=[])
                index, entry = self.ns.get(state.LEADER, index=index, wait="10s")
                holder = entry.session if entry else None
                if holder is None:
                    if not self._stop.is_set() and state.put_document(self.ns, state.LEADER, "leader", self._doc(),
                                                                      acquire=self.session):
                        self._set_leading(True)
                    else:
                        # Free but refused: the previous holder's lock-delay is still running.
                        self._stop.wait(RETRY_S)
                    index = 0
                elif holder != self.session:
                    self._set_leading(False)
            except NameServerUnreachable:
                index = 0
                self._stop.wait(1.0)
            except NameServerError as exc:
                # Most often our session was invalidated under us (e.g. it expired): start over.
                log.warning("election: %s; retrying", exc)
                self.session, index = None, 0
                self._set_leading(False)
                self._stop.wait(1.0)
            except DocumentError as exc:
                log.warning("election: %s", exc)
                self._stop.wait(1.0)

    def _set_leading(self, leading: bool) -> None:
        if leading == self.leading:
            return
        self.leading = leading
        if leading:
            log.info("elected leader: this runtime now runs the controller")
            self.on_elected()
        else:
            log.info("no longer the leader")
            self.on_deposed()

    def renew(self) -> None:
        """Keep the election session alive (called by the runtime's heartbeat)."""
        session = self.session
        if session and self.ns.session_renew(session) is None and self.session == session:
            self.session = None
            self._set_leading(False)

    def stop(self) -> None:
        """Stop contending; a leader releases the lock at once by destroying its session."""
        self._stop.set()
        session, self.session = self.session, None
        if session:
            try:
                self.ns.session_destroy(session)
            except (NameServerUnreachable, NameServerError):
                pass
        self._set_leading(False)
