"""A Pipeline manifest from the tokens of a one-liner: stages, argv, env, redirections, placement, files."""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Collection
from typing import Any

from oneos import selectors
from oneos.selectors import SelectorError
from oneos.compiler.errors import CompileError, snippet
from oneos.compiler.lexer import ASSIGNMENT, PIPE, Operator, Token, Word, tokenize

__all__ = ["INTERPRETERS", "RESERVED_WORDS", "SHELL_BUILTINS", "compile_pipeline", "stage_name"]

# Interpreters whose script, the first argument that is not an option, is shipped when it is a
# local file: the options after which the program is inline (no script file), and the options
# that take a value (the rest of the word, or the next word).
_INTERPRETER_OPTIONS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "python3": (frozenset({"-c", "-m"}), frozenset({"-W", "-X"})),
    "python": (frozenset({"-c", "-m"}), frozenset({"-W", "-X"})),
    "node": (frozenset({"-e", "--eval", "-p", "--print"}), frozenset({"-r", "--require", "--import"})),
    "bash": (frozenset({"-c", "-s"}), frozenset({"-o", "-O", "--rcfile", "--init-file"})),
    "sh": (frozenset({"-c", "-s"}), frozenset({"-o"})),
    "perl": (frozenset({"-e", "-E"}), frozenset()),
    "ruby": (frozenset({"-e"}), frozenset({"-I", "-r"})),
    "Rscript": (frozenset({"-e"}), frozenset()),
}
#: The most stages one pipeline may have (the pipeline schema's limit on agents).
MAX_STAGES = 1000

#: Programs whose script argument is shipped with the manifest.
INTERPRETERS = tuple(_INTERPRETER_OPTIONS)

#: Words bash reads as syntax, not as a program, when unquoted in command position.
RESERVED_WORDS = frozenset(
    "! [[ ]] { } case coproc do done elif else esac fi for function if in select then time until while".split()
)

#: Bash builtins that act on the shell itself; no program on a node can do what they do.
SHELL_BUILTINS = frozenset(
    ". alias bg bind break builtin caller cd command compgen complete compopt continue declare dirs disown "
    "enable eval exec exit export fc fg getopts hash help history jobs let local logout mapfile popd pushd "
    "read readarray readonly return set shift shopt source suspend times trap type typeset ulimit umask "
    "unalias unset wait".split()
)

_NAME_MAX = 63
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_NOT_IN_NAME = re.compile(r"[^a-z0-9-]")
_NODE_ID = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_.]{0,62}")
_APPEND_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\+=")
_PLACEMENT = "@"

# Redirection operator -> (stream, append).
_REDIRECTIONS = {"<": ("stdin", False), ">": ("stdout", False), ">>": ("stdout", True),
                 "2>": ("stderr", False), "2>>": ("stderr", True)}


@dataclass
class _Stage:
    """One stage as parsed: its argv words, env, redirections and placement."""

    column: int
    words: list[Word] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    streams: dict[str, dict] = field(default_factory=dict)  # stdin/stdout/stderr -> {file, append}
    requires: dict[str, Any] = field(default_factory=dict)
    placed_at: int = 0  # the column of '@', once seen


def compile_pipeline(line: str, *, name: str | None = None, base_dir: str | Path | None = None,
                     devices: Collection[str] = ()) -> dict:
    """The Pipeline manifest for shell one-liner `line`; CompileError says what cannot be compiled.

    Local program files named in `line` are looked up in `base_dir` (default: the
    current directory) and listed in the agents' `files`. `devices` are the registered
    devices (KIND/NAME): `/dev/KIND/NAME` named as an argument, or as the file of `<` or
    `>`, makes the stage require that device (so it runs on the node that has it), and
    the node serves it; any other `/dev/` path is the node's own (such as /dev/null).
    """
    if name is not None and not (len(name) <= _NAME_MAX and _NAME.fullmatch(name)):
        raise CompileError(f"{snippet(name)} is not a valid pipeline name (a name is lowercase letters, digits "
                           "and '-', starting and ending with a letter or digit, at most 63 characters)")
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    groups = _split_stages(line, tokenize(line))
    if len(groups) > MAX_STAGES:
        raise CompileError(f"{len(groups)} stages; a pipeline may have at most {MAX_STAGES} (split it into several "
                           "pipelines)", line, _pipe_column(groups[MAX_STAGES]))
    stages = [_parse_stage(line, group, first=i == 0, last=i == len(groups) - 1) for i, group in enumerate(groups)]
    for stage in stages:
        _use_devices(line, stage, frozenset(devices))
    names = _unique_names([stage_name(stage.words[0].text) for stage in stages])
    agents = [_agent(line, stage, agent_name, base) for stage, agent_name in zip(stages, names)]
    agents[0].setdefault("stdin", {})  # the pipeline's standard input: the terminal of oneosctl run
    agents[-1].setdefault("stdout", {})
    links = [{"from": a, "to": b} for a, b in zip(names, names[1:])]
    return {
        "apiVersion": "oneos/v1",
        "kind": "Pipeline",
        "metadata": {"name": name or _pipeline_name(names)},
        "spec": {"agents": agents, "links": links},
    }


