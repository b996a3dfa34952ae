"""Garbage collection (msr/gc.py): what it frees, what it keeps, and that pushes running
at the same moment never end with a tagged image whose bytes are gone.

The collector runs in the test process against the database and storage of the session's
`msr serve`; it sees every repository of the session, so each test checks only its own
content. "Older than the grace period" is made by moving `created_at` back.
"""

import json
import os
import random
import threading
import time
from datetime import timedelta

import pytest
import requests
from django.conf import settings
from django.db import connection
from django.utils import timezone

from msr import gc, uploads
from msr.models import Blob, Event, Manifest, Repository, RepositoryBlob, Upload
from msr.storage import get_storage
from tests.client import Registry, sha256
from tests.processes import MSR, run, start_msr

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
HOUR = 3600


@pytest.fixture
def alice(msr, personas):
    return Registry(msr, "alice", personas["alice"].token)


@pytest.fixture
def repo(unique):
    return f"acme/gc-{unique}"


# -- helpers ---------------------------------------------------------------------------


def repository(name: str) -> Repository:
    namespace, rest = name.split("/", 1)
    return Repository.objects.get(namespace__name=namespace, name=rest)


def age(name: str, seconds: int = 2 * HOUR) -> None:
    """Make everything of repository `name` look pushed `seconds` ago."""
    then = timezone.now() - timedelta(seconds=seconds)
    repo = repository(name)
    Manifest.objects.filter(repository=repo).update(created_at=then)
    RepositoryBlob.objects.filter(repository=repo).update(created_at=then)
    Blob.objects.filter(repository_links__repository=repo).update(created_at=then)


def stored(digest: str) -> bool:
    """The blob's row and its bytes, both there."""
    return Blob.objects.filter(pk=digest).exists() and get_storage().blob_size(digest) is not None


def gone(digest: str) -> bool:
    """Neither the blob's row nor its bytes."""
    return not Blob.objects.filter(pk=digest).exists() and get_storage().blob_size(digest) is None


def manifest_exists(name: str, digest: str) -> bool:
    return Manifest.objects.filter(repository=repository(name), digest=digest).exists()


def layer(size=2048) -> bytes:
    return os.urandom(size)


def push_blob(client: Registry, name: str, data: bytes, token: str | None = None) -> str:
    token = token or client.token(f"repository:{name}:pull,push")
    response = client.request("POST", f"/v2/{name}/blobs/uploads/?digest={sha256(data)}", token=token, data=data)
    assert response.status_code == 201, response.text
    return sha256(data)


