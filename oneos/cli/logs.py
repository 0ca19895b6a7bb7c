"""`oneosctl logs PIPELINE/AGENT [-f]`: an agent's stderr, from wherever it runs; `oneosctl logs
PIPELINE [-f]`: the pipeline's output (its last stages' stdout).

Each run (incarnation) of an agent has its own log stream on the bus (see
oneos/nodeagent/bridge.py). Without -f the current run's log is printed up to now; with
-f it is followed, into the next runs too, until the agent is done for good.

A pipeline's output is one stream per agent that nobody reads, across its restarts: a
restarted agent's replay is dropped by offset, so each byte shows once. Without -f it is
printed up to now; with -f until its agents are done for good (or the pipeline is deleted).
"""

from __future__ import annotations

import threading
import time
from typing import Any, BinaryIO, Callable

import pulsar

from oneos import manifests, state
from oneos.bus import client as bus_client
from oneos.bus import frames, topics
from oneos.cli.output import Sink
from oneos.documents import DocumentError
from oneos.errors import OneOSError, UsageError
from oneos.nameserver.client import NameServer

POLL_MS = 500
ALIVE_CHECK_S = 2.0   # how often `logs -f PIPELINE` checks that the pipeline is still there


def resolve(ns: NameServer, name: str) -> tuple[str, str]:
    """PIPELINE/AGENT, or an agent name that only one pipeline has."""
    if "/" in name:
        pipeline, _, agent = name.partition("/")
        return pipeline, agent
    matches = [key for key in state.read_statuses(ns) if state.split_agent_id(key)[1] == name]
    if len(matches) == 1:
        return state.split_agent_id(matches[0])
    if not matches:
        raise OneOSError(f"no pipeline or agent {name!r}; `oneosctl get pipelines` and `oneosctl get agents` "
                         "list them")
    raise OneOSError(f"several pipelines have an agent {name!r}: "
                     f"{', '.join(k.replace('.', '/') for k in sorted(matches))}; name one as PIPELINE/AGENT")


def _status(ns: NameServer, pipeline: str, agent: str) -> dict[str, Any]:
    _, entry = ns.get(state.status_key(state.agent_id(pipeline, agent)))
    return state.decode(entry, "status") if entry else {}


def copy_log(client: pulsar.Client, topic: str, sink: Sink, *, follow: bool,
             alive: Callable[[], bool] | None = None, key: bytes | None = None) -> bool:
    """Copy one stream (a log, an output) to `sink`: to its end (True), or, without `follow`, to
    what is there now; with `follow`, also until `alive()`, asked now and then, says False. With
    `key` (the pipeline's: an output) frames whose MAC fails are skipped."""
    reader = client.create_reader(topic, pulsar.MessageId.earliest)
    seal = frames.Seal(key, topics.full_name(topic)) if key is not None else None
    link: frames.Link[None] = frames.Link(reorder_limit=1 << 40)   # a reader cannot hand frames back
    checked = time.monotonic()
    try:
        while not link.done:
            if not follow and not _more(reader):
                return False
            try:
                message = reader.read_next(timeout_millis=POLL_MS)
            except pulsar.Timeout:
                if not follow:
                    return False
                if alive is not None and time.monotonic() - checked >= ALIVE_CHECK_S:
                    if not alive():
                        return False
                    checked = time.monotonic()
                continue
            try:
                frame = frames.decode(message.data(), seal)
            except frames.MacError:
                continue   # forged, or from another link: counted by the agents' readers, not here
            for chunk in link.accept(frame, None).deliver:
                sink(chunk)
        return True
    finally:
        reader.close()


def _connect(ns: NameServer) -> tuple[pulsar.Client, str]:
    """A client of the cluster's broker, and the namespace of its topics, as the boot record says."""
    boot = state.read_boot(ns)
    return bus_client.connect(bus_client.access(boot["pulsar"])), boot["pulsar"]["namespace"]


def _has_run(status: dict[str, Any]) -> bool:
    """Whether an agent's stdio bridge has run (and so announced its streams): it is, or was, Running."""
    return status.get("incarnation", 0) > 1 or status.get("state") not in (None, "Pending", "Starting")


