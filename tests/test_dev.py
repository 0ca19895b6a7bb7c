"""`oneosd --dev`: the whole system on one machine, started and stopped as a user would."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid

import pulsar
import pytest
import requests

from oneos import enrollment, state
from oneos.nameserver.client import NameServer
from oneos.secretfiles import read_secret
from tests.cluster import TEST_USER, Changes
from tests.procs import ANY_EXIT, cli, descendants, free_port, process_alive, run_cli, venv_bin, wait_until


class Dev:
    """`oneosd --dev` on a free port with its own ONEOS_HOME; stopped (and its children killed) at the end."""

    def __init__(self, tmp_path, node_id="devnode"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.home = tmp_path / "home"
        self.data = tmp_path / "data"
        # Its agents run Python (this one, perhaps where other users cannot reach it): as the test's user.
        self.env = dict(os.environ, ONEOS_HOME=str(self.home), ONEOS_NAMESERVER=self.url, ONEOS_AGENT_USER=TEST_USER)
        self.node_id = node_id
        self.proc = None
        self.ready = ""
        self.children: set[int] = set()

    def start(self):
        self.proc = subprocess.Popen([venv_bin("oneosd"), "--dev", "--listen", f"127.0.0.1:{self.port}",
                                      "--data-dir", str(self.data), self.node_id],
                                     env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.ready = self.proc.stdout.readline()
        assert "ready" in self.ready, self.proc.stderr.read() if self.proc.poll() is not None else self.ready
        self.children = set(descendants(self.proc.pid))
        return self

    def token(self):
        """The management token --dev wrote for this ONEOS_HOME (what oneosctl here finds by itself)."""
        return read_secret(self.home / "token", "the dev token")

    def ctl(self, *argv):
        return run_cli(["oneosctl", *argv], env={"ONEOS_NAMESERVER": self.url, "ONEOS_HOME": str(self.home)})

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for pid in self.children:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def dev(tmp_path):
    d = Dev(tmp_path)
    yield d
    d.stop()


def test_dev_starts_everything_and_prints_one_ready_line(dev):
    dev.start()
    pulsar_url = re.search(r"Pulsar (pulsar://127\.0\.0\.1:(\d+))", dev.ready)
    metrics = re.search(r"metrics (http://127\.0\.0\.1:\d+/metrics)", dev.ready)
    assert dev.url in dev.ready and pulsar_url and metrics and "devnode" in dev.ready
    assert int(pulsar_url.group(2)) != 6650

    ns = NameServer(dev.url, token=dev.token())
    wait_until(lambda: (state.read_leader(ns) or {}).get("node") == "devnode", 20, "the dev node to lead",
               wake=Changes(ns))
    nodes = json.loads(dev.ctl("get", "nodes", "-o", "json").stdout)["items"]
    assert [(n["id"], n["kernel"], n["leader"]) for n in nodes] == [("devnode", True, True)]
    boot = json.loads(dev.ctl("get", "boot", "-o", "json").stdout)
    assert boot["pulsar"]["url"] == pulsar_url.group(1) and boot["kernelNodes"] == ["devnode"]

    # The broker is real: a message goes through it with the official client.
    client = pulsar.Client(boot["pulsar"]["url"], operation_timeout_seconds=10)
    try:
        topic = f"persistent://public/default/dev-{uuid.uuid4().hex[:8]}"
        consumer = client.subscribe(topic, "check")
        client.create_producer(topic).send(b"hello from the test")
        assert consumer.receive(timeout_millis=10000).data() == b"hello from the test"
    finally:
        client.close()
    # Its metrics moved to the loopback port the ready line names, off the default 0.0.0.0:8080.
    assert "pulsar" in requests.get(metrics.group(1), timeout=5).text
    assert 'addr = "127.0.0.1:' in (dev.data / "pulsar" / "pulsar-lite.toml").read_text()


def test_dev_node_comes_up_enrolled_with_a_token_of_its_own(dev):
    dev.start()
    ns = NameServer(dev.url, token=dev.token())
    key = state.read_key(ns, "devnode")
    assert key["kernel"] and key["approvedBy"].startswith("join token ") and key["tokenAccessor"]
    # Its own token, sealed to it at approval, saved 0600 beside its key: not the management token.
    own = dev.home / "runtimes" / "devnode" / "token"
    assert own.stat().st_mode & 0o777 == 0o600 and read_secret(own, "own") != dev.token()
    # The join token it came in with is used up; the one left for other local nodes is 0600.
    tokens = enrollment.read_join_tokens(ns).values()
    assert [t["description"] for _, t in tokens] == ["oneosd --dev: other local nodes"]
    assert (dev.home / "join-token").stat().st_mode & 0o777 == 0o600
    assert "join token for more local nodes in" in dev.ready
    # Started again, it is enrolled already: no new token for it.
    dev.stop()
    dev.start()
    assert state.read_key(ns, "devnode")["tokenAccessor"] == key["tokenAccessor"]
    assert len(enrollment.read_join_tokens(ns)) == 1
    # With a new key (its home made again, its data kept), --dev, its operator, enrolls it again.
    dev.stop()
    shutil.rmtree(dev.home / "runtimes" / "devnode")
    dev.start()
    again = state.read_key(ns, "devnode")
    assert again["fingerprint"] != key["fingerprint"] and again["tokenAccessor"] != key["tokenAccessor"]


def test_dev_runs_with_acls_and_oneosctl_here_needs_no_token_flag(dev):
    dev.start()
    assert "ACLs on" in dev.ready
    token_file = dev.home / "token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    # oneosctl on this machine finds the token by itself.
    done = dev.ctl("run", "seq 3 | tr 1 x")
    assert (done.returncode, done.stdout) == (0, "x\n2\n3\n"), done.stderr
    # Without a token, the Name Server refuses, as Consul does with ACLs on (deny by default).
    refused = requests.put(f"{dev.url}/v1/kv/oneos/boot", data=b"{}", timeout=5)
    assert refused.status_code == 403 and refused.text.startswith("Permission denied: anonymous token")
    # Anyone may read the boot record (a runtime that is not enrolled reads it to ask to join), nothing else.
    assert requests.get(f"{dev.url}/v1/kv/oneos/boot", timeout=5).status_code == 200
    assert requests.get(f"{dev.url}/v1/kv/oneos/init", timeout=5).status_code == 403
    # oneosctl with another home (so no token) gets one line saying what to do.
    other = run_cli(["oneosctl", "get", "nodes"], env={"ONEOS_NAMESERVER": dev.url,
                                                       "ONEOS_HOME": str(dev.home.parent / "elsewhere")})
    assert other.returncode == 1
    assert other.stderr.count("\n") == 1 and "permission denied" in other.stderr and "ONEOS_TOKEN" in other.stderr


def test_sigterm_stops_every_child_and_the_node_leaves(dev):
    dev.start()
    assert len(dev.children) >= 2      # the Name Server and pulsar-lite
    dev.proc.send_signal(signal.SIGTERM)
    assert dev.proc.wait(30) == 0
    assert "stopped" in dev.proc.stderr.read()
    assert [pid for pid in dev.children if process_alive(pid)] == []


STREAMING = """\
apiVersion: oneos/v1
kind: Pipeline
metadata: {name: streaming}
spec:
  agents:
    - name: src
      run: [python3, -u, -c, "import itertools, time; [print(i) or time.sleep(0.005) for i in itertools.count()]"]
    - name: mid
      run: [cat]
    - name: dst
      run: [cat]
  links:
    - {from: src, to: mid}
    - {from: mid, to: dst}
