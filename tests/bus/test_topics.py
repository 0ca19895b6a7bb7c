"""Topic and subscription names."""

from __future__ import annotations

import pytest

from oneos.bus import topics
from oneos.errors import OneOSError

UID = "0123456789abcdef0123456789abcdef"


def test_names_of_a_pipelines_topics():
    assert topics.link_topic("public/default", UID, "sensor", "controller-2") == \
        f"persistent://public/default/oneos.{UID}.link.sensor.controller-2"
    assert topics.input_topic("public/oneos", UID, "grep") == f"persistent://public/oneos/oneos.{UID}.in.grep"
    assert topics.output_topic("public/oneos", UID, "wc") == f"persistent://public/oneos/oneos.{UID}.out.wc"
    assert topics.log_topic("public/oneos", UID, "wc") == f"persistent://public/oneos/oneos.{UID}.log.wc"


def test_every_kind_of_topic_has_its_own_name():
    made = {topics.link_topic("t/n", UID, "a", "b"), topics.link_topic("t/n", UID, "b", "a"),
            topics.input_topic("t/n", UID, "a"), topics.output_topic("t/n", UID, "a"), topics.log_topic("t/n", UID, "a")}
    assert len(made) == 5


def test_a_new_incarnation_gets_a_new_subscription():
    assert topics.subscription("cat", 0) == "oneos.cat.0"
    assert topics.subscription("cat", 1) != topics.subscription("cat", 0)


@pytest.mark.parametrize("call, message", [
    (lambda: topics.link_topic("default", UID, "a", "b"), "TENANT/NAMESPACE"),
    (lambda: topics.link_topic("public/default", "ABC", "a", "b"), "32 lowercase hex"),
    (lambda: topics.link_topic("public/default", UID, "a.b", "c"), "lowercase letters"),
    (lambda: topics.input_topic("public/default", UID, "Grep"), "lowercase letters"),
    (lambda: topics.output_topic("public/default", UID, "-x"), "starting and ending"),
    (lambda: topics.subscription("cat", -1), "negative"),
])
def test_bad_parts_are_refused_with_a_reason(call, message):
    with pytest.raises(OneOSError, match=message):
        call()
