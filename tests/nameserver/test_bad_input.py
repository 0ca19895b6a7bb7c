"""Bad input gets Consul's answer: a 400 (or Consul's own code) with a one-line reason, never a
500 with a traceback; keys that are not valid UTF-8 are refused; connections per client are
capped and idle ones closed, so a flood cannot grow the server's threads without bound.

Each test is what a client sees over real HTTP (raw sockets where a library would refuse to send
such a request) against a real `oneos-nameserver` process of this module's own.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.conftest import REAL_CONSUL
from tests.procs import NameServerProc

pytestmark = pytest.mark.skipif(bool(REAL_CONSUL), reason="reads the built-in server's log and /proc")

IDLE_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = NameServerProc(tmp_path_factory.mktemp("ns-bad") / "data").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def short_idle_server(tmp_path_factory):
    proc = NameServerProc(tmp_path_factory.mktemp("ns-idle") / "data",
                          extra=["--idle-timeout", str(IDLE_TIMEOUT)]).start()
    yield proc
    proc.stop()


def read_response(sock: socket.socket) -> tuple[int, str, str]:
    """One response from the socket: status, head, body (read to its Content-Length, or to EOF)."""
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            lengths = [line.split(b":", 1)[1] for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")]
            if lengths and len(body) >= int(lengths[0]):
                break
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), head.decode("latin-1"), body.decode("utf-8", "replace")


def exchange(port: int, raw: bytes, timeout: float = 5.0) -> tuple[int, str]:
    """Send raw bytes on a new connection; the status and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        status, _, body = read_response(sock)
    return status, body


def request(method: str, path: str, body: bytes | str = b"", headers: str = "") -> bytes:
    body = body.encode() if isinstance(body, str) else body
    return (f"{method} {path} HTTP/1.1\r\nHost: ns\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
            f"{headers}\r\n").encode() + body


def chunked(path: str, chunks: bytes) -> bytes:
    return (f"PUT {path} HTTP/1.1\r\nHost: ns\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
            .encode() + chunks)


def txn_op(**kv) -> str:
    return json.dumps([{"KV": {"Verb": "set", "Key": "bad/k", **kv}}])


