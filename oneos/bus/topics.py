"""Names of the Pulsar topics and subscriptions a pipeline uses.

Every topic of a pipeline is `persistent://{namespace}/oneos.{uid}.{kind}.{...}`: the
namespace comes from the boot record, the uid (32 hex digits) from the pipeline's metadata,
so a pipeline applied again under the same name (a new uid) never reads an old run's bytes.
'.' separates the parts: agent names are lowercase letters, digits and '-', never '.'.
"""

from __future__ import annotations

import re

from oneos.errors import OneOSError

_NAMESPACE = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*$")
_UID = re.compile(r"^[0-9a-f]{32}$")
_AGENT = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def link_topic(namespace: str, uid: str, from_agent: str, to_agent: str) -> str:
    """The topic of one link: `from_agent`'s stdout to `to_agent`'s stdin."""
    return _topic(namespace, uid, "link", _agent(from_agent), _agent(to_agent))


def input_topic(namespace: str, uid: str, agent: str) -> str:
    """The pipeline's stdin into `agent`, fed by `oneosctl run`."""
    return _topic(namespace, uid, "in", _agent(agent))


def output_topic(namespace: str, uid: str, agent: str) -> str:
    """The pipeline's stdout out of `agent`, read by `oneosctl run` and `oneosctl logs PIPELINE`."""
    return _topic(namespace, uid, "out", _agent(agent))


def log_topic(namespace: str, uid: str, agent: str, incarnation: int | None = None) -> str:
    """`agent`'s stderr and log lines; with `incarnation`, those of that one run of it.

    Logs are not replayed, so each run of the process has a stream of its own.
    """
    topic = _topic(namespace, uid, "log", _agent(agent))
    return topic if incarnation is None else f"{topic}.{incarnation}"


def subscription(agent: str, incarnation: int) -> str:
    """The subscription through which one incarnation of a reading agent reads its inputs.

    A new incarnation gets a new subscription, which starts at the beginning of each input
    stream: that is how a restarted reader replays its input (see oneos/bus/reader.py).
    """
    if incarnation < 0:
        raise OneOSError(f"incarnation {incarnation} is negative; incarnations count restarts from 0")
    return f"oneos.{_agent(agent)}.{incarnation}"


def _topic(namespace: str, uid: str, kind: str, *parts: str) -> str:
    if not _NAMESPACE.match(namespace):
        raise OneOSError(f"Pulsar namespace {namespace!r} is not TENANT/NAMESPACE (such as public/default); "
                         f"fix pulsar.namespace in the boot record")
    if not _UID.match(uid):
        raise OneOSError(f"pipeline uid {uid!r} is not 32 lowercase hex digits")
    return f"persistent://{namespace}/oneos.{uid}.{kind}." + ".".join(parts)


def _agent(name: str) -> str:
    if not _AGENT.match(name):
        raise OneOSError(f"agent name {name!r} is not lowercase letters, digits and '-' "
                         f"(starting and ending with a letter or digit)")
    return name


def pipeline_prefix(namespace: str, uid: str) -> str:
    """What every topic of the pipeline with this uid starts with (and no other pipeline's does)."""
    return _topic(namespace, uid, "x")[:-len("x.")]


def full_name(topic: str) -> str:
    """`persistent://tenant/ns/name` for any of the short forms Pulsar accepts: the name a frame's MAC covers."""
    if "://" in topic:
        return topic
    parts = topic.split("/")
    return "persistent://" + ("/".join(parts) if len(parts) == 3 else "public/default/" + topic)
