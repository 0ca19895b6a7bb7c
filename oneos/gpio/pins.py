"""The pin layer: what `oneos-gpio` needs from a board, and which board this process has.

A Board knows its pin names and opens pins. An input pin is read (0 or 1); an output
pin is written, and becomes an output only at its first write, driven straight to that
value (a restarted actuator does not pulse its pin low first). The boards themselves
(sim.py, blinka.py) build on this module; `oneos.gpio.cli.open_board` picks one.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod

from oneos.errors import OneOSError, UsageError

#: The environment variable that selects the simulated board (its directory).
SIM_ENV = "ONEOS_GPIO_SIM"

PULLS = ("up", "down")

_VALUES = {"0": 0, "1": 1, "off": 0, "on": 1, "false": 0, "true": 1, "low": 0, "high": 1}
#: What a line may say, for messages.
VALUE_WORDS = "0 or 1, on or off, true or false, high or low"


class PinError(OneOSError):
    """The board or a pin cannot do what was asked (exit status 1)."""


class UnknownPin(UsageError):
    """A pin name this board does not have (exit status 2)."""


def parse_value(text: str) -> int | None:
    """0 or 1 from `0`/`1`, `off`/`on`, `false`/`true`, `low`/`high` (any case); None otherwise."""
    return _VALUES.get(text.strip().lower())


def natural_key(name: str) -> tuple:
    """Sort D2 before D10, and the D pins before the other names (SDA, MOSI, ...)."""
    return (0 if re.fullmatch(r"D\d+", name) else 1,
            *(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)))


class InputPin(ABC):
    @abstractmethod
    def read(self) -> int:
        """The pin's level now: 0 or 1."""

    def close(self) -> None:
        """Release the pin."""


class OutputPin(ABC):
    @abstractmethod
    def write(self, value: int) -> None:
        """Drive the pin to 0 or 1 (the first write makes it an output)."""

    def close(self) -> None:
        """Release the pin."""


class Board(ABC):
    #: How messages name this board, e.g. "the simulated board /tmp/b" or "this RASPBERRY_PI_4B".
    description: str = "this board"

    @abstractmethod
    def pins(self) -> list[str]:
        """Every pin name this board accepts (aliases included), in natural order."""

    @abstractmethod
    def _lookup(self, name: str) -> object | None:
        """The board's own handle for a pin name in upper case, or None when it has no such pin."""

    @abstractmethod
    def input(self, name: str, pull: str | None = None) -> InputPin:
        """Open `name` as an input; `pull` is 'up', 'down' or None. Raises UnknownPin, PinError."""

    @abstractmethod
    def output(self, name: str) -> OutputPin:
        """Claim `name` for output (its level is set by the first write). Raises UnknownPin, PinError."""

    def resolve(self, name: str) -> object:
        """The pin `name` (case does not matter) or UnknownPin saying how to list valid pins."""
        found = self._lookup(name.strip().upper()) if name.strip() else None
        if found is None:
            raise UnknownPin(f"unknown pin {name!r} on {self.description}{self._unknown_hint()}; "
                             "run 'oneos-gpio pins' to list the valid pins")
        return found

    def _unknown_hint(self) -> str:
        return ""
