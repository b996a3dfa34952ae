"""The token service of Docker Registry v2 token authentication.

`GET /auth/token` (Basic credentials, repeated `scope`, `offline_token`) and
`POST /auth/token` (OAuth2 form: `grant_type=password` or `refresh_token`) answer a
short-lived signed JWT whose `access` claim grants, per requested repository, the
intersection of the requested and the permitted actions: a token is narrowed, never
refused, for lack of permission. Bad credentials are refused (401), so `docker login`
tells the user at once.

`GET /auth/jwks.json` publishes the public keys that verify these tokens.
"""

import base64
import binascii
import json
import logging
from datetime import datetime, timedelta, timezone as dt_timezone

from django.conf import settings
from django.http import HttpResponse, JsonResponse, UnreadablePostError
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from accounts.models import AccessToken
from msr import instruments
from msr.events import client_ip
from msr.references import is_valid_name
from msr.services import actions_for
from msr.signin import TOKEN, Credential, DirectoryUnavailable, SingleSignOnEnded, Throttled, bearer, sign_in
from msr.tokens import issue_access_token, jwks
from protocol import errors

log = logging.getLogger(__name__)

TOKEN_ACTIONS = frozenset({"pull", "push", "delete"})


def _login(request, username: str, password: str) -> Credential | None:
    """Check credentials (throttled; written to the audit trail)."""
    credential = sign_in(request, username, password, TOKEN, audit_success=True)
    if credential is None:
        log.info("token refused: bad credentials for %r", username)
    else:
        instruments.set_user(credential.user.username)
    return credential


class TooManyScopes(Exception):
    pass


def _basic_credentials(request) -> tuple[str, str] | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        username, _, password = base64.b64decode(encoded.strip()).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")
    return username, password


def parse_scopes(values) -> list[tuple[str, str, set[str]]]:
    """`repository:org/app:pull,push` → ("repository", "org/app", {"pull", "push"}). A
    request naming more than MAX_TOKEN_SCOPES raises TooManyScopes: each costs a
    permission check, and no client needs many."""
    scopes = []
    for value in values:
        for scope in value.split():
            if len(scopes) >= settings.MAX_TOKEN_SCOPES:
                raise TooManyScopes()
            resource_type, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if resource_type and name:
                scopes.append((resource_type, name, {a for a in actions.split(",") if a}))
    return scopes


def grant_access(user, scopes, allowed=TOKEN_ACTIONS) -> list[dict]:
    """Requested ∩ permitted ∩ `allowed` (what the credential may be used for: a
    personal access token's scopes) per resource."""
    granted: dict[tuple[str, str], set[str]] = {}
    permitted_by_name: dict[str, frozenset[str]] = {}
    for resource_type, name, requested in scopes:
        if resource_type == "repository" and is_valid_name(name):
            if name not in permitted_by_name:
                permitted_by_name[name] = actions_for(user, name) & TOKEN_ACTIONS & allowed
            wanted = TOKEN_ACTIONS if "*" in requested else requested
            actions = permitted_by_name[name] & wanted
        elif resource_type == "registry" and name == "catalog" and "pull" in allowed:
            # Everyone may list; the catalog shows each caller only what they may pull.
            actions = {"*"} & requested
        else:
            continue
        if actions:
            granted.setdefault((resource_type, name), set()).update(actions)
    return [
        {"type": resource_type, "name": name, "actions": sorted(actions)}
        for (resource_type, name), actions in granted.items()
    ]


def _error(status: int, code: str, message: str, oauth_error: str | None = None) -> JsonResponse:
    """An error of the token service in the registry's error body (protocol/errors.py) and,
    to an OAuth2 request (`oauth_error`), RFC 6749's `error` and `error_description` too:
    Docker reads only the registry's format from a token service's 400 and would
    otherwise print "error parsing HTTP 400 response body"."""
    body = errors.error_document(code, message)
    if oauth_error:
        body = {"error": oauth_error, "error_description": message, **body}
    return JsonResponse(body, status=status)


def _unauthorized(message: str, oauth: bool) -> HttpResponse:
    if oauth:
        return _error(400, "UNAUTHORIZED", message, "invalid_grant")
    response = _error(401, "UNAUTHORIZED", message)
    response["WWW-Authenticate"] = f'Basic realm="{settings.TOKEN_SERVICE}"'
    return response


def _throttled(error: Throttled, oauth: bool) -> HttpResponse:
    response = _error(429, "TOOMANYREQUESTS", str(error), "slow_down" if oauth else None)
    response["Retry-After"] = str(error.retry_after)
    return response


