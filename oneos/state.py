"""The cluster's state in the Name Server: key layout and typed access to its documents.

Every document is JSON, validated against its schema on write and on read
(see DESIGN.md, "State in Consul KV").
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from oneos.documents import DocumentError, check, load_file
from oneos.identity import SIGNATURE, IdentityError, canonical, fingerprint, seal, signer, verify
from oneos.errors import OneOSError
from oneos.nameserver.client import Entry, NameServer, kv_op
from oneos.paths import shared

PREFIX = "oneos/"
BOOT = PREFIX + "boot"
INIT = PREFIX + "init"
LEADER = PREFIX + "leader"
NODES = PREFIX + "nodes/"
MANIFESTS = PREFIX + "manifests/"
PIPELINES = MANIFESTS + "Pipeline/"
ASSIGN = PREFIX + "assign/"
STATUS = PREFIX + "status/"
BLOBS = PREFIX + "blobs/"
DEVICES = PREFIX + "devices/"
#: Pipelines whose stored manifest cannot be used, and why: written and removed by the controller.
INVALID = PREFIX + "invalid/"
#: Each node's last session renewal, held by its session: not under a prefix the controller watches.
HEARTBEATS = PREFIX + "heartbeats/"
#: Each pipeline's frame key (32 random bytes, raw), one per uid: oneos/pipekeys/<pipeline>/<uid>.
#: Written by apply, removed with the pipeline; read by the leader, which seals it into each
#: assignment for the node's key (`frameKey`: nodes never read it here), and by `oneosctl run`
#: and `logs`. Until nodes hold tokens of their own (issue 12, item 2) anyone holding the Name
#: Server's token can read it.
PIPEKEYS = PREFIX + "pipekeys/"
#: Each enrolled node's public keys (key.schema.json): oneos/keys/<id>. Only what they sign counts.
KEYS = PREFIX + "keys/"
#: What a runtime that is not enrolled asks (joinrequest.schema.json): oneos/joinrequests/<id>.
JOINREQUESTS = PREFIX + "joinrequests/"
#: An approved node's own Name Server token, sealed to its box key: oneos/enroll/<id> (see enrollment.py).
ENROLL = PREFIX + "enroll/"
#: Join tokens (jointoken.schema.json): oneos/jointokens/<token id>, secret included.
JOINTOKENS = PREFIX + "jointokens/"
#: The metadata OneOS sets when a pipeline is applied: a stored manifest without one is unusable.
SERVER_SET = ("uid", "generation", "createdAt")


def node_key(node_id: str) -> str:
    return NODES + node_id


def pipeline_key(name: str) -> str:
    return PIPELINES + name


def invalid_key(name: str) -> str:
    return INVALID + name


def pipekey_key(pipeline: str, uid: str) -> str:
    return f"{PIPEKEYS}{pipeline}/{uid}"


def ensure_pipe_key(ns: NameServer, pipeline: str, uid: str) -> None:
    """Make the pipeline's frame key once for this uid (a check-and-set: a key already there stays)."""
    ns.put(pipekey_key(pipeline, uid), secrets.token_bytes(32), cas=0)


def read_pipe_key(ns: NameServer, pipeline: str, uid: str) -> bytes:
    """The pipeline's frame key; DocumentError naming what to do when it is missing or malformed."""
    key = ns.get_raw(pipekey_key(pipeline, uid))
    if key is None or len(key) != 32:
        why = "is missing" if key is None else f"has {len(key)} bytes, not 32"
        raise DocumentError(f"the frame key of pipeline {pipeline} ({pipekey_key(pipeline, uid)}) {why}; "
                            "apply the pipeline again")
    return key


def key_key(node_id: str) -> str:
    return KEYS + node_id


def new_key_record(node_id: str, signing_key: str, box_key: str, *, kernel: bool, approved_by: str,
                   labels: dict[str, str] | None = None, token_accessor: str | None = None) -> dict[str, Any]:
    """The registration of an approved node's public keys (identity.py makes them)."""
    record = {"id": node_id, "signingKey": signing_key, "boxKey": box_key, "fingerprint": fingerprint(signing_key),
              "kernel": kernel, "approvedAt": utcnow(), "approvedBy": approved_by}
    if labels:
        record["labels"] = dict(labels)
    if token_accessor:
        record["tokenAccessor"] = token_accessor
    return record


def joinrequest_key(node_id: str) -> str:
    return JOINREQUESTS + node_id


