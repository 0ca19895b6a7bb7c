"""`make demo`: the OneOS paper's example on this machine, as a user would type it.

A cluster of three runtimes: the one-machine system (`oneosd --dev`: Name Server, broker,
and the compute node `demo-node`), and two device nodes on simulated boards, `sensor-pi`
(pin D4, an input: the sensor) and `actuator-pi` (pin D7, an output: the actuator). Then:

    oneosctl run 'oneos-gpio watch D4 | python3 controller.py | oneos-gpio write D7'

places the sensor stage on sensor-pi and the actuator stage on actuator-pi (where their
pins are) and the controller anywhere; the demo toggles D4 and shows D7 following. It runs
in a fresh temporary ONEOS_HOME on free ports, so it never disturbs a cluster already
running here, and leaves no process and no file behind.

Run as root, the nodes run their agents as the default agent user (oneos-agent), as any node
does. The temporary folder is open for them to pass (0711, nothing listed), to reach their
working directories and boards. Where that user cannot run this Python at all (a Python
installed in a folder closed to other users, such as a pyenv in /root), the demo runs the
agents as root instead, and says so: its pipeline is Python programs.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from oneos import children
from oneos.broker import free_port
from oneos.errors import OneOSError
from oneos.gpio.sim import SimBoard
from oneos.nodeagent.sandbox import AgentUser, closed_folder, python_home
from oneos.paths import shared

BIN = Path(sys.executable).parent
CONTROLLER = "manifests/examples/controller.py"   # shipped with OneOS: oneos.paths.shared finds it
PIPELINE = "oneos-gpio watch D4 | python3 controller.py | oneos-gpio write D7"
DEVICE_NODES = {
    "sensor-pi": ("board-a", "gpio/D4: {pin: D4, direction: in}"),
    "actuator-pi": ("board-b", "gpio/D7: {pin: D7, direction: out}"),
}
TOGGLES = [1, 0, 1, 0]
FOLLOW_S = 20.0


class DemoError(Exception):
    pass


def unreachable_python() -> Path | None:
    """The folder that keeps a node's default agent user from this Python (root only; None: none does).
    The user may not exist yet (the node makes it): a system account, only "others" bits apply to it."""
    if os.geteuid() != 0:
        return None
    return closed_folder(python_home(), AgentUser("oneos-agent", -1, -1))


def say(text: str) -> None:
    print(text, flush=True)


def show(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> int:
    """Print a command as typed at a prompt, run it, and print what it prints."""
    say(f"$ {shlex.join(argv)}")
    return subprocess.run([str(BIN / argv[0])] + argv[1:], env=env, cwd=cwd).returncode


def wait_for(what: str, check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise DemoError(f"{what} did not happen within {timeout:g}s")
        time.sleep(0.05)


class Demo:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, ONEOS_HOME=str(home / "dev"), ONEOS_NAMESERVER=self.url)
        closed = unreachable_python()
        if closed is not None:
            say(f"(agents run as root here: the agent user cannot run this Python, {closed} is closed to other "
                "users; see README, Sandboxed agents)")
            self.env["ONEOS_AGENT_USER"] = "root"
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.logs = home / "logs"
        self.logs.mkdir()

    def spawn(self, name: str, argv: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stderr", open(self.logs / f"{name}.log", "wb"))
        # SIGTERM when the demo dies, however it dies (`make demo | head`, a kill): nothing is left running.
        proc = children.spawn([str(BIN / argv[0])] + argv[1:], death_signal=signal.SIGTERM, env=env, **kwargs)
        self.procs.append((name, proc))
        return proc

    def nodes(self) -> list[dict]:
        done = subprocess.run([str(BIN / "oneosctl"), "get", "nodes", "-o", "json"], env=self.env,
                              capture_output=True, text=True)
        return json.loads(done.stdout)["items"] if done.returncode == 0 else []

    def start(self) -> None:
        self.controller = shared(CONTROLLER)   # before anything starts: an install without it fails here
        argv = ["oneosd", "--dev", "--listen", f"127.0.0.1:{self.port}", "demo-node"]
        say(f"$ {shlex.join(argv)} &")
        dev = self.spawn("demo-node", argv, self.env, stdout=subprocess.PIPE, text=True)
        ready = dev.stdout.readline()
        if "ready" not in ready:
            raise DemoError("oneosd --dev did not start")
        say(ready.rstrip())
        for node, (board, device) in DEVICE_NODES.items():
            config = self.home / f"{node}.yaml"
            config.write_text(f"kernel: false\ndevices:\n  {device}\n")
            # The nodes have homes of their own: they enroll with the join token --dev left for local nodes,
            # and get a token of their own (oneos/enrollment.py), not the cluster's management token.
            env = dict(self.env, ONEOS_HOME=str(self.home / node), ONEOS_GPIO_SIM=str(self.home / board),
                       ONEOS_JOIN_TOKEN_FILE=str(self.home / "dev" / "join-token"))
            say(f"$ ONEOS_JOIN_TOKEN_FILE=dev/join-token ONEOS_GPIO_SIM={board} oneosd {node} --config {config.name} &"
                f"   # {device}")
            self.spawn(node, ["oneosd", node, "--config", str(config)], env)
        wait_for("every node to join", lambda: len(self.nodes()) == 3)

    def run_pipeline(self) -> None:
        shutil.copy(self.controller, self.home / "controller.py")
        say(f"$ cat controller.py\n{self.controller.read_text().strip()}")
        say(f"$ oneosctl run -v '{PIPELINE}' &")
        run = self.spawn("run", ["oneosctl", "run", "-v", PIPELINE], self.env, cwd=self.home,
                         stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        placed = threading.Event()

        def echo() -> None:   # oneosctl's lines, shown as they come
            for line in run.stderr:
                say(line.rstrip())
                if " placed: " in line:
                    placed.set()
        threading.Thread(target=echo, daemon=True).start()
        wait_for("every stage to be placed", placed.is_set)
        sensor, actuator = SimBoard(self.home / "board-a"), SimBoard(self.home / "board-b")
        wait_for("the sensor pin to be watched", lambda: sensor.direction("D4") == "in")
        for value in TOGGLES:
            started = time.monotonic()
            say(f"$ oneos-gpio sim set D4 {value} --board board-a")
            sensor.set("D4", value)
            wait_for(f"D7 to follow D4={value}", lambda: actuator.get("D7") == value, FOLLOW_S)
            say(f"  D7 on actuator-pi is now {value}, {1000 * (time.monotonic() - started):.0f} ms after D4 changed")
        say("^C")
        run.send_signal(signal.SIGINT)
        run.wait(30)

    def stop(self) -> int:
        """Stop every process, in reverse order; the first non-zero status."""
        status = 0
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            if name != "run" and code not in (0, None):
                say(f"demo: {name} exited with status {code}")
                status = status or code
        return status


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="oneos-demo-") as tmp:
        os.chmod(tmp, 0o711)     # agents pass through to their folders and boards; they list nothing
        demo = Demo(Path(tmp))
        status = 1
        try:
            demo.start()
            show(["oneosctl", "get", "nodes"], demo.env)
            show(["oneosctl", "get", "devices"], demo.env)
            show(["oneosctl", "run", "-v", "seq 1 100000 | grep 7 | wc -l"], demo.env)
            demo.run_pipeline()
            status = 0
        except (DemoError, OneOSError, OSError) as exc:
            say(f"demo: {exc}")
        except KeyboardInterrupt:
            say("demo: interrupted")
        finally:
            say("$ kill %1 %2 %3")
            status = demo.stop() or status
            if status:
                for log in sorted(demo.logs.iterdir()):
                    sys.stderr.write(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}\n")
        say(f"demo: {'done' if status == 0 else 'failed'}; every process stopped")
        return status


if __name__ == "__main__":
    sys.exit(main())
