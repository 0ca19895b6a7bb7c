"""OneOS as `pip install .` leaves it: the wheel, not the source tree, in a fresh virtual environment.

The wheel is built and installed offline (--no-index, no build isolation: this venv's setuptools
builds it). The fresh environment gets the dependencies already installed here through a .pth
file naming this environment's site-packages: only a site folder's own .pth files run, so the
editable install of oneos here (an import hook started by a .pth in that folder) stays out.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

import oneos
from tests.procs import Proc, cli, processes_mentioning

REPO = Path(__file__).resolve().parent.parent
# What the build reads: the package, its metadata and the data files shipped with it.
SOURCES = ["pyproject.toml", "README.md", "oneos", "schemas", "manifests"]


def copy_sources(src: Path) -> Path:
    """What the build reads, copied into a new folder `src` (so that building writes nothing in the repository)."""
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(REPO / name, src / name)
    return src


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel of this tree installed; its bin folder."""
    root = tmp_path_factory.mktemp("packaging")
    src = copy_sources(root / "src")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    cli(*pip, "wheel", "--no-deps", "--no-index", "--no-build-isolation", "--check-build-dependencies",
        "--quiet", "--wheel-dir", str(root / "dist"), str(src), cwd=root, timeout=120)
    [wheel] = (root / "dist").glob("*.whl")
    assert wheel.name == f"oneos-{oneos.__version__}-py3-none-any.whl"   # the version --version prints

    fresh = root / "venv"
    cli(sys.executable, "-m", "venv", "--without-pip", str(fresh), timeout=60)
    python = fresh / "bin" / "python"
    here = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    # pip itself comes from this environment (ensurepip would take seconds); --ignore-installed:
    # the oneos installed here, which pip sees on that path, is neither uninstalled nor reused.
    cli(str(python), *pip[1:], "install", "--no-deps", "--no-index", "--ignore-installed", "--quiet", str(wheel),
        env={"PYTHONPATH": os.pathsep.join(here)}, cwd=root, timeout=120)
    site_packages = Path(cli(str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                             cwd=root).stdout.strip())
    (site_packages / "dependencies-of-the-test-environment.pth").write_text("\n".join(here) + "\n")
    return fresh / "bin"


@pytest.fixture
def outside(tmp_path, venv) -> dict:
    """Where a user would type: a folder outside the repository, this environment's bin off PATH."""
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p) != Path(sys.executable).parent]
    return {"cwd": tmp_path, "env": {"PATH": os.pathsep.join([str(venv), *path]), "PYTHONPATH": "",
                                     "ONEOS_HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path)}}


@pytest.fixture
def started():
    """Processes a test starts; each is stopped (with its process group) even when the test fails."""
    procs: list[Proc] = []
    yield procs
    for proc in procs:
        proc.stop()


def test_the_installed_package_is_the_wheel_not_the_source_tree(venv, outside):
    where = cli(str(venv / "python"), "-c", "import oneos, oneos.paths as p; print(oneos.__file__); "
                "print(p.shared('schemas')); print(p.shared('manifests/init.yaml'))", **outside).stdout.split()
    installed = str(venv.parent)
    assert [w.startswith(installed) for w in where] == [True, True, True], where
    assert where[1:] == [f"{installed}/share/oneos/schemas", f"{installed}/share/oneos/manifests/init.yaml"]
    # Every schema and manifest of the repository is shipped.
    shipped = {str(p.relative_to(venv.parent / "share" / "oneos")) for p in (venv.parent / "share" / "oneos").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert shipped == {str(p.relative_to(REPO)) for folder in ("schemas", "manifests") for p in (REPO / folder).rglob("*")
                       if p.is_file() and "__pycache__" not in p.parts}


def test_the_commands_say_their_version(venv, outside):
    assert cli(str(venv / "oneosctl"), "--version", **outside).stdout == f"oneosctl {oneos.__version__}\n"
    assert cli(str(venv / "oneosd"), "--version", **outside).stdout == f"oneosd {oneos.__version__}\n"


def test_the_demo_runs_from_the_wheel(venv, outside, started):
    """`make demo` as a new user sees it, from the installed wheel: the paper's sensor ->
    controller -> actuator example on simulated boards, each device stage on its pin's node, D7
    following D4, a one-liner printing what bash prints, and nothing left behind."""
    tmp = outside["cwd"] / "tmp"
    tmp.mkdir()
    env = dict(outside["env"], TMPDIR=str(tmp))
    demo = Proc([str(venv / "python"), "-m", "oneos.demo"], outside["cwd"] / "demo.log", cwd=outside["cwd"], env=env)
    started.append(demo.start())
    try:
        code = demo.popen.wait(240)
    except subprocess.TimeoutExpired:
        pytest.fail(f"python -m oneos.demo did not finish within 240s:\n{demo.log()}")
    out = demo.log()
    assert code == 0, out
    assert "$ cat controller.py\n" in out
    placed = re.search(r"placed: oneos-gpio on (\S+), python3 on (\S+), oneos-gpio-2 on (\S+)\n", out)
    assert placed and (placed.group(1), placed.group(3)) == ("sensor-pi", "actuator-pi"), out
    assert re.findall(r"D7 on actuator-pi is now (\d), \d+ ms after D4 changed", out) == ["1", "0", "1", "0"], out
    expected = subprocess.run(["bash", "-c", "seq 1 100000 | grep 7 | wc -l"], capture_output=True, text=True)
    # Its output (stderr, with -v's progress, is in the same log) before the next command.
    after = out.partition("$ oneosctl run -v 'seq 1 100000 | grep 7 | wc -l'\n")[2].partition("\n$ ")[0]
    assert expected.stdout.strip() in after.splitlines(), out
    assert "demo: done; every process stopped" in out
    assert processes_mentioning(str(tmp)) == []
    assert list(tmp.iterdir()) == []   # its temporary folder is gone too


def distribution(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_declared_dependency_is_imported_by_oneos_and_every_import_is_declared():
    declared = {distribution(re.split(r"[<>=!~;\[ ]", req)[0])
                for req in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    imported = set()
    for path in (REPO / "oneos").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    providers = importlib.metadata.packages_distributions()
    third_party = imported - set(sys.stdlib_module_names) - {"oneos"}
    assert {distribution(d) for module in third_party for d in providers.get(module, [module])} == declared
