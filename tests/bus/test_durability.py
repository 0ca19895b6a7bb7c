"""A stream survives the broker crashing (SIGKILL) and starting again on the same port and data."""

from __future__ import annotations

import threading

from tests.procs import wait_until

LINES = 100_000
CHUNK = 100  # lines per write: 1000 frames


def numbered(first: int, last: int) -> bytes:
    return b"".join(b"%d\n" % i for i in range(first, last))


def test_a_broker_crash_mid_stream_loses_and_duplicates_nothing(own_broker, own_client, names, ends):
    topic = names.link("seq", "cat")
    reader, out = ends.collector(own_client, [topic])
    writer = ends.writer(own_client, [topic], max_pending=64)
    half_written, crashed = threading.Event(), threading.Event()
    errors = []

    def feed():
        try:
            for start in range(0, LINES, CHUNK):
                if start == LINES // 2:
                    half_written.set()
                    crashed.wait(60)  # the second half is written while the broker is down
                writer.write(numbered(start, start + CHUNK))
            writer.finish()
        except Exception as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    assert half_written.wait(30)
    wait_until(lambda: reader.delivered > 0, 30, "the reader to deliver the first lines")

    own_broker.kill9()
    crashed.set()
    # With the broker gone, frames pile up in the producer until its queue is full; then
    # the feeder blocks. Nothing is lost meanwhile: they go out after the restart.
    wait_until(lambda: writer.pending >= 64, 30, "frames to wait for the broker")
    assert feeder.is_alive()  # blocked: 500 frames to go, 64 at most waiting
    assert reader.delivered < len(numbered(0, LINES))
    own_broker.start()

    feeder.join(60)
    assert not errors and not feeder.is_alive()
    assert reader.wait(60), f"delivered {reader.delivered} of {len(numbered(0, LINES))} bytes"
    assert reader.error is None and reader.done.is_set()
    assert out == numbered(0, LINES)
    assert writer.flush(30) and writer.error is None
