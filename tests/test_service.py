"""The one shape of things that own threads: stop() returns once they have ended, whoever calls it."""

from __future__ import annotations

import logging
import threading

import pytest

from oneos.service import Service, stop_all


class Waiter(Service):
    """A service whose threads wait for `stopping`, then for `may_end`: stop() must wait for both."""

    def __init__(self, threads: int = 2) -> None:
        super().__init__("waiter")
        self.count = threads
        self.may_end = threading.Event()
        self.started = threading.Barrier(threads + 1)
        self.interrupted = 0
        self.released = 0
        self.ended: list[str] = []

    def _launch(self) -> None:
        for n in range(self.count):
            self.spawn(lambda n=n: self._work(n), f"worker {n}")

    def _work(self, n: int) -> None:
        self.started.wait()
        self.stopping.wait()
        self.may_end.wait()
        self.ended.append(f"worker {n}")

    def _interrupt(self) -> None:
        self.interrupted += 1
        self.may_end.set()

    def _release(self) -> None:
        self.released += 1


def threads_of(service: Service) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"{service.name}: ")]


def test_stop_returns_only_when_the_threads_have_ended():
    service = Waiter()
    service.start()
    service.started.wait()
    assert len(threads_of(service)) == 2
    service.stop()
    assert sorted(service.ended) == ["worker 0", "worker 1"]
    assert threads_of(service) == []
    assert service.released == 1


def test_stop_is_safe_twice_and_before_start():
    never_started = Waiter()
    never_started.stop()
    never_started.stop()
    never_started.start()   # a stopped service stays stopped
    assert threads_of(never_started) == [] and never_started.ended == []

    service = Waiter()
    service.start()
    service.started.wait()
    service.stop()
    service.stop()
    assert service.interrupted == 2 and service.released == 2


def test_a_service_is_started_once():
    service = Waiter()
    service.start()
    service.started.wait()
    with pytest.raises(RuntimeError, match="started already"):
        service.start()
    service.stop()


def test_one_of_its_own_threads_may_stop_it():
    class SelfStopping(Service):
        def __init__(self) -> None:
            super().__init__("self-stopping")
            self.returned = threading.Event()
            self.other_ended = False

        def _launch(self) -> None:
            self.spawn(self._other, "other")
            self.spawn(self._stopper, "stopper")

        def _other(self) -> None:
            self.stopping.wait()
            self.other_ended = True

        def _stopper(self) -> None:
            self.stop()        # waits for "other", not for itself
            self.returned.set()

    service = SelfStopping()
    service.start()
    service.returned.wait()
    assert service.other_ended
    service.join()
    assert threads_of(service) == []


def test_no_thread_starts_once_it_is_stopping():
    service = Waiter()
    service.stop()
    assert service.spawn(lambda: None, "late") is None


def test_stop_all_tells_every_service_before_waiting_for_any():
    # Each waiter's threads end only once the *other* one has been told: stopping them one
    # after the other would wait forever.
    a, b = Waiter(1), Waiter(1)
    a._interrupt = lambda: b.may_end.set()
    b._interrupt = lambda: a.may_end.set()
    for service in (a, b):
        service.start()
        service.started.wait()
    stop_all([a, b])
    assert a.ended == b.ended == ["worker 0"]
    assert threads_of(a) == threads_of(b) == []


def test_a_thread_that_fails_is_logged_and_still_joined(caplog):
    class Failing(Service):
        def _launch(self) -> None:
            self.spawn(self._fail, "failing")

        def _fail(self) -> None:
            raise ValueError("a bug")

    service = Failing("failing")
    with caplog.at_level(logging.ERROR, logger="oneos"):
        service.start()
        service.stop()
    assert "failing: a thread failed" in caplog.text and "ValueError: a bug" in caplog.text
