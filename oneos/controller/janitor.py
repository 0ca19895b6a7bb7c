"""The controller's janitor: what deleted pipelines leave behind, removed by the leader.

Shipped files. `apply` stores each file an agent ships at `oneos/blobs/<sha256>`, before
the manifest that names it. A blob that no pipeline manifest, init manifest or assignment
references is deleted, but only once it has been seen unreferenced for the grace period
(the boot record's `blobGracePeriod`, default 60s), so that an apply that has written its
files and not yet its manifest keeps them. The delete is a compare-and-set on the
ModifyIndex seen when the blob was first found unreferenced, fenced by the leader lock:
a blob shipped again meanwhile (apply writes it with new flags, so its ModifyIndex moves)
is kept, and its grace starts over.

Frame keys. A pipeline's frame key (`oneos/pipekeys/<pipeline>/<uid>`) goes with its
manifest on delete; one left behind (an apply that failed after making it, a delete cut
short) is deleted the same way as a blob, once no manifest, assignment or status names its
uid for the grace period.

Topics. With a real Pulsar whose admin API the boot record names (`pulsar.adminUrl`), the
topics of a deleted pipeline (`persistent://NS/oneos.<uid>.*`: links, its run's input and
output, every incarnation's log) are deleted once nothing of the pipeline is left in the
Name Server: no manifest with its uid, no assignment, no status (its agents have stopped).
The controller's passes tell the janitor every uid they see (`observe`), so even a run
that lasted a second is seen; what is owed is kept in memory, so a pipeline deleted just
before the leader changes keeps its topics (the new leader never saw it). pulsar-lite has
no admin API: its data folder keeps deleted runs' streams (see README).

The janitor runs on a timer of its own (`interval`), slower than the passes; everything
it does is idempotent, and a deposed leader's deletes fail on the leader lock.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from typing import Any, Callable

from oneos import state
from oneos.bus import topics
from oneos.bus.admin import PulsarAdmin, PulsarAdminError
from oneos.controller.view import ClusterView
from oneos.controller.reconciler import Writes
from oneos.durations import parse_seconds
from oneos.nameserver.client import NameServer, TxnConflict, kv_op

log = logging.getLogger("oneos.controller")

BLOB_GRACE_S = 60.0
MIN_GRACE_S = 1.0     # a shorter one could not cover an apply between its files and its manifest
_DIGEST = re.compile(r"[0-9a-f]{64}")


def references(doc: Any) -> set[str]:
    """Every sha256 digest anywhere in a stored document: the blobs it may name.

    Read leniently on purpose: a manifest that fails validation (or comes from a newer
    OneOS) still keeps the files it names.
    """
    found: set[str] = set()
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _DIGEST.fullmatch(item):
                found.add(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _json(value: bytes | None) -> Any:
    try:
        return json.loads(value or b"")
    except ValueError:
        return None


class Janitor:
    """Deletes unreferenced blobs and deleted pipelines' topics; `sweep()` is one round."""

    def __init__(self, ns: NameServer, writes: Callable[[], Writes], *, clock: Callable[[], float] = time.monotonic,
                 admin: Callable[[str], PulsarAdmin] = PulsarAdmin) -> None:
        """`writes` gives the leader-fenced writer of the moment (it raises NotLeader once the
        lock is lost); `clock` measures the grace period; `admin` opens a Pulsar admin client."""
        self.ns = ns
        self.writes = writes
        self.clock = clock
        self._admin_factory = admin
        self._admin: PulsarAdmin | None = None
        self.unreferenced: dict[str, tuple[float, int]] = {}   # blob key -> (first seen, ModifyIndex then)
        self.unreferenced_keys: dict[str, tuple[float, int]] = {}   # frame key's key -> (the same)
        self._live: dict[str, str] = {}        # uid -> pipeline name, of the manifests the last pass saw
        self.owed: set[str] = set()            # uids of deleted pipelines whose topics are still to delete
        self._failing: set[str] = set()        # uids whose topic deletion failed (said once)
        self._owed_lock = threading.Lock()     # observe() runs in the pass's thread, the rounds in their own
        self.boot: dict[str, Any] | None = None

    # -- timing ------------------------------------------------------------

    def grace(self) -> float:
        """The boot record's blobGracePeriod (as last read; at least MIN_GRACE_S), else BLOB_GRACE_S."""
        text = (self.boot or {}).get("blobGracePeriod")
        return max(MIN_GRACE_S, parse_seconds(text)) if text else BLOB_GRACE_S

    def interval(self) -> float:
        """How often a round runs: a quarter of the grace, from 1s to 15s."""
        return min(15.0, max(1.0, self.grace() / 4))

    # -- one round -----------------------------------------------------------

    def sweep(self) -> None:
        """One round: collect blobs and frame keys, then delete the topics owed. NotLeader stops it."""
        try:
            self.boot = state.read_boot(self.ns)
        except state.BootError as exc:
            log.debug("janitor: %s", exc)
            return
        self.collect_blobs()
        self.collect_pipe_keys()
        self.reap_topics()

    def collect_blobs(self) -> list[str]:
        """Delete the blobs unreferenced for the grace period; the digests deleted."""
        _, keys = self.ns.keys(state.BLOBS)
        present = {key: key[len(state.BLOBS):] for key in keys}
        # Listed before the references are read: a blob listed here whose manifest is not
        # written yet is unreferenced now, and kept for the grace period.
        deleted = self._collect(present, self._references if present else set, self.unreferenced)
        if deleted:
            log.info("deleted %d shipped file(s) no manifest references any more", len(deleted))
        return [key[len(state.BLOBS):] for key in deleted]

    def collect_pipe_keys(self) -> list[str]:
        """Delete the frame keys (oneos/pipekeys/<pipeline>/<uid>) of pipeline uids nothing is left of
        (no manifest, assignment or status) for the grace period: an apply that failed after making
        its key, a delete cut short. Apply makes the key before its manifest: the grace covers that."""
        _, keys = self.ns.keys(state.PIPEKEYS)
        present = {key: key.rpartition("/")[2] for key in keys}
        deleted = self._collect(present, self._lingering if present else set, self.unreferenced_keys)
        if deleted:
            log.info("deleted %d frame key(s) of pipelines that are gone", len(deleted))
        return deleted

    def _collect(self, present: dict[str, str], referenced: Callable[[], set[str]],
                 seen_at: dict[str, tuple[float, int]]) -> list[str]:
        """Delete each key of `present` (key -> what references name it by) that has gone unreferenced
        for the grace period, by a compare-and-set on the ModifyIndex it had when first found so (a
        key written again meanwhile is kept, and its grace starts over); `seen_at` remembers those
        first sightings between rounds. The keys deleted."""
        for key in [k for k in seen_at if k not in present]:
            del seen_at[key]
        if not present:
            return []
        named = referenced()
        now, grace = self.clock(), self.grace()
        deleted = []
        for key in sorted(present):
            if present[key] in named:
                seen_at.pop(key, None)
                continue
            seen = seen_at.get(key)
            if seen is None:
                _, entry = self.ns.get(key)
                if entry is not None:
                    seen_at[key] = (now, entry.modify_index)
                continue
            since, index = seen
            if now - since < grace:
                continue
            try:
                self.writes().commit(kv_op("delete-cas", key, index=index))
                deleted.append(key)
            except TxnConflict:
                pass     # written again since it was first seen: its grace starts over
            seen_at.pop(key, None)
        return deleted

    def _references(self) -> set[str]:
        """Every digest that a pipeline manifest, the init manifest or an assignment names."""
        found: set[str] = set()
        for prefix in (state.PIPELINES, state.ASSIGN):
            _, entries = self.ns.get_tree(prefix)
            for entry in entries:
                found |= references(_json(entry.value))
        _, init = self.ns.get((self.boot or {}).get("initManifest", state.INIT))
        if init is not None:
            found |= references(_json(init.value))
        return found

    # -- topics ----------------------------------------------------------------

    def observe(self, view: ClusterView) -> None:
        """After each pass: note the uids of pipelines deleted since the last one (only with an admin URL).

        A pipeline whose stored manifest is invalid is not taken for deleted: it is left alone.
        """
        if not (view.boot or {}).get("pulsar", {}).get("adminUrl"):
            with self._owed_lock:
                self._live = {}
                self.owed.clear()
            return
        live = {m["metadata"]["uid"]: name for name, m in view.manifests.items()}
        if view.init is not None:
            live[view.init["metadata"]["uid"]] = view.init["metadata"]["name"]
        gone = {uid for uid, name in self._live.items() if uid not in live and name not in view.invalid}
        placed = [doc for _, doc in view.assignments.values()] + list(view.statuses.values())
        gone |= {doc["uid"] for doc in placed if doc["uid"] not in live and doc["pipeline"] not in view.invalid}
        with self._owed_lock:
            self.owed |= gone
            self._live = live

    def reap_topics(self) -> list[str]:
        """Delete the topics of every deleted pipeline nothing is left of; the topics deleted."""
        pulsar = (self.boot or {}).get("pulsar", {})
        with self._owed_lock:
            owed = set(self.owed)
        if not owed or not pulsar.get("adminUrl"):
            return []
        ready = owed - self._lingering()
        if not ready:
            return []
        if self._admin is None or self._admin.url != pulsar["adminUrl"].rstrip("/"):
            self._admin = self._admin_factory(pulsar["adminUrl"])
        namespace = pulsar["namespace"]
        deleted: list[str] = []
        try:
            existing = self._admin.topics(namespace)
        except PulsarAdminError as exc:
            self._say_once("", f"cannot delete deleted pipelines' topics: {exc}")
            return []
        self._failing.discard("")
        for uid in sorted(ready):
            prefix = topics.pipeline_prefix(namespace, uid)
            try:
                for topic in (t for t in existing if t.startswith(prefix)):
                    if self._admin.delete_topic(topic):
                        deleted.append(topic)
            except PulsarAdminError as exc:
                self._say_once(uid, f"pipeline uid {uid}: its topics are not deleted yet: {exc}")
                continue
            with self._owed_lock:
                self.owed.discard(uid)
            self._failing.discard(uid)
        if deleted:
            log.info("deleted %d topic(s) of deleted pipelines", len(deleted))
        return deleted

    def _lingering(self) -> set[str]:
        """The uids that still have a manifest, an assignment or a status (read leniently): not done yet."""
        uids: set[str] = set()
        for prefix in (state.PIPELINES, state.ASSIGN, state.STATUS):
            _, entries = self.ns.get_tree(prefix)
            for entry in entries:
                doc = _json(entry.value)
                if isinstance(doc, dict) and prefix == state.PIPELINES:
                    doc = doc.get("metadata")
                if isinstance(doc, dict) and isinstance(doc.get("uid"), str):
                    uids.add(doc["uid"])
        return uids

    def _say_once(self, what: str, message: str) -> None:
        if what not in self._failing:
            self._failing.add(what)
            log.warning("%s", message)
        else:
            log.debug("%s", message)

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
