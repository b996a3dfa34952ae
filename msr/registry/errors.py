"""OCI distribution errors: one class per error code, rendered in one place."""

from django.http import HttpResponse

from protocol.errors import error_body


class RegistryError(Exception):
    code = "UNKNOWN"
    status = 500
    message = "unknown error"

    def __init__(self, message=None, detail=None, headers=None):
        super().__init__(message or self.message)
        self.message = message or self.message
        self.detail = detail
        self.headers = headers or {}


class BlobUnknown(RegistryError):
    code, status, message = "BLOB_UNKNOWN", 404, "blob unknown to registry"


class BlobUploadInvalid(RegistryError):
    code, status, message = "BLOB_UPLOAD_INVALID", 400, "blob upload invalid"


class BlobUploadUnknown(RegistryError):
    code, status, message = "BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry"


class DigestInvalid(RegistryError):
    code, status, message = "DIGEST_INVALID", 400, "provided digest did not match uploaded content"


class ManifestBlobUnknown(RegistryError):
    code, status, message = "MANIFEST_BLOB_UNKNOWN", 400, "manifest references a manifest or blob unknown to registry"


class ManifestInvalid(RegistryError):
    code, status, message = "MANIFEST_INVALID", 400, "manifest invalid"


class ManifestUnknown(RegistryError):
    code, status, message = "MANIFEST_UNKNOWN", 404, "manifest unknown to registry"


class NameInvalid(RegistryError):
    code, status, message = "NAME_INVALID", 400, "invalid repository name"


class NameUnknown(RegistryError):
    code, status, message = "NAME_UNKNOWN", 404, "repository name not known to registry"


class SizeInvalid(RegistryError):
    code, status, message = "SIZE_INVALID", 400, "provided length did not match content length"


class TagInvalid(RegistryError):
    code, status, message = "TAG_INVALID", 400, "manifest tag did not match URI"


class RangeInvalid(RegistryError):
    code, status, message = "RANGE_INVALID", 416, "invalid content range"


class Unauthorized(RegistryError):
    code, status, message = "UNAUTHORIZED", 401, "authentication required"

    def __init__(self, message=None, detail=None, scope=None, error=None):
        super().__init__(message, detail)
        self.scope = scope
        self.error = error


class Denied(RegistryError):
    code, status, message = "DENIED", 403, "requested access to the resource is denied"


class Unsupported(RegistryError):
    code, status, message = "UNSUPPORTED", 405, "the operation is unsupported"


class ReadOnly(Unsupported):
    """Read-only mode (msr/readonly.py): Distribution's answer in `maintenance.readonly`
    mode. docker does not retry UNSUPPORTED (it retries a 503 five times with back-off), and
    docker, podman and skopeo print the message."""

    message = "the registry is in read-only mode for maintenance"

    def __init__(self, method: str):
        super().__init__(detail={"readOnly": True, "method": method}, headers={"Allow": "GET, HEAD"})


class PaginationNumberInvalid(RegistryError):
    code, status, message = "PAGINATION_NUMBER_INVALID", 400, "invalid number of results requested"


class EndpointUnknown(RegistryError):
    code, status, message = "UNSUPPORTED", 404, "no such endpoint in the registry API"


class TooLarge(RegistryError):
    code, status, message = "SIZE_INVALID", 413, "content too large"


class Busy(RegistryError):
    code, status, message = "BLOB_UPLOAD_INVALID", 409, "another request is writing to this upload"


class Unavailable(RegistryError):
    code, status, message = "UNAVAILABLE", 503, "service unavailable, try again"

    def __init__(self, message=None, detail=None, headers=None):
        super().__init__(message, detail, {"Retry-After": "5", **(headers or {})})


def error_response(error: RegistryError, challenge: str | None = None) -> HttpResponse:
    body = error_body(error.code, error.message, error.detail)
    response = HttpResponse(body, status=error.status, content_type="application/json")
    response["Content-Length"] = str(len(body))
    for name, value in error.headers.items():
        response[name] = value
    if challenge:
        response["WWW-Authenticate"] = challenge
    return response
