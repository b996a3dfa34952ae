"""A whole deployment on S3 storage (moto's S3 emulator on 127.0.0.1): its own database,
web process (2 gunicorn workers) and bucket. skopeo pushes and pulls, MSR answers layer
GETs with presigned redirects into the bucket, uploads stream as multipart (5 MiB parts
here, so a 12 MiB layer is three parts), a cache node fills itself through the same
redirect, and garbage collection frees bucket space."""

import hashlib
import json
import os
from contextlib import contextmanager

import pytest
import requests

from tests.client import Registry, sha256
from tests.deployments import Deployment
from tests.images import make_image_layout
from tests.processes import MSR, Process, free_port, need, run, start_cache

REDIS = os.environ.get("MSR_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def emulator(s3_emulator):
    return s3_emulator


@pytest.fixture(scope="module")
def site(db_url, emulator, tmp_path_factory):
    """The deployment, its bucket and an admin token."""
    bucket = emulator.bucket()
    base, _, _ = REDIS.rpartition("/")
    deployment = Deployment("s3", tmp_path_factory.mktemp("s3"), db_url, f"{base}/15",
                            extra_env=emulator.env(bucket))
    try:
        token = deployment.with_admin("shop")
        deployment.start_web()
        yield {"deployment": deployment, "bucket": bucket, "token": token, "url": deployment.url,
               "registry": Registry(deployment.url, "admin", token)}
    finally:
        deployment.stop()


@pytest.fixture(scope="module")
def image(site, tmp_path_factory):
    """shop/app:v1 pushed with skopeo: a 12 MiB layer (three parts) and two small ones."""
    need("skopeo")
    layout = tmp_path_factory.mktemp("image")
    digest = make_image_layout(layout, layer_sizes=(12 * MiB + 5, 300_000, 1), tag="v1")
    run(["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", f"admin:{site['token']}",
         f"oci:{layout}:v1", f"docker://{site['url'].removeprefix('http://')}/shop/app:v1"])
    manifest = json.loads((layout / "blobs/sha256" / digest.split(":")[1]).read_bytes())
    layers = {layer["digest"]: (layout / "blobs/sha256" / layer["digest"].split(":")[1]).read_bytes()
              for layer in manifest["layers"]}
    return {"digest": digest, "layers": layers, "config": manifest["config"]["digest"]}


def start_web(deployment, env: dict) -> tuple[Process, str]:
    """One more `msr serve` (one worker) of the deployment, its environment changed by `env`,
    answering: (the process, its URL)."""
    port = free_port()
    web = Process([MSR, "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"], {**deployment.env, **env},
                  deployment.logs / f"web-{port}.log")
    url = f"http://127.0.0.1:{port}"
    try:
        web.wait_http(f"{url}/v2/")
    except BaseException:
        web.stop()
        raise
    return web, url


@contextmanager
def another_web(deployment, env: dict):
    """start_web's URL, the process stopped after."""
    web, url = start_web(deployment, env)
    try:
        yield url
    finally:
        web.stop()


def _keys(emulator, site, prefix):
    return emulator.keys(site["bucket"], prefix)


def test_layers_are_in_the_bucket_and_nowhere_else(emulator, site, image):
    stored = set(_keys(emulator, site, "blobs/"))
    for digest in [*image["layers"], image["config"]]:
        algorithm, _, hexdigest = digest.partition(":")
        assert f"blobs/{algorithm}/{hexdigest[:2]}/{hexdigest}" in stored
    assert _keys(emulator, site, "uploads/") == []  # every upload area cleaned up
    local = site["deployment"].data_dir / "storage"
    assert not local.exists() or not any(p.is_file() for p in local.rglob("*"))


def test_a_layer_get_is_a_presigned_redirect_into_the_bucket(emulator, site, image):
    registry = site["registry"]
    token = registry.token("repository:shop/app:pull")
    big = next(d for d, data in image["layers"].items() if len(data) > 12 * MiB)
    response = registry.request("GET", f"/v2/shop/app/blobs/{big}", token=token)
    assert response.status_code == 307
    location = response.headers["Location"]
    assert location.startswith(f"{emulator.url}/{site['bucket']}/blobs/sha256/")
    assert "X-Amz-Signature=" in location and "X-Amz-Expires=1200" in location
    assert response.headers["Docker-Content-Digest"] == big
    fetched = requests.get(location, timeout=60)  # no MSR credentials needed
    assert fetched.status_code == 200 and hashlib.sha256(fetched.content).hexdigest() == big.split(":")[1]
    ranged = requests.get(location, headers={"Range": "bytes=100-199"}, timeout=60)
    assert ranged.status_code == 206 and ranged.content == image["layers"][big][100:200]
    # HEAD stays with MSR, and the redirect is only for those who may pull
    head = registry.request("HEAD", f"/v2/shop/app/blobs/{big}", token=token)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(image["layers"][big])
    anonymous = Registry(site["url"]).request("GET", f"/v2/shop/app/blobs/{big}")
    assert anonymous.status_code == 401 and "Location" not in anonymous.headers


def test_skopeo_pulls_the_image_back_through_the_redirects(site, image, tmp_path):
    target = tmp_path / "pulled"
    run(["skopeo", "copy", "--src-tls-verify=false", "--src-creds", f"admin:{site['token']}",
         f"docker://{site['url'].removeprefix('http://')}/shop/app:v1", f"oci:{target}:v1"])
    assert json.loads((target / "index.json").read_text())["manifests"][0]["digest"] == image["digest"]
    for digest, data in image["layers"].items():
        assert (target / "blobs/sha256" / digest.split(":")[1]).read_bytes() == data


def test_a_chunked_upload_across_worker_processes(emulator, site):
    """PATCH chunks (3 MiB, not part-aligned) on new connections, so they land on either
    gunicorn worker: the blob is assembled and verified."""
    registry = site["registry"]
    data = os.urandom(11 * MiB + 17)
    token = registry.token("repository:shop/chunked:pull,push")
    started = registry.request("POST", "/v2/shop/chunked/blobs/uploads/", token=token)
    assert started.status_code == 202
    location, offset = started.headers["Location"], 0
    while offset < len(data):
        chunk = data[offset:offset + 3 * MiB]
        patched = requests.patch(f"{site['url']}{location}", data=chunk, timeout=60, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream",
            "Content-Range": f"{offset}-{offset + len(chunk) - 1}", "Connection": "close"})
        assert patched.status_code == 202, patched.text
        offset += len(chunk)
        assert patched.headers["Range"] == f"0-{offset - 1}"
        location = patched.headers["Location"]
    done = requests.put(f"{site['url']}{location}", params={"digest": sha256(data)}, timeout=60,
                        headers={"Authorization": f"Bearer {token}", "Connection": "close"})
    assert done.status_code == 201, done.text
    head = registry.request("HEAD", f"/v2/shop/chunked/blobs/{sha256(data)}", token=token)
    assert int(head.headers["Content-Length"]) == len(data)
    fetched = requests.get(registry.request("GET", f"/v2/shop/chunked/blobs/{sha256(data)}", token=token)
                           .headers["Location"], timeout=60)
    assert fetched.content == data


