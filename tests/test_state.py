"""Reading stored documents (oneos.state.decode): what was checked once is not checked again,
and what is not valid is refused every time."""

from __future__ import annotations

import pytest

from oneos import state
from oneos.documents import DocumentError
from oneos.nameserver.client import Entry


def status(**changes) -> dict:
    doc = {"pipeline": "p", "agent": "a", "uid": "a" * 32, "node": "n1", "generation": 1, "epoch": 1,
           "state": "Running", "updatedAt": "2026-12-02T08:00:00Z", "incarnation": 1, "restarts": 0}
    doc.update(changes)
    return doc


def test_a_document_read_again_is_the_same_and_a_fresh_object():
    entry = Entry("oneos/status/p.a", state.encode(status()))
    first, second = state.decode(entry, "status"), state.decode(entry, "status")
    assert first == second == status()
    first["state"] = "Exited"                     # what a caller does with its copy
    assert state.decode(entry, "status")["state"] == "Running"


def test_an_invalid_document_is_refused_every_time_even_after_a_valid_one_under_its_key():
    good = Entry("oneos/status/p.a", state.encode(status()))
    bad = Entry("oneos/status/p.a", state.encode(status(state="Dancing")))
    state.decode(good, "status")
    for _ in range(2):
        with pytest.raises(DocumentError, match="oneos/status/p.a: state"):
            state.decode(bad, "status")


def test_bytes_valid_as_one_schema_are_still_checked_as_another():
    entry = Entry("oneos/status/p.a", state.encode(status()))
    state.decode(entry, "status")
    with pytest.raises(DocumentError):
        state.decode(entry, "node")


def test_what_is_remembered_is_bounded():
    checked = state._Checked(size=3)
    for i in range(10):
        checked.add("status", str(i).encode())
    assert [("status", str(i).encode()) in checked for i in range(10)] == [False] * 7 + [True] * 3
