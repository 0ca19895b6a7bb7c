"""The membership lease's timing, with time given by the test: renewals every TTL/2 (every second
during an outage), and fencing after 0.8×TTL without a renewal. The real-time behaviour is checked
end to end in tests/faults/test_node_loss.py (a paused node stops its agents)."""

from __future__ import annotations

import pytest

from oneos.nodeagent.lease import FENCE_AFTER, FENCED_CHECK_S, RETRY_S, Lease

TTL = 10.0


def test_renewals_come_every_half_ttl():
    lease = Lease(TTL, renewed_at=100.0)
    assert lease.next_renewal() == TTL / 2
    assert lease.renewed(105.0) is None       # no outage to report
    assert lease.next_renewal() == TTL / 2


def test_an_outage_is_told_once_retried_every_second_and_its_length_given_at_the_end():
    lease = Lease(TTL, renewed_at=100.0)
    assert lease.unreachable(105.0) is True
    assert lease.next_renewal() == RETRY_S
    assert lease.unreachable(106.0) is False   # the same outage: said once
    assert lease.unreachable(107.0) is False
    assert lease.renewed(108.5) == pytest.approx(3.5)
    assert lease.next_renewal() == TTL / 2
    assert lease.unreachable(120.0) is True    # a new outage is told again


def test_the_node_fences_itself_after_0_8_ttl_without_a_renewal():
    lease = Lease(TTL, renewed_at=100.0)
    limit = FENCE_AFTER * TTL
    assert limit == 8.0
    assert not lease.must_fence(100.0 + limit)       # at the limit, not yet
    assert lease.must_fence(100.0 + limit + 0.01)
    assert lease.silent(100.0 + limit + 0.01) == pytest.approx(limit + 0.01)


def test_failed_renewals_do_not_move_the_fence():
    lease = Lease(TTL, renewed_at=100.0)
    for now in (105.0, 106.0, 107.0):
        lease.unreachable(now)
    assert lease.must_fence(108.5)


def test_a_renewal_lifts_the_fence_and_moves_it_on():
    lease = Lease(TTL, renewed_at=100.0)
    assert lease.must_fence(109.0)
    lease.renewed(109.5)
    assert not lease.must_fence(109.5)
    assert not lease.must_fence(117.0)
    assert lease.must_fence(117.6)


def test_the_watchdog_looks_again_at_the_deadline_then_often_while_fenced():
    lease = Lease(TTL, renewed_at=100.0)
    assert lease.next_check(100.0) == pytest.approx(8.0)
    assert lease.next_check(103.0) == pytest.approx(5.0)
    lease.renewed(105.0)      # a renewal meanwhile: the next look finds a later deadline
    assert lease.next_check(108.0) == pytest.approx(5.0)
    assert lease.next_check(113.0) == FENCED_CHECK_S
    assert lease.next_check(200.0) == FENCED_CHECK_S
