"""The one fixture changed in py-consul's own test suite: `oneos-nameserver` instead of a Consul container.

py-consul's root conftest.py starts a hashicorp/consul container for every test and hands the
tests `consul_instance` (and `consul_port` built on it). tests/peer/test_py_consul.py runs the
sdist's tests with this plugin (`-p py_consul_fixture`) and with `--confcutdir` past that
conftest, so these fixtures take its place and everything else is py-consul's own. As with the
container, every test gets a server of its own on a free port with an empty data directory:
py-consul's tests expect an empty store. `acl_consul_instance` is its ACL twin: as py-consul's
conftest starts Consul with ACLs on and `acl.tokens.initial_management` set to a fresh secret,
it starts `oneos-nameserver --acl --acl-initial-management-token-file` with one, and yields
(instance, secret) as that fixture does.

This module is loaded by name, outside our `tests` package, and imports nothing from it:
py-consul's tests are a package called `tests` too.
"""

from __future__ import annotations

import collections
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

# The shape py-consul's conftest gives: (container, port, version); `container` is our process.
ConsulInstance = collections.namedtuple("ConsulInstance", ["container", "port", "version"])

READY = re.compile(r"serving https?://([^:]+):(\d+) ")


class NameServer:
    """`oneos-nameserver --listen 127.0.0.1:0`: the port is the one its ready line names."""

    def __init__(self, data_dir: Path, acl_token: str | None = None) -> None:
        self.log_path = data_dir.parent / "nameserver.log"
        self.port: int | None = None
        # py-consul's conftest runs `consul agent -dev`, which keeps its store in memory: no fsync either.
        # (With it, a write under load can take longer than the 20 ms its test_kv_missing allows.)
        argv = [str(Path(sys.executable).parent / "oneos-nameserver"), "--listen", "127.0.0.1:0",
                "--data-dir", str(data_dir), "--no-fsync"]
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        if acl_token is not None:
            token_file = data_dir.parent / "initial-management-token"
            token_file.touch(mode=0o600)
            token_file.write_text(acl_token)
            argv += ["--acl", "--acl-initial-management-token-file", str(token_file)]
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                                          start_new_session=True)

    def ready(self, timeout: float = 20) -> "NameServer":
        """Wait for the ready line and take the port from it."""
        line = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.popen.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self.stop()
                    raise AssertionError(f"oneos-nameserver printed no ready line in {timeout}s: {self.log()}")
                chunk = os.read(self.popen.stdout.fileno(), 4096)
                if not chunk:
                    self.stop()
                    raise AssertionError(f"oneos-nameserver exited with {self.popen.wait()}: {self.log()}")
                line += chunk
        found = READY.search(line.decode(errors="replace"))
        if not found:
            self.stop()
            raise AssertionError(f"oneos-nameserver's ready line names no address: {line!r}")
        self.port = int(found.group(2))
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace").strip() or "(its log is empty)"

    def terminate(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, and SIGKILL for it and its group if it has not exited within `timeout`."""
        self.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.popen.wait()
        self.popen.stdout.close()


class NameServers:
    """Every test's own server, each started while the test before it runs, and stopped (SIGTERM)
    as its test ends while the next one runs: starting and stopping take about half a second, a
    py-consul test a few milliseconds. `close()` stops whatever is left."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._count = 0
        self._spare: NameServer | None = None
        self._stopping: list[NameServer] = []

    def _launch(self, acl_token: str | None = None) -> NameServer:
        self._count += 1
        return NameServer(self._root / f"nameserver-{self._count}" / "data", acl_token)

    def take(self) -> NameServer:
        server, self._spare = self._spare or self._launch(), None
        self._spare = self._launch()
        return server.ready()

    def take_acl(self, token: str) -> NameServer:
        """A server with ACLs on and `token` its initial management token (not kept spare: its secret is new)."""
        return self._launch(token).ready()

    def release(self, server: NameServer) -> None:
        server.terminate()
        self._stopping.append(server)
        still = []
        for s in self._stopping:
            if s.popen.poll() is None:
                still.append(s)
            else:
                s.stop()
        self._stopping = still

    def close(self) -> None:
        for server in self._stopping + ([self._spare] if self._spare else []):
            server.stop()
        self._stopping, self._spare = [], None


@pytest.fixture(scope="session")
def nameservers(tmp_path_factory):
    servers = NameServers(tmp_path_factory.mktemp("nameservers"))
    try:
        yield servers
    finally:
        servers.close()


@pytest.fixture(scope="session", autouse=True)
def _unset_consul_token():
    """As py-consul's conftest: a token from the environment must not reach the tests."""
    os.environ.pop("CONSUL_HTTP_TOKEN", None)


@pytest.fixture
def consul_instance(nameservers):
    server = nameservers.take()
    try:
        # py-consul's conftest reads the version the same way (only its version-gated tests use it).
        version = requests.get(f"http://127.0.0.1:{server.port}/v1/agent/self", timeout=10).json()["Config"]["Version"]
        yield ConsulInstance(server, server.port, version.strip())
    finally:
        nameservers.release(server)


@pytest.fixture
def acl_consul_instance(nameservers):
    token = uuid.uuid4().hex
    server = nameservers.take_acl(token)
    try:
        # With ACLs on, /v1/agent/self wants agent:read: the management token has it.
        version = requests.get(f"http://127.0.0.1:{server.port}/v1/agent/self", headers={"X-Consul-Token": token},
                               timeout=10).json()["Config"]["Version"]
        yield ConsulInstance(server, server.port, version.strip()), token
    finally:
        nameservers.release(server)


@pytest.fixture
def consul_port(consul_instance):
    return consul_instance.port, consul_instance.version
