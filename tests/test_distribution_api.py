"""The OCI distribution API, endpoint by endpoint, against a real server process."""

import hashlib
import json
import re

import pytest

from tests.client import Registry, sha256

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


@pytest.fixture
def alice(msr, personas):
    return Registry(msr, "alice", personas["alice"].token)


@pytest.fixture
def repo(unique):
    return f"acme/api-{unique}"


def _push_scope(name):
    return f"repository:{name}:pull,push"


# -- blob uploads ------------------------------------------------------------------------


def test_monolithic_upload_in_one_post(alice, repo):
    data = b"hello monolithic"
    response = alice.push_blob(repo, data)
    assert response.status_code == 201
    assert response.headers["Location"] == f"/v2/{repo}/blobs/{sha256(data)}"
    assert response.headers["Docker-Content-Digest"] == sha256(data)
    fetched = alice.request("GET", f"/v2/{repo}/blobs/{sha256(data)}", scope=f"repository:{repo}:pull")
    assert fetched.status_code == 200 and fetched.content == data


def test_post_then_put_with_the_body(alice, repo):
    token = alice.token(_push_scope(repo))
    started = alice.request("POST", f"/v2/{repo}/blobs/uploads/", token=token)
    assert started.status_code == 202
    assert started.headers["Range"] == "0-0"
    uuid = started.headers["Docker-Upload-UUID"]
    assert started.headers["Location"] == f"/v2/{repo}/blobs/uploads/{uuid}"
    data = b"put in one go"
    done = alice.request("PUT", f"{started.headers['Location']}?digest={sha256(data)}", token=token, data=data)
    assert done.status_code == 201
    assert done.headers["Docker-Content-Digest"] == sha256(data)


