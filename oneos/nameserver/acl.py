"""The Name Server's access control, as Consul's ACL system has it (deny by default).

Policies hold rules in Consul's rule language (HCL or JSON): `key`/`key_prefix` (read, list,
write, deny) and `session`/`session_prefix` on node names (read, write, deny), besides the rest
of Consul's rule kinds, which are parsed and kept. Tokens link policies; a request's token is
found by its secret, and with none it is the anonymous token. An Authorizer answers the checks
the way Consul's policyAuthorizer does (acl/policy_authorizer.go): an exact rule beats the
longest matching prefix rule, write implies list and read, and where several policies of one
token name the same key, deny wins, then write, list, read (acl/policy_merger.go). Whatever no
rule allows is denied: Consul's `acl.default_policy = "deny"`.

Tokens, policies and the bootstrap state are an `ACLTable` that the store keeps durable in its
journal, as records of their own kind, so they survive a restart and share the store's index.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Callable

from oneos.durations import parse_ns

ANONYMOUS_ID = "00000000-0000-0000-0000-000000000002"
ANONYMOUS_SECRET = "anonymous"
GLOBAL_MANAGEMENT_ID = "00000000-0000-0000-0000-000000000001"
GLOBAL_MANAGEMENT_NAME = "global-management"
RESERVED_PREFIX = "00000000-0000-0000-0000-0000000000"
# Consul's structs.ACLPolicyGlobalManagementRules (its rule kinds this server has, and the others).
GLOBAL_MANAGEMENT_RULES = """acl = "write"
agent_prefix "" {
  policy = "write"
}
event_prefix "" {
  policy = "write"
}
key_prefix "" {
  policy = "write"
}
keyring = "write"
node_prefix "" {
  policy = "write"
}
operator = "write"
mesh = "write"
peering = "write"
query_prefix "" {
  policy = "write"
}
service_prefix "" {
  policy = "write"
  intentions = "write"
}
session_prefix "" {
  policy = "write"
}"""

DENY, READ, LIST, WRITE = "deny", "read", "list", "write"
_PRECEDENCE = {DENY: 4, WRITE: 3, LIST: 2, READ: 1}
_NAMED_KINDS = ("agent", "event", "identity", "key", "node", "query", "service", "session")
_SCALAR_KINDS = ("acl", "keyring", "operator", "mesh", "peering")
_VALID_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,128}$")   # Consul's validPolicyName
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_TTL_MIN_NS, _TTL_MAX_NS = 60 * 10**9, 24 * 3600 * 10**9


class ACLError(Exception):
    """A request the ACL system refuses; the HTTP layer answers it with `status` and this message."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class PermissionDenied(ACLError):
    """Consul's acl.PermissionDeniedError, with its message formats (acl/errors.go)."""

    def __init__(self, accessor: str = "", resource: str = "", level: str = "", name: str | None = None,
                 *, cause: str = "") -> None:
        if cause:
            message = f"Permission denied: {cause}"
        else:
            who = "anonymous token" if accessor == ANONYMOUS_ID else f"token with AccessorID '{accessor}'"
            message = f"Permission denied: {who} lacks permission '{resource}:{level}'"
            if name is not None:
                message += f' on "{name}"'
            if accessor == ANONYMOUS_ID:
                message += ". The anonymous token is used implicitly when a request does not specify a token."
        super().__init__(message, 403)
        self.resource, self.level, self.name = resource, level, name


NOT_FOUND = "ACL not found"


# -- rules ------------------------------------------------------------------------------

@dataclass
class Rules:
    """One policy's rules: for each kind, the exact-name and the prefix rules, name -> access."""

    exact: dict[str, dict[str, str]] = field(default_factory=dict)
    prefix: dict[str, dict[str, str]] = field(default_factory=dict)
    scalar: dict[str, str] = field(default_factory=dict)


