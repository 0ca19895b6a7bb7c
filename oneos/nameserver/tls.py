"""TLS for the Name Server: the server's context, the client's settings from Consul's variables,
one-line explanations of TLS failures, and the check that refuses an open listener.

Both sides follow Consul: the server takes a certificate, its key and a CA (`verify_incoming`
then asks every client for a certificate that CA signed); the client reads CONSUL_CACERT,
CONSUL_CAPATH, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY, CONSUL_TLS_SERVER_NAME and
CONSUL_HTTP_SSL_VERIFY as Consul's Go API does (api/api.go, DefaultConfig). This module
imports no HTTP library: `oneos-nameserver` starts without them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import ssl
import stat
import time
from dataclasses import dataclass
from typing import Mapping

from oneos.errors import OneOSError

# Go's strconv.ParseBool, which Consul uses for CONSUL_HTTP_SSL and CONSUL_HTTP_SSL_VERIFY.
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}

# What Go's net/http answers a plain HTTP request on a TLS port (server.go), status and body.
HTTP_ON_HTTPS = (b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
_TLS_HANDSHAKE = 0x16     # the first byte of a TLS record that opens a handshake
_SSL_REASON = re.compile(r"\[SSL: [A-Z0-9_]+\] ([^(]+)")     # OpenSSL's reason in an ssl.SSLError's text


def parse_bool(name: str, env: Mapping[str, str]) -> bool | None:
    """The variable as Go's strconv.ParseBool reads it; None when unset or empty."""
    raw = env.get(name, "")
    if not raw:
        return None
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise OneOSError(f"{name}={raw!r} is not a boolean; set it to true or false")


# -- server ----------------------------------------------------------------------------------------

def server_context(cert: str | None, key: str | None, ca: str | None = None,
                   verify_incoming: bool = False) -> ssl.SSLContext | None:
    """The listener's TLS context (None without a certificate: plain HTTP); OneOSError, one line, if
    the files are missing, unreadable, do not match, or the options do not go together."""
    if not cert and not key:
        if ca or verify_incoming:
            raise OneOSError("--tls-ca and --verify-incoming need --tls-cert and --tls-key: "
                             "give the server's certificate and key too")
        return None
    if not cert or not key:
        raise OneOSError("--tls-cert and --tls-key go together: give the certificate and its private key")
    if verify_incoming and not ca:
        raise OneOSError("--verify-incoming needs --tls-ca, the CA that signs the clients' certificates")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2          # Consul's tls_min_version default
    _load_chain(ctx, cert, key, "--tls-cert", "--tls-key")
    if ca:
        _load_ca(ctx, ca, "--tls-ca")
    ctx.verify_mode = ssl.CERT_REQUIRED if verify_incoming else ssl.CERT_NONE
    return ctx


def key_mode_warning(key: str | None, flag: str = "--tls-key") -> str | None:
    """A sentence when a private key file can be read by other users (secrets are mode 0600)."""
    if not key:
        return None
    try:
        mode = stat.S_IMODE(os.stat(key).st_mode)
    except OSError:
        return None
    if mode & 0o077:
        return f"{flag} {key} can be read by other users (mode {mode:04o}); chmod 600 it"
    return None


def accept_tls(ctx: ssl.SSLContext, sock: socket.socket, timeout: float) -> ssl.SSLSocket | None:
    """The handshake of one accepted connection, in its own thread, each read bounded by `timeout`.

    A client that speaks plain HTTP is answered Go's 400 in plain text, as Consul does; one that
    fails the handshake (no certificate, a CA we do not trust, silence) is closed: None either way.
    """
    sock.settimeout(timeout)
    try:
        first = sock.recv(1, socket.MSG_PEEK)
        if first and first[0] != _TLS_HANDSHAKE:
            if first.isalpha():
                # Read the request first: closing with it unread would reset the connection
                # and lose the answer.
                sock.recv(65536)
                sock.sendall(HTTP_ON_HTTPS)
            return None
        if not first:
            return None
        tls = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        try:
            tls.do_handshake()
        except BaseException:
            _linger(tls)
            tls.close()
            raise
        return tls
    except (OSError, ssl.SSLError):     # reset, timed out, refused certificate
        return None


