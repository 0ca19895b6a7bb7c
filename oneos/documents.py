"""The one manifest loader: YAML parsing, JSON Schema validation, semantic checks.

Every document OneOS reads or writes has a schema in `schemas/`. Manifests a
person writes go through `load_file` / `load_text` (or `load_yaml` + `validate`),
which report problems with the field path and the line and column in the file.
Documents stored in the Name Server go through `check` on every read and write.

YAML is read the YAML 1.2 way: only true/false are booleans (so `restart: no`
stays the string "no"), `010` is ten, `1:30` and `2024-05-01` are strings.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema.exceptions
import referencing
import referencing.jsonschema
import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from oneos.selectors import SelectorError
from oneos.selectors import parse as parse_selector
from oneos.durations import parse_seconds
from oneos.errors import UsageError
from oneos.paths import PathEscape, inside, shared

__all__ = [
    "DOCUMENTS",
    "KINDS",
    "DocumentError",
    "Marked",
    "Problem",
    "check",
    "dump_yaml",
    "load_file",
    "load_text",
    "load_yaml",
    "schema",
    "validate",
]

#: Manifest kinds a person applies, and the schema of each.
KINDS: dict[str, str] = {"Init": "init", "Pipeline": "pipeline"}

#: Documents that `check` knows, by schema name (schemas/<name>.schema.json).
DOCUMENTS = ("agent", "assignment", "boot", "config", "device", "heartbeat", "init", "invalid", "joinrequest",
             "jointoken", "key", "leader", "node", "pipeline", "status")

# Consul accepts session TTLs from 10s to 86400s.
SESSION_TTL_RANGE = (10.0, 86400.0)

# A manifest has at most this many YAML nodes; stops alias bombs early.
_MAX_NODES = 100_000

DocPath = tuple[Any, ...]  # a place in a document: its keys and list indexes


class DocumentError(UsageError):
    """A document cannot be read or is not valid; one line per problem."""

    def __init__(self, message: str, problems: Sequence["Problem"] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a document, where it is, and what would fix it."""

    path: str
    message: str
    line: int | None = None
    column: int | None = None
    source: str = ""

    def __str__(self) -> str:
        parts = [p for p in (self.source, self.path) if p]
        text = ": ".join([*parts, self.message])
        if self.line is not None:
            text += f" (line {self.line}, column {self.column})"
        return text


