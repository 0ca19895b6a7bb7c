"""The controller's threads: its watches wake it, and stop() ends them without waiting out a query."""

from __future__ import annotations

import threading

import pytest

from oneos.controller import controller as controller_module
from oneos.controller.controller import Controller
from oneos.nameserver import watch as watch_module
from oneos.nameserver.client import NameServer
from tests.procs import wait_until

STOP_DEADLINE_S = 120   # far below the queries' wait: only a stop that waits them out misses it


@pytest.fixture
def ns(builtin_nameserver, monkeypatch):
    """A Name Server of the test's own (a controller reconciles every pipeline there), and blocking
    queries that wait five minutes for a change."""
    monkeypatch.setattr(watch_module, "WAIT", "5m")
    return NameServer(builtin_nameserver.url)


def threads_of(controller: Controller) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("controller: ")]


def stop_within_deadline(controller: Controller) -> None:
    stopper = threading.Thread(target=controller.stop, daemon=True)
    stopper.start()
    stopper.join(STOP_DEADLINE_S)
    assert not stopper.is_alive(), "stop() waited for the watches' blocking queries"


def test_stop_ends_every_thread_without_waiting_out_the_watches(ns, monkeypatch):
    passes = []
    monkeypatch.setattr(controller_module, "reconcile_all", lambda ns, session, signer=None: passes.append(session))
    controller = Controller(ns)
    controller.start()
    wait_until(lambda: len(threads_of(controller)) == 5 and passes, 30,
               "the loop, its three watches (manifests, nodes, keys), the janitor and a pass")
    # A change under a watched prefix wakes the loop for one more pass.
    before = len(passes)
    ns.put("oneos/nodes/someone", b"{}")
    wait_until(lambda: len(passes) > before, 30, "a pass after the change")
    before = len(passes)
    ns.put("oneos/keys/someone", b"{}")      # a node approved: it may be placed on now
    wait_until(lambda: len(passes) > before, 30, "a pass after a key is registered")

    stop_within_deadline(controller)
    assert threads_of(controller) == []
    controller.stop()   # twice: nothing to do


def test_stop_before_start():
    controller = Controller(NameServer("http://127.0.0.1:9"))
    controller.stop()
    controller.start()
    assert threads_of(controller) == []
