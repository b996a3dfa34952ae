"""A region of several cache nodes behind one address on one shared S3 store (issue 18),
with real processes (tests/region.py): three nodes of one cache name on moto's S3 (atomic
conditional writes), nginx round robin in front of them as the region's address (the URL
registered in MSR), and a FaultProxy in front of MSR as every node's --upstream, which
counts the fills and can slow them down.

What an operator relies on: however the load balancer spreads the requests, the region
fetches a layer from upstream once; a node that dies in the middle of a fill leaves no
object in the bucket and its clients a short body, and another node takes over; the
region's size budget and a purge hold for the bucket, whichever node acts; skopeo and
podman pull through the region in both ways a region is used (MSR's redirect with a grant,
and the region's address as the registry); a node with --s3-redirect answers hits with
the bucket's presigned URL, which skopeo follows.
"""

import base64
import hashlib
import json
import os
import threading
import time
from collections import Counter

import pytest
import requests

from tests.client import Registry, sha256
from tests.faults import FaultProxy
from tests.fixtures.caches import blob_grant
from tests.images import make_image_layout
from tests.processes import need, run
from tests.region import NGINX, Region
from tests.s3 import S3Emulator
from tests.test_caches import _pull as skopeo_pull
from tests.test_regional_clients import _podman_pull, push_layout

NAME = "region18"
REPO = "acme/private-app"  # private: alice owns acme
BUDGET = 12 << 20


@pytest.fixture(scope="module")
def upstream(msr):
    """MSR as the region's nodes fill from it: every blob GET is counted here."""
    proxy = FaultProxy(msr)
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def region(msr, upstream, artifacts_dir, tmp_path_factory):
    from caches.models import ContentCache

    need("nginx", NGINX)
    s3 = S3Emulator(artifacts_dir / "logs", atomic=True)
    try:
        region = Region(NAME, msr, upstream.url, s3, tmp_path_factory.mktemp("region"), artifacts_dir / "logs",
                        nodes=3, max_size="12M", lease_ttl="3s", evict_interval=1)
    except BaseException:
        s3.stop()
        raise
    # The region's one address, as an operator registers it.
    ContentCache.objects.update_or_create(name=NAME, defaults={"url": region.url, "healthy": True, "enabled": True})
    yield region
    ContentCache.objects.filter(name=NAME).delete()
    region.stop()
    s3.stop()


def push(msr, personas, data: bytes) -> str:
    response = Registry(msr, "alice", personas["alice"].token).push_blob(REPO, data)
    assert response.status_code == 201, response.text
    return sha256(data)


def blob_url(base: str, digest: str) -> str:
    return f"{base}/v2/{REPO}/blobs/{digest}"


def crossed(upstream: FaultProxy, since: int) -> list:
    """What reached MSR from the region since `since` (without the grants in the query)."""
    return [(method, path.split("?")[0], status) for method, path, status in upstream.seen[since:]]


def fetched(upstream: FaultProxy, since: int, digest: str) -> list:
    """The blob GETs of `digest` that reached MSR since `since`."""
    return [(method, path, status) for method, path, status in crossed(upstream, since)
            if method == "GET" and path.endswith(f"/blobs/{digest}")]


def wait_for(predicate, seconds=20, step=0.2):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


# -- one fetch per region ---------------------------------------------------------------------


def test_fifty_cold_requests_spread_over_every_node_make_one_upstream_fetch(region, upstream, msr, personas):
    data = os.urandom(3 << 20)
    digest = push(msr, personas, data)
    grant = blob_grant(cache=NAME, repo=REPO, digest=digest)
    since, logged, own_before = len(upstream.seen), len(region.nginx.access()), region.own_upstream_fetches()
    results = [None] * 50
    start = threading.Barrier(50)

    def fetch(i):
        start.wait()
        response = requests.get(blob_url(region.url, digest), params={"grant": grant}, timeout=120)
        results[i] = (response.status_code, hashlib.sha256(response.content).hexdigest())

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == [(200, digest[7:])] * 50, Counter(results)
    assert len(fetched(upstream, since, digest)) == 1, crossed(upstream, since)
    served = Counter(entry["upstream"] for entry in region.nginx.access()[logged:] if digest in entry["request"])
    assert set(served) == {node.address for node in region.nodes}, served  # every node answered some
    assert region.wait_stored(digest) == digest
    assert region.blob_keys(digest) == [region.blob_key(digest)]
    # The nodes' own account agrees: one of them fetched, once.
    assert wait_for(lambda: region.own_upstream_fetches() - own_before == 1, 5)
    assert region.own_upstream_fetches() - own_before == 1


