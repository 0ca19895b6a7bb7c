"""The little of Pulsar's admin REST API that OneOS uses: list a namespace's topics, delete one.

A real Apache Pulsar keeps a topic (its messages, its subscriptions) until it is deleted;
once a pipeline is deleted, nobody reads its topics again, so the controller deletes them
here (`DELETE /admin/v2/persistent/{tenant}/{namespace}/{topic}?force=true`) when the boot
record names the cluster's admin URL (`pulsar.adminUrl`). pulsar-lite has no admin API.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import requests

from oneos.errors import OneOSError

TIMEOUT_S = 10.0


class PulsarAdminError(OneOSError):
    """The admin API refused or could not be reached; the message says which and what to do."""


class PulsarAdmin:
    """A client of one Pulsar cluster's admin API (http(s)://HOST:8080)."""

    def __init__(self, url: str, *, timeout: float = TIMEOUT_S, session: Any = None, token: str | None = None,
                 trust_certs_file: str | None = None) -> None:
        """`token` goes with every request (a cluster with authentication: the role must be allowed
        to list and delete the namespace's topics); `trust_certs_file` is the CA of an https:// URL."""
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        if trust_certs_file:
            self.session.verify = trust_certs_file

    def close(self) -> None:
        self.session.close()

    def _path(self, namespace: str, topic: str | None = None) -> str:
        tenant, _, name = namespace.partition("/")
        parts = [tenant, name] + ([topic] if topic is not None else [])
        return f"{self.url}/admin/v2/persistent/" + "/".join(urllib.parse.quote(p, safe="") for p in parts)

    def _request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        try:
            reply = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise PulsarAdminError(f"the Pulsar admin API at {self.url} is unreachable ({type(exc).__name__}); "
                                   "check pulsar.adminUrl in the boot record") from None
        return reply

    def topics(self, namespace: str) -> list[str]:
        """The persistent topics of `namespace` (TENANT/NAMESPACE), as full names."""
        reply = self._request("GET", self._path(namespace))
        if reply.status_code in (401, 403):
            raise PulsarAdminError(f"the Pulsar admin API at {self.url} refused this node (HTTP {reply.status_code}): "
                                   "the leader's Pulsar token (pulsar.tokenFile) must be allowed to list and delete "
                                   f"the topics of {namespace}")
        if reply.status_code != 200:
            raise PulsarAdminError(f"listing the topics of {namespace} at {self.url}: HTTP {reply.status_code} "
                                   f"{reply.text.strip()[:200]}")
        try:
            names = reply.json()
        except ValueError:
            names = None
        if not isinstance(names, list):
            raise PulsarAdminError(f"listing the topics of {namespace} at {self.url}: the reply is not a list of "
                                   "topics; is pulsar.adminUrl the admin API (port 8080)?")
        return [str(t) for t in names]

    def delete_topic(self, topic: str) -> bool:
        """Delete a persistent topic with its subscriptions (force: even with clients connected);
        False when it did not exist."""
        prefix = "persistent://"
        if not topic.startswith(prefix) or topic.count("/") != 4:
            raise PulsarAdminError(f"{topic!r} is not persistent://TENANT/NAMESPACE/TOPIC")
        tenant, namespace, name = topic[len(prefix):].split("/")
        reply = self._request("DELETE", self._path(f"{tenant}/{namespace}", name), params={"force": "true"})
        if reply.status_code == 404:
            return False
        if reply.status_code not in (200, 204):
            raise PulsarAdminError(f"deleting {topic} at {self.url}: HTTP {reply.status_code} "
                                   f"{reply.text.strip()[:200]}")
        return True
