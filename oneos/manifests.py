"""Desired state: applying and deleting Pipeline manifests in the Name Server.

`apply_pipeline` validates, ships the agents' files as content-addressed blobs, and
writes the manifest by compare-and-set, keeping its uid and bumping its generation only
when the spec changed, as `kubectl apply` does.
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oneos import state
from oneos.documents import DocumentError, check
from oneos.errors import OneOSError
from oneos.nameserver.client import KV_MAX_VALUE_SIZE, NameServer

CLIENT_ONLY = ("stdin", "stdout", "stderr")


@dataclass
class Applied:
    name: str
    outcome: str              # created | configured | unchanged
    manifest: dict[str, Any]
    previous: dict[str, Any] | None = None    # the stored manifest before this apply; None when created


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
            path = base_dir / name
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
    current = state.decode(entry, "pipeline") if entry else None
    meta = doc["metadata"]
    for server_set in ("uid", "generation", "createdAt", "fileDigests"):
        meta.pop(server_set, None)
    if digests:
        meta["fileDigests"] = digests
    if current is None:
        meta.update(uid=uuid.uuid4().hex, generation=1, createdAt=state.utcnow())
        outcome = "created"
    else:
        old = current["metadata"]
        changed = (current["spec"] != doc["spec"] or old.get("fileDigests") != meta.get("fileDigests"))
        meta.update(uid=old["uid"], generation=old["generation"] + (1 if changed else 0),
                    createdAt=old["createdAt"])
        if not changed and old.get("labels") == meta.get("labels"):
            return Applied(name, "unchanged", current, current)
        outcome = "configured"
    doc["metadata"] = {k: meta[k] for k in ("name", "labels", "uid", "generation", "createdAt", "fileDigests")
                       if k in meta}
    check("pipeline", doc, f"pipeline {name}")
    if dry_run:
        return Applied(name, outcome, doc, current)
    for data in files.values():
        ns.put(state.blob_key(hashlib.sha256(data).hexdigest()), data)
    if not state.put_document(ns, state.pipeline_key(name), "pipeline", doc,
                              cas=entry.modify_index if entry else 0):
        raise OneOSError(f"pipeline {name} was changed by someone else while it was being applied; apply again")
    return Applied(name, outcome, doc, current)


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
    """A stored pipeline; OneOSError naming it when there is none."""
    _, entry = ns.get(state.pipeline_key(name))
    if entry is None:
        raise OneOSError(f"pipeline {name!r} not found; `oneosctl get pipelines` lists them")
    return state.decode(entry, "pipeline")


def delete_pipeline(ns: NameServer, name: str) -> bool:
    """Remove a pipeline's manifest (the controller then stops its agents); False if there was none."""
    _, entry = ns.get(state.pipeline_key(name))
    if entry is None:
        return False
    ns.delete(state.pipeline_key(name))
    return True


def list_pipelines(ns: NameServer) -> list[dict[str, Any]]:
    _, docs, _ = state.read_documents(ns, state.PIPELINES, "pipeline")
    return [docs[k] for k in sorted(docs)]
