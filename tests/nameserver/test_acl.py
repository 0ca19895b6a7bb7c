"""ACLs, as Consul has them: the ACL API and what every endpoint lets a token do.

Contract tests: they run against the built-in Name Server (`--acl`, in this process, with an
initial management token), or against a real Consul when CONSUL_HTTP_ADDR is set, with
CONSUL_HTTP_TOKEN a management token. They speak HTTP as any Consul client does, and check
the statuses and bodies Consul answers (its 403 bodies are acl.PermissionDeniedError's).
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import uuid

import pytest
import requests

from oneos.errors import OneOSError
from oneos.nameserver.acl import ANONYMOUS_ID, GLOBAL_MANAGEMENT_ID
from oneos.nameserver.client import NameServer, NameServerError, TxnConflict, kv_op
from oneos.nameserver.server import serve
from tests.conftest import REAL_CONSUL
from tests.nameserver.helpers import Call
from tests.procs import wait_until

ANON_SUFFIX = ". The anonymous token is used implicitly when a request does not specify a token."
builtin_only = pytest.mark.skipif(bool(REAL_CONSUL), reason="starts servers of its own: built-in Name Server only")


class InProcess:
    """`oneos-nameserver --acl` in a thread of this process, on a free port."""

    def __init__(self, data_dir, *, acl: bool = True, initial_management: str | None = None, **serve_args) -> None:
        self.data_dir = data_dir
        self.httpd, self.store = serve("127.0.0.1:0", data_dir, acl=acl, initial_management=initial_management,
                                       **serve_args)
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.store.close()
        self._thread.join(5)


class Consul:
    """HTTP to the server under test, as a Consul client speaks it; `token` goes in X-Consul-Token."""

    def __init__(self, url: str, management: str) -> None:
        self.url = url
        self.management = management

    def call(self, method: str, path: str, token: str | None = None, **kwargs) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["X-Consul-Token"] = token
        return requests.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def ok(self, method: str, path: str, token: str | None = None, **kwargs):
        r = self.call(method, path, token if token is not None else self.management, **kwargs)
        assert r.status_code == 200, f"{method} {path}: {r.status_code} {r.text}"
        return r.json() if r.content else None

    def policy(self, rules: str) -> dict:
        return self.ok("PUT", "/v1/acl/policy", json={"Name": f"test-{uuid.uuid4().hex[:10]}", "Rules": rules})

    def token(self, *rules: str) -> dict:
        """A new token with one new policy per rules text; deleted (with its policies) after the module."""
        policies = [self.policy(r) for r in rules]
        token = self.ok("PUT", "/v1/acl/token", json={"Description": "test", "Policies": [{"ID": p["ID"]}
                                                                                         for p in policies]})
        self.made.append((token["AccessorID"], [p["ID"] for p in policies]))
        return token

    def node_name(self) -> str:
        return self.ok("GET", "/v1/agent/self")["Config"]["NodeName"]


@pytest.fixture(scope="module")
def consul(tmp_path_factory):
    if REAL_CONSUL:
        management = os.environ.get("CONSUL_HTTP_TOKEN")
        if not management:
            pytest.skip("CONSUL_HTTP_ADDR is set without CONSUL_HTTP_TOKEN (a management token)")
        server, url = None, NameServer(REAL_CONSUL).url
    else:
        management = str(uuid.uuid4())
        server = InProcess(tmp_path_factory.mktemp("acl") / "data", initial_management=management)
        url = server.url
    c = Consul(url, management)
    c.made = []
    try:
        yield c
    finally:
        for accessor, policies in c.made:
            c.call("DELETE", f"/v1/acl/token/{accessor}", management)
            for pid in policies:
                c.call("DELETE", f"/v1/acl/policy/{pid}", management)
        if server is not None:
            server.stop()


@pytest.fixture
def p(consul) -> str:
    """A key prefix of this test's own; removed afterwards."""
    prefix = f"test/{uuid.uuid4().hex[:12]}/"
    yield prefix
    consul.call("DELETE", f"/v1/kv/{prefix}?recurse", consul.management)