def _more(reader: pulsar.Reader) -> bool:
    """Whether the stream has more now; pulsar-lite cannot tell for a topic nobody wrote yet."""
    try:
        return reader.has_message_available()
    except pulsar.PulsarException:
        return True    # then read_next's timeout says it


def output(ns: NameServer, doc: dict[str, Any], out: BinaryIO, *, follow: bool) -> int:
    """Print the output of the pipeline `doc` (as stored): the stdout of each agent nobody reads, up to
    now or, with `follow`, to its end; several such agents' streams interleave, a frame at a time."""
    pipeline, uid = doc["metadata"]["name"], doc["metadata"]["uid"]
    agents = state.output_agents(doc)
    if not agents:
        raise OneOSError(f"pipeline {pipeline} has no output: every agent's stdout goes to another agent or a "
                         f"device; `oneosctl logs {pipeline}/AGENT` shows an agent's stderr")

    def alive(agent: str) -> Callable[[], bool]:
        def check() -> bool:
            _, entry = ns.get(state.pipeline_key(pipeline))
            if entry is None:
                return False
            now = state.decode(entry, "pipeline")
            return now["metadata"]["uid"] == uid and agent in state.output_agents(now)
        return check

    sink = Sink(out)
    try:
        key: bytes | None = state.read_pipe_key(ns, pipeline, uid)
    except DocumentError:
        key = None   # applied before pipes carried MACs: its frames have none to check
    client, namespace = _connect(ns)
    try:
        if not follow:
            # An agent that has not started yet has no stream to read: its output is empty.
            for agent in [a for a in agents if _has_run(_status(ns, pipeline, a))]:
                copy_log(client, topics.output_topic(namespace, uid, agent), sink, follow=False, key=key)
            return 0
        errors: list[BaseException] = []

        def copy(agent: str) -> None:
            try:
                copy_log(client, topics.output_topic(namespace, uid, agent), sink, follow=True, alive=alive(agent),
                         key=key)
            except BaseException as exc:  # noqa: BLE001 - raised again in the calling thread
                errors.append(exc)
        threads = [threading.Thread(target=copy, args=(a,), name=f"logs {pipeline}/{a}", daemon=True)
                   for a in agents]
        for thread in threads:
            thread.start()
        for thread in threads:
            # In steps: Ctrl-C may be handed to a Pulsar client thread, and its handler (KeyboardInterrupt)
            # runs only when this thread runs (see oneos/cli/run.py, SIGNAL_CHECK_S).
            while thread.is_alive():
                thread.join(0.25)
        if errors:
            raise errors[0]
        return 0
    finally:
        bus_client.close(client)


def logs(ns: NameServer, name: str, out: BinaryIO, *, follow: bool, previous: bool) -> int:
    """`oneosctl logs NAME`: a pipeline's output when a pipeline has that name, else an agent's log."""
    entry = None if "/" in name else ns.get(state.pipeline_key(name))[1]
    if entry is not None:
        if previous:
            raise UsageError(f"{name} is a pipeline: -p/--previous shows an agent's log of its run before, "
                             f"as `oneosctl logs -p {name}/AGENT`")
        return output(ns, state.decode_pipeline(entry), out, follow=follow)
    pipeline, agent = resolve(ns, name)
    status = _status(ns, pipeline, agent)
    # The log streams are named by the uid of what ran, which the status has: the stored manifest may have
    # changed since, or be unreadable.
    uid = status.get("uid") or manifests.read_pipeline(ns, pipeline)["metadata"]["uid"]
    incarnation = status.get("incarnation", 0) - (1 if previous else 0)
    if incarnation < 1:
        raise OneOSError(f"{pipeline}/{agent} has {'no previous run' if previous else 'not started yet'}"
                         f" ({status.get('state', 'no status')})")
    sink = Sink(out)
    client, namespace = _connect(ns)
    try:
        while True:
            ended = copy_log(client, topics.log_topic(namespace, uid, agent, incarnation), sink, follow=follow)
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
