"""What applying a Pipeline manifest changes, as `kubectl diff` and `nomad plan` say it.

`diff_pipelines(old, new)` compares the stored manifest (None when there is none) with the
one `oneosctl apply` would store: agents added, removed and changed field by field, links
added and removed, shipped files whose content changed, labels. It also says which agents
the controller will restart: exactly those whose assignment's work changes (the reconciler's
`same_work`: the agent's spec, its links, its shipped files' content), so a link added or
removed restarts both of its ends; every other agent is left as it is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from oneos.state import desired_assignments, same_work

NONE = "<none>"
_MISSING = object()
_PLAIN = re.compile(r"[A-Za-z0-9_./:@%+=^~*?-]+")


def show(value: Any) -> str:
    """A value on one line, YAML flow style: [tr, 0-9, a-j], {gpio: "true"}, "a b"; <none> when unset."""
    if value is _MISSING:
        return NONE
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return value if _PLAIN.fullmatch(value) and value not in ("true", "false", "null") else json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


@dataclass(frozen=True)
class FieldChange:
    """One field that differs: `path` is dotted below dicts (env.LEVEL, requires.labels.gpio)."""

    path: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.path} {show(self.old)} -> {show(self.new)}"


def field_changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[FieldChange]:
    """The fields that differ between two mappings, in the new one's order, then the removed ones."""
    changes = []
    for key in list(new) + [k for k in old if k not in new]:
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            changes += field_changes(a, b, f"{prefix}{key}.")
        else:
            changes.append(FieldChange(f"{prefix}{key}", a, b))
    return changes


Link = tuple[str, str]


@dataclass
class PipelineDiff:
    """The difference between a stored pipeline and the one to apply, and what it restarts."""

    name: str
    created: bool = False
    added: list[str] = field(default_factory=list)                       # agents, in the new order
    removed: list[str] = field(default_factory=list)
    changed: dict[str, list[FieldChange]] = field(default_factory=dict)  # agent -> its changed fields
    links_added: list[Link] = field(default_factory=list)
    links_removed: list[Link] = field(default_factory=list)
    files_changed: dict[str, list[str]] = field(default_factory=dict)    # file -> the agents shipping it
    other: list[FieldChange] = field(default_factory=list)               # labels, other spec fields, order
    restart: dict[str, list[str]] = field(default_factory=dict)          # agent -> why it restarts
    keep: list[str] = field(default_factory=list)                        # agents left as they are

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.links_added or self.links_removed
                    or self.files_changed or self.other)

    def change_lines(self) -> list[str]:
        """One line per change: + added, - removed, ~ changed."""
        lines = []
        for agent in self.added:
            lines.append(f"+ agent {agent}")
        for agent in self.removed:
            lines.append(f"- agent {agent}")
        for agent, changes in self.changed.items():
            lines += [f"~ agent {agent}: {change}" for change in changes]
        lines += [f"+ link {a} -> {b}" for a, b in self.links_added]
        lines += [f"- link {a} -> {b}" for a, b in self.links_removed]
        for name, agents in self.files_changed.items():
            lines.append(f"~ file {name}: content changed (shipped with {', '.join(agents)})")
        lines += [f"~ {change}" for change in self.other]
        return lines

    def plan_lines(self, where: Mapping[str, str] | None = None) -> list[str]:
        """One line per agent that the change touches or leaves alone: restart, start, stop or keep.

        `where` maps an agent to what is known of it now (e.g. "Running on n2"), shown in brackets.
        """
        where = where or {}

        def at(agent: str) -> str:
            return f" ({where[agent]})" if where.get(agent) else ""

        lines = [f"restart {agent}{at(agent)}: {'; '.join(why)}" for agent, why in self.restart.items()]
        lines += [f"start {agent}" for agent in self.added]
        lines += [f"stop {agent}{at(agent)}" for agent in self.removed]
        lines += [f"keep {agent}{at(agent)}" for agent in self.keep]
        return lines


