"""The Pulsar client: one per process, quiet on stdout, errors on stderr."""

from __future__ import annotations

import subprocess
import sys

import pytest

from oneos.bus import client as bus_client
from oneos.errors import OneOSError
from oneos.secretfiles import write_secret
from tests.procs import free_port

SCRIPT = """
import sys
from oneos.bus import client
c = client.connect(sys.argv[1], operation_timeout=2, connection_timeout=0.5)
try:
    p = c.create_producer("persistent://public/default/oneos-client-test")
    p.send(b"x")
except Exception as exc:
    print("failed:", exc, file=sys.stderr)
client.close(c)
"""


def run(url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, url], capture_output=True, text=True, timeout=60)


def test_a_working_client_prints_nothing(broker):
    done = run(broker.url)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""


def test_an_unreachable_broker_is_reported_on_stderr_only():
    done = run(f"pulsar://127.0.0.1:{free_port()}")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "Connection refused" in done.stderr and "failed:" in done.stderr
    assert " INFO " not in done.stderr and " DEBUG " not in done.stderr


def test_a_url_that_is_not_pulsar_is_refused():
    with pytest.raises(OneOSError, match="pulsar://HOST:PORT"):
        bus_client.connect("http://127.0.0.1:8080")


def test_close_is_safe_twice(broker):
    c = bus_client.connect(broker.url)
    bus_client.close(c)
    bus_client.close(c)


# How to reach a real Pulsar: the boot record's pulsar section, this machine's files, the environment.

def test_access_takes_tls_and_hostname_checks_from_the_boot_record(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    got = bus_client.access({"url": "pulsar+ssl://broker:6651", "tlsTrustCertsFile": str(ca),
                             "tlsHostnameVerification": False}, env={})
    assert (got.url, got.trust_certs_file, got.validate_hostname, got.token) == (
        "pulsar+ssl://broker:6651", str(ca), False, None)
    assert bus_client.access({"url": "pulsar+ssl://broker:6651"}, env={}).validate_hostname   # on by default


def test_access_reads_the_token_from_a_file_of_mode_0600_and_never_shows_it(tmp_path):
    token = tmp_path / "token"
    write_secret(token, "the-token")
    got = bus_client.access({"url": "pulsar://broker:6650", "authentication": "token"}, token_file=token, env={})
    assert got.token == "the-token" and "the-token" not in repr(got)


def test_the_environment_overrides_the_node_config(tmp_path):
    mine, nodes = tmp_path / "mine", tmp_path / "nodes"
    write_secret(mine, "mine")
    write_secret(nodes, "nodes")
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    got = bus_client.access({"url": "pulsar+ssl://broker:6651", "tlsTrustCertsFile": "/nowhere/ca.pem"},
                            token_file=nodes, env={bus_client.TOKEN_FILE_ENV: str(mine),
                                                   bus_client.TRUST_CERTS_ENV: str(ca)})
    assert (got.token, got.trust_certs_file) == ("mine", str(ca))


@pytest.mark.parametrize("boot, files, message", [
    ({"authentication": "token"}, {}, "wants a token .* set ONEOS_PULSAR_TOKEN_FILE"),
    ({}, {"token_file": "missing"}, r"Pulsar token file .*missing: cannot read it \(no such file"),
    ({}, {"token_file": "readable"}, r"may be read by others \(mode 0644\); run `chmod 600"),
    ({"url": "pulsar+ssl://b:6651", "tlsTrustCertsFile": "/nowhere/ca.pem"}, {}, "/nowhere/ca.pem: no such file"),
    ({"tlsTrustCertsFile": "ca"}, {}, "not pulsar\\+ssl://; use the broker's pulsar\\+ssl:// URL"),
    ({"url": "http://b:8080"}, {}, "is not pulsar://HOST:PORT"),
])
def test_what_does_not_fit_is_said_in_one_line(tmp_path, boot, files, message):
    (tmp_path / "readable").write_text("t")
    (tmp_path / "readable").chmod(0o644)
    (tmp_path / "ca").write_text("x")
    boot = {"url": "pulsar://b:6650", **boot}
    if boot.get("tlsTrustCertsFile") == "ca":
        boot["tlsTrustCertsFile"] = str(tmp_path / "ca")
    with pytest.raises(OneOSError, match=message) as refused:
        bus_client.access(boot, **{k: tmp_path / v for k, v in files.items()}, env={})
    assert "\n" not in str(refused.value)
