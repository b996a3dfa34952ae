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
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from accounts.credentials import check_credentials
from accounts.models import AccessToken
from msr import logs, metrics
from msr.events import record
from msr.models import Event
from msr.references import is_valid_name
from msr.services import actions_for
from msr.tokens import issue_access_token, jwks

log = logging.getLogger(__name__)

TOKEN_ACTIONS = frozenset({"pull", "push", "delete"})


def _login(request, username: str, password: str):
    """Check credentials and write the login (or the refusal) to the audit trail."""
    user = check_credentials(username, password)
    method = "token" if password.startswith(AccessToken.PREFIXES[AccessToken.PERSONAL]) else "password"
    record(Event.LOGIN, username[:150], detail={"succeeded": user is not None, "method": method},
           request=request)
    if user is None:
        log.info("token refused: bad credentials for %r", username)
    else:
        logs.set_user(user.username)
    return user


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
    """`repository:org/app:pull,push` → ("repository", "org/app", {"pull", "push"})."""
    scopes = []
    for value in values:
        for scope in value.split():
            resource_type, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if resource_type and name:
                scopes.append((resource_type, name, {a for a in actions.split(",") if a}))
    return scopes


def grant_access(user, scopes) -> list[dict]:
    granted: dict[tuple[str, str], set[str]] = {}
    for resource_type, name, requested in scopes:
        if resource_type == "repository" and is_valid_name(name):
            permitted = actions_for(user, name) & TOKEN_ACTIONS
            wanted = TOKEN_ACTIONS if "*" in requested else requested
            actions = permitted & wanted
        elif resource_type == "registry" and name == "catalog":
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


def _unauthorized(message: str, oauth: bool) -> HttpResponse:
    if oauth:
        body = {"error": "invalid_grant", "error_description": message}
        return JsonResponse(body, status=400)
    body = {"errors": [{"code": "UNAUTHORIZED", "message": message}]}
    response = JsonResponse(body, status=401)
    response["WWW-Authenticate"] = f'Basic realm="{settings.TOKEN_SERVICE}"'
    return response


def _token_response(user, scopes, offline: bool, refresh_token: str | None, oauth: bool):
    access = grant_access(user, scopes)
    subject = user.username if user else ""
    token, ttl = issue_access_token(subject, access)
    metrics.TOKENS_ISSUED.inc()
    logs.set_user(subject)
    body = {
        "token": token,
        "access_token": token,
        "expires_in": ttl,
        "issued_at": datetime.now(dt_timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    if oauth:
        body["scope"] = " ".join(
            f"{a['type']}:{a['name']}:{','.join(a['actions'])}" for a in access
        )
    if user is not None and offline and refresh_token is None:
        expires = timezone.now() + timedelta(seconds=settings.REFRESH_TOKEN_TTL_SECONDS)
        _, refresh_token = AccessToken.issue(user, AccessToken.REFRESH, "login", expires)
    if refresh_token:
        body["refresh_token"] = refresh_token
    response = HttpResponse(json.dumps(body), content_type="application/json")
    response["Cache-Control"] = "no-store"
    return response


@require_http_methods(["GET", "POST"])
def token(request):
    service = request.GET.get("service") or request.POST.get("service")
    if service and service != settings.TOKEN_SERVICE:
        return JsonResponse(
            {"error": "invalid_request", "error_description": f"unknown service {service!r}"},
            status=400,
        )
    if request.method == "GET":
        user = None
        credentials = _basic_credentials(request)
        if credentials is not None:
            user = _login(request, *credentials)
            if user is None:
                return _unauthorized("invalid username, password or token", oauth=False)
        scopes = parse_scopes(request.GET.getlist("scope"))
        offline = request.GET.get("offline_token", "").lower() == "true"
        return _token_response(user, scopes, offline, None, oauth=False)

    grant_type = request.POST.get("grant_type")
    scopes = parse_scopes([request.POST.get("scope", "")])
    if grant_type == "password":
        user = _login(request, request.POST.get("username", ""), request.POST.get("password", ""))
        if user is None:
            return _unauthorized("invalid username, password or token", oauth=True)
        offline = request.POST.get("access_type") == "offline"
        return _token_response(user, scopes, offline, None, oauth=True)
    if grant_type == "refresh_token":
        secret = request.POST.get("refresh_token", "")
        found = AccessToken.find(secret, AccessToken.REFRESH)
        if found is None:
            return _unauthorized("invalid or expired refresh token", oauth=True)
        return _token_response(found.user, scopes, False, secret, oauth=True)
    return JsonResponse(
        {"error": "unsupported_grant_type", "error_description": "use password or refresh_token"},
        status=400,
    )


@require_GET
def jwks_view(request):
    response = JsonResponse(jwks())
    response["Cache-Control"] = "max-age=300"
    return response