def _pipe_column(group: list[Token]) -> int:
    """Where a stage starts: the column of its first token."""
    return group[0].column if group else 1


def _split_stages(line: str, tokens: list[Token]) -> list[list[Token]]:
    if not tokens:
        raise CompileError("nothing to run (give a command, such as 'seq 10 | wc -l')", line, 1)
    groups: list[list[Token]] = [[]]
    last_pipe = 0
    for token in tokens:
        if isinstance(token, Operator) and token.op == PIPE:
            if not groups[-1]:
                where = "before" if len(groups) == 1 else "between '|' and"
                raise CompileError(f"no command {where} this '|' (each stage needs a command)", line, token.column)
            groups.append([])
            last_pipe = token.column
        else:
            groups[-1].append(token)
    if not groups[-1]:
        raise CompileError("no command after this '|' (end the pipeline with a command)", line, last_pipe)
    return groups


DEVICE_ROOT = "/dev/"
GPIO_VERBS = ("watch", "read", "write")


def _use_devices(line: str, stage: _Stage, devices: frozenset[str]) -> None:
    """Registered devices named as /dev/KIND/NAME: arguments, `<` and `>` files -> requires.devices."""
    used = []
    argv = [w.text for w in stage.words]
    if len(argv) >= 3 and argv[0] == "oneos-gpio" and argv[1] in GPIO_VERBS and f"gpio/{argv[2]}" in devices:
        used.append(f"gpio/{argv[2]}")   # oneos-gpio's pin is a device too: run where it is
    for word in stage.words[1:]:
        if word.text.startswith(DEVICE_ROOT) and word.text[len(DEVICE_ROOT):] in devices:
            used.append(word.text[len(DEVICE_ROOT):])
    for stream, target in list(stage.streams.items()):
        path = target.get("file", "")
        if path.startswith(DEVICE_ROOT) and path[len(DEVICE_ROOT):] in devices:
            if stream == "stderr" or target.get("append"):
                raise CompileError(f"{path} is a device: redirect stdin (<) or stdout (>) to it, not "
                                   f"{'stderr' if stream == 'stderr' else 'with >>'}", line, stage.column)
            stage.streams[stream] = {"device": path[len(DEVICE_ROOT):]}
            used.append(path[len(DEVICE_ROOT):])
    if used:
        requires = stage.requires.setdefault("devices", [])
        requires.extend(d for d in dict.fromkeys(used) if d not in requires)


def _parse_stage(line: str, tokens: list[Token], *, first: bool, last: bool) -> _Stage:
    stage = _Stage(column=tokens[0].column)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        if isinstance(token, Operator):
            _redirect(line, stage, token, following, first=first, last=last)
            i += 2
            continue
        if stage.placed_at:
            raise CompileError(f"{snippet(token.raw)} after the placement '@ ...' (placement ends a stage; "
                               "put arguments before the '@')", line, token.column)
        if token.raw == _PLACEMENT:
            _place(line, stage, token, following)
            i += 2
            continue
        if not stage.words:
            if _APPEND_ASSIGNMENT.match(token.raw):
                raise CompileError(f"{snippet(token.raw)} appends to a variable of the node's environment, which is "
                                   "not supported (give the whole value with VAR=value)", line, token.column)
            assignment = ASSIGNMENT.match(token.raw)
            if assignment:
                stage.env[assignment.group()[:-1]] = token.text[assignment.end():]
                i += 1
                continue
            _check_command(line, token)
        stage.words.append(token)
        i += 1
    if not stage.words:
        raise CompileError("no command in this stage (a stage needs a program to run)", line, stage.column)
    return stage


def _redirect(line: str, stage: _Stage, op: Operator, target: Token | None, *, first: bool, last: bool) -> None:
    if not isinstance(target, Word):
        raise CompileError(f"'{op.op}' needs a file name after it (write {op.op} FILE)", line, op.column)
    if target.text == "":
        raise CompileError("an empty file name (give the file to redirect to)", line, target.column)
    stream, append = _REDIRECTIONS[op.op]
    if stream == "stdin" and not first:
        raise CompileError("'<' in a stage after the first would replace the input the pipe brings it "
                           "(redirect the first stage's input instead)", line, op.column)
    if stream == "stdout" and not last:
        raise CompileError(f"'{op.op}' in a stage before the last would take its output from the pipe "
                           "(redirect the last stage's output, or keep a copy with tee FILE)", line, op.column)
    if stream in stage.streams:
        raise CompileError(f"{stream} of this stage is already redirected (redirect it once)", line, op.column)
    stage.streams[stream] = {"file": target.text, "append": True} if append else {"file": target.text}


