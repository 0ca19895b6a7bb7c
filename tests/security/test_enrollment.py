"""Only enrolled runtimes join, and each holds only its own rights (issue 12, items 1, 2 and 7).

Each attack that was possible is tried against a real Name Server with ACLs on, and real
`oneosd` processes where what is checked is what a runtime does: a stranger asks to join and
waits (nothing is placed on it), an operator approves it by its key's fingerprint, join tokens
let runtimes in once, an enrolled node's own token cannot write an assignment, a manifest or
another node's record, and a revoked node's agents move while its token writes nothing more.
"""

from __future__ import annotations

import contextlib
import json
import re
import textwrap
from datetime import datetime, timedelta, timezone

import pytest

from oneos import enrollment, state
from oneos.identity import Identity
from oneos.nameserver.client import NameServer, NameServerError, TxnConflict, kv_op
from oneos.secretfiles import read_secret, write_secret
from tests.cluster import Cluster
from tests.conftest import REAL_CONSUL
from tests.procs import BrokerProc, NameServerProc, wait_until

MANAGEMENT = "5b1d2c3e-0000-4000-8000-00000000a11c"
ASSIGNMENT = {"pipeline": "evil", "uid": "0" * 32, "generation": 1, "epoch": 1,
              "agent": {"name": "x", "run": ["touch", "/tmp/oneos-node-was-here"]},
              "inputs": [], "outputs": [], "attached": False, "files": {}}
MANIFEST = {"apiVersion": "oneos/v1", "kind": "Pipeline", "metadata": {"name": "evil"},
            "spec": {"agents": [{"name": "x", "run": ["touch", "/tmp/oneos-node-was-here"]}]}}

pytestmark = pytest.mark.skipif(REAL_CONSUL, reason="starts a Name Server of its own with ACLs")


@contextlib.contextmanager
def acl_cluster(root, broker: bool = False):
    """A Name Server with ACLs on (a management token for the test's operator), bootstrapped with
    OneOS's policies as `oneosctl bootstrap` writes them; a broker when the test runs agents."""
    write_secret(root / "management-token", MANAGEMENT)
    nameserver = NameServerProc(root / "ns-data", extra=["--acl", "--acl-initial-management-token-file",
                                                         str(root / "management-token")]).start()
    pulsar = BrokerProc(root / "pulsar") if broker else None
    c = Cluster(nameserver, root, {"ONEOS_NAMESERVER": nameserver.url, "ONEOS_TOKEN": MANAGEMENT})
    c.ns = NameServer(nameserver.url, token=MANAGEMENT)
    try:
        if pulsar:
            pulsar.start()
        c.bootstrap(pulsar.url if pulsar else None)
        assert enrollment.install_policies(c.ns)
        yield c
    finally:
        c.stop()
        if pulsar:
            pulsar.stop()
        nameserver.stop()


def stranger(c: Cluster, node_id: str, *flags: str):
    """`oneosd ID FLAGS` that holds no token and is not enrolled: it asks to join."""
    return c.start(node_id, *flags, wait=False, register=False, env={"ONEOS_TOKEN": ""})


def enrolled(c: Cluster, node_id: str, *flags: str, kernel: bool = False):
    """A runtime approved by the operator as soon as it asks (in-process, as `node approve` does)."""
    proc = stranger(c, node_id, *flags)
    c.approve(node_id, kernel=kernel)
    c.wait_for(lambda: c._joined(proc), 30, f"{node_id} to join")
    return proc


def in_log(proc, pattern: str, timeout: float = 30):
    return wait_until(lambda: re.search(pattern, proc.log()), timeout, f"{pattern!r} in {proc.log_path}")


def node_token(c: Cluster, node_id: str) -> str:
    return read_secret(c.root / f"home-{node_id}" / "runtimes" / node_id / "token", "the node's token")


