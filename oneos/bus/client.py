"""The one Pulsar client of a process: `connect(access)` opens it, `close(client)` closes it.

A `pulsar.Client` owns the connections and I/O threads that every producer and consumer
of the process share, so a process opens one and hands it to its writers and readers.
The client library logs at INFO on stdout by default, which would mix with a pipeline's
output (oneosctl run streams it to stdout): here it logs warnings and errors on stderr.

How to reach a real Pulsar cluster (`Access`, made by `access()`) comes from two places:
the boot record, which every node and client reads, says what is not secret (the URL,
pulsar+ssl:// for TLS, the file of the CA certificates that sign the brokers', whether
the broker's host name is checked, whether the cluster wants a token); each machine says
where its own secret is (a token file of mode 0600: `pulsar.tokenFile` in a node's
config.yaml, or ONEOS_PULSAR_TOKEN_FILE for oneosctl). A token never goes into the boot
record: every node reads it, and a token names one principal. pulsar-lite, the embedded
broker, has neither TLS nor authentication: there the frames' MACs (frames.py) are what
keeps a pipe's bytes genuine.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import ssl
import sys
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from oneos.errors import OneOSError
from oneos.secretfiles import read_secret

if TYPE_CHECKING:
    import pulsar

log = logging.getLogger(__name__)

_URL = re.compile(r"^pulsar(\+ssl)?://\S+$")

OPERATION_TIMEOUT = 10.0   # seconds for lookups, creating producers/consumers, closing
CONNECTION_TIMEOUT = 5.0   # seconds for one TCP connection attempt to a broker


TOKEN_FILE_ENV = "ONEOS_PULSAR_TOKEN_FILE"          # a token file: overrides the node config's
TRUST_CERTS_ENV = "ONEOS_PULSAR_TLS_TRUST_CERTS"    # a CA file: overrides the boot record's


@dataclass(frozen=True)
class Access:
    """How this process reaches the cluster's broker: where, over TLS or not, with which token."""

    url: str
    trust_certs_file: str | None = None    # CA certificates (PEM) for pulsar+ssl://; None: certifi's bundle
    validate_hostname: bool = True         # the broker's certificate must name the host of `url`
    token: str | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return self.url.startswith("pulsar+ssl://")


def access(pulsar_boot: Mapping[str, Any], *, token_file: "str | os.PathLike[str] | None" = None,
           trust_certs_file: "str | os.PathLike[str] | None" = None, env: Mapping[str, str] | None = None) -> Access:
    """The Access that the boot record's `pulsar` section and this machine's settings give.

    `token_file` and `trust_certs_file` come from a node's config; the environment
    (ONEOS_PULSAR_TOKEN_FILE, ONEOS_PULSAR_TLS_TRUST_CERTS) overrides them, and is all
    that oneosctl has. OneOSError, one line saying what to fix, when they do not fit.
    """
    env = os.environ if env is None else env
    url = pulsar_boot["url"]
    if not _URL.match(url):
        raise OneOSError(f"Pulsar URL {url!r} is not pulsar://HOST:PORT or pulsar+ssl://HOST:PORT; "
                         f"fix pulsar.url in the boot record")
    token_file = env.get(TOKEN_FILE_ENV) or (os.fspath(token_file) if token_file else None)
    if pulsar_boot.get("authentication") == "token" and not token_file:
        raise OneOSError("the boot record says the Pulsar cluster wants a token (pulsar.authentication: token), "
                         f"and none is configured here: set {TOKEN_FILE_ENV} (or pulsar.tokenFile in the node's "
                         "config.yaml) to a file of mode 0600 holding it")
    token = read_secret(token_file, "Pulsar token file") if token_file else None
    trust = (env.get(TRUST_CERTS_ENV) or (os.fspath(trust_certs_file) if trust_certs_file else None)
             or pulsar_boot.get("tlsTrustCertsFile"))
    if trust and not url.startswith("pulsar+ssl://"):
        raise OneOSError(f"TLS trust certificates are set ({trust}) but pulsar.url {url} is not pulsar+ssl://; "
                         "use the broker's pulsar+ssl:// URL (`oneosctl bootstrap --force --pulsar-url ...`)")
    if trust and not os.path.isfile(trust):
        raise OneOSError(f"Pulsar TLS trust certificates {trust}: no such file; put the CA certificate "
                         "(PEM) that signed the brokers' there, or fix pulsar.tlsTrustCertsFile in the boot record "
                         f"(or {TRUST_CERTS_ENV})")
    return Access(url, trust, bool(pulsar_boot.get("tlsHostnameVerification", True)), token)


