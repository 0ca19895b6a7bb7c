"""Genuine frames captured from a link topic and published again (issue 12, item 7): frames of
an earlier incarnation of the writer (before it was restarted) and of an earlier epoch (before
its node was lost and it was placed anew), and old frames of the current one, long after the
stream moved on. Their MACs are right, so no reader refuses them: they are dropped by offset,
and by epoch, and the output stays exactly the numbered lines, for the running sink and for a
sink restarted afterwards, which reads the whole topic, replays included, from its start.

The frames are read and published with the official Pulsar client, through a subscription
of the attacker's own: nothing of OneOS's reader or writer is used.
"""

from __future__ import annotations

import os
import secrets
import signal
import struct

import pulsar
import pytest

from oneos import state
from oneos.bus import topics
from tests.conftest import running_cluster
from tests.faults.numbered import NumberedStream
from tests.faults.test_node_loss import LOSS_DEADLINE, ON_BASE, ON_WORKERS, WORKER, running_elsewhere

HEADER = struct.Struct(">BQQ")   # version << 4 | flags, incarnation, offset
MAC_FLAG = 0x02
TRAILER = 32                     # nonce and MAC


@pytest.fixture
def workers(tmp_path):
    with running_cluster(tmp_path, {"n1": ["--kernel"], "n2": WORKER, "n3": WORKER}) as c:
        yield c


def frames_until(client: pulsar.Client, topic: str, done) -> list[tuple[int, int, int, bytes]]:
    """(epoch, run, end offset, payload) of the frames with data on `topic`, from its start, until `done(list)`."""
    consumer = client.subscribe(topic, f"attacker-{secrets.token_hex(4)}", consumer_type=pulsar.ConsumerType.Shared,
                                initial_position=pulsar.InitialPosition.Earliest)
    try:
        got: list[tuple[int, int, int, bytes]] = []
        while not done(got):
            msg = consumer.receive(20_000)
            consumer.acknowledge(msg)
            payload = msg.data()
            _, incarnation, offset = HEADER.unpack_from(payload)
            size = len(payload) - HEADER.size - TRAILER
            if size > 0:
                got.append((incarnation >> 32, incarnation & 0xFFFFFFFF, offset + size, payload))
        return got
    finally:
        consumer.close()


def test_replayed_frames_of_earlier_incarnations_and_epochs_are_dropped_and_the_output_stays_exact(workers, tmp_path):
    stream = NumberedStream(tmp_path, name="replayed", lines=60_000, gate_at=40_000,
                            requires={"source": ON_BASE, "sink": ON_BASE, "relay": ON_WORKERS})
    sink = next(a for a in stream.manifest["spec"]["agents"] if a["name"] == "sink")
    sink["restart"] = "on-failure"
    stream.apply(workers)
    uid = state.decode_pipeline(workers.ns.get(state.pipeline_key(stream.name))[1])["metadata"]["uid"]
    into_sink = topics.link_topic(state.read_boot(workers.ns)["pulsar"]["namespace"], uid, "relay", "sink")
    gated = len("".join(f"{i}\n" for i in range(1, 40_001)))   # the bytes before the source's gate

    # The relay's first incarnation, killed mid-stream; its second, on the same node (same epoch).
    stream.wait_for_lines(5_000)
    first = workers.statuses(stream.name)["relay"]
    os.kill(first["pid"], signal.SIGKILL)
    second = workers.wait_for(lambda: (s := workers.statuses(stream.name)["relay"])["state"] == "Running"
                              and s["incarnation"] > first["incarnation"] and s, 30, "the relay to run again")
    assert second["epoch"] == first["epoch"]
    # Its node lost: a third copy on the other worker, in the next epoch.
    stream.wait_for_lines(15_000)
    workers.lose(second["node"])
    third = workers.wait_for(lambda: running_elsewhere(workers, stream.name, "relay", second["node"]),
                             LOSS_DEADLINE, "the relay to run on the other worker")
    assert third["epoch"] == first["epoch"] + 1
    stream.wait_for_lines(40_000)   # everything up to the gate is out: the stream moved on

    client = pulsar.Client(workers.broker.url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
    try:
        captured = frames_until(client, into_sink, lambda got: any(
            epoch == third["epoch"] and end == gated for epoch, _, end, _ in got))
        copies = {(epoch, run) for epoch, run, _, _ in captured}
        assert {(first["epoch"], first["incarnation"]), (second["epoch"], second["incarnation"]),
                (third["epoch"], third["incarnation"])} <= copies, copies
        # Every genuine frame sent again: the killed incarnation's, the lost epoch's, the current one's.
        replayer = client.create_producer(into_sink, batching_enabled=False)
        for _, _, _, payload in captured:
            replayer.send(payload)
        # Then one forged frame: once the sink counts it refused, it has read the replays before it.
        epoch_run = (third["epoch"] << 32) | third["incarnation"]
        replayer.send(HEADER.pack(0x10 | MAC_FLAG, epoch_run, gated) + b"FORGED\n" + secrets.token_bytes(TRAILER))
        replayer.close()
        workers.wait_for(lambda: workers.statuses(stream.name)["sink"].get("refusedFrames", 0) >= 1, 30,
                         "the sink to read past the replayed frames")
        assert stream.out.read_bytes() == stream.expected()[:gated]   # nothing replayed came out twice

        # A sink started again reads the topic from its start, replays and the lost epoch's frames included.
        sink_before = workers.statuses(stream.name)["sink"]
        os.kill(sink_before["pid"], signal.SIGKILL)
        workers.wait_for(lambda: (s := workers.statuses(stream.name)["sink"])["state"] == "Running"
                         and s["incarnation"] > sink_before["incarnation"], 30, "the sink to run again")
        stream.open_gate()
        final = stream.wait_finished(workers, 120)
        assert {a: (s["state"], s.get("exitCode")) for a, s in final.items()} == {
            "source": ("Exited", 0), "relay": ("Exited", 0), "sink": ("Exited", 0)}
        stream.assert_exact()
    finally:
        client.close()
        workers.ctl("delete", "pipeline", stream.name)
        stream.open_gate()
