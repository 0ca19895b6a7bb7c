"""The one watch loop: Consul's blocking-query rules, retries, and a close() that cuts a query off."""

from __future__ import annotations

import threading

import pytest

from oneos.nameserver.client import NameServer, NameServerError, NameServerUnreachable
from oneos.nameserver.watch import Watch


class Script:
    """A query that answers from a script and records each (index, wait) it was asked with.

    An answer is (index, result), or an exception to raise. After the script, the watch is closed.
    """

    def __init__(self, answers: list) -> None:
        self.answers = list(answers)
        self.asked: list[int] = []
        self.watch: Watch | None = None

    def __call__(self, client: NameServer, index: int, wait: str):
        self.asked.append(index)
        if not self.answers:
            self.watch.close()
            raise NameServerUnreachable("closed")
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def scripted(answers: list, **options) -> tuple[Watch, Script]:
    script = Script(answers)
    watch = Watch(NameServer("http://127.0.0.1:9"), script, "test", retry_s=0, **options)
    script.watch = watch
    return watch, script


def test_the_first_result_at_once_then_each_change():
    watch, script = scripted([(5, "a"), (7, "b"), (9, "c")])
    assert list(watch) == [(5, "a"), (7, "b"), (9, "c")]
    assert script.asked[:3] == [0, 5, 7]      # each query waits on the index of the last answer


def test_an_answer_with_the_same_index_is_only_the_end_of_a_wait():
    watch, script = scripted([(5, "a"), (5, "a"), (5, "a"), (6, "b")])
    assert list(watch) == [(5, "a"), (6, "b")]
    assert script.asked[:4] == [0, 5, 5, 5]


def test_an_index_that_goes_backwards_starts_over_with_a_fresh_read():
    watch, script = scripted([(50, "a"), (3, "restored"), (4, "fresh")])
    assert list(watch) == [(50, "a"), (4, "fresh")]
    assert script.asked[:3] == [0, 50, 0]


def test_an_index_of_zero_is_never_waited_on():
    watch, script = scripted([(0, "empty"), (0, "still empty"), (2, "x")])
    assert list(watch) == [(1, "empty"), (2, "x")]
    assert script.asked[:3] == [0, 1, 1]      # index 0 would not block: a hot loop


@pytest.mark.parametrize("error", [NameServerUnreachable("down"), NameServerError("refused", 500)])
def test_an_error_is_retried_from_a_fresh_read_and_said_once(error, caplog):
    watch, script = scripted([(5, "a"), error, error, (5, "a"), (6, "b")])
    with caplog.at_level("INFO", logger="oneos"):
        assert list(watch) == [(5, "a"), (5, "a"), (6, "b")]
    assert script.asked[:5] == [0, 5, 0, 0, 5]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "watching test" in warnings[0] and "retrying" in warnings[0]
    assert "watching test again" in caplog.text


def test_without_retry_an_error_ends_the_watch():
    watch, _ = scripted([(5, "a"), NameServerUnreachable("down")], retry=False)
    seen = []
    with pytest.raises(NameServerUnreachable, match="down"):
        for change in watch:
            seen.append(change)
    assert seen == [(5, "a")]


def test_again_reads_at_once_and_yields_even_without_a_change():
    watch, script = scripted([(5, "a"), (5, "a"), (6, "b")])
    seen = []
    for change in watch:
        seen.append(change)
        if len(seen) == 1:
            watch.again()
    assert seen == [(5, "a"), (5, "a"), (6, "b")]
    assert script.asked[:3] == [0, 0, 5]


def test_a_real_watch_sees_a_change(ns, prefix):
    ns.put(prefix + "a", b"1")
    with Watch.tree(ns, prefix) as watch:
        changes = iter(watch)
        _, entries = next(changes)
        assert [(e.key, e.value) for e in entries] == [(prefix + "a", b"1")]
        ns.put(prefix + "b", b"2")
        _, entries = next(changes)
        assert [e.key for e in entries] == [prefix + "a", prefix + "b"]


def test_close_cuts_off_a_blocking_query_from_another_thread(ns, prefix, monkeypatch):
    ns.put(prefix + "k", b"1")
    watch = Watch.key(ns, prefix + "k", wait="5m")
    seen = []
    asked = threading.Event()
    query = watch._query

    def noted(client, index, wait):
        if index:
            asked.set()     # the blocking query is about to be sent
        return query(client, index, wait)

    watch._query = noted
    follower = threading.Thread(target=lambda: seen.extend(watch), daemon=True)
    follower.start()
    assert asked.wait(60)
    watch.close()
    # The query waits five minutes for a change that never comes; close() ends it now.
    follower.join(60)
    assert not follower.is_alive()
    assert [entry.value for _, entry in seen] == [b"1"]
    ns.put(prefix + "k", b"2")    # the shared client is not the watch's: it still works
