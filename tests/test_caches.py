"""Regional caches with real processes: MSR, cache nodes `asia` and `china` (chained
behind asia), skopeo pulls that MSR redirects to the user's cache."""

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.client import Registry, sha256
from tests.fixtures.caches import blob_grant, get_blob, layer, nodes, stats, users  # noqa: F401  (fixtures)
from tests.images import make_image_layout
from tests.processes import need, run, start_cache


def _public_image(msr, personas, unique, tmp_path, layers=(300_000, 500_000, 700_000)):
    from msr.services import find_repository

    name = f"acme/cached-{unique}"
    source = tmp_path / f"image-{unique}"
    digest = make_image_layout(source, layer_sizes=layers)
    run(["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", f"alice:{personas['alice'].token}",
         f"oci:{source}:v1", f"docker://{msr.removeprefix('http://')}/{name}:v1"])
    repository = find_repository(name)
    repository.visibility = "public"
    repository.save()
    blobs = len(list((source / "blobs/sha256").iterdir())) - 1  # all but the manifest
    return name, digest, blobs


def _pull(msr, name, creds, target):
    run(["skopeo", "copy", "--src-tls-verify=false", "--src-creds", creds,
         f"docker://{msr.removeprefix('http://')}/{name}:v1", f"oci:{target}:v1"])
    return json.loads((target / "index.json").read_text())["manifests"][0]["digest"]


def test_pulls_go_through_the_users_cache_and_chained_caches_fill_once(msr, personas, nodes, users, unique, tmp_path):
    need("skopeo")
    asia, china = nodes["asia"], nodes["china"]
    name, digest, blobs = _public_image(msr, personas, unique, tmp_path)

    before = stats(asia)
    assert _pull(msr, name, users["asiaone"], tmp_path / "a1") == digest
    after_first = stats(asia)
    assert after_first["upstream_fetches"] - before["upstream_fetches"] == blobs  # every layer via asia
    assert after_first["misses"] - before["misses"] == blobs

    assert _pull(msr, name, users["asiatwo"], tmp_path / "a2") == digest
    after_second = stats(asia)
    assert after_second["upstream_fetches"] == after_first["upstream_fetches"]  # nothing from MSR
    assert after_second["hits"] - after_first["hits"] >= blobs

    # A second image, first pulled in china: china fetches from asia, asia from MSR, once each.
    name2, digest2, blobs2 = _public_image(msr, personas, unique + "b", tmp_path)
    asia_before, china_before = stats(asia), stats(china)
    assert _pull(msr, name2, users["chinaone"], tmp_path / "c1") == digest2
    assert stats(china)["upstream_fetches"] - china_before["upstream_fetches"] == blobs2
    assert stats(asia)["upstream_fetches"] - asia_before["upstream_fetches"] == blobs2
    assert _pull(msr, name2, users["asiaone"], tmp_path / "a3") == digest2
    assert stats(asia)["upstream_fetches"] - asia_before["upstream_fetches"] == blobs2


# -- security ----------------------------------------------------------------------------