def denied(who: str, permission: str, name: str | None = None) -> str:
    """Consul's body for a 403 (acl.PermissionDeniedError.Error)."""
    text = f"Permission denied: {who} lacks permission '{permission}'"
    if name is not None:
        text += f' on "{name}"'
    return text + (ANON_SUFFIX if who == "anonymous token" else "")


def by(token: dict) -> str:
    return f"token with AccessorID '{token['AccessorID']}'"


# -- tokens: where they come from, unknown ones, the anonymous one ---------------------------------

def test_without_a_token_the_anonymous_token_is_used_and_denied_by_default(consul, p):
    r = consul.call("PUT", f"/v1/kv/{p}a", data=b"x")
    assert (r.status_code, r.text) == (403, denied("anonymous token", "key:write", f"{p}a"))
    r = consul.call("GET", f"/v1/kv/{p}a")
    assert (r.status_code, r.text) == (403, denied("anonymous token", "key:read", f"{p}a"))
    assert consul.call("PUT", f"/v1/kv/{p}a", consul.management, data=b"x").json() is True


def test_the_token_is_taken_from_the_query_the_header_or_a_bearer(consul, p):
    consul.ok("PUT", f"/v1/kv/{p}a", data=b"x")
    secret = consul.management
    for how in ({"params": {"token": secret}}, {"headers": {"X-Consul-Token": secret}},
                {"headers": {"Authorization": f"Bearer {secret}"}}):
        r = consul.call("GET", f"/v1/kv/{p}a", **how)
        assert r.status_code == 200 and r.json()[0]["Key"] == f"{p}a", how
    # ?token= comes first, as in Consul: an unknown one there is not saved by a good header.
    r = consul.call("GET", f"/v1/kv/{p}a", params={"token": str(uuid.uuid4())}, headers={"X-Consul-Token": secret})
    assert (r.status_code, r.text) == (403, "ACL not found")


def test_an_unknown_secret_is_403_acl_not_found(consul, p):
    for method, path in (("GET", f"/v1/kv/{p}a"), ("PUT", f"/v1/kv/{p}a"), ("GET", "/v1/session/list"),
                         ("GET", "/v1/acl/tokens")):
        r = consul.call(method, path, str(uuid.uuid4()))
        assert (r.status_code, r.text) == (403, "ACL not found"), (method, path)


def test_the_anonymous_tokens_policies_can_be_set(consul, p):
    consul.ok("PUT", f"/v1/kv/{p}open", data=b"hello")
    policy = consul.policy(f'key_prefix "{p}" {{ policy = "read" }}')
    consul.made.append(("", [policy["ID"]]))
    before = consul.ok("GET", f"/v1/acl/token/{ANONYMOUS_ID}")
    try:
        consul.ok("PUT", f"/v1/acl/token/{ANONYMOUS_ID}", json={"Description": before["Description"],
                                                                  "Policies": [{"ID": policy["ID"]}]})
        r = consul.call("GET", f"/v1/kv/{p}open?raw")
        assert (r.status_code, r.content) == (200, b"hello")
        assert consul.call("PUT", f"/v1/kv/{p}open", data=b"x").status_code == 403
    finally:
        consul.ok("PUT", f"/v1/acl/token/{ANONYMOUS_ID}",
                  json={"Description": before["Description"], "Policies": before.get("Policies") or []})
    assert consul.call("GET", f"/v1/kv/{p}open").status_code == 403


def test_status_needs_no_token_and_agent_self_needs_agent_read(consul):
    assert consul.call("GET", "/v1/status/leader").status_code == 200
    r = consul.call("GET", "/v1/agent/self")
    assert (r.status_code, r.text) == (403, denied("anonymous token", "agent:read", consul.node_name()))


# -- rules ----------------------------------------------------------------------------------

