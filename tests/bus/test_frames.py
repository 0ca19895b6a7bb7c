"""Frames and the per-link state machine, as pure functions: no broker, no threads, no time."""

from __future__ import annotations

import random

import pytest

from oneos.bus import frames
from oneos.bus.frames import Frame, FrameError, Link


def test_encode_decode_round_trip_is_binary_safe():
    data = bytes(range(256)) * 3 + b"\x00"
    frame = frames.decode(frames.encode(7, 2**40 + 3, data))
    assert (frame.incarnation, frame.offset, bytes(frame.data), frame.eof) == (7, 2**40 + 3, data, False)
    assert frame.end == 2**40 + 3 + len(data)


def test_header_layout_is_version_flags_incarnation_offset():
    payload = frames.encode(2**64 - 1, 5, eof=True)
    assert payload == bytes([0x11]) + b"\xff" * 8 + (5).to_bytes(8, "big")
    eof = frames.decode(payload)
    assert eof.eof and eof.offset == 5 and not eof.data and eof.incarnation == 2**64 - 1


def test_empty_data_frame_round_trips():
    frame = frames.decode(frames.encode(0, 0, b""))
    assert not frame.eof and frame.end == 0 and bytes(frame.data) == b""


@pytest.mark.parametrize("payload, reason", [
    (b"", "header"),
    (b"\x10" + b"\x00" * 15, "header"),
    (b"\x20" + b"\x00" * 16, "version 2"),
    (b"\x11" + b"\x00" * 16 + b"x", "EOF frame with 1 bytes"),
])
def test_decode_rejects_what_is_not_a_frame(payload, reason):
    with pytest.raises(FrameError, match=reason):
        frames.decode(payload)


def test_encode_refuses_an_eof_frame_with_data():
    with pytest.raises(ValueError):
        frames.encode(0, 0, b"x", eof=True)


def f(offset: int, data: bytes, incarnation: int = 0) -> Frame:
    return Frame(incarnation, offset, data)


def eof(length: int, incarnation: int = 0) -> Frame:
    return Frame(incarnation, length, b"", True)


class Feed:
    """A Link fed frames in turn, with what it delivered and which tokens it settled."""

    def __init__(self, reorder_limit: int = 1 << 20) -> None:
        self.link: Link[str] = Link(reorder_limit)
        self.out = bytearray()
        self.acked: list[str] = []
        self.retried: list[str] = []

    def __call__(self, frame: Frame, token: str = "") -> "Feed":
        step = self.link.accept(frame, token)
        for chunk in step.deliver:
            self.out += chunk
        self.acked += step.ack
        self.retried += step.retry
        return self


def test_in_order_frames_are_delivered_and_acked_at_once():
    feed = Feed()(f(0, b"ab"), "1")(f(2, b"cd"), "2")
    assert feed.out == b"abcd" and feed.acked == ["1", "2"] and not feed.link.done
    feed(eof(4), "3")
    assert feed.link.done and feed.acked == ["1", "2", "3"]


def test_duplicate_is_dropped_and_acked():
    feed = Feed()(f(0, b"ab"), "1")(f(0, b"ab"), "dup")
    assert feed.out == b"ab" and feed.acked == ["1", "dup"] and feed.link.duplicate_bytes == 2


def test_early_frame_waits_for_the_gap_and_is_acked_only_when_delivered():
    feed = Feed()(f(2, b"cd"), "late")
    assert feed.out == b"" and feed.acked == [] and feed.link.buffered == 2 and feed.link.waiting == 1
    feed(f(0, b"ab"), "first")
    assert feed.out == b"abcd" and feed.acked == ["first", "late"] and feed.link.buffered == 0


def test_straddling_frame_is_delivered_from_the_right_byte():
    feed = Feed()(f(0, b"abc"), "1")(f(1, b"bcdef"), "2")
    assert feed.out == b"abcdef" and feed.link.duplicate_bytes == 2


def test_eof_before_the_data_waits_for_the_data():
    feed = Feed()(eof(3), "eof")(f(0, b"a"), "1")
    assert not feed.link.done and feed.acked == ["1"]
    feed(f(1, b"bc"), "2")
    assert feed.link.done and feed.out == b"abc" and set(feed.acked) == {"1", "2", "eof"}


def test_empty_stream_is_done_at_its_eof():
    feed = Feed()(eof(0), "eof")
    assert feed.link.done and feed.out == b"" and feed.acked == ["eof"]


def test_anything_after_the_end_is_settled_not_delivered():
    feed = Feed()(f(0, b"ab"), "1")(eof(2), "eof")(f(0, b"ab"), "dup")(eof(2), "eof2")(f(2, b"zz"), "extra")
    assert feed.out == b"ab" and feed.acked == ["1", "eof", "dup", "eof2", "extra"]


def test_writer_restart_resends_from_zero_and_only_new_bytes_are_delivered():
    lines = b"".join(b"%d\n" % i for i in range(1000))
    first = lines[:lines.index(b"500\n")]
    feed = Feed()
    for i, start in enumerate(range(0, len(first), 10)):
        feed(f(start, first[start:start + 10], incarnation=1), f"i1-{i}")
    for i, start in enumerate(range(0, len(lines), 7)):  # a new incarnation cuts its frames elsewhere
        feed(f(start, lines[start:start + 7], incarnation=2), f"i2-{i}")
    feed(eof(len(lines), incarnation=2))
    assert feed.out == lines and feed.link.done
    assert feed.link.duplicate_bytes == len(first) and feed.link.incarnation == 2


