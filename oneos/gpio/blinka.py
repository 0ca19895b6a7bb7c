"""The real board, through Adafruit Blinka's `board` and `digitalio` (CircuitPython's API on Linux).

`board` and `digitalio` are imported only when this board is used, and whatever they
print while importing (Blinka warns on stdout on some machines) goes to stderr: stdout
belongs to the pipeline.
"""

from __future__ import annotations

import contextlib
import sys
from types import ModuleType

from oneos.gpio.pins import Board, InputPin, OutputPin, PinError, SIM_ENV, natural_key


def _quietly(action):
    """Run `action` with anything it prints sent to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        return action()


def _is_pin(value: object) -> bool:
    # Every Blinka pin class is called Pin (microcontroller.pin.Pin on each chip); `board` also
    # holds modules, strings and None for pins a board lacks. Importing microcontroller to
    # compare classes would print a warning on some machines, so compare by name.
    return type(value).__name__ == "Pin" and hasattr(value, "id")


class BlinkaBoard(Board):
    def __init__(self) -> None:
        self._board: ModuleType | None = None
        self._digitalio: ModuleType | None = None
        self.description = "this board"

    def _modules(self) -> tuple[ModuleType, ModuleType]:
        if self._board is None:
            def load():
                import board
                import digitalio
                return board, digitalio
            try:
                self._board, self._digitalio = _quietly(load)
            except Exception as exc:  # noqa: BLE001 - Blinka raises many kinds on unknown machines
                raise PinError(f"Blinka cannot use this machine's GPIO: {_one_line(exc)}; "
                               f"set {SIM_ENV}=DIR to use a simulated board") from None
            self.description = f"this {getattr(self._board, 'board_id', None) or 'unknown'} board"
        return self._board, self._digitalio

    def pins(self) -> list[str]:
        board, _ = self._modules()
        return sorted((name for name in dir(board) if name.isupper() and _is_pin(getattr(board, name))),
                      key=natural_key)

    def _lookup(self, name: str) -> object | None:
        board, _ = self._modules()
        value = getattr(board, name, None) if name.isupper() else None
        return value if _is_pin(value) else None

    def _unknown_hint(self) -> str:
        if not self.pins():
            return f", which has no GPIO pins that Blinka knows (set {SIM_ENV}=DIR for a simulated board)"
        return ""

    def _open(self, name: str):
        pin = self.resolve(name)
        _, digitalio = self._modules()
        try:
            return _quietly(lambda: digitalio.DigitalInOut(pin)), digitalio
        except Exception as exc:  # noqa: BLE001 - permission, busy line, missing gpiod ...
            raise PinError(f"cannot open pin {name.upper()} on {self.description}: {_one_line(exc)}") from None

    def input(self, name: str, pull: str | None = None) -> InputPin:
        io, digitalio = self._open(name)
        try:
            io.switch_to_input(pull={"up": digitalio.Pull.UP, "down": digitalio.Pull.DOWN}.get(pull or ""))
        except Exception as exc:  # noqa: BLE001
            io.deinit()
            raise PinError(f"cannot make pin {name.upper()} an input: {_one_line(exc)}") from None
        return BlinkaInput(io, name.upper())

    def output(self, name: str) -> OutputPin:
        io, _ = self._open(name)
        return BlinkaOutput(io, name.upper())


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


class BlinkaInput(InputPin):
    def __init__(self, io, name: str) -> None:
        self.io = io
        self.name = name

    def read(self) -> int:
        try:
            return 1 if self.io.value else 0
        except Exception as exc:  # noqa: BLE001
            raise PinError(f"cannot read pin {self.name}: {_one_line(exc)}") from None

    def close(self) -> None:
        self.io.deinit()


class BlinkaOutput(OutputPin):
    def __init__(self, io, name: str) -> None:
        self.io = io
        self.name = name
        self.is_output = False

    def write(self, value: int) -> None:
        try:
            if self.is_output:
                self.io.value = bool(value)
            else:
                self.io.switch_to_output(value=bool(value))
                self.is_output = True
        except Exception as exc:  # noqa: BLE001
            raise PinError(f"cannot set pin {self.name}: {_one_line(exc)}") from None

    def close(self) -> None:
        self.io.deinit()