def parse_rules(text: str) -> Rules:
    """Consul's rule language, in HCL or JSON; ACLError (400) saying what is wrong."""
    rules = Rules()
    if not text or not text.strip():
        return rules
    import hcl   # here, not at import: pyhcl builds its parser when first used (tens of ms)
    try:
        raw = hcl.loads(text)
    except Exception as exc:  # noqa: BLE001 - pyhcl raises ValueError and its lexer's own errors
        raise ACLError(f"Failed to parse ACL rules: {str(exc).strip() or type(exc).__name__}", 400) from None
    if not isinstance(raw, dict):
        raise ACLError("Failed to parse ACL rules: expected rules such as key_prefix \"\" { policy = \"read\" }", 400)
    for kind, value in raw.items():
        if kind in _SCALAR_KINDS:
            if value not in (DENY, READ, WRITE):
                raise ACLError(f"Failed to parse ACL rules: Invalid {kind} policy: {json.dumps(value)} "
                               "(want read, write or deny)", 400)
            rules.scalar[kind] = value
            continue
        base = kind[:-len("_prefix")] if kind.endswith("_prefix") else kind
        if base not in _NAMED_KINDS:
            raise ACLError(f"Failed to parse ACL rules: unknown rule {kind!r}; this Name Server knows "
                           "key, key_prefix, session, session_prefix and Consul's other rule kinds", 400)
        table = (rules.prefix if kind.endswith("_prefix") else rules.exact).setdefault(base, {})
        for name, body in _named_blocks(kind, value):
            policy = body.get("policy") if isinstance(body, dict) else None
            allowed = (DENY, READ, WRITE, LIST) if base == "key" else (DENY, READ, WRITE)
            if policy not in allowed:
                raise ACLError(f"Failed to parse ACL rules: Invalid {kind} policy: {json.dumps(policy)} "
                               f"for {json.dumps(name)} (want {', '.join(allowed[1:])} or deny)", 400)
            table[name] = policy
    return rules