def connect(target: "str | Access", *, operation_timeout: float = OPERATION_TIMEOUT,
            connection_timeout: float = CONNECTION_TIMEOUT, logger: logging.Logger | None = None) -> "pulsar.Client":
    """A Pulsar client for `target` (an Access, or a bare pulsar:// URL), logging to stderr.

    Creating the client does not connect yet: an unreachable broker shows up as an error
    when the first producer or consumer is created, after `operation_timeout` seconds.
    Over TLS, one handshake is tried first, so that a broker whose certificate the trust
    certificates do not vouch for is said in one line here, not as a timeout later.
    `logger`, a Python logger, replaces the stderr one: for a process that leaves with
    `exit_process` (no interpreter shutdown) and wants to filter what the library says.
    """
    import pulsar   # here, not at the top: ~10 MB that an idle process does without
    target = target if isinstance(target, Access) else access({"url": target}, env={})
    if target.tls:
        check_tls(target, connection_timeout)
    return pulsar.Client(target.url, operation_timeout_seconds=max(1, round(operation_timeout)),
                         connection_timeout_ms=int(connection_timeout * 1000), logger=logger or _stderr_logger(),
                         authentication=pulsar.AuthenticationToken(target.token) if target.token else None,
                         tls_trust_certs_file_path=target.trust_certs_file,
                         tls_validate_hostname=target.validate_hostname)


def _default_trust() -> str | None:
    """The CA bundle the Pulsar client trusts when given no trust certificates: certifi's."""
    try:
        import certifi
        return certifi.where()
    except ImportError:
        return None


def _first_host(url: str) -> tuple[str, int]:
    """The first broker of a service URL (pulsar+ssl://a:6651,b:6651 lists several)."""
    netloc = urllib.parse.urlsplit(url).netloc.split(",")[0]
    parsed = urllib.parse.urlsplit(f"//{netloc}")
    return parsed.hostname or "", parsed.port or 6651


def check_tls(target: Access, timeout: float = CONNECTION_TIMEOUT) -> None:
    """OneOSError when the broker's TLS certificate fails the checks the client makes.

    A broker that cannot be reached says nothing here: that is the client's to report (and
    to retry). The Pulsar client library only logs a failed handshake and retries it until
    its operation times out; this says at once which file or setting to fix.
    """
    host, port = _first_host(target.url)
    context = ssl.create_default_context(cafile=target.trust_certs_file or _default_trust())
    context.check_hostname = target.validate_hostname
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return
    where = f"the Pulsar broker at {host}:{port}"
    try:
        with context.wrap_socket(sock, server_hostname=host):
            pass
    except ssl.SSLCertVerificationError as exc:
        trust = target.trust_certs_file or "a file"
        hint = ("check that it is the broker's name, or set pulsar.tlsHostnameVerification false"
                if "mismatch" in (exc.verify_message or "")
                else f"put the CA certificate that signed it in {trust} (pulsar.tlsTrustCertsFile "
                     f"in the boot record, or {TRUST_CERTS_ENV})")
        raise OneOSError(f"{where} presented a TLS certificate this client does not trust "
                         f"({exc.verify_message or exc.reason}); {hint}") from None
    except ssl.SSLError as exc:
        raise OneOSError(f"{where} did not complete a TLS handshake ({exc.reason or exc}); "
                         "is it the broker's TLS port? pulsar:// URLs are for plain ports") from None
    except OSError:
        return
    finally:
        sock.close()


def close(client: "pulsar.Client") -> None:
    """Close the client and every producer and consumer it made; never raises."""
    try:
        client.close()
    except Exception as exc:  # noqa: BLE001 - closing is best effort: the broker may be gone
        log.debug("closing the Pulsar client: %s", exc)


def _stderr_logger() -> "pulsar.FileLogger | logging.Logger":
    # The C++ file logger writes without calling back into Python (a Python logger is called
    # from the client's threads and is gone during interpreter shutdown). /dev/stderr cannot
    # be opened when stderr is a socket (systemd's journal): then Python logging it is.
    import pulsar
    try:
        os.close(os.open("/dev/stderr", os.O_WRONLY | os.O_APPEND))
        return pulsar.FileLogger(pulsar.LoggerLevel.Warn, "/dev/stderr")
    except OSError:
        logger = logging.getLogger("pulsar")
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)
        return logger


def exit_process(code: int) -> None:
    """End this process with `code`, without the Pulsar client library's exit-time destructors.

    pulsar-client can abort at interpreter exit ("terminate called without an active
    exception", apache/pulsar-client-python#256) even after every client was closed, which
    turns a clean exit into SIGABRT. Once the program is done, flush what it wrote and leave
    at once; a process that never loaded the library exits normally.
    """
    if "pulsar" not in sys.modules:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(code)
