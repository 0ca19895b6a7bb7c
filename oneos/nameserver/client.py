"""The one Name Server client: Consul's HTTP API through py-consul.

Every part of OneOS that reads or writes cluster state goes through `NameServer`.
It speaks to real Consul and to the built-in server alike. The address comes from
the caller, else `ONEOS_NAMESERVER`, else `CONSUL_HTTP_ADDR`, else
http://127.0.0.1:8500. An https:// address (or one without a scheme while CONSUL_HTTP_SSL is
true) speaks TLS, set up from Consul's variables (oneos.nameserver.tls.ClientTLS): CONSUL_CACERT,
CONSUL_CLIENT_CERT, ... The ACL token (see `find_token`) comes from the caller, else
`ONEOS_TOKEN`, else `CONSUL_HTTP_TOKEN`, else the file `CONSUL_HTTP_TOKEN_FILE` names, else
`$ONEOS_HOME/token` (which `oneosd --dev` writes); token files must have mode 0600.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import urllib.parse
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import consul
import consul.base
import consul.exceptions
import requests
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.exceptions

from oneos.nameserver.store import KV_MAX_VALUE_SIZE  # noqa: F401 - the largest value, for callers
from oneos.nameserver.tls import ClientTLS, explain, explain_plain_answer, parse_bool
from oneos.errors import OneOSError
from oneos.paths import oneos_home
from oneos.secretfiles import read_secret

DEFAULT_URL = "http://127.0.0.1:8500"


def nameserver_url(url: str | None = None) -> str:
    """The Name Server address to use, normalised to scheme://host:port.

    An address without a scheme is https:// when CONSUL_HTTP_SSL is true. Unlike Consul's Go
    client, an explicit http:// stays plain HTTP: the address given is the one used."""
    url = url or os.environ.get("ONEOS_NAMESERVER") or os.environ.get("CONSUL_HTTP_ADDR") or DEFAULT_URL
    if "://" not in url:
        url = ("https://" if parse_bool("CONSUL_HTTP_SSL", os.environ) else "http://") + url
    return url.rstrip("/")


TOKEN_FILE = "token"   # in $ONEOS_HOME
TOKEN_HELP = ("set ONEOS_TOKEN (or CONSUL_HTTP_TOKEN) to a token that may, or put it in "
              "$ONEOS_HOME/token with mode 0600")


def token_file() -> Path:
    """Where a token is found when no variable gives one: $ONEOS_HOME/token."""
    return oneos_home() / TOKEN_FILE


def find_token(token: str | None = None, *, configured: str | None = None) -> str | None:
    """The ACL token to send: `token`, else ONEOS_TOKEN, else CONSUL_HTTP_TOKEN, else the file that
    CONSUL_HTTP_TOKEN_FILE names, else `configured` (a config file's), else $ONEOS_HOME/token if it
    exists; None (the anonymous token) else. A token file that others may read is refused with a
    OneOSError."""
    if token:
        return token
    for name in ("ONEOS_TOKEN", "CONSUL_HTTP_TOKEN"):
        if os.environ.get(name):
            return os.environ[name].strip()
    if os.environ.get("CONSUL_HTTP_TOKEN_FILE"):
        return read_secret(os.environ["CONSUL_HTTP_TOKEN_FILE"], "the token file (CONSUL_HTTP_TOKEN_FILE)")
    if configured:
        return configured
    path = token_file()
    if path.exists():
        return read_secret(path, "the token file")
    return None


class NameServerUnreachable(OneOSError):
    """The Name Server did not answer (refused, reset, timed out)."""


