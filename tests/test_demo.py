"""`make demo` as a new user runs it: the system starts, pipelines print what bash prints, nothing is left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found


def test_make_demo_runs_pipelines_and_stops_everything(tmp_path):
    done = subprocess.run([sys.executable, "-m", "oneos.demo"], capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert done.returncode == 0, done.stdout + done.stderr
    expected = subprocess.run(["bash", "-c", "seq 1 100000 | grep 7 | wc -l"], capture_output=True, text=True)
    assert f"$ oneosctl run -v 'seq 1 100000 | grep 7 | wc -l'\n{expected.stdout}" in done.stdout
    assert "demo-node   Ready   yes      yes" in done.stdout
    assert "oneosd --dev exited with status 0" in done.stdout
    assert processes_mentioning(str(tmp_path)) == []
