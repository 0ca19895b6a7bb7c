"""/v1/status/leader, /v1/status/peers and /v1/agent/self: who leads, as a Consul client reads it.

References (hashicorp/consul): website/content/api-docs/status.mdx (the leader and peers are
"ADDR:PORT" strings); agent/consul/server.go Stats (Stats.consul of /v1/agent/self: "server",
"leader", "leader_addr", "bootstrap", "known_datacenters", "acl", every value a string).
py-consul's test_status checks that agent/self's leader_addr is the leader, and among the peers.
"""

from __future__ import annotations

import requests


def _get(url: str, path: str):
    resp = requests.get(url + path, timeout=10)
    assert resp.status_code == 200, (path, resp.status_code, resp.text)
    return resp.json()


def test_agent_self_names_the_leader_that_status_reports(nameserver_url: str):
    leader = _get(nameserver_url, "/v1/status/leader")
    peers = _get(nameserver_url, "/v1/status/peers")
    stats = _get(nameserver_url, "/v1/agent/self")["Stats"]["consul"]
    host, _, port = leader.rpartition(":")
    assert host and port.isdigit()
    assert stats["leader_addr"] == leader
    assert leader in peers
    assert all(isinstance(v, str) for v in stats.values())


def test_the_single_server_is_its_own_leader(nameserver_url: str):
    stats = _get(nameserver_url, "/v1/agent/self")["Stats"]["consul"]
    assert (stats["server"], stats["leader"], stats["known_datacenters"]) == ("true", "true", "1")