class Marked(dict):
    """A top-level mapping read from YAML, remembering where each value was.

    `marks[path]` is the (line, column) of the value at `path`, `key_marks[path]`
    that of its key; lines and columns count from 1.
    """

    marks: dict[DocPath, tuple[int, int]]
    key_marks: dict[DocPath, tuple[int, int]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.marks = {}
        self.key_marks = {}


# --------------------------------------------------------------------------- YAML

_BOOL_12 = re.compile(r"^(?:[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])$")
_INT_12 = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT_12 = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_TAG = "tag:yaml.org,2002:"
_YAML11_ONLY = {_TAG + t for t in ("bool", "int", "float", "timestamp", "value")}


def _core_resolvers(base: dict) -> dict:
    """`base`'s implicit resolvers without YAML 1.1's bool/int/float/timestamp."""
    return {
        first: [(tag, rx) for tag, rx in entries if tag not in _YAML11_ONLY]
        for first, entries in base.items()
    }


def _add_core_resolvers(cls: type) -> None:
    cls.add_implicit_resolver(_TAG + "bool", _BOOL_12, list("tTfF"))
    cls.add_implicit_resolver(_TAG + "int", _INT_12, list("-+0123456789"))
    cls.add_implicit_resolver(_TAG + "float", _FLOAT_12, list("-+.0123456789"))


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema scalars and no duplicate keys."""

    yaml_implicit_resolvers = _core_resolvers(yaml.SafeLoader.yaml_implicit_resolvers)

    def construct_yaml_int(self, node: ScalarNode) -> int:
        """An integer the YAML 1.2 way: 010 is ten, 0o10 is eight."""
        text = self.construct_scalar(node)
        if text.startswith("0o"):
            return int(text[2:], 8)
        if text.startswith("0x"):
            return int(text[2:], 16)
        return int(text, 10)

    def construct_yaml_bool(self, node: ScalarNode) -> bool:
        """true or false, in any case."""
        return self.construct_scalar(node).lower() == "true"

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        """A mapping; a key given twice is an error rather than the last one silently winning."""
        seen: dict[Any, Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _TAG + "merge":
                continue
            key = key_node.value
            if key in seen:
                first = seen[key].start_mark
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"duplicate key {key!r}; the first is at line {first.line + 1}, column {first.column + 1}",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


_add_core_resolvers(_Loader)
_Loader.add_constructor(_TAG + "int", _Loader.construct_yaml_int)
_Loader.add_constructor(_TAG + "bool", _Loader.construct_yaml_bool)


class _Dumper(yaml.SafeDumper):
    """Quotes any string that YAML 1.1 or YAML 1.2 would read as something else."""


_add_core_resolvers(_Dumper)
_Dumper.add_representer(Marked, yaml.representer.SafeRepresenter.represent_dict)


def _syntax_error(source: str, err: yaml.YAMLError, text: str) -> DocumentError:
    """One line FILE:LINE:COLUMN: what is wrong, from a PyYAML error."""
    if isinstance(err, yaml.reader.ReaderError) and isinstance(err.position, int):
        line = text.count("\n", 0, err.position) + 1
        column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        return DocumentError(f"{source}:{line}:{column}: character #x{err.character:04x} is not allowed in YAML")
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        what = err.problem or "invalid YAML"
        if "'\\t'" in what:
            what += "; indent with spaces, not tabs"
        ctx = err.context_mark
        if err.context and ctx is not None and (ctx.line, ctx.column) != (mark.line, mark.column):
            what += f" ({err.context} at line {ctx.line + 1}, column {ctx.column + 1})"
        return DocumentError(f"{source}:{mark.line + 1}:{mark.column + 1}: {what}")
    return DocumentError(f"{source}: " + " ".join(str(err).split()))


def _record_marks(loader: _Loader, node: Node, doc: Marked) -> None:
    """Fill doc.marks / doc.key_marks by walking the composed node tree."""
    budget = [_MAX_NODES]

    def walk(node: Node, path: DocPath, stack: set[int]) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise yaml.YAMLError(f"more than {_MAX_NODES} values (or aliases that expand to as many)")
        if id(node) in stack:
            raise yaml.constructor.ConstructorError(
                None, None, "an alias refers to a value that contains it; a manifest must be a tree", node.start_mark
            )
        doc.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, MappingNode):
            stack = stack | {id(node)}
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode):
                    continue
                key = loader.construct_object(key_node)
                doc.key_marks[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                walk(value_node, (*path, key), stack)
        elif isinstance(node, SequenceNode):
            stack = stack | {id(node)}
            for i, item in enumerate(node.value):
                walk(item, (*path, i), stack)

    walk(node, (), set())


def load_yaml(text: str, source: str) -> list[Any]:
    """All non-empty YAML documents of `text`; top-level mappings come back as `Marked`.

    A syntax error raises DocumentError with one line `SOURCE:LINE:COLUMN: what is wrong`.
    """
    docs: list[Any] = []
    try:
        loader = _Loader(text)
    except yaml.YAMLError as err:  # the reader rejects control characters up front
        raise _syntax_error(source, err, text) from None
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            value = loader.construct_document(node)
            if value is None:  # an empty document, such as a trailing '---'
                continue
            if isinstance(value, dict):
                value = Marked(value)
                _record_marks(loader, node, value)
            docs.append(value)
    except yaml.YAMLError as err:
        raise _syntax_error(source, err, text) from None
    finally:
        loader.dispose()
    return docs


def dump_yaml(doc: Any) -> str:
    """`doc` as block-style YAML, keys in insertion order, readable by `load_yaml`."""
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


# ---------------------------------------------------------------------- schemas


_FORMATS = jsonschema.FormatChecker(formats=())
_RFC3339 = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$")


@_FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    """RFC 3339 date-time; jsonschema's own check needs an optional package, this needs none."""
    if not isinstance(value, str):
        return True
    if not _RFC3339.match(value):
        return False
    datetime.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    return True


@functools.cache
def _schemas() -> tuple[dict[str, dict], referencing.Registry]:
    """Every schema in schemas/, by name, and a registry that resolves $ref between them."""
    folder = shared("schemas")
    schemas = {p.name.removesuffix(".schema.json"): json.loads(p.read_text()) for p in sorted(folder.glob("*.schema.json"))}
    registry = referencing.Registry().with_resources(
        (s["$id"], referencing.jsonschema.DRAFT202012.create_resource(s)) for s in schemas.values()
    )
    return schemas, registry.crawl()


def schema(name: str) -> dict:
    """The JSON Schema called `name` (agent, boot, config, init, leader, node, pipeline)."""
    schemas, _ = _schemas()
    if name not in schemas:
        raise KeyError(f"no schema {name!r}; known: {', '.join(sorted(schemas))}")
    return schemas[name]


@functools.cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    _, registry = _schemas()
    return jsonschema.Draft202012Validator(schema(name), registry=registry, format_checker=_FORMATS)


# ------------------------------------------------------------------ validation


def _path_text(path: Iterable[Any]) -> str:
    """('spec', 'agents', 1, 'run') -> 'spec.agents[1].run'."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif isinstance(part, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part) if isinstance(part, str) else part!r}]"
    return text


def _problem(doc: Any, path: DocPath, message: str, source: str, *, at_key: DocPath | None = None) -> Problem:
    """A Problem at `path`, located at the key `at_key` when given, else at the value."""
    line = column = None
    marks = getattr(doc, "marks", {})
    key_marks = getattr(doc, "key_marks", {})
    if at_key is not None and at_key in key_marks:
        line, column = key_marks[at_key]
    else:
        probe = tuple(path)
        while probe not in marks and probe:
            probe = probe[:-1]
        if probe in marks:
            line, column = marks[probe]
    return Problem(_path_text(path), message, line, column, source)


def _explain(error: jsonschema.exceptions.ValidationError) -> str:
    """jsonschema's message, plus what would fix it where that is not obvious."""
    message = error.message
    sub = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(sub.get("properties", {}))
        extras = [k for k in error.instance if k not in allowed]
        guesses = [(x, _guess_field(str(x), allowed)) for x in extras]
        hints = [f"{g[0]!r} for {x!r}" if len(extras) > 1 else repr(g[0]) for x, g in guesses if g]
        if hints:
            message += f"; did you mean {', '.join(hints)}?"
        elif allowed:
            message += f"; allowed fields: {', '.join(allowed)}"
    elif error.validator in ("pattern", "format", "minLength", "maxLength") and sub.get("description"):
        # The schema's title and description say it better than a regular expression.
        if "title" in sub:
            message = f"{error.instance!r} is not a valid {sub['title']}"
        message += f"; {sub['description']}"
    elif (error.validator == "not" and isinstance(error.validator_value, dict)
          and list(error.validator_value) == ["required"]):
        fields = error.validator_value["required"]
        message = f"{' and '.join(fields)} cannot go together; keep one"
    elif error.validator == "type" and error.instance is None:
        message += "; the field is empty"
    elif error.validator == "type" and "string" in _as_list(error.validator_value) and isinstance(error.instance, (bool, int, float)):
        message += "; put the value in quotes to make it a string"
    return message


# Field names people bring from Kubernetes, Compose and systemd, and ours for them.
_SYNONYMS = {"command": "run", "cmd": "run", "args": "run", "exec": "run", "execstart": "run",
             "environment": "env", "restartpolicy": "restart", "link": "links"}


def _guess_field(field: str, allowed: list[str]) -> list[str]:
    """The allowed field that `field` was most likely meant to be, as a 0- or 1-item list."""
    candidates = {name: name for name in allowed}
    candidates.update({alias: ours for alias, ours in _SYNONYMS.items() if ours in allowed})
    key = field.lower().replace("_", "").replace("-", "")
    if key in candidates:
        return [candidates[key]]
    close = difflib.get_close_matches(field, list(candidates), n=1, cutoff=0.6)
    return [candidates[close[0]]] if close else []


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _schema_problems(name: str, doc: Any, source: str) -> list[Problem]:
    """The best error per location (and each missing or unexpected field) from schema `name`."""
    groups: dict[tuple, list[jsonschema.exceptions.ValidationError]] = {}
    for error in _validator(name).iter_errors(doc):
        path = tuple(error.absolute_path)
        # Missing and unexpected fields of one object are separate problems; the rest
        # of the errors at one place are alternatives, of which the best is shown.
        distinct = error.message if error.validator in ("required", "additionalProperties") else ""
        groups.setdefault((path, distinct), []).append(error)
    problems = []
    for (path, _), errors in groups.items():
        best = jsonschema.exceptions.best_match(errors)
        at_key = None
        if best.validator == "additionalProperties" and isinstance(best.instance, dict):
            allowed = best.schema.get("properties", {}) if isinstance(best.schema, dict) else {}
            extras = [k for k in best.instance if k not in allowed]
            at_key = (*path, extras[0]) if extras else None
        elif best.validator == "propertyNames":
            at_key = (*path, best.instance)
        problems.append(_problem(doc, path, _explain(best), source, at_key=at_key))
    return problems


def _agent_problems(doc: dict, source: str, base_dir: Path | None) -> list[Problem]:
    """Checks on spec.agents that a schema cannot express: unique names, files present."""
    problems = []
    first_at: dict[str, int] = {}
    for i, agent in enumerate(doc["spec"]["agents"]):
        name = agent["name"]
        if name in first_at:
            problems.append(_problem(doc, ("spec", "agents", i, "name"),
                                     f"duplicate agent name {name!r} (also spec.agents[{first_at[name]}]); give each agent its own name",
                                     source))
        else:
            first_at[name] = i
        for j, file in enumerate(agent.get("files", [])):
            if base_dir is None:
                continue
            try:
                found = inside(base_dir, file, what="shipped file").exists()
            except PathEscape as exc:
                problems.append(_problem(doc, ("spec", "agents", i, "files", j),
                                         f"{exc}; ship only files inside the manifest's folder", source))
                continue
            if not found:
                problems.append(_problem(doc, ("spec", "agents", i, "files", j),
                                         f"no such file {file!r} in {base_dir}; files are relative to the manifest",
                                         source))
        problems += _selector_problems(doc, i, agent, source)
    return problems


def _selector_problems(doc: dict, i: int, agent: dict, source: str) -> list[Problem]:
    """Label selectors (requires.selector, prefers[].selector) that do not parse, with the column in them."""
    places = [(("requires", "selector"), agent.get("requires", {}).get("selector"))]
    places += [(("prefers", j, "selector"), term["selector"]) for j, term in enumerate(agent.get("prefers", []))]
    problems = []
    for where, text in places:
        if text is None:
            continue
        try:
            parse_selector(text)
        except SelectorError as err:
            problems.append(_problem(doc, ("spec", "agents", i, *where), f"{err.what} at column {err.column} of "
                                     f"the selector {text!r}; {err.hint}", source))
    return problems


def _link_problems(doc: dict, source: str) -> list[Problem]:
    """Links must join two different, existing agents, once, without cycles."""
    names = [a["name"] for a in doc["spec"]["agents"]]
    known = ", ".join(names)
    problems = []
    seen: dict[tuple[str, str], int] = {}
    edges: dict[str, list[tuple[str, int]]] = {}
    for i, link in enumerate(doc["spec"].get("links", [])):
        ok = True
        for end in ("from", "to"):
            if link[end] not in names:
                problems.append(_problem(doc, ("spec", "links", i, end),
                                         f"no agent named {link[end]!r}; the agents are {known}", source))
                ok = False
        if not ok:
            continue
        pair = (link["from"], link["to"])
        if pair[0] == pair[1]:
            problems.append(_problem(doc, ("spec", "links", i),
                                     f"link from {pair[0]!r} to itself; a link joins two different agents", source))
        elif pair in seen:
            problems.append(_problem(doc, ("spec", "links", i),
                                     f"duplicate link from {pair[0]!r} to {pair[1]!r} (also spec.links[{seen[pair]}])", source))
        else:
            seen[pair] = i
            edges.setdefault(pair[0], []).append((pair[1], i))
    cycle = _find_cycle(names, edges)
    if cycle:
        names_in_cycle, index = cycle
        problems.append(_problem(doc, ("spec", "links", index),
                                 f"links form a cycle {' -> '.join(names_in_cycle)}; a pipeline's links must not loop back",
                                 source))
    return problems


def _find_cycle(names: list[str], edges: dict[str, list[tuple[str, int]]]) -> tuple[list[str], int] | None:
    """The first cycle found (agent names, and the index of the link closing it), or None.

    Depth-first with an explicit stack: a pipeline compiled from a long one-liner may have
    tens of thousands of stages, too deep for recursion.
    """
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in names:
        if start in state:
            continue
        path = [start]
        state[start] = 1
        stack = [iter(edges.get(start, []))]
        while stack:
            for nxt, index in stack[-1]:
                if state.get(nxt) == 1:
                    return [*path[path.index(nxt):], nxt], index
                if nxt not in state:
                    state[nxt] = 1
                    path.append(nxt)
                    stack.append(iter(edges.get(nxt, [])))
                    break
            else:
                state[path.pop()] = 2
                stack.pop()
    return None


def _semantic_problems(name: str, doc: Any, source: str, base_dir: Path | None) -> list[Problem]:
    """Checks after the schema passed, per document kind."""
    if name in ("pipeline", "init"):
        problems = _agent_problems(doc, source, base_dir)
        if name == "pipeline":
            problems += _link_problems(doc, source)
        return problems
    if name == "boot":
        low, high = SESSION_TTL_RANGE
        if not low <= parse_seconds(doc["sessionTTL"]) <= high:
            return [_problem(doc, ("sessionTTL",), f"{doc['sessionTTL']!r} is out of range; a session TTL is 10s to 86400s", source)]
    return []


def validate(doc: Any, source: str = "", base_dir: str | Path | None = None) -> list[Problem]:
    """What is wrong with manifest `doc` (a Pipeline or Init), empty when it is valid.

    With `base_dir`, each agent's `files` must exist relative to it.
    """
    allowed = ", ".join(sorted(KINDS))
    if not isinstance(doc, dict):
        return [Problem("", f"a manifest is a mapping with apiVersion, kind, metadata and spec, not {_type_name(doc)}",
                        source=source)]
    kind = doc.get("kind")
    if kind is None:
        return [_problem(doc, (), f"'kind' is a required property; kind is one of {allowed}", source)]
    if kind not in KINDS:
        guess = difflib.get_close_matches(str(kind), list(KINDS), n=1)
        hint = f"; did you mean {guess[0]!r}?" if guess else ""
        return [_problem(doc, ("kind",), f"unknown kind {kind!r}; kind is one of {allowed}{hint}", source)]
    return _problems(KINDS[kind], doc, source, Path(base_dir) if base_dir is not None else None)


def _problems(name: str, doc: Any, source: str, base_dir: Path | None) -> list[Problem]:
    problems = _schema_problems(name, doc, source)
    if not problems:
        problems = _semantic_problems(name, doc, source, base_dir)
    return sorted(problems, key=lambda p: (p.line is None, p.line or 0, p.column or 0, p.path))


def _type_name(value: Any) -> str:
    names = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    return names.get(type(value), type(value).__name__)


def check(schema_name: str, value: Any, where: str) -> Any:
    """Return stored document `value` if it is a valid `schema_name`, else raise DocumentError.

    The error is one line, `WHERE: path: message`, with WHERE saying where the
    document came from (such as the Name Server key).
    """
    if schema_name not in DOCUMENTS:
        raise KeyError(f"no document schema {schema_name!r}; known: {', '.join(DOCUMENTS)}")
    problems = _problems(schema_name, value, where, None)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DocumentError(f"{first}{more}", problems)
    return value


# -------------------------------------------------------------------- manifests


def load_text(text: str, source: str, base_dir: str | Path | None = None) -> list[dict]:
    """The valid manifests in `text`; DocumentError lists every problem, one per line."""
    docs = load_yaml(text, source)
    if not docs:
        raise DocumentError(f"{source}: no manifest found; expected a document with apiVersion, kind, metadata and spec")
    problems = [p for doc in docs for p in validate(doc, source, base_dir)]
    if problems:
        raise DocumentError("\n".join(str(p) for p in problems), problems)
    return docs


def load_file(path: str | Path) -> list[dict]:
    """The valid manifests in file `path`; agents' files are looked up next to it."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DocumentError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DocumentError(f"{path}: is a directory; give a manifest file") from None
    except PermissionError:
        raise DocumentError(f"{path}: permission denied") from None
    except UnicodeDecodeError as err:
        raise DocumentError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})") from None
    except OSError as err:
        raise DocumentError(f"{path}: cannot read: {err.strerror or err}") from None
    return load_text(text, str(path), path.parent)
