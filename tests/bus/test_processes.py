"""Real programs joined by the pipe protocol, as the node agent joins them: pipes to and from children."""

from __future__ import annotations

import os
import signal

from tests.procs import wait_until

DEADLINE = 30


def test_seq_then_cat_then_wc_over_topics_print_what_bash_prints(client, names, ends, children):
    seq, _, seq_out = children.spawn(["seq", "1", "100000"])
    cat, cat_in, cat_out = children.spawn(["cat"], stdin=True)
    wc, wc_in, wc_out = children.spawn(["wc", "-l"], stdin=True)
    seq_cat, cat_wc = names.link("seq", "cat"), names.link("cat", "wc")

    ends.writer(client, [seq_cat], name="seq").pump(seq_out)
    ends.reader(client, [seq_cat], name="cat", fd=cat_in).start()
    ends.writer(client, [cat_wc], name="cat").pump(cat_out)
    ends.reader(client, [cat_wc], name="wc", fd=wc_in).start()

    assert wc.wait(DEADLINE) == 0 and seq.wait(DEADLINE) == 0 and cat.wait(DEADLINE) == 0
    assert os.read(wc_out, 100).strip() == b"100000"
    os.close(wc_out)


def test_yes_into_head_ends_as_in_bash(client, names, ends, children):
    """`yes | head -3`: head exits, the reader sees EPIPE, the writer closes, yes dies of SIGPIPE."""
    yes, _, yes_out = children.spawn(["yes"])
    head, head_in, head_out = children.spawn(["head", "-3"], stdin=True)
    topic = names.link("yes", "head")
    writer = ends.writer(client, [topic], name="yes")
    writer.pump(yes_out)
    told = []
    reader = ends.reader(client, [topic], name="head", fd=head_in, on_closed=lambda: told.append(True)).start()

    assert head.wait(DEADLINE) == 0
    assert os.read(head_out, 100) == b"y\ny\ny\n"
    os.close(head_out)
    assert reader.wait(DEADLINE) and reader.closed.is_set() and told == [True]
    assert not reader.done.is_set() and reader.error is None

    writer.close()  # what the node agent does once every reader of yes's stdout has exited
    assert yes.wait(DEADLINE) == -signal.SIGPIPE


def test_close_stops_a_writer_blocked_by_an_unresponsive_broker(own_broker, own_client, names, ends, children):
    """close() returns and closes the child's stdout even while the pump waits for the broker."""
    yes, _, yes_out = children.spawn(["yes"])
    writer = ends.writer(own_client, [names.link("yes", "head")], name="yes", max_pending=4)
    own_broker.pause()
    pump = writer.pump(yes_out)
    wait_until(lambda: writer.pending > 4, DEADLINE, "the writer to block on the broker")
    writer.close(timeout=1)  # the producer's own close waits for a broker that does not answer
    assert not pump.is_alive()
    assert yes.wait(DEADLINE) == -signal.SIGPIPE
