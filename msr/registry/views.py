"""The OCI Distribution API v1.1 endpoints under /v2/."""

import json
from urllib.parse import urlencode

from django.conf import settings
from django.http import FileResponse, HttpResponse

from accounts.models import User
from accounts.permissions import readable_repositories
from msr import instruments, services, uploads
from msr.addresses import client_address
from msr.events import record_pull
from msr.exceptions import InvalidRange
from msr.manifests import OCI_INDEX
from msr.models import Manifest, Repository, Tag
from msr.references import is_valid_digest, is_valid_name
from msr.registry import errors
from msr.registry.base import RegistryView, empty_response, registry_error, request_body
from msr.storage import CHUNK_SIZE, get_storage
from msr.tokens import verify_grant
from protocol.grants import GrantRefused
from protocol.ranges import LimitedFile, RangeNotSatisfiable, parse_range


def _user(view) -> User | None:
    return User.objects.filter(username=view.username).first() if view.username else None


def _page_size(request) -> int | None:
    n = request.GET.get("n")
    if n is None or n == "":
        return None
    if not n.isdigit():
        raise errors.PaginationNumberInvalid(detail={"n": n})
    return int(n)


class BaseView(RegistryView):
    """`GET /v2/`: tells clients this is a v2 registry and whether their token is valid."""

    def get(self, request):
        self.require_token()
        return HttpResponse(b"{}", content_type="application/json")

    head = get


class ManifestView(RegistryView):
    def _fetch(self, request, name, reference):
        self.authorize(name, "pull")
        digest, media_type, content = services.resolve_manifest(name, reference)
        accept = request.META.get("HTTP_ACCEPT", "")
        if accept and not _accepts(accept, media_type):
            raise errors.ManifestUnknown(
                f"manifest is {media_type}, which the Accept header does not include",
                detail={"mediaType": media_type},
            )
        response = HttpResponse(content, content_type=media_type)
        response["Docker-Content-Digest"] = digest
        response["ETag"] = f'"{digest}"'
        response["Content-Length"] = str(len(content))
        return response

    def get(self, request, name, reference):
        response = self._fetch(request, name, reference)
        record_pull(self.username, name, reference, response["Docker-Content-Digest"], request)
        instruments.PULLS.inc()
        return response

    def head(self, request, name, reference):
        response = self._fetch(request, name, reference)
        response.content = b""
        return response

    def put(self, request, name, reference):
        self.authorize(name, "pull", "push")
        body = _read_limited(request, settings.MAX_MANIFEST_BYTES)
        repository = services.ensure_repository(name)
        content_type = request.META.get("CONTENT_TYPE", "").split(";")[0].strip()
        manifest = services.put_manifest(repository, reference, body, content_type, _user(self))
        instruments.PUSHES.inc()
        headers = {
            "Location": f"/v2/{name}/manifests/{manifest.digest}",
            "Docker-Content-Digest": manifest.digest,
        }
        if manifest.subject_digest:
            headers["OCI-Subject"] = manifest.subject_digest
        return empty_response(201, headers)

    def delete(self, request, name, reference):
        self.authorize(name, "delete")
        services.delete_manifest(name, reference, _user(self))
        return empty_response(202)


def _accepts(accept: str, media_type: str) -> bool:
    for item in accept.split(","):
        value = item.split(";")[0].strip()
        if value in (media_type, "*/*", "application/*", "application/json"):
            return True
    return False


