"""What an agent's environment holds: built from an allowlist of the node's own variables, the
node's settings, the agent's own and OneOS's names; never the node's credentials (see
tests/security/test_agent_environment.py for the same with a real node)."""

from __future__ import annotations

import types

import pytest

from oneos.nodeagent.sandbox import AgentUser, Sandbox
from oneos.nodeagent.supervisor import AgentRunner

NODE_ENV = {
    "PATH": "/usr/bin:/bin", "HOME": "/home/pi", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC",
    "SSL_CERT_FILE": "/etc/ssl/cert.pem",
    "CONSUL_HTTP_ADDR": "ns.example:8501", "CONSUL_HTTP_SSL": "true", "CONSUL_CACERT": "/etc/oneos/ca.pem",
    # Credentials: never an ordinary agent's.
    "ONEOS_TOKEN": "secret-1", "CONSUL_HTTP_TOKEN": "secret-2", "CONSUL_HTTP_TOKEN_FILE": "/etc/oneos/token",
    "CONSUL_CLIENT_CERT": "/etc/oneos/node.pem", "CONSUL_CLIENT_KEY": "/etc/oneos/node-key.pem",
    "CONSUL_HTTP_AUTH": "user:password", "https_proxy": "http://user:password@proxy:3128",
    "ONEOS_HOME": "/home/pi/.oneos", "AWS_SECRET_ACCESS_KEY": "secret-3",
}
SECRETS = ("ONEOS_TOKEN", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY",
           "CONSUL_HTTP_AUTH", "https_proxy", "ONEOS_HOME", "AWS_SECRET_ACCESS_KEY",
           "ONEOS_DATA_DIR")     # the node's own folder: only a kernel agent keeps data there (the broker)


def environment(tmp_path, monkeypatch, *, kernel: bool, agent_env=None, kernel_node: bool = True,
                user=None) -> dict[str, str]:
    monkeypatch.setattr("os.environ", dict(NODE_ENV))
    sup = types.SimpleNamespace(workdir=tmp_path / "agents", node_id="n1", agent_env=agent_env or {},
                                kernel_node=kernel_node, sandbox=Sandbox(user),
                                ns=types.SimpleNamespace(url="https://ns.example:8501", token="secret-1"))
    assignment = {"pipeline": "p", "uid": "0" * 32, "generation": 1, "epoch": 1, "inputs": [], "outputs": [],
                  "attached": False, "files": {}, "kernel": kernel,
                  "agent": {"name": "a", "run": ["env"], "env": {"MODE": "fast"}}}
    return AgentRunner(sup, "p.a", assignment, 1)._environment(3)


def test_an_agent_gets_what_programs_need_and_none_of_the_nodes_credentials(tmp_path, monkeypatch):
    env = environment(tmp_path, monkeypatch, kernel=False, agent_env={"ONEOS_GPIO_SIM": "/srv/board"})
    for name in SECRETS:
        assert name not in env
    for name in ("HOME", "LANG", "LC_ALL", "TZ", "SSL_CERT_FILE", "CONSUL_HTTP_ADDR", "CONSUL_HTTP_SSL",
                 "CONSUL_CACERT"):
        assert env[name] == NODE_ENV[name]
    assert env["PATH"].endswith("/usr/bin:/bin")          # OneOS's own commands first
    assert env["ONEOS_GPIO_SIM"] == "/srv/board" and env["MODE"] == "fast"
    assert (env["ONEOS_NODE"], env["ONEOS_PIPELINE"], env["ONEOS_AGENT"], env["ONEOS_INCARNATION"]) == \
        ("n1", "p", "a", "3")


def test_an_agent_run_as_the_agent_user_has_its_working_directory_for_home(tmp_path, monkeypatch):
    """The node's HOME is not the agent user's, nor open to it: the agent's own folder is."""
    user = AgentUser("oneos-agent", 999, 998)
    env = environment(tmp_path, monkeypatch, kernel=False, user=user)
    assert env["HOME"] == str(tmp_path / "agents" / "p.a")
    assert (env["USER"], env["LOGNAME"]) == ("oneos-agent", "oneos-agent")
    kernel = environment(tmp_path, monkeypatch, kernel=True, user=user)   # runs as the node's user
    assert kernel["HOME"] == NODE_ENV["HOME"]


