"""Label selectors as Kubernetes writes them (`kubectl get -l`): parse, match, explain.

A selector is requirements joined by ',', all of which a node's labels must meet:

    key=value  key==value   the label is there with this value
    key!=value              the label is not there, or has another value
    key in (a,b)            the label is there with one of these values
    key notin (a,b)         the label is not there, or has none of these values
    key                     the label is there
    !key                    the label is not there

Spaces around words are allowed (`room in (a, b)`). Keys follow the label key pattern
of common.schema.json; a value is any run of characters other than spaces and
`!=(),<>` (a label value holding one of those can be required with `requires.labels`).
`parse` raises SelectorError naming the column (1-based) of what it cannot read.

This is the one parser of label requirements: manifests' selectors (oneos.documents),
the scheduler, and the requirements after `@` in a one-liner (oneos.compiler), which
also allow spaces inside the value of an equality (`label_values`, see `parse`).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Mapping

__all__ = ["Requirement", "SelectorError", "parse", "matches", "GRAMMAR"]

#: What a selector may hold, for error messages.
GRAMMAR = "write KEY=VALUE, KEY!=VALUE, KEY in (A,B), KEY notin (A,B), KEY or !KEY, joined by ','"

LABEL_KEY = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?")
LABEL_KEY_MAX = 253
_KEY_RULE = ("a label key is letters, digits, '-', '_', '.' and '/', starting and ending with a letter "
             f"or digit, at most {LABEL_KEY_MAX} characters")

# A word: anything up to a space or one of the selector's own characters.
_TOKEN = re.compile(r"\s*(?:(?P<op>==|!=|[=!(),<>])|(?P<word>[^\s!=(),<>]+))")
_END = re.compile(r"\s*$")
# An equality's value when it may hold spaces: up to the next ',' or the end, without the blanks around it.
_SPACED_VALUE = re.compile(r"\s*(?P<word>[^\s!=(),<>](?:[^!=(),<>]*[^\s!=(),<>])?)")


class SelectorError(ValueError):
    """A selector that cannot be read: what is wrong, and the column (1-based) where."""

    def __init__(self, what: str, column: int, hint: str = GRAMMAR) -> None:
        self.what = what
        self.column = column
        self.hint = hint
        super().__init__(f"{what} at column {column}; {hint}")


@dataclass(frozen=True)
class Requirement:
    """One requirement of a selector. `op` is '=', '!=', 'in', 'notin', 'exists' or '!'."""

    key: str
    op: str
    values: tuple[str, ...] = ()       # sorted, without duplicates
    column: int = 1

    def matches(self, labels: Mapping[str, str]) -> bool:
        op, value = self.op, labels.get(self.key)
        if op == "=":
            return value is not None and value == self.values[0]
        if op == "!=":
            return value != self.values[0]
        if op == "in":
            return value is not None and value in self.values
        if op == "notin":
            return value is None or value not in self.values
        if op == "exists":
            return value is not None
        return value is None

    @property
    def positive(self) -> bool:
        """Whether only nodes that have the label can meet it (so an index of labels finds them)."""
        return self.op in ("=", "in", "exists")

    def __str__(self) -> str:
        if self.op in ("=", "!="):
            return f"{self.key}{self.op}{self.values[0]}"
        if self.op in ("in", "notin"):
            return f"{self.key} {self.op} ({','.join(self.values)})"
        return self.key if self.op == "exists" else f"!{self.key}"

    def failure(self) -> str:
        """Why a node does not meet it, in the same words whatever the node's own value:
        `missing label gpio=true`, `has label room in (cellar,shed)`, `has label broken`."""
        if self.op in ("=", "in", "exists"):
            return f"missing label {self}"
        if self.op == "!":
            return f"has label {self.key}"
        if self.op == "!=":
            return f"has label {self.key}={self.values[0]}"
        return f"has label {self.key} in ({','.join(self.values)})"


def matches(requirements: tuple[Requirement, ...], labels: Mapping[str, str]) -> bool:
    return all(r.matches(labels) for r in requirements)


@functools.lru_cache(maxsize=4096)
def parse(text: str, label_values: bool = False) -> tuple[Requirement, ...]:
    """The requirements of selector `text`; SelectorError says what is wrong and at which column.

    With `label_values`, the value of `KEY=VALUE` (or `==`) may also hold spaces inside it, as a
    label's value may: such a requirement is met through `requires.labels`, not a selector."""
    return _Parser(text, label_values).run()


