"""Enrollment: how a runtime's key gets registered, and the Name Server rights each part holds.

Two ways in, as k3s and Nomad have them. A runtime that is not enrolled writes a join request
at oneos/joinrequests/<id> (its public keys, signed by its key, so it proves it holds it) and
waits; an operator approves it (`oneosctl node approve ID`), or the elected controller does,
when the request carries a proof made with a join token that is still valid
(`oneosctl token create`). Either way `approve` writes, in this order: the node's own ACL
token (when the Name Server has ACLs), sealed to the node's box key at oneos/enroll/<id>;
then oneos/keys/<id>, which the node waits for. So when the node sees its key registered,
its token is already there for it to open.

The rights (Consul ACL rules, deny by default): see `anonymous_rules`, `node_rules`,
KERNEL_RULES and OPERATOR_RULES, which `install_policies` writes at bootstrap.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import string
from datetime import datetime, timedelta, timezone
from typing import Any

from oneos import state
from oneos.documents import DocumentError
from oneos.errors import OneOSError
from oneos.identity import Identity, canonical, fingerprint, seal, verify
from oneos.nameserver.client import NameServer

log = logging.getLogger("oneos.enrollment")

ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
ANONYMOUS_POLICY = "oneos-anonymous"
KERNEL_POLICY = "oneos-kernel"
OPERATOR_POLICY = "oneos-operator"
NODE_POLICY_PREFIX = "oneos-node-"

_TOKEN_ID = 6
_TOKEN_SECRET = 16
_TOKEN_ALPHABET = string.ascii_lowercase + string.digits


class EnrollmentError(OneOSError):
    """An approval, revocation or join token that cannot be done as asked."""


def node_policy(node_id: str) -> str:
    return NODE_POLICY_PREFIX + node_id


def token_context(node_id: str) -> str:
    """What a node's sealed token is sealed for: it opens as nothing else."""
    return f"token {node_id}"


# ------------------------------------------------------------------ rules


def anonymous_rules() -> str:
    """What anyone may do without a token: read the boot record and the registered keys, ask to join,
    and read its sealed token (which only its key opens)."""
    return "\n".join([
        f'key "{state.BOOT}" {{ policy = "read" }}',
        f'key_prefix "{state.KEYS}" {{ policy = "read" }}',
        f'key_prefix "{state.JOINREQUESTS}" {{ policy = "write" }}',
        f'key_prefix "{state.ENROLL}" {{ policy = "read" }}',
    ]) + "\n"


def node_rules(node_id: str, kernel: bool = False) -> str:
    """One node's own rights: its record, heartbeat and sealed token; agent statuses and devices (per agent
    or device, not per node: Consul's prefix rules cannot say "the agents assigned to you"; statuses are
    signed by the node they name, and no one acts on a status its node did not sign); reading the cluster's state, but not
    the join tokens, nor the frame keys (assignments carry them, sealed to their node). Sessions: Consul's session
    rules name the Name Server's node, which every OneOS node shares, so any node may renew or destroy
    any session. A kernel node's policy leaves the denies out: its kernel policy (acl = "write") could
    grant it anything anyway, and a deny would win over its kernel rights."""
    lines = [
        f'key_prefix "{state.PREFIX}" {{ policy = "read" }}',
        f'key "{state.node_key(node_id)}" {{ policy = "write" }}',
        f'key "{state.heartbeat_key(node_id)}" {{ policy = "write" }}',
        f'key "{state.enroll_key(node_id)}" {{ policy = "write" }}',
        f'key_prefix "{state.STATUS}" {{ policy = "write" }}',
        f'key_prefix "{state.DEVICES}" {{ policy = "write" }}',
        'session_prefix "" { policy = "write" }',
    ]
    if not kernel:
        lines.append(f'key_prefix "{state.JOINTOKENS}" {{ policy = "deny" }}')
        lines.append(f'key_prefix "{state.PIPEKEYS}" {{ policy = "deny" }}')
    return "\n".join(lines) + "\n"