def enroll_key(node_id: str) -> str:
    return ENROLL + node_id


def jointoken_key(token_id: str) -> str:
    return JOINTOKENS + token_id


def read_keys(ns: NameServer) -> dict[str, dict[str, Any]]:
    """node id -> its registered keys, for every enrolled node (an invalid registration counts as none)."""
    _, docs, _ = read_documents(ns, KEYS, "key")
    return {key[len(KEYS):]: doc for key, doc in docs.items() if doc["id"] == key[len(KEYS):]}


def read_key(ns: NameServer, node_id: str) -> dict[str, Any] | None:
    """One node's registered keys, or None when it is not enrolled (or its registration is invalid)."""
    _, entry = ns.get(key_key(node_id))
    if entry is None:
        return None
    try:
        doc = decode(entry, "key")
    except DocumentError:
        return None
    return doc if doc["id"] == node_id else None


def kernel_keys(keys: dict[str, dict[str, Any]], boot: dict[str, Any] | None) -> set[str]:
    """The kernel nodes among the enrolled: those their approval or the boot record says are. Never what a
    node says of itself (its record's `kernel`): a node may claim anything, only these are trusted."""
    named = set((boot or {}).get("kernelNodes", []))
    return {node_id for node_id, key in keys.items() if key["kernel"] or node_id in named}


def signed_by(doc: dict[str, Any], keys: dict[str, dict[str, Any]], trusted: set[str] | None = None) -> str | None:
    """Why `doc` does not carry a valid signature by a registered key (of one of `trusted`, if given); None when
    it does."""
    by = signer(doc)
    if by is None:
        return "it is not signed"
    key = keys.get(by)
    if key is None:
        return f"it is signed by {by}, whose key is not registered"
    if trusted is not None and by not in trusted:
        return f"it is signed by {by}, which is not a kernel node"
    if not verified(doc, key["signingKey"]):
        return f"its signature by {by} does not verify against {by}'s registered key (altered, or forged)"
    return None


def verified(doc: dict[str, Any], signing_key: str) -> bool:
    """identity.verify, remembered: the controller's pass and a node's watch see the same signed documents
    again and again, and checking a signature costs fifteen times what the canonical JSON does."""
    sig = doc.get(SIGNATURE)
    value = sig.get("value") if isinstance(sig, dict) else None
    if not isinstance(value, str):
        return False
    seen = (signing_key, canonical(doc) + b"\0" + value.encode("ascii", "replace"))
    if seen in _VERIFIED:
        return True
    if not verify(doc, signing_key):
        return False
    _VERIFIED.add(*seen)
    return True


#: A node record the controller does not trust, as `oneosctl get nodes` shows its state.
NOT_APPROVED, SIGNATURE_INVALID = "NotApproved", "SignatureInvalid"


def node_distrust(record: dict[str, Any], keys: dict[str, dict[str, Any]]) -> tuple[str, str] | None:
    """(state, why) when a node record cannot be trusted: its node is not enrolled, or the record is not
    signed by the node's own registered key; None when it can. Nothing is placed on such a node."""
    node_id = record["id"]
    if node_id not in keys:
        return NOT_APPROVED, (f"node {node_id} is not approved (no key registered at {key_key(node_id)}): nothing is "
                              f"placed on it; approve it with `oneosctl node approve {node_id}` if it is yours")
    by = signer(record)
    why = signed_by(record, keys) if by in (node_id, None) else f"it is signed by {by}, not by the node itself"
    if why is not None:
        return SIGNATURE_INVALID, f"the record of node {node_id} cannot be trusted: {why}; nothing is placed on it"
    return None


def trusted_labels(record: dict[str, Any], keys: dict[str, dict[str, Any]]) -> dict[str, str]:
    """A trusted node's labels: its record's, and its approval's (a join token's, or `oneosctl node approve
    --label`), which win over what its record says of the same keys."""
    return {**record["labels"], **keys[record["id"]].get("labels", {})}


def status_distrust(status: dict[str, Any], keys: dict[str, dict[str, Any]], kernels: set[str]) -> str | None:
    """Why the controller cannot act on a status: it is not signed by the node it names (`node`), whose
    key is registered, nor by a kernel node's (the leader writes Pending and Lost); None when it is.
    Any node's token may write any status (Consul's prefix rules cannot say "your agents' only"):
    this is what keeps one node from reporting another's agents finished, or anything else."""
    by = signer(status)
    if by is not None and by in kernels:
        return signed_by(status, keys, kernels)
    if by is not None and by != status.get("node"):
        return f"it is signed by {by}, neither the node it names nor a kernel node"
    return signed_by(status, keys)


