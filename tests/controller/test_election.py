"""Leader election in-process against a real Name Server: one leads, a stopped leader hands over,
a lost session deposes, and on_elected / on_deposed come in order, one at a time."""

from __future__ import annotations

import threading

import pytest

from oneos import state
from oneos.controller.election import Election
from oneos.service import stop_all
from tests.procs import wait_until

TTL = 10
WAIT_S = 30


class Recorder:
    """The callbacks of one election: what they said, and whether two ever ran at once."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.overlapped = False
        self._active = 0
        self._lock = threading.Lock()

    def _call(self, event: str) -> None:
        with self._lock:
            self._active += 1
            self.overlapped |= self._active > 1
        self.events.append(event)
        with self._lock:
            self._active -= 1

    def elected(self) -> None:
        self._call("elected")

    def deposed(self) -> None:
        self._call("deposed")


@pytest.fixture
def elections(ns):
    """make(node_id) -> (Election, Recorder), started; all stopped at the end, the leader key removed."""
    ns.delete(state.LEADER)
    made: list[Election] = []

    def make(node_id: str) -> tuple[Election, Recorder]:
        rec = Recorder()
        election = Election(ns, node_id, TTL, 0, on_elected=rec.elected, on_deposed=rec.deposed)
        made.append(election)
        election.start()
        return election, rec

    yield make
    stop_all(made)
    ns.delete(state.LEADER)


def threads_of(election: Election) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"{election.name}: ")]


def holder(ns) -> str | None:
    _, entry = ns.get(state.LEADER)
    return entry.session if entry else None


def test_of_two_elections_one_leads(ns, elections):
    a, rec_a = elections("n1")
    b, rec_b = elections("n2")
    leader = wait_until(lambda: next((e for e in (a, b) if e.leading), None), WAIT_S, "a leader")
    other = b if leader is a else a
    assert holder(ns) == leader.session
    assert state.decode(ns.get(state.LEADER)[1], "leader")["node"] == leader.node_id
    wait_until(lambda: other.session is not None, WAIT_S, "the other to contend with a session of its own")
    assert not other.leading and other.session != leader.session
    assert (rec_a.events, rec_b.events) == ((["elected"], []) if leader is a else ([], ["elected"]))


def test_stop_of_the_leader_hands_over(ns, elections):
    a, rec_a = elections("n1")
    wait_until(lambda: a.leading, WAIT_S, "n1 to lead")
    b, rec_b = elections("n2")
    wait_until(lambda: b.session is not None, WAIT_S, "n2 to contend")

    a.stop()
    # stop() returned: n1 is deposed, its thread has ended and its session is gone.
    assert rec_a.events == ["elected", "deposed"]
    assert not a.leading and a.session is None and threads_of(a) == []
    wait_until(lambda: b.leading, WAIT_S, "n2 to take over")
    assert holder(ns) == b.session and rec_b.events == ["elected"]

    a.stop()   # again: nothing more happens
    assert rec_a.events == ["elected", "deposed"]


def test_a_renew_that_finds_the_session_gone_deposes(ns, elections):
    a, rec = elections("n1")
    wait_until(lambda: a.leading, WAIT_S, "n1 to lead")
    lost = a.session
    ns.session_destroy(lost)   # as when the session expired during a pause
    a.renew()
    # Deposed (by the renewal, or by its own thread seeing the lock released, whichever came first).
    assert a.session != lost
    assert rec.events[:2] == ["elected", "deposed"]
    # Level-triggered: it contends again with a new session, and leads.
    wait_until(lambda: a.leading, WAIT_S, "n1 to lead again")
    assert a.session not in (None, lost) and holder(ns) == a.session
    assert rec.events == ["elected", "deposed", "elected"]


def test_callbacks_come_in_order_one_at_a_time_never_the_same_twice(ns, elections):
    a, rec = elections("n1")
    wait_until(lambda: a.leading, WAIT_S, "n1 to lead")
    for _ in range(3):
        lost = a.session
        ns.session_destroy(lost)
        # The heartbeat, its own thread and more renewals all race to depose it.
        renewals = [threading.Thread(target=a.renew) for _ in range(4)]
        for thread in renewals:
            thread.start()
        for thread in renewals:
            thread.join()
        wait_until(lambda: a.leading and a.session != lost, WAIT_S, "n1 to lead again")
    assert rec.events == ["elected", "deposed"] * 3 + ["elected"]
    assert not rec.overlapped


def test_a_stopped_election_does_not_contend_again(ns, elections):
    a, rec = elections("n1")
    wait_until(lambda: a.leading, WAIT_S, "n1 to lead")
    a.stop()
    a.renew()
    with pytest.raises(RuntimeError):
        a.start()
    assert holder(ns) is None and rec.events == ["elected", "deposed"] and threads_of(a) == []


def test_stop_before_start(ns):
    election = Election(ns, "n1", TTL, 0)
    election.stop()
    election.stop()
    assert not election.leading and election.session is None
