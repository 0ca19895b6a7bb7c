"""Restart policy, in systemd's words and with its defaults where systemd has them.

Restart=no|on-failure|always, RestartSec= (default 100ms, as systemd) and a start limit:
more than StartLimitBurst= (default 5) starts within StartLimitIntervalSec= (default 10s)
and the agent is Failed with that reason. As systemd, a process killed by SIGHUP, SIGINT,
SIGTERM or SIGPIPE exited cleanly: on-failure does not restart it (a writer stopped by
SIGPIPE because its reader ended is done, as in a shell).

Not systemd's: the delay doubles on each consecutive restart up to RestartMaxDelaySec=
(OneOS default 30s; systemd has no backoff unless RestartSteps= is set), and the doubling
starts over after a healthy run of 10s (systemd resets only on a manual start).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from oneos.durations import parse_seconds

DEFAULT_RESTART_SEC = 0.1
DEFAULT_MAX_DELAY_SEC = 30.0
DEFAULT_BURST = 5
DEFAULT_INTERVAL_SEC = 10.0
HEALTHY_RUN_SEC = 10.0
# Exit statuses (as bash reports them, 128+N) of the signals systemd counts as a clean exit.
CLEAN_SIGNALS = {128 + 1, 128 + 2, 128 + 15, 128 + 13}   # SIGHUP, SIGINT, SIGTERM, SIGPIPE


def seconds(value: Any, default: float) -> float:
    """A `seconds` field: a number, or a duration string such as 100ms or 1m."""
    if value is None:
        return default
    if isinstance(value, (int, float)):
        return float(value)
    return parse_seconds(str(value))


@dataclass
class Decision:
    restart: bool
    delay: float = 0.0
    reason: str = ""       # why not, when the agent stays down


class RestartPolicy:
    """Decides, after each exit, whether and when an agent starts again."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.mode = spec.get("restart", "no")
        self.base = seconds(spec.get("restartSec"), DEFAULT_RESTART_SEC)
        self.cap = max(self.base, seconds(spec.get("restartMaxDelaySec"), DEFAULT_MAX_DELAY_SEC))
        self.burst = int(spec.get("startLimitBurst", DEFAULT_BURST))
        self.interval = seconds(spec.get("startLimitIntervalSec"), DEFAULT_INTERVAL_SEC)
        self._starts: deque[float] = deque()
        self._consecutive = 0

    def started(self, now: float) -> None:
        """Record a start (for the start limit)."""
        self._starts.append(now)

    def after_exit(self, code: int, ran_for: float, now: float) -> Decision:
        """What to do now that the process exited with `code` after running `ran_for` seconds."""
        failed = code != 0 and code not in CLEAN_SIGNALS
        if self.mode == "no" or (self.mode == "on-failure" and not failed):
            return Decision(False)
        if ran_for >= HEALTHY_RUN_SEC:
            self._consecutive = 0
        while self._starts and now - self._starts[0] > self.interval:
            self._starts.popleft()
        if self.burst and self.interval and len(self._starts) >= self.burst:
            return Decision(False, reason=f"start limit hit: {len(self._starts)} starts within "
                                          f"{self.interval:g}s (startLimitBurst={self.burst})")
        delay = min(self.base * (2 ** self._consecutive), self.cap)
        self._consecutive += 1
        return Decision(True, delay)
