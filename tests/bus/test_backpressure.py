"""Back-pressure: a stalled reader and a stalled broker hold bounded data, and nothing is dropped."""

from __future__ import annotations

import random
import sys
import threading

from oneos.bus import frames
from tests.procs import wait_until

FRAME = frames.MAX_DATA


def test_a_stalled_reader_takes_no_more_than_its_receiver_queue(own_broker, own_client, names, ends):
    topic = names.link()
    data = random.Random(3).randbytes(320 * FRAME)  # 20 MiB
    queue = 8
    release, out = threading.Event(), bytearray()

    def slow(chunk: bytes) -> None:
        release.wait(60)
        out.extend(chunk)

    reader = ends.reader(own_client, [topic], on_data=slow, receiver_queue=queue).start()
    writer = ends.writer(own_client, [topic])
    writer.write(data)
    writer.finish()
    assert writer.flush(30)  # the broker stored the whole stream: a slow reader does not hold the writer

    # The broker sends the consumer what its flow permits allow, and no more.
    wait_until(lambda: own_broker.metric("pulsar_broker_out_messages_total") >= queue, 30,
               "the broker to fill the reader's queue")
    sent_to_reader = own_broker.metric("pulsar_broker_out_messages_total")
    assert sent_to_reader <= 2 * queue
    assert own_broker.metric("pulsar_broker_out_bytes_total") <= 2 * queue * (FRAME + 1024)
    assert reader.received == 1 and reader.links[topic].buffered == 0

    release.set()
    assert reader.wait(30) and reader.error is None
    assert out == data and reader.links[topic].max_buffered == 0


CHILD = """
import random, sys
rng = random.Random(11)
for _ in range(300):
    sys.stdout.buffer.write(rng.randbytes(65536))
"""


def child_output() -> bytes:
    rng = random.Random(11)
    return b"".join(rng.randbytes(65536) for _ in range(300))


def test_a_stalled_broker_blocks_the_writer_and_the_child_behind_it(own_broker, own_client, names, ends, children):
    topic = names.link()
    reader, out = ends.collector(own_client, [topic])
    pending = 16
    writer = ends.writer(own_client, [topic], max_pending=pending)
    own_broker.pause()
    child, _, child_out = children.spawn([sys.executable, "-c", CHILD])
    writer.pump(child_out)
    # The producer holds at most `pending` frames; then the pump thread blocks in send,
    # stops reading the pipe, and the child blocks writing to it.
    # (`pending` counts the frame the pump thread is blocked on too.)
    wait_until(lambda: writer.pending > pending, 30, "the producer's queue to fill")
    read_so_far = writer.offset
    assert read_so_far <= (pending + 1) * FRAME
    assert child.poll() is None  # 19 MiB cannot fit in a pipe and 17 frames: it is blocked
    assert writer.pending == pending + 1 and writer.offset == read_so_far

    own_broker.resume()
    assert reader.wait(60) and reader.error is None
    assert child.wait(30) == 0
    assert out == child_output()
