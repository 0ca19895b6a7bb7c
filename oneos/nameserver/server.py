"""`oneos-nameserver`: the built-in single-node Name Server, speaking Consul's HTTP API.

Only the subset OneOS uses: /v1/kv, /v1/txn, /v1/session/*, /v1/status/*, /v1/acl/* (tokens,
policies, bootstrap) and a minimal /v1/agent/self. HTTP behaviour follows Consul's agent
(agent/kvs_endpoint.go, txn_endpoint.go, session_endpoint.go, acl_endpoint.go); state semantics
live in store.py, the ACL system's in acl.py. With `--acl` every request is checked against its
token's policies, deny by default, and answered 403 as Consul answers.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import math
import re
import signal
import socket
import ssl
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from oneos import __version__
from oneos.durations import parse_ns
from oneos.errors import OneOSError
from oneos.nameserver import tls as tlsmod
from oneos.nameserver.acl import ACL, READ, WRITE, ACLError, ACLTable, Authorizer
from oneos.nameserver.journal import COMPACT_BYTES, Journal
from oneos.nameserver.store import KV_MAX_VALUE_SIZE, Store, StoreError, collapse_keys
from oneos.secretfiles import read_secret

log = logging.getLogger("oneos.nameserver")

TXN_MAX_REQ_LEN = 512 * 1024       # Consul's txn_max_req_len default
MAX_TXN_OPS = 128
KV_VERBS = {"set", "cas", "lock", "unlock", "get", "get-tree", "check-index", "check-session",
            "check-not-exists", "delete", "delete-tree", "delete-cas"}
DRAIN_LIMIT = 64 << 20             # past this, a refused body is not read: the connection is closed
MAX_CONNS_PER_CLIENT = 200         # Consul's http_max_conns_per_client default
IDLE_TIMEOUT_S = 30.0              # a connection with no request (or a stalled body) this long is closed
_DIGITS = re.compile(r"[0-9]+")    # ASCII digits only: str.isdigit() also takes '²'
_HEX = re.compile(rb"[0-9a-fA-F]{1,16}")
_TOKEN_PARAM = re.compile(r"([?&]token=)[^&\s\"]*")
_TOO_MANY = b"Your IP is issuing too many concurrent connections, please rate limit your calls\n"
TOO_MANY_CONNS = (b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain; charset=utf-8\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_TOO_MANY), _TOO_MANY))
DATACENTER = "dc1"
# Consul forwards these to the `?dc=` asked for, and answers 500 for a datacenter it cannot reach.
DC_ROUTES = ("/v1/kv", "/v1/txn", "/v1/session/", "/v1/status/")


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Params:
    """Query parameters; like Go's url.Values, a flag counts by presence and Get takes the first value."""

    def __init__(self, query: str) -> None:
        self._values: dict[str, str] = {}
        try:
            pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise HTTPError(400, "Invalid query: a parameter is not valid UTF-8") from None
        for name, value in pairs:
            self._values.setdefault(name, value)

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def get(self, name: str, default: str = "") -> str:
        return self._values.get(name, default)

    def uint(self, name: str, what: str) -> int:
        raw = self._values.get(name, "")
        if not _DIGITS.fullmatch(raw) or int(raw) >= 1 << 64:
            raise HTTPError(400, f"Invalid {what}: {raw!r} is not an unsigned 64-bit integer")
        return int(raw)

    def conflicting(self, *names: str) -> bool:
        return sum(1 for n in names if n in self._values) > 1

    def encode(self) -> str:
        return urllib.parse.urlencode(sorted(self._values.items()))


