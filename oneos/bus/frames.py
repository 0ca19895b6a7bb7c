"""Frames of the pipe protocol, and the per-link state that makes a stream exactly-once.

A stream is the bytes one writer process sends down one link. Each Pulsar message holds
one frame: a 17-byte header, then data.

    byte  0      version (high 4 bits) and flags (low 4 bits; bit 0 = EOF)
    bytes 1-8    incarnation of the writer process (big-endian unsigned)
    bytes 9-16   offset of the frame's first byte in the writer's stream (big-endian unsigned)

An EOF frame carries no data; its offset is the stream's total length.

Authentication. A frame of a pipeline's pipe ends with a 16-byte nonce and a 16-byte MAC
(flag bit 1) under the pipeline's key, over the topic's full name, the header and the data
(`Seal`: ChaCha20-Poly1305's tag under a key HMAC-SHA256 derives per writer and topic).
The topic name holds the pipeline's uid and the link's two agents, so a
frame copied to another link or pipeline fails. A reader with the key drops (and counts)
every frame whose MAC fails or that has none, before `Link` sees it: a forged frame moves
no offset. A genuine frame sent again is a duplicate, which `Link` drops by offset.

Offsets, not message ids, decide what the receiver delivers: Pulsar redelivers (at least
once), pulsar-lite duplicates and reorders, and a restarted writer (a new incarnation)
sends its stream again from offset 0.

Fencing. The high 32 bits of an incarnation are the writer's placement epoch (see
`incarnation`): it grows each time the controller places the agent on a node anew, e.g.
after its node was lost. Once a frame of a newer epoch has arrived, frames of older epochs
are dropped: a node that was written off, and comes back still running the agent, cannot
put its copy's bytes into the stream. Within one epoch (restarts on the same node) any
incarnation's frames count, by offset. `Link` keeps the offset delivered so far and turns
whatever arrives into the stream's bytes, each exactly once and in order. It is pure (no
I/O): the reader feeds it frames with an opaque token (the Pulsar message) and is told
which bytes to deliver, which tokens to acknowledge and which to hand back for redelivery.
"""

from __future__ import annotations

import hashlib
import hmac
import heapq
import itertools
import secrets
import struct
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

VERSION = 1
FLAG_EOF = 0x01
FLAG_MAC = 0x02
NONCE_SIZE = 16
MAC_SIZE = 16
TRAILER = NONCE_SIZE + MAC_SIZE   # what follows the data of an authenticated frame
KEY_SIZE = 32
HEADER = struct.Struct(">BQQ")
HEADER_SIZE = HEADER.size  # 17
MAX_DATA = 64 * 1024  # what a writer puts in one frame: one os.read of a pipe

T = TypeVar("T")


class FrameError(ValueError):
    """A message that is not a frame of this protocol (wrong version, short, inconsistent)."""


class MacError(FrameError):
    """A frame whose MAC is missing or wrong: forged, altered, or copied from another topic."""


class Seal:
    """Makes and checks the MACs of the frames of one topic under its pipeline's key.

    Each seal (one writer of one topic, or the reader of one) draws a random 8-byte id; its
    frames' 16-byte nonces are that id and then a counter. A writer's key is HMAC-SHA256(pipeline
    key, topic, id), derived once per seal, and a frame's tag is ChaCha20-Poly1305 under it with
    the counter as nonce, nothing to encrypt, and the frame's header and data as associated data:
    the AEAD's tag is Poly1305 under a one-time key that ChaCha20 makes from the writer's key and
    the frame's nonce, which is how Poly1305 is meant to be used (a fresh key per message, from
    a keyed PRF and a nonce never used twice under one key: random per seal, counted within it).
    Forging needs the pipeline key. A reader derives each writer's key once, on that writer's
    first frame, and keeps the last few.

    Why this and not simpler: HMAC-SHA256 over each 64 KiB frame cost a pipe 11-16 % of its
    throughput (bench/pipes.py); Poly1305 under a key HMAC derived per frame cost 22 us per
    frame and link; this costs about 12 (the AEAD's Poly1305 is OpenSSL's fastest, and no
    per-frame derivation is left).
    """

    ALGORITHM = "ChaCha20-Poly1305 as a MAC, a key per writer from HMAC-SHA256"
    _KEPT = 64   # writers' keys a reader keeps (a topic has one writer per incarnation)

    def __init__(self, key: bytes, topic: str) -> None:
        if len(key) < 16:
            raise ValueError(f"a pipeline key has at least 16 bytes, this one {len(key)}")
        # The topic is fed first, once: each writer's key derivation starts from a copy of this state.
        self._base = hmac.new(key, b"oneos-frame\0" + topic.encode() + b"\0", hashlib.sha256)
        self._id = secrets.token_bytes(NONCE_SIZE - 8)
        self._count = itertools.count()
        self._keys: dict[bytes, ChaCha20Poly1305] = {self._id: self._derive(self._id)}

    def _derive(self, writer: bytes) -> ChaCha20Poly1305:
        derive = self._base.copy()
        derive.update(writer)
        return ChaCha20Poly1305(derive.digest())

    def nonce(self) -> bytes:
        """A nonce for the next frame this seal makes."""
        return self._id + next(self._count).to_bytes(8, "big")

    def tag(self, nonce: bytes | memoryview, signed: bytes | memoryview) -> bytes:
        """The MAC of `signed` (a frame's header and data, as one buffer) under `nonce`."""
        writer = bytes(nonce[:NONCE_SIZE - 8])
        aead = self._keys.get(writer)
        if aead is None:
            if len(self._keys) >= self._KEPT:   # forged frames with made-up ids cost a derivation each, no memory
                self._keys = {self._id: self._keys[self._id]}
            aead = self._keys[writer] = self._derive(writer)
        return aead.encrypt(b"\0\0\0\0" + bytes(nonce[NONCE_SIZE - 8:]), b"", signed)


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame; `data` is a view into the message, valid while the message is."""

    incarnation: int
    offset: int
    data: bytes | memoryview = b""
    eof: bool = False

    @property
    def end(self) -> int:
        """Offset just past the frame's last byte (its offset for an EOF frame)."""
        return self.offset + len(self.data)


