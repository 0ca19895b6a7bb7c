"""A cluster whose broker is reached over TLS with a token (issue 12, item 4): the boot record
says pulsar+ssl://, the CA file and `authentication: token`; each node names its own token
file in its config.yaml, the user's oneosctl in ONEOS_PULSAR_TOKEN_FILE.

pulsar-lite speaks no TLS: a TLS terminator (tests/pulsar_tls.py) stands in front of it, and
keeps the first bytes each client sends, decrypted, where the CONNECT command carries the token.
"""

from __future__ import annotations

import pytest

from oneos import state
from oneos.bus import topics
from oneos.secretfiles import write_secret
from tests.cluster import Cluster
from tests.conftest import REAL_CONSUL
from tests.procs import BrokerProc, NameServerProc, run_cli
from tests.pulsar_admin import FakeAdmin
from tests.pulsar_tls import TLSProxy
from tests.tlsfiles import make_tls

NODE_TOKENS = {"n1": "token-of-node-n1.aaaa", "n2": "token-of-node-n2.bbbb"}
USER_TOKEN = "token-of-the-operator.cccc"


@pytest.fixture
def tls_cluster(tmp_path):
    """Name Server, pulsar-lite behind TLS, and nodes n1 (kernel) and n2, each with its token file."""
    if REAL_CONSUL:
        pytest.skip("starts its own Name Server: built-in Name Server only")
    tls = make_tls(tmp_path / "tls")
    nameserver = NameServerProc(tmp_path / "ns-data").start()
    broker = BrokerProc(tmp_path / "pulsar")
    proxy = None
    admin = FakeAdmin([], token=NODE_TOKENS["n1"])   # n1 is the only kernel node: the leader
    cluster = Cluster(nameserver, tmp_path)
    try:
        broker.start()
        proxy = TLSProxy(broker.port, tls).start()
        cluster.bootstrap(proxy.url, pulsar={"url": proxy.url, "namespace": "public/default", "adminUrl": admin.url,
                                             "tlsTrustCertsFile": str(tls.ca), "authentication": "token"},
                          blobGracePeriod="4s")     # the janitor's rounds every second, not every 15
        for node_id, flags in (("n1", ["--kernel"]), ("n2", ["--no-kernel"])):
            home = tmp_path / f"home-{node_id}"
            write_secret(home / "pulsar-token", NODE_TOKENS[node_id])
            (home / "config.yaml").write_text("pulsar: {tokenFile: pulsar-token}\n")
            cluster.start(node_id, *flags, home=home)
        cluster.wait_for(cluster.leader, 20, "a leader")
        cluster.proxy, cluster.tls, cluster.admin = proxy, tls, admin
        yield cluster
    finally:
        cluster.stop()
        admin.close()
        if proxy is not None:
            proxy.stop()
        broker.stop()
        nameserver.stop()


def run(cluster: Cluster, line: str, env: dict[str, str], input: bytes = b""):
    return run_cli(["oneosctl", "run", line], env={**cluster.env, **env}, input=input, timeout=120)


def test_a_pipeline_runs_over_tls_with_every_process_sending_its_own_token(tls_cluster, tmp_path):
    user_token = tmp_path / "operator-pulsar-token"
    write_secret(user_token, USER_TOKEN)
    data = b"".join(b"%d pipes over TLS\n" % i for i in range(20_000))
    done = run(tls_cluster, "cat | tr a-z A-Z | cat", {"ONEOS_PULSAR_TOKEN_FILE": str(user_token)}, input=data)
    assert (done.returncode, done.stderr.decode()) == (0, "")
    assert done.stdout == data.upper()
    sent = [first for first in tls_cluster.proxy.first_bytes() if first]
    tokens = {token for token in (*NODE_TOKENS.values(), USER_TOKEN) if any(token.encode() in f for f in sent)}
    assert tokens == {*NODE_TOKENS.values(), USER_TOKEN}
    assert all(any(t.encode() in first for t in (*NODE_TOKENS.values(), USER_TOKEN)) for first in sent)


def test_oneosctl_run_without_a_token_says_so_in_one_line_and_applies_nothing(tls_cluster):
    done = run(tls_cluster, "echo hi | cat", {"ONEOS_PULSAR_TOKEN_FILE": ""})
    assert done.returncode == 1 and done.stdout == b""
    err = done.stderr.decode()
    assert err.count("\n") == 1 and "wants a token" in err and "ONEOS_PULSAR_TOKEN_FILE" in err, err
    assert tls_cluster.ctl("get", "pipelines").stdout.count("\n") <= 1


def test_oneosctl_run_that_does_not_trust_the_broker_says_so_in_one_line(tls_cluster, tmp_path):
    token = tmp_path / "operator-pulsar-token"
    write_secret(token, USER_TOKEN)
    other = make_tls(tmp_path / "other", "other")
    done = run(tls_cluster, "echo hi | cat", {"ONEOS_PULSAR_TOKEN_FILE": str(token),
                                              "ONEOS_PULSAR_TLS_TRUST_CERTS": str(other.ca)})
    assert done.returncode == 1 and done.stdout == b""
    err = done.stderr.decode()
    assert err.count("\n") == 1 and "does not trust" in err and str(other.ca) in err, err
    assert not any(USER_TOKEN.encode() in first for first in tls_cluster.proxy.first_bytes())


def test_a_node_whose_token_file_others_may_read_does_not_join(tls_cluster, tmp_path):
    home = tmp_path / "home-n3"
    home.mkdir()
    (home / "pulsar-token").write_text("leaky-token\n")
    (home / "pulsar-token").chmod(0o644)
    (home / "config.yaml").write_text("pulsar: {tokenFile: pulsar-token}\n")
    node = tls_cluster.start("n3", "--no-kernel", home=home, wait=False)
    node.popen.wait(30)
    assert node.popen.returncode != 0
    assert "may be read by others (mode 0644); run `chmod 600" in node.log()
    assert "n3" not in tls_cluster.node_ids()


def test_the_leader_deletes_a_deleted_pipelines_topics_through_the_admin_api_with_its_token(tls_cluster, tmp_path):
    """pulsar-lite has no admin API: a stand-in answers for it, refusing requests without n1's token."""
    manifest = tmp_path / "idle.yaml"
    manifest.write_text("apiVersion: oneos/v1\nkind: Pipeline\nmetadata: {name: idle}\nspec:\n  agents:\n"
                        "    - {name: a, run: [sleep, '1000']}\n")
    assert tls_cluster.ctl("apply", "-f", str(manifest)).returncode == 0
    tls_cluster.wait_for(lambda: tls_cluster.statuses("idle").get("a", {}).get("state") == "Running", 30, "Running")
    uid = state.decode_pipeline(tls_cluster.ns.get(state.pipeline_key("idle"))[1])["metadata"]["uid"]
    made = {topics.link_topic("public/default", uid, "a", "b"), topics.output_topic("public/default", uid, "a")}
    admin = tls_cluster.admin
    admin.topics |= made | {"persistent://public/default/someone-elses"}
    assert tls_cluster.ctl("delete", "pipeline", "idle").returncode == 0
    tls_cluster.wait_for(lambda: admin.topics == {"persistent://public/default/someone-elses"}, 30,
                         "the leader to delete the pipeline's topics")
    assert admin.refused == 0 and sorted(t for t, _ in admin.deleted) == sorted(made)