def test_an_exact_key_beats_the_longest_prefix_and_write_implies_read(consul, p):
    token = consul.token(f'key_prefix "{p}" {{ policy = "read" }}\n'
                         f'key_prefix "{p}w/" {{ policy = "write" }}\n'
                         f'key "{p}w/secret" {{ policy = "deny" }}\n'
                         f'key "{p}ro" {{ policy = "read" }}')
    secret = token["SecretID"]
    for key in ("x", "w/y", "w/secret", "ro"):
        consul.ok("PUT", f"/v1/kv/{p}{key}", data=b"v")
    assert consul.call("GET", f"/v1/kv/{p}x", secret).status_code == 200
    r = consul.call("PUT", f"/v1/kv/{p}x", secret, data=b"v2")
    assert (r.status_code, r.text) == (403, denied(by(token), "key:write", f"{p}x"))
    assert consul.call("PUT", f"/v1/kv/{p}w/y", secret, data=b"v2").json() is True     # the longer prefix
    assert consul.call("GET", f"/v1/kv/{p}w/y", secret).status_code == 200               # write implies read
    r = consul.call("GET", f"/v1/kv/{p}w/secret", secret)                                # exact beats prefix
    assert (r.status_code, r.text) == (403, denied(by(token), "key:read", f"{p}w/secret"))
    assert consul.call("PUT", f"/v1/kv/{p}ro", secret, data=b"v").status_code == 403      # exact read, under no write


def test_deny_wins_over_write_when_two_policies_name_the_same_prefix(consul, p):
    token = consul.token(f'key_prefix "{p}" {{ policy = "write" }}', f'key_prefix "{p}" {{ policy = "deny" }}')
    consul.ok("PUT", f"/v1/kv/{p}a", data=b"v")
    assert consul.call("GET", f"/v1/kv/{p}a", token["SecretID"]).status_code == 403
    assert consul.call("PUT", f"/v1/kv/{p}a", token["SecretID"], data=b"v").status_code == 403


def test_rules_in_json_are_the_same_rules(consul, p):
    token = consul.token('{"key_prefix": {"%s": {"policy": "write"}}, "key": {"%sno": {"policy": "deny"}}}' % (p, p))
    assert consul.call("PUT", f"/v1/kv/{p}a", token["SecretID"], data=b"v").json() is True
    assert consul.call("PUT", f"/v1/kv/{p}no", token["SecretID"], data=b"v").status_code == 403


@pytest.mark.parametrize("rules, says", [
    ('key_prefix "" { policy = "sudo" }', "Invalid key_prefix policy"),
    ('session "n" { policy = "list" }', "Invalid session policy"),
    ('key_prefix "" { policy = ', "Failed to parse ACL rules"),
])
def test_invalid_rules_are_refused_with_what_is_wrong(consul, rules, says):
    r = consul.call("PUT", "/v1/acl/policy", consul.management,
                    json={"Name": f"bad-{uuid.uuid4().hex[:8]}", "Rules": rules})
    # Consul answers such an RPC error 500; ours, a client's mistake, 400. Both say what is wrong.
    assert r.status_code == (r.status_code if REAL_CONSUL and r.status_code == 500 else 400), r.text
    assert says in r.text


# -- KV ---------------------------------------------------------------------------------------

def test_recursive_reads_and_key_listings_leave_out_what_the_token_may_not_read(consul, p):
    for key in ("a", "b/c", "hidden/x", "hidden/y"):
        consul.ok("PUT", f"/v1/kv/{p}{key}", data=b"v")
    token = consul.token(f'key_prefix "{p}" {{ policy = "read" }}\nkey_prefix "{p}hidden/" {{ policy = "deny" }}')
    secret = token["SecretID"]
    entries = consul.call("GET", f"/v1/kv/{p}?recurse", secret).json()
    assert [e["Key"] for e in entries] == [f"{p}a", f"{p}b/c"]
    assert consul.call("GET", f"/v1/kv/{p}?keys&separator=/", secret).json() == [f"{p}a", f"{p}b/"]
    assert consul.call("GET", f"/v1/kv/{p}?keys", secret).json() == [f"{p}a", f"{p}b/c"]
    # Only unreadable keys under a prefix: as if there were none.
    assert consul.call("GET", f"/v1/kv/{p}hidden/?recurse", secret).status_code == 404


