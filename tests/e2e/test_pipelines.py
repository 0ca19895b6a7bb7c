"""Pipelines on a three-node cluster, driven as a user drives them: oneosctl run, apply, get, describe, delete, logs."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import textwrap
import time

from oneos import manifests, state
from tests.procs import ANY_EXIT, cli, venv_bin, wait_until


def placement(stderr: str) -> dict[str, str]:
    """stage -> node, from the line `oneosctl run -v` prints once every stage is placed."""
    line = next(line for line in stderr.splitlines() if " on n" in line)
    return dict(re.findall(r"([a-z0-9-]+) on ([a-z0-9]+)", line.split(": ", 2)[2]))


def test_run_prints_what_bash_prints_with_each_stage_on_its_own_node(three_nodes):
    line = "seq 1 100000 | grep 7 | wc -l"
    done = cli("oneosctl", "run", "-v", line, env={"ONEOS_NAMESERVER": three_nodes.url}, ok_code=ANY_EXIT,
               timeout=120, text=False)
    expected = subprocess.run(["bash", "-c", line], capture_output=True)
    assert (done.returncode, done.stdout) == (expected.returncode, expected.stdout) == (0, b"40951\n")
    where = placement(done.stderr.decode())
    assert set(where) == {"seq", "grep", "wc"} and len(set(where.values())) == 3
    # The run is deleted afterwards: nothing left behind.
    assert three_nodes.ctl("get", "pipelines").stdout == ""
    three_nodes.wait_for(lambda: not three_nodes.statuses_all(), 20, "every agent of the run to be gone")


def test_an_early_exit_stops_the_writers_as_sigpipe_does(three_nodes):
    code, out, err = three_nodes.run("yes | head -n 3", timeout=60)
    assert (code, out) == (0, b"y\ny\ny\n"), err


def test_the_exit_status_is_the_last_stages_and_stderr_comes_through(three_nodes):
    code, out, err = three_nodes.run("seq 3 | nosuchprogram-xyz | cat", timeout=60)
    assert (code, out) == (0, b"")
    assert "nosuchprogram-xyz: command not found" in err
    code, out, err = three_nodes.run("seq 3 | nosuchprogram-xyz", timeout=60)
    assert code == 127


def test_stdin_and_file_redirections_are_the_clients(three_nodes, tmp_path):
    (tmp_path / "words.txt").write_text("pear\napple\npear\n")
    code, out, err = three_nodes.run("sort < words.txt | uniq -c > counts.txt", cwd=tmp_path)
    assert (code, out) == (0, b""), err
    assert (tmp_path / "counts.txt").read_text() == "      1 apple\n      2 pear\n"
    code, out, err = three_nodes.run("tr a-z A-Z", input=b"typed at the terminal\n")
    assert (code, out) == (0, b"TYPED AT THE TERMINAL\n")


GREETER = """\
apiVersion: oneos/v1
kind: Pipeline
metadata: {name: greeter}
spec:
  agents:
    - name: ticker
      run: [python3, -u, -c, "import sys, time\\nfor i in range(100000):\\n  print(i); print('tick', i, file=sys.stderr); time.sleep(0.1)"]
    - name: upper
      run: [tr, "0-9", "a-j"]
  links:
    - {from: ticker, to: upper}
