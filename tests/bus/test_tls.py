"""The pipe protocol over pulsar+ssl:// with a token, through `client.connect`, the one place every
process makes its Pulsar client (issue 12, item 4).

pulsar-lite speaks no TLS: a TLS terminator (tests/pulsar_tls.py, a Pulsar proxy's job) stands
in front of it with a certificate of a test CA. The terminator keeps the first bytes each
client sends, decrypted: the CONNECT command, where the client puts its token.
"""

from __future__ import annotations

import pytest

from oneos.bus import client as bus_client
from oneos.errors import OneOSError
from oneos.secretfiles import write_secret
from tests.pulsar_tls import TLSProxy
from tests.tlsfiles import make_tls

TOKEN = "eyJhbGciOiJIUzI1NiJ9.test-token-of-this-node.c2lnbmF0dXJl"


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def proxy(broker, tls):
    p = TLSProxy(broker.port, tls).start()
    yield p
    p.stop()


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "pulsar-token"
    write_secret(path, TOKEN)
    return path


@pytest.fixture
def tls_client(proxy, tls, token_file):
    c = bus_client.connect(bus_client.access({"url": proxy.url, "tlsTrustCertsFile": str(tls.ca),
                                              "authentication": "token"}, token_file=token_file, env={}))
    yield c
    bus_client.close(c)


def connects(proxy: TLSProxy) -> list[bytes]:
    """What the clients sent first on each connection that got past TLS (the probe sends nothing)."""
    return [first for first in proxy.first_bytes() if first]


def test_a_stream_goes_through_tls_exactly_and_the_client_sends_its_token(tls_client, proxy, names, ends):
    data = b"".join(b"line %06d\n" % i for i in range(50_000))
    writer = ends.writer(tls_client, [names.link()], key=b"k" * 32)
    _, out = ends.collector(tls_client, [names.link()], key=b"k" * 32)
    writer.write(data)
    writer.finish()
    assert ends.readers[0].finished.wait(30)
    assert bytes(out) == data
    sent = connects(proxy)
    assert sent and all(b"Pulsar-CPP" in first and TOKEN.encode() in first for first in sent)


def test_without_a_token_configured_none_is_sent(broker, proxy, tls, names, ends):
    c = bus_client.connect(bus_client.access({"url": proxy.url, "tlsTrustCertsFile": str(tls.ca)}, env={}))
    try:
        writer = ends.writer(c, [names.link()])
        writer.write(b"x")
        writer.finish()
        sent = connects(proxy)
        assert sent and not any(TOKEN.encode() in first or b"token" in first for first in sent)
    finally:
        bus_client.close(c)


def test_the_host_name_is_checked_and_names_in_the_certificate_pass(proxy, tls, names, ends):
    c = bus_client.connect(bus_client.access({"url": proxy.hostname_url, "tlsTrustCertsFile": str(tls.ca)}, env={}))
    try:
        writer = ends.writer(c, [names.link()])
        writer.write(b"x")
        writer.finish()
    finally:
        bus_client.close(c)
    assert bus_client.access({"url": proxy.url, "tlsTrustCertsFile": str(tls.ca)}, env={}).validate_hostname


def test_a_broker_signed_by_another_ca_is_refused_in_one_line(proxy, tmp_path):
    other = make_tls(tmp_path / "other", "other")
    with pytest.raises(OneOSError) as refused:
        bus_client.connect(bus_client.access({"url": proxy.url, "tlsTrustCertsFile": str(other.ca)}, env={}))
    message = str(refused.value)
    assert "\n" not in message
    assert f"127.0.0.1:{proxy.port}" in message and "does not trust" in message and str(other.ca) in message
    assert connects(proxy) == []   # nothing, the token least of all, went to a broker not trusted


def test_a_plain_port_given_as_tls_is_said_in_one_line(broker, tls):
    with pytest.raises(OneOSError, match=r"did not complete a TLS handshake.*pulsar:// URLs are for plain ports"):
        bus_client.connect(bus_client.access({"url": f"pulsar+ssl://127.0.0.1:{broker.port}",
                                              "tlsTrustCertsFile": str(tls.ca)}, env={}))
