"""The controller: runs in the elected leader and reconciles whenever something changes.

Watches (blocking queries) only say *that* something changed under manifests/, nodes/ or keys/;
each wake-up runs one reconciliation pass over every pipeline, and a periodic pass
catches anything a watch missed. A deposed leader stops at once; one that has not heard
yet cannot write either, as every write checks that it still holds the lock. On a timer
of its own, the janitor (janitor.py) deletes what deleted pipelines leave behind; and the enroller
(enroller.py) lets in the runtimes that ask to join with a valid join token.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from oneos import state
from oneos.bus.admin import PulsarAdmin
from oneos.controller.enroller import Enroller
from oneos.controller.janitor import Janitor
from oneos.controller.reconciler import NotLeader, UntrustedLeader, Writes, reconcile_all
from oneos.identity import Identity
from oneos.nameserver.client import NameServer, NameServerError, NameServerUnreachable
from oneos.nameserver.watch import Watch
from oneos.service import Service

log = logging.getLogger("oneos.controller")

RESYNC_S = 5.0


class Controller(Service):
    """Reconciliation loop with its watches; start() when elected, stop() when deposed."""

    def __init__(self, ns: NameServer, leader_session: Callable[[], str | None] | None = None,
                 pulsar_admin: Callable[[str], PulsarAdmin] = PulsarAdmin,
                 signer: tuple[str, Identity] | None = None) -> None:
        """`leader_session` gives the session holding the leader lock: every write checks it still does.
        `pulsar_admin` opens the Pulsar admin client of a URL (with the node's token, if it has one).
        `signer`, the leader's node id and identity: they sign every assignment.

        Without them (tools, tests) writes are not fenced, and assignments are unsigned (nodes refuse them)."""
        super().__init__("controller")
        self.signer = signer
        self._untrusted: dict[str, str] = {}    # node id -> why, as last said (once per node, not per pass)
        self._distrusted: str | None = None     # why this leader writes nothing, as last said
        # A client of its own: stop() cuts off a pass under way instead of waiting for it.
        self.ns = ns.clone()
        self.leader_session = leader_session
        self._dirty = threading.Event()
        self._watches = [Watch.keys(ns, prefix) for prefix in (state.MANIFESTS, state.NODES, state.KEYS)]
        # The janitor's rounds have a client of their own too (one client per thread).
        self._janitor_ns = ns.clone()
        self.janitor = Janitor(self._janitor_ns, lambda: Writes(self._janitor_ns, self._session()),
                               admin=pulsar_admin)
        self.enroller = Enroller(ns)

    def _session(self) -> str | None:
        """The leader session every write checks (None without one); NotLeader once it is gone."""
        session = self.leader_session() if self.leader_session else None
        if self.leader_session and session is None:
            raise NotLeader("the leader session is gone; stopping the controller")
        return session

    def _launch(self) -> None:
        self._dirty.set()
        self.spawn(self._loop, "reconcile")
        self.spawn(self._sweep, "janitor")
        for watch in self._watches:
            self.spawn(lambda watch=watch: self._follow(watch), f"watch {watch.what}")
        self.enroller.start()

    def _interrupt(self) -> None:
        self._dirty.set()
        for watch in self._watches:
            watch.close()
        self.ns.close()
        self._janitor_ns.close()

    def _release(self) -> None:
        self.enroller.stop()
        self.janitor.close()

    def _follow(self, watch: Watch) -> None:
        for _ in watch:
            self._dirty.set()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self._dirty.wait(RESYNC_S)
            if self.stopping.is_set():
                return
            self._dirty.clear()
            done = self._attempt(self._reconcile, "reconcile", "trying again", logging.WARNING)
            if done is None:
                return
            if not done:
                self.stopping.wait(1.0)
                self._dirty.set()

    def _reconcile(self) -> None:
        try:
            view = reconcile_all(self.ns, self._session(), self.signer)
        except UntrustedLeader as exc:
            if self._distrusted != str(exc):      # said once, not at every pass
                log.error("%s", exc)
                self._distrusted = str(exc)
            return
        if self._distrusted:
            log.info("this runtime's key is registered as a kernel node's now: reconciling")
            self._distrusted = None
        if view is not None:
            self._tell_untrusted(view.untrusted)
            self.janitor.observe(view)

    def _tell_untrusted(self, untrusted: dict[str, str]) -> None:
        """Say once per node (and again when the reason changes) that a live node is not placed on."""
        for node_id, why in sorted(untrusted.items()):
            if self._untrusted.get(node_id) != why:
                log.warning("%s", why)
        for node_id in sorted(set(self._untrusted) - set(untrusted)):
            log.info("node %s is trusted again, or gone", node_id)
        self._untrusted = dict(untrusted)

    def _sweep(self) -> None:
        """The janitor's rounds: one now, then every `janitor.interval()` seconds until the controller stops."""
        while self._attempt(self.janitor.sweep, "janitor", "trying again next round", logging.DEBUG) is not None:
            if self.stopping.wait(self.janitor.interval()):
                return

    def _attempt(self, work: Callable[[], None], what: str, retry: str, outage_level: int) -> bool | None:
        """Run one round of a loop (the passes', the janitor's): True when it went through, False when it
        failed and is to be tried again (the Name Server out of reach, logged at `outage_level`; or a bug),
        None when the loop must end (the leadership is lost, or the controller is stopping)."""
        try:
            work()
            return True
        except NotLeader as exc:
            log.warning("%s", exc)
            return None
        except (NameServerUnreachable, NameServerError) as exc:
            if self.stopping.is_set():
                return None
            log.log(outage_level, "%s: %s; %s", what, exc, retry)
        except Exception:  # noqa: BLE001 - a bug must not silently stop the controller or its janitor
            log.exception("%s failed; %s", what, retry)
        return False