def apply(c: Cluster, tmp_path, name: str, agents: str) -> None:
    manifest = tmp_path / f"{name}.yaml"
    manifest.write_text(f"apiVersion: oneos/v1\nkind: Pipeline\nmetadata: {{name: {name}}}\nspec:\n  agents:\n"
                        + textwrap.indent(textwrap.dedent(agents), "    "))
    done = c.ctl("apply", "-f", str(manifest))
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------- approval


def test_a_runtime_asks_to_join_and_runs_work_once_an_operator_approves_its_key(tmp_path):
    with acl_cluster(tmp_path, broker=True) as c:
        k1 = stranger(c, "k1", "--kernel")
        fp = in_log(k1, r"waiting for approval: run `oneosctl node approve k1` \(key (SHA256:[A-Za-z0-9+/]{43})\)")[1]
        row = next(line for line in c.ctl("get", "nodes").stdout.splitlines() if line.startswith("k1 "))
        assert re.split(r"\s{2,}", row)[1:4] == ["Pending approval", "no", "asks"] and row.endswith(fp)
        pending = json.loads(c.ctl("get", "nodes", "-o", "json").stdout)["items"]
        assert [(n["id"], n["state"], n["fingerprint"], n["wantsKernel"]) for n in pending] == \
            [("k1", "Pending approval", fp, True)]

        wrong = c.ctl("node", "approve", "k1", "--fingerprint", "SHA256:" + "A" * 43)
        assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1 and f"has key {fp}" in wrong.stderr
        assert state.read_key(c.ns, "k1") is None

        done = c.ctl("node", "approve", "k1", "--kernel", "--fingerprint", fp)
        assert done.stdout == f"node k1 approved as a kernel node, key {fp}, with a token of its own\n", done.stderr
        c.wait_for(lambda: c.leader() == "k1", 30, "k1 to join and lead")
        own = c.root / "home-k1" / "runtimes" / "k1" / "token"
        assert own.stat().st_mode & 0o777 == 0o600 and node_token(c, "k1") != MANAGEMENT
        assert c.ns.get(state.joinrequest_key("k1"))[1] is None     # the request is done with
        # A plain node let in by a join token (redeemed by k1's controller, with k1's own token) runs
        # its stages under its own token: frame keys, shipped files and statuses all read or written.
        token = c.ctl("token", "create").stdout.strip()
        stranger(c, "n2", "--join-token", token)
        c.wait_for(lambda: "n2" in c.node_ids(), 30, "n2 to be let in by its join token")
        (tmp_path / "upper.py").write_text("import sys\nsys.stdout.write(sys.stdin.read().upper())\n")
        code, out, err = c.run("seq 3 @ n2 | tr 1 x @ k1 | python3 upper.py @ n2", timeout=60)
        assert (code, out) == (0, b"X\n2\n3\n"), err


def test_a_runtime_whose_id_is_registered_to_another_key_refuses_to_start(cluster):
    other = Identity.generate()
    state.put_document(cluster.ns, state.key_key("dup"), "key", state.new_key_record(
        "dup", other.signing_key, other.box_key, kernel=False, approved_by="the test"))
    proc = cluster.start("dup", wait=False, register=False)
    wait_until(lambda: not proc.alive(), 30, "oneosd dup to exit")
    assert proc.popen.returncode != 0
    errors = [line for line in proc.log().splitlines() if "registered to another key" in line]
    assert len(errors) == 1 and other.fingerprint in errors[0] and "`oneosctl node revoke dup`" in errors[0]
    assert "dup" not in cluster.node_ids()


# ---------------------------------------------------------- join tokens


