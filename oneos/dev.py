"""`oneosd --dev`: the whole system on one machine.

Starts the built-in Name Server as a child, with ACLs on (deny by default) and a management
token of its own: made once, kept in the data folder (mode 0600), given to the Name Server as
its initial management token (which counts as its ACL bootstrap) and copied to
$ONEOS_HOME/token, where `oneosctl` on this machine finds it. Writes the boot record and the init manifest
where absent, and OneOS's ACL policies, and runs one local kernel runtime in this process, which enrolls
as any runtime does: with a kernel join token --dev makes and redeems itself. Another join token, for more
local nodes, is left in $ONEOS_HOME/join-token. The broker (pulsar-lite)
is a kernel agent of the init manifest: the runtime's controller places it on this node
and its supervisor keeps it running (restart: always), as systemd keeps a unit. One
ready line says where everything listens, once the broker answers. Ctrl-C or SIGTERM (while
it starts, too) stops the runtime (so its node leaves at once): its agents first, while the
broker still takes their last bytes, the broker after them; then every child. Children also
die with this process if it is killed, so nothing is left behind.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from oneos import broker, children, enrollment, state
from oneos.controller.enroller import Enroller
from oneos.identity import Identity
from oneos.errors import OneOSError, UsageError
from oneos.nameserver.client import NameServer, NameServerError, NameServerUnreachable, token_file
from oneos.secretfiles import read_secret, write_secret
from oneos.nodeagent import config as runtime_config
from oneos.nodeagent.daemon import Runtime, setup_logging
from oneos.nodeagent.sandbox import private_folder

log = logging.getLogger("oneos.dev")

DEFAULT_LISTEN = "127.0.0.1:8500"
SESSION_TTL = "10s"
LOCK_DELAY = "15s"


class Child:
    """One child process of the dev cluster, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            # SIGTERM when we die: the Name Server finishes its writes before it goes.
            self.popen = children.spawn(argv, death_signal=signal.SIGTERM, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def last_words(self) -> str:
        try:
            lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            lines = []
        return lines[-1] if lines else "(no output)"

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


class Interrupted(Exception):
    """Ctrl-C or SIGTERM came while the cluster was starting: stop what started, quietly."""


def _wait(what: str, ready: Any, child: Child, stop: threading.Event, timeout: float = 20.0) -> None:
    """Poll `ready()` until true; fail with the child's last log line if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if stop.is_set():
            raise Interrupted(what)
        if not child.alive():
            raise OneOSError(f"{what} exited with status {child.popen.returncode}: {child.last_words()} "
                             f"(log: {child.log_path})")
        try:
            if ready():
                return
        except (NameServerUnreachable, OSError):
            pass
        if time.monotonic() > deadline:
            raise OneOSError(f"{what} did not become ready in {timeout:g}s (log: {child.log_path})")
        time.sleep(0.05)


def _tcp_ready(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _pulsar_port(ns: NameServer) -> int:
    """Keep the broker's port from an earlier run (its URL is in the boot record) when it is free."""
    try:
        url = urllib.parse.urlsplit(state.read_boot(ns)["pulsar"]["url"])
        if url.hostname in ("127.0.0.1", "localhost") and url.port and broker.port_free("127.0.0.1", url.port):
            return url.port
    except (state.BootError, OneOSError):
        pass
    return broker.free_port()


def _write_boot(ns: NameServer, pulsar_url: str, node_id: str) -> None:
    """Boot record and init manifest where absent (CAS); an earlier boot record gets the new Pulsar URL."""
    boot = state.new_boot_record(cluster="dev", pulsar_url=pulsar_url, kernel_nodes=[node_id],
                                 session_ttl=SESSION_TTL, lock_delay=LOCK_DELAY)
    state.bootstrap(ns, boot, state.default_init())
    _, entry = ns.get(state.BOOT)
    boot = state.decode(entry, "boot")
    changed = dict(boot)
    if boot["pulsar"]["url"] != pulsar_url:
        changed["pulsar"] = dict(boot["pulsar"], url=pulsar_url)
    if node_id not in boot.get("kernelNodes", []):
        changed["kernelNodes"] = list(boot.get("kernelNodes", [])) + [node_id]
    if changed != boot and not state.put_document(ns, state.BOOT, "boot", changed, cas=entry.modify_index):
        raise OneOSError("the boot record changed while --dev was updating it; start again")


BROKER_WAIT_S = 30.0
OWN_TOKEN_TTL_S = 600.0          # the join token --dev makes for its own node (one use)
LOCAL_TOKEN_TTL_S = 24 * 3600.0  # the one it leaves in $ONEOS_HOME/join-token for other local nodes
LOCAL_TOKEN_USES = 100
JOIN_TOKEN_FILE = "join-token"


def _enroll_own_node(ns: NameServer, cfg: runtime_config.RuntimeConfig) -> Enroller | None:
    """Let this machine's own node in as a kernel node, the way any node comes in with a join token: --dev makes
    one for it, and redeems it itself (no controller runs before the first kernel node is in). The redeemer
    to stop once the node has started; None when the node is enrolled already."""
    registered = state.read_key(ns, cfg.id)
    identity = Identity.load_or_create(cfg.key_file)
    if registered and registered["signingKey"] == identity.signing_key:
        return None
    if registered:    # its key file was made again (a new $ONEOS_HOME, the same --data-dir): --dev is its operator
        log.info("the node %s has a new key (%s, was %s): enrolling it again", cfg.id, identity.fingerprint,
                 registered["fingerprint"])
        enrollment.revoke(ns, cfg.id)
    cfg.join_token = enrollment.create_join_token(ns, OWN_TOKEN_TTL_S, kernel=True,
                                                  description=f"oneosd --dev: its own node {cfg.id}")
    enroller = Enroller(ns)
    enroller.start()
    return enroller


def _local_join_token(ns: NameServer) -> Path:
    """A join token for the other nodes of this machine (`make demo`'s device nodes), in $ONEOS_HOME/join-token
    (mode 0600): made anew at each start, the previous one deleted."""
    path = runtime_config.oneos_home() / JOIN_TOKEN_FILE
    if path.exists():
        try:
            old, _ = enrollment.parse_join_token(read_secret(path, "the dev join token"))
            ns.delete(state.jointoken_key(old))
        except OneOSError:
            pass
    write_secret(path, enrollment.create_join_token(ns, LOCAL_TOKEN_TTL_S, uses=LOCAL_TOKEN_USES,
                                                    description="oneosd --dev: other local nodes"))
    return path


def _management_token(data: Path) -> tuple[Path, str]:
    """The dev cluster's management token: made on its first start, the same ever after."""
    path = data / "management-token"
    if not path.exists():
        write_secret(path, str(uuid.uuid4()))
    return path, read_secret(path, "the dev cluster's management token")


def _wait_for_broker(ns: NameServer, port: int, log_dir: Path, stop: threading.Event) -> None:
    """Wait until the broker kernel agent answers on its port; a clear error if it does not."""
    deadline = time.monotonic() + BROKER_WAIT_S
    while not _tcp_ready("127.0.0.1", port):
        if stop.is_set():
            raise Interrupted("the broker")
        if time.monotonic() > deadline:
            statuses = {k: v for k, v in state.read_statuses(ns).items() if v.get("node")}
            brokers = [f"{k.replace('.', '/', 1)} {v['state']}" + (f" ({v['reason']})" if v.get("reason") else "")
                       for k, v in statuses.items() if "pulsar" in k]
            raise OneOSError(f"the broker did not answer on port {port} within {BROKER_WAIT_S:g}s: "
                             f"{', '.join(brokers) or 'no broker kernel agent in the init manifest'}; "
                             f"its log is in {log_dir}")
        time.sleep(0.1)


def run(flags: runtime_config.Overrides, *, data_dir: str | None, listen: str | None, verbose: bool) -> int:
    """Run the one-machine cluster until Ctrl-C or SIGTERM; the exit status."""
    listen = listen or DEFAULT_LISTEN
    data = Path(data_dir) if data_dir else runtime_config.oneos_home() / "dev"
    url = f"http://{listen}"
    cfg = runtime_config.load(replace(flags, nameserver=url, kernel=True), interactive=False)
    cfg.nameserver = url
    setup_logging(f"oneosd --dev {cfg.id}", verbose)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    children: list[Child] = []
    runtime: Runtime | None = None
    status = 0
    try:
        host, _, port_text = listen.rpartition(":")
        if not port_text.isdigit():
            raise UsageError(f"--listen {listen!r} is not HOST:PORT (for example 127.0.0.1:8500)")
        if not broker.port_free(host or "127.0.0.1", int(port_text)):
            raise OneOSError(f"cannot listen on {listen}: the address is in use (another oneosd --dev?); "
                             "stop it or pick another --listen HOST:PORT")
        # The Name Server's store, the broker's topics and the management token: the node's alone.
        private_folder(data, 0o700)
        secret_path, secret = _management_token(data)
        nameserver = Child("nameserver", [sys.executable, "-m", "oneos.nameserver.server", "--listen", listen,
                                          "--data-dir", str(data / "nameserver"), "--acl",
                                          "--acl-initial-management-token-file", str(secret_path)],
                           data / "logs" / "nameserver.log")
        children.append(nameserver)
        write_secret(token_file(), secret)
        cfg.token = secret
        ns = NameServer(url, token=secret)
        _wait(f"the Name Server on {listen}", ns.leader, nameserver, stop)

        port = _pulsar_port(ns)
        pulsar_url = f"pulsar://127.0.0.1:{port}"
        metrics = f"127.0.0.1:{broker.free_port()}"
        _write_boot(ns, pulsar_url, cfg.id)
        enrollment.install_policies(ns)
        join_file = _local_join_token(ns)
        enroller = _enroll_own_node(ns, cfg)
        # The broker kernel agent finds its data folder and metrics address in its environment (oneos/broker.py).
        runtime = Runtime(cfg, wait_s=10, agent_env={"ONEOS_BROKER_DATA": str(data / "pulsar"),
                                                     "ONEOS_BROKER_METRICS": metrics})
        try:
            runtime.start()
        finally:
            if enroller is not None:
                enroller.stop()
        _wait_for_broker(ns, port, cfg.data_dir / "agents" / "logs", stop)
        print(f"oneosd --dev: ready. Name Server {url}, Pulsar {pulsar_url} (metrics http://{metrics}/metrics), "
              f"kernel node {cfg.id}; data in {data}; ACLs on, management token in {token_file()}, "
              f"join token for more local nodes in {join_file}; Ctrl-C stops", flush=True)
        while not stop.wait(0.5):
            for child in children:
                if not child.alive():
                    raise OneOSError(f"the {child.name} process exited with status {child.popen.returncode}: "
                                     f"{child.last_words()} (log: {child.log_path})")
        log.info("stopping")
    except Interrupted as exc:
        log.info("stopping: asked to while waiting for %s", exc)
    except (OneOSError, NameServerError) as exc:
        log.error("%s", exc)
        status = getattr(exc, "exit_code", 1)
    finally:
        if runtime is not None:
            runtime.stop()
        for child in reversed(children):
            child.stop()
    if status == 0:
        log.info("stopped; nothing left running")
    return status
