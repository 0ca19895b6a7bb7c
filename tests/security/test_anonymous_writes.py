"""With ACLs on (as `oneosd --dev` runs its Name Server), whoever reaches the Name Server's port
without a token can neither make a node run a command nor end a node's session: each attack
against a real `oneosd --dev` is refused with Consul's 403, and nothing of it is stored."""

from __future__ import annotations

import json

import pytest
import requests

from oneos import state
from tests.test_dev import Dev

ASSIGNMENT = {"pipeline": "evil", "uid": "0" * 32, "generation": 1, "epoch": 1,
              "agent": {"name": "x", "run": ["touch", "/tmp/oneos-anonymous-was-here"]},
              "inputs": [], "outputs": [], "attached": False, "files": {}}
MANIFEST = {"apiVersion": "oneos/v1", "kind": "Pipeline", "metadata": {"name": "evil"},
            "spec": {"agents": [{"name": "x", "run": ["touch", "/tmp/oneos-anonymous-was-here"]}]}}


@pytest.fixture
def dev(tmp_path):
    d = Dev(tmp_path)
    d.start()
    yield d
    d.stop()


def management(dev) -> dict[str, str]:
    return {"X-Consul-Token": (dev.home / "token").read_text().strip()}


def stored(dev, key: str) -> bool:
    return requests.get(f"{dev.url}/v1/kv/{key}", headers=management(dev), timeout=10).status_code == 200


def test_an_anonymous_assignment_or_manifest_is_refused_and_nothing_is_stored(dev):
    attacks = {state.assign_key(dev.node_id, "evil.x"): ASSIGNMENT, state.pipeline_key("evil"): MANIFEST}
    for key, doc in attacks.items():
        answer = requests.put(f"{dev.url}/v1/kv/{key}", data=json.dumps(doc), timeout=10)
        assert answer.status_code == 403 and answer.text.startswith("Permission denied: anonymous token"), key
        # The same through a transaction: refused whole.
        txn = [{"KV": {"Verb": "set", "Key": key, "Value": ""}}]
        answer = requests.put(f"{dev.url}/v1/txn", json=txn, timeout=10)
        assert answer.status_code in (403, 409) and "Permission denied" in answer.text, answer.text
        assert not stored(dev, key)
    # A token the Name Server does not know is refused too, whatever it asks.
    answer = requests.put(f"{dev.url}/v1/kv/{state.pipeline_key('evil')}", data=b"{}", timeout=10,
                          headers={"X-Consul-Token": "00000000-0000-4000-8000-000000000000"})
    assert (answer.status_code, answer.text.strip()) == (403, "ACL not found")


def test_an_anonymous_session_destroy_is_refused_and_the_node_stays(dev):
    sessions = requests.get(f"{dev.url}/v1/session/list", headers=management(dev), timeout=10).json()
    held = [s["ID"] for s in sessions]
    assert held, "the dev node holds a session"
    for sid in held:
        answer = requests.put(f"{dev.url}/v1/session/destroy/{sid}", timeout=10)
        assert answer.status_code == 403 and "Permission denied" in answer.text
    after = requests.get(f"{dev.url}/v1/session/list", headers=management(dev), timeout=10).json()
    assert {s["ID"] for s in after} >= set(held)
    assert stored(dev, state.NODES + dev.node_id)