def test_join_tokens_let_runtimes_in_once_until_they_expire_and_as_they_say(tmp_path):
    with acl_cluster(tmp_path) as c:
        k1 = enrolled(c, "k1", kernel=True)
        c.wait_for(lambda: c.leader() == "k1", 30, "k1 to lead (its controller redeems join tokens)")
        once = c.ctl("token", "create", "--ttl", "1h")
        assert "it is not shown again" in once.stderr
        single = once.stdout.strip()
        kernel = c.ctl("token", "create", "--ttl", "1h", "--kernel", "--label", "room=lab").stdout.strip()

        stranger(c, "a", "--join-token", single)
        c.wait_for(lambda: "a" in c.node_ids(), 30, "a to be let in by its join token")
        assert state.read_key(c.ns, "a")["approvedBy"] == f"join token {single.split('.')[0]}"
        assert not state.read_key(c.ns, "a")["kernel"]

        # Single-use: a second runtime with the same token stays pending, said once in the leader's log.
        b = stranger(c, "b", "--join-token", single)
        in_log(k1, rf"join request of b .* left pending: join token {single.split('.')[0]} does not exist")
        in_log(b, r"waiting for approval")
        assert state.read_key(c.ns, "b") is None

        # A kernel token makes a kernel node, with its labels.
        stranger(c, "kk", "--join-token", kernel)
        c.wait_for(lambda: "kk" in c.node_ids(), 30, "kk to be let in as a kernel node")
        assert [n["kernel"] for n in c.get_nodes() if n["id"] == "kk"] == [True]
        assert state.read_key(c.ns, "kk")["labels"] == {"room": "lab"}

        # An expired token lets no one in, and is deleted.
        expired = enrollment.create_join_token(c.ns, 3600)
        tid = expired.split(".")[0]
        _, token = enrollment.read_join_tokens(c.ns)[tid]
        past = state.timestamp(datetime.now(timezone.utc) - timedelta(seconds=1))
        state.put_document(c.ns, state.jointoken_key(tid), "jointoken", dict(token, expiresAt=past))
        stranger(c, "late", "--join-token", expired)
        in_log(k1, rf"join request of late .* left pending: join token {tid} does not exist")
        assert state.read_key(c.ns, "late") is None and tid not in enrollment.read_join_tokens(c.ns)
        # Stopped while it waits, a runtime says so and exits 0: nothing went wrong.
        assert c.node("late").terminate() == 0
        assert "stopped while waiting for approval" in c.node("late").log()

        # A proof made with a wrong secret is no proof.
        good = c.ctl("token", "create").stdout.strip()
        stranger(c, "forger", "--join-token", good.split(".")[0] + ".0123456789abcdef")
        in_log(k1, rf"join request of forger .* left pending: its proof does not check")
        assert state.read_key(c.ns, "forger") is None

        pending = {n["id"] for n in json.loads(c.ctl("get", "nodes", "-o", "json").stdout)["items"]
                   if n["state"] == "Pending approval"}
        assert pending == {"b", "late", "forger"}      # late's request stays while no one decides

        # Listed without their secrets; deleted, a token lets no one in.
        listed = c.ctl("token", "list").stdout
        assert listed.splitlines()[0].split()[:4] == ["ID", "USES", "LEFT", "KERNEL"]
        assert good.split(".")[0] in listed and good.split(".")[1] not in listed
        assert c.ctl("token", "delete", good.split(".")[0]).stdout == f"join token {good.split('.')[0]} deleted\n"
        assert good.split(".")[0] not in enrollment.read_join_tokens(c.ns)


# ------------------------------------------------------- least privilege


def approved_token(ns: NameServer, node_id: str, *, kernel: bool = False) -> str:
    """Approve a runtime's keys in-process and open its sealed token, as the runtime does."""
    identity = Identity.generate()
    enrollment.approve(ns, node_id, identity.signing_key, identity.box_key, kernel=kernel, approved_by="test")
    _, sealed = ns.get(state.enroll_key(node_id))
    return identity.open(sealed.value.decode(), enrollment.token_context(node_id)).decode()


def nobody(c: Cluster) -> NameServer:
    """A client that sends no token (the anonymous token's), whatever this machine has."""
    client = NameServer(c.url, token=MANAGEMENT)
    client._token = None
    return client


