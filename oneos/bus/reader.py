"""The receiving end of a pipe: link topics turned back into one byte stream.

A `StreamReader` reads one or more link topics (fan-in: each link's bytes in order, links
interleaved at frame boundaries) through one subscription, and writes what it delivers to
a file descriptor (a child's stdin) or hands it to a callback. Each link has its own
consumer and thread; deliveries take turns, a whole frame at a time.

Replay. A subscription belongs to one incarnation of the reading process. A restarted
process gets a new subscription (`topics.subscription(agent, incarnation)`), which starts
at the beginning of every input stream, so the new process reads its whole input again;
a deterministic program then writes its output again from offset 0 and the readers
downstream drop, by offset, what they already delivered. Reusing an old incarnation's
subscription would resume where it stopped instead, which is only right for the same
process (a broker restart, a reconnection: the client does that by itself).

Replay needs the broker to keep acknowledged messages. pulsar-lite keeps them. A Pulsar
cluster deletes messages every subscription has acknowledged unless the namespace has a
retention policy, so give the OneOS namespace one that outlives a pipeline, e.g.
`pulsar-admin namespaces set-retention public/oneos --size -1 --time 7d`, and call
`unsubscribe()` for the subscriptions of incarnations that will never read again.

Subscriptions are Shared with one consumer each: pulsar-lite duplicates messages, and
stalls, on Exclusive and Failover subscriptions once the backlog exceeds the receiver
queue; Shared keeps flow control and redelivery and frames make order explicit anyway.

pulsar-lite can also leave stored messages undispatched until something else happens on
the subscription (a lost wake-up in its dispatcher: a Flow or a publish that arrives while
it dispatches is dropped). It shows when the writer has finished and the reader lags, or
when several topics get messages at once. So a link that has received nothing for a while
(0.1 s, doubling while it stays idle, up to 5 s) asks the broker for the topic's last
message id; if that is past what it received, or a gap is waiting to be filled, it
subscribes again (same subscription: the broker redelivers from the first unacknowledged
message, and offsets drop the duplicates). Before its first message a link cannot ask (the
call fails on an empty topic), so it subscribes again on the same schedule.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable

import pulsar

from oneos.bus import frames, topics
from oneos.bus.frames import Link

log = logging.getLogger(__name__)

RECEIVER_QUEUE = 64       # frames the client prefetches per topic: <= 4 MiB of 64 KiB frames
REORDER_LIMIT = 4 << 20   # bytes per link waiting for a gap to fill
RETRY_DELAY_MS = 200      # a frame handed back (reorder buffer full) comes again after this
IDLE_CHECK = 0.1          # seconds without a message before checking for undispatched ones...
IDLE_CHECK_CAP = 5.0      # ...doubling while idle, up to this
_POLL_MS = 50             # how often a waiting link looks at its stop flag


class StreamReader:
    """Delivers the streams of `topics`, each byte exactly once and in order, to `fd` or `on_data`.

    `start()` runs it in threads of its own (or call `run()` in yours). Events: `done` when
    every link reached its EOF, `closed` when the target refused data (EPIPE: the reading
    process exited), `finished` when the reader ended for any reason (then see `error`).
    The reader owns `fd` and closes it when it finishes, so the child sees the end of its stdin.
    """

    def __init__(self, client: pulsar.Client, topics: list[str], subscription: str, *, name: str,
                 fd: int | None = None, on_data: Callable[[bytes], None] | None = None,
                 on_closed: Callable[[], None] | None = None, receiver_queue: int = RECEIVER_QUEUE,
                 reorder_limit: int = REORDER_LIMIT, key: bytes | None = None,
                 on_refused: Callable[[], None] | None = None) -> None:
        """Subscribe (from the earliest message, for a new subscription) to every topic.

        Exactly one of `fd` and `on_data` is the target. `on_data` may raise BrokenPipeError
        to say its consumer is gone; `on_closed` is called (on a reader thread) then. With
        `key` (the pipeline's) only frames whose MAC it verifies are read: the others are
        dropped, counted in `refused`, and `on_refused` is called (on a reader thread).
        """
        if (fd is None) == (on_data is None):
            raise ValueError("give a StreamReader exactly one target: fd or on_data")
        self.name = name
        self.subscription = subscription
        self.error: str | None = None
        self.done = threading.Event()
        self.closed = threading.Event()
        self.finished = threading.Event()
        self._fd = fd
        self._on_data = on_data
        self._on_closed = on_closed
        self._on_refused = on_refused
        self._stop = threading.Event()
        self._turn = threading.Lock()  # one link delivers at a time: whole frames interleave
        self._thread: threading.Thread | None = None
        self._link_threads: list[threading.Thread] = []
        self._running = False
        self._inputs: list[_Input] = []
        try:
            for topic in dict.fromkeys(_full_name(t) for t in topics):
                self._inputs.append(_Input(client, topic, subscription, name, receiver_queue, reorder_limit, key))
        except Exception:
            self._release()
            raise
        if not self._inputs:
            self.done.set()

    @property
    def links(self) -> dict[str, Link[pulsar.Message]]:
        """The ordering state of each input topic (delivered offset, reorder buffer, duplicates)."""
        return {i.topic: i.link for i in self._inputs}

    @property
    def delivered(self) -> int:
        """Bytes delivered so far, all links together."""
        return sum(i.link.delivered for i in self._inputs)

    @property
    def received(self) -> int:
        """Frames received, duplicates included."""
        return sum(i.received for i in self._inputs)

    @property
    def refused(self) -> int:
        """Frames dropped because their MAC was missing or wrong (forged, or from another link)."""
        return sum(i.refused for i in self._inputs)

    @property
    def retried(self) -> int:
        """Frames handed back to the broker because the reorder buffer was full."""
        return sum(i.retried for i in self._inputs)

    @property
    def resubscribed(self) -> int:
        """Times a link subscribed again to get messages the broker had not dispatched."""
        return sum(i.resubscribed for i in self._inputs)

    def start(self) -> "StreamReader":
        """Run the reader in a thread of its own; returns self."""
        self._thread = threading.Thread(target=self.run, name=f"reader-{self.name}", daemon=True)
        self._running = True  # from here on the reader's own threads release what it holds
        self._thread.start()
        return self

    def run(self) -> None:
        """Receive, order and deliver until done, closed, stopped or failed."""
        self._running = True
        self._link_threads = [
            threading.Thread(target=self._run_input, args=(i,), name=f"reader-{self.name}-{n}", daemon=True)
            for n, i in enumerate(self._inputs[1:], 1)]
        try:
            for thread in self._link_threads:
                thread.start()
            if self._inputs:
                self._run_input(self._inputs[0])
            for thread in self._link_threads:
                thread.join()
        finally:
            self._release()
            self.finished.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the reader finished (done, closed, stopped or failed); False at the timeout."""
        return self.finished.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop reading and release the consumers (the subscription stays).

        A reader blocked writing to a child that does not read returns once the child exits.
        """
        self._stop.set()
        if not self._running:
            self._release()
            self.finished.set()
        elif threading.current_thread() not in (self._thread, *self._link_threads):
            self.finished.wait(timeout)

    def unsubscribe(self, client: pulsar.Client) -> None:
        """Delete this reader's subscription (after `stop()`), so the broker stops keeping its backlog."""
        unsubscribe(client, [i.topic for i in self._inputs], self.subscription)

    def _run_input(self, inp: "_Input") -> None:
        try:
            while not inp.link.done and not self._stop.is_set():
                msg = inp.receive()
                if msg is None:
                    if inp.consumer is None:  # subscribing again failed: the broker is away
                        self._stop.wait(1.0)
                    continue
                try:
                    frame = frames.decode(msg.data(), inp.seal)
                except frames.MacError as exc:
                    # Dropped before the link sees it: a forged frame moves no offset.
                    inp.refused += 1
                    (log.warning if inp.refused == 1 else log.debug)(
                        "reader %s: dropping a frame on %s (%d so far): %s", self.name, inp.topic, inp.refused, exc)
                    inp.consumer.acknowledge(msg)
                    if self._on_refused is not None:
                        self._on_refused()
                    continue
                except frames.FrameError as exc:
                    log.warning("reader %s: dropping a message on %s that is not a frame: %s", self.name, inp.topic, exc)
                    inp.consumer.acknowledge(msg)
                    continue
                step = inp.link.accept(frame, msg)
                if step.deliver:
                    with self._turn:
                        if self._stop.is_set():
                            return
                        for chunk in step.deliver:
                            self._deliver(chunk)
                inp.settle(step)
            if all(i.link.done for i in self._inputs):
                self.done.set()
        except BrokenPipeError:
            self._stop.set()
            if not self.closed.is_set():
                self.closed.set()
                if self._on_closed is not None:
                    try:
                        self._on_closed()
                    except Exception:  # noqa: BLE001 - the owner's callback must not go unnoticed
                        log.exception("reader %s: on_closed failed", self.name)
        except Exception as exc:  # noqa: BLE001 - kept for the owner, who decides what it means
            if not self._stop.is_set():
                self.error = self.error or f"{self.name}: {inp.topic}: {type(exc).__name__}: {exc}"
                log.error("reader %s", self.error)
            self._stop.set()
        finally:
            inp.close()

    def _deliver(self, chunk: memoryview) -> None:
        if self._on_data is not None:
            self._on_data(bytes(chunk))
            return
        while chunk:
            chunk = chunk[os.write(self._fd, chunk):]

    def _release(self) -> None:
        for inp in self._inputs:
            inp.close()
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


class _Input:
    """One input topic of a reader: its consumer, its ordering state, and the stall check."""

    def __init__(self, client: pulsar.Client, topic: str, subscription: str, name: str,
                 receiver_queue: int, reorder_limit: int, key: bytes | None = None) -> None:
        self.topic = topic
        self.link: Link[pulsar.Message] = Link(reorder_limit)
        self.seal = frames.Seal(key, topic) if key is not None else None
        self.refused = 0
        self.received = 0
        self.retried = 0
        self.resubscribed = 0
        self._subscribe = lambda: client.subscribe(
            topic, subscription, consumer_type=pulsar.ConsumerType.Shared,
            initial_position=pulsar.InitialPosition.Earliest, receiver_queue_size=receiver_queue,
            negative_ack_redelivery_delay_ms=RETRY_DELAY_MS, consumer_name=name)
        self.consumer: pulsar.Consumer | None = self._subscribe()
        self._last_id = None          # the highest message id received
        self._retrying = False        # frames were handed back and may not have come again
        self._idle = 0.0
        self._idle_limit = IDLE_CHECK

    def receive(self) -> pulsar.Message | None:
        """The next message, or None after a short wait (when it may subscribe again)."""
        if self.consumer is None and not self._resubscribe():
            return None
        try:
            msg = self.consumer.receive(_POLL_MS)
        except pulsar.Timeout:
            self._idle += _POLL_MS / 1000
            if self._idle >= self._idle_limit:
                self._idle, self._idle_limit = 0.0, min(2 * self._idle_limit, IDLE_CHECK_CAP)
                if self._behind():
                    self._resubscribe()
            return None
        self._idle, self._idle_limit = 0.0, IDLE_CHECK
        self.received += 1
        if self._last_id is None or msg.message_id() > self._last_id:
            self._last_id = msg.message_id()
        return msg

    def settle(self, step: frames.Step[pulsar.Message]) -> None:
        """Acknowledge what is delivered or redundant; hand back what cannot wait."""
        for msg in step.ack:
            self.consumer.acknowledge(msg)
        for msg in step.retry:
            self.retried += 1
            self._retrying = True
            self.consumer.negative_acknowledge(msg)

    def _behind(self) -> bool:
        """Whether the broker may hold messages for this link that it has not dispatched."""
        if not self.consumer.is_connected():
            return False  # it reconnects by itself, and is given what it lacks then
        if self._retrying or self.link.waiting:
            reason = "frames handed back or a gap to fill"
        elif self._last_id is None:
            reason = "nothing received yet"
        else:
            try:
                if not self.consumer.get_last_message_id() > self._last_id:
                    return False
            except Exception as exc:  # noqa: BLE001 - a question that may fail; asked again later
                log.debug("%s: asking for the last message id: %s", self.topic, exc)
                return False
            reason = "the topic holds messages not received"
        log.debug("%s: subscribing again: %s", self.topic, reason)
        return True

    def _resubscribe(self) -> bool:
        """Make the consumer again: what it was not given comes now (see the module's doc)."""
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            try:
                consumer.close()
            except Exception as exc:  # noqa: BLE001 - it is replaced either way
                log.debug("%s: closing the consumer: %s", self.topic, exc)
        try:
            self.consumer = self._subscribe()
        except Exception as exc:  # noqa: BLE001 - tried again until it works or the reader stops
            log.warning("subscribing again to %s: %s", self.topic, exc)
            return False
        self.resubscribed += 1
        self._retrying = False
        return True

    def close(self) -> None:
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            try:
                consumer.close()
            except Exception as exc:  # noqa: BLE001 - the broker may be away; the consumer is gone anyway
                log.debug("%s: closing the consumer: %s", self.topic, exc)


def unsubscribe(client: pulsar.Client, topics: list[str], subscription: str) -> None:
    """Delete `subscription` on every topic, e.g. that of an incarnation that will not read again."""
    for topic in topics:
        consumer = client.subscribe(_full_name(topic), subscription, consumer_type=pulsar.ConsumerType.Shared)
        try:
            consumer.unsubscribe()
        finally:
            try:
                consumer.close()
            except pulsar.AlreadyClosed:
                pass


_full_name = topics.full_name
