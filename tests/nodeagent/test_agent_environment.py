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


def test_the_frame_key_is_read_through_a_name_server_blip(tmp_path, monkeypatch):
    """A node that cannot reach the Name Server for a moment keeps trying, as its status writes do,
    instead of failing the agent for good; a key that is missing fails it with the fix to make."""
    from oneos.documents import DocumentError
    from oneos.nameserver.client import NameServerUnreachable
    from oneos.nodeagent import supervisor

    monkeypatch.setattr(supervisor, "WRITE_RETRY_S", 0.01)
    answers = [NameServerUnreachable("down"), NameServerUnreachable("down"), b"k" * 32]

    def get_raw(key):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer
    sup = types.SimpleNamespace(workdir=tmp_path / "agents", node_id="n1", agent_env={}, kernel_node=False,
                                sandbox=Sandbox(None),
                                ns=types.SimpleNamespace(url="http://127.0.0.1:8500", token=None, get_raw=get_raw))
    assignment = {"pipeline": "p", "uid": "0" * 32, "generation": 1, "epoch": 1, "inputs": [], "outputs": [],
                  "attached": False, "files": {}, "agent": {"name": "a", "run": ["true"]}}
    runner = AgentRunner(sup, "p.a", assignment, 1)
    assert runner._read_frame_key() == b"k" * 32 and answers == []
    sup.ns.get_raw = lambda key: None
    with pytest.raises(DocumentError, match="apply the pipeline again"):
        runner._read_frame_key()
