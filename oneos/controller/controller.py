"""The controller: runs in the elected leader and reconciles whenever something changes.

Watches (blocking queries) only say *that* something changed under manifests/ or nodes/;
each wake-up runs one reconciliation pass over every pipeline, and a periodic pass
catches anything a watch missed. A deposed leader stops at once; one that has not heard
yet cannot write either, as every write checks that it still holds the lock.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from oneos import state
from oneos.controller.reconciler import NotLeader, reconcile_all
from oneos.nameserver.client import NameServer, NameServerError, NameServerUnreachable

log = logging.getLogger("oneos.controller")

RESYNC_S = 5.0


class Controller:
    """Reconciliation loop with its watches; start() when elected, stop() when deposed."""

    def __init__(self, ns: NameServer, leader_session: Callable[[], str | None] | None = None) -> None:
        """`leader_session` gives the session holding the leader lock: every write checks it still does.

        Without it (tools, tests) writes are not fenced."""
        self.ns = ns
        self.leader_session = leader_session
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start once; a controller that was stopped is not restarted (make a new one)."""
        self._dirty.set()
        self._threads = [threading.Thread(target=self._loop, name="controller", daemon=True)]
        for prefix in (state.MANIFESTS, state.NODES):
            self._threads.append(threading.Thread(target=self._watch, args=(prefix,), daemon=True,
                                                  name=f"watch {prefix}"))
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()

    def _watch(self, prefix: str) -> None:
        index = 0
        while not self._stop.is_set():
            try:
                new_index, _ = self.ns.keys(prefix, index=index, wait="30s")
            except (NameServerUnreachable, NameServerError):
                self._stop.wait(1.0)
                index = 0
                continue
            if new_index != index:
                self._dirty.set()
            # Indexes can go backwards (a restored server, reaped tombstones): start over then.
            index = new_index if new_index >= index else 0

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait(RESYNC_S)
            if self._stop.is_set():
                return
            self._dirty.clear()
            try:
                session = self.leader_session() if self.leader_session else None
                if self.leader_session and session is None:
                    raise NotLeader("the leader session is gone; stopping the controller")
                reconcile_all(self.ns, session)
            except NotLeader as exc:
                log.warning("%s", exc)
                return
            except (NameServerUnreachable, NameServerError) as exc:
                log.warning("reconcile: %s; trying again", exc)
                self._stop.wait(1.0)
                self._dirty.set()
            except Exception:  # noqa: BLE001 - a bug must not silently stop the controller
                log.exception("reconcile failed; trying again")
                self._stop.wait(1.0)
                self._dirty.set()
