"""Protocol chrome shared by every /v2/ endpoint: authentication from the bearer token,
authorization against the token's `access` claim, the API version header and OCI error
rendering. Endpoints raise `RegistryError`s, the core they call raises `msr.exceptions`
errors (mapped by `DOMAIN_ERRORS`); neither builds error responses itself."""

import logging

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpResponse
from django.views import View

from msr import exceptions as domain
from msr import readonly
from msr.references import is_valid_name
from msr.registry import errors
from msr.tokens import InvalidToken, granted_actions, verify_access_token
from msr.storage import CHUNK_SIZE, STORAGE_ERRORS

log = logging.getLogger(__name__)


def public_url(request) -> str:
    return settings.PUBLIC_URL or f"{request.scheme}://{request.get_host()}"


def challenge(request, scope=None, error=None, description=None) -> str:
    header = f'Bearer realm="{public_url(request)}/auth/token",service="{settings.TOKEN_SERVICE}"'
    if scope:
        header += f',scope="{scope}"'
    if error:
        header += f',error="{error}"'
        if description:
            # RFC 6750 section 3: docker shows error_description to the user
            # (without it, docker prints its own "requested access to the resource is denied").
            quoted = description.replace("\\", "\\\\").replace('"', '\\"')
            header += f',error_description="{quoted}"'
    return header


# Each error of the registry core and the OCI error it answers (code and status); the
# message and detail are the core's. tests/test_errors.py checks that none is missing.
DOMAIN_ERRORS: dict[type[domain.DomainError], type[errors.RegistryError]] = {
    domain.RepositoryNotFound: errors.NameUnknown,
    domain.ManifestNotFound: errors.ManifestUnknown,
    domain.BlobNotFound: errors.BlobUnknown,
    domain.UploadNotFound: errors.BlobUploadUnknown,
    domain.InvalidTag: errors.TagInvalid,
    domain.InvalidDigest: errors.DigestInvalid,
    domain.DigestMismatch: errors.DigestInvalid,
    domain.InvalidManifest: errors.ManifestInvalid,
    domain.ManifestReferencesUnknown: errors.ManifestBlobUnknown,
    domain.InvalidRange: errors.RangeInvalid,
    domain.LengthMismatch: errors.SizeInvalid,
    domain.UploadBusy: errors.Busy,
    domain.UploadLost: errors.BlobUploadInvalid,
    # A repository's rule, not the caller's mistake or rights: DENIED (403) is the spec's
    # code for a refused operation, and docker, podman and skopeo print its message
    # ("denied: tag=v1 cannot be overwritten because …") and do not retry it.
    domain.ImmutableTag: errors.Denied,
    domain.TagLimitReached: errors.Denied,
}


def registry_error(error: domain.DomainError) -> errors.RegistryError:
    """The OCI error for an error of the registry core, with its message and detail."""
    for cls in type(error).__mro__:
        if cls in DOMAIN_ERRORS:
            return DOMAIN_ERRORS[cls](error.message, error.detail)
    raise TypeError(f"no OCI error for {type(error).__name__}") from error


READS = frozenset({"GET", "HEAD"})


class RegistryView(View):
    http_method_names = ["get", "head", "post", "put", "patch", "delete"]

    def dispatch(self, request, *args, **kwargs):
        self.claims = None
        try:
            name = kwargs.get("name")
            if name is not None and not is_valid_name(name):
                raise errors.NameInvalid(detail={"name": name})
            if request.method not in READS and readonly.is_read_only():
                raise errors.ReadOnly(request.method)
            self.claims = self._authenticate(request)
            response = super().dispatch(request, *args, **kwargs)
        except errors.Unauthorized as e:
            response = errors.error_response(e, challenge(request, e.scope, e.error, e.message))
        except errors.RegistryError as e:
            response = errors.error_response(e)
        except domain.DomainError as e:
            response = errors.error_response(registry_error(e))
        except DatabaseError:
            log.exception("database error on %s %s", request.method, request.path)
            response = errors.error_response(errors.Unavailable("the registry's database is unavailable, try again"))
        except STORAGE_ERRORS:
            log.exception("blob storage error on %s %s", request.method, request.path)
            response = errors.error_response(errors.Unavailable("the registry's blob storage is unavailable, try again"))
        response["Docker-Distribution-Api-Version"] = "registry/2.0"
        response["X-Content-Type-Options"] = "nosniff"
        if not response.has_header("Content-Length") and not response.streaming:
            response["Content-Length"] = str(len(response.content))
        if request.method == "HEAD" and not response.streaming:
            response.content = b""  # Content-Length stays that of the GET
        return response

    def http_method_not_allowed(self, request, *args, **kwargs):
        raise errors.Unsupported(f"{request.method} is not supported here")

    # -- authentication and authorization ---------------------------------------------

    def _authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not credentials:
            return None
        try:
            return verify_access_token(credentials.strip())
        except InvalidToken as e:
            raise errors.Unauthorized("invalid or expired token", detail=str(e), error="invalid_token")

    @property
    def username(self) -> str:
        return (self.claims or {}).get("sub") or ""

    def require_token(self) -> None:
        if self.claims is None:
            raise errors.Unauthorized()

    def authorize(self, name: str, *actions: str, also: str = "") -> None:
        """Raise 401 unless the token grants every one of `actions` on repository `name`.
        `also`: more scopes for the challenge to name (a mount's source)."""
        scope = " ".join(filter(None, [f"repository:{name}:{','.join(actions)}", also]))
        if self.claims is None:
            raise errors.Unauthorized(scope=scope)
        granted = granted_actions(self.claims, "repository", name)
        missing = [a for a in actions if a not in granted]
        if "*" not in granted and missing:
            raise errors.Unauthorized(
                "insufficient scope: the token does not grant " + ",".join(missing) + " on " + name,
                detail=[{"Type": "repository", "Name": name, "Action": a} for a in missing],
                scope=scope, error="insufficient_scope",
            )

    def may(self, name: str, action: str) -> bool:
        granted = granted_actions(self.claims or {}, "repository", name)
        return "*" in granted or action in granted


def request_body(request):
    """The request body in chunks of at most CHUNK_SIZE, read straight from the WSGI
    stream so that memory stays constant whatever the blob size. Handles both a
    Content-Length and a chunked transfer encoding (Docker sends chunked PATCHes)."""
    stream = request.environ["wsgi.input"]
    length = request.META.get("CONTENT_LENGTH")
    try:
        if length:
            try:
                remaining = int(length)
            except ValueError:
                raise errors.SizeInvalid("invalid Content-Length") from None
            while remaining > 0:
                chunk = stream.read(min(CHUNK_SIZE, remaining))
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk
        elif "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
            while chunk := stream.read(CHUNK_SIZE):
                yield chunk
    except OSError as e:
        # The client went away, stalled, or sent too slowly (caches/httpserver.py shut the
        # connection): what arrived is handled as a short body.
        raise errors.BlobUploadInvalid("the request body stopped arriving", detail=str(e)) from None


def empty_response(status: int, headers: dict | None = None) -> HttpResponse:
    response = HttpResponse(status=status)
    del response["Content-Type"]  # no body, no type (Django would say text/html)
    response["Content-Length"] = "0"
    for name, value in (headers or {}).items():
        response[name] = value
    return response
