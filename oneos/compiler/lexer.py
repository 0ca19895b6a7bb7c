"""The words and operators of a shell one-liner, read the way bash reads them.

`tokenize` makes one pass over the line, without recursion, and refuses each
construct whose meaning would come from a shell or a node's file system (the list
is in `oneos.compiler`). A `Word` holds what bash would pass as one argv entry.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from oneos.compiler.errors import CompileError, snippet

__all__ = ["ASSIGNMENT", "Operator", "Token", "Word", "tokenize"]

PIPE = "|"

# Characters that end an unquoted word (bash's metacharacters).
METACHARACTERS = frozenset(" \t\n|&;()<>")
BLANKS = " \t"

#: `NAME=` at the start of a word, unquoted: an assignment before the command word.
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")

# What follows `$` to make an expansion; after anything else bash keeps the `$`.
_PARAMETER_START = frozenset(string.ascii_letters + string.digits + "_@*#?$!-{")
_PARAMETER = re.compile(r"\$(\{[^}]{0,40}\}?|[A-Za-z_][A-Za-z0-9_]*|.)")
_DIGITS = re.compile(r"[0-9]+")
_NAMED_FD = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")

# Control characters, and what a command line that is not UTF-8 decodes to (lone surrogates).
_FORBIDDEN = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
# Runs of characters that need no attention inside double quotes.
_DOUBLE_QUOTED_PLAIN = re.compile(r'[^"\\$`]+')
_ESCAPED_IN_DOUBLE_QUOTES = '$`"\\\n'

_VARIABLE_HINT = "the node's environment is not yours: pass values with VAR=value or literally"
_SUBSTITUTION_HINT = "run the command first and write its output literally, or make the command a stage of the pipeline"
_REDIRECTIONS_HINT = "use < FILE, > FILE, >> FILE, 2> FILE or 2>> FILE"
_SEPARATE_HINT = "a pipeline is commands joined by '|'; run the others with their own oneosctl run"


@dataclass(frozen=True)
class Word:
    """One shell word: `text` is what bash passes as argv, `raw` how it was written."""

    text: str
    raw: str
    column: int


@dataclass(frozen=True)
class Operator:
    """'|', or a redirection: '<', '>', '>>', '2>' or '2>>'."""

    op: str
    column: int


Token = Word | Operator


def tokenize(line: str) -> list[Token]:
    """The words and operators of `line`; CompileError for anything refused."""
    return _Lexer(line).run()


class _Lexer:
    def __init__(self, line: str) -> None:
        self.line = line
        self.pos = 0
        self.tokens: list[Token] = []

    def fail(self, index: int, what: str) -> CompileError:
        """The error to raise for the character at `index` (0-based)."""
        return CompileError(what, self.line, index + 1)

    def run(self) -> list[Token]:
        self._check_characters()
        line = self.line
        while True:
            while self.pos < len(line) and line[self.pos] in BLANKS:
                self.pos += 1
            if self.pos == len(line):
                return self.tokens
            c = line[self.pos]
            if c == "\n":
                raise self.fail(self.pos, "a newline outside quotes starts another command "
                                          "(write the pipeline on one line; quote an argument that holds a newline)")
            if c in "<>":
                self._redirection(None, self.pos)
            elif c in METACHARACTERS:
                self._operator()
            else:
                self._word_or_descriptor()

    def _check_characters(self) -> None:
        found = _FORBIDDEN.search(self.line)
        if not found:
            return
        c = found.group()
        if 0xD800 <= ord(c) < 0xE000:
            raise self.fail(found.start(), "a byte that is not UTF-8 text (write the one-liner in UTF-8)")
        name = "NUL" if c == "\0" else f"U+{ord(c):04X}"
        raise self.fail(found.start(), f"control character {name} (remove it; only tabs, and newlines inside quotes, "
                                       "are allowed)")

    # ------------------------------------------------------------- operators

    def _operator(self) -> None:
        line, i = self.line, self.pos
        c, after = line[i], line[i + 1 : i + 2]
        if c == "|":
            if after == "|":
                raise self.fail(i, f"'||' (run a command when another fails) is not supported ({_SEPARATE_HINT})")
            if after == "&":
                raise self.fail(i, "'|&' (pipe stderr too) is not supported (send stderr to a file with 2> FILE)")
            self.tokens.append(Operator(PIPE, i + 1))
            self.pos += 1
        elif c == "&":
            if after == "&":
                raise self.fail(i, f"'&&' (run a command when another succeeds) is not supported ({_SEPARATE_HINT})")
            if after == ">":
                raise self.fail(i, "'&>' is not supported (redirect stdout and stderr separately: > FILE 2> OTHER)")
            raise self.fail(i, "'&' (run in the background) is not supported (every stage of a pipeline runs at once "
                               "already; start other pipelines with their own oneosctl run)")
        elif c == ";":
            raise self.fail(i, f"';' (a list of commands) is not supported ({_SEPARATE_HINT})")
        else:
            raise self.fail(i, f"'{c}' (a subshell) is not supported (write the stages without parentheses, "
                               "or quote the character)")

    def _redirection(self, descriptor: str | None, start: int) -> None:
        """The redirection operator at self.pos; `descriptor` is the number written before it, at `start`."""
        line, i = self.line, self.pos
        c, after = line[i], line[i + 1 : i + 2]
        written = (descriptor or "") + c
        if after == "(":
            raise self.fail(start, f"'{c}(' (process substitution) is not supported ({_SUBSTITUTION_HINT})")
        if c == "<":
            if line.startswith("<<<", i):
                raise self.fail(start, "'<<<' (a here-string) is not supported (put the text in a file and use < FILE)")
            if after == "<":
                raise self.fail(start, "'<<' (a here-document) is not supported (put the text in a file and use "
                                       "< FILE)")
            op = "<"
        else:
            op = ">>" if after == ">" else ">"
        if after in ("&", "|") or (c == "<" and after == ">"):
            raise self.fail(start, f"'{written}{after}' is not supported ({_REDIRECTIONS_HINT})")
        if descriptor is not None and (descriptor != "2" or op == "<"):
            raise self.fail(start, f"'{descriptor}{op}' redirects file descriptor {descriptor}, which is not "
                                   f"supported ({_REDIRECTIONS_HINT})")
        self.tokens.append(Operator((descriptor or "") + op, start + 1))
        self.pos = i + len(op)

    # ----------------------------------------------------------------- words

    def _word_or_descriptor(self) -> None:
        word = self._word()
        if self.pos < len(self.line) and self.line[self.pos] in "<>":
            if _DIGITS.fullmatch(word.raw):  # bash reads `2>` as one operator
                self._redirection(word.raw, word.column - 1)
                return
            if _NAMED_FD.fullmatch(word.raw):
                raise self.fail(word.column - 1, f"{snippet(word.raw)} before a redirection allocates a file "
                                                 f"descriptor, which is not supported ({_REDIRECTIONS_HINT})")
        self.tokens.append(word)

    def _word(self) -> Word:
        line, start = self.line, self.pos
        assignment = ASSIGNMENT.match(line, start)
        value_at = assignment.end() if assignment else -1
        out: list[str] = []
        braces: list[list] = []  # unquoted '{' not closed yet: [index, has ',' or '..']
        bracket = -1  # the first unquoted '['
        i = start
        while i < len(line) and line[i] not in METACHARACTERS:
            c = line[i]
            if c == "'":
                end = line.find("'", i + 1)
                if end < 0:
                    raise self.fail(i, "no closing ' for this quote (close it, or escape a literal quote as \\')")
                out.append(line[i + 1 : end])
                i = end + 1
                continue
            if c == '"':
                i = self._double_quoted(i, out)
                continue
            if c == "\\":
                if i + 1 == len(line):  # bash keeps a backslash that ends the line
                    out.append(c)
                    i += 1
                elif line[i + 1] == "\n":
                    raise self.fail(i, "a line continuation (backslash-newline) is not supported "
                                       "(write the pipeline on one line)")
                else:
                    out.append(line[i + 1])
                    i += 2
                continue
            if c == "#" and i == start:
                raise self.fail(i, "comments are not supported (remove the comment, or quote the '#')")
            if c == "$":
                self._dollar(i, quoted=False)
            elif c == "`":
                raise self.fail(i, f"'`' (command substitution) is not supported ({_SUBSTITUTION_HINT})")
            elif c in "*?":
                raise self._glob(i)
            elif c == "[" and bracket < 0:
                bracket = i
            elif c == "~" and (i == start or i == value_at or (value_at >= 0 and line[i - 1] == ":")):
                raise self.fail(i, "'~' (a home directory) is not supported (the node's home is not yours: "
                                   "write the path, or quote the '~')")
            elif c == "{":
                braces.append([i, False])
            elif braces and (c == "," or (c == "." and line[i - 1] == ".")):
                braces[-1][1] = True
            elif c == "}" and braces:
                opening, is_expansion = braces.pop()
                if is_expansion:
                    raise self.fail(opening, "brace expansion {a,b} or {1..3} is not supported "
                                             "(write each word out, or quote the braces)")
            out.append(c)
            i += 1
        if bracket >= 0 and "]" in line[bracket:i]:
            raise self._glob(bracket)
        self.pos = i
        return Word("".join(out), line[start:i], start + 1)

    def _double_quoted(self, opening: int, out: list[str]) -> int:
        """Append the text of the "..." at `opening`; return the index after it."""
        line, i = self.line, opening + 1
        while i < len(line):
            plain = _DOUBLE_QUOTED_PLAIN.match(line, i)
            if plain:
                out.append(plain.group())
                i = plain.end()
                continue
            c = line[i]
            if c == '"':
                return i + 1
            if c == "\\":
                escaped = line[i + 1 : i + 2]
                if escaped and escaped in _ESCAPED_IN_DOUBLE_QUOTES:
                    if escaped != "\n":  # backslash-newline inside "..." disappears, as in bash
                        out.append(escaped)
                    i += 2
                    continue
            elif c == "$":
                self._dollar(i, quoted=True)
            else:  # '`'
                raise self.fail(i, f"'`' (command substitution) is not supported ({_SUBSTITUTION_HINT})")
            out.append(c)
            i += 1
        raise self.fail(opening, 'no closing " for this quote (close it, or escape a literal quote as \\")')

    def _dollar(self, i: int, *, quoted: bool) -> None:
        """Refuse the expansion that `$` at `i` starts; a `$` that starts none stays as it is."""
        line = self.line
        after = line[i + 1 : i + 2]
        if after == "(":
            if line.startswith("((", i + 1):
                raise self.fail(i, "'$((' (arithmetic expansion) is not supported (write the number literally)")
            raise self.fail(i, f"'$(' (command substitution) is not supported ({_SUBSTITUTION_HINT})")
        if after == "[":
            raise self.fail(i, "'$[' (arithmetic expansion) is not supported (write the number literally)")
        if after and after in _PARAMETER_START:
            found = _PARAMETER.match(line, i)
            raise self.fail(i, f"{snippet(found.group())} expands a shell variable, which is not supported "
                               f"({_VARIABLE_HINT})")
        if not quoted and after == "'":
            raise self.fail(i, "$'...' (ANSI-C quoting) is not supported (write the characters inside '...')")
        if not quoted and after == '"':
            raise self.fail(i, '$"..." (locale translation) is not supported (use "..." or \'...\')')

    def _glob(self, i: int) -> CompileError:
        return self.fail(i, f"'{self.line[i]}' is a file name pattern, which would be matched against a node's "
                            "files (quote it to pass it as it is, or list the files)")
