"""Fixtures for the pipe protocol: real pulsar-lite brokers on free ports, clients, topics, readers."""

from __future__ import annotations

import os
import subprocess
import uuid

import pulsar
import pytest

from oneos.bus import client as bus_client
from oneos.bus import topics
from oneos.bus.reader import StreamReader
from oneos.bus.writer import StreamWriter
from tests.procs import BrokerProc


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """One broker for the tests that do not kill or pause it."""
    b = BrokerProc(tmp_path_factory.mktemp("pulsar") / "data").start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def client(broker):
    c = bus_client.connect(broker.url)
    yield c
    bus_client.close(c)


@pytest.fixture
def own_broker(tmp_path):
    """A broker of the test's own, which the test may kill, pause and restart."""
    b = BrokerProc(tmp_path / "pulsar").start()
    yield b
    b.stop()


@pytest.fixture
def own_client(own_broker):
    c = bus_client.connect(own_broker.url)
    yield c
    bus_client.close(c)


class Topics:
    """Topic names of a pipeline of the test's own (a fresh uid), as the node agent makes them."""

    namespace = "public/default"

    def __init__(self) -> None:
        self.uid = uuid.uuid4().hex

    def link(self, src: str = "a", dst: str = "b") -> str:
        return topics.link_topic(self.namespace, self.uid, src, dst)


@pytest.fixture
def names() -> Topics:
    return Topics()


class Ends:
    """Writers and readers a test makes; all closed and stopped afterwards, even on failure."""

    def __init__(self) -> None:
        self.writers: list[StreamWriter] = []
        self.readers: list[StreamReader] = []

    def writer(self, client: pulsar.Client, topic_list: list[str], incarnation: int = 0, **kw) -> StreamWriter:
        w = StreamWriter(client, topic_list, incarnation, name=kw.pop("name", "writer"), **kw)
        self.writers.append(w)
        return w

    def reader(self, client: pulsar.Client, topic_list: list[str], subscription: str = "oneos.b.0", **kw) -> StreamReader:
        r = StreamReader(client, topic_list, subscription, name=kw.pop("name", "reader"), **kw)
        self.readers.append(r)
        return r

    def collector(self, client: pulsar.Client, topic_list: list[str], subscription: str = "oneos.b.0",
                  **kw) -> tuple[StreamReader, bytearray]:
        """A started reader that collects what it delivers."""
        out = bytearray()
        return self.reader(client, topic_list, subscription, on_data=out.extend, **kw).start(), out

    def close(self) -> None:
        for r in self.readers:
            r.stop()
        for w in self.writers:
            w.close()


@pytest.fixture
def ends():
    e = Ends()
    yield e
    e.close()


class Children:
    """Child processes of a test, joined to the bus the way the node agent joins them."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def spawn(self, argv: list[str], stdin: bool = False) -> tuple[subprocess.Popen, int | None, int]:
        """Start `argv` with pipes; return it, the write end of its stdin (or None) and the read end of its stdout.

        The bus ends own these pipe ends; the test's own copies are closed at once, so the
        child sees EOF and EPIPE exactly when the bus ends close theirs.
        """
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE)
        self.procs.append(proc)
        stdin_fd = os.dup(proc.stdin.fileno()) if stdin else None
        stdout_fd = os.dup(proc.stdout.fileno())
        if stdin:
            proc.stdin.close()
        proc.stdout.close()
        return proc, stdin_fd, stdout_fd

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def children():
    c = Children()
    yield c
    c.kill()
