"""A runtime's membership: a TTL session that holds `oneos/nodes/<id>` and `oneos/heartbeats/<id>`.

The node record is acquired by the session with behavior `delete`, so it disappears
when the session ends: at once on a clean stop (the session is destroyed), within 2×TTL
when the runtime dies. The session has no lock-delay, so a runtime restarted after a
crash can take its id back at once.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, Callable

from oneos import state
from oneos.documents import DocumentError
from oneos.errors import OneOSError
from oneos.nameserver.client import NameServer

log = logging.getLogger("oneos.nodeagent")


class DuplicateRuntime(OneOSError):
    """Another live runtime already uses this id."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Membership:
    """Joins, keeps and leaves the cluster under one runtime id."""

    def __init__(self, ns: NameServer, node_id: str, record: Callable[[], dict[str, Any]], ttl: int) -> None:
        self.ns = ns
        self.node_id = node_id
        self.record = record
        self.ttl = ttl
        self.session: str | None = None
        self.host = socket.gethostname()

    @property
    def key(self) -> str:
        return state.node_key(self.node_id)

    def join(self) -> None:
        """Create the session and write the node record; DuplicateRuntime if the id is alive elsewhere."""
        self._evict_own_ghost()
        session = self.ns.session_create(name=f"oneos-node {self.node_id}", ttl=self.ttl, behavior="delete",
                                         lock_delay=0, checks=[])
        if not state.put_document(self.ns, self.key, "node", self.record(), acquire=session):
            self.ns.session_destroy(session)
            raise self._duplicate()
        self.session = session

    def _evict_own_ghost(self) -> None:
        """A record left by this runtime's own crashed run (same host, dead pid) is ended at once."""
        _, entry = self.ns.get(self.key)
        if entry is None or not entry.session:
            return
        try:
            other = state.decode(entry, "node")
        except DocumentError:
            other = None
        if other and other["host"] == self.host and other["pid"] != os.getpid() and not pid_alive(other["pid"]):
            log.info("taking the id back from a previous run on this host that did not stop cleanly (pid %s)",
                     other["pid"])
            self.ns.session_destroy(entry.session)
            return
        raise self._duplicate(other)

    def _duplicate(self, other: dict[str, Any] | None = None) -> DuplicateRuntime:
        if other is None:
            _, entry = self.ns.get(self.key)
            try:
                other = state.decode(entry, "node") if entry else None
            except DocumentError:
                other = None
        where = f"host {other['host']} (pid {other['pid']})" if other else "another host"
        return DuplicateRuntime(f"runtime id {self.node_id!r} is already running on {where}; stop that one, "
                                f"or start this one with another id: oneosd OTHER_ID")

    def renew(self) -> bool:
        """Restart the session's TTL; False when the session is gone (the caller re-joins)."""
        if self.session is None:
            return False
        if self.ns.session_renew(self.session) is None:
            self.session = None
            return False
        return True

    def beat(self) -> None:
        """Say when the session was last renewed (now): `oneos/heartbeats/<id>`, held by the session so that
        it goes with it. The commands show the node NotReady once this is older than the TTL."""
        if self.session:
            state.put_document(self.ns, state.heartbeat_key(self.node_id), "heartbeat",
                               state.new_heartbeat(self.node_id, self.ttl), acquire=self.session)

    def update(self) -> None:
        """Rewrite the node record (it stays held by the session)."""
        if self.session:
            state.put_document(self.ns, self.key, "node", self.record(), acquire=self.session)

    def leave(self) -> None:
        """Destroy the session: the node record goes with it, at once."""
        if self.session:
            session, self.session = self.session, None
            self.ns.session_destroy(session)
