"""A runtime's keys: kept 0600, signatures that bind the whole document, secrets only its key opens."""

from __future__ import annotations

import os
import stat

import pytest

from oneos.identity import Identity, IdentityError, fingerprint, seal, signer, verify


def test_keys_are_made_once_and_kept_private(tmp_path):
    path = tmp_path / "runtimes" / "n1" / "node.key"
    first = Identity.load_or_create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = Identity.load_or_create(path)
    assert (again.signing_key, again.box_key) == (first.signing_key, first.box_key)
    assert first.fingerprint == fingerprint(first.signing_key) and first.fingerprint.startswith("SHA256:")


def test_a_key_file_others_may_read_is_refused(tmp_path):
    path = tmp_path / "node.key"
    Identity.load_or_create(path)
    os.chmod(path, 0o644)
    with pytest.raises(Exception, match="may be read by others"):
        Identity.load_or_create(path)


def test_a_damaged_key_file_says_what_to_do(tmp_path):
    path = tmp_path / "node.key"
    path.write_text("{}")
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match="damaged.*oneosctl node approve"):
        Identity.load_or_create(path)


def test_a_signature_covers_every_field_and_names_its_signer():
    me, other = Identity.generate(), Identity.generate()
    doc = me.sign({"id": "n1", "kernel": False, "labels": {"a": "1"}}, by="n1")
    assert signer(doc) == "n1"
    assert verify(doc, me.signing_key)
    assert not verify(doc, other.signing_key)
    assert not verify(dict(doc, kernel=True), me.signing_key)
    assert not verify(dict(doc, labels={"a": "2"}), me.signing_key)
    assert not verify({k: v for k, v in doc.items() if k != "signature"}, me.signing_key)
    assert not verify(dict(doc, signature={"by": "n1", "value": "not base64!"}), me.signing_key)


def test_a_sealed_secret_opens_only_with_its_key_and_context():
    me, other = Identity.generate(), Identity.generate()
    sealed = seal(me.box_key, b"secret token", "token n1")
    assert me.open(sealed, "token n1") == b"secret token"
    with pytest.raises(IdentityError):
        other.open(sealed, "token n1")
    with pytest.raises(IdentityError):
        me.open(sealed, "frame key p")
    raw = bytearray(sealed.encode())
    raw[-5] = ord("A") if raw[-5] != ord("A") else ord("B")
    with pytest.raises(IdentityError):
        me.open(raw.decode(), "token n1")
