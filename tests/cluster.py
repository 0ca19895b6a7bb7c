"""A real cluster for tests: the built-in Name Server, a boot record, and `oneosd` processes.

Tests read the cluster's state in-process through the Name Server client (what `oneosctl get
... -o json` prints, without a command started per look) and wait with `Cluster.wait_for`,
which wakes on the Name Server's blocking queries as soon as something changes. They start
`oneosctl` where what they check is the command's own output or exit status.
"""

from __future__ import annotations

import os
import pwd
import time
from pathlib import Path
from typing import Callable, TypeVar

from oneos import enrollment, state
from oneos.identity import Identity
from oneos.nameserver.client import NameServer, NameServerError, NameServerUnreachable
from oneos.nameserver.tls import ClientTLS
from tests.procs import ANY_EXIT, NameServerProc, OneosdProc, cli, free_port, run_cli, wait_until

SESSION_TTL = 10          # the smallest TTL Consul accepts
LOCK_DELAY = 3
#: Tests' agents run as the test's own user unless a test asks for the node's default: they write
#: into the test's tmp folder (0700) and run this Python, which may be where no other user can
#: reach it (a pyenv under /root). tests/security runs nodes with the default agent user.
TEST_USER = pwd.getpwuid(os.geteuid()).pw_name
EMPTY_INIT = "apiVersion: oneos/v1\nkind: Init\nmetadata: {name: oneos-init}\nspec: {agents: []}\n"

T = TypeVar("T")


class Changes:
    """A `wake` for wait_until: returns as soon as anything under `prefix` changes on the Name
    Server (a blocking query from the index last seen), or after `longest` seconds at most.

    Make it before the first look at the state, so that no change after that look is missed.
    """

    def __init__(self, ns: NameServer, prefix: str = state.PREFIX, longest: float = 1.0) -> None:
        self.ns = ns
        self.prefix = prefix
        self.longest = longest      # bounds how late a wait sees what no key shows (a process that died)
        self.index = self._query()

    def _query(self, index: int | None = None, wait: float = 0.0) -> int:
        try:
            return self.ns.keys(self.prefix, separator="/", index=index, wait=f"{int(wait * 1000)}ms")[0]
        except (NameServerUnreachable, NameServerError):
            time.sleep(0.05)        # the Name Server is down (a test restarts it): poll until it is back
            return 0

    def __call__(self, seconds_left: float) -> None:
        if not self.index:
            self.index = self._query()
            return
        index = self._query(self.index, max(0.01, min(self.longest, seconds_left)))
        self.index = index if index >= self.index else 0   # an index that went back: start over