def _place(line: str, stage: _Stage, at: Word, criterion: Token | None) -> None:
    if not stage.words:
        raise CompileError("'@' needs a command before it (write COMMAND ARGS @ NODE_ID or @ LABEL=VALUE)",
                           line, at.column)
    if not isinstance(criterion, Word) or criterion.raw == _PLACEMENT:
        raise CompileError("'@' needs a node id or label requirements after it (write COMMAND @ NODE_ID, "
                           "or COMMAND @ LABEL=VALUE[,LABEL!=VALUE,LABEL,!LABEL...])", line, at.column)
    stage.placed_at = at.column
    stage.requires = _requirement(line, criterion)


_REQUIREMENTS_HINT = ("after '@' give one node id, or requirements joined by ',': LABEL=VALUE, LABEL!=VALUE, "
                      "LABEL (it exists) or !LABEL (it does not)")
# What a value compared with '!=' cannot hold: it goes into a label selector (oneos.selectors).
_NOT_IN_SELECTOR_VALUE = re.compile(r"[\s!=(),<>]")
_SET_BASED = re.compile(r"\s(notin|in)\s*\(")


def _requirement(line: str, word: Word) -> dict[str, Any]:
    """`requires` from the word after '@': a node id, or comma-separated LABEL=VALUE, LABEL!=VALUE, LABEL, !LABEL.

    A lone word without '=' or '!' is a node id, as before; a lone LABEL that cannot be a node id
    (kubernetes.io/arch) is a label that must exist. Equalities go to requires.labels, the rest to
    requires.selector, in the Kubernetes syntax.
    """
    text = word.text
    if not any(c in text for c in "=,/") and not text.startswith("!"):
        if not _NODE_ID.fullmatch(text):
            raise CompileError(f"{snippet(text)} is not a node id (a node id is letters, digits, '-', '_' and '.', "
                               "starting with a letter or digit, at most 63 characters; or write LABEL=VALUE)",
                               line, word.column)
        return {"node": text}
    set_based = _SET_BASED.search(text)
    if set_based:
        column = word.column + set_based.start(1) if word.raw == text else word.column
        raise CompileError(f"{snippet(set_based.group(1) + ' (...)')} (a set of values) is not supported after "
                           "'@' (write the requirement in a manifest's requires.selector, or use LABEL=VALUE)",
                           line, column)
    labels: dict[str, str] = {}
    selector: list[str] = []
    offset = 0
    for part in text.split(","):
        # Point at the requirement itself when the word is written as it reads.
        column = word.column + offset if word.raw == text else word.column
        offset += len(part) + 1
        if part == "":
            raise CompileError(f"{snippet(part)} is not LABEL=VALUE ({_REQUIREMENTS_HINT})", line, column)
        if "!=" in part:
            key, _, value = part.partition("!=")
            op = "!="
        elif "=" in part:
            key, _, value = part.partition("=")
            op = "="
            if value.startswith("="):       # LABEL==VALUE, as Kubernetes also reads it
                value = value[1:]
        elif part.startswith("!"):
            key, value, op = part[1:], "", "!"
        else:
            key, value, op = part, "", ""
        key_column = column + 1 if op == "!" and word.raw == text else column
        if key.startswith("!") and op in ("=", "!="):
            raise CompileError(f"{snippet(part)} puts '!' before a comparison ('!' goes before a label alone: write "
                               "!LABEL, or LABEL!=VALUE)", line, column)
        if len(key) > selectors.LABEL_KEY_MAX or not selectors.LABEL_KEY.fullmatch(key):
            raise CompileError(f"{snippet(key)} is not a valid label key (a label key is letters, digits, '-', "
                               "'_', '.' and '/', starting and ending with a letter or digit)", line, key_column)
        if op == "!=" and _NOT_IN_SELECTOR_VALUE.search(value):
            raise CompileError(f"{snippet(value)} cannot follow '!=' (a value compared with '!=' has no spaces "
                               "and none of !=(),<>; such a value can only be required equal, with "
                               "LABEL=VALUE)", line, column)
        try:
            [requirement] = selectors.parse(part, label_values=True)
        except SelectorError as err:
            at = column + err.column - 1 if word.raw == text else column
            raise CompileError(f"{snippet(part)}: {err.what} ({_REQUIREMENTS_HINT})", line, at) from None
        if requirement.op == "=":
            if key in labels:
                raise CompileError(f"label {snippet(key)} is given twice (give each label once)", line, column)
            labels[key] = requirement.values[0]
        else:
            selector.append(str(requirement))
    requires: dict[str, Any] = {}
    if labels:
        requires["labels"] = labels
    if selector:
        requires["selector"] = ",".join(selector)
    return requires


