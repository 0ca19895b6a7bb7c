"""An agent cannot read the node's token or key: a real `oneosd` run as root, with the default
agent user, runs a probe script as a user's pipeline would. The probe runs as `oneos-agent`, in a
working directory (0700) of its own, and every read of the node's files is refused; an agent that
allocates past its resources.memory is stopped.

The node's secrets are written as the node and its enrollment write them (0600, in its
ONEOS_HOME). The cluster's folder is in /tmp, open to other users as a machine's /var/lib is,
unlike pytest's own tmp folders (0700): so what stops the agent is the node's modes, not the test's.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest

from oneos.secretfiles import write_secret
from tests.conftest import running_cluster
from tests.procs import cli
from tests.test_dev import Dev

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="only a node run as root runs its agents as another user")

#: The node's secrets: its tokens (written here as an operator or its enrollment writes them) and
#: its private keys (made by the runtime's identity, oneos/identity.py), each 0600.
TOKENS = {"token": "5ec7e7-home-token", "runtimes/n1/token": "5ec7e7-node-token"}
KEY = "runtimes/n1/node.key"

PROBE = """\
# sh probe.sh FILE... -- FOLDER...: who it is, its folder, and what it can read (cat) and list (ls).
echo "uid $(id -u)"
echo "workdir $(stat -c '%a %U' .)"
echo "shipped $(stat -c '%U' probe.sh)"
echo "home $HOME"
look=cat
for f in "$@"; do
    if [ "$f" = -- ]; then look=ls; continue; fi
    if out=$($look "$f" 2>&1); then echo "read $f: $out"; else echo "refused $f: $out"; fi
done
"""

HOG = """\
apiVersion: oneos/v1
kind: Pipeline
metadata: {name: hog}
spec:
  agents:
    - name: small
      run: [awk, 'BEGIN { s = "x"; while (length(s) < 4000000) s = s s; print "small", length(s) }']
      resources: {memory: 16Mi}
      restart: "no"
    - name: big
      run: [awk, 'BEGIN { s = "x"; while (length(s) < 2000000000) s = s s; print "big", length(s) }']
      resources: {memory: 16Mi}
      restart: "no"
"""


BOARD_WRITER = """\
apiVersion: oneos/v1
kind: Pipeline
metadata: {name: pins}
spec:
  agents:
    - name: writer
      run: [sh, -c, 'echo 1 > "$ONEOS_GPIO_SIM/D9" && echo wrote']
      requires: {labels: {gpio: "true"}}
      restart: "no"
"""


def stat_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


@pytest.fixture(scope="module")
def sandboxed():
    root = Path(tempfile.mkdtemp(prefix="oneos-sandbox-"))
    os.chmod(root, 0o711)
    home = root / "home-n1"
    for name, secret in TOKENS.items():
        write_secret(home / name, secret)
    try:
        with running_cluster(root, {"n1": ["--kernel"]}, agent_user=None) as cluster:
            # A node with a simulated board, which its agents use as a board's pins.
            cluster.start("n2", "--no-kernel", env={"ONEOS_GPIO_SIM": str(root / "board")})
            assert (home / KEY).exists()          # made for n1 when it was enrolled
            yield cluster, home
    finally:
        shutil.rmtree(root, ignore_errors=True)


def seen(out: bytes) -> dict[str, str]:
    """The probe's lines by what they are about: uid, workdir, shipped, home, or the path tried."""
    return {line.split(" ", 1)[1].split(":")[0] if line.startswith(("read", "refused")) else line.split(" ", 1)[0]:
            line for line in out.decode().splitlines()}


def refused(line: str, secret: str = "") -> bool:
    return line.startswith("refused") and "Permission denied" in line and (not secret or secret not in line)


def node_folders(home: Path, node: str) -> list[Path]:
    data = home / "runtimes" / node
    return [home, home / "runtimes", data, data / "agents", data / "agents" / "logs"]


def test_an_agent_runs_as_the_agent_user_and_cannot_read_the_nodes_token_or_key(sandboxed, tmp_path):
    cluster, home = sandboxed
    (tmp_path / "probe.sh").write_text(PROBE)
    secrets = {**TOKENS, KEY: (home / KEY).read_text().strip()}
    words = [*(str(home / name) for name in secrets), "--", *map(str, node_folders(home, "n1"))]
    code, out, err = cluster.run(f"sh probe.sh {' '.join(words)} @ n1", cwd=tmp_path)
    assert code == 0, err
    said = seen(out)
    agent = pwd.getpwnam("oneos-agent")
    assert said["uid"] == f"uid {agent.pw_uid}"
    assert said["workdir"] == "workdir 700 oneos-agent"      # its own, closed to others
    assert said["shipped"] == "shipped oneos-agent"          # what was shipped with it is its own
    assert said["home"].startswith(f"home {home}/runtimes/n1/agents/")   # its working directory
    for name, secret in secrets.items():
        assert refused(said[str(home / name)], secret), said[str(home / name)]
    # It can pass through the node's folders to its own, but list nothing in them.
    for folder in node_folders(home, "n1"):
        assert refused(said[str(folder)]), said[str(folder)]


