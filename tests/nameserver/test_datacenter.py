"""`?dc=`: the Name Server is one datacenter, dc1; a request for another is refused as Consul refuses it.

References (hashicorp/consul): agent/http.go parseDC (an empty dc= is the agent's own);
agent/consul/rpc.go forwardDC and structs.ErrNoDCPath ("No path to datacenter", a 500 through
the HTTP layer) for every endpoint that reaches the servers: KV, txn, session, status.
"""

from __future__ import annotations

import base64

import pytest
import requests

from oneos.nameserver.client import NameServer


def _requests(prefix: str) -> list[tuple[str, str, dict]]:
    put = [{"KV": {"Verb": "set", "Key": prefix + "txn", "Value": base64.b64encode(b"v").decode()}}]
    return [
        ("GET", f"/v1/kv/{prefix}a", {}),
        ("GET", f"/v1/kv/{prefix}", {"params": {"recurse": ""}}),
        ("GET", f"/v1/kv/{prefix}", {"params": {"keys": ""}}),
        ("PUT", f"/v1/kv/{prefix}a", {"data": b"written"}),
        ("DELETE", f"/v1/kv/{prefix}kept", {}),
        ("PUT", "/v1/txn", {"json": put}),
        ("PUT", "/v1/session/create", {"json": {"Name": "elsewhere"}}),
        ("GET", "/v1/session/list", {}),
        ("GET", "/v1/session/info/00000000-0000-0000-0000-000000000000", {}),
        ("GET", "/v1/status/leader", {}),
        ("GET", "/v1/status/peers", {}),
    ]


def _call(url: str, method: str, path: str, kwargs: dict, dc: str) -> requests.Response:
    params = dict(kwargs.get("params", {}), dc=dc)
    rest = {k: v for k, v in kwargs.items() if k != "params"}
    return requests.request(method, url + path, params=params, timeout=10, **rest)


def test_another_datacenter_is_500_no_path(nameserver_url: str, ns: NameServer, prefix: str):
    ns.put(prefix + "kept", "still here")
    for method, path, kwargs in _requests(prefix):
        resp = _call(nameserver_url, method, path, kwargs, "dc2")
        assert (resp.status_code, resp.text.strip()) == (500, "No path to datacenter"), (method, path)
    # Nothing asked of dc2 happened here.
    assert ns.get(prefix + "a")[1] is None
    assert ns.get(prefix + "txn")[1] is None
    assert ns.get(prefix + "kept")[1].value == b"still here"
    assert "elsewhere" not in [s["Name"] for s in ns.session_list()[1]]


@pytest.mark.parametrize("dc", ["dc1", ""])
def test_own_or_empty_datacenter_is_served(nameserver_url: str, ns: NameServer, prefix: str, dc: str):
    ns.put(prefix + "kept", "still here")
    for method, path, kwargs in _requests(prefix):
        resp = _call(nameserver_url, method, path, kwargs, dc)
        assert resp.status_code in (200, 404), (method, path, resp.status_code, resp.text)
    assert ns.get(prefix + "a")[1].value == b"written"
    assert ns.get(prefix + "txn")[1].value == b"v"
    assert ns.get(prefix + "kept")[1] is None
    for session in ns.session_list()[1]:
        if session["Name"] == "elsewhere":
            ns.session_destroy(session["ID"])


def test_agent_self_names_the_datacenter(nameserver_url: str):
    """/v1/agent/self is the agent's own: it takes no dc, and says which datacenter it is in."""
    assert requests.get(nameserver_url + "/v1/agent/self", timeout=10).json()["Config"]["Datacenter"] == "dc1"