@pytest.mark.parametrize("name", ["ONEOS_TOKEN", "CONSUL_HTTP_TOKEN"])
def test_the_manifest_may_set_a_variable_of_that_name_for_its_own_agent(tmp_path, monkeypatch, name):
    """The allowlist is about what the node passes on; what the manifest gives is the manifest's."""
    monkeypatch.setattr("os.environ", dict(NODE_ENV))
    sup = types.SimpleNamespace(workdir=tmp_path / "agents", node_id="n1", agent_env={}, kernel_node=False,
                                sandbox=Sandbox(None),
                                ns=types.SimpleNamespace(url="http://127.0.0.1:8500", token="secret-1"))
    assignment = {"pipeline": "p", "uid": "0" * 32, "generation": 1, "epoch": 1, "inputs": [], "outputs": [],
                  "attached": False, "files": {}, "agent": {"name": "a", "run": ["env"], "env": {name: "its-own"}}}
    assert AgentRunner(sup, "p.a", assignment, 1)._environment(1)[name] == "its-own"


def test_a_kernel_agent_keeps_the_nodes_environment_and_gets_its_token(tmp_path, monkeypatch):
    env = environment(tmp_path, monkeypatch, kernel=True)
    assert env["ONEOS_TOKEN"] == "secret-1"
    assert env["ONEOS_DATA_DIR"] == str(tmp_path)
    assert env["CONSUL_CLIENT_KEY"] == NODE_ENV["CONSUL_CLIENT_KEY"]


def test_a_kernel_mark_on_a_node_that_is_not_a_kernel_node_gives_nothing(tmp_path, monkeypatch):
    """The controller places kernel agents on kernel nodes only: elsewhere the mark was written by
    someone else, and the agent is run as any other, without the node's token."""
    env = environment(tmp_path, monkeypatch, kernel=True, kernel_node=False)
    for name in SECRETS:
        assert name not in env


def test_the_frame_key_opens_only_with_the_key_it_was_sealed_to(tmp_path):
    """The controller seals each pipeline's frame key to the node it places an agent on: that node opens it
    with its own key (no Name Server read); another node's key, another pipeline's context or no key at all
    fail the agent with why."""
    from oneos import state
    from oneos.documents import DocumentError
    from oneos.errors import OneOSError
    from oneos.identity import Identity

    mine, theirs, key = Identity.generate(), Identity.generate(), b"k" * 32
    assignment = {"pipeline": "p", "uid": "0" * 32, "generation": 1, "epoch": 1, "inputs": [], "outputs": [],
                  "attached": False, "files": {}, "agent": {"name": "a", "run": ["true"]},
                  "frameKey": state.seal_frame_key(key, mine.box_key, "p", "0" * 32)}

    def runner(identity, **changes):
        sup = types.SimpleNamespace(workdir=tmp_path / "agents", node_id="n1", agent_env={}, kernel_node=False,
                                    sandbox=Sandbox(None), identity=identity, ns=None)
        return AgentRunner(sup, "p.a", dict(assignment, **changes), 1)
    assert runner(mine)._open_frame_key() == key
    with pytest.raises(OneOSError, match="frame key cannot be opened: the sealed secret was not sealed to this"):
        runner(theirs)._open_frame_key()
    with pytest.raises(OneOSError, match="cannot be opened"):      # sealed for pipeline p, not q
        runner(mine, pipeline="q")._open_frame_key()
    without = dict(assignment)
    del without["frameKey"]
    sup = types.SimpleNamespace(workdir=tmp_path / "agents", node_id="n1", sandbox=Sandbox(None), identity=mine)
    with pytest.raises(DocumentError, match="carries no frame key for this node .* apply the pipeline again"):
        AgentRunner(sup, "p.a", without, 1)._open_frame_key()
