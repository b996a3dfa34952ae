"""The cache node's WSGI app (caches/node.py), called in-process, against a fake upstream:
a thread on 127.0.0.1 that plays MSR (its JWKS and its blobs), counts the blob fetches
and can cut a body or send wrong bytes. Grants are signed with MSR's own signing code
(msr.tokens) and the fake upstream publishes MSR's JWKS, as /auth/jwks.json does.
tests/test_caches.py checks the same behaviour with real processes."""

import base64
import hashlib
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from caches.node import Config
from msr.tokens import jwks, sign

REPO = "acme/private-app"


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


class FakeUpstream:
    """MSR as a cache node sees it. `mode` applies to the next blob answers: "ok", "cut"
    (the whole Content-Length announced, half the body sent, the connection closed),
    "wrong" (as many bytes, one of them changed) or "missing" (404)."""

    def __init__(self):
        self.blobs: dict[str, bytes] = {}
        self.fetches: list[str] = []  # digests asked for
        self.grants: list[str] = []  # the grant each blob fetch presented
        self.mode = "ok"
        self.delay = 0.0
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                path, _, query = self.path.partition("?")
                if path == "/auth/jwks.json":
                    return self._send(200, json.dumps(jwks()).encode())
                digest = path.rpartition("/")[2]
                upstream.fetches.append(digest)
                upstream.grants.append(dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("grant", ""))
                data = upstream.blobs.get(digest)
                if data is None or upstream.mode == "missing":
                    return self._send(404, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"no"}]}')
                time.sleep(upstream.delay)
                if upstream.mode == "wrong":
                    data = data[:-1] + bytes([data[-1] ^ 0xFF])
                if upstream.mode == "cut":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self._send(200, data)

            def _send(self, status, body):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def add(self, data: bytes) -> str:
        self.blobs[sha256(data)] = data
        return sha256(data)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream():
    server = FakeUpstream()
    yield server
    server.stop()


@pytest.fixture
def node(upstream, tmp_path, new_node):
    return new_node(Config({"MSR_CACHE_NAME": "asia", "MSR_CACHE_MSR_URL": upstream.url,
                             "MSR_CACHE_DATA_DIR": str(tmp_path / "asia"), "MSR_CACHE_TOKEN_SERVICE": "msr"}))


def grant(digest, repo=REPO, aud=("asia",), ttl=60, typ="blob-grant"):
    return sign({"typ": typ, "aud": list(aud), "sub": "alice", "repo": repo, "digest": digest}, ttl)


