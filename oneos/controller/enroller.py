"""The redeemer of join tokens: the elected controller approves each runtime that asks to join
with a valid join token (oneos/enrollment.py, `redeem`), as soon as it asks.

It follows oneos/joinrequests/ with a watch; each change runs one pass over every request.
Its writes are not fenced by the leader lock: an approval is idempotent (the key record is
written by compare-and-set, and a token's uses are counted down by compare-and-set), so two
controllers for a moment approve nothing twice. `oneosd --dev` runs one itself until its own
node is in, since no controller runs before the first kernel node is enrolled.
"""

from __future__ import annotations

import logging

from oneos import enrollment, state
from oneos.nameserver.client import NameServer, NameServerError, NameServerUnreachable
from oneos.nameserver.watch import Watch
from oneos.service import Service

log = logging.getLogger("oneos.controller")


class Enroller(Service):
    """Redeems join tokens whenever a join request comes or changes; start() and stop() with the controller."""

    def __init__(self, ns: NameServer) -> None:
        super().__init__("enroller")
        self.ns = ns.clone()
        self._watch = Watch.keys(ns, state.JOINREQUESTS)
        self._said: set[tuple[str, ...]] = set()

    def _launch(self) -> None:
        self.spawn(self._loop, "enroller")

    def _interrupt(self) -> None:
        self._watch.close()
        self.ns.close()

    def _loop(self) -> None:
        for _ in self._watch:
            try:
                enrollment.redeem(self.ns, self._said)
            except (NameServerUnreachable, NameServerError, enrollment.EnrollmentError) as exc:
                if self.stopping.is_set():
                    return
                log.warning("redeeming join tokens: %s; trying again at the next request", exc)
