"""What a provisioning tool (Ansible) runs, each command saying whether it changed anything:
`oneosctl acl bootstrap`, `oneosctl bootstrap`, `oneosd ID --make-key` on the node, then
`oneosctl node approve ID --signing-key K --box-key K` (no join request, no waiting), and
the node started after its approval, which finds its sealed token (and again after a restart).

Each command is run as a process against a real Name Server with ACLs on; register()'s
cases that need no process (a kernel flag changed, the checks of its input) run in-process.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from oneos import enrollment, state
from oneos.controller.view import trusted_nodes
from oneos.errors import UsageError
from oneos.identity import Identity, IdentityError, public_key
from oneos.nameserver.client import NameServer
from oneos.nodeagent import config as runtime_config
from oneos.secretfiles import read_secret
from tests.cluster import EMPTY_INIT, LOCK_DELAY, SESSION_TTL, Cluster
from tests.conftest import REAL_CONSUL
from tests.procs import BrokerProc, NameServerProc, free_port, run_cli
from tests.security.test_enrollment import acl_cluster
from tests.tlsfiles import make_tls

pytestmark = pytest.mark.skipif(REAL_CONSUL, reason="starts Name Servers of its own")


def one_line(text: str) -> str:
    assert text.count("\n") == 1 and text.endswith("\n"), repr(text)
    return text.strip()


# ------------------------------------------------------------ oneosd --make-key


def make_key(home: Path, *argv: str, env: dict[str, str] | None = None):
    # An address where no Name Server listens: --make-key must not need one.
    return run_cli(["oneosd", *argv, "--make-key"],
                   env={"ONEOS_HOME": str(home), "ONEOS_NAMESERVER": f"http://127.0.0.1:{free_port()}", **(env or {})})


def test_make_key_makes_the_key_once_asks_nothing_and_writes_no_config(tmp_path):
    home = tmp_path / "home"
    first = make_key(home, "n1")
    assert (first.returncode, first.stderr) == (0, ""), first.stderr
    keys = json.loads(one_line(first.stdout))
    key_file = home / "runtimes" / "n1" / "node.key"
    identity = Identity.load_or_create(key_file)     # the file a first start makes and reads
    assert keys == {"id": "n1", "signingKey": identity.signing_key, "boxKey": identity.box_key,
                    "fingerprint": identity.fingerprint, "created": True}
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert [p.stat().st_mode & 0o777 for p in (home, home / "runtimes", key_file.parent)] == [0o711] * 3
    assert not (home / "config.yaml").exists()
    again = make_key(home, "n1")
    assert again.returncode == 0 and json.loads(again.stdout) == dict(keys, created=False)

    key_file.chmod(0o644)       # a key others may read is refused, as at a start
    exposed = make_key(home, "n1")
    assert exposed.returncode == 1 and f"chmod 600 {key_file}" in one_line(exposed.stderr)
    assert exposed.stdout == ""


def test_make_key_takes_the_saved_id_and_the_config_file_and_needs_one(tmp_path):
    home = tmp_path / "home"
    none = make_key(home)
    assert none.returncode == 2 and "no runtime id given" in one_line(none.stderr) and none.stdout == ""
    assert not home.exists()

    home.mkdir()
    (home / "config.yaml").write_text("id: saved-1\n")
    saved = make_key(home)
    assert saved.returncode == 0 and json.loads(saved.stdout)["id"] == "saved-1"
    assert (home / "runtimes" / "saved-1" / "node.key").exists()

    config = tmp_path / "elsewhere.yaml"
    config.write_text("id: from-config\n")
    given = make_key(home, "--config", str(config))
    assert json.loads(given.stdout)["id"] == "from-config" and config.read_text() == "id: from-config\n"
    assert (home / "config.yaml").read_text() == "id: saved-1\n"


def test_load_without_saving_writes_nothing_and_wants_an_id(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEOS_HOME", str(tmp_path))
    with pytest.raises(UsageError, match="no runtime id given"):
        runtime_config.load(runtime_config.Overrides(), save=False)
    assert runtime_config.load(runtime_config.Overrides(id="n1"), save=False).id == "n1"
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------ keys given as text


def test_a_public_key_is_the_base64_of_32_bytes():
    key = Identity.generate().signing_key
    assert public_key(f" {key}\n", "--signing-key") == key
    for bad in ("", "not base64!", key[:-4] + "====", key + key, "QUJD"):
        with pytest.raises(IdentityError, match="--signing-key .* is not a public key: it must be the base64 of 32"):
            public_key(bad, "--signing-key")


def test_register_changes_a_kernel_flag_in_the_token_too_and_refuses_another_key(tmp_path):
    with acl_cluster(tmp_path) as c:
        node = Identity.generate()
        outcome, record = enrollment.register(c.ns, "n1", node.signing_key, node.box_key, kernel=False,
                                              approved_by="the test")
        assert outcome == enrollment.APPROVED and not record["kernel"]
        token = c.ns.acl_token_read(record["tokenAccessor"])
        assert [p["Name"] for p in token["Policies"]] == [enrollment.node_policy("n1")]

        outcome, record = enrollment.register(c.ns, "n1", node.signing_key, node.box_key, kernel=True,
                                              approved_by="the test")
        assert outcome == enrollment.CONFIGURED and record["kernel"] and state.read_key(c.ns, "n1") == record
        token = c.ns.acl_token_read(record["tokenAccessor"])
        assert [p["Name"] for p in token["Policies"]] == [enrollment.node_policy("n1"), enrollment.KERNEL_POLICY]
        assert c.ns.acl_policy_read(enrollment.node_policy("n1"))["Rules"] == enrollment.node_rules("n1", True)
        sealed = c.ns.get(state.enroll_key("n1"))[1].value.decode()
        assert node.open(sealed, enrollment.token_context("n1")).decode() == token["SecretID"]  # the same token

        other = Identity.generate()
        for signing, box in ((other.signing_key, other.box_key), (node.signing_key, other.box_key)):
            with pytest.raises(enrollment.EnrollmentError, match="`oneosctl node revoke n1` first"):
                enrollment.register(c.ns, "n1", signing, box, kernel=True, approved_by="the test")
        assert state.read_key(c.ns, "n1") == record


# ------------------------------------------------------ the commands, as Ansible runs them


@pytest.fixture
def acl_nameserver(tmp_path):
    """A Name Server with ACLs on that no one has bootstrapped."""
    proc = NameServerProc(tmp_path / "ns-data", extra=["--acl"]).start()
    yield proc
    proc.stop()


def ctl(url: str, *argv: str, env: dict[str, str] | None = None):
    return run_cli(["oneosctl", *argv], env={"ONEOS_NAMESERVER": url, "ONEOS_TOKEN": "", "CONSUL_HTTP_TOKEN": "",
                                             "CONSUL_HTTP_TOKEN_FILE": "", **(env or {})})


def test_acl_bootstrap_once_keeps_the_token_in_a_file_and_says_what_it_did(acl_nameserver, tmp_path):
    url = acl_nameserver.url
    out = tmp_path / "secrets" / "deep" / "management-token"
    done = ctl(url, "acl", "bootstrap", "--token-out", str(out))
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert done.stdout == f"acl bootstrapped: management token in {out}\n"
    secret = read_secret(out, "the management token")
    assert out.stat().st_mode & 0o777 == 0o600
    assert [p.stat().st_mode & 0o777 for p in (out.parent, out.parent.parent)] == [0o700, 0o700]
    management = NameServer(url, token=secret)
    assert enrollment.outdated_policies(management) == []

    again = ctl(url, "acl", "bootstrap", "--token-out", str(out))
    assert (again.returncode, again.stdout, again.stderr) == (
        0, f"acl already bootstrapped: management token in {out}\n", "")
    # A policy changed by hand (or by an older OneOS) is written again, and said.
    management.acl_policy_upsert(enrollment.OPERATOR_POLICY, 'key_prefix "" { policy = "read" }')
    fixed = ctl(url, "acl", "bootstrap", "--token-out", str(out))
    assert fixed.stdout == (f"acl already bootstrapped: management token in {out}; "
                            f"policies updated: {enrollment.OPERATOR_POLICY}\n"), fixed.stderr
    assert enrollment.outdated_policies(management) == []

    # Someone else's bootstrap: no token file of theirs here, or a token that is not theirs.
    absent = tmp_path / "mine"
    theirs = ctl(url, "acl", "bootstrap", "--token-out", str(absent))
    assert theirs.returncode == 1 and theirs.stdout == ""
    assert "was bootstrapped already, by someone else" in one_line(theirs.stderr)
    assert not absent.exists()
    absent.write_text("5b1d2c3e-0000-4000-8000-0000000000ff\n")
    absent.chmod(0o600)
    wrong = ctl(url, "acl", "bootstrap", "--token-out", str(absent))
    assert wrong.returncode == 1 and "does not take the token in" in one_line(wrong.stderr)
    # An operator's token is refused as a management token too.
    operator = management.acl_token_create("alice", [enrollment.OPERATOR_POLICY])["SecretID"]
    absent.write_text(operator + "\n")
    assert ctl(url, "acl", "bootstrap", "--token-out", str(absent)).returncode == 1

    runs = [done, again, fixed, theirs, wrong]
    assert not [r for r in runs if secret in r.stdout + r.stderr]
    assert secret not in acl_nameserver.log()


def test_acl_bootstrap_of_a_name_server_without_acls_says_so(builtin_nameserver, tmp_path):
    done = ctl(builtin_nameserver.url, "acl", "bootstrap", "--token-out", str(tmp_path / "token"))
    assert done.returncode == 1 and "has no ACLs" in one_line(done.stderr) and done.stdout == ""
    assert not (tmp_path / "token").exists()


def test_a_node_approved_by_its_keys_before_it_starts_joins_and_is_relabelled_live(acl_nameserver, tmp_path):
    url = acl_nameserver.url
    token_file = tmp_path / "management-token"
    assert ctl(url, "acl", "bootstrap", "--token-out", str(token_file)).returncode == 0
    management = read_secret(token_file, "the management token")
    admin = {"ONEOS_TOKEN": management}
    broker = BrokerProc(tmp_path / "pulsar")
    c = Cluster(acl_nameserver, tmp_path, {"ONEOS_NAMESERVER": url})
    c.ns = NameServer(url, token=management)
    try:
        broker.start()
        init = tmp_path / "init.yaml"
        init.write_text(EMPTY_INIT)
        boot = ["bootstrap", "--pulsar-url", broker.url, "--init", str(init), "--session-ttl", f"{SESSION_TTL}s",
                "--lock-delay", f"{LOCK_DELAY}s"]
        first = ctl(url, *boot, "--token-file", str(token_file))
        assert first.stdout.startswith(f"boot record written to {state.BOOT}\ninit manifest written to "), first.stderr
        second = ctl(url, *boot, env=admin)
        assert second.stdout.startswith(f"boot record already at {state.BOOT}: left as it is"), second.stderr
        assert f"init manifest already at {state.INIT}: left as it is" in second.stdout

        home = tmp_path / "home-k1"
        keys = json.loads(make_key(home, "k1").stdout)
        approve = ["node", "approve", "k1", "--signing-key", keys["signingKey"], "--box-key", keys["boxKey"]]
        done = ctl(url, *approve, "--kernel", "--label", "room=a", env=admin)
        assert (done.returncode, done.stdout, done.stderr) == (0, "node/k1 approved\n", "")
        record = state.read_key(c.ns, "k1")
        assert (record["fingerprint"], record["kernel"], record["labels"]) == (keys["fingerprint"], True, {"room": "a"})
        assert c.ns.get(state.enroll_key("k1"))[1] is not None     # its token, sealed to it, before it starts

        index = c.ns.keys(state.PREFIX)[0]
        same = ctl(url, *approve, "--label", "room=a", "--kernel", env=admin)
        assert (same.returncode, same.stdout) == (0, "node/k1 unchanged\n"), same.stderr
        assert c.ns.keys(state.PREFIX)[0] == index and state.read_key(c.ns, "k1") == record   # nothing written

        # Started with no token of its own: it opens the one sealed to it, joins and leads.
        anonymous = {"ONEOS_TOKEN": "", "CONSUL_HTTP_TOKEN": "", "CONSUL_HTTP_TOKEN_FILE": ""}
        k1 = c.start("k1", "--kernel", home=home, register=False, env=anonymous)
        c.wait_for(lambda: c.leader() == "k1", 30, "k1 to lead")
        assert "waiting for approval" not in k1.log()
        own = home / "runtimes" / "k1" / "token"
        assert own.stat().st_mode & 0o777 == 0o600 and read_secret(own, "the node's token") != management

        def shown_labels() -> dict:
            listed = json.loads(ctl(url, "get", "nodes", "-o", "json", env=admin).stdout)["items"]
            return next(n for n in listed if n["id"] == "k1")["labels"]

        assert shown_labels()["room"] == "a"
        manifest = tmp_path / "roomb.yaml"
        manifest.write_text("apiVersion: oneos/v1\nkind: Pipeline\nmetadata: {name: roomb}\nspec:\n  agents:\n"
                            + textwrap.indent("- {name: job, run: [sleep, '1000'], requires: {labels: {room: b}}}\n",
                                              "    "))
        assert ctl(url, "apply", "-f", str(manifest), env=admin).returncode == 0
        c.wait_for(lambda: c.statuses("roomb").get("job", {}).get("state") == "Pending", 30, "the job to wait")
        assert not state.read_assignments(c.ns)

        moved = ctl(url, *approve, "--kernel", "--label", "room=b", env=admin)
        assert (moved.returncode, moved.stdout) == (0, "node/k1 configured\n"), moved.stderr
        pid = k1.pid
        c.wait_for(lambda: shown_labels()["room"] == "b", 10, "get nodes to show the new label")
        c.wait_for(lambda: c.statuses("roomb").get("job", {}).get("state") == "Running", 30,
                   "the job to be placed on k1 by its new label")
        nodes, _ = trusted_nodes([n.record for n in state.read_nodes(c.ns)[0]], state.read_keys(c.ns))
        assert [(n.id, n.labels["room"]) for n in nodes] == [("k1", "b")]
        assert k1.alive() and k1.pid == pid      # not restarted

        # Restarted, it finds its token again (sealed at oneos/enroll/k1, and kept in its folder).
        assert k1.terminate() == 0
        k1 = c.start("k1", "--kernel", home=home, register=False, env=anonymous)
        c.wait_for(lambda: c.leader() == "k1", 30, "k1 to lead again")
        assert "waiting for approval" not in k1.log()

        other = Identity.generate()
        refused = ctl(url, "node", "approve", "k1", "--signing-key", other.signing_key, "--box-key", other.box_key,
                      env=admin)
        assert refused.returncode == 1 and refused.stdout == ""
        assert "`oneosctl node revoke k1` first" in one_line(refused.stderr)
        assert state.read_key(c.ns, "k1")["signingKey"] == keys["signingKey"]
    finally:
        c.stop()
        broker.stop()


def test_node_approve_checks_the_keys_it_is_given(builtin_nameserver):
    url = builtin_nameserver.url
    key = Identity.generate().signing_key
    for argv, says in (
            (["--signing-key", key], "--signing-key and --box-key go together"),
            (["--box-key", key], "--signing-key and --box-key go together"),
            (["--signing-key", key, "--box-key", "c2hvcnQ="], "--box-key 'c2hvcnQ=' is not a public key"),
            (["--signing-key", key, "--box-key", key, "--fingerprint", "SHA256:x"], "--fingerprint checks")):
        done = ctl(url, "node", "approve", "n1", *argv)
        assert done.returncode == 2 and says in one_line(done.stderr) and done.stdout == "", done.stderr
    assert state.read_key(NameServer(url), "n1") is None
    bad_id = ctl(url, "node", "approve", "../n1", "--signing-key", key, "--box-key", key)
    assert bad_id.returncode == 2 and "is not valid" in one_line(bad_id.stderr)
    # Neither: today's way, a join request, as before.
    neither = ctl(url, "node", "approve", "n1")
    assert neither.returncode == 1 and "has not asked to join" in one_line(neither.stderr)
    # Without ACLs the keys are registered all the same (no token to seal).
    done = ctl(url, "node", "approve", "n1", "--signing-key", key, "--box-key", Identity.generate().box_key)
    assert done.stdout == "node/n1 approved\n" and state.read_key(NameServer(url), "n1")["signingKey"] == key


def test_acl_bootstrap_of_a_name_server_that_speaks_tls_finds_it_by_consuls_variables(tmp_path):
    tls = make_tls(tmp_path / "tls")
    nameserver = NameServerProc(tmp_path / "ns-data", extra=["--acl"], tls=tls, verify_incoming=True).start()
    try:
        env = {"ONEOS_NAMESERVER": "", "CONSUL_HTTP_ADDR": f"127.0.0.1:{nameserver.port}", "CONSUL_HTTP_SSL": "true",
               **tls.client_env()}
        out = tmp_path / "token"
        done = ctl("", "acl", "bootstrap", "--token-out", str(out), env=env)
        assert (done.returncode, done.stdout) == (0, f"acl bootstrapped: management token in {out}\n"), done.stderr
        again = ctl("", "acl", "bootstrap", "--token-out", str(out), env=env)
        assert again.stdout == f"acl already bootstrapped: management token in {out}\n", again.stderr
        assert read_secret(out, "the token") not in nameserver.log()
    finally:
        nameserver.stop()