def test_the_node_keeps_its_secrets_and_folders_to_itself(sandboxed):
    cluster, home = sandboxed
    agent = pwd.getpwnam("oneos-agent")
    start = [line for line in cluster.node("n1").log().splitlines() if "agents run as" in line and "(uid" in line]
    assert len(start) == 1, start
    assert f"agents run as oneos-agent (uid {agent.pw_uid}); resources.memory is limited" in start[0]
    data = home / "runtimes" / "n1"
    modes = {path: stat_mode(path) for path in (home, home / "runtimes", data, data / "agents",
                                                           data / "agents" / "logs")}
    assert modes == {home: 0o711, home / "runtimes": 0o711, data: 0o711, data / "agents": 0o711,
                     data / "agents" / "logs": 0o700}
    for name in [*TOKENS, KEY]:
        assert stat_mode(home / name) == 0o600


def test_an_agent_that_allocates_past_its_memory_is_stopped(sandboxed, tmp_path):
    cluster, _ = sandboxed
    manifest = tmp_path / "hog.yaml"
    manifest.write_text(HOG)
    applied = cluster.ctl("apply", "-f", str(manifest))
    assert applied.returncode == 0, applied.stderr
    try:
        done = cluster.wait_for(lambda: (s := cluster.statuses("hog")) and len(s) == 2
                                and all(a["state"] in ("Exited", "Failed") for a in s.values()) and s, 60,
                                "both agents to end")
        assert done["small"]["exitCode"] == 0                         # within its limit: runs
        assert done["big"]["limits"]["memory"] == "16Mi"
        if done["big"]["limits"]["by"] == "rlimit":                   # its allocation is refused: it says so
            logs = cluster.ctl_bytes("logs", "hog/big").decode()
            assert done["big"]["exitCode"] != 0 and "out of memory" in logs, logs
        else:                                                         # the kernel's OOM killer ends it
            assert done["big"]["exitCode"] == 128 + 9
        described = cluster.ctl("describe", "pipeline", "hog").stdout
        assert "  big: memory 16Mi" in described and "  small: memory 16Mi" in described, described
    finally:
        cluster.ctl("delete", "pipeline", "hog")


def test_an_agent_writes_the_simulated_board_the_node_gave_it(sandboxed, tmp_path):
    """The node makes its board's folder and gives it to the agent user: its pins are files there."""
    cluster, home = sandboxed
    board = home.parent / "board"
    manifest = tmp_path / "pins.yaml"
    manifest.write_text(BOARD_WRITER)
    assert cluster.ctl("apply", "-f", str(manifest)).returncode == 0
    try:
        done = cluster.wait_for(lambda: cluster.statuses("pins").get("writer", {}).get("state") in ("Exited", "Failed")
                                and cluster.statuses("pins")["writer"], 60, "the writer to end")
        assert (done["node"], done["exitCode"]) == ("n2", 0), cluster.ctl("logs", "pins/writer").stdout
        assert (board / "D9").read_text() == "1\n"
        assert pwd.getpwuid((board / "D9").stat().st_uid).pw_name == "oneos-agent"
    finally:
        cluster.ctl("delete", "pipeline", "pins")


@pytest.fixture
def dev_as_root():
    """`oneosd --dev` as a user starts it (as root here): agents run as the default agent user."""
    root = Path(tempfile.mkdtemp(prefix="oneos-sandbox-dev-"))
    os.chmod(root, 0o711)
    dev = Dev(root)
    del dev.env["ONEOS_AGENT_USER"]
    try:
        yield dev.start()
    finally:
        dev.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_an_agent_of_oneosd_dev_cannot_read_its_management_token_or_its_data(dev_as_root, tmp_path):
    dev = dev_as_root
    (tmp_path / "probe.sh").write_text(PROBE)
    secrets = [dev.data / "management-token", dev.home / "token"]
    folders = [dev.data, dev.data / "nameserver", *node_folders(dev.home, dev.node_id)]
    done = cli("oneosctl", "run", f"sh probe.sh {' '.join(map(str, [*secrets, '--', *folders]))}", cwd=tmp_path,
               env={"ONEOS_NAMESERVER": dev.url, "ONEOS_HOME": str(dev.home)}, text=False)
    said = seen(done.stdout)
    assert said["uid"] == f"uid {pwd.getpwnam('oneos-agent').pw_uid}"
    token = dev.token()
    for path in [*secrets, *folders]:
        assert refused(said[str(path)], token), said[str(path)]
    assert stat_mode(dev.data) == 0o700 and stat_mode(dev.data / "management-token") == 0o600
