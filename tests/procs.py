"""Real processes for tests: each has an owner (a fixture) that stops it."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

import requests
import sh

from oneos import children
from oneos.broker import free_port  # noqa: F401 - the one helper, for tests and bench


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05,
               wake: Callable[[float], object] | None = None):
    """Poll `predicate` until it returns something truthy; fail with `what` at the deadline.

    Between polls it sleeps `interval`, or calls `wake(seconds_left)` when given: a wake returns
    once what the predicate reads may have changed (tests.cluster.Changes: a blocking query).
    """
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - reported below if the deadline passes
            last_exc = exc
        left = deadline - time.monotonic()
        if left < 0:
            detail = f" (last error: {last_exc})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")
        if wake is None:
            time.sleep(interval)
        else:
            wake(left)


def sleep_until(deadline: float) -> None:
    """Let time pass until `deadline` (time.monotonic()); for tests that observe timers, not readiness."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


# -- /proc: whether a process runs, and what it started -----------------------------------------

def stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on: index n-3 holds field n of proc(5); None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def process_alive(pid: int) -> bool:
    """The process exists and is not a zombie (dead, waiting for its parent to reap it)."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot): tells a pid from a later one that reuses it."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None


def children_by_parent() -> dict[int, list[int]]:
    """pid -> its children's pids, from one pass over /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = stat_fields(int(entry.name))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def descendants(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """Every process below `pid` (children from `children_by_parent()`, read now if not given)."""
    children = children_by_parent() if children is None else children
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def processes_mentioning(text: str) -> list[str]:
    """'pid: command line' of every process whose command line contains `text`."""
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


def venv_bin(name: str) -> str:
    """The path of a console script installed next to this Python."""
    return str(Path(sys.executable).parent / name)


class Proc:
    """A child process whose output goes to a log file; `stop()` is safe to call twice."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None,
                 cwd: str | Path | None = None, stdin=subprocess.DEVNULL) -> None:
        self.argv = argv
        self.log_path = log
        self.env = env
        self.cwd = cwd
        self.stdin = stdin
        self.popen: subprocess.Popen | None = None

    def start(self) -> "Proc":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        env = dict(os.environ, **(self.env or {}))
        if threading.current_thread() is threading.main_thread():
            # Killed with the test process even when its fixtures never run (a worker ended by
            # pytest-timeout, or killed): no Name Server or node outlives the run that started it.
            self.popen = children.spawn(self.argv, death_signal=signal.SIGKILL, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=self.stdin, env=env, cwd=self.cwd)
        else:   # the death signal would come when that thread ends, not the process
            self.popen = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=self.stdin,
                                          env=env, cwd=self.cwd, start_new_session=True)
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill9(self) -> None:
        """SIGKILL the process (and its group), as a crash would."""
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(10)

    def terminate(self, timeout: float = 15) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit in time."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.popen.returncode

    def stop(self) -> None:
        """Stop the process and anything left in its process group."""
        if self.popen is None:
            return
        self.terminate()
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class NameServerProc(Proc):
    """The built-in Name Server on a free port, with its data in `data_dir`; HTTPS with `tls`
    (tests.tlsfiles.TLSFiles), asking clients for certificates with `verify_incoming`."""

    def __init__(self, data_dir: Path, port: int | None = None, extra: list[str] | None = None,
                 tls=None, verify_incoming: bool = False) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        tls_args = tls.server_args(verify_incoming) if tls else []
        super().__init__([venv_bin("oneos-nameserver"), "--listen", f"127.0.0.1:{self.port}",
                          "--data-dir", str(data_dir)] + tls_args + (extra or []),
                         data_dir.parent / f"{data_dir.name}.log")

    def start(self) -> "NameServerProc":
        super().start()
        wait_until(self._ready, 20, f"the Name Server on {self.url} (log: {self.log_path})")
        return self

    def _ready(self) -> bool:
        if not self.alive():
            raise AssertionError(f"oneos-nameserver exited with {self.popen.returncode}:\n{self.log()}")
        try:
            tls = {"verify": str(self.tls.ca), "cert": (str(self.tls.client_cert), str(self.tls.client_key))} \
                if self.tls else {}
            return requests.get(self.url + "/v1/status/leader", timeout=1, **tls).status_code == 200
        except requests.ConnectionError:
            return False


class OneosdProc(Proc):
    """One `oneosd RUNTIME_ID` with a home of its own, pointed at a Name Server (by `env`, Consul's
    variables, when `nameserver` is None)."""

    def __init__(self, node_id: str | None, home: Path, nameserver: str | None, extra: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.node_id = node_id
        self.home = home
        argv = [venv_bin("oneosd")] + ([node_id] if node_id else []) + (extra or [])
        named = {"ONEOS_NAMESERVER": nameserver} if nameserver is not None else {}
        super().__init__(argv, home / f"oneosd-{node_id or 'default'}.log",
                         env={"ONEOS_HOME": str(home), **named, **(env or {})})


ANY_EXIT = range(-64, 256)   # every exit status, and death by any signal (-N)


def cli(name: str, *args: str, env: dict[str, str] | None = None, cwd: str | Path | None = None,
        input: str | bytes | None = None, ok_code: int | Iterable[int] = 0, timeout: float = 60,
        text: bool = True) -> subprocess.CompletedProcess:
    """Run one of the project's commands (a console script next to this Python, or a path) as a
    user would, through sh: no terminal, stdin `input` (else empty), the environment with `env`.

    stdout and stderr come back as text (bytes with text=False). An exit status not in `ok_code`
    raises sh.ErrorReturnCode, whose message shows the command line, stdout and stderr: a test that
    expects success needs no assert of its own; one that expects a failure names the status
    (`ok_code=2`), or takes any (`ok_code=ANY_EXIT`) to look at it.
    """
    command = sh.Command(name if os.sep in name else venv_bin(name))
    done = command(*args, _env=dict(os.environ, **(env or {})), _cwd=cwd, _in=input if input is not None else b"",
                   _ok_code=[ok_code] if isinstance(ok_code, int) else list(ok_code), _timeout=timeout,
                   _tty_out=False, _truncate_exc=False, _return_cmd=True,
                   # sh reads line by line by default, about 7 µs a line: 64 KiB chunks read 1M lines
                   # in 0.2 s instead of 7 s (and 0, unbuffered, reads a byte at a time).
                   _out_bufsize=65536, _err_bufsize=65536)
    out, err = (done.stdout.decode(), done.stderr.decode()) if text else (done.stdout, done.stderr)
    return subprocess.CompletedProcess([str(command), *args], done.exit_code, out, err)


def run_cli(argv: list[str], env: dict[str, str] | None = None, timeout: float = 60,
            input: bytes | None = None, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run one of the project's commands as a user would, whatever its exit status; stdout and stderr
    as text (as bytes when `input` is bytes)."""
    return cli(argv[0], *argv[1:], env=env, input=input, ok_code=ANY_EXIT, timeout=timeout, text=input is None,
               cwd=cwd)


