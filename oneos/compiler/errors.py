"""`CompileError`: what is wrong with a one-liner, shown with a caret under the column."""

from __future__ import annotations

import unicodedata

from oneos.errors import UsageError

PREFIX = "oneosctl: cannot compile: "
INDENT = "    "
# A long line is shown as this many characters each side of the column, with '...'.
WINDOW = 60
ELLIPSIS = "..."


class CompileError(UsageError):
    """A one-liner that cannot be compiled.

    The message is `oneosctl: cannot compile: WHAT at column N`, then the
    one-liner, then a caret under column N (1-based characters of the line);
    without a column it is the first line alone.
    """

    def __init__(self, what: str, line: str | None = None, column: int | None = None) -> None:
        self.what = what
        self.line = line
        self.column = column
        if line is None or column is None:
            message = PREFIX + what
        else:
            shown, caret = excerpt(line, column)
            message = f"{PREFIX}{what} at column {column}\n{INDENT}{shown}\n{INDENT}{caret}"
        super().__init__(message)


def visible(text: str) -> str:
    """`text` with each control or non-text character replaced by one printable character.

    Keeps one character per character, so that a caret still lines up, and keeps
    escape sequences in hostile input away from the terminal.
    """
    return "".join(_visible_char(c) for c in text)


def _visible_char(c: str) -> str:
    code = ord(c)
    if code < 0x20:
        return chr(0x2400 + code)  # the Control Pictures block: NUL -> U+2400, LF -> U+240A
    if code == 0x7F:
        return "\u2421"
    if 0x80 <= code < 0xA0 or 0xD800 <= code < 0xE000:
        return "\ufffd"
    return c


def _cells(text: str) -> int:
    """How many terminal columns `text` takes: wide characters two, combining marks none."""
    width = 0
    for c in text:
        if unicodedata.combining(c):
            continue
        width += 2 if unicodedata.east_asian_width(c) in "WF" else 1
    return width


def excerpt(line: str, column: int) -> tuple[str, str]:
    """The line as shown (a window of it when long) and the caret line pointing at `column`."""
    index = min(max(column - 1, 0), len(line))
    start, end = 0, len(line)
    if len(line) > 2 * WINDOW + 1:
        start, end = max(0, index - WINDOW), min(len(line), index + WINDOW + 1)
    before = ELLIPSIS if start > 0 else ""
    after = ELLIPSIS if end < len(line) else ""
    shown = before + visible(line[start:end]) + after
    caret = " " * (len(before) + _cells(visible(line[start:index]))) + "^"
    return shown, caret


def snippet(text: str, limit: int = 30) -> str:
    """`text` quoted for a message: printable, and cut short when long."""
    text = visible(text)
    if len(text) > limit:
        text = text[: limit - len(ELLIPSIS)] + ELLIPSIS
    return f'"{text}"' if "'" in text else f"'{text}'"