def test_a_wrong_digest_leaves_nothing_in_the_bucket(emulator, site):
    registry = site["registry"]
    data = os.urandom(6 * MiB)
    claimed = sha256(b"not these bytes")
    response = registry.request("POST", f"/v2/shop/wrong/blobs/uploads/?digest={claimed}",
                                scope="repository:shop/wrong:pull,push", data=data)
    assert response.status_code == 400 and response.json()["errors"][0]["code"] == "DIGEST_INVALID"
    stored = _keys(emulator, site, "blobs/")
    assert not any(key.endswith(claimed.split(":")[1]) or key.endswith(sha256(data).split(":")[1])
                   for key in stored)
    assert _keys(emulator, site, "uploads/") == []


def test_a_cache_node_fills_itself_through_the_bucket_redirect(site, image, tmp_path, artifacts_dir):
    deployment = site["deployment"]
    process, cache_url = start_cache("s3-region", site["url"], tmp_path / "cache", artifacts_dir / "logs")
    try:
        deployment.shell(
            "from accounts.models import User\n"
            "from caches.models import ContentCache, UserCacheChoice\n"
            f"cache = ContentCache.objects.create(name='s3-region', url='{cache_url}', healthy=True)\n"
            "UserCacheChoice.objects.create(user=User.objects.get(username='admin'), cache=cache)\n")
        registry = site["registry"]
        token = registry.token("repository:shop/app:pull")
        big = next(d for d, data in image["layers"].items() if len(data) > 12 * MiB)
        redirect = registry.request("GET", f"/v2/shop/app/blobs/{big}", token=token)
        assert redirect.status_code == 307 and redirect.headers["Location"].startswith(cache_url)
        for _ in range(2):  # a miss (MSR → 307 → bucket), then a hit
            served = requests.get(redirect.headers["Location"], timeout=60)
            assert served.status_code == 200 and served.content == image["layers"][big]
        stats = requests.get(f"{cache_url}/stats", timeout=5).json()
        assert stats["upstream_fetches"] == 1 and stats["hits"] >= 1
    finally:
        deployment.shell("from caches.models import ContentCache\n"
                         "ContentCache.objects.filter(name='s3-region').delete()\n")
        process.stop()


def test_redirects_off_msr_streams_from_the_bucket_with_ranges(site, image):
    """MSR_S3_REDIRECT=false (clients that cannot reach the bucket): MSR serves the bytes."""
    deployment = site["deployment"]
    with another_web(deployment, {"MSR_S3_REDIRECT": "false"}) as url:
        registry = Registry(url, "admin", site["token"])
        token = registry.token("repository:shop/app:pull")
        big = next(d for d, data in image["layers"].items() if len(data) > 12 * MiB)
        whole = registry.request("GET", f"/v2/shop/app/blobs/{big}", token=token)
        assert whole.status_code == 200 and whole.content == image["layers"][big]
        part = registry.request("GET", f"/v2/shop/app/blobs/{big}", token=token,
                                headers={"Range": f"bytes={6 * MiB}-{6 * MiB + 99}"})
        assert part.status_code == 206 and part.content == image["layers"][big][6 * MiB:6 * MiB + 100]
        assert requests.get(f"{url}/readyz", timeout=10).status_code == 200


