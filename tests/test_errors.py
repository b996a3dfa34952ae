"""Errors of the registry core (msr/exceptions.py), mapped once per entry point: to OCI
errors by the /v2/ API, to DRF errors by the REST API; the pages show their message.
In process, no server."""

import json

import pytest
from django.db import DatabaseError
from django.test import RequestFactory
from rest_framework.test import APIClient

from msr import exceptions, services
from msr.api.errors import exception_handler
from msr.manifests import OCI_INDEX
from msr.registry.base import DOMAIN_ERRORS, RegistryView, registry_error
from protocol.errors import error_body
from tests.client import signed_in_page_client

DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
UUID = "0b7e6d9e-3f5c-4c1e-9d7a-2f1c4b8a9e10"

# error of the core, OCI code, OCI status, REST status, exact OCI error object
CASES = [
    (exceptions.RepositoryNotFound("acme/x"), "NAME_UNKNOWN", 404, 404,
     {"message": "repository name not known to registry", "detail": {"name": "acme/x"}}),
    (exceptions.ManifestNotFound("acme/x", "v1"), "MANIFEST_UNKNOWN", 404, 404,
     {"message": "manifest unknown to registry", "detail": {"name": "acme/x", "reference": "v1"}}),
    (exceptions.BlobNotFound(DIGEST), "BLOB_UNKNOWN", 404, 404,
     {"message": "blob unknown to registry", "detail": {"digest": DIGEST}}),
    (exceptions.UploadNotFound(UUID), "BLOB_UPLOAD_UNKNOWN", 404, 404,
     {"message": "blob upload unknown to registry", "detail": {"uuid": UUID}}),
    (exceptions.InvalidTag("-v1"), "TAG_INVALID", 400, 400,
     {"message": "invalid tag", "detail": {"tag": "-v1"}}),
    (exceptions.InvalidDigest("sha256:nope"), "DIGEST_INVALID", 400, 400,
     {"message": "invalid digest", "detail": {"digest": "sha256:nope"}}),
    (exceptions.InvalidDigest("md5:x", message="invalid or unsupported digest"), "DIGEST_INVALID", 400, 400,
     {"message": "invalid or unsupported digest", "detail": {"digest": "md5:x"}}),
    (exceptions.DigestMismatch(DIGEST, OTHER), "DIGEST_INVALID", 400, 400,
     {"message": "provided digest did not match uploaded content",
      "detail": {"expected": DIGEST, "computed": OTHER}}),
    (exceptions.InvalidManifest("schemaVersion must be 2"), "MANIFEST_INVALID", 400, 400,
     {"message": "manifest invalid", "detail": "schemaVersion must be 2"}),
    (exceptions.ManifestReferencesUnknown([DIGEST]), "MANIFEST_BLOB_UNKNOWN", 400, 400,
     {"message": "manifest references a manifest or blob unknown to registry", "detail": {"missing": [DIGEST]}}),
    (exceptions.InvalidRange(detail={"Content-Range": "x"}), "RANGE_INVALID", 416, 400,
     {"message": "invalid content range", "detail": {"Content-Range": "x"}}),
    (exceptions.LengthMismatch(detail={"Content-Length": 3}), "SIZE_INVALID", 400, 400,
     {"message": "provided length did not match content length", "detail": {"Content-Length": 3}}),
    (exceptions.UploadBusy(UUID), "BLOB_UPLOAD_INVALID", 409, 409,
     {"message": "another request is writing to this upload", "detail": {"uuid": UUID}}),
    (exceptions.UploadLost(DIGEST), "BLOB_UPLOAD_INVALID", 400, 409,
     {"message": "the blob was removed while it was uploaded; upload it again", "detail": {"digest": DIGEST}}),
    (exceptions.ImmutableTag("acme/x", "v1", "release-*"), "DENIED", 403, 403,
     {"message": "tag=v1 cannot be overwritten because it matches the immutable tag rule release-* of acme/x",
      "detail": {"tag": "v1", "rule": "release-*", "repository": "acme/x"}}),
    (exceptions.TagLimitReached("acme/x", "v3", 2, 2), "DENIED", 403, 403,
     {"message": "tag=v3 cannot be added because acme/x keeps at most 2 tags and 2 of its tags are "
                 "immutable, so none can be removed to make room",
      "detail": {"tag": "v3", "tagLimit": 2, "immutableTags": 2, "repository": "acme/x"}}),
]


def _concrete_errors(cls=exceptions.DomainError):
    for sub in cls.__subclasses__():
        if sub not in (exceptions.NotFound, exceptions.Invalid, exceptions.Conflict, exceptions.Refused):
            yield sub
        yield from _concrete_errors(sub)


def test_every_error_of_the_core_has_an_oci_error_and_a_case_here():
    concrete = set(_concrete_errors())
    assert concrete == set(DOMAIN_ERRORS)
    assert concrete == {type(error) for error, *_ in CASES}