def refused(call) -> str:
    with pytest.raises((NameServerError, TxnConflict)) as err:
        call()
    assert err.value.status in (403, 409), err.value
    return str(err.value).lower().replace("acl not found", "ACL not found")


def test_an_enrolled_nodes_token_writes_only_what_is_its_own(tmp_path):
    with acl_cluster(tmp_path) as c:
        mine = NameServer(c.url, token=approved_token(c.ns, "n1"))
        approved_token(c.ns, "n2")
        join = enrollment.create_join_token(c.ns, 3600).split(".")[0]
        attacks = {state.assign_key("n1", "evil.x"): ASSIGNMENT, state.assign_key("n2", "evil.x"): ASSIGNMENT,
                   state.pipeline_key("evil"): MANIFEST, state.node_key("n2"): {"id": "n2"},
                   state.key_key("n2"): {"id": "n2"}, state.key_key("n3"): {"id": "n3"}, state.BOOT: {},
                   state.LEADER: {"node": "n1"}, state.jointoken_key("mine"): {}, state.enroll_key("n2"): {}}
        before = {key: c.ns.get(key)[1] for key in attacks}
        for key, doc in attacks.items():
            assert "permission denied" in refused(lambda: mine.put(key, json.dumps(doc))), key
            assert "permission denied" in refused(lambda: mine.txn([kv_op("set", key, json.dumps(doc))])), key
            assert "permission denied" in refused(lambda: mine.delete(key)), key
        assert {key: c.ns.get(key)[1] for key in attacks} == before     # nothing stored, changed or deleted
        # It reads the cluster's state, but not the join tokens (their secrets).
        assert "permission denied" in refused(lambda: mine.get(state.jointoken_key(join)))
        assert mine.get_tree(state.JOINTOKENS)[1] == []
        assert state.read_boot(mine)["cluster"] == "e2e"
        # What is its own it writes: its record, its heartbeat, agents' statuses, devices.
        for key in (state.node_key("n1"), state.heartbeat_key("n1"), state.status_key("p.a"), state.device_key("d")):
            assert mine.put(key, b"{}"), key
        # A kernel node's token writes assignments (the controller's).
        kernel = NameServer(c.url, token=approved_token(c.ns, "k1", kernel=True))
        assert kernel.put(state.assign_key("n1", "p.a"), b"{}")
        # Assignments carry frame keys sealed to their node: nodes read none at oneos/pipekeys/.
        c.ns.put(state.pipekey_key("p", "u"), b"k" * 32)
        assert "permission denied" in refused(lambda: mine.get_raw(state.pipekey_key("p", "u")))
        assert mine.get_tree(state.PIPEKEYS)[1] == []


def test_without_a_token_one_may_only_ask_to_join(tmp_path):
    with acl_cluster(tmp_path) as c:
        anonymous = nobody(c)
        identity = Identity.generate()
        request = enrollment.new_join_request(identity, "x", host="h", address="a", wants_kernel=True)
        assert state.put_document(anonymous, state.joinrequest_key("x"), "joinrequest", request)
        assert state.read_boot(anonymous)
        for key in (state.key_key("x"), state.node_key("x"), state.jointoken_key("abcdef"), state.enroll_key("x")):
            assert "permission denied" in refused(lambda: anonymous.put(key, b"{}")), key
        assert "permission denied" in refused(lambda: anonymous.get(state.INIT))
        assert state.read_key(c.ns, "x") is None


# ----------------------------------------------------- rogue and revoked


