"""MACs on frames (issue 12, item 4): a frame is read only on the link and pipeline it was made for,
as it was made; a forged frame is refused before it can move any offset. Pure: no broker."""

from __future__ import annotations

import secrets

import pytest

from oneos.bus import frames, topics
from oneos.bus.frames import Link, MacError, Seal

UID, OTHER_UID = "a" * 32, "b" * 32
KEY = secrets.token_bytes(32)
A_TO_B = topics.link_topic("public/default", UID, "a", "b")

def seal(topic: str = A_TO_B, key: bytes = KEY) -> Seal:
    return Seal(key, topic)

def test_a_sealed_frame_is_read_as_it_was_written():
    payload = frames.encode(7, 100, b"hello\n", seal=seal())
    frame = frames.decode(payload, seal())
    assert (frame.incarnation, frame.offset, bytes(frame.data), frame.eof) == (7, 100, b"hello\n", False)
    assert len(payload) == frames.HEADER_SIZE + 6 + frames.TRAILER
    eof = frames.decode(frames.encode(7, 106, eof=True, seal=seal()), seal())
    assert eof.eof and eof.offset == 106 and not eof.data

@pytest.mark.parametrize("bit", [0, 1, 9 * 8, 16 * 8 + 7, 17 * 8, 20 * 8 + 3, 30 * 8 + 5, 45 * 8, -1])
def test_one_flipped_bit_anywhere_is_refused(bit):
    payload = bytearray(frames.encode(7, 100, b"hello\n", seal=seal()))
    payload[bit // 8 if bit >= 0 else -1] ^= 1 << (bit % 8 if bit >= 0 else 0)
    with pytest.raises(frames.FrameError):
        frames.decode(bytes(payload), seal())

def test_a_change_in_the_data_or_header_is_a_mac_error():
    payload = bytearray(frames.encode(7, 100, b"hello\n", seal=seal()))
    payload[frames.HEADER_SIZE] ^= 0x20    # "Hello"
    with pytest.raises(MacError, match="does not match"):
        frames.decode(bytes(payload), seal())
    payload = bytearray(frames.encode(7, 100, b"hello\n", seal=seal()))
    payload[16] ^= 0x01                      # the offset
    with pytest.raises(MacError):
        frames.decode(bytes(payload), seal())

@pytest.mark.parametrize("elsewhere", [
    topics.link_topic("public/default", UID, "a", "c"),          # another link of the same pipeline
    topics.link_topic("public/default", UID, "b", "a"),          # the same agents, the other way
    topics.link_topic("public/default", OTHER_UID, "a", "b"),    # the same link of another pipeline
    topics.output_topic("public/default", UID, "a"),
])
def test_a_genuine_frame_copied_to_another_topic_is_refused(elsewhere):
    payload = frames.encode(7, 0, b"1\n2\n", seal=seal())
    with pytest.raises(MacError):
        frames.decode(payload, seal(elsewhere))

def test_a_frame_under_another_key_is_refused():
    payload = frames.encode(7, 0, b"1\n", seal=seal(key=secrets.token_bytes(32)))
    with pytest.raises(MacError):
        frames.decode(payload, seal())

def test_a_frame_without_a_mac_is_refused_where_macs_are_required():
    with pytest.raises(MacError, match="no MAC"):
        frames.decode(frames.encode(7, 0, b"1\n"), seal())
    with pytest.raises(MacError, match="no room"):
        frames.decode(frames.encode(7, 0, b"1\n")[:frames.HEADER_SIZE] .replace(b"\x10", b"\x12", 1), seal())

def test_a_random_mac_is_refused():
    payload = frames.encode(7, 0, b"1\n", seal=seal())
    forged = payload[:-frames.MAC_SIZE] + secrets.token_bytes(frames.MAC_SIZE)
    with pytest.raises(MacError):
        frames.decode(forged, seal())

def test_a_reader_without_the_key_takes_the_mac_off_unchecked():
    frame = frames.decode(frames.encode(7, 0, b"1\n", seal=seal()))
    assert bytes(frame.data) == b"1\n"

def test_the_topic_is_covered_whole_not_only_a_prefix():
    # The topic is fed with a terminator: "...a.b" with nonce "c..." and "...a.bc" cannot share a key.
    short = Seal(KEY, "t.a.b")
    long = Seal(KEY, "t.a.bc")
    nonce = b"\0" * frames.NONCE_SIZE
    assert short.tag(b"c" + nonce[1:], b"x") != long.tag(nonce, b"x")


def test_no_two_frames_of_a_writer_share_a_nonce():
    one, other = seal(), seal()
    nonces = {frames.encode(7, 0, b"x", seal=s)[-frames.TRAILER:-frames.MAC_SIZE] for s in (one, other)
              for _ in range(100)}
    assert len(nonces) == 200


def test_a_genuine_frame_with_its_data_changed_under_the_same_nonce_is_refused():
    payload = frames.encode(7, 0, b"1\n", seal=seal())
    tampered = payload[:frames.HEADER_SIZE] + b"9\n" + payload[frames.HEADER_SIZE + 2:]
    with pytest.raises(MacError):
        frames.decode(tampered, seal())

def test_a_forged_frame_dropped_before_the_link_leaves_the_stream_exact():
    """What the reader does: decode with the seal, refuse, and only then feed the link. A forged frame
    at the next offset, dropped, does not stop the genuine one from being delivered in its place."""
    link: Link[str] = Link()
    refused = 0
    delivered = []
    genuine = [frames.encode(1, 0, b"1\n", seal=seal()), frames.encode(1, 2, b"2\n", seal=seal())]
    forged = frames.encode(1, 2, b"X\n", seal=seal(key=secrets.token_bytes(32)))
    for n, payload in enumerate([genuine[0], forged, genuine[0], genuine[1], genuine[1]]):
        try:
            frame = frames.decode(payload, seal())
        except MacError:
            refused += 1
            continue
        delivered += [bytes(chunk) for chunk in link.accept(frame, str(n)).deliver]
    assert b"".join(delivered) == b"1\n2\n" and refused == 1 and link.duplicate_bytes == 4

def test_a_short_key_is_refused():
    with pytest.raises(ValueError):
        Seal(b"short", A_TO_B)


def test_a_reader_checks_frames_of_many_writers_and_keeps_few_of_their_keys():
    # A topic's writers are the incarnations of one agent; forged frames may claim any writer id.
    reader = seal()
    writers = [seal() for _ in range(200)]
    for n, writer in enumerate(writers * 2):
        assert bytes(frames.decode(frames.encode(1, n, b"x", seal=writer), reader).data) == b"x"
    assert len(reader._keys) <= Seal._KEPT