@pytest.mark.parametrize("error,code,status,_,body", CASES, ids=lambda v: type(v).__name__)
def test_the_registry_answers_each_error_of_the_core_with_its_oci_error(error, code, status, _, body):
    oci = registry_error(error)
    assert (oci.code, oci.status) == (code, status)
    assert json.loads(error_body(oci.code, oci.message, oci.detail)) == {"errors": [{"code": code, **body}]}


@pytest.mark.parametrize("error,code,status,_,body", CASES, ids=lambda v: type(v).__name__)
def test_a_registry_view_renders_an_error_of_the_core_in_the_oci_format(error, code, status, _, body):
    class Failing(RegistryView):
        def get(self, request):
            raise error

    response = Failing.as_view()(RequestFactory().get("/v2/"))
    assert response.status_code == status
    assert response.content == json.dumps({"errors": [{"code": code, **body}]}).encode()
    assert response["Content-Length"] == str(len(response.content))
    assert response["Docker-Distribution-Api-Version"] == "registry/2.0"


@pytest.mark.parametrize("error,_,__,api_status,body", CASES, ids=lambda v: type(v).__name__)
def test_the_rest_api_answers_each_error_of_the_core_in_drf_format(error, _, __, api_status, body):
    response = exception_handler(error, {})
    assert response.status_code == api_status
    assert response.data == {"detail": body["message"]}


def test_the_rest_api_handler_leaves_other_errors_to_drf():
    from rest_framework.exceptions import NotFound

    assert exception_handler(NotFound("no such team"), {}).data == {"detail": "no such team"}
    assert exception_handler(ValueError("a bug"), {}) is None  # a 500, as before


@pytest.fixture
def tagged(personas, unique):
    """acme/errors-<unique> with tag v1 on an empty index (no blobs to upload)."""
    from accounts.models import Namespace
    from msr.models import Repository

    repository = Repository.objects.create(namespace=Namespace.objects.get(name="acme"), name=f"errors-{unique}")
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    services.put_manifest(repository, "v1", body, OCI_INDEX, personas["alice"].user)
    yield repository
    repository.delete()


def test_a_tag_deleted_by_another_request_meanwhile_answers_404_not_500(personas, tagged, monkeypatch):
    from msr.api.repositories import TagDetail
    from msr.models import Tag

    found_tag = TagDetail._tag

    def then_deleted_elsewhere(self, *args, **kwargs):
        found = found_tag(self, *args, **kwargs)
        Tag.objects.filter(pk=found[1].pk).delete()
        return found

    monkeypatch.setattr(TagDetail, "_tag", then_deleted_elsewhere)
    client = APIClient()
    client.force_authenticate(personas["alice"].user)
    response = client.delete(f"/api/v0/repositories/{tagged.full_name}/tags/v1")
    assert response.status_code == 404, response.content
    assert response.json() == {"detail": "manifest unknown to registry"}


@pytest.fixture
def admin_page(personas, unique):
    from caches.models import ContentCache

    cache = ContentCache.objects.create(name=f"errors{unique}", region="Nowhere", url="http://127.0.0.1:9")
    yield signed_in_page_client(personas["admin"].user), cache
    cache.delete()


def test_the_prewarm_form_says_no_such_image_only_when_there_is_none(admin_page, tagged):
    client, cache = admin_page
    form = {"cache": cache.name, "repository": tagged.full_name}
    response = client.post("/console/caches/", {**form, "tag": "missing"})
    assert response.status_code == 400
    assert "No such image in this repository." in response.content.decode()
    response = client.post("/console/caches/", {**form, "tag": "sha256:nope"})
    assert response.status_code == 400
    assert "Invalid digest." in response.content.decode()


def test_a_database_outage_is_not_reported_as_a_missing_image(admin_page, tagged, monkeypatch):
    client, cache = admin_page

    def outage(*args):
        raise DatabaseError("connection refused")

    monkeypatch.setattr(services, "resolve_manifest", outage)
    with pytest.raises(DatabaseError):
        client.post("/console/caches/", {"cache": cache.name, "repository": tagged.full_name, "tag": "v1"})


def test_the_page_deleting_a_tag_another_request_deleted_meanwhile_says_so(personas, tagged, monkeypatch):
    from msr.models import Tag

    delete_manifest = services.delete_manifest

    def after_another_request(name, reference, user):
        Tag.objects.filter(repository=tagged, name=reference).delete()
        return delete_manifest(name, reference, user)

    monkeypatch.setattr(services, "delete_manifest", after_another_request)
    client = signed_in_page_client(personas["alice"].user)
    response = client.post(f"/repositories/{tagged.full_name}/tags/v1/delete/", follow=True)
    assert response.status_code == 200
    assert "Tag v1 was already deleted." in response.content.decode()