def call(node, digest, grant_value=None, repo=REPO, method="GET", headers=None):
    """One WSGI request; (status code, headers, body). The body is read to its end, as a
    client would, and the iterable closed, as a server must."""
    query = f"grant={grant_value}" if grant_value is not None else ""
    environ = {"REQUEST_METHOD": method, "PATH_INFO": f"/v2/{repo}/blobs/{digest}", "QUERY_STRING": query,
               "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
    environ.update({f"HTTP_{k.upper().replace('-', '_')}": v for k, v in (headers or {}).items()})
    answer = {}

    def start_response(status, response_headers, exc_info=None):
        answer["status"], answer["headers"] = int(status[:3]), dict(response_headers)

    iterable = node(environ, start_response)
    try:
        body = b"".join(iterable)
    finally:
        getattr(iterable, "close", lambda: None)()
    return answer["status"], answer["headers"], body


def published(node, digest) -> bool:
    return node.blob_path(digest).exists()


def test_a_miss_is_fetched_once_and_then_served_from_disk(node, upstream):
    data = b"layer " * 50_000
    digest = upstream.add(data)
    status, headers, body = call(node, digest, grant(digest))
    assert (status, headers["X-Cache"], body) == (200, "MISS", data)
    assert published(node, digest) and node.blob_path(digest).read_bytes() == data

    status, headers, body = call(node, digest, grant(digest))
    assert (status, headers["X-Cache"], body) == (200, "HIT", data)
    assert upstream.fetches == [digest]
    assert node.metrics.values["hits"] == 1 and node.metrics.values["misses"] == 1


def test_the_upstream_is_asked_with_the_clients_grant(node, upstream):
    digest = upstream.add(b"grant travels upstream")
    token = grant(digest)
    assert call(node, digest, token)[0] == 200
    assert upstream.grants == [token]  # a parent cache verifies the same grant


def test_a_hit_answers_ranges_and_head(node, upstream):
    data = bytes(range(256)) * 100
    digest = upstream.add(data)
    call(node, digest, grant(digest))
    status, headers, body = call(node, digest, grant(digest), headers={"Range": "bytes=10-19"})
    assert (status, body, headers["Content-Range"]) == (206, data[10:20], f"bytes 10-19/{len(data)}")
    assert call(node, digest, grant(digest), headers={"Range": f"bytes={len(data)}-"})[0] == 416
    status, headers, body = call(node, digest, grant(digest), method="HEAD")
    assert (status, headers["Content-Length"], body) == (200, str(len(data)), b"")


def test_concurrent_cold_requests_make_one_upstream_fetch(node, upstream):
    data = hashlib.sha512(b"cold").digest() * 20_000  # 1.28 MB
    digest = upstream.add(data)
    upstream.delay = 0.3  # every request arrives while the first one fills
    token = grant(digest)
    results = [None] * 12

    def fetch(i):
        results[i] = call(node, digest, token)

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(len(results))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [(status, body == data) for status, _, body in results] == [(200, True)] * len(results)
    assert upstream.fetches == [digest]
    assert node.metrics.values["misses"] == 1 and node.metrics.values["hits"] == len(results) - 1


@pytest.mark.parametrize("mode", ["cut", "wrong"])
def test_a_cut_or_wrong_upstream_body_is_never_published_and_the_next_request_refetches(node, upstream, mode):
    data = hashlib.sha512(mode.encode()).digest() * 10_000
    digest = upstream.add(data)
    upstream.mode = mode
    status, _, body = call(node, digest, grant(digest))
    # An early failure is a 502; a late one ends the body short (never a whole wrong body).
    assert status == 502 or len(body) < len(data)
    assert not published(node, digest)
    assert list(node.tmp.iterdir()) == []
    assert node.metrics.values["upstream_failures"] == 1

    upstream.mode = "ok"
    status, _, body = call(node, digest, grant(digest))
    assert (status, body) == (200, data)
    assert published(node, digest)
    assert upstream.fetches == [digest, digest]


def test_a_blob_the_upstream_does_not_have_is_passed_on_as_its_answer(node, upstream):
    digest = sha256(b"nowhere")
    status, _, body = call(node, digest, grant(digest))
    assert status == 404 and json.loads(body)["errors"][0]["code"] == "BLOB_UNKNOWN"
    assert not published(node, digest)


def test_a_refusal_to_a_head_has_no_body(node, upstream):
    """containerd resolves a tag with HEAD, and its first HEAD gets the 401 challenge: an
    answer to HEAD carries no body (RFC 9110 9.3.2), refusals included."""
    environ = {"REQUEST_METHOD": "HEAD", "PATH_INFO": f"/v2/{REPO}/manifests/v1", "QUERY_STRING": "",
               "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "HTTP_HOST": "127.0.0.1", "wsgi.url_scheme": "http"}
    answer = {}
    body = b"".join(node(environ, lambda status, headers, exc_info=None: answer.update(status=status,
                                                                                      headers=dict(headers))))
    assert answer["status"].startswith("401") and answer["headers"]["WWW-Authenticate"].startswith("Bearer ")
    assert body == b""
    digest = upstream.add(b"a layer")
    for token in ("not.a.jwt", grant(digest, aud=("china",))):  # a garbled grant; another cache's
        status, _, body = call(node, digest, token, method="HEAD")
        assert status in (401, 403) and body == b""


def _tampered(digest):
    """A grant for a cheap blob, its digest claim rewritten to `digest`, signature kept."""
    header, payload, signature = grant(sha256(b"cheap")).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["digest"] = digest
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def _foreign(digest):
    """Signed by a key that is not MSR's (with MSR's key id, so the key lookup succeeds)."""
    kid = jwks()["keys"][0]["kid"]
    return jwt.encode({"typ": "blob-grant", "aud": ["asia"], "repo": REPO, "digest": digest,
                       "exp": int(time.time()) + 60}, Ed25519PrivateKey.generate(), algorithm="EdDSA",
                      headers={"kid": kid})


@pytest.mark.parametrize("case,status", [
    ("missing", 401), ("empty", 401), ("garbage", 401), ("expired", 401), ("tampered", 401),
    ("foreign-key", 401), ("access-token", 401), ("other-cache", 403), ("other-digest", 403),
    ("other-repository", 403),
])
def test_it_refuses_bad_grants(node, upstream, case, status):
    data = b"private cached layer " * 1000
    digest = upstream.add(data)
    token = {
        "missing": None,
        "empty": "",
        "garbage": "not.a.jwt",
        "expired": grant(digest, ttl=-30),
        "tampered": _tampered(digest),
        "foreign-key": _foreign(digest),
        "access-token": grant(digest, typ="access"),
        "other-cache": grant(digest, aud=("china",)),
        "other-digest": grant(sha256(b"other")),
        "other-repository": grant(digest, repo="acme/public-app"),
    }[case]
    answer, _, body = call(node, digest, token)
    assert answer == status, body
    assert json.loads(body)["errors"][0]["code"] == ("DENIED" if status == 403 else "UNAUTHORIZED")
    assert data not in body
    assert upstream.fetches == [] and not published(node, digest)
    assert node.metrics.values["refused"] == 1


def test_a_grant_for_a_chain_is_valid_at_every_cache_of_it(upstream, tmp_path, new_node):
    """A grant names the user's cache and its ancestors (china -> asia): each accepts it."""
    data = b"chained"
    digest = upstream.add(data)
    token = grant(digest, aud=("china", "asia"))
    for name in ("china", "asia"):
        node = new_node(Config({"MSR_CACHE_NAME": name, "MSR_CACHE_MSR_URL": upstream.url,
                                 "MSR_CACHE_DATA_DIR": str(tmp_path / name)}))
        assert call(node, digest, token)[:3:2] == (200, data)
    other = new_node(Config({"MSR_CACHE_NAME": "europe", "MSR_CACHE_MSR_URL": upstream.url,
                              "MSR_CACHE_DATA_DIR": str(tmp_path / "europe")}))
    assert call(other, digest, token)[0] == 403


def test_the_size_budget_holds_at_every_fill_not_only_at_the_sweep(upstream, tmp_path, new_node):
    """A node of 100 KiB filled with 40 KiB blobs one after the other: before each fill
    it evicts the least recently used, so the store never exceeds the budget."""
    small = new_node(Config({"MSR_CACHE_NAME": "asia", "MSR_CACHE_MSR_URL": upstream.url,
                              "MSR_CACHE_DATA_DIR": str(tmp_path / "small"), "MSR_CACHE_MAX_SIZE": "100K",
                              "MSR_CACHE_EVICT_INTERVAL": "3600", "MSR_CACHE_TOKEN_SERVICE": "msr"}))
    digests = [upstream.add(bytes([i]) * 40 * 1024) for i in range(6)]
    for i, digest in enumerate(digests):
        assert call(small, digest, grant(digest))[0] == 200
        assert small.disk_used() <= 100 * 1024, f"over budget after fill {i}: {small.disk_used()}"
    assert published(small, digests[-1]) and not published(small, digests[0])


def test_a_blob_past_its_ttl_is_a_miss_at_once(upstream, tmp_path, new_node):
    node = new_node(Config({"MSR_CACHE_NAME": "asia", "MSR_CACHE_MSR_URL": upstream.url,
                             "MSR_CACHE_DATA_DIR": str(tmp_path / "ttl"), "MSR_CACHE_TTL": "1h",
                             "MSR_CACHE_EVICT_INTERVAL": "3600", "MSR_CACHE_TOKEN_SERVICE": "msr"}))
    digest = upstream.add(b"short-lived " * 1000)
    assert call(node, digest, grant(digest))[1]["X-Cache"] == "MISS"
    assert call(node, digest, grant(digest))[1]["X-Cache"] == "HIT"
    last_use = time.time() - 3601
    os.utime(node.blob_path(digest), (last_use, last_use))  # an hour and a second unused
    assert call(node, digest, grant(digest))[1]["X-Cache"] == "MISS"
    assert upstream.fetches == [digest, digest]


def test_a_kept_alive_connection_the_server_just_closed_is_retried_on_a_new_one():
    """MSR closes an idle kept-alive connection as the node reuses it: the request (a GET
    or HEAD) goes again on a new connection instead of failing the client's pull."""
    import socket

    from caches.endpoint import kept_alive_session

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def serve():
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
                conn.recv(65536)  # the next request on this connection: closed unanswered

    threading.Thread(target=serve, daemon=True).start()
    session = kept_alive_session()
    try:
        assert session.get(f"http://127.0.0.1:{port}/v2/", timeout=5).text == "ok"
        assert session.get(f"http://127.0.0.1:{port}/v2/", timeout=5).text == "ok"  # a second connection
    finally:
        listener.close()


def test_what_the_node_learnt_is_forgotten_after_its_ttl(node):
    """Which digests belong to which repository is trusted for the membership TTL, then
    removed with the periodic eviction; a kept manifest goes after the cache's TTL unused."""
    endpoint = node.endpoint
    fresh, stale = sha256(b"fresh"), sha256(b"stale")
    endpoint.learn(REPO, [fresh, stale])
    endpoint._keep_manifest(stale, "application/vnd.oci.image.manifest.v1+json", b"{}")
    long_ago = time.time() - max(node.config.membership_ttl, node.config.ttl) - 1
    os.utime(endpoint._member_path(REPO, stale), (long_ago, long_ago))
    os.utime(endpoint._manifest_path(stale), (long_ago, long_ago))
    assert not endpoint.knows(REPO, stale) and endpoint.knows(REPO, fresh)
    endpoint.forget_stale()
    assert not endpoint._member_path(REPO, stale).exists() and endpoint._member_path(REPO, fresh).exists()
    assert endpoint._kept_manifest(stale) is None