def test_writes_need_key_write_and_a_recursive_delete_write_on_the_whole_prefix(consul, p):
    token = consul.token(f'key_prefix "{p}" {{ policy = "write" }}\nkey "{p}keep/x" {{ policy = "read" }}')
    secret = token["SecretID"]
    consul.ok("PUT", f"/v1/kv/{p}keep/x", data=b"v")
    r = consul.call("DELETE", f"/v1/kv/{p}?recurse", secret)
    assert (r.status_code, r.text) == (403, denied(by(token), "key:write", p))
    assert consul.call("DELETE", f"/v1/kv/{p}keep/x", secret).status_code == 403
    assert consul.call("PUT", f"/v1/kv/{p}a?cas=0", secret, data=b"v").json() is True
    assert consul.call("DELETE", f"/v1/kv/{p}a", secret).json() is True
    assert consul.call("PUT", f"/v1/kv/{p}keep/x?cas=0", secret, data=b"v").status_code == 403
    assert consul.ok("GET", f"/v1/kv/{p}keep/x")[0]["Key"] == f"{p}keep/x"


def test_locks_need_key_write(consul, p):
    node = consul.node_name()
    token = consul.token(f'key "{p}lock" {{ policy = "read" }}\nsession "{node}" {{ policy = "write" }}')
    secret = token["SecretID"]
    sid = consul.call("PUT", "/v1/session/create", secret, json={"TTL": "30s"}).json()["ID"]
    try:
        r = consul.call("PUT", f"/v1/kv/{p}lock?acquire={sid}", secret, data=b"me")
        assert (r.status_code, r.text) == (403, denied(by(token), "key:write", f"{p}lock"))
        assert consul.call("PUT", f"/v1/kv/{p}lock?release={sid}", secret).status_code == 403
    finally:
        consul.ok("PUT", f"/v1/session/destroy/{sid}")


def test_a_blocking_query_is_checked_and_one_allowed_wakes_on_a_write(consul, p):
    token = consul.token(f'key "{p}mine" {{ policy = "read" }}')
    secret = token["SecretID"]
    index = int(consul.call("GET", f"/v1/kv/{p}mine", secret).headers["X-Consul-Index"])
    # Denied at once, however long it asked to wait.
    r = consul.call("GET", f"/v1/kv/{p}other?index={index}&wait=30s", secret)
    assert (r.status_code, r.text) == (403, denied(by(token), "key:read", f"{p}other"))
    waiting = Call(lambda: consul.call("GET", f"/v1/kv/{p}mine?index={index}&wait=30s", secret))
    consul.ok("PUT", f"/v1/kv/{p}mine", data=b"new")
    r = waiting.result(20)
    assert r.status_code == 200 and r.json()[0]["Key"] == f"{p}mine"


# -- transactions -------------------------------------------------------------------------------

def test_a_txn_with_one_denied_op_is_refused_whole_with_consuls_error(consul, p):
    token = consul.token(f'key_prefix "{p}ok/" {{ policy = "write" }}')
    ops = [kv_op("set", f"{p}ok/a", b"1"), kv_op("set", f"{p}no", b"2"), kv_op("get", f"{p}no")]
    r = consul.call("PUT", "/v1/txn", token["SecretID"], json=ops)
    assert r.status_code == 409
    assert r.json()["Errors"] == [{"OpIndex": 1, "What": denied(by(token), "key:write", f"{p}no")}]
    assert consul.call("GET", f"/v1/kv/{p}ok/a", consul.management).status_code == 404   # nothing applied


def test_a_txns_reads_leave_out_what_the_token_may_not_read(consul, p):
    consul.ok("PUT", f"/v1/kv/{p}ok/a", data=b"1")
    consul.ok("PUT", f"/v1/kv/{p}secret", data=b"2")
    token = consul.token(f'key_prefix "{p}ok/" {{ policy = "read" }}')
    r = consul.call("PUT", "/v1/txn", token["SecretID"], json=[kv_op("get-tree", p)])
    assert r.status_code == 200
    assert [res["KV"]["Key"] for res in r.json()["Results"]] == [f"{p}ok/a"]


