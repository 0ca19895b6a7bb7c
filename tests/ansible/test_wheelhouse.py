"""oneos.fleet.wheelhouse, run as Ansible runs it: `ansible localhost -m oneos.fleet.wheelhouse`.

The collection is the repository's ansible/ folder, found through ANSIBLE_COLLECTIONS_PATH: a temporary
folder holding ansible_collections/oneos/fleet, a symlink to it. The oneos wheel is built offline from a
copy of the sources (build_isolation false: this venv's setuptools), so the repository is not written to.
The x86_64 wheelhouse comes from whatever index pip is configured with; the aarch64 one from PyPI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
from packaging.utils import parse_wheel_filename

import oneos
from tests.procs import ANY_EXIT, cli

REPO = Path(__file__).resolve().parent.parent.parent
SOURCES = ["pyproject.toml", "README.md", "oneos", "schemas", "manifests"]   # what the build reads
BIN = Path(sys.executable).parent
MODULE = REPO / "ansible" / "plugins" / "modules" / "wheelhouse.py"
# pip with no configuration and no index it could reach: what a run that needs no network is given.
OFFLINE = {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_FIND_LINKS": "",
           "PIP_NO_INDEX": "1"}


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> dict:
    """The collection made findable, a copy of the sources to build from, and the environment to run ansible in."""
    root = tmp_path_factory.mktemp("wheelhouse")
    (root / "collections" / "ansible_collections" / "oneos").mkdir(parents=True)
    (root / "collections" / "ansible_collections" / "oneos" / "fleet").symlink_to(REPO / "ansible")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(REPO / name, src / name)
    env = {"ANSIBLE_COLLECTIONS_PATH": str(root / "collections"), "ANSIBLE_HOME": str(root / "ansible-home"),
           "ANSIBLE_LOCAL_TEMP": str(root / "ansible-tmp"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
           "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
           "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")])}
    return {"root": root, "src": src, "env": env}


def wheelhouse(place, dest: Path, machine: str, env: dict | None = None, check: bool = False,
               **options) -> tuple[str, dict]:
    """Run the module through `ansible`; its status (SUCCESS, CHANGED, FAILED!) and its result."""
    args = {"source": str(place["src"]), "constraints": str(REPO / "constraints.txt"), "dest": str(dest),
            "machine": machine, "build_isolation": False, **options}
    done = cli("ansible", "localhost", "-m", "oneos.fleet.wheelhouse", "-a", json.dumps(args), *(["--check"] if check else []),
               env={**place["env"], **(env or {})}, cwd=place["root"], ok_code=ANY_EXIT, timeout=300)
    found = re.search(r"^localhost \| (\S+) => (\{.*\})\s*$", done.stdout, re.S | re.M)
    assert found, done.stdout + done.stderr
    return found.group(1), json.loads(found.group(2))


def platforms_of(wheel: str) -> set[str]:
    return {tag.platform for tag in parse_wheel_filename(wheel)[3]}


@pytest.fixture(scope="module")
def x86_64(place) -> tuple[Path, str, dict]:
    dest = place["root"] / "wheels" / "x86_64"
    status, result = wheelhouse(place, dest, "x86_64")
    return dest, status, result


def test_the_local_platform_s_wheelhouse_installs_oneos_with_no_index(x86_64, place):
    dest, status, result = x86_64
    assert status == "CHANGED", result
    assert (result["version"], result["requirement"]) == (oneos.__version__, f"oneos=={oneos.__version__}")
    assert sorted(p.name for p in dest.glob("*.whl")) == sorted(result["wheels"]) == sorted(result["added"])
    names = {parse_wheel_filename(w)[0] for w in result["wheels"]}
    assert {"oneos", "pulsar-lite", "pulsar-client", "cryptography", "adafruit-blinka", "pyhcl"} <= names
    # As a device installs it: a fresh venv, its own pip, this folder and nothing else.
    device = place["root"] / "device"
    cli(sys.executable, "-m", "venv", str(device), timeout=120)
    cli(str(device / "bin" / "pip"), "install", "--quiet", "--no-index", "--find-links", str(dest),
        result["requirement"], env=OFFLINE, cwd=place["root"], timeout=300)
    assert cli(str(device / "bin" / "oneosd"), "--version", cwd=place["root"]).stdout == f"oneosd {oneos.__version__}\n"


def test_a_second_run_changes_nothing_and_needs_no_network(x86_64, place):
    dest, _, first = x86_64
    before = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    status, result = wheelhouse(place, dest, "x86_64", env=OFFLINE)   # the oneos wheel is rebuilt: same RECORD
    assert (status, result["changed"], result["added"], result["removed"]) == ("SUCCESS", False, [], []), result
    assert result["wheels"] == first["wheels"]
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == before


def test_wheels_the_closure_no_longer_needs_are_removed_and_a_changed_oneos_replaced(x86_64, place):
    dest, _, first = x86_64
    [pyhcl] = [w for w in first["wheels"] if w.startswith("pyhcl-")]
    shutil.copy(dest / pyhcl, dest / "pyhcl-0.4.4-py3-none-any.whl")   # left by an older version
    oneos_wheel = f"oneos-{oneos.__version__}-py3-none-any.whl"
    status, result = wheelhouse(place, dest, "x86_64", env=OFFLINE, check=True)
    assert (status, result["removed"], result["added"]) == ("CHANGED", ["pyhcl-0.4.4-py3-none-any.whl"], []), result
    assert (dest / "pyhcl-0.4.4-py3-none-any.whl").exists()   # check mode leaves dest alone

    changed = place["root"] / "changed-src"
    shutil.copytree(place["src"], changed)
    (changed / "oneos" / "wheelhouse_marker.py").write_text("# a file the previous wheel did not have\n")
    status, result = wheelhouse(place, dest, "x86_64", env=OFFLINE, source=str(changed))
    assert (status, result["removed"], result["added"]) == ("CHANGED", ["pyhcl-0.4.4-py3-none-any.whl"], [oneos_wheel])
    assert sorted(p.name for p in dest.glob("*.whl")) == first["wheels"]
    assert cli(sys.executable, "-m", "zipfile", "-l", str(dest / oneos_wheel)).stdout.count("oneos/wheelhouse_marker.py") == 1
    status, result = wheelhouse(place, dest, "x86_64", env=OFFLINE)   # back to the sources as they are
    assert (status, result["added"]) == ("CHANGED", [oneos_wheel])


def test_an_aarch64_wheelhouse_is_resolved_for_aarch64_not_for_this_machine(place):
    dest = place["root"] / "wheels" / "aarch64"
    started = time.monotonic()
    status, result = wheelhouse(place, dest, "aarch64")
    print(f"aarch64 wheelhouse: {time.monotonic() - started:.1f} s")
    assert status == "CHANGED", result
    by_name = {parse_wheel_filename(w)[0]: w for w in result["wheels"]}
    assert "pulsar-lite" not in by_name   # x86_64 only (its marker), though this machine is x86_64
    for name in ("pulsar-client", "cryptography", "cffi", "rpds-py", "pyyaml"):
        assert all(p.endswith("_aarch64") for p in platforms_of(by_name[name])), by_name[name]
    assert not [w for w in result["wheels"] if any("x86_64" in p for p in platforms_of(w))]


def test_a_requirement_not_pinned_is_named(place, tmp_path):
    pins = tmp_path / "constraints.txt"
    pins.write_text("".join(line for line in (REPO / "constraints.txt").read_text().splitlines(keepends=True)
                            if not line.lower().startswith("pyhcl==")))
    status, result = wheelhouse(place, tmp_path / "wheels", "x86_64", env=OFFLINE, constraints=str(pins))
    assert status == "FAILED!"
    assert result["msg"].startswith("pyhcl (required by oneos as pyhcl>=0.4.5) is not pinned in "), result["msg"]
    assert not (tmp_path / "wheels").exists()


def test_ansible_lint_production_profile_passes_the_module():
    done = cli("ansible-lint", "--offline", "--nocolor", "--profile", "production", str(MODULE),
               env={"ANSIBLE_LINT_SKIP_VERSION_CHECK": "1", "ANSIBLE_LINT_NODEPS": "1",
                    "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")])}, cwd=REPO, ok_code=ANY_EXIT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ERROR" not in done.stderr, done.stderr   # e.g. DOCUMENTATION that is not YAML, which it only prints
