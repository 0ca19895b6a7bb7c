"""Byte streams through a real broker: binary safety, fan-out/fan-in, duplicates, reordering, replay."""

from __future__ import annotations

import os
import random
import threading

import pulsar
import pytest

from oneos.bus import frames, topics
from oneos.bus.reader import _Input, unsubscribe
from oneos.bus.writer import WriterClosed
from tests.procs import wait_until

DEADLINE = 30


def finished(reader) -> None:
    assert reader.wait(DEADLINE), f"reader {reader.name} did not finish: delivered {reader.delivered} bytes"
    assert reader.error is None, reader.error


def feed_pipe(data: bytes, chunk_sizes: list[int]) -> int:
    """The read end of a pipe that a thread fills with `data` in chunks, then closes."""
    r, w = os.pipe()

    def fill():
        with os.fdopen(w, "wb", buffering=0) as out:
            view, sizes = memoryview(data), iter(chunk_sizes * (len(data) // max(1, sum(chunk_sizes)) + 1))
            while view:
                size = next(sizes)
                out.write(view[:size])
                view = view[size:]

    threading.Thread(target=fill, daemon=True).start()
    return r


def test_five_megabytes_of_random_bytes_through_a_pumped_pipe(client, names, ends):
    data = random.Random(1).randbytes(5 * 1024 * 1024)
    topic = names.link()
    reader, out = ends.collector(client, [topic])
    writer = ends.writer(client, [topic])
    writer.pump(feed_pipe(data, [1, 70000, 4096, 13, 65536]))
    finished(reader)
    assert reader.done.is_set() and out == data
    assert writer.flush(DEADLINE) and writer.offset == len(data)


def test_empty_stream_ends_with_nothing(client, names, ends):
    topic = names.link()
    reader, out = ends.collector(client, [topic])
    r, w = os.pipe()
    os.close(w)
    ends.writer(client, [topic]).pump(r).join(DEADLINE)
    finished(reader)
    assert reader.done.is_set() and out == b""


def test_an_announced_topic_has_an_end_to_ask_for_and_delivers_nothing_extra(client, names, ends):
    topic = names.link()
    writer = ends.writer(client, [topic])
    writer.announce()
    assert writer.flush(DEADLINE)
    reader = client.create_reader(topic, pulsar.MessageId.earliest)
    try:
        assert reader.has_message_available()   # on a topic nobody wrote to, pulsar-lite fails this call
    finally:
        reader.close()
    collector, out = ends.collector(client, [topic])
    writer.write(b"after the announcement\n")
    writer.finish()
    finished(collector)
    assert out == b"after the announcement\n"


def test_no_trailing_newline_and_nul_bytes_are_kept(client, names, ends):
    topic = names.link()
    writer = ends.writer(client, [topic])
    writer.write(b"one\ntwo\x00three")
    writer.write(b"")
    writer.finish()
    reader, out = ends.collector(client, [topic])  # subscribes after the writer finished: from the start
    finished(reader)
    assert out == b"one\ntwo\x00three"


def test_fan_out_sends_every_byte_to_every_link(client, names, ends):
    links = [names.link("src", f"dst-{i}") for i in range(3)]
    collectors = [ends.collector(client, [topic]) for topic in links]
    writer = ends.writer(client, links)
    data = b"".join(b"line %d\n" % i for i in range(20000))
    writer.write(data)
    writer.finish()
    for reader, out in collectors:
        finished(reader)
        assert out == data


def test_fan_in_keeps_each_links_order_and_interleaves_whole_frames(client, names, ends):
    links = {src: names.link(src, "sink") for src in ("x", "y", "z")}
    chunks = []
    reader = ends.reader(client, list(links.values()), on_data=chunks.append).start()
    writers = {src: ends.writer(client, [topic], name=src) for src, topic in links.items()}
    for i in range(300):  # one frame per write, the writers taking turns
        for src, writer in writers.items():
            writer.write(b"%s%d\n" % (src.encode(), i))
    for writer in writers.values():
        writer.finish()
    finished(reader)
    for src in writers:
        mine = [c for c in chunks if c.startswith(src.encode())]
        assert mine == [b"%s%d\n" % (src.encode(), i) for i in range(300)]
    assert len(chunks) == 900


def raw_producer(client, topic):
    return client.create_producer(topic, batching_enabled=False)


def test_duplicated_and_reordered_frames_are_delivered_once_in_order(client, names, ends):
    """Frames crafted and published out of order, some twice, overlapping, as two incarnations."""
    rng = random.Random(5)
    stream = rng.randbytes(200_000)
    topic = names.link()
    cut, start = [], 0
    while start < len(stream):
        size = rng.choice([1, 100, 5000, 30000])
        cut.append(frames.encode(1, start, stream[start:start + size]))
        start += size
    straddling = [frames.encode(2, s, stream[s:s + 7000]) for s in range(0, len(stream), 6000)]
    published = cut + rng.sample(cut, len(cut) // 2) + straddling + [frames.encode(1, len(stream), eof=True)]
    rng.shuffle(published)
    producer = raw_producer(client, topic)
    for payload in published:
        producer.send(payload)
    producer.close()
    reader, out = ends.collector(client, [topic])
    finished(reader)
    assert out == stream
    link = reader.links[topic]
    assert link.duplicate_bytes > 0 and link.max_buffered > 0 and reader.received <= len(published)


def test_a_full_reorder_buffer_hands_frames_back_to_the_broker(client, names, ends):
    """The far frames go back (negative ack) and come again once the gap has filled."""
    topic = names.link()
    stream = bytes(range(256)) * 40
    pieces = [frames.encode(0, s, stream[s:s + 512]) for s in range(0, len(stream), 512)]
    producer = raw_producer(client, topic)
    for payload in pieces[1:] + [pieces[0], frames.encode(0, len(stream), eof=True)]:
        producer.send(payload)
    producer.close()
    reader, out = ends.collector(client, [topic], reorder_limit=2048)
    finished(reader)
    assert out == stream
    assert reader.retried > 0 and reader.links[topic].max_buffered <= 2048


def test_a_message_that_is_not_a_frame_is_skipped(client, names, ends):
    topic = names.link()
    producer = raw_producer(client, topic)
    for payload in (b"garbage", frames.encode(0, 0, b"ok"), b"\x99" * 20, frames.encode(0, 2, eof=True)):
        producer.send(payload)
    producer.close()
    reader, out = ends.collector(client, [topic])
    finished(reader)
    assert out == b"ok"


def lines(first: int, last: int) -> bytes:
    return b"".join(b"%d\n" % i for i in range(first, last))


def test_writer_restart_replays_from_zero_and_the_reader_delivers_each_line_once(client, names, ends):
    topic = names.link("seq", "cat")
    reader, out = ends.collector(client, [topic])
    first = ends.writer(client, [topic], incarnation=1)
    for i in range(500):
        first.write(b"%d\n" % i)
    wait_until(lambda: out == lines(0, 500), DEADLINE, "the first incarnation's 500 lines")
    first.close()  # the process died: no EOF
    second = ends.writer(client, [topic], incarnation=2)
    whole = lines(0, 1000)
    for start in range(0, len(whole), 1000):  # the new process writes in other chunks, from offset 0
        second.write(whole[start:start + 1000])
    second.finish()
    finished(reader)
    assert out == whole
    link = reader.links[topic]
    assert link.duplicate_bytes == len(lines(0, 500)) and link.incarnation == 2


def test_reader_restart_reads_its_input_again_from_the_start(client, names, ends):
    """A new incarnation's subscription starts at the beginning, though the old one acknowledged it all."""
    topic = names.link("seq", "sort")
    writer = ends.writer(client, [topic])
    data = lines(0, 3000)
    for start in range(0, len(data), 500):
        writer.write(data[start:start + 500])
    writer.finish()

    first, first_out = ends.collector(client, [topic], topics.subscription("sort", 0))
    finished(first)
    assert first_out == data  # everything delivered and acknowledged

    taken = bytearray()

    def dies_after_some(chunk: bytes) -> None:
        if len(taken) > 1000:
            raise BrokenPipeError  # the second incarnation exits after reading a little
        taken.extend(chunk)

    second = ends.reader(client, [topic], topics.subscription("sort", 1), on_data=dies_after_some).start()
    assert second.wait(DEADLINE) and second.closed.is_set()
    assert data.startswith(taken) and 0 < len(taken) < len(data)

    third, third_out = ends.collector(client, [topic], topics.subscription("sort", 2))
    finished(third)
    assert third_out == data


def test_an_old_incarnations_subscription_can_be_deleted(client, names, ends):
    topic = names.link()
    writer = ends.writer(client, [topic])
    writer.write(b"abc")
    writer.finish()
    reader, out = ends.collector(client, [topic], "oneos.b.0")
    finished(reader)
    reader.unsubscribe(client)
    unsubscribe(client, [topic], "oneos.b.never-used")
    again, again_out = ends.collector(client, [topic], "oneos.b.0")  # a new subscription of that name
    finished(again)
    assert out == again_out == b"abc"


def test_stop_releases_a_waiting_reader(client, names, ends):
    reader, _ = ends.collector(client, [names.link()])
    reader.stop()
    assert reader.finished.is_set() and not reader.done.is_set() and reader.error is None


def test_writes_after_finish_or_close_are_refused(client, names, ends):
    writer = ends.writer(client, [names.link()])
    writer.finish()
    writer.finish()  # idempotent
    with pytest.raises(WriterClosed):
        writer.write(b"late")
    writer.close()
    writer.close()
    with pytest.raises(WriterClosed):
        writer.write(b"later")


def test_raw_pulsar_keeps_what_it_delivered_to_an_acknowledging_subscription(client, names):
    """What replay relies on: acknowledged messages stay readable by a new subscription (pulsar-lite)."""
    topic = names.link()
    producer = raw_producer(client, topic)
    for i in range(10):
        producer.send(b"%d" % i)
    producer.close()
    seen = []
    for subscription in ("first", "second"):
        consumer = client.subscribe(topic, subscription, consumer_type=pulsar.ConsumerType.Shared,
                                    initial_position=pulsar.InitialPosition.Earliest)
        got = []
        for _ in range(10):
            msg = consumer.receive(DEADLINE * 1000)
            got.append(msg.data())
            consumer.acknowledge(msg)
        consumer.close()  # flushes the acknowledgements
        seen.append(got)
    assert seen[0] == seen[1] == [b"%d" % i for i in range(10)]


def test_only_a_link_that_may_be_missing_messages_subscribes_again(client, names, ends):
    """The remedy for pulsar-lite leaving messages undispatched, and no churn on idle links."""
    links = [names.link("a", "c"), names.link("b", "c")]
    reader, out = ends.collector(client, links)
    first, second = ends.writer(client, [links[0]]), ends.writer(client, [links[1]])
    first.write(b"a1\n")
    wait_until(lambda: out == b"a1\n", DEADLINE, "the first line")
    # "b" has received nothing: it cannot ask an empty topic, so it subscribes again (0.1 s, 0.3 s, 0.7 s...);
    # "a" has everything its topic holds, so it only asks.
    wait_until(lambda: reader._inputs[1].resubscribed >= 3, DEADLINE, "link b to subscribe again")
    assert reader._inputs[0].resubscribed == 0
    first.write(b"a2\n")
    first.finish()
    second.write(b"b1\n")
    second.finish()
    finished(reader)
    assert sorted(out.splitlines()) == [b"a1", b"a2", b"b1"] and out.index(b"a1") < out.index(b"a2")


class FakeConsumer:
    def __init__(self, last_id, connected=True):
        self.last_id, self.connected = last_id, connected

    def is_connected(self):
        return self.connected

    def get_last_message_id(self):
        if self.last_id is None:
            raise pulsar.PulsarException("Topic has no messages")
        return self.last_id


def test_a_link_is_behind_when_the_topic_holds_more_than_it_received(client, names, ends):
    topic = names.link()
    producer = raw_producer(client, topic)
    ids = [producer.send(frames.encode(0, i, b"x")) for i in range(2)]
    producer.close()
    inp = _Input(client, topic, "oneos.b.0", "test", 8, 1 << 20)
    try:
        wait_until(inp.receive, DEADLINE, "the first message")
        real = inp.consumer
        inp.consumer = FakeConsumer(ids[1])
        assert inp._behind()                      # the second one was not received
        inp.consumer = FakeConsumer(inp._last_id)
        assert not inp._behind()                  # everything the topic holds was received
        inp.consumer = FakeConsumer(ids[1], connected=False)
        assert not inp._behind()                  # a disconnected consumer catches up by itself
        inp.consumer = FakeConsumer(inp._last_id)
        inp._retrying = True
        assert inp._behind()                      # frames handed back may not come again
        inp.consumer = real
    finally:
        inp.close()