class NameServerError(OneOSError):
    """The Name Server answered with an error status."""

    def __init__(self, message: str, status: int = 0, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class TxnConflict(NameServerError):
    """A transaction was rolled back; `errors` lists (op index, what) pairs."""

    def __init__(self, errors: list[tuple[int, str]]) -> None:
        what = "; ".join(f"op {i}: {w}" for i, w in errors)
        super().__init__(f"transaction rolled back: {what}", 409)
        self.errors = errors


@dataclass(frozen=True)
class Entry:
    """One KV entry as Consul returns it."""

    key: str
    value: bytes | None
    flags: int = 0
    create_index: int = 0
    modify_index: int = 0
    lock_index: int = 0
    session: str | None = None

    @classmethod
    def from_api(cls, raw: dict[str, Any], *, b64: bool) -> "Entry":
        value = raw.get("Value")
        if value is not None and b64:
            value = base64.b64decode(value)
        return cls(
            key=raw["Key"],
            value=value,
            flags=int(raw.get("Flags") or 0),
            create_index=int(raw.get("CreateIndex") or 0),
            modify_index=int(raw.get("ModifyIndex") or 0),
            lock_index=int(raw.get("LockIndex") or 0),
            session=raw.get("Session") or None,
        )


def kv_op(verb: str, key: str, value: bytes | str | None = None, *, index: int | None = None,
          session: str | None = None, flags: int | None = None) -> dict[str, Any]:
    """One operation for `NameServer.txn`, in Consul's /v1/txn format."""
    op: dict[str, Any] = {"Verb": verb, "Key": key}
    if value is not None:
        op["Value"] = base64.b64encode(_as_bytes(value)).decode("ascii")
    if index is not None:
        op["Index"] = index
    if session is not None:
        op["Session"] = session
    if flags is not None:
        op["Flags"] = flags
    return {"KV": op}


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


# -- connections that another thread can cut ----------------------------------
#
# A blocking query holds its HTTP request open for up to its `wait`: a watch that must stop
# now cannot wait that out, and a thread blocked in recv() cannot be told anything. So every
# socket a client opens is listed, and `NameServer.close()` shuts them down (shutdown(2)
# wakes a recv() in another thread at once, as end of file). urllib3 documents
# PoolManager._new_pool as its place for such customisation.

class _Sockets:
    """The sockets of one client's connections; `close()` shuts them, and refuses any opened later."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self.closed = False

    def opened(self, sock: socket.socket) -> None:
        with self._lock:
            if not self.closed:
                self._open.add(sock)
                return
        raise ConnectionAbortedError("the Name Server client was closed")

    def close(self) -> None:
        with self._lock:
            self.closed = True
            sockets = list(self._open)
        for sock in sockets:
            try:
                # socket.socket's own shutdown, also for a TLS socket: its TLS state is the reader's.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass   # closed already


class _Listed:
    """A urllib3 connection that lists its socket in its client's `_Sockets` once connected."""

    def __init__(self, *args: Any, sockets: _Sockets, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sockets = sockets

    def connect(self) -> None:
        super().connect()
        self._sockets.opened(self.sock)


class _ListedHTTPConnection(_Listed, urllib3.connection.HTTPConnection):
    pass


class _ListedHTTPSConnection(_Listed, urllib3.connection.HTTPSConnection):
    pass


class _PoolManager(urllib3.PoolManager):
    def __init__(self, *args: Any, sockets: _Sockets, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sockets = sockets

    def _new_pool(self, scheme: str, host: str, port: int, request_context: dict[str, Any] | None = None) -> Any:
        pool = super()._new_pool(scheme, host, port, request_context)
        pool.ConnectionCls = _ListedHTTPSConnection if scheme == "https" else _ListedHTTPConnection
        pool.conn_kw["sockets"] = self._sockets
        return pool


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter, with connections listed in `sockets`; TLS checked against `server_name`
    instead of the host in the URL when given (CONSUL_TLS_SERVER_NAME), and against the CA
    certificates `ca_data` alone when given (CONSUL_CAPATH's files)."""

    def __init__(self, sockets: _Sockets, server_name: str | None = None, ca_data: str | None = None) -> None:
        self._sockets = sockets
        self._server_name = server_name
        self._ca_data = ca_data
        super().__init__()

    def build_connection_pool_key_attributes(self, request: Any, verify: Any, cert: Any = None) -> Any:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        if host_params.get("scheme") == "https":
            if self._server_name:
                pool_kwargs["server_hostname"] = self._server_name
            if self._ca_data and verify is not False:
                pool_kwargs["ca_cert_data"] = self._ca_data
        return host_params, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, verify, cert)
        if self._ca_data and verify is not False:
            conn.ca_certs = conn.ca_cert_dir = None     # not certifi's bundle too: those CAs only, as Consul

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        self._pool_connections, self._pool_maxsize, self._pool_block = connections, maxsize, block
        self.poolmanager = _PoolManager(num_pools=connections, maxsize=maxsize, block=block, sockets=self._sockets,
                                        **pool_kwargs)


class NameServer:
    """A client of one Name Server. Safe to share between threads."""

    def __init__(self, url: str | None = None, *, token: str | None = None, timeout: float = 10.0,
                 tls: ClientTLS | None = None) -> None:
        """`tls`: how to check an https:// Name Server (default: from Consul's variables, see ClientTLS)."""
        self.url = nameserver_url(url)
        parsed = urllib.parse.urlsplit(self.url)
        if not parsed.hostname:
            raise OneOSError(f"Name Server address {self.url!r} has no host; use http://HOST:PORT")
        try:
            port = parsed.port
        except ValueError:
            raise OneOSError(f"Name Server address {self.url!r} has a bad port; use http://HOST:PORT") from None
        self._host = parsed.hostname
        self._port = port or (443 if parsed.scheme == "https" else 8500)
        self._scheme = parsed.scheme or "http"
        if self._scheme not in ("http", "https"):
            raise OneOSError(f"Name Server address {self.url!r} is neither http:// nor https://")
        self.tls = tls or ClientTLS.from_env()
        if self._scheme == "https" and tls is None:
            self.tls.check()     # given settings were checked by whoever made them (clone)
        if self._scheme == "https" and not self.tls.verify:
            # Asked for (CONSUL_HTTP_SSL_VERIFY=false): not a warning on every request, as Consul's client.
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        self._token = find_token(token)
        self._timeout = timeout
        self._local = threading.local()
        self._sockets = _Sockets()

    @property
    def token(self) -> str | None:
        """The ACL token this client sends (None: the anonymous token)."""
        return self._token

    def clone(self) -> "NameServer":
        """A new client of the same Name Server (address, token, timeout) with connections of its own."""
        return NameServer(self.url, token=self._token, timeout=self._timeout, tls=self.tls)

    def close(self) -> None:
        """Cut this client off at once, from any thread: a request under way, and every later one,
        raises NameServerUnreachable. For a client of one's own (clone()), as a watch has."""
        self._sockets.close()

    # -- plumbing ---------------------------------------------------------

    def _api(self) -> consul.Consul:
        # requests sessions are not thread-safe: one py-consul client per thread.
        api = getattr(self._local, "api", None)
        if api is None:
            api = consul.Consul(host=self._host, port=self._port, scheme=self._scheme,
                                token=self._token, connections_timeout=self._timeout,
                                verify=self.tls.requests_verify(), cert=self.tls.requests_cert())
            api.token = self._token   # py-consul prefers CONSUL_HTTP_TOKEN to the token it is given
            for prefix in ("http://", "https://"):
                api.http.session.mount(prefix, _Adapter(self._sockets, self.tls.server_name, self.tls.ca_data()))
            self._local.api = api
        return api

    def _closed(self) -> NameServerUnreachable:
        return NameServerUnreachable(f"the connection to the Name Server at {self.url} was closed: "
                                     "this part of OneOS is stopping")

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._sockets.closed:
            raise self._closed()
        try:
            return fn(*args, **kwargs)
        except requests.exceptions.RequestException as exc:
            if self._sockets.closed:
                raise self._closed() from None
            tls_failure = explain(self.url, str(exc), self.tls) if self._scheme == "https" else None
            if tls_failure:
                raise NameServerUnreachable(tls_failure) from None
            if isinstance(exc, requests.exceptions.ConnectionError):
                raise NameServerUnreachable(
                    f"cannot reach the Name Server at {self.url} ({_reason(exc)}); "
                    "is it running? Set ONEOS_NAMESERVER or start one with `oneosd --dev`"
                ) from None
            if isinstance(exc, requests.exceptions.Timeout):
                raise NameServerUnreachable(
                    f"the Name Server at {self.url} did not answer {what} in time; check that it is healthy"
                ) from None
            if isinstance(exc, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
                # The server went away in the middle of its reply (killed, restarted).
                raise NameServerUnreachable(
                    f"the Name Server at {self.url} broke off its answer to {what}; check that it is running"
                ) from None
            raise
        except consul.exceptions.ACLPermissionDenied as exc:
            raise self._refused(what, 403, str(exc)) from None
        except consul.exceptions.ConsulException as exc:
            status, _, body = str(exc).partition(" ")
            code = int(status) if status.isdigit() else 0
            wrong_scheme = explain_plain_answer(self.url, body)
            if wrong_scheme:
                raise NameServerUnreachable(wrong_scheme) from None
            raise NameServerError(f"the Name Server at {self.url} refused {what}: {str(exc).strip()}",
                                  code, body) from None

    def _refused(self, what: str, status: int, body: str) -> NameServerError:
        """A 403 as one line: what was refused, why, and where a token comes from."""
        body = body.strip()
        if body == "ACL not found":
            reason = "it does not know the token sent (ACL not found)"
        else:
            reason = body.replace("Permission denied: ", "permission denied: ", 1)
            reason = reason.split(". The anonymous token is used implicitly", 1)[0]
            if "anonymous token" in reason:
                reason += " (no token was sent)"
        return NameServerError(f"the Name Server at {self.url} refused {what}: {reason}; {TOKEN_HELP}",
                               status, body)

    def _raw(self, method: str, path: str, params: list[tuple[str, Any]] | None = None,
             data: bytes | str = "", binary: bool = False) -> consul.base.Response:
        """One request answered with its status, headers and body (bytes if `binary`), whatever the status."""
        api = self._api()
        headers = api.prepare_headers()
        call = getattr(api.http, method)
        if method == "get":
            return self._call(f"GET {path}", call, lambda r: r, path, params=params, headers=headers, raw=binary)
        return self._call(f"{method.upper()} {path}", call, lambda r: r, path, params=params,
                          data=data, headers=headers)

    @staticmethod
    def _blocking(index: int | None, wait: str | None) -> dict[str, Any]:
        return {"index": index, "wait": wait} if index else {}

    # -- KV ---------------------------------------------------------------

    def get(self, key: str, *, index: int | None = None, wait: str | None = None) -> tuple[int, Entry | None]:
        """Read one key; with `index`, block until it changes past that index or `wait` ends."""
        idx, raw = self._call(f"GET {key}", self._api().kv.get, key, **self._blocking(index, wait))
        return int(idx), (Entry.from_api(raw, b64=False) if raw else None)

    def get_tree(self, prefix: str, *, index: int | None = None,
                 wait: str | None = None) -> tuple[int, list[Entry]]:
        """Read every key under a prefix, sorted by key."""
        idx, raw = self._call(f"GET {prefix}?recurse", self._api().kv.get, prefix, recurse=True,
                              **self._blocking(index, wait))
        return int(idx), [Entry.from_api(r, b64=False) for r in raw or []]

    def keys(self, prefix: str = "", *, separator: str | None = None, index: int | None = None,
             wait: str | None = None) -> tuple[int, list[str]]:
        """List the keys under a prefix, cut after `separator` when given."""
        idx, raw = self._call(f"GET {prefix}?keys", self._api().kv.get, prefix, keys=True,
                              separator=separator, **self._blocking(index, wait))
        return int(idx), list(raw or [])

    def get_raw(self, key: str) -> bytes | None:
        """The bare value of a key (`?raw`), or None when it is missing."""
        resp = self._raw("get", f"/v1/kv/{key}", [("raw", "1")], binary=True)
        if resp.code == 404:
            return None
        self._check(resp, f"GET {key}?raw")
        return resp.body

    def put(self, key: str, value: bytes | str | None, *, cas: int | None = None, flags: int | None = None,
            acquire: str | None = None, release: str | None = None) -> bool:
        """Write a key; False when a cas, acquire or release condition did not hold."""
        data = None if value is None else _as_bytes(value)
        return bool(self._call(f"PUT {key}", self._api().kv.put, key, data, cas=cas, flags=flags,
                               acquire=acquire, release=release))

    def delete(self, key: str, *, recurse: bool = False, cas: int | None = None) -> bool:
        """Delete a key (or a prefix); False when the cas index did not match."""
        return bool(self._call(f"DELETE {key}", self._api().kv.delete, key, recurse=recurse or None, cas=cas))

    def txn(self, ops: list[dict[str, Any]]) -> list[Entry]:
        """Apply KV operations all or nothing; raises TxnConflict when rolled back."""
        resp = self._raw("put", "/v1/txn", data=json.dumps(ops).encode("utf-8"))
        if resp.code == 409:
            body = json.loads(resp.body)
            raise TxnConflict([(int(e.get("OpIndex", 0)), e.get("What", "")) for e in body.get("Errors") or []])
        self._check(resp, "PUT /v1/txn")
        results = json.loads(resp.body).get("Results") or []
        return [Entry.from_api(r["KV"], b64=True) for r in results if r.get("KV")]

    # -- sessions ---------------------------------------------------------

    def session_create(self, *, name: str | None = None, ttl: int | None = None, behavior: str = "release",
                       lock_delay: int = 15, checks: list[str] | None = None) -> str:
        """Create a session; `ttl` and `lock_delay` in seconds. Returns its id."""
        return self._call("session create", self._api().session.create, name=name, ttl=ttl,
                          behavior=behavior, lock_delay=lock_delay, checks=checks)

    def session_renew(self, session_id: str) -> dict[str, Any] | None:
        """Restart a session's TTL timer; None when the session no longer exists."""
        resp = self._raw("put", f"/v1/session/renew/{session_id}")
        if resp.code == 404:
            return None
        self._check(resp, "session renew")
        found = json.loads(resp.body)
        return found[0] if found else None

    def session_destroy(self, session_id: str) -> bool:
        """Invalidate a session: its locks are released or deleted per its behavior."""
        return bool(self._call("session destroy", self._api().session.destroy, session_id))

    def session_info(self, session_id: str, *, index: int | None = None,
                     wait: str | None = None) -> tuple[int, dict[str, Any] | None]:
        """A session's record, or None when it does not exist."""
        idx, raw = self._call("session info", self._api().session.info, session_id,
                              **self._blocking(index, wait))
        return int(idx), raw

    def session_list(self, *, index: int | None = None, wait: str | None = None) -> tuple[int, list[dict[str, Any]]]:
        """Every live session."""
        idx, raw = self._call("session list", self._api().session.list, **self._blocking(index, wait))
        return int(idx), list(raw or [])

    # -- ACL ------------------------------------------------------------------

    def acl_enabled(self) -> bool:
        """Whether the Name Server checks ACLs: it answers /v1/acl/* with 401 "ACL support disabled" when not,
        as Consul does (whatever the token)."""
        resp = self._raw("get", "/v1/acl/token/self")
        body = resp.body.decode("utf-8", "replace") if isinstance(resp.body, bytes) else (resp.body or "")
        return not (resp.code == 401 and "ACL support disabled" in body)

    def _acl_call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        resp = self._raw(method, path, data=json.dumps(body).encode("utf-8") if body is not None else "")
        if resp.code == 404 and method == "get":
            return None
        self._check(resp, f"{method.upper()} {path}")
        return json.loads(resp.body) if resp.body else None

    def acl_bootstrap(self) -> dict[str, Any] | None:
        """PUT /v1/acl/bootstrap: the first management token (its AccessorID and SecretID), or None when
        the Name Server was bootstrapped already (Consul's 403 "ACL bootstrap no longer allowed")."""
        resp = self._raw("put", "/v1/acl/bootstrap")
        body = resp.body.decode("utf-8", "replace") if isinstance(resp.body, bytes) else (resp.body or "")
        if resp.code == 403 and "bootstrap no longer allowed" in body:
            return None
        self._check(resp, "PUT /v1/acl/bootstrap")
        return json.loads(body)

    def acl_token_self(self) -> dict[str, Any]:
        """The token this client sends, as the Name Server knows it (NameServerError 403 when it does not)."""
        return self._acl_call("get", "/v1/acl/token/self")

    def acl_policy_read(self, name: str) -> dict[str, Any] | None:
        """The policy `name` (its ID, Rules...), None when there is none."""
        return self._acl_call("get", f"/v1/acl/policy/name/{name}")

    def acl_policy_upsert(self, name: str, rules: str, description: str = "") -> dict[str, Any]:
        """Create the policy `name`, or give the one of that name these rules."""
        found = self.acl_policy_read(name)
        body = {"Name": name, "Description": description, "Rules": rules}
        if found:
            return self._acl_call("put", f"/v1/acl/policy/{found['ID']}", body)
        return self._acl_call("put", "/v1/acl/policy", body)

    def acl_policy_delete(self, name: str) -> bool:
        """Delete the policy `name`; False when there is none."""
        found = self.acl_policy_read(name)
        if not found:
            return False
        return bool(self._acl_call("delete", f"/v1/acl/policy/{found['ID']}"))

    def acl_token_create(self, description: str, policies: list[str]) -> dict[str, Any]:
        """A new token linked to the policies named; its AccessorID and SecretID."""
        return self._acl_call("put", "/v1/acl/token",
                              {"Description": description, "Policies": [{"Name": p} for p in policies]})

    def acl_token_read(self, accessor: str) -> dict[str, Any] | None:
        return self._acl_call("get", f"/v1/acl/token/{accessor}")

    def acl_token_update(self, accessor: str, description: str, policies: list[str]) -> dict[str, Any]:
        """Give an existing token (the anonymous one, too) these policies."""
        return self._acl_call("put", f"/v1/acl/token/{accessor}",
                              {"Description": description, "Policies": [{"Name": p} for p in policies]})

    def acl_token_delete(self, accessor: str) -> bool:
        """Delete a token; False when there is none."""
        resp = self._raw("delete", f"/v1/acl/token/{accessor}")
        if resp.code == 404:
            return False
        self._check(resp, f"DELETE /v1/acl/token/{accessor}")
        return True

    # -- status -----------------------------------------------------------

    def leader(self) -> str:
        """The address of the Name Server's Raft leader ("" when there is none)."""
        return self._call("status leader", self._api().status.leader) or ""

    def _check(self, resp: consul.base.Response, what: str) -> None:
        if not 200 <= resp.code < 300:
            body = resp.body.decode("utf-8", "replace") if isinstance(resp.body, bytes) else resp.body
            wrong_scheme = explain_plain_answer(self.url, body)
            if wrong_scheme:
                raise NameServerUnreachable(wrong_scheme)
            if resp.code == 403:
                raise self._refused(what, 403, body)
            raise NameServerError(f"the Name Server at {self.url} refused {what}: {resp.code} {body.strip()}",
                                  resp.code, body)


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Connection reset", "Name or service not known",
                   "No route to host", "timed out", "Remote end closed connection"):
        if marker.lower() in text.lower():
            return marker.lower()
    return type(exc).__name__
