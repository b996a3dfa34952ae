"""Bad input: each case answers its OCI error code, and nothing is stored."""

import http.client
import json
import os
from urllib.parse import urlsplit

import pytest
from django.conf import settings

from tests.client import Registry, sha256


@pytest.fixture
def alice(msr, personas):
    return Registry(msr, "alice", personas["alice"].token)


@pytest.fixture
def repo(alice, unique):
    name = f"acme/bad-{unique}"
    alice.push_image(name, "good")
    return name


def _code(response) -> str:
    return response.json()["errors"][0]["code"]


def _uploads_in_progress() -> set[str]:
    directory = settings.STORAGE_DIR / "uploads"
    return set(os.listdir(directory)) if directory.exists() else set()


def test_wrong_digest_on_completion_stores_nothing(alice, repo):
    from msr.models import Blob, Upload

    data = b"the real bytes"
    claimed = sha256(b"other bytes")
    token = alice.token(f"repository:{repo}:pull,push")
    started = alice.request("POST", f"/v2/{repo}/blobs/uploads/", token=token)
    uuid = started.headers["Docker-Upload-UUID"]
    response = alice.request("PUT", f"{started.headers['Location']}?digest={claimed}", token=token, data=data)
    assert response.status_code == 400
    assert _code(response) == "DIGEST_INVALID"
    assert not Blob.objects.filter(digest__in=[claimed, sha256(data)]).exists()
    assert not (settings.STORAGE_DIR / "blobs" / "sha256" / claimed[7:9] / claimed[7:]).exists()
    assert not (settings.STORAGE_DIR / "blobs" / "sha256" / sha256(data)[7:9] / sha256(data)[7:]).exists()
    assert not Upload.objects.filter(pk=uuid).exists()
    assert uuid not in _uploads_in_progress()
    assert alice.request("GET", f"/v2/{repo}/blobs/{claimed}", token=token).status_code == 404


def test_wrong_digest_on_monolithic_post(alice, repo):
    token = alice.token(f"repository:{repo}:pull,push")
    before = _uploads_in_progress()
    response = alice.request("POST", f"/v2/{repo}/blobs/uploads/?digest={sha256(b'x')}", token=token, data=b"y")
    assert response.status_code == 400 and _code(response) == "DIGEST_INVALID"
    assert _uploads_in_progress() == before


def test_malformed_digest(alice, repo):
    token = alice.token(f"repository:{repo}:pull,push")
    for digest in ("sha256:xyz", "md5:" + "0" * 32, "sha256:" + "A" * 64, "nonsense"):
        response = alice.request("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", token=token, data=b"z")
        assert response.status_code == 400, digest
        assert _code(response) == "DIGEST_INVALID"
        response = alice.request("GET", f"/v2/{repo}/blobs/{digest}", token=token)
        assert _code(response) == "DIGEST_INVALID"


def _manifest_count(repo):
    from msr.models import Manifest

    return Manifest.objects.filter(repository__namespace__name="acme", repository__name=repo.split("/", 1)[1]).count()


def test_malformed_manifest_json(alice, repo):
    before = _manifest_count(repo)
    response = alice.push_manifest(repo, "broken", b'{"schemaVersion": 2, "config": ')
    assert response.status_code == 400 and _code(response) == "MANIFEST_INVALID"
    for document in (b"[]", b'{"schemaVersion": 1}', json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "x", "digest": "sha256:nope", "size": 1}, "layers": []}).encode()):
        response = alice.push_manifest(repo, "broken", document)
        assert response.status_code == 400 and _code(response) == "MANIFEST_INVALID", document
    assert _manifest_count(repo) == before
    missing = alice.request("GET", f"/v2/{repo}/manifests/broken", scope=f"repository:{repo}:pull")
    assert _code(missing) == "MANIFEST_UNKNOWN"


def test_unknown_manifest_media_type(alice, repo):
    manifest = alice.request("GET", f"/v2/{repo}/manifests/good", scope=f"repository:{repo}:pull").content
    response = alice.push_manifest(repo, "odd", manifest, media_type="application/x-unknown+json")
    assert response.status_code == 400 and _code(response) == "MANIFEST_INVALID"
    mismatched = alice.push_manifest(repo, "odd", manifest,
                                     media_type="application/vnd.docker.distribution.manifest.v2+json")
    assert mismatched.status_code == 400 and _code(mismatched) == "MANIFEST_INVALID"
    assert alice.request("GET", f"/v2/{repo}/manifests/odd", scope=f"repository:{repo}:pull").status_code == 404


def test_manifest_that_references_a_missing_blob(alice, repo):
    from msr.models import Tag

    config = b'{"os":"linux"}'
    alice.push_blob(repo, config)
    document = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(b"never pushed"),
                    "size": 12}],
    }
    before = _manifest_count(repo)
    response = alice.push_manifest(repo, "incomplete", document)
    assert response.status_code == 400
    assert _code(response) == "MANIFEST_BLOB_UNKNOWN"
    assert response.json()["errors"][0]["detail"] == {"missing": [sha256(b"never pushed")]}
    assert _manifest_count(repo) == before
    assert not Tag.objects.filter(name="incomplete").exists()


