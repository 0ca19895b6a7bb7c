"""Restart policy with systemd's words and defaults."""

from __future__ import annotations

from oneos.nodeagent.restart import RestartPolicy


def run(policy, codes, ran_for=0.5, start=0.0, step=1.0):
    """Feed exits; returns the decisions, starting the process again whenever told to."""
    now = start
    decisions = []
    policy.started(now)
    for code in codes:
        now += ran_for
        decision = policy.after_exit(code, ran_for, now)
        decisions.append(decision)
        if not decision.restart:
            break
        now += decision.delay + step
        policy.started(now)
    return decisions


def test_no_never_restarts_and_on_failure_only_after_a_failure():
    assert [d.restart for d in run(RestartPolicy({}), [1])] == [False]
    assert [d.restart for d in run(RestartPolicy({"restart": "on-failure"}), [0])] == [False]
    assert [d.restart for d in run(RestartPolicy({"restart": "on-failure"}), [3, 0])] == [True, False]
    assert [d.restart for d in run(RestartPolicy({"restart": "always"}), [0, 0])] == [True, True]


def test_death_by_hup_int_term_or_pipe_is_a_clean_exit_as_in_systemd():
    for clean in (129, 130, 143, 141):
        assert [d.restart for d in run(RestartPolicy({"restart": "on-failure"}), [clean])] == [False]
        assert [d.restart for d in run(RestartPolicy({"restart": "always"}), [clean])] == [True]
    assert [d.restart for d in run(RestartPolicy({"restart": "on-failure"}), [137])] == [True]   # SIGKILL


def test_the_delay_doubles_up_to_the_cap_and_resets_after_a_healthy_run():
    policy = RestartPolicy({"restart": "always", "restartSec": "1s", "restartMaxDelaySec": 5,
                            "startLimitBurst": 0})
    delays = [d.delay for d in run(policy, [1, 1, 1, 1, 1])]
    assert delays == [1, 2, 4, 5, 5]
    assert policy.after_exit(1, 60, 1000).delay == 1      # a long healthy run starts the backoff over


def test_the_start_limit_fails_the_agent_with_the_reason():
    policy = RestartPolicy({"restart": "always", "restartSec": 0, "startLimitBurst": 3,
                            "startLimitIntervalSec": "10s"})
    decisions = run(policy, [1, 1, 1, 1], ran_for=0.1, step=0.1)
    assert [d.restart for d in decisions] == [True, True, False]
    assert decisions[-1].reason == "start limit hit: 3 starts within 10s (startLimitBurst=3)"


def test_starts_spread_over_more_than_the_interval_are_not_limited():
    policy = RestartPolicy({"restart": "always", "restartSec": 0, "startLimitBurst": 2,
                            "startLimitIntervalSec": 1})
    assert all(d.restart for d in run(policy, [1] * 6, ran_for=0.5, step=2.0))


def test_systemd_defaults():
    policy = RestartPolicy({"restart": "always"})
    assert (policy.base, policy.burst, policy.interval) == (0.1, 5, 10.0)
