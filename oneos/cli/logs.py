"""`oneosctl logs PIPELINE/AGENT [-f]`: an agent's stderr (and unread stdout), from wherever it runs.

Each run (incarnation) of an agent has its own log stream on the bus (see
oneos/nodeagent/bridge.py). Without -f the current run's log is printed up to now; with
-f it is followed, into the next runs too, until the agent is done for good.
"""

from __future__ import annotations

import time
from typing import Any, BinaryIO

import pulsar

from oneos import manifests, state
from oneos.bus import client as bus_client
from oneos.bus import frames, topics
from oneos.errors import OneOSError
from oneos.nameserver.client import NameServer

POLL_MS = 500


def resolve(ns: NameServer, name: str) -> tuple[str, str]:
    """PIPELINE/AGENT, or an agent name that only one pipeline has."""
    if "/" in name:
        pipeline, _, agent = name.partition("/")
        return pipeline, agent
    matches = [key for key in state.read_statuses(ns) if state.split_agent_id(key)[1] == name]
    if len(matches) == 1:
        return state.split_agent_id(matches[0])
    if not matches:
        raise OneOSError(f"no agent {name!r}; `oneosctl get agents` lists them as PIPELINE/AGENT")
    raise OneOSError(f"several pipelines have an agent {name!r}: "
                     f"{', '.join(k.replace('.', '/') for k in sorted(matches))}; name one as PIPELINE/AGENT")


def _status(ns: NameServer, pipeline: str, agent: str) -> dict[str, Any]:
    _, entry = ns.get(state.status_key(state.agent_id(pipeline, agent)))
    return state.decode(entry, "status") if entry else {}


def copy_log(client: pulsar.Client, topic: str, out: BinaryIO, *, follow: bool) -> bool:
    """Copy one log stream to `out`: to its end (True), or, without `follow`, to what is there now."""
    reader = client.create_reader(topic, pulsar.MessageId.earliest)
    link: frames.Link[None] = frames.Link(reorder_limit=1 << 40)   # a reader cannot hand frames back
    try:
        while not link.done:
            if not follow and not _more(reader):
                return False
            try:
                message = reader.read_next(timeout_millis=POLL_MS)
            except pulsar.Timeout:
                if follow:
                    continue
                return False
            for chunk in link.accept(frames.decode(message.data()), None).deliver:
                out.write(chunk)
                out.flush()
        return True
    finally:
        reader.close()


def _more(reader: pulsar.Reader) -> bool:
    """Whether the stream has more now; pulsar-lite cannot tell for a topic nobody wrote yet."""
    try:
        return reader.has_message_available()
    except pulsar.PulsarException:
        return True    # then read_next's timeout says it


def logs(ns: NameServer, name: str, out: BinaryIO, *, follow: bool, previous: bool) -> int:
    pipeline, agent = resolve(ns, name)
    status = _status(ns, pipeline, agent)
    # The log streams are named by the uid of what ran, which the status has: the stored manifest may have
    # changed since, or be unreadable.
    uid = status.get("uid") or manifests.read_pipeline(ns, pipeline)["metadata"]["uid"]
    incarnation = status.get("incarnation", 0) - (1 if previous else 0)
    if incarnation < 1:
        raise OneOSError(f"{pipeline}/{agent} has {'no previous run' if previous else 'not started yet'}"
                         f" ({status.get('state', 'no status')})")
    boot = state.read_boot(ns)
    client = bus_client.connect(boot["pulsar"]["url"])
    namespace = boot["pulsar"]["namespace"]
    try:
        while True:
            ended = copy_log(client, topics.log_topic(namespace, uid, agent, incarnation), out, follow=follow)
            if not follow or not ended:
                return 0
            # That run is over: follow the next one, if the agent is started again.
            while True:
                status = _status(ns, pipeline, agent)
                if status.get("incarnation", 0) > incarnation:
                    incarnation += 1
                    break
                if not status or status["state"] in state.FINAL_STATES:
                    return 0
                time.sleep(POLL_MS / 1000)
    finally:
        bus_client.close(client)
