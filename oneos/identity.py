"""A runtime's identity: its key pairs, and what is signed and sealed with them.

Each runtime makes its keys at first start and keeps them in one file of mode 0600 (see
`Identity.load_or_create`): an Ed25519 key that signs what the runtime writes (its node
record; on the leader, assignments), and an X25519 key that others seal secrets to (its
Name Server token at enrollment, the frame keys of the pipelines it runs). The public
halves are registered in the Name Server at `oneos/keys/<id>` when the node is approved;
nothing signed by a key that is not registered there counts.

Signatures cover a document's canonical JSON (sorted keys, no spaces, UTF-8) without its
`signature` field, and the signature says who signed: {"by": ID, "value": BASE64}. Sealed
secrets are ECIES: an ephemeral X25519 key, HKDF-SHA256 over the shared secret (with a
context string, so a secret sealed for one use cannot be opened as another), then
ChaCha20-Poly1305; the result is base64 text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from oneos.errors import OneOSError
from oneos.secretfiles import read_secret, write_secret

SIGNATURE = "signature"
_RAW = (Encoding.Raw, PublicFormat.Raw)


class IdentityError(OneOSError):
    """A key file, a public key, a signature or a sealed secret that cannot be used."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise IdentityError(f"{what} is not base64") from None


def public_key(text: str, what: str) -> str:
    """`text` as a public key (base64 of 32 bytes, as `oneosd --make-key` prints it), stripped;
    IdentityError naming `what` when it is not one."""
    text = text.strip()
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raw = b""
    if len(raw) != 32 or b64(raw) != text:
        raise IdentityError(f"{what} {text!r} is not a public key: it must be the base64 of 32 bytes "
                            "(44 characters ending in '='), as `oneosd ID --make-key` prints it")
    return text


def fingerprint(signing_key: str) -> str:
    """A public signing key (base64) as people compare it: SHA256:<base64 of its hash>, as ssh shows keys."""
    digest = hashlib.sha256(unb64(signing_key, "the signing key")).digest()
    return "SHA256:" + b64(digest).rstrip("=")


def canonical(doc: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the document without its signature, as canonical JSON."""
    body = {k: v for k, v in doc.items() if k != SIGNATURE}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def verify(doc: dict[str, Any], signing_key: str) -> bool:
    """Whether `doc` carries a valid signature by the holder of `signing_key` (base64 Ed25519)."""
    sig = doc.get(SIGNATURE)
    if not isinstance(sig, dict) or not isinstance(sig.get("value"), str):
        return False
    try:
        public = Ed25519PublicKey.from_public_bytes(unb64(signing_key, "the signing key"))
        public.verify(unb64(sig["value"], "the signature"), canonical(doc))
    except (IdentityError, InvalidSignature, ValueError):
        return False
    return True


def signer(doc: dict[str, Any]) -> str | None:
    """Who says they signed `doc` (check it with verify)."""
    sig = doc.get(SIGNATURE)
    return sig.get("by") if isinstance(sig, dict) and isinstance(sig.get("by"), str) else None


def _box_key(shared: bytes, context: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"oneos seal v1 " + context.encode("utf-8")).derive(shared)


def seal(box_key: str, secret: bytes, context: str) -> str:
    """`secret` sealed to the holder of the X25519 key `box_key` (base64), for one `context`."""
    try:
        recipient = X25519PublicKey.from_public_bytes(unb64(box_key, "the box key"))
    except ValueError:
        raise IdentityError("the box key is not an X25519 public key") from None
    ephemeral = X25519PrivateKey.generate()
    key = _box_key(ephemeral.exchange(recipient), context)
    nonce = os.urandom(12)
    sealed = ChaCha20Poly1305(key).encrypt(nonce, secret, context.encode("utf-8"))
    return b64(ephemeral.public_key().public_bytes(*_RAW) + nonce + sealed)


@dataclass(frozen=True)
class Identity:
    """A runtime's two private keys."""

    signing: Ed25519PrivateKey
    box: X25519PrivateKey

    @classmethod
    def generate(cls) -> "Identity":
        return cls(Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: str | Path) -> "Identity":
        """The identity kept in `path` (mode 0600), made and saved there on first use."""
        path = Path(path)
        if not path.exists():
            identity = cls.generate()
            write_secret(path, json.dumps({
                "ed25519": b64(identity.signing.private_bytes_raw()),
                "x25519": b64(identity.box.private_bytes_raw()),
            }))
            return identity
        text = read_secret(path, "the runtime's key file")
        try:
            doc = json.loads(text)
            return cls(Ed25519PrivateKey.from_private_bytes(unb64(doc["ed25519"], "ed25519")),
                       X25519PrivateKey.from_private_bytes(unb64(doc["x25519"], "x25519")))
        except (ValueError, KeyError, TypeError, IdentityError):
            raise IdentityError(f"the runtime's key file {path} is damaged; move it away and start again "
                                "(the node then needs approving again: oneosctl node approve ID)") from None

    @property
    def signing_key(self) -> str:
        """The public signing key, base64."""
        return b64(self.signing.public_key().public_bytes(*_RAW))

    @property
    def box_key(self) -> str:
        """The public box key, base64."""
        return b64(self.box.public_key().public_bytes(*_RAW))

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.signing_key)

    def sign(self, doc: dict[str, Any], by: str) -> dict[str, Any]:
        """A copy of `doc` signed by this identity, which `by` names (a node id)."""
        signed = {k: v for k, v in doc.items() if k != SIGNATURE}
        signed[SIGNATURE] = {"by": by, "value": b64(self.signing.sign(canonical(signed)))}
        return signed

    def open(self, sealed: str, context: str) -> bytes:
        """A secret sealed to this identity for `context`; IdentityError when it was not, or was altered."""
        raw = unb64(sealed, "the sealed secret")
        if len(raw) < 32 + 12 + 16:
            raise IdentityError("the sealed secret is too short")
        try:
            ephemeral = X25519PublicKey.from_public_bytes(raw[:32])
            key = _box_key(self.box.exchange(ephemeral), context)
            return ChaCha20Poly1305(key).decrypt(raw[32:44], raw[44:], context.encode("utf-8"))
        except (InvalidTag, ValueError):
            raise IdentityError("the sealed secret was not sealed to this runtime's key "
                                f"(or not for {context!r}), or was altered") from None