#: What a kernel node adds (the controller, the janitor, the redeemer of join tokens). acl = "write"
#: lets it make node tokens; in Consul that amounts to management (a token that may write ACLs may
#: give itself any right), so a kernel node is trusted with the cluster.
KERNEL_RULES = "\n".join([
    f'key_prefix "{prefix}" {{ policy = "write" }}'
    for prefix in (state.ASSIGN, state.STATUS, state.INVALID, state.BLOBS, state.KEYS, state.ENROLL,
                   state.JOINREQUESTS, state.JOINTOKENS, state.PIPEKEYS)
] + [f'key "{state.LEADER}" {{ policy = "write" }}', 'acl = "write"']) + "\n"

#: Who runs `oneosctl`: manifests, shipped files, frame keys, approvals and revocations (acl = "write",
#: which again amounts to management).
OPERATOR_RULES = "\n".join([
    f'key_prefix "{state.PREFIX}" {{ policy = "write" }}',
    'session_prefix "" { policy = "write" }',
    'acl = "write"',
]) + "\n"


def shared_policies() -> dict[str, tuple[str, str]]:
    """The policies every cluster has: name -> (rules, description)."""
    return {ANONYMOUS_POLICY: (anonymous_rules(), "OneOS: what anyone may do (ask to join)"),
            KERNEL_POLICY: (KERNEL_RULES, "OneOS: what kernel nodes add (controller, enrollment)"),
            OPERATOR_POLICY: (OPERATOR_RULES, "OneOS: oneosctl users")}


def outdated_policies(ns: NameServer) -> list[str]:
    """What install_policies would change: the shared policies missing or with other rules, and the
    anonymous token when it lacks its policy (by name, for people)."""
    outdated = [name for name, (rules, _) in shared_policies().items()
                if (ns.acl_policy_read(name) or {}).get("Rules") != rules]
    anonymous = ns.acl_token_read(ANONYMOUS_ACCESSOR) or {}
    if ANONYMOUS_POLICY not in [p.get("Name") for p in anonymous.get("Policies") or []]:
        outdated.append("the anonymous token's policies")
    return outdated


def install_policies(ns: NameServer) -> bool:
    """Write the shared policies and give the anonymous token its own (keeping any others it has);
    False (nothing done) when the Name Server has no ACLs."""
    if not ns.acl_enabled():
        return False
    for name, (rules, description) in shared_policies().items():
        ns.acl_policy_upsert(name, rules, description)
    anonymous = ns.acl_token_read(ANONYMOUS_ACCESSOR) or {}
    names = [p["Name"] for p in anonymous.get("Policies") or [] if p.get("Name")]
    if ANONYMOUS_POLICY not in names:
        ns.acl_token_update(ANONYMOUS_ACCESSOR, anonymous.get("Description") or "Anonymous Token",
                            names + [ANONYMOUS_POLICY])
    return True


# ---------------------------------------------------------- join requests


def parse_join_token(text: str) -> tuple[str, str]:
    """ID.SECRET as `oneosctl token create` prints it."""
    tid, dot, secret = text.strip().partition(".")
    if not dot or len(tid) != _TOKEN_ID or len(secret) != _TOKEN_SECRET \
            or not set(tid + secret) <= set(_TOKEN_ALPHABET):
        raise EnrollmentError("the join token is not ID.SECRET (6 and 16 lowercase letters or digits) as "
                              "`oneosctl token create` prints it")
    return tid, secret


def _proof(secret: str, request: dict[str, Any]) -> str:
    body = {k: v for k, v in request.items() if k not in ("proof", "signature")}
    return base64.b64encode(hmac.new(secret.encode(), canonical(body), hashlib.sha256).digest()).decode()