# -- a filler that dies -------------------------------------------------------------------


def test_a_filler_killed_mid_fill_publishes_nothing_and_another_node_takes_over(region, upstream, msr, personas):
    data = os.urandom(4 << 20)
    digest = push(msr, personas, data)
    grant = {"grant": blob_grant(cache=NAME, repo=REPO, digest=digest)}
    filler, follower = region.nodes[0], region.nodes[1]
    since = len(upstream.seen)
    bodies, progress, errors = {}, Counter(), {}

    def read(label, url):
        body = bytearray()
        try:
            with requests.get(url, params=grant, stream=True, timeout=60) as response:
                if response.status_code != 200:
                    errors[label] = f"{response.status_code}: {response.text[:300]}"
                    return
                for chunk in response.iter_content(65536):
                    body += chunk
                    progress[label] = len(body)
        except requests.RequestException as e:  # the cut: a short body, a reset connection
            errors[label] = repr(e)
        finally:
            bodies[label] = bytes(body)

    # Whatever the bucket holds for the digest at any moment is the right bytes (or nothing).
    watching, wrong = threading.Event(), []

    def watch():
        while not watching.is_set():
            found = region.stored(digest)
            if found not in (None, digest):
                wrong.append(found)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    upstream.download_bytes_per_second = 1 << 20  # four seconds for the layer
    try:
        readers = [threading.Thread(target=read, args=("filler", blob_url(filler.url, digest)))]
        readers[0].start()
        lease = region.wait_lease(digest)
        assert lease["url"] == filler.url, lease  # the node asked first fills
        readers.append(threading.Thread(target=read, args=("follower", blob_url(follower.url, digest))))
        readers[1].start()
        # Both clients are being served from the fill in progress, neither has it all.
        assert wait_for(lambda: progress["filler"] >= 512 << 10 and progress["follower"] >= 256 << 10, 10,
                        0.02), (progress, errors)
        region.kill(filler)
        upstream.download_bytes_per_second = 0
        for reader in readers:
            reader.join(60)
        for label in ("filler", "follower"):
            received, right = len(bodies[label]), data.startswith(bodies[label])
            assert received < len(data), f"the {label}'s client got a whole body from a killed fill"
            assert right, f"the {label}'s client got wrong bytes"
        assert region.blob_keys(digest) == [], "an object of a fill that never completed"

        # The next pull through the region's address: once the dead node's lease is past its
        # TTL another node takes it over and fills; before that, a short body or an error
        # at most, never wrong bytes.
        attempts = []

        def pull_succeeds():
            try:
                response = requests.get(blob_url(region.url, digest), params=grant, timeout=30)
            except requests.RequestException as e:
                attempts.append(repr(e))
                return False
            whole = response.content == data
            attempts.append((response.status_code, len(response.content), response.headers.get("X-Cache")))
            if response.status_code == 200 and not whole:
                short_and_right = len(response.content) < len(data) and data.startswith(response.content)
                assert short_and_right, f"wrong bytes after the takeover: {attempts}"
            return response.status_code == 200 and whole

        assert wait_for(pull_succeeds, 30, 0.5), attempts
        assert region.wait_stored(digest) == digest
        assert region.blob_keys(digest) == [region.blob_key(digest)]
        # The killed fill and the one that took over: nothing else crossed.
        assert len(fetched(upstream, since, digest)) == 2, crossed(upstream, since)
        watching.set()
        watcher.join()
        assert wrong == []
    finally:
        watching.set()
        upstream.download_bytes_per_second = 0
        if filler.process.popen.poll() is not None:
            region.start(filler)  # back on its data dir and port, for the tests that follow


# -- the region's budget and purge --------------------------------------------------------------