class NameServerHTTP(ThreadingHTTPServer):
    daemon_threads = True
    # Consul listens with the OS's full backlog; the default of 5 resets bursts of clients.
    request_queue_size = socket.SOMAXCONN
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], store: Store, *,
                 max_conns_per_client: int = MAX_CONNS_PER_CLIENT, idle_timeout: float = IDLE_TIMEOUT_S,
                 tls: ssl.SSLContext | None = None, acl: ACL | None = None) -> None:
        self.store = store
        self.tls = tls
        self.acl = acl           # None, or not enabled: every request is allowed, /v1/acl answers 401
        self.max_conns_per_client = max_conns_per_client
        self.idle_timeout = idle_timeout
        self._conns: dict[str, int] = {}
        self._refusing: set[str] = set()   # IPs told 429 since they were last under the limit: logged once
        self._conns_lock = threading.Lock()
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """One thread per connection, but at most max_conns_per_client per client IP, as Consul
        (http_max_conns_per_client): one more is answered 429 and closed, without a thread."""
        ip = client_address[0]
        with self._conns_lock:
            count = self._conns.get(ip, 0)
            admitted = self.max_conns_per_client <= 0 or count < self.max_conns_per_client
            if admitted:
                self._conns[ip] = count + 1
            first_refusal = not admitted and ip not in self._refusing
            if first_refusal:
                self._refusing.add(ip)
        if first_refusal:
            log.warning("refusing connections from %s (429): it has %d open, the limit", ip, count)
        if not admitted:
            # Over TLS, the 429 would need a handshake, that is a thread: the connection is only closed.
            try:
                if self.tls is None:
                    request.settimeout(0.01)
                    request.sendall(TOO_MANY_CONNS)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(ip)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(client_address[0])

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Serve one connection; with TLS, its handshake first, here in the connection's own thread
        (counted against the client's limit) so that a slow or silent client holds no one else up."""
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        conn = tlsmod.accept_tls(self.tls, request, self.idle_timeout)
        if conn is None:
            log.debug("TLS handshake with %s failed or was not TLS: closed", client_address[0])
            return
        try:
            super().finish_request(conn, client_address)
        finally:
            try:
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            conn.close()

    def _release(self, ip: str) -> None:
        with self._conns_lock:
            left = self._conns.get(ip, 1) - 1
            self._refusing.discard(ip)
            if left > 0:
                self._conns[ip] = left
            else:
                self._conns.pop(ip, None)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"oneos-nameserver/{__version__}"
    server: NameServerHTTP

    def setup(self) -> None:
        # Every read and write on the socket times out: an idle keep-alive connection (or one that
        # stalls in the middle of a request) is closed, so that idle clients cannot hold threads.
        # A blocking query waits in the store, not on the socket, so a long poll is not idle.
        self.timeout = self.server.idle_timeout
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle's algorithm
        # and the client's delayed ACK stall every response by ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt: str, *args: Any) -> None:
        # As Consul's request log: a ?token= secret is shown as <hidden>.
        log.debug("%s %s", self.address_string(), _TOKEN_PARAM.sub(r"\1<hidden>", fmt % args))

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # -- plumbing ---------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        self._body_read = False
        self._authorizer: Authorizer | None = None
        url = urllib.parse.urlsplit(self.path)
        try:
            path = _decode_path(url.path)
            try:
                # http.server read the request line as Latin-1: get the client's bytes back first.
                params = _Params(url.query.encode("latin-1").decode("utf-8"))
            except UnicodeError:
                raise HTTPError(400, "Invalid query: a parameter is not valid UTF-8") from None
            self._secret = self._token(params)
            status, body, headers = self._route(method, path, params)
        except ACLError as exc:
            status, body, headers = exc.status, str(exc), {}
        except HTTPError as exc:
            status, body, headers = exc.status, str(exc), {}
        except StoreError as exc:
            status, body, headers = exc.status, str(exc), {}
        except (TimeoutError, ConnectionError) as exc:
            # The client stalled or went away in the middle of its body: there is no one to answer.
            log.info("dropped %s %s from %s: %s", method, _TOKEN_PARAM.sub(r"\1<hidden>", self.path),
                     self.address_string(), "timed out reading the body" if isinstance(exc, TimeoutError) else exc)
            self.close_connection = True
            return
        except Exception as exc:  # noqa: BLE001 - a bug must answer 500, not kill the connection
            log.exception("internal error serving %s %s", method, _TOKEN_PARAM.sub(r"\1<hidden>", self.path))
            status, body, headers = 500, f"internal error: {exc}", {}
        if not self._body_read:
            self._drain()
        self._send(status, body, headers)

    def _send(self, status: int, body: Any, headers: dict[str, str]) -> None:
        if isinstance(body, bytes):
            payload = body
            ctype = headers.pop("Content-Type", "application/octet-stream")
        elif isinstance(body, str) and status >= 400:
            # Consul writes a 403's error as it is (agent/http.go: fmt.Fprint), with no newline.
            newline = b"" if body.endswith("\n") or not body or status == 403 else b"\n"
            payload = body.encode("utf-8") + newline
            ctype = "text/plain; charset=utf-8"
        elif body is None:
            payload, ctype = b"", "application/json"
        else:
            payload = json.dumps(body).encode("utf-8")
            ctype = "application/json"
        if self._acl_on():
            headers.setdefault("X-Consul-Default-ACL-Policy", "deny")
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _content_length(self) -> int | None:
        raw = self.headers.get("Content-Length")
        if raw is None:
            return None
        if not _DIGITS.fullmatch(raw.strip()):
            raise HTTPError(400, f"Invalid Content-Length {raw!r}")
        return int(raw)

    def _read_body(self, limit: int) -> bytes:
        """The request body; 413 past `limit`, before reading it, as Consul does."""
        self._body_read = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = self._read_chunked(limit)
        else:
            length = self._content_length() or 0
            if length > limit:
                self._body_read = False   # _dispatch drains it so the client still reads the 413
                raise HTTPError(413, f"Request body({length} bytes) too large, max size: {limit} bytes. "
                                     "See https://developer.hashicorp.com/docs/agent/config/config-files"
                                     "#kv_max_value_size.")
            data = self.rfile.read(length) if length else b""
            if len(data) < length:
                self.close_connection = True
                raise HTTPError(400, f"Request body ended after {len(data)} of {length} bytes")
        return data

    def _read_chunked(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        keep = self.close_connection
        self.close_connection = True     # until the last chunk is read: an error leaves the stream unsynced
        while True:
            line = self.rfile.readline(1024)
            if not line.endswith(b"\n"):
                raise HTTPError(400, "Invalid chunked encoding: missing chunk size line")
            size_text = line.split(b";")[0].strip()
            if not _HEX.fullmatch(size_text):
                raise HTTPError(400, f"Invalid chunked encoding: bad chunk size {size_text[:32]!r}")
            size = int(size_text, 16)
            if size == 0:
                while True:
                    trailer = self.rfile.readline(1024)
                    if not trailer.endswith(b"\n"):
                        raise HTTPError(400, "Invalid chunked encoding: missing final CRLF")
                    if not trailer.strip():
                        break
                self.close_connection = keep
                return b"".join(parts)
            total += size
            if total > limit:
                raise HTTPError(413, f"Request body too large, max size: {limit} bytes")
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                raise HTTPError(400, "Invalid chunked encoding: body ended inside a chunk")
            parts.append(chunk)
            if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise HTTPError(400, "Invalid chunked encoding: missing CRLF after chunk data")

    def _drain(self) -> None:
        """Read and discard an unread body, so that the answer is not lost to a reset."""
        try:
            length = self._content_length()
        except HTTPError:
            length = None
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            return
        if not length:
            return
        if length > DRAIN_LIMIT:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                break
            length -= len(chunk)

    # -- access control ---------------------------------------------------

    def _token(self, params: _Params) -> str:
        """The request's token secret, where Consul takes it from: ?token=, X-Consul-Token, Authorization: Bearer."""
        if params.get("token"):
            return params.get("token")
        if self.headers.get("X-Consul-Token"):
            return self.headers["X-Consul-Token"]
        parts = (self.headers.get("Authorization") or "").split(" ")
        if len(parts) == 2 and parts[0].lower() == "bearer":
            return parts[1].strip()
        return ""

    def _acl_on(self) -> bool:
        acl = getattr(self.server, "acl", None)
        return acl is not None and acl.enabled

    def _authz(self) -> Authorizer | None:
        """The request's Authorizer (None when ACLs are off); 403 "ACL not found" for an unknown secret."""
        if not self._acl_on():
            return None
        if self._authorizer is None:
            self._authorizer = self.server.acl.authorizer(self._secret)
        return self._authorizer

    def _require(self, kind: str, need: str, name: str) -> None:
        authz = self._authz()
        if authz is not None:
            authz.require(kind, need, name)

    def _readable(self, kind: str, name: str) -> bool:
        authz = self._authz()
        return authz is None or authz.allowed(kind, READ, name)

    def _index_headers(self, index: int) -> dict[str, str]:
        return {"X-Consul-Index": str(index), "X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0"}

    def _blocking_args(self, params: _Params) -> tuple[int, float | None]:
        index = params.uint("index", "index") if "index" in params else 0
        wait = None
        if "wait" in params:
            try:
                wait = parse_ns(params.get("wait")) / 1e9
            except ValueError:
                raise HTTPError(400, "Invalid wait time") from None
        return index, wait

    # -- routes -----------------------------------------------------------

    def _route(self, method: str, path: str, params: _Params) -> tuple[int, Any, dict[str, str]]:
        store = self.server.store
        if params.get("dc") not in ("", DATACENTER) and path.startswith(DC_ROUTES):
            raise HTTPError(500, "No path to datacenter")
        if path.startswith(("/v1/kv", "/v1/txn", "/v1/session/", "/v1/agent/")):
            self._authz()    # as Consul, the token is resolved first: an unknown one is refused whatever the data
        if path == "/v1/kv" or path.startswith("/v1/kv/"):
            return self._kv(method, path[len("/v1/kv/"):], params)
        if path.startswith("/v1/acl/"):
            return self._acl(method, path[len("/v1/acl/"):], params)
        if path == "/v1/txn":
            self._allow(method, "PUT")
            return self._txn()
        if path.startswith("/v1/session/"):
            return self._session(method, path[len("/v1/session/"):], params)
        if path == "/v1/status/leader":
            self._allow(method, "GET")
            return 200, self._leader(), {}
        if path == "/v1/status/peers":
            self._allow(method, "GET")
            return 200, [self._leader()], {}
        if path == "/v1/agent/self":
            self._allow(method, "GET")
            self._require("agent", READ, store.node_name)
            # Stats.consul as Consul's Server.Stats gives it (strings): we are the server, and its leader.
            stats = {"server": "true", "leader": "true", "leader_addr": self._leader(), "bootstrap": "true",
                     "known_datacenters": "1", "acl": "enabled" if self._acl_on() else "disabled"}
            return 200, {"Config": {"Datacenter": DATACENTER, "NodeName": store.node_name,
                                    "Version": f"oneos-nameserver {__version__}", "Server": True},
                         "Member": {"Name": store.node_name, "Addr": self.server.server_address[0]},
                         "Stats": {"consul": stats}}, {}
        raise HTTPError(404, f"no such endpoint {path}: this Name Server serves /v1/kv, /v1/txn, "
                             "/v1/session, /v1/status and /v1/acl")

    @staticmethod
    def _allow(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise HTTPError(405, f"method {method} not allowed")

    def _leader(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def _kv(self, method: str, key: str, params: _Params) -> tuple[int, Any, dict[str, str]]:
        store = self.server.store
        if key.startswith("/"):
            raise HTTPError(400, "key must not begin with a '/'")
        _check_key(key)
        if method == "GET":
            index, wait = self._blocking_args(params)
            if "keys" in params:
                sep = params.get("separator", params.get("seperator"))
                if self._acl_on():
                    # Consul filters the entries the token may not read, then cuts at the separator.
                    idx, entries = store.kv_list(key, index, wait)
                    keys = collapse_keys([e.key for e in entries if self._readable("key", e.key)], key, sep)
                else:
                    idx, keys = store.kv_keys(key, sep, index, wait)
                if not keys and key:
                    return 404, None, self._index_headers(idx)
                return 200, keys, self._index_headers(idx)
            if "recurse" in params:
                idx, entries = store.kv_list(key, index, wait)
                entries = [e for e in entries if self._readable("key", e.key)]
                if not entries:
                    return 404, None, self._index_headers(idx)
                return 200, [e.api() for e in entries], self._index_headers(idx)
            if not key:
                raise HTTPError(400, "Missing key name")
            self._require("key", READ, key)
            idx, entry = store.kv_get(key, index, wait)
            if entry is None:
                return 404, None, self._index_headers(idx)
            if "raw" in params:
                headers = self._index_headers(idx)
                headers.update({"Content-Type": "text/plain", "X-Content-Type-Options": "nosniff",
                                "Content-Security-Policy": "sandbox"})
                return 200, entry.value or b"", headers
            return 200, [entry.api()], self._index_headers(idx)
        if method == "PUT":
            if not key:
                raise HTTPError(400, "Missing key name")
            if params.conflicting("cas", "acquire", "release"):
                raise HTTPError(400, f"Conflicting flags: {params.encode()}")
            flags = params.uint("flags", "flags") if "flags" in params else 0
            cas = params.uint("cas", "CAS index") if "cas" in params else None
            # An empty body stores no value (null), as Consul's KVSPut does, not an empty one.
            value = self._read_body(KV_MAX_VALUE_SIZE) or None
            self._require("key", WRITE, key)
            if "acquire" in params:
                return 200, store.kv_lock(key, value, flags, params.get("acquire")), {}
            if "release" in params:
                return 200, store.kv_unlock(key, value, flags, params.get("release")), {}
            if cas is not None:
                return 200, store.kv_cas(key, value, flags, cas), {}
            return 200, store.kv_set(key, value, flags), {}
        if method == "DELETE":
            if params.conflicting("recurse", "cas"):
                raise HTTPError(400, f"Conflicting flags: {params.encode()}")
            if "recurse" in params:
                authz = self._authz()
                if authz is not None:
                    authz.require_key_write_prefix(key)
                return 200, store.kv_delete_tree(key), {}
            if not key:
                raise HTTPError(400, "Missing key name")
            self._require("key", WRITE, key)
            if "cas" in params:
                return 200, store.kv_delete_cas(key, params.uint("cas", "CAS index")), {}
            return 200, store.kv_delete(key), {}
        raise HTTPError(405, f"method {method} not allowed")

    def _txn(self) -> tuple[int, Any, dict[str, str]]:
        raw = self._read_body(TXN_MAX_REQ_LEN)
        ops = _decode_json(raw or b"null", "Failed to parse body")
        if not isinstance(ops, list):
            raise HTTPError(400, "Failed to parse body: expected a JSON array of operations")
        if len(ops) > MAX_TXN_OPS:
            raise HTTPError(413, f"Transaction contains too many operations ({len(ops)} > {MAX_TXN_OPS})")
        parsed = [self._txn_op(op) for op in ops]
        denied = self._txn_denied(parsed)
        if denied:
            return 409, {"Results": None, "Errors": denied}, {}
        results, errors = self.server.store.txn(parsed)
        if errors:
            return 409, {"Results": None, "Errors": errors}, {}
        # As Consul's FilterTxnResults: what the token may not read is left out of the results.
        results = [r for r in results if self._readable("key", r["KV"]["Key"])]
        return 200, {"Results": results, "Errors": None}, {}

    def _txn_denied(self, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Consul's txn preCheck (kvsPreApply for each op): the ops this token may not run, as errors."""
        authz = self._authz()
        if authz is None:
            return []
        errors = []
        for i, op in enumerate(ops):
            verb, key = op["verb"], op["key"]
            try:
                if verb == "delete-tree":
                    authz.require_key_write_prefix(key)
                elif verb in ("check-session", "check-index"):
                    authz.require("key", READ, key)
                elif verb not in ("get", "get-tree"):   # reads are filtered from the results instead
                    authz.require("key", WRITE, key)
            except ACLError as exc:
                errors.append({"OpIndex": i, "What": str(exc)})
        return errors

    @staticmethod
    def _txn_op(op: Any) -> dict[str, Any]:
        fields = {k.lower(): v for k, v in op.items()} if isinstance(op, dict) else {}
        kv = fields.get("kv")
        if not isinstance(kv, dict):
            raise HTTPError(400, "Failed to parse body: only KV operations are supported by this Name Server")
        kv = {k.lower(): v for k, v in kv.items()}
        verb = kv.get("verb", "")
        if not isinstance(verb, str) or verb not in KV_VERBS:
            raise HTTPError(400, f'Failed to parse body: unknown KV verb "{verb}"')
        value = kv.get("value")
        if value is not None:
            try:
                value = base64.b64decode(value, validate=True)
            except (binascii.Error, TypeError, ValueError) as exc:
                raise HTTPError(400, f"Failed to parse body: failed to decode value: {exc}") from None
            if len(value) > KV_MAX_VALUE_SIZE:
                raise HTTPError(413, f'Value for key "{kv.get("key", "")}" is too large '
                                     f"({len(value)} > {KV_MAX_VALUE_SIZE} bytes)")
        key, session = _txn_field(kv, "key", str, ""), _txn_field(kv, "session", str, "")
        _check_key(key)
        return {"verb": verb, "key": key, "value": value,
                "flags": _txn_field(kv, "flags", int, 0), "index": _txn_field(kv, "index", int, 0),
                "session": session}

    def _session(self, method: str, rest: str, params: _Params) -> tuple[int, Any, dict[str, str]]:
        store = self.server.store
        action, _, arg = rest.partition("/")
        if action == "create":
            self._allow(method, "PUT")
            raw = self._read_body(KV_MAX_VALUE_SIZE)
            body = _decode_json(raw, "Request decode failed") if raw.strip() else {}
            if not isinstance(body, dict):
                raise HTTPError(400, "Request decode failed: expected a JSON object")
            _check_session_body(body)
            node = next((v for k, v in body.items() if str(k).lower() == "node" and v), store.node_name)
            self._require("session", WRITE, node)
            return 200, {"ID": store.session_create(body)}, {}
        if action in ("destroy", "renew", "info", "node") and not arg:
            raise HTTPError(400, "Missing node name" if action == "node" else "Missing session")
        if action == "destroy":
            self._allow(method, "PUT")
            self._require_session_write(arg)
            store.session_destroy(arg)
            return 200, True, {}
        if action == "renew":
            self._allow(method, "PUT")
            self._require_session_write(arg)
            session = store.session_renew(arg)
            if session is None:
                return 404, f"Session id '{arg}' not found", {}
            return 200, [session.api()], {}
        if action in ("info", "list", "node"):
            self._allow(method, "GET")
            index, wait = self._blocking_args(params)
            if action == "info":
                idx, found = store.session_info(arg, index, wait)
            else:
                idx, found = store.session_list(arg if action == "node" else None, index, wait)
            found = [s for s in found if self._readable("session", s["Node"])]
            return 200, found, self._index_headers(idx)
        raise HTTPError(404, f"no such endpoint /v1/session/{rest}")

    def _require_session_write(self, sid: str) -> None:
        """Destroy and renew need session:write on the node the session belongs to (when it exists)."""
        if self._acl_on():
            _, found = self.server.store.session_info(sid)
            if found:
                self._require("session", WRITE, found[0]["Node"])

    # -- /v1/acl ----------------------------------------------------------

    def _acl(self, method: str, rest: str, params: _Params) -> tuple[int, Any, dict[str, str]]:
        """Consul's ACL API (agent/acl_endpoint.go): bootstrap, tokens and policies."""
        if not self._acl_on():
            raise HTTPError(401, "ACL support disabled")
        acl: ACL = self.server.acl
        if rest == "bootstrap":
            self._allow(method, "PUT", "POST")
            raw = self._read_body(KV_MAX_VALUE_SIZE)
            body = self._json_object(raw, "Request decoding failed") if raw.strip() else {}
            secret = next((v for k, v in body.items() if k.lower() == "bootstrapsecret"), None)
            return 200, acl.bootstrap(secret or None), {}
        if rest in ("login", "logout"):
            self._allow(method, "POST")
            if rest == "logout":
                token = acl.table.token_by_secret(self._secret) if self._secret else None
                if token is None:
                    raise ACLError("ACL not found", 403)
            # No auth methods here: a login names none that exists, and no token came from one.
            raise ACLError("ACL not found" if rest == "login" else
                           "Permission denied: the token was not created by an auth method", 403)
        authz = self._authz()
        headers = {"X-Consul-Index": str(self.server.store.index), "X-Consul-KnownLeader": "true"}
        if rest == "policies":
            self._allow(method, "GET")
            authz.require_acl(READ)
            return 200, acl.policy_list(), headers
        if rest == "tokens":
            self._allow(method, "GET")
            authz.require_acl(READ)
            tokens = acl.token_list(policy=params.get("policy"), role=params.get("role"),
                                    authmethod=params.get("authmethod"), servicename=params.get("servicename"))
            return 200, [self._redacted(authz, t) for t in tokens], headers
        if rest == "policy" or rest.startswith("policy/"):
            pid = rest[len("policy/"):]
            if rest == "policy":
                self._allow(method, "PUT")
                body = self._json_object(self._read_body(KV_MAX_VALUE_SIZE), "Policy decoding failed")
                authz.require_acl(WRITE)
                return 200, acl.policy_set(body), {}
            if pid.startswith("name/"):
                self._allow(method, "GET")
                if not pid[len("name/"):]:
                    raise HTTPError(400, "Missing policy Name")
                authz.require_acl(READ)
                return 200, acl.policy_read(name=pid[len("name/"):]), headers
            self._allow(method, "GET", "PUT", "DELETE")
            if not pid:
                raise HTTPError(400, "Missing policy ID")
            if method == "GET":
                authz.require_acl(READ)
                return 200, acl.policy_read(pid), headers
            if method == "PUT":
                body = self._json_object(self._read_body(KV_MAX_VALUE_SIZE), "Policy decoding failed")
                authz.require_acl(WRITE)
                return 200, acl.policy_set(body, pid), {}
            authz.require_acl(WRITE)
            return 200, acl.policy_delete(pid), {}
        if rest == "token" or rest.startswith("token/"):
            accessor = rest[len("token/"):]
            if rest == "token":
                self._allow(method, "PUT")
                body = self._json_object(self._read_body(KV_MAX_VALUE_SIZE), "Token decoding failed")
                authz.require_acl(WRITE)
                return 200, acl.token_create(body), {}
            if accessor == "self":
                self._allow(method, "GET")
                return 200, acl.token_read(authz.accessor), headers
            self._allow(method, "GET", "PUT", "DELETE")
            if accessor.endswith("/clone") and method == "PUT":
                body = self._json_object(self._read_body(KV_MAX_VALUE_SIZE), "Token decoding failed")
                authz.require_acl(WRITE)
                return 200, acl.token_create(body, clone_of=accessor[:-len("/clone")]), {}
            if not accessor:
                raise HTTPError(400, "Missing token AccessorID")
            if method == "GET":
                authz.require_acl(READ)
                return 200, self._redacted(authz, acl.token_read(accessor)), headers
            if method == "PUT":
                body = self._json_object(self._read_body(KV_MAX_VALUE_SIZE), "Token decoding failed")
                authz.require_acl(WRITE)
                return 200, acl.token_update(accessor, body), {}
            authz.require_acl(WRITE)
            return 200, acl.token_delete(accessor, authz.accessor), {}
        # Roles, auth methods, binding rules...: not here; but a token without the right to them hears so first.
        authz.require_acl(READ if method == "GET" else WRITE)
        raise HTTPError(404, f"no such endpoint /v1/acl/{rest}: this Name Server's ACL system has "
                             "bootstrap, tokens and policies (no roles, auth methods or binding rules)")

    @staticmethod
    def _redacted(authz: Authorizer, token: dict[str, Any]) -> dict[str, Any]:
        """As Consul: a token read with acl:read but not acl:write shows no secret."""
        if authz.scalar("acl", WRITE):
            return token
        return dict(token, SecretID="<hidden>")

    @staticmethod
    def _json_object(raw: bytes, what: str) -> dict[str, Any]:
        body = _decode_json(raw or b"{}", what)
        if not isinstance(body, dict):
            raise HTTPError(400, f"{what}: expected a JSON object")
        return body


def _txn_field(kv: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    """A field of a KV op, of the type Go decodes it into (a uint64 for Flags and Index)."""
    value = kv.get(name)
    if value is None:
        return default
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and not 0 <= value < 1 << 64):
        what = "an unsigned 64-bit integer" if kind is int else "a string"
        raise HTTPError(400, f"Failed to parse body: KV {name.capitalize()} must be {what}, "
                             f"not {json.dumps(value)[:64]}")
    return value


# The types Consul's structs.Session decodes each field into; a body with another is a decode failure.
_SESSION_FIELDS: dict[str, tuple[str, Any]] = {
    "id": ("a string", str), "name": ("a string", str), "node": ("a string", str),
    "behavior": ("a string", str), "ttl": ("a string", str), "namespace": ("a string", str),
    "lockdelay": ("a duration", (str, int, float)),
    "checks": ("a list of strings", list), "nodechecks": ("a list of strings", list),
    "servicechecks": ("a list of objects", list),
}


def _check_session_body(body: dict[str, Any]) -> None:
    for name, value in body.items():
        want = _SESSION_FIELDS.get(str(name).lower())
        if want is None or value is None:
            continue
        what, types = want
        ok = isinstance(value, types) and not isinstance(value, bool)
        if ok and isinstance(value, float):
            ok = math.isfinite(value) and abs(value) < 1 << 63
        if ok and isinstance(value, int) and not isinstance(value, bool):
            ok = abs(value) < 1 << 63
        if ok and isinstance(value, list):
            item = dict if what == "a list of objects" else str
            ok = all(isinstance(v, item) for v in value)
        if not ok:
            raise HTTPError(400, f"Request decode failed: {name} must be {what}, not {json.dumps(value)[:64]}")


def _decode_path(raw: str) -> str:
    """The URL path percent-decoded as UTF-8, strictly: a key that is not valid UTF-8 is refused,
    not turned into U+FFFD and merged with another key. http.server read the line as Latin-1."""
    try:
        return urllib.parse.unquote_to_bytes(raw.encode("latin-1")).decode("utf-8")
    except UnicodeError:
        raise HTTPError(400, "Invalid URL path: it is not valid UTF-8 once percent-decoded") from None


def _check_key(key: str) -> None:
    if "\x00" in key:
        raise HTTPError(400, "Invalid key: it contains a NUL character")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise HTTPError(400, "Invalid key: it is not valid UTF-8") from None


def _decode_json(raw: bytes, what: str) -> Any:
    """JSON as Go's encoding/json takes it: no NaN or Infinity, no nesting deep enough to recurse out."""
    def constant(name: str) -> Any:
        raise ValueError(f"invalid character {name[0]!r} looking for beginning of value")
    try:
        return json.loads(raw, parse_constant=constant)
    except (ValueError, RecursionError) as exc:
        detail = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise HTTPError(400, f"{what}: {detail}") from None


def _parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise OneOSError(f"--listen {text!r} is not HOST:PORT (for example 127.0.0.1:8500)")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve(listen: str, data_dir: str | Path, *, node_name: str | None = None, fsync: bool = True,
          compact_bytes: int = COMPACT_BYTES,
          max_conns_per_client: int = MAX_CONNS_PER_CLIENT, idle_timeout: float = IDLE_TIMEOUT_S,
          tls: ssl.SSLContext | None = None, acl: bool = False,
          initial_management: str | None = None) -> tuple[NameServerHTTP, Store]:
    """Open the data directory and bind the listener (HTTPS with a `tls` context from
    tls.server_context); the caller runs serve_forever().

    With `acl`, requests are checked against ACLs (deny by default); `initial_management` is the
    secret of a management token made at start (Consul's acl.tokens.initial_management)."""
    host, port = _parse_listen(listen)
    journal = Journal(data_dir, fsync=fsync, compact_bytes=compact_bytes)
    # The ACL table is kept whether or not ACLs are on, so that a restart without --acl keeps it.
    table = ACLTable()
    try:
        store = Store(journal, node_name or socket.gethostname(), tables=[table])
    except Exception:
        journal.close()
        raise
    access = ACL(table, store.table_write, enabled=acl)
    if acl:
        try:
            access.initialize(initial_management)
        except Exception:
            store.close()
            raise
    try:
        httpd = NameServerHTTP((host, port), store, max_conns_per_client=max_conns_per_client,
                               idle_timeout=idle_timeout, tls=tls, acl=access)
    except OSError as exc:
        store.close()
        raise OneOSError(f"cannot listen on {host}:{port}: {exc.strerror.lower()}; "
                         "stop what uses it or pick another --listen HOST:PORT") from None
    return httpd, store


def _add_tls_args(parser: argparse.ArgumentParser) -> None:
    """TLS and who may reach the listener: Consul's cert_file, key_file, ca_file, verify_incoming."""
    parser.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS (only) with this PEM certificate")
    parser.add_argument("--tls-key", metavar="FILE", help="the certificate's PEM private key (mode 0600)")
    parser.add_argument("--tls-ca", metavar="FILE", help="the PEM CA that signs clients' certificates")
    parser.add_argument("--verify-incoming", action="store_true",
                        help="require a client certificate signed by --tls-ca (Consul's verify_incoming)")
    parser.add_argument("--insecure", action="store_true",
                        help="listen on an address other machines reach without ACLs: anyone who reaches "
                             "it can write any key, and so run any command on every node")


def _tls_from_args(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The listener's TLS context from the flags; refuses an open listener without ACLs first."""
    host, _ = _parse_listen(args.listen)
    refusal = tlsmod.listen_refusal(host, args.acl, args.insecure)
    if refusal:
        raise OneOSError(refusal)
    ctx = tlsmod.server_context(args.tls_cert, args.tls_key, args.tls_ca, args.verify_incoming)
    warning = tlsmod.key_mode_warning(args.tls_key)
    if warning:
        log.warning("%s", warning)
    return ctx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="oneos-nameserver",
        description="The built-in single-node Name Server: the subset of Consul's HTTP API OneOS uses.")
    parser.add_argument("--listen", default="127.0.0.1:8500", metavar="HOST:PORT",
                        help="address to serve the HTTP API on (default 127.0.0.1:8500)")
    parser.add_argument("--data-dir", default=str(Path.home() / ".oneos" / "nameserver"), metavar="DIR",
                        help="where state is kept (default ~/.oneos/nameserver)")
    parser.add_argument("--node-name", default=None, help="the node name sessions belong to (default: hostname)")
    parser.add_argument("--fsync", action=argparse.BooleanOptionalAction, default=True,
                        help="fsync each batch of writes before answering them, so that they survive a power "
                             "loss, not only a crash (default; --no-fsync: only a crash, for tests and benches)")
    parser.add_argument("--compact-bytes", type=int, default=COMPACT_BYTES, metavar="N",
                        help="write a new snapshot once the log passes N bytes (default 32 MiB); "
                             "writes go on meanwhile")
    parser.add_argument("--max-conns-per-client", type=int, default=MAX_CONNS_PER_CLIENT, metavar="N",
                        help="open connections allowed from one client IP; one more is answered 429 "
                             f"(Consul's http_max_conns_per_client; default {MAX_CONNS_PER_CLIENT}, 0: no limit)")
    parser.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT_S, metavar="SECONDS",
                        help="close a connection that sends nothing this long, between requests or inside "
                             f"one (a blocking query in progress is not idle; default {IDLE_TIMEOUT_S:g})")
    parser.add_argument("--acl", action="store_true",
                        help="check every request against ACLs, deny by default (Consul's acl.enabled with "
                             "default_policy deny); PUT /v1/acl/bootstrap makes the first management token")
    parser.add_argument("--acl-initial-management-token-file", metavar="FILE",
                        help="with --acl: a file (mode 0600) holding the secret of a management token made at "
                             "start (Consul's acl.tokens.initial_management); bootstrap is then done")
    _add_tls_args(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="oneos-nameserver: %(message)s", stream=sys.stderr)
    try:
        tls = _tls_from_args(args)
        initial = None
        if args.acl_initial_management_token_file:
            if not args.acl:
                raise OneOSError("--acl-initial-management-token-file needs --acl")
            initial = read_secret(args.acl_initial_management_token_file, "--acl-initial-management-token-file")
        httpd, store = serve(args.listen, args.data_dir, node_name=args.node_name, fsync=args.fsync,
                             compact_bytes=args.compact_bytes,
                             max_conns_per_client=args.max_conns_per_client, idle_timeout=args.idle_timeout,
                             tls=tls, acl=args.acl, initial_management=initial)
    except (OneOSError, ACLError) as exc:
        print(f"oneos-nameserver: {exc}", file=sys.stderr)
        return 1

    def stop(signum: int, _frame: Any) -> None:
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = httpd.server_address[:2]
    scheme = "https" if tls else "http"
    print(f"oneos-nameserver: serving {scheme}://{host}:{port} (data {args.data_dir}, index {store.index}, "
          f"ACLs {'on, deny by default' if args.acl else 'off'})", flush=True)
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
