"""oneos.fleet.wheelhouse, run as Ansible runs it: `ansible localhost -m oneos.fleet.wheelhouse`.

The collection is the repository's ansible/ folder, found through ANSIBLE_COLLECTIONS_PATH: a temporary
folder holding ansible_collections/oneos/fleet, a symlink to it. The oneos wheel is built offline from a
copy of the sources (build_isolation false: this venv's setuptools), so the repository is not written to.
The x86_64 wheelhouse comes from whatever index pip is configured with; the aarch64 one from PyPI.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import io
import json
import os
import re
import shutil
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from packaging.utils import parse_wheel_filename

import oneos
from tests.procs import ANY_EXIT, cli
from tests.test_packaging import copy_sources

REPO = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent
# pip with no configuration and no index it could reach: what a run that needs no network is given.
OFFLINE = {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_FIND_LINKS": "",
           "PIP_NO_INDEX": "1"}


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> dict:
    """The collection made findable, a copy of the sources to build from, and the environment to run ansible in."""
    root = tmp_path_factory.mktemp("wheelhouse")
    (root / "collections" / "ansible_collections" / "oneos").mkdir(parents=True)
    (root / "collections" / "ansible_collections" / "oneos" / "fleet").symlink_to(REPO / "ansible")
    src = copy_sources(root / "src")
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
    # As a device installs it: into a fresh venv, from this folder and nothing else. pip is this
    # environment's, pointed at the venv's Python (--python): ensurepip would take 3 s of CPU.
    device = place["root"] / "device"
    cli(sys.executable, "-m", "venv", "--without-pip", str(device), timeout=120)
    cli(sys.executable, "-m", "pip", "--python", str(device / "bin" / "python"), "install", "--quiet", "--no-index",
        "--find-links", str(dest), result["requirement"], env=OFFLINE, cwd=place["root"], timeout=300)
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
    oneos_wheel_copy = place["root"] / oneos_wheel
    shutil.copy(dest / oneos_wheel, oneos_wheel_copy)   # a wheel as source: nothing to build
    status, result = wheelhouse(place, dest, "x86_64", env=OFFLINE, check=True, source=str(oneos_wheel_copy))
    assert (status, result["removed"], result["added"]) == ("CHANGED", ["pyhcl-0.4.4-py3-none-any.whl"], []), result
    assert (dest / "pyhcl-0.4.4-py3-none-any.whl").exists()   # check mode leaves dest alone

    changed = place["root"] / "changed-src"
    shutil.copytree(place["src"], changed)
    (changed / "oneos" / "wheelhouse_marker.py").write_text("# a file the previous wheel did not have\n")
    status, result = wheelhouse(place, dest, "x86_64", env=OFFLINE, source=str(changed))
    assert (status, result["removed"], result["added"]) == ("CHANGED", ["pyhcl-0.4.4-py3-none-any.whl"], [oneos_wheel])
    assert sorted(p.name for p in dest.glob("*.whl")) == first["wheels"]
    with zipfile.ZipFile(dest / oneos_wheel) as wheel:
        assert "oneos/wheelhouse_marker.py" in wheel.namelist()


def test_an_aarch64_wheelhouse_is_resolved_for_aarch64_not_for_this_machine(x86_64, place):
    dest = place["root"] / "wheels" / "aarch64"
    source = place["root"] / "aarch64-source"   # the oneos wheel built for x86_64 (it is pure Python): no build here
    source.mkdir()
    [built] = [w for w in x86_64[2]["wheels"] if w.startswith("oneos-")]
    shutil.copy(x86_64[0] / built, source / built)
    started = time.monotonic()
    status, result = wheelhouse(place, dest, "aarch64", source=str(source / built))
    print(f"aarch64 wheelhouse: {time.monotonic() - started:.1f} s")
    assert status == "CHANGED", result
    by_name = {parse_wheel_filename(w)[0]: w for w in result["wheels"]}
    assert "pulsar-lite" not in by_name   # x86_64 only (its marker), though this machine is x86_64
    for name in ("pulsar-client", "cryptography", "cffi", "rpds-py", "pyyaml"):
        assert all(p.endswith("_aarch64") for p in platforms_of(by_name[name])), by_name[name]
    assert not [w for w in result["wheels"] if any("x86_64" in p for p in platforms_of(w))]


def test_a_requirement_not_pinned_is_named(x86_64, place, tmp_path):
    pins = tmp_path / "constraints.txt"
    pins.write_text("".join(line for line in (REPO / "constraints.txt").read_text().splitlines(keepends=True)
                            if not line.lower().startswith("pyhcl==")))
    oneos_wheel = tmp_path / f"oneos-{oneos.__version__}-py3-none-any.whl"
    shutil.copy(x86_64[0] / oneos_wheel.name, oneos_wheel)
    status, result = wheelhouse(place, tmp_path / "wheels", "x86_64", env=OFFLINE, constraints=str(pins),
                                source=str(oneos_wheel))
    assert status == "FAILED!"
    assert result["msg"].startswith("pyhcl (required by oneos as pyhcl>=0.4.5) is not pinned in "), result["msg"]
    assert not (tmp_path / "wheels").exists()


def write_wheel(folder: Path, name: str, version: str, requires: list[str], files: dict[str, bytes]) -> Path:
    """A wheel (py3-none-any) with this METADATA and these files, its RECORD as pip writes one."""
    info = f"{name}-{version}.dist-info"
    files = {**files, f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
             f"{info}/METADATA": "".join([f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
                                          *(f"Requires-Dist: {r}\n" for r in requires)]).encode()}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for path, data in files.items())
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name_in_wheel, data in files.items():
            wheel.writestr(name_in_wheel, data)
        wheel.writestr(f"{info}/RECORD", record + f"{info}/RECORD,,\n")
    return path


# A PEP 517 backend in the sdist itself (no build requirements, so pip builds it offline) that
# writes the wheel write_wheel writes.
BACKEND = f"""
import base64, hashlib, zipfile
from pathlib import Path
{inspect.getsource(write_wheel)}
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    return write_wheel(Path(wheel_directory), NAME, "1.0", [], {{NAME + ".py": b"X = 1\\n"}}).name
"""


def write_sdist(folder: Path, name: str, extra: dict[str, str]) -> None:
    """name-1.0.tar.gz, built by BACKEND, with these extra files."""
    files = {"pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
             "backend.py": f"NAME = {name!r}\n" + BACKEND,
             "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n", **extra}
    with tarfile.open(folder / f"{name}-1.0.tar.gz", "w:gz") as sdist:
        for path, text in files.items():
            data = text.encode()
            member = tarfile.TarInfo(f"{name}-1.0/{path}")
            member.size = len(data)
            sdist.addfile(member, io.BytesIO(data))


def test_a_package_with_only_a_source_distribution_is_built_if_pure_python_else_named(place, tmp_path):
    """Offline, from a folder of sdists: a pure one becomes a wheel; one with C in it is refused by name.
    The requirement that holds on x86_64 only is left out of the aarch64 wheelhouse, pinned or not."""
    index = tmp_path / "index"
    index.mkdir()
    write_sdist(index, "purepkg", {})
    write_sdist(index, "compiledpkg", {"compiledpkg.c": "int x;\n"})
    pins = tmp_path / "constraints.txt"
    pins.write_text("purepkg==1.0\ncompiledpkg==1.0\n")
    offline = dict(OFFLINE, PIP_FIND_LINKS=str(index))
    needs = ["purepkg>=1", 'x86pkg>=1; platform_machine == "x86_64"']

    status, result = wheelhouse(place, tmp_path / "wheels", "aarch64", env=offline, constraints=str(pins),
                                source=str(write_wheel(tmp_path, "oneos", "9.9", needs, {"oneos/__init__.py": b""})))
    assert (status, result["wheels"]) == ("CHANGED", ["oneos-9.9-py3-none-any.whl", "purepkg-1.0-py3-none-any.whl"]), result

    (tmp_path / "more").mkdir()
    source = write_wheel(tmp_path / "more", "oneos", "9.10", [*needs, "compiledpkg"], {"oneos/__init__.py": b""})
    status, result = wheelhouse(place, tmp_path / "wheels", "aarch64", env=offline, constraints=str(pins), source=str(source))
    assert status == "FAILED!"
    assert result["msg"].startswith("compiledpkg==1.0 has no wheel for aarch64 (Python 3.11, glibc 2.36) and its "
                                    "source is compiled code: "), result["msg"]
