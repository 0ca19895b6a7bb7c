"""`oneosctl run LINE` prints what `bash -c LINE` prints, byte for byte, and exits as bash does.

Each pipeline runs on a three-node cluster; the test also checks where the stages ran:
no two adjacent stages on the same node, so every pipe in the line crossed Pulsar.
"""

from __future__ import annotations

import os
import random
import re
import subprocess

import pytest

from tests.procs import ANY_EXIT, cli

PIPELINES = [
    "seq 1 100000 | grep 7 | wc -l",
    "seq 1 1000 | sort -r | head -n 5",
    "printf 'pear\\napple\\npear\\nfig\\n' | sort | uniq -c",
    "seq 1 20 | awk '{ s += $1 } END { print s }'",
    "seq 1 12 | sed 's/1/one/g'",
    "echo 'hello, world' | tr a-z A-Z",
    "seq 1 100 | tail -n 3",
    "printf 'a,b,c\\n1,2,3\\n' | cut -d, -f2",
    "seq 1 5 | xargs echo",
    "seq 1 10000 | gzip -c | gunzip -c | md5sum",
    "echo 'the quick brown fox jumps over the lazy dog the end' | tr ' ' '\\n' | sort | uniq | wc -l",
    "printf 'B\\na\\nC\\n' | LC_ALL=C sort",
    "seq 1 300 | python3 -c 'import sys; print(sum(int(l) for l in sys.stdin))'",
    "seq 1 50 | awk '$1 % 7 == 0' | paste -sd+",
    "seq 1 100000 | md5sum",
    "seq 1 1000 | grep -v 5 | sort -n -r | head -n 2 | tail -n 1",
    # early exit: head ends, the writers upstream are stopped as by SIGPIPE
    "yes | head -n 3",
    "seq 1 10000000 | head -n 2",
    # output without a trailing newline
    "printf 'no newline at the end' | cat",
    "seq 1 3 | tr -d '\\n'",
    # empty input and empty output
    "seq 0 | wc -l",
    "seq 0 | sort | wc -c",
    "seq 1 3 | grep -c nothing-matches",
    # binary data, through stdin from a file: the client feeds it
    "gzip -c < rand.bin | gunzip -c | md5sum",
    "cat < rand.bin | wc -c",
    "head -c 4096 < rand.bin | od -An -tx1 | tail -n 2",
    # failing last stages: their status is the pipeline's
    "seq 1 3 | grep nothing-matches",
    "seq 1 3 | python3 -c 'import sys; sys.stdin.read(); sys.exit(5)'",
    "seq 1 3 | false",
    "seq 1 3 | false | true",
    "printf 'x' | sh -c 'cat; exit 3'",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The directory both bash and oneosctl run in, with 5 MB of fixed random bytes in rand.bin."""
    path = tmp_path_factory.mktemp("bash-equivalence")
    (path / "rand.bin").write_bytes(random.Random(20261201).randbytes(5 * 1024 * 1024))
    return path


def stages_and_nodes(stderr: str) -> list[tuple[str, str]]:
    """[(stage, node)] in pipeline order, from the line `oneosctl run -v` prints once every stage is placed."""
    line = next((line for line in stderr.splitlines() if " placed: " in line), None)
    assert line is not None, f"no placement line in:\n{stderr}"
    return re.findall(r"([A-Za-z0-9._-]+) on ([A-Za-z0-9._-]+)", line.split(" placed: ", 1)[1])


@pytest.mark.parametrize("line", PIPELINES)
def test_oneosctl_run_equals_bash(three_nodes, workdir, line):
    env = dict(os.environ, ONEOS_NAMESERVER=three_nodes.url)
    expected = subprocess.run(["bash", "-c", line], capture_output=True, cwd=workdir, stdin=subprocess.DEVNULL,
                              timeout=120)
    done = cli("oneosctl", "run", "-v", line, cwd=workdir, env=env, ok_code=ANY_EXIT, timeout=180, text=False)
    stderr = done.stderr.decode(errors="replace")
    assert done.stdout == expected.stdout, stderr
    assert done.returncode == expected.returncode, stderr
    placed = stages_and_nodes(stderr)
    assert len(placed) == line.count("|") + 1, stderr
    for (a, node_a), (b, node_b) in zip(placed, placed[1:]):
        assert node_a != node_b, f"{a} and {b} are adjacent and both ran on {node_a}"