def test_a_second_eof_with_another_length_does_not_change_the_stream():
    feed = Feed()(f(0, b"ab"), "1")(eof(4, incarnation=1), "full")(eof(2, incarnation=2), "short")
    assert not feed.link.done and feed.link.eof_conflicts == 1 and "short" in feed.acked
    feed(f(2, b"cd"), "2")
    assert feed.out == b"abcd" and feed.link.done


def test_data_past_a_known_eof_is_not_delivered():
    feed = Feed()(eof(3), "eof")(f(2, b"cdef"), "over")(f(0, b"ab"), "1")
    assert feed.out == b"abc" and feed.link.done


def test_reorder_buffer_is_bounded_and_hands_back_the_farthest_frame():
    feed = Feed(reorder_limit=4)(f(2, b"cd"), "near")(f(6, b"gh"), "far")
    assert feed.link.buffered == 4 and feed.retried == []
    feed(f(4, b"ef"), "middle")  # nearer than "far": "far" goes back to the broker
    assert feed.retried == ["far"] and feed.link.buffered == 4
    feed(f(8, b"ij"), "farther")  # farther than everything buffered: it goes back itself
    assert feed.retried == ["far", "farther"] and feed.link.max_buffered == 4
    feed(f(0, b"ab"), "first")
    assert feed.out == b"abcdef"
    feed(f(6, b"gh"), "far")(f(8, b"ij"), "farther")(eof(10), "eof")
    assert feed.out == b"abcdefghij" and feed.link.done


def test_one_frame_larger_than_the_limit_may_wait_in_an_empty_buffer():
    feed = Feed(reorder_limit=2)(f(1, b"bcdef"), "big")
    assert feed.retried == [] and feed.link.buffered == 5
    feed(f(0, b"a"), "a")(eof(6))
    assert feed.out == b"abcdef" and feed.link.done


def cuts(rng: random.Random, stream: bytes, incarnation: int) -> list[Frame]:
    """The stream cut into frames of random sizes, as one writer incarnation would send it."""
    out, start = [], 0
    while start < len(stream):
        size = rng.choice([1, 2, 3, 17, 100, 1000])
        out.append(f(start, stream[start:start + size], incarnation))
        start += size
    return out


@pytest.mark.parametrize("seed", range(200))
def test_any_mix_of_duplicates_reordering_and_restarts_delivers_the_stream_once(seed):
    rng = random.Random(seed)
    stream = rng.randbytes(rng.choice([0, 1, 50, 3000]))
    arrivals = cuts(rng, stream, 1)
    for incarnation in range(2, 2 + rng.randrange(3)):  # restarts: partial or whole re-sends
        again = cuts(rng, stream, incarnation)
        arrivals += again[:rng.randrange(len(again) + 1)]
    arrivals += rng.sample(arrivals, k=len(arrivals) // 3)  # duplicates
    arrivals.append(eof(len(stream)))
    rng.shuffle(arrivals)
    limit = rng.choice([1, 64, 1 << 20])
    feed = Feed(reorder_limit=limit)
    by_token = {str(i): frame for i, frame in enumerate(arrivals)}
    queue = list(by_token)
    # Whatever the link hands back comes again later, as the broker would redeliver it.
    while queue and not feed.link.done:
        token = queue.pop(0)
        before = len(feed.retried)
        feed(by_token[token], token)
        queue += feed.retried[before:]
        assert feed.link.buffered <= max(limit, 1000)
        assert stream.startswith(feed.out)
    assert feed.link.done and feed.out == stream
    assert feed.link.buffered == 0 and feed.link.waiting == 0
    # Every frame is settled exactly once: acknowledged, or handed back and then acknowledged.
    assert len(feed.acked) == len(set(feed.acked))


def test_incarnation_carries_the_placement_epoch_above_the_run_count():
    assert frames.incarnation(3, 7) == (3 << 32) | 7 and frames.epoch_of(frames.incarnation(3, 7)) == 3
    with pytest.raises(ValueError):
        frames.incarnation(1, 1 << 32)


def test_a_newer_epoch_fences_off_the_frames_of_an_older_one():
    old, new = frames.incarnation(1, 5), frames.incarnation(2, 1)
    feed = Feed()(f(0, b"ab", old), "old-1")(f(4, b"XX", old), "old-early")
    # The agent is placed anew (epoch 2): its stream starts again from 0, as any restart's.
    feed(f(0, b"abcd", new), "new-1")
    assert feed.out == b"abcd" and "old-early" in feed.acked and feed.link.waiting == 0
    # The written-off copy comes back and sends more: dropped, whatever its offsets.
    feed(f(4, b"ZZ", old), "old-late")(eof(6, old), "old-eof")
    assert feed.out == b"abcd" and feed.link.fenced == 3 and not feed.link.done
    feed(f(4, b"ef", new), "new-2")(eof(6, new), "new-eof")
    assert feed.out == b"abcdef" and feed.link.done


def test_restarts_within_one_epoch_are_not_fenced():
    first, second = frames.incarnation(1, 1), frames.incarnation(1, 2)
    feed = Feed()(f(0, b"ab", second), "2")(f(2, b"cd", first), "late frame of the first run")(eof(4, second))
    assert feed.out == b"abcd" and feed.link.done and feed.link.fenced == 0
