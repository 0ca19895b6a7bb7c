"""`oneos-gpio`: GPIO pins as ordinary pipeline stages.

    oneos-gpio watch D4 | python3 controller.py | oneos-gpio write D7

- `watch PIN` prints the pin's level (a line `0` or `1`) at once, then a line at each
  change, until it is stopped; it polls every --interval (10ms), so a pulse shorter
  than that may be missed.
- `read PIN` prints the level once.
- `write PIN` sets the pin from each line of stdin: `0`/`1`, `off`/`on`, `false`/`true`,
  `low`/`high`, in any case, with spaces around ignored; blank lines are skipped. The pin
  becomes an output at the first value. Any other line is reported on stderr with its
  line number and skipped, as coreutils do with bad input; at end of input the status
  is 0, or 1 if some line was skipped.
- `pins` lists the pin names this board accepts.
- `sim set|get|show` drives and observes the simulated board (see oneos.gpio.sim).

Pins are Blinka names (D4, D17, SDA, ...), in any case. The board is Blinka's, or the
simulated board in $ONEOS_GPIO_SIM when that is set. An unknown pin or a usage error
exits 2; a board or pin that cannot be used exits 1. Like any Unix filter, a stage whose
reader has gone dies of SIGPIPE (status 141 in a shell) without a message, and Ctrl-C
stops it with SIGINT's status (130).
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import time
from collections.abc import Mapping

from oneos.durations import parse_seconds
from oneos.errors import OneOSError, UsageError
from oneos.gpio.pins import PULLS, SIM_ENV, VALUE_WORDS, Board, PinError, parse_value

PROG = "oneos-gpio"


def emit(value: int) -> None:
    """One line, flushed: the next stage sees it now, not when a buffer fills."""
    sys.stdout.write(f"{value}\n")
    sys.stdout.flush()


def interval(text: str) -> float:
    try:
        seconds = parse_seconds(text) if not _is_number(text) else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration; use e.g. 10ms, 0.5s or 1s") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the interval must be more than 0")
    return seconds


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class ReaderGone:
    """Waits between polls of a pin, and notices meanwhile when stdout's reader has gone.

    `watch` writes only when the pin changes; without this, `oneos-gpio watch D4 | head -1`
    would linger until the next change. A pipe whose reader closed reports POLLERR; a
    terminal that hung up, POLLHUP. Files and /dev/null report neither.
    """

    def __init__(self, fd: int) -> None:
        self.poller: select.poll | None = select.poll()
        try:
            self.poller.register(fd, 0)   # no events asked for: errors and hangups are always reported
        except (OSError, ValueError):
            self.poller = None

    def wait(self, seconds: float) -> None:
        if self.poller is None:
            time.sleep(seconds)
            return
        events = self.poller.poll(seconds * 1000)
        if any(mask & (select.POLLERR | select.POLLHUP) for _, mask in events):
            broken_pipe()
        if any(mask & select.POLLNVAL for _, mask in events):
            self.poller = None   # stdout is closed: the next write says so


def broken_pipe() -> None:
    """End as a write to a pipe without a reader ends a program: by SIGPIPE when that is not ignored."""
    if signal.getsignal(signal.SIGPIPE) == signal.SIG_DFL:
        signal.raise_signal(signal.SIGPIPE)
    raise BrokenPipeError(32, "the reader of stdout has gone")


def cmd_watch(args: argparse.Namespace, board: Board) -> int:
    pin = board.input(args.pin, args.pull)
    reader = ReaderGone(sys.stdout.fileno())
    last = pin.read()
    emit(last)
    while True:
        reader.wait(args.interval)
        value = pin.read()
        if value != last:
            emit(value)
            last = value


def cmd_read(args: argparse.Namespace, board: Board) -> int:
    pin = board.input(args.pin, args.pull)
    try:
        emit(pin.read())
    finally:
        pin.close()
    return 0


def cmd_write(args: argparse.Namespace, board: Board) -> int:
    pin = board.output(args.pin)
    name = args.pin.upper()
    skipped = 0
    try:
        for number, raw in enumerate(sys.stdin.buffer, 1):
            text = raw.decode("utf-8", "replace").strip()
            if not text:
                continue
            value = parse_value(text)
            if value is None:
                skipped += 1
                shown = text if len(text) <= 60 else text[:57] + "..."
                print(f"{PROG}: write {name}: line {number}: {shown!r} is not a pin value (use {VALUE_WORDS}); "
                      "skipped", file=sys.stderr, flush=True)
                continue
            pin.write(value)
    finally:
        pin.close()
    return 1 if skipped else 0


def cmd_pins(args: argparse.Namespace, board: Board) -> int:
    names = board.pins()
    for name in names:
        sys.stdout.write(name + "\n")
    sys.stdout.flush()
    if not names:
        print(f"{PROG}: {board.description} has no GPIO pins that Blinka knows; "
              f"set {SIM_ENV}=DIR for a simulated board", file=sys.stderr)
    return 0


def open_board(environ: Mapping[str, str] | None = None) -> Board:
    """The simulated board when $ONEOS_GPIO_SIM is set (non-empty), else Blinka's."""
    env = os.environ if environ is None else environ
    directory = env.get(SIM_ENV, "").strip()
    if directory:
        from oneos.gpio.sim import SimBoard
        return SimBoard(directory)
    from oneos.gpio.blinka import BlinkaBoard
    return BlinkaBoard()