def test_the_bucket_stays_within_the_regions_budget_whichever_node_fills(region, msr, personas):
    from caches.models import ContentCache
    from caches.tasks import check_cache

    layers = [os.urandom(3 << 20) for _ in range(5)]  # 15 MiB for a 12 MiB region
    digests = [push(msr, personas, data) for data in layers]
    logged = len(region.nginx.access())
    for data, digest in zip(layers, digests):  # round robin: through different nodes
        response = requests.get(blob_url(region.url, digest), timeout=60,
                                params={"grant": blob_grant(cache=NAME, repo=REPO, digest=digest)})
        assert response.status_code == 200 and sha256(response.content) == digest
        assert region.wait_stored(digest) == digest
    fillers = {entry["upstream"] for entry in region.nginx.access()[logged:] if "/blobs/" in entry["request"]}
    assert len(fillers) > 1, fillers
    assert wait_for(lambda: region.blobs_size() <= BUDGET, 20), region.blobs_size()
    kept = [digest for digest in digests if region.blob_keys(digest)]
    assert digests[-1] in kept and len(kept) < len(digests), kept  # the least recently used went
    # What MSR's health check reads through the one address: the region's bytes and budget
    # (the nodes' view of the bucket may trail it by a heartbeat).
    def stats():
        return requests.get(f"{region.url}/stats", timeout=5).json()

    assert stats()["store"] == region.store and stats()["region"]["budget"] == BUDGET
    assert wait_for(lambda: stats()["disk_used"] <= BUDGET, 15), stats()
    cache = ContentCache.objects.get(name=NAME)
    assert check_cache(cache), ContentCache.objects.get(name=NAME).last_error
    assert 0 < cache.metrics.latest("at").disk_used <= BUDGET


def test_a_purge_through_the_regions_address_removes_the_blob_for_every_node(region, upstream, msr, personas):
    from caches.models import ContentCache

    data = os.urandom(1 << 20)
    digest = push(msr, personas, data)
    grant = {"grant": blob_grant(cache=NAME, repo=REPO, digest=digest)}
    logged = len(region.nginx.access())
    assert sha256(requests.get(blob_url(region.url, digest), params=grant, timeout=60).content) == digest
    assert region.wait_stored(digest) == digest
    filled_by = next(entry["upstream"] for entry in region.nginx.access()[logged:] if digest in entry["request"])

    admin = requests.Session()
    admin.auth = ("admin", personas["admin"].token)
    cache_id = ContentCache.objects.get(name=NAME).pk
    purged = admin.post(f"{msr}/api/v0/content_caches/{cache_id}/purge", json={"digest": digest}, timeout=30)
    assert purged.status_code == 200 and purged.json()["removed"] == 1, purged.text
    assert region.blob_keys(digest) == []

    # Another node than the one that filled: a miss, filled again from upstream.
    since = len(upstream.seen)
    other = next(node for node in region.nodes if node.address != filled_by)
    again = requests.get(blob_url(other.url, digest), params=grant, timeout=60)
    assert (again.status_code, sha256(again.content), again.headers.get("X-Cache")) == (200, digest, "MISS")
    assert len(fetched(upstream, since, digest)) == 1
    for node in region.nodes:  # and then a hit on every node, from the bucket
        response = requests.get(blob_url(node.url, digest), params=grant, timeout=60)
        assert (response.status_code, sha256(response.content)) == (200, digest), node
    assert len(fetched(upstream, since, digest)) == 1
    assert region.wait_stored(digest) == digest


def test_a_purge_while_a_node_fills_keeps_the_blob_out_of_the_bucket(region, upstream, msr, personas):
    """The purge lands (through the region's address, on any node) while the filler is still
    fetching: its client still gets the whole layer, but the fill does not bring the blob
    back into the bucket after the purge; the next request is a miss again."""
    from caches.models import ContentCache

    data = os.urandom(3 << 20)
    digest = push(msr, personas, data)
    grant = {"grant": blob_grant(cache=NAME, repo=REPO, digest=digest)}
    filler = region.nodes[0]
    body, progress = {}, Counter()

    def read():
        received = bytearray()
        with requests.get(blob_url(filler.url, digest), params=grant, stream=True, timeout=60) as response:
            body["status"] = response.status_code
            for chunk in response.iter_content(65536):
                received += chunk
                progress["bytes"] = len(received)
        body["data"] = bytes(received)

    upstream.download_bytes_per_second = 1 << 20  # three seconds for the layer
    reader = threading.Thread(target=read)
    try:
        reader.start()
        region.wait_lease(digest)
        assert wait_for(lambda: progress["bytes"] >= 256 << 10, 10, 0.02), progress
        admin = requests.Session()
        admin.auth = ("admin", personas["admin"].token)
        cache_id = ContentCache.objects.get(name=NAME).pk
        purged = admin.post(f"{msr}/api/v0/content_caches/{cache_id}/purge", json={"digest": digest}, timeout=30)
        assert purged.status_code == 200, purged.text
        assert progress["bytes"] < len(data), "the fill ended before the purge: nothing tested"
        upstream.download_bytes_per_second = 0
        reader.join(60)
    finally:
        upstream.download_bytes_per_second = 0
    assert body["status"] == 200 and body["data"] == data  # the filler's client: whole and right
    assert wait_for(lambda: region.lease(digest) is None, 15), "the fill never ended"
    assert region.blob_keys(digest) == [], "the fill wrote a purged blob back"
    since = len(upstream.seen)
    again = requests.get(blob_url(region.url, digest), params=grant, timeout=60)
    assert (again.status_code, sha256(again.content), again.headers.get("X-Cache")) == (200, digest, "MISS")
    assert len(fetched(upstream, since, digest)) == 1
    assert region.wait_stored(digest) == digest  # a fill begun after the purge is kept


