"""How the client reports a Name Server that breaks off: one sentence, as NameServerUnreachable."""

from __future__ import annotations

import socket
import threading

import pytest

from oneos.nameserver.client import NameServer, NameServerUnreachable


@pytest.fixture
def cut_short():
    """A peer on a free port that starts a chunked answer to each request, then closes mid-body
    (what a Name Server killed in the middle of a reply leaves)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.1)    # so that the thread sees `stop` soon
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Consul-Index: 7\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n40\r\n[{\"Key\": \"a\"")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    listener.close()


def test_an_answer_cut_short_is_reported_as_unreachable(cut_short):
    with pytest.raises(NameServerUnreachable) as err:
        NameServer(cut_short).get_tree("oneos/")
    assert cut_short in str(err.value) and "broke off" in str(err.value)
    assert "\n" not in str(err.value)