def new_join_request(identity: Identity, node_id: str, *, host: str, address: str, wants_kernel: bool,
                     labels: dict[str, str] | None = None, join_token: str | None = None) -> dict[str, Any]:
    """What a runtime that is not enrolled writes at oneos/joinrequests/<id>, signed by its key."""
    request: dict[str, Any] = {
        "id": node_id, "signingKey": identity.signing_key, "boxKey": identity.box_key,
        "fingerprint": identity.fingerprint, "host": host, "address": address,
        "requestedAt": state.utcnow(), "wantsKernel": wants_kernel,
    }
    if labels:
        request["labels"] = dict(labels)
    if join_token:
        tid, secret = parse_join_token(join_token)
        request["joinToken"] = tid
        request["proof"] = _proof(secret, request)
    return identity.sign(request, by=node_id)


def request_problem(request: dict[str, Any]) -> str | None:
    """Why a join request does not prove that its sender holds the key it asks to register (None: it does)."""
    if request.get("fingerprint") != fingerprint(request["signingKey"]):
        return "its fingerprint is not its signing key's"
    if (request.get("signature") or {}).get("by") != request["id"] or not verify(request, request["signingKey"]):
        return "it is not signed by the key it asks to register"
    return None


def read_requests(ns: NameServer) -> dict[str, dict[str, Any]]:
    """node id -> its join request, for every valid request (an invalid one counts as none)."""
    _, docs, _ = state.read_documents(ns, state.JOINREQUESTS, "joinrequest")
    return {key[len(state.JOINREQUESTS):]: doc for key, doc in docs.items()
            if doc["id"] == key[len(state.JOINREQUESTS):]}