def test_a_stranger_is_placed_on_never_and_shown_pending(tmp_path):
    with acl_cluster(tmp_path, broker=True) as c:
        enrolled(c, "k1", "--label", "role=worker", kernel=True)
        rogue = stranger(c, "rogue", "--label", "role=worker")
        in_log(rogue, "waiting for approval")
        # It cannot write a node record of its own either, nor take a session's lock in its name.
        anonymous = nobody(c)
        assert "permission denied" in refused(lambda: anonymous.put(state.node_key("rogue"), b"{}"))
        assert "permission denied" in refused(lambda: anonymous.session_create(name="oneos-node rogue", ttl=10))
        apply(c, tmp_path, "spread", """\
            - {name: a, run: [sleep, '1000'], requires: {labels: {role: worker}}}
            - {name: b, run: [sleep, '1000'], requires: {labels: {role: worker}}}
            - {name: c, run: [sleep, '1000'], requires: {labels: {role: worker}}}
            """)
        c.wait_for(lambda: len(state.read_assignments(c.ns)) == 3, 30, "the agents to be placed")
        assert {node for node, _ in state.read_assignments(c.ns).values()} == {"k1"}
        nodes = {n["id"]: n["state"] for n in json.loads(c.ctl("get", "nodes", "-o", "json").stdout)["items"]}
        assert nodes == {"k1": "Ready", "rogue": "Pending approval"}


def test_a_node_record_with_no_registered_key_is_shown_not_approved(cluster):
    """Without ACLs anyone may write a node record (item 3's signatures are what keep it from being
    placed on); `get nodes` says it was never approved."""
    cluster.start("n1")
    record = dict(next(n for n in cluster.get_nodes() if n["id"] == "n1"), id="rogue")
    record.pop("leader")
    session = cluster.ns.session_create(name="oneos-node rogue", ttl=10, behavior="delete", checks=[])
    assert state.put_document(cluster.ns, state.node_key("rogue"), "node", record, acquire=session)
    done = cluster.ctl("get", "nodes")
    row = next(line for line in done.stdout.splitlines() if line.startswith("rogue "))
    assert re.split(r"\s{2,}", row)[1] == "NotApproved"
    assert "node rogue has no registered key: it was never approved" in done.stderr


def test_a_revoked_nodes_agents_move_and_its_token_writes_nothing_more(tmp_path):
    with acl_cluster(tmp_path, broker=True) as c:
        enrolled(c, "k1", kernel=True)
        workers = {n: enrolled(c, n, "--label", "role=worker") for n in ("w1", "w2")}
        apply(c, tmp_path, "work", "- {name: job, run: [sleep, '100000'], requires: {labels: {role: worker}}}\n")
        first = c.wait_for(lambda: (s := c.statuses("work").get("job", {})).get("state") == "Running"
                           and s["node"], 30, "the job to run on a worker")
        other = ({"w1", "w2"} - {first}).pop()
        token = node_token(c, first)

        done = c.ctl("node", "revoke", first)
        assert done.stdout.startswith(f"node {first} revoked: removed its registered key, its token"), done.stderr
        moved = c.wait_for(lambda: (s := c.statuses("work").get("job", {})).get("state") == "Running"
                           and s["node"] == other and s, 30, f"the job to move to {other}")
        assert moved["node"] == other and first not in c.node_ids()
        assert state.read_key(c.ns, first) is None
        # Its token is gone: it writes nothing, not even its own record.
        revoked = NameServer(c.url, token=token)
        assert "ACL not found" in refused(lambda: revoked.put(state.node_key(first), b"{}"))
        assert "ACL not found" in refused(lambda: revoked.put(state.status_key("work.job"), b"{}"))
        # The runtime sees it and stops, with its agents, saying why in one line.
        proc = workers[first]
        wait_until(lambda: not proc.alive(), 30, f"oneosd {first} to stop")
        assert [line for line in proc.log().splitlines() if "was revoked" in line]


def test_without_acls_a_revoked_runtime_stops_instead_of_joining_again(cluster):
    proc = cluster.start("n1")
    done = cluster.ctl("node", "revoke", "n1")
    assert done.stdout == "node n1 revoked: removed its registered key, its sessions (its agents are placed " \
                          "elsewhere)\n", done.stderr
    wait_until(lambda: not proc.alive(), 30, "oneosd n1 to stop")
    assert "n1" not in cluster.node_ids()
    assert [line for line in proc.log().splitlines() if "n1 was revoked" in line and "no longer registered" in line]