# -- sessions -----------------------------------------------------------------------------------

def test_sessions_are_checked_on_their_node(consul):
    node = consul.node_name()
    reader = consul.token(f'session "{node}" {{ policy = "read" }}')
    writer = consul.token(f'session_prefix "" {{ policy = "write" }}')
    r = consul.call("PUT", "/v1/session/create", reader["SecretID"], json={"TTL": "30s"})
    assert (r.status_code, r.text) == (403, denied(by(reader), "session:write", node))
    sid = consul.call("PUT", "/v1/session/create", writer["SecretID"], json={"TTL": "30s"}).json()["ID"]
    try:
        assert sid in [s["ID"] for s in consul.call("GET", "/v1/session/list", reader["SecretID"]).json()]
        assert consul.call("GET", f"/v1/session/info/{sid}", reader["SecretID"]).json()[0]["ID"] == sid
        # Without session:read, sessions are left out: an empty list, not a 403.
        assert consul.call("GET", "/v1/session/list").json() == []
        assert consul.call("GET", f"/v1/session/node/{node}").json() == []
        r = consul.call("PUT", f"/v1/session/renew/{sid}", reader["SecretID"])
        assert (r.status_code, r.text) == (403, denied(by(reader), "session:write", node))
        assert consul.call("PUT", f"/v1/session/destroy/{sid}", reader["SecretID"]).status_code == 403
        assert consul.call("PUT", f"/v1/session/renew/{sid}", writer["SecretID"]).status_code == 200
    finally:
        assert consul.call("PUT", f"/v1/session/destroy/{sid}", writer["SecretID"]).json() is True


# -- the ACL API -----------------------------------------------------------------------------------

def test_tokens_are_created_read_updated_listed_and_deleted_by_acl_write(consul):
    policy = consul.policy('key_prefix "" { policy = "read" }')
    consul.made.append(("", [policy["ID"]]))
    made = consul.ok("PUT", "/v1/acl/token", json={"Description": "one", "Policies": [{"Name": policy["Name"]}]})
    accessor, secret = made["AccessorID"], made["SecretID"]
    assert made["Policies"] == [{"ID": policy["ID"], "Name": policy["Name"]}] and made["Local"] is False
    assert consul.ok("GET", f"/v1/acl/token/{accessor}")["Description"] == "one"
    assert consul.ok("GET", "/v1/acl/token/self", token=secret)["AccessorID"] == accessor
    updated = consul.ok("PUT", f"/v1/acl/token/{accessor}", json={"Description": "two"})
    assert (updated["Description"], updated["SecretID"], updated.get("Policies")) == ("two", secret, None)
    assert accessor in [t["AccessorID"] for t in consul.ok("GET", "/v1/acl/tokens")]
    # The token itself may not manage ACLs: Consul's acl:read / acl:write 403s.
    r = consul.call("GET", "/v1/acl/tokens", secret)
    assert (r.status_code, r.text) == (403, denied(by(made), "acl:read"))
    r = consul.call("PUT", "/v1/acl/token", secret, json={})
    assert (r.status_code, r.text) == (403, denied(by(made), "acl:write"))
    assert consul.ok("DELETE", f"/v1/acl/token/{accessor}") is True
    assert consul.call("GET", f"/v1/acl/token/{accessor}", consul.management).status_code == 403
    assert consul.call("GET", "/v1/kv/x", secret).text == "ACL not found"


def test_acl_read_lists_tokens_with_their_secrets_hidden(consul):
    reader = consul.token('acl = "read"')
    listed = consul.call("GET", "/v1/acl/tokens", reader["SecretID"]).json()
    assert {t["SecretID"] for t in listed} == {"<hidden>"}
    assert consul.call("PUT", "/v1/acl/policy", reader["SecretID"],
                       json={"Name": "nope", "Rules": ""}).status_code == 403