def _named_blocks(kind: str, value: Any) -> list[tuple[str, Any]]:
    """`kind "name" { ... }` blocks as pyhcl gives them: a dict by name, or a list of such dicts (JSON)."""
    items = value if isinstance(value, list) else [value]
    blocks: list[tuple[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            raise ACLError(f"Failed to parse ACL rules: {kind} must be a block such as "
                           f'{kind} "name" {{ policy = "read" }}', 400)
        blocks.extend(item.items())
    return blocks


def _merge(policies: list[Rules]) -> Rules:
    """Consul's MergePolicies: for one name in several policies, deny > write > list > read."""
    merged = Rules()
    for rules in policies:
        for target, source in ((merged.exact, rules.exact), (merged.prefix, rules.prefix)):
            for kind, names in source.items():
                table = target.setdefault(kind, {})
                for name, access in names.items():
                    if name not in table or _PRECEDENCE[access] > _PRECEDENCE[table[name]]:
                        table[name] = access
        for kind, access in rules.scalar.items():
            if kind not in merged.scalar or _PRECEDENCE[access] > _PRECEDENCE[merged.scalar[kind]]:
                merged.scalar[kind] = access
    return merged


def _grants(rule: str | None, need: str) -> bool:
    """Consul's enforce(): write grants all; list grants list and read; read grants read; no rule: deny."""
    if rule == WRITE:
        return True
    if rule == LIST:
        return need in (LIST, READ)
    return rule == READ and need == READ


class Authorizer:
    """What one token may do: Consul's policyAuthorizer over the token's merged policies, deny by default."""

    def __init__(self, accessor: str, policies: list[Rules]) -> None:
        self.accessor = accessor
        merged = _merge(policies)
        self._exact, self._prefix, self._scalar = merged.exact, merged.prefix, merged.scalar

    def _rule(self, kind: str, name: str) -> str | None:
        """Consul's getPolicy: the exact rule for `name`, else the longest prefix rule matching it."""
        exact = self._exact.get(kind, {})
        if name in exact:
            return exact[name]
        best, length = None, -1
        for prefix, access in self._prefix.get(kind, {}).items():
            if len(prefix) > length and name.startswith(prefix):
                best, length = access, len(prefix)
        return best

    def allowed(self, kind: str, need: str, name: str) -> bool:
        return _grants(self._rule(kind, name), need)

    def key_write_prefix(self, prefix: str) -> bool:
        """Consul's KeyWritePrefix: write on the prefix, and no rule under it that does not grant write."""
        if self._rule_prefix_only("key", prefix) != WRITE:
            return False
        for table in (self._exact.get("key", {}), self._prefix.get("key", {})):
            if any(name.startswith(prefix) and access != WRITE for name, access in table.items()):
                return False
        return True

    def _rule_prefix_only(self, kind: str, name: str) -> str | None:
        best, length = None, -1
        for prefix, access in self._prefix.get(kind, {}).items():
            if len(prefix) > length and name.startswith(prefix):
                best, length = access, len(prefix)
        return best

    def scalar(self, kind: str, need: str) -> bool:
        return _grants(self._scalar.get(kind), need)

    # Checks that raise Consul's 403.

    def require(self, kind: str, need: str, name: str) -> None:
        if not self.allowed(kind, need, name):
            raise PermissionDenied(self.accessor, kind, need, name)

    def require_key_write_prefix(self, prefix: str) -> None:
        if not self.key_write_prefix(prefix):
            raise PermissionDenied(self.accessor, "key", WRITE, prefix)

    def require_acl(self, need: str) -> None:
        if not self.scalar("acl", need):
            raise PermissionDenied(self.accessor, "acl", need)


@cache
def management_rules() -> Rules:
    """The global-management policy's rules, parsed when first needed."""
    return parse_rules(GLOBAL_MANAGEMENT_RULES)


# -- the durable table ----------------------------------------------------------------

def _now_rfc3339() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _hash(fields: dict[str, Any]) -> str:
    digest = hashlib.blake2b(json.dumps(fields, sort_keys=True).encode(), digest_size=32).digest()
    return base64.b64encode(digest).decode("ascii")


class ACLTable:
    """Tokens, policies and the bootstrap index, replayed from the store's journal (record key "acl")."""

    kind = "acl"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.tokens: dict[str, dict[str, Any]] = {}      # accessor -> token, as stored
        self.secrets: dict[str, str] = {}                # secret -> accessor
        self.policies: dict[str, dict[str, Any]] = {}    # id -> policy, as stored
        self.bootstrap_index = 0
        self.version = 0                                 # bumped by every change: cached authorizers go stale

    # Table protocol (called under the store's lock).

    def load(self, raw: Any) -> None:
        with self._lock:
            self.tokens = {t["AccessorID"]: t for t in raw.get("tokens", [])}
            self.secrets = {t["SecretID"]: t["AccessorID"] for t in self.tokens.values()}
            self.policies = {p["ID"]: p for p in raw.get("policies", [])}
            self.bootstrap_index = raw.get("bootstrap_index", 0)
            self.version += 1

    def dump(self) -> Any:
        with self._lock:
            return {"tokens": list(self.tokens.values()), "policies": list(self.policies.values()),
                    "bootstrap_index": self.bootstrap_index}

    def replay(self, payload: Any, index: int) -> None:
        with self._lock:
            for p in payload.get("policies", ()):
                self.policies[p["ID"]] = p
            for pid in payload.get("policies-", ()):
                self.policies.pop(pid, None)
            for t in payload.get("tokens", ()):
                old = self.tokens.get(t["AccessorID"])
                if old is not None:
                    self.secrets.pop(old["SecretID"], None)
                self.tokens[t["AccessorID"]] = t
                self.secrets[t["SecretID"]] = t["AccessorID"]
            for accessor in payload.get("tokens-", ()):
                old = self.tokens.pop(accessor, None)
                if old is not None:
                    self.secrets.pop(old["SecretID"], None)
            if payload.get("bootstrap"):
                self.bootstrap_index = index
            self.version += 1

    # Reads.

    def token_by_secret(self, secret: str) -> dict[str, Any] | None:
        with self._lock:
            accessor = self.secrets.get(secret)
            return self.tokens.get(accessor) if accessor else None

    def token(self, accessor: str) -> dict[str, Any] | None:
        with self._lock:
            return self.tokens.get(accessor)

    def policy(self, pid: str) -> dict[str, Any] | None:
        with self._lock:
            return self.policies.get(pid)

    def policy_by_name(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            return next((p for p in self.policies.values() if p["Name"] == name), None)

    def all_tokens(self) -> list[dict[str, Any]]:
        with self._lock:
            return sorted(self.tokens.values(), key=lambda t: t["CreateIndex"])

    def all_policies(self) -> list[dict[str, Any]]:
        with self._lock:
            return sorted(self.policies.values(), key=lambda p: p["CreateIndex"])


def _now() -> dt.datetime:
    """The time tokens expire by (tests replace it)."""
    return dt.datetime.now(dt.timezone.utc)


def _expired(token: dict[str, Any]) -> bool:
    when = token.get("ExpirationTime")
    if not when:
        return False
    return dt.datetime.fromisoformat(when.replace("Z", "+00:00")) <= _now()


def _policy_rules(policy: dict[str, Any]) -> Rules:
    if policy["ID"] == GLOBAL_MANAGEMENT_ID:
        return management_rules()
    return parse_rules(policy.get("Rules", ""))


class ACL:
    """The ACL system of one Name Server: token resolution and the /v1/acl API's operations.

    `write(change)` is the store's `table_write` for this table: each change is checked and
    applied under the store's lock, at the store's next index, journaled before it is answered.
    """

    def __init__(self, table: ACLTable, write: Callable[[str, Callable[[int], tuple[Any, Any]]], Any],
                 *, enabled: bool = True) -> None:
        self.table = table
        self._store_write = write
        # One ACL change at a time, each answered once applied: a change checks the table (is the
        # bootstrap done? is the name taken?), and the table shows only what is applied, so the
        # next change must not look before the last one is in.
        self._write_lock = threading.Lock()
        self.enabled = enabled
        self._cache: dict[str, tuple[int, Authorizer, dict[str, Any]]] = {}   # secret: (table version, ..., token)
        self._cache_lock = threading.Lock()

    def _write(self, kind: str, change: Callable[[int], tuple[Any, Any]]) -> Any:
        with self._write_lock:
            return self._store_write(kind, change)

    # -- resolving a request's token ----------------------------------------------------

    def authorizer(self, secret: str) -> Authorizer:
        """The Authorizer of the token with this secret ("" is the anonymous token); 403 ACL not found."""
        secret = secret or ANONYMOUS_SECRET
        version = self.table.version
        with self._cache_lock:
            cached = self._cache.get(secret)
        if cached is not None and cached[0] == version and not _expired(cached[2]):
            return cached[1]
        token = self.table.token_by_secret(secret)
        if token is None or _expired(token):
            raise ACLError(NOT_FOUND, 403)
        rules = []
        for link in token.get("Policies") or []:
            policy = self.table.policy(link["ID"])
            if policy is not None:
                rules.append(_policy_rules(policy))
        authz = Authorizer(token["AccessorID"], rules)
        with self._cache_lock:
            if len(self._cache) > 1024:
                self._cache.clear()
            self._cache[secret] = (version, authz, token)
        return authz

    # -- setup ------------------------------------------------------------------------------

    def initialize(self, initial_management: str | None = None) -> None:
        """What a Consul leader does as ACLs start: the builtin policy and the anonymous token where
        absent; with `initial_management` (Consul's acl.tokens.initial_management), that token, which
        also counts as the bootstrap, as in Consul."""
        def change(index: int) -> tuple[Any, Any]:
            payload: dict[str, Any] = {}
            if self.table.policy(GLOBAL_MANAGEMENT_ID) is None:
                payload["policies"] = [self._new_policy(index, GLOBAL_MANAGEMENT_ID, GLOBAL_MANAGEMENT_NAME,
                                                        "Builtin Policy that grants unlimited access",
                                                        GLOBAL_MANAGEMENT_RULES)]
            tokens = []
            if self.table.token(ANONYMOUS_ID) is None:
                tokens.append(self._new_token(index, {"AccessorID": ANONYMOUS_ID, "SecretID": ANONYMOUS_SECRET,
                                                      "Description": "Anonymous Token"}))
            if initial_management and self.table.token_by_secret(initial_management) is None:
                tokens.append(self._new_token(index, {
                    "AccessorID": str(uuid.uuid4()), "SecretID": initial_management,
                    "Description": "Initial Management Token",
                    "Policies": [{"ID": GLOBAL_MANAGEMENT_ID}]}))
                if not self.table.bootstrap_index:
                    payload["bootstrap"] = True
            if tokens:
                payload["tokens"] = tokens
            return (payload or None), None
        self._write(ACLTable.kind, change)

    # -- presentation ---------------------------------------------------------------------

    def _links(self, links: list[dict[str, Any]] | None) -> list[dict[str, str]]:
        """Policy links as Consul shows them: with the policy's current name, dropped once it is deleted."""
        out = []
        for link in links or []:
            policy = self.table.policy(link["ID"])
            if policy is not None:
                out.append({"ID": policy["ID"], "Name": policy["Name"]})
        return out

    def show_token(self, token: dict[str, Any]) -> dict[str, Any]:
        out = dict(token)
        links = self._links(token.get("Policies"))
        if links:
            out["Policies"] = links
        else:
            out.pop("Policies", None)
        return out

    @staticmethod
    def show_policy(policy: dict[str, Any], *, stub: bool = False) -> dict[str, Any]:
        out = dict(policy)
        if stub:
            out.pop("Rules", None)
        return out

    # -- bootstrap ----------------------------------------------------------------------------

    def bootstrap(self, secret: str | None = None) -> dict[str, Any]:
        """Consul's ACL.BootstrapTokens: once; then 403 with the reset index."""
        if secret is not None and not _UUID.match(secret):
            raise ACLError("Invalid bootstrap secret: it is not a valid UUID", 400)

        def change(index: int) -> tuple[Any, Any]:
            if self.table.bootstrap_index:
                raise PermissionDenied(cause=f"ACL bootstrap no longer allowed "
                                             f"(reset index: {self.table.bootstrap_index})")
            token = self._new_token(index, {"AccessorID": str(uuid.uuid4()), "SecretID": secret or str(uuid.uuid4()),
                                            "Description": "Bootstrap Token (Global Management)",
                                            "Policies": [{"ID": GLOBAL_MANAGEMENT_ID}]})
            return {"tokens": [token], "bootstrap": True}, token
        token = self._write(ACLTable.kind, change)
        shown = self.show_token(token)
        return {"ID": shown["SecretID"], **shown}

    # -- tokens -------------------------------------------------------------------------------

    @staticmethod
    def _hashed(token: dict[str, Any]) -> dict[str, Any]:
        token["Hash"] = _hash({k: token.get(k) for k in ("Description", "Policies", "ServiceIdentities",
                                                          "NodeIdentities", "TemplatedPolicies", "Local")})
        return token

    def _new_token(self, index: int, body: dict[str, Any]) -> dict[str, Any]:
        token: dict[str, Any] = {"AccessorID": body["AccessorID"], "SecretID": body["SecretID"],
                                 "Description": body.get("Description") or ""}
        for name in ("Policies", "ServiceIdentities", "NodeIdentities", "TemplatedPolicies"):
            if body.get(name):
                token[name] = body[name]
        token["Local"] = bool(body.get("Local"))
        if body.get("ExpirationTime"):
            token["ExpirationTime"] = body["ExpirationTime"]
        token["CreateTime"] = body.get("CreateTime") or _now_rfc3339()
        token["CreateIndex"] = body.get("CreateIndex", index)
        token["ModifyIndex"] = index
        return self._hashed(token)

    def _policy_links(self, raw: Any) -> list[dict[str, str]]:
        links = []
        for link in _list_of_dicts(raw, "Policies"):
            fields = {k.lower(): v for k, v in link.items()}
            pid, name = fields.get("id") or "", fields.get("name") or ""
            policy = self.table.policy(pid) if pid else self.table.policy_by_name(name) if name else None
            if policy is None:
                what = f"ID {pid!r}" if pid else f"name {name!r}"
                raise ACLError(f"No such ACL policy with {what}".replace("'", '"'))
            if all(l["ID"] != policy["ID"] for l in links):
                links.append({"ID": policy["ID"]})
        return links

    def _token_fields(self, body: dict[str, Any]) -> dict[str, Any]:
        fields = {_canonical(k): v for k, v in body.items()}
        out: dict[str, Any] = {"Description": _string(fields.get("Description"), "Description")}
        out["Policies"] = self._policy_links(fields.get("Policies"))
        if fields.get("Roles"):
            raise ACLError("This Name Server has no ACL roles: link policies to the token instead", 400)
        out["ServiceIdentities"] = _list_of_dicts(fields.get("ServiceIdentities"), "ServiceIdentities")
        out["NodeIdentities"] = _list_of_dicts(fields.get("NodeIdentities"), "NodeIdentities")
        out["TemplatedPolicies"] = [_templated(t) for t in _list_of_dicts(fields.get("TemplatedPolicies"),
                                                                           "TemplatedPolicies")]
        out["Local"] = bool(fields.get("Local"))
        for ident in out["NodeIdentities"]:
            if not ident.get("NodeName") or not ident.get("Datacenter"):
                raise ACLError("Invalid Token: Node identity is missing the node name or datacenter")
        for ident in out["ServiceIdentities"]:
            if not ident.get("ServiceName"):
                raise ACLError("Invalid Token: Service identity is missing the service name")
        return out

    def token_create(self, body: dict[str, Any], *, clone_of: str | None = None) -> dict[str, Any]:
        """Consul's ACL.TokenSet with Create (and TokenClone)."""
        fields = {_canonical(k): v for k, v in body.items()}
        accessor = _string(fields.get("AccessorID"), "AccessorID")
        secret = _string(fields.get("SecretID"), "SecretID")
        ttl = fields.get("ExpirationTTL")
        expiration = _string(fields.get("ExpirationTime"), "ExpirationTime")
        settings = self._token_fields(body) if clone_of is None else None

        def change(index: int) -> tuple[Any, Any]:
            nonlocal settings
            if clone_of is not None:
                source = self.table.token(_accessor_arg(clone_of))
                if source is None or _expired(source):
                    raise ACLError(NOT_FOUND, 403)
                settings = {k: source.get(k) for k in ("Description", "Policies", "ServiceIdentities",
                                                       "NodeIdentities", "TemplatedPolicies", "Local",
                                                       "ExpirationTime")}
                if fields.get("Description"):
                    settings["Description"] = fields["Description"]
                new_accessor, new_secret = str(uuid.uuid4()), str(uuid.uuid4())
            else:
                new_accessor = self._new_id(accessor, "AccessorID")
                new_secret = self._new_id(secret, "SecretID")
            token_body = {**settings, "AccessorID": new_accessor, "SecretID": new_secret}
            if clone_of is None:
                token_body["ExpirationTime"] = _expiration(ttl, expiration)
            token = self._new_token(index, token_body)
            return {"tokens": [token]}, token
        return self.show_token(self._write(ACLTable.kind, change))

    def _new_id(self, given: str, what: str) -> str:
        if not given:
            return str(uuid.uuid4())
        if not _UUID.match(given):
            raise ACLError(f"Invalid Token: {what} is not a valid UUID")
        if self.table.token(given) is not None or self.table.token_by_secret(given) is not None:
            raise ACLError(f"Invalid Token: {what} is already in use")
        if given.startswith(RESERVED_PREFIX):
            raise ACLError(f'Invalid Token: UUIDs with the prefix "{RESERVED_PREFIX}" are reserved')
        return given

    def token_update(self, accessor: str, body: dict[str, Any]) -> dict[str, Any]:
        """Consul's ACL.TokenSet without Create: new settings; the secret, Local and expiry stay."""
        fields = {_canonical(k): v for k, v in body.items()}
        if fields.get("AccessorID") and fields["AccessorID"] != accessor:
            raise ACLError("Token Accessor ID in URL and payload do not match", 400)
        settings = self._token_fields(body)

        def change(index: int) -> tuple[Any, Any]:
            existing = self.table.token(_accessor_arg(accessor))
            if existing is None or _expired(existing):
                raise ACLError(f"Cannot find token {accessor!r}".replace("'", '"'))
            if fields.get("SecretID") and fields["SecretID"] != existing["SecretID"]:
                raise ACLError("Changing a token's SecretID is not permitted")
            if "Local" in fields and bool(fields["Local"]) != existing["Local"]:
                raise ACLError("Cannot toggle local mode of %s" % accessor)
            token = self._new_token(index, {**settings, "Local": existing["Local"],
                                            "AccessorID": existing["AccessorID"], "SecretID": existing["SecretID"],
                                            "ExpirationTime": existing.get("ExpirationTime"),
                                            "CreateTime": existing["CreateTime"],
                                            "CreateIndex": existing["CreateIndex"]})
            return {"tokens": [token]}, token
        return self.show_token(self._write(ACLTable.kind, change))

    def token_delete(self, accessor: str, requester: str) -> bool:
        def change(index: int) -> tuple[Any, Any]:
            existing = self.table.token(_accessor_arg(accessor))
            if existing is None:
                raise ACLError("Cannot find token to delete", 404)
            if existing["AccessorID"] == ANONYMOUS_ID:
                raise ACLError("Delete operation not permitted on the anonymous token")
            if existing["AccessorID"] == requester:
                raise ACLError("Deletion of the request's authorization token is not permitted")
            return {"tokens-": [existing["AccessorID"]]}, True
        return self._write(ACLTable.kind, change)

    def token_read(self, accessor: str) -> dict[str, Any]:
        token = self.table.token(_accessor_arg(accessor))
        if token is None or _expired(token):
            raise ACLError(NOT_FOUND, 403)   # as Consul 1.20-1.22 answer (py-consul's tests check it)
        return self.show_token(token)

    def token_list(self, policy: str = "", role: str = "", authmethod: str = "",
                   servicename: str = "") -> list[dict[str, Any]]:
        if role or authmethod:
            return []   # no roles or auth methods here: no token has one
        found = []
        for token in self.table.all_tokens():
            if _expired(token):
                continue
            if policy and all(link["ID"] != policy for link in token.get("Policies") or []):
                continue
            if servicename and all(s.get("ServiceName") != servicename for s in token.get("ServiceIdentities") or []):
                continue
            found.append(self.show_token(token))
        return found

    # -- policies -----------------------------------------------------------------------------

    @staticmethod
    def _new_policy(index: int, pid: str, name: str, description: str, rules: str, *,
                    create_index: int | None = None, datacenters: list[str] | None = None) -> dict[str, Any]:
        policy: dict[str, Any] = {"ID": pid, "Name": name, "Description": description, "Rules": rules}
        if datacenters:
            policy["Datacenters"] = datacenters
        policy["Hash"] = _hash({"Name": name, "Description": description, "Rules": rules,
                                "Datacenters": datacenters or []})
        policy["CreateIndex"] = index if create_index is None else create_index
        policy["ModifyIndex"] = index
        return policy

    def policy_set(self, body: dict[str, Any], pid: str | None = None) -> dict[str, Any]:
        """Consul's ACL.PolicySet: create (pid None) or update the policy `pid`."""
        fields = {_canonical(k): v for k, v in body.items()}
        given_id = _string(fields.get("ID"), "ID")
        if pid is None and given_id:
            raise ACLError("Cannot specify the ID when creating a new policy", 400)
        if pid is not None and given_id and given_id != pid:
            raise ACLError("Policy ID in URL and payload do not match", 400)
        name = _string(fields.get("Name"), "Name")
        description = _string(fields.get("Description"), "Description")
        rules = _string(fields.get("Rules"), "Rules")
        datacenters = fields.get("Datacenters") or []
        if not isinstance(datacenters, list) or not all(isinstance(d, str) for d in datacenters):
            raise ACLError("Policy decoding failed: Datacenters must be a list of strings", 400)
        if not _VALID_NAME.match(name):
            raise ACLError("Invalid Policy: invalid Name. Only alphanumeric characters, '-' and '_' are allowed",
                           400)
        parse_rules(rules)

        def change(index: int) -> tuple[Any, Any]:
            same_name = self.table.policy_by_name(name)
            if pid is None:
                if same_name is not None:
                    raise ACLError(f'Invalid Policy: A Policy with Name "{name}" already exists')
                policy = self._new_policy(index, str(uuid.uuid4()), name, description, rules,
                                          datacenters=datacenters)
            else:
                existing = self.table.policy(_uuid_arg(pid, "policy"))
                if existing is None:
                    raise ACLError(f'Cannot find policy "{pid}"')
                if same_name is not None and same_name["ID"] != pid:
                    raise ACLError(f'Invalid Policy: A policy with name "{name}" already exists')
                if pid == GLOBAL_MANAGEMENT_ID:
                    if rules != existing["Rules"]:
                        raise ACLError("Changing the Rules for the builtin global-management policy is not permitted")
                    if datacenters:
                        raise ACLError("Changing the Datacenters of the builtin global-management policy "
                                       "is not permitted")
                policy = self._new_policy(index, pid, name, description, rules,
                                          create_index=existing["CreateIndex"], datacenters=datacenters)
            return {"policies": [policy]}, policy
        return self._write(ACLTable.kind, change)

    def policy_delete(self, pid: str) -> bool:
        def change(index: int) -> tuple[Any, Any]:
            existing = self.table.policy(_uuid_arg(pid, "policy"))
            if existing is None:
                raise ACLError("Cannot find policy to delete", 404)
            if pid == GLOBAL_MANAGEMENT_ID:
                raise ACLError("Delete operation not permitted on the builtin global-management policy")
            return {"policies-": [pid]}, True
        return self._write(ACLTable.kind, change)

    def policy_read(self, pid: str = "", name: str = "") -> dict[str, Any]:
        policy = self.table.policy(_uuid_arg(pid, "policy")) if pid else self.table.policy_by_name(name)
        if policy is None:
            raise ACLError("Requested policy does not exist: ACL not found", 404)
        return self.show_policy(policy)

    def policy_list(self) -> list[dict[str, Any]]:
        return [self.show_policy(p, stub=True) for p in self.table.all_policies()]


_CANONICAL = {name.lower(): name for name in (
    "AccessorID", "SecretID", "Description", "Policies", "Roles", "ServiceIdentities", "NodeIdentities",
    "TemplatedPolicies", "Local", "ExpirationTime", "ExpirationTTL", "ID", "Name", "Rules", "Datacenters",
    "AuthMethod", "Namespace", "Partition")}


def _canonical(name: str) -> str:
    """Field names as Go's encoding/json matches them: case-insensitively."""
    return _CANONICAL.get(str(name).lower(), str(name))


def _string(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ACLError(f"Request decoding failed: {what} must be a string, not {json.dumps(value)[:64]}", 400)
    return value


def _list_of_dicts(value: Any, what: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ACLError(f"Request decoding failed: {what} must be a list of objects", 400)
    return value


# Consul's builtin templated policies; the rights they grant are on services and nodes, which this
# Name Server does not serve, so a token keeps them as Consul shows them and they grant nothing here.
_TEMPLATES = ("builtin/service", "builtin/node", "builtin/dns", "builtin/nomad-server", "builtin/nomad-client",
              "builtin/workload-identity", "builtin/api-gateway")


def _templated(raw: dict[str, Any]) -> dict[str, Any]:
    fields = {str(k).lower(): v for k, v in raw.items()}
    name = fields.get("templatename")
    if name not in _TEMPLATES:
        raise ACLError(f"no such ACL templated policy with Name {json.dumps(name)}")
    variables = fields.get("templatevariables") or {}
    if not isinstance(variables, dict):
        raise ACLError("Request decoding failed: TemplateVariables must be an object", 400)
    # Go decodes {"Name": ...} into its `json:"name"` field, and shows it as "name".
    out: dict[str, Any] = {"TemplateName": name}
    named = {str(k).lower(): v for k, v in variables.items()}
    if named.get("name"):
        out["TemplateVariables"] = {"name": named["name"]}
    return out


def _uuid_arg(value: str, what: str) -> str:
    """An ID from a URL: Consul's state store refuses one that is not a UUID (a 500, as there)."""
    if not _UUID.match(value):
        raise ACLError(f"failed to look up the {what} {value!r}: UUID must be 36 characters")
    return value


def _accessor_arg(value: str) -> str:
    return _uuid_arg(value, "token")


def _expiration(ttl: Any, when: str) -> str | None:
    """Consul's ExpirationTTL (a duration, 1m to 24h) or ExpirationTime (RFC 3339) as an RFC 3339 time."""
    if ttl in (None, "", 0):
        if not when:
            return None
        try:
            at = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
        except ValueError:
            raise ACLError(f"Request decoding failed: ExpirationTime {when!r} is not an RFC 3339 time", 400) from None
        if at.tzinfo is None:
            at = at.replace(tzinfo=dt.timezone.utc)
        left = (at - dt.datetime.now(dt.timezone.utc)).total_seconds() * 1e9
        if not _TTL_MIN_NS <= left <= _TTL_MAX_NS:
            raise ACLError("Token Expiration Time must be between 1m0s and 24h0m0s in the future")
        return at.astimezone(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    if when:
        raise ACLError("Token Expiration TTL and Expiration Time cannot both be set")
    try:
        ns = parse_ns(ttl) if isinstance(ttl, str) else int(ttl)
    except (ValueError, TypeError):
        raise ACLError(f"Request decoding failed: ExpirationTTL {ttl!r} is not a duration", 400) from None
    if ns <= 0:
        raise ACLError(f"Token Expiration TTL '{ttl}' should be > 0")
    if not _TTL_MIN_NS <= ns <= _TTL_MAX_NS:
        raise ACLError("Token Expiration TTL must be between 1m0s and 24h0m0s")
    at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(microseconds=ns / 1000)
    return at.isoformat(timespec="microseconds").replace("+00:00", "Z")
