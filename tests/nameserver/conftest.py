"""Fixtures for the Name Server contract tests (see tests/conftest.py for `ns`, `prefix`...)."""

from __future__ import annotations

import pytest

from oneos.nameserver.client import NameServer


@pytest.fixture
def make_session(ns: NameServer):
    """Create sessions through the client; every one is destroyed after the test."""
    created: list[str] = []

    def make(**kwargs) -> str:
        sid = ns.session_create(**kwargs)
        assert isinstance(sid, str) and sid
        created.append(sid)
        return sid

    yield make
    for sid in created:
        try:
            ns.session_destroy(sid)
        except Exception:  # noqa: BLE001 - the server may have been stopped by the test
            pass
