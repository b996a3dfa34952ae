"""Servers an attacker controls, and internal services they would like to reach: a
registry that lies, and listeners that record whatever reaches them."""

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INTERNAL_SECRET = b"INTERNAL-SECRET-4f1c"


class Listener:
    """An internal service on 127.0.0.1 (or ::1): records every request, answers a secret."""

    def __init__(self, host="127.0.0.1", status=200, body=INTERNAL_SECRET):
        self.requests: list[tuple[str, str]] = []
        self.status, self.body = status, body  # what it answers (a test may change them)
        listener = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self):
                listener.requests.append((self.command, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self.send_response(listener.status)
                self.send_header("Content-Length", str(len(listener.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(listener.body)

            do_GET = do_POST = do_HEAD = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, *args):
                pass

        server_class = ThreadingHTTPServer
        if ":" in host:
            import socket

            class V6(ThreadingHTTPServer):
                address_family = socket.AF_INET6

            server_class = V6
        self.server = server_class((host, 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class FakeRegistry:
    """A Distribution API read side that serves whatever a test puts in it, without
    authentication unless `challenge` is set. Blobs may be bytes, a (status, body, headers)
    answer, or missing (404). Every request is recorded."""

    def __init__(self):
        self.manifests: dict[tuple[str, str], tuple[str, bytes]] = {}
        self.blobs: dict[str, object] = {}
        self.challenge: str | None = None
        self.answer_all: tuple[int, bytes, dict] | None = None
        self.requests: list[tuple[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, status, body=b"", headers=None):
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _answer(self):
                fake.requests.append((self.command, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if fake.answer_all is not None:
                    return self._send(*fake.answer_all)
                if fake.challenge and "Authorization" not in self.headers:
                    return self._send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"sign in"}]}',
                                      {"WWW-Authenticate": fake.challenge, "Content-Type": "application/json"})
                path = self.path.split("?")[0]
                if path == "/v2/":
                    return self._send(200, b"{}", {"Content-Type": "application/json"})
                match = re.match(r"^/v2/(.+)/(manifests|blobs|tags|referrers)/(.+)$", path)
                if not match:
                    return self._send(404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}')
                name, kind, reference = match.groups()
                if kind == "tags":
                    tags = sorted({ref for (n, ref) in fake.manifests if n == name and ":" not in ref})
                    return self._send(200, json.dumps({"name": name, "tags": tags}).encode(),
                                      {"Content-Type": "application/json"})
                if kind == "manifests":
                    found = fake.manifests.get((name, reference))
                    if found is None:
                        return self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no"}]}')
                    media_type, body = found
                    from tests.client import sha256

                    return self._send(200, body, {"Content-Type": media_type, "Docker-Content-Digest": sha256(body)})
                if kind == "blobs":
                    blob = fake.blobs.get(reference)
                    if blob is None:
                        return self._send(404, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"no"}]}')
                    if isinstance(blob, tuple):
                        return self._send(*blob)
                    return self._send(200, blob, {"Content-Type": "application/octet-stream"})
                return self._send(404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}')

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def serve_image(self, name: str, tag: str, config: tuple[str, int], layers: list[tuple[str, int]]) -> str:
        """Serve a manifest naming these (digest, size) blobs; returns its digest."""
        from tests.client import sha256

        body = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config[0],
                       "size": config[1]},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s}
                       for d, s in layers],
        }).encode()
        digest = sha256(body)
        self.manifests[(name, tag)] = (OCI_MANIFEST, body)
        self.manifests[(name, digest)] = (OCI_MANIFEST, body)
        return digest

    def asked_for(self, digest: str) -> bool:
        return any(method == "GET" and path.split("?")[0].endswith(f"/blobs/{digest}")
                   for method, path in self.requests)

    def reset(self):
        self.manifests.clear()
        self.blobs.clear()
        self.requests.clear()
        self.challenge = None
        self.answer_all = None