class Cluster:
    """A Name Server with a boot record, and the runtimes a test starts (all stopped at the end)."""

    def __init__(self, nameserver: NameServerProc, root: Path, env: dict[str, str] | None = None,
                 agent_user: str | None = TEST_USER) -> None:
        """`env`: how its commands find the Name Server (default ONEOS_NAMESERVER; Consul's variables
        for one that speaks TLS); `agent_user`: the user its nodes run agents as (None: the node's default)."""
        self.agent_user = agent_user
        self.nameserver = nameserver
        self.root = root
        self.url = nameserver.url
        self.env = env if env is not None else {"ONEOS_NAMESERVER": self.url}
        self.ns = NameServer(self.url, tls=ClientTLS.from_env(self.env))
        self.nodes: list[OneosdProc] = []
        self._leader_key: tuple[str, Identity] | None = None

    def bootstrap(self, pulsar_url: str | None = None, init: str = EMPTY_INIT, **boot_fields: object) -> None:
        """Write the boot record; without a broker, its Pulsar URL names a port nothing listens on.

        The init manifest has no kernel agents by default: the test owns the broker (it kills
        and restarts it), so a kernel agent must not start one of its own. Written in-process,
        as `oneosctl bootstrap` writes it (tests/cli/test_bootstrap.py runs the command);
        `boot_fields` are added to the boot record (such as blobGracePeriod="2s").
        """
        pulsar_url = pulsar_url or f"pulsar://127.0.0.1:{free_port()}"
        init_path = self.root / "init.yaml"
        init_path.write_text(init)
        boot = state.new_boot_record(cluster="e2e", pulsar_url=pulsar_url, session_ttl=f"{SESSION_TTL}s",
                                     lock_delay=f"{LOCK_DELAY}s")
        boot.update(boot_fields)
        assert state.bootstrap(self.ns, boot, state.default_init(init_path)) == (True, True)

    def ctl(self, *argv: str, env: dict[str, str] | None = None):
        return run_cli(["oneosctl", *argv], env={**self.env, **(env or {})})

    def register(self, node_id: str, home: Path, *, kernel: bool) -> None:
        """Enroll a runtime before it starts, as an operator's approval would: its keys made where
        it keeps them (it finds them at start) and registered at oneos/keys/<id> unless already there."""
        identity = Identity.load_or_create(home / "runtimes" / node_id / "node.key")
        record = state.new_key_record(node_id, identity.signing_key, identity.box_key, kernel=kernel,
                                      approved_by="the test's operator")
        state.put_document(self.ns, state.key_key(node_id), "key", record, cas=0)

    def approve(self, node_id: str, *, kernel: bool = False, timeout: float = 20) -> dict:
        """Wait for a runtime's join request, then approve it in-process as `oneosctl node approve` does."""
        request = self.wait_for(lambda: enrollment.read_requests(self.ns).get(node_id), timeout,
                                f"runtime {node_id} to ask to join")
        return enrollment.approve(self.ns, node_id, request["signingKey"], request["boxKey"], kernel=kernel,
                                  approved_by="the test's operator")

    def leader_key(self) -> tuple[str, Identity]:
        """A kernel node's key, registered (at oneos/keys/test-leader) without a runtime: tests that write
        assignments by hand sign them with it, as the leader signs what it writes."""
        if self._leader_key is None:
            identity = Identity.generate()
            state.put_document(self.ns, state.key_key("test-leader"), "key", state.new_key_record(
                "test-leader", identity.signing_key, identity.box_key, kernel=True, approved_by="the test"))
            self._leader_key = ("test-leader", identity)
        return self._leader_key

    def signed(self, node_id: str, doc: dict) -> dict:
        """An assignment for `node_id` as the leader writes it: its pipeline's frame key (if there is one)
        sealed to the node's registered key, then signed by a kernel node's key (leader_key)."""
        key = self.ns.get_raw(state.pipekey_key(doc["pipeline"], doc["uid"]))
        node = state.read_key(self.ns, node_id)
        if key and node and not doc.get("kernel"):
            doc = dict(doc, frameKey=state.seal_frame_key(key, node["boxKey"], doc["pipeline"], doc["uid"]))
        by, identity = self.leader_key()
        return identity.sign(doc, by=by)

    def start(self, node_id: str | None, *extra: str, home: Path | None = None, wait: bool = True,
              env: dict[str, str] | None = None, register: bool = True) -> OneosdProc:
        """Start `oneosd NODE_ID EXTRA...`, enrolled first (register=False: not, as a stranger would be)."""
        # Nodes have no GPIO unless a test gives them a board, whatever this machine has.
        bare = {"ONEOS_GPIO_SIM": "", "ONEOS_HW_ROOT": str(self.root / "no-hardware"),
                "ONEOS_AGENT_USER": self.agent_user or ""}
        home = home or self.root / f"home-{node_id}"
        if node_id and register:
            wished = "--kernel" in extra or (env or {}).get("ONEOS_KERNEL") == "true"
            self.register(node_id, home, kernel=wished)
        proc = OneosdProc(node_id, home, self.env.get("ONEOS_NAMESERVER"),
                          list(extra), env={**self.env, **bare, **(env or {})})
        self.nodes.append(proc)
        proc.start()
        if wait:
            self.wait_for(lambda: self._joined(proc), 20, f"runtime {node_id} to join (log: {proc.log_path})")
        return proc

    def node(self, node_id: str) -> OneosdProc:
        """The latest runtime started with this id."""
        return [p for p in self.nodes if p.node_id == node_id][-1]

    def _joined(self, proc: OneosdProc) -> bool:
        if not proc.alive():
            raise AssertionError(f"oneosd {proc.node_id} exited with {proc.popen.returncode}:\n{proc.log()}")
        # Its own record, not one a crashed run of the same id left behind.
        return any(n["id"] == proc.node_id and n["pid"] == proc.pid for n in self.get_nodes())

    def wait_for(self, predicate: Callable[[], T], timeout: float, what: str) -> T:
        """wait_until for a predicate that reads the cluster's state: it looks again as soon as
        something under oneos/ changes (a blocking query), not at fixed intervals."""
        return wait_until(predicate, timeout, what, wake=Changes(self.ns))

    def lose(self, node_id: str) -> OneosdProc:
        """Kill -9 the node's runtime, then end its sessions at the Name Server at once.

        After a kill -9 the Name Server ends a node's membership and election sessions up to
        2×TTL later (20 s here). A test whose subject is what happens *after* the loss ends them
        itself (PUT /v1/session/destroy), exactly what the TTL expiry does: the node record goes,
        the leader lock is released and the lock-delay starts, so the controller sees what it
        sees after an expiry. The expiry itself is checked in real time once per layer:
        tests/nameserver/test_sessions.py::test_ttl_expiry and the kill -9 test of
        tests/e2e/test_membership.py.
        """
        proc = self.node(node_id)
        proc.kill9()                 # first: a dead runtime makes no session of its own any more
        self.expire(node_id)
        return proc

    def expire(self, node_id: str) -> None:
        """End a runtime's sessions now, as their TTL expiry does: the one holding its node
        record and those named for it (its election session); their locks are released or deleted."""
        _, entry = self.ns.get(state.node_key(node_id))
        sessions = {entry.session} if entry and entry.session else set()
        _, live = self.ns.session_list()
        sessions |= {s["ID"] for s in live
                     if (s.get("Name") or "").startswith("oneos-") and s["Name"].split()[-1] == node_id}
        assert sessions, f"runtime {node_id} holds no session to end"
        for session in sessions:
            assert self.ns.session_destroy(session)

    def run(self, line: str, *, input: bytes | None = None, cwd: Path | None = None, timeout: float = 120):
        """`oneosctl run LINE` as a user types it: stdout as bytes, stderr as text."""
        done = cli("oneosctl", "run", line, input=input, env=self.env, cwd=cwd or self.root,
                   ok_code=ANY_EXIT, timeout=timeout, text=False)
        return done.returncode, done.stdout, done.stderr.decode(errors="replace")

    def statuses(self, pipeline: str) -> dict[str, dict]:
        """agent -> status, as `oneosctl get agents -o json` shows them."""
        return {s["agent"]: s for s in self.statuses_all() if s["pipeline"] == pipeline}

    def statuses_all(self) -> list[dict]:
        """Every agent's status, as the items of `oneosctl get agents -o json`."""
        statuses = state.read_statuses(self.ns)
        return [statuses[key] for key in sorted(statuses)]

    def ctl_bytes(self, *argv: str) -> bytes:
        """oneosctl's stdout as bytes (for logs, which may be binary)."""
        return cli("oneosctl", *argv, env=self.env, ok_code=ANY_EXIT, text=False).stdout

    def get_nodes(self) -> list[dict]:
        """What `oneosctl get nodes -o json` shows."""
        return [dict(n.record, leader=n.leader) for n in state.read_nodes(self.ns)[0]]

    def node_ids(self) -> set[str]:
        return {n["id"] for n in self.get_nodes()}

    def leader(self) -> str | None:
        leaders = [n["id"] for n in self.get_nodes() if n["leader"]]
        assert len(leaders) <= 1, f"more than one leader: {leaders}"
        return leaders[0] if leaders else None

    def stop(self) -> None:
        for proc in self.nodes:
            proc.stop()