def _directory_unavailable(oauth: bool) -> HttpResponse:
    # 503, not 401: the password may be right; clients show the message and may retry.
    return _error(503, "UNAVAILABLE", DirectoryUnavailable.message, "temporarily_unavailable" if oauth else None)


def _too_many_scopes() -> HttpResponse:
    return _error(400, "DENIED", f"a token request may name at most {settings.MAX_TOKEN_SCOPES} scopes",
                  "invalid_scope")


def _token_response(request, credential: Credential | None, scopes, offline: bool, refresh_token: str | None,
                    oauth: bool):
    user = credential.user if credential else None
    used = credential.token if credential else None  # the personal access or refresh token
    allowed = used.registry_actions() if used is not None else TOKEN_ACTIONS
    access = grant_access(user, scopes, allowed)
    subject = user.username if user else ""
    access_token, ttl = issue_access_token(subject, access)
    instruments.TOKENS_ISSUED.inc()
    instruments.set_user(subject)
    body = {
        "token": access_token,
        "access_token": access_token,
        "expires_in": ttl,
        "issued_at": datetime.now(dt_timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    if oauth:
        body["scope"] = " ".join(
            f"{a['type']}:{a['name']}:{','.join(a['actions'])}" for a in access
        )
    if user is not None and offline and refresh_token is None:
        # Bound to what signed in: the personal access token (its revocation ends this
        # refresh token too) or the password (a new password ends it).
        expires = timezone.now() + timedelta(seconds=settings.REFRESH_TOKEN_TTL_SECONDS)
        if used is not None and used.expires_at is not None:
            expires = min(expires, used.expires_at)
        _, refresh_token = AccessToken.issue(
            user, AccessToken.REFRESH, "docker login", expires, parent=used, client_ip=client_ip(request),
            user_agent=request.META.get("HTTP_USER_AGENT", ""))
    if refresh_token:
        body["refresh_token"] = refresh_token
    response = HttpResponse(json.dumps(body), content_type="application/json")
    response["Cache-Control"] = "no-store"
    return response


@require_http_methods(["GET", "POST"])
def token(request):
    try:
        request.POST  # read the form now: a body that stops arriving is the client's fault
    except UnreadablePostError:
        return JsonResponse({"error": "invalid_request", "error_description": "the request body stopped arriving"},
                            status=400)
    service = request.GET.get("service") or request.POST.get("service")
    if service and service != settings.TOKEN_SERVICE:
        return JsonResponse(
            {"error": "invalid_request", "error_description": f"unknown service {service!r}"},
            status=400,
        )
    oauth = request.method == "POST"
    try:
        scopes = parse_scopes(request.POST.getlist("scope") if oauth else request.GET.getlist("scope"))
    except TooManyScopes:
        return _too_many_scopes()
    try:
        return _answer(request, scopes, oauth)
    except Throttled as e:
        return _throttled(e, oauth)
    except DirectoryUnavailable:
        return _directory_unavailable(oauth)
    except SingleSignOnEnded as e:
        return _unauthorized(str(e), oauth)


def _answer(request, scopes, oauth: bool) -> HttpResponse:
    if not oauth:
        credential = None
        credentials = _basic_credentials(request)
        if credentials is not None:
            credential = _login(request, *credentials)
            if credential is None:
                return _unauthorized("invalid username, password or token", oauth=False)
        offline = request.GET.get("offline_token", "").lower() == "true"
        return _token_response(request, credential, scopes, offline, None, oauth=False)

    grant_type = request.POST.get("grant_type")
    if grant_type == "password":
        credential = _login(request, request.POST.get("username", ""), request.POST.get("password", ""))
        if credential is None:
            return _unauthorized("invalid username, password or token", oauth=True)
        offline = request.POST.get("access_type") == "offline"
        return _token_response(request, credential, scopes, offline, None, oauth=True)
    if grant_type == "refresh_token":
        secret = request.POST.get("refresh_token", "")
        credential = bearer(request, secret, AccessToken.REFRESH, TOKEN)
        if credential is None:
            return _unauthorized("invalid, expired or revoked refresh token", oauth=True)
        instruments.set_user(credential.user.username)
        return _token_response(request, credential, scopes, False, secret, oauth=True)
    return JsonResponse(
        {"error": "unsupported_grant_type", "error_description": "use password or refresh_token"},
        status=400,
    )


@require_GET
def jwks_view(request):
    response = JsonResponse(jwks())
    response["Cache-Control"] = "max-age=300"
    return response