def test_policies_are_created_read_by_id_and_name_updated_and_deleted(consul):
    name = f"test-{uuid.uuid4().hex[:10]}"
    made = consul.ok("PUT", "/v1/acl/policy", json={"Name": name, "Description": "d",
                                                     "Rules": 'key_prefix "a/" { policy = "read" }'})
    pid = made["ID"]
    assert consul.ok("GET", f"/v1/acl/policy/{pid}")["Rules"] == 'key_prefix "a/" { policy = "read" }'
    assert consul.ok("GET", f"/v1/acl/policy/name/{name}")["ID"] == pid
    assert consul.ok("PUT", f"/v1/acl/policy/{pid}", json={"Name": name, "Rules": ""})["Rules"] == ""
    assert "Rules" not in next(x for x in consul.ok("GET", "/v1/acl/policies") if x["ID"] == pid)
    assert consul.ok("DELETE", f"/v1/acl/policy/{pid}") is True
    assert consul.call("GET", f"/v1/acl/policy/{pid}", consul.management).status_code == 404
    builtin = consul.ok("GET", f"/v1/acl/policy/{GLOBAL_MANAGEMENT_ID}")
    assert builtin["Name"] == "global-management"
    assert consul.call("DELETE", f"/v1/acl/policy/{GLOBAL_MANAGEMENT_ID}", consul.management).status_code >= 400


@builtin_only
def test_bootstrap_works_once_and_survives_a_compaction_and_a_restart(tmp_path):
    server = InProcess(tmp_path / "data", compact_bytes=20_000)
    try:
        made = requests.put(f"{server.url}/v1/acl/bootstrap", timeout=10).json()
        assert made["ID"] == made["SecretID"] and made["Description"] == "Bootstrap Token (Global Management)"
        assert made["Policies"] == [{"ID": GLOBAL_MANAGEMENT_ID, "Name": "global-management"}]
        again = requests.put(f"{server.url}/v1/acl/bootstrap", timeout=10)
        assert (again.status_code, again.text) == (
            403, f"Permission denied: ACL bootstrap no longer allowed (reset index: {made['CreateIndex']})")
        c = Consul(server.url, made["SecretID"])
        policy = c.policy('key_prefix "kept/" { policy = "write" }')
        kept = c.ok("PUT", "/v1/acl/token", json={"Policies": [{"ID": policy["ID"]}]})
        # Enough writes for the log to be compacted: the ACLs are then only in the snapshot.
        for i in range(100):
            c.ok("PUT", f"/v1/kv/filler/{i}", data=b"x" * 300)
        wait_until(lambda: not list((tmp_path / "data").glob("log-*.jsonl")) and server.store._compactor is None,
                   20, "the log to be compacted")
    finally:
        server.stop()
    server = InProcess(tmp_path / "data")     # the same data: tokens, policies and the bootstrap are kept
    try:
        assert requests.put(f"{server.url}/v1/kv/kept/a", data=b"v", timeout=10,
                            headers={"X-Consul-Token": kept["SecretID"]}).json() is True
        assert requests.put(f"{server.url}/v1/kv/other", data=b"v", timeout=10,
                            headers={"X-Consul-Token": kept["SecretID"]}).status_code == 403
        assert requests.put(f"{server.url}/v1/acl/bootstrap", timeout=10).status_code == 403
    finally:
        server.stop()


@builtin_only
def test_of_bootstraps_sent_at_once_exactly_one_is_granted(tmp_path):
    server = InProcess(tmp_path / "data")
    try:
        calls = [Call(lambda: requests.put(f"{server.url}/v1/acl/bootstrap", timeout=10)) for _ in range(8)]
        statuses = sorted(call.result(20).status_code for call in calls)
        assert statuses == [200] + [403] * 7
    finally:
        server.stop()


@builtin_only
def test_without_acls_the_acl_api_answers_401_and_nothing_is_checked(tmp_path):
    server = InProcess(tmp_path / "data", acl=False)
    try:
        r = requests.get(f"{server.url}/v1/acl/tokens", timeout=10)
        assert (r.status_code, r.text) == (401, "ACL support disabled\n")
        assert requests.put(f"{server.url}/v1/kv/a", data=b"v", timeout=10).json() is True
    finally:
        server.stop()