def frame_key_context(pipeline: str, uid: str) -> str:
    """What a pipeline's frame key is sealed for, in an assignment: it opens for nothing else."""
    return f"frame key {pipeline} {uid}"


def seal_frame_key(key: bytes, box_key: str, pipeline: str, uid: str) -> str | None:
    """The frame key sealed to a node's registered box key (None when that key is unusable)."""
    try:
        return seal(box_key, key, frame_key_context(pipeline, uid))
    except IdentityError:
        return None


def heartbeat_key(node_id: str) -> str:
    return HEARTBEATS + node_id


def agent_id(pipeline: str, agent: str) -> str:
    """An agent's cluster-wide id: names are unique within a pipeline, and contain no '.'."""
    return f"{pipeline}.{agent}"


def split_agent_id(agent_key: str) -> tuple[str, str]:
    pipeline, _, agent = agent_key.partition(".")
    return pipeline, agent


def assign_key(node_id: str, agent_key: str) -> str:
    return f"{ASSIGN}{node_id}/{agent_key}"


def split_assign_key(key: str) -> tuple[str, str]:
    """The (node id, agent id) an assignment's key names: oneos/assign/<node>/<agent id>."""
    node_id, _, agent_key = key[len(ASSIGN):].partition("/")
    return node_id, agent_key


def status_key(agent_key: str) -> str:
    return STATUS + agent_key


#: Agent states after which nothing runs until something changes (the spec, the pipeline).
FINAL_STATES = ("Exited", "Failed")
#: The fields of an assignment that say what runs: a change in any of them restarts the agent. Not its
#: `frameKey` and `frameKeyFor` (sealed anew, the same key reads differently) nor its `signature`.
WORK_FIELDS = ("uid", "agent", "inputs", "outputs", "attached", "kernel", "files")