def _linger(sock: socket.socket, limit: float = 1.0) -> None:
    """Let the client read our alert: with TLS 1.3 it has sent its request already, and closing
    with that unread would reset the connection and lose the alert ("certificate required")."""
    deadline = time.monotonic() + limit
    try:
        socket.socket.shutdown(sock, socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not socket.socket.recv(sock, 65536):
                break
    except OSError:
        pass


# -- client ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClientTLS:
    """How a client checks the Name Server's certificate and proves its own (Consul's TLSConfig)."""

    ca_file: str | None = None        # CONSUL_CACERT
    ca_path: str | None = None        # CONSUL_CAPATH: a directory of CA certificates
    cert_file: str | None = None      # CONSUL_CLIENT_CERT
    key_file: str | None = None       # CONSUL_CLIENT_KEY
    server_name: str | None = None    # CONSUL_TLS_SERVER_NAME: the name the certificate must carry
    verify: bool = True               # CONSUL_HTTP_SSL_VERIFY=false turns checking off

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ClientTLS":
        """The settings Consul's variables give (all optional)."""
        env = os.environ if env is None else env
        verify = parse_bool("CONSUL_HTTP_SSL_VERIFY", env)
        return cls(ca_file=env.get("CONSUL_CACERT") or None, ca_path=env.get("CONSUL_CAPATH") or None,
                   cert_file=env.get("CONSUL_CLIENT_CERT") or None, key_file=env.get("CONSUL_CLIENT_KEY") or None,
                   server_name=env.get("CONSUL_TLS_SERVER_NAME") or None, verify=verify is not False)

    def check(self) -> None:
        """Load every file once, so that a wrong one is said at start in one line, not on each request."""
        ctx = ssl.create_default_context()
        if self.ca_file:
            _load_ca(ctx, self.ca_file, "CONSUL_CACERT")
        elif self.ca_path:
            try:
                ctx.load_verify_locations(cadata=self.ca_data())
            except ssl.SSLError as exc:
                raise OneOSError(f"CONSUL_CAPATH {self.ca_path} holds a certificate that cannot be read "
                                 f"({exc.reason or exc}); keep only PEM CA certificates there") from None
        if self.key_file and not self.cert_file:
            raise OneOSError("CONSUL_CLIENT_KEY is set without CONSUL_CLIENT_CERT: set both, "
                             "to the client certificate and its key")
        if self.cert_file:
            _load_chain(ctx, self.cert_file, self.key_file, "CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY")

    def requests_verify(self) -> bool | str:
        """requests' `verify`: False, the CA file or directory, or True (the system's CAs)."""
        if not self.verify:
            return False
        return self.ca_file or True     # CONSUL_CAPATH: ca_data(), through the adapter

    def ca_data(self) -> str | None:
        """The certificates of every file under CONSUL_CAPATH, as Consul reads it (no hashed names
        needed, unlike OpenSSL's capath); None when CONSUL_CACERT is set, which wins, or neither."""
        if self.ca_file or not self.ca_path:
            return None
        return _read_ca_path(self.ca_path)

    def requests_cert(self) -> str | tuple[str, str] | None:
        """requests' `cert`: the client certificate and its key (or one file holding both)."""
        if not self.cert_file:
            return None
        return (self.cert_file, self.key_file) if self.key_file else self.cert_file


def explain(url: str, error: str, tls: ClientTLS) -> str | None:
    """One line for a TLS failure talking to `url` (the text of the exception); None if it is not one."""
    text = error.lower()
    if "certificate verify failed" in text:
        if "mismatch" in text or "not valid for" in text:
            host = tls.server_name or url.split("://", 1)[-1].rsplit(":", 1)[0]
            return (f"the Name Server at {url} has a certificate that is not for {host} (hostname mismatch); "
                    "connect by a name or address it lists, or set CONSUL_TLS_SERVER_NAME to one")
        if "expired" in text:
            return f"the Name Server at {url} has an expired certificate; renew it (--tls-cert)"
        trusted = tls.ca_file or tls.ca_path
        return (f"the Name Server at {url} has a certificate this client does not trust"
                f"{f' (not signed by {trusted})' if trusted else ''}; "
                "set CONSUL_CACERT to the CA certificate that signed it")
    if "certificate required" in text or "certificate_required" in text or "alert bad certificate" in text \
            or "bad_certificate" in text or "alert unknown ca" in text or "unknown_ca" in text:
        return (f"the Name Server at {url} refused this client's certificate"
                f"{'' if tls.cert_file else ' (it sent none)'}: it asks for one signed by its CA; "
                "set CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY")
    if "eof occurred in violation of protocol" in text:
        return (f"the Name Server at {url} closed the connection in the TLS handshake: this address has too "
                "many connections open to it, or it wants a client certificate "
                f"{'it trusts' if tls.cert_file else '(set CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY)'}")
    if "wrong version number" in text or "record layer failure" in text or "packet length too long" in text:
        return (f"the Name Server at {url} does not speak TLS on that port; "
                "use an http:// address (and unset CONSUL_HTTP_SSL)")
    reason = _SSL_REASON.search(error)
    if reason:
        return (f"the TLS handshake with the Name Server at {url} failed ({reason.group(1).strip()}); "
                "check CONSUL_CACERT, CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY")
    return None


def explain_plain_answer(url: str, body: str) -> str | None:
    """One line when an http:// client was answered by a TLS port (Go's 400, and ours)."""
    if "client sent an http request to an https server" in body.lower():
        return (f"the Name Server at {url} speaks HTTPS on that port; use an https:// address "
                "(or set CONSUL_HTTP_SSL=true) and CONSUL_CACERT")
    return None


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str | None, cert_what: str, key_what: str) -> None:
    for path, what in ((cert, cert_what), (key, key_what)):
        if path:
            _readable(path, what)
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        detail = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in str(exc).upper():
            raise OneOSError(f"{key_what} {key} is not the key of {cert_what} {cert}; "
                             "give the key the certificate was made for") from None
        raise OneOSError(f"{cert_what} {cert} (with {key_what} {key or cert}) is not a PEM certificate and "
                         f"private key ({detail}); give PEM files") from None