EPOCH_SHIFT = 32


def incarnation(epoch: int, run: int) -> int:
    """The incarnation on the wire: the placement epoch in the high 32 bits, the run count in the low."""
    if not (0 <= epoch < 1 << 31 and 0 <= run < 1 << EPOCH_SHIFT):
        raise ValueError(f"epoch {epoch} or run {run} out of range")
    return (epoch << EPOCH_SHIFT) | run


def epoch_of(incarnation: int) -> int:
    return incarnation >> EPOCH_SHIFT


def encode(incarnation: int, offset: int, data: bytes | memoryview = b"", *, eof: bool = False,
           seal: Seal | None = None) -> bytes:
    """The message payload of one frame; with `seal`, followed by its MAC."""
    if eof and data:
        raise ValueError("an EOF frame carries no data: its offset is the stream's length")
    flags = (FLAG_EOF if eof else 0) | (FLAG_MAC if seal is not None else 0)
    header = HEADER.pack((VERSION << 4) | flags, incarnation, offset)
    if seal is None:
        return header + data
    signed = header + data
    nonce = seal.nonce()
    return b"".join((signed, nonce, seal.tag(nonce, signed)))


def decode(payload: bytes, seal: Seal | None = None) -> Frame:
    """The frame in a message payload; FrameError if it is not one, MacError if `seal` refuses it.

    Without `seal` a MAC is taken off unchecked (a reader that does not hold the key).
    """
    if len(payload) < HEADER_SIZE:
        raise FrameError(f"a frame has a {HEADER_SIZE}-byte header, this message has {len(payload)} bytes")
    head, incarnation, offset = HEADER.unpack_from(payload)
    if head >> 4 != VERSION:
        raise FrameError(f"frame version {head >> 4}, this receiver speaks version {VERSION}")
    eof = bool(head & FLAG_EOF)  # other flag bits are reserved and ignored
    view = memoryview(payload)
    if head & FLAG_MAC:
        if len(payload) < HEADER_SIZE + TRAILER:
            raise MacError(f"a frame marked as authenticated has no room for its {TRAILER}-byte nonce and MAC")
        end = len(payload) - TRAILER
        if seal is not None and not hmac.compare_digest(
                seal.tag(view[end:end + NONCE_SIZE], view[:end]),
                view[end + NONCE_SIZE:]):
            raise MacError("its MAC does not match: forged, altered, or from another link or pipeline")
        data = view[HEADER_SIZE:end]
    elif seal is not None:
        raise MacError("it carries no MAC, and this link takes only authenticated frames")
    else:
        data = view[HEADER_SIZE:]
    if eof and len(data):
        raise FrameError(f"an EOF frame with {len(data)} bytes of data")
    return Frame(incarnation, offset, data, eof)


@dataclass(slots=True)
class Step(Generic[T]):
    """What to do after `Link.accept`: write `deliver` in order, then ack, then hand `retry` back."""

    deliver: list[memoryview] = field(default_factory=list)
    ack: list[T] = field(default_factory=list)
    retry: list[T] = field(default_factory=list)


