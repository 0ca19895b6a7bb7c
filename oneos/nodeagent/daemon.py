"""`oneosd`: the OneOS runtime on one machine.

It reads the boot record, joins the cluster under its runtime id (a TTL session holding
its node record and its heartbeat), renews that session every TTL/2 and writes the time
of each renewal in its heartbeat (`oneosctl get nodes` shows NotReady once it is older
than the TTL), and, on a kernel runtime, contends for leadership. SIGTERM or Ctrl-C leaves at once: the session is destroyed, so the node
disappears from `oneosctl get nodes` immediately.

The runtime owns its parts and stops them in order: its heartbeat and lease watchdog,
then the election (and with it the controller), the supervisor (and every agent), and
last the membership.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import sys
import threading
import time
import urllib.parse
from typing import Any, Mapping

from oneos import __version__, state
from oneos.bus import client as bus_client
from oneos.bus.admin import PulsarAdmin
from oneos.controller.controller import Controller
from oneos.controller.election import Election
from oneos.durations import parse_seconds
from oneos.errors import OneOSError
from oneos.gpio.pins import SIM_ENV
from oneos.identity import Identity
from oneos.nameserver.client import NameServer, NameServerError, NameServerUnreachable
from oneos.nodeagent import config as runtime_config
from oneos.nodeagent import devices, hardware
from oneos.nodeagent.lease import Lease
from oneos.nodeagent.membership import DuplicateRuntime, Membership
from oneos.nodeagent.sandbox import Sandbox, private_folder, python_home
from oneos.nodeagent.supervisor import Supervisor
from oneos.service import Service

log = logging.getLogger("oneos.nodeagent")

RECONNECT_MAX_S = 10.0


def local_address(nameserver: str) -> str:
    """The address this machine uses to reach the Name Server: what other nodes can reach it at."""
    parsed = urllib.parse.urlsplit(nameserver)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((parsed.hostname or "127.0.0.1", parsed.port or 8500))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


class Runtime(Service):
    """One OneOS runtime: membership, heartbeat and (on kernel runtimes) the election."""

    def __init__(self, cfg: runtime_config.RuntimeConfig, *, wait_s: float = 60.0,
                 agent_env: Mapping[str, str] | None = None) -> None:
        """`agent_env`: settings this node gives its agents, besides its own (see agent_env())."""
        super().__init__(f"runtime {cfg.id}")
        self.cfg = cfg
        self.ns = NameServer(cfg.nameserver, token=cfg.token)
        self.identity = Identity.load_or_create(cfg.key_file)
        self.wait_s = wait_s
        self.boot: dict[str, Any] = {}
        self.pulsar: bus_client.Access | None = None   # how this node reaches the broker (from the boot record)
        self.kernel = cfg.kernel
        self.started_at = state.utcnow()
        self.address = local_address(cfg.nameserver)
        self.machine = hardware.describe()
        self.detected = hardware.detect_labels(simulated_gpio=cfg.gpio_simulate)
        self.membership: Membership | None = None
        self.election: Election | None = None
        self.controller: Controller | None = None
        self.supervisor: Supervisor | None = None
        self._settings = dict(agent_env or {})
        self._failed: OneOSError | None = None
        self._lease: Lease | None = None     # the membership session's renewals (heartbeat and watchdog)
        self._lease_lock = threading.Lock()

    def record(self) -> dict[str, Any]:
        """This runtime's node record, as stored at oneos/nodes/<id>."""
        return {
            "id": self.cfg.id,
            "host": socket.gethostname(),
            "address": self.address,
            "pid": os.getpid(),
            "kernel": self.kernel,
            "state": "Ready",
            "labels": hardware.node_labels(self.detected, self.cfg.labels),
            "devices": dict(self.cfg.devices),
            "capacity": {"cpu": self.machine["cpu"], "memory": self.cfg.memory or self.machine["memory"]},
            "arch": self.machine["arch"],
            "os": self.machine["os"],
            "versions": {"oneos": __version__, "python": platform.python_version()},
            "startedAt": self.started_at,
        }

    def agent_env(self) -> dict[str, str]:
        """What this node adds to its agents' environment: the settings it was given, and its
        simulated GPIO board, if it has one (as an absolute path: agents run in folders of their own)."""
        env = dict(self._settings)
        if self.cfg.gpio_simulate is not None:
            env[SIM_ENV] = str(self.cfg.gpio_simulate)
        return env

    def _read_boot(self) -> dict[str, Any]:
        """The boot record, retrying with backoff while the Name Server is unreachable."""
        deadline = time.monotonic() + self.wait_s
        delay = 0.5
        while True:
            try:
                return state.read_boot(self.ns)
            except NameServerUnreachable as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise OneOSError(f"gave up after {self.wait_s:g}s: {exc}") from None
                delay = min(delay, left)
                log.warning("%s; retrying in %.1fs", exc, delay)
                if self.stopping.wait(delay):
                    raise OneOSError("stopped while waiting for the Name Server") from None
                delay = min(delay * 2, RECONNECT_MAX_S)

    def _launch(self) -> None:
        """Join the cluster (start() calls it); raises OneOSError with a message for people when it cannot."""
        sandbox = self._sandbox()     # first: a node that cannot confine its agents does not join
        self.boot = self._read_boot()
        ttl = max(10, round(parse_seconds(self.boot["sessionTTL"])))
        lock_delay = round(parse_seconds(self.boot["lockDelay"]))
        self.kernel = self.cfg.kernel or self.cfg.id in self.boot.get("kernelNodes", [])
        # Checked before joining: a node that cannot reach the broker must not take agents.
        self.pulsar = pulsar = bus_client.access(self.boot["pulsar"], token_file=self.cfg.pulsar_token_file,
                                                 trust_certs_file=self.cfg.pulsar_trust_certs_file)
        self.membership = Membership(self.ns, self.cfg.id, self.record, ttl)
        log.info("hardware: %s", ",".join(f"{k}={v}" for k, v in sorted(self.detected.items())) or "nothing detected")
        self.membership.join()
        self._heartbeat()
        devices.register(self.ns, self.cfg.id, self.cfg.devices)
        log.info("joined cluster %r at %s as %s runtime (session TTL %ss)", self.boot["cluster"],
                 self.cfg.nameserver, "a kernel" if self.kernel else "a", ttl)
        membership = self.membership
        self.supervisor = Supervisor(self.ns, self.cfg.id, self.boot, self.cfg.data_dir / "agents",
                                     bus_factory=lambda: bus_client.connect(pulsar),
                                     lease=lambda: membership.session, devices=self.cfg.devices,
                                     agent_env=self.agent_env(), log_limits=self.cfg.logs, kernel_node=self.kernel,
                                     sandbox=sandbox)
        self.supervisor.start()
        self._lease = Lease(ttl, renewed_at=time.monotonic())
        self.spawn(self._watch_lease, "lease watchdog")
        if self.kernel:
            self.election = Election(self.ns, self.cfg.id, ttl, lock_delay,
                                     on_elected=self._lead, on_deposed=self._step_down)
            self.election.start()
        self.spawn(self._beat, "heartbeat")

    def _sandbox(self) -> Sandbox:
        """How agents are confined here (said once in the log); the node's folders closed to them.

        $ONEOS_HOME and the runtime's data folder are 0711: an agent may pass through them to its
        own working directory (whose absolute path it is given: device FIFOs, Python's sys.path)
        but list or read nothing in them; the node's secrets in them are 0600, its logs 0700."""
        sandbox = Sandbox.prepare(self.cfg.agent_user, self.cfg.id)
        for folder in (self.cfg.home, self.cfg.home / "runtimes", self.cfg.data_dir):
            private_folder(folder, 0o711)
        sandbox.warn_unreachable("their working directories in", self.cfg.data_dir / "agents")
        sandbox.warn_unreachable("OneOS's Python", python_home())
        board = self.cfg.gpio_simulate
        if board is not None and sandbox.user is not None:
            # The agents' pins are files there, replaced by rename: they write the folder.
            board.mkdir(parents=True, exist_ok=True)
            fd = os.open(board, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if os.fstat(fd).st_uid == os.geteuid():
                    sandbox.own(fd)
            finally:
                os.close(fd)
            sandbox.warn_unreachable("the simulated GPIO board", board)
        return sandbox

    def _lead(self) -> None:
        election = self.election
        pulsar = self.pulsar
        self.controller = Controller(self.ns, leader_session=lambda: election.session if election else None,
                                     pulsar_admin=lambda url: PulsarAdmin(url, token=pulsar.token,
                                                                          trust_certs_file=pulsar.trust_certs_file))
        self.controller.start()

    def _step_down(self) -> None:
        if self.controller:
            self.controller.stop()
            self.controller = None

    def _beat(self) -> None:
        """Renew the sessions on the lease's schedule; re-join if the session was lost; ride out outages."""
        assert self.membership is not None and self.supervisor is not None and self._lease is not None
        while True:
            with self._lease_lock:
                wait = self._lease.next_renewal()
            if self.stopping.wait(wait):
                return
            try:
                if self.membership.renew():
                    self._renewed()
                    self.supervisor.resume()
                else:
                    # The cluster has written this node off: what ran here may run elsewhere now.
                    self.supervisor.suspend("the membership session ended (the cluster took this node for dead)")
                    log.warning("the membership session was lost (expired or destroyed); joining again")
                    self.membership.join()
                    self._renewed()
                    self.supervisor.resume()
                if self.election:
                    self.election.renew()
            except NameServerUnreachable as exc:
                with self._lease_lock:
                    first = self._lease.unreachable(time.monotonic())
                if first:
                    log.warning("%s; retrying every second", exc)
            except DuplicateRuntime as exc:
                log.error("%s", exc)
                self._failed = exc
                self.cancel()
                return
            except NameServerError as exc:
                log.warning("heartbeat: %s; retrying", exc)

    def _heartbeat(self) -> None:
        """Write the heartbeat after a renewal (see Membership.beat); a failure only leaves it older."""
        assert self.membership is not None
        try:
            self.membership.beat()
        except (NameServerUnreachable, NameServerError) as exc:
            log.debug("heartbeat not written: %s", exc)

    def _renewed(self) -> None:
        """After the session was renewed (or joined again): the lease starts over, the heartbeat says so."""
        with self._lease_lock:
            outage = self._lease.renewed(time.monotonic())
        if outage is not None:
            log.info("the Name Server is back after %.0fs", outage)
        self._heartbeat()

    def _watch_lease(self) -> None:
        """Stop every agent before the cluster can take this node for dead (self-fencing, see lease.py)."""
        assert self._lease is not None and self.supervisor is not None
        while True:
            with self._lease_lock:
                wait = self._lease.next_check(time.monotonic())
            if self.stopping.wait(wait):
                return
            with self._lease_lock:
                now = time.monotonic()
                fence, silent, ttl = self._lease.must_fence(now), self._lease.silent(now), self._lease.ttl
            if not fence:
                continue
            self.supervisor.suspend(f"no contact with the Name Server for {silent:.0f}s (session TTL {ttl:g}s): "
                                    "its agents may be placed elsewhere")
            # A renewal that came while this was stopping the agents found nothing to resume yet.
            with self._lease_lock:
                renewed = not self._lease.must_fence(time.monotonic())
            if renewed:
                try:
                    self.supervisor.resume()
                except (NameServerUnreachable, NameServerError):
                    pass   # the heartbeat resumes after its next renewal

    def wait(self) -> None:
        """Block until stop() or a fatal error; raises that error."""
        while not self.stopping.wait(0.5):
            pass
        if self._failed:
            raise self._failed

    def request_stop(self) -> None:
        """Ask wait() to return (from a signal handler): sets `stopping`, nothing more."""
        self.stopping.set()

    def _release(self) -> None:
        """Leave the cluster at once: release leadership, stop every agent, destroy the membership session."""
        if self.election:
            self.election.stop()
        if self.supervisor:
            self.supervisor.stop()
        if self.membership:
            try:
                self.membership.leave()
            except (NameServerUnreachable, NameServerError) as exc:
                log.warning("could not leave cleanly (%s); the node record expires within 2×TTL", exc)


def setup_logging(prefix: str, verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format=f"{prefix}: %(message)s", force=True)
    # Each request of the HTTP client library is noise for people.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