def test_manifest_digest_reference_must_match(alice, repo):
    manifest = alice.request("GET", f"/v2/{repo}/manifests/good", scope=f"repository:{repo}:pull").content
    response = alice.push_manifest(repo, sha256(b"something else"), manifest)
    assert response.status_code == 400 and _code(response) == "DIGEST_INVALID"


def test_manifest_too_large(alice, repo):
    body = b'{"schemaVersion": 2, "pad": "' + b"x" * settings.MAX_MANIFEST_BYTES + b'"}'
    response = alice.push_manifest(repo, "huge", body)
    assert response.status_code == 413 and _code(response) == "SIZE_INVALID"


@pytest.mark.parametrize("name", ["Acme/app", "acme//app", "acme/app-", "acme/-app", "acme/a..b",
                                  "acme/" + "a" * 260])
def test_invalid_repository_name(alice, name):
    token = alice.token("repository:acme/app:pull")
    response = alice.request("GET", f"/v2/{name}/tags/list", token=token)
    assert response.status_code == 400
    assert _code(response) == "NAME_INVALID"


@pytest.mark.parametrize("tag", ["-leading-dash", ".dot", "a" * 129, "has+plus"])
def test_invalid_tag(alice, repo, tag):
    manifest = alice.request("GET", f"/v2/{repo}/manifests/good", scope=f"repository:{repo}:pull").content
    response = alice.push_manifest(repo, tag, manifest)
    assert response.status_code == 400
    assert _code(response) == "TAG_INVALID"


@pytest.mark.parametrize("path,code", [
    ("/v2/acme/../alice/secret/manifests/latest", "NAME_INVALID"),
    ("/v2/acme/public-app/../../etc/manifests/latest", "NAME_INVALID"),
    ("/v2/acme/public-app/blobs/sha256:../../../../etc/passwd", "UNSUPPORTED"),  # no such route
    ("/v2/acme/public-app/manifests/..", "MANIFEST_UNKNOWN"),  # reading: no such manifest
])
def test_paths_with_dot_dot_are_refused(msr, alice, path, code):
    """Sent byte for byte (clients would normalise the path first)."""
    token = alice.token("repository:acme/public-app:pull")
    url = urlsplit(msr)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    response = connection.getresponse()
    body = json.loads(response.read())
    assert response.status in (400, 404)
    assert body["errors"][0]["code"] == code


def test_content_range_out_of_order(alice, repo):
    token = alice.token(f"repository:{repo}:pull,push")
    location = alice.request("POST", f"/v2/{repo}/blobs/uploads/", token=token).headers["Location"]
    first = alice.request("PATCH", location, token=token, data=b"0123456789",
                          headers={"Content-Range": "0-9"})
    assert first.status_code == 202
    for bad_range in ("20-29", "5-14", "0-9"):
        response = alice.request("PATCH", location, token=token, data=b"abcdefghij",
                                 headers={"Content-Range": bad_range})
        assert response.status_code == 416, bad_range
        assert _code(response) == "RANGE_INVALID"
        assert response.headers["Range"] == "0-9"
    status = alice.request("GET", location, token=token)
    assert status.headers["Range"] == "0-9"
    mismatch = alice.request("PATCH", location, token=token, data=b"abc", headers={"Content-Range": "10-19"})
    assert mismatch.status_code == 400 and _code(mismatch) == "SIZE_INVALID"
    done = alice.request("PUT", f"{location}?digest={sha256(b'0123456789')}", token=token)
    assert done.status_code == 201


def test_unknown_upload(alice, repo):
    token = alice.token(f"repository:{repo}:pull,push")
    for upload_id in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        response = alice.request("PATCH", f"/v2/{repo}/blobs/uploads/{upload_id}", token=token, data=b"x")
        assert response.status_code == 404 and _code(response) == "BLOB_UPLOAD_UNKNOWN"


def test_an_upload_belongs_to_its_repository(alice, repo, unique):
    token = alice.token(f"repository:{repo}:pull,push", f"repository:acme/other-{unique}:pull,push")
    location = alice.request("POST", f"/v2/{repo}/blobs/uploads/", token=token).headers["Location"]
    elsewhere = location.replace(repo, f"acme/other-{unique}")
    response = alice.request("PATCH", elsewhere, token=token, data=b"x")
    assert response.status_code == 404 and _code(response) == "BLOB_UPLOAD_UNKNOWN"


def test_put_without_digest(alice, repo):
    token = alice.token(f"repository:{repo}:pull,push")
    location = alice.request("POST", f"/v2/{repo}/blobs/uploads/", token=token).headers["Location"]
    response = alice.request("PUT", location, token=token, data=b"abc")
    assert response.status_code == 400 and _code(response) == "DIGEST_INVALID"


def test_unsupported_method_and_unknown_endpoint(alice, repo):
    token = alice.token(f"repository:{repo}:pull,push")
    response = alice.request("POST", f"/v2/{repo}/tags/list", token=token)
    assert response.status_code == 405 and _code(response) == "UNSUPPORTED"
    response = alice.request("GET", "/v2/acme/app/nonsense", token=token)
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "UNSUPPORTED"


def test_bad_pagination_number(alice, repo):
    response = alice.request("GET", f"/v2/{repo}/tags/list?n=-1", scope=f"repository:{repo}:pull")
    assert response.status_code == 400 and _code(response) == "PAGINATION_NUMBER_INVALID"