"""


def test_apply_keeps_a_pipeline_running_and_delete_stops_it(three_nodes, tmp_path):
    manifest = tmp_path / "greeter.yaml"
    manifest.write_text(GREETER)
    assert three_nodes.ctl("apply", "-f", str(manifest)).stdout == "pipeline/greeter created\n"
    assert three_nodes.ctl("apply", "-f", str(manifest)).stdout == "pipeline/greeter unchanged\n"
    three_nodes.wait_for(lambda: all(s["state"] == "Running" for s in three_nodes.statuses("greeter").values())
                         and len(three_nodes.statuses("greeter")) == 2, 30, "both agents running")
    statuses = three_nodes.statuses("greeter")
    assert statuses["ticker"]["node"] != statuses["upper"]["node"]

    table = three_nodes.ctl("get", "pipelines").stdout.splitlines()
    assert table[0].split() == ["NAME", "RUNNING", "STATUS", "AGE"]
    assert table[1].split()[:3] == ["greeter", "2/2", "Running"]
    described = three_nodes.ctl("describe", "pipeline", "greeter").stdout
    assert "ticker -> upper" in described and statuses["ticker"]["node"] in described

    wait_until(lambda: b"tick 3" in three_nodes.ctl_bytes("logs", "greeter/ticker"), 30, "the ticker's log")
    pid = statuses["ticker"]["pid"]
    assert three_nodes.ctl("delete", "pipeline", "greeter").stdout == "pipeline/greeter deleted\n"
    three_nodes.wait_for(lambda: not three_nodes.statuses("greeter"), 30, "the agents to be removed")
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 10, "the ticker process to end")
    assert three_nodes.ctl("delete", "pipeline", "greeter").returncode == 1


def test_an_unplaceable_agent_is_pending_with_the_reason(three_nodes, tmp_path):
    manifest = tmp_path / "picky.yaml"
    manifest.write_text(textwrap.dedent("""\
        apiVersion: oneos/v1
        kind: Pipeline
        metadata: {name: picky}
        spec:
          agents:
            - name: sensor
              run: [sleep, "1000"]
              requires: {labels: {gpio: "true"}}
    """))
    assert three_nodes.ctl("apply", "-f", str(manifest)).returncode == 0
    try:
        three_nodes.wait_for(lambda: three_nodes.statuses("picky").get("sensor", {}).get("state") == "Pending", 30,
                             "Pending")
        assert three_nodes.statuses("picky")["sensor"]["reason"] == "no node has label gpio=true"
        # What the tests read in-process is what `oneosctl get agents -o json` prints.
        listed = json.loads(three_nodes.ctl("get", "agents", "picky", "-o", "json").stdout)["items"]
        assert listed == list(three_nodes.statuses("picky").values())
        described = three_nodes.ctl("describe", "pipeline", "picky").stdout
        assert "sensor: Pending: no node has label gpio=true" in described
    finally:
        three_nodes.ctl("delete", "pipeline", "picky")
    three_nodes.wait_for(lambda: not three_nodes.statuses("picky"), 20, "the pending status to go with the pipeline")


def test_ctrl_c_deletes_the_run(three_nodes):
    # PYTHONFAULTHANDLER: should it ever not stop, SIGABRT makes it print where each thread was.
    proc = subprocess.Popen([venv_bin("oneosctl"), "run", "sleep 300 | cat"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, ONEOS_NAMESERVER=three_nodes.url, PYTHONFAULTHANDLER="1"))
    try:
        # Its own sleep stage: not that of a run an earlier test deleted, whose status may linger a moment.
        live = lambda: {d["metadata"]["name"] for d in manifests.list_pipelines(three_nodes.ns)[0]}
        three_nodes.wait_for(lambda: any(s["state"] == "Running" and s["agent"] == "sleep" and s["pipeline"] in live()
                                         for s in three_nodes.statuses_all()), 30, "the run to start")
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(30) == 130
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            _, err = proc.communicate(timeout=30)
            raise AssertionError(f"oneosctl run did not stop within 30s of SIGINT; where it was:\n{err.decode()}")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    three_nodes.wait_for(lambda: not three_nodes.statuses_all(), 30, "the run's agents to be removed")


def test_a_progress_line_on_a_terminal_only(three_nodes):
    """On a terminal, stderr shows placement and start-up, rewritten in place; in a pipe, nothing."""
    env = dict(os.environ, ONEOS_NAMESERVER=three_nodes.url)
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([venv_bin("oneosctl"), "run", "sleep 1 | echo done"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=slave, env=env)
        os.close(slave)
        slave = -1
        # The terminal is read while it is written: what is left in a pty when its last writer
        # closes may be dropped by the kernel, so reading only afterwards can find nothing.
        shown = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 0.2)[0]:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not data:
                break
            shown += data
        out, _ = proc.communicate(timeout=60)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert (done.returncode, done.stdout) == (0, b"done\n")
    assert b"placing and starting stages" in shown and b"\r\x1b[K" in shown, shown
    piped = cli("oneosctl", "run", "sleep 1 | echo done", env=env, ok_code=ANY_EXIT, text=False)
    assert (piped.returncode, piped.stdout, piped.stderr) == (0, b"done\n", b"")


def test_reapplying_a_changed_manifest_updates_it_and_dry_run_changes_nothing(three_nodes, tmp_path):
    manifest = tmp_path / "greeter.yaml"
    manifest.write_text(GREETER.replace("greeter", "greeter2"))
    assert three_nodes.ctl("apply", "-f", str(manifest)).stdout == "pipeline/greeter2 created\n"
    try:
        running = lambda: {a: s for a, s in three_nodes.statuses("greeter2").items()  # noqa: E731
                           if s["state"] == "Running"}
        three_nodes.wait_for(lambda: len(running()) == 2, 30, "both agents running")
        before = running()
        changed = GREETER.replace("greeter", "greeter2")
        manifest.write_text(changed.replace('[tr, "0-9", "a-j"]', '[sed, -u, "y/0123456789/abcdefghij/"]'))
        dry = three_nodes.ctl("apply", "--dry-run", "-f", str(manifest))
        assert dry.stdout.splitlines()[0] == "pipeline/greeter2 configured (dry run)"
        assert "  restart upper (Running on " in dry.stdout and "  keep ticker (Running on " in dry.stdout
        stored = json.loads(three_nodes.ctl("get", "pipeline", "greeter2", "-o", "json").stdout)
        assert stored["metadata"]["generation"] == 1, stored
        assert three_nodes.ctl("apply", "-f", str(manifest)).stdout == "pipeline/greeter2 configured\n"
        three_nodes.wait_for(lambda: running().get("upper", {}).get("generation") == 2, 30,
                             "the changed agent to restart")
        after = running()
        assert after["upper"]["pid"] != before["upper"]["pid"]
        # The agent whose spec did not change kept running, untouched.
        assert after["ticker"]["pid"] == before["ticker"]["pid"]
        # The new upper reads its input again from the start; unbuffered, its output (the
        # pipeline's, since nothing reads it) shows at once, and not in its log (its stderr).
        wait_until(lambda: three_nodes.ctl_bytes("logs", "greeter2").startswith(b"a\nb\nc\nd\n"), 30,
                   "upper's new output")
        assert three_nodes.ctl_bytes("logs", "greeter2/upper") == b""
    finally:
        three_nodes.ctl("delete", "pipeline", "greeter2")


SLEEPER = """\
apiVersion: oneos/v1
kind: Pipeline
metadata: {{name: {name}}}
spec:
  agents:
    - {{name: a, run: [sleep, "1000"]}}
