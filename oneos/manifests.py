"""Desired state: applying and deleting Pipeline manifests in the Name Server.

`apply_pipeline` validates, ships the agents' files as content-addressed blobs, and
writes the manifest by compare-and-set, keeping its uid and bumping its generation only
when the spec changed, as `kubectl apply` does.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
import uuid
from datetime import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oneos import state
from oneos.documents import DocumentError, check
from oneos.errors import OneOSError
from oneos.nameserver.client import KV_MAX_VALUE_SIZE, NameServer
from oneos.paths import PathEscape, inside

CLIENT_ONLY = ("stdin", "stdout", "stderr")


@dataclass
class Applied:
    name: str
    outcome: str              # created | configured | unchanged
    manifest: dict[str, Any]
    previous: dict[str, Any] | None = None    # the stored manifest before this apply; None when created
    replaced: str | None = None               # why the stored manifest it replaced could not be used, if so


def _client_files(manifest: dict[str, Any]) -> list[str]:
    """Where the manifest redirects to files of the client's machine."""
    found = []
    for agent in manifest["spec"]["agents"]:
        for stream in CLIENT_ONLY:
            if "file" in agent.get(stream, {}):
                found.append(f"{agent['name']}.{stream} -> {agent[stream]['file']}")
    return found


def _digests(manifest: dict[str, Any], base_dir: Path) -> dict[str, bytes]:
    """The content of every shipped file, by name; errors name the file and the limit."""
    contents: dict[str, bytes] = {}
    for agent in manifest["spec"]["agents"]:
        for name in agent.get("files", []):
            try:
                # A link in the manifest's folder to a file elsewhere (~/.ssh/id_rsa) would ship that file
                # to the cluster: as kustomize does with its root, only what is inside the folder is shipped.
                path = inside(base_dir, name, what=f"agent {agent['name']}'s shipped file")
            except PathEscape as exc:
                raise DocumentError(f"{exc}; ship only files inside the manifest's folder (copy it in)") from None
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise DocumentError(f"{path}: cannot ship this file of agent {agent['name']} "
                                    f"({exc.strerror})") from None
            if len(data) > KV_MAX_VALUE_SIZE:
                raise DocumentError(f"{path}: {len(data)} bytes; a file shipped with a manifest may be at most "
                                    f"{KV_MAX_VALUE_SIZE // 1024} KiB (install bigger programs on the nodes)")
            contents[name] = data
    return contents


def apply_pipeline(ns: NameServer, manifest: dict[str, Any], base_dir: str | Path, *,
                   dry_run: bool = False, attached: bool = False) -> Applied:
    """Create or update a pipeline; `attached` marks one run by `oneosctl run` (a client serves its I/O)."""
    doc = copy.deepcopy(dict(manifest))
    doc["metadata"] = dict(doc["metadata"])
    doc["spec"] = dict(doc["spec"])
    name = doc["metadata"]["name"]
    if attached:
        doc["spec"]["attached"] = True
    elif doc["spec"].get("attached") or _client_files(doc):
        raise DocumentError(f"pipeline {name}: only `oneosctl run` serves the client's terminal and files "
                            f"({', '.join(_client_files(doc)) or 'spec.attached'}); remove them to apply it")
    _refuse_init_name(ns, name)
    files = _digests(doc, Path(base_dir))
    digests = {n: hashlib.sha256(data).hexdigest() for n, data in files.items()}

    _, entry = ns.get(state.pipeline_key(name))
    current, replaced = None, None
    if entry is not None:
        try:
            current = state.decode_pipeline(entry)
        except DocumentError as exc:
            replaced = str(exc)
    meta = doc["metadata"]
    for server_set in ("uid", "generation", "createdAt", "fileDigests"):
        meta.pop(server_set, None)
    if digests:
        meta["fileDigests"] = digests
    if replaced is not None:
        # The stored manifest cannot be used (written by hand, or by an older version): this one replaces
        # it, keeping what can be kept of its identity, so that agents whose work is the same run on.
        meta.update({"createdAt": state.utcnow(), **_salvaged(entry, name)})
        outcome = "configured"
    elif current is None:
        meta.update(uid=uuid.uuid4().hex, generation=1, createdAt=state.utcnow())
        outcome = "created"
    else:
        old = current["metadata"]
        changed = (current["spec"] != doc["spec"] or old.get("fileDigests") != meta.get("fileDigests"))
        meta.update(uid=old["uid"], generation=old["generation"] + (1 if changed else 0),
                    createdAt=old["createdAt"])
        if not changed and old.get("labels") == meta.get("labels"):
            if not dry_run:
                state.ensure_pipe_key(ns, name, old["uid"])   # one applied before pipes were authenticated
            return Applied(name, "unchanged", current, current)
        outcome = "configured"
    doc["metadata"] = {k: meta[k] for k in ("name", "labels", "uid", "generation", "createdAt", "fileDigests")
                       if k in meta}
    check("pipeline", doc, f"pipeline {name}")
    if dry_run:
        return Applied(name, outcome, doc, current, replaced)
    # The flags (when it was shipped, in ms) make every put a change, even of the same content:
    # its ModifyIndex moves, so the controller's blob collector keeps a file shipped again
    # (see oneos/controller/janitor.py). The collector's grace covers this apply until its
    # manifest is written.
    shipped = time.time_ns() // 1_000_000
    state.ensure_pipe_key(ns, name, meta["uid"])   # before its agents can be assigned
    for file_name, data in files.items():
        ns.put(state.blob_key(digests[file_name]), data, flags=shipped)
    if not state.put_document(ns, state.pipeline_key(name), "pipeline", doc,
                              cas=entry.modify_index if entry else 0):
        raise OneOSError(f"pipeline {name} was changed by someone else while it was being applied; apply again")
    return Applied(name, outcome, doc, current, replaced)