def test_chunked_upload_with_content_range_and_status(alice, repo):
    token = alice.token(_push_scope(repo))
    location = alice.request("POST", f"/v2/{repo}/blobs/uploads/", token=token).headers["Location"]
    chunks = [b"a" * 1000, b"b" * 2000, b"c" * 500]
    offset = 0
    for chunk in chunks:
        response = alice.request("PATCH", location, token=token, data=chunk, headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{offset}-{offset + len(chunk) - 1}"})
        assert response.status_code == 202, response.text
        offset += len(chunk)
        assert response.headers["Range"] == f"0-{offset - 1}"
        location = response.headers["Location"]
    status = alice.request("GET", location, token=token)
    assert status.status_code == 204
    assert status.headers["Range"] == f"0-{offset - 1}"
    data = b"".join(chunks)
    done = alice.request("PUT", f"{location}?digest={sha256(data)}", token=token)
    assert done.status_code == 201
    fetched = alice.request("GET", f"/v2/{repo}/blobs/{sha256(data)}", token=token)
    assert fetched.content == data


def test_streamed_patch_without_content_length(alice, repo):
    """Docker sends the layer as one chunked-encoded PATCH with no Content-Range."""
    token = alice.token(_push_scope(repo))
    location = alice.request("POST", f"/v2/{repo}/blobs/uploads/", token=token).headers["Location"]
    parts = [bytes([i]) * 300_000 for i in range(7)]
    response = alice.request("PATCH", location, token=token, data=iter(parts))
    assert response.status_code == 202
    assert response.headers["Range"] == f"0-{sum(map(len, parts)) - 1}"
    data = b"".join(parts)
    done = alice.request("PUT", f"{response.headers['Location']}?digest={sha256(data)}", token=token)
    assert done.status_code == 201


def test_sha512_digests_are_verified_too(alice, repo):
    data = b"sha512 content"
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    token = alice.token(_push_scope(repo))
    response = alice.request("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", token=token, data=data)
    assert response.status_code == 201
    assert alice.request("GET", f"/v2/{repo}/blobs/{digest}", token=token).content == data


def test_cancelled_upload_is_gone(alice, repo):
    from msr.models import Upload

    token = alice.token(_push_scope(repo))
    started = alice.request("POST", f"/v2/{repo}/blobs/uploads/", token=token)
    location = started.headers["Location"]
    alice.request("PATCH", location, token=token, data=b"partial")
    assert alice.request("DELETE", location, token=token).status_code == 204
    status = alice.request("GET", location, token=token)
    assert status.status_code == 404
    assert status.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
    assert not Upload.objects.filter(pk=started.headers["Docker-Upload-UUID"]).exists()
    from django.conf import settings

    assert not (settings.STORAGE_DIR / "uploads" / started.headers["Docker-Upload-UUID"]).exists()


def test_cross_repository_mount(alice, repo, msr, personas):
    data = b"mount me " + repo.encode()
    alice.push_blob(repo, data)
    target = repo + "-copy"
    token = alice.token(_push_scope(target), f"repository:{repo}:pull")
    response = alice.request("POST", f"/v2/{target}/blobs/uploads/?mount={sha256(data)}&from={repo}", token=token)
    assert response.status_code == 201
    assert response.headers["Location"] == f"/v2/{target}/blobs/{sha256(data)}"
    assert alice.request("GET", f"/v2/{target}/blobs/{sha256(data)}", token=token).content == data


def test_mount_from_a_repository_the_caller_cannot_read_starts_an_upload(alice, repo, msr, personas, unique):
    data = b"private layer " + repo.encode()
    alice.push_blob(repo, data)
    carol = Registry(msr, "carol", personas["carol"].token)
    own = f"carol/steal-{unique}"
    token = carol.token(_push_scope(own), f"repository:{repo}:pull")
    response = carol.request("POST", f"/v2/{own}/blobs/uploads/?mount={sha256(data)}&from={repo}", token=token)
    assert response.status_code == 202  # an ordinary upload, not a mount
    fetched = carol.request("GET", f"/v2/{own}/blobs/{sha256(data)}", token=token)
    assert fetched.status_code == 404


def test_a_blob_is_only_served_from_repositories_it_was_pushed_to(alice, repo, msr, personas, unique):
    data = b"secret layer " + repo.encode()
    alice.push_blob(repo, data)
    carol = Registry(msr, "carol", personas["carol"].token)
    own = f"carol/guess-{unique}"
    carol.push_blob(own, b"something else " + unique.encode())
    token = carol.token(f"repository:{own}:pull")
    guessed = carol.request("GET", f"/v2/{own}/blobs/{sha256(data)}", token=token)
    assert guessed.status_code == 404
    assert guessed.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
    assert carol.request("HEAD", f"/v2/{own}/blobs/{sha256(data)}", token=token).status_code == 404
    # Pushing the same bytes links the (deduplicated) blob.
    assert carol.push_blob(own, data).status_code == 201
    assert carol.request("GET", f"/v2/{own}/blobs/{sha256(data)}", token=token).content == data


# -- blob reads --------------------------------------------------------------------------


def test_blob_head_and_range_requests(alice, repo):
    data = bytes(range(256)) * 40
    alice.push_blob(repo, data)
    token = alice.token(f"repository:{repo}:pull")
    path = f"/v2/{repo}/blobs/{sha256(data)}"
    head = alice.request("HEAD", path, token=token)
    assert head.status_code == 200
    assert head.headers["Content-Length"] == str(len(data))
    assert head.headers["Docker-Content-Digest"] == sha256(data)
    assert head.content == b""
    part = alice.request("GET", path, token=token, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == data[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    tail = alice.request("GET", path, token=token, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    open_ended = alice.request("GET", path, token=token, headers={"Range": f"bytes={len(data) - 5}-"})
    assert open_ended.content == data[-5:]
    beyond = alice.request("GET", path, token=token, headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == f"bytes */{len(data)}"


# -- manifests ---------------------------------------------------------------------------


def test_manifest_by_tag_and_digest_get_and_head(alice, repo):
    digest, response = alice.push_image(repo, "v1")
    assert response.status_code == 201
    assert response.headers["Docker-Content-Digest"] == digest
    assert response.headers["Location"] == f"/v2/{repo}/manifests/{digest}"
    token = alice.token(f"repository:{repo}:pull")
    for reference in ("v1", digest):
        got = alice.request("GET", f"/v2/{repo}/manifests/{reference}", token=token,
                            headers={"Accept": OCI_MANIFEST})
        assert got.status_code == 200
        assert sha256(got.content) == digest
        assert got.headers["Content-Type"] == OCI_MANIFEST
        assert got.headers["Docker-Content-Digest"] == digest
        head = alice.request("HEAD", f"/v2/{repo}/manifests/{reference}", token=token)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["Content-Length"] == str(len(got.content))
        assert head.headers["Docker-Content-Digest"] == digest


def test_accept_header_that_excludes_the_stored_type_is_refused(alice, repo):
    alice.push_image(repo, "v1")
    response = alice.request("GET", f"/v2/{repo}/manifests/v1", scope=f"repository:{repo}:pull",
                             headers={"Accept": DOCKER_MANIFEST})
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_docker_schema2_manifest_and_manifest_list(alice, repo):
    config, layer = b'{"architecture":"arm64","os":"linux"}', b"docker layer"
    for blob in (config, layer):
        alice.push_blob(repo, blob)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "digest": sha256(layer), "size": len(layer)}],
    }).encode()
    assert alice.push_manifest(repo, "arm", manifest, DOCKER_MANIFEST).status_code == 201
    manifest_list = json.dumps({
        "schemaVersion": 2, "mediaType": DOCKER_LIST,
        "manifests": [{"mediaType": DOCKER_MANIFEST, "digest": sha256(manifest), "size": len(manifest),
                       "platform": {"architecture": "arm64", "os": "linux"}}],
    }).encode()
    assert alice.push_manifest(repo, "multi", manifest_list, DOCKER_LIST).status_code == 201
    got = alice.request("GET", f"/v2/{repo}/manifests/multi", scope=f"repository:{repo}:pull",
                        headers={"Accept": f"{DOCKER_MANIFEST}, {DOCKER_LIST}"})
    assert got.headers["Content-Type"] == DOCKER_LIST
    assert got.content == manifest_list


def test_index_push_requires_its_children(alice, repo):
    child_digest, _ = alice.push_image(repo, "child")
    child = alice.request("GET", f"/v2/{repo}/manifests/child", scope=f"repository:{repo}:pull").content
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": child_digest, "size": len(child)}]}
    assert alice.push_manifest(repo, "index", index, OCI_INDEX).status_code == 201
    index["manifests"].append({"mediaType": OCI_MANIFEST, "digest": sha256(b"absent"), "size": 6})
    response = alice.push_manifest(repo, "broken-index", index, OCI_INDEX)
    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"


def test_names_with_several_components(alice, unique):
    name = f"acme/team-{unique}/service/app"
    digest, response = alice.push_image(name, "1.0")
    assert response.status_code == 201
    got = alice.request("GET", f"/v2/{name}/manifests/1.0", scope=f"repository:{name}:pull")
    assert got.status_code == 200 and sha256(got.content) == digest


# -- discovery ---------------------------------------------------------------------------


def test_tags_list_paginates_with_a_link_header(alice, repo):
    digest, _ = alice.push_image(repo, "a")
    manifest = alice.request("GET", f"/v2/{repo}/manifests/a", scope=f"repository:{repo}:pull").content
    for tag in ("d", "c", "b", "e"):
        assert alice.push_manifest(repo, tag, manifest).status_code == 201
    token = alice.token(f"repository:{repo}:pull")
    everything = alice.request("GET", f"/v2/{repo}/tags/list", token=token)
    assert everything.json() == {"name": repo, "tags": ["a", "b", "c", "d", "e"]}
    assert "Link" not in everything.headers
    page = alice.request("GET", f"/v2/{repo}/tags/list?n=2", token=token)
    assert page.json()["tags"] == ["a", "b"]
    assert page.headers["Link"] == f'</v2/{repo}/tags/list?n=2&last=b>; rel="next"'
    page = alice.request("GET", f"/v2/{repo}/tags/list?n=2&last=b", token=token)
    assert page.json()["tags"] == ["c", "d"]
    last = alice.request("GET", f"/v2/{repo}/tags/list?n=2&last=d", token=token)
    assert last.json()["tags"] == ["e"] and "Link" not in last.headers
    assert alice.request("GET", f"/v2/{repo}/tags/list?n=0", token=token).json()["tags"] == []


def test_catalog_paginates(alice):
    token = alice.token("registry:catalog:*")
    everything = alice.request("GET", "/v2/_catalog", token=token).json()["repositories"]
    assert everything == sorted(everything) and len(everything) >= 2
    first = alice.request("GET", "/v2/_catalog?n=1", token=token)
    assert first.json()["repositories"] == everything[:1]
    assert first.headers["Link"].startswith("</v2/_catalog?n=1&last=")


def test_referrers_api_lists_manifests_with_a_subject(alice, repo):
    subject_digest, _ = alice.push_image(repo, "v1")
    subject = alice.request("GET", f"/v2/{repo}/manifests/v1", scope=f"repository:{repo}:pull").content
    descriptor = {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": len(subject)}
    sbom_digest, sbom = alice.push_image(repo, sha256(b"x").replace(":", "-")[:60], layers=(b"sbom",),
                                         subject=descriptor, artifact_type="application/spdx+json")
    assert sbom.status_code == 201
    assert sbom.headers["OCI-Subject"] == subject_digest
    sig_digest, _ = alice.push_image(repo, "sig", layers=(b"signature",), subject=descriptor,
                                     artifact_type="application/vnd.dev.cosign.artifact.sig.v1+json")
    token = alice.token(f"repository:{repo}:pull")
    response = alice.request("GET", f"/v2/{repo}/referrers/{subject_digest}", token=token)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == OCI_INDEX
    listed = {m["digest"]: m["artifactType"] for m in response.json()["manifests"]}
    assert listed == {sbom_digest: "application/spdx+json",
                      sig_digest: "application/vnd.dev.cosign.artifact.sig.v1+json"}
    filtered = alice.request("GET", f"/v2/{repo}/referrers/{subject_digest}?artifactType=application/spdx%2Bjson",
                             token=token)
    assert [m["digest"] for m in filtered.json()["manifests"]] == [sbom_digest]
    assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
    nothing = alice.request("GET", f"/v2/{repo}/referrers/{sha256(b'unknown')}", token=token)
    assert nothing.status_code == 200 and nothing.json()["manifests"] == []


# -- content management ------------------------------------------------------------------


def test_delete_tag_keeps_the_manifest(alice, repo):
    digest, _ = alice.push_image(repo, "v1")
    token = alice.token(f"repository:{repo}:pull,delete")
    assert alice.request("DELETE", f"/v2/{repo}/manifests/v1", token=token).status_code == 202
    assert alice.request("GET", f"/v2/{repo}/manifests/v1", token=token).status_code == 404
    assert alice.request("GET", f"/v2/{repo}/manifests/{digest}", token=token).status_code == 200


def test_delete_manifest_removes_its_tags(alice, repo):
    digest, _ = alice.push_image(repo, "v1")
    token = alice.token(f"repository:{repo}:pull,delete")
    assert alice.request("DELETE", f"/v2/{repo}/manifests/{digest}", token=token).status_code == 202
    for reference in ("v1", digest):
        response = alice.request("GET", f"/v2/{repo}/manifests/{reference}", token=token)
        assert response.status_code == 404
        assert response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    again = alice.request("DELETE", f"/v2/{repo}/manifests/{digest}", token=token)
    assert again.status_code == 404


def test_delete_blob(alice, repo):
    data = b"to be deleted"
    alice.push_blob(repo, data)
    token = alice.token(f"repository:{repo}:pull,delete")
    assert alice.request("DELETE", f"/v2/{repo}/blobs/{sha256(data)}", token=token).status_code == 202
    response = alice.request("GET", f"/v2/{repo}/blobs/{sha256(data)}", token=token)
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_unknown_repository_is_name_unknown(alice, unique):
    name = f"acme/nothing-{unique}"
    token = alice.token(f"repository:{name}:pull")
    for path in (f"/v2/{name}/tags/list", f"/v2/{name}/manifests/latest"):
        response = alice.request("GET", path, token=token)
        assert response.status_code == 404
        assert response.json()["errors"][0]["code"] == "NAME_UNKNOWN"


def test_every_response_says_the_api_version(alice):
    response = alice.request("GET", "/v2/", scope="registry:catalog:*")
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"


# -- points of the OCI conformance suite (v1.1.1) -------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("reference", [".INVALID_MANIFEST_NAME", "-dash", "t" * 129])
def test_reading_a_reference_that_cannot_be_a_tag_is_manifest_unknown(alice, repo, method, reference):
    """Reading, an invalid tag names no manifest: 404 MANIFEST_UNKNOWN (the conformance
    suite's "GET nonexistent manifest"), not 400."""
    alice.push_image(repo, "v1")
    response = alice.request(method, f"/v2/{repo}/manifests/{reference}", scope=f"repository:{repo}:pull")
    assert response.status_code == 404
    if method == "GET":
        assert response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_writing_under_an_invalid_tag_is_still_tag_invalid(alice, repo):
    _, pushed = alice.push_image(repo, "v1")
    manifest = alice.request("GET", f"/v2/{repo}/manifests/v1", scope=f"repository:{repo}:pull",
                             headers={"Accept": OCI_MANIFEST})
    response = alice.push_manifest(repo, ".INVALID_MANIFEST_NAME", manifest.content)
    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == "TAG_INVALID"


def test_empty_responses_carry_no_content_type(alice, repo):
    """201/202/204 without a body must not claim to be text/html."""
    token = alice.token(_push_scope(repo))
    data = b"no type for empty bodies"
    started = alice.request("POST", f"/v2/{repo}/blobs/uploads/", token=token)
    assert started.status_code == 202
    patched = alice.request("PATCH", started.headers["Location"], token=token, data=data,
                            headers={"Content-Type": "application/octet-stream"})
    assert patched.status_code == 202
    status = alice.request("GET", started.headers["Location"], token=token)
    assert status.status_code == 204
    finished = alice.request("PUT", patched.headers["Location"] + ("&" if "?" in patched.headers["Location"]
                             else "?") + f"digest={sha256(data)}", token=token)
    assert finished.status_code == 201
    digest, manifest = alice.push_image(repo, "v1")
    assert manifest.status_code == 201
    deleted = alice.request("DELETE", f"/v2/{repo}/manifests/{digest}", token=alice.token(
        f"repository:{repo}:delete,pull,push"))
    assert deleted.status_code == 202
    for response in (started, patched, status, finished, manifest, deleted):
        assert response.content == b""
        assert "Content-Type" not in response.headers, (response.status_code, response.headers)


def test_a_mount_challenge_names_the_source_and_following_it_mounts(alice, repo, msr):
    """Distribution's challenge for `?mount=&from=` asks for pull on `from` too; a client
    that requests exactly the challenge's scopes gets a token that lets the mount happen."""
    data = b"mount through the challenge " + repo.encode()
    assert alice.push_blob(repo, data).status_code == 201
    target = repo + "-mounted"
    path = f"/v2/{target}/blobs/uploads/?mount={sha256(data)}&from={repo}"
    challenge = alice.request("POST", path)
    assert challenge.status_code == 401
    header = challenge.headers["WWW-Authenticate"]
    scopes = re.search(r'scope="([^"]+)"', header).group(1).split(" ")
    assert scopes == [_push_scope(target), f"repository:{repo}:pull"]
    mounted = alice.request("POST", path, token=alice.token(*scopes))
    assert mounted.status_code == 201, mounted.text
    assert mounted.headers["Docker-Content-Digest"] == sha256(data)


def test_insufficient_scope_names_only_the_missing_actions(alice, repo):
    alice.push_blob(repo, b"x")
    response = alice.request("POST", f"/v2/{repo}/blobs/uploads/", scope=f"repository:{repo}:pull")
    assert response.status_code == 401
    error = response.json()["errors"][0]
    assert error["message"] == f"insufficient scope: the token does not grant push on {repo}"
    assert error["detail"] == [{"Type": "repository", "Name": repo, "Action": "push"}]
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