def same_work(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two assignments run the same thing (the generation and the epoch do not say that)."""
    return all(a.get(f) == b.get(f) for f in WORK_FIELDS)


def desired_assignments(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """agent id -> the assignment each agent of the manifest should have (without placement)."""
    meta, spec = manifest["metadata"], manifest["spec"]
    links = spec.get("links", [])
    digests = meta.get("fileDigests", {})
    wanted = {}
    for agent in spec["agents"]:
        name = agent["name"]
        wanted[agent_id(meta["name"], name)] = {
            "pipeline": meta["name"],
            "uid": meta["uid"],
            "generation": meta["generation"],
            "agent": agent,
            "inputs": [link["from"] for link in links if link["to"] == name],
            "outputs": [link["to"] for link in links if link["from"] == name],
            "attached": bool(spec.get("attached", False)),
            "files": {f: digests[f] for f in agent.get("files", []) if f in digests},
        }
        if manifest.get("kind") == "Init":
            wanted[agent_id(meta["name"], name)]["kernel"] = True
    return wanted


def writes_output(agent: dict[str, Any], outputs: list[str]) -> bool:
    """Whether an agent's stdout is its pipeline's output (read by `oneosctl run`, and by
    `oneosctl logs PIPELINE`): its spec says so (`stdout`, not a device), or no agent reads it."""
    if "stdout" in agent:
        return "device" not in agent["stdout"]
    return not outputs


def output_agents(manifest: dict[str, Any]) -> list[str]:
    """The agents of a pipeline whose stdout is the pipeline's output, in the manifest's order."""
    links = manifest["spec"].get("links", [])
    return [a["name"] for a in manifest["spec"]["agents"]
            if writes_output(a, [link["to"] for link in links if link["from"] == a["name"]])]


def device_key(device: str) -> str:
    return f"{DEVICES}{device}"


def read_devices(ns: NameServer) -> dict[str, dict[str, Any]]:
    """device (KIND/NAME) -> its registration: which node has it."""
    return read_devices_and_problems(ns)[0]


def read_devices_and_problems(ns: NameServer) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """device -> its registration, and device -> why, for each registration that is not valid."""
    _, docs, problems = read_documents(ns, DEVICES, "device")
    return ({key[len(DEVICES):]: doc for key, doc in docs.items()},
            {key[len(DEVICES):]: why for key, why in problems.items()})


def blob_key(digest: str) -> str:
    return BLOBS + digest


class BootError(OneOSError):
    """The boot record is missing or unusable: the cluster is not set up."""


def encode(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


class _Checked:
    """Which stored bytes already passed which schema: the controller's pass, a node's watch of every
    status and the CLI read the same unchanged documents again and again, and checking one against
    its schema costs a hundred times what parsing it does. Bounded, newest kept; thread-safe."""

    def __init__(self, size: int = 8192) -> None:
        self.size = size
        self._seen: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(schema: str, raw: bytes) -> tuple[str, bytes]:
        return schema, hashlib.blake2b(raw, digest_size=16).digest()

    def __contains__(self, item: tuple[str, bytes]) -> bool:
        key = self._key(*item)
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return True
            return False

    def add(self, schema: str, raw: bytes) -> None:
        with self._lock:
            self._seen[self._key(schema, raw)] = None
            if len(self._seen) > self.size:
                self._seen.popitem(last=False)


_CHECKED = _Checked()
_VERIFIED = _Checked()      # (signing key, signed bytes) that verified


def decode(entry: Entry, schema: str) -> Any:
    """A stored document, parsed and validated; DocumentError names the key when it is not valid."""
    raw = entry.value or b""
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise DocumentError(f"{entry.key}: not valid JSON ({exc})") from None
    if (schema, raw) in _CHECKED:
        return value          # a fresh object: callers may change what they get
    check(schema, value, entry.key)
    _CHECKED.add(schema, raw)
    return value


def decode_pipeline(entry: Entry) -> dict[str, Any]:
    """A stored Pipeline manifest, parsed and checked as the controller needs it: valid against its
    schema, named as its key, with every field OneOS sets on apply; DocumentError says what is wrong."""
    doc = decode(entry, "pipeline")
    name = entry.key[len(PIPELINES):]
    if doc["metadata"]["name"] != name:
        raise DocumentError(f"{entry.key}: metadata.name is {doc['metadata']['name']!r}, not {name!r} as its key")
    missing = [f"metadata.{field}" for field in SERVER_SET if field not in doc["metadata"]]
    if missing:
        raise DocumentError(f"{entry.key}: {', '.join(missing)} missing: OneOS sets "
                            f"{'it' if len(missing) == 1 else 'them'} when a pipeline is applied "
                            "(was it written by hand, or by an older version?)")
    return doc


def read_pipelines(ns: NameServer) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """name -> every usable stored pipeline, and name -> why each other one cannot be used."""
    _, entries = ns.get_tree(PIPELINES)
    docs, problems = {}, {}
    for entry in entries:
        name = entry.key[len(PIPELINES):]
        try:
            docs[name] = decode_pipeline(entry)
        except DocumentError as exc:
            problems[name] = str(exc)
    return docs, problems


def put_document(ns: NameServer, key: str, schema: str, doc: Any, **kwargs: Any) -> bool:
    """Validate a document against its schema, then write it (kwargs as NameServer.put)."""
    check(schema, doc, key)
    return ns.put(key, encode(doc), **kwargs)


def set_document_op(key: str, schema: str, doc: Any) -> dict[str, Any]:
    """A /v1/txn operation that writes a document, validated first."""
    check(schema, doc, key)
    return kv_op("set", key, encode(doc))


def read_boot(ns: NameServer) -> dict[str, Any]:
    """The boot record; BootError when it is absent or invalid."""
    _, entry = ns.get(BOOT)
    if entry is None:
        raise BootError(f"the Name Server at {ns.url} has no boot record ({BOOT}): the cluster is not set up; "
                        "start a one-machine cluster with `oneosd --dev`, or write one with "
                        "`oneosctl bootstrap --pulsar-url URL`")
    try:
        return decode(entry, "boot")
    except DocumentError as exc:
        raise BootError(f"the boot record on {ns.url} is invalid: {exc}; rewrite it with "
                        "`oneosctl bootstrap --force ...`") from None


def utcnow() -> str:
    """Now, as the timestamps in stored documents write it."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_boot_record(*, cluster: str, pulsar_url: str, namespace: str = "public/default",
                    kernel_nodes: list[str] | None = None, session_ttl: str = "10s",
                    lock_delay: str = "15s", pulsar_admin_url: str | None = None,
                    blob_grace: str | None = None, pulsar_tls_trust_certs: str | None = None,
                    pulsar_tls_hostname_verification: bool = True,
                    pulsar_authentication: str | None = None) -> dict[str, Any]:
    """A boot record (validated when written); the optional fields only when given."""
    boot = {
        "schemaVersion": 1,
        "cluster": cluster,
        "pulsar": {"url": pulsar_url, "namespace": namespace},
        "kernelNodes": list(kernel_nodes or []),
        "initManifest": INIT,
        "sessionTTL": session_ttl,
        "lockDelay": lock_delay,
        "createdAt": utcnow(),
    }
    if pulsar_admin_url:
        boot["pulsar"]["adminUrl"] = pulsar_admin_url.rstrip("/")
    if pulsar_tls_trust_certs:
        boot["pulsar"]["tlsTrustCertsFile"] = pulsar_tls_trust_certs
    if not pulsar_tls_hostname_verification:
        boot["pulsar"]["tlsHostnameVerification"] = False
    if pulsar_authentication and pulsar_authentication != "none":
        boot["pulsar"]["authentication"] = pulsar_authentication
    if blob_grace:
        boot["blobGracePeriod"] = blob_grace
    return boot


