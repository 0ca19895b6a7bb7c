"""`make demo` killed part way (`make demo | head`, a kill -9): the nodes, the Name Server and the
broker it started go with it. The whole demo, run to its end, is tests/test_packaging.py's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.procs import processes_mentioning, wait_until


def test_a_demo_killed_part_way_leaves_no_process_behind(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path))
    demo = subprocess.Popen([sys.executable, "-m", "oneos.demo"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, cwd=tmp_path, start_new_session=True)
    try:
        # Once its nodes are up (the demo shows them), it dies as a killed process does: no cleanup of its own.
        for line in demo.stdout:
            if line.startswith(b"$ oneosctl get nodes"):
                break
        else:
            raise AssertionError(f"the demo ended before starting its nodes (exit status {demo.wait()})")
        assert processes_mentioning(str(tmp_path)), "the demo's nodes run in its temporary folder"
        demo.send_signal(signal.SIGKILL)
        demo.wait(10)
        wait_until(lambda: processes_mentioning(str(tmp_path)) == [], 30, "every process of the demo to end")
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
        demo.stdout.close()
        for found in processes_mentioning(str(tmp_path)):     # what a failure of this test left running
            try:
                os.kill(int(found.partition(":")[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
