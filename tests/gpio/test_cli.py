"""`oneos-gpio` as a pipeline runs it: a real process on the simulated board, driven from outside."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading

import pytest

from oneos.gpio.sim import SimBoard
from tests.procs import ANY_EXIT, cli, venv_bin, wait_until

DEADLINE = 10.0


def gpio_env(board_dir=None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ONEOS_GPIO_SIM"}
    if board_dir is not None:
        env["ONEOS_GPIO_SIM"] = str(board_dir)
    return env


def gpio(*argv: str, board_dir=None, input: str | None = None) -> subprocess.CompletedProcess:
    # An empty ONEOS_GPIO_SIM is no simulated board, as if unset (whatever this environment has).
    return cli("oneos-gpio", *argv, env={"ONEOS_GPIO_SIM": str(board_dir) if board_dir is not None else ""},
               input=input, ok_code=ANY_EXIT)


class Stage:
    """A running `oneos-gpio` whose stdout lines arrive in a queue (so a test can wait with a deadline)."""

    def __init__(self, *argv: str, board_dir, stdin=subprocess.DEVNULL) -> None:
        self.proc = subprocess.Popen([venv_bin("oneos-gpio"), *argv], stdin=stdin, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=gpio_env(board_dir))
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for raw in self.proc.stdout:
            self.lines.put(raw.decode())
        self.lines.put(None)

    def next_line(self, timeout: float = DEADLINE) -> str | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line from {self.proc.args} within {timeout}s") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stderr):
            if stream:
                stream.close()


@pytest.fixture
def board(tmp_path) -> SimBoard:
    return SimBoard(tmp_path / "board")


@pytest.fixture
def stages():
    started: list[Stage] = []

    def start(*argv, **kw) -> Stage:
        stage = Stage(*argv, **kw)
        started.append(stage)
        return stage
    yield start
    for stage in started:
        stage.stop()


def test_watch_prints_the_level_at_once_then_each_change(board, stages):
    watch = stages("watch", "D4", "--interval", "5ms", board_dir=board.dir)
    assert watch.next_line() == "0\n"             # a fresh input pin reads 0
    assert board.direction("D4") == "in"
    board.set("D4", 1)
    assert watch.next_line() == "1\n"
    board.set("D4", 0)
    assert watch.next_line() == "0\n"
    board.set("D4", 0)                             # not a change: no line
    board.set("D4", 1)
    assert watch.next_line() == "1\n"
    assert watch.lines.empty()


def test_watch_starts_from_the_level_the_pin_has(board, stages):
    board.set("D17", 1)
    watch = stages("watch", "d17", board_dir=board.dir)   # names are Blinka's, in any case
    assert watch.next_line() == "1\n"
    # A shell's `echo 0 > D17` truncates, then writes: the empty file in between is no change.
    (board.dir / "D17").write_text("")
    (board.dir / "D17").write_text("0\n")
    assert watch.next_line() == "0\n"


def test_watch_ends_by_sigpipe_as_soon_as_its_reader_has_gone(board):
    # `oneos-gpio watch D4 | head -1`: head reads a line and is done.
    with subprocess.Popen([venv_bin("oneos-gpio"), "watch", "D4"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=gpio_env(board.dir)) as watch:
        try:
            assert watch.stdout.readline() == b"0\n"
            watch.stdout.close()
            # No change on the pin is needed for it to notice.
            assert watch.wait(DEADLINE) == -signal.SIGPIPE
            assert watch.stderr.read() == b""
        finally:
            watch.kill()


def test_read_prints_the_level_once(board):
    assert (gpio("read", "D5", board_dir=board.dir).stdout) == "0\n"
    board.set("D5", 1)
    done = gpio("read", "D5", board_dir=board.dir)
    assert (done.returncode, done.stdout, done.stderr) == (0, "1\n", "")
    assert gpio("read", "SDA", board_dir=board.dir).stdout == "0\n"   # an alias of D2
    board.set("D2", 1)
    assert gpio("read", "SDA", board_dir=board.dir).stdout == "1\n"


def test_a_pull_up_makes_an_untouched_input_read_1(board):
    assert gpio("read", "D6", "--pull", "up", board_dir=board.dir).stdout == "1\n"


def test_write_sets_the_pin_from_each_line_as_it_comes(board, stages):
    write = stages("write", "D7", board_dir=board.dir, stdin=subprocess.PIPE)

    def send(line: str) -> None:
        write.proc.stdin.write(line.encode())
        write.proc.stdin.flush()

    send("1\n")
    wait_until(lambda: board.get("D7") == 1 and board.direction("D7") == "out", DEADLINE, "D7 to be driven to 1")
    for line, level in (("off\n", 0), ("  HIGH \r\n", 1), ("false\n", 0), ("On\n", 1), ("low\n", 0), ("true\n", 1)):
        send(line)
        wait_until(lambda: board.get("D7") == level, DEADLINE, f"D7 to follow {line!r}")
    write.proc.stdin.close()
    assert write.proc.wait(DEADLINE) == 0
    assert write.proc.stderr.read() == b""
    assert board.get("D7") == 1
    assert not [p for p in board.dir.iterdir() if p.name.endswith(".tmp")]   # atomic writes leave nothing


def test_write_reports_a_bad_line_skips_it_and_ends_with_status_1(board):
    done = gpio("write", "D7", board_dir=board.dir, input="1\n\nmaybe\n0\n2\n")
    assert done.returncode == 1
    assert board.get("D7") == 0                     # the good lines after a bad one were applied
    lines = done.stderr.splitlines()
    assert len(lines) == 2, done.stderr
    assert lines[0].startswith("oneos-gpio: write D7: line 3: 'maybe' is not a pin value")
    assert "line 5: '2'" in lines[1] and "0 or 1" in lines[1]
    assert done.stdout == ""


def test_write_without_a_last_newline_and_an_empty_input(board):
    assert gpio("write", "D8", board_dir=board.dir, input="0\n1").returncode == 0
    assert board.get("D8") == 1
    done = gpio("write", "D9", board_dir=board.dir, input="")
    assert (done.returncode, done.stderr) == (0, "")
    assert board.get("D9") is None                  # never written: not made an output
    assert board.direction("D9") == "in"


@pytest.mark.parametrize("command", [["watch", "D99"], ["read", "GPIO4"], ["write", "X"]])
def test_an_unknown_pin_is_one_line_and_status_2(board, command):
    done = gpio(*command, board_dir=board.dir, input="")
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert f"unknown pin {command[1]!r}" in lines[0] and "oneos-gpio pins" in lines[0]
    assert str(board.dir) in lines[0]


def test_pins_lists_the_simulated_header(board):
    done = gpio("pins", board_dir=board.dir)
    names = done.stdout.split()
    assert done.returncode == 0
    assert names[:3] == ["D0", "D1", "D2"] and "D27" in names and "D28" not in names
    assert {"SDA", "SCL", "MOSI", "MISO", "SCK", "TX", "RX"} <= set(names)


def test_blinka_is_the_board_without_ONEOS_GPIO_SIM():
    pins = gpio("pins")
    if "D4" in pins.stdout.split():
        pytest.skip("this machine has real GPIO pins")
    done = gpio("read", "D4")
    assert done.returncode == 2
    assert done.stdout == ""                        # Blinka's warnings never reach stdout
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "unknown pin 'D4'" in lines[0] and "no GPIO pins" in lines[0]
    assert "ONEOS_GPIO_SIM=DIR" in lines[0] and "oneos-gpio pins" in lines[0]
    assert "simulated board /" not in lines[0]


def test_a_file_that_is_not_a_level_is_a_clear_error(board):
    board.dir.mkdir(parents=True)
    (board.dir / "D4").write_text("banana\n")
    done = gpio("read", "D4", board_dir=board.dir)
    assert done.returncode == 1
    assert "banana" in done.stderr and "not 0 or 1" in done.stderr and str(board.dir / "D4") in done.stderr


def test_a_bad_interval_is_a_usage_error(board):
    done = gpio("watch", "D4", "--interval", "0", board_dir=board.dir)
    assert done.returncode == 2 and "interval" in done.stderr
    done = gpio("watch", "D4", "--interval", "soon", board_dir=board.dir)
    assert done.returncode == 2 and "not a duration" in done.stderr


def test_sim_set_get_and_show_drive_and_observe_the_board(board):
    assert gpio("sim", "set", "D4", "1", "--board", str(board.dir)).returncode == 0
    assert (board.dir / "D4").read_text() == "1\n"
    assert gpio("sim", "get", "D4", "--board", str(board.dir)).stdout == "1\n"
    assert gpio("sim", "set", "sda", "high", board_dir=board.dir).returncode == 0   # $ONEOS_GPIO_SIM, alias, word
    assert board.get("D2") == 1
    gpio("write", "D7", board_dir=board.dir, input="1\n")
    shown = gpio("sim", "show", board_dir=board.dir).stdout.splitlines()
    assert [line.split() for line in shown] == [["D2", "-", "1"], ["D4", "-", "1"], ["D7", "out", "1"]]

    unset = gpio("sim", "get", "D9", board_dir=board.dir)
    assert unset.returncode == 1 and "no value yet" in unset.stderr
    bad = gpio("sim", "set", "D4", "maybe", board_dir=board.dir)
    assert bad.returncode == 2 and "'maybe' is not a pin value" in bad.stderr
    nowhere = gpio("sim", "get", "D4")
    assert nowhere.returncode == 2 and "--board DIR" in nowhere.stderr and "ONEOS_GPIO_SIM" in nowhere.stderr


def test_the_python_api_drives_and_observes_the_same_files(board):
    assert board.get("D4") is None and board.direction("D4") is None
    board.set("MOSI", 1)
    assert (board.dir / "D10").read_text() == "1\n"
    with pytest.raises(ValueError):
        board.set("D4", 2)
    assert gpio("read", "D10", board_dir=board.dir).stdout == "1\n"