def _read_limited(request, limit: int) -> bytes:
    parts, total = [], 0
    for chunk in request_body(request):
        total += len(chunk)
        if total > limit:
            raise errors.TooLarge(f"manifest larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


class BlobView(RegistryView):
    def get(self, request, name, digest):
        grant = request.GET.get("grant")
        if grant and self.claims is None:
            self._check_grant(grant, name, digest)  # a cache fetching for a user
            size = services.linked_blob_size(name, digest)
        else:
            self.authorize(name, "pull")
            size = services.linked_blob_size(name, digest)
            # A cache node filling itself for a client of its region (caches/endpoint.py)
            # names itself: sending it to a cache would send it to itself.
            from_cache = bool(request.META.get("HTTP_X_MSR_CACHE"))
            location = None if from_cache else self._cache_location(request, name, digest)
            if location:
                return empty_response(307, {"Location": location, "Docker-Content-Digest": digest})
        # Object storage: the client (or the cache filling itself) fetches from the bucket.
        location = get_storage().blob_url(digest)
        if location:
            instruments.STORAGE_REDIRECTS.inc()
            return empty_response(307, {"Location": location, "Docker-Content-Digest": digest})
        return self._serve(request, digest, size)

    def _check_grant(self, grant, name, digest):
        try:
            verify_grant(grant, name, digest)
        except GrantRefused as e:
            if e.denied:
                raise errors.Denied(e.reason) from None
            raise errors.Unauthorized("invalid or expired grant", detail=e.reason) from None

    def _cache_location(self, request, name, digest) -> str | None:
        """Where this client should fetch the layer: its cache, or None for MSR itself."""
        from caches.grants import choose_cache, redirect_url

        cache = choose_cache(self.username, client_address(request.META))
        if cache is None:
            return None
        instruments.CACHE_REDIRECTS.labels(cache.name).inc()
        return redirect_url(cache, name, digest, self.username)

    def _serve(self, request, digest, size):
        start, end = 0, size - 1
        status = 200
        range_header = request.META.get("HTTP_RANGE")
        if range_header:
            try:
                start, end = parse_range(range_header, size)
            except RangeNotSatisfiable:
                raise errors.RangeInvalid(
                    "requested range not satisfiable", detail={"Range": range_header},
                    headers={"Content-Range": f"bytes */{size}"},
                ) from None
            status = 206
        try:
            blob = get_storage().open_blob(digest, start, end - start + 1)
        except FileNotFoundError:
            raise errors.BlobUnknown("blob missing from storage", detail={"digest": digest}) from None
        response = FileResponse(
            LimitedFile(blob, end - start + 1), status=status,
            content_type="application/octet-stream",
        )
        response.block_size = CHUNK_SIZE
        response["Content-Length"] = str(end - start + 1)
        response["Docker-Content-Digest"] = digest
        response["ETag"] = f'"{digest}"'
        response["Accept-Ranges"] = "bytes"
        response["Cache-Control"] = "max-age=31536000"
        if status == 206:
            response["Content-Range"] = f"bytes {start}-{end}/{size}"
        return response

    def head(self, request, name, digest):
        self.authorize(name, "pull")
        size = services.linked_blob_size(name, digest)
        return empty_response(200, {
            "Content-Length": str(size),
            "Docker-Content-Digest": digest,
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": f'"{digest}"',
        })

    def delete(self, request, name, digest):
        self.authorize(name, "delete")
        services.unlink_blob(name, digest)
        return empty_response(202)


def _upload_headers(name: str, upload_id, offset: int) -> dict:
    return {
        "Location": f"/v2/{name}/blobs/uploads/{upload_id}",
        "Range": f"0-{max(offset - 1, 0)}",
        "Docker-Upload-UUID": str(upload_id),
    }


def _content_length(request) -> int | None:
    value = request.META.get("CONTENT_LENGTH")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise errors.SizeInvalid("invalid Content-Length") from None


class UploadStartView(RegistryView):
    """`POST /v2/<name>/blobs/uploads/`: start an upload, upload whole (`?digest=`) or
    mount a blob from another repository (`?mount=&from=`)."""

    def post(self, request, name):
        mount, source = request.GET.get("mount"), request.GET.get("from")
        # A mount's challenge names the source too (as Distribution's does), so a client
        # that follows it gets pull there and the mount can happen.
        also = f"repository:{source}:pull" if mount and source and is_valid_name(source) else ""
        self.authorize(name, "pull", "push", also=also)
        if mount and source:
            if not is_valid_digest(mount):
                raise errors.DigestInvalid("invalid digest", detail={"digest": mount})
            # Mount only what the caller may pull from the source; otherwise fall back to
            # an ordinary upload, as the spec allows.
            if is_valid_name(source) and self.may(source, "pull"):
                repository = services.ensure_repository(name)
                if services.mount_blob(source, repository, mount):
                    return empty_response(201, {
                        "Location": f"/v2/{name}/blobs/{mount}",
                        "Docker-Content-Digest": mount,
                    })
        repository = services.ensure_repository(name)
        upload = uploads.start_upload(repository, _user(self))
        digest = request.GET.get("digest")
        if digest:
            uploads.complete_upload(upload, digest, request_body(request))
            return empty_response(201, {
                "Location": f"/v2/{name}/blobs/{digest}",
                "Docker-Content-Digest": digest,
            })
        return empty_response(202, {**_upload_headers(name, upload.id, 0),
                                    "OCI-Chunk-Min-Length": "0"})


class UploadView(RegistryView):
    def get(self, request, name, upload_id):
        self.authorize(name, "pull", "push")
        upload = uploads.find_upload(name, upload_id)
        return empty_response(204, _upload_headers(name, upload.id, uploads.upload_offset(upload)))

    def patch(self, request, name, upload_id):
        self.authorize(name, "pull", "push")
        upload = uploads.find_upload(name, upload_id)
        try:
            offset = uploads.append_chunk(
                upload, request_body(request), request.META.get("HTTP_CONTENT_RANGE"),
                _content_length(request),
            )
        except InvalidRange as e:
            # The spec: a 416 tells the client where the upload ends.
            error = registry_error(e)
            error.headers.update(_upload_headers(name, upload.id, uploads.upload_offset(upload)))
            raise error from None
        return empty_response(202, _upload_headers(name, upload.id, offset))

    def put(self, request, name, upload_id):
        self.authorize(name, "pull", "push")
        upload = uploads.find_upload(name, upload_id)
        digest = request.GET.get("digest")
        if not digest:
            raise errors.DigestInvalid("the digest query parameter is required")
        uploads.complete_upload(upload, digest, request_body(request))
        return empty_response(201, {
            "Location": f"/v2/{name}/blobs/{digest}",
            "Docker-Content-Digest": digest,
        })

    def delete(self, request, name, upload_id):
        self.authorize(name, "pull", "push")
        uploads.cancel_upload(uploads.find_upload(name, upload_id))
        return empty_response(204)


def _paginate(request, path: str, items: list[str]) -> tuple[list[str], str | None]:
    """Lexically ordered list, `n` results after `last`, with a Link to the next page."""
    n = _page_size(request)
    last = request.GET.get("last")
    if last:
        items = [item for item in items if item > last]
    link = None
    if n is not None and len(items) > n:
        items = items[:n]
        if items:
            link = f'<{path}?{urlencode({"n": n, "last": items[-1]})}>; rel="next"'
    elif n is not None:
        items = items[:n]
    return items, link


class TagsListView(RegistryView):
    def get(self, request, name):
        self.authorize(name, "pull")
        repository = services.get_repository(name)
        tags = sorted(Tag.objects.filter(repository=repository).values_list("name", flat=True))
        tags, link = _paginate(request, f"/v2/{name}/tags/list", tags)
        response = HttpResponse(json.dumps({"name": name, "tags": tags}),
                                content_type="application/json")
        if link:
            response["Link"] = link
        return response


class CatalogView(RegistryView):
    """`GET /v2/_catalog`: the repositories the caller may pull, and only those."""

    def get(self, request):
        self.require_token()
        queryset = readable_repositories(_user(self), Repository.objects.all())
        names = sorted(f"{ns}/{repo}" for ns, repo in queryset.values_list("namespace__name", "name"))
        names, link = _paginate(request, "/v2/_catalog", names)
        response = HttpResponse(json.dumps({"repositories": names}), content_type="application/json")
        if link:
            response["Link"] = link
        return response


class ReferrersView(RegistryView):
    """`GET /v2/<name>/referrers/<digest>`: manifests whose subject is `digest`, as an
    OCI image index, optionally filtered by artifactType."""

    def get(self, request, name, digest):
        self.authorize(name, "pull")
        if not is_valid_digest(digest):
            raise errors.DigestInvalid("invalid digest", detail={"digest": digest})
        repository = services.get_repository(name)
        referrers = Manifest.objects.filter(repository=repository, subject_digest=digest).order_by("digest")
        artifact_type = request.GET.get("artifactType")
        if artifact_type:
            referrers = referrers.filter(artifact_type=artifact_type)
        manifests = []
        for m in referrers:
            descriptor = {"mediaType": m.media_type, "digest": m.digest, "size": m.size}
            if m.artifact_type:
                descriptor["artifactType"] = m.artifact_type
            if m.annotations:
                descriptor["annotations"] = m.annotations
            manifests.append(descriptor)
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
        response = HttpResponse(body, content_type=OCI_INDEX)
        if artifact_type:
            response["OCI-Filters-Applied"] = "artifactType"
        return response


class NotFoundView(RegistryView):
    def get(self, request, *args, **kwargs):
        raise errors.EndpointUnknown(detail={"path": request.path})

    head = post = put = patch = delete = get