def _links(manifest: Mapping[str, Any] | None) -> list[Link]:
    if manifest is None:
        return []
    return [(link["from"], link["to"]) for link in manifest["spec"].get("links", [])]


def _agents(manifest: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    if manifest is None:
        return {}
    return {agent["name"]: agent for agent in manifest["spec"]["agents"]}


def _why_restart(agent: str, old: dict[str, Any], new: dict[str, Any], d: PipelineDiff) -> list[str]:
    """Why an agent whose assignment's work changed restarts, in the words of the diff."""
    why = []
    if old.get("uid") != new.get("uid"):
        why.append("the pipeline was created again")
    if old.get("agent") != new.get("agent"):
        fields = dict.fromkeys(c.path.split(".")[0] for c in field_changes(old["agent"], new["agent"]))
        why.append(f"{', '.join(fields)} changed")
    if old.get("inputs") != new.get("inputs") or old.get("outputs") != new.get("outputs"):
        touched = ([f"link {a} -> {b} added" for a, b in d.links_added if agent in (a, b)]
                   + [f"link {a} -> {b} removed" for a, b in d.links_removed if agent in (a, b)])
        why += touched or ["the order of its links changed"]
    old_files, new_files = old.get("files", {}), new.get("files", {})
    why += [f"shipped file {name} changed" for name, digest in new_files.items()
            if name in old_files and old_files[name] != digest]
    if old.get("attached") != new.get("attached"):
        why.append("attached changed")
    return why or ["its assignment changed"]


def diff_pipelines(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> PipelineDiff:
    """What storing `new` in place of `old` (None: nothing stored yet) changes, and what it restarts."""
    d = PipelineDiff(new["metadata"]["name"], created=old is None)
    old_agents, new_agents = _agents(old), _agents(new)
    d.added = [a for a in new_agents if a not in old_agents]
    d.removed = [a for a in old_agents if a not in new_agents]
    for name, agent in new_agents.items():
        if name in old_agents and old_agents[name] != agent:
            d.changed[name] = field_changes(old_agents[name], agent)
    old_links, new_links = _links(old), _links(new)
    d.links_added = [link for link in new_links if link not in old_links]
    d.links_removed = [link for link in old_links if link not in new_links]
    if old is None:
        return d

    old_digests = old["metadata"].get("fileDigests", {})
    new_digests = new["metadata"].get("fileDigests", {})
    for name, digest in new_digests.items():
        if name in old_digests and old_digests[name] != digest:
            d.files_changed[name] = [a for a, spec in new_agents.items() if name in spec.get("files", [])]

    if old["metadata"].get("labels") != new["metadata"].get("labels"):
        d.other.append(FieldChange("labels", old["metadata"].get("labels", _MISSING),
                                   new["metadata"].get("labels", _MISSING)))
    rest = ("agents", "links")
    d.other += field_changes({k: v for k, v in old["spec"].items() if k not in rest},
                             {k: v for k, v in new["spec"].items() if k not in rest}, "spec.")
    common_old = [a for a in old_agents if a in new_agents]
    common_new = [a for a in new_agents if a in old_agents]
    if common_old != common_new:
        d.other.append(FieldChange("order of agents", common_old, common_new))
    kept_old = [link for link in old_links if link in new_links]
    kept_new = [link for link in new_links if link in old_links]
    if kept_old != kept_new:
        d.other.append(FieldChange("order of links", [f"{a} -> {b}" for a, b in kept_old],
                                   [f"{a} -> {b}" for a, b in kept_new]))

    before, after = desired_assignments(old), desired_assignments(new)
    for key, doc in after.items():
        agent = doc["agent"]["name"]
        if key not in before:
            continue
        if same_work(before[key], doc):
            d.keep.append(agent)
        else:
            d.restart[agent] = _why_restart(agent, before[key], doc, d)
    return d
