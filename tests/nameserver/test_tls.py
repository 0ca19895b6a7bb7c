"""The Name Server over TLS, as Consul serves its HTTPS API: what a client with the CA, without
it, with and without a certificate of its own, and over plain HTTP sees.

The servers run in this process (a thread), with certificates made for the test. With
CONSUL_HTTP_ADDR=https://... and CONSUL_CACERT set, the same tests run against that Consul
instead (and the client-certificate ones too when CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY are
set, for a Consul with verify_incoming); those about our own flags and limits are skipped.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from oneos.nameserver import server as nsserver
from oneos.nameserver import tls as nstls
from oneos.nameserver.client import NameServer, NameServerUnreachable
from oneos.nameserver.tls import ClientTLS
from tests.nameserver.helpers import Call
from tests.procs import Proc, free_port, venv_bin, wait_until
from tests.tlsfiles import TLSFiles, make_tls

ADDR = os.environ.get("CONSUL_HTTP_ADDR", "")
REAL = ADDR if ADDR.startswith("https://") and os.environ.get("CONSUL_CACERT") else ""
CONSUL_VARS = ("CONSUL_HTTP_ADDR", "CONSUL_HTTP_SSL", "CONSUL_HTTP_SSL_VERIFY", "CONSUL_CACERT", "CONSUL_CAPATH",
               "CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY", "CONSUL_TLS_SERVER_NAME", "ONEOS_NAMESERVER")
builtin_only = pytest.mark.skipif(bool(REAL), reason="our own server's flags and limits: built-in Name Server only")


@dataclass
class Server:
    """An HTTPS Name Server and the files a client needs for it."""

    url: str
    ca: str
    client_cert: str | None
    client_key: str | None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def tls(self, **changes) -> ClientTLS:
        fields = dict(ca_file=self.ca, cert_file=self.client_cert, key_file=self.client_key)
        fields.update(changes)
        return ClientTLS(**fields)

    def client(self, **changes) -> NameServer:
        return NameServer(self.url, tls=self.tls(**changes))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> TLSFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def clean_env(monkeypatch):
    """No Consul variable from the test's own environment: each test sets the ones it means."""
    for name in CONSUL_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


class InProcess:
    """`serve()` with a TLS context, its loop in a thread; `stop()` closes it all."""

    def __init__(self, data: Path, ctx: ssl.SSLContext, **options) -> None:
        self.httpd, self.store = nsserver.serve("127.0.0.1:0", data, tls=ctx, **options)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.thread.join(10)
        self.httpd.server_close()
        self.store.close()


@pytest.fixture
def start(files, tmp_path):
    """start(verify_incoming=..., **serve options) -> an in-process HTTPS Name Server, stopped at the end."""
    running: list[InProcess] = []

    def start_(verify_incoming: bool = False, **options) -> InProcess:
        ctx = nstls.server_context(str(files.server_cert), str(files.server_key), str(files.ca), verify_incoming)
        running.append(InProcess(tmp_path / f"ns{len(running)}", ctx, **options))
        return running[-1]

    yield start_
    for proc in running:
        proc.stop()


@pytest.fixture
def https(start, files) -> Server:
    """An HTTPS Name Server that asks for no client certificate."""
    if REAL:
        return Server(REAL, os.environ["CONSUL_CACERT"], os.environ.get("CONSUL_CLIENT_CERT"),
                      os.environ.get("CONSUL_CLIENT_KEY"))
    return Server(start().url, str(files.ca), None, None)


@pytest.fixture
def mtls(start, files) -> Server:
    """An HTTPS Name Server that asks every client for a certificate its CA signed (verify_incoming)."""
    if REAL:
        if not os.environ.get("CONSUL_CLIENT_CERT"):
            pytest.skip("set CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY for a Consul with verify_incoming")
        return Server(REAL, os.environ["CONSUL_CACERT"], os.environ["CONSUL_CLIENT_CERT"],
                      os.environ["CONSUL_CLIENT_KEY"])
    return Server(start(verify_incoming=True).url, str(files.ca), str(files.client_cert), str(files.client_key))


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text, text
    return text


# -- a client that trusts the CA ---------------------------------------------------------------------

def test_kv_over_https_with_the_ca_trusted(https):
    ns = https.client()
    assert ns.put("tls/greeting", b"hello")
    assert ns.get("tls/greeting")[1].value == b"hello"
    # Plain requests, as any Consul client: the same entry, base64 as Consul's API has it.
    found = requests.get(f"{https.url}/v1/kv/tls/greeting", verify=https.ca,
                         cert=(https.client_cert, https.client_key) if https.client_cert else None, timeout=10)
    assert found.status_code == 200 and found.json()[0]["Value"] == "aGVsbG8="
    ns.delete("tls/greeting")


