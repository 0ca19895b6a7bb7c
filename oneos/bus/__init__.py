"""The pipe protocol: byte streams between agents over Pulsar topics, exactly once and in order.

- `client`: the one Pulsar client of a process (`connect`, `close`);
- `topics`: the names of a pipeline's topics and of each reader incarnation's subscription;
- `frames`: the frame format and the per-link ordering/de-duplication state (pure);
- `writer.StreamWriter`: a child's stdout (or bytes) into one or more link topics;
- `reader.StreamReader`: one or more link topics into a child's stdin (or a callback).

How the node agent uses it, for an agent `cat` in incarnation N (its Nth start):

    writer = StreamWriter(client, [link_topic(ns, uid, "cat", dst) for dst in readers], N, name="cat")
    writer.pump(stdout_read_fd, eof=False)   # eof once the process is done for good: writer.finish()
    reader = StreamReader(client, [link_topic(ns, uid, src, "cat") for src in writers],
                          subscription("cat", N), name="cat", fd=stdin_write_fd, on_closed=...).start()

Delivery is by offset: every frame says where its bytes sit in the writer's stream, and the
reader delivers each byte once, in order, whatever Pulsar redelivers or reorders. Restarts
replay: a restarted reader reads its inputs again from the start (a new subscription), a
restarted writer sends its stream again from offset 0 and readers skip what they delivered.
With deterministic programs a pipe is exactly-once across restarts; a program whose output
differs from run to run gets the first run's bytes up to where the second run takes over.

A Pulsar cluster (not pulsar-lite) needs a retention policy on the OneOS namespace for
replay (see reader.py). Memory per link is bounded: a writer holds at most 128 frames of
64 KiB waiting for the broker, a reader prefetches 64 frames and buffers 4 MiB out of order.
"""

from typing import Any

__all__ = ["StreamReader", "StreamWriter", "WriterClosed", "unsubscribe"]

_LAZY = {"StreamReader": "reader", "unsubscribe": "reader", "StreamWriter": "writer", "WriterClosed": "writer"}


def __getattr__(name: str) -> Any:
    # The Pulsar client library costs ~10 MB of memory: loaded only once a stream is made,
    # so an idle node agent (and `frames`/`topics` users) do without it.
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f"oneos.bus.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'oneos.bus' has no attribute {name!r}")