def _load_ca(ctx: ssl.SSLContext, ca_file: str, what: str) -> None:
    _readable(ca_file, what)
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except ssl.SSLError as exc:
        raise OneOSError(f"{what} {ca_file} holds no PEM CA certificate ({exc.reason or exc}); "
                         "give the CA certificate file") from None


def _read_ca_path(path: str) -> str:
    """Every file under `path`, each of which must hold PEM certificates (go-rootcerts' LoadCAPath)."""
    if not os.path.isdir(path):
        raise OneOSError(f"CONSUL_CAPATH {path} is not a directory; set it to a directory of CA certificates")
    found: list[str] = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
            file = os.path.join(root, name)
            _readable(file, "a file of CONSUL_CAPATH,")
            with open(file, encoding="ascii", errors="replace") as f:
                text = f.read()
            if "-----BEGIN CERTIFICATE-----" not in text:
                raise OneOSError(f"CONSUL_CAPATH {path} holds {file}, which is not a PEM certificate; "
                                 "keep only CA certificates there")
            found.append(text)
    if not found:
        raise OneOSError(f"CONSUL_CAPATH {path} holds no certificate; put the CA certificate there")
    return "\n".join(found)


def _readable(path: str, what: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise OneOSError(f"{what} {path} cannot be read: {(exc.strerror or str(exc)).lower()}; "
                         "give a file that exists and that this user may read") from None


# -- who may listen where --------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: only this machine can connect."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listen_refusal(host: str, acl_on: bool, insecure: bool) -> str | None:
    """Why the Name Server must not listen on `host`, or None: anyone who can write a key can run
    any command on any node, so only this machine may reach it unless ACLs are on."""
    if acl_on or insecure or is_loopback(host):
        return None
    return (f"refusing to listen on {host} without ACLs: anyone who reaches it could write any key and "
            "so run any command on every node; add --acl (and give nodes a token), or --insecure "
            "on a network only you can reach")