def test_consuls_variables_are_enough(https, clean_env):
    host_port = https.url.split("://", 1)[1]
    clean_env.setenv("CONSUL_HTTP_ADDR", host_port)          # no scheme: CONSUL_HTTP_SSL decides
    clean_env.setenv("CONSUL_HTTP_SSL", "true")
    clean_env.setenv("CONSUL_CACERT", https.ca)
    if https.client_cert:
        clean_env.setenv("CONSUL_CLIENT_CERT", https.client_cert)
        clean_env.setenv("CONSUL_CLIENT_KEY", https.client_key)
    ns = NameServer()
    assert ns.url == https.url
    assert ns.put("tls/env", "1") and ns.get("tls/env")[1].value == b"1"
    # ONEOS_NAMESERVER with https:// names it as well.
    clean_env.setenv("ONEOS_NAMESERVER", https.url)
    clean_env.delenv("CONSUL_HTTP_SSL")
    assert NameServer().get("tls/env")[1].value == b"1"
    ns.delete("tls/env")


def test_a_blocking_query_wakes_over_tls(https):
    ns = https.client()
    index = ns.put("tls/blocking", "a") and ns.get("tls/blocking")[0]
    waiting = Call(lambda: ns.clone().get("tls/blocking", index=index, wait="20s"))
    ns.put("tls/blocking", "b")
    new_index, entry = waiting.result(15)
    assert new_index > index and entry.value == b"b"
    ns.delete("tls/blocking")


def test_closing_a_client_cuts_off_its_blocking_query_over_tls(https):
    ns = https.client()
    index = ns.put("tls/cut", "a") and ns.get("tls/cut")[0]
    watcher = ns.clone()
    waiting = Call(lambda: watcher.get("tls/cut", index=index, wait="60s"))
    wait_until(lambda: watcher._sockets._open, 10, "the blocking query's connection")
    watcher.close()
    with pytest.raises(NameServerUnreachable, match="was closed"):
        waiting.result(10)
    ns.delete("tls/cut")


# -- what goes wrong, in one line -------------------------------------------------------------------

def test_a_server_whose_ca_is_not_trusted_is_one_line(https, tmp_path):
    with pytest.raises(NameServerUnreachable) as err:
        https.client(ca_file=None).get("tls/x")          # the system's CAs only
    assert "does not trust" in one_line(err.value) and "CONSUL_CACERT" in str(err.value)
    other = make_tls(tmp_path / "other", "other")
    with pytest.raises(NameServerUnreachable) as err:
        https.client(ca_file=str(other.ca)).get("tls/x")
    assert str(other.ca) in one_line(err.value)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{https.url}/v1/status/leader", verify=str(other.ca), timeout=10)


def test_verification_can_be_turned_off(https, clean_env):
    clean_env.setenv("CONSUL_HTTP_SSL_VERIFY", "false")
    tls = ClientTLS.from_env()
    assert not tls.verify
    ns = NameServer(https.url, tls=ClientTLS(verify=False, cert_file=https.client_cert, key_file=https.client_key))
    assert ns.leader()


def test_a_certificate_for_another_name_is_one_line(https):
    with pytest.raises(NameServerUnreachable) as err:
        https.client(server_name="not-the-server.example").leader()
    assert "not-the-server.example" in one_line(err.value) and "CONSUL_TLS_SERVER_NAME" in str(err.value)


def test_plain_http_to_the_https_port_is_told_to_use_https(https):
    plain = "http://" + https.url.split("://", 1)[1]
    answer = requests.get(f"{plain}/v1/status/leader", timeout=10)
    # What Go's net/http (and so Consul) answers an HTTP request on a TLS port.
    assert answer.status_code == 400 and "Client sent an HTTP request to an HTTPS server" in answer.text
    with pytest.raises(NameServerUnreachable) as err:
        NameServer(plain).get("tls/x")
    assert "https://" in one_line(err.value) and "CONSUL_HTTP_SSL" in str(err.value)


def test_https_to_a_plain_port_is_one_line(tmp_path):
    httpd, store = nsserver.serve("127.0.0.1:0", tmp_path / "plain")
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        with pytest.raises(NameServerUnreachable) as err:
            NameServer(f"https://127.0.0.1:{httpd.server_address[1]}", tls=ClientTLS()).leader()
        assert "does not speak TLS" in one_line(err.value)
    finally:
        httpd.shutdown()
        thread.join(10)
        httpd.server_close()
        store.close()


