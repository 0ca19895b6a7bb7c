"""`make demo` as a new user runs it: the paper's sensor -> controller -> actuator example on
simulated boards, each device stage on its pin's node, D7 following D4, nothing left behind."""

from __future__ import annotations

import os
import re
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


def test_make_demo_runs_the_papers_example_and_stops_everything(tmp_path):
    done = subprocess.run([sys.executable, "-m", "oneos.demo"], capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, TMPDIR=str(tmp_path)))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    placed = re.search(r"placed: oneos-gpio on (\S+), python3 on (\S+), oneos-gpio-2 on (\S+)\n", out)
    assert placed and (placed.group(1), placed.group(3)) == ("sensor-pi", "actuator-pi"), out
    follows = re.findall(r"D7 on actuator-pi is now (\d), \d+ ms after D4 changed", out)
    assert follows == ["1", "0", "1", "0"], out
    expected = subprocess.run(["bash", "-c", "seq 1 100000 | grep 7 | wc -l"], capture_output=True, text=True)
    assert f"$ oneosctl run -v 'seq 1 100000 | grep 7 | wc -l'\n{expected.stdout}" in done.stdout
    assert "demo: done; every process stopped" in done.stdout
    assert processes_mentioning(str(tmp_path)) == []
    assert list(tmp_path.iterdir()) == []   # its temporary folder is gone too
