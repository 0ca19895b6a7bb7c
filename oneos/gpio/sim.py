"""A simulated board: a Raspberry Pi's 40-pin header whose pins are files in a directory.

Selected with `ONEOS_GPIO_SIM=DIR` (a node started with it passes it to its agents; a
node's config `gpio: {simulate: DIR}` does the same). The directory is created when
first used. For each pin that has been used, by its Blinka name (aliases such as SDA or
MOSI map to the D pin they are on a Raspberry Pi):

    DIR/D4             the pin's level: "0\\n" or "1\\n"
    DIR/D4.direction   "in\\n" or "out\\n": how the program using it opened it

Every write is atomic (a temporary file renamed over the old one), so a reader never sees
half a value. From outside:

- drive an input:    `oneos-gpio sim set D4 1 --board DIR`, `SimBoard(DIR).set("D4", 1)`,
                     or any atomic write of the file (a plain `echo 1 > DIR/D4` works too:
                     the pin reads an empty file as "unchanged");
- observe an output: `oneos-gpio sim get D7 --board DIR`, `SimBoard(DIR).get("D7")`, or read the file;
- see everything:    `oneos-gpio sim show --board DIR`.

An input pin whose file does not exist yet reads 0 (1 with a pull-up) and gets that file
when it is opened. An output pin's file is written at its first write.
"""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path

from oneos.gpio.pins import Board, InputPin, OutputPin, PinError, natural_key, parse_value

#: The Raspberry Pi 40-pin header as Blinka names it (adafruit_blinka/board/raspberrypi/raspi_40pin.py).
ALIASES = {
    "SDA": "D2", "SCL": "D3", "CE1": "D7", "CE0": "D8", "MISO": "D9", "MOSI": "D10", "SCLK": "D11", "SCK": "D11",
    "TXD": "D14", "RXD": "D15", "TX": "D14", "RX": "D15",
    "MISO_1": "D19", "MOSI_1": "D20", "SCLK_1": "D21", "SCK_1": "D21",
}
GPIOS = [f"D{n}" for n in range(28)]

_counter = itertools.count()


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{next(_counter)}.tmp")


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename: readers see the old content or the new, never a mix."""
    tmp = _tmp_name(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_atomic(path: Path, text: str) -> None:
    """Give `path` this content unless it exists already (never overwrites a concurrent write)."""
    tmp = _tmp_name(path)
    try:
        tmp.write_text(text)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


class SimBoard(Board):
    """The simulated board in `directory`; also the Python API that drives and observes it."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.dir = Path(os.path.abspath(Path(directory).expanduser()))
        self.description = f"the simulated board {self.dir}"

    # The pin layer.

    def pins(self) -> list[str]:
        return sorted([*GPIOS, *ALIASES], key=natural_key)

    def _lookup(self, name: str) -> str | None:
        name = ALIASES.get(name, name)
        return name if name in GPIOS else None

    def input(self, name: str, pull: str | None = None) -> InputPin:
        pin = self.resolve(name)
        default = 1 if pull == "up" else 0
        self._prepare()
        self._guard(lambda: write_atomic(self._direction_path(pin), "in\n"))
        self._guard(lambda: create_atomic(self._value_path(pin), f"{default}\n"))
        return SimInput(self, pin, default)

    def output(self, name: str) -> OutputPin:
        pin = self.resolve(name)
        self._prepare()
        # As Blinka's DigitalInOut, a claimed pin is an input until its first write.
        self._guard(lambda: write_atomic(self._direction_path(pin), "in\n"))
        return SimOutput(self, pin)

    # Driving and observing from outside (tests, demos, `oneos-gpio sim`).

    def set(self, name: str, value: int) -> None:
        """Put `value` (0 or 1) on the pin, as a signal from outside would."""
        if value not in (0, 1):
            raise ValueError(f"a pin value is 0 or 1, not {value!r}")
        pin = self.resolve(name)
        self._prepare()
        self._guard(lambda: write_atomic(self._value_path(pin), f"{value}\n"))

    def get(self, name: str) -> int | None:
        """The pin's level: 0 or 1, None when nothing has set or opened it yet."""
        pin = self.resolve(name)
        return self._read(pin, None)

    def direction(self, name: str) -> str | None:
        """'in' or 'out' as the program using the pin opened it; None when none has."""
        try:
            return self._direction_path(self.resolve(name)).read_text().strip() or None
        except FileNotFoundError:
            return None

    def show(self) -> list[tuple[str, str | None, int | None]]:
        """(pin, direction, value) of every pin that has a file, in natural order."""
        used = []
        for pin in sorted(GPIOS, key=natural_key):
            value, direction = self._read(pin, None), self.direction(pin)
            if value is not None or direction is not None:
                used.append((pin, direction, value))
        return used

    # Files.

    def _value_path(self, pin: str) -> Path:
        return self.dir / pin

    def _direction_path(self, pin: str) -> Path:
        return self.dir / f"{pin}.direction"

    def _prepare(self) -> None:
        self._guard(lambda: self.dir.mkdir(parents=True, exist_ok=True))

    def _guard(self, action):
        try:
            return action()
        except OSError as exc:
            raise PinError(f"{self.description}: {exc.filename or self.dir}: {exc.strerror}") from None

    def _read(self, pin: str, last: int | None) -> int | None:
        """The value in the pin's file; `last` when the file is missing or empty (being rewritten)."""
        path = self._value_path(pin)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return last
        except OSError as exc:
            raise PinError(f"{self.description}: {path}: {exc.strerror}") from None
        if not text.strip():
            return last
        value = parse_value(text)
        if value is None:
            raise PinError(f"{self.description}: pin {pin}'s file {path} holds {text.strip()[:40]!r}, not 0 or 1")
        return value


class SimInput(InputPin):
    def __init__(self, board: SimBoard, pin: str, default: int) -> None:
        self.board = board
        self.pin = pin
        self.last = default

    def read(self) -> int:
        self.last = self.board._read(self.pin, self.last)
        return self.last


class SimOutput(OutputPin):
    def __init__(self, board: SimBoard, pin: str) -> None:
        self.board = board
        self.pin = pin
        self.is_output = False

    def write(self, value: int) -> None:
        self.board._guard(lambda: write_atomic(self.board._value_path(self.pin), f"{value}\n"))
        if not self.is_output:
            self.board._guard(lambda: write_atomic(self.board._direction_path(self.pin), "out\n"))
            self.is_output = True