def test_bad_client_files_are_said_at_start(https, tmp_path, clean_env):
    clean_env.setenv("CONSUL_CACERT", str(tmp_path / "missing.pem"))
    with pytest.raises(nstls.OneOSError) as err:
        NameServer(https.url)
    assert "CONSUL_CACERT" in one_line(err.value) and "cannot be read" in str(err.value)
    clean_env.setenv("CONSUL_CACERT", https.ca)
    clean_env.setenv("CONSUL_CLIENT_KEY", https.ca)
    with pytest.raises(nstls.OneOSError, match="CONSUL_CLIENT_CERT"):
        NameServer(https.url)
    clean_env.delenv("CONSUL_CLIENT_KEY")
    clean_env.setenv("CONSUL_HTTP_SSL", "maybe")
    with pytest.raises(nstls.OneOSError, match="CONSUL_HTTP_SSL='maybe' is not a boolean"):
        NameServer("127.0.0.1:1")


# -- client certificates (verify_incoming) ------------------------------------------------------------

def test_verify_incoming_refuses_a_client_without_a_certificate(mtls):
    with pytest.raises(NameServerUnreachable) as err:
        mtls.client(cert_file=None, key_file=None).put("tls/anon", "x")
    assert "CONSUL_CLIENT_CERT" in one_line(err.value)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{mtls.url}/v1/kv/tls/anon", verify=mtls.ca, timeout=10)
    assert mtls.client().get("tls/anon")[1] is None      # nothing was written


def test_verify_incoming_accepts_a_client_with_a_certificate(mtls):
    ns = mtls.client()
    assert ns.put("tls/mine", "x") and ns.get("tls/mine")[1].value == b"x"
    found = requests.get(f"{mtls.url}/v1/kv/tls/mine?raw", verify=mtls.ca,
                         cert=(mtls.client_cert, mtls.client_key), timeout=10)
    assert found.content == b"x"
    ns.delete("tls/mine")


@builtin_only
def test_verify_incoming_refuses_a_certificate_from_another_ca(mtls, tmp_path):
    other = make_tls(tmp_path / "other", "other")
    with pytest.raises(NameServerUnreachable) as err:
        mtls.client(cert_file=str(other.client_cert), key_file=str(other.client_key)).leader()
    assert "refused this client's certificate" in one_line(err.value)


# -- the listener: slow clients, the connection limit ---------------------------------------------------

@builtin_only
def test_a_silent_client_holds_no_one_up_and_is_closed(start, files):
    server = start(idle_timeout=0.5)
    ns = Server(server.url, str(files.ca), None, None).client()
    with socket.create_connection(("127.0.0.1", server.httpd.server_address[1])) as silent:
        # It sends no handshake; others are served meanwhile, and it is closed at the idle timeout.
        assert ns.put("tls/others", "served")
        silent.settimeout(10)
        assert silent.recv(1) == b""
    ns.delete("tls/others")


@builtin_only
def test_the_connection_limit_counts_tls_connections(start, files):
    server = start(max_conns_per_client=2)
    port = server.httpd.server_address[1]
    ns = Server(server.url, str(files.ca), None, None).client()
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        wait_until(lambda: server.httpd._conns.get("127.0.0.1") == 2, 10, "two connections held")
        with pytest.raises(NameServerUnreachable) as err:
            ns.leader()
        assert "too many connections" in one_line(err.value)
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: ns.leader(), 10, "the client served once the others closed")


# -- oneos-nameserver's flags -------------------------------------------------------------------------

def run_main(argv: list[str], capsys) -> tuple[int, str]:
    code = nsserver.main(argv)
    return code, capsys.readouterr().err