def sim_board(args: argparse.Namespace):
    from oneos.gpio.sim import SimBoard
    directory = args.board or os.environ.get(SIM_ENV, "").strip()
    if not directory:
        raise UsageError(f"which simulated board? give --board DIR or set {SIM_ENV}=DIR")
    return SimBoard(directory)


def cmd_sim_set(args: argparse.Namespace, board: Board) -> int:
    value = parse_value(args.value)
    if value is None:
        raise UsageError(f"{args.value!r} is not a pin value; use {VALUE_WORDS}")
    sim_board(args).set(args.pin, value)
    return 0


def cmd_sim_get(args: argparse.Namespace, board: Board) -> int:
    sim = sim_board(args)
    value = sim.get(args.pin)
    if value is None:
        raise PinError(f"pin {args.pin.upper()} of {sim.description} has no value yet: nothing has set or opened it")
    emit(value)
    return 0


def cmd_sim_show(args: argparse.Namespace, board: Board) -> int:
    for pin, direction, value in sim_board(args).show():
        sys.stdout.write(f"{pin:<4} {direction or '-':<3} {'-' if value is None else value}\n")
    sys.stdout.flush()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="GPIO pins as pipeline stages: watch and read print 0/1 lines, write reads them.",
        epilog=f"Pins are Blinka names such as D4 or D17 ('{PROG} pins' lists them). With {SIM_ENV}=DIR the "
               "board is simulated: its pins are files in DIR. Exit status: 0 ok, 1 the board or a pin failed "
               "(or write skipped a bad line), 2 usage or unknown pin.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def pull_option(p):
        p.add_argument("--pull", choices=PULLS, help="enable the pin's pull-up or pull-down resistor")

    watch = commands.add_parser("watch", help="print the pin's level, then each change (lines 0/1)")
    watch.add_argument("pin", metavar="PIN")
    watch.add_argument("--interval", type=interval, default=0.01, metavar="DURATION",
                       help="how often to look at the pin (default 10ms)")
    pull_option(watch)
    watch.set_defaults(run=cmd_watch)

    read = commands.add_parser("read", help="print the pin's level once (0 or 1)")
    read.add_argument("pin", metavar="PIN")
    pull_option(read)
    read.set_defaults(run=cmd_read)

    write = commands.add_parser("write", help="set the pin from each line of stdin (0/1, on/off, true/false, "
                                              "high/low)")
    write.add_argument("pin", metavar="PIN")
    write.set_defaults(run=cmd_write)

    pins = commands.add_parser("pins", help="list the pin names of this board")
    pins.set_defaults(run=cmd_pins)

    sim = commands.add_parser("sim", help="drive and observe the simulated board (its pins are files)")
    sim_commands = sim.add_subparsers(dest="sim_command", metavar="COMMAND", required=True)
    board_help = f"the simulated board's directory (default ${SIM_ENV})"
    sim_set = sim_commands.add_parser("set", help="put a level on a pin, as a signal from outside would")
    sim_set.add_argument("pin", metavar="PIN")
    sim_set.add_argument("value", metavar="VALUE", help=VALUE_WORDS)
    sim_set.add_argument("--board", metavar="DIR", help=board_help)
    sim_set.set_defaults(run=cmd_sim_set, own_board=True)
    sim_get = sim_commands.add_parser("get", help="print a pin's level (0 or 1)")
    sim_get.add_argument("pin", metavar="PIN")
    sim_get.add_argument("--board", metavar="DIR", help=board_help)
    sim_get.set_defaults(run=cmd_sim_get, own_board=True)
    sim_show = sim_commands.add_parser("show", help="list the pins in use: name, direction, level")
    sim_show.add_argument("--board", metavar="DIR", help=board_help)
    sim_show.set_defaults(run=cmd_sim_show, own_board=True)
    return parser


def run(argv: list[str] | None = None) -> int:
    """The command without touching signal handling (for use inside another program)."""
    args = build_parser().parse_args(argv)
    try:
        board = None if getattr(args, "own_board", False) else open_board()
        return args.run(args, board)
    except OneOSError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # Only when SIGPIPE is ignored (main() restores its default): quiet, with a shell's status.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 128 + signal.SIGPIPE


def main(argv: list[str] | None = None) -> int:
    # A filter's reader going away, or Ctrl-C, ends it as it ends cat or grep: by the signal, quietly.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
