"""The sending end of a pipe: a byte stream cut into frames and published to link topics.

One `StreamWriter` is one incarnation of a writer process: its stream starts at offset 0,
and every frame goes to every topic (fan-out). A restarted process gets a new writer with
a higher incarnation that starts again at 0; readers drop, by offset, what they already
delivered (see frames.py), so a deterministic program's output is delivered exactly once.

Sends never give up and never fail for a full queue: while the broker is away the producer
keeps the unsent frames and sends them when it reconnects, and once `max_pending` frames
per topic wait for the broker, sending blocks. Blocking is the back-pressure: the pump
thread stops reading the child's stdout, the pipe fills, and the child blocks on write.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
from typing import Any

import pulsar

from oneos.bus import frames, topics as topic_names

log = logging.getLogger(__name__)

MAX_PENDING = 128  # frames per topic sent but not yet stored by the broker (<= 8 MiB of 64 KiB frames)


class WriterClosed(RuntimeError):
    """The writer was closed or finished: no more bytes can go into its stream."""


class StreamWriter:
    """Publishes one incarnation of a byte stream to one or more link topics.

    Feed it either from a file descriptor with `pump(fd)` (a child's stdout) or with
    `write(data)` and `finish()`, not both. `flush()` waits until the broker has stored every
    frame; `close()` releases everything, and when called early, stops the stream.
    """

    def __init__(self, client: pulsar.Client, topics: list[str], incarnation: int, *, name: str,
                 max_pending: int = MAX_PENDING, batching: bool = False, key: bytes | None = None) -> None:
        """Create one producer per topic; `name` (such as the agent's) appears in logs; with `key`
        (the pipeline's) every frame carries a MAC for its topic (see frames.py).

        Frames are already batches (one `os.read` each), so Pulsar's own batching is off by
        default: it would hold a lone line back for its publish delay.
        """
        if incarnation < 0:
            raise ValueError(f"incarnation {incarnation} is negative")
        self.name = name
        self.topics = list(topics)
        self.incarnation = incarnation
        self.offset = 0               # bytes in the stream so far: the next frame's offset
        self.error: str | None = None  # the first send that failed, if any
        self._finished = False
        self._closed = threading.Event()
        self._lock = threading.Lock()  # one frame at a time, so offsets go out in order
        self._pending = 0
        self._settled = threading.Condition()
        self._pump: threading.Thread | None = None
        self._wake_lock = threading.Lock()   # the pipe that wakes the pump thread when closing
        self._wake_r, self._wake_w = os.pipe()
        self._producers: list[pulsar.Producer] = []
        self._seals = [frames.Seal(key, topic_names.full_name(t)) if key is not None else None for t in self.topics]
        try:
            for topic in self.topics:
                self._producers.append(client.create_producer(
                    topic, block_if_queue_full=True, send_timeout_millis=0, max_pending_messages=max_pending,
                    batching_enabled=batching, batching_max_publish_delay_ms=1,
                    batching_max_allowed_size_in_bytes=frames.MAX_DATA + 1024))
        except Exception:
            self._close_producers()
            self._close_wake()
            raise

    @property
    def pending(self) -> int:
        """Frames (counted once per topic) sent but not yet stored by the broker."""
        return self._pending

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def pump(self, fd: int, *, eof: bool = True) -> threading.Thread:
        """Start a thread that sends what `fd` yields until its end (EOF, or EIO from a pseudo-terminal
        whose other side is closed); the thread owns and closes `fd`.

        With `eof` the stream is finished at the end of `fd`; a node agent that may restart
        the process passes False and calls `finish()` once the process is done for good.
        """
        if self._pump is not None:
            raise RuntimeError(f"{self.name}: this writer already pumps a file descriptor")
        if self.closed:
            os.close(fd)
            raise WriterClosed(f"{self.name}: the writer is closed")
        self._pump = threading.Thread(target=self._run_pump, args=(fd, eof), name=f"pump-{self.name}", daemon=True)
        self._pump.start()
        return self._pump

    def write(self, data: bytes) -> None:
        """Send `data` as the stream's next bytes (in frames of at most 64 KiB); may block."""
        view = memoryview(data)
        for start in range(0, len(view), frames.MAX_DATA):
            self._send(view[start:start + frames.MAX_DATA])

    def announce(self) -> None:
        """Send an empty frame, so the topic holds a message before the stream has any bytes.

        A reader can then ask the broker where the topic ends (pulsar-lite fails that call,
        loudly, on a topic nobody has written to). Readers drop empty frames.
        """
        with self._lock:
            if self.closed or self._finished:
                raise WriterClosed(f"{self.name}: the writer is {'closed' if self.closed else 'finished'}")
            self._publish(b"")

    def finish(self) -> None:
        """End the stream: send the EOF frame that carries its length. Idempotent."""
        with self._lock:
            if self._finished:
                return
            if self.closed:
                raise WriterClosed(f"{self.name}: the writer is closed")
            self._finished = True
            self._publish(b"", eof=True)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the broker has stored every frame sent so far; False at the timeout or if one failed."""
        with self._settled:
            settled = self._settled.wait_for(lambda: self._pending == 0, timeout)
        return settled and self.error is None

    def close(self, timeout: float = 10.0) -> None:
        """Stop now: send nothing more, and close the pumped fd so the child gets EPIPE/SIGPIPE.

        Frames not yet stored by the broker are dropped, so after a normal end call
        `finish()` and `flush()` first. Waits at most about `timeout` seconds for the
        producers to close (a broker that does not answer). Safe to call more than once.
        """
        with self._wake_lock:
            if not self._closed.is_set():
                self._closed.set()
                if self._wake_w >= 0:
                    os.write(self._wake_w, b"x")
        # Closing a producer fails the sends still waiting at once, which unblocks a pump
        # thread stuck in send while the broker is away; the close itself waits for the broker.
        closers = [threading.Thread(target=self._close_producer, args=(p,), name=f"close-{self.name}", daemon=True)
                   for p in self._producers]
        self._producers = []
        for closer in closers:
            closer.start()
        deadline = time.monotonic() + timeout
        pump = self._pump
        if pump is not None and pump is not threading.current_thread():
            pump.join(timeout)
            if pump.is_alive():
                log.warning("%s: the pump thread did not stop within %ss", self.name, timeout)
        for closer in closers:
            closer.join(max(0.0, deadline - time.monotonic()))
        with self._settled:
            self._pending = 0
            self._settled.notify_all()
        if pump is None or not pump.is_alive():
            self._close_wake()

    def __enter__(self) -> "StreamWriter":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _send(self, data: memoryview | bytes) -> None:
        with self._lock:
            if self.closed or self._finished:
                raise WriterClosed(f"{self.name}: the writer is {'closed' if self.closed else 'finished'}")
            self._publish(data)
            self.offset += len(data)

    def _publish(self, data: bytes | memoryview, eof: bool = False) -> None:
        """Send one frame at the current offset to every topic (sealed for each, with a key)."""
        plain = None
        for producer, seal in zip(self._producers, self._seals):
            if seal is not None:
                payload = frames.encode(self.incarnation, self.offset, data, eof=eof, seal=seal)
            else:
                plain = plain or frames.encode(self.incarnation, self.offset, data, eof=eof)
                payload = plain
            with self._settled:
                self._pending += 1
            try:
                producer.send_async(payload, self._on_sent)
            except Exception:
                self._on_sent(None, None)
                raise

    def _on_sent(self, result: Any, _msg_id: Any) -> None:
        # Runs on the client's I/O thread: keep it short.
        if result is not None and result != pulsar.Result.Ok and not self.closed and self.error is None:
            self.error = f"{self.name}: sending a frame failed: {result}"
            log.error("%s", self.error)
        with self._settled:
            self._pending = max(0, self._pending - 1)
            if self._pending == 0:
                self._settled.notify_all()

    def _run_pump(self, fd: int, eof: bool) -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while not self.closed:
                ready = {ready_fd for ready_fd, _ in poller.poll()}
                if self.closed or fd not in ready:
                    break
                try:
                    data = os.read(fd, frames.MAX_DATA)
                except OSError as exc:
                    if exc.errno != errno.EIO:
                        raise
                    data = b""   # the master of a pseudo-terminal whose other side is closed: its end
                if not data:
                    if eof:
                        self.finish()
                    break
                self._send(data)
        except WriterClosed:
            pass
        except Exception as exc:  # noqa: BLE001 - reported, and the fd is closed so the child learns
            if not self.closed:
                self.error = self.error or f"{self.name}: pumping fd {fd}: {exc}"
                log.error("%s", self.error)
        finally:
            os.close(fd)
            if self.closed:
                self._close_wake()

    def _close_producers(self) -> None:
        for producer in self._producers:
            self._close_producer(producer)
        self._producers = []

    def _close_producer(self, producer: pulsar.Producer) -> None:
        try:
            producer.close()
        except Exception as exc:  # noqa: BLE001 - the broker may be away; the producer is gone anyway
            log.debug("%s: closing a producer: %s", self.name, exc)

    def _close_wake(self) -> None:
        with self._wake_lock:
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1