HUGE = "1" + "0" * 400
CASES = [
    # blocking-query parameters
    ("wait beyond int64", request("GET", "/v1/kv/bad/k?index=1&wait=99999999999999999h"), 400, "Invalid wait time"),
    ("wait overflowing a float", request("GET", f"/v1/kv/bad/k?index=1&wait={HUGE}s"), 400, "Invalid wait time"),
    ("wait not a duration", request("GET", "/v1/kv/bad/k?index=1&wait=soon"), 400, "Invalid wait time"),
    ("index not a number", request("GET", "/v1/kv/bad/k?index=abc"), 400, "Invalid index"),
    ("index a non-ASCII digit", request("GET", "/v1/kv/bad/k?index=%C2%B2"), 400, "Invalid index"),
    ("index negative", request("GET", "/v1/kv/bad/k?index=-1"), 400, "Invalid index"),
    ("cas not a number", request("PUT", "/v1/kv/bad/k?cas=x", "v"), 400, "Invalid CAS index"),
    ("flags a float", request("PUT", "/v1/kv/bad/k?flags=1.5", "v"), 400, "Invalid flags"),
    ("flags past uint64", request("PUT", "/v1/kv/bad/k?flags=18446744073709551616", "v"), 400, "Invalid flags"),
    ("query not UTF-8", request("GET", "/v1/kv/bad/?keys&separator=%ff"), 400, "not valid UTF-8"),
    # session bodies
    ("lock-delay NaN", request("PUT", "/v1/session/create", '{"LockDelay": NaN}'), 400, "Request decode failed"),
    ("lock-delay Infinity", request("PUT", "/v1/session/create", '{"LockDelay": Infinity}'), 400,
     "Request decode failed"),
    ("lock-delay 1e400", request("PUT", "/v1/session/create", '{"LockDelay": 1e400}'), 400, "LockDelay"),
    ("lock-delay 'NaN'", request("PUT", "/v1/session/create", '{"LockDelay": "NaN"}'), 400, "invalid duration"),
    ("lock-delay a list", request("PUT", "/v1/session/create", '{"LockDelay": [1]}'), 400, "LockDelay"),
    ("TTL a number", request("PUT", "/v1/session/create", '{"TTL": 15}'), 400, "TTL must be a string"),
    ("TTL overflowing", request("PUT", "/v1/session/create", f'{{"TTL": "{HUGE}h"}}'), 400, "Session TTL"),
    ("Name a number", request("PUT", "/v1/session/create", '{"Name": 5}'), 400, "Name must be a string"),
    ("Behavior a list", request("PUT", "/v1/session/create", '{"Behavior": ["x"]}'), 400, "Behavior"),
    ("Checks a string", request("PUT", "/v1/session/create", '{"Checks": "serfHealth"}'), 400, "Checks"),
    ("Checks a number", request("PUT", "/v1/session/create", '{"Checks": 5}'), 400, "Checks"),
    ("ServiceChecks an object", request("PUT", "/v1/session/create", '{"ServiceChecks": {"a": 1}}'), 400,
     "ServiceChecks"),
    ("session body a list", request("PUT", "/v1/session/create", "[1]"), 400, "Request decode failed"),
    ("session body not JSON", request("PUT", "/v1/session/create", "{"), 400, "Request decode failed"),
    ("session body nested too deeply", request("PUT", "/v1/session/create", "[" * 100_000 + "]" * 100_000), 400,
     "nested too deeply"),
    # txn bodies
    ("txn not a list", request("PUT", "/v1/txn", "{}"), 400, "Failed to parse body"),
    ("txn not JSON", request("PUT", "/v1/txn", "["), 400, "Failed to parse body"),
    ("txn op a number", request("PUT", "/v1/txn", "[1]"), 400, "Failed to parse body"),
    ("txn verb a list", request("PUT", "/v1/txn", '[{"KV": {"Verb": ["set"]}}]'), 400, "unknown KV verb"),
    ("txn unknown verb", request("PUT", "/v1/txn", '[{"KV": {"Verb": "frob"}}]'), 400, "unknown KV verb"),
    ("txn key a number", request("PUT", "/v1/txn", txn_op(Key=5)), 400, "Key must be a string"),
    ("txn flags a string", request("PUT", "/v1/txn", txn_op(Flags="x")), 400, "Flags must be"),
    ("txn flags a fraction", request("PUT", "/v1/txn", txn_op(Flags=1.5)), 400, "Flags must be"),
    ("txn flags negative", request("PUT", "/v1/txn", txn_op(Flags=-1)), 400, "Flags must be"),
    ("txn flags Infinity", request("PUT", "/v1/txn", '[{"KV": {"Verb": "set", "Key": "k", "Flags": Infinity}}]'),
     400, "Failed to parse body"),
    ("txn index a list", request("PUT", "/v1/txn", txn_op(Verb="cas", Index=[1])), 400, "Index must be"),
    ("txn session an object", request("PUT", "/v1/txn", txn_op(Verb="lock", Session={})), 400,
     "Session must be a string"),
    ("txn value not base64", request("PUT", "/v1/txn", txn_op(Value=5)), 400, "failed to decode value"),
    ("txn too many ops", request("PUT", "/v1/txn", json.dumps([{"KV": {"Verb": "get", "Key": "k"}}] * 129)), 413,
     "too many operations"),
    ("txn key NUL", request("PUT", "/v1/txn", txn_op(Key="a\u0000b")), 400, "NUL"),
    ("txn key lone surrogate", request("PUT", "/v1/txn", '[{"KV": {"Verb": "set", "Key": "a\\ud800"}}]'), 400,
     "not valid UTF-8"),
    # keys in the URL
    ("key %ff", request("PUT", "/v1/kv/bad/%ffkey", "v"), 400, "not valid UTF-8"),
    ("key raw 0xff byte", b"PUT /v1/kv/bad/\xffkey HTTP/1.1\r\nHost: ns\r\nConnection: close\r\n"
                          b"Content-Length: 1\r\n\r\nv", 400, "not valid UTF-8"),
    ("key NUL", request("PUT", "/v1/kv/bad/a%00b", "v"), 400, "NUL"),
    # bodies
    ("chunk size not hex", chunked("/v1/kv/bad/k", b"zz\r\nabc\r\n0\r\n\r\n"), 400, "chunked encoding"),
    ("chunk size negative", chunked("/v1/kv/bad/k", b"-5\r\nabc\r\n0\r\n\r\n"), 400, "chunked encoding"),
    ("chunk size past int64", chunked("/v1/kv/bad/k", b"f" * 40 + b"\r\nabc\r\n0\r\n\r\n"), 400, "chunked encoding"),
    ("chunk without CRLF", chunked("/v1/kv/bad/k", b"3\r\nabcXX0\r\n\r\n"), 400, "chunked encoding"),
    ("Content-Length huge", b"PUT /v1/kv/bad/k HTTP/1.1\r\nHost: ns\r\nConnection: close\r\n"
                            b"Content-Length: 99999999999999999999999\r\n\r\nabc", 413, "too large"),
    ("Content-Length negative", b"PUT /v1/kv/bad/k HTTP/1.1\r\nHost: ns\r\nConnection: close\r\n"
                                b"Content-Length: -1\r\n\r\n", 400, "Invalid Content-Length"),
    ("value over 512 KiB", request("PUT", "/v1/kv/bad/k", b"x" * (512 * 1024 + 1)), 413, "too large"),
]


