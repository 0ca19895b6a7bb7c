"""`oneosd` as a user starts it: runtime ids, first-run questions, config, and bad input."""

from __future__ import annotations

import os
import pty
import subprocess
import uuid

import pytest
import yaml

from oneos import state
from oneos.nodeagent.hardware import detect_labels
from tests.procs import ANY_EXIT, OneosdProc, cli, free_port, venv_bin, wait_until


def node(cluster, node_id):
    return next((n for n in cluster.get_nodes() if n["id"] == node_id), None)


def with_detected(labels):
    """A node's labels: those its hardware earns (board=..., gpio=true, ...), overridden by its own."""
    return {**detect_labels(), **labels}


def test_without_an_id_a_uuid4_is_generated_saved_and_reused(cluster, tmp_path):
    home = tmp_path / "home"
    first = OneosdProc(None, home, cluster.url).start()
    cluster.nodes.append(first)
    saved = wait_until(lambda: (home / "config.yaml").exists() and
                       yaml.safe_load((home / "config.yaml").read_text()).get("id"), 20, "the id to be saved")
    assert uuid.UUID(saved).version == 4
    cluster.approve(saved)      # a runtime new to the cluster asks to join under the id it made
    cluster.wait_for(lambda: saved in cluster.node_ids(), 20, "the runtime to join under its saved id")
    assert first.terminate() == 0

    again = OneosdProc(None, home, cluster.url).start()
    cluster.nodes.append(again)
    cluster.wait_for(lambda: saved in cluster.node_ids(), 20, "the runtime to join again under the same id")
    assert node(cluster, saved)["pid"] == again.pid


def test_an_id_argument_lets_several_runtimes_share_one_home(cluster, tmp_path):
    home = tmp_path / "shared-home"
    cluster.start("one", home=home)
    cluster.start("two", home=home)
    assert {"one", "two"} <= cluster.node_ids()


def test_first_run_on_a_terminal_asks_and_saves_the_answers(cluster, tmp_path):
    home = tmp_path / "tty-home"
    cluster.register("asker", home, kernel=True)   # kernel: the wish answered on the terminal, approved
    master, slave = pty.openpty()
    proc = subprocess.Popen([venv_bin("oneosd"), "asker"], stdin=slave, stdout=slave, stderr=slave,
                            env=dict(os.environ, ONEOS_HOME=str(home)), start_new_session=True)
    os.close(slave)
    transcript = b""
    try:
        answers = [cluster.url, "y", "256Mi", "room=greenhouse,floor=1"]
        for answer in answers:
            while b"]: " not in transcript.rsplit(b"\n", 1)[-1]:
                chunk = os.read(master, 4096)
                assert chunk, transcript
                transcript += chunk
            os.write(master, answer.encode() + b"\n")
            transcript += b"\n"
        cluster.wait_for(lambda: node(cluster, "asker"), 20, "the runtime configured on the terminal to join")
        joined = node(cluster, "asker")
        assert joined["kernel"] is True
        assert joined["labels"] == with_detected({"room": "greenhouse", "floor": "1"})
        assert joined["capacity"]["memory"] == 256 * 2**20
        saved = yaml.safe_load((home / "config.yaml").read_text())
        assert saved == {"nameserver": cluster.url, "kernel": True, "memory": "256Mi",
                         "labels": {"room": "greenhouse", "floor": "1"}}
        for question in (b"Name Server URL", b"Kernel runtime", b"Memory limit", b"Labels"):
            assert question in transcript
    finally:
        proc.terminate()
        proc.wait(15)
        os.close(master)


def test_without_a_terminal_flags_and_environment_are_used(cluster, tmp_path):
    cluster.start("envy", env={"ONEOS_LABELS": "zone=north", "ONEOS_KERNEL": "true", "ONEOS_MEMORY": "1Gi"})
    cluster.start("flagged", "--label", "zone=south", "--memory", "64Mi",
                  env={"ONEOS_LABELS": "zone=north,extra=1"})
    envy, flagged = node(cluster, "envy"), node(cluster, "flagged")
    assert envy["labels"] == with_detected({"zone": "north"})
    assert (envy["kernel"], envy["capacity"]["memory"]) == (True, 2**30)
    # Flags win over the environment, as a whole setting.
    assert (flagged["labels"], flagged["capacity"]["memory"]) == (with_detected({"zone": "south"}), 64 * 2**20)
    assert not (tmp_path / "home-envy" / "config.yaml").exists()   # nothing asked, nothing generated