def in_process(main: Callable[[list[str]], int], *args: str, cwd: str | Path, stdin: str | None = None,
               name: str = "oneosctl") -> subprocess.CompletedProcess:
    """main(args) run in this process as its console script runs it, in folder `cwd` with `stdin`
    (else empty): its exit status (SystemExit's too), stdout and stderr as text. For commands
    that start no thread and no process (validate, compile): hundreds of times cheaper than
    a process, so each test file keeps one check of the installed command and runs the rest here."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="")
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="")
    inp = io.TextIOWrapper(io.BytesIO((stdin or "").encode()), encoding="utf-8")
    here = os.getcwd()
    os.chdir(cwd)
    saved_stdin, sys.stdin = sys.stdin, inp
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.stdin = saved_stdin
        os.chdir(here)
    out.flush()
    err.flush()
    return subprocess.CompletedProcess([name, *args], code, out.buffer.getvalue().decode(),
                                       err.buffer.getvalue().decode())


class BrokerProc(Proc):
    """pulsar-lite through `oneos-broker` on free ports, with its data in `data_dir`.

    It may be killed (`kill9`, a crash: what it stored must survive), paused (`pause`: it
    accepts nothing and answers nothing, without disconnecting anyone) and started again on
    the same port and data (`start`).
    """

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.metrics_port = free_port()
        self.data_dir = data_dir
        self.url = f"pulsar://127.0.0.1:{self.port}"
        super().__init__([venv_bin("oneos-broker"), "--listen", f"127.0.0.1:{self.port}", "--data-dir",
                          str(data_dir), "--metrics", f"127.0.0.1:{self.metrics_port}"],
                         data_dir.parent / f"{data_dir.name}.log")

    def start(self) -> "BrokerProc":
        super().start()
        wait_until(self._ready, 20, f"pulsar-lite on {self.url} (log: {self.log_path})")
        return self

    def _ready(self) -> bool:
        if not self.alive():
            raise AssertionError(f"oneos-broker exited with {self.popen.returncode}:\n{self.log()}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGCONT)

    def kill9(self) -> None:
        self.resume()   # a stopped process dies of SIGKILL too, but its sockets close only once it runs
        super().kill9()

    def stop(self) -> None:
        self.resume()
        super().stop()

    def metric(self, name: str) -> float:
        """One value from the broker's Prometheus metrics."""
        text = requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)
