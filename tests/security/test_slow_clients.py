"""Slow clients cannot take the servers away from everyone else: clients that never
finish their headers (slowloris), uploads that trickle, and a reader that stops reading a
cold layer at a cache node, while a normal client pushes, pulls and checks /healthz.

The servers here have one process of four threads, so that a handful of slow clients
would be enough to hold all of them if they could."""

import hashlib
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
import requests
from django.conf import settings

from tests.client import Registry, sha256
from tests.processes import start_cache, start_msr

SLOW = {"MSR_HTTP_HEADER_TIMEOUT": "3", "MSR_HTTP_IO_TIMEOUT": "5", "MSR_HTTP_MIN_RATE": "4096"}


@pytest.fixture(scope="module")
def small_msr(db_url, artifacts_dir):
    process, url = start_msr("serve", settings.DATA_DIR, db_url, artifacts_dir / "logs" / "slow", extra_env=SLOW,
                             workers=1, threads=4)
    yield url
    process.stop()


class Slowloris:
    """Connections that send a header line now and then and never end their headers."""

    def __init__(self, url: str, count: int):
        host, port = urlsplit(url).hostname, urlsplit(url).port
        self.sockets = []
        for _ in range(count):
            s = socket.create_connection((host, port))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            self.sockets.append(s)
        self.closed_by_server = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drip, daemon=True)
        self._thread.start()

    def _drip(self):
        while not self._stop.wait(1):
            for s in list(self.sockets):
                try:
                    s.sendall(b"X-Slow: yes\r\n")
                except OSError:
                    self.sockets.remove(s)
                    self.closed_by_server += 1

    def stop(self):
        self._stop.set()
        self._thread.join()
        for s in self.sockets:
            s.close()


def _trickle_upload(url: str, name: str, token: str, head_start: int) -> socket.socket:
    """Start a chunk upload of 10 MB and send `head_start` bytes, then a byte now and then."""
    location = requests.post(f"{url}/v2/{name}/blobs/uploads/", headers={"Authorization": f"Bearer {token}"},
                             timeout=30).headers["Location"]
    s = socket.create_connection((urlsplit(url).hostname, urlsplit(url).port))
    s.sendall((f"PATCH {location} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
               f"Content-Type: application/octet-stream\r\nContent-Length: 10000000\r\n\r\n").encode())
    s.sendall(b"x" * head_start)
    return s


def test_slowloris_and_trickling_uploads_leave_the_registry_answering(small_msr, personas, unique):
    alice = Registry(small_msr, "alice", personas["alice"].token)
    name = f"acme/slow-{unique}"
    alice.push_image(name, "v0")
    token = alice.token(f"repository:{name}:pull,push")
    loris = Slowloris(small_msr, 50)
    trickles = [_trickle_upload(small_msr, name, token, 0) for _ in range(8)]
    # These send 64 KiB at once, so a thread takes them, and then trickle: the minimum rate ends them.
    fast_start = [_trickle_upload(small_msr, name, token, 70_000) for _ in range(8)]
    stop = threading.Event()

    def drip():
        while not stop.wait(1):
            for s in trickles + fast_start:
                try:
                    s.sendall(b"x")
                except OSError:
                    pass

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        time.sleep(1)
        for attempt in range(3):
            assert requests.get(f"{small_msr}/healthz", timeout=30).status_code == 200
            digest, pushed = alice.push_image(name, f"v{attempt + 1}", layers=(f"normal {unique} {attempt}".encode(),))
            assert pushed.status_code == 201
            pulled = alice.request("GET", f"/v2/{name}/manifests/{digest}", scope=f"repository:{name}:pull",
                                   headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
            assert pulled.status_code == 200 and sha256(pulled.content) == digest
            time.sleep(2)
        # The slow connections were closed by the server, not served.
        deadline = time.monotonic() + 30
        while loris.closed_by_server < 50 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert loris.closed_by_server == 50
    finally:
        stop.set()
        dripper.join()
        loris.stop()
        for s in trickles + fast_start:
            s.close()


def test_a_reader_that_stops_reading_a_cold_layer_holds_back_nobody(msr, personas, unique, tmp_path, artifacts_dir):
    alice = Registry(msr, "alice", personas["alice"].token)
    data = hashlib.sha512(b"stalled" + unique.encode()).digest() * 300_000  # 19 MB
    digest = sha256(data)
    assert alice.push_blob("acme/private-app", data).status_code == 201
    name = f"stall{unique}"
    process, node = start_cache(name, msr, tmp_path / "node", artifacts_dir / "logs", workers=1, threads=4,
                                extra_env=SLOW)
    try:
        from msr.tokens import sign

        grant = sign({"typ": "blob-grant", "aud": [name], "sub": "alice", "repo": "acme/private-app",
                      "digest": digest}, 300)
        path = f"/v2/acme/private-app/blobs/{digest}?grant={grant}"
        stalled = socket.create_connection((urlsplit(node).hostname, urlsplit(node).port))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert stalled.recv(16).startswith(b"HTTP/1.1 200")  # then it reads nothing more
        others = [requests.get(f"{node}{path}", timeout=60) for _ in range(2)]
        for response in others:
            assert response.status_code == 200 and response.content == data
        stats = requests.get(f"{node}/stats", timeout=10).json()
        assert stats["upstream_fetches"] == 1 and stats["misses"] == 1
        stalled.close()
    finally:
        process.stop()


def test_a_tls_hello_on_the_plain_port_is_answered_at_once(msr):
    """Go's registry clients (docker, podman, skopeo) try https first: their ClientHello
    must be refused right away, not held until the header timeout (10 s here), or every
    login and copy waits that long before falling back to http."""
    s = socket.create_connection((urlsplit(msr).hostname, urlsplit(msr).port))
    s.settimeout(5)
    s.sendall(bytes.fromhex("160301020001") + b"\x00" * 64)
    try:
        answer = s.recv(1024)  # gunicorn's 400, or the connection closed: either is prompt
    finally:
        s.close()
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400")
