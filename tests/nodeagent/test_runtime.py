"""A runtime in this process, on a Name Server of its own: the node's settings reach its agents
through their own environment (never through the daemon's), and stop() ends every thread it
started, its agents' processes with them."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from oneos import state
from oneos.gpio.pins import SIM_ENV
from oneos.nameserver.client import NameServer
from oneos.nodeagent import config as runtime_config
from oneos.nodeagent.daemon import Runtime
from tests.procs import free_port, wait_until
from tests.procs import process_alive as alive

# The kernel agent writes what it sees of the settings, then waits to be stopped.
REPORT = ("import os, sys, time\n"
          "names = ['ONEOS_GPIO_SIM', 'ONEOS_BROKER_DATA', 'ONEOS_NODE']\n"
          "open(sys.argv[1] + '.tmp', 'w').write('\\n'.join(f'{n}={os.environ.get(n)}' for n in names))\n"
          "os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
          "open(sys.argv[2], 'w').write(str(os.getpid()))\n"
          "time.sleep(600)\n")


def init_manifest(report: Path, pidfile: Path) -> dict:
    return {"apiVersion": "oneos/v1", "kind": "Init", "metadata": {"name": "oneos-init"},
            "spec": {"agents": [{"name": "reporter", "run": [sys.executable, "-c", REPORT, str(report), str(pidfile)]}]}}



@pytest.fixture
def runtime(builtin_nameserver, tmp_path, monkeypatch):
    """make(**Runtime options) -> a kernel Runtime `envy` with a simulated board, not started; stopped at the end."""
    monkeypatch.setenv("ONEOS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ONEOS_HW_ROOT", str(tmp_path / "no-hardware"))
    monkeypatch.delenv(SIM_ENV, raising=False)
    ns = NameServer(builtin_nameserver.url)
    boot = state.new_boot_record(cluster="in-process", pulsar_url=f"pulsar://127.0.0.1:{free_port()}",
                                 kernel_nodes=["envy"], lock_delay="0s")
    state.bootstrap(ns, boot, init_manifest(tmp_path / "report", tmp_path / "pid"))
    conf = tmp_path / "node.yaml"
    conf.write_text("gpio: {simulate: board}\n")
    made: list[Runtime] = []

    def make(**options) -> Runtime:
        cfg = runtime_config.load(runtime_config.Overrides(id="envy", nameserver=builtin_nameserver.url,
                                                           config_file=conf), interactive=False)
        made.append(Runtime(cfg, wait_s=10, **options))
        # Enrolled, as an operator's approval would (tests/cluster.py, Cluster.register).
        state.put_document(ns, state.key_key("envy"), "key", state.new_key_record(
            "envy", made[-1].identity.signing_key, made[-1].identity.box_key, kernel=False,
            approved_by="the test"), cas=0)
        return made[-1]

    yield make
    for r in made:
        r.stop()


def runtime_threads() -> list[str]:
    owners = ("runtime envy: ", "election envy: ", "controller: ", "supervisor: ", "agent oneos-init.")
    return [t.name for t in threading.enumerate() if t.name.startswith(owners)]


def test_settings_reach_the_agents_and_the_daemon_environment_is_unchanged(runtime, tmp_path):
    before = dict(os.environ)
    envy = runtime(agent_env={"ONEOS_BROKER_DATA": str(tmp_path / "broker-data")})
    envy.start()
    assert dict(os.environ) == before

    # Elected, its controller places the kernel agent here; the agent sees the node's settings.
    report = tmp_path / "report"
    wait_until(report.exists, 60, "the kernel agent to report its environment")
    assert report.read_text().splitlines() == [
        f"ONEOS_GPIO_SIM={tmp_path / 'board'}",
        f"ONEOS_BROKER_DATA={tmp_path / 'broker-data'}",
        "ONEOS_NODE=envy",
    ]
    assert dict(os.environ) == before


def test_stop_returns_once_every_thread_and_agent_has_ended(runtime, tmp_path):
    envy = runtime()
    envy.start()
    pidfile = tmp_path / "pid"
    wait_until(lambda: pidfile.exists() and pidfile.read_text(), 60, "the kernel agent to run")
    agent = int(pidfile.read_text())
    assert envy.election.leading and runtime_threads()

    envy.stop()
    assert runtime_threads() == []
    assert not alive(agent)
    ns = NameServer(envy.cfg.nameserver)
    assert ns.get(state.node_key("envy"))[1] is None       # it left at once
    envy.stop()   # twice: nothing more to do
