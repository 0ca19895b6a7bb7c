"""The one shape of everything in OneOS that owns threads: start, stop, join.

A `Service` starts its threads with `spawn()` (in `_launch()`, which `start()` calls once).
`stop()` tells them to end (`stopping` is set, then `_interrupt()` wakes whatever they block
on: a blocking query, a process, a wait) and returns only once they have ended, after
`_release()` gave back what they held (a session, a connection). `stop()` is
safe to call twice, before `start()`, and from one of the service's own threads (that thread
is not waited for: it is on its way out). `cancel()` and `join()` are its two halves, so that
many services can be told first and waited for together (`stop_all`).

As in structured concurrency (trio's nurseries): every thread has an owner that stops it.
The threads are daemon threads only so that a bug that forgets a stop() cannot hang the
interpreter's exit; stop() never relies on that.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Iterable

log = logging.getLogger("oneos")


class Service:
    """Owns threads: start() runs them, stop() tells them to end and returns once they have."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stopping = threading.Event()   # set by cancel(): the threads end as soon as they see it
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._started = False

    # -- what a service defines ---------------------------------------------

    def _launch(self) -> None:
        """Start the service's threads with spawn(); called once, by start()."""

    def _interrupt(self) -> None:
        """Wake the threads so that they see `stopping` now; may be called more than once."""

    def _release(self) -> None:
        """After the threads have ended: give back what they held; may be called more than once."""

    # -- the shape ------------------------------------------------------------

    def start(self) -> None:
        """Start the threads; once only, and not after stop() (a stopped service stays stopped)."""
        with self._lock:
            if self._started:
                raise RuntimeError(f"{self.name} was started already; make a new one")
            self._started = True
        if not self.stopping.is_set():
            self._launch()

    def cancel(self) -> None:
        """Tell the threads to end; returns at once (join() waits for them)."""
        self.stopping.set()
        self._interrupt()

    def join(self) -> None:
        """Wait until every thread of this service has ended (the calling thread itself excepted)."""
        me = threading.current_thread()
        while True:
            with self._lock:
                waiting = [t for t in self._threads if t is not me and t.is_alive()]
            if not waiting:
                return
            for thread in waiting:
                thread.join()

    def stop(self) -> None:
        """Tell the threads to end, wait until they have, and release what they held."""
        self.cancel()
        self.join()
        self._release()

    def spawn(self, target: Callable[[], None], name: str) -> threading.Thread | None:
        """Run `target` in a thread owned by this service; None once it is stopping (nothing is started)."""
        with self._lock:
            # Under the lock: a thread is either listed before join() looks, or never started.
            if self.stopping.is_set():
                return None
            thread = threading.Thread(target=self._guard, args=(target,), name=f"{self.name}: {name}", daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
            thread.start()
        return thread

    def _guard(self, target: Callable[[], None]) -> None:
        try:
            target()
        except Exception:  # noqa: BLE001 - a bug in a thread is logged, never silently lost
            log.exception("%s: a thread failed", self.name)


def stop_all(services: Iterable[Service]) -> None:
    """Stop several services together: tell every one, then wait for every one."""
    services = list(services)
    for service in services:
        service.cancel()
    for service in services:
        service.stop()