# -- registry clients, both ways ---------------------------------------------------------------


def _host(url: str) -> str:
    return url.removeprefix("http://")


@pytest.fixture(scope="module")
def seeded_user(region, personas):
    """A user whose cache is the region: MSR redirects their layer GETs to the region's address."""
    from accounts.models import User
    from accounts.services import create_user
    from caches.models import ContentCache, UserCacheChoice

    user = User.objects.filter(username="regionseed").first() or create_user("regionseed", "regionseed-password")
    UserCacheChoice.objects.update_or_create(user=user, defaults={"cache": ContentCache.objects.get(name=NAME)})
    yield "regionseed", "regionseed-password"
    UserCacheChoice.objects.filter(user=user).delete()


def _image(msr, personas, unique, tmp_path, mode) -> dict:
    """A small image of its own blobs: in the seed mode in a public repository of acme (the
    seeded user may pull it), in the endpoint mode in acme/private-app (alice pulls it)."""
    from msr.services import find_repository

    layout = tmp_path / "layout"
    digest = make_image_layout(layout, layer_sizes=(200_000, 300_000))
    name = f"acme/region-{unique}" if mode == "seed" else REPO
    push_layout(msr, personas["alice"], name, "v1" if mode == "seed" else f"region-{unique}", layout, digest)
    if mode == "seed":
        repository = find_repository(name)
        repository.visibility = "public"
        repository.save()
    manifest = json.loads((layout / "blobs" / "sha256" / digest[7:]).read_bytes())
    blobs = [manifest["config"]["digest"], *[layer["digest"] for layer in manifest["layers"]]]
    return {"name": name, "tag": "v1" if mode == "seed" else f"region-{unique}", "digest": digest, "blobs": blobs}


def _assert_filled_once_through_the_region(region, upstream, since, logged, image):
    for digest in image["blobs"]:
        assert len(fetched(upstream, since, digest)) == 1, (digest, crossed(upstream, since))
        assert region.wait_stored(digest) == digest
        assert region.blob_keys(digest) == [region.blob_key(digest)]
        answered = [entry for entry in region.nginx.access()[logged:]
                    if f"/blobs/{digest}" in entry["request"] and entry["request"].startswith("GET ")]
        assert answered and all(entry["status"] == "200" for entry in answered), answered


@pytest.mark.parametrize("mode", ["seed", "endpoint"])
def test_skopeo_pulls_through_the_region(region, upstream, msr, personas, seeded_user, unique, tmp_path, mode):
    need("skopeo")
    image = _image(msr, personas, unique, tmp_path, mode)
    since, logged = len(upstream.seen), len(region.nginx.access())
    if mode == "seed":  # from MSR, which redirects each layer to the region with a grant
        user, password = seeded_user
        pulled = skopeo_pull(msr, image["name"], f"{user}:{password}", tmp_path / "pulled")
    else:  # from the region's address, the registry of the image's name
        target = tmp_path / "pulled"
        run(["skopeo", "copy", "--src-tls-verify=false", "--src-creds", f"alice:{personas['alice'].token}",
             f"docker://{_host(region.url)}/{image['name']}:{image['tag']}", f"oci:{target}:v1"])
        pulled = json.loads((target / "index.json").read_text())["manifests"][0]["digest"]
    assert pulled == image["digest"]
    _assert_filled_once_through_the_region(region, upstream, since, logged, image)


@pytest.mark.parametrize("mode", ["seed", "endpoint"])
def test_podman_pulls_through_the_region(region, upstream, msr, personas, seeded_user, unique, tmp_path, mode):
    need("podman")
    image = _image(msr, personas, unique, tmp_path, mode)
    registry = _host(msr) if mode == "seed" else _host(region.url)
    user, secret = seeded_user if mode == "seed" else ("alice", personas["alice"].token)
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{registry}"\ninsecure = true\n')
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {registry: {"auth": base64.b64encode(
        f"{user}:{secret}".encode()).decode()}}}))
    since, logged = len(upstream.seen), len(region.nginx.access())
    pulled = _podman_pull(tmp_path, {"conf": conf, "authfile": authfile},
                          {"reference": f"{registry}/{image['name']}:{image['tag']}"}, mode)
    assert pulled["Digest"] == image["digest"]
    _assert_filled_once_through_the_region(region, upstream, since, logged, image)