def pending(ns: NameServer, keys: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The join requests of runtimes whose key is not registered (or registered as another key: a re-keyed
    node, or someone trying an enrolled node's id); `keys` as read_keys gives them, if read already."""
    keys = state.read_keys(ns) if keys is None else keys
    return {node_id: req for node_id, req in read_requests(ns).items()
            if keys.get(node_id, {}).get("signingKey") != req["signingKey"]}


# ---------------------------------------------------------------- approval


def _node_policies(ns: NameServer, node_id: str, kernel: bool) -> list[str]:
    """Write the policies a node's token is given (its own; the kernel one too, for a kernel node); their names."""
    if kernel:
        ns.acl_policy_upsert(KERNEL_POLICY, *shared_policies()[KERNEL_POLICY])
    ns.acl_policy_upsert(node_policy(node_id), node_rules(node_id, kernel), f"OneOS: node {node_id}'s own")
    return [node_policy(node_id)] + ([KERNEL_POLICY] if kernel else [])


def approve(ns: NameServer, node_id: str, signing_key: str, box_key: str, *, kernel: bool, approved_by: str,
            labels: dict[str, str] | None = None) -> dict[str, Any]:
    """Register a node's keys (and, when the Name Server has ACLs, make its own token, sealed to it);
    its key record. EnrollmentError when the id is registered to another key."""
    existing = state.read_key(ns, node_id)
    if existing and existing["signingKey"] != signing_key:
        raise EnrollmentError(f"node {node_id} is already enrolled with another key ({existing['fingerprint']}); "
                              f"`oneosctl node revoke {node_id}` first, if that node is gone for good")
    if existing:
        ns.delete(state.joinrequest_key(node_id))
        return existing
    accessor = None
    if ns.acl_enabled():
        token = ns.acl_token_create(f"oneos node {node_id}", _node_policies(ns, node_id, kernel))
        accessor = token["AccessorID"]
        ns.put(state.enroll_key(node_id), seal(box_key, token["SecretID"].encode(), token_context(node_id)))
    record = state.new_key_record(node_id, signing_key, box_key, kernel=kernel, approved_by=approved_by,
                                  labels=labels, token_accessor=accessor)
    if not state.put_document(ns, state.key_key(node_id), "key", record, cas=0):
        if accessor:
            ns.acl_token_delete(accessor)
        raise EnrollmentError(f"node {node_id} was enrolled by someone else meanwhile; "
                              "`oneosctl get nodes` shows it")
    ns.delete(state.joinrequest_key(node_id))
    return record


APPROVED, UNCHANGED, CONFIGURED = "approved", "unchanged", "configured"


def register(ns: NameServer, node_id: str, signing_key: str, box_key: str, *, kernel: bool, approved_by: str,
             labels: dict[str, str] | None = None) -> tuple[str, dict[str, Any]]:
    """Register keys an operator read off the node (`oneosd ID --make-key`), with no join request; so that a
    provisioning tool may run it again and again: (APPROVED, record) for a node not enrolled (as approve()
    does); (UNCHANGED, record), nothing written, when it is enrolled with these keys, this kernel flag and
    these labels; (CONFIGURED, record) when only the flag or the labels differ: its key record is updated
    (placement reads the labels there on its next pass) and, when the kernel flag changes, its token's
    policies too. EnrollmentError when the id is enrolled with other keys."""
    labels = dict(labels or {})
    _, entry = ns.get(state.key_key(node_id))
    if entry is None:
        return APPROVED, approve(ns, node_id, signing_key, box_key, kernel=kernel, approved_by=approved_by,
                                 labels=labels)
    existing = state.decode(entry, "key")
    if (existing["signingKey"], existing["boxKey"]) != (signing_key, box_key):
        raise EnrollmentError(f"node {node_id} is already enrolled with another key ({existing['fingerprint']}, "
                              f"not {fingerprint(signing_key)}); run `oneosctl node revoke {node_id}` first, "
                              "if that node is gone for good")
    if existing["kernel"] == kernel and existing.get("labels", {}) == labels:
        return UNCHANGED, existing
    record = dict(existing, kernel=kernel, approvedAt=state.utcnow(), approvedBy=approved_by)
    record.pop("labels", None)
    if labels:
        record["labels"] = labels
    if existing["kernel"] != kernel and existing.get("tokenAccessor") and ns.acl_enabled():
        ns.acl_token_update(existing["tokenAccessor"], f"oneos node {node_id}", _node_policies(ns, node_id, kernel))
    if not state.put_document(ns, state.key_key(node_id), "key", record, cas=entry.modify_index):
        raise EnrollmentError(f"node {node_id}'s registration changed meanwhile; run the command again")
    return CONFIGURED, record


def revoke(ns: NameServer, node_id: str) -> list[str]:
    """Remove a node for good: its registered key, its token and policy, its sessions (so its record goes
    and its agents are placed elsewhere), its sealed token and join request. What was removed, for people."""
    done = []
    _, entry = ns.get(state.key_key(node_id))
    record = None
    if entry is not None:
        try:
            record = state.decode(entry, "key")
        except DocumentError:
            record = None
        ns.delete(state.key_key(node_id))
        done.append("its registered key")
    if ns.acl_enabled():
        if record and record.get("tokenAccessor") and ns.acl_token_delete(record["tokenAccessor"]):
            done.append("its token")
        if ns.acl_policy_delete(node_policy(node_id)):
            done.append("its policy")
    for key in (state.enroll_key(node_id), state.joinrequest_key(node_id)):
        if ns.get(key)[1] is not None:
            ns.delete(key)
            done.append("its join request" if key.startswith(state.JOINREQUESTS) else "its sealed token")
    sessions = set()
    _, held = ns.get(state.node_key(node_id))
    if held and held.session:
        sessions.add(held.session)
    _, live = ns.session_list()
    sessions |= {s["ID"] for s in live
                 if (s.get("Name") or "").startswith("oneos-") and (s.get("Name") or "").split()[-1] == node_id}
    for session in sessions:
        ns.session_destroy(session)
    if sessions:
        done.append("its sessions (its agents are placed elsewhere)")
    if not done:
        raise EnrollmentError(f"node {node_id} is not enrolled and has asked for nothing; "
                              "`oneosctl get nodes` lists the nodes")
    return done


# ------------------------------------------------------------- join tokens


def _random(n: int) -> str:
    return "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(n))


def create_join_token(ns: NameServer, ttl_s: float, *, kernel: bool = False, labels: dict[str, str] | None = None,
                      uses: int = 1, description: str = "") -> str:
    """Store a new join token; ID.SECRET, to be given to the runtimes it lets in (shown once)."""
    if ttl_s <= 0 or uses < 1:
        raise EnrollmentError("a join token needs a positive --ttl and at least one use (--uses)")
    while True:
        tid, secret = _random(_TOKEN_ID), _random(_TOKEN_SECRET)
        doc: dict[str, Any] = {
            "id": tid, "secret": secret, "usesLeft": uses, "kernel": kernel, "createdAt": state.utcnow(),
            "expiresAt": state.timestamp(datetime.now(timezone.utc) + timedelta(seconds=ttl_s)),
        }
        if labels:
            doc["labels"] = dict(labels)
        if description:
            doc["description"] = description
        if state.put_document(ns, state.jointoken_key(tid), "jointoken", doc, cas=0):
            return f"{tid}.{secret}"


def read_join_tokens(ns: NameServer) -> dict[str, tuple[int, dict[str, Any]]]:
    """token id -> (its ModifyIndex, the token), for every valid one."""
    _, entries = ns.get_tree(state.JOINTOKENS)
    found = {}
    for entry in entries:
        try:
            doc = state.decode(entry, "jointoken")
        except DocumentError:
            continue
        found[doc["id"]] = (entry.modify_index, doc)
    return found


def expired(token: dict[str, Any], now: datetime | None = None) -> bool:
    return state.parse_time(token["expiresAt"]) <= (now or datetime.now(timezone.utc))


def redeem(ns: NameServer, said: set[tuple[str, ...]] | None = None) -> list[str]:
    """One pass of the redeemer: approve each join request whose proof checks under a join token that has
    uses left and has not expired, as that token says; count the use down by CAS; delete expired tokens.
    A request that does not qualify stays pending, said once in the log (`said` remembers). The ids approved."""
    said = said if said is not None else set()

    def once(request: dict[str, Any], why: str) -> None:
        mark = (request["id"], request["signature"]["value"], why)
        if mark not in said:
            said.add(mark)
            log.warning("join request of %s (key %s) left pending: %s", request["id"], request["fingerprint"], why)

    tokens = read_join_tokens(ns)
    for tid, (index, token) in list(tokens.items()):
        if expired(token):
            ns.delete(state.jointoken_key(tid), cas=index)
            del tokens[tid]
    approved = []
    keys = state.read_keys(ns)
    for node_id, request in sorted(read_requests(ns).items()):
        if not request.get("joinToken") or keys.get(node_id, {}).get("signingKey") == request["signingKey"]:
            continue
        if node_id in keys:
            once(request, "its id is enrolled with another key (`oneosctl node revoke ID` removes that one)")
            continue
        problem = request_problem(request)
        if problem:
            once(request, problem)
            continue
        found = tokens.get(request["joinToken"])
        if found is None:
            once(request, f"join token {request['joinToken']} does not exist, is used up or has expired")
            continue
        index, token = found
        if not hmac.compare_digest(request.get("proof", ""), _proof(token["secret"], request)):
            once(request, f"its proof does not check under join token {token['id']}")
            continue
        key = state.jointoken_key(token["id"])
        if token["usesLeft"] <= 1:
            counted = ns.delete(key, cas=index)
        else:
            counted = state.put_document(ns, key, "jointoken", dict(token, usesLeft=token["usesLeft"] - 1), cas=index)
        if not counted:     # used meanwhile: the next pass reads it again
            continue
        tokens.pop(token["id"])     # its index moved: another request with it waits for the next pass
        approve(ns, node_id, request["signingKey"], request["boxKey"], kernel=token["kernel"],
                labels=token.get("labels"), approved_by=f"join token {token['id']}")
        log.info("enrolled %s (key %s) with join token %s%s", node_id, request["fingerprint"], token["id"],
                 " as a kernel node" if token["kernel"] else "")
        approved.append(node_id)
    return approved