"""


def test_ctrl_c_with_a_pipeline_streaming_stops_everything_quietly(dev, tmp_path):
    """Ctrl-C while a pipeline streams: the agents stop while the broker still takes their last
    bytes, then the broker and the Name Server; exit 0, and not one line of error on stderr."""
    dev.start()
    (tmp_path / "streaming.yaml").write_text(STREAMING)
    assert dev.ctl("apply", str(tmp_path / "streaming.yaml")).returncode == 0
    ns = NameServer(dev.url, token=dev.token())

    def running():
        return sorted(s["agent"] for s in state.read_statuses(ns, "streaming").values() if s["state"] == "Running")

    wait_until(lambda: running() == ["dst", "mid", "src"], 60, "the pipeline to run", wake=Changes(ns))
    # Bytes flow through all three stages to the pipeline's output.
    wait_until(lambda: dev.ctl("logs", "streaming").stdout.startswith("0\n1\n2\n"), 30, "the pipeline's output")
    everything = descendants(dev.proc.pid)
    dev.children |= set(everything)
    sent = time.monotonic()
    dev.proc.send_signal(signal.SIGINT)
    assert dev.proc.wait(30) == 0
    took = time.monotonic() - sent
    stderr = dev.proc.stderr.read()
    prefix = f"oneosd --dev {dev.node_id}: "
    # Every line is one of oneosd's (no Pulsar client lines, no traceback), and none tells of a problem.
    strays = [line for line in stderr.splitlines() if not line.startswith(prefix)
              or re.search(r"error|warn|traceback|exception|fail|refused|cannot|timed? ?out", line, re.I)]
    assert strays == [], stderr
    assert stderr.splitlines()[-1] == f"{prefix}stopped; nothing left running"
    assert [pid for pid in everything if process_alive(pid)] == []
    print(f"oneosd --dev stopped {took:.2f}s after Ctrl-C")   # shown with -s; the issue asks for under 3 s


def test_kill9_of_dev_leaves_no_child_behind(dev):
    dev.start()
    os.kill(dev.proc.pid, signal.SIGKILL)
    dev.proc.wait(10)
    wait_until(lambda: not any(process_alive(pid) for pid in dev.children), 15,
               "the children to die with their parent")


def test_a_second_start_reuses_the_cluster_and_keeps_the_boot_record(dev, tmp_path):
    dev.start()
    first_boot = json.loads(dev.ctl("get", "boot", "-o", "json").stdout)
    dev.proc.send_signal(signal.SIGTERM)
    assert dev.proc.wait(30) == 0

    again = Dev(tmp_path)
    again.port, again.url = dev.port, dev.url
    again.env["ONEOS_NAMESERVER"] = dev.url
    try:
        again.start()
        second_boot = json.loads(again.ctl("get", "boot", "-o", "json").stdout)
        # Written once, by CAS: the second run did not rewrite it.
        assert second_boot["createdAt"] == first_boot["createdAt"]
        assert second_boot["pulsar"]["url"] == first_boot["pulsar"]["url"]
    finally:
        again.stop()


def test_dev_refuses_a_busy_port_with_one_line(tmp_path):
    busy = Dev(tmp_path / "a").start()
    try:
        done = cli("oneosd", "--dev", "--listen", f"127.0.0.1:{busy.port}", "--data-dir", str(tmp_path / "b"), "other",
                   env={"ONEOS_HOME": str(tmp_path / "home-b")}, ok_code=ANY_EXIT)
        assert done.returncode != 0
        assert "ready" not in done.stdout
        last = done.stderr.strip().splitlines()[-1]
        assert f"127.0.0.1:{busy.port}" in last and "in use" in last
    finally:
        busy.stop()


def test_the_broker_is_a_kernel_agent_kept_running_like_a_unit(dev):
    dev.start()

    ns = NameServer(dev.url, token=dev.token())

    def broker():
        return state.read_statuses(ns, "oneos-init").get(state.agent_id("oneos-init", "pulsar"), {})

    first = broker()
    assert (first["state"], first["node"], first["epoch"]) == ("Running", "devnode", 1)
    os.kill(first["pid"], signal.SIGKILL)   # the broker crashes: its restart policy (always) starts it again
    again = wait_until(lambda: (b := broker()).get("state") == "Running" and b.get("restarts") == 1 and b, 30,
                       "the broker to run again", wake=Changes(ns))
    assert again["pid"] != first["pid"]
    boot = json.loads(dev.ctl("get", "boot", "-o", "json").stdout)
    done = cli("oneosctl", "run", "seq 3 | wc -l", env=dict(dev.env, ONEOS_NAMESERVER=dev.url), ok_code=ANY_EXIT,
               text=False)
    assert (done.returncode, done.stdout) == (0, b"3\n"), (done.stderr, boot)