"""


def test_a_bad_stored_pipeline_is_marked_invalid_and_every_other_one_runs(three_nodes, tmp_path):
    c = three_nodes
    names = ("aaa-by-hand", "aab-garbage", "zzz-good")
    files = {}
    for name in names:
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text(SLEEPER.format(name=name))
    marks = lambda: set(c.ns.keys(state.INVALID)[1])   # noqa: E731
    running = lambda name: (c.statuses(name).get("a") or {}).get("state") == "Running"   # noqa: E731
    # Written by hand: one without what OneOS sets on apply (uid, generation, createdAt), first in a
    # pass's order; one that is not JSON at all.
    by_hand = {"apiVersion": "oneos/v1", "kind": "Pipeline", "metadata": {"name": "aaa-by-hand"},
               "spec": {"agents": [{"name": "a", "run": ["sleep", "1000"]}]}}
    c.ns.put(state.pipeline_key("aaa-by-hand"), json.dumps(by_hand))
    c.ns.put(state.pipeline_key("aab-garbage"), b"agents: [not json")
    try:
        assert c.ctl("apply", "-f", str(files["zzz-good"])).returncode == 0
        c.wait_for(lambda: running("zzz-good"), 30, "the good pipeline to run")
        c.wait_for(lambda: marks() == {"oneos/invalid/aaa-by-hand", "oneos/invalid/aab-garbage"}, 10,
                   "both bad pipelines marked Invalid")
        # A status overwritten by hand: the agent's node writes it again, the agent untouched.
        good = c.statuses("zzz-good")["a"]
        c.ns.put(state.status_key("zzz-good.a"), b"garbage")
        c.wait_for(lambda: c.statuses("zzz-good").get("a") == good, 10, "the node to write the status again")

        listed = c.ctl("get", "pipelines")
        assert listed.returncode == 0 and "zzz-good" in listed.stdout and "aaa-by-hand" not in listed.stdout
        assert [line.split(" cannot be read: ")[0] for line in listed.stderr.splitlines()] == [
            "oneosctl: pipeline aaa-by-hand", "oneosctl: pipeline aab-garbage"]
        described = c.ctl("describe", "pipeline", "aaa-by-hand")
        assert described.returncode == 0 and described.stdout.splitlines()[:3] == [
            "Name:         aaa-by-hand", "Status:       Invalid",
            "Reason:       oneos/manifests/Pipeline/aaa-by-hand: metadata.uid, metadata.generation, "
            "metadata.createdAt missing: OneOS sets them when a pipeline is applied (was it written by hand, or "
            "by an older version?); nothing of it runs"]
        assert "`oneosctl delete pipeline aaa-by-hand`" in described.stdout
        # describe with no name (as kubectl's) describes each pipeline there, the bad ones as Invalid.
        every = c.ctl("describe", "pipelines")
        assert every.returncode == 0 and [line for line in every.stdout.splitlines() if line.startswith(
            ("Name:", "Status:"))] == ["Name:         aaa-by-hand", "Status:       Invalid",
                                       "Name:         aab-garbage", "Status:       Invalid",
                                       "Name:         zzz-good", "Status:       Running"]
        some = c.ctl("describe", "pipeline", "zzz-good", "no-such")
        assert some.returncode == 1 and some.stdout.startswith("Name:         zzz-good\n")
        assert some.stderr == "oneosctl: pipeline 'no-such' not found; `oneosctl get pipelines` lists them\n"

        # Applied over, the bad manifest is replaced: the pipeline runs and its mark goes.
        applied = c.ctl("apply", "-f", str(files["aaa-by-hand"]))
        assert applied.stdout == "pipeline/aaa-by-hand configured\n"
        assert "replaced its stored manifest, which could not be used" in applied.stderr
        c.wait_for(lambda: running("aaa-by-hand") and "oneos/invalid/aaa-by-hand" not in marks(), 30,
                   "the replaced pipeline to run, unmarked")
        pid = c.statuses("aaa-by-hand")["a"]["pid"]

        # Broken by hand while it runs: marked, its agent left running; deleted, the agent stops.
        c.ns.put(state.pipeline_key("aaa-by-hand"), b"{}")
        c.wait_for(lambda: "oneos/invalid/aaa-by-hand" in marks(), 10, "the broken pipeline marked Invalid")
        assert "its placed agent is left as it is" in c.ctl("describe", "pipeline", "aaa-by-hand").stdout
        assert c.statuses("aaa-by-hand")["a"]["pid"] == pid and os.path.exists(f"/proc/{pid}")
        assert c.ctl("delete", "pipeline", "aaa-by-hand", "aab-garbage").returncode == 0
        c.wait_for(lambda: not c.statuses("aaa-by-hand") and not marks(), 20, "its agent and the marks gone")
        wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 10, "its process to end")
    finally:
        c.ctl("delete", "pipeline", *names)
    c.wait_for(lambda: not any(c.statuses(name) for name in names), 20, "every agent of the test gone")