def test_the_cache_serves_a_valid_grant(nodes, layer):
    data, digest = layer
    response = get_blob(nodes["asia"], "acme/private-app", digest, blob_grant(digest=digest))
    assert response.status_code == 200 and response.content == data
    ranged = get_blob(nodes["asia"], "acme/private-app", digest, blob_grant(digest=digest),
                      headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206 and ranged.content == data[10:20]


@pytest.mark.parametrize("case,status", [
    ("none", 401), ("tampered", 401), ("expired", 401), ("other-digest", 403), ("other-repository", 403),
    ("other-cache", 403), ("foreign-key", 401), ("access-token", 401),
])
def test_the_cache_refuses_bad_grants(nodes, layer, case, status):
    import base64

    import jwt as pyjwt
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data, digest = layer
    grant = {
        "none": "",
        "tampered": None,
        "expired": blob_grant(digest=digest, ttl=-30),
        "other-digest": blob_grant(digest=sha256(b"other")),
        "other-repository": blob_grant(digest=digest, repo="acme/public-app"),
        "other-cache": blob_grant(digest=digest, aud=["china"]),
        "foreign-key": pyjwt.encode({"typ": "blob-grant", "aud": ["asia"], "repo": "acme/private-app",
                                     "digest": digest, "exp": int(time.time()) + 60},
                                    Ed25519PrivateKey.generate(), algorithm="EdDSA"),
        "access-token": blob_grant(digest=digest, typ="access"),
    }[case]
    if case == "tampered":
        header, payload, signature = blob_grant(digest=sha256(b"cheap")).split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
        claims["digest"] = digest
        forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        grant = f"{header}.{forged}.{signature}"
    response = get_blob(nodes["asia"], "acme/private-app", digest, grant)
    assert response.status_code == status, response.text
    assert response.json()["errors"][0]["code"] in ("UNAUTHORIZED", "DENIED")
    assert data not in response.content


def test_a_user_without_pull_access_gets_no_redirect(msr, personas, nodes, layer):
    from caches.models import ContentCache, UserCacheChoice

    _, digest = layer
    UserCacheChoice.objects.update_or_create(user=personas["carol"].user,
                                             defaults={"cache": ContentCache.objects.get(name="asia")})
    try:
        carol = Registry(msr, "carol", personas["carol"].token)
        response = carol.request("GET", f"/v2/acme/private-app/blobs/{digest}",
                                 scope="repository:acme/private-app:pull")
        assert response.status_code == 401 and "Location" not in response.headers
        bob = Registry(msr, "bob", personas["bob"].token)  # read-only team, no cache chosen
        assert bob.request("GET", f"/v2/acme/private-app/blobs/{digest}",
                           scope="repository:acme/private-app:pull").status_code == 200
        own = carol.request("GET", f"/v2/acme/public-app/blobs/{digest}", scope="repository:acme/public-app:pull")
        assert own.status_code == 404  # not linked to the public repository: no redirect either
    finally:
        UserCacheChoice.objects.filter(user=personas["carol"].user).delete()


def test_msr_redirects_with_a_grant_the_cache_accepts(msr, personas, nodes, layer):
    from caches.models import ContentCache, UserCacheChoice

    data, digest = layer
    UserCacheChoice.objects.update_or_create(user=personas["adam"].user,
                                             defaults={"cache": ContentCache.objects.get(name="asia")})
    try:
        adam = Registry(msr, "adam", personas["adam"].token)
        response = adam.request("GET", f"/v2/acme/private-app/blobs/{digest}",
                                scope="repository:acme/private-app:pull")
        assert response.status_code == 307
        location = response.headers["Location"]
        assert location.startswith(f"{nodes['asia']}/v2/acme/private-app/blobs/{digest}?grant=")
        assert requests.get(location, timeout=30).content == data
    finally:
        UserCacheChoice.objects.filter(user=personas["adam"].user).delete()


# -- faults ------------------------------------------------------------------------------


def test_a_cache_that_is_down_is_not_used_and_the_pull_succeeds_from_msr(msr, personas, unique, tmp_path,
                                                                        artifacts_dir):
    need("skopeo")
    from accounts.services import create_user
    from caches.models import ContentCache, UserCacheChoice
    from caches.tasks import check_caches

    process, url = start_cache(f"flaky{unique}", msr, tmp_path / "flaky", artifacts_dir / "logs")
    cache = ContentCache.objects.create(name=f"flaky{unique}", url=url)
    user = create_user(f"far{unique}", "far-password-1")
    UserCacheChoice.objects.create(user=user, cache=cache)
    name, digest, _ = _public_image(msr, personas, unique, tmp_path)
    process.stop()
    check_caches()
    cache.refresh_from_db()
    assert cache.healthy is False and cache.last_error
    assert _pull(msr, name, f"far{unique}:far-password-1", tmp_path / "pulled") == digest


def test_a_failing_health_check_reads_as_a_sentence_with_the_raw_error_beside_it(unique):
    """What the console shows for the usual failures: nothing listening, a proxy answering
    503 for its node, a node that accepts the connection and never answers."""
    import socket

    from caches.models import ContentCache
    from caches.tasks import check_cache
    from tests.processes import free_port

    class Unavailable(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel accepts connections; nobody reads or answers them
    refused, unavailable, mute = (f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{proxy.server_address[1]}",
                                  f"http://127.0.0.1:{silent.getsockname()[1]}")
    caches = [ContentCache.objects.create(name=f"{kind}{unique}", url=url)
              for kind, url in (("refused", refused), ("unavailable", unavailable), ("mute", mute))]
    try:
        for cache in caches:
            assert check_cache(cache) is False
            cache.refresh_from_db()
        assert [c.last_error for c in caches] == [
            f"Cannot reach the cache node at {refused}: connection refused.",
            f"The cache node at {unavailable} answered 503 Service Unavailable instead of its statistics.",
            f"Cannot reach the cache node at {mute}: timed out.",
        ]
        assert caches[0].last_error_detail.startswith("ConnectionError: ") and \
            "Connection refused" in caches[0].last_error_detail
        assert caches[1].last_error_detail == f"GET {unavailable}/stats: HTTP 503 Service Unavailable"
        assert caches[2].last_error_detail.startswith(("ReadTimeout: ", "ConnectTimeout: "))
    finally:
        proxy.shutdown()
        silent.close()
        for cache in caches:
            cache.delete()


class CuttingProxy:
    """Forwards blob requests to MSR; the first `faults` answers are cut after `cut`
    bytes (mode "cut") or have one byte changed (mode "corrupt")."""

    def __init__(self, target: str, mode: str, faults=1, cut=50_000):
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                proxy.requests += 1
                upstream = requests.get(target + self.path, stream=True, timeout=30)
                body = upstream.content
                self.send_response(upstream.status_code)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                faulty = proxy.requests <= faults and upstream.status_code == 200
                if faulty and mode == "cut":
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if faulty and mode == "corrupt":
                    body = body[:100] + bytes([body[100] ^ 0xFF]) + body[101:]
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.mark.parametrize("mode", ["cut", "corrupt"])
def test_a_cut_or_corrupt_upstream_is_never_published_and_the_next_pull_succeeds(
        msr, personas, unique, tmp_path, artifacts_dir, mode):
    alice = Registry(msr, "alice", personas["alice"].token)
    data = hashlib.sha512(unique.encode()).digest() * 20_000  # 1.28 MB
    digest = sha256(data)
    alice.push_blob("acme/private-app", data)
    proxy = CuttingProxy(msr, mode)
    name = f"edge{mode}{unique}"
    process, node = start_cache(name, msr, tmp_path / "edge", artifacts_dir / "logs", upstream=proxy.url)
    try:
        grant = blob_grant(cache=name, digest=digest)
        try:
            response = get_blob(node, "acme/private-app", digest, grant, stream=True)
            body = b"".join(response.iter_content(65536))
            # An early failure is a 502; a late one ends the body short.
            failed = response.status_code == 502 or len(body) < len(data)
        except requests.exceptions.RequestException:
            failed = True
        assert failed
        published = tmp_path / "edge" / "blobs" / "sha256" / digest[7:9] / digest[7:]
        assert not published.exists()
        assert list((tmp_path / "edge" / "tmp").iterdir()) == []
        again = get_blob(node, "acme/private-app", digest, grant)
        assert again.status_code == 200 and again.content == data
        assert published.read_bytes() == data
        assert stats(node)["upstream_failures"] == 1
    finally:
        process.stop()


def test_fifty_concurrent_cold_requests_make_one_upstream_fetch(msr, personas, unique, tmp_path, artifacts_dir):
    alice = Registry(msr, "alice", personas["alice"].token)
    data = hashlib.sha512(b"cold" + unique.encode()).digest() * 40_000  # 2.5 MB
    digest = sha256(data)
    alice.push_blob("acme/private-app", data)
    name = f"cold{unique}"
    process, node = start_cache(name, msr, tmp_path / "cold", artifacts_dir / "logs", workers=2)
    try:
        grant = blob_grant(cache=name, digest=digest)
        results = [None] * 50

        def fetch(i):
            results[i] = hashlib.sha256(get_blob(node, "acme/private-app", digest, grant).content).hexdigest()

        threads = [threading.Thread(target=fetch, args=(i,)) for i in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == [digest[7:]] * 50
        counters = stats(node)
        assert counters["upstream_fetches"] == 1
        assert counters["misses"] == 1 and counters["hits"] == 49
    finally:
        process.stop()
