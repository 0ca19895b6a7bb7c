"""An agent cannot read the node's Name Server token, or its other credentials, in its environment:
a real `oneosd` started with ONEOS_TOKEN, CONSUL_HTTP_TOKEN and CONSUL_HTTP_TOKEN_FILE set runs
`env` for a pipeline, and none of them is in what `env` prints. The kernel agents of the init
manifest (the cluster's own services, such as the broker) still get the node's token, but not
the join token the node may have enrolled with: they act as the node, they let no one in.

(The token file, `$ONEOS_HOME/token`, is still readable by an agent that runs as the node's user:
running agents as another user is the sandbox's part, not this one.)
"""

from __future__ import annotations

import pytest

from tests.conftest import running_cluster

TOKEN = "1e7c0ffe-0000-4000-8000-5ec7e7000001"
CONSUL_TOKEN = "1e7c0ffe-0000-4000-8000-5ec7e7000002"
FILE_TOKEN = "1e7c0ffe-0000-4000-8000-5ec7e7000003"
JOIN_TOKEN = "1e7c0ffe.5ec7e7000004"       # the node is enrolled already: it is not used, only carried

INIT = """\
apiVersion: oneos/v1
kind: Init
metadata: {name: oneos-init}
spec:
  agents:
    - {name: printenv, run: [env]}
"""


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """One kernel node whose own environment holds the Name Server credentials (as a node's would:
    the built-in Name Server here has no ACLs, so the tokens are sent and not needed)."""
    token_file = tmp_path / "consul-token"
    token_file.write_text(FILE_TOKEN + "\n")
    token_file.chmod(0o600)
    monkeypatch.setenv("ONEOS_TOKEN", TOKEN)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", CONSUL_TOKEN)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("ONEOS_JOIN_TOKEN", JOIN_TOKEN)
    monkeypatch.setenv("ONEOS_AGENT_CANARY", "seen")      # any other variable of the node's: not passed either
    with running_cluster(tmp_path, {"n1": ["--kernel"]}, INIT) as c:
        yield c


def test_an_agent_sees_none_of_the_nodes_credentials_in_its_environment(cluster, tmp_path):
    code, out, err = cluster.run("env")
    assert code == 0, err
    seen = dict(line.split("=", 1) for line in out.decode().splitlines() if "=" in line)
    for secret in (TOKEN, CONSUL_TOKEN, FILE_TOKEN, JOIN_TOKEN, str(tmp_path / "consul-token")):
        assert secret.encode() not in out, f"the agent saw the node's credential {secret}:\n{out.decode()}"
    for name in ("ONEOS_TOKEN", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "ONEOS_JOIN_TOKEN", "ONEOS_HOME",
                 "ONEOS_AGENT_CANARY"):
        assert name not in seen, f"{name} reached the agent"
    # What it does get: OneOS's names for it, and what programs need.
    assert seen["ONEOS_NODE"] == "n1" and seen["ONEOS_AGENT"] == "env" and seen["ONEOS_NAMESERVER"] == cluster.url
    assert "PATH" in seen and "HOME" in seen

    # The kernel agent of the init manifest ran on the same node, with the node's token.
    logs = tmp_path / "home-n1" / "runtimes" / "n1" / "agents" / "logs"
    cluster.wait_for(lambda: cluster.statuses("oneos-init").get("printenv", {}).get("state") == "Exited", 30,
                     "the kernel agent to run")
    kernel = (logs / "oneos-init.printenv.1.log").read_text()
    assert f"ONEOS_TOKEN={TOKEN}" in kernel.splitlines()
    assert JOIN_TOKEN not in kernel, "the kernel agent saw the node's join token"