@builtin_only
@pytest.mark.parametrize("case", ["missing", "mismatch", "no key", "no ca", "not pem"])
def test_bad_server_files_are_one_line_at_start(case, files, tmp_path, capsys):
    args = {"missing": ["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(files.server_key)],
            "mismatch": ["--tls-cert", str(files.server_cert), "--tls-key", str(files.client_key)],
            "no key": ["--tls-cert", str(files.server_cert)],
            "no ca": ["--tls-cert", str(files.server_cert), "--tls-key", str(files.server_key), "--verify-incoming"],
            "not pem": ["--tls-cert", str(files.server_cert), "--tls-key", str(files.server_key),
                        "--tls-ca", str(tmp_path)]}[case]
    if case == "not pem":
        (tmp_path / "junk.pem").write_text("not a certificate\n")
        args[-1] = str(tmp_path / "junk.pem")
    code, err = run_main(["--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "d")] + args, capsys)
    want = {"missing": "cannot be read", "mismatch": "is not the key of", "no key": "go together",
            "no ca": "needs --tls-ca", "not pem": "--tls-ca"}[case]
    assert code == 1 and want in err and err.count("\n") == 1, err


def test_a_key_readable_by_others_is_warned_about(files, tmp_path):
    key = tmp_path / "key.pem"
    key.write_bytes(files.server_key.read_bytes())
    key.chmod(0o644)
    assert "chmod 600" in nstls.key_mode_warning(str(key))
    assert nstls.key_mode_warning(str(files.server_key)) is None       # 0600, as written


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.4.5", "::1", "localhost", "LOCALHOST"])
def test_loopback_listeners_need_nothing(host):
    assert nstls.listen_refusal(host, acl_on=False, insecure=False) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "nameserver.example"])
def test_open_listeners_need_acls_or_insecure(host):
    why = nstls.listen_refusal(host, acl_on=False, insecure=False)
    assert why and host in why and "--acl" in why and "--insecure" in why
    assert nstls.listen_refusal(host, acl_on=True, insecure=False) is None
    assert nstls.listen_refusal(host, acl_on=False, insecure=True) is None


@builtin_only
def test_oneos_nameserver_refuses_an_open_listener(tmp_path, capsys):
    code, err = run_main(["--listen", f"0.0.0.0:{free_port()}", "--data-dir", str(tmp_path / "d")], capsys)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("oneos-nameserver: refusing to listen on 0.0.0.0 without ACLs") and "--insecure" in err
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


@builtin_only
def test_oneos_nameserver_listens_openly_when_told_insecure(tmp_path, files):
    """A real process, HTTPS on 0.0.0.0 with --insecure: its ready line says https://, and it serves."""
    port = free_port()
    proc = Proc([venv_bin("oneos-nameserver"), "--listen", f"0.0.0.0:{port}", "--insecure",
                 "--data-dir", str(tmp_path / "d")] + files.server_args(), tmp_path / "ns.log").start()
    try:
        wait_until(lambda: "serving" in proc.log() or not proc.alive(), 20, "the ready line")
        assert f"serving https://0.0.0.0:{port} " in proc.log(), proc.log()
        ns = NameServer(f"https://127.0.0.1:{port}", tls=ClientTLS(ca_file=str(files.ca)))
        assert ns.put("open", "1")
    finally:
        proc.stop()


@builtin_only
def test_oneos_nameserver_listens_openly_with_acls(tmp_path):
    """A real process on 0.0.0.0 with --acl (no --insecure): it serves, and an anonymous write is refused."""
    port = free_port()
    proc = Proc([venv_bin("oneos-nameserver"), "--listen", f"0.0.0.0:{port}", "--acl",
                 "--data-dir", str(tmp_path / "d")], tmp_path / "ns.log").start()
    try:
        wait_until(lambda: "serving" in proc.log() or not proc.alive(), 20, "the ready line")
        assert f"serving http://0.0.0.0:{port} " in proc.log(), proc.log()
        answer = requests.put(f"http://127.0.0.1:{port}/v1/kv/open", data=b"1", timeout=10)
        assert answer.status_code == 403 and "Permission denied" in answer.text
    finally:
        proc.stop()


def test_any_other_tls_failure_is_one_line_with_openssls_reason():
    error = ("HTTPSConnectionPool(host='h', port=1): Max retries exceeded (Caused by SSLError(SSLError(1, "
             "'[SSL: NO_SHARED_CIPHER] no shared cipher (_ssl.c:1000)')))")
    said = nstls.explain("https://h:1", error, ClientTLS())
    assert said and "no shared cipher" in said and "\n" not in said
    assert nstls.explain("https://h:1", "Connection refused", ClientTLS()) is None


def test_consul_capath_is_every_certificate_in_a_folder(https, tmp_path, clean_env):
    folder = tmp_path / "cas"
    (folder / "more").mkdir(parents=True)
    (folder / "other.pem").write_bytes(make_tls(tmp_path / "other", "other").ca.read_bytes())
    clean_env.setenv("CONSUL_CAPATH", str(folder))
    if https.client_cert:
        clean_env.setenv("CONSUL_CLIENT_CERT", https.client_cert)
        clean_env.setenv("CONSUL_CLIENT_KEY", https.client_key)
    with pytest.raises(NameServerUnreachable, match="does not trust"):
        NameServer(https.url).leader()
    # Any name, in a folder below: as Consul reads CONSUL_CAPATH, not OpenSSL's hashed names.
    (folder / "more" / "ours.crt").write_bytes(Path(https.ca).read_bytes())
    assert NameServer(https.url).leader()
    (folder / "notes.txt").write_text("not a certificate\n")
    with pytest.raises(nstls.OneOSError, match="notes.txt, which is not a PEM certificate"):
        NameServer(https.url)
