"""A node's lease on its membership: when to renew it, and when to stop every agent (self-fencing).

Pure timing, with time given by the caller (time.monotonic in the runtime, a number in
tests), as oneos/nodeagent/restart.py.

- Renewal, as Consul's own clients do: every TTL/2, so that one lost renewal still leaves
  time for the next; while the Name Server is unreachable, every second (RETRY_S).
- Fencing: the Name Server ends a session no sooner than TTL after its last renewal, and
  the controller places the node's agents elsewhere only then. So when no renewal has
  succeeded for FENCE_AFTER × TTL (the Name Server unreachable, this process paused), the
  node stops its agents itself: an agent never runs in two places at once.
"""

from __future__ import annotations

from dataclasses import dataclass

FENCE_AFTER = 0.8   # of the session TTL without a renewal, after which the node stops its agents
RETRY_S = 1.0       # between renewals while the Name Server is unreachable
FENCED_CHECK_S = 0.2   # how often a fenced node looks again (a renewal ends the fence)


@dataclass
class Lease:
    """The membership session's renewals: what happened, and what to do next."""

    ttl: float
    renewed_at: float                      # when a renewal last succeeded (or the node joined)
    unreachable_since: float | None = None  # when the current outage began, if there is one

    def renewed(self, now: float) -> float | None:
        """A renewal succeeded (or the node joined again); how long the outage it ends lasted, if any."""
        self.renewed_at = now
        since, self.unreachable_since = self.unreachable_since, None
        return None if since is None else now - since

    def unreachable(self, now: float) -> bool:
        """A renewal could not reach the Name Server; True for the first of an outage (say it once)."""
        if self.unreachable_since is not None:
            return False
        self.unreachable_since = now
        return True

    def next_renewal(self) -> float:
        """Seconds until the next renewal: TTL/2, or RETRY_S during an outage."""
        return RETRY_S if self.unreachable_since is not None else self.ttl / 2

    def silent(self, now: float) -> float:
        """Seconds since the last renewal that succeeded."""
        return now - self.renewed_at

    def must_fence(self, now: float) -> bool:
        """True once no renewal has succeeded for more than FENCE_AFTER × TTL."""
        return self.silent(now) > FENCE_AFTER * self.ttl

    def next_check(self, now: float) -> float:
        """Seconds until the watchdog should look again: the fence deadline, or FENCED_CHECK_S past it."""
        left = self.renewed_at + FENCE_AFTER * self.ttl - now
        return left if left > 0 else FENCED_CHECK_S