def _check_command(line: str, word: Word) -> None:
    """Refuse a command word that bash would not run as a program."""
    if word.raw.startswith("!"):
        raise CompileError("'!' at the start of a command (negating its status, or history) is not supported "
                           "(remove it)", line, word.column)
    if word.raw in ("{", "}"):
        raise CompileError("'{ ... }' (a group of commands) is not supported (make each command a stage, "
                           "or quote the brace)", line, word.column)
    if word.raw == "time":
        raise CompileError("'time' is a shell keyword that times a pipeline, which is not supported "
                           "(time the whole run: time oneosctl run '...')", line, word.column)
    if word.raw in RESERVED_WORDS:
        raise CompileError(f"{snippet(word.raw)} is a shell keyword; compound commands are not supported "
                           "(write a pipeline of programs, or a script shipped with it)", line, word.column)
    if word.text in SHELL_BUILTINS:
        raise CompileError(f"{snippet(word.text)} is a shell builtin, and a stage runs a program without a shell "
                           "(to run shell code on the node, write bash -c '...')", line, word.column)
    if word.text == "":
        raise CompileError("an empty command name (give the program to run)", line, word.column)


def _agent(line: str, stage: _Stage, name: str, base: Path) -> dict[str, Any]:
    agent: dict[str, Any] = {"name": name, "run": [w.text for w in stage.words]}
    files = _shipped_files(line, stage.words, base)
    if files:
        agent["files"] = files
    if stage.env:
        agent["env"] = stage.env
    if stage.requires:
        agent["requires"] = stage.requires
    for stream in ("stdin", "stdout", "stderr"):
        if stream in stage.streams:
            agent[stream] = stage.streams[stream]
    return agent


# ----------------------------------------------------------------- shipped files


def _shipped_files(line: str, words: list[Word], base: Path) -> list[str]:
    """The local program files the stage names: a relative command path, an interpreter's script."""
    files: list[str] = []
    command = words[0].text
    if "/" in command:
        _ship(line, words[0], base, files)
    options = _INTERPRETER_OPTIONS.get(posixpath.basename(command))
    if options:
        script = _script(words[1:], *options)
        if script is not None:
            _ship(line, script, base, files)
    return files


def _script(args: list[Word], inline: frozenset[str], valued: frozenset[str]) -> Word | None:
    """An interpreter's script argument: the first word that is not an option, if any."""
    options_end = skip_value = False
    for word in args:
        text = word.text
        if skip_value:
            skip_value = False
        elif options_end or not text.startswith("-"):
            return word
        elif text == "-" or text in inline:
            return None  # the program comes from stdin or from the command line
        elif text == "--":
            options_end = True
        elif text.startswith("--"):
            skip_value = text in valued
        else:  # single-letter options, clustered as getopt reads them: -uc, -lane, -Wignore
            for k, letter in enumerate(text[1:], start=2):
                if "-" + letter in inline:
                    return None
                if "-" + letter in valued:
                    skip_value = k == len(text)  # else the value is the rest of this word
                    break
    return None


def _ship(line: str, word: Word, base: Path, files: list[str]) -> None:
    """Add the file `word` names to `files` when it is a relative path to a file in `base`."""
    path = word.text
    if path.startswith("/"):
        return  # the node's own program
    if ".." in path.split("/"):
        raise CompileError(f"{snippet(path)} goes up a directory with '..', so it cannot be shipped with the "
                           "pipeline (copy the file into this directory, or give the node's absolute path)",
                           line, word.column)
    if os.path.isfile(base / path):
        shipped = posixpath.normpath(path)
        if shipped not in files:
            files.append(shipped)


# ------------------------------------------------------------------------- names


def stage_name(program: str) -> str:
    """A valid agent name from a program: its base name, lowercased, other characters as '-'."""
    name = _NOT_IN_NAME.sub("-", posixpath.basename(program).lower()).strip("-")
    return name[:_NAME_MAX].rstrip("-") or "stage"


def _unique_names(bases: list[str]) -> list[str]:
    """`bases`, the second and later of each made unique with -2, -3, ... in order."""
    taken: set[str] = set()
    next_number: dict[str, int] = {}
    names = []
    for base in bases:
        name = base
        number = next_number.get(base, 2)
        while name in taken:
            suffix = f"-{number}"
            name = base[: _NAME_MAX - len(suffix)].rstrip("-") + suffix
            number += 1
        next_number[base] = number
        taken.add(name)
        names.append(name)
    return names


def _pipeline_name(names: list[str]) -> str:
    """The stage names joined by '-', cut to a valid name."""
    joined = names[0]
    for name in names[1:]:
        if len(joined) >= _NAME_MAX:
            break
        joined += "-" + name
    return joined[:_NAME_MAX].rstrip("-")
