"""Frames put straight onto a pipeline's link topics by whoever can reach the broker (issue 12,
items 4 and 7): forged ones (a random MAC, none), a genuine frame copied from another link, and
genuine frames sent again. While numbered lines stream through three stages on three nodes, the
readers drop every forged or moved frame and count it (`oneosctl describe`), replays are dropped
by offset, and the output is exactly the numbered lines.

The frames are built by hand from the wire format (frames.py), with the official Pulsar client:
nothing of OneOS's writer is used to make them.
"""

from __future__ import annotations

import re
import secrets
import struct

import pulsar
import pytest

from oneos import state
from oneos.bus import topics
from tests.conftest import running_cluster
from tests.faults.numbered import NumberedStream

HEADER = struct.Struct(">BQQ")   # version << 4 | flags, incarnation, offset
EOF_FLAG, MAC_FLAG = 0x01, 0x02


def frame(incarnation: int, offset: int, data: bytes, *, flags: int = 0, mac: bytes = b"") -> bytes:
    return HEADER.pack((1 << 4) | flags, incarnation, offset) + data + mac


@pytest.fixture
def cluster(tmp_path):
    with running_cluster(tmp_path, {"n1": ["--kernel"], "n2": ["--no-kernel"], "n3": ["--no-kernel"]}) as c:
        yield c


def received(client: pulsar.Client, topic: str, at_least: int) -> list[bytes]:
    """The first messages on `topic`, read from its start through a subscription of our own."""
    consumer = client.subscribe(topic, f"attacker-{secrets.token_hex(4)}", consumer_type=pulsar.ConsumerType.Shared,
                                initial_position=pulsar.InitialPosition.Earliest)
    try:
        got = []
        while len(got) < at_least:
            msg = consumer.receive(10_000)
            consumer.acknowledge(msg)
            if len(msg.data()) > HEADER.size + 32:   # frames with data, not the empty first one
                got.append(msg.data())
        return got
    finally:
        consumer.close()


def test_forged_moved_and_replayed_frames_are_dropped_and_the_output_stays_exact(cluster, tmp_path):
    stream = NumberedStream(tmp_path, name="forged", lines=40_000, gate_at=20_000)
    stream.apply(cluster)
    doc = state.decode_pipeline(cluster.ns.get(state.pipeline_key(stream.name))[1])
    namespace = state.read_boot(cluster.ns)["pulsar"]["namespace"]
    uid = doc["metadata"]["uid"]
    into_relay = topics.link_topic(namespace, uid, "source", "relay")
    into_sink = topics.link_topic(namespace, uid, "relay", "sink")
    length = len(stream.expected())
    client = pulsar.Client(cluster.broker.url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
    try:
        stream.wait_for_lines(20_000)   # the source waits at its gate: the readers are live, the stream open
        relay = cluster.statuses(stream.name)["relay"]
        wire = (relay["epoch"] << 32) | relay["incarnation"]
        genuine_into_relay = received(client, into_relay, 3)
        genuine_into_sink = received(client, into_sink, 3)
        forger = client.create_producer(into_sink, batching_enabled=False)
        # A random nonce and MAC, at the stream's end: without MACs it would be delivered after the last line.
        forger.send(frame(wire, length, b"FORGED AT THE END\n", flags=MAC_FLAG, mac=secrets.token_bytes(32)))
        # No MAC at all, and one marked with a MAC but too short to hold it.
        forger.send(frame(wire, length, b"NO MAC\n"))
        forger.send(frame(wire, length, b"", flags=MAC_FLAG))
        # A forged end of the stream, halfway: without MACs the output would stop there.
        forger.send(frame(wire, length // 2, b"", flags=EOF_FLAG | MAC_FLAG, mac=secrets.token_bytes(32)))
        # A genuine frame of another link (source -> relay), moved to this one.
        forger.send(genuine_into_relay[0])
        # Genuine frames of this link sent again: dropped by offset, not refused.
        for payload in genuine_into_sink:
            forger.send(payload)
        forger.close()
        to_relay = client.create_producer(into_relay, batching_enabled=False)
        to_relay.send(frame(wire, length, b"FORGED INTO THE RELAY\n", flags=MAC_FLAG, mac=secrets.token_bytes(32)))
        to_relay.close()
        # Counted while the agents run (their node writes it into their status), not only at their end.
        live = lambda: cluster.statuses(stream.name)["sink"]   # noqa: E731
        cluster.wait_for(lambda: live()["state"] == "Running" and live().get("refusedFrames", 0) >= 5, 20,
                         "the running sink's status to count the refused frames")
        assert stream.count() == 20_000   # nothing forged got through meanwhile either
        stream.open_gate()

        final = stream.wait_finished(cluster, 120)
        assert {a: (s["state"], s.get("exitCode")) for a, s in final.items()} == {
            "source": ("Exited", 0), "relay": ("Exited", 0), "sink": ("Exited", 0)}
        stream.assert_exact()
        assert final["sink"].get("refusedFrames", 0) >= 5, final["sink"]
        assert final["relay"].get("refusedFrames", 0) >= 1, final["relay"]
        described = cluster.ctl("describe", "pipeline", stream.name)
        assert described.returncode == 0, described.stderr
        counts = dict(re.findall(r"^  (relay|sink): (\d+)$", described.stdout.split("Refused frames")[-1], re.M))
        assert int(counts.get("sink", 0)) >= 5 and int(counts.get("relay", 0)) >= 1, described.stdout
    finally:
        client.close()
        cluster.ctl("delete", "pipeline", stream.name)
        stream.open_gate()
