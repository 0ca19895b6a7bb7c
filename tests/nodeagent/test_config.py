"""A node's config.yaml: its own Pulsar settings (issue 12, item 4)."""

from __future__ import annotations

import pytest

from oneos.errors import UsageError
from oneos.nodeagent import config as runtime_config


def load(tmp_path, text: str) -> runtime_config.RuntimeConfig:
    path = tmp_path / "etc" / "config.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return runtime_config.load(runtime_config.Overrides(id="n1", config_file=path), interactive=False)


def test_pulsar_files_are_read_relative_to_the_config_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEOS_HOME", str(tmp_path / "home"))
    cfg = load(tmp_path, "pulsar: {tokenFile: secrets/pulsar-token, tlsTrustCertsFile: /etc/ssl/pulsar-ca.pem}\n")
    assert cfg.pulsar_token_file == tmp_path / "etc" / "secrets" / "pulsar-token"
    assert str(cfg.pulsar_trust_certs_file) == "/etc/ssl/pulsar-ca.pem"
    assert load(tmp_path, "kernel: false\n").pulsar_token_file is None


def test_a_token_itself_in_the_config_is_refused_naming_the_field(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEOS_HOME", str(tmp_path / "home"))
    with pytest.raises(UsageError, match="pulsar.*token"):
        load(tmp_path, "pulsar: {token: the-secret}\n")
