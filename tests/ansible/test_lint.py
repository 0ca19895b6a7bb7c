"""The collection as its tools see it: ansible-playbook --syntax-check, ansible-lint's production
profile, and systemd-analyze verify on the units the roles write (where systemd-analyze is)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from jinja2 import Environment, StrictUndefined

from tests.procs import run_cli

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
BIN = Path(sys.executable).parent


def ansible_env(tmp_path: Path) -> dict[str, str]:
    return {"ANSIBLE_HOME": str(tmp_path / "ansible-home"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
            "NO_COLOR": "1", "ANSIBLE_NOCOLOR": "1"}


def test_the_playbook_passes_its_syntax_check(tmp_path):
    done = run_cli([str(BIN / "ansible-playbook"), "--syntax-check", "site.yml"], env=ansible_env(tmp_path),
                   timeout=120, cwd=ANSIBLE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ansible_lint_production_profile_is_clean(tmp_path):
    done = run_cli([str(BIN / "ansible-lint"), "--profile", "production", "--nocolor", "--offline"],
                   env={**ansible_env(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}, timeout=300, cwd=ANSIBLE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Passed: 0 failure(s), 0 warning(s)" in done.stdout + done.stderr
    # A module whose DOCUMENTATION is not YAML is only reported on stderr, and the lint still passes.
    assert "Unable to parse documentation" not in done.stderr, done.stderr


UNITS = {"oneos_node/templates/oneosd.service.j2": "oneosd.service",
         "oneos_nameserver/templates/oneos-nameserver.service.j2": "oneos-nameserver.service"}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not on this machine")
@pytest.mark.parametrize("template", sorted(UNITS))
def test_the_units_pass_systemd_analyze_verify(template, tmp_path):
    # The unit as the role renders it for a real device, its programs stood in by /bin/true at
    # the same paths under a root of its own (verify checks that ExecStart's program exists).
    root = tmp_path / "root"
    venv = root / "opt" / "oneos" / "venv" / "bin"
    venv.mkdir(parents=True)
    for name in ("oneosd", "oneos-nameserver"):
        (venv / name).symlink_to("/bin/true")
    values = {"ansible_managed": "Ansible managed", "oneos_node_runtime_id": "pi-1", "oneos_node_user": "oneos",
              "oneos_node_supplementary_groups": ["gpio"], "oneos_node_data_dir": "/var/lib/oneos",
              "oneos_nameserver_url": "https://ns.example:8501", "oneos_node_config_dir": "/etc/oneos",
              "oneos_node_venv": str(root / "opt" / "oneos" / "venv"), "oneos_node_agent_user": "oneos-agent",
              "oneos_cluster_name": "home", "oneos_nameserver_listen": "0.0.0.0:8501",
              "oneos_nameserver_data_dir": "/var/lib/oneos-nameserver"}
    env = Environment(undefined=StrictUndefined, keep_trailing_newline=True)
    env.tests["match"] = lambda value, pattern: __import__("re").match(pattern, value) is not None
    unit = tmp_path / UNITS[template]
    unit.write_text(env.from_string((ANSIBLE / "roles" / template).read_text()).render(values))
    done = run_cli([shutil.which("systemd-analyze"), "verify", "--man=no", str(unit)], timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