def test_msr_shows_the_regions_nodes_and_a_stopped_one_as_down_while_the_region_stays_in_use(region):
    """MSR's health check through the region's one address records the store and every
    node's heartbeat (caches/tasks.py region_of); a node that stops shows as down once its
    heartbeat is 15 s old, and the cache stays in use while its address answers."""
    from caches.models import ContentCache
    from caches.tasks import check_cache

    cache = ContentCache.objects.get(name=NAME)

    def checked():
        assert check_cache(cache), ContentCache.objects.get(name=NAME).last_error
        cache.refresh_from_db()
        return cache

    assert wait_for(lambda: checked().nodes_healthy == 3, 20, 1), cache.nodes
    assert cache.store == region.store
    assert sorted(node["url"] for node in cache.nodes) == sorted(node.url for node in region.nodes)
    stopped = region.nodes[-1]
    region.kill(stopped)
    try:
        assert wait_for(lambda: checked().nodes_healthy == 2, 40, 1), cache.nodes
        down = [node for node in cache.nodes if not node["healthy"]]
        assert [node["url"] for node in down] == [stopped.url] and down[0]["age"] >= 15, down
        assert cache.healthy and len(cache.nodes) == 3
    finally:
        region.start(stopped)  # back on its data dir and port
    assert wait_for(lambda: checked().nodes_healthy == 3, 30, 1), cache.nodes


def test_a_node_with_s3_redirect_answers_hits_with_the_buckets_presigned_url(region, upstream, msr, personas,
                                                                             unique, tmp_path, artifacts_dir):
    """`--s3-redirect`: a hit is a 307 to a presigned GET on the bucket, which skopeo follows
    (the region's address as its registry) and a grant's GET too; misses are still filled
    once for the region and streamed."""
    from tests.processes import start_cache
    from tests.s3 import CREDENTIALS

    need("skopeo")
    env = {"MSR_CACHE_S3_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
           "MSR_CACHE_S3_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"]}
    process, node = start_cache(NAME, msr, tmp_path / "redirecting", artifacts_dir / "logs", upstream=upstream.url,
                                workers=1, extra_env=env, extra_args=[
                                    "--store", region.store, "--s3-endpoint", region.s3.url,
                                    "--s3-public-endpoint", region.s3.url, "--s3-addressing-style", "path",
                                    "--s3-region", CREDENTIALS["region_name"], "--s3-redirect", "--node-url",
                                    "http://127.0.0.1:1", "--lease-ttl", "3s", "--max-size", "12M"])
    try:
        image = _image(msr, personas, unique, tmp_path, "endpoint")
        reference = f"docker://{_host(node)}/{image['name']}:{image['tag']}"
        since = len(upstream.seen)
        own = {}
        for attempt in ("cold", "warm"):
            target = tmp_path / attempt
            run(["skopeo", "copy", "--src-tls-verify=false", "--src-creds", f"alice:{personas['alice'].token}",
                 reference, f"oci:{target}:v1"])
            assert json.loads((target / "index.json").read_text())["manifests"][0]["digest"] == image["digest"]
            for digest in image["blobs"]:
                assert region.wait_stored(digest) == digest
            own[attempt] = requests.get(f"{node}/stats", timeout=10).json()["self"]
        # The warm pull's layers were hits the node answered with redirects, not bytes.
        assert own["warm"]["hits"] - own["cold"]["hits"] >= len(image["blobs"]), own
        assert own["warm"]["bytes_from_disk"] == own["cold"]["bytes_from_disk"], own
        for digest in image["blobs"]:
            assert len(fetched(upstream, since, digest)) == 1, crossed(upstream, since)
        layer = image["blobs"][-1]
        grant = {"grant": blob_grant(cache=NAME, repo=REPO, digest=layer)}
        answer = requests.get(blob_url(node, layer), params=grant, allow_redirects=False, timeout=30)
        assert answer.status_code == 307 and answer.headers["Location"].startswith(region.s3.url), answer.headers
        assert "X-Amz-Signature=" in answer.headers["Location"]
        assert sha256(requests.get(answer.headers["Location"], timeout=30).content) == layer
        refused = requests.get(blob_url(node, layer), params={"grant": "not-a-grant"}, allow_redirects=False,
                               timeout=30)
        assert refused.status_code == 401  # no presigned URL without a valid grant
    finally:
        process.stop()