class _Parser:
    def __init__(self, text: str, label_values: bool = False) -> None:
        self.text = text
        self.pos = 0
        self.label_values = label_values

    def fail(self, what: str, column: int | None = None, hint: str = GRAMMAR) -> SelectorError:
        return SelectorError(what, column if column is not None else self._column(), hint)

    def _column(self) -> int:
        """The column of the next non-blank character (or just past the end)."""
        rest = len(self.text) - len(self.text[self.pos:].lstrip())
        return rest + 1

    def peek(self) -> tuple[str, str, int] | None:
        """The next token as (kind, text, column) without taking it; None at the end."""
        if _END.match(self.text, self.pos):
            return None
        m = _TOKEN.match(self.text, self.pos)
        if m is None:  # cannot happen: every character is an operator, a blank or part of a word
            raise self.fail(f"unexpected {self.text[self.pos]!r}")
        kind = "op" if m.group("op") else "word"
        return kind, m.group(kind), m.start(kind) + 1

    def take(self) -> tuple[str, str, int] | None:
        token = self.peek()
        if token is not None:
            m = _TOKEN.match(self.text, self.pos)
            assert m is not None
            self.pos = m.end()
        return token

    def run(self) -> tuple[Requirement, ...]:
        if not self.text.strip():
            raise self.fail("an empty selector", 1)
        requirements = []
        while True:
            requirements.append(self.requirement())
            token = self.take()
            if token is None:
                return tuple(requirements)
            kind, text, column = token
            if text != ",":
                raise self.fail(f"expected ',' or the end of the selector, found {text!r}", column)
            if self.peek() is None:
                raise self.fail("nothing after ','")

    def key(self, after: str = "") -> tuple[str, int]:
        token = self.take()
        if token is None or token[0] != "word":
            found = f"found {token[1]!r}" if token else "found nothing"
            where = f" after {after!r}" if after else ""
            column = token[2] if token else None
            raise self.fail(f"expected a label key{where}, {found}", column)
        _, key, column = token
        if len(key) > LABEL_KEY_MAX or not LABEL_KEY.fullmatch(key):
            raise self.fail(f"{key!r} is not a valid label key", column, _KEY_RULE)
        return key, column

    def requirement(self) -> Requirement:
        token = self.peek()
        if token is not None and token[1] == "!":
            self.take()
            key, _ = self.key(after="!")
            return Requirement(key, "!", (), token[2])
        key, column = self.key()
        token = self.peek()
        if token is None or token[1] == ",":
            return Requirement(key, "exists", (), column)
        kind, text, at = token
        if text in ("=", "==", "!="):
            self.take()
            value = self.peek()
            if value is None or value[1] == ",":
                return Requirement(key, "!=" if text == "!=" else "=", ("",), column)
            if value[0] != "word":
                raise self.fail(f"expected a value after '{key}{text}', found {value[1]!r}", value[2])
            spaced = _SPACED_VALUE.match(self.text, self.pos) if self.label_values and text != "!=" else None
            if spaced:
                self.pos = spaced.end()
                return Requirement(key, "=", (spaced.group("word"),), column)
            self.take()
            return Requirement(key, "!=" if text == "!=" else "=", (value[1],), column)
        if kind == "word" and text in ("in", "notin"):
            self.take()
            return Requirement(key, text, self.values(key, text), column)
        if text in ("<", ">"):
            raise self.fail(f"'{text}' (compare numbers) is not supported", at)
        raise self.fail(f"expected '=', '!=', 'in', 'notin', ',' or the end after label key {key!r}, "
                        f"found {text!r}", at)

    def values(self, key: str, op: str) -> tuple[str, ...]:
        hint = f"write {key} {op} (A,B)"
        opening = self.take()
        if opening is None or opening[1] != "(":
            found = f"found {opening[1]!r}" if opening else "found nothing"
            raise self.fail(f"expected '(' after '{key} {op}', {found}", opening[2] if opening else None, hint)
        unclosed = "no ')' closes the '('"
        values: list[str] = []
        while True:
            token = self.take()
            if token is None:
                raise self.fail(unclosed, opening[2], hint)
            kind, text, column = token
            if kind != "word":
                if text == ")" and not values:
                    raise self.fail(f"an empty list after '{key} {op}'", column, hint)
                raise self.fail(f"expected a value in the list after '{key} {op}', found {text!r}", column, hint)
            values.append(text)
            token = self.take()
            if token is None:
                raise self.fail(unclosed, opening[2], hint)
            if token[1] == ")":
                return tuple(sorted(set(values)))
            if token[1] != ",":
                raise self.fail(f"expected ',' or ')' in the list after '{key} {op}', found {token[1]!r}",
                                token[2], hint)