@pytest.mark.parametrize("raw,status,phrase", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_request_is_refused_with_a_reason(server, raw, status, phrase):
    got, body = exchange(server.port, raw)
    assert (got, phrase in body) == (status, True), body
    assert body.count("\n") == 1, f"not one line: {body!r}"


def test_no_traceback_in_the_log(server):
    """Runs after the table (same module, file order): none of it was an internal error."""
    for _name, raw, _status, _phrase in CASES:
        exchange(server.port, raw)
    log = server.log()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]


def test_key_not_utf8_is_not_merged_into_another(server):
    """%ff would decode to U+FFFD: it must not store (or read) the key 'bad/\ufffd'."""
    assert exchange(server.port, request("PUT", "/v1/kv/bad/%ff", "one"))[0] == 400
    assert exchange(server.port, request("GET", "/v1/kv/bad/%ff"))[0] == 400
    assert exchange(server.port, request("GET", "/v1/kv/bad/%EF%BF%BD"))[0] == 404
    assert exchange(server.port, request("PUT", "/v1/kv/bad/%EF%BF%BD", "two")) == (200, "true")
    status, body = exchange(server.port, request("GET", "/v1/kv/bad/%EF%BF%BD"))
    assert status == 200 and json.loads(body)[0]["Value"] == "dHdv"   # "two"


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def test_connections_per_client_are_capped_at_200(server):
    base = threads(server.pid)
    idle = []
    try:
        for _ in range(200):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        wait_for(lambda: threads(server.pid) >= base + 200, 60, "a thread for each of 200 connections")
        status, body = exchange(server.port, request("GET", "/v1/status/leader"))
        assert status == 429 and "too many concurrent connections" in body
        assert threads(server.pid) <= base + 200
        # one of the 200 still works
        idle[0].sendall(b"GET /v1/status/leader HTTP/1.1\r\nHost: ns\r\n\r\n")
        assert read_response(idle[0])[0] == 200
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: threads(server.pid) <= base, 60, "the threads of closed connections to end")
    assert exchange(server.port, request("GET", "/v1/status/leader"))[0] == 200


def test_idle_connection_is_closed_after_the_timeout(short_idle_server):
    with socket.create_connection(("127.0.0.1", short_idle_server.port), timeout=10) as sock:
        sock.sendall(b"GET /v1/status/leader HTTP/1.1\r\nHost: ns\r\n\r\n")
        assert read_response(sock)[0] == 200
        started = time.monotonic()
        assert sock.recv(4096) == b""             # the server closed it: recv blocks until then
        assert IDLE_TIMEOUT * 0.5 <= time.monotonic() - started < IDLE_TIMEOUT + 5


def test_stalled_body_is_dropped_after_the_timeout(short_idle_server):
    with socket.create_connection(("127.0.0.1", short_idle_server.port), timeout=10) as sock:
        sock.sendall(b"PUT /v1/kv/bad/k HTTP/1.1\r\nHost: ns\r\nContent-Length: 10\r\n\r\nabc")
        assert sock.recv(4096) == b""
    assert "Traceback" not in short_idle_server.log()


def test_blocking_query_longer_than_the_idle_timeout_still_answers(short_idle_server):
    """A long poll waits in the store, not on the socket: it is not idle."""
    assert exchange(short_idle_server.port, request("PUT", "/v1/kv/bad/other", "v"))[0] == 200
    with socket.create_connection(("127.0.0.1", short_idle_server.port), timeout=5) as sock:
        sock.sendall(request("GET", "/v1/kv/bad/missing"))
        head = read_response(sock)[1]
    index = next(line.split(":")[1].strip() for line in head.split("\r\n")
                 if line.lower().startswith("x-consul-index:"))
    url = f"/v1/kv/bad/missing?index={index}&wait={IDLE_TIMEOUT * 2:g}s"
    started = time.monotonic()
    status, _ = exchange(short_idle_server.port, request("GET", url), timeout=10)
    assert status == 404 and time.monotonic() - started >= IDLE_TIMEOUT * 2
