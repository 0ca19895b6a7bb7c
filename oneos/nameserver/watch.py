"""Watches: the one loop that follows a key or a prefix of the Name Server with blocking queries.

A watch is level-triggered: it yields the whole current result (and its index) at once,
then again each time the Name Server says that something under the key or prefix changed.
What changed is for the caller to read in the result, as a Kubernetes controller does.

Consul's rules for blocking queries live here and nowhere else: the next query waits on
the index of the last answer, never below 1; an answer that returns with the same index
only says that the wait ended (nothing is yielded); an index that goes backwards (a
restored server, reaped tombstones) starts over with a fresh read; an error (the Name Server unreachable,
or refusing) is retried every second from a fresh read, said once per outage.

A watch has a client of its own (NameServer.clone), so `close()`, from any thread, cuts off
a blocking query under way: whoever owns the watch stops at once, not after the query's wait.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Generic, Iterator, TypeVar

from oneos.nameserver.client import Entry, NameServer, NameServerError, NameServerUnreachable

log = logging.getLogger("oneos")

T = TypeVar("T")
RETRY_S = 1.0
WAIT = "30s"

#: How a watch reads: (client, index, wait) -> (index, result), one of NameServer's blocking reads.
Query = Callable[[NameServer, int, str], tuple]


class Watch(Generic[T]):
    """Yields (index, result) of a key or prefix: at once, then after each change, until close()."""

    def __init__(self, ns: NameServer, query: Query, what: str, *, wait: str | None = None, retry: bool = True,
                 retry_s: float = RETRY_S) -> None:
        """`what` names the watch in logs; `wait` bounds each blocking query (default WAIT);
        with `retry` False an error ends the iteration (raised)."""
        self.what = what
        self.wait = wait or WAIT
        self.retry = retry
        self.retry_s = retry_s
        self._query = query
        self._ns = ns.clone()
        self._closed = threading.Event()
        self._again = False

    @classmethod
    def tree(cls, ns: NameServer, prefix: str, **options) -> "Watch[list[Entry]]":
        """Every entry under `prefix`."""
        return cls(ns, lambda c, index, wait: c.get_tree(prefix, index=index, wait=wait), f"{prefix}*", **options)

    @classmethod
    def keys(cls, ns: NameServer, prefix: str, **options) -> "Watch[list[str]]":
        """The keys under `prefix`."""
        return cls(ns, lambda c, index, wait: c.keys(prefix, index=index, wait=wait), f"{prefix}*", **options)

    @classmethod
    def key(cls, ns: NameServer, key: str, **options) -> "Watch[Entry | None]":
        """One key's entry (None while it does not exist)."""
        return cls(ns, lambda c, index, wait: c.get(key, index=index, wait=wait), key, **options)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def again(self) -> None:
        """Yield the current result once more, read at once (call it from the iterating thread)."""
        self._again = True

    def close(self) -> None:
        """End the iteration now, from any thread; a blocking query under way is cut off."""
        self._closed.set()
        self._ns.close()

    def __enter__(self) -> "Watch[T]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[tuple[int, T]]:
        index = 0
        failing = False
        while not self._closed.is_set():
            if self._again:
                index, self._again = 0, False
            try:
                new, result = self._query(self._ns, index, self.wait)
            except (NameServerUnreachable, NameServerError) as exc:
                if self._closed.is_set():
                    return
                if not self.retry:
                    raise
                if not failing:
                    log.warning("watching %s: %s; retrying every %gs", self.what, exc, self.retry_s)
                    failing = True
                index = 0
                self._closed.wait(self.retry_s)
                continue
            if self._closed.is_set():
                return
            if failing:
                log.info("watching %s again", self.what)
                failing = False
            new = max(new, 1)    # an index is at least 1: at 0 a query would not block (a hot loop)
            if new < index:
                index = 0        # gone backwards: start over with a fresh read
                continue
            if index and new == index:
                continue         # the wait ended, nothing changed
            index = new
            yield new, result
