"""The Pulsar client: one per process, quiet on stdout, errors on stderr."""

from __future__ import annotations

import subprocess
import sys

import pytest

from oneos.bus import client as bus_client
from oneos.errors import OneOSError
from tests.procs import free_port

SCRIPT = """
import sys
from oneos.bus import client
c = client.connect(sys.argv[1], operation_timeout=2, connection_timeout=0.5)
try:
    p = c.create_producer("persistent://public/default/oneos-client-test")
    p.send(b"x")
except Exception as exc:
    print("failed:", exc, file=sys.stderr)
client.close(c)
"""


def run(url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, url], capture_output=True, text=True, timeout=60)


def test_a_working_client_prints_nothing(broker):
    done = run(broker.url)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""


def test_an_unreachable_broker_is_reported_on_stderr_only():
    done = run(f"pulsar://127.0.0.1:{free_port()}")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "Connection refused" in done.stderr and "failed:" in done.stderr
    assert " INFO " not in done.stderr and " DEBUG " not in done.stderr


def test_a_url_that_is_not_pulsar_is_refused():
    with pytest.raises(OneOSError, match="pulsar://HOST:PORT"):
        bus_client.connect("http://127.0.0.1:8080")


def test_close_is_safe_twice(broker):
    c = bus_client.connect(broker.url)
    bus_client.close(c)
    bus_client.close(c)