def _salvaged(entry: Any, name: str) -> dict[str, Any]:
    """uid, generation (+1) and createdAt of a stored manifest that cannot be used, those that are valid;
    a new uid when its own is not, or when it is named for another pipeline (whose uid it would share)."""
    try:
        meta = json.loads(entry.value or b"").get("metadata")
    except (ValueError, AttributeError):
        meta = None
    meta = meta if isinstance(meta, dict) and meta.get("name") == name else {}
    kept: dict[str, Any] = {"uid": uuid.uuid4().hex, "generation": 1}
    if isinstance(meta.get("uid"), str) and re.fullmatch(r"[0-9a-f]{32}", meta["uid"]):
        kept["uid"] = meta["uid"]
    if isinstance(meta.get("generation"), int) and not isinstance(meta["generation"], bool) \
            and meta["generation"] >= 1:
        kept["generation"] = meta["generation"] + 1
    created = meta.get("createdAt")
    try:
        if isinstance(created, str) and datetime.fromisoformat(created.replace("Z", "+00:00")).tzinfo is not None:
            kept["createdAt"] = created
    except ValueError:
        pass
    return kept


def _refuse_init_name(ns: NameServer, name: str) -> None:
    """The init manifest's name belongs to the kernel agents: no pipeline may take it."""
    try:
        key = state.read_boot(ns).get("initManifest", state.INIT)
    except state.BootError:
        key = state.INIT
    _, entry = ns.get(key)
    try:
        init_name = state.decode(entry, "init")["metadata"]["name"] if entry else None
    except DocumentError:
        init_name = None
    if name == init_name:
        raise DocumentError(f"pipeline {name}: the name belongs to the init manifest's kernel agents; "
                            "give the pipeline another metadata.name")


def read_pipeline(ns: NameServer, name: str) -> dict[str, Any]:
    """A stored pipeline; OneOSError naming it when there is none, DocumentError saying why it cannot be used."""
    _, entry = ns.get(state.pipeline_key(name))
    if entry is None:
        raise OneOSError(f"pipeline {name!r} not found; `oneosctl get pipelines` lists them")
    return state.decode_pipeline(entry)


def read_invalid_mark(ns: NameServer, name: str) -> dict[str, Any] | None:
    """What the controller recorded of a pipeline whose stored manifest cannot be used, if anything."""
    _, entry = ns.get(state.invalid_key(name))
    try:
        return state.decode(entry, "invalid") if entry else None
    except DocumentError:
        return None


def delete_pipeline(ns: NameServer, name: str) -> bool:
    """Remove a pipeline's manifest (the controller then stops its agents); False if there was none."""
    _, entry = ns.get(state.pipeline_key(name))
    if entry is None:
        return False
    ns.delete(state.pipeline_key(name))
    ns.delete(state.PIPEKEYS + name + "/", recurse=True)
    return True


def list_pipelines(ns: NameServer) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every usable stored pipeline, by name; and name -> why, for each one that cannot be used."""
    docs, problems = state.read_pipelines(ns)
    return [docs[k] for k in sorted(docs)], problems
