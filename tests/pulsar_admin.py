"""A stand-in for Pulsar's admin REST API (pulsar-lite has none), in the test's process."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeAdmin:
    """Pulsar's admin API for topics: GET lists a namespace, DELETE ?force=true deletes one."""

    def __init__(self, topic_names: list[str], token: str | None = None) -> None:
        """With `token`, a request without it as its bearer token is answered 401, as Pulsar's."""
        self.topics = set(topic_names)
        self.deleted: list[tuple[str, str]] = []
        self.down = False
        self.token = token
        self.refused = 0
        admin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code: int, body: object = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _refused(self) -> bool:
                if admin.token is None or self.headers.get("Authorization") == f"Bearer {admin.token}":
                    return False
                admin.refused += 1
                self._reply(401, {"reason": "Authentication required"})
                return True

            def do_GET(self):
                if admin.down:
                    return self._reply(503, {"reason": "down"})
                if self._refused():
                    return None
                tenant, namespace = self.path.split("/")[4:6]
                prefix = f"persistent://{tenant}/{namespace}/"
                self._reply(200, sorted(t for t in admin.topics if t.startswith(prefix)))

            def do_DELETE(self):
                if self._refused():
                    return
                path, _, query = self.path.partition("?")
                tenant, namespace, topic = path.split("/")[4:7]
                name = f"persistent://{tenant}/{namespace}/{topic}"
                admin.deleted.append((name, query))
                if name not in admin.topics:
                    return self._reply(404, {"reason": "Topic not found"})
                admin.topics.discard(name)
                self._reply(204)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
