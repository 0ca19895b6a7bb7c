"""`make demo`: start a one-machine OneOS, run pipelines on it, stop it, as a user would type it.

It runs in a fresh temporary ONEOS_HOME on free ports, so it never disturbs a cluster
already running on this machine, and removes everything when it ends.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from oneos.broker import free_port

BIN = Path(sys.executable).parent


def show(argv: list[str], env: dict[str, str]) -> int:
    """Print a command as typed at a prompt, run it, and print what it prints."""
    print(f"$ {shlex.join(argv)}", flush=True)
    return subprocess.run([str(BIN / argv[0])] + argv[1:], env=env).returncode


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="oneos-demo-") as home:
        port = free_port()
        env = dict(os.environ, ONEOS_HOME=home, ONEOS_NAMESERVER=f"http://127.0.0.1:{port}")
        argv = ["oneosd", "--dev", "--listen", f"127.0.0.1:{port}", "demo-node"]
        print(f"$ {shlex.join(argv)} &", flush=True)
        log_path = Path(home) / "oneosd.log"   # its log would drown the demo; shown when something fails
        with open(log_path, "wb") as log:
            dev = subprocess.Popen([str(BIN / argv[0])] + argv[1:], env=env, stdout=subprocess.PIPE, stderr=log,
                                   text=True)
        status = 1
        try:
            ready = dev.stdout.readline()
            if "ready" not in ready:
                print("demo: oneosd --dev did not start", file=sys.stderr)
            else:
                print(ready, end="", flush=True)
                status = show(["oneosctl", "get", "nodes"], env)
            for line in ("seq 1 100000 | grep 7 | wc -l",
                         "python3 -c 'import this' | tr -cs A-Za-z '\\n' | tr A-Z a-z | sort | uniq -c | sort -rn "
                         "| head -n 5"):
                status = status or show(["oneosctl", "run", "-v", line], env)
        finally:
            print("$ kill -TERM %1", flush=True)
            dev.send_signal(signal.SIGTERM)
            try:
                code = dev.wait(30)
            except subprocess.TimeoutExpired:
                dev.kill()
                code = dev.wait()
        print(f"oneosd --dev exited with status {code}", flush=True)
        if status or code:
            print(f"demo: something failed; the log of oneosd --dev:\n{log_path.read_text(errors='replace')}",
                  file=sys.stderr)
        return status or code


if __name__ == "__main__":
    sys.exit(main())