class Link(Generic[T]):
    """Ordering and de-duplication for one link (one writer's stream to one reader).

    Frames that arrive before the gap in front of them fills wait in a reorder buffer of at
    most `reorder_limit` bytes (plus one frame, so any frame can wait when the buffer is
    empty); past that the frame farthest ahead goes back to the broker (`Step.retry`) to be
    redelivered later, so memory stays bounded whatever arrives.
    """

    def __init__(self, reorder_limit: int = 4 * 1024 * 1024) -> None:
        self.reorder_limit = reorder_limit
        self.delivered = 0                 # bytes delivered so far: the next byte's offset
        self.length: int | None = None     # the stream's total length, once an EOF frame came
        self.buffered = 0                  # bytes in the reorder buffer
        self.max_buffered = 0
        self.duplicate_bytes = 0           # bytes received again and dropped
        self.incarnation = 0               # highest writer incarnation seen
        self.epoch = 0                     # highest placement epoch seen: older ones are fenced off
        self.fenced = 0                    # frames dropped because their epoch was fenced off
        self.eof_conflicts = 0             # EOF frames disagreeing with the first one (see accept)
        # A heap of waiting frames: (offset, seq, data, token, incarnation).
        self._early: list[tuple[int, int, memoryview, T, int]] = []
        self._seq = itertools.count()      # ties between equal offsets: arrival order
        self._held: list[T] = []           # EOF frames: acknowledged when the stream is done

    @property
    def done(self) -> bool:
        """Every byte up to the EOF has been delivered."""
        return self.length is not None and self.delivered >= self.length

    @property
    def waiting(self) -> int:
        """Frames in the reorder buffer."""
        return len(self._early)

    def accept(self, frame: Frame, token: T) -> Step[T]:
        """Take one frame; say which bytes are now deliverable and which tokens are settled."""
        step: Step[T] = Step()
        epoch = epoch_of(frame.incarnation)
        if epoch < self.epoch:
            self.fenced += 1  # from a copy of the writer that was placed elsewhere since
            step.ack.append(token)
            return step
        if epoch > self.epoch:
            self.epoch = epoch
            self._fence_buffered(step)
        self.incarnation = max(self.incarnation, frame.incarnation)
        if self.done:
            step.ack.append(token)  # anything after the end (duplicate EOF, stray data) is settled
            return step
        if frame.eof:
            if self.length is None:
                self.length = frame.offset
                self.eof_conflicts += frame.offset < self.delivered  # more was delivered than it says
                self._held.append(token)
            else:
                # A writer that produced a different stream after a restart (not deterministic):
                # the first EOF stands, so what was delivered stays a prefix of the stream.
                self.eof_conflicts += frame.offset != self.length
                step.ack.append(token)
        elif frame.end <= self.delivered or not frame.data:
            self.duplicate_bytes += len(frame.data)
            step.ack.append(token)
        elif self.length is not None and frame.offset >= self.length:
            self.eof_conflicts += 1  # data past the end of the stream: not part of it
            step.ack.append(token)
        elif frame.offset <= self.delivered:
            self._take(frame.offset, frame.data, token, step)
        else:
            self._buffer(frame, token, step)
        self._drain(step)
        if self.done:
            step.ack.extend(self._held)
            step.ack.extend(item[3] for item in self._early)
            self._held.clear()
            self._early.clear()
            self.buffered = 0
        return step

    def _fence_buffered(self, step: Step[T]) -> None:
        """Drop (acknowledge) the waiting frames of epochs older than the current one."""
        keep = [item for item in self._early if epoch_of(item[4]) >= self.epoch]
        for item in self._early:
            if epoch_of(item[4]) < self.epoch:
                self.fenced += 1
                self.buffered -= len(item[2])
                step.ack.append(item[3])
        if len(keep) != len(self._early):
            self._early = keep
            heapq.heapify(self._early)

    def _take(self, offset: int, data: memoryview | bytes, token: T, step: Step[T]) -> None:
        """Deliver the part of a frame at or after the delivered offset (it starts at or before it)."""
        end = offset + len(data)
        if self.length is not None:
            end = min(end, self.length)  # bytes past the EOF are not part of the stream
        skip = self.delivered - offset
        self.duplicate_bytes += skip
        if end > self.delivered:
            step.deliver.append(memoryview(data)[skip:end - offset])
            self.delivered = end
        step.ack.append(token)

    def _buffer(self, frame: Frame, token: T, step: Step[T]) -> None:
        size = len(frame.data)
        while self._early and self.buffered + size > self.reorder_limit:
            far = max(range(len(self._early)), key=lambda i: self._early[i][0])
            if self._early[far][0] <= frame.offset:
                step.retry.append(token)  # the new frame is the farthest ahead: it waits at the broker
                return
            _, _, data, far_token, _ = self._early.pop(far)
            heapq.heapify(self._early)
            self.buffered -= len(data)
            step.retry.append(far_token)
        heapq.heappush(self._early, (frame.offset, next(self._seq), frame.data, token, frame.incarnation))
        self.buffered += size
        self.max_buffered = max(self.max_buffered, self.buffered)

    def _drain(self, step: Step[T]) -> None:
        """Deliver buffered frames that the delivered offset has reached."""
        while self._early and self._early[0][0] <= self.delivered:
            offset, _, data, token, _ = heapq.heappop(self._early)
            self.buffered -= len(data)
            self._take(offset, data, token, step)