# -- what a OneOS user sees ----------------------------------------------------------------------

def test_the_client_says_a_refusal_in_one_line_with_what_to_do(consul, p, monkeypatch, tmp_path):
    monkeypatch.setenv("ONEOS_HOME", str(tmp_path))
    for name in ("ONEOS_TOKEN", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    anonymous = NameServer(consul.url)
    with pytest.raises(NameServerError) as refused:
        anonymous.put(f"{p}a", b"v")
    message = str(refused.value)
    assert refused.value.status == 403 and "\n" not in message
    assert f"""permission denied: anonymous token lacks permission 'key:write' on "{p}a" (no token was sent)""" \
        in message and "ONEOS_TOKEN" in message
    with pytest.raises(NameServerError, match="does not know the token sent"):
        NameServer(consul.url, token=str(uuid.uuid4())).get(f"{p}a")
    limited = consul.token(f'key_prefix "{p}" {{ policy = "read" }}')
    with pytest.raises(TxnConflict, match="lacks permission 'key:write'"):
        NameServer(consul.url, token=limited["SecretID"]).txn([kv_op("set", f"{p}a", b"v")])


def test_the_client_finds_its_token_in_the_environment_or_in_oneos_home(consul, p, monkeypatch, tmp_path):
    for name in ("ONEOS_TOKEN", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ONEOS_HOME", str(tmp_path))
    token_file = tmp_path / "token"
    token_file.write_text(consul.management + "\n")
    token_file.chmod(0o644)
    with pytest.raises(OneOSError, match="chmod 600"):
        NameServer(consul.url)
    token_file.chmod(0o600)
    assert NameServer(consul.url).put(f"{p}a", b"v") is True
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", str(uuid.uuid4()))      # a variable beats the file
    with pytest.raises(NameServerError, match="ACL not found"):
        NameServer(consul.url).get(f"{p}a")
    monkeypatch.setenv("ONEOS_TOKEN", consul.management)            # and ONEOS_TOKEN beats CONSUL_HTTP_TOKEN
    assert NameServer(consul.url).get(f"{p}a")[1].value == b"v"


@builtin_only
def test_a_token_stops_working_when_it_expires_even_if_it_was_just_used(consul, p, monkeypatch):
    from oneos.nameserver import acl
    policy = consul.policy('key_prefix "" { policy = "read" }')
    token = consul.ok("PUT", "/v1/acl/token", json={"Description": "expires", "ExpirationTTL": "5m",
                                                     "Policies": [{"ID": policy["ID"]}]})
    consul.made.append((token["AccessorID"], [policy["ID"]]))
    assert consul.call("GET", f"/v1/kv/{p}missing", token["SecretID"]).status_code == 404   # allowed, and cached
    later = acl._now() + dt.timedelta(minutes=6)
    monkeypatch.setattr(acl, "_now", lambda: later)
    answer = consul.call("GET", f"/v1/kv/{p}missing", token["SecretID"])
    assert (answer.status_code, answer.text.strip()) == (403, "ACL not found")


def test_a_config_files_token_comes_after_the_variables_and_before_oneos_home(monkeypatch, tmp_path):
    from oneos.nameserver.client import find_token
    from oneos.secretfiles import write_secret
    for name in ("ONEOS_TOKEN", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ONEOS_HOME", str(tmp_path))
    write_secret(tmp_path / "token", "from-home")
    assert find_token() == "from-home"
    assert find_token(configured="from-config") == "from-config"
    write_secret(tmp_path / "named", "from-named-file")
    monkeypatch.setenv("CONSUL_HTTP_TOKEN_FILE", str(tmp_path / "named"))
    assert find_token(configured="from-config") == "from-named-file"
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-variable")
    assert find_token(configured="from-config") == "from-variable"
    assert find_token("given", configured="from-config") == "given"