def test_garbage_collection_frees_bucket_space(emulator, site, image):
    registry = site["registry"]
    orphan = os.urandom(7 * MiB)
    assert registry.push_blob("shop/orphan", orphan).status_code == 201
    key = f"blobs/sha256/{sha256(orphan)[7:9]}/{sha256(orphan)[7:]}"
    assert key in _keys(emulator, site, "blobs/")
    report = json.loads(site["deployment"].manage("gc", "--grace", "0", "--json").stdout)
    assert report["blobs"] >= 1 and report["blob_bytes"] >= len(orphan)
    stored = _keys(emulator, site, "")
    assert key not in stored
    assert not any(k.startswith("gc-aside/") for k in stored)
    for digest in image["layers"]:  # what the tagged image uses stays
        assert f"blobs/sha256/{digest[7:9]}/{digest[7:]}" in stored


def test_readyz_names_an_unreachable_bucket(site):
    deployment = site["deployment"]
    with another_web(deployment, {"MSR_S3_BUCKET": "no-such-bucket"}) as url:
        response = requests.get(f"{url}/readyz", timeout=30)
        assert response.status_code == 503 and "storage" in response.text


@pytest.mark.parametrize("env, message", [
    ({"MSR_STORAGE": "nfs"}, "MSR_STORAGE='nfs': expected filesystem or s3"),
    ({"MSR_STORAGE": "s3"}, "MSR_STORAGE=s3 needs MSR_S3_BUCKET"),
    ({"MSR_STORAGE": "s3", "MSR_S3_BUCKET": "b", "MSR_S3_PART_SIZE": "1048576"}, "at least 5 MiB"),
    ({"MSR_STORAGE": "s3", "MSR_S3_BUCKET": "b", "MSR_S3_ADDRESSING_STYLE": "dns"}, "expected auto, path or virtual"),
])
def test_a_wrong_storage_setting_stops_msr_with_its_name(tmp_path, env, message):
    import subprocess

    result = subprocess.run([MSR, "manage", "check"], capture_output=True, text=True, timeout=60,
                            env={**{k: v for k, v in os.environ.items() if not k.startswith("MSR_")},
                                 "MSR_DATA_DIR": str(tmp_path), **env})
    assert result.returncode != 0 and message in result.stderr


def test_readyz_answers_in_seconds_when_the_bucket_hangs(site):
    """An endpoint that takes the connection and never answers (a hung S3 gateway):
    /readyz still answers promptly, naming the storage, instead of waiting out boto3's
    timeouts and retries (minutes)."""
    import socket
    import time

    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(64)  # the kernel completes connections; nobody ever reads or answers
        endpoint = f"http://127.0.0.1:{blackhole.getsockname()[1]}"
        web, url = start_web(site["deployment"], {"MSR_S3_ENDPOINT_URL": endpoint})
        try:
            for _ in range(2):  # the second probe finds the first one's check still hung
                started = time.monotonic()
                response = requests.get(f"{url}/readyz", timeout=60)
                assert time.monotonic() - started < 15
                body = response.json()
                assert response.status_code == 503 and body["failing"] == ["storage"], body
                assert body["checks"]["storage"]["error"] == "no answer within 3 s"
                assert body["checks"]["database"]["ok"] and body["checks"]["broker"]["ok"]
        finally:
            web.stop()  # SIGTERM; killed only if it has not exited 15 s later
    # A graceful stop: the checks' hung threads (daemons) do not hold the worker's exit
    # until gunicorn's graceful timeout kills it.
    assert web.popen.returncode == 0, web.popen.returncode


def test_pushes_get_a_503_not_a_500_while_the_bucket_is_unreachable(site):
    """The S3 endpoint refuses connections (down): an upload is answered 503 UNAVAILABLE
    with Retry-After, in the OCI error format, and nothing is half-written."""
    deployment = site["deployment"]
    with another_web(deployment, {"MSR_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}) as url:
        registry = Registry(url, "admin", site["token"])
        data = b"pushed while S3 is down"
        response = registry.request("POST", f"/v2/shop/down/blobs/uploads/?digest={sha256(data)}",
                                    scope="repository:shop/down:pull,push", data=data)
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "5"
        assert response.json()["errors"][0]["code"] == "UNAVAILABLE"
        assert "blob storage" in response.json()["errors"][0]["message"]
        assert deployment.shell("from msr.models import Upload\n"
                                "print(Upload.objects.filter(repository__name='down').count())").strip() == "0"
    # the same push through the healthy web process succeeds: nothing was left behind
    assert site["registry"].push_blob("shop/down", data).status_code == 201
