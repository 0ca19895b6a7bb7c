"""py-consul's own test suite, run against `oneos-nameserver`: what a Consul client library's
authors check of a Consul server, checked of ours.

`make setup` fetches py-consul's source distribution (the version constraints.txt pins; its
sha256 pinned in tests/peer/py-consul.txt) into build/peer. This test runs its tests in a pytest
of their own, unchanged except for the one fixture that started a Consul container per test:
tests/peer/py_consul_fixture.py starts a Name Server instead.

Run: the KV, session, txn, status and ACL tests of the blocking client, and the asyncio client's
KV, session and txn tests; the ACL tests against `oneos-nameserver --acl` with an initial
management token, as py-consul's conftest starts Consul. Left out: what the Name Server does not
serve (ACL roles, auth methods and binding rules, agent services and checks, catalog, health,
and the other endpoints), and the tests of the client alone that need no server (test_base,
test_callback, test_std, test_utils).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
REPO = HERE.parent.parent
VERSION = importlib.metadata.version("py-consul")
SOURCE = REPO / "build" / "peer" / f"py_consul-{VERSION}"

SELECTED = ["tests/api/test_kv.py", "tests/api/test_session.py", "tests/api/test_txn.py",
            "tests/api/test_status.py", "tests/api/test_acl.py", "tests/test_aio.py"]
# The tests of endpoints we do not serve: /v1/agent/services, ACL roles, auth methods, binding rules.
DESELECTED = ["tests/test_aio.py::TestAsyncioConsul::test_agent_services",
              "tests/api/test_acl.py::TestConsulAcl::test_acl_role_crud",
              "tests/api/test_acl.py::TestConsulAcl::test_acl_auth_method_crud",
              "tests/api/test_acl.py::TestConsulAcl::test_acl_binding_rule_crud"]
EXPECTED = 45   # so that a test lost to a rename or a collection change fails here, not passes


def test_py_consul_own_tests_pass_against_the_name_server(tmp_path):
    pinned = re.search(r"^py-consul==(\S+)", (HERE / "py-consul.txt").read_text(), re.M).group(1)
    if pinned != VERSION:
        pytest.fail(f"py-consul {VERSION} is installed but tests/peer/py-consul.txt pins {pinned}: "
                    "pin the same version there, with its sha256", pytrace=False)
    if not (SOURCE / "tests").is_dir():
        pytest.fail(f"py-consul {VERSION}'s tests are not in {SOURCE}: `make setup` fetches them", pytrace=False)
    argv = [sys.executable, "-m", "pytest", "-c", str(HERE / "peer.ini"), "--rootdir", str(SOURCE),
            "--confcutdir", str(SOURCE / "tests"),     # py-consul's conftest.py (docker) stays out
            "-p", "py_consul_fixture", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "run"),
            "-q", "-rfEs", *SELECTED, *(arg for test in DESELECTED for arg in ("--deselect", test))]
    # Our server, whatever Consul this shell points at (py-consul reads CONSUL_HTTP_*), and no options meant for ours.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_HTTP_") and k != "PYTEST_ADDOPTS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(argv, cwd=SOURCE, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=240)
    lines = done.stdout.strip().splitlines()
    summary = lines[-1] if lines else f"(no output; stderr: {done.stderr.strip()})"
    print(f"py-consul {VERSION}'s tests against oneos-nameserver: {summary}")
    assert done.returncode == 0, f"py-consul's tests failed: {summary}\n{done.stdout[-20000:]}{done.stderr[-5000:]}"
    counts = dict((kind, int(n)) for n, kind in re.findall(r"(\d+) (\w+)", summary))
    assert (counts.get("passed"), counts.get("deselected")) == (EXPECTED, len(DESELECTED)), summary
    assert not {"failed", "error", "errors", "skipped", "xfailed", "xpassed"} & counts.keys(), summary
