"""Certificates for tests and bench: a CA, a server certificate for 127.0.0.1 and localhost,
and a client certificate, as PEM files of mode 0600 in a folder (made with `cryptography`)."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TLSFiles:
    """The files `make_tls` wrote."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_args(self, verify_incoming: bool = False) -> list[str]:
        """The `oneos-nameserver` flags that serve HTTPS with these files."""
        return (["--tls-cert", str(self.server_cert), "--tls-key", str(self.server_key), "--tls-ca", str(self.ca)]
                + (["--verify-incoming"] if verify_incoming else []))

    def client_env(self, with_cert: bool = True) -> dict[str, str]:
        """Consul's variables for a client that trusts the CA (and proves itself with its certificate)."""
        env = {"CONSUL_CACERT": str(self.ca)}
        if with_cert:
            env.update(CONSUL_CLIENT_CERT=str(self.client_cert), CONSUL_CLIENT_KEY=str(self.client_key))
        return env


def _write(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key, issuer_name: x509.Name | None, issuer_key, *, ca: bool = False,
          sans: list[x509.GeneralName] | None = None, usage=None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                                        critical=True)
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                        critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_tls(folder: Path, name: str = "oneos-test") -> TLSFiles:
    """A fresh CA in `folder`, with a server certificate (127.0.0.1, ::1, localhost) and a client one."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert(f"{name} CA", ca_key, None, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert("server.dc1.consul", server_key, ca.subject, ca_key,
                   sans=[x509.DNSName("localhost"), x509.DNSName("server.dc1.consul"),
                         x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                         x509.IPAddress(ipaddress.ip_address("::1"))],
                   usage=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _cert("client.dc1.consul", client_key, ca.subject, ca_key, usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    pem = serialization.Encoding.PEM
    return TLSFiles(
        ca=_write(folder / f"{name}-ca.pem", ca.public_bytes(pem)),
        server_cert=_write(folder / f"{name}-server.pem", server.public_bytes(pem)),
        server_key=_write(folder / f"{name}-server-key.pem", _key_pem(server_key)),
        client_cert=_write(folder / f"{name}-client.pem", client.public_bytes(pem)),
        client_key=_write(folder / f"{name}-client-key.pem", _key_pem(client_key)),
    )
