"""`oneosctl apply --dry-run`, `apply -v`, `get agents` and `describe` against a Name Server, without nodes.

The agents' statuses are written here as a node would write them, so that what the commands
print can be checked line by line; tests/e2e/test_updates.py and test_restarts.py run them for real.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from oneos import manifests, state
from oneos.documents import DocumentError, load_file
from tests.procs import run_cli

MANIFEST = """\
apiVersion: oneos/v1
kind: Pipeline
metadata: {{name: {name}}}
spec:
  agents:
    - name: ticker
      run: [seq, "100"]
    - name: upper
      run: [{upper}]
  links:
    - {{from: ticker, to: upper}}
"""


def ago(seconds: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def name(ns):
    name = f"upd-{uuid.uuid4().hex[:8]}"
    yield name
    ns.delete(state.pipeline_key(name))
    ns.delete(f"{state.STATUS}{name}.", recurse=True)


@pytest.fixture
def ctl(nameserver_url):
    return lambda *argv: run_cli(["oneosctl", *argv], env={"ONEOS_NAMESERVER": nameserver_url})


def write(tmp_path, name, upper):
    path = tmp_path / f"{name}.yaml"
    path.write_text(MANIFEST.format(name=name, upper=upper))
    return str(path)


def put_status(ns, pipeline, agent, **fields):
    doc = {"pipeline": pipeline, "agent": agent, "updatedAt": ago(0), **fields}
    assert state.put_document(ns, state.status_key(state.agent_id(pipeline, agent)), "status", doc)


def test_dry_run_of_a_new_pipeline_lists_it_and_creates_nothing(ctl, name, tmp_path):
    path = write(tmp_path, name, "cat")
    done = ctl("apply", "--dry-run", "-f", path)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [f"pipeline/{name} created (dry run)", "  + agent ticker", "  + agent upper",
                                        "  + link ticker -> upper", "  start ticker", "  start upper"]
    assert ctl("get", "pipeline", name).returncode == 1


def test_dry_run_says_what_changes_and_what_restarts_and_changes_nothing(ctl, ns, name, tmp_path):
    assert ctl("apply", "-f", write(tmp_path, name, "cat")).stdout == f"pipeline/{name} created\n"
    put_status(ns, name, "ticker", state="Running", node="n1", pid=100)
    put_status(ns, name, "upper", state="Running", node="n2", pid=101)
    path = write(tmp_path, name, "tr, a-z, A-Z")
    expected = ["  ~ agent upper: run [cat] -> [tr, a-z, A-Z]",
                "  restart upper (Running on n2): run changed",
                "  keep ticker (Running on n1)"]

    dry = ctl("apply", "--dry-run", "-f", path)
    assert dry.stdout.splitlines() == [f"pipeline/{name} configured (dry run)"] + expected
    stored = json.loads(ctl("get", "pipeline", name, "-o", "json").stdout)
    assert (stored["metadata"]["generation"], stored["spec"]["agents"][1]["run"]) == (1, ["cat"])

    assert ctl("apply", "-f", path).stdout == f"pipeline/{name} configured\n"
    assert ctl("apply", "-v", "-f", path).stdout == f"pipeline/{name} unchanged\n"
    assert ctl("apply", "--dry-run", "-f", path).stdout == f"pipeline/{name} unchanged (dry run)\n"
    verbose = ctl("apply", "-v", "-f", write(tmp_path, name, "cat"))
    assert verbose.stdout.splitlines() == [
        f"pipeline/{name} configured", "  ~ agent upper: run [tr, a-z, A-Z] -> [cat]",
        "  restart upper (Running on n2): run changed", "  keep ticker (Running on n1)"]


def test_get_agents_and_describe_show_restarts_and_the_last_exit(ctl, ns, name, tmp_path):
    assert ctl("apply", "-f", write(tmp_path, name, "cat")).returncode == 0
    put_status(ns, name, "ticker", state="Failed", node="n1", restarts=4, exitCode=1, startedAt=ago(3),
               finishedAt=ago(2), reason="start limit hit: 5 starts within 10s (startLimitBurst=5)")
    put_status(ns, name, "upper", state="Running", node="n2", pid=7, restarts=2, exitCode=143,
               startedAt=ago(30))

    table = ctl("get", "agents", name).stdout.splitlines()
    assert re.split(r"\s{2,}", table[0]) == ["NAME", "NODE", "STATE", "RESTARTS", "LAST EXIT", "AGE"]
    rows = {re.split(r"\s{2,}", row)[0]: re.split(r"\s{2,}", row)[1:5] for row in table[1:]}
    assert rows[f"{name}/ticker"][:2] == ["n1", "Failed(1)"]
    assert re.fullmatch(r"4 \(\d+s ago\)", rows[f"{name}/ticker"][2])
    assert re.fullmatch(r"1 \(\d+s ago\)", rows[f"{name}/ticker"][3])
    assert rows[f"{name}/upper"][1] == "Running"
    assert re.fullmatch(r"2 \(\d+s ago\)", rows[f"{name}/upper"][2])
    assert rows[f"{name}/upper"][3] == "143 SIGTERM"

    described = ctl("describe", "pipeline", name).stdout
    assert re.search(r"NAME\s+NODE\s+STATE\s+RESTARTS\s+LAST EXIT\s+COMMAND", described)
    assert re.search(r"ticker\s+n1\s+Failed\(1\)\s+4 \(\d+s ago\)\s+1 \(\d+s ago\)\s+seq 100", described)
    assert (f"ticker: Failed: start limit hit: 5 starts within 10s (startLimitBurst=5); "
            f"see `oneosctl logs {name}/ticker`") in described


def test_get_names_each_status_and_device_it_cannot_read_and_lists_the_rest(ctl, ns, name, tmp_path):
    manifests.apply_pipeline(ns, load_file(write(tmp_path, name, "cat"))[0], tmp_path)   # as `apply` does
    put_status(ns, name, "ticker", state="Running", node="n1")
    ns.put(state.status_key(state.agent_id(name, "upper")), b"{not json")
    device = f"gpio/{name}"
    ns.put(state.device_key(device), b'{"device": "gpio/x"}')
    try:
        listed = ctl("get", "agents", name)
        assert listed.returncode == 0 and listed.stdout.splitlines()[1].split()[:3] == [f"{name}/ticker", "n1",
                                                                                      "Running"]
        assert listed.stderr == (f"oneosctl: the status of agent {name}/upper cannot be read: oneos/status/{name}."
                                 "upper: not valid JSON (Expecting property name enclosed in double quotes: line 1 "
                                 "column 2 (char 1)); its node rewrites it when the agent's state changes\n")
        named = ctl("get", "agents", f"{name}/upper")
        assert (named.returncode, named.stdout, named.stderr) == (1, "", listed.stderr)
        assert f"upper: its status cannot be read: oneos/status/{name}.upper" in ctl("describe", "pipeline",
                                                                                     name).stdout

        devices = ctl("get", "devices", device)
        assert devices.returncode == 1 and devices.stderr.startswith(
            f"oneosctl: the registration of device {device} cannot be read: oneos/devices/{device}: ")
        assert ctl("delete", "device", device).stdout == f"device/{device} deleted\n"
        assert ns.get(state.device_key(device))[1] is None
    finally:
        ns.delete(state.device_key(device))


def test_a_shipped_file_that_is_a_link_out_of_the_manifests_folder_is_not_shipped(ctl, ns, name, tmp_path):
    """A folder someone handed over, with `files: [config.py]` a link to ~/.ssh/id_rsa: applying it
    would copy that key into the cluster. Only what is inside the manifest's folder is shipped."""
    folder = tmp_path / "handed-over"
    folder.mkdir()
    secret = tmp_path / "id_rsa"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (folder / "config.py").symlink_to(secret)
    manifest = folder / "p.yaml"
    manifest.write_text(f"apiVersion: oneos/v1\nkind: Pipeline\nmetadata: {{name: {name}}}\n"
                        "spec: {agents: [{name: a, run: [python3, config.py], files: [config.py]}]}\n")
    done = ctl("apply", "-f", str(manifest))
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1, done.stderr
    assert "shipped file 'config.py' leads out of" in done.stderr and "symbolic link" in done.stderr
    assert ns.get(state.pipeline_key(name))[1] is None
    assert not any(entry.value and b"PRIVATE KEY" in entry.value for entry in ns.get_tree(state.BLOBS)[1])
    checked = ctl("validate", str(manifest))
    assert checked.returncode != 0 and "leads out of" in checked.stderr + checked.stdout
    with pytest.raises(DocumentError, match="shipped file 'config.py' leads out of .* ship only files inside"):
        manifests.apply_pipeline(ns, load_file(str(manifest))[0], folder)   # as `oneosctl run` does, unvalidated

    # A link that stays inside the folder is shipped as before.
    (folder / "config.py").unlink()
    (folder / "real.py").write_text("print('hi')\n")
    (folder / "config.py").symlink_to(folder / "real.py")
    assert ctl("apply", "-f", str(manifest)).returncode == 0
