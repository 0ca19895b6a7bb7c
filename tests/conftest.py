"""Shared fixtures: a Name Server (built-in, or real Consul via CONSUL_HTTP_ADDR) and clients."""

from __future__ import annotations

import contextlib
import os
import uuid

import pytest

from oneos.nameserver.client import NameServer
from tests.cluster import EMPTY_INIT, TEST_USER, Cluster
from tests.procs import BrokerProc, NameServerProc

# The modules that take longest, most of it waiting on session TTLs, longest first. `make test`
# hands whole modules to its test processes in collection order (--dist loadfile): these go
# first, so that the others fill the time they spend waiting instead of leaving one of them
# to run alone at the end. A module not listed keeps its place after them.
LONGEST_FIRST = [
    "tests/peer/test_py_consul.py",
    "tests/security/test_enrollment.py",
    "tests/test_dev.py",
    "tests/e2e/test_membership.py",
    "tests/e2e/test_nameserver_restart.py",
    "tests/e2e/test_bounded_disk.py",
    "tests/faults/test_node_loss.py",
    "tests/e2e/test_pipelines.py",
    "tests/e2e/test_bash_equivalence.py",
    "tests/nameserver/test_sessions.py",
    "tests/e2e/test_devices.py",
    "tests/faults/test_control_plane.py",
    "tests/security/test_pulsar_tls.py",
    "tests/e2e/test_restarts.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {module: n for n, module in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.partition("::")[0], len(rank)))   # stable: in-module order kept

REAL_CONSUL = os.environ.get("CONSUL_HTTP_ADDR")


@pytest.fixture(scope="session")
def nameserver_url(tmp_path_factory):
    """One Name Server for the session: real Consul when CONSUL_HTTP_ADDR is set, else the built-in one."""
    if REAL_CONSUL:
        yield NameServer(REAL_CONSUL).url
        return
    proc = NameServerProc(tmp_path_factory.mktemp("ns") / "data").start()
    try:
        yield proc.url
    finally:
        proc.stop()


@pytest.fixture
def ns(nameserver_url) -> NameServer:
    return NameServer(nameserver_url)


@pytest.fixture
def prefix(ns) -> str:
    """A key prefix no other test uses; removed afterwards."""
    p = f"test/{uuid.uuid4().hex[:12]}/"
    yield p
    try:
        ns.delete(p, recurse=True)
    except Exception:  # noqa: BLE001 - the server may have been stopped by the test
        pass


@pytest.fixture
def builtin_nameserver(tmp_path):
    """A built-in Name Server of the test's own, which the test may kill and restart."""
    if REAL_CONSUL:
        pytest.skip("kills and restarts the server: built-in Name Server only")
    proc = NameServerProc(tmp_path / "ns-data").start()
    yield proc
    proc.stop()


@pytest.fixture
def cluster(builtin_nameserver, tmp_path):
    """A bootstrapped cluster on a Name Server of the test's own; `cluster.start(id)` adds runtimes."""
    c = Cluster(builtin_nameserver, tmp_path)
    c.bootstrap()
    yield c
    c.stop()


@contextlib.contextmanager
def running_cluster(root, nodes: dict[str, list[str]], init: str = EMPTY_INIT, tls=None, agent_user=TEST_USER,
                    **boot_fields):
    """Name Server, pulsar-lite and the runtimes `nodes` (id -> oneosd flags), all stopped at the end;
    `boot_fields` go into the boot record. With `tls` (tests.tlsfiles.TLSFiles) the Name Server
    speaks HTTPS and asks for client certificates; everyone finds it by Consul's variables only.
    Agents run as `agent_user` (None: the nodes' default, as a user's nodes run them)."""
    if REAL_CONSUL:
        pytest.skip("starts its own Name Server: built-in Name Server only")
    nameserver = NameServerProc(root / "ns-data", tls=tls, verify_incoming=tls is not None).start()
    broker = BrokerProc(root / "pulsar")
    env = None if tls is None else {"CONSUL_HTTP_ADDR": f"127.0.0.1:{nameserver.port}", "CONSUL_HTTP_SSL": "true",
                                    **tls.client_env()}
    c = Cluster(nameserver, root, env, agent_user=agent_user)
    try:
        broker.start()
        c.broker = broker
        c.bootstrap(broker.url, init, **boot_fields)
        for node_id, flags in nodes.items():
            c.start(node_id, *flags)
        c.wait_for(c.leader, 20, "a leader")
        yield c
    finally:
        c.stop()
        broker.stop()
        nameserver.stop()


@pytest.fixture(scope="module")
def three_nodes(tmp_path_factory):
    """A cluster that runs pipelines: Name Server, pulsar-lite, and three runtimes n1 (kernel), n2, n3.

    Shared by the tests of a module, as a user's cluster serves many runs.
    """
    with running_cluster(tmp_path_factory.mktemp("cluster"),
                         {"n1": ["--kernel"], "n2": ["--no-kernel"], "n3": ["--no-kernel"]}) as c:
        yield c
