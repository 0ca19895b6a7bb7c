"""Restart policies on three nodes, as a user sees them in `oneosctl get agents` and `describe`."""

from __future__ import annotations

import os
import re
import subprocess
import textwrap

from tests.procs import venv_bin


def apply(cluster, tmp_path, name: str, agent: str) -> None:
    manifest = tmp_path / f"{name}.yaml"
    manifest.write_text(textwrap.dedent(f"""\
        apiVersion: oneos/v1
        kind: Pipeline
        metadata: {{name: {name}}}
        spec:
          agents:
        """) + textwrap.indent(textwrap.dedent(agent), "    "))
    done = cluster.ctl("apply", "-f", str(manifest))
    assert done.stdout == f"pipeline/{name} created\n", done.stderr


def row(cluster, agent_id: str) -> list[str]:
    """The cells of one agent's row in `oneosctl get agents` (columns are two or more spaces apart)."""
    table = cluster.ctl("get", "agents", agent_id).stdout.splitlines()
    assert re.split(r"\s{2,}", table[0]) == ["NAME", "NODE", "STATE", "RESTARTS", "LAST EXIT", "AGE"]
    return re.split(r"\s{2,}", table[1])


def delete(cluster, name: str) -> None:
    cluster.ctl("delete", "pipeline", name)
    cluster.wait_for(lambda: not cluster.statuses(name), 30, f"the agents of {name} to be removed")


def test_on_failure_gives_up_at_the_start_limit_and_says_why(three_nodes, tmp_path):
    apply(three_nodes, tmp_path, "flaky", """\
        - name: crash
          run: [sh, -c, "echo trying >&2; exit 1"]
          restart: on-failure
          restartSec: 0.1
        """)
    try:
        status = three_nodes.wait_for(lambda: (s := three_nodes.statuses("flaky").get("crash", {})).get("state")
                                      == "Failed" and s, 60, "the agent to fail")
        # systemd's defaults: 5 starts within 10s, then no more (4 restarts after the first start).
        assert (status["restarts"], status["exitCode"]) == (4, 1)
        assert status["reason"] == "start limit hit: 5 starts within 10s (startLimitBurst=5)"

        cells = row(three_nodes, "flaky/crash")
        assert cells[:3] == ["flaky/crash", status["node"], "Failed(1)"]
        assert re.fullmatch(r"4 \(\d+[smh] ago\)", cells[3]), cells
        assert re.fullmatch(r"1 \(\d+[smh] ago\)", cells[4]), cells

        described = three_nodes.ctl("describe", "pipeline", "flaky").stdout
        assert re.search(r"crash\s+" + status["node"] + r"\s+Failed\(1\)\s+4 \(\d+[smh] ago\)\s+1 \(\d+[smh] ago\)",
                         described), described
        assert ("crash: Failed: start limit hit: 5 starts within 10s (startLimitBurst=5); "
                "see `oneosctl logs flaky/crash`") in described
        assert "Status:       Failed" in described
        # Each of the five runs left its line in the log.
        assert three_nodes.ctl_bytes("logs", "flaky/crash").count(b"trying\n") >= 1
    finally:
        delete(three_nodes, "flaky")


def test_always_restarts_an_agent_that_exits_cleanly(three_nodes, tmp_path):
    apply(three_nodes, tmp_path, "again", """\
        - name: once
          run: [sh, -c, "echo done"]
          restart: always
          restartSec: 0.1
        """)
    try:
        status = three_nodes.wait_for(lambda: (s := three_nodes.statuses("again").get("once", {})).get("restarts", 0)
                                      >= 2 and s, 60, "the agent to be restarted twice")
        assert status["exitCode"] == 0 and status["state"] != "Exited"
        cells = row(three_nodes, "again/once")
        assert re.fullmatch(r"\d+ \(\d+[smh] ago\)", cells[3]) and int(cells[3].split()[0]) >= 2, cells
        assert cells[4] == "0" or re.fullmatch(r"0 \(\d+[smh] ago\)", cells[4]), cells
    finally:
        delete(three_nodes, "again")


def test_no_leaves_an_exited_agent_with_its_status(three_nodes, tmp_path):
    apply(three_nodes, tmp_path, "oneshot", """\
        - name: three
          run: [sh, -c, "exit 3"]
          restart: "no"
        """)
    try:
        status = three_nodes.wait_for(lambda: (s := three_nodes.statuses("oneshot").get("three", {})).get("state")
                                      == "Exited" and s, 60, "the agent to exit")
        assert (status["exitCode"], status.get("restarts", 0)) == (3, 0)
        cells = row(three_nodes, "oneshot/three")
        assert cells[2:4] == ["Exited(3)", "0"], cells
        assert re.fullmatch(r"3 \(\d+[smh] ago\)", cells[4]), cells
        described = three_nodes.ctl("describe", "pipeline", "oneshot").stdout
        assert re.search(r"three\s+" + status["node"] + r"\s+Exited\(3\)\s+0\s+3 \(\d+[smh] ago\)\s+sh -c 'exit 3'",
                         described), described
    finally:
        delete(three_nodes, "oneshot")


def test_a_pipelines_output_is_kept_apart_from_stderr_and_shows_each_byte_once_across_restarts(three_nodes,
                                                                                             tmp_path):
    # The last stage prints its input, then fails once: restarted, it reads its input again and
    # prints it all again. `logs PIPELINE` shows it once; the stage's log only its stderr.
    manifest = tmp_path / "replay.yaml"
    manifest.write_text(textwrap.dedent("""\
        apiVersion: oneos/v1
        kind: Pipeline
        metadata: {name: replay}
        spec:
          agents:
            - name: numbers
              run: [seq, "1", "2000"]
            - name: last
              run: [sh, -c, "cat; echo run over >&2; [ -e ran-once ] || { touch ran-once; exit 3; }"]
              restart: on-failure
              restartSec: 0.1
          links:
            - {from: numbers, to: last}
        """))
    assert three_nodes.ctl("apply", str(manifest)).stdout == "pipeline/replay created\n"   # no -f, as users type it
    expected = b"".join(b"%d\n" % i for i in range(1, 2001))
    follow = subprocess.Popen([venv_bin("oneosctl"), "logs", "-f", "replay"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=dict(os.environ, ONEOS_NAMESERVER=three_nodes.url))
    try:
        out, err = follow.communicate(timeout=60)   # -f ends with the stream: once the stage is done for good
        assert (follow.returncode, out, err) == (0, expected, b"")
        status = three_nodes.wait_for(lambda: (s := three_nodes.statuses("replay").get("last", {})).get("state")
                                      == "Exited" and s, 30, "the last stage's status")
        assert (status["exitCode"], status["restarts"]) == (0, 1)
        assert three_nodes.ctl_bytes("logs", "replay") == expected
        assert three_nodes.ctl_bytes("logs", "replay/last") == b"run over\n"
        assert three_nodes.ctl_bytes("logs", "-p", "replay/last") == b"run over\n"
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
        delete(three_nodes, "replay")