def image(client: Registry, name: str, layers, reference: str | None = None, subject: dict | None = None,
          artifact_type: str | None = None) -> tuple[dict, list[str]]:
    """Push an image (a fresh config, `layers`) by `reference`, or by digest when None;
    returns its descriptor and its blob digests."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": os.urandom(8).hex()}).encode()
    blobs = [push_blob(client, name, data) for data in (config, *layers)]
    document = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": blobs[0], "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(d), "size": len(d)} for d in layers],
    }
    if subject:
        document["subject"] = subject
    if artifact_type:
        document["artifactType"] = artifact_type
    body = json.dumps(document).encode()
    response = client.push_manifest(name, reference or sha256(body), body)
    assert response.status_code == 201, response.text
    return {"mediaType": OCI_MANIFEST, "digest": sha256(body), "size": len(body)}, blobs


def index(client: Registry, name: str, children: list[dict], reference: str) -> dict:
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {**child, "platform": {"architecture": f"arch{i}", "os": "linux"}} for i, child in enumerate(children)
    ]}).encode()
    response = client.push_manifest(name, reference, body, OCI_INDEX)
    assert response.status_code == 201, response.text
    return {"mediaType": OCI_INDEX, "digest": sha256(body), "size": len(body)}


def delete_tag(client: Registry, name: str, tag: str) -> None:
    token = client.token(f"repository:{name}:delete")
    assert client.request("DELETE", f"/v2/{name}/manifests/{tag}", token=token).status_code == 202


def pull(client: Registry, name: str, reference: str, token: str | None = None) -> str:
    """Pull an image (an index with its children) completely, checking every blob's bytes
    against its digest; returns the manifest digest."""
    token = token or client.token(f"repository:{name}:pull")
    response = client.request("GET", f"/v2/{name}/manifests/{reference}", token=token,
                              headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"})
    assert response.status_code == 200, f"{name}:{reference}: {response.status_code} {response.text}"
    document = response.json()
    for child in document.get("manifests", []):
        pull(client, name, child["digest"], token)
    for descriptor in [document.get("config"), *document.get("layers", [])]:
        if descriptor is None:
            continue
        blob = client.request("GET", f"/v2/{name}/blobs/{descriptor['digest']}", token=token)
        if blob.status_code == 307:  # S3: a presigned URL into the bucket
            blob = requests.get(blob.headers["Location"], timeout=60)
        assert blob.status_code == 200, f"{name}:{reference} blob {descriptor['digest']}: {blob.status_code} {blob.text}"
        assert sha256(blob.content) == descriptor["digest"]
    return response.headers["Docker-Content-Digest"]


def blob_status(client: Registry, name: str, digest: str) -> int:
    return client.request("GET", f"/v2/{name}/blobs/{digest}", scope=f"repository:{name}:pull").status_code


# -- reachability ------------------------------------------------------------------------


def test_a_deleted_tag_frees_its_manifest_and_blobs_after_the_grace_period(alice, repo):
    layers = [layer(3000), layer(5000)]
    descriptor, blobs = image(alice, repo, layers, "v1")
    delete_tag(alice, repo, "v1")

    gc.collect(grace=HOUR, untagged="delete")
    assert manifest_exists(repo, descriptor["digest"]) and all(stored(b) for b in blobs)

    age(repo)
    report = gc.collect(grace=HOUR, untagged="delete")
    assert not manifest_exists(repo, descriptor["digest"])
    assert all(gone(b) for b in blobs)
    assert blob_status(alice, repo, blobs[1]) == 404
    assert report.manifests >= 1 and report.blobs >= 3 and report.links >= 3
    assert report.blob_bytes >= sum(len(d) for d in layers) and report.bytes_freed >= report.blob_bytes
    event = Event.objects.filter(type=Event.GC).order_by("-id").first()
    assert event.detail["blobs"] == report.blobs and event.detail["bytes_freed"] == report.bytes_freed


def test_untagged_manifests_and_their_blobs_stay_under_the_keep_policy(alice, repo):
    descriptor, blobs = image(alice, repo, [layer()], "v1")
    delete_tag(alice, repo, "v1")
    age(repo)
    gc.collect(grace=HOUR, untagged="keep")
    assert manifest_exists(repo, descriptor["digest"])
    assert all(stored(b) for b in blobs)
    pull(alice, repo, descriptor["digest"])


def test_a_layer_shared_with_another_repositorys_image_survives(alice, repo, unique):
    other = f"acme/gc-other-{unique}"
    shared, own = layer(4000), layer(4000)
    descriptor, blobs = image(alice, repo, [shared, own], "v1")
    image(alice, other, [shared], "v1")
    delete_tag(alice, repo, "v1")
    age(repo)
    age(other)
    gc.collect(grace=HOUR, untagged="delete")
    assert not manifest_exists(repo, descriptor["digest"])
    assert gone(sha256(own)) and gone(blobs[0])
    assert stored(sha256(shared))
    pull(alice, other, "v1")
    # The repository whose image went no longer serves the shared layer.
    assert blob_status(alice, repo, sha256(shared)) == 404


def test_index_children_and_referrers_of_a_kept_manifest_survive(alice, repo):
    amd64, amd64_blobs = image(alice, repo, [layer()])
    arm64, arm64_blobs = image(alice, repo, [layer()])
    top = index(alice, repo, [amd64, arm64], "v1")
    signature, signature_blobs = image(alice, repo, [layer(100)], subject=top,
                                       artifact_type="application/vnd.dev.cosign.artifact.sig.v1+json")
    sbom, sbom_blobs = image(alice, repo, [layer(100)], subject=amd64, artifact_type="application/spdx+json")
    # ... and a signature of that SBOM: a referrer of a referrer.
    countersigned, countersigned_blobs = image(alice, repo, [layer(100)], subject=sbom,
                                               artifact_type="application/vnd.example.countersign")
    stray, stray_blobs = image(alice, repo, [layer()])  # by digest, nothing points at it
    family = [amd64, arm64, top, signature, sbom, countersigned]
    family_blobs = amd64_blobs + arm64_blobs + signature_blobs + sbom_blobs + countersigned_blobs
    age(repo)

    gc.collect(grace=HOUR, untagged="delete")
    assert all(manifest_exists(repo, m["digest"]) for m in family)
    assert all(stored(b) for b in family_blobs)
    assert not manifest_exists(repo, stray["digest"]) and all(gone(b) for b in stray_blobs)
    pull(alice, repo, "v1")
    pull(alice, repo, countersigned["digest"])

    delete_tag(alice, repo, "v1")
    age(repo)
    dry = gc.collect(dry_run=True, grace=HOUR, untagged="delete")
    assert dry.manifests >= len(family)
    assert all(manifest_exists(repo, m["digest"]) for m in family)
    gc.collect(grace=HOUR, untagged="delete")
    assert not any(manifest_exists(repo, m["digest"]) for m in family)
    assert all(gone(b) for b in family_blobs)


def test_a_manifest_pushed_again_is_young_again(alice, repo):
    descriptor, blobs = image(alice, repo, [layer()], "v1")
    delete_tag(alice, repo, "v1")
    age(repo)
    body = alice.request("GET", f"/v2/{repo}/manifests/{descriptor['digest']}", scope=f"repository:{repo}:pull").content
    assert alice.push_manifest(repo, descriptor["digest"], body).status_code == 201
    gc.collect(grace=HOUR, untagged="delete")
    assert manifest_exists(repo, descriptor["digest"]) and all(stored(b) for b in blobs)


# -- grace, dry run, uploads ------------------------------------------------------------------


def test_the_grace_period_protects_fresh_blobs_and_uploads(alice, repo):
    abandoned = push_blob(alice, repo, layer())  # a layer whose manifest never came
    token = alice.token(f"repository:{repo}:pull,push")
    started = alice.request("POST", f"/v2/{repo}/blobs/uploads/", token=token)
    location = started.headers["Location"]
    upload_id = started.headers["Docker-Upload-UUID"]
    assert alice.request("PATCH", location, token=token, data=b"x" * 1000).status_code == 202

    gc.collect(grace=HOUR, upload_age=HOUR)
    assert stored(abandoned) and blob_status(alice, repo, abandoned) == 200
    assert alice.request("GET", location, token=token).status_code == 204

    age(repo)
    old = time.time() - 2 * HOUR
    folder = get_storage().root / "uploads" / upload_id
    for path in (folder / "data", folder):
        os.utime(path, (old, old))
    Upload.objects.filter(pk=upload_id).update(started_at=timezone.now() - timedelta(hours=2))
    report = gc.collect(grace=HOUR, upload_age=HOUR)
    assert gone(abandoned) and blob_status(alice, repo, abandoned) == 404
    assert not folder.exists() and not Upload.objects.filter(pk=upload_id).exists()
    assert alice.request("GET", location, token=token).status_code == 404
    assert report.uploads >= 1 and report.upload_bytes >= 1000


def test_uploading_or_mounting_an_old_unused_blob_makes_it_young_again(alice, repo, unique):
    other = f"acme/gc-mount-{unique}"
    uploaded, mounted = layer(), layer()
    push_blob(alice, repo, uploaded)
    push_blob(alice, repo, mounted)
    age(repo)
    push_blob(alice, repo, uploaded)
    token = alice.token(f"repository:{other}:pull,push", f"repository:{repo}:pull")
    response = alice.request("POST", f"/v2/{other}/blobs/uploads/?mount={sha256(mounted)}&from={repo}", token=token)
    assert response.status_code == 201
    gc.collect(grace=HOUR)
    assert stored(sha256(uploaded)) and stored(sha256(mounted))
    assert blob_status(alice, repo, sha256(uploaded)) == 200
    assert blob_status(alice, other, sha256(mounted)) == 200
    # The old, unused link of `mounted` in `repo` went; the fresh one in `other` stayed.
    assert blob_status(alice, repo, sha256(mounted)) == 404


def test_a_dry_run_deletes_nothing_and_reports_what_a_run_frees(alice, repo, db_url):
    descriptor, blobs = image(alice, repo, [layer(), layer()], "v1")
    abandoned = push_blob(alice, repo, layer())
    delete_tag(alice, repo, "v1")
    age(repo)

    env = {**os.environ, "MSR_DATA_DIR": str(settings.DATA_DIR), "DATABASE_URL": db_url}
    env = {k: v for k, v in env.items() if not k.startswith("DJANGO_")}
    printed = run([MSR, "manage", "gc", "--dry-run", "--json", "--grace", str(HOUR), "--untagged", "delete"],
                  env=env)
    dry = json.loads(printed.stdout)
    assert dry["dry_run"] and dry["manifests"] >= 1 and dry["blobs"] >= 4
    assert manifest_exists(repo, descriptor["digest"]) and all(stored(b) for b in blobs + [abandoned])
    again = gc.collect(dry_run=True, grace=HOUR, untagged="delete")

    real = gc.collect(grace=HOUR, untagged="delete")
    assert not manifest_exists(repo, descriptor["digest"]) and all(gone(b) for b in blobs + [abandoned])
    fields = ("manifests", "manifest_bytes", "links", "blobs", "blob_bytes")
    assert {f: getattr(real, f) for f in fields} == {f: getattr(again, f) for f in fields} == {f: dry[f] for f in fields}

    text = run([MSR, "manage", "gc", "--dry-run"], env=env).stdout
    assert "dry run: nothing deleted" in text and "would free" in text


def test_the_scheduled_task_uses_the_configured_policy():
    from msr.tasks import collect_garbage

    entry = settings.CELERY_BEAT_SCHEDULE["collect-garbage"]
    assert entry == {"task": "msr.tasks.collect_garbage", "schedule": settings.GC_INTERVAL_SECONDS}
    result = collect_garbage()
    assert result["grace_seconds"] == settings.GC_GRACE_SECONDS and result["untagged"] == settings.GC_UNTAGGED
    event = Event.objects.filter(type=Event.GC).order_by("-id").first()
    assert event.detail["trigger"] == "schedule"


# -- the mark: a push and a collection at the same moment -------------------------------------


def test_an_upload_whose_stored_copy_is_collected_meanwhile_publishes_its_own(site, repo, monkeypatch):
    """The upload finds the blob already stored (so keeps its bytes in the upload area);
    the collector removes the stored copy before the upload links it."""
    url, storage = site
    alice = Registry(url, "alice", site_token())
    data = layer(10_000)
    digest = push_blob(alice, repo, data)
    age(repo)
    commit = storage.commit_upload

    def commit_then_collect(handle, upload_id, expected):
        size = commit(handle, upload_id, expected)
        monkeypatch.setattr(storage, "commit_upload", commit)
        assert gc._delete_blobs(storage, [expected], timezone.now())[0] == 1
        assert storage.blob_size(expected) is None
        return size

    monkeypatch.setattr(storage, "commit_upload", commit_then_collect)
    upload = uploads.start_upload(repository(repo), None)
    assert uploads.complete_upload(upload, digest, [data]) == len(data)
    assert stored(digest) and storage.open_blob(digest).read() == data
    assert pull_blob(alice, repo, digest) == digest


def test_bytes_left_aside_by_a_dead_run_are_put_back_or_removed(site, repo):
    url, storage = site
    alice = Registry(url, "alice", site_token())
    kept, dropped = push_blob(alice, repo, layer()), push_blob(alice, repo, layer())
    for digest in (kept, dropped):
        assert storage.set_aside(digest) is not None  # a run that died before its commit
    RepositoryBlob.objects.filter(blob_id=dropped).delete()
    Blob.objects.filter(pk=dropped).delete()  # the dead run's deletion did commit for this one
    gc.collect(grace=HOUR)
    assert stored(kept) and pull_blob(alice, repo, kept) == kept
    assert gone(dropped)
    assert list(storage.list_aside()) == []


def site_token() -> str:
    from accounts.models import AccessToken, User

    return AccessToken.issue(User.objects.get(username="alice"), AccessToken.PERSONAL, "gc tests")[1]


def pull_blob(client: Registry, name: str, digest: str) -> str:
    response = client.request("GET", f"/v2/{name}/blobs/{digest}", scope=f"repository:{name}:pull")
    if response.status_code == 307:
        response = requests.get(response.headers["Location"], timeout=60)
    assert response.status_code == 200, response.text
    return sha256(response.content)


@pytest.fixture(params=["filesystem", "s3"])
def site(request, msr, personas, db_url, artifacts_dir, monkeypatch):
    """(MSR URL, store) the collector in this process shares: the session's MSR on the
    filesystem, or a second `msr serve` on the same database and data dir with its blobs
    in a bucket of the S3 emulator (moto), layer GETs answered by presigned redirects."""
    if request.param == "filesystem":
        yield msr, get_storage()
        return
    import msr.storage
    from msr.storage.s3 import S3Storage
    from tests.s3 import CREDENTIALS

    emulator = request.getfixturevalue("s3_emulator")
    process = None
    try:
        bucket = emulator.bucket()
        process, url = start_msr("serve", settings.DATA_DIR, db_url, artifacts_dir / "logs",
                                 extra_env=emulator.env(bucket))
        store = S3Storage(bucket, endpoint_url=emulator.url, addressing_style="path", part_size=5 * 1024 * 1024,
                          access_key=CREDENTIALS["aws_access_key_id"],
                          secret_key=CREDENTIALS["aws_secret_access_key"])
        monkeypatch.setattr(msr.storage, "_storage", store)
        yield url, store
    finally:
        if process:
            process.stop()


def _slowly(plan):
    def planned_a_while_ago(*args, **kwargs):
        result = plan(*args, **kwargs)
        time.sleep(random.uniform(0, 0.2))
        return result
    return planned_a_while_ago


def test_nothing_referenced_is_deleted_while_pushes_go_on(site, unique, monkeypatch):
    """Pushers keep pushing images made of shared layers (which lose and regain their last
    reference all the time, as tags are deleted), reusing layers by HEAD and by mount the
    way clients do, while the collector runs back to back with grace 0 and the
    untagged-manifest policy "delete". Every tag left pulls completely, all along and at
    the end; every blob no image uses is gone."""
    # Each plan is stale by the time it is carried out (as on a large registry), so the
    # pushes land between a plan and its deletions: only the re-check under the locks
    # stands between them and a lost layer.
    url, _ = site
    token = site_token()
    for planner in ("plan_manifests", "plan_links", "plan_blobs"):
        monkeypatch.setattr(gc, planner, _slowly(getattr(gc, planner)))
    names = [f"acme/gc-race-{unique}-{i}" for i in range(3)]
    pool = [layer(random.randint(8_000, 40_000)) for _ in range(8)]
    duration = 10.0
    stop = threading.Event()
    failures: list[str] = []
    # tag -> manifest digest, per (repository, tag); each tag belongs to one pusher.
    tags: dict[tuple[str, str], str] = {}
    stable: list[tuple[str, str]] = []
    lock = threading.Lock()
    counts = {"pushes": 0, "retries": 0, "deleted_tags": 0, "mounts": 0, "runs": 0, "pulls": 0}
    freed = {"manifests": 0, "blobs": 0, "blob_bytes": 0, "spared": 0}

    def count(key, n=1):
        with lock:
            counts[key] += n

    def push(client: Registry, name: str, tag: str, layers: list[bytes]) -> str:
        """A client's push: HEAD each blob, mount or upload what is missing, PUT the
        manifest; pushed again whole if a layer vanished in between."""
        source = random.choice([n for n in names if n != name])
        token = client.token(f"repository:{name}:pull,push", f"repository:{source}:pull")
        config = json.dumps({"os": "linux", "nonce": os.urandom(8).hex()}).encode()
        body = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": sha256(d), "size": len(d)} for d in layers],
        }).encode()
        for attempt in range(20):
            for data in (config, *layers):
                digest = sha256(data)
                if client.request("HEAD", f"/v2/{name}/blobs/{digest}", token=token).status_code == 200:
                    continue
                if random.random() < 0.3:
                    mounted = client.request("POST", f"/v2/{name}/blobs/uploads/?mount={digest}&from={source}",
                                             token=token)
                    if mounted.status_code == 201:
                        count("mounts")
                        continue
                    assert mounted.status_code == 202, mounted.text
                    cancel = client.request("DELETE", f"/v2/{name}/blobs/uploads/{mounted.headers['Docker-Upload-UUID']}",
                                            token=token)
                    assert cancel.status_code == 204, cancel.text
                push_blob(client, name, data, token)
            response = client.request("PUT", f"/v2/{name}/manifests/{tag}", token=token, data=body,
                                      headers={"Content-Type": OCI_MANIFEST})
            if response.status_code == 201:
                count("pushes")
                return sha256(body)
            # A layer found by HEAD (or just uploaded) was collected before the manifest
            # came: grace 0 allows it. The client pushes again.
            assert response.status_code == 400, response.text
            assert response.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN", response.text
            count("retries")
        raise AssertionError(f"{name}:{tag} could not be pushed in 20 attempts")

    def pusher(number: int) -> None:
        client = Registry(url, "alice", token)
        rng = random.Random(number)
        try:
            name = names[number % len(names)]
            keep = f"stable-{number}"
            tags[(name, keep)] = push(client, name, keep, [pool[number], layer(3000)])
            with lock:
                stable.append((name, keep))
            mine: set[str] = set()
            i = 0
            while not stop.is_set():
                i += 1
                tag = f"t{number}-{i % 4}"
                layers = rng.sample(pool, rng.randint(1, 3)) + ([layer(2000)] if rng.random() < 0.5 else [])
                tags[(name, tag)] = push(client, name, tag, layers)
                mine.add(tag)
                if rng.random() < 0.5:
                    victim = rng.choice(sorted(mine))
                    delete_tag(client, name, victim)
                    tags[(name, victim)] = None
                    mine.discard(victim)
                    count("deleted_tags")
        except Exception as e:  # reported by the main thread
            failures.append(f"pusher {number}: {type(e).__name__}: {e}")
            stop.set()

    def puller() -> None:
        client = Registry(url, "alice", token)
        try:
            while not stop.is_set():
                with lock:
                    targets = list(stable)
                for name, tag in targets:
                    assert pull(client, name, tag) == tags[(name, tag)]
                    count("pulls")
                time.sleep(0.05)
        except Exception as e:
            failures.append(f"puller: {type(e).__name__}: {e}")
            stop.set()

    def collector() -> None:
        try:
            while not stop.is_set():
                report = gc.collect(grace=0, untagged="delete")
                count("runs")
                with lock:
                    for key in freed:
                        freed[key] += getattr(report, key)
                # Runs overlap pushes all the time; the pause lets some pushes through
                # whole (with grace 0 a run collects every layer not yet in a manifest).
                time.sleep(random.uniform(0.1, 0.5))
        except Exception as e:
            failures.append(f"collector: {type(e).__name__}: {e}")
            stop.set()
        finally:
            connection.close()

    threads = [threading.Thread(target=pusher, args=(n,)) for n in range(4)]
    threads += [threading.Thread(target=puller), threading.Thread(target=collector)]
    for thread in threads:
        thread.start()
    # About ten seconds, longer on a busy machine until the race has had enough turns.
    started = time.monotonic()
    while not stop.wait(0.2):
        elapsed = time.monotonic() - started
        with lock:
            enough = counts["pushes"] >= 30 and counts["deleted_tags"] >= 10 and counts["runs"] >= 10
        if elapsed > 4 * duration or (elapsed > duration and enough):
            break
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    assert counts["runs"] >= 10 and counts["pushes"] >= 30 and counts["deleted_tags"] >= 10, counts
    assert counts["pulls"] >= 10, counts
    # The runs met the pushes: they freed what the deleted tags left, and spared what a
    # push took back while they ran.
    assert freed["manifests"] >= 1 and freed["blobs"] >= 1 and freed["spared"] >= 1, (freed, counts)

    # Every tag left pulls completely, before and after one more collection.
    client = Registry(url, "alice", token)
    alive = {key: digest for key, digest in tags.items() if digest}
    for (name, tag), digest in alive.items():
        assert pull(client, name, tag) == digest
    gc.collect(grace=0, untagged="delete")
    used: set[str] = set()
    for (name, tag), digest in alive.items():
        assert pull(client, name, tag) == digest
        used.update(Manifest.objects.get(repository=repository(name), digest=digest)
                    .blobs.values_list("digest", flat=True))
    assert all(stored(d) for d in used)
    # Unreferenced data was deleted: the pool layers no tag uses, every manifest no tag
    # reaches, every link no manifest of its repository uses.
    assert all(gone(sha256(data)) for data in pool if sha256(data) not in used)
    for name in names:
        repo = repository(name)
        assert set(Manifest.objects.filter(repository=repo).values_list("digest", flat=True)) == {
            digest for (n, _), digest in alive.items() if n == name}
        linked = set(RepositoryBlob.objects.filter(repository=repo).values_list("blob_id", flat=True))
        assert linked == set(Manifest.blobs.through.objects.filter(manifest__repository=repo)
                             .values_list("blob_id", flat=True))
    print(f"race: {counts}, freed during it: {freed}")