def test_a_config_file_is_read(cluster, tmp_path):
    config = tmp_path / "node.yaml"
    config.write_text(f"nameserver: {cluster.url}\nkernel: true\nlabels: {{gpio: 'true'}}\n")
    cluster.start("configured", "--config", str(config), env={"ONEOS_NAMESERVER": ""})
    assert node(cluster, "configured")["labels"] == with_detected({"gpio": "true"})


def run_oneosd(home, *argv, nameserver):
    return cli("oneosd", *argv, env={"ONEOS_HOME": str(home), "ONEOS_NAMESERVER": nameserver}, ok_code=ANY_EXIT)


def test_an_invalid_config_file_is_one_line_naming_file_and_field(cluster, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("kernal: true\n")
    done = run_oneosd(tmp_path, "x", "--config", str(config), nameserver=cluster.url)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(config) in lines[0] and "kernal" in lines[0]


def test_a_missing_boot_record_is_one_clear_line(builtin_nameserver, tmp_path):
    done = run_oneosd(tmp_path, "lonely", nameserver=builtin_nameserver.url)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "no boot record" in last and builtin_nameserver.url in last and "oneosd --dev" in last


def test_a_corrupt_boot_record_is_one_clear_line(builtin_nameserver, tmp_path):
    from oneos.nameserver.client import NameServer
    NameServer(builtin_nameserver.url).put(state.BOOT, b'{"schemaVersion": 1, "cluster": 7}')
    done = run_oneosd(tmp_path, "confused", nameserver=builtin_nameserver.url)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "boot record" in last and "invalid" in last and "oneos/boot" in last


def test_an_unreachable_name_server_is_retried_then_reported(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    done = run_oneosd(tmp_path, "patient", "--wait", "2", nameserver=url)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert any("retrying in" in line for line in lines[:-1])
    assert "gave up after 2s" in lines[-1] and url in lines[-1] and "connection refused" in lines[-1]


@pytest.mark.parametrize("bad", ["not/valid", "..", "../up", "n1\n"])
def test_a_bad_runtime_id_is_refused(tmp_path, bad):
    """The id names the runtime's data folder (~/.oneos/runtimes/ID): nothing that leads elsewhere."""
    done = run_oneosd(tmp_path, bad, nameserver="http://127.0.0.1:1")
    assert done.returncode == 2
    assert f"runtime id {bad!r} is not valid" in done.stderr


def test_a_config_file_holding_a_token_must_be_its_owners_alone(tmp_path):
    config = tmp_path / "node.yaml"
    config.write_text("token: 3f0c5a4e-0000-4000-8000-000000000000\n")
    config.chmod(0o644)
    done = run_oneosd(tmp_path, "n1", "--config", str(config), nameserver="http://127.0.0.1:1")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(config) in lines[0] and f"chmod 600 {config}" in lines[0], done.stderr


def test_the_token_in_the_config_file_is_the_one_sent(tmp_path):
    from tests.nameserver.test_acl import InProcess
    secret = str(uuid.uuid4())
    server = InProcess(tmp_path / "ns", initial_management=secret)
    try:
        for token, says in ((str(uuid.uuid4()), "ACL not found"), (secret, "no boot record")):
            config = tmp_path / "node.yaml"
            config.write_text(f"token: {token}\n")
            config.chmod(0o600)
            done = run_oneosd(tmp_path, "n1", "--config", str(config), nameserver=server.url)
            assert done.returncode == 1 and says in done.stderr.strip().splitlines()[-1], done.stderr
    finally:
        server.stop()


def test_a_token_file_that_others_may_read_is_refused_in_one_line(tmp_path):
    (tmp_path / "token").write_text("3f0c5a4e-0000-4000-8000-000000000000\n")
    (tmp_path / "token").chmod(0o640)
    done = run_oneosd(tmp_path, "n1", nameserver="http://127.0.0.1:1")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"chmod 600 {tmp_path / 'token'}" in lines[0], done.stderr