def default_init(path: str | Path | None = None) -> dict[str, Any]:
    """The init manifest to install: `path`, else the one shipped in manifests/init.yaml."""
    docs = load_file(path or shared("manifests/init.yaml"))
    if len(docs) != 1 or docs[0].get("kind") != "Init":
        raise DocumentError(f"{path}: expected exactly one document of kind Init")
    return docs[0]


def bootstrap(ns: NameServer, boot: dict[str, Any], init: dict[str, Any], *, force: bool = False) -> tuple[bool, bool]:
    """Write the boot record and the init manifest where absent (by CAS); which ones were written."""
    cas = None if force else 0
    wrote_boot = put_document(ns, BOOT, "boot", boot, cas=cas)
    wrote_init = put_document(ns, boot["initManifest"], "init", init, cas=cas)
    return wrote_boot, wrote_init


def timestamp(when: datetime | None = None) -> str:
    """A moment (now by default) as stored documents write it, to the millisecond."""
    when = when or datetime.now(timezone.utc)
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """A stored timestamp as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))


def new_heartbeat(node_id: str, ttl: float, when: datetime | None = None) -> dict[str, Any]:
    """What a node writes at oneos/heartbeats/<id> after renewing its session (held by that session)."""
    return {"node": node_id, "renewedAt": timestamp(when), "ttl": ttl}


def overdue(heartbeat: dict[str, Any] | None, now: datetime) -> float | None:
    """Seconds since the node last renewed its session, when that is more than its session TTL (the node
    is NotReady: paused, cut off, or dying; its session may still run for up to another TTL); else None.

    A node with no heartbeat (an older version, or one that has just joined) counts as renewing. The
    node's clock wrote the time and `now` is the reader's: their clocks are assumed to agree to well
    within a TTL, as Kubernetes assumes of its node leases.
    """
    if not heartbeat:
        return None
    silent = (now - parse_time(heartbeat["renewedAt"])).total_seconds()
    return silent if silent > heartbeat["ttl"] else None


@dataclass
class NodeView:
    """A node as `oneosctl get nodes` shows it."""

    record: dict[str, Any]
    leader: bool
    heartbeat: dict[str, Any] | None = None
    silent: float | None = None           # seconds since its last renewal, once that is overdue (NotReady)
    distrust: tuple[str, str] | None = None   # (state, why) when its record cannot be trusted (node_distrust)
    kernel: bool | None = None            # whether it is a kernel node, as its approval or the boot record says
    labels: dict[str, str] | None = None  # its record's labels and its approval's (which win), when trusted

    @property
    def state(self) -> str:
        """NotApproved or SignatureInvalid when its record cannot be trusted; else Ready (or Stopping) as the
        node says, or NotReady once its renewals are overdue."""
        if self.distrust is not None:
            return self.distrust[0]
        return "NotReady" if self.silent is not None else self.record["state"]

    def not_ready_reason(self) -> str:
        """Why it is NotReady, for people."""
        return (f"node {self.record['id']} is NotReady: no session renewal for {self.silent:.0f}s "
                f"(session TTL {self.heartbeat['ttl']:g}s)" if self.heartbeat and self.silent is not None else "")


def read_nodes(ns: NameServer, now: datetime | None = None, keys: dict[str, dict[str, Any]] | None = None
               ) -> tuple[list[NodeView], list[str]]:
    """Live nodes sorted by id, and one line per node record that failed validation.

    With `now` (the commands), each node's heartbeat is read too and the node is NotReady
    once its last renewal is older than its session TTL; and the registered keys, so that a
    node whose record cannot be trusted says so (NodeView.distrust) and each node's `kernel`
    is what its approval or the boot record says. Without (the controller's pass), neither is
    read here: the controller goes by the sessions alone, and reads the keys once itself.
    `keys`: the registered keys when the caller has read them already.
    """
    _, entries = ns.get_tree(NODES)
    leader = read_leader(ns)
    leader_id = leader["node"] if leader else None
    beats = read_heartbeats(ns) if now is not None else {}
    if now is not None and keys is None:
        keys = read_keys(ns)
    kernels: set[str] = set()
    if keys is not None:
        try:
            kernels = kernel_keys(keys, read_boot(ns))
        except BootError:
            kernels = kernel_keys(keys, None)
    nodes, problems = [], []
    for entry in entries:
        try:
            record = decode(entry, "node")
        except DocumentError as exc:
            problems.append(str(exc))
            continue
        beat = beats.get(record["id"])
        view = NodeView(record, record["id"] == leader_id, beat, overdue(beat, now) if now else None)
        if keys is not None:
            view.distrust = node_distrust(record, keys)
            view.kernel = view.distrust is None and record["id"] in kernels
            if view.distrust is None:
                view.labels = trusted_labels(record, keys)
        nodes.append(view)
    return nodes, problems


def read_heartbeats(ns: NameServer) -> dict[str, dict[str, Any]]:
    """node id -> its last heartbeat (the unreadable ones are left out: such a node counts as renewing)."""
    _, docs, _ = read_documents(ns, HEARTBEATS, "heartbeat")
    return {key[len(HEARTBEATS):]: doc for key, doc in docs.items()}


def not_ready_nodes(ns: NameServer, now: datetime) -> dict[str, str]:
    """node id -> why it is NotReady, for each live node whose renewals are overdue (one read)."""
    found = {}
    for key_node, beat in read_heartbeats(ns).items():
        silent = overdue(beat, now)
        if silent is not None:
            found[key_node] = NodeView({"id": key_node}, False, beat, silent).not_ready_reason()
    return found


def read_leader(ns: NameServer) -> dict[str, Any] | None:
    """The elected controller's record, or None while no one holds the lock."""
    _, entry = ns.get(LEADER)
    if entry is None or not entry.session:
        return None
    try:
        return decode(entry, "leader")
    except DocumentError:
        return None


def read_documents(ns: NameServer, prefix: str, schema: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Every valid document under a prefix (key -> document), and key -> why, for each invalid one."""
    index, entries = ns.get_tree(prefix)
    docs, problems = {}, {}
    for entry in entries:
        try:
            docs[entry.key] = decode(entry, schema)
        except DocumentError as exc:
            problems[entry.key] = str(exc)
    return index, docs, problems


def read_assignments(ns: NameServer) -> dict[str, tuple[str, dict[str, Any]]]:
    """agent id -> (node id, assignment), for every assignment in the cluster."""
    return read_assignments_and_problems(ns)[0]


def read_assignments_and_problems(ns: NameServer) -> tuple[dict[str, tuple[str, dict[str, Any]]], dict[str, str]]:
    """agent id -> (node id, assignment), and key -> why, for each assignment that is not valid."""
    _, docs, problems = read_documents(ns, ASSIGN, "assignment")
    found = {}
    for key, doc in docs.items():
        node_id, agent_key = split_assign_key(key)
        found[agent_key] = (node_id, doc)
    return found, problems


def read_statuses(ns: NameServer, pipeline: str | None = None) -> dict[str, dict[str, Any]]:
    """agent id -> status, for one pipeline or all."""
    return read_statuses_and_problems(ns, pipeline)[0]


def read_statuses_and_problems(ns: NameServer, pipeline: str | None = None
                               ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """agent id -> status, and agent id -> why, for each status that is not valid (one pipeline or all)."""
    prefix = STATUS + (f"{pipeline}." if pipeline else "")
    _, docs, problems = read_documents(ns, prefix, "status")
    return ({key[len(STATUS):]: doc for key, doc in docs.items()},
            {key[len(STATUS):]: why for key, why in problems.items()})
