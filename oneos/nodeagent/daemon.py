"""`oneosd`: the OneOS runtime on one machine.

It reads the boot record, makes sure its key is registered (enroll(): asks to join and waits
for approval when it is not, then uses the token sealed to it), joins the cluster under its
runtime id (a TTL session holding its node record and its heartbeat), renews that session
every TTL/2 and writes the time of each renewal in its heartbeat (`oneosctl get nodes` shows NotReady once it is older
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
from pathlib import Path
from typing import Any, Mapping

from oneos import __version__, enrollment, state
from oneos.bus import client as bus_client
from oneos.bus.admin import PulsarAdmin
from oneos.controller.controller import Controller
from oneos.controller.election import Election
from oneos.durations import parse_seconds
from oneos.errors import OneOSError
from oneos.gpio.pins import SIM_ENV
from oneos.identity import Identity, IdentityError
from oneos.nameserver.client import NameServer, NameServerError, NameServerUnreachable
from oneos.nodeagent import config as runtime_config
from oneos.nodeagent import devices, hardware
from oneos.nodeagent.lease import Lease
from oneos.nodeagent.membership import DuplicateRuntime, Membership
from oneos.nodeagent.sandbox import Sandbox, private_folder, python_home
from oneos.nodeagent.supervisor import Supervisor
from oneos.secretfiles import read_secret, write_secret
from oneos.service import Service

log = logging.getLogger("oneos.nodeagent")

RECONNECT_MAX_S = 10.0
APPROVAL_POLL_S = 2.0       # each blocking read of oneos/keys/<id> while waiting for approval
APPROVAL_SAY_S = 10.0       # how often the wait says it is still waiting


def local_address(nameserver: str) -> str:
    """The address this machine uses to reach the Name Server: what other nodes can reach it at."""
    parsed = urllib.parse.urlsplit(nameserver)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((parsed.hostname or "127.0.0.1", parsed.port or 8500))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


class StoppedWaiting(OneOSError):
    """Asked to stop (SIGTERM, Ctrl-C) while waiting for approval: nothing went wrong."""


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
        self.key_record: dict[str, Any] = {}   # this runtime's registration at oneos/keys/<id>, once enrolled

    def record(self) -> dict[str, Any]:
        """This runtime's node record, as stored at oneos/nodes/<id>: signed by its key, as the controller
        places only on a node whose record its registered key signed."""
        return self.identity.sign(self._record(), by=self.cfg.id)

    def _record(self) -> dict[str, Any]:
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
        # Checked before joining: a node that cannot reach the broker must not take agents.
        self.pulsar = pulsar = bus_client.access(self.boot["pulsar"], token_file=self.cfg.pulsar_token_file,
                                                 trust_certs_file=self.cfg.pulsar_trust_certs_file)
        self.enroll()
        self.kernel = bool(self.key_record.get("kernel")) or self.cfg.id in self.boot.get("kernelNodes", [])
        if self.cfg.kernel and not self.kernel:
            log.warning("started as a kernel runtime, but approved as a plain one: it runs no kernel agents "
                        "and never leads (approve it again with --kernel, or list it in the boot record's "
                        "kernelNodes)")
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
                                     sandbox=sandbox, identity=self.identity)
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
        for folder in self.cfg.folders:
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
    # -- enrollment (see oneos/enrollment.py) ------------------------------

    @property
    def token_file(self) -> Path:
        """This runtime's own Name Server token, as its approval sealed it to it (mode 0600)."""
        return self.cfg.data_dir / "token"

    def enroll(self) -> None:
        """Make sure this runtime's key is registered at oneos/keys/<id>: ask to join and wait for approval
        when it is not; refuse to start when the id is registered to another key. Then use the node's own
        token from its approval, when it has one (it takes precedence over a configured token)."""
        record = self._registered()
        if record is None:
            self._ask_to_join()
            record = self._wait_for_approval()
        self.key_record = record
        token = self._own_token()
        if token and token != self.ns.token:
            self.ns = NameServer(self.cfg.nameserver, token=token)

    def _other_key(self, record: dict[str, Any]) -> OneOSError:
        return OneOSError(f"runtime id {self.cfg.id!r} is registered to another key ({record['fingerprint']}; this "
                          f"runtime's key is {self.identity.fingerprint}): run `oneosctl node revoke {self.cfg.id}` "
                          "if that node is gone for good, or start this one with another id")

    def _registered(self) -> dict[str, Any] | None:
        """This runtime's key record (None while absent); OneOSError when it registers another key."""
        record = state.read_key(self.ns, self.cfg.id)
        if record is not None and record["signingKey"] != self.identity.signing_key:
            raise self._other_key(record)
        return record

    def _ask_to_join(self) -> None:
        request = enrollment.new_join_request(
            self.identity, self.cfg.id, host=socket.gethostname(), address=self.address,
            wants_kernel=self.cfg.kernel, labels=self.cfg.labels, join_token=self.cfg.join_token)
        try:
            state.put_document(self.ns, state.joinrequest_key(self.cfg.id), "joinrequest", request)
        except NameServerError as exc:
            raise OneOSError(f"cannot ask to join: {exc} (the cluster's policies are written by "
                             "`oneosctl bootstrap`)") from None
        how = (f"join token {request['joinToken']} is being checked by the controller" if self.cfg.join_token
               else f"run `oneosctl node approve {self.cfg.id}`")
        log.info("waiting for approval: %s (key %s)", how, self.identity.fingerprint)

    def _wait_for_approval(self) -> dict[str, Any]:
        """Block (on oneos/keys/<id>) until this runtime's key is registered; a line every APPROVAL_SAY_S."""
        started = said = time.monotonic()
        index = 0
        while not self.stopping.is_set():
            try:
                index, entry = self.ns.get(state.key_key(self.cfg.id), index=index or None,
                                           wait=f"{APPROVAL_POLL_S:g}s")
            except NameServerUnreachable as exc:
                log.warning("%s; still waiting for approval", exc)
                self.stopping.wait(APPROVAL_POLL_S)
                continue
            if entry is not None:
                record = self._registered()
                if record is not None:
                    log.info("approved by %s%s", record["approvedBy"], " as a kernel node" if record["kernel"] else "")
                    return record
            if time.monotonic() - said >= APPROVAL_SAY_S:
                said = time.monotonic()
                log.info("still waiting for approval (%.0fs): `oneosctl node approve %s` (key %s)",
                         said - started, self.cfg.id, self.identity.fingerprint)
        raise StoppedWaiting("stopped while waiting for approval")

    def _own_token(self) -> str | None:
        """The token sealed to this runtime at its approval (saved, mode 0600, in its data folder), else the
        one saved from an earlier start; None when it has none (a Name Server without ACLs)."""
        _, entry = self.ns.get(state.enroll_key(self.cfg.id))
        if entry is not None and entry.value:
            try:
                token = self.identity.open(entry.value.decode("ascii", "replace"),
                                           enrollment.token_context(self.cfg.id)).decode("utf-8")
            except IdentityError as exc:
                raise OneOSError(f"the token sealed to this runtime at {state.enroll_key(self.cfg.id)} cannot be "
                                 f"opened ({exc}); approve it again (`oneosctl node revoke` then "
                                 f"`approve {self.cfg.id}`)") from None
            if not self.token_file.exists() or read_secret(self.token_file, "the node's token") != token:
                write_secret(self.token_file, token)
            return token
        if self.token_file.exists():
            return read_secret(self.token_file, "the node's token")
        return None

    def _lead(self) -> None:
        election = self.election
        pulsar = self.pulsar
        self.controller = Controller(self.ns, leader_session=lambda: election.session if election else None,
                                     pulsar_admin=lambda url: PulsarAdmin(url, token=pulsar.token,
                                                                          trust_certs_file=pulsar.trust_certs_file),
                                     signer=(self.cfg.id, self.identity))
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
                    if self._revoked():
                        return
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
                if exc.status == 403 and exc.body.strip() == "ACL not found" and self._own_token_deleted():
                    return
                log.warning("heartbeat: %s; retrying", exc)

    def _own_token_deleted(self) -> bool:
        """When the Name Server no longer knows this node's own token, the node was revoked: it stops
        (its agents with it) rather than knock for ever. True when it does."""
        if not self.token_file.exists() or self.ns.token != read_secret(self.token_file, "the node's token"):
            return False
        self.token_file.unlink(missing_ok=True)
        self._stop_revoked("its Name Server token was deleted")
        return True

    def _revoked(self) -> bool:
        """Before joining again after its session ended: whether its key is still registered (a Name Server
        without ACLs has no token to refuse). True when it was revoked, and it stops."""
        record = state.read_key(self.ns, self.cfg.id)      # a refusal goes to _beat's handlers
        revoked = record is None or record["signingKey"] != self.identity.signing_key
        if revoked:
            self._stop_revoked("its key is no longer registered")
        return revoked

    def _stop_revoked(self, why: str) -> None:
        self._failed = OneOSError(f"node {self.cfg.id} was revoked (`oneosctl node revoke`): {why}; it stops "
                                  "(started again, it asks to join again)")
        self.cancel()        # wait() raises _failed: oneosd says it in one line

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
