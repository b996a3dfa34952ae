"""An HTTP forwarding proxy on 127.0.0.1 that misbehaves on request: answer 503 to the
next N requests, or slow request bodies or answers down (to have time to kill a worker
or a cache node in the middle of a copy or a fill). Everything else is passed through unchanged."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate", "content-length", "host"}


class FaultProxy:
    def __init__(self, upstream: str, idle_timeout: float | None = None):
        self.upstream = upstream.rstrip("/")
        self.fail_next = 0
        self.refused = 0
        self.upload_bytes_per_second = 0  # 0: no limit
        self.download_bytes_per_second = 0  # answers' bodies sent at this pace (0: no limit)
        self.seen: list[tuple[str, str, int]] = []  # (method, path, status) of every request
        self.connections = 0  # accepted, in all
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            timeout = idle_timeout  # a kept-alive connection idle this long is closed, as gunicorn does

            def setup(self):
                super().setup()
                with proxy.lock:
                    proxy.connections += 1

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    return self._chunked_body()  # podman's blob uploads (PATCH of unknown length)
                length = int(self.headers.get("Content-Length") or 0)
                parts, left = [], length
                while left > 0:
                    piece = self.rfile.read(min(65536, left))
                    if not piece:
                        break
                    parts.append(piece)
                    left -= len(piece)
                    rate = proxy.upload_bytes_per_second
                    if rate:
                        time.sleep(len(piece) / rate)
                return b"".join(parts)

            def _chunked_body(self) -> bytes:
                parts = []
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()  # the CRLF after each chunk
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(parts)

            def _forward(self):
                body = self._body()
                with proxy.lock:
                    refuse = proxy.fail_next > 0
                    if refuse:
                        proxy.fail_next -= 1
                        proxy.refused += 1
                if refuse:
                    payload = b'{"errors":[{"code":"UNAVAILABLE","message":"maintenance"}]}'
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                headers = {}
                for key, value in self.headers.items():  # repeated headers (Accept) joined
                    if key.lower() not in HOP_BY_HOP:
                        headers[key] = f"{headers[key]}, {value}" if key in headers else value
                try:
                    response = requests.request(self.command, proxy.upstream + self.path, headers=headers,
                                                data=body if body else None, allow_redirects=False,
                                                stream=True, timeout=60)
                except requests.RequestException:
                    self.send_response(502)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                content = b"" if self.command == "HEAD" else response.raw.read()
                proxy.seen.append((self.command, self.path, response.status_code))
                self.send_response(response.status_code)
                for key, value in response.headers.items():
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", response.headers.get("Content-Length", str(len(content)))
                                 if self.command == "HEAD" else str(len(content)))
                self.end_headers()
                rate = proxy.download_bytes_per_second
                for start in range(0, len(content), 65536 if rate else max(len(content), 1)):
                    try:
                        self.wfile.write(content[start:start + (65536 if rate else len(content))])
                    except OSError:
                        return  # the client went away (or was killed)
                    if rate:
                        time.sleep(65536 / rate)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
